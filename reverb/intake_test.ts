import assert from "node:assert/strict";
import {
  type GeneratedKeyPair,
  generateSigningKeyPair,
  type KeyEntry,
  Keyring,
  ManualClock,
  type StatusClaim,
} from "../core/mod.ts";
import { MessageValidator } from "../schemas/mod.ts";
import { claimMessage, hlcAt, makeClaim, signedMessage } from "../tests/reverb_helpers.ts";
import {
  ClaimIntake,
  type ClaimIntakeOptions,
  REJECT_REASONS,
  type RejectReason,
} from "./_intake.ts";

const validator = new MessageValidator();
const T0 = Date.parse("2030-01-01T00:00:00Z");

interface Harness {
  intake: ClaimIntake;
  clock: ManualClock;
  accepted: Array<{ claim: StatusClaim; key: KeyEntry | undefined }>;
  rejected: Array<{ reason: RejectReason; agentId: string | undefined }>;
}

function harness(
  keyring: Keyring = Keyring.EMPTY,
  options: Partial<ClaimIntakeOptions> = {},
): Harness {
  const clock = new ManualClock(T0);
  const accepted: Harness["accepted"] = [];
  const rejected: Harness["rejected"] = [];
  const intake = new ClaimIntake({
    // The cluster of the helpers' default subject, backbeat.test.status.
    clusterId: "test",
    validate: (v) => {
      const r = validator.validateMessage(v);
      return r.valid && r.type === "backbeat.statusclaim.v1";
    },
    keyring: () => keyring,
    clock,
    maxClaimAgeMs: 4_000,
    onAccept: (claim, _arrival, key) => accepted.push({ claim, key }),
    onReject: (reason, agentId) => rejected.push({ reason, agentId }),
    ...options,
  });
  return { intake, clock, accepted, rejected };
}

async function keys(): Promise<{ a: GeneratedKeyPair; b: GeneratedKeyPair; ring: Keyring }> {
  const a = await generateSigningKeyPair();
  const b = await generateSigningKeyPair();
  const ring = await Keyring.fromJson({
    "agent-a": [{ key_id: "ka", public_key: a.publicKey }],
    "agent-b": [{ key_id: "kb", public_key: b.publicKey }],
  });
  return { a, b, ring };
}

Deno.test("ClaimIntake accepts a valid unsigned claim at once", () => {
  const h = harness();
  h.intake.handle(claimMessage(makeClaim({ hlc: hlcAt(T0) })));
  assert.equal(h.accepted.length, 1, "no await needed for an unsigned claim");
  assert.equal(h.intake.stats.accepted, 1);
  assert.equal(h.accepted[0].key, undefined);
});

Deno.test("ClaimIntake rejects each bad claim by its reason, in pipeline order, without throwing", async () => {
  const { a, b, ring } = await keys();
  const h = harness(ring, { maxClaimBytes: 600 });
  const ok = (fields: Partial<StatusClaim> = {}) =>
    makeClaim({ agent_id: "agent-a", hlc: hlcAt(T0), ...fields });
  h.intake.handle(claimMessage(ok({ notes: "x".repeat(700) }))); // oversized before anything
  h.intake.handle({ subject: "s", data: new TextEncoder().encode("{not json") });
  h.intake.handle(claimMessage({ ...ok(), progress: 1.5 })); // schema
  h.intake.handle(claimMessage({ ...ok(), type: "backbeat.beatframe.v1" })); // schema
  // Signed by agent-b's key with agent-b's key id, claiming to be agent-a: forged.
  h.intake.handle(await signedMessage(ok({ hlc: hlcAt(T0, 1) }), b.keyPair.privateKey, "kb"));
  // Signed by agent-b's key under agent-a's key id: the signature does not verify.
  h.intake.handle(await signedMessage(ok({ hlc: hlcAt(T0, 2) }), b.keyPair.privateKey, "ka"));
  // A good signature over different bytes.
  const good = await signedMessage(ok({ hlc: hlcAt(T0, 3) }), a.keyPair.privateKey, "ka");
  h.intake.handle({
    ...good,
    data: new TextEncoder().encode(JSON.stringify(ok({ hlc: hlcAt(T0, 3), progress: 0.9 }))),
  });
  // Freshness and replay, from an agent without keys (agent-a must sign).
  const c = (hlc: string) => claimMessage(ok({ agent_id: "agent-c", hlc }));
  h.intake.handle(c(hlcAt(T0 - 4_001))); // stale
  h.intake.handle(c(hlcAt(T0 + 60_001))); // future
  h.intake.handle(c(hlcAt(T0, 9)));
  h.intake.handle(c(hlcAt(T0, 9))); // replay
  await h.intake.idle();
  assert.deepEqual(h.accepted.map((x) => x.claim.hlc), [hlcAt(T0, 9)]);
  const s = h.intake.stats;
  const expected: Partial<Record<RejectReason, number>> = {
    oversized: 1,
    malformed: 1,
    schema: 2,
    unknown_key: 1,
    bad_signature: 2,
    stale: 1,
    future: 1,
    replay: 1,
  };
  for (const r of REJECT_REASONS) assert.equal(s.rejected[r], expected[r] ?? 0, r);
  assert.equal(h.rejected.find((x) => x.reason === "unknown_key")?.agentId, "agent-a");
  assert.equal(h.rejected.find((x) => x.reason === "malformed")?.agentId, undefined);
});

Deno.test("ClaimIntake with requireSignatures rejects unsigned claims and accepts signed ones", async () => {
  const { a, ring } = await keys();
  const h = harness(ring, { requireSignatures: true });
  h.intake.handle(claimMessage(makeClaim({ agent_id: "agent-a", hlc: hlcAt(T0) })));
  h.intake.handle(
    await signedMessage(
      makeClaim({ agent_id: "agent-a", hlc: hlcAt(T0, 1) }),
      a.keyPair.privateKey,
      "ka",
    ),
  );
  // Without x-key-id the agent's valid key is used.
  h.intake.handle(
    await signedMessage(
      makeClaim({ agent_id: "agent-a", hlc: hlcAt(T0, 2) }),
      a.keyPair.privateKey,
      undefined,
    ),
  );
  await h.intake.idle();
  assert.equal(h.intake.stats.rejected.unsigned, 1);
  assert.deepEqual(h.accepted.map((x) => x.key?.keyId), ["ka", "ka"]);
  assert.equal(h.intake.stats.signed, 2);
  assert.equal(h.intake.verifyTime.count, 2);
});

Deno.test("ClaimIntake accepts standard and URL-safe base64 signatures and rejects malformed ones", async () => {
  const { a, ring } = await keys();
  const h = harness(ring, { requireSignatures: true });
  const signed = async (logical: number, edit: (sig: string) => string) => {
    const m = await signedMessage(
      makeClaim({ agent_id: "agent-a", hlc: hlcAt(T0, logical) }),
      a.keyPair.privateKey,
      "ka",
    );
    return { ...m, headers: { ...m.headers, "x-signature": edit(m.headers!["x-signature"]) } };
  };
  const urlSafe = (s: string) => s.replace(/\+/g, "-").replace(/\//g, "_");
  h.intake.handle(await signed(1, (s) => s));
  h.intake.handle(await signed(2, urlSafe));
  h.intake.handle(await signed(3, (s) => urlSafe(s).replace(/=+$/, "")));
  h.intake.handle(await signed(4, (s) => `${s.slice(0, 80)}!!!!!!==`));
  h.intake.handle(await signed(5, (s) => s.slice(0, 44)));
  h.intake.handle(await signed(6, () => ""));
  // A valid signature over other bytes: the sixty-four bytes decode, the check fails.
  h.intake.handle(await signed(7, (s) => `${s[0] === "A" ? "B" : "A"}${s.slice(1)}`));
  await h.intake.idle();
  assert.deepEqual(h.accepted.map((x) => x.claim.hlc), [hlcAt(T0, 1), hlcAt(T0, 2), hlcAt(T0, 3)]);
  assert.equal(h.intake.stats.rejected.bad_signature, 4);
  assert.deepEqual(h.rejected.map((x) => x.agentId), Array(4).fill("agent-a"));
});

Deno.test("ClaimIntake rejects a claim signed with a key outside its validity period", async () => {
  const a = await generateSigningKeyPair();
  const ring = await Keyring.fromJson({
    "agent-a": [
      { key_id: "old", public_key: a.publicKey, not_after: new Date(T0 - 1).toISOString() },
    ],
  });
  const seen: Array<KeyEntry | undefined> = [];
  const h = harness(ring, { onReject: (_r, _a, _t, key) => seen.push(key) });
  h.intake.handle(
    await signedMessage(
      makeClaim({ agent_id: "agent-a", hlc: hlcAt(T0) }),
      a.keyPair.privateKey,
      "old",
    ),
  );
  await h.intake.idle();
  assert.equal(h.intake.stats.rejected.key_not_valid, 1);
  assert.equal(seen[0]?.keyId, "old", "the key is reported so the bar can flag the rotation");
});

Deno.test("ClaimIntake verifies concurrently but applies each agent's claims in arrival order", async () => {
  const agents = await Promise.all(
    Array.from(
      { length: 8 },
      async (_, i) => ({ id: `agent-${i}`, pair: await generateSigningKeyPair() }),
    ),
  );
  const ring = await Keyring.fromJson(
    Object.fromEntries(agents.map((a) => [a.id, [{ key_id: "k", public_key: a.pair.publicKey }]])),
  );
  let maxInFlight = 0;
  const h = harness(ring, { maxInFlight: 16 });
  const messages = [];
  for (let n = 0; n < 40; n++) {
    for (const a of agents) {
      const claim = makeClaim({ agent_id: a.id, hlc: hlcAt(T0, n), progress: n / 40 });
      messages.push(await signedMessage(claim, a.pair.keyPair.privateKey, "k"));
    }
  }
  for (const m of messages) {
    h.intake.handle(m);
    maxInFlight = Math.max(maxInFlight, h.intake.stats.inFlight);
  }
  assert.ok(h.intake.stats.queued > 0, "beyond the in-flight window claims wait in the queue");
  await h.intake.idle();
  assert.equal(maxInFlight, 16, "verifications overlap up to the window");
  assert.equal(h.accepted.length, 320);
  for (const a of agents) {
    const order = h.accepted.filter((x) => x.claim.agent_id === a.id).map((x) => x.claim.hlc);
    assert.deepEqual(order, Array.from({ length: 40 }, (_, n) => hlcAt(T0, n)));
  }
});

Deno.test("ClaimIntake rejects with overload when the wait queue is full", async () => {
  const { a, ring } = await keys();
  const h = harness(ring, { maxInFlight: 1, maxQueued: 1 });
  const messages = await Promise.all(
    [0, 1, 2].map((n) =>
      signedMessage(
        makeClaim({ agent_id: "agent-a", hlc: hlcAt(T0, n) }),
        a.keyPair.privateKey,
        "ka",
      )
    ),
  );
  for (const m of messages) h.intake.handle(m);
  await h.intake.idle();
  assert.equal(h.intake.stats.rejected.overload, 1);
  assert.equal(h.accepted.length, 2);
});

Deno.test("ClaimIntake refuses every claim at or below the agent's high-water mark", () => {
  const h = harness();
  for (let n = 1; n <= 3; n++) h.intake.handle(claimMessage(makeClaim({ hlc: hlcAt(T0, n) })));
  h.intake.handle(claimMessage(makeClaim({ hlc: hlcAt(T0, 1) })));
  h.intake.handle(claimMessage(makeClaim({ hlc: hlcAt(T0, 3).toUpperCase() })));
  h.intake.handle(claimMessage(makeClaim({ hlc: hlcAt(T0, 4) })));
  // Another agent has its own mark.
  h.intake.handle(claimMessage(makeClaim({ agent_id: "agent-2", hlc: hlcAt(T0, 1) })));
  assert.equal(h.intake.stats.rejected.replay, 2, "older and upper-cased replays alike");
  assert.deepEqual(h.accepted.map((x) => x.claim.hlc), [1, 2, 3, 4, 1].map((n) => hlcAt(T0, n)));
});

Deno.test("ClaimIntake orders replay marks across the 2^32 ms wrap", () => {
  // The stamps straddle the wrap: the mark must order them by serial arithmetic.
  const clock = new ManualClock(2 ** 32 + 1_000);
  const h = harness(Keyring.EMPTY, { clock });
  h.intake.handle(claimMessage(makeClaim({ hlc: hlcAt(2 ** 32 - 10) }))); // before the wrap
  h.intake.handle(claimMessage(makeClaim({ hlc: hlcAt(2 ** 32 + 10) }))); // after: mark = +10
  h.intake.handle(claimMessage(makeClaim({ hlc: hlcAt(2 ** 32 - 20) }))); // below the mark
  h.intake.handle(claimMessage(makeClaim({ hlc: hlcAt(2 ** 32 + 5) }))); // below it too
  h.intake.handle(claimMessage(makeClaim({ hlc: hlcAt(2 ** 32 + 15) }))); // above: new
  assert.deepEqual(h.rejected.map((r) => r.reason), ["replay", "replay"]);
  assert.equal(h.accepted.length, 3);
});

Deno.test("ClaimIntake rejects a claim whose HLC is not the wire form as schema, even past a lax validator", () => {
  const h = harness(Keyring.EMPTY, { validate: () => true });
  for (const hlc of ["nonsense", "0000:0000", 42, undefined]) {
    h.intake.handle(claimMessage({ ...makeClaim({ hlc: "0000:0000:0000" }), hlc }));
  }
  assert.equal(h.accepted.length, 0);
  assert.deepEqual(h.rejected.map((r) => r.reason), ["schema", "schema", "schema", "schema"]);
  assert.equal(h.intake.stats.rejected.schema, 4);
});

Deno.test("ClaimIntake judges freshness across the 2^32 ms wrap of the HLC", () => {
  const clock = new ManualClock(2 ** 32 + 1_000); // physical part wrapped to 1000
  const h = harness(Keyring.EMPTY, { clock });
  h.intake.handle(claimMessage(makeClaim({ hlc: hlcAt(2 ** 32 - 500) }))); // 1.5 s old
  h.intake.handle(claimMessage(makeClaim({ hlc: hlcAt(2 ** 32 - 5_000) }))); // 6 s old
  assert.equal(h.accepted.length, 1);
  assert.equal(h.intake.stats.rejected.stale, 1);
});

Deno.test("ClaimIntake verifies in worker threads with the same results and per-agent order", async () => {
  const agents = await Promise.all(
    Array.from(
      { length: 4 },
      async (_, i) => ({ id: `agent-${i}`, pair: await generateSigningKeyPair() }),
    ),
  );
  const ring = await Keyring.fromJson(
    Object.fromEntries(agents.map((a) => [a.id, [{ key_id: "k", public_key: a.pair.publicKey }]])),
  );
  const stranger = await generateSigningKeyPair();
  const h = harness(ring, { verifyWorkers: 2 });
  try {
    const messages = [];
    for (let n = 0; n < 300; n++) {
      for (const a of agents) {
        const claim = makeClaim({ agent_id: a.id, hlc: hlcAt(T0, n) });
        // Every seventh claim is signed by a stranger under the agent's key id.
        const key = n % 7 === 6 ? stranger.keyPair.privateKey : a.pair.keyPair.privateKey;
        messages.push(await signedMessage(claim, key, "k"));
      }
    }
    for (const m of messages) h.intake.handle(m);
    await h.intake.idle();
    const bad = Math.floor(300 / 7);
    assert.equal(h.intake.stats.offloaded, 1200, "all verified in the workers");
    assert.equal(h.intake.stats.rejected.bad_signature, 4 * bad);
    assert.equal(h.accepted.length, 4 * (300 - bad));
    for (const a of agents) {
      const order = h.accepted.filter((x) => x.claim.agent_id === a.id).map((x) => x.claim.hlc);
      const expected = Array.from({ length: 300 }, (_, n) => n).filter((n) => n % 7 !== 6)
        .map((n) => hlcAt(T0, n));
      assert.deepEqual(order, expected);
    }
  } finally {
    await h.intake.close();
  }
});

Deno.test("ClaimIntake survives throwing callbacks, also after an asynchronous verification", async () => {
  const { a, ring } = await keys();
  let accepts = 0;
  let rejects = 0;
  const h = harness(ring, {
    onAccept: () => {
      accepts++;
      throw new Error("aggregator bug");
    },
    onReject: () => {
      rejects++;
      throw new Error("aggregator bug");
    },
  });
  h.intake.handle(claimMessage(makeClaim({ agent_id: "agent-c", hlc: hlcAt(T0, 0) })));
  h.intake.handle(claimMessage("not a claim"));
  // Verified in a promise: a throw there would be an unhandled rejection ending the test run.
  const claim = makeClaim({ agent_id: "agent-a", hlc: hlcAt(T0, 1) });
  h.intake.handle(await signedMessage(claim, a.keyPair.privateKey, "ka"));
  await h.intake.idle();
  await new Promise((r) => setTimeout(r, 0));
  assert.equal(accepts, 2);
  assert.equal(rejects, 1);
  assert.equal(h.intake.stats.accepted, 2);
});

Deno.test("ClaimIntake verifies over the cluster-bound signed bytes: another cluster's signature is refused", async () => {
  const { a, ring } = await keys();
  const h = harness(ring);
  const claim = (n: number) => makeClaim({ agent_id: "agent-a", hlc: hlcAt(T0, n) });
  // Signed for cluster "other", delivered to this ("test") cluster's intake.
  h.intake.handle(
    await signedMessage(claim(1), a.keyPair.privateKey, "ka", undefined, { clusterId: "other" }),
  );
  // The 0.1 form, over the payload alone: refused unless legacy signatures are on.
  h.intake.handle(
    await signedMessage(claim(2), a.keyPair.privateKey, "ka", undefined, {
      legacy: true,
    }),
  );
  h.intake.handle(await signedMessage(claim(3), a.keyPair.privateKey, "ka"));
  await h.intake.idle();
  assert.deepEqual(h.accepted.map((x) => x.claim.hlc), [hlcAt(T0, 3)]);
  assert.equal(h.intake.stats.rejected.bad_signature, 2);
  assert.equal(h.intake.legacySignatures, false);
});

Deno.test("ClaimIntake with legacySignatures accepts both forms, still bound to nothing else", async () => {
  const { a, b, ring } = await keys();
  const h = harness(ring, { legacySignatures: true, verifyWorkers: 1 });
  try {
    const claim = (n: number) => makeClaim({ agent_id: "agent-a", hlc: hlcAt(T0, n) });
    h.intake.handle(
      await signedMessage(claim(1), a.keyPair.privateKey, "ka", undefined, {
        legacy: true,
      }),
    );
    h.intake.handle(await signedMessage(claim(2), a.keyPair.privateKey, "ka"));
    // A stranger's legacy signature fails both checks.
    h.intake.handle(
      await signedMessage(claim(3), b.keyPair.privateKey, "ka", undefined, {
        legacy: true,
      }),
    );
    await h.intake.idle();
    assert.deepEqual(h.accepted.map((x) => x.claim.hlc), [hlcAt(T0, 1), hlcAt(T0, 2)]);
    assert.equal(h.intake.stats.rejected.bad_signature, 1);
  } finally {
    await h.intake.close();
  }
});

Deno.test("ClaimIntake refuses an unsigned claim from an agent with keys, without requireSignatures", async () => {
  const { a, ring } = await keys();
  const h = harness(ring);
  assert.equal(h.intake.requireSignatures, false);
  h.intake.handle(claimMessage(makeClaim({ agent_id: "agent-a", hlc: hlcAt(T0, 1) })));
  h.intake.handle(claimMessage(makeClaim({ agent_id: "no-keys", hlc: hlcAt(T0, 1) })));
  h.intake.handle(
    await signedMessage(
      makeClaim({ agent_id: "agent-a", hlc: hlcAt(T0, 2) }),
      a.keyPair.privateKey,
      "ka",
    ),
  );
  await h.intake.idle();
  assert.deepEqual(h.rejected, [{ reason: "unsigned", agentId: "agent-a" }]);
  assert.deepEqual(h.accepted.map((x) => x.claim.agent_id), ["no-keys", "agent-a"]);
});

Deno.test("ClaimIntake: 65 claims stamped 50 s ahead are future and do not lock the agent out", async () => {
  const { a, ring } = await keys();
  const h = harness(ring);
  for (let n = 0; n < 65; n++) {
    h.intake.handle(
      await signedMessage(
        makeClaim({ agent_id: "agent-a", hlc: hlcAt(T0 + 50_000, n) }),
        a.keyPair.privateKey,
        "ka",
      ),
    );
  }
  await h.intake.idle();
  assert.equal(h.intake.stats.rejected.future, 65);
  for (let n = 0; n < 3; n++) {
    await h.clock.advance(100);
    h.intake.handle(
      await signedMessage(
        makeClaim({ agent_id: "agent-a", hlc: hlcAt(h.clock.now()) }),
        a.keyPair.privateKey,
        "ka",
      ),
    );
  }
  await h.intake.idle();
  assert.equal(h.accepted.length, 3, "the honest claims are accepted");
  assert.equal(h.intake.stats.rejected.replay, 0);
});

Deno.test("ClaimIntake judges freshness by maxClaimAgeMs (default two minutes) and the clock offset (default 10 s)", () => {
  const clock = new ManualClock(T0);
  const accepted: string[] = [];
  const rejected: string[] = [];
  const intake = new ClaimIntake({
    clusterId: "test",
    validate: () => true,
    keyring: () => Keyring.EMPTY,
    clock,
    onAccept: (c) => accepted.push(c.agent_id),
    onReject: (r) => rejected.push(r),
  });
  assert.equal(intake.maxClaimAgeMs, 120_000);
  assert.equal(intake.maxClockOffsetMs, 10_000);
  const send = (id: string, at: number) =>
    intake.handle(claimMessage(makeClaim({ agent_id: id, hlc: hlcAt(at) })));
  send("buffered-through-an-outage", T0 - 119_000);
  send("too-old", T0 - 121_000);
  send("a-bit-ahead", T0 + 9_000);
  send("too-far-ahead", T0 + 11_000);
  assert.deepEqual(accepted, ["buffered-through-an-outage", "a-bit-ahead"]);
  assert.deepEqual(rejected, ["stale", "future"]);
  assert.throws(() => new ClaimIntake({ ...optionsOf(clock), maxClaimAgeMs: 0 }), RangeError);
  assert.throws(
    () => new ClaimIntake({ ...optionsOf(clock), maxClaimAgeMs: 8 * 24 * 3_600_000 }),
    RangeError,
  );
});

function optionsOf(clock: ManualClock): ClaimIntakeOptions {
  return {
    clusterId: "test",
    validate: () => true,
    keyring: () => Keyring.EMPTY,
    clock,
    onAccept: () => {},
  };
}

Deno.test("ClaimIntake bounds its state: lanes go when drained, a flood of made-up agents cannot evict a keyed agent's mark", async () => {
  const { a, ring } = await keys();
  const h = harness(ring, { maxTrackedAgents: 100 });
  const keyed = await signedMessage(
    makeClaim({ agent_id: "agent-a", hlc: hlcAt(T0, 1) }),
    a.keyPair.privateKey,
    "ka",
  );
  h.intake.handle(keyed);
  await h.intake.idle();
  for (let i = 0; i < 20_000; i++) {
    h.intake.handle(claimMessage(makeClaim({ agent_id: `junk-${i}`, hlc: hlcAt(T0, 1) })));
  }
  assert.equal(h.intake.lanes, 0, "no lane outlives its claims");
  assert.equal(h.intake.replay.stats.marks, 101, "100 unkeyed marks and the keyed one");
  assert.equal(h.intake.replay.stats.evicted, 19_900);
  h.intake.handle(keyed);
  await h.intake.idle();
  assert.equal(h.intake.stats.rejected.replay, 1, "the keyed agent's replay is still refused");
});

import assert from "node:assert/strict";
import {
  BackbeatError,
  BeatBudgetExceededError,
  Client,
  type ClientConfig,
  compareHlc,
  defaultConfig,
  exportPublicKey,
  generateSigningKeyPair,
  InMemoryBus,
  InvalidMessageError,
  parseHlc,
  type StatusClaim,
  subjects,
} from "./mod.ts";
import { importPublicKey, Keyring, ManualClock, verifyPayload, verifySigned } from "../core/mod.ts";
import { beatFeedOf } from "./_beat_feed.ts";
import { listenerRegistryOf } from "./_client.ts";
import { BeatSource, quietLogger, recordBeats, settle, SwitchBus } from "../tests/sdk_helpers.ts";
import { until } from "../tests/until.ts";

const dec = new TextDecoder();
const CLUSTER = "unit";

function config(bus: InMemoryBus | SwitchBus, extra: Partial<ClientConfig> = {}): ClientConfig {
  const c = defaultConfig();
  c.clusterId = CLUSTER;
  c.agentId = "agent-1";
  c.bus = bus;
  c.logger = quietLogger();
  c.localDegradation = false;
  return { ...c, ...extra };
}

function claims(bus: InMemoryBus) {
  const got: { claim: StatusClaim; headers: Record<string, string>; data: Uint8Array }[] = [];
  bus.subscribe(subjects(CLUSTER).status, (m) => {
    got.push({
      claim: JSON.parse(dec.decode(m.data)),
      headers: { ...m.headers },
      data: m.data,
    });
  });
  return got;
}

Deno.test("Client delivers beats in order, once, dropping duplicates and stale frames", async () => {
  const bus = new InMemoryBus();
  await using client = new Client(config(bus));
  const got = recordBeats(client);
  await client.start();
  const source = new BeatSource(bus, CLUSTER);
  for (const i of [0, 1, 2, 2, 1, 3, 6, 5, 7]) await source.publish(i);
  await bus.flush();
  assert.deepEqual(got.map((b) => b.index), [0, 1, 2, 3, 6, 7]);
  assert.ok(got.every((b) => !b.synthetic));
  const h = client.health();
  assert.equal(h.droppedFrames, 3);
  assert.equal(h.missedBeats, 2);
  assert.equal(h.lastBeat, 7);
  assert.equal(h.phase, "review");
  assert.equal(h.windowId, (await source.frame(7)).window_id);
  assert.equal(h.tempoBpm, 60);
  assert.equal(h.connected, true);
  await bus.close();
});

Deno.test("Client drops a deposed pulse's stale frames while following the new leader", async () => {
  const bus = new InMemoryBus();
  await using client = new Client(config(bus));
  const got = recordBeats(client);
  await client.start();
  const leader = new BeatSource(bus, CLUSTER, { pulseId: "new" });
  const deposed = new BeatSource(bus, CLUSTER, { pulseId: "old" });
  for (let i = 10; i < 20; i++) {
    await leader.publish(i);
    await deposed.publish(i - 3); // an old leader lagging behind, still publishing
  }
  await bus.flush();
  assert.deepEqual(got.map((b) => b.index), [10, 11, 12, 13, 14, 15, 16, 17, 18, 19]);
  assert.equal(client.health().droppedFrames, 10);
  await bus.close();
});

Deno.test("Client gives callbacks the frame, headers and pulse's send time", async () => {
  const bus = new InMemoryBus();
  await using client = new Client(config(bus));
  const infos: { pulse?: string; sentAt?: number; synthetic: boolean }[] = [];
  client.onBeat((_f, info) => {
    infos.push({
      pulse: info.headers?.["x-pulse-id"],
      sentAt: info.sentAt,
      synthetic: info.synthetic,
    });
  });
  await client.start();
  await new BeatSource(bus, CLUSTER).publish(0);
  await bus.flush();
  assert.equal(infos.length, 1);
  assert.equal(infos[0].pulse, "pulse-a");
  assert.equal(infos[0].synthetic, false);
  assert.ok(Math.abs(infos[0].sentAt! - (performance.timeOrigin + performance.now())) < 5000);
  await bus.close();
});

Deno.test("onDownbeat fires on downbeats only and unsubscribing stops delivery", async () => {
  const bus = new InMemoryBus();
  await using client = new Client(config(bus));
  const bars: number[] = [];
  const off = client.onDownbeat((f) => {
    bars.push(f.beat_index);
  });
  const events: string[] = [];
  client.addEventListener("downbeat", (e) => {
    events.push(`down ${e.detail.frame.beat_index}`);
  });
  await client.start();
  const source = new BeatSource(bus, CLUSTER);
  for (let i = 0; i < 9; i++) await source.publish(i);
  await bus.flush();
  assert.deepEqual(bars, [0, 4, 8]);
  assert.deepEqual(events, ["down 0", "down 4", "down 8"]);
  off();
  off();
  for (let i = 9; i < 13; i++) await source.publish(i);
  await bus.flush();
  assert.deepEqual(bars, [0, 4, 8]);
  await bus.close();
});

Deno.test("a throwing or rejecting callback is isolated: counted, reported, others still run", async () => {
  const bus = new InMemoryBus();
  const logger = quietLogger();
  await using client = new Client(config(bus, { logger }));
  const seen: number[] = [];
  client.onBeat(() => {
    throw new Error("sync boom");
  });
  client.onBeat(() => Promise.reject(new Error("async boom")));
  client.onBeat((f) => {
    seen.push(f.beat_index);
  });
  client.addEventListener("beat", () => {
    throw new Error("listener boom");
  });
  const errors: string[] = [];
  client.addEventListener("error", (e) => errors.push(e.message));
  await client.start();
  const source = new BeatSource(bus, CLUSTER);
  await source.publish(0);
  await source.publish(1);
  await bus.flush();
  await settle();
  assert.deepEqual(seen, [0, 1]);
  const h = client.health();
  assert.equal(h.callbackErrors, 6);
  assert.equal(errors.length, 6);
  assert.ok(errors.some((m) => /sync boom/.test(m)));
  assert.ok(errors.some((m) => /async boom/.test(m)));
  assert.ok(errors.some((m) => /listener boom/.test(m)));
  assert.ok(
    h.lastErrors.some((e) => e.kind === "callback" && /beat 1: async boom/.test(e.message)),
  );
  assert.ok(logger.lines.some((l) => /sync boom/.test(l)));
  await bus.close();
});

Deno.test("a slow async callback does not delay the next beat for the other callbacks", async () => {
  const bus = new InMemoryBus();
  await using client = new Client(config(bus));
  let release!: () => void;
  const gate = new Promise<void>((r) => release = r);
  const slowDone: number[] = [];
  client.onBeat(async (f) => {
    await gate;
    slowDone.push(f.beat_index);
  });
  const fast = recordBeats(client);
  await client.start();
  const source = new BeatSource(bus, CLUSTER);
  for (let i = 0; i < 3; i++) await source.publish(i);
  await bus.flush();
  assert.deepEqual(fast.map((b) => b.index), [0, 1, 2]);
  assert.deepEqual(slowDone, []);
  release();
  await settle();
  assert.deepEqual(slowDone, [0, 1, 2]);
  await bus.close();
});

Deno.test("frames that fail the gate are counted by reason, logged once, and never delivered", async () => {
  const bus = new InMemoryBus();
  const logger = quietLogger();
  await using client = new Client(config(bus, { logger }));
  const got = recordBeats(client);
  let errorEvents = 0;
  client.addEventListener("error", () => errorEvents++);
  await client.start();
  const source = new BeatSource(bus, CLUSTER);
  source.publishRaw("{not json");
  await source.publish(1, (f) => ({ ...f, phase: "rest" }));
  await source.publish(2, (f) => ({ ...f, window_id: "xyz" }));
  await source.publish(3, (f) => ({ ...f, cluster_id: "other" }));
  await source.publish(4, (f) => ({ ...f, type: "backbeat.statusclaim.v1" }));
  source.publishRaw(JSON.stringify({ ...await source.frame(4), notes: "x".repeat(17_000) }));
  await source.publish(5);
  await bus.flush();
  assert.deepEqual(got.map((b) => b.index), [5]);
  const h = client.health();
  assert.deepEqual(h.framesRejected, { json: 1, schema: 3, cluster: 1, size: 1 });
  assert.equal(h.droppedFrames, 6);
  // Junk is no event (a hostile bus must not drive listeners) and one log line, not six: the
  // first refusal with its reason; the others wait for the next summary.
  assert.equal(errorEvents, 0);
  assert.equal(logger.lines.length, 1);
  assert.match(logger.lines[0], /^\[backbeat\] Refused beat frames \(json\): frame is not JSON/);
  assert.deepEqual(h.lastErrors.map((e) => e.kind), ["invalid_frame"]);
  await client.stop();
  // Stopping writes the summary of what the interval held back.
  assert.equal(logger.lines.length, 2);
  assert.match(logger.lines[1], /since the last line: 3 schema, 1 cluster, 1 size/);
  await bus.close();
});

Deno.test("clients on one bus share one subscription: each frame is parsed once", async () => {
  const bus = new InMemoryBus();
  const a = new Client(config(bus, { agentId: "a" }));
  const b = new Client(config(bus, { agentId: "b" }));
  const gotA = recordBeats(a);
  const gotB = recordBeats(b);
  await a.start();
  await b.start();
  assert.equal(bus.subscriptionCount, 1);
  const source = new BeatSource(bus, CLUSTER);
  for (let i = 0; i < 5; i++) await source.publish(i);
  await bus.flush();
  assert.equal(gotA.length, 5);
  assert.equal(gotB.length, 5);
  assert.equal(gotA[2].frame, gotB[2].frame); // the same frozen object
  assert.ok(Object.isFrozen(gotA[2].frame));
  assert.equal(beatFeedOf(bus, CLUSTER)?.parsed, 5);
  assert.equal(a.health().framesParsed, 5);
  assert.equal(b.health().framesParsed, 5);
  await a.stop();
  assert.equal(bus.subscriptionCount, 1);
  await b.stop();
  assert.equal(bus.subscriptionCount, 0);
  assert.equal(beatFeedOf(bus, CLUSTER), undefined);
  await bus.close();
});

Deno.test("emitStatusClaim fills the claim and sends x-window-id, x-hlc and x-agent-id", async () => {
  const bus = new InMemoryBus();
  const sent = claims(bus);
  await using client = new Client(config(bus, { taskId: "task-9" }));
  await client.start();
  const source = new BeatSource(bus, CLUSTER);
  await client.emitStatusClaim({ state: "planning" });
  const frame = await source.publish(6);
  await bus.flush();
  await client.emitStatusClaim({ state: "executing", progress: 0.5, notes: "Processing data" });
  await client.emitStatusClaim({ state: "completed", progress: 1, beats_left: 0, task_id: "t2" });
  await bus.flush();
  assert.equal(sent.length, 3);
  const [first, second, third] = sent;
  assert.equal(first.claim.beat_index, 0);
  assert.deepEqual(Object.keys(second.claim).sort(), [
    "agent_id",
    "beat_index",
    "beats_left",
    "hlc",
    "notes",
    "progress",
    "state",
    "task_id",
    "type",
  ]);
  assert.equal(second.claim.type, "backbeat.statusclaim.v1");
  assert.equal(second.claim.agent_id, "agent-1");
  assert.equal(second.claim.task_id, "task-9");
  assert.equal(second.claim.beat_index, 6);
  assert.equal(second.claim.state, "executing");
  assert.equal(second.claim.progress, 0.5);
  assert.equal(second.claim.beats_left, 0);
  assert.equal(second.claim.notes, "Processing data");
  assert.equal(third.claim.task_id, "t2");
  assert.equal(second.headers["x-window-id"], frame.window_id);
  assert.equal(second.headers["x-hlc"], second.claim.hlc);
  assert.equal(second.headers["x-agent-id"], "agent-1");
  assert.equal(second.headers["x-signature"], undefined);
  // HLC stamps are increasing.
  assert.ok(compareHlc(parseHlc(first.claim.hlc), parseHlc(second.claim.hlc)) < 0);
  assert.ok(compareHlc(parseHlc(second.claim.hlc), parseHlc(third.claim.hlc)) < 0);
  assert.equal(client.health().claimsSent, 3);
  await bus.close();
});

Deno.test("signed claims carry x-signature and x-key-id over the claim domain and the cluster", async () => {
  for (const form of ["cryptokey", "jwk", "seed"] as const) {
    const bus = new InMemoryBus();
    const sent = claims(bus);
    const pair = await generateSigningKeyPair();
    const seed = crypto.getRandomValues(new Uint8Array(32));
    const signingKey = form === "cryptokey"
      ? pair.keyPair.privateKey
      : form === "jwk"
      ? pair.privateJwk
      : seed;
    const client = new Client(config(bus, { signingKey }));
    await client.start();
    const publicKey = form === "seed"
      ? client.publicKey!
      : await exportPublicKey(pair.keyPair.publicKey);
    assert.equal(client.publicKey, publicKey);
    for (let i = 0; i < 5; i++) client.emitStatusClaim({ state: "executing", progress: i / 10 });
    await client.stop();
    await bus.flush();
    assert.equal(sent.length, 5, form);
    assert.deepEqual(sent.map((s) => s.claim.progress), [0, 0.1, 0.2, 0.3, 0.4]); // call order
    // What reverb checks: the agent's own key, over signedBytes(claim domain, cluster, payload).
    const keyring = await Keyring.fromJson({
      "agent-1": [{ key_id: client.keyId!, public_key: publicKey }],
    });
    const key = await importPublicKey(publicKey);
    for (const s of sent) {
      assert.equal(s.headers["x-key-id"], client.keyId);
      assert.equal(s.headers["x-signature"].length, 88); // base64 of 64 bytes
      const check = (cluster: string, data: Uint8Array, owner = "agent-1") =>
        verifySigned(keyring, "backbeat.statusclaim.v1", cluster, data, s.headers, { owner });
      assert.equal((await check(CLUSTER, s.data)).ok, true);
      // Bound to its cluster, its domain and its agent; not the 0.1 form over the payload alone.
      assert.deepEqual(await check("other", s.data), { ok: false, reason: "bad_signature" });
      assert.deepEqual(await check(CLUSTER, s.data, "agent-2"), {
        ok: false,
        reason: "unknown_key",
      });
      const asFrame = await verifySigned(
        keyring,
        "backbeat.beatframe.v1",
        CLUSTER,
        s.data,
        s.headers,
      );
      assert.equal(asFrame.ok, false);
      assert.equal(await verifyPayload(key, s.data, s.headers["x-signature"]), false);
      const tampered = new Uint8Array(s.data);
      tampered[tampered.length - 2] ^= 1;
      assert.equal((await check(CLUSTER, tampered)).ok, false);
    }
    await bus.close();
  }
});

Deno.test("emitStatusClaim rejects a bad claim with invalid_claim and sends nothing", async () => {
  const bus = new InMemoryBus();
  const sent = claims(bus);
  await using client = new Client(config(bus));
  await client.start();
  const cases: [Record<string, unknown>, RegExp][] = [
    [{ state: "executing", progress: 1.5 }, /^Cannot emit claim: progress 1\.5 is above 1$/],
    [{ state: "executing", progress: -0.1 }, /progress -0\.1 is below 0/],
    [{ state: "executing", progress: "half" }, /progress "half" is not a number/],
    [{ state: "sleeping" }, /state "sleeping" is not one of idle, planning/],
    [{ state: "executing", beats_left: -1 }, /beats_left -1 is below 0/],
    [{ state: "executing", beats_left: 1.5 }, /beats_left 1\.5 is not an integer/],
    [{ state: "executing", notes: "x".repeat(257) }, /notes is 257 characters long/],
    [{ state: "executing", task_id: "" }, /task_id "" is not a string/],
  ];
  for (const [input, message] of cases) {
    await assert.rejects(
      // deno-lint-ignore no-explicit-any
      client.emitStatusClaim(input as any),
      (e) =>
        e instanceof InvalidMessageError && e instanceof BackbeatError &&
        e.code === "invalid_claim" && message.test(e.message) && e.errors.length > 0,
    );
  }
  await bus.flush();
  assert.equal(sent.length, 0);
  assert.equal(client.health().claimsSent, 0);
  await bus.close();
});

Deno.test("claims wait in a bounded buffer while disconnected and flush in order on reconnect", async () => {
  const bus = new SwitchBus();
  const sent: StatusClaim[] = [];
  bus.inner.subscribe(subjects(CLUSTER).status, (m) => sent.push(JSON.parse(dec.decode(m.data))));
  await using client = new Client(config(bus.inner, { bus, claimBufferSize: 3 }));
  await client.start();
  await client.emitStatusClaim({ state: "executing", notes: "before" });
  bus.set("disconnected");
  assert.equal(client.health().connected, false);
  for (let i = 0; i < 3; i++) await client.emitStatusClaim({ state: "executing", notes: `b${i}` });
  assert.equal(client.health().claimsBuffered, 3);
  await assert.rejects(
    client.emitStatusClaim({ state: "executing", notes: "over" }),
    (e) =>
      e instanceof BackbeatError && e.code === "buffer_full" &&
      /buffer of 3 claims is full/.test(e.message),
  );
  assert.equal(client.health().claimsDropped, 1);
  bus.set("connected");
  await client.emitStatusClaim({ state: "executing", notes: "after" });
  await bus.flush();
  assert.deepEqual(sent.map((c) => c.notes), ["before", "b0", "b1", "b2", "after"]);
  const h = client.health();
  assert.equal(h.claimsBuffered, 0);
  assert.equal(h.claimsSent, 5);
  assert.equal(h.reconnectCount, 1);
  await bus.close();
});

Deno.test("a buffered claim keeps its own beat_index, HLC and window, however late it is sent", async () => {
  const bus = new SwitchBus();
  const sent: { claim: StatusClaim; headers: Record<string, string> }[] = [];
  bus.inner.subscribe(subjects(CLUSTER).status, (m) => {
    sent.push({ claim: JSON.parse(dec.decode(m.data)), headers: { ...m.headers } });
  });
  await using client = new Client(config(bus.inner, { bus }));
  await client.start();
  const source = new BeatSource(bus.inner, CLUSTER);
  await source.publish(4);
  await bus.flush();
  bus.set("disconnected");
  await client.emitStatusClaim({ state: "executing", notes: "at 4" });
  const frame5 = await source.publish(5);
  await bus.flush();
  await client.emitStatusClaim({ state: "executing", notes: "at 5" });
  await source.publish(6);
  await source.publish(7);
  await bus.flush();
  bus.set("connected");
  await client.emitStatusClaim({ state: "executing", notes: "at 7" });
  await bus.flush();
  assert.deepEqual(sent.map((s) => [s.claim.notes, s.claim.beat_index]), [
    ["at 4", 4],
    ["at 5", 5],
    ["at 7", 7],
  ]);
  assert.equal(sent[1].headers["x-window-id"], frame5.window_id);
  assert.equal(sent[1].headers["x-hlc"], sent[1].claim.hlc);
  // Stamped when emitted, not when flushed: in call order, before the claim emitted after them.
  const stamps = sent.map((s) => parseHlc(s.claim.hlc));
  assert.ok(compareHlc(stamps[0], stamps[1]) < 0 && compareHlc(stamps[1], stamps[2]) < 0);
  await bus.close();
});

Deno.test("every accepted claim is counted once as sent, buffered or dropped, and every loss is an error event", async () => {
  const bus = new SwitchBus();
  const logger = quietLogger();
  const client = new Client(config(bus.inner, { bus, claimBufferSize: 2, logger }));
  const errors: string[] = [];
  client.addEventListener("error", (e) => errors.push(e.message));
  await client.start();
  const counts = () => {
    const h = client.health();
    return [h.claimsSent, h.claimsBuffered, h.claimsDropped];
  };
  await client.emitStatusClaim({ state: "executing" });
  assert.deepEqual(counts(), [1, 0, 0]);
  // Invalid claims are refused before they count.
  await assert.rejects(client.emitStatusClaim({ state: "executing", progress: 2 }));
  bus.set("disconnected");
  await client.emitStatusClaim({ state: "executing" });
  await client.emitStatusClaim({ state: "executing" });
  assert.deepEqual(counts(), [1, 2, 0]);
  for (let i = 0; i < 3; i++) {
    await assert.rejects(
      client.emitStatusClaim({ state: "executing" }),
      (e) => e instanceof BackbeatError && e.code === "buffer_full",
    );
  }
  assert.deepEqual(counts(), [1, 2, 3]);
  assert.equal(errors.filter((m) => /buffer of 2 claims is full/.test(m)).length, 3);
  bus.set("connected");
  assert.deepEqual(counts(), [3, 0, 3]);
  bus.set("disconnected");
  await client.emitStatusClaim({ state: "failed" });
  await client.stop();
  assert.deepEqual(counts(), [3, 0, 4]);
  assert.equal(errors.length, 4);
  assert.match(
    errors[3],
    /Lost 1 buffered claims: the client stopped while the bus was disconnected/,
  );
  // Four losses, logged rate-limited: the first at once, the rest summed up on stop.
  const lossLines = logger.lines.filter((l) => /Lost status claims/.test(l));
  assert.equal(lossLines.length, 2);
  assert.match(lossLines[1], /since the last line: 3 buffer_full/);
  assert.equal(client.health().lastErrors.filter((e) => e.kind === "claim").length, 2);
  await bus.close();
});

Deno.test("a claim emitted after the bus closed under the client is dropped and reported", async () => {
  const bus = new InMemoryBus();
  const client = new Client(config(bus));
  const errors: string[] = [];
  client.addEventListener("error", (e) => errors.push(e.message));
  await client.start();
  await bus.close();
  await assert.rejects(
    client.emitStatusClaim({ state: "idle" }),
    (e) => e instanceof BackbeatError && e.code === "closed",
  );
  assert.equal(client.health().claimsDropped, 1);
  assert.ok(errors.some((m) => /the bus is closed/.test(m)));
  await client.stop();
});

Deno.test("claims left buffered by a failed flush go out, in order, with the next claim", async () => {
  const bus = new SwitchBus();
  const sent: string[] = [];
  bus.inner.subscribe(
    subjects(CLUSTER).status,
    (m) => sent.push(JSON.parse(dec.decode(m.data)).notes),
  );
  await using client = new Client(config(bus.inner, { bus }));
  await client.start();
  bus.set("disconnected");
  await client.emitStatusClaim({ state: "executing", notes: "b0" });
  await client.emitStatusClaim({ state: "executing", notes: "b1" });
  bus.failPublishes = 1; // the link drops again during the flush on reconnect
  bus.set("connected");
  assert.equal(client.health().claimsBuffered, 2);
  await client.emitStatusClaim({ state: "executing", notes: "after" });
  await bus.flush();
  assert.deepEqual(sent, ["b0", "b1", "after"]);
  assert.equal(client.health().claimsBuffered, 0);
  assert.equal(client.health().claimsSent, 3);
  await bus.close();
});

Deno.test("stop() while disconnected counts buffered claims as dropped and reports them", async () => {
  const bus = new SwitchBus();
  const logger = quietLogger();
  const client = new Client(config(bus.inner, { bus, logger }));
  await client.start();
  bus.set("disconnected");
  await client.emitStatusClaim({ state: "failed" });
  await client.emitStatusClaim({ state: "failed" });
  await client.stop();
  const h = client.health();
  assert.equal(h.claimsDropped, 2);
  assert.equal(h.claimsBuffered, 0);
  assert.ok(logger.lines.some((l) => /Lost 2 buffered claims/.test(l)));
  await bus.close();
});

Deno.test("withBeatBudget() returns the result when the work finishes within its beats", async () => {
  const bus = new InMemoryBus();
  await using client = new Client(config(bus));
  await client.start();
  const source = new BeatSource(bus, CLUSTER);
  let aborted = false;
  const result = client.withBeatBudget(3, async (signal) => {
    signal.addEventListener("abort", () => aborted = true);
    await source.publish(0);
    await source.publish(1);
    await bus.flush();
    return "done";
  });
  assert.equal(await result, "done");
  await source.publish(2);
  await source.publish(3);
  await bus.flush();
  assert.equal(aborted, false);
  await bus.close();
});

Deno.test("withBeatBudget() aborts after n beats and rejects with BeatBudgetExceededError", async () => {
  const bus = new InMemoryBus();
  await using client = new Client(config(bus));
  await client.start();
  const source = new BeatSource(bus, CLUSTER);
  let signal!: AbortSignal;
  const call = client.withBeatBudget(3, (s) => {
    signal = s;
    return new Promise<string>(() => {}); // never finishes by itself
  });
  let settled = false;
  call.catch(() => settled = true);
  for (let i = 0; i < 2; i++) await source.publish(i);
  await bus.flush();
  await settle();
  assert.equal(signal.aborted, false);
  assert.equal(settled, false);
  await source.publish(2);
  await bus.flush();
  await assert.rejects(call, (e) => {
    assert.ok(e instanceof BeatBudgetExceededError);
    assert.equal(e.beatsUsed, 3);
    assert.equal(e.budget, 3);
    assert.equal(e.code, "budget_exceeded");
    return true;
  });
  assert.equal(signal.aborted, true);
  assert.ok(signal.reason instanceof BeatBudgetExceededError);
  await bus.close();
});

Deno.test("withBeatBudget() passes errors from the work through and checks its arguments", async () => {
  const bus = new InMemoryBus();
  await using client = new Client(config(bus));
  await assert.rejects(
    client.withBeatBudget(1, () => 1),
    (e) => e instanceof BackbeatError && e.code === "not_started",
  );
  await client.start();
  await assert.rejects(
    client.withBeatBudget(2, () => {
      throw new SyntaxError("sync");
    }),
    SyntaxError,
  );
  await assert.rejects(client.withBeatBudget(2, () => Promise.reject(new URIError("x"))), URIError);
  await assert.rejects(client.withBeatBudget(0, () => 1), RangeError);
  // deno-lint-ignore no-explicit-any
  await assert.rejects(client.withBeatBudget(1, "nope" as any), TypeError);
  await bus.close();
});

Deno.test("stop() ends running budgets with closed and is idempotent; a stopped client cannot restart", async () => {
  const bus = new InMemoryBus();
  const client = new Client(config(bus));
  await assert.rejects(
    client.emitStatusClaim({ state: "idle" }),
    (e) => e instanceof BackbeatError && e.code === "not_started",
  );
  await client.start();
  await client.start(); // same promise, no error
  const call = client.withBeatBudget(5, () => new Promise(() => {}));
  call.catch(() => {});
  const first = client.stop();
  assert.equal(client.stop(), first);
  await first;
  await assert.rejects(call, (e) => e instanceof BackbeatError && e.code === "closed");
  assert.equal(client.state, "stopped");
  assert.equal(client.health().connected, false);
  await assert.rejects(client.start(), (e) => e instanceof BackbeatError && e.code === "closed");
  await assert.rejects(
    client.emitStatusClaim({ state: "idle" }),
    (e) => e instanceof BackbeatError && e.code === "closed",
  );
  await bus.close();
});

Deno.test("start(signal) stops the client when the signal aborts", async () => {
  const bus = new InMemoryBus();
  const client = new Client(config(bus));
  const controller = new AbortController();
  await client.start(controller.signal);
  assert.equal(client.state, "running");
  controller.abort();
  await until(() => client.state === "stopped", { what: "the client to stop on abort" });
  const aborted = new AbortController();
  aborted.abort();
  await assert.rejects(
    new Client(config(bus)).start(aborted.signal),
    (e) => e instanceof BackbeatError && e.code === "aborted",
  );
  await bus.close();
});

Deno.test("new Client() rejects bad configuration with clear errors", () => {
  const bus = new InMemoryBus();
  assert.throws(() => new Client(config(bus, { clusterId: "a.b" })), /Invalid cluster id "a\.b"/);
  assert.throws(() => new Client(config(bus, { agentId: "" })), TypeError);
  assert.throws(
    () => new Client(config(bus, { bus: undefined })),
    /set natsUrl \(a NATS server URL\) or bus/,
  );
  assert.throws(() => new Client(config(bus, { jitterToleranceMs: -1 })), RangeError);
  assert.throws(() => new Client(config(bus, { beatsPerBar: 0 })), RangeError);
  assert.throws(() => new Client(config(bus, { claimBufferSize: 1.5 })), RangeError);
  const c = new Client(config(bus, { maxCallbacks: 2 }));
  c.onBeat(() => {});
  c.onDownbeat(() => {});
  assert.throws(() => c.onBeat(() => {}), /2 callbacks are already registered/);
  // deno-lint-ignore no-explicit-any
  assert.throws(() => c.onBeat(null as any), TypeError);
});

Deno.test("a bad signing key fails start() with a key error", async () => {
  const bus = new InMemoryBus();
  const client = new Client(config(bus, { signingKey: new Uint8Array(5) }));
  await assert.rejects(client.start(), (e) => e instanceof BackbeatError && e.code === "key");
  assert.equal(client.state, "stopped");
  await bus.close();
});

Deno.test("callback latency is kept over a bounded window", async () => {
  const bus = new InMemoryBus();
  const clock = new ManualClock(0);
  await using client = new Client(config(bus, { clock, latencyWindowSize: 4 }));
  client.onBeat(() => {});
  await client.start();
  const source = new BeatSource(bus, CLUSTER);
  for (let i = 0; i < 10; i++) await source.publish(i);
  await bus.flush();
  const lat = client.health().callbackLatency;
  assert.equal(lat.count, 4);
  assert.equal(lat.max, 0); // a manual clock does not move while callbacks run
  await bus.close();
});

Deno.test("once listeners leave the listener registry when they fire: 10,000 over 10,000 beats", async () => {
  const bus = new InMemoryBus();
  await using client = new Client(config(bus));
  const registry = listenerRegistryOf(client);
  await client.start();
  const source = new BeatSource(bus, CLUSTER);
  let fired = 0;
  let largest = 0;
  for (let i = 0; i < 10_000; i++) {
    client.addEventListener("beat", (e) => {
      assert.equal(e.detail.frame.beat_index, i);
      fired++;
    }, { once: true });
    largest = Math.max(largest, registry.size);
    await source.publish(i);
    await bus.flush();
  }
  assert.equal(fired, 10_000);
  assert.equal(largest, 1);
  assert.equal(registry.size, 0);
  assert.equal(registry.has("beat"), false);
  // Removed before it fired, a once listener is gone too, and it never fires.
  let early = 0;
  const listener = () => early++;
  client.addEventListener("downbeat", listener, { once: true });
  client.addEventListener("downbeat", listener, { once: true }); // a duplicate, as EventTarget
  assert.equal(registry.count("downbeat"), 1);
  client.removeEventListener("downbeat", listener);
  assert.equal(registry.size, 0);
  await source.publish(10_000);
  await bus.flush();
  assert.equal(early, 0);
  await bus.close();
});

Deno.test("listeners removed by their AbortSignal leave the listener registry", async () => {
  const bus = new InMemoryBus();
  await using client = new Client(config(bus));
  const registry = listenerRegistryOf(client);
  await client.start();
  const source = new BeatSource(bus, CLUSTER);
  const controller = new AbortController();
  const seen: number[] = [];
  for (let i = 0; i < 100; i++) {
    client.addEventListener("beat", (e) => {
      seen.push(e.detail.frame.beat_index);
    }, { signal: controller.signal });
  }
  client.addEventListener("downbeat", () => {}, { signal: controller.signal, once: true });
  assert.equal(registry.count("beat"), 100);
  assert.equal(registry.size, 101);
  await source.publish(0);
  await bus.flush();
  assert.equal(seen.length, 100);
  controller.abort();
  assert.equal(registry.size, 0);
  await source.publish(1);
  await bus.flush();
  assert.equal(seen.length, 100);
  // A listener added with an aborted signal is never registered, by the target or the registry.
  client.addEventListener("beat", () => {
    seen.push(-1);
  }, { signal: controller.signal });
  assert.equal(registry.size, 0);
  await source.publish(2);
  await bus.flush();
  assert.equal(seen.length, 100);
  await bus.close();
});

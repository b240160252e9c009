import assert from "node:assert/strict";
import {
  generateSigningKeyPair,
  hmacKey,
  hmacSign,
  hmacVerify,
  importSigningKey,
  InMemoryBus,
  Keyring,
  type LogFields,
  ManualClock,
  signedBytes,
  verifySigned,
} from "../core/mod.ts";
import { controlMessage, Pulse, type PulseOptions } from "./mod.ts";

const START = 1_700_000_000_000;
const CONTROL = "backbeat.c1.control";
const dec = new TextDecoder();
const enc = new TextEncoder();

async function operatorKey() {
  const pair = await generateSigningKeyPair();
  const key = await importSigningKey(pair.keyPair.privateKey, "op-1");
  const keyring = await Keyring.fromJson({
    operators: [{ key_id: "op-1", public_key: pair.publicKey }],
  });
  return { key, keyring };
}

async function securedPulse(options: Partial<PulseOptions> = {}) {
  const clock = new ManualClock(START);
  const bus = new InMemoryBus();
  const warnings: { msg: string; fields?: LogFields }[] = [];
  const logger = {
    debug() {},
    info() {},
    error() {},
    warn: (msg: string, fields?: LogFields) => void warnings.push({ msg, fields }),
  };
  const pulse = new Pulse({ clusterId: "c1", bus, clock, tempoBpm: 120, logger, ...options });
  await pulse.start();
  const send = async (m: { data: Uint8Array; headers?: Record<string, string> }) => {
    bus.publish(CONTROL, m.data, { headers: m.headers });
    await bus.flush();
    await pulse.settled();
  };
  return {
    clock,
    bus,
    pulse,
    warnings,
    send,
    rejected: () => pulse.metrics().controlRejectedByReason,
    async done() {
      await pulse.stop();
      await bus.close();
    },
  };
}

Deno.test("controlMessage() proves the token by HMAC and an operator key by signature, over cluster and payload", async () => {
  const { key, keyring } = await operatorKey();
  const m = await controlMessage({
    clusterId: "c1",
    tempoBpm: 90,
    token: "s3cret",
    key,
    issuedAt: START,
    requestedBy: "ops",
  });
  assert.deepEqual(JSON.parse(dec.decode(m.data)), {
    tempo_bpm: 90,
    issued_at: "2023-11-14T22:13:20.000Z",
    requested_by: "ops",
  });
  assert.match(m.headers["x-auth-hmac"], /^[0-9a-f]{64}$/);
  assert.equal(m.headers["x-key-id"], "op-1");
  assert.ok(!JSON.stringify(m).includes("s3cret"), "the token itself is never sent");
  const hk = await hmacKey("s3cret");
  const bytes = signedBytes("backbeat.control.v1", "c1", m.data);
  assert.equal(await hmacVerify(hk, bytes, m.headers["x-auth-hmac"]), true);
  assert.equal(
    await hmacVerify(
      hk,
      signedBytes("backbeat.control.v1", "c2", m.data),
      m.headers["x-auth-hmac"],
    ),
    false,
  );
  const check = await verifySigned(keyring, "backbeat.control.v1", "c1", m.data, m.headers);
  assert.equal(check.ok, true);
  // Neither token nor key: an unauthenticated message, for an open control subject.
  assert.deepEqual((await controlMessage({ clusterId: "c1", tempoBpm: 60 })).headers, {});
  await assert.rejects(controlMessage({ clusterId: "c1", tempoBpm: 7000, token: "t" }), RangeError);
  await assert.rejects(controlMessage({ clusterId: "c.1", tempoBpm: 60 }), TypeError);
  await assert.rejects(controlMessage({ clusterId: "c1", tempoBpm: 60, token: "" }), TypeError);
  await assert.rejects(
    controlMessage({ clusterId: "c1", tempoBpm: 60, key: { keyId: "x" } as never }),
    TypeError,
  );
  await assert.rejects(controlMessage({ clusterId: "c1", tempoBpm: 60, issuedAt: NaN }), TypeError);
});

Deno.test("with an admin token and keyring, control must be authenticated, fresh and newer than the last", async () => {
  const { key, keyring } = await operatorKey();
  const stranger = await operatorKey();
  const t = await securedPulse({ adminToken: "s3cret", adminKeyring: keyring });
  try {
    await t.clock.advance(10);
    const at = (dt = 0) => START + 10 + dt;
    // No proof at all, in the open format: refused, nothing changes.
    await t.send({
      data: enc.encode(`{"tempo_bpm":60,"issued_at":"${new Date(at()).toISOString()}"}`),
    });
    // A forged HMAC, an HMAC for another cluster, a signature by a key not in the keyring.
    const good = await controlMessage({
      clusterId: "c1",
      tempoBpm: 60,
      token: "s3cret",
      issuedAt: at(1),
    });
    await t.send({ data: good.data, headers: { "x-auth-hmac": "0".repeat(64) } });
    await t.send(
      await controlMessage({ clusterId: "c2", tempoBpm: 60, token: "s3cret", issuedAt: at(1) })
        .then((m) => ({ data: good.data, headers: m.headers })),
    );
    await t.send(
      await controlMessage({ clusterId: "c1", tempoBpm: 60, key: stranger.key, issuedAt: at(1) }),
    );
    // A wrong token proves nothing either.
    await t.send(
      await controlMessage({ clusterId: "c1", tempoBpm: 60, token: "guess", issuedAt: at(1) }),
    );
    assert.deepEqual(t.rejected(), {
      unauthenticated: 1,
      bad_signature: 4,
      replay: 0,
      stale: 0,
      invalid: 0,
      rate_limited: 0,
    });
    assert.equal(t.pulse.timeline.segments.length, 1, "the tempo is unchanged");
    // The token's proof: applied at the next downbeat.
    await t.send(good);
    assert.equal(t.pulse.timeline.segments.length, 2);
    assert.equal(t.pulse.timeline.segments[1].tempoBpm, 60);
    // The same message again, or an older one: a replay.
    await t.send(good);
    await t.send(
      await controlMessage({ clusterId: "c1", tempoBpm: 30, token: "s3cret", issuedAt: at(0) }),
    );
    // Far from the pulse's clock either way: stale.
    await t.send(
      await controlMessage({
        clusterId: "c1",
        tempoBpm: 30,
        token: "s3cret",
        issuedAt: at(-31_000),
      }),
    );
    await t.send(
      await controlMessage({
        clusterId: "c1",
        tempoBpm: 30,
        token: "s3cret",
        issuedAt: at(31_000),
      }),
    );
    // Authenticated but not a request: no issued_at, a bad tempo; too large to look at.
    const noTime = enc.encode('{"tempo_bpm":30}');
    const hk = await hmacKey("s3cret");
    await t.send({
      data: noTime,
      headers: {
        "x-auth-hmac": await hmacSign(hk, signedBytes("backbeat.control.v1", "c1", noTime)),
      },
    });
    await t.send({ data: new Uint8Array(5000), headers: { "x-auth-hmac": "0".repeat(64) } });
    assert.deepEqual(t.rejected(), {
      unauthenticated: 1,
      bad_signature: 4,
      replay: 2,
      stale: 2,
      invalid: 2,
      rate_limited: 0,
    });
    assert.equal(t.pulse.timeline.segments.at(-1)!.tempoBpm, 60);
    // An operator's signature: applied too.
    await t.send(await controlMessage({ clusterId: "c1", tempoBpm: 90, key, issuedAt: at(2) }));
    assert.equal(t.pulse.timeline.segments.at(-1)!.tempoBpm, 90);
    assert.equal(t.pulse.metrics().controlRejected, 11);
    assert.deepEqual(t.pulse.status().controlRejected, t.rejected());
    // Counted, and logged without a token or a MAC.
    assert.ok(t.warnings.length >= 1);
    assert.ok(!JSON.stringify(t.warnings).includes("s3cret"));
  } finally {
    await t.done();
  }
});

Deno.test("a flood of 40,000 control messages is counted, bounded, logged in a few lines, and beats go on", async () => {
  const t = await securedPulse({ adminToken: "s3cret", tempoBpm: 600 });
  try {
    await t.clock.advance(10 + 100);
    await t.pulse.settled();
    const body = enc.encode(`{"tempo_bpm":60,"issued_at":"${new Date(START).toISOString()}"}`);
    for (let i = 0; i < 40_000; i++) {
      // Half without a proof, half with a forged one that needs an HMAC check.
      t.bus.publish(CONTROL, body, { headers: i % 2 ? { "x-auth-hmac": "ab".repeat(32) } : {} });
    }
    await t.bus.flush();
    await t.pulse.settled();
    const r = t.rejected();
    assert.equal(t.pulse.metrics().controlRejected, 40_000);
    assert.equal(r.unauthenticated, 20_000);
    // At most 32 waited for a check at a time; the rest were dropped unchecked.
    assert.ok(r.bad_signature >= 32 && r.bad_signature < 20_000, JSON.stringify(r));
    assert.equal(r.bad_signature + r.rate_limited, 20_000);
    // Beats go on, none skipped.
    for (let i = 0; i < 20; i++) {
      await t.clock.advance(100);
      await t.pulse.settled();
    }
    const m = t.pulse.metrics();
    assert.equal(m.beatsSkipped, 0);
    assert.equal(m.lastBeatIndex, 21);
    assert.equal(m.lateness.max, 0);
    // Two simulated seconds: the first refusal and at most one summary line.
    const lines = t.warnings.filter((w) => w.msg === "control messages rejected");
    assert.ok(lines.length >= 1 && lines.length <= 2, `${lines.length} lines`);
    assert.equal(t.pulse.timeline.segments.length, 1);
  } finally {
    await t.done();
  }
});

Deno.test("without a token or keyring control is open; control: false stops listening", async () => {
  const open = await securedPulse();
  try {
    await open.send({ data: enc.encode('{"tempo_bpm":60}') });
    await open.send({ data: enc.encode("nope") });
    assert.equal(open.pulse.timeline.segments.at(-1)!.tempoBpm, 60);
    assert.equal(open.rejected().invalid, 1);
  } finally {
    await open.done();
  }
  const off = await securedPulse({ control: false });
  try {
    await off.send({ data: enc.encode('{"tempo_bpm":60}') });
    await off.send({ data: enc.encode("nope") });
    assert.equal(off.pulse.timeline.segments.length, 1);
    assert.equal(off.pulse.metrics().controlRejected, 0);
    // setTempo itself still works on the leader.
    off.pulse.setTempo(60);
    assert.equal(off.pulse.timeline.segments.length, 2);
  } finally {
    await off.done();
  }
});

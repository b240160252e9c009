import assert from "node:assert/strict";
import {
  type BeatFrame,
  generateSigningKeyPair,
  importSigningKey,
  InMemoryBus,
  Keyring,
  ManualClock,
  parseHlc,
  verifySigned,
  windowId,
} from "../core/mod.ts";
import { Pulse } from "./mod.ts";

const START = 1_700_000_000_000;

interface Seen {
  data: Uint8Array;
  frame: BeatFrame;
  headers: Record<string, string>;
}

async function signedPulse(originTime?: number) {
  const pair = await generateSigningKeyPair();
  const key = await importSigningKey(pair.keyPair.privateKey);
  const keyring = await Keyring.fromJson({
    pulses: [{ key_id: key.keyId, public_key: pair.publicKey }],
  });
  const clock = new ManualClock(START);
  const bus = new InMemoryBus();
  const seen: Seen[] = [];
  bus.subscribe("backbeat.c1.beat", (m) => {
    const frame = JSON.parse(new TextDecoder().decode(m.data));
    seen.push({ data: m.data, frame, headers: { ...m.headers } });
  });
  const pulse = new Pulse({
    clusterId: "c1",
    bus,
    clock,
    tempoBpm: 600,
    signingKey: key,
    originTime,
  });
  await pulse.start();
  return {
    key,
    keyring,
    clock,
    bus,
    pulse,
    seen,
    async advance(ms: number) {
      let left = ms;
      do {
        await clock.advance(Math.min(25, left));
        await pulse.settled();
        left -= 25;
      } while (left > 0);
      await bus.flush();
    },
    async done() {
      await pulse.stop();
      await bus.close();
    },
  };
}

Deno.test("a pulse with a signing key signs every frame, bound to cluster and epoch, on time", async () => {
  const t = await signedPulse();
  try {
    await t.advance(10 + 11 * 100);
    assert.equal(t.seen.length, 12);
    const epoch = t.pulse.epoch;
    assert.equal(epoch, START);
    for (const { data, frame, headers } of t.seen) {
      assert.equal(headers["x-key-id"], t.key.keyId);
      assert.equal(headers["x-hlc"], frame.hlc);
      assert.equal(frame.epoch, epoch);
      assert.equal(
        frame.window_id,
        await windowId("c1", frame.beat_index - (frame.beat_index % 4), epoch),
      );
      const check = await verifySigned(t.keyring, "backbeat.beatframe.v1", "c1", data, headers, {
        epoch,
      });
      assert.equal(check.ok, true, `beat ${frame.beat_index}`);
      // The signature covers this cluster, this epoch and these exact bytes only.
      const other = await verifySigned(t.keyring, "backbeat.beatframe.v1", "c2", data, headers, {
        epoch,
      });
      assert.deepEqual(other, { ok: false, reason: "bad_signature" });
      const older = await verifySigned(t.keyring, "backbeat.beatframe.v1", "c1", data, headers, {
        epoch: epoch - 1,
      });
      assert.equal(older.ok, false);
    }
    // Stamped and signed 10 ms before each beat was due (beat 0, prepared 10 ms ahead, at once),
    // so nothing is left but the publish when the beat is due.
    const origin = t.pulse.timeline.dueAt(0);
    for (const { frame, headers } of t.seen.slice(1)) {
      const due = origin + frame.beat_index * 100;
      assert.equal(parseHlc(frame.hlc).physical, (due - 10) >>> 0);
      assert.equal(Number(headers["x-pulse-sent"]), due);
    }
    const m = t.pulse.metrics();
    assert.equal(m.lateness.count, 12);
    assert.equal(m.lateness.max, 0);
    assert.deepEqual(t.seen.map((s) => s.frame.beat_index), [...Array(12).keys()]);
  } finally {
    await t.done();
  }
});

Deno.test("signed frames stay signed through a tempo change and catch-up beats", async () => {
  // Three beats already due at start: published at once, each signed before it goes out.
  const t = await signedPulse(START - 250);
  try {
    // Each catch-up beat waits for its signature (real WebCrypto work) before it goes out: let
    // simulated time stand still while that finishes.
    for (let i = 0; i < 10 && t.seen.length < 3; i++) await t.advance(0);
    assert.deepEqual(t.seen.map((s) => s.frame.beat_index), [0, 1, 2]);
    await t.advance(150); // beats 3 and 4
    t.pulse.setTempo(300); // lands on beat 8; beats 5..7 announce it
    await t.advance(3 * 100 + 4 * 200);
    const frames = t.seen.map((s) => s.frame);
    assert.deepEqual(frames.map((f) => f.beat_index), [...Array(frames.length).keys()]);
    assert.ok(frames.length >= 11, `only ${frames.length} frames`);
    assert.deepEqual(frames.slice(5, 8).map((f) => f.next_tempo_bpm), [300, 300, 300]);
    assert.equal(frames[8].tempo_bpm, 300);
    for (const { data, frame, headers } of t.seen) {
      const check = await verifySigned(t.keyring, "backbeat.beatframe.v1", "c1", data, headers, {
        epoch: frame.epoch,
      });
      assert.equal(check.ok, true, `beat ${frame.beat_index}`);
    }
    assert.equal(t.pulse.metrics().catchUpBeats, 3);
  } finally {
    await t.done();
  }
});

Deno.test("Pulse refuses a signing key or keyring that is not one", () => {
  const bad = { keyId: "k", privateKey: {} } as unknown as Parameters<typeof importSigningKey>[0];
  assert.throws(
    () => new Pulse({ clusterId: "c1", signingKey: bad as never }),
    /Invalid signingKey/,
  );
  assert.throws(
    () => new Pulse({ clusterId: "c1", pulseKeyring: {} as never }),
    /Invalid pulseKeyring: expected a Keyring or a KeyringWatcher/,
  );
  assert.throws(
    () => new Pulse({ clusterId: "c1", adminKeyring: { current: "x" } as never }),
    TypeError,
  );
  assert.throws(() => new Pulse({ clusterId: "c1", adminToken: "" }), /Invalid adminToken/);
  assert.throws(() => new Pulse({ clusterId: "c1", adminToken: "two words" }), (e: Error) => {
    // The token never appears in the message.
    return e instanceof TypeError && !e.message.includes("two words");
  });
});

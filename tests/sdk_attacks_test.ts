// The SDK client on a hostile bus, on a real nats-server with the system clock: an attacker with
// publish rights sends forged frames at the edge of the safe integers, a flood of junk, and
// unsigned frames to clients that hold pulse keys. A pulse's real beats must keep coming through.
import assert from "node:assert/strict";
import {
  type BeatFrame,
  Client,
  type ClientConfig,
  connectNatsBus,
  defaultConfig,
  generateSigningKeyPair,
  type NatsBusLike,
  subjects,
} from "../mod.ts";
import { Pulse } from "../pulse/mod.ts";
import { MAX_BEAT_INDEX } from "../core/mod.ts";
import { natsPoolStats } from "../nats/mod.ts";
import { startNatsServer } from "./nats_server.ts";
import { BeatSource, quietLogger, recordBeats } from "./sdk_helpers.ts";
import { until } from "./until.ts";

const enc = new TextEncoder();
const TEMPO = 300;
const PERIOD = 60_000 / TEMPO;
// The next real beat is due at most one period after anything; a loaded 2-core CI machine may
// publish it up to ~150 ms late (see pulse_nats_test.ts) and deliver it some ms later.
const LATE_MS = 250;

function attackConfig(url: string, cluster: string, extra: Partial<ClientConfig> = {}) {
  const c = defaultConfig();
  c.clusterId = cluster;
  c.agentId = "target";
  c.natsUrl = url;
  c.natsOptions = { reconnectTimeWait: 50, maxReconnectWait: 250 };
  c.logger = quietLogger();
  return { ...c, ...extra };
}

function forge(attacker: NatsBusLike, cluster: string, frame: BeatFrame): void {
  attacker.publish(subjects(cluster).beat, enc.encode(JSON.stringify(frame)), {
    headers: {
      "x-window-id": frame.window_id,
      "x-hlc": frame.hlc,
      "x-pulse-id": "pulse-evil",
      "x-fencing-token": "1",
      "x-pulse-sent": String(Date.now()),
    },
  });
}

/** Publishes beats on the real clock, each at its due time. */
async function play(source: BeatSource, from: number, to: number): Promise<void> {
  for (let i = from; i <= to; i++) {
    const wait = source.timeline.dueAt(i) - Date.now();
    if (wait > 0) await new Promise((r) => setTimeout(r, wait));
    await source.publish(i);
  }
}

Deno.test("NATS: after a forged frame at 2^53 − 1 or 10^15, the next real beat is delivered within one beat", async () => {
  const cluster = "attack-index";
  await using server = await startNatsServer();
  const pulseBus = await connectNatsBus({ servers: server.url });
  const attacker = await connectNatsBus({ servers: server.url });
  const pulse = new Pulse({ clusterId: cluster, bus: pulseBus, tempoBpm: TEMPO });
  const client = new Client(attackConfig(server.url, cluster));
  const got = recordBeats(client);
  try {
    await client.start();
    await client.bus!.flush();
    await pulse.start();
    await until(() => got.filter((b) => !b.synthetic).length >= 3, {
      timeoutMs: 10_000,
      what: "three real beats from pulse",
    });
    let rejected = 0;
    for (const forged of [MAX_BEAT_INDEX, 1e15]) {
      const last = got.findLast((b) => !b.synthetic)!;
      const before = client.health().lastBeat!;
      const sentAt = performance.now();
      forge(attacker, cluster, { ...last.frame, beat_index: forged });
      await attacker.flush();
      await until(() => got.some((b) => !b.synthetic && b.index > before), {
        timeoutMs: 5_000,
        what: `a real beat after the forged beat ${forged}`,
      });
      const elapsed = performance.now() - sentAt;
      assert.ok(elapsed <= PERIOD + LATE_MS, `next real beat ${elapsed.toFixed(0)} ms later`);
      // It is the very next beat (or the one after, if that one was synthetic: pulse was late).
      const next = got.find((b) => !b.synthetic && b.index > before)!;
      assert.ok(next.index <= before + 2, `next real beat ${next.index} after ${before}`);
      assert.ok(got.every((b) => b.index !== forged), `beat ${forged} was delivered`);
      rejected++;
      assert.equal(client.health().framesRejected.implausible, rejected);
    }
    // Still on pulse's beats a few beats later; health answers; stop is prompt.
    const now = client.health().lastBeat!;
    await until(() => client.health().lastBeat! >= now + 3, {
      timeoutMs: 5 * PERIOD + 2_000,
      what: "three more beats",
    });
    assert.equal(client.health().connected, true);
    const stopping = performance.now();
    await client.stop();
    assert.ok(performance.now() - stopping < 3_000);
  } finally {
    await client.stop();
    await pulse.stop();
    await attacker.close();
    await pulseBus.close();
  }
  assert.deepEqual(natsPoolStats(), { connections: 0, leases: 0 });
});

Deno.test("NATS: a flood of 20,000 junk frames gives a few log lines and real beats go on", async () => {
  const cluster = "attack-flood";
  await using server = await startNatsServer();
  const pulseBus = await connectNatsBus({ servers: server.url });
  const attacker = await connectNatsBus({ servers: server.url });
  const pulse = new Pulse({ clusterId: cluster, bus: pulseBus, tempoBpm: TEMPO });
  const logger = quietLogger();
  const client = new Client(attackConfig(server.url, cluster, { logger }));
  const got = recordBeats(client);
  let errorEvents = 0;
  client.addEventListener("error", () => errorEvents++);
  try {
    await client.start();
    await client.bus!.flush();
    await pulse.start();
    await until(() => got.length >= 2, { timeoutMs: 10_000, what: "two beats" });
    const frame = got.at(-1)!.frame;
    const junk = [
      enc.encode("{not json"),
      enc.encode(JSON.stringify({ ...frame, phase: "rest" })),
      enc.encode(JSON.stringify({ ...frame, cluster_id: "other" })),
      enc.encode(JSON.stringify({ ...frame, beat_index: 1 })),
      enc.encode(JSON.stringify({ ...frame, beat_index: 10 ** 12 + 1 })),
    ];
    const lines = logger.lines.length;
    const subject = subjects(cluster).beat;
    for (let i = 0; i < 20_000; i++) {
      attacker.publish(subject, junk[i % junk.length]);
      if (i % 1_000 === 999) await attacker.flush(); // paced, so the server keeps every message
    }
    await attacker.flush();
    await until(() => client.health().droppedFrames >= 20_000, {
      timeoutMs: 20_000,
      what: "20,000 refusals",
    });
    const after = client.health().lastBeat!;
    await until(() => got.some((b) => !b.synthetic && b.index > after + 1), {
      timeoutMs: 5 * PERIOD + 2_000,
      what: "real beats after the flood",
    });
    const h = client.health();
    assert.equal(h.droppedFrames, 20_000);
    assert.deepEqual(
      Object.keys(h.framesRejected).sort(),
      ["cluster", "implausible", "json", "schema", "stale"],
    );
    const logged = logger.lines.length - lines;
    // The first refusal at once, then one summary per 5 s, and perhaps a line about degrading if
    // the flood starved the event loop past a beat.
    assert.ok(logged >= 1 && logged <= 8, `${logged} log lines:\n${logger.lines.join("\n")}`);
    assert.ok(errorEvents <= 4, `${errorEvents} error events`);
  } finally {
    await client.stop();
    await pulse.stop();
    await attacker.close();
    await pulseBus.close();
  }
});

Deno.test("NATS: with pulseKeys forgeries are refused unverified, and a new epoch is followed at its first signed frame", async () => {
  const cluster = "attack-keys";
  await using server = await startNatsServer({ jetstream: false });
  const peer = await connectNatsBus({ servers: server.url });
  const pair = await generateSigningKeyPair();
  const pulseKeys = { pulse: [{ key_id: pair.keyId, public_key: pair.publicKey }] };
  // Two clients of one process on one connection and feed: one with keys, one without.
  const keyed = new Client(attackConfig(server.url, cluster, { agentId: "keyed", pulseKeys }));
  const open = new Client(attackConfig(server.url, cluster, { agentId: "open" }));
  const gotKeyed = recordBeats(keyed);
  const gotOpen = recordBeats(open);
  const signing = { signingKey: pair.keyPair.privateKey, keyId: pair.keyId };
  try {
    await keyed.start();
    await open.start();
    assert.equal(keyed.bus, open.bus);
    await keyed.bus!.flush();
    const first = new BeatSource(peer, cluster, {
      tempoBpm: TEMPO,
      originTime: Date.now() + 50,
      epoch: 1_000,
      ...signing,
    });
    await play(first, 0, 3);
    // Unsigned forgeries: a jump to 2^53 − 1, and a consistent pair of a newer epoch.
    const frame = await first.frame(3);
    forge(peer, cluster, { ...frame, beat_index: MAX_BEAT_INDEX });
    await play(first, 4, 5);
    await peer.flush();
    await until(() => keyed.health().lastBeat === 5 && open.health().lastBeat === 5);
    assert.equal(keyed.health().framesRejected.unsigned, 1);
    assert.equal(open.health().framesRejected.implausible, 1);

    // The timeline restarts: KV state lost, beat 0 again with a greater epoch, 300 ms later.
    const second = new BeatSource(peer, cluster, {
      tempoBpm: TEMPO,
      originTime: Date.now() + 300,
      epoch: 2_000,
      ...signing,
    });
    await play(second, 0, 3);
    await peer.flush();
    await until(() => keyed.health().lastBeat === 3 && open.health().lastBeat === 3);
    const epoch2 = (got: typeof gotKeyed) =>
      got.filter((b) => !b.synthetic && b.frame.epoch === 2_000).map((b) => b.index);
    // Verified: followed at its first frame. Unverified: once a second frame agrees (the third,
    // if a loaded machine spaced the first two oddly).
    assert.deepEqual(epoch2(gotKeyed), [0, 1, 2, 3]);
    const open2 = epoch2(gotOpen);
    assert.ok(open2[0] === 1 || open2[0] === 2, `open client followed from ${open2[0]}`);
    assert.deepEqual(open2, Array.from({ length: 4 - open2[0] }, (_, i) => open2[0] + i));
    assert.equal(keyed.health().framesVerified, 6 + 4);
    // A deposed pulse of the old timeline, signed or not, is refused.
    await first.publish(30);
    await peer.flush();
    await until(() => keyed.health().framesRejected.old_epoch === 1);
    await until(() => open.health().framesRejected.old_epoch === 1);
  } finally {
    await keyed.stop();
    await open.stop();
    await peer.close();
  }
  assert.deepEqual(natsPoolStats(), { connections: 0, leases: 0 });
});

// config.pulseKeys: frames are followed only when a pulse key signed them, verified once per
// process per keyring, in arrival order, with a bounded backlog.
import assert from "node:assert/strict";
import {
  BackbeatError,
  Client,
  type ClientConfig,
  defaultConfig,
  generateSigningKeyPair,
  InMemoryBus,
  Keyring,
  type KeyringJson,
} from "./mod.ts";
import {
  type GeneratedKeyPair,
  ManualClock,
  signMessage,
  subjects,
  windowIdsSettled,
} from "../core/mod.ts";
import { beatFeedOf, MAX_VERIFY_BACKLOG } from "./_beat_feed.ts";
import { BeatSource, quietLogger, recordBeats, settle } from "../tests/sdk_helpers.ts";

const CLUSTER = "verify";
const T0 = 1_700_000_000_000;
const enc = new TextEncoder();

function ringOf(...pairs: GeneratedKeyPair[]): KeyringJson {
  return { pulse: pairs.map((p) => ({ key_id: p.keyId, public_key: p.publicKey })) };
}

function keyedConfig(bus: InMemoryBus, extra: Partial<ClientConfig> = {}): ClientConfig {
  const c = defaultConfig();
  c.clusterId = CLUSTER;
  c.agentId = "agent";
  c.bus = bus;
  c.logger = quietLogger();
  c.localDegradation = false;
  return { ...c, ...extra };
}

/** Waits until every frame published so far went through the gate and its signature check. */
async function delivered(bus: InMemoryBus): Promise<void> {
  await bus.flush();
  await beatFeedOf(bus, CLUSTER)?.idle();
  await settle();
}

function signer(pair: GeneratedKeyPair, bus: InMemoryBus, extra = {}): BeatSource {
  return new BeatSource(bus, CLUSTER, {
    signingKey: pair.keyPair.privateKey,
    keyId: pair.keyId,
    ...extra,
  });
}

Deno.test("with pulseKeys only frames signed by a pulse key are followed; the rest are counted by reason", async () => {
  const pulse = await generateSigningKeyPair();
  const other = await generateSigningKeyPair();
  const expired = await generateSigningKeyPair();
  const json: KeyringJson = {
    ...ringOf(pulse),
    old: [{
      key_id: expired.keyId,
      public_key: expired.publicKey,
      not_after: "2001-01-01T00:00:00Z",
    }],
  };
  const bus = new InMemoryBus();
  await using client = new Client(keyedConfig(bus, { pulseKeys: json }));
  const got = recordBeats(client);
  await client.start();
  const real = signer(pulse, bus);
  const beat = subjects(CLUSTER).beat;
  const sign = async (pair: GeneratedKeyPair, data: Uint8Array, cluster = CLUSTER, epoch = 0) =>
    await signMessage(
      { privateKey: pair.keyPair.privateKey, publicKey: pair.publicKey, keyId: pair.keyId },
      "backbeat.beatframe.v1",
      cluster,
      data,
      epoch,
    );

  await real.publish(0);
  await delivered(bus);
  // Forgeries of beat 1, each refused for its own reason.
  const one = enc.encode(JSON.stringify(await real.frame(1)));
  new BeatSource(bus, CLUSTER).publishRaw(new TextDecoder().decode(one)); // unsigned
  bus.publish(beat, one, { headers: await sign(other, one) }); // a key nobody trusts
  bus.publish(beat, one, { headers: await sign(expired, one) }); // a key past its not_after
  bus.publish(beat, one, { headers: await sign(pulse, one, "elsewhere") }); // another cluster's
  bus.publish(beat, one, { headers: await sign(pulse, one, CLUSTER, 7) }); // another epoch's
  // A valid frame under a signature made for other bytes.
  const tampered = enc.encode(JSON.stringify({ ...await real.frame(1), phase: "review" }));
  bus.publish(beat, tampered, { headers: await sign(pulse, one) });
  await delivered(bus);
  assert.deepEqual(got.map((b) => b.index), [0]);
  await real.publish(1);
  await real.publish(2);
  await delivered(bus);
  assert.deepEqual(got.map((b) => b.index), [0, 1, 2]);
  const h = client.health();
  assert.equal(h.framesVerified, 3);
  assert.deepEqual(h.framesRejected, {
    unsigned: 1,
    unknown_key: 1,
    key_expired: 1,
    bad_signature: 3,
  });
  // A captured signed frame replayed later verifies, and the timeline refuses it.
  bus.publish(beat, one, { headers: await sign(pulse, one) });
  await delivered(bus);
  assert.equal(client.health().framesRejected.stale, 1);
  assert.deepEqual(got.map((b) => b.index), [0, 1, 2]);
  await bus.close();
});

Deno.test("a forged unsigned first frame cannot capture a client with pulseKeys", async () => {
  const pulse = await generateSigningKeyPair();
  const bus = new InMemoryBus();
  await using client = new Client(keyedConfig(bus, { pulseKeys: ringOf(pulse) }));
  const got = recordBeats(client);
  await client.start();
  await new BeatSource(bus, CLUSTER).publish(0, (f) => ({ ...f, beat_index: 1e15 }));
  const real = signer(pulse, bus);
  await real.publish(40);
  await real.publish(41);
  await delivered(bus);
  assert.deepEqual(got.map((b) => b.index), [40, 41]);
  assert.deepEqual(client.health().framesRejected, { unsigned: 1 });
  await bus.close();
});

Deno.test("clients with different pulse keys on one bus never share a verification result", async () => {
  const a = await generateSigningKeyPair();
  const b = await generateSigningKeyPair();
  const bus = new InMemoryBus();
  const ringA = await Keyring.fromJson(ringOf(a));
  const clientA = new Client(keyedConfig(bus, { agentId: "a", pulseKeys: ringA }));
  const clientA2 = new Client(keyedConfig(bus, { agentId: "a2", pulseKeys: ringA }));
  const clientB = new Client(keyedConfig(bus, { agentId: "b", pulseKeys: ringOf(b) }));
  const clientB2 = new Client(keyedConfig(bus, { agentId: "b2", pulseKeys: ringOf(b) }));
  const plain = new Client(keyedConfig(bus, { agentId: "plain" }));
  const clients = [clientA, clientA2, clientB, clientB2, plain];
  const logs = clients.map((c) => recordBeats(c));
  for (const c of clients) await c.start();
  assert.equal(bus.subscriptionCount, 1);
  // Pulse A signs even beats, pulse B odd ones (two clusters' pulses on one subject, say).
  const sourceA = signer(a, bus);
  const sourceB = signer(b, bus);
  for (let i = 0; i < 6; i++) await (i % 2 === 0 ? sourceA : sourceB).publish(i);
  await delivered(bus);
  const seen = logs.map((l) => l.map((x) => x.index));
  assert.deepEqual(seen, [[0, 2, 4], [0, 2, 4], [1, 3, 5], [1, 3, 5], [0, 1, 2, 3, 4, 5]]);
  assert.deepEqual(clientA.health().framesRejected, { unknown_key: 3 });
  assert.deepEqual(clientB.health().framesRejected, { unknown_key: 3 });
  assert.equal(plain.health().framesVerified, 0);
  assert.equal(clientB2.health().framesVerified, 3);
  // One parse per frame for the process; one check per frame per keyring, whatever the number of
  // clients holding it (equal JSON gives one keyring).
  const feed = beatFeedOf(bus, CLUSTER)!;
  assert.equal(feed.parsed, 6);
  assert.equal(feed.verifierOf(ringA)?.verified, 3);
  assert.equal(feed.verifierOf(ringA)?.listeners.length, 2);
  assert.deepEqual(logs[0][0].frame, logs[4][0].frame);
  for (const c of clients) await c.stop();
  assert.equal(beatFeedOf(bus, CLUSTER), undefined);
  await bus.close();
});

Deno.test("verified frames keep their arrival order, and at most 256 wait on verification", async () => {
  const pulse = await generateSigningKeyPair();
  const bus = new InMemoryBus({ maxPending: 10_000 });
  const ring = await Keyring.fromJson(ringOf(pulse));
  await using client = new Client(keyedConfig(bus, { pulseKeys: ring }));
  const got = recordBeats(client);
  await client.start();
  // Signed ahead, then published in one burst: every check is in flight at once, and WebCrypto
  // finishes them on a thread pool in any order.
  const source = new BeatSource(bus, CLUSTER, { tempoBpm: 600 });
  const beat = subjects(CLUSTER).beat;
  const key = {
    privateKey: pulse.keyPair.privateKey,
    publicKey: pulse.publicKey,
    keyId: pulse.keyId,
  };
  const burst = [];
  for (let i = 0; i < 1_000; i++) {
    const data = enc.encode(JSON.stringify(await source.frame(i)));
    burst.push({ data, headers: await signMessage(key, "backbeat.beatframe.v1", CLUSTER, data) });
  }
  for (const m of burst) bus.publish(beat, m.data, { headers: m.headers });
  await bus.flush();
  const verifier = beatFeedOf(bus, CLUSTER)!.verifierOf(ring)!;
  assert.equal(verifier.backlog, MAX_VERIFY_BACKLOG);
  await delivered(bus);
  assert.deepEqual(
    got.map((b) => b.index),
    Array.from({ length: MAX_VERIFY_BACKLOG }, (_, i) => i),
  );
  const h = client.health();
  assert.equal(h.framesVerified, MAX_VERIFY_BACKLOG);
  assert.deepEqual(h.framesRejected, { verify_backlog: 1_000 - MAX_VERIFY_BACKLOG });
  assert.equal(verifier.backlog, 0);
  // The backlog drained, frames are checked again.
  await source.publish(1_000); // unsigned source: refused without taking a place
  bus.publish(beat, burst[999].data, { headers: burst[999].headers });
  await delivered(bus);
  assert.equal(got.at(-1)!.index, 999);
  await bus.close();
});

Deno.test("a client stopped while frames wait on verification gets none of them", async () => {
  const pulse = await generateSigningKeyPair();
  const bus = new InMemoryBus();
  const ring = await Keyring.fromJson(ringOf(pulse));
  const client = new Client(keyedConfig(bus, { pulseKeys: ring }));
  const got = recordBeats(client);
  await client.start();
  const source = new BeatSource(bus, CLUSTER);
  const key = {
    privateKey: pulse.keyPair.privateKey,
    publicKey: pulse.publicKey,
    keyId: pulse.keyId,
  };
  const burst = [];
  for (let i = 0; i < 20; i++) {
    const data = enc.encode(JSON.stringify(await source.frame(i)));
    burst.push({ data, headers: await signMessage(key, "backbeat.beatframe.v1", CLUSTER, data) });
  }
  for (const m of burst) bus.publish(subjects(CLUSTER).beat, m.data, { headers: m.headers });
  await bus.flush();
  assert.equal(beatFeedOf(bus, CLUSTER)!.verifierOf(ring)!.backlog, 20);
  const stopped = client.stop();
  await stopped;
  await new Promise((r) => setTimeout(r, 50)); // the checks finish meanwhile
  assert.equal(got.length, 0);
  assert.equal(beatFeedOf(bus, CLUSTER), undefined);
  await bus.close();
});

Deno.test("with pulseKeys a new epoch is followed at its first verified frame", async () => {
  const pulse = await generateSigningKeyPair();
  const bus = new InMemoryBus();
  const clock = new ManualClock(T0);
  const c = keyedConfig(bus, { pulseKeys: ringOf(pulse), clock, localDegradation: true });
  await using client = new Client(c);
  const got = recordBeats(client);
  await client.start();
  const first = signer(pulse, bus, { originTime: T0, epoch: 10 });
  const play = async (source: BeatSource, from: number, to: number) => {
    for (let i = from; i <= to; i++) {
      await clock.advance(source.timeline.dueAt(i) - clock.now());
      await source.publish(i);
      await delivered(bus);
      await windowIdsSettled();
    }
  };
  await play(first, 0, 3);
  const second = signer(pulse, bus, { originTime: clock.now() + 2_500, epoch: 20 });
  await play(second, 0, 1);
  const real = got.filter((b) => !b.synthetic).map((b) => [b.index, b.frame.epoch]);
  assert.deepEqual(real, [[0, 10], [1, 10], [2, 10], [3, 10], [0, 20], [1, 20]]);
  assert.equal(client.health().framesRejected.pending, undefined);
  // The old timeline's frames, even signed, are refused.
  await first.publish(9);
  await delivered(bus);
  assert.equal(client.health().framesRejected.old_epoch, 1);
  await bus.close();
});

Deno.test("pulseKeys must be a Keyring or its JSON, with at least one usable key", async () => {
  const bus = new InMemoryBus();
  for (const bad of ["keys.json", 5, null, [1]]) {
    assert.throws(
      // deno-lint-ignore no-explicit-any
      () => new Client(keyedConfig(bus, { pulseKeys: bad as any })),
      (e) => e instanceof TypeError && /Invalid pulseKeys: expected a Keyring/.test(e.message),
    );
  }
  const empty = new Client(keyedConfig(bus, { pulseKeys: {} }));
  await assert.rejects(
    empty.start(),
    (e) => e instanceof BackbeatError && e.code === "key" && /holds no key/.test(e.message),
  );
  assert.equal(empty.state, "stopped");
  const broken = new Client(
    keyedConfig(bus, { pulseKeys: { pulse: [{ key_id: "k", public_key: "AAAA" }] } }),
  );
  await assert.rejects(
    broken.start(),
    (e) => e instanceof BackbeatError && e.code === "key" && /3 bytes, expected 32/.test(e.message),
  );
  // The configured object is copied: changing it later changes nothing.
  const pulse = await generateSigningKeyPair();
  const json = ringOf(pulse);
  await using client = new Client(keyedConfig(bus, { pulseKeys: json }));
  json.pulse.length = 0;
  await client.start();
  await signer(pulse, bus).publish(0);
  await delivered(bus);
  assert.equal(client.health().lastBeat, 0);
  await bus.close();
});

// The SDK client against a real nats-server: the same behaviours as the in-memory tests, plus
// what only a network shows (a shared connection, a server restart with claims buffered).
import assert from "node:assert/strict";
import {
  BackbeatError,
  BeatBudgetExceededError,
  type BusMessage,
  Client,
  type ClientConfig,
  connectNatsBus,
  defaultConfig,
  generateSigningKeyPair,
  InvalidMessageError,
  type NatsBusLike,
  type StatusClaim,
  subjects,
} from "../mod.ts";
import { Keyring, verifySigned } from "../core/mod.ts";
import { leaseNatsBus, natsPoolStats } from "../nats/mod.ts";
import { type NatsServer, startNatsServer } from "./nats_server.ts";
import { BeatSource, quietLogger, recordBeats } from "./sdk_helpers.ts";
import { until } from "./until.ts";

const dec = new TextDecoder();
const CLUSTER = "nats-sdk";

function natsConfig(url: string, extra: Partial<ClientConfig> = {}): ClientConfig {
  const c = defaultConfig();
  c.clusterId = CLUSTER;
  c.agentId = "agent-n";
  c.natsUrl = url;
  c.natsOptions = { reconnectTimeWait: 50, maxReconnectWait: 250 };
  c.logger = quietLogger();
  c.localDegradation = false;
  return { ...c, ...extra };
}

async function withServer(fn: (server: NatsServer, peer: NatsBusLike) => Promise<void>) {
  const server = await startNatsServer({ jetstream: false });
  const peer = await connectNatsBus({
    servers: server.url,
    reconnectTimeWait: 50,
    maxReconnectWait: 250,
  });
  try {
    await fn(server, peer);
  } finally {
    await peer.close();
    await server.stop();
  }
  assert.deepEqual(natsPoolStats(), { connections: 0, leases: 0 });
}

function collect(bus: NatsBusLike, subject: string): BusMessage[] {
  const got: BusMessage[] = [];
  bus.subscribe(subject, (m) => got.push(m));
  return got;
}

/** Publishes beats on the real clock, each at its due time. */
async function play(source: BeatSource, from: number, to: number): Promise<void> {
  for (let i = from; i <= to; i++) {
    const wait = source.timeline.dueAt(i) - Date.now();
    if (wait > 0) await new Promise((r) => setTimeout(r, wait));
    await source.publish(i);
  }
}

Deno.test("NATS: beats arrive in order once; duplicates and a deposed pulse's frames are dropped", async () => {
  await withServer(async (_server, peer) => {
    const client = new Client(natsConfig(_server.url));
    const got = recordBeats(client);
    await client.start();
    await client.bus!.flush();
    const leader = new BeatSource(peer, CLUSTER, { pulseId: "new" });
    const deposed = new BeatSource(peer, CLUSTER, { pulseId: "old" });
    for (let i = 20; i < 30; i++) {
      await leader.publish(i);
      await leader.publish(i); // duplicate
      await deposed.publish(i - 5);
    }
    // A jump the timeline explains (three beats at once); a bigger one would be refused.
    await leader.publish(32);
    await peer.flush();
    await until(() => got.length === 11);
    assert.deepEqual(got.map((b) => b.index), [20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 32]);
    assert.equal(got[0].frame.cluster_id, CLUSTER);
    const h = client.health();
    assert.equal(h.droppedFrames, 20);
    assert.deepEqual(h.framesRejected, { stale: 20 });
    assert.equal(h.missedBeats, 2);
    assert.equal(h.connected, true);
    await client.stop();
  });
});

Deno.test("NATS: clients in a process share one connection and one parse per frame", async () => {
  await withServer(async (server, peer) => {
    const clients = Array.from(
      { length: 5 },
      (_, i) => new Client(natsConfig(server.url, { agentId: `a${i}` })),
    );
    const logs = clients.map((c) => recordBeats(c));
    for (const c of clients) await c.start();
    assert.deepEqual(natsPoolStats(), { connections: 1, leases: 5 });
    const bus = clients[0].bus!;
    assert.ok(clients.every((c) => c.bus === bus));
    await bus.flush();
    const source = new BeatSource(peer, CLUSTER);
    for (let i = 0; i < 4; i++) await source.publish(i);
    await peer.flush();
    await until(() => logs.every((l) => l.length === 4));
    // One parse per frame per process: the five clients share one feed.
    assert.deepEqual(clients.map((c) => c.health().framesParsed), [4, 4, 4, 4, 4]);
    // Other credentials mean another connection.
    const other = new Client(natsConfig(server.url, { natsOptions: { user: "u", pass: "p" } }));
    await other.start();
    assert.notEqual(other.bus, bus);
    assert.deepEqual(natsPoolStats(), { connections: 2, leases: 6 });
    await other.stop();
    for (const c of clients.slice(1)) await c.stop();
    assert.deepEqual(natsPoolStats(), { connections: 1, leases: 1 });
    assert.equal(bus.status, "connected");
    await clients[0].stop();
    assert.equal(bus.status, "closed");
  });
});

Deno.test("NATS: a failing callback is isolated from the others", async () => {
  await withServer(async (server, peer) => {
    const client = new Client(natsConfig(server.url));
    client.onBeat(() => {
      throw new Error("boom");
    });
    client.onBeat(async () => {
      await Promise.resolve();
      throw new Error("async boom");
    });
    const got = recordBeats(client);
    await client.start();
    await client.bus!.flush();
    const source = new BeatSource(peer, CLUSTER);
    for (let i = 0; i < 3; i++) await source.publish(i);
    await peer.flush();
    await until(() => got.length === 3 && client.health().callbackErrors === 6);
    await client.stop();
  });
});

Deno.test("NATS: signed claims carry the contract's fields and headers and verify", async () => {
  await withServer(async (server, peer) => {
    const sent = collect(peer, subjects(CLUSTER).status);
    await peer.flush();
    const pair = await generateSigningKeyPair();
    const client = new Client(
      natsConfig(server.url, { signingKey: pair.privateJwk, keyId: "agent-n-2025" }),
    );
    await client.start();
    await client.bus!.flush();
    const frame = await new BeatSource(peer, CLUSTER).publish(41);
    await peer.flush();
    await until(() => client.health().lastBeat === 41);
    await client.emitStatusClaim({ state: "reviewing", progress: 0.9, beats_left: 1, notes: "ok" });
    await assert.rejects(
      client.emitStatusClaim({ state: "executing", progress: 1.5 }),
      (e) =>
        e instanceof InvalidMessageError && e.code === "invalid_claim" &&
        e.message === "Cannot emit claim: progress 1.5 is above 1",
    );
    await client.stop();
    await until(() => sent.length === 1);
    await new Promise((r) => setTimeout(r, 50));
    assert.equal(sent.length, 1); // the invalid claim was never sent
    const m = sent[0];
    const claim: StatusClaim = JSON.parse(dec.decode(m.data));
    assert.equal(claim.type, "backbeat.statusclaim.v1");
    assert.equal(claim.agent_id, "agent-n");
    assert.equal(claim.task_id, "default");
    assert.equal(claim.beat_index, 41);
    assert.equal(claim.state, "reviewing");
    assert.equal(m.headers?.["x-window-id"], frame.window_id);
    assert.equal(m.headers?.["x-hlc"], claim.hlc);
    assert.equal(m.headers?.["x-agent-id"], "agent-n");
    assert.equal(m.headers?.["x-key-id"], "agent-n-2025");
    // Signed over signedBytes("backbeat.statusclaim.v1", cluster, payload), as reverb checks it.
    const keyring = await Keyring.fromJson({
      "agent-n": [{ key_id: "agent-n-2025", public_key: pair.publicKey }],
    });
    const check = await verifySigned(
      keyring,
      "backbeat.statusclaim.v1",
      CLUSTER,
      m.data,
      m.headers,
      { owner: "agent-n" },
    );
    assert.equal(check.ok, true);
  });
});

Deno.test("NATS: claims buffered across a server restart are all delivered; over the cap is a clear error", async () => {
  await withServer(async (server) => {
    const client = new Client(natsConfig(server.url, { claimBufferSize: 20 }));
    await client.start();
    // Watch on the client's own (shared) connection: its subscription is restored before the
    // buffered claims are flushed, so whatever reaches the server is seen.
    const watch = await leaseNatsBus(server.url, { reconnectTimeWait: 50, maxReconnectWait: 250 });
    assert.equal(watch.bus, client.bus);
    const sent = collect(watch.bus, subjects(CLUSTER).status);
    await watch.bus.flush();
    for (let i = 0; i < 5; i++) {
      await client.emitStatusClaim({ state: "executing", notes: `c${i}` });
    }
    await until(() => sent.length === 5);

    await server.kill();
    await until(() => !client.health().connected);
    for (let i = 5; i < 25; i++) {
      await client.emitStatusClaim({ state: "executing", notes: `c${i}` });
    }
    assert.equal(client.health().claimsBuffered, 20);
    await assert.rejects(
      client.emitStatusClaim({ state: "executing", notes: "over" }),
      (e) => e instanceof BackbeatError && e.code === "buffer_full",
    );
    assert.equal(client.health().claimsDropped, 1);

    await server.start();
    await until(() => client.health().connected && client.health().claimsBuffered === 0, {
      timeoutMs: 10_000,
      what: "the reconnect and the buffered claims' flush",
    });
    for (let i = 25; i < 30; i++) {
      await client.emitStatusClaim({ state: "executing", notes: `c${i}` });
    }
    await until(() => sent.length === 30);
    const notes = sent.map((m) => JSON.parse(dec.decode(m.data)).notes);
    assert.deepEqual(notes, Array.from({ length: 30 }, (_, i) => `c${i}`));
    const h = client.health();
    assert.equal(h.claimsSent, 30);
    assert.equal(h.reconnectCount, 1);
    await watch.release();
    await client.stop();
  });
});

Deno.test("NATS: withBeatBudget() within and beyond its beats", async () => {
  await withServer(async (server, peer) => {
    const client = new Client(natsConfig(server.url));
    await client.start();
    await client.bus!.flush();
    const source = new BeatSource(peer, CLUSTER);
    const ok = await client.withBeatBudget(5, async () => {
      await source.publish(0);
      await source.publish(1);
      await peer.flush();
      await until(() => client.health().lastBeat === 1);
      return "finished";
    });
    assert.equal(ok, "finished");
    let aborted: unknown;
    const over = client.withBeatBudget(2, (signal) =>
      new Promise((_, reject) => {
        signal.addEventListener("abort", () => {
          aborted = signal.reason;
          reject(new Error("work saw the abort"));
        });
      }));
    const outcome = assert.rejects(
      over,
      (e) => e instanceof BeatBudgetExceededError && e.beatsUsed === 2,
    );
    await source.publish(2);
    await source.publish(3);
    await peer.flush();
    await outcome;
    assert.ok(aborted instanceof BeatBudgetExceededError);
    await client.stop();
  });
});

Deno.test("NATS: degraded mode when the beat source stops, re-aligned when it resumes", async () => {
  await withServer(async (server, peer) => {
    const client = new Client(
      natsConfig(server.url, { localDegradation: true, jitterToleranceMs: 30 }),
    );
    const got = recordBeats(client);
    const transitions: string[] = [];
    client.addEventListener("degraded", () => transitions.push("degraded"));
    client.addEventListener("recovered", () => transitions.push("recovered"));
    await client.start();
    await client.bus!.flush();
    const source = new BeatSource(peer, CLUSTER, { tempoBpm: 600, originTime: Date.now() + 50 });
    await play(source, 0, 5);
    await play(source, 11, 15); // silent for beats 6..10
    await peer.flush();
    await until(() => client.health().lastBeat === 15);
    await client.stop();
    assert.deepEqual(transitions, ["degraded", "recovered"]);
    const indexes = got.map((b) => b.index);
    assert.deepEqual(indexes, [...Array(16).keys()]); // each beat once, in order
    assert.ok(got.slice(0, 6).every((b) => !b.synthetic));
    assert.ok(got.slice(6, 10).every((b) => b.synthetic));
    assert.ok(got.slice(12).every((b) => !b.synthetic));
    // Synthetic beats are on the pulse's grid: window ids, phases, downbeats.
    for (const b of got.filter((x) => x.synthetic)) {
      const want = await source.frame(b.index);
      assert.equal(b.frame.window_id, want.window_id);
      assert.equal(b.frame.phase, want.phase);
      assert.equal(b.frame.downbeat, want.downbeat);
    }
    assert.equal(client.health().degraded, false);
  });
});

Deno.test("NATS: the reference usage runs with natsUrl", async () => {
  await withServer(async (server, peer) => {
    const config = defaultConfig();
    config.clusterId = CLUSTER;
    config.agentId = "my-service";
    config.natsUrl = server.url;
    config.logger = quietLogger();
    const status = collect(peer, subjects(CLUSTER).status);
    await peer.flush();
    const bars: string[] = [];
    {
      await using client = new Client(config);
      client.onBeat((_beat) =>
        client.emitStatusClaim({ state: "executing", progress: 0.5, notes: "Processing data" })
      );
      client.onDownbeat((beat) => {
        bars.push(beat.window_id);
      });
      await client.start();
      await client.bus!.flush();
      const source = new BeatSource(peer, CLUSTER, { tempoBpm: 600, originTime: Date.now() });
      const result = await client.withBeatBudget(10, async (signal) => {
        await play(source, 0, 4);
        await peer.flush();
        await until(() => client.health().lastBeat === 4);
        signal.throwIfAborted();
        return "work done";
      });
      assert.equal(result, "work done");
      const h = client.health();
      assert.equal(h.connected, true);
      assert.equal(h.lastBeat, 4);
      assert.equal(h.reconnectCount, 0);
      assert.equal(h.degraded, false);
    }
    await until(() => status.length === 5);
    assert.equal(bars.length, 2);
  });
});

Deno.test("NATS: start() fails with a connection error when no server listens", async () => {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  const client = new Client(
    natsConfig(`nats://127.0.0.1:${port}`, { natsOptions: { timeout: 500 } }),
  );
  await assert.rejects(
    client.start(),
    (e) =>
      e instanceof BackbeatError && e.code === "connection" && /Cannot connect/.test(e.message),
  );
  assert.equal(client.state, "stopped");
  assert.deepEqual(natsPoolStats(), { connections: 0, leases: 0 });
  await client.stop();
});

// KvLease against a real nats-server (JetStream KV): election, renewal, release, expiry, fencing.
import assert from "node:assert/strict";
import { BackbeatError } from "../core/mod.ts";
import {
  connectNatsBus,
  kvBucketName,
  type KvLeaseOptions,
  type NatsBusLike,
  openKvLease,
} from "../nats/mod.ts";
import { startNatsServer } from "./nats_server.ts";
import { until } from "./until.ts";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function lease(bus: NatsBusLike, holderId: string, extra: Partial<KvLeaseOptions> = {}) {
  return await openKvLease({ bus, bucket: "backbeat_t_pulse", holderId, ttlMs: 400, ...extra });
}

Deno.test("kvBucketName() keeps safe cluster ids and maps others without collisions", async () => {
  assert.equal(await kvBucketName("chorus-dev", "pulse"), "backbeat_chorus-dev_pulse");
  const a = await kvBucketName("a:b", "pulse");
  const b = await kvBucketName("a/b", "pulse");
  assert.match(a, /^backbeat_a_b_[0-9a-f]{16}_pulse$/);
  assert.notEqual(a, b);
  await assert.rejects(kvBucketName("a.b", "pulse"), TypeError);
  await assert.rejects(kvBucketName("a", "bad role"), TypeError);
});

Deno.test("KvLease: one holder at a time, renewals keep it, release hands over at once", async () => {
  await using server = await startNatsServer();
  const busA = await connectNatsBus({ servers: server.url });
  const busB = await connectNatsBus({ servers: server.url });
  try {
    const a = await lease(busA, "a");
    const b = await lease(busB, "b");
    const events: string[] = [];
    a.addEventListener("acquired", () => events.push("a+"));
    a.addEventListener("lost", (e) => events.push(`a-${e.detail.reason}`));
    b.addEventListener("acquired", () => events.push("b+"));
    assert.equal(await a.start(), true);
    assert.equal(await b.start(), false);
    const tokenA = a.token;
    assert.ok(tokenA > 0);
    assert.equal(b.token, 0);
    // Three TTLs: a keeps renewing, b never takes over.
    await sleep(1200);
    assert.equal(a.isHeld(), true);
    assert.equal(b.isHeld(), false);
    assert.equal(b.holder, "a");
    await a.release();
    const handover = await until(() => b.isHeld(), {
      timeoutMs: 1000,
      what: "b to take over after release",
    });
    assert.ok(handover < 200, `handover took ${handover} ms`);
    assert.ok(b.token > tokenA, "fencing tokens grow");
    assert.deepEqual(events, ["a+", "a-released", "b+"]);
    await a.release(); // idempotent
    await b.release();
  } finally {
    await busA.close();
    await busB.close();
  }
});

Deno.test("KvLease: a silent holder loses the lease after its TTL; a paused one knows at once", async () => {
  await using server = await startNatsServer();
  const busA = await connectNatsBus({ servers: server.url });
  const busB = await connectNatsBus({ servers: server.url });
  try {
    // a's monotonic clock can jump, as after SIGSTOP/SIGCONT.
    let jump = 0;
    const a = await lease(busA, "a", { monotonicNow: () => performance.now() + jump });
    const b = await lease(busB, "b");
    assert.equal(await a.start(), true);
    await b.start();
    jump = 1000;
    assert.equal(a.isHeld(), false, "a paused holder must not trust its lease");
    jump = 0;
    // Now a dies without a word: its connection closes, its renewals stop.
    const lost = new Promise((r) => a.addEventListener("lost", r, { once: true }));
    await busA.close();
    const t = await until(() => b.isHeld(), {
      timeoutMs: 2000,
      what: "b to take over from a dead holder",
    });
    assert.ok(t >= 250, `took over after ${t} ms, before the TTL could pass`);
    await lost;
    assert.equal(a.isHeld(), false);
    await a.release();
    await b.release();
  } finally {
    await busA.close();
    await busB.close();
  }
});

Deno.test("KvLease: getJson/putJson store state with compare-and-set", async () => {
  await using server = await startNatsServer();
  const bus = await connectNatsBus({ servers: server.url });
  try {
    const a = await lease(bus, "a");
    assert.equal(await a.getJson("timeline"), undefined);
    const r1 = await a.putJson("timeline", { n: 1 }, 0);
    await assert.rejects(
      a.putJson("timeline", { n: 2 }, 0),
      (e) => e instanceof BackbeatError && e.code === "lease",
    );
    const r2 = await a.putJson("timeline", { n: 2 }, r1);
    await assert.rejects(
      a.putJson("timeline", { n: 3 }, r1),
      (e) => e instanceof BackbeatError && e.code === "lease",
    );
    assert.deepEqual(await a.getJson("timeline"), { value: { n: 2 }, revision: r2 });
    await assert.rejects(a.putJson("leader", {}), TypeError);
    await assert.rejects(a.getJson("bad key"), TypeError);
    await a.release();
  } finally {
    await bus.close();
  }
});

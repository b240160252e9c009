import assert from "node:assert/strict";
import { BackbeatError, ManualClock, parseHlc } from "../core/mod.ts";
import { hlcAt } from "../tests/reverb_helpers.ts";
import {
  type JsonKv,
  MAX_SHARD_MARKS,
  REPLAY_SHARDS,
  ReplayGuard,
  type ReplayGuardOptions,
  replayKey,
  replayShard,
} from "./_replay.ts";

const T0 = Date.parse("2030-01-01T00:00:00Z");
const WINDOW = 130_000;

// The KV bucket's contract as KvLease keeps it: revisions, compare-and-set, failures on demand.
class FakeKv implements JsonKv {
  readonly data = new Map<string, { value: string; revision: number }>();
  #revision = 0;
  puts = 0;
  failing = false;
  getJson<T>(key: string): Promise<{ value: T; revision: number } | undefined> {
    if (this.failing) return Promise.reject(new BackbeatError("connection", "down"));
    const e = this.data.get(key);
    return Promise.resolve(e && { value: JSON.parse(e.value) as T, revision: e.revision });
  }
  putJson(key: string, value: unknown, expected?: number): Promise<number> {
    if (this.failing) return Promise.reject(new BackbeatError("connection", "down"));
    const e = this.data.get(key);
    if (expected !== undefined && (e?.revision ?? 0) !== expected) {
      return Promise.reject(new BackbeatError("lease", "changed"));
    }
    this.puts++;
    const revision = ++this.#revision;
    this.data.set(key, { value: JSON.stringify(value), revision });
    return Promise.resolve(revision);
  }
}

function guard(clock: ManualClock, options: Partial<ReplayGuardOptions> = {}): ReplayGuard {
  return new ReplayGuard({
    clock,
    maxAgents: 1_000,
    windowMs: () => WINDOW,
    isKeyed: (id) => id.startsWith("keyed"),
    ...options,
  });
}

const at = (ms: number, logical = 0) => parseHlc(hlcAt(ms, logical));
const advance = (g: ReplayGuard, id: string, ms: number, logical = 0) =>
  g.advance(id, at(ms, logical), hlcAt(ms, logical), ms);

Deno.test("ReplayGuard: marks written in a batch survive into a new guard on the same store", async () => {
  const kv = new FakeKv();
  const clock = new ManualClock(T0);
  const first = guard(clock);
  await first.attach(kv);
  assert.equal(first.stats.persistent, true);
  advance(first, "a", T0, 5);
  advance(first, "b", T0, 1);
  assert.equal(kv.puts, 0, "nothing written before the batch interval");
  await clock.advance(1_000);
  await first.flush(); // the timer's write, awaited
  assert.equal(kv.puts, new Set([replayShard("a"), replayShard("b")]).size, "changed shards only");
  await clock.advance(5_000);
  assert.equal(kv.puts, 2 - (replayShard("a") === replayShard("b") ? 1 : 0), "no change, no write");
  await first.stop();

  const second = guard(clock);
  await second.attach(kv);
  assert.equal(second.stats.loaded, 2);
  assert.equal(second.isReplay("a", at(T0, 5), clock.now()), true);
  assert.equal(second.isReplay("a", at(T0, 4), clock.now()), true);
  assert.equal(second.isReplay("a", at(T0, 6), clock.now()), false);
  assert.equal(second.isReplay("c", at(T0, 0), clock.now()), false);
  await second.stop();
});

Deno.test("ReplayGuard forgets marks once any claim they refuse would be stale", async () => {
  const kv = new FakeKv();
  const clock = new ManualClock(T0);
  const g = guard(clock);
  await g.attach(kv);
  advance(g, "a", T0);
  await g.flush();
  await clock.advance(WINDOW + 1);
  assert.equal(g.isReplay("a", at(T0), clock.now()), false, "outside the window: stale anyway");
  assert.equal(g.stats.marks, 0);
  await g.stop();
  const later = guard(clock);
  await later.attach(kv);
  assert.equal(later.stats.loaded, 0, "an expired stored mark is not loaded");
  await later.stop();
});

Deno.test("ReplayGuard: two reverbs writing the same shard merge, neither lowers the other's mark", async () => {
  const kv = new FakeKv();
  const clock = new ManualClock(T0);
  const a = guard(clock);
  const b = guard(clock);
  await a.attach(kv);
  await b.attach(kv);
  advance(a, "x", T0, 9);
  advance(b, "x", T0, 3);
  advance(b, "y", T0, 1);
  await a.flush();
  await b.flush();
  assert.equal(b.isReplay("x", at(T0, 8), clock.now()), true, "b took a's higher mark");
  const c = guard(clock);
  await c.attach(kv);
  assert.equal(c.isReplay("x", at(T0, 9), clock.now()), true);
  assert.equal(c.isReplay("x", at(T0, 10), clock.now()), false);
  assert.equal(c.isReplay("y", at(T0, 1), clock.now()), true);
  for (const g of [a, b, c]) await g.stop();
});

Deno.test("ReplayGuard retries a write that lost a compare-and-set race", async () => {
  const kv = new FakeKv();
  const clock = new ManualClock(T0);
  const g = guard(clock);
  await g.attach(kv);
  advance(g, "a", T0, 2);
  // Another writer changes the shard between this guard's read and its write.
  const put = kv.putJson.bind(kv);
  let raced = false;
  kv.putJson = (key, value, expected) => {
    if (!raced) {
      raced = true;
      kv.data.set(key, {
        value: JSON.stringify({ v: 1, marks: [["z", hlcAt(T0, 7), T0]] }),
        revision: 999,
      });
    }
    return put(key, value, expected);
  };
  await g.flush();
  assert.equal(g.dirtyShards, 1, "kept for the next flush");
  await g.flush();
  assert.equal(g.dirtyShards, 0);
  const stored = JSON.parse(kv.data.get(replayKey(replayShard("a")))!.value);
  const ids = stored.marks.map((m: unknown[]) => m[0]).sort();
  assert.ok(ids.includes("a"));
  if (replayShard("z") === replayShard("a")) assert.ok(ids.includes("z"));
  await g.stop();
});

Deno.test("ReplayGuard treats the store's content as input: garbage is ignored, a huge shard read bounded", async () => {
  const kv = new FakeKv();
  const clock = new ManualClock(T0);
  const big: unknown[] = [];
  for (let i = 0; i < 50_000; i++) big.push([`agent-${i}`, hlcAt(T0, i % 65_536), T0]);
  kv.data.set(replayKey(0), { value: JSON.stringify({ v: 1, marks: big }), revision: 1 });
  kv.data.set(replayKey(1), { value: JSON.stringify("nonsense"), revision: 2 });
  kv.data.set(replayKey(2), {
    value: JSON.stringify({
      v: 1,
      marks: [
        ["__proto__", hlcAt(T0, 1), T0],
        ["bad-hlc", "zz", T0],
        ["bad-at", hlcAt(T0), 1e300],
        ["", hlcAt(T0), T0],
        "not a triple",
        ["ok", hlcAt(T0, 3), T0],
      ],
    }),
    revision: 3,
  });
  const reports: string[] = [];
  const g = guard(clock, { maxAgents: 500, onStoreError: (what) => reports.push(what) });
  await g.attach(kv);
  // A shard is read up to MAX_SHARD_MARKS entries; memory holds maxAgents unkeyed marks, the
  // newest (the two good ones of shard 2 among them).
  assert.equal(g.stats.loaded, MAX_SHARD_MARKS + 2);
  assert.equal(g.stats.marks, 500);
  assert.equal(g.isReplay("ok", at(T0, 3), clock.now()), true);
  assert.equal(g.isReplay("__proto__", at(T0, 1), clock.now()), true, "no prototype trickery");
  assert.ok(reports.some((r) => /unreadable/.test(r)));
  assert.ok(MAX_SHARD_MARKS < 50_000);
  await g.stop();
});

Deno.test("ReplayGuard keeps working in memory while the store fails, and writes once it is back", async () => {
  const kv = new FakeKv();
  kv.failing = true;
  const clock = new ManualClock(T0);
  const errors: string[] = [];
  const g = guard(clock, { onStoreError: (what) => errors.push(what) });
  await g.attach(kv);
  assert.equal(g.stats.persistent, false);
  assert.equal(errors.filter((e) => /cannot read/.test(e)).length, REPLAY_SHARDS);
  advance(g, "a", T0, 1);
  assert.equal(g.isReplay("a", at(T0, 1), clock.now()), true);
  await clock.advance(1_000);
  await g.flush();
  assert.ok(g.stats.storeFailures > REPLAY_SHARDS);
  kv.failing = false;
  await g.flush();
  assert.equal(g.dirtyShards, 0);
  assert.equal(kv.puts, 1);
  await g.stop();
});

Deno.test("ReplayGuard refuses nonsense bounds", () => {
  const clock = new ManualClock(T0);
  assert.throws(() => guard(clock, { maxAgents: 0 }), RangeError);
  assert.throws(() => guard(clock, { flushIntervalMs: 1 }), RangeError);
});

Deno.test("ReplayGuard stores marks set at fractional instants (a SystemClock's) and loads them back", async () => {
  const kv = new FakeKv();
  const clock = new ManualClock(T0 + 0.375);
  const g = guard(clock);
  await g.attach(kv);
  g.advance("a", at(T0, 1), hlcAt(T0, 1), clock.now());
  await g.stop();
  const next = guard(clock);
  await next.attach(kv);
  assert.equal(next.stats.loaded, 1);
  assert.equal(next.isReplay("a", at(T0, 1), clock.now()), true);
  await next.stop();
});

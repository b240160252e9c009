import assert from "node:assert/strict";
import {
  type BeatFrame,
  type Clock,
  ManualClock,
  SystemClock,
  Timeline,
  windowIdsSettled,
} from "../core/mod.ts";
import { BeatDispatch, BeatScheduler } from "./_scheduler.ts";
import { IDENTITY } from "./_clock_sync.ts";

/** A manual clock that counts the timers asked of it. */
function counting(inner: ManualClock): Clock & { timers: number } {
  const c = {
    timers: 0,
    now: () => inner.now(),
    schedule: (at: number, fn: () => void) => {
      c.timers++;
      return inner.schedule(at, fn);
    },
  };
  return c;
}

Deno.test("BeatDispatch: a thousand entries at one instant cost one timer and run in order", async () => {
  const manual = new ManualClock(0);
  const clock = counting(manual);
  const dispatch = new BeatDispatch(clock);
  const ran: number[] = [];
  for (let i = 0; i < 1_000; i++) dispatch.at(100, () => ran.push(i));
  assert.equal(dispatch.size, 1);
  assert.equal(clock.timers, 1);
  await manual.advance(99);
  assert.equal(ran.length, 0);
  await manual.advance(1);
  assert.deepEqual(ran, [...Array(1_000).keys()]);
  assert.equal(dispatch.size, 0);
});

Deno.test("BeatDispatch: instants a float's noise apart run in the one wake-up, never before their time", async () => {
  const clock = new SystemClock({ spinMs: 1 });
  const dispatch = new BeatDispatch(clock);
  const base = clock.now() + 20;
  const entries: { at: number; ran: number }[] = [];
  await new Promise<void>((done) => {
    // Timelines anchored on different frames give a beat instants a few ns to µs apart.
    for (const noise of [0, 1e-6, 2e-3, 0.05]) {
      const e = { at: base + noise, ran: NaN };
      entries.push(e);
      dispatch.at(e.at, () => {
        e.ran = clock.now();
        if (entries.every((x) => !Number.isNaN(x.ran))) done();
      });
    }
  });
  for (const e of entries) assert.ok(e.ran >= e.at, `ran ${e.ran - e.at} ms early`);
  // One spin covered them all: the last ran well within a millisecond of the first's instant.
  const spread = Math.max(...entries.map((e) => e.ran)) - base;
  assert.ok(spread < 1, `${spread} ms`);
});

Deno.test("BeatDispatch: an instant whose entries were all cancelled does not wake the process", async () => {
  const manual = new ManualClock(0);
  const clock = counting(manual);
  const dispatch = new BeatDispatch(clock);
  const ran: string[] = [];
  const a = dispatch.at(50, () => ran.push("a"));
  const b = dispatch.at(50, () => ran.push("b"));
  dispatch.at(80, () => ran.push("c"));
  a();
  b();
  b();
  assert.equal(dispatch.size, 1);
  await manual.advance(100);
  assert.deepEqual(ran, ["c"]);
  // One timer for 50, replaced by one for 80 when 50 emptied.
  assert.equal(clock.timers, 2);
});

Deno.test("BeatScheduler: beats at their mapped instants; a wake-up over a beat late skips to the beat due", async () => {
  const manual = new ManualClock(0);
  const dispatch = new BeatDispatch(manual);
  const got: { frame: BeatFrame; due: number; held: unknown }[] = [];
  const scheduler = new BeatScheduler({
    clock: manual,
    dispatch,
    clusterId: "sched",
    hlc: () => "0000:0000:0000",
    deliver: (frame, due, held) => got.push({ frame, due, held }),
    fail: (e) => {
      throw e;
    },
  });
  const timeline = new Timeline({ originTime: 0, tempoBpm: 600 });
  // Pulse's clock 1000 ms ahead of ours: beat n is due on ours at n × 100 − 1000.
  let version = 1;
  const map = {
    get version() {
      return version;
    },
    toLocal: (t: number) => t - 1_000,
    toRemote: (t: number) => t + 1_000,
  };
  scheduler.follow(timeline, map, 12);
  // The frames are built ahead from derived window ids (real digests): let them be derived.
  await windowIdsSettled();
  await manual.advance(199);
  assert.equal(got.length, 0);
  await manual.advance(1);
  assert.deepEqual(got.map((b) => [b.frame.beat_index, b.due]), [[12, 200]]);
  // The mapping moves 30 ms (a remeasurement): the next beat follows it.
  map.toLocal = (t: number) => t - 970;
  version++;
  scheduler.remap();
  await manual.advance(129);
  assert.equal(got.length, 1);
  await manual.advance(1);
  assert.deepEqual(got.at(-1)!.frame.beat_index, 13);
  assert.equal(got.at(-1)!.due, 330);
  // A held real frame is delivered at the instant instead of the prediction.
  const real = await timeline.frame("sched", 14, "9999:9999:9999");
  scheduler.hold(real, "the real one");
  await manual.advance(100);
  assert.equal(got.at(-1)!.frame, real);
  assert.equal(got.at(-1)!.held, "the real one");
  // Stopped: nothing more.
  scheduler.stop();
  await manual.advance(1_000);
  assert.equal(got.length, 3);
  // Followed again from a beat long past: the beat now due, once, then on.
  scheduler.follow(timeline, IDENTITY, 3);
  await windowIdsSettled();
  await manual.advance(0);
  assert.equal(got.at(-1)!.frame.beat_index, Math.floor(manual.now() / 100));
  const before = got.length;
  await manual.advance(300);
  assert.equal(got.length, before + 3);
  scheduler.stop();
});

import assert from "node:assert/strict";
import { ManualClock, SystemClock } from "./mod.ts";

Deno.test("SystemClock.schedule() never fires before the requested instant", async () => {
  for (const spinMs of [0, 1.5]) {
    const clock = new SystemClock({ spinMs });
    const fired: number[] = [];
    const targets = [5, 10, 15].map((d) => clock.now() + d);
    await Promise.all(targets.map((at) =>
      new Promise<void>((done) =>
        clock.schedule(at, () => {
          fired.push(clock.now() - at);
          done();
        })
      )
    ));
    assert.equal(fired.length, 3);
    for (const late of fired) assert.ok(late >= 0, `fired ${late} ms early`);
  }
});

Deno.test("SystemClock.schedule() can be cancelled", async () => {
  const clock = new SystemClock();
  let fired = false;
  const cancel = clock.schedule(clock.now() + 5, () => fired = true);
  cancel();
  cancel();
  await new Promise((r) => setTimeout(r, 20));
  assert.equal(fired, false);
  assert.throws(() => new SystemClock({ spinMs: -1 }), RangeError);
});

Deno.test("ManualClock runs due calls in time order and sets now() to each", async () => {
  const clock = new ManualClock(100);
  const seen: [string, number][] = [];
  clock.schedule(300, () => seen.push(["b", clock.now()]));
  clock.schedule(200, () => {
    seen.push(["a", clock.now()]);
    clock.schedule(250, () => seen.push(["a2", clock.now()]));
  });
  const cancel = clock.schedule(260, () => seen.push(["never", clock.now()]));
  cancel();
  clock.schedule(50, () => seen.push(["past", clock.now()])); // in the past: runs at once
  await clock.advance(250);
  assert.deepEqual(seen, [["past", 100], ["a", 200], ["a2", 250], ["b", 300]]);
  assert.equal(clock.now(), 350);
  assert.equal(clock.pending, 0);
});

Deno.test("SystemClock: an instant beyond setTimeout's 32-bit range waits instead of re-arming in a loop", async () => {
  const clock = new SystemClock({ spinMs: 0 });
  const real = globalThis.setTimeout;
  let arms = 0;
  // Count the clock's own timers: a delay over 2^31 - 1 ms would fire at once and re-arm.
  globalThis.setTimeout = ((fn: () => void, ms?: number) => {
    arms++;
    return real(fn, ms);
  }) as typeof setTimeout;
  let fired = false;
  let cancel: () => void;
  try {
    cancel = clock.schedule(clock.now() + 2 ** 32, () => fired = true);
  } finally {
    globalThis.setTimeout = real;
  }
  await new Promise((r) => real(r, 50));
  globalThis.setTimeout = ((fn: () => void, ms?: number) => {
    arms++;
    return real(fn, ms);
  }) as typeof setTimeout;
  try {
    await new Promise((r) => real(r, 50));
  } finally {
    globalThis.setTimeout = real;
    cancel();
  }
  assert.equal(fired, false);
  assert.equal(arms, 1);
});

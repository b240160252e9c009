import assert from "node:assert/strict";
import { ClockEstimator, ManualClock, sharedWakeScheduler, WakeScheduler } from "./mod.ts";

// A remote clock `offset` ms ahead and `ppm` fast relative to local time.
function remoteAt(local: number, offset: number, ppm: number): number {
  return local + offset + local * ppm / 1e6;
}

Deno.test("ClockEstimator: offset within a fraction of the round trip, asymmetric queueing filtered", () => {
  const est = new ClockEstimator();
  let local = 1_700_000_000_000;
  for (let i = 0; i < 40; i++) {
    // Requests sometimes wait in a queue on the way out (up to 5 ms): only the quick ones count.
    const up = 0.1 + (i % 4 === 0 ? 0 : (i * 37 % 50) / 10);
    const down = 0.1;
    const t0 = local;
    const t1 = remoteAt(t0 + up, 250, 0);
    const t2 = t1 + 0.02;
    const t3 = t0 + up + 0.02 + down;
    est.add({ t0, t1, t2, t3 });
    local += 100;
  }
  const e = est.estimate!;
  assert.ok(Math.abs(est.offsetAt(local) - 250) < 0.05, `offset ${est.offsetAt(local)}`);
  assert.ok(e.uncertaintyMs < 0.101, `uncertainty ${e.uncertaintyMs}`);
});

Deno.test("ClockEstimator: a fitted rate keeps a 50 ppm fast clock within 0.5 ms for an hour", () => {
  const est = new ClockEstimator();
  const start = 1_700_000_000_000;
  // Samples over the first minute, with 0.1 ms symmetric delay and a little jitter.
  for (let i = 0; i < 120; i++) {
    const t0 = start + i * 500;
    const jitter = (i * 7919 % 13) / 1000;
    const t1 = remoteAt(t0 + 0.1 + jitter, 250, 50);
    est.add({ t0, t1, t2: t1 + 0.01, t3: t0 + 0.21 + jitter });
  }
  assert.ok(Math.abs(est.estimate!.ratePpm - 50) < 1, `rate ${est.estimate!.ratePpm}`);
  for (const later of [60_000, 600_000, 3_600_000]) {
    const local = start + later;
    const err = est.toRemote(local) - remoteAt(local, 250, 50);
    assert.ok(Math.abs(err) < 0.5, `error ${err} ms after ${later} ms`);
    assert.ok(Math.abs(est.toLocal(est.toRemote(local)) - local) < 1e-6);
  }
});

Deno.test("ClockEstimator: refuses impossible samples", () => {
  const est = new ClockEstimator();
  assert.equal(est.add({ t0: 10, t1: 5, t2: 6, t3: 9 }), false);
  assert.equal(est.add({ t0: 10, t1: 5, t2: 4, t3: 11 }), false);
  assert.equal(est.add({ t0: NaN, t1: 5, t2: 6, t3: 11 }), false);
  assert.equal(est.estimate, undefined);
  assert.equal(est.toRemote(100), 100);
});

Deno.test("WakeScheduler: one timer for many callbacks, in order, isolated, cancellable", async () => {
  const clock = new ManualClock(0);
  let timers = 0;
  const counting = {
    now: () => clock.now(),
    schedule: (at: number, fn: () => void) => {
      timers++;
      return clock.schedule(at, fn);
    },
  };
  const errors: unknown[] = [];
  const wake = new WakeScheduler(counting, (e) => errors.push(e));
  const seen: string[] = [];
  for (let i = 0; i < 1_000; i++) wake.at(100, () => seen.push(`a${i}`));
  wake.at(100, () => {
    throw new Error("boom");
  });
  const cancel = wake.at(50, () => seen.push("cancelled"));
  wake.at(200, () => seen.push("b"));
  cancel();
  assert.ok(timers <= 3, `${timers} timers`);
  await clock.advance(100);
  assert.equal(seen.length, 1_000);
  assert.equal(seen[0], "a0");
  assert.equal(errors.length, 1);
  await clock.advance(100);
  assert.equal(seen.at(-1), "b");
  assert.equal(wake.pending, 0);
  assert.equal(sharedWakeScheduler(clock), sharedWakeScheduler(clock));
});

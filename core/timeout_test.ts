import assert from "node:assert/strict";
import { ManualClock, withTimeout } from "./mod.ts";

Deno.test("withTimeout: true when the promise settles in time, rejections included", async () => {
  const clock = new ManualClock(0);
  assert.equal(await withTimeout(Promise.resolve(1), 100, clock), true);
  assert.equal(await withTimeout(Promise.reject(new Error("x")), 100, clock), true);
});

Deno.test("withTimeout: false when the clock passes the limit first", async () => {
  const clock = new ManualClock(0);
  const waiting = withTimeout(new Promise(() => {}), 2_000, clock);
  await clock.advance(1_999);
  let done: boolean | undefined;
  waiting.then((v) => done = v);
  await Promise.resolve();
  assert.equal(done, undefined);
  await clock.advance(1);
  assert.equal(await waiting, false);
});

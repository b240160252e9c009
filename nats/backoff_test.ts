import assert from "node:assert/strict";
import { Backoff } from "./_backoff.ts";

Deno.test("Backoff: asking for the delay without a dial never grows it", () => {
  const b = new Backoff(250, 10_000, () => 1);
  const first = b.delay();
  for (let i = 0; i < 1000; i++) assert.equal(b.delay(), first);
  assert.equal(b.attempts, 0);
  assert.equal(first, 250);
});

Deno.test("Backoff: each dial doubles the ceiling up to the cap, and a reset starts over", () => {
  const b = new Backoff(250, 2_000, () => 1);
  const seen: number[] = [];
  for (let i = 0; i < 6; i++) {
    b.dialed();
    seen.push(b.delay(), b.delay());
  }
  assert.deepEqual(seen, [250, 250, 500, 500, 1000, 1000, 2000, 2000, 2000, 2000, 2000, 2000]);
  b.reset();
  assert.equal(b.delay(), 250);
  assert.equal(b.attempts, 0);
});

Deno.test("Backoff: jitter stays between half the base and the ceiling", () => {
  let r = 0;
  const b = new Backoff(100, 400, () => r);
  b.dialed();
  b.dialed();
  r = 0;
  b.dialed();
  assert.equal(b.delay(), 50);
  r = 0.999999;
  b.dialed();
  assert.ok(b.delay() <= 400 && b.delay() > 399);
});

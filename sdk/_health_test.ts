import assert from "node:assert/strict";
import { ErrorRing, LatencyWindow } from "./_health.ts";

Deno.test("LatencyWindow keeps the last samples and reports p50, p99 and max", () => {
  const w = new LatencyWindow(100);
  assert.deepEqual(w.stats(), { p50: 0, p99: 0, max: 0, count: 0 });
  for (let i = 1; i <= 1000; i++) w.record(i % 100 === 0 ? 1000 : 1);
  // The window now holds samples 901..1000: one outlier of 1000 among ones.
  assert.deepEqual(w.stats(), { p50: 1, p99: 1, max: 1000, count: 100 });
  const v = new LatencyWindow(200);
  for (let i = 200; i >= 1; i--) v.record(i);
  assert.deepEqual(v.stats(), { p50: 100, p99: 198, max: 200, count: 200 });
});

Deno.test("ErrorRing keeps only the most recent errors, oldest first", () => {
  const r = new ErrorRing(3);
  for (let i = 0; i < 5; i++) r.push({ at: i, kind: "callback", message: `e${i}` });
  assert.deepEqual(r.list().map((e) => e.message), ["e2", "e3", "e4"]);
  const none = new ErrorRing(0);
  none.push({ at: 0, kind: "x", message: "m" });
  assert.deepEqual(none.list(), []);
});

import assert from "node:assert/strict";
import { ManualClock, Rejections } from "./mod.ts";

function setup(intervalMs = 5_000) {
  const lines: { msg: string; fields?: Record<string, unknown> }[] = [];
  const logger = {
    debug() {},
    info() {},
    error() {},
    warn: (msg: string, fields?: Record<string, unknown>) => lines.push({ msg, fields }),
  };
  const clock = new ManualClock(0);
  const r = new Rejections({ logger, clock, message: "frames rejected", intervalMs });
  return { lines, clock, r };
}

Deno.test("Rejections: a flood is counted whole and logged in a few lines", async () => {
  const { lines, clock, r } = setup();
  for (let i = 0; i < 20_000; i++) r.add(i % 2 ? "schema" : "json", { i });
  assert.equal(r.total, 20_000);
  assert.deepEqual(r.counts, { json: 10_000, schema: 10_000 });
  assert.equal(lines.length, 1);
  assert.deepEqual(lines[0].fields, { reason: "json", i: 0 });
  await clock.advance(5_000);
  assert.equal(lines.length, 2);
  assert.deepEqual(lines[1].fields?.counts, { json: 9_999, schema: 10_000 });
  r.add("schema");
  assert.equal(lines.length, 2, "within the interval of the summary");
  r.stop();
  assert.equal(lines.length, 3);
});

Deno.test("Rejections: distinct reasons are capped", () => {
  const lines: unknown[] = [];
  const r = new Rejections({
    logger: { debug() {}, info() {}, error() {}, warn: (m) => lines.push(m) },
    clock: new ManualClock(0),
    message: "x",
    maxReasons: 2,
  });
  for (let i = 0; i < 100; i++) r.add(`reason-${i}`);
  assert.deepEqual(r.counts, { "reason-0": 1, "reason-1": 1, other: 98 });
  r.stop();
});

Deno.test("Rejections: a batch counts as many", () => {
  const lines: unknown[] = [];
  const r = new Rejections({
    logger: { debug() {}, info() {}, error() {}, warn: (_m, f) => lines.push(f) },
    clock: new ManualClock(0),
    message: "claims lost",
  });
  r.add("buffer_full", undefined, 5);
  r.add("buffer_full", undefined, 0);
  assert.equal(r.count("buffer_full"), 5);
  assert.deepEqual(lines, [{ reason: "buffer_full", count: 5 }]);
  r.stop();
});

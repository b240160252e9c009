import assert from "node:assert/strict";
import {
  DEFAULT_LATENCY_BOUNDS_SECONDS,
  Histogram,
  logBuckets,
  PrometheusWriter,
  quantile,
} from "./_metrics.ts";

Deno.test("logBuckets() gives ten ascending bounds per decade", () => {
  const b = logBuckets(-3, -1);
  assert.equal(b.length, 21);
  assert.deepEqual(b.slice(0, 4), [0.001, 0.00125, 0.0016, 0.002]);
  assert.equal(b[20], 0.1);
  assert.equal(DEFAULT_LATENCY_BOUNDS_SECONDS[0], 1e-6);
  assert.equal(DEFAULT_LATENCY_BOUNDS_SECONDS.at(-1), 10);
});

Deno.test("Histogram keeps constant memory and estimates quantiles within a bucket", () => {
  const h = new Histogram();
  for (let i = 1; i <= 10_000; i++) h.observe(i * 1e-6); // 1 µs .. 10 ms, uniform
  const s = h.snapshot();
  assert.equal(s.count, 10_000);
  assert.equal(s.counts.length, DEFAULT_LATENCY_BOUNDS_SECONDS.length + 1);
  assert.equal(s.min, 1e-6);
  assert.equal(s.max, 0.01);
  const p50 = quantile(s, 0.5);
  const p99 = quantile(s, 0.99);
  assert.ok(Math.abs(p50 - 0.005) / 0.005 < 0.25, `p50 ${p50}`);
  assert.ok(Math.abs(p99 - 0.0099) / 0.0099 < 0.25, `p99 ${p99}`);
  assert.equal(quantile(s, 1), 0.01);
  h.observe(100); // overflow bucket
  assert.equal(quantile(h.snapshot(), 1), 100);
  assert.throws(() => quantile(s, 2), RangeError);
  h.reset();
  assert.equal(quantile(h.snapshot(), 0.5), 0);
  assert.throws(() => new Histogram([2, 1]), RangeError);
});

Deno.test("PrometheusWriter writes counters, gauges and cumulative histogram buckets", () => {
  const h = new Histogram([0.1, 0.2, 0.5]);
  for (const v of [0.05, 0.15, 0.15, 0.3, 9]) h.observe(v);
  const text = new PrometheusWriter()
    .counter("x_total", "Things.", [[{ job: 'a"b' }, 3]])
    .gauge("y", "Level.", -Infinity)
    .histogram("z_seconds", "Latency.", h.snapshot(), [0.2, 0.5])
    .toString();
  assert.equal(
    text,
    [
      "# HELP x_total Things.",
      "# TYPE x_total counter",
      'x_total{job="a\\"b"} 3',
      "# HELP y Level.",
      "# TYPE y gauge",
      "y -Inf",
      "# HELP z_seconds Latency.",
      "# TYPE z_seconds histogram",
      'z_seconds_bucket{le="0.2"} 3',
      'z_seconds_bucket{le="0.5"} 4',
      'z_seconds_bucket{le="+Inf"} 5',
      "z_seconds_sum 9.65",
      "z_seconds_count 5",
      "",
    ].join("\n"),
  );
});

Deno.test("PrometheusWriter: base labels on every sample, several samples per family, no family twice", () => {
  const h = new Histogram([0.1]);
  h.observe(0.05);
  const w = new PrometheusWriter({ cluster: "dev" })
    .counter("r_total", "By reason.", [[{ reason: "a" }, 1], [{ reason: "b" }, 2]])
    .histogram("l_seconds", "Latency.", h.snapshot());
  const text = w.toString();
  assert.equal(text.match(/# TYPE r_total/g)?.length, 1);
  assert.match(text, /^r_total\{cluster="dev",reason="a"\} 1$/m);
  assert.match(text, /^r_total\{cluster="dev",reason="b"\} 2$/m);
  assert.match(text, /^l_seconds_bucket\{cluster="dev",le="0.1"\} 1$/m);
  assert.match(text, /^l_seconds_count\{cluster="dev"\} 1$/m);
  assert.throws(() => w.gauge("r_total", "Again.", 1), /written twice/);
});

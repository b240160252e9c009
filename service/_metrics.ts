// Bounded latency histograms and the Prometheus text format (0.0.4), shared by the services.

/** Content type of the Prometheus text exposition format. */
export const PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8";

const MANTISSAS = [1, 1.25, 1.6, 2, 2.5, 3.2, 4, 5, 6.3, 8];

/**
 * Log-spaced bucket upper bounds, ten per decade (1, 1.25, 1.6, 2, 2.5, 3.2, 4, 5, 6.3, 8).
 *
 * @param fromExp Decade of the first bound (e.g. -6 for 1 µs in seconds).
 * @param toExp Decade of the last bound (inclusive, one bound only).
 * @returns Ascending bounds.
 *
 * @example Bounds from 1 ms to 1 s
 * ```ts
 * import { logBuckets } from "./mod.ts";
 * console.log(logBuckets(-3, 0).length); // 31
 * ```
 */
export function logBuckets(fromExp: number, toExp: number): number[] {
  const out: number[] = [];
  for (let e = fromExp; e < toExp; e++) {
    for (const m of MANTISSAS) out.push(Number((m * 10 ** e).toPrecision(3)));
  }
  out.push(Number((10 ** toExp).toPrecision(3)));
  return out;
}

/** Default bounds in seconds: 1 µs to 10 s. */
export const DEFAULT_LATENCY_BOUNDS_SECONDS: readonly number[] = logBuckets(-6, 1);

/** A point-in-time copy of a {@linkcode Histogram}. */
export interface HistogramSnapshot {
  /** Bucket upper bounds, ascending. */
  readonly bounds: readonly number[];
  /** Observations per bucket (not cumulative); one more than `bounds` for the overflow. */
  readonly counts: readonly number[];
  /** Number of observations. */
  readonly count: number;
  /** Sum of observations. */
  readonly sum: number;
  /** Smallest observation (0 when empty). */
  readonly min: number;
  /** Largest observation (0 when empty). */
  readonly max: number;
}

/**
 * A fixed-bucket histogram: constant memory however many values it sees.
 *
 * @example Observe and summarise
 * ```ts
 * import { Histogram, quantile } from "./mod.ts";
 * const h = new Histogram();
 * for (let i = 1; i <= 100; i++) h.observe(i / 1e6);
 * console.log(quantile(h.snapshot(), 0.5) < 6e-5); // true
 * ```
 */
export class Histogram {
  readonly #bounds: readonly number[];
  readonly #counts: number[];
  #count = 0;
  #sum = 0;
  #min = Infinity;
  #max = -Infinity;

  /**
   * Creates an empty histogram.
   *
   * @param bounds Bucket upper bounds, ascending. @default {DEFAULT_LATENCY_BOUNDS_SECONDS}
   */
  constructor(bounds: readonly number[] = DEFAULT_LATENCY_BOUNDS_SECONDS) {
    for (let i = 1; i < bounds.length; i++) {
      if (!(bounds[i] > bounds[i - 1])) throw new RangeError("Histogram bounds must ascend");
    }
    this.#bounds = [...bounds];
    this.#counts = new Array(bounds.length + 1).fill(0);
  }

  /**
   * Records one value.
   *
   * @param value The observation.
   */
  observe(value: number): void {
    const b = this.#bounds;
    let lo = 0;
    let hi = b.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (b[mid] < value) lo = mid + 1;
      else hi = mid;
    }
    this.#counts[lo]++;
    this.#count++;
    this.#sum += value;
    if (value < this.#min) this.#min = value;
    if (value > this.#max) this.#max = value;
  }

  /** Number of observations. */
  get count(): number {
    return this.#count;
  }

  /**
   * Copies the current state.
   *
   * @returns The snapshot.
   */
  snapshot(): HistogramSnapshot {
    return {
      bounds: this.#bounds,
      counts: [...this.#counts],
      count: this.#count,
      sum: this.#sum,
      min: this.#count ? this.#min : 0,
      max: this.#count ? this.#max : 0,
    };
  }

  /** Forgets every observation. */
  reset(): void {
    this.#counts.fill(0);
    this.#count = 0;
    this.#sum = 0;
    this.#min = Infinity;
    this.#max = -Infinity;
  }
}

/**
 * Estimates a quantile from a snapshot, interpolating linearly inside the bucket (as
 * Prometheus' `histogram_quantile`), clamped to the observed min and max.
 *
 * @param s The snapshot.
 * @param q The quantile, 0 to 1.
 * @returns The estimate (0 when empty).
 * @throws {RangeError} When `q` is outside 0..1.
 *
 * @example The p99 of observed latencies
 * ```ts
 * import { Histogram, quantile } from "./mod.ts";
 * const h = new Histogram();
 * for (let i = 1; i <= 100; i++) h.observe(i / 1000);
 * console.log(quantile(h.snapshot(), 0.99) <= 0.1); // true
 * ```
 */
export function quantile(s: HistogramSnapshot, q: number): number {
  if (!(q >= 0 && q <= 1)) throw new RangeError(`Invalid quantile ${q}: expected 0 to 1`);
  if (s.count === 0) return 0;
  const rank = q * s.count;
  let seen = 0;
  for (let i = 0; i < s.counts.length; i++) {
    const c = s.counts[i];
    if (c > 0 && seen + c >= rank) {
      const lower = i === 0 ? Math.min(0, s.min) : s.bounds[i - 1];
      const upper = i < s.bounds.length ? s.bounds[i] : s.max;
      const v = lower + (upper - lower) * Math.max(0, rank - seen) / c;
      return Math.min(s.max, Math.max(s.min, v));
    }
    seen += c;
  }
  return s.max;
}

/** Prometheus label names to values. */
export type MetricLabels = Readonly<Record<string, string>>;

/** One sample of a family: its own labels (beside the writer's) and its value. */
export type MetricSample = readonly [labels: MetricLabels, value: number];

function escapeLabel(v: string): string {
  return v.replace(/\\/g, "\\\\").replace(/"/g, '\\"').replace(/\n/g, "\\n");
}

function escapeHelp(v: string): string {
  return v.replace(/\\/g, "\\\\").replace(/\n/g, "\\n");
}

function formatValue(v: number): string {
  if (Number.isNaN(v)) return "NaN";
  if (v === Infinity) return "+Inf";
  if (v === -Infinity) return "-Inf";
  return String(v);
}

/**
 * Builds a Prometheus text exposition (format 0.0.4): one `# HELP` and `# TYPE` per family, then
 * its samples, each with the writer's base labels (e.g. `cluster`) first. A family may hold
 * several labelled samples (one per reason); writing a family twice would make the output
 * invalid, so it throws.
 *
 * @example A counter by reason, for one cluster
 * ```ts
 * import { PrometheusWriter } from "./mod.ts";
 * const w = new PrometheusWriter({ cluster: "dev" });
 * w.counter("backbeat_pulse_beats_published_total", "Beat frames published.", 42);
 * w.counter("backbeat_pulse_frames_rejected_total", "Frames refused, by reason.", [
 *   [{ reason: "schema" }, 3],
 *   [{ reason: "bad_signature" }, 1],
 * ]);
 * console.log(w.toString());
 * ```
 */
export class PrometheusWriter {
  readonly #base: MetricLabels;
  readonly #lines: string[] = [];
  readonly #names = new Set<string>();

  /**
   * Creates an empty exposition.
   *
   * @param base Labels every sample carries. @default {{}}
   */
  constructor(base: MetricLabels = {}) {
    this.#base = base;
  }

  #labels(labels: MetricLabels, extra?: string): string {
    const parts = Object.entries({ ...this.#base, ...labels }).map(
      ([k, v]) => `${k}="${escapeLabel(v)}"`,
    );
    if (extra !== undefined) parts.push(extra);
    return parts.length > 0 ? `{${parts.join(",")}}` : "";
  }

  #head(name: string, help: string, type: "counter" | "gauge" | "histogram"): void {
    if (this.#names.has(name)) throw new Error(`metric family ${name} written twice`);
    this.#names.add(name);
    this.#lines.push(`# HELP ${name} ${escapeHelp(help)}`, `# TYPE ${name} ${type}`);
  }

  #family(
    type: "counter" | "gauge",
    name: string,
    help: string,
    samples: number | readonly MetricSample[],
  ): this {
    this.#head(name, help, type);
    const list: readonly MetricSample[] = typeof samples === "number" ? [[{}, samples]] : samples;
    for (const [labels, value] of list) {
      this.#lines.push(`${name}${this.#labels(labels)} ${formatValue(value)}`);
    }
    return this;
  }

  /**
   * Adds a counter family.
   *
   * @param name Metric name (ending in `_total`).
   * @param help One-line description.
   * @param samples The value, or labelled samples.
   * @returns This writer.
   * @throws {Error} When the family was already written.
   */
  counter(name: string, help: string, samples: number | readonly MetricSample[]): this {
    return this.#family("counter", name, help, samples);
  }

  /**
   * Adds a gauge family.
   *
   * @param name Metric name.
   * @param help One-line description.
   * @param samples The value, or labelled samples.
   * @returns This writer.
   * @throws {Error} When the family was already written.
   */
  gauge(name: string, help: string, samples: number | readonly MetricSample[]): this {
    return this.#family("gauge", name, help, samples);
  }

  /**
   * Adds a histogram. `exportBounds` (a subset of the snapshot's bounds) keeps the exposition
   * short while the histogram itself stays fine-grained.
   *
   * @param name Metric name (without `_bucket`).
   * @param help One-line description.
   * @param s The snapshot.
   * @param exportBounds Bounds to expose. @default {every bound}
   * @returns This writer.
   * @throws {Error} When the family was already written.
   */
  histogram(
    name: string,
    help: string,
    s: HistogramSnapshot,
    exportBounds?: readonly number[],
  ): this {
    this.#head(name, help, "histogram");
    const wanted = exportBounds ? new Set(exportBounds) : undefined;
    let cumulative = 0;
    for (let i = 0; i < s.bounds.length; i++) {
      cumulative += s.counts[i];
      if (wanted && !wanted.has(s.bounds[i])) continue;
      this.#lines.push(
        `${name}_bucket${this.#labels({}, `le="${formatValue(s.bounds[i])}"`)} ${cumulative}`,
      );
    }
    this.#lines.push(`${name}_bucket${this.#labels({}, 'le="+Inf"')} ${s.count}`);
    this.#lines.push(`${name}_sum${this.#labels({})} ${formatValue(s.sum)}`);
    this.#lines.push(`${name}_count${this.#labels({})} ${s.count}`);
    return this;
  }

  /**
   * Renders the exposition.
   *
   * @returns The text, ending in a newline.
   */
  toString(): string {
    return this.#lines.join("\n") + "\n";
  }
}

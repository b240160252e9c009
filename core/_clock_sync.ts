// Estimates a remote clock (pulse's) against the local one from NTP-style exchanges: offset and
// rate, so a client can fire callbacks at pulse's instants on its own clock, and keep doing so
// while pulse is unreachable.

/** One request/reply exchange, each instant on the clock that read it (epoch ms). */
export interface TimeSample {
  /** Local clock when the request left. */
  readonly t0: number;
  /** Remote clock when the request arrived. */
  readonly t1: number;
  /** Remote clock when the reply left. */
  readonly t2: number;
  /** Local clock when the reply arrived. */
  readonly t3: number;
}

/** Options of {@linkcode ClockEstimator}. */
export interface ClockEstimatorOptions {
  /** Samples kept (oldest dropped). @default {128} */
  maxSamples?: number;
  /** Shortest span of samples over which a rate is fitted, in ms. @default {2000} */
  minRateSpanMs?: number;
  /** Largest rate believed, in ppm (a sample set implying more is fitted as offset only). @default {500} */
  maxRatePpm?: number;
}

interface Point {
  /** Local midpoint of the exchange. */
  readonly at: number;
  /** Remote minus local at that point. */
  readonly offset: number;
  /** Round trip minus the remote's processing time. */
  readonly delay: number;
}

/** What a {@linkcode ClockEstimator} currently believes. */
export interface ClockEstimate {
  /** Remote minus local clock at `at`, in ms. */
  readonly offsetMs: number;
  /** The local instant the offset refers to. */
  readonly at: number;
  /** How much faster the remote clock runs, in parts per million (0 until fitted). */
  readonly ratePpm: number;
  /** Half the best round trip, in ms: the offset is within this of the truth. */
  readonly uncertaintyMs: number;
  /** Samples the estimate rests on. */
  readonly samples: number;
}

/**
 * An NTP-style estimate of a remote clock: each exchange gives an offset bounded by half its
 * round trip; the low-round-trip exchanges are kept (queueing only ever adds delay), and a line
 * fitted through them over time gives the rate as well as the offset.
 *
 * @example Two exchanges with a clock 250 ms ahead
 * ```ts
 * import { ClockEstimator } from "./mod.ts";
 * const est = new ClockEstimator();
 * est.add({ t0: 1_000, t1: 1_250.2, t2: 1_250.3, t3: 1_000.5 });
 * est.add({ t0: 5_000, t1: 5_250.1, t2: 5_250.2, t3: 5_000.3 });
 * console.log(Math.round(est.toRemote(6_000))); // 6250
 * ```
 */
export class ClockEstimator {
  readonly #max: number;
  readonly #minSpan: number;
  readonly #maxRate: number;
  #points: Point[] = [];
  #estimate: ClockEstimate | undefined;

  /**
   * Creates an estimator with no samples.
   *
   * @param options Limits.
   * @throws {RangeError} On a sample cap below 2.
   */
  constructor(options: ClockEstimatorOptions = {}) {
    this.#max = options.maxSamples ?? 128;
    this.#minSpan = options.minRateSpanMs ?? 2_000;
    this.#maxRate = options.maxRatePpm ?? 500;
    if (!(Number.isInteger(this.#max) && this.#max >= 2)) {
      throw new RangeError(`Invalid maxSamples ${options.maxSamples}: expected an integer >= 2`);
    }
  }

  /** The current estimate, once a sample was taken. */
  get estimate(): ClockEstimate | undefined {
    return this.#estimate;
  }

  /**
   * Takes an exchange into account. Samples with instants out of order (a reply before its
   * request) or not finite are ignored.
   *
   * @param sample The four instants.
   * @returns Whether it was used.
   */
  add(sample: TimeSample): boolean {
    const { t0, t1, t2, t3 } = sample;
    if (![t0, t1, t2, t3].every(Number.isFinite) || t3 < t0 || t2 < t1) return false;
    const delay = (t3 - t0) - (t2 - t1);
    if (delay < 0) return false;
    this.#points.push({ at: (t0 + t3) / 2, offset: ((t1 - t0) + (t2 - t3)) / 2, delay });
    if (this.#points.length > this.#max) this.#points.splice(0, this.#points.length - this.#max);
    this.#estimate = this.#fit();
    return true;
  }

  /** Forgets every sample (after the remote changed, e.g. a new pulse leader). */
  reset(): void {
    this.#points = [];
    this.#estimate = undefined;
  }

  /**
   * Remote minus local clock at a local instant.
   *
   * @param local A local instant (epoch ms).
   * @returns The offset in ms (0 before any sample).
   */
  offsetAt(local: number): number {
    const e = this.#estimate;
    if (e === undefined) return 0;
    return e.offsetMs + (local - e.at) * e.ratePpm / 1e6;
  }

  /**
   * The remote clock's reading at a local instant.
   *
   * @param local A local instant.
   * @returns The remote instant.
   */
  toRemote(local: number): number {
    return local + this.offsetAt(local);
  }

  /**
   * The local instant at which the remote clock reads `remote`.
   *
   * @param remote A remote instant.
   * @returns The local instant.
   */
  toLocal(remote: number): number {
    const e = this.#estimate;
    if (e === undefined) return remote;
    // remote = local + o + (local - at) r  =>  local = (remote - o + at r) / (1 + r)
    const r = e.ratePpm / 1e6;
    return (remote - e.offsetMs + e.at * r) / (1 + r);
  }

  // The best exchanges carry the least queueing: fit through those within a little of the best
  // round trip, weighted towards the lowest.
  #fit(): ClockEstimate {
    const pts = this.#points;
    let best = Infinity;
    for (const p of pts) best = Math.min(best, p.delay);
    const limit = best * 2 + 0.05;
    const good = pts.filter((p) => p.delay <= limit);
    let sw = 0, sx = 0, sy = 0;
    for (const p of good) {
      const w = 1 / (p.delay + 0.01) ** 2;
      sw += w;
      sx += w * p.at;
      sy += w * p.offset;
    }
    const mx = sx / sw;
    const my = sy / sw;
    let rate = 0;
    const span = good.length > 1 ? good[good.length - 1].at - good[0].at : 0;
    if (span >= this.#minSpan) {
      let sxx = 0, sxy = 0;
      for (const p of good) {
        const w = 1 / (p.delay + 0.01) ** 2;
        sxx += w * (p.at - mx) ** 2;
        sxy += w * (p.at - mx) * (p.offset - my);
      }
      const slope = sxx > 0 ? sxy / sxx : 0;
      if (Math.abs(slope * 1e6) <= this.#maxRate) rate = slope * 1e6;
    }
    return {
      offsetMs: my,
      at: mx,
      ratePpm: rate,
      uncertaintyMs: best / 2,
      samples: good.length,
    };
  }
}

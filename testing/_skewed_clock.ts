// Another host's clock for a test: a fixed offset and a rate error against a base clock (a
// ManualClock, or the system clock), so a test can give pulse a clock that runs 250 ms ahead and
// 50 ppm fast of its clients and still drive both from one ManualClock.
import type { Clock } from "../core/mod.ts";

/**
 * A clock `offsetMs` ahead of a base clock at creation and `ratePpm` parts per million faster:
 * `now() = base + offsetMs + (base − origin) × ratePpm / 10⁶`. Its timers are the base clock's,
 * at the base instant its reading is due, so a `ManualClock` base still runs everything in order.
 *
 * @example Pulse 250 ms ahead and 50 ppm fast of a manual clock
 * ```ts
 * import { ManualClock, SkewedClock } from "@chorus/backbeat/testing";
 * const local = new ManualClock(0);
 * const pulse = new SkewedClock(local, { offsetMs: 250, ratePpm: 50 });
 * await local.advance(1_000_000);
 * console.log(pulse.now()); // 1000300
 * console.log(pulse.toBase(1000300)); // 1000000
 * ```
 */
export class SkewedClock implements Clock {
  /** The clock this one is skewed from. */
  readonly base: Clock;
  /** Offset at `origin`, in ms. */
  readonly offsetMs: number;
  /** Rate error, in parts per million (positive: faster). */
  readonly ratePpm: number;
  /** The base instant the offset refers to (the base clock's reading at creation). */
  readonly origin: number;

  /**
   * Creates a skewed view of a clock.
   *
   * @param base The base clock.
   * @param options Offset (ms) and rate error (ppm).
   * @throws {RangeError} When the offset is not finite or the rate is not within ±10⁵ ppm.
   */
  constructor(base: Clock, options: { offsetMs?: number; ratePpm?: number } = {}) {
    const offset = options.offsetMs ?? 0;
    const rate = options.ratePpm ?? 0;
    if (!Number.isFinite(offset)) {
      throw new RangeError(`Invalid offsetMs ${offset}: expected a finite number`);
    }
    if (!(Math.abs(rate) <= 100_000)) {
      throw new RangeError(`Invalid ratePpm ${rate}: expected -100000 to 100000`);
    }
    this.base = base;
    this.offsetMs = offset;
    this.ratePpm = rate;
    this.origin = base.now();
  }

  now(): number {
    return this.fromBase(this.base.now());
  }

  /**
   * This clock's reading at a base instant.
   *
   * @param base A base instant.
   * @returns The skewed instant.
   */
  fromBase(base: number): number {
    return base + this.offsetMs + (base - this.origin) * this.ratePpm / 1e6;
  }

  /**
   * The base instant at which this clock reads `at`: the truth a client's estimate of this
   * clock is measured against.
   *
   * @param at An instant of this clock.
   * @returns The base instant.
   */
  toBase(at: number): number {
    const r = this.ratePpm / 1e6;
    return (at - this.offsetMs + this.origin * r) / (1 + r);
  }

  schedule(at: number, fn: () => void): () => void {
    return this.base.schedule(this.toBase(at), fn);
  }
}

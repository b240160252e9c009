/**
 * A source of time and timers. Beat scheduling takes one so tests can run hours in
 * milliseconds with {@linkcode ManualClock}, while services use {@linkcode SystemClock}.
 */
export interface Clock {
  /** Current time in epoch milliseconds, fractional. */
  now(): number;
  /**
   * Calls `fn` once at or after epoch milliseconds `at`, never before.
   *
   * @returns A function that cancels the call (idempotent).
   */
  schedule(at: number, fn: () => void): () => void;
}

// setTimeout takes a 32-bit delay: a longer one fires at once, so a far instant (an hour of 0.1
// BPM, a bogus deadline) would re-arm in a tight loop. Waits longer than this wake and re-arm.
const MAX_TIMER_MS = 2 ** 31 - 1;

// How early a long wait first wakes, to finish on a short (more punctual) timer.
const COARSE_MS = 8;

/** Default for {@linkcode SystemClockOptions.spinMs}. */
export const DEFAULT_SPIN_MS = 0;

/** Options of {@linkcode SystemClock}. */
export interface SystemClockOptions {
  /**
   * Wake this many ms early and spin for the rest, trading CPU for punctuality (pulse uses
   * 1.5 ms: setTimeout alone is up to 1 ms late at p99). 0 disables spinning.
   * @default {0}
   */
  spinMs?: number;
}

/**
 * Wall time from `performance.timeOrigin + performance.now()` (monotonic within the process) and
 * timers from `setTimeout`, optionally finished by a short spin for sub-millisecond punctuality.
 *
 * @example Schedule a call 10 ms from now
 * ```ts
 * import { SystemClock } from "./mod.ts";
 * const clock = new SystemClock();
 * await new Promise<void>((done) => clock.schedule(clock.now() + 10, done));
 * ```
 */
export class SystemClock implements Clock {
  readonly #spin: number;

  /**
   * Creates the clock.
   *
   * @param options Spin window.
   */
  constructor(options: SystemClockOptions = {}) {
    this.#spin = options.spinMs ?? DEFAULT_SPIN_MS;
    if (!(this.#spin >= 0 && this.#spin <= 20)) {
      throw new RangeError(`Invalid spinMs ${options.spinMs}: expected 0 to 20`);
    }
  }

  now(): number {
    return performance.timeOrigin + performance.now();
  }

  schedule(at: number, fn: () => void): () => void {
    let id: ReturnType<typeof setTimeout> | undefined;
    let cancelled = false;
    const fire = () => {
      id = undefined;
      if (cancelled) return;
      const left = at - this.now();
      if (left > this.#spin + 1) {
        // Woke too early (timers may fire up to ~0.3 ms early, or the delay was clamped): re-arm.
        id = setTimeout(fire, Math.min(left - this.#spin, MAX_TIMER_MS));
        return;
      }
      // deno-lint-ignore no-empty
      while (this.now() < at) {}
      fn();
    };
    const delay = at - this.now() - this.#spin;
    // Long timers fire later than short ones (measured: p90 ~1.5 ms late at 100 ms, ~0.9 ms at
    // 10 ms), so a long wait ends with a short timer: wake COARSE_MS early and re-arm in fire().
    const first = this.#spin > 0 && delay > 2 * COARSE_MS ? delay - COARSE_MS : delay;
    id = setTimeout(fire, first > 0 ? Math.min(first, MAX_TIMER_MS) : 0);
    return () => {
      cancelled = true;
      if (id !== undefined) clearTimeout(id);
      id = undefined;
    };
  }
}

interface Pending {
  at: number;
  seq: number;
  fn: () => void;
  cancelled: boolean;
}

/**
 * A clock that moves only when told, for tests: `advance()` runs every due call in time order,
 * setting `now()` to each call's time as it runs.
 *
 * @example Run an hour in a moment
 * ```ts
 * import { ManualClock } from "./mod.ts";
 * const clock = new ManualClock(0);
 * let fired = 0;
 * clock.schedule(3_600_000, () => fired++);
 * await clock.advance(3_600_000);
 * console.log(fired); // 1
 * ```
 */
export class ManualClock implements Clock {
  #now: number;
  #seq = 0;
  #queue: Pending[] = [];

  /**
   * Creates a clock stopped at `start`.
   *
   * @param start Initial epoch milliseconds.
   */
  constructor(start = 0) {
    this.#now = start;
  }

  now(): number {
    return this.#now;
  }

  /** Calls waiting to run. */
  get pending(): number {
    return this.#queue.filter((p) => !p.cancelled).length;
  }

  schedule(at: number, fn: () => void): () => void {
    const p: Pending = { at: Math.max(at, this.#now), seq: this.#seq++, fn, cancelled: false };
    this.#queue.push(p);
    return () => {
      p.cancelled = true;
    };
  }

  /**
   * Moves time forward, running due calls in order; awaits microtasks between calls so async
   * work started by one call settles before the next.
   *
   * @param ms Milliseconds to advance.
   */
  async advance(ms: number): Promise<void> {
    const end = this.#now + ms;
    for (;;) {
      this.#queue = this.#queue.filter((p) => !p.cancelled);
      let next: Pending | undefined;
      for (const p of this.#queue) {
        if (p.at <= end && (!next || p.at < next.at || (p.at === next.at && p.seq < next.seq))) {
          next = p;
        }
      }
      if (!next) break;
      this.#queue.splice(this.#queue.indexOf(next), 1);
      this.#now = next.at;
      next.fn();
      // Let promise chains started by the call run before time moves on.
      for (let i = 0; i < 10; i++) await Promise.resolve();
    }
    this.#now = end;
  }
}

// One precise wake-up for everything a process schedules on a clock: a min-heap of due
// instants behind a single clock timer (SystemClock finishes each wait with a short spin), so a
// thousand clients in a process cost one timer and one spin per instant, not a thousand.
import type { Clock } from "./_clock.ts";

/** Most callbacks one scheduler holds at once. */
const MAX_PENDING = 1_000_000;

interface Entry {
  readonly at: number;
  readonly seq: number;
  fn: (() => void) | undefined;
}

/**
 * Runs callbacks at instants of a clock, in order of instant (then of scheduling), through one
 * clock timer at a time. A throwing callback is reported to `onError` and the others still run.
 *
 * @example Three callbacks, one timer
 * ```ts
 * import { ManualClock, WakeScheduler } from "./mod.ts";
 * const clock = new ManualClock(0);
 * const wake = new WakeScheduler(clock);
 * const order: number[] = [];
 * wake.at(20, () => order.push(2));
 * wake.at(10, () => order.push(1));
 * wake.at(20, () => order.push(3));
 * await clock.advance(20);
 * console.log(order); // [1, 2, 3]
 * ```
 */
export class WakeScheduler {
  readonly #clock: Clock;
  readonly #onError: (error: unknown) => void;
  readonly #heap: Entry[] = [];
  #seq = 0;
  #armedAt = Infinity;
  #cancelTimer: (() => void) | undefined;
  #running = false;

  /**
   * Creates a scheduler on a clock.
   *
   * @param clock The clock whose timer wakes it.
   * @param onError Receives what a callback threw. @default {console.error}
   */
  constructor(clock: Clock, onError: (error: unknown) => void = (e) => console.error(e)) {
    this.#clock = clock;
    this.#onError = onError;
  }

  /** Callbacks waiting. */
  get pending(): number {
    return this.#heap.length;
  }

  /**
   * Runs `fn` at `at` (at once when that has passed, but never synchronously).
   *
   * @param at The clock instant (epoch ms).
   * @param fn The callback.
   * @returns Cancels it (idempotent).
   * @throws {RangeError} When `at` is not finite or too many callbacks wait.
   */
  at(at: number, fn: () => void): () => void {
    if (!Number.isFinite(at)) {
      throw new RangeError(`Cannot schedule at ${at}: not a finite instant`);
    }
    if (this.#heap.length >= MAX_PENDING) {
      throw new RangeError(`Cannot schedule: ${MAX_PENDING} callbacks are already waiting`);
    }
    const entry: Entry = { at, seq: this.#seq++, fn };
    this.#push(entry);
    if (!this.#running && at < this.#armedAt) this.#arm();
    return () => {
      entry.fn = undefined;
    };
  }

  #arm(): void {
    this.#cancelTimer?.();
    this.#cancelTimer = undefined;
    // Cancelled entries at the top are dropped here, so they never cost a wake-up.
    while (this.#heap.length > 0 && this.#heap[0].fn === undefined) this.#pop();
    if (this.#heap.length === 0) {
      this.#armedAt = Infinity;
      return;
    }
    const at = this.#heap[0].at;
    this.#armedAt = at;
    this.#cancelTimer = this.#clock.schedule(at, this.#fire);
  }

  #fire = (): void => {
    this.#cancelTimer = undefined;
    this.#armedAt = Infinity;
    this.#running = true;
    try {
      // Only what is due now: callbacks scheduled by callbacks for later wait for their timer.
      const now = this.#clock.now();
      while (this.#heap.length > 0 && this.#heap[0].at <= now) {
        const e = this.#pop();
        const fn = e.fn;
        if (fn === undefined) continue;
        e.fn = undefined;
        try {
          fn();
        } catch (error) {
          try {
            this.#onError(error);
          } catch { /* an error hook must not stop the others */ }
        }
      }
    } finally {
      this.#running = false;
      this.#arm();
    }
  };

  #less(a: Entry, b: Entry): boolean {
    return a.at < b.at || (a.at === b.at && a.seq < b.seq);
  }

  #push(e: Entry): void {
    const h = this.#heap;
    h.push(e);
    let i = h.length - 1;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (!this.#less(h[i], h[p])) break;
      [h[i], h[p]] = [h[p], h[i]];
      i = p;
    }
  }

  #pop(): Entry {
    const h = this.#heap;
    const top = h[0];
    const last = h.pop()!;
    if (h.length > 0) {
      h[0] = last;
      let i = 0;
      for (;;) {
        const l = 2 * i + 1;
        const r = l + 1;
        let m = i;
        if (l < h.length && this.#less(h[l], h[m])) m = l;
        if (r < h.length && this.#less(h[r], h[m])) m = r;
        if (m === i) break;
        [h[i], h[m]] = [h[m], h[i]];
        i = m;
      }
    }
    return top;
  }
}

const shared = new WeakMap<Clock, WakeScheduler>();

/**
 * The process's one {@linkcode WakeScheduler} for a clock: every client scheduling on the same
 * clock object shares its timer.
 *
 * @param clock The clock.
 * @returns Its scheduler.
 */
export function sharedWakeScheduler(clock: Clock): WakeScheduler {
  let s = shared.get(clock);
  if (s === undefined) shared.set(clock, s = new WakeScheduler(clock));
  return s;
}

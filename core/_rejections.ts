// Counting refused input and logging it without letting a flood write a flood of lines: every
// rejection is counted by reason at once; the log gets the first one at once, then at most one
// summary per interval.
import type { Clock } from "./_clock.ts";
import type { LogFields, Logger } from "./_log.ts";

/** Options of {@linkcode Rejections}. */
export interface RejectionsOptions {
  /** Where summaries go. */
  logger: Logger;
  /** Time source for the interval. */
  clock: Clock;
  /** The log message, e.g. `"frames rejected"`. */
  message: string;
  /** Shortest time between two log lines, in ms. @default {5000} */
  intervalMs?: number;
  /** Most distinct reasons counted; others are counted as `other`. @default {64} */
  maxReasons?: number;
}

/**
 * Counts rejections by reason and logs them rate-limited: the first at once (with its detail),
 * then one `warn` line per interval with the counts since the last line. Memory is bounded by
 * `maxReasons`.
 *
 * @example Count a flood, log a few lines
 * ```ts
 * import { ManualClock, Rejections } from "./mod.ts";
 * const lines: string[] = [];
 * const log = { debug() {}, info() {}, error() {}, warn: (m: string) => lines.push(m) };
 * const rejections = new Rejections({ logger: log, clock: new ManualClock(0), message: "frames rejected" });
 * for (let i = 0; i < 20_000; i++) rejections.add("schema");
 * console.log(rejections.count("schema"), lines.length); // 20000 1
 * ```
 */
export class Rejections {
  readonly #o: Required<RejectionsOptions>;
  readonly #total = new Map<string, number>();
  #pending = new Map<string, number>();
  #lastLog = -Infinity;
  #timer: (() => void) | undefined;

  /**
   * Creates an empty counter.
   *
   * @param options Logger, clock, message and limits.
   * @throws {RangeError} On a negative interval or a reason cap below 1.
   */
  constructor(options: RejectionsOptions) {
    this.#o = { intervalMs: 5_000, maxReasons: 64, ...options };
    if (!(this.#o.intervalMs >= 0)) {
      throw new RangeError(`Invalid intervalMs ${options.intervalMs}: expected a number >= 0`);
    }
    if (!(Number.isInteger(this.#o.maxReasons) && this.#o.maxReasons >= 1)) {
      throw new RangeError(`Invalid maxReasons ${options.maxReasons}: expected an integer >= 1`);
    }
  }

  /**
   * Counts one rejection.
   *
   * @param reason A short stable reason (`schema`, `bad_signature`, …).
   * @param detail Fields for the log line, when this one is logged.
   * @param count How many were refused at once (five claims lost together). @default {1}
   */
  add(reason: string, detail?: LogFields, count = 1): void {
    if (!(Number.isSafeInteger(count) && count > 0)) return;
    const key = this.#total.has(reason) || this.#total.size < this.#o.maxReasons ? reason : "other";
    this.#total.set(key, (this.#total.get(key) ?? 0) + count);
    const now = this.#o.clock.now();
    if (now - this.#lastLog >= this.#o.intervalMs) {
      this.#lastLog = now;
      this.#flushPending();
      this.#log(count === 1 ? { reason: key, ...detail } : { reason: key, count, ...detail });
      return;
    }
    this.#pending.set(key, (this.#pending.get(key) ?? 0) + count);
    // A summary of what arrived during the quiet interval follows when it ends.
    this.#timer ??= this.#o.clock.schedule(this.#lastLog + this.#o.intervalMs, () => {
      this.#timer = undefined;
      this.#lastLog = this.#o.clock.now();
      this.#flushPending();
    });
  }

  /**
   * Rejections counted for a reason.
   *
   * @param reason The reason.
   * @returns The count since creation.
   */
  count(reason: string): number {
    return this.#total.get(reason) ?? 0;
  }

  /** Every reason with its count since creation. */
  get counts(): Readonly<Record<string, number>> {
    return Object.fromEntries(this.#total);
  }

  /** All rejections counted. */
  get total(): number {
    let n = 0;
    for (const v of this.#total.values()) n += v;
    return n;
  }

  /** Stops the pending summary timer (the counts stay). Idempotent. */
  stop(): void {
    this.#timer?.();
    this.#timer = undefined;
    this.#flushPending();
  }

  #flushPending(): void {
    if (this.#pending.size === 0) return;
    const counts = Object.fromEntries(this.#pending);
    this.#pending = new Map();
    this.#log({ counts, note: `since the last line, by reason` });
  }

  #log(fields: LogFields): void {
    try {
      this.#o.logger.warn(this.#o.message, fields);
    } catch { /* a logger must not throw; if it does, the count still stands */ }
  }
}

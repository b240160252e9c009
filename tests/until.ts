// The one polling helper of the tests: wait until a condition holds, with a bounded wait and a
// message that says what was awaited.

import { setTimeout as sleep } from "node:timers/promises";

/** Options of {@linkcode until}. */
export interface UntilOptions {
  /**
   * Longest wait before giving up, ms. Generous: a passing wait ends as soon as its condition
   * holds, and a loaded 2-core CI machine can take seconds for what a quiet one does at once.
   * @default {15000}
   */
  readonly timeoutMs?: number;
  /** What is awaited, for the timeout message. @default {"condition"} */
  readonly what?: string;
  /** Pause between checks, ms. @default {5} */
  readonly intervalMs?: number;
}

/**
 * Checks `cond` until it returns true, pausing `intervalMs` between checks.
 *
 * @param cond The condition; it may be async. An exception from it rejects at once.
 * @param options Timeout, description and interval.
 * @returns The ms waited until `cond` held (0 when it held at once).
 * @throws {RangeError} When `timeoutMs` or `intervalMs` is negative or not finite.
 * @throws {Error} `Timed out after N ms waiting for <what>` when it did not hold in time.
 *
 * @example Wait for a message
 * ```ts ignore
 * const got: string[] = [];
 * const ms = await until(() => got.length > 0, { what: "a message", timeoutMs: 2_000 });
 * ```
 */
export async function until(
  cond: () => boolean | Promise<boolean>,
  options: UntilOptions = {},
): Promise<number> {
  const { timeoutMs = 15_000, what = "condition", intervalMs = 5 } = options;
  if (!(Number.isFinite(timeoutMs) && timeoutMs >= 0)) {
    throw new RangeError(`timeoutMs must be a finite number >= 0, got ${timeoutMs}`);
  }
  if (!(Number.isFinite(intervalMs) && intervalMs >= 0)) {
    throw new RangeError(`intervalMs must be a finite number >= 0, got ${intervalMs}`);
  }
  const start = performance.now();
  while (true) {
    if (await cond()) return performance.now() - start;
    const left = timeoutMs - (performance.now() - start);
    if (left <= 0) throw new Error(`Timed out after ${timeoutMs} ms waiting for ${what}`);
    // Never sleep past the deadline, so the last check is close to it.
    await sleep(Math.min(intervalMs, left));
  }
}

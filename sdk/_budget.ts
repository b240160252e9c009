import { type BackbeatError, BeatBudgetExceededError } from "../core/mod.ts";

/** One running budget as its beat source sees it. */
export interface BudgetWatcher {
  /** A beat was delivered. */
  tick(): void;
  /** The source is going away: end the budget with `reason`. */
  close(reason: BackbeatError): void;
}

/** Where budgets learn of beats: `add` registers a watcher and returns its removal. */
export interface BudgetSource {
  /** @returns A function removing the watcher (idempotent). */
  add(watcher: BudgetWatcher): () => void;
}

/**
 * Runs `fn(signal)` with a budget of `beats` beats: when the `beats`-th beat after the call
 * arrives before `fn` settles, the signal aborts and the call rejects with
 * {@linkcode BeatBudgetExceededError}. An error from `fn` passes through; its result is returned.
 * Uses no timer; the watcher is removed as soon as the call settles.
 *
 * @param source The beat source.
 * @param beats Budget in beats (integer ≥ 1).
 * @param fn The work; it should stop when the signal aborts.
 * @returns What `fn` returns.
 * @throws {RangeError} When `beats` is not a positive integer.
 * @throws {TypeError} When `fn` is not a function.
 */
export function runWithBeatBudget<T>(
  source: BudgetSource,
  beats: number,
  fn: (signal: AbortSignal) => T | Promise<T>,
): Promise<T> {
  if (!Number.isSafeInteger(beats) || beats < 1) {
    throw new RangeError(`Invalid beat budget ${beats}: expected an integer >= 1`);
  }
  if (typeof fn !== "function") {
    throw new TypeError("Cannot run with a beat budget: fn is not a function");
  }
  const controller = new AbortController();
  return new Promise<T>((resolve, reject) => {
    let used = 0;
    let settled = false;
    const end = (): boolean => {
      if (settled) return false;
      settled = true;
      remove();
      return true;
    };
    const fail = (reason: BackbeatError): void => {
      if (!end()) return;
      controller.abort(reason);
      reject(reason);
    };
    // The watcher only runs on later beats, after `remove` is initialised.
    const remove = source.add({
      tick() {
        used++;
        if (used >= beats) fail(new BeatBudgetExceededError(used, beats));
      },
      close: fail,
    });
    let result: T | Promise<T>;
    try {
      result = fn(controller.signal);
    } catch (error) {
      if (end()) reject(error);
      return;
    }
    Promise.resolve(result).then(
      (value) => {
        if (end()) resolve(value);
      },
      (error) => {
        if (end()) reject(error);
      },
    );
  });
}

import { type Clock, SystemClock } from "./_clock.ts";

const systemClock = new SystemClock({ spinMs: 0 });

/**
 * Waits for a promise, but no longer than `ms`: the bounded wait of every shutdown path (flush
 * the bus, drain in-flight work) so a dead peer can never hang a stop.
 *
 * @param promise What to wait for; its rejection counts as settled and is not rethrown.
 * @param ms The longest wait, in milliseconds.
 * @param clock The clock whose timer ends the wait. @default {a SystemClock}
 * @returns `true` when the promise settled in time, `false` when the wait ran out.
 *
 * @example Give a flush two seconds
 * ```ts ignore
 * import { withTimeout } from "./mod.ts";
 * const flushed = await withTimeout(new Promise((r) => setTimeout(r, 10)), 2_000);
 * console.log(flushed); // true
 * ```
 */
export function withTimeout(
  promise: Promise<unknown>,
  ms: number,
  clock: Clock = systemClock,
): Promise<boolean> {
  return new Promise<boolean>((resolve) => {
    let done = false;
    const cancel = clock.schedule(clock.now() + Math.max(0, ms), () => {
      if (done) return;
      done = true;
      resolve(false);
    });
    const settle = () => {
      if (done) return;
      done = true;
      cancel();
      resolve(true);
    };
    promise.then(settle, settle);
  });
}

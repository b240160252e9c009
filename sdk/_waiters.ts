// Promises that resolve on a delivered beat: `nextDownbeat()` (the next downbeat) and `at()` (a
// given beat or later). They resolve in the delivery of that beat, after its callbacks, so in
// scheduled mode at the beat's instant; the number waiting is bounded.
import type { BeatFrame } from "../core/mod.ts";

/** Most promises one client may have waiting on beats at once. */
export const MAX_BEAT_WAITERS = 1_024;

interface Waiter {
  /** Resolve on the first delivered beat with this index or a later one; -1: the next downbeat. */
  readonly target: number;
  readonly resolve: (frame: BeatFrame) => void;
  readonly reject: (error: unknown) => void;
  readonly unlink: () => void;
}

/** The beat waiters of one client. */
export class BeatWaiters {
  #list: Waiter[] = [];

  /** Promises waiting. */
  get size(): number {
    return this.#list.length;
  }

  /**
   * Waits for a beat.
   *
   * @param target A beat_index (resolved by it or the first later beat delivered), or -1 for the
   * next downbeat delivered.
   * @param signal Rejects with its reason when it aborts.
   * @returns The frame of the beat that resolved it.
   * @throws {RangeError} When {@linkcode MAX_BEAT_WAITERS} promises already wait.
   */
  wait(target: number, signal: AbortSignal | undefined): Promise<BeatFrame> {
    if (signal?.aborted) return Promise.reject(signal.reason);
    if (this.#list.length >= MAX_BEAT_WAITERS) {
      return Promise.reject(
        new RangeError(`Cannot wait for a beat: ${MAX_BEAT_WAITERS} waits are already pending`),
      );
    }
    return new Promise<BeatFrame>((resolve, reject) => {
      let unlink = () => {};
      const waiter: Waiter = {
        target,
        resolve: (frame) => {
          unlink();
          resolve(frame);
        },
        reject: (error) => {
          unlink();
          reject(error);
        },
        unlink: () => unlink(),
      };
      if (signal !== undefined) {
        const onAbort = () => {
          this.#list = this.#list.filter((w) => w !== waiter);
          waiter.reject(signal.reason);
        };
        signal.addEventListener("abort", onAbort, { once: true });
        unlink = () => signal.removeEventListener("abort", onAbort);
      }
      this.#list = [...this.#list, waiter];
    });
  }

  /**
   * Resolves the waiters a delivered beat satisfies.
   *
   * @param frame The beat delivered.
   */
  delivered(frame: BeatFrame): void {
    const list = this.#list;
    let kept: Waiter[] | undefined;
    for (let i = 0; i < list.length; i++) {
      const w = list[i];
      const done = w.target < 0 ? frame.downbeat : frame.beat_index >= w.target;
      if (done) {
        kept ??= list.slice(0, i);
        w.resolve(frame);
      } else if (kept !== undefined) kept.push(w);
    }
    if (kept !== undefined) this.#list = kept;
  }

  /**
   * Rejects every waiter (the client stopped).
   *
   * @param error The rejection.
   */
  close(error: unknown): void {
    const list = this.#list;
    this.#list = [];
    for (const w of list) w.reject(error);
  }
}

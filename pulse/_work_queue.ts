// A bounded queue of checks (signature and HMAC verification) run in arrival order, a few per turn
// of the event loop. WebCrypto verifies synchronously inside its promise (~0.1 ms for Ed25519), so
// verifying a burst where it arrives would block the loop for as long as the burst is big; here a
// flood costs at most `limit` checks, and never the time just before a beat.

/** Options of {@linkcode OrderedWork}. */
export interface OrderedWorkOptions {
  /** Most jobs waiting; beyond it {@linkcode OrderedWork.push} refuses. */
  readonly limit: number;
  /** Jobs run per turn of the event loop. */
  readonly batch: number;
  /** Resolves when the next batch may run (a later turn, clear of the next beat). */
  readonly pause: () => Promise<void>;
  /** Keeps the drain visible to `settled()`. */
  readonly track: <T>(work: Promise<T>) => Promise<T>;
  /** Told of a job that threw (jobs should not). */
  readonly onError: (error: unknown) => void;
}

/**
 * Runs jobs one at a time in the order pushed, `batch` per turn of the event loop, with at most
 * `limit` waiting.
 *
 * @example Verify in order, bounded
 * ```ts ignore
 * import { OrderedWork } from "./_work_queue.ts";
 * const work = new OrderedWork({ limit: 32, batch: 8, pause: () => Promise.resolve(),
 *   track: (p) => p, onError: console.error });
 * if (!work.push(async () => console.log(await check()))) console.log("rate limited");
 * ```
 */
export class OrderedWork {
  readonly #o: OrderedWorkOptions;
  #jobs: (() => Promise<void> | void)[] = [];
  #draining = false;
  #closed = false;

  /**
   * Creates an empty queue.
   *
   * @param options Limit, batch size, pause, tracking.
   * @throws {RangeError} When `limit` or `batch` is not an integer of at least 1.
   */
  constructor(options: OrderedWorkOptions) {
    for (const [name, v] of [["limit", options.limit], ["batch", options.batch]] as const) {
      if (!(Number.isInteger(v) && v >= 1)) {
        throw new RangeError(`Invalid ${name} ${v}: expected an integer >= 1`);
      }
    }
    this.#o = options;
  }

  /** Jobs waiting. */
  get size(): number {
    return this.#jobs.length;
  }

  /**
   * Queues a job.
   *
   * @param job The check; it runs after every job pushed before it has finished.
   * @returns `false` when the queue is full or closed (the job will not run).
   */
  push(job: () => Promise<void> | void): boolean {
    if (this.#closed || this.#jobs.length >= this.#o.limit) return false;
    this.#jobs.push(job);
    if (!this.#draining) {
      this.#draining = true;
      this.#o.track(this.#drain());
    }
    return true;
  }

  /** Drops waiting jobs and refuses new ones. Idempotent. */
  close(): void {
    this.#closed = true;
    this.#jobs = [];
  }

  async #drain(): Promise<void> {
    try {
      while (this.#jobs.length > 0 && !this.#closed) {
        await this.#o.pause();
        for (let i = 0; i < this.#o.batch && this.#jobs.length > 0 && !this.#closed; i++) {
          const job = this.#jobs.shift()!;
          try {
            await job();
          } catch (error) {
            this.#o.onError(error);
          }
        }
      }
    } finally {
      this.#draining = false;
    }
  }
}

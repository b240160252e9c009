/**
 * Exponential reconnect backoff with jitter, counted per dial attempt.
 *
 * nats.js calls its `reconnectDelayHandler` on every pass of its dial loop, including passes that
 * only sleep until the wait has passed; counting calls would reach the cap after about a second of
 * outage. So the exponent moves only when a dial starts ({@linkcode Backoff.dialed}, fed by the
 * `reconnecting` status nats.js emits before each dial), and {@linkcode Backoff.delay} answers the
 * same wait however often it is asked in between.
 */
export class Backoff {
  #attempt = 0;
  #base: number;
  #max: number;
  #random: () => number;
  #current: number;

  /**
   * @param base The first wait, in ms (nats.js's `reconnectTimeWait`).
   * @param max The cap, in ms.
   * @param random Source of jitter in [0, 1).
   */
  constructor(base: number, max: number, random: () => number = Math.random) {
    this.#base = Math.max(1, base);
    this.#max = Math.max(this.#base, max);
    this.#random = random;
    this.#current = this.#pick();
  }

  /** Attempts counted since the last reset. */
  get attempts(): number {
    return this.#attempt;
  }

  /** The wait before the next dial, in ms; the handler nats.js calls. */
  delay = (): number => this.#current;

  /** A dial started: the next wait doubles (up to the cap). */
  dialed(): void {
    if (this.#attempt < 30) this.#attempt++;
    this.#current = this.#pick();
  }

  /** Connected again: start over from the first wait. */
  reset(): void {
    this.#attempt = 0;
    this.#current = this.#pick();
  }

  // Jitter between half the base and the exponential ceiling keeps a fleet of clients that lost
  // the same server from dialing it in lockstep.
  #pick(): number {
    const ceiling = Math.min(this.#max, this.#base * 2 ** Math.max(0, this.#attempt - 1));
    return this.#base / 2 + this.#random() * (ceiling - this.#base / 2);
  }
}

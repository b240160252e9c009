// One timer per clock for the degradation watchdogs of every client using that clock. Each
// client keeps a deadline (last beat + one period + jitter tolerance); at a steady tempo the
// shared timer fires once per beat, finds every deadline moved on, and re-arms: one timer for
// 1,000 clients instead of 1,000.
import type { Clock } from "../core/mod.ts";

/** A client as the watchdog sees it. */
export interface Watched {
  /** When the client gives up on pulse (its clock's epoch ms). */
  readonly watchdogDue: number;
  /** The deadline passed with no beat; the client is forgotten until watched again. */
  watchdogExpired(now: number): void;
}

/** The watchdogs of one clock. */
export class Watchdogs {
  readonly #clock: Clock;
  readonly #members = new Set<Watched>();
  #cancel: (() => void) | undefined;
  #at = Infinity;

  constructor(clock: Clock) {
    this.#clock = clock;
  }

  /** When the timer fires next (`Infinity` when idle). */
  get at(): number {
    return this.#at;
  }

  /** Clients watched. */
  get size(): number {
    return this.#members.size;
  }

  /**
   * Watches a client, or notes that its deadline changed. Cheap when the deadline moved later
   * (the usual case): the timer finds out when it fires.
   */
  watch(member: Watched): void {
    this.#members.add(member);
    if (member.watchdogDue < this.#at) this.#arm(member.watchdogDue);
  }

  /** Stops watching a client. */
  forget(member: Watched): void {
    this.#members.delete(member);
    if (this.#members.size === 0) {
      this.#cancel?.();
      this.#cancel = undefined;
      this.#at = Infinity;
    }
  }

  #arm(at: number): void {
    this.#cancel?.();
    this.#at = at;
    this.#cancel = this.#clock.schedule(at, this.#fire);
  }

  #fire = (): void => {
    this.#cancel = undefined;
    this.#at = Infinity;
    const now = this.#clock.now();
    let next = Infinity;
    const expired: Watched[] = [];
    for (const m of this.#members) {
      const due = m.watchdogDue;
      if (due <= now) expired.push(m);
      else if (due < next) next = due;
    }
    for (const m of expired) this.#members.delete(m);
    if (next < Infinity) this.#arm(next);
    for (const m of expired) m.watchdogExpired(now);
  };
}

const byClock = new WeakMap<Clock, Watchdogs>();

/**
 * The shared watchdogs of a clock.
 *
 * @param clock The clock.
 * @returns Its watchdogs, created on first use.
 */
export function watchdogsOf(clock: Clock): Watchdogs {
  let w = byClock.get(clock);
  if (!w) {
    w = new Watchdogs(clock);
    byClock.set(clock, w);
  }
  return w;
}

// One estimate of pulse's clock per process: every scheduled client of a (bus, cluster, pulse
// keys, clock) shares it, so 1,000 clients cost one exchange burst, not 1,000. It measures with
// core's requestTimeSample (nonce-bound; with pulse keys only signed answers count), keeps the
// exchanges the ClockEstimator trusts, remeasures on a schedule, on a leader change, and when the
// frames themselves prove the estimate wrong (pulse never sends a frame before its beat is due,
// so `max(x-pulse-sent, due) − arrival` is a lower bound of pulse's clock minus ours).
import {
  type Bus,
  type Clock,
  ClockEstimator,
  type Keyring,
  requestTimeSample,
  type TimeExchange,
} from "../core/mod.ts";

/** Exchanges of the first burst, and of the burst after a leader change. */
export const INITIAL_SAMPLES = 8;
/** Exchanges of each later measurement. */
export const FOLLOW_UP_SAMPLES = 3;
/**
 * Follow-ups after the first burst, in ms from it: samples spread over a few seconds let the
 * estimator fit pulse's rate (it needs 2 s of span) long before the regular interval.
 */
export const FOLLOW_UPS_MS: readonly number[] = [
  1_000,
  2_500,
  4_000,
  7_000,
  10_000,
  15_000,
  20_500,
];
/**
 * Shortest span of exchanges (ms) a rate is fitted over. Exchanges on a LAN are good to about
 * ±0.1 ms, so a rate fitted over 2 s is ±50 ppm of noise (0.75 ms over one 15 s interval, when
 * pulse's clock and ours may well run at the same rate); over 20 s it is a few ppm. Until then
 * the latest burst's offset alone maps the clocks.
 */
export const RATE_SPAN_MS = 20_000;
/** Regular remeasurement interval, in ms. */
export const CLOCK_SYNC_INTERVAL_MS = 15_000;
/** Wait for one answer, in ms. */
export const TIME_REQUEST_TIMEOUT_MS = 500;
/**
 * An exchange whose round trip exceeds this (ms) is discarded: it bounds the offset to no better
 * than half of it, and a queue that slow says nothing about the clock.
 */
export const MAX_ROUND_TRIP_MS = 100;
/** Slack (ms) beyond the uncertainty before a sample counts as an outlier of the estimate. */
const OUTLIER_SLACK_MS = 1;
/** Consecutive agreeing outliers that mean pulse's clock itself moved (a step): start over. */
const OUTLIER_RUN = 3;
/**
 * An exchange slower than this (half its round trip beyond 4× the estimate's uncertainty plus
 * this many ms) that disagrees with the estimate is no evidence either way: it neither counts
 * towards nor breaks a run of outliers.
 */
const SLOW_SLACK_MS = 0.5;
/** Slack (ms) of the passive check against `x-pulse-sent`. */
const EVIDENCE_SLACK_MS = 0.05;
/** Drift allowed per ms since the estimate's samples, in the passive check (20 ppm). */
const EVIDENCE_DRIFT = 20e-6;
/**
 * Longest plausible delivery of a frame (ms): an estimate, or a sample, by which pulse's recent
 * frames all took longer than this to arrive is implausible (a forged answer, without pulse keys).
 */
export const MAX_DELIVERY_MS = 1_000;
/** Frames whose evidence is kept (the least delayed of them bounds the offset best). */
const EVIDENCE_FRAMES = 8;
/** Evidence older than this (ms) is not used. */
const EVIDENCE_AGE_MS = 10_000;
/** Shortest time between two measurements triggered by frames (leader change, evidence), ms. */
const MIN_TRIGGER_GAP_MS = 2_000;
/** Longest retry delay while nobody answers, ms. */
const MAX_RETRY_MS = CLOCK_SYNC_INTERVAL_MS;

/** The mapping between pulse's clock and the local one that beat scheduling uses. */
export interface ClockMapping {
  /** Increments whenever the mapping changes. */
  readonly version: number;
  /** The local instant at which pulse's clock reads `remote`. */
  toLocal(remote: number): number;
  /** Pulse's clock at a local instant. */
  toRemote(local: number): number;
}

/** The identity mapping: a timeline already on the local clock (anchored on arrival). */
export const IDENTITY: ClockMapping = {
  version: 0,
  toLocal: (t) => t,
  toRemote: (t) => t,
};

/** What a {@linkcode ClockSync} believes, for `health()`. */
export interface ClockSyncSnapshot {
  /** Pulse's clock minus the local clock now, in ms. */
  readonly offsetMs: number;
  /** Half the best round trip, in ms: the offset is within this of the truth. */
  readonly uncertaintyMs: number;
  /** How much faster pulse's clock runs, in ppm (0 until samples span 2 s). */
  readonly ratePpm: number;
  /** When the last sample was taken (local clock, epoch ms). */
  readonly measuredAt: number;
  /** Samples the estimate rests on. */
  readonly samples: number;
  /** The pulse whose clock this is (`pulse_id` of its answers), when it said. */
  readonly pulseId: string | null;
}

/** Counters of a {@linkcode ClockSync}. */
export interface ClockSyncCounters {
  /** Exchanges attempted. */
  requests: number;
  /** Exchanges with no acceptable answer (none in time, malformed, unsigned with keys). */
  unanswered: number;
  /** Answers discarded as implausible (slow, another pulse, an outlier of the estimate). */
  discarded: number;
  /**
   * Frames that proved the estimate wrong: pulse's clock behind its own send instant, or so far
   * ahead that every recent frame would have taken over a second to arrive.
   */
  contradictions: number;
  /** Times the estimate was started over (a leader change, a step of pulse's clock). */
  resets: number;
}

/** One process-wide clock estimate of a cluster's pulse. */
export class ClockSync implements ClockMapping {
  readonly #bus: Bus;
  readonly #clusterId: string;
  readonly #keyring: Keyring | undefined;
  readonly #clock: Clock;
  readonly #onEmpty: () => void;
  // Every plausible exchange of the pulse: the line whose rate carries the estimate between
  // measurements, and through an outage.
  #estimator = new ClockEstimator({ minRateSpanMs: RATE_SPAN_MS });
  // The latest burst alone, which maps the clocks until the line has a rate; and the burst
  // being taken.
  #recent: ClockEstimator | undefined;
  #burst: ClockEstimator | undefined;
  /**
   * The pulse the estimate is of: its answers' `pulse_id`, else the frames' leader when it was
   * measured.
   */
  #of: string | undefined;
  /** A fresh estimate of a new leader, swapped in once it has a few samples. */
  #candidate: { id: string; estimator: ClockEstimator } | undefined;
  /** The x-pulse-id of the latest frame followed. */
  #leader: string | undefined;
  #outliers: TimeExchange[] = [];
  #measuredAt = 0;
  #version = 0;
  #members = 0;
  #closed = false;
  #busy: Promise<void> | undefined;
  #cancelTimer: (() => void) | undefined;
  #followUp = 0;
  #retryMs = 1_000;
  #lastTrigger = -Infinity;
  #pendingTrigger = 0;
  #lastFrame: object | undefined;
  // Lower bounds of pulse's clock minus ours from recent frames: `value` at local instant `at`.
  #evidence: { value: number; at: number }[] = [];
  readonly #listeners = new Set<() => void>();
  /** Counters, for health and tests. */
  readonly counters: ClockSyncCounters = {
    requests: 0,
    unanswered: 0,
    discarded: 0,
    contradictions: 0,
    resets: 0,
  };

  constructor(
    bus: Bus,
    clusterId: string,
    keyring: Keyring | undefined,
    clock: Clock,
    onEmpty: () => void,
  ) {
    this.#bus = bus;
    this.#clusterId = clusterId;
    this.#keyring = keyring;
    this.#clock = clock;
    this.#onEmpty = onEmpty;
  }

  /** Increments whenever the estimate changes. */
  get version(): number {
    return this.#version;
  }

  /** Whether an estimate exists. */
  get ready(): boolean {
    return this.#estimator.estimate !== undefined;
  }

  // What maps the clocks: the fitted line once it has a rate, else the latest burst (fresh, where
  // the line's rate-less mean would lag a drifting clock by its age).
  get #active(): ClockEstimator {
    const recent = this.#recent;
    return this.#estimator.estimate?.ratePpm !== 0 || recent?.estimate === undefined
      ? this.#estimator
      : recent;
  }

  /** Scheduled clients sharing this estimate. */
  get members(): number {
    return this.#members;
  }

  /** The estimate now, or `undefined` before the first answer. */
  snapshot(): ClockSyncSnapshot | undefined {
    const active = this.#active;
    const e = active.estimate;
    if (e === undefined) return undefined;
    return {
      offsetMs: active.offsetAt(this.#clock.now()),
      uncertaintyMs: e.uncertaintyMs,
      ratePpm: e.ratePpm,
      measuredAt: this.#measuredAt,
      samples: this.#estimator.estimate?.samples ?? e.samples,
      pulseId: this.#of ?? null,
    };
  }

  /** The uncertainty of the estimate in ms (`Infinity` before the first answer). */
  get uncertaintyMs(): number {
    return this.#active.estimate?.uncertaintyMs ?? Infinity;
  }

  toLocal(remote: number): number {
    return this.#active.toLocal(remote);
  }

  toRemote(local: number): number {
    return this.#active.toRemote(local);
  }

  /**
   * Calls `fn` after each measurement that changed the estimate.
   *
   * @returns Removes it.
   */
  onChange(fn: () => void): () => void {
    this.#listeners.add(fn);
    return () => this.#listeners.delete(fn);
  }

  /** A client joined; the first one starts measuring. */
  join(): void {
    this.#members++;
    if (this.#members === 1 && !this.#closed && this.#cancelTimer === undefined && !this.#busy) {
      this.#measure(INITIAL_SAMPLES);
    }
  }

  /**
   * A client left; the last one stops measuring.
   *
   * @returns Resolves when no exchange is in flight any more (bounded by the request timeout),
   * so no timer outlives the last client.
   */
  leave(): Promise<void> {
    this.#members--;
    if (this.#members > 0) return Promise.resolve();
    this.#closed = true;
    this.#cancelTimer?.();
    this.#cancelTimer = undefined;
    this.#listeners.clear();
    this.#onEmpty();
    return this.#busy ?? Promise.resolve();
  }

  /**
   * Takes the evidence of a frame a client followed: its `x-pulse-id` (a new leader means a new
   * clock) and its send instant against its arrival (pulse's clock at arrival is at least the
   * send instant, and at least the beat's due instant). Each frame counts once, whatever the
   * number of clients that followed it.
   *
   * @param frame The shared frame object (identity dedupes).
   * @param pulseId Its `x-pulse-id` header.
   * @param sentAt Its `x-pulse-sent` header (pulse clock), when present.
   * @param due The beat's due instant by its `deadline_at` (pulse clock).
   * @param arrival When it arrived (local clock).
   */
  observe(
    frame: object,
    pulseId: string | undefined,
    sentAt: number | undefined,
    due: number,
    arrival: number,
  ): void {
    if (frame === this.#lastFrame || this.#closed) return;
    this.#lastFrame = frame;
    if (pulseId !== undefined && pulseId !== this.#leader) {
      const leader = this.#leader = pulseId.slice(0, 256);
      // Another pulse's frames say nothing of this one's clock.
      this.#evidence = [];
      if (this.#of === undefined && this.ready) this.#of = leader;
      else if (this.#of !== undefined && this.#of !== leader) {
        // The estimate is of another pulse than the one now leading: measure the new one into a
        // fresh estimate (the old one keeps scheduling until it is ready).
        if (this.#candidate?.id !== leader) {
          this.#candidate = {
            id: leader,
            estimator: new ClockEstimator({ minRateSpanMs: RATE_SPAN_MS }),
          };
        }
        this.#trigger(INITIAL_SAMPLES);
      }
    }
    this.#evidence.push({ value: Math.max(sentAt ?? -Infinity, due) - arrival, at: arrival });
    if (this.#evidence.length > EVIDENCE_FRAMES) this.#evidence.shift();
    const active = this.#active;
    const e = active.estimate;
    if (e === undefined) return;
    const lower = this.#bound(arrival);
    if (lower === undefined) return;
    const offset = active.offsetAt(arrival);
    const allowed = e.uncertaintyMs + EVIDENCE_SLACK_MS + Math.abs(arrival - e.at) * EVIDENCE_DRIFT;
    if (offset + allowed < lower) {
      this.counters.contradictions++;
      // Enough exchanges that a run of agreeing outliers can replace the estimate, with one to
      // spare for a slow one.
      this.#trigger(OUTLIER_RUN + 2);
    } else if (offset - lower > MAX_DELIVERY_MS) {
      // Every recent frame would have taken over a second: the estimate came from a forged
      // answer. Drop it (beats go back to arrival) and measure again.
      this.counters.contradictions++;
      this.#estimator = new ClockEstimator({ minRateSpanMs: RATE_SPAN_MS });
      this.#recent = undefined;
      this.#burst = undefined;
      this.#candidate = undefined;
      this.#of = undefined;
      this.#version++;
      this.#notify();
      this.#trigger(INITIAL_SAMPLES);
    }
  }

  // The best lower bound the recent frames give at a local instant: the least delayed frame's,
  // carried forward at the estimated rate, less what the rate might be wrong by.
  #bound(at: number): number | undefined {
    const rate = (this.#active.estimate?.ratePpm ?? 0) / 1e6;
    let best: number | undefined;
    for (const b of this.#evidence) {
      const age = Math.abs(at - b.at);
      if (age > EVIDENCE_AGE_MS) continue;
      const v = b.value + (at - b.at) * rate - age * EVIDENCE_DRIFT;
      if (best === undefined || v > best) best = v;
    }
    return best;
  }

  #notify(): void {
    for (const fn of [...this.#listeners]) {
      try {
        fn();
      } catch { /* a member guards its own work */ }
    }
  }

  // A measurement the frames asked for, at most every MIN_TRIGGER_GAP_MS.
  #trigger(count: number): void {
    const now = this.#clock.now();
    this.#pendingTrigger = Math.max(this.#pendingTrigger, count);
    if (this.#busy) return; // taken when the running one ends
    const at = Math.max(now, this.#lastTrigger + MIN_TRIGGER_GAP_MS);
    this.#arm(at - now);
  }

  #arm(delayMs: number): void {
    if (this.#closed) return;
    this.#cancelTimer?.();
    this.#cancelTimer = this.#clock.schedule(this.#clock.now() + delayMs, () => {
      this.#cancelTimer = undefined;
      const triggered = this.#pendingTrigger;
      if (triggered > 0) {
        this.#pendingTrigger = 0;
        this.#lastTrigger = this.#clock.now();
        this.#measure(triggered);
      } else {
        this.#measure(FOLLOW_UP_SAMPLES);
      }
    });
  }

  #measure(count: number): void {
    if (this.#closed || this.#busy) return;
    this.#busy = this.#run(count).finally(() => {
      this.#busy = undefined;
    });
  }

  async #run(count: number): Promise<void> {
    const before = this.#version;
    this.#burst = new ClockEstimator();
    let taken = 0;
    let failures = 0;
    for (let i = 0; i < count && !this.#closed; i++) {
      this.counters.requests++;
      const x = await requestTimeSample(this.#bus, this.#clusterId, {
        clock: this.#clock,
        timeoutMs: TIME_REQUEST_TIMEOUT_MS,
        pulseKeys: this.#keyring,
      });
      if (x === undefined) {
        this.counters.unanswered++;
        // Nobody answers (an older pulse, no leader): do not hammer the bus.
        if (++failures >= 2) break;
        continue;
      }
      failures = 0;
      if (this.#take(x)) taken++;
    }
    if (this.#closed) return;
    const burst = this.#burst;
    this.#burst = undefined;
    if (burst?.estimate !== undefined) {
      this.#recent = burst;
      this.#version++;
    }
    if (this.#version !== before) this.#notify();
    if (this.#pendingTrigger > 0) {
      this.#trigger(this.#pendingTrigger);
      return;
    }
    if (taken === 0 && (failures > 0 || !this.ready)) {
      // Back off while nobody answers (or, with no estimate, nobody answers plausibly), up to the
      // regular interval.
      this.#arm(this.#retryMs);
      this.#retryMs = Math.min(this.#retryMs * 2, MAX_RETRY_MS);
      return;
    }
    this.#retryMs = 1_000;
    const next = this.#followUp < FOLLOW_UPS_MS.length
      ? FOLLOW_UPS_MS[this.#followUp] - (this.#followUp > 0 ? FOLLOW_UPS_MS[this.#followUp - 1] : 0)
      : CLOCK_SYNC_INTERVAL_MS;
    this.#followUp++;
    this.#arm(next);
  }

  // Adds a plausible exchange; true when it was used.
  #take(x: TimeExchange): boolean {
    const roundTrip = x.t3 - x.t0;
    if (!(roundTrip >= 0 && roundTrip <= MAX_ROUND_TRIP_MS)) return this.#discard();
    // While frames say who leads, only that pulse's answers count (a deposed pulse still
    // answering during a takeover would otherwise mix two clocks).
    if (x.pulseId !== undefined && this.#leader !== undefined && x.pulseId !== this.#leader) {
      return this.#discard();
    }
    // What pulse's own frames prove: its clock is at least their send instants (a sample below
    // that, by more than its own uncertainty, is impossible), and they arrive within a second.
    const offset = ((x.t1 - x.t0) + (x.t2 - x.t3)) / 2;
    const half = (roundTrip - (x.t2 - x.t1)) / 2;
    const mid = (x.t0 + x.t3) / 2;
    const lower = this.#bound(mid);
    if (
      lower !== undefined &&
      (offset + half + EVIDENCE_SLACK_MS < lower || offset - lower > MAX_DELIVERY_MS)
    ) {
      return this.#discard();
    }
    const who = x.pulseId ?? this.#leader;
    if (who !== undefined && this.#of !== undefined && who !== this.#of) {
      if (this.#candidate?.id !== who) {
        this.#candidate = {
          id: who,
          estimator: new ClockEstimator({ minRateSpanMs: RATE_SPAN_MS }),
        };
      }
    }
    const candidate = this.#candidate;
    if (candidate !== undefined && (who === undefined || who === candidate.id)) {
      // A new pulse: a fresh estimate, used once it rests on a few samples.
      if (!candidate.estimator.add(x)) return this.#discard();
      if ((candidate.estimator.estimate?.samples ?? 0) >= OUTLIER_RUN) {
        this.#estimator = candidate.estimator;
        this.#recent = undefined;
        this.#burst = new ClockEstimator();
        this.#of = candidate.id;
        this.#candidate = undefined;
        this.#outliers = [];
        this.#reset(x);
      }
      return true;
    }
    this.#of ??= who;
    const active = this.#active;
    const e = active.estimate;
    const slow = e !== undefined && half > e.uncertaintyMs * 4 + SLOW_SLACK_MS;
    if (e !== undefined && (this.#estimator.estimate?.samples ?? 0) >= 4) {
      const bound = e.uncertaintyMs + half + OUTLIER_SLACK_MS;
      if (Math.abs(offset - active.offsetAt(mid)) > bound) {
        if (slow) return this.#discard();
        return this.#outlier(x);
      }
    }
    // A quick exchange that agrees ends a run of outliers; a slow one agrees with anything.
    if (!slow) this.#outliers = [];
    if (!this.#estimator.add(x)) return this.#discard();
    this.#burst?.add(x);
    this.#changed(x);
    return true;
  }

  // An outlier is discarded, unless it is the third in a row and the three agree: then pulse's
  // clock moved (a step), and the estimate starts over from them.
  #outlier(x: TimeExchange): boolean {
    this.#outliers.push(x);
    if (this.#outliers.length > OUTLIER_RUN) this.#outliers.shift();
    if (this.#outliers.length < OUTLIER_RUN) return this.#discard();
    const fresh = new ClockEstimator({ minRateSpanMs: RATE_SPAN_MS });
    for (const o of this.#outliers) fresh.add(o);
    const f = fresh.estimate!;
    const agree = this.#outliers.every((o) => {
      const offset = ((o.t1 - o.t0) + (o.t2 - o.t3)) / 2;
      const half = ((o.t3 - o.t0) - (o.t2 - o.t1)) / 2;
      return Math.abs(offset - fresh.offsetAt((o.t0 + o.t3) / 2)) <= half + f.uncertaintyMs +
          OUTLIER_SLACK_MS;
    });
    if (!agree) return this.#discard();
    this.#estimator = fresh;
    this.#recent = undefined;
    this.#burst = new ClockEstimator();
    for (const o of this.#outliers) this.#burst.add(o);
    this.#outliers = [];
    this.#reset(x);
    return true;
  }

  #discard(): boolean {
    this.counters.discarded++;
    return false;
  }

  // A fresh estimate rests on samples of one moment: measure again within seconds to fit the
  // rate, as after the first burst.
  #reset(x: TimeExchange): void {
    this.counters.resets++;
    this.#followUp = 0;
    this.#changed(x);
  }

  #changed(x: TimeExchange): void {
    this.#measuredAt = x.t3;
    this.#version++;
  }
}

interface SyncKey {
  readonly keyring: Keyring | undefined;
  readonly clock: Clock;
}

const groups = new WeakMap<Bus, Map<string, { key: SyncKey; sync: ClockSync }[]>>();

/**
 * The process's clock estimate of a cluster's pulse for a bus, pulse keys and clock, created on
 * first use and forgotten when its last client leaves.
 *
 * @param bus The bus.
 * @param clusterId The cluster.
 * @param keyring Pulse keys: only signed answers count. Clients with other keys never share.
 * @param clock The local clock.
 * @returns The shared estimate; call `join()` and, when done, `leave()`.
 */
export function clockSyncOf(
  bus: Bus,
  clusterId: string,
  keyring: Keyring | undefined,
  clock: Clock,
): ClockSync {
  let byCluster = groups.get(bus);
  if (byCluster === undefined) groups.set(bus, byCluster = new Map());
  let list = byCluster.get(clusterId);
  if (list === undefined) byCluster.set(clusterId, list = []);
  const found = list.find((g) => g.key.keyring === keyring && g.key.clock === clock);
  if (found !== undefined) return found.sync;
  const entries = list;
  const map = byCluster;
  const entry = {
    key: { keyring, clock },
    sync: new ClockSync(bus, clusterId, keyring, clock, () => {
      const i = entries.indexOf(entry);
      if (i >= 0) entries.splice(i, 1);
      if (entries.length === 0) map.delete(clusterId);
    }),
  };
  list.push(entry);
  return entry.sync;
}

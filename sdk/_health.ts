import type { Phase } from "../core/mod.ts";
import type { DeliveryMode } from "./_config.ts";

/** Percentiles of callback latency over the client's bounded window, in milliseconds. */
export interface LatencyStats {
  /** Median. */
  readonly p50: number;
  /** 99th percentile. */
  readonly p99: number;
  /** Largest sample in the window. */
  readonly max: number;
  /** Samples in the window. */
  readonly count: number;
}

/** One entry of {@linkcode ClientHealth.lastErrors}. */
export interface HealthError {
  /** When it happened (the client clock's epoch milliseconds). */
  readonly at: number;
  /** What kind of failure: `callback`, `invalid_frame`, `connection`, `claim`, `hlc`. */
  readonly kind: string;
  /** A sentence for people. */
  readonly message: string;
}

/** The client's estimate of pulse's clock (scheduled delivery), in {@linkcode ClientHealth.clock}. */
export interface ClockHealth {
  /** Pulse's clock minus this client's, now, in ms. */
  readonly offsetMs: number;
  /** Half the best round trip, in ms: the offset is within this of the truth. */
  readonly uncertaintyMs: number;
  /** How much faster pulse's clock runs, in parts per million (0 until samples span 2 s). */
  readonly ratePpm: number;
  /** When the last sample was taken (client clock, epoch ms). */
  readonly measuredAt: number;
  /** Clock exchanges the estimate rests on. */
  readonly samples: number;
  /** The pulse whose clock it is (its answers' `pulse_id`, else the leader's `x-pulse-id`). */
  readonly pulseId: string | null;
}

/** A snapshot of a client's state, from `Client.health()`. */
export interface ClientHealth {
  /** The bus is connected. */
  readonly connected: boolean;
  /** Synthetic beats are being produced because pulse went quiet. */
  readonly degraded: boolean;
  /**
   * Why the client is degraded: `pulse_quiet` (beats stopped), `no_pulse` (no beat at all since
   * start: pulse down or a wrong cluster id; beats run on the fallback timeline); `null` when not.
   */
  readonly degradedReason: "pulse_quiet" | "no_pulse" | null;
  /** beat_index of the last beat delivered (real or synthetic), `null` before the first. */
  readonly lastBeat: number | null;
  /**
   * The instant it was delivered for (client clock, epoch ms): its due instant when scheduled or
   * synthetic, its arrival otherwise; `null` before the first.
   */
  readonly lastBeatAt: number | null;
  /** Tempo of the last beat. */
  readonly tempoBpm: number | null;
  /** Phase of the last beat. */
  readonly phase: Phase | null;
  /** Window id of the last beat's bar. */
  readonly windowId: string | null;
  /** Reconnections of the bus so far. */
  readonly reconnectCount: number;
  /**
   * Beats skipped between two delivered beats: never delivered, neither real nor predicted (a
   * jump of the timeline, a wake-up later than a whole beat, frames lost while not degraded).
   */
  readonly missedBeats: number;
  /** Frames refused, all reasons together: the sum of {@linkcode ClientHealth.framesRejected}. */
  readonly droppedFrames: number;
  /**
   * Frames refused, by reason (only reasons seen are present). Nothing a frame claims is
   * followed before it passes all of these:
   * - the gate: `size` (over 16 KiB), `json`, `schema`, `type` (another message kind), `cluster`;
   * - with `pulseKeys`: `unsigned`, `unknown_key`, `key_expired`, `bad_signature`, and
   *   `verify_backlog` (more than 256 frames already waited on their signature check);
   * - the timeline: `stale` (at or below the latest beat: a duplicate or a deposed pulse),
   *   `implausible` (an index or tempo the followed timeline cannot explain, e.g. a forged jump),
   *   `old_epoch` (a timeline since replaced), `pending` (the first unverified frame of a newer
   *   epoch, followed once a second one agrees), `unreadable` (a `deadline_at` no clock reads).
   *
   * Refusals are logged at most once per few seconds, as a summary, never once per frame.
   */
  readonly framesRejected: Readonly<Record<string, number>>;
  /**
   * Frames decoded and validated by the beat feed this client shares with every client of the
   * process on the same bus and cluster: each frame once, however many clients follow it.
   */
  readonly framesParsed: number;
  /**
   * Frames followed whose signature verified against `pulseKeys` (checked once per process for
   * all clients with the same keyring); 0 without `pulseKeys`.
   */
  readonly framesVerified: number;
  /** Claims published to the bus (buffered claims count once they are flushed). */
  readonly claimsSent: number;
  /** Claims waiting now in the buffer for the connection to come back. */
  readonly claimsBuffered: number;
  /**
   * Claims lost, each also reported as an `error` event: refused with `buffer_full`, still
   * buffered when the client stopped disconnected, or not publishable (the bus closed, signing
   * failed). Every claim `emitStatusClaim` accepted is counted once sent, buffered or dropped
   * (invalid claims are refused before, and not counted).
   */
  readonly claimsDropped: number;
  /** Callbacks that threw or rejected. */
  readonly callbackErrors: number;
  /**
   * Time from the instant a beat was delivered for (`info.at`: its arrival, or its due instant
   * when scheduled or synthetic) to each callback's entry.
   */
  readonly callbackLatency: LatencyStats;
  /** The most recent errors, oldest first (bounded). */
  readonly lastErrors: readonly HealthError[];
  /**
   * How beats are timed now: `"scheduled"` at pulse's instants through the clock estimate, or
   * `"arrival"` (configured so, or a scheduled client with no clock estimate yet, or before it
   * knows the bar grid).
   */
  readonly delivery: DeliveryMode;
  /** The estimate of pulse's clock, shared by the process's scheduled clients; `null` before. */
  readonly clock: ClockHealth | null;
  /**
   * |callback entry − due instant| (ms, client clock) of the beats delivered at their instant
   * (scheduled, and synthetic), over the same bounded window as `callbackLatency`. A real frame
   * nothing scheduled (the first one, a jump) is delivered on arrival and not counted here.
   */
  readonly phaseError: LatencyStats;
  /** Beats delivered from the timeline before (or without) pulse's frame, synthetic ones included. */
  readonly predictedBeats: number;
  /** Predicted beats pulse's frame then confirmed (each also a `confirmed` event). */
  readonly confirmedBeats: number;
  /** Times a real frame moved the timeline predicted from (each also a `realigned` event). */
  readonly realignments: number;
}

/** A fixed-size ring of latency samples with percentile queries. */
export class LatencyWindow {
  readonly #samples: Float64Array;
  #next = 0;
  #count = 0;

  /** @param capacity Samples kept. */
  constructor(capacity: number) {
    this.#samples = new Float64Array(capacity);
  }

  /** @param ms One sample. */
  record(ms: number): void {
    this.#samples[this.#next] = ms;
    this.#next = (this.#next + 1) % this.#samples.length;
    if (this.#count < this.#samples.length) this.#count++;
  }

  /** @returns p50, p99 and max of the samples kept (zeros when empty). */
  stats(): LatencyStats {
    const n = this.#count;
    if (n === 0) return { p50: 0, p99: 0, max: 0, count: 0 };
    const sorted = this.#samples.slice(0, n).sort();
    const rank = (p: number) => sorted[Math.min(n - 1, Math.max(0, Math.ceil(p * n) - 1))];
    return { p50: rank(0.5), p99: rank(0.99), max: sorted[n - 1], count: n };
  }
}

/** A fixed-size ring of recent errors. */
export class ErrorRing {
  readonly #capacity: number;
  #items: HealthError[] = [];

  /** @param capacity Errors kept. */
  constructor(capacity: number) {
    this.#capacity = capacity;
  }

  /** @param error The error to remember; the oldest is forgotten when full. */
  push(error: HealthError): void {
    if (this.#capacity === 0) return;
    if (this.#items.length >= this.#capacity) this.#items.shift();
    this.#items.push(error);
  }

  /** @returns A copy, oldest first. */
  list(): HealthError[] {
    return [...this.#items];
  }
}

// The leader's beat loop: arms a timer for each beat of the timeline, prepares the frame ahead
// (window ids derived bars in advance, the signature made before the beat is due), and publishes
// it at its due time, never before.
import {
  type BeatFrame,
  type Bus,
  cachedWindowId,
  type Clock,
  type HybridLogicalClock,
  knownWindowId,
  type Logger,
  SignatureDomain,
  type SignatureHeaders,
  type SigningKey,
  signMessage,
  SystemClock,
  type Timeline,
  WINDOW_CACHE_SIZE,
} from "../core/mod.ts";
import { Histogram, type HistogramSnapshot } from "../service/mod.ts";

/** Pulse's spin: wake 1.5 ms early and spin to the due time (setTimeout alone is ~1 ms late). */
export const PULSE_SPIN_MS = 1.5;
/**
 * Most bars whose window ids a pulse derives ahead. The ids live in the process-wide cache that
 * every cluster, client and reverb of the process share: pulse may fill a quarter of it.
 */
export const MAX_WINDOW_LOOKAHEAD_BARS = WINDOW_CACHE_SIZE / 4;

// On a real clock the beat's timer fires this early: the HLC stamp and the encoding (tens of µs
// on a cold CPU) happen before the due time, and only the publish itself is left after it.
const PREP_LEAD_MS = 0.3;
// Lease work due this close to a beat waits until the beat is published.
const QUIET_GUARD_MS = 4;
// A frame whose preparation failed is tried again this soon rather than stalling the beat.
const RETRY_MS = 5;
// With a signing key, the frame is stamped and signed this long before it is due (or at once when
// prepared later): signing takes ~60 µs of the event loop, which must not fall between the timer
// and the publish, and the frame's HLC is then at most this much older than its send.
const SIGN_LEAD_MS = 10;
const PLACEHOLDER_HLC = "0000:0000:0000";
const HLC_FIELD = `"hlc":"${PLACEHOLDER_HLC}"`;
const encoder = new TextEncoder();

interface Signed {
  readonly data: Uint8Array;
  readonly hlc: string;
  readonly headers: SignatureHeaders;
}

interface Prepared {
  beat: number;
  timeline: Timeline;
  frame: BeatFrame;
  due: number;
  // The frame's JSON around its HLC value: only the stamp is left to do at the due time.
  head: string;
  tail: string;
  // With a signing key: the stamped payload and its signature, made before the due time.
  signed: Signed | undefined;
  signing: Promise<void> | undefined;
  cancelSign: (() => void) | undefined;
}

function prepared(beat: number, timeline: Timeline, frame: BeatFrame): Prepared {
  const json = JSON.stringify(frame);
  const at = json.indexOf(HLC_FIELD) + 7;
  return {
    beat,
    timeline,
    frame,
    due: timeline.dueAt(beat),
    head: json.slice(0, at),
    tail: json.slice(at + 14),
    signed: undefined,
    signing: undefined,
    cancelSign: undefined,
  };
}

/** What the beat loop needs from the pulse that runs it. */
export interface BeatLoopOptions {
  /** The cluster. */
  readonly clusterId: string;
  /** The pulse's id, sent as `x-pulse-id`. */
  readonly pulseId: string;
  /** Where frames go. */
  readonly bus: Bus;
  /** The beat subject. */
  readonly subject: string;
  /** Beat timers; a `SystemClock` is finished by a spin to the due time. */
  readonly clock: Clock;
  /** Stamps each frame. */
  readonly hlc: HybridLogicalClock;
  /** Bars ahead whose window ids are derived in advance. */
  readonly lookaheadBars: number;
  /** The schedule before the first tenure (the configured one). */
  readonly timeline: Timeline;
  /** Structured logger. */
  readonly logger: Logger;
  /** Asked right before each publish; `false` ends the tenure (the caller halts the loop). */
  readonly mayPublish: (beat: number) => boolean;
  /** Told of each frame after its publish attempt, with the instant it was sent. */
  readonly onPublished: (frame: BeatFrame, sent: number) => void;
  /** Told when the loop dropped past tempo segments from its timeline (worth storing). */
  readonly onTimelineTrimmed: () => void;
  /** Told of failures that have no caller to throw to. */
  readonly onError: (message: string, error: unknown) => void;
  /** Keeps background work visible to `settled()`. */
  readonly track: <T>(work: Promise<T>) => Promise<T>;
  /** Signs every frame when set (`x-signature`, `x-key-id`). @default {undefined} */
  readonly signingKey?: SigningKey;
}

/**
 * Publishes the beats of a {@linkcode Timeline} while running: beat n at `dueAt(n)`, prepared
 * ahead so nothing asynchronous sits between the timer and the publish. A beat found overdue is
 * published at once (catch-up), up to one bar; beyond that the gap is skipped and counted.
 *
 * @example Run a loop on a manual clock
 * ```ts ignore
 * import { BeatLoop } from "./_beat_loop.ts";
 * const loop = new BeatLoop({ clusterId: "dev", pulseId: "p1", bus, subject: "backbeat.dev.beat",
 *   clock, hlc, lookaheadBars: 2, timeline, logger, mayPublish: () => true,
 *   onPublished: () => {}, onTimelineTrimmed: () => {}, onError: () => {}, track: (p) => p });
 * await loop.prefetch(timeline, 0);
 * loop.run(timeline, 0, 0);
 * ```
 */
export class BeatLoop {
  readonly #o: BeatLoopOptions;
  readonly #clock: Clock;
  readonly #spinToDue: boolean;
  readonly #lateness = new Histogram();
  /** Timers that must not spin (a spin there could hold up a beat's wake-up). */
  readonly idleClock: Clock;
  /**
   * Timers for lease work: work that would land just before a beat's wake-up waits until the
   * beat is out (a KV round trip on the event loop costs ~1 ms).
   */
  readonly quietClock: Clock;
  #timeline: Timeline;
  #running = false;
  // Voids pending work (a frame being built, a retry) of an ended tenure.
  #epoch = 0;
  #token = 0;
  #tokenText = "0";
  #next = 0;
  #nextDue = -Infinity;
  #cancelBeat: (() => void) | undefined;
  #armedLate = false;
  #prepared: Prepared | undefined;
  // Highest downbeat whose window id was requested in this tenure.
  #windowsTo = -Infinity;
  #afterBeat: (() => void)[] = [];
  #published = 0;
  #catchUp = 0;
  #skipped = 0;
  #publishErrors = 0;
  #signFailures = 0;

  /**
   * Creates a loop that is not running.
   *
   * @param options The pulse's bus, clock, callbacks.
   */
  constructor(options: BeatLoopOptions) {
    this.#o = options;
    this.#clock = options.clock;
    this.#timeline = options.timeline;
    // Only a clock that moves by itself can be spun on; a ManualClock gets exact timers instead.
    this.#spinToDue = this.#clock instanceof SystemClock;
    this.idleClock = this.#spinToDue ? new SystemClock() : this.#clock;
    const idle = this.idleClock;
    this.quietClock = this.#spinToDue
      ? {
        now: () => idle.now(),
        schedule: (at, fn) => idle.schedule(at, () => this.#whenQuiet(fn)),
      }
      : this.#clock;
  }

  /** The schedule led, or last led, or configured. */
  get timeline(): Timeline {
    return this.#timeline;
  }

  /** Whether a tenure is publishing. */
  get running(): boolean {
    return this.#running;
  }

  /** The fencing token sent in `x-fencing-token`. */
  get token(): number {
    return this.#token;
  }

  /** The next beat to publish (one past the last published). */
  get next(): number {
    return this.#next;
  }

  /** Beat frames published. */
  get published(): number {
    return this.#published;
  }

  /** Frames published late on purpose to fill a gap. */
  get catchUpBeats(): number {
    return this.#catchUp;
  }

  /** Beats never published because the gap exceeded one bar. */
  get skipped(): number {
    return this.#skipped;
  }

  /** Publish attempts that failed. */
  get publishErrors(): number {
    return this.#publishErrors;
  }

  /**
   * Resolves on a later turn of the event loop, never within the 4 ms before a beat of a running
   * tenure (for bounded background checks); at once on a simulated clock.
   *
   * @returns Resolves when the caller may do a little synchronous work.
   */
  pause(): Promise<void> {
    if (!(this.#clock instanceof SystemClock)) return Promise.resolve();
    return new Promise((resolve) => {
      this.quietClock.schedule(this.#clock.now(), resolve);
    });
  }

  /**
   * Publish instant minus due time, in seconds, of on-schedule frames.
   *
   * @returns A snapshot of the histogram.
   */
  lateness(): HistogramSnapshot {
    return this.#lateness.snapshot();
  }

  /**
   * Derives the window id of the bar holding `next`, so a tenure starts with its first frame
   * ready.
   *
   * @param timeline The schedule to lead.
   * @param next The first beat to publish.
   * @returns Resolves once the id is known.
   */
  async prefetch(timeline: Timeline, next: number): Promise<void> {
    await this.#window(timeline, timeline.barStart(next));
  }

  /**
   * Starts a tenure: publishes from beat `next` of `timeline` on.
   *
   * @param timeline The schedule.
   * @param next The first beat to publish.
   * @param token The fencing token of the tenure.
   */
  run(timeline: Timeline, next: number, token: number): void {
    this.halt();
    this.#timeline = timeline;
    this.#next = next;
    this.#token = token;
    this.#tokenText = String(token);
    this.#running = true;
    // The grid may differ from the last tenure's: start the look-ahead over.
    this.#windowsTo = -Infinity;
    this.#requestWindows(timeline.barStart(next));
    this.#arm();
  }

  /** Ends the tenure: no further beat, and pending preparation is voided. Idempotent. */
  halt(): void {
    this.#epoch++;
    this.#running = false;
    this.#token = 0;
    this.#tokenText = "0";
    this.#cancelBeat?.();
    this.#cancelBeat = undefined;
    this.#dropPrepared();
    this.#nextDue = -Infinity;
    this.#runAfterBeat();
  }

  /**
   * Schedules a tempo change at the next downbeat after the beat about to be published.
   *
   * @param tempoBpm The new tempo (already checked).
   * @returns The downbeat it applies from.
   */
  setTempo(tempoBpm: number): number {
    const tl = this.#timeline.withTempo(tempoBpm, this.#next);
    this.#timeline = tl;
    if (this.#running) this.#prepareFrame(this.#next);
    return tl.segments[tl.segments.length - 1].beat;
  }

  // Runs fn now, unless the next beat is due within QUIET_GUARD_MS: then right after it.
  #whenQuiet(fn: () => void): void {
    const left = this.#nextDue - this.#clock.now();
    if (this.#running && left > -1 && left < QUIET_GUARD_MS) {
      // A beat that cannot go out on time must not hold the lease's work back for long.
      if (this.#afterBeat.length === 0) {
        this.idleClock.schedule(this.#nextDue + QUIET_GUARD_MS, () => this.#runAfterBeat());
      }
      this.#afterBeat.push(fn);
    } else fn();
  }

  #runAfterBeat(): void {
    const queued = this.#afterBeat;
    if (queued.length === 0) return;
    this.#afterBeat = [];
    for (const fn of queued) fn();
  }

  #arm(): void {
    const tl = this.#timeline;
    let n = this.#next;
    let due = tl.dueAt(n);
    const now = this.#clock.now();
    this.#armedLate = due < now;
    if (this.#armedLate) {
      const current = tl.beatAt(now);
      if (current - n + 1 > tl.beatsPerBar) {
        // Too far behind to replay: publish the current beat and count the rest as skipped.
        this.#skipped += current - n;
        this.#o.logger.warn("beats skipped", { from: n, to: current - 1 });
        n = this.#next = current;
        due = tl.dueAt(n);
      }
    }
    const at = this.#spinToDue ? due - PREP_LEAD_MS : due;
    this.#nextDue = due;
    this.#cancelBeat = this.#clock.schedule(at, () => this.#fire(n, due));
    this.#prepareFrame(n);
  }

  #fire(n: number, due: number): void {
    this.#cancelBeat = undefined;
    if (!this.#running || n !== this.#next) return;
    if (!this.#o.mayPublish(n)) return;
    const p = this.#prepared;
    if (!p || p.beat !== n || p.timeline !== this.#timeline) {
      // The frame is not ready (its window id is still being derived): publish once it is; if
      // preparing failed, try again shortly rather than stall the beat.
      const epoch = this.#epoch;
      const again = () => {
        if (epoch !== this.#epoch || this.#next !== n || !this.#running) return;
        if (this.#prepared?.beat === n) this.#fire(n, due);
        else {
          this.#cancelBeat = this.#clock.schedule(
            this.#clock.now() + RETRY_MS,
            () => this.#fire(n, due),
          );
        }
      };
      this.#o.track(this.#buildFrame(n).finally(again));
      return;
    }
    const key = this.#o.signingKey;
    if (key !== undefined && p.signed === undefined) {
      // Not signed yet (a catch-up beat, or a timer late under load): never publish it unsigned.
      const epoch = this.#epoch;
      const again = () => {
        if (epoch !== this.#epoch || this.#next !== n || !this.#running) return;
        if (this.#prepared === p && p.signed !== undefined) this.#fire(n, due);
        else {
          this.#cancelBeat = this.#clock.schedule(
            this.#clock.now() + RETRY_MS,
            () => this.#fire(n, due),
          );
        }
      };
      this.#o.track(this.#sign(p).finally(again));
      return;
    }
    this.#prepared = undefined;
    const frame = p.frame;
    let data: Uint8Array;
    const signed = p.signed;
    if (signed !== undefined) {
      frame.hlc = signed.hlc;
      data = signed.data;
    } else {
      frame.hlc = this.#o.hlc.now();
      data = encoder.encode(p.head + frame.hlc + p.tail);
    }
    const headers: Record<string, string> = {
      "x-window-id": frame.window_id,
      "x-hlc": frame.hlc,
      "x-pulse-id": this.#o.pulseId,
      "x-fencing-token": this.#tokenText,
      "x-pulse-sent": "",
    };
    if (signed !== undefined) {
      headers["x-signature"] = signed.headers["x-signature"];
      headers["x-key-id"] = signed.headers["x-key-id"];
    }
    // Never before the due time.
    let sent = this.#clock.now();
    while (sent < due) sent = this.#clock.now();
    headers["x-pulse-sent"] = sent.toFixed(3);
    try {
      this.#o.bus.publish(this.#o.subject, data, { headers });
      this.#published++;
      if (this.#armedLate) this.#catchUp++;
      else this.#lateness.observe((sent - due) / 1000);
    } catch (error) {
      this.#publishErrors++;
      this.#o.onError(`Cannot publish beat ${n}`, error);
    }
    if (frame.downbeat) {
      const tl = this.#timeline;
      if (tl.segments.length > 1 && tl.segments[1].beat <= n) {
        this.#timeline = tl.trimBefore(n);
        this.#o.onTimelineTrimmed();
      }
    }
    this.#next = n + 1;
    this.#arm();
    this.#runAfterBeat();
    this.#o.onPublished(frame, sent);
  }

  #prepareFrame(n: number): void {
    const p = this.#prepared;
    if (p && p.beat === n && p.timeline === this.#timeline) return;
    this.#dropPrepared();
    const tl = this.#timeline;
    const bar = tl.barStart(n);
    const w = knownWindowId(this.#o.clusterId, Math.max(0, bar), tl.epoch);
    if (w === undefined) {
      this.#o.track(this.#buildFrame(n));
      return;
    }
    // The usual case, once per beat: the frame is ready before this returns.
    try {
      this.#setPrepared(prepared(
        n,
        tl,
        tl.frameWithWindow(this.#o.clusterId, n, PLACEHOLDER_HLC, w),
      ));
    } catch (error) {
      this.#o.onError(`Cannot prepare beat ${n}`, error);
      return;
    }
    if (tl.isDownbeat(n) || this.#windowsTo < bar) this.#requestWindows(bar);
  }

  async #buildFrame(n: number): Promise<void> {
    const tl = this.#timeline;
    const bar = tl.barStart(n);
    const w = await this.#window(tl, bar);
    const frame = tl.frameWithWindow(this.#o.clusterId, n, PLACEHOLDER_HLC, w);
    if (this.#timeline === tl && this.#next === n && this.#running) {
      this.#setPrepared(prepared(n, tl, frame));
    }
    this.#requestWindows(bar);
  }

  // Keeps a prepared frame and, with a signing key, arranges its signature before it is due.
  #setPrepared(p: Prepared): void {
    this.#dropPrepared();
    this.#prepared = p;
    if (this.#o.signingKey === undefined) return;
    const at = p.due - SIGN_LEAD_MS;
    if (at <= this.#clock.now()) {
      this.#o.track(this.#sign(p));
      return;
    }
    p.cancelSign = this.idleClock.schedule(at, () => {
      p.cancelSign = undefined;
      if (this.#prepared === p) this.#o.track(this.#sign(p));
    });
  }

  #dropPrepared(): void {
    this.#prepared?.cancelSign?.();
    this.#prepared = undefined;
  }

  // Stamps the frame's HLC, encodes it and signs the exact bytes (bound to cluster and epoch).
  // Resolves when done; a failure is reported and leaves the frame unsigned, to be tried again.
  #sign(p: Prepared): Promise<void> {
    if (p.signed !== undefined) return Promise.resolve();
    if (p.signing !== undefined) return p.signing;
    p.cancelSign?.();
    p.cancelSign = undefined;
    const hlc = this.#o.hlc.now();
    const data = encoder.encode(p.head + hlc + p.tail);
    const signing = signMessage(
      this.#o.signingKey!,
      SignatureDomain.BeatFrame,
      this.#o.clusterId,
      data,
      p.timeline.epoch,
    ).then((headers) => {
      p.signed = { data, hlc, headers };
    }, (error) => {
      // Reported once, then every 1000th: a key that cannot sign would otherwise flood the log.
      if (this.#signFailures++ % 1000 === 0) {
        this.#o.onError(`Cannot sign beat ${p.beat}`, error);
      }
    }).finally(() => {
      p.signing = undefined;
    });
    p.signing = signing;
    return signing;
  }

  // The window id of a bar from the process-wide cache; a digest still to do is tracked.
  #window(tl: Timeline, bar: number): string | Promise<string> {
    const index = Math.max(0, bar);
    return knownWindowId(this.#o.clusterId, index, tl.epoch) ??
      this.#o.track(cachedWindowId(this.#o.clusterId, index, tl.epoch));
  }

  // Derives window ids of the bars ahead; the cache bounds what is kept.
  #requestWindows(bar: number): void {
    const tl = this.#timeline;
    const bpb = tl.beatsPerBar;
    const until = bar + this.#o.lookaheadBars * bpb;
    if (until <= this.#windowsTo) return;
    let b = Math.max(bar, this.#windowsTo + 1);
    if (tl.barStart(b) !== b) b = tl.barStart(b) + bpb;
    for (; b <= until; b += bpb) {
      const w = this.#window(tl, b);
      if (typeof w !== "string") w.catch(() => {});
    }
    this.#windowsTo = until;
  }
}

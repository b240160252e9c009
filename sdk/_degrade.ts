// Local degradation: when pulse goes quiet, a client extrapolates the cluster's Timeline from the
// last real beat (the core FrameTracker's timeline, anchored on arrival) and produces synthetic
// beats with the frames pulse would have sent. Scheduling is absolute (beat n at anchor + n
// periods), so timer lateness never accumulates. Window ids need an async SHA-256, so they are
// derived bars ahead (the core's process-wide cache, keyed by the timeline's epoch) and a due beat
// is built synchronously. Beats end at MAX_BEAT_INDEX: past 2^53 − 1, n + 1 === n, and a counter
// stuck there would re-arm one instant for ever.
import {
  type BeatFrame,
  cachedWindowId,
  type Clock,
  type FrameTracker,
  knownWindowId,
  MAX_BEAT_INDEX,
  type Timeline,
} from "../core/mod.ts";

/** Bars whose window ids are computed ahead of need. */
export const WINDOW_PREFETCH_BARS = 3;

/**
 * Builds the frame of `beat` exactly as pulse does (`Timeline.frameWithWindow()`), synchronously,
 * from a known window id.
 *
 * @param timeline The schedule.
 * @param clusterId The cluster.
 * @param beat The beat_index.
 * @param hlc The frame's HLC stamp.
 * @param window The window id of the beat's bar.
 * @returns The frame.
 */
export function syntheticFrame(
  timeline: Timeline,
  clusterId: string,
  beat: number,
  hlc: string,
  window: string,
): BeatFrame {
  return timeline.frameWithWindow(clusterId, beat, hlc, window);
}

/** Options of {@linkcode SyntheticBeats}. */
export interface SyntheticBeatsOptions {
  /** Time and timers. */
  clock: Clock;
  /** The cluster. */
  clusterId: string;
  /**
   * What the real frames told: the timeline is extrapolated from its latest frame, anchored on
   * that frame's arrival.
   */
  tracker: FrameTracker;
  /** Issues the HLC stamp of a synthetic frame. */
  hlc: () => string;
  /** Receives each synthetic beat with its due time, in order. */
  deliver: (frame: BeatFrame, dueAt: number) => void;
  /** Receives failures, and the end of the timeline (both end the synthetic stream). */
  fail: (error: unknown) => void;
}

/** Produces synthetic beats on an extrapolated timeline until stopped. */
export class SyntheticBeats {
  readonly #o: SyntheticBeatsOptions;
  #timeline: Timeline | undefined;
  #next = 0;
  #cancel: (() => void) | undefined;
  #stopped = false;
  // Deliveries waiting on a window id, so later beats cannot overtake them.
  #queue: Promise<void> | undefined;
  #queued = 0;

  constructor(options: SyntheticBeatsOptions) {
    this.#o = options;
  }

  /** The extrapolated timeline once started. */
  get timeline(): Timeline | undefined {
    return this.#timeline;
  }

  /**
   * Starts producing beats after `lastDelivered`. The first one due is delivered at once.
   *
   * @param lastDelivered The last beat_index delivered to callbacks.
   */
  async start(lastDelivered: number): Promise<void> {
    try {
      // A client that joined mid-bar has seen no downbeat: the window id tells where bars start.
      await this.#o.tracker.locateBar();
      if (this.#stopped) return;
      const timeline = this.#o.tracker.timeline("arrival");
      // The client degrades only after a tracked frame, so there is always one.
      if (timeline === undefined) return;
      this.#timeline = timeline;
      const now = this.#o.clock.now();
      const first = Math.max(lastDelivered + 1, timeline.beatAt(now));
      if (first > MAX_BEAT_INDEX) return this.#end();
      const bar = timeline.barStart(first);
      // Usually the last real bar, derived by the client's look-ahead: no digest before the first
      // beat. Never the id a frame claimed: a hostile bus must not choose synthetic window ids.
      if (knownWindowId(this.#o.clusterId, bar, timeline.epoch) === undefined) {
        await cachedWindowId(this.#o.clusterId, bar, timeline.epoch);
      }
      if (this.#stopped) return;
      this.#prefetch(bar + timeline.beatsPerBar).catch((e) => this.#failed(e));
      this.#next = first;
      this.#arm();
    } catch (error) {
      if (!this.#stopped) this.#o.fail(error);
    }
  }

  /** Stops; nothing is delivered afterwards. Idempotent. */
  stop(): void {
    this.#stopped = true;
    this.#cancel?.();
    this.#cancel = undefined;
  }

  #arm(): void {
    const t = this.#timeline!;
    this.#cancel = this.#o.clock.schedule(t.dueAt(this.#next), this.#fire);
  }

  #fire = (): void => {
    this.#cancel = undefined;
    if (this.#stopped) return;
    const t = this.#timeline!;
    // A timer that fired beats late (a blocked event loop) skips to the beat now due: beats are
    // never delivered in a burst, and the gap is counted as missed by the client.
    const beat = Math.max(this.#next, t.beatAt(this.#o.clock.now()));
    if (beat > MAX_BEAT_INDEX) return this.#end();
    const due = t.dueAt(beat);
    this.#next = beat + 1;
    if (beat < MAX_BEAT_INDEX) this.#arm();
    const start = t.barStart(beat);
    if (t.isDownbeat(beat)) this.#prefetch(start + t.beatsPerBar).catch((e) => this.#failed(e));
    const window = knownWindowId(this.#o.clusterId, start, t.epoch);
    if (window !== undefined && this.#queued === 0) {
      this.#o.deliver(syntheticFrame(t, this.#o.clusterId, beat, this.#o.hlc(), window), due);
      if (beat === MAX_BEAT_INDEX) this.#end();
      return;
    }
    // Slow path: the id was not ready (only when the event loop was starved for bars).
    this.#queued++;
    this.#queue = (this.#queue ?? Promise.resolve()).then(async () => {
      const id = await cachedWindowId(this.#o.clusterId, start, t.epoch);
      this.#queued--;
      if (this.#stopped) return;
      this.#o.deliver(syntheticFrame(t, this.#o.clusterId, beat, this.#o.hlc(), id), due);
      if (beat === MAX_BEAT_INDEX) this.#end();
    }).catch((e) => this.#failed(e));
  };

  // The timeline has no beat after MAX_BEAT_INDEX: stop, and say so once.
  #end(): void {
    if (this.#stopped) return;
    this.stop();
    this.#o.fail(
      new RangeError(`the timeline reached the highest beat index there is (${MAX_BEAT_INDEX})`),
    );
  }

  #failed(error: unknown): void {
    if (this.#stopped) return;
    this.stop();
    this.#o.fail(error);
  }

  async #prefetch(fromBar: number): Promise<void> {
    const t = this.#timeline!;
    const wanted: Promise<string>[] = [];
    for (let k = 0; k < WINDOW_PREFETCH_BARS; k++) {
      const bar = fromBar + k * t.beatsPerBar;
      if (bar > MAX_BEAT_INDEX) break;
      wanted.push(cachedWindowId(this.#o.clusterId, bar, t.epoch));
    }
    await Promise.all(wanted);
  }
}

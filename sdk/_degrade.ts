// Local degradation: when pulse goes quiet, a client extrapolates the cluster's Timeline from the
// last real beat and produces synthetic beats with the frames pulse would have sent. Scheduling
// is absolute (beat n at anchor + n periods), so timer lateness never accumulates. Window ids
// need an async SHA-256, so they are computed bars ahead and a due beat is built synchronously.
import { type BeatFrame, type Clock, Timeline, windowId } from "../core/mod.ts";

/** Bars whose window ids are computed ahead of need. */
export const WINDOW_PREFETCH_BARS = 3;
/** Window ids kept by the process-wide cache. */
export const WINDOW_CACHE_SIZE = 256;

// Process-wide: a window id is a pure function of (cluster, downbeat), so every client of a
// cluster shares one digest per bar.
const windowCache = new Map<string, string | Promise<string>>();

function cacheSet(key: string, value: string | Promise<string>): void {
  windowCache.set(key, value);
  if (windowCache.size > WINDOW_CACHE_SIZE) {
    // Maps iterate in insertion order: drop the oldest bar.
    windowCache.delete(windowCache.keys().next().value!);
  }
}

/**
 * Resolves when every window id being computed is known (for tests on a manual clock).
 *
 * @returns Resolves after the pending digests settle.
 */
export async function windowIdsSettled(): Promise<void> {
  const pending = [...windowCache.values()].filter((v) => typeof v !== "string");
  await Promise.allSettled(pending);
}

/**
 * The window id of a bar if already known.
 *
 * @param clusterId The cluster.
 * @param downbeat The bar's downbeat index.
 * @returns The id, or `undefined` when not computed yet.
 */
export function knownWindowId(clusterId: string, downbeat: number): string | undefined {
  const v = windowCache.get(`${clusterId}:${downbeat}`);
  return typeof v === "string" ? v : undefined;
}

/**
 * Records a window id a real frame carried.
 *
 * @param clusterId The cluster.
 * @param downbeat The bar's downbeat index.
 * @param id The id.
 */
export function rememberWindowId(clusterId: string, downbeat: number, id: string): void {
  const key = `${clusterId}:${downbeat}`;
  if (typeof windowCache.get(key) !== "string") cacheSet(key, id.toLowerCase());
}

/**
 * The window id of a bar, computed once per process and cached.
 *
 * @param clusterId The cluster.
 * @param downbeat The bar's downbeat index.
 * @returns The id.
 */
export function windowIdCached(clusterId: string, downbeat: number): Promise<string> {
  const key = `${clusterId}:${downbeat}`;
  const v = windowCache.get(key);
  if (v !== undefined) return typeof v === "string" ? Promise.resolve(v) : v;
  const p = windowId(clusterId, downbeat).then((id) => {
    if (windowCache.get(key) === p) windowCache.set(key, id);
    return id;
  }, (error) => {
    if (windowCache.get(key) === p) windowCache.delete(key);
    throw error;
  });
  cacheSet(key, p);
  return p;
}

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

/** What the last real beats told about the cluster's schedule. */
export interface Anchor {
  /** The last real frame accepted. */
  readonly frame: BeatFrame;
  /** When it arrived (client clock). */
  readonly at: number;
  /** beat_index of the last real downbeat seen, if any. */
  readonly lastDownbeat: number | undefined;
  /** beat_index of the real downbeat before that, if any. */
  readonly previousDownbeat: number | undefined;
  /** Beats per bar to assume when nothing else tells. */
  readonly beatsPerBarHint: number;
}

/**
 * Finds the beat_index of the downbeat opening the bar of `frame` by matching its window id
 * against the candidates (at most 64 digests).
 *
 * @param frame A real frame.
 * @returns The downbeat's index, or `undefined` when no candidate matches.
 */
export async function findBarStart(frame: BeatFrame): Promise<number | undefined> {
  if (frame.downbeat) return frame.beat_index;
  const low = Math.max(0, frame.beat_index - 63);
  for (let d = frame.beat_index - 1; d >= low; d--) {
    if (await windowId(frame.cluster_id, d) === frame.window_id.toLowerCase()) return d;
  }
  return undefined;
}

/**
 * Builds the Timeline a degraded client extrapolates: the anchor's index, tempo and arrival
 * time; the bar grid from the last real downbeat (or the window id); beats per bar from the
 * frame, else the spacing of the last two downbeats, else the hint; default phases; and a tempo
 * change the frame announced.
 *
 * @param anchor The last real beat.
 * @returns The timeline.
 */
export async function anchorTimeline(anchor: Anchor): Promise<Timeline> {
  const f = anchor.frame;
  const spacing = anchor.lastDownbeat !== undefined && anchor.previousDownbeat !== undefined
    ? anchor.lastDownbeat - anchor.previousDownbeat
    : undefined;
  const beatsPerBar = f.beats_per_bar ??
    (spacing !== undefined && spacing >= 1 && spacing <= 64 ? spacing : anchor.beatsPerBarHint);
  const barOrigin = anchor.lastDownbeat ?? await findBarStart(f) ?? 0;
  let timeline = new Timeline({
    originTime: anchor.at,
    originBeat: f.beat_index,
    tempoBpm: f.tempo_bpm,
    beatsPerBar,
    barOrigin,
  });
  if (f.next_tempo_bpm !== undefined && f.next_tempo_bpm !== f.tempo_bpm) {
    timeline = timeline.withTempo(f.next_tempo_bpm, f.beat_index);
  }
  return timeline;
}

/** Options of {@linkcode SyntheticBeats}. */
export interface SyntheticBeatsOptions {
  /** Time and timers. */
  clock: Clock;
  /** The cluster. */
  clusterId: string;
  /** The last real beat. */
  anchor: Anchor;
  /** Issues the HLC stamp of a synthetic frame. */
  hlc: () => string;
  /** Receives each synthetic beat with its due time, in order. */
  deliver: (frame: BeatFrame, dueAt: number) => void;
  /** Receives failures (they end the synthetic stream). */
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
      const timeline = await anchorTimeline(this.#o.anchor);
      if (this.#stopped) return;
      this.#timeline = timeline;
      const f = this.#o.anchor.frame;
      rememberWindowId(this.#o.clusterId, timeline.barStart(f.beat_index), f.window_id);
      const now = this.#o.clock.now();
      const first = Math.max(lastDelivered + 1, timeline.beatAt(now));
      const bar = timeline.barStart(first);
      // Usually the anchor's own bar, whose id the frame carried: no digest before the first beat.
      if (knownWindowId(this.#o.clusterId, bar) === undefined) {
        await windowIdCached(this.#o.clusterId, bar);
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
    const due = t.dueAt(beat);
    this.#next = beat + 1;
    this.#arm();
    const start = t.barStart(beat);
    if (t.isDownbeat(beat)) this.#prefetch(start + t.beatsPerBar).catch((e) => this.#failed(e));
    const window = knownWindowId(this.#o.clusterId, start);
    if (window !== undefined && this.#queued === 0) {
      this.#o.deliver(syntheticFrame(t, this.#o.clusterId, beat, this.#o.hlc(), window), due);
      return;
    }
    // Slow path: the id was not ready (only when the event loop was starved for bars).
    this.#queued++;
    this.#queue = (this.#queue ?? Promise.resolve()).then(async () => {
      const id = await windowIdCached(this.#o.clusterId, start);
      this.#queued--;
      if (this.#stopped) return;
      this.#o.deliver(syntheticFrame(t, this.#o.clusterId, beat, this.#o.hlc(), id), due);
    }).catch((e) => this.#failed(e));
  };

  #failed(error: unknown): void {
    if (this.#stopped) return;
    this.stop();
    this.#o.fail(error);
  }

  async #prefetch(fromBar: number): Promise<void> {
    const t = this.#timeline!;
    const wanted: Promise<string>[] = [];
    for (let k = 0; k < WINDOW_PREFETCH_BARS; k++) {
      wanted.push(windowIdCached(this.#o.clusterId, fromBar + k * t.beatsPerBar));
    }
    await Promise.all(wanted);
  }
}

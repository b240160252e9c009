// Beats at their instants. A client's BeatScheduler delivers the beats of a Timeline at the local
// instants a ClockMapping gives (pulse's own schedule through the clock estimate in scheduled
// mode; an arrival-anchored timeline on the local clock in degraded arrival mode), each through
// the process's one BeatDispatch for the clock: one wake-up (and, on a SystemClock, one spin) per
// instant for every client of the process, however many there are.
//
// The frame a beat will get is built ahead, as soon as the beat is scheduled (window ids are
// derived bars in advance through the core's process-wide cache), so the work at the instant is
// the callbacks and nothing else. Scheduling is absolute (beat n at the mapping of dueAt(n)), so
// timer lateness never accumulates; a wake-up later than the next beat's instant skips to the beat
// now due, and the client counts the skipped ones as missed. Beats end at MAX_BEAT_INDEX: past
// 2^53 − 1, n + 1 === n, and a counter stuck there would re-arm one instant for ever.
import {
  type BeatFrame,
  cachedWindowId,
  type Clock,
  knownWindowId,
  MAX_BEAT_INDEX,
  sharedWakeScheduler,
  SystemClock,
  type Timeline,
  type WakeScheduler,
} from "../core/mod.ts";
import type { ClockMapping } from "./_clock_sync.ts";

/** Bars whose window ids are derived ahead of need. */
export const WINDOW_PREFETCH_BARS = 3;

/**
 * Gaps between two instants (ms) that a pass over due instants bridges by spinning on a clock
 * that moves by itself, rather than by a new timer (which would fire a millisecond or so late).
 */
const BRIDGE_MS = 0.25;

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

interface Slot {
  readonly at: number;
  readonly pass: number;
  readonly entries: { fn: ((now: number) => void) | undefined }[];
  /** Entries not cancelled. */
  live: number;
}

/**
 * Every instant the clients of one clock wait for, behind one entry of the clock's shared
 * WakeScheduler at a time. Entries at the same microsecond share a slot; a wake-up runs every
 * slot due, reading the clock again after each, so clients whose instants differ by float noise
 * (timelines anchored on different frames) all run in the one wake-up.
 */
export class BeatDispatch {
  readonly #clock: Clock;
  readonly #wake: WakeScheduler;
  readonly #spins: boolean;
  readonly #slots = new Map<number, Slot>();
  // Slot instants, ascending (few distinct ones: usually one per beat).
  #order: number[] = [];
  #armedAt = Infinity;
  #cancel: (() => void) | undefined;
  #pass = 0;
  #after: (() => void)[] = [];
  #onError: (error: unknown) => void;

  constructor(clock: Clock, onError: (error: unknown) => void = (e) => console.error(e)) {
    this.#clock = clock;
    this.#wake = sharedWakeScheduler(clock);
    // Only a clock that moves by itself can be spun on; a ManualClock moves when told.
    this.#spins = clock instanceof SystemClock;
    this.#onError = onError;
  }

  /** Instants waited for. */
  get size(): number {
    return this.#slots.size;
  }

  /**
   * Runs `fn` at `at` (rounded up to the microsecond; at once when past, never synchronously),
   * with the clock's reading taken just before its slot ran.
   *
   * @returns Cancels it (idempotent).
   */
  at(at: number, fn: (now: number) => void): () => void {
    const key = Math.ceil(at * 1000) / 1000;
    let slot = this.#slots.get(key);
    if (slot === undefined) {
      slot = { at: key, pass: this.#pass, entries: [], live: 0 };
      this.#slots.set(key, slot);
      this.#insert(key);
      if (key < this.#armedAt) this.#arm(key);
    }
    const entry: { fn: ((now: number) => void) | undefined } = { fn };
    slot.entries.push(entry);
    slot.live++;
    const owner = slot;
    return () => {
      if (entry.fn === undefined) return;
      entry.fn = undefined;
      // A slot nobody waits for any more must not wake (and spin) the process.
      if (--owner.live === 0 && this.#slots.get(owner.at) === owner) this.#drop(owner);
    };
  }

  /**
   * Runs `fn` right after the current pass over due instants (work a callback's client must do,
   * that the clients still waiting in the pass must not wait for), or in a microtask outside one.
   */
  afterPass(fn: () => void): void {
    if (this.#running) this.#after.push(fn);
    else queueMicrotask(fn);
  }

  #running = false;

  #drop(slot: Slot): void {
    this.#slots.delete(slot.at);
    const i = this.#order.indexOf(slot.at);
    if (i >= 0) this.#order.splice(i, 1);
    if (this.#armedAt !== slot.at) return;
    this.#cancel?.();
    this.#cancel = undefined;
    this.#armedAt = Infinity;
    const next = this.#order[0];
    if (next !== undefined) this.#arm(next);
  }

  #insert(key: number): void {
    const order = this.#order;
    let lo = 0;
    let hi = order.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (order[mid] < key) lo = mid + 1;
      else hi = mid;
    }
    order.splice(lo, 0, key);
  }

  #arm(at: number): void {
    this.#cancel?.();
    this.#armedAt = at;
    this.#cancel = this.#wake.at(at, this.#fire);
  }

  #fire = (): void => {
    this.#cancel = undefined;
    this.#armedAt = Infinity;
    // Slots made during this pass (a client scheduling its next beat) wait for the next one.
    const pass = ++this.#pass;
    this.#running = true;
    for (;;) {
      const key = this.#order[0];
      if (key === undefined) break;
      const slot = this.#slots.get(key)!;
      if (slot.pass >= pass) break;
      let now = this.#clock.now();
      if (key > now) {
        if (!this.#spins || key - now > BRIDGE_MS) break;
        // A few µs away (float noise between timelines): wait here, not for a late timer.
        while (now < key) now = this.#clock.now();
      }
      this.#order.shift();
      this.#slots.delete(key);
      for (const entry of slot.entries) {
        const fn = entry.fn;
        if (fn === undefined) continue;
        entry.fn = undefined;
        try {
          fn(now);
        } catch (error) {
          try {
            this.#onError(error);
          } catch { /* an error hook must not stop the others */ }
        }
      }
    }
    this.#running = false;
    const after = this.#after;
    this.#after = [];
    for (const fn of after) {
      try {
        fn();
      } catch (error) {
        try {
          this.#onError(error);
        } catch { /* an error hook must not stop the others */ }
      }
    }
    const next = this.#order[0];
    if (next !== undefined && next < this.#armedAt) this.#arm(next);
  };
}

const dispatches = new WeakMap<Clock, BeatDispatch>();

/**
 * The process's one {@linkcode BeatDispatch} of a clock.
 *
 * @param clock The clock.
 * @returns Its dispatch, created on first use.
 */
export function beatDispatchOf(clock: Clock): BeatDispatch {
  let d = dispatches.get(clock);
  if (d === undefined) dispatches.set(clock, d = new BeatDispatch(clock));
  return d;
}

/** Options of {@linkcode BeatScheduler}. */
export interface BeatSchedulerOptions {
  /** The local clock. */
  clock: Clock;
  /** The process's dispatch of that clock. */
  dispatch: BeatDispatch;
  /** The cluster. */
  clusterId: string;
  /** The HLC stamp of a predicted frame. */
  hlc: () => string;
  /**
   * Receives each beat at its instant, in order: the frame (built from the timeline, or the real
   * one handed over with `hold()`), its due instant on the local clock, and what `hold()` gave
   * with a real frame (else `undefined`: a predicted beat).
   */
  deliver: (frame: BeatFrame, due: number, held: unknown) => void;
  /** Receives failures and the end of the timeline (both stop the scheduler). */
  fail: (error: unknown) => void;
}

/** Delivers a timeline's beats at their instants until stopped or given another timeline. */
export class BeatScheduler {
  readonly #o: BeatSchedulerOptions;
  #timeline: Timeline | undefined;
  #map: ClockMapping | undefined;
  #version = -1;
  #next = 0;
  #at = NaN;
  // The local instant of the beat after the next: a wake-up past it skipped a beat.
  #after = NaN;
  #cancel: (() => void) | undefined;
  #frame: BeatFrame | undefined;
  #held: { frame: BeatFrame; data: unknown } | undefined;
  #stopped = true;
  // Deliveries waiting on a window id, so later beats cannot overtake them.
  #queue: Promise<void> | undefined;
  #queued = 0;

  constructor(options: BeatSchedulerOptions) {
    this.#o = options;
  }

  /** Whether beats are being scheduled. */
  get active(): boolean {
    return !this.#stopped;
  }

  /** The beat scheduled next (meaningful while active). */
  get next(): number {
    return this.#next;
  }

  /** The local instant of the next beat (meaningful while active). */
  get nextAt(): number {
    return this.#at;
  }

  /** The timeline followed. */
  get timeline(): Timeline | undefined {
    return this.#timeline;
  }

  /** The mapping followed. */
  get mapping(): ClockMapping | undefined {
    return this.#map;
  }

  /**
   * Follows a timeline from beat `next`: schedules it at its instant (at once when past). Cheap
   * when nothing changed (the same timeline object, mapping version and beat).
   *
   * @param timeline The schedule, on the clock `map` reads.
   * @param map From the timeline's clock to the local one.
   * @param next The first beat to deliver.
   */
  follow(timeline: Timeline, map: ClockMapping, next: number): void {
    if (
      !this.#stopped && timeline === this.#timeline && map === this.#map &&
      map.version === this.#version && next === this.#next
    ) return;
    const sameBeat = !this.#stopped && next === this.#next && timeline === this.#timeline;
    this.#stopped = false;
    this.#timeline = timeline;
    this.#map = map;
    this.#version = map.version;
    if (next !== this.#next) this.#held = undefined;
    this.#next = next;
    // A frame built on another timeline may differ: build again.
    if (!sameBeat) this.#frame = undefined;
    this.#arm();
  }

  /** Recomputes the instant of the next beat after the mapping changed. */
  remap(): void {
    if (this.#stopped || this.#map === undefined || this.#map.version === this.#version) return;
    this.#version = this.#map.version;
    this.#arm();
  }

  /**
   * Hands over the real frame of the next beat, arrived before its instant: it is delivered at
   * the instant instead of the prediction.
   *
   * @param frame The real frame.
   * @param data What the delivery needs of it besides the frame.
   */
  hold(frame: BeatFrame, data: unknown): void {
    if (!this.#stopped && frame.beat_index === this.#next) this.#held = { frame, data };
  }

  /** Stops; nothing is delivered afterwards (until `follow()`). Idempotent. */
  stop(): void {
    this.#stopped = true;
    this.#rearming = false;
    this.#cancel?.();
    this.#cancel = undefined;
    this.#held = undefined;
    this.#frame = undefined;
    this.#at = NaN;
  }

  #arm(): void {
    this.#rearming = false;
    const t = this.#timeline!;
    const beat = this.#next;
    if (beat > MAX_BEAT_INDEX) return this.#end();
    const at = this.#map!.toLocal(t.dueAt(beat));
    this.#after = beat < MAX_BEAT_INDEX ? this.#map!.toLocal(t.dueAt(beat + 1)) : Infinity;
    this.#frame ??= this.#build(beat);
    if (this.#cancel !== undefined && at === this.#at) return;
    this.#cancel?.();
    this.#at = at;
    this.#cancel = this.#o.dispatch.at(at, this.#fire);
  }

  // The frame of a beat, when its bar's window id is known; otherwise derives it for later.
  #build(beat: number): BeatFrame | undefined {
    const t = this.#timeline!;
    const bar = t.barStart(beat);
    const window = knownWindowId(this.#o.clusterId, bar, t.epoch);
    if (t.isDownbeat(beat) || window === undefined) this.#prefetch(t, bar);
    if (window === undefined) return undefined;
    return Object.freeze(syntheticFrame(t, this.#o.clusterId, beat, this.#o.hlc(), window));
  }

  #fire = (now: number): void => {
    this.#cancel = undefined;
    if (this.#stopped) return;
    const t = this.#timeline!;
    const map = this.#map!;
    let beat = this.#next;
    // A wake-up later than the next beat's instant (a blocked event loop) delivers the beat now
    // due: beats never come in a burst, and the client counts the gap as missed.
    if (now >= this.#after) {
      beat = Math.max(beat, Math.min(t.beatAt(map.toRemote(now)), MAX_BEAT_INDEX));
    }
    const due = beat === this.#next ? this.#at : map.toLocal(t.dueAt(beat));
    const held = this.#held?.frame.beat_index === beat ? this.#held : undefined;
    const built = beat === this.#next ? this.#frame : undefined;
    this.#held = undefined;
    this.#frame = undefined;
    this.#next = beat + 1;
    const frame = held?.frame ?? built ?? this.#build(beat);
    if (frame !== undefined && this.#queued === 0) {
      this.#o.deliver(frame, due, held?.data);
    } else {
      // Slow path: the id was not ready (only when the event loop was starved for bars), or an
      // earlier beat still waits for one.
      this.#queued++;
      const start = t.barStart(beat);
      this.#queue = (this.#queue ?? Promise.resolve()).then(async () => {
        const f = frame ??
          Object.freeze(
            syntheticFrame(
              t,
              this.#o.clusterId,
              beat,
              this.#o.hlc(),
              await cachedWindowId(this.#o.clusterId, start, t.epoch),
            ),
          );
        this.#queued--;
        if (this.#stopped || this.#timeline !== t) return;
        this.#o.deliver(f, due, held?.data);
      }).catch((e) => this.#failed(e));
    }
    // The delivery may have moved the scheduler on (a stop, another timeline, a new beat).
    if (this.#stopped || this.#timeline !== t || this.#cancel !== undefined) return;
    if (beat >= MAX_BEAT_INDEX) return this.#end();
    // The next beat is scheduled and its frame built after the pass: every other client of this
    // instant is still waiting for its callbacks, and building a frame takes microseconds.
    this.#rearming = true;
    this.#o.dispatch.afterPass(this.#rearm);
  };

  #rearming = false;
  #rearm = (): void => {
    if (!this.#rearming) return;
    this.#rearming = false;
    if (!this.#stopped && this.#cancel === undefined) this.#arm();
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

  #prefetch(t: Timeline, bar: number): void {
    for (let k = 0; k <= WINDOW_PREFETCH_BARS; k++) {
      const b = bar + k * t.beatsPerBar;
      if (b > MAX_BEAT_INDEX || b < 0) break;
      if (knownWindowId(this.#o.clusterId, b, t.epoch) !== undefined) continue;
      cachedWindowId(this.#o.clusterId, b, t.epoch).catch((e) => this.#failed(e));
    }
  }
}

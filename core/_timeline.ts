import { type BeatFrame, type Phase, PHASES } from "./_messages.ts";
import { cachedWindowId } from "./_window_id.ts";

/** Default beats in a bar. */
export const DEFAULT_BEATS_PER_BAR = 4;
/** Default tempo: 2 BPM, 30-second beats. */
export const DEFAULT_TEMPO_BPM = 2;
/** Lowest tempo the contract allows. */
export const MIN_TEMPO_BPM = 0.1;
/** Highest tempo the timeline accepts (1 ms beats). */
export const MAX_TEMPO_BPM = 60_000;
/** The highest beat_index there can be (2^53 − 1): every index stays a safe integer. */
export const MAX_BEAT_INDEX: number = Number.MAX_SAFE_INTEGER;
/** Segments kept by a timeline; older tempo changes are forgotten. */
export const MAX_TIMELINE_SEGMENTS = 16;

/** A stretch of constant tempo: beat `beat` is due at `at`, later beats follow at `tempoBpm`. */
export interface TimelineSegment {
  /** First beat_index of the segment (a downbeat, except for the first segment). */
  readonly beat: number;
  /** Epoch milliseconds at which `beat` is due (fractional). */
  readonly at: number;
  /** Tempo of the segment. */
  readonly tempoBpm: number;
}

/** Options of {@linkcode Timeline}: where it starts and how bars are shaped. */
export interface TimelineOptions {
  /** Epoch milliseconds (fractional allowed) at which `originBeat` is due. */
  originTime: number;
  /** The beat_index due at `originTime`. @default {0} */
  originBeat?: number;
  /** Tempo in BPM, 0.1 to 60000. @default {2} */
  tempoBpm?: number;
  /** Beats in a bar. @default {4} */
  beatsPerBar?: number;
  /** Phase of each beat position in the bar. @default {defaultPhases(beatsPerBar)} */
  phases?: readonly Phase[];
  /** A beat_index known to be a downbeat; bars are aligned to it. @default {0} */
  barOrigin?: number;
  /**
   * The timeline's epoch: a new timeline of the cluster (its state lost, a fresh start) has a
   * greater one, so window ids never repeat across timelines. 0 is the v1.0 timeline, whose window
   * ids are derived without an epoch. @default {0}
   */
  epoch?: number;
}

/** A serialisable snapshot of a timeline (stored by pulse in KV). */
export interface TimelineJson {
  /** Tempo segments, oldest first. */
  segments: TimelineSegment[];
  /** Beats in a bar. */
  beatsPerBar: number;
  /** Phase of each position in the bar. */
  phases: Phase[];
  /** A beat_index that is a downbeat. */
  barOrigin: number;
  /** The timeline's epoch (absent in snapshots written before epochs: 0). */
  epoch?: number;
}

/**
 * The default phase map: plan on the first beat, review on the last, execute in between.
 *
 * @param beatsPerBar Beats in a bar.
 * @returns One phase per bar position.
 * @throws {RangeError} When `beatsPerBar` is not an integer from 1 to 64.
 *
 * @example Four beats
 * ```ts
 * import { defaultPhases } from "./mod.ts";
 * console.log(defaultPhases(4)); // ["plan", "execute", "execute", "review"]
 * ```
 */
export function defaultPhases(beatsPerBar: number): Phase[] {
  assertBeatsPerBar(beatsPerBar);
  if (beatsPerBar === 1) return ["execute"];
  const out: Phase[] = ["plan"];
  for (let i = 1; i < beatsPerBar - 1; i++) out.push("execute");
  out.push("review");
  return out;
}

/**
 * Parses a phase map written as `plan,execute,execute,review`.
 *
 * @param text Comma-separated phases.
 * @returns The phases.
 * @throws {TypeError} When a name is not a phase.
 *
 * @example Parse a flag value
 * ```ts
 * import { parsePhases } from "./mod.ts";
 * console.log(parsePhases("plan,execute,review").length); // 3
 * ```
 */
export function parsePhases(text: string): Phase[] {
  const out = text.split(",").map((s) => s.trim());
  for (const p of out) {
    if (!(PHASES as readonly string[]).includes(p)) {
      throw new TypeError(
        `Invalid phase ${JSON.stringify(p)}: expected one of ${PHASES.join(", ")}`,
      );
    }
  }
  return out as Phase[];
}

function assertBeatsPerBar(n: number): void {
  if (!Number.isInteger(n) || n < 1 || n > 64) {
    throw new RangeError(`Invalid beats per bar ${n}: expected an integer from 1 to 64`);
  }
}

/**
 * Checks a tempo against the timeline's range.
 *
 * @param tempoBpm The tempo.
 * @throws {RangeError} When it is not a finite number from 0.1 to 60000.
 *
 * @example Reject a tempo
 * ```ts
 * import { assertTempo } from "./mod.ts";
 * try { assertTempo(0.01); } catch (e) { console.log((e as Error).message); }
 * ```
 */
export function assertTempo(tempoBpm: number): void {
  if (typeof tempoBpm !== "number" || !(tempoBpm >= MIN_TEMPO_BPM && tempoBpm <= MAX_TEMPO_BPM)) {
    throw new RangeError(
      `Invalid tempo ${tempoBpm}: expected a number from ${MIN_TEMPO_BPM} to ${MAX_TEMPO_BPM} BPM`,
    );
  }
}

function assertBeat(beat: number, what: string): void {
  if (!Number.isSafeInteger(beat)) {
    throw new RangeError(`Invalid ${what} ${beat}: expected an integer`);
  }
}

/**
 * Formats an instant as RFC 3339 UTC with microseconds (`2025-09-05T12:30:00.123456Z`), so a
 * frame's `deadline_at` states the schedule exactly rather than rounded to the millisecond.
 *
 * @param ms Epoch milliseconds, fractional.
 * @returns The RFC 3339 text.
 * @throws {RangeError} When the instant is not a finite time.
 *
 * @example Microsecond precision
 * ```ts
 * import { formatInstant } from "./mod.ts";
 * console.log(formatInstant(1.5)); // "1970-01-01T00:00:00.001500Z"
 * ```
 */
export function formatInstant(ms: number): string {
  let whole = Math.floor(ms);
  let micros = Math.round((ms - whole) * 1000);
  if (micros === 1000) {
    whole += 1;
    micros = 0;
  }
  const iso = new Date(whole).toISOString(); // always ends in ".sssZ"
  return `${iso.slice(0, -1)}${String(micros).padStart(3, "0")}Z`;
}

/**
 * Parses an RFC 3339 instant keeping sub-millisecond digits, which `Date.parse` drops.
 *
 * @param text RFC 3339 text, e.g. a frame's `deadline_at`.
 * @returns Epoch milliseconds, fractional; `NaN` when the text is not a date-time.
 *
 * @example Round trip
 * ```ts
 * import { formatInstant, parseInstant } from "./mod.ts";
 * console.log(parseInstant(formatInstant(1_700_000_000_000.25))); // 1700000000000.25
 * ```
 */
export function parseInstant(text: string): number {
  const whole = Date.parse(text);
  if (Number.isNaN(whole)) return NaN;
  const m = /\.\d{3}(\d+)(?:Z|[+-]\d{2}:\d{2})$/i.exec(text);
  return m ? whole + Number(`0.${m[1]}`) : whole;
}

/**
 * The cluster's absolute beat schedule: for any beat_index or instant it answers due time,
 * downbeat, phase, deadline, bar start and window id. Beat n is due at `origin + n × period`
 * (per tempo segment), so error never accumulates. Tempo changes land on the next downbeat and
 * move no past beat. Pulse schedules from it, degraded clients extrapolate from it, reverb checks
 * deadlines against it. Timelines are immutable: changes return a new one.
 *
 * @example Ask the schedule
 * ```ts
 * import { Timeline } from "./mod.ts";
 * const t = new Timeline({ originTime: 0, tempoBpm: 120 });
 * console.log(t.dueAt(10), t.isDownbeat(8), t.phaseOf(11)); // 5000 true "review"
 * const faster = t.withTempo(240, 9); // lands on beat 12
 * console.log(faster.dueAt(12), faster.dueAt(13)); // 6000 6250
 * ```
 */
export class Timeline {
  /** Tempo segments, oldest first (at most {@linkcode MAX_TIMELINE_SEGMENTS}). */
  readonly segments: readonly TimelineSegment[];
  /** Beats in a bar. */
  readonly beatsPerBar: number;
  /** Phase of each bar position. */
  readonly phases: readonly Phase[];
  /** A beat_index that is a downbeat. */
  readonly barOrigin: number;
  /** The timeline's epoch (0: a v1.0 timeline). */
  readonly epoch: number;

  /**
   * Creates a timeline with one tempo segment.
   *
   * @param options Origin, tempo, bar shape.
   * @throws {RangeError} On a tempo, beat count or origin out of range.
   * @throws {TypeError} When the phase map does not match the bar.
   */
  constructor(options: TimelineOptions) {
    const tempo = options.tempoBpm ?? DEFAULT_TEMPO_BPM;
    assertTempo(tempo);
    if (!Number.isFinite(options.originTime)) {
      throw new RangeError(`Invalid originTime ${options.originTime}: expected a finite number`);
    }
    const originBeat = options.originBeat ?? 0;
    assertBeat(originBeat, "originBeat");
    const bpb = options.beatsPerBar ?? DEFAULT_BEATS_PER_BAR;
    assertBeatsPerBar(bpb);
    const phases = options.phases ?? defaultPhases(bpb);
    if (phases.length !== bpb || phases.some((p) => !(PHASES as readonly string[]).includes(p))) {
      throw new TypeError(
        `Invalid phase map [${phases.join(", ")}]: expected ${bpb} phases, each one of ${
          PHASES.join(", ")
        }`,
      );
    }
    const barOrigin = options.barOrigin ?? 0;
    assertBeat(barOrigin, "barOrigin");
    const epoch = options.epoch ?? 0;
    if (!Number.isSafeInteger(epoch) || epoch < 0) {
      throw new RangeError(`Invalid epoch ${epoch}: expected an integer >= 0`);
    }
    this.epoch = epoch;
    this.segments = [{ beat: originBeat, at: options.originTime, tempoBpm: tempo }];
    this.beatsPerBar = bpb;
    this.phases = [...phases];
    this.barOrigin = barOrigin;
  }

  /**
   * Restores a timeline from {@linkcode Timeline.toJSON}'s output.
   *
   * @param json The snapshot.
   * @returns The timeline.
   * @throws {RangeError} On invalid contents.
   */
  static fromJSON(json: TimelineJson): Timeline {
    if (!json || !Array.isArray(json.segments) || json.segments.length === 0) {
      throw new RangeError("Invalid timeline snapshot: no segments");
    }
    const first = json.segments[0];
    let t = new Timeline({
      originTime: first.at,
      originBeat: first.beat,
      tempoBpm: first.tempoBpm,
      beatsPerBar: json.beatsPerBar,
      phases: json.phases,
      barOrigin: json.barOrigin,
      epoch: json.epoch,
    });
    for (const s of json.segments.slice(1)) {
      assertTempo(s.tempoBpm);
      assertBeat(s.beat, "segment beat");
      t = t.#withSegments([...t.segments, { beat: s.beat, at: s.at, tempoBpm: s.tempoBpm }]);
    }
    return t;
  }

  /**
   * A JSON-safe snapshot, for storage.
   *
   * @returns The snapshot.
   */
  toJSON(): TimelineJson {
    return {
      segments: this.segments.map((s) => ({ ...s })),
      beatsPerBar: this.beatsPerBar,
      phases: [...this.phases],
      barOrigin: this.barOrigin,
      epoch: this.epoch,
    };
  }

  #withSegments(segments: TimelineSegment[]): Timeline {
    const kept = segments.slice(-MAX_TIMELINE_SEGMENTS);
    const t = new Timeline({
      originTime: kept[0].at,
      originBeat: kept[0].beat,
      tempoBpm: kept[0].tempoBpm,
      beatsPerBar: this.beatsPerBar,
      phases: this.phases,
      barOrigin: this.barOrigin,
      epoch: this.epoch,
    });
    (t as { segments: readonly TimelineSegment[] }).segments = kept;
    return t;
  }

  #segmentForBeat(beat: number): TimelineSegment {
    const segs = this.segments;
    for (let i = segs.length - 1; i > 0; i--) if (segs[i].beat <= beat) return segs[i];
    return segs[0];
  }

  /**
   * The tempo of a beat.
   *
   * @param beat A beat_index.
   * @returns The tempo in force at that beat.
   */
  tempoAt(beat: number): number {
    return this.#segmentForBeat(beat).tempoBpm;
  }

  /**
   * The beat period at a beat.
   *
   * @param beat A beat_index.
   * @returns The beat period in milliseconds at that beat.
   */
  periodAt(beat: number): number {
    return 60_000 / this.tempoAt(beat);
  }

  /**
   * When a beat is due.
   *
   * @param beat A beat_index.
   * @returns Epoch milliseconds at which the beat is due.
   */
  dueAt(beat: number): number {
    const s = this.#segmentForBeat(beat);
    return s.at + (beat - s.beat) * (60_000 / s.tempoBpm);
  }

  /**
   * The latest beat due at or before an instant.
   *
   * @param time Epoch milliseconds.
   * @returns The beat_index (may be below the origin for instants before it).
   */
  beatAt(time: number): number {
    const segs = this.segments;
    let s = segs[0];
    for (let i = segs.length - 1; i > 0; i--) {
      if (segs[i].at <= time) {
        s = segs[i];
        break;
      }
    }
    const raw = s.beat + Math.floor((time - s.at) / (60_000 / s.tempoBpm));
    if (!Number.isFinite(raw)) return raw > 0 ? MAX_BEAT_INDEX : -MAX_BEAT_INDEX;
    // Clamped to safe integers: past 2^53, n + 1 === n and no arithmetic on beats holds.
    let n = Math.max(-MAX_BEAT_INDEX, Math.min(MAX_BEAT_INDEX, raw));
    // Correct the floor against floating-point edges so dueAt(beatAt(t)) <= t < dueAt(beatAt(t)+1).
    // The error is at most one beat either way: a fixed number of steps, never a loop whose length
    // an input controls.
    for (let i = 0; i < 2 && n > -MAX_BEAT_INDEX && this.dueAt(n) > time; i++) n--;
    for (let i = 0; i < 2 && n < MAX_BEAT_INDEX && this.dueAt(n + 1) <= time; i++) n++;
    return n;
  }

  /**
   * Where a beat stands in its bar.
   *
   * @param beat A beat_index.
   * @returns Its position in the bar, 0 for the downbeat.
   */
  positionInBar(beat: number): number {
    const m = (beat - this.barOrigin) % this.beatsPerBar;
    return m < 0 ? m + this.beatsPerBar : m;
  }

  /**
   * Whether a beat is a downbeat.
   *
   * @param beat A beat_index.
   * @returns Whether it opens a bar.
   */
  isDownbeat(beat: number): boolean {
    return this.positionInBar(beat) === 0;
  }

  /**
   * The downbeat of a beat's bar.
   *
   * @param beat A beat_index.
   * @returns The beat_index of its bar's downbeat.
   */
  barStart(beat: number): number {
    return beat - this.positionInBar(beat);
  }

  /**
   * The phase of a beat.
   *
   * @param beat A beat_index.
   * @returns The phase it belongs to.
   */
  phaseOf(beat: number): Phase {
    return this.phases[this.positionInBar(beat)];
  }

  /**
   * The first beat after `beat` that starts a different phase or a new bar.
   *
   * @param beat A beat_index.
   * @returns That beat_index.
   */
  phaseEndBeat(beat: number): number {
    const pos = this.positionInBar(beat);
    const phase = this.phases[pos];
    let k = pos + 1;
    while (k < this.beatsPerBar && this.phases[k] === phase) k++;
    return beat + (k - pos);
  }

  /**
   * The end of the phase the beat belongs to (the frame's `deadline_at`).
   *
   * @param beat A beat_index.
   * @returns Epoch milliseconds.
   */
  deadlineAt(beat: number): number {
    return this.dueAt(this.phaseEndBeat(beat));
  }

  /**
   * The instant by which a claim counts as an on-time review for the bar holding `beat`: the end
   * of the bar's review phase, or the bar's end when the bar has no review beat.
   *
   * @param beat A beat_index.
   * @returns Epoch milliseconds.
   */
  reviewDeadlineAt(beat: number): number {
    const start = this.barStart(beat);
    for (let k = this.beatsPerBar - 1; k >= 0; k--) {
      if (this.phases[k] === "review") return this.deadlineAt(start + k);
    }
    return this.dueAt(start + this.beatsPerBar);
  }

  /**
   * A tempo change that lands on a later downbeat, if one is scheduled after `beat`.
   *
   * @param beat A beat_index.
   * @returns The next segment starting after `beat`, or `undefined`.
   */
  pendingChange(beat: number): TimelineSegment | undefined {
    return this.segments.find((s) => s.beat > beat);
  }

  /**
   * Schedules a tempo change at the first downbeat after `currentBeat`. Beats up to that
   * downbeat keep their times; beat_index stays continuous.
   *
   * @param tempoBpm The new tempo.
   * @param currentBeat The latest beat already due or published.
   * @returns A new timeline.
   * @throws {RangeError} When the tempo is out of range.
   */
  withTempo(tempoBpm: number, currentBeat: number): Timeline {
    assertTempo(tempoBpm);
    assertBeat(currentBeat, "currentBeat");
    const at = this.barStart(currentBeat) + this.beatsPerBar;
    const kept = this.segments.filter((s) => s.beat < at);
    const base = kept.length > 0 ? kept : [this.segments[0]];
    return this.#withSegments([...base, { beat: at, at: this.dueAt(at), tempoBpm }]);
  }

  /**
   * Drops tempo segments wholly before `beat` (keeps memory bounded for long runs).
   *
   * @param beat The earliest beat still of interest.
   * @returns A new timeline answering the same for `beat` and later.
   */
  trimBefore(beat: number): Timeline {
    const s = this.#segmentForBeat(beat);
    const i = this.segments.indexOf(s);
    return i <= 0 ? this : this.#withSegments(this.segments.slice(i));
  }

  /**
   * The window id of a beat's bar.
   *
   * @param clusterId The cluster.
   * @param beat A beat_index.
   * @returns The window id of the bar holding the beat.
   */
  windowId(clusterId: string, beat: number): Promise<string> {
    return cachedWindowId(clusterId, this.barStart(beat), this.epoch);
  }

  /**
   * Builds the BeatFrame for a beat, exactly as pulse publishes it.
   *
   * @param clusterId The cluster.
   * @param beat A beat_index (≥ 0).
   * @param hlc The frame's HLC stamp.
   * @param window The window id if already known (saves a digest).
   * @returns The frame.
   */
  async frame(clusterId: string, beat: number, hlc: string, window?: string): Promise<BeatFrame> {
    return this.frameWithWindow(
      clusterId,
      beat,
      hlc,
      window ?? await this.windowId(clusterId, beat),
    );
  }

  /**
   * Builds the BeatFrame for a beat synchronously, from its bar's window id (for hot paths that
   * derive window ids ahead of time).
   *
   * @param clusterId The cluster.
   * @param beat A beat_index (≥ 0).
   * @param hlc The frame's HLC stamp.
   * @param window The window id of the beat's bar.
   * @returns The frame.
   */
  frameWithWindow(clusterId: string, beat: number, hlc: string, window: string): BeatFrame {
    const frame: BeatFrame = {
      type: "backbeat.beatframe.v1",
      cluster_id: clusterId,
      beat_index: beat,
      downbeat: this.isDownbeat(beat),
      phase: this.phaseOf(beat),
      hlc,
      deadline_at: formatInstant(this.deadlineAt(beat)),
      tempo_bpm: this.tempoAt(beat),
      window_id: window,
      beats_per_bar: this.beatsPerBar,
    };
    if (this.epoch > 0) frame.epoch = this.epoch;
    // The contract's next_tempo_bpm takes effect at the next downbeat: announce only a change
    // that lands there, never one further out.
    const next = this.pendingChange(beat);
    if (
      next && next.tempoBpm !== frame.tempo_bpm &&
      next.beat === this.barStart(beat) + this.beatsPerBar
    ) {
      frame.next_tempo_bpm = next.tempoBpm;
    }
    return frame;
  }
}

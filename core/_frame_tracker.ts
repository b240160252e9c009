// Infers the cluster's schedule from the frames seen on the beat subject. Pulse followers (to
// continue the timeline on takeover), the SDK (synthetic beats, window-id look-ahead) and reverb
// (window boundaries, drift) all read frames through one of these.
import type { BeatFrame, Phase } from "./_messages.ts";
import { windowId } from "./_window_id.ts";
import { DEFAULT_BEATS_PER_BAR, defaultPhases, parseInstant, Timeline } from "./_timeline.ts";

/** Most beats in a bar the contract allows. */
const MAX_BEATS_PER_BAR = 64;
/** Consecutive agreeing frames that move a tracker off a timeline that cannot explain them. */
const REALIGN_RUN = 3;
/** Candidate timelines remembered at once (each a short run of frames). */
const MAX_CANDIDATE_RUNS = 8;

// Whether frame b follows frame a on one timeline: the next few beats, the same epoch and tempo,
// arriving about when that tempo says.
function agrees(
  a: { frame: BeatFrame; arrival: number },
  b: BeatFrame,
  arrival: number,
): boolean {
  const steps = b.beat_index - a.frame.beat_index;
  if (steps < 1 || steps > 4) return false;
  if ((a.frame.epoch ?? 0) !== (b.epoch ?? 0) || a.frame.tempo_bpm !== b.tempo_bpm) return false;
  const period = 60_000 / b.tempo_bpm;
  return Math.abs(arrival - a.arrival - steps * period) <= Math.max(25, period / 4);
}

/** How a frame changed what the tracker knows. */
export const FrameStatus = {
  /** A beat later than any seen: tracked. */
  New: "new",
  /** At or below the latest beat seen (a duplicate, or a deposed pulse's frame): not tracked. */
  Stale: "stale",
  /**
   * The tracker forgot the timeline it followed and follows this frame's: a newer epoch (verified
   * or confirmed), a run of frames that agree against it, or, for v1.0 pulses without epochs, two
   * bars of consecutive beats below the latest.
   */
  Restart: "restart",
  /** A `deadline_at` no clock can read (the schema admits leap seconds): not tracked. */
  Unreadable: "unreadable",
  /** An index or tempo the tracked timeline cannot explain (a forged jump): not followed. */
  Implausible: "implausible",
  /** A frame of an older timeline epoch (a deposed pulse of a timeline since replaced). */
  OldEpoch: "old_epoch",
  /** The first unverified frame of a newer epoch: followed once a second frame agrees. */
  Pending: "pending",
} as const;
/** One of {@linkcode FrameStatus}'s values. */
export type FrameStatus = typeof FrameStatus[keyof typeof FrameStatus];

/** What {@linkcode FrameTracker.observe} found. */
export interface FrameObservation {
  /** How the frame was taken. */
  readonly status: FrameStatus;
  /** The bar grid moved (a new beats-per-bar, or a downbeat off the grid); only for `new`. */
  readonly barChanged: boolean;
  /** Position of the frame's beat in its bar (0 for a downbeat); only for `new`/`restart`. */
  readonly position: number;
}

/**
 * Where a tracked timeline is pinned in time:
 * - `"arrival"`: the latest beat was due when its frame arrived (a listener's view, which
 *   includes the delivery delay);
 * - `"deadline"`: from the frame's `deadline_at`, which pulse writes to the microsecond, so the
 *   timeline is pulse's own schedule;
 * - `{ beat, at }`: the given beat is due at the given instant (a successor continuing the beats).
 */
export type TimelineAnchor = "arrival" | "deadline" | {
  readonly beat: number;
  readonly at: number;
};

/** Options of {@linkcode FrameTracker.observe}. */
export interface ObserveOptions {
  /** The frame's signature was verified against a trusted pulse key. @default {false} */
  verified?: boolean;
}

/** Options of {@linkcode FrameTracker}. */
export interface FrameTrackerOptions {
  /** Beats per bar assumed until frames tell (v1.0 frames without two downbeats seen). @default {4} */
  beatsPerBarHint?: number;
}

/** The latest frame tracked, with its arrival. */
export interface TrackedFrame {
  /** The frame. */
  readonly frame: BeatFrame;
  /** When it arrived, on the observer's clock (epoch ms). */
  readonly arrival: number;
  /** When its beat was due by its `deadline_at` (epoch ms). */
  readonly due: number;
}

/**
 * Follows the frames of one cluster and answers what they imply: the latest beat, the bar grid
 * (beats per bar, a downbeat), the learned phase of each bar position, the tempo and a tempo
 * change the frames announced, and a {@linkcode Timeline} anchored on arrival, on `deadline_at`,
 * or on a given instant.
 *
 * Frames must come through the frame gate (`decodeBeatFrame()`); the tracker checks order, not
 * shape.
 *
 * @example Learn a timeline from two frames
 * ```ts ignore
 * import { FrameTracker, Timeline } from "./mod.ts";
 * const source = new Timeline({ originTime: 0, tempoBpm: 120 });
 * const tracker = new FrameTracker();
 * tracker.observe(await source.frame("dev", 0, "0000000000000000"), 3);
 * tracker.observe(await source.frame("dev", 1, "0000000000000001"), 503);
 * console.log(tracker.timeline("deadline")?.dueAt(4)); // 2000
 * console.log(tracker.timeline("arrival")?.dueAt(4)); // 2003
 * ```
 */
export class FrameTracker {
  readonly #hint: number;
  #last: TrackedFrame | undefined;
  #lastDownbeat: number | undefined;
  #previousDownbeat: number | undefined;
  #beatsPerBar: number;
  #barOrigin: number | undefined;
  #phases: Phase[];
  #deadline: Timeline | undefined;
  #arrivalTimeline: Timeline | undefined;
  #lowRun: { last: number; count: number } | undefined;
  #restarts = 0;
  #stale = 0;
  #implausible = 0;
  #oldEpoch = 0;
  #candidates: { frame: BeatFrame; arrival: number }[][] = [];

  /**
   * Creates a tracker that has seen nothing.
   *
   * @param options The beats-per-bar hint.
   * @throws {RangeError} When the hint is not an integer from 1 to 64.
   */
  constructor(options: FrameTrackerOptions = {}) {
    const hint = options.beatsPerBarHint ?? DEFAULT_BEATS_PER_BAR;
    if (!(Number.isInteger(hint) && hint >= 1 && hint <= MAX_BEATS_PER_BAR)) {
      throw new RangeError(`Invalid beatsPerBarHint ${hint}: expected an integer from 1 to 64`);
    }
    this.#hint = hint;
    this.#beatsPerBar = hint;
    this.#phases = defaultPhases(hint);
  }

  /** The latest frame tracked. */
  get last(): TrackedFrame | undefined {
    return this.#last;
  }

  /** beat_index of the latest downbeat seen. */
  get lastDownbeat(): number | undefined {
    return this.#lastDownbeat;
  }

  /** Beats in a bar: from the frames, else the spacing of two downbeats, else the hint. */
  get beatsPerBar(): number {
    return this.#beatsPerBar;
  }

  /** A beat_index known to be a downbeat, once one was seen (or located). */
  get barOrigin(): number | undefined {
    return this.#barOrigin;
  }

  /** The phase of each bar position, as the frames showed them (defaults where unseen). */
  get phases(): readonly Phase[] {
    return this.#phases;
  }

  /** The tempo of the latest frame. */
  get tempoBpm(): number | undefined {
    return this.#last?.frame.tempo_bpm;
  }

  /** The tempo the latest frame announced for the next downbeat, if it differs. */
  get announcedTempoBpm(): number | undefined {
    const f = this.#last?.frame;
    return f?.next_tempo_bpm !== undefined && f.next_tempo_bpm !== f.tempo_bpm
      ? f.next_tempo_bpm
      : undefined;
  }

  /** Frames refused as stale so far. */
  get staleFrames(): number {
    return this.#stale;
  }

  /** Frames refused as implausible so far. */
  get implausibleFrames(): number {
    return this.#implausible;
  }

  /** Frames refused for an older epoch so far. */
  get oldEpochFrames(): number {
    return this.#oldEpoch;
  }

  /** The epoch of the timeline followed (0 before any frame, or for v1.0 pulses). */
  get epoch(): number {
    return this.#last?.frame.epoch ?? 0;
  }

  /** Timeline restarts followed so far (new epochs, legacy restarts, realignments). */
  get restarts(): number {
    return this.#restarts;
  }

  /**
   * Position of a beat in its bar on the tracked grid.
   *
   * @param beat A beat_index.
   * @returns 0 for a downbeat, up to `beatsPerBar - 1`.
   */
  positionInBar(beat: number): number {
    const m = (beat - (this.#barOrigin ?? 0)) % this.#beatsPerBar;
    return m < 0 ? m + this.#beatsPerBar : m;
  }

  /**
   * Takes a frame into account. Frames are untrusted: one that the tracked timeline cannot
   * explain (an index far from the beat due now, a tempo nobody announced) is `implausible` and not
   * followed, unless it is `verified` (signed by a trusted pulse key) or a short run of frames
   * agrees on it (a client that locked onto a bad first frame recovers). A frame of an older
   * epoch is refused; a newer epoch is followed once verified, or once two of its frames agree.
   *
   * @param frame A frame from the gate.
   * @param arrival When it arrived, on the observer's clock (epoch ms).
   * @param options Whether the frame's signature was verified.
   * @returns How it was taken.
   */
  observe(frame: BeatFrame, arrival: number, options: ObserveOptions = {}): FrameObservation {
    const deadline = parseInstant(frame.deadline_at);
    if (!Number.isFinite(deadline)) return this.#refuse("unreadable");
    const verified = options.verified ?? false;
    const beat = frame.beat_index;
    const epoch = frame.epoch ?? 0;
    const last = this.#last;
    let status: FrameStatus = "new";
    if (last !== undefined) {
      const lastEpoch = last.frame.epoch ?? 0;
      if (epoch < lastEpoch) return this.#refuse("old_epoch");
      if (epoch > lastEpoch) {
        // A new timeline: follow it once a pulse key vouches for it, or once a second frame of it
        // agrees with the first (within one beat), so one forged frame cannot restart anyone.
        if (!verified && !this.#confirmedBy(frame, arrival, 2)) return this.#refuse("pending");
        this.#restarts++;
        this.#forget();
        status = "restart";
      } else if (
        beat <= last.frame.beat_index && last.frame.beat_index - beat > 2 * this.#beatsPerBar + 2
      ) {
        // Far below the latest: either a forged low frame, or the latest was a forged high one.
        // Only a run of agreeing frames (or a verified one) moves the tracker.
        if (!verified && !this.#confirmedBy(frame, arrival, REALIGN_RUN)) {
          return this.#refuse("implausible");
        }
        this.#restarts++;
        this.#forget();
        status = "restart";
      } else if (beat <= last.frame.beat_index) {
        // A deposed pulse sends at most a beat or so of old frames. For timelines without epochs
        // (v1.0 pulses), two bars of consecutive beats below the highest seen mean the timeline
        // was restarted: follow the new one.
        const run = this.#lowRun;
        this.#lowRun = run !== undefined && beat === run.last + 1
          ? { last: beat, count: run.count + 1 }
          : { last: beat, count: 1 };
        const bpb = frame.beats_per_bar ?? this.#beatsPerBar;
        if (epoch !== 0 || this.#lowRun.count < 2 * bpb) {
          this.#stale++;
          return { status: "stale", barChanged: false, position: 0 };
        }
        this.#restarts++;
        this.#forget();
        status = "restart";
      } else if (!verified && !this.#explains(frame, arrival)) {
        if (!this.#confirmedBy(frame, arrival, REALIGN_RUN)) return this.#refuse("implausible");
        this.#restarts++;
        this.#forget();
        status = "restart";
      }
    }
    this.#lowRun = undefined;
    this.#candidates = [];
    const barChanged = this.#learnGrid(frame);
    const pos = this.positionInBar(beat);
    this.#learnPhase(pos, frame.phase);
    // deadline_at ends this beat's phase: step back over the phase's remaining beats.
    let k = pos + 1;
    while (k < this.#beatsPerBar && this.#phases[k] === this.#phases[pos]) k++;
    const due = deadline - (k - pos) * (60_000 / frame.tempo_bpm);
    this.#last = { frame, arrival, due };
    this.#arrivalTimeline = undefined;
    this.#refreshDeadlineTimeline(frame, due, barChanged);
    return { status, barChanged: barChanged && status === "new", position: pos };
  }

  #refuse(status: "unreadable" | "old_epoch" | "pending" | "implausible"): FrameObservation {
    if (status === "implausible") this.#implausible++;
    else if (status === "old_epoch") this.#oldEpoch++;
    return { status, barChanged: false, position: 0 };
  }

  // Whether the tracked timeline explains a later frame: its index is about the beat due at its
  // arrival, and its tempo is the one in force or announced.
  #explains(frame: BeatFrame, arrival: number): boolean {
    // Built once per tracked frame, not once per check: every client checks every frame.
    const t = this.#arrivalTimeline ??= this.timeline("arrival")!;
    const beat = frame.beat_index;
    if (t.tempoAt(beat) !== frame.tempo_bpm) return false;
    const period = t.periodAt(beat);
    // Delivery jitter is a few ms on a LAN, more on a loaded host: allow 250 ms of it, and two
    // beats for pulses whose clocks disagree a little.
    const slack = 2 + Math.ceil(250 / period);
    return Math.abs(beat - t.beatAt(arrival)) <= slack;
  }

  // Keeps a few short runs of frames the timeline could not explain, each run one candidate
  // timeline (junk between real frames starts its own run rather than breaking theirs); true
  // when the frame makes some run `need` frames long, each agreeing with the one before.
  #confirmedBy(frame: BeatFrame, arrival: number, need: number): boolean {
    const runs = this.#candidates;
    let run = runs.find((r) => agrees(r[r.length - 1], frame, arrival));
    if (run === undefined) {
      run = [];
      runs.push(run);
      if (runs.length > MAX_CANDIDATE_RUNS) runs.shift();
    }
    run.push({ frame, arrival });
    if (run.length > need) run.splice(0, run.length - need);
    return run.length >= need;
  }

  /**
   * Locates the bar grid from the latest frame's window id when no downbeat has been seen (at
   * most 64 digests), so a tracker that joined mid-bar knows where bars start.
   *
   * @returns The downbeat found, or `undefined`.
   */
  async locateBar(): Promise<number | undefined> {
    if (this.#barOrigin !== undefined) return this.#barOrigin;
    const f = this.#last?.frame;
    if (f === undefined) return undefined;
    const low = Math.max(0, f.beat_index - Math.min(this.#beatsPerBar, MAX_BEATS_PER_BAR) + 1);
    const want = f.window_id.toLowerCase();
    for (let d = f.beat_index; d >= low; d--) {
      if (await windowId(f.cluster_id, d, f.epoch ?? 0) === want) {
        // Only if nothing newer was learned meanwhile.
        if (this.#barOrigin === undefined && this.#last?.frame === f) {
          this.#barOrigin = d;
          this.#phases = defaultPhases(this.#beatsPerBar);
          this.#learnPhase(this.positionInBar(f.beat_index), f.phase);
          this.#deadline = undefined;
          this.#arrivalTimeline = undefined;
        }
        return this.#barOrigin;
      }
    }
    return undefined;
  }

  /**
   * The schedule the frames imply, with the tempo change they announced.
   *
   * @param anchor Where the timeline is pinned in time. @default {"deadline"}
   * @returns The timeline, or `undefined` before the first frame.
   */
  timeline(anchor: TimelineAnchor = "deadline"): Timeline | undefined {
    const last = this.#last;
    if (last === undefined) return undefined;
    if (anchor === "deadline") {
      this.#deadline ??= this.#build(last.frame.beat_index, last.due, last.frame);
      return this.#deadline;
    }
    if (anchor === "arrival") return this.#build(last.frame.beat_index, last.arrival, last.frame);
    return this.#build(anchor.beat, anchor.at, last.frame);
  }

  /** Forgets everything seen (the counters stay). */
  reset(): void {
    this.#forget();
    this.#lowRun = undefined;
  }

  #forget(): void {
    this.#candidates = [];
    this.#arrivalTimeline = undefined;
    this.#last = undefined;
    this.#lastDownbeat = undefined;
    this.#previousDownbeat = undefined;
    this.#barOrigin = undefined;
    this.#beatsPerBar = this.#hint;
    this.#phases = defaultPhases(this.#hint);
    this.#deadline = undefined;
  }

  // Beats per bar and the bar origin; true when the grid moved under an existing one.
  #learnGrid(frame: BeatFrame): boolean {
    const beat = frame.beat_index;
    const hadGrid = this.#last !== undefined;
    let changed = false;
    if (frame.downbeat) {
      if (this.#lastDownbeat !== undefined && beat > this.#lastDownbeat) {
        this.#previousDownbeat = this.#lastDownbeat;
      }
      this.#lastDownbeat = beat;
    }
    const spacing = this.#lastDownbeat !== undefined && this.#previousDownbeat !== undefined
      ? this.#lastDownbeat - this.#previousDownbeat
      : undefined;
    const bpb = frame.beats_per_bar ??
      (spacing !== undefined && spacing >= 1 && spacing <= MAX_BEATS_PER_BAR
        ? spacing
        : this.#beatsPerBar);
    if (bpb !== this.#beatsPerBar) {
      // The bar shape changed (pulse reconfigured): learned phases no longer apply.
      this.#beatsPerBar = bpb;
      this.#phases = defaultPhases(bpb);
      changed = hadGrid;
    }
    if (frame.downbeat && (this.#barOrigin === undefined || this.positionInBar(beat) !== 0)) {
      changed ||= hadGrid && this.#barOrigin !== undefined;
      this.#barOrigin = beat;
      // Phases seen before were placed on a guessed grid: learn them again on this one.
      this.#phases = defaultPhases(this.#beatsPerBar);
      this.#deadline = undefined;
    }
    if (changed) this.#deadline = undefined;
    return changed;
  }

  // A phase is learned only where the bar grid is known: a position counted from a guessed
  // origin would put it on the wrong beat of the bar.
  #learnPhase(pos: number, phase: Phase): void {
    if (this.#barOrigin === undefined || this.#phases[pos] === phase) return;
    this.#phases = [...this.#phases];
    this.#phases[pos] = phase;
    this.#deadline = undefined;
  }

  // Keeps the deadline-anchored timeline while frames agree with it, so its identity (and what
  // callers derived from it) is stable; rebuilds on a tempo, grid or schedule change.
  #refreshDeadlineTimeline(frame: BeatFrame, due: number, gridChanged: boolean): void {
    const t = this.#deadline;
    if (t === undefined || gridChanged) {
      this.#deadline = undefined;
      return;
    }
    const beat = frame.beat_index;
    const period = 60_000 / frame.tempo_bpm;
    const next = this.announcedTempoBpm;
    if (
      t.tempoAt(beat) !== frame.tempo_bpm ||
      Math.abs(t.dueAt(beat) - due) > Math.max(2, period * 0.02) ||
      (next !== undefined && t.pendingChange(beat)?.tempoBpm !== next)
    ) {
      this.#deadline = undefined;
    }
  }

  #build(beat: number, at: number, frame: BeatFrame): Timeline {
    let t = new Timeline({
      originTime: at,
      originBeat: beat,
      tempoBpm: frame.tempo_bpm,
      beatsPerBar: this.#beatsPerBar,
      phases: this.#phases,
      barOrigin: this.#barOrigin ?? 0,
      epoch: frame.epoch ?? 0,
    });
    const next = this.announcedTempoBpm;
    // The change lands on the first downbeat after the frame that announced it, wherever the
    // timeline is anchored.
    if (next !== undefined) t = t.withTempo(next, frame.beat_index);
    return t;
  }
}

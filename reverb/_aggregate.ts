// Aggregation: follows the beat subject through the core FrameTracker (windows, phases,
// deadlines), attributes accepted claims to windows, and closes each window `grace` after its end
// into a BarReport (built by buildBarReport). State is bounded: a few open windows, at most
// `maxAgents` agent records, agents silent for `evictAfterBars` bars are evicted.
//
// Frames are untrusted. Only frames the tracker takes as `new` or `restart` move windows, and no
// window is reported from a timeline nobody vouched for: a verified frame (signed by a pulse
// key), or a second frame that agrees with the first. One forged frame, even the very first one
// reverb sees, therefore never publishes a report. Skipped windows are counted by the time that
// passed, never by how far an index jumped.

import {
  type BarReport,
  type BeatFrame,
  cachedWindowId,
  type ClaimState,
  type Clock,
  DEFAULT_TEMPO_BPM,
  FrameStatus,
  FrameTracker,
  type KeyEntry,
  knownWindowId,
  type Phase,
  type StatusClaim,
  type Timeline,
} from "../core/mod.ts";
import type { RejectReason } from "./_intake.ts";
import {
  AgentMark,
  type BarReportInput,
  buildBarReport,
  newWindowTally,
  type SilentAgent,
  type WindowTally,
} from "./_report.ts";

/** Default for {@linkcode BarAggregatorOptions.maxAgents}. */
export const DEFAULT_MAX_AGENTS = 10_000;
/** Default for {@linkcode BarAggregatorOptions.evictAfterBars}. */
export const DEFAULT_EVICT_AFTER_BARS = 16;
/** Default for {@linkcode BarAggregatorOptions.maxIssues}: the schema's cap. */
export const DEFAULT_MAX_ISSUES = 100;
/** Upper bound of the automatic grace period (a quarter beat), in ms. */
export const MAX_AUTO_GRACE_MS = 2_000;
/** Windows closed in one go after a stall; older overdue windows are skipped. */
export const MAX_CATCHUP_BARS = 8;
/** Windows kept open at once (the current bar, the one in grace, a little slack). */
export const MAX_OPEN_WINDOWS = 8;

/** How {@linkcode BarAggregator.observeBeat} took a frame: the tracker's verdict, or `ignored`. */
export type BeatStatus = FrameStatus | "ignored";

/** What {@linkcode BarAggregator.observeBeat} returns. */
export interface BeatResult {
  /** The tracker's verdict (`new` and `restart` move windows), or `ignored` (another cluster's, or
   * after stop). */
  readonly status: BeatStatus;
  /** What was observed, for `new` and `restart`. */
  readonly beat: BeatObservation | undefined;
}

/** Options of {@linkcode BarAggregator.observeBeat}. */
export interface ObserveBeatOptions {
  /** The frame's signature was verified against a pulse key. @default {false} */
  verified?: boolean;
}

/** What reverb saw of one beat frame. */
export interface BeatObservation {
  /** The beat. */
  beat_index: number;
  /** Its phase. */
  phase: Phase;
  /** Whether it opens a bar. */
  downbeat: boolean;
  /** Tempo in force. */
  tempo_bpm: number;
  /** Tempo announced for the next bar, if a change is pending. */
  next_tempo_bpm: number | undefined;
  /** Beats in a bar. */
  beats_per_bar: number;
  /** Position in the bar, 0 for the downbeat. */
  position: number;
  /** The bar's window id. */
  window_id: string;
  /** End of the beat's phase (RFC 3339). */
  deadline_at: string;
  /** Arrival minus announced schedule, ms (positive = behind). */
  drift_ms: number;
  /** Epoch ms of arrival. */
  arrival: number;
}

/** The latest claim of an agent, as `/api/v1/agents` shows it. */
export interface AgentView {
  /** The agent. */
  agent_id: string;
  /** Task of the latest claim. */
  task_id: string;
  /** State of the latest claim. */
  state: ClaimState;
  /** Beats left of the latest claim. */
  beats_left: number;
  /** Progress of the latest claim. */
  progress: number;
  /** Notes of the latest claim. */
  notes: string;
  /** Beat of the latest claim. */
  beat_index: number;
  /** HLC of the latest claim. */
  hlc: string;
  /** When the latest claim arrived (RFC 3339). */
  last_seen: string;
  /** Key that signed the latest claim, or `null` when unsigned. */
  key_id: string | null;
  /** Bars closed in a row without a claim from the agent. */
  silent_bars: number;
  /** Claims accepted from the agent since it is tracked. */
  claims_accepted: number;
  /** Of those, claims whose window was already reported (they updated this view only). */
  claims_late: number;
}

/** Facts about a closed window, alongside its report. */
export interface WindowInfo {
  /** The bar's downbeat index. */
  bar: number;
  /** Epoch ms at which the window began (its downbeat's due time). */
  windowStart: number;
  /** Epoch ms at which the window ended (the next downbeat's due time). */
  windowEnd: number;
  /** Epoch ms at which the report was due (end plus grace). */
  closeAt: number;
  /** Beat frames observed in the window. */
  beatsObserved: number;
}

/** Options of {@linkcode BarAggregator}. */
export interface BarAggregatorOptions {
  /** The cluster. */
  clusterId: string;
  /** Time source and timers. */
  clock: Clock;
  /** Receives each window's report, in window order. */
  onReport: (report: BarReport, info: WindowInfo) => void;
  /**
   * Wait after a window's end before closing it, in ms; `undefined` means a quarter beat, at
   * most 2000 ms.
   * @default {undefined}
   */
  graceMs?: number;
  /** Agents tracked at most; the oldest is dropped beyond. @default {10000} */
  maxAgents?: number;
  /** Bars of silence after which an agent is evicted. @default {16} */
  evictAfterBars?: number;
  /** Issues per report at most. @default {100} */
  maxIssues?: number;
  /**
   * Called when an agent is evicted.
   * @default {undefined}
   */
  onEvict?: (agentId: string) => void;
  /**
   * Called when windows are not reported: skipped after a stall (`skipped`), or dropped without
   * a beat at a restart or a grid change (`dropped`).
   * @default {undefined}
   */
  onSkip?: (kind: "skipped" | "dropped", windows: number, fromBeat: number) => void;
}

interface AgentRecord {
  claim: StatusClaim;
  lastSeen: number;
  firstSeen: number;
  keyId: string | undefined;
  helping: boolean;
  silentBars: number;
  accepted: number;
  late: number;
}

function round3(x: number): number {
  return Math.round(x * 1000) / 1000;
}

/**
 * Windows, deadlines and per-window tallies. Feed it beat frames and accepted or rejected
 * claims; it calls `onReport` once per window, `grace` after the window ends.
 *
 * @example Aggregate one bar on a manual clock
 * ```ts ignore
 * import { HybridLogicalClock, ManualClock, Timeline } from "../core/mod.ts";
 * import { BarAggregator } from "./_aggregate.ts";
 * const clock = new ManualClock(0);
 * const agg = new BarAggregator({
 *   clusterId: "dev",
 *   clock,
 *   graceMs: 100,
 *   onReport: (r) => console.log(r.from_beat, r.to_beat, r.agents_reporting),
 * });
 * const timeline = new Timeline({ originTime: 0, tempoBpm: 60 });
 * const hlc = new HybridLogicalClock({ clock: () => clock.now() });
 * agg.observeBeat(await timeline.frame("dev", 0, hlc.now()), 0);
 * agg.observeBeat(await timeline.frame("dev", 1, hlc.now()), 1_000); // agrees: confirmed
 * await clock.advance(4_100); // the bar ends at 4000, the report follows 100 ms later
 * await agg.settled();
 * agg.stop();
 * ```
 */
export class BarAggregator {
  readonly #clusterId: string;
  readonly #clock: Clock;
  readonly #onReport: BarAggregatorOptions["onReport"];
  readonly #onEvict: (agentId: string) => void;
  readonly #onSkip: NonNullable<BarAggregatorOptions["onSkip"]>;
  readonly #grace: number | undefined;
  readonly #maxAgents: number;
  readonly #evictAfter: number;
  readonly #maxIssues: number;
  readonly #tracker = new FrameTracker();
  // The timeline the close timer is armed on: the tracker keeps the same object while frames
  // agree with it, so a new object means "rearm".
  #timeline: Timeline | undefined;
  // Whether the followed timeline is vouched for (a verified frame, or two that agree); windows
  // of one that is not are tallied but never closed.
  #confirmed = false;
  // Bumped whenever the followed timeline is replaced, so late async work can tell.
  #generation = 0;
  // When windows were last closed (or closing began): skips are bounded by the time since.
  #lastCloseAt = 0;
  #lastBeat: BeatObservation | undefined;
  #nextBar: number | undefined;
  #windows = new Map<number, WindowTally>();
  #agents = new Map<string, AgentRecord>();
  #cancel: (() => void) | undefined;
  #chain: Promise<void> = Promise.resolve();
  #stopped = false;
  #effBeat = 0;
  #skippedBars = 0;
  #droppedWindows = 0;
  #lateClaims = 0;
  #evicted = 0;

  /**
   * Creates an aggregator; it starts closing windows once it follows a vouched-for timeline and
   * has seen a downbeat.
   *
   * @param options Cluster, clock, report callback and limits.
   * @throws {RangeError} On a negative grace or a non-positive limit.
   */
  constructor(options: BarAggregatorOptions) {
    this.#clusterId = options.clusterId;
    this.#clock = options.clock;
    this.#onReport = options.onReport;
    this.#onEvict = options.onEvict ?? (() => {});
    this.#onSkip = options.onSkip ?? (() => {});
    this.#grace = options.graceMs;
    if (this.#grace !== undefined && !(this.#grace >= 0 && Number.isFinite(this.#grace))) {
      throw new RangeError(`Invalid graceMs ${options.graceMs}: expected a number >= 0`);
    }
    this.#maxAgents = options.maxAgents ?? DEFAULT_MAX_AGENTS;
    this.#evictAfter = options.evictAfterBars ?? DEFAULT_EVICT_AFTER_BARS;
    this.#maxIssues = options.maxIssues ?? DEFAULT_MAX_ISSUES;
    for (
      const [name, v] of [
        ["maxAgents", this.#maxAgents],
        ["evictAfterBars", this.#evictAfter],
        ["maxIssues", this.#maxIssues],
      ] as const
    ) {
      if (!(Number.isInteger(v) && v > 0)) {
        throw new RangeError(`Invalid ${name} ${v}: expected an integer > 0`);
      }
    }
  }

  /** The schedule learned from the beat subject, once a frame has been seen. */
  get timeline(): Timeline | undefined {
    return this.#timeline;
  }

  /** Whether the followed timeline is vouched for (windows close on it). */
  get confirmed(): boolean {
    return this.#confirmed;
  }

  /** The epoch of the followed timeline (0 before any frame, or for v1.0 pulses). */
  get epoch(): number {
    return this.#tracker.epoch;
  }

  /** The latest beat observed. */
  get lastBeat(): BeatObservation | undefined {
    return this.#lastBeat;
  }

  /** The downbeat index of the next window to close, once known. */
  get nextBar(): number | undefined {
    return this.#nextBar;
  }

  /** Beat period in ms at the latest beat (the default tempo's before any frame). */
  get periodMs(): number {
    return this.#timeline && this.#lastBeat
      ? this.#timeline.periodAt(this.#lastBeat.beat_index)
      : 60_000 / DEFAULT_TEMPO_BPM;
  }

  /** Agents tracked. */
  get agentCount(): number {
    return this.#agents.size;
  }

  /** Frames ignored because their beat_index was not above the highest seen. */
  get staleFrames(): number {
    return this.#tracker.staleFrames;
  }

  /** Times the followed timeline was replaced (a new epoch, a restart, a realignment). */
  get timelineRestarts(): number {
    return this.#tracker.restarts;
  }

  /**
   * Windows skipped after a stall longer than {@linkcode MAX_CATCHUP_BARS} bars: at most the
   * bars the time that passed holds, whatever a frame's index says.
   */
  get skippedBars(): number {
    return this.#skippedBars;
  }

  /** Windows dropped without a beat when the timeline restarted or the bar grid changed. */
  get droppedWindows(): number {
    return this.#droppedWindows;
  }

  /** Accepted claims whose window was already reported. */
  get lateClaims(): number {
    return this.#lateClaims;
  }

  /** Agents evicted so far. */
  get evicted(): number {
    return this.#evicted;
  }

  /**
   * Whether beats have stopped: no frame for more than two beat periods since the last one.
   *
   * @param now Epoch ms.
   * @returns True when beats are overdue (pulse leaderless or unreachable).
   */
  isLeaderless(now: number): boolean {
    const last = this.#lastBeat;
    if (last === undefined) return true;
    return now - last.arrival > 2 * this.periodMs + this.#graceFor(this.periodMs);
  }

  /**
   * The grace applied after a window's end.
   *
   * @returns Milliseconds.
   */
  get graceMs(): number {
    return this.#graceFor(this.periodMs);
  }

  #graceFor(period: number): number {
    return this.#grace ?? Math.min(MAX_AUTO_GRACE_MS, period / 4);
  }

  /**
   * Takes a beat frame into account through the frame tracker. Only `new` and `restart` frames
   * move windows; the others (stale, implausible, an old epoch, a first unverified frame of a new
   * epoch, an unreadable deadline) are returned with their status and change nothing here. On a
   * restart the old timeline's open windows that saw a beat are reported, and the new timeline's
   * windows are reported from its first bar.
   *
   * @param frame A valid beat frame.
   * @param arrival Epoch ms at which it arrived.
   * @param options Whether its signature was verified.
   * @returns The tracker's verdict and, when taken, the observation.
   */
  observeBeat(frame: BeatFrame, arrival: number, options: ObserveBeatOptions = {}): BeatResult {
    if (this.#stopped || frame.cluster_id !== this.#clusterId) {
      return { status: "ignored", beat: undefined };
    }
    const verified = options.verified ?? false;
    let first = this.#tracker.last === undefined;
    const old = this.#timeline;
    const wasConfirmed = this.#confirmed;
    let seen = this.#tracker.observe(frame, arrival, { verified });
    if (
      !first && !this.#confirmed &&
      (seen.status === FrameStatus.Implausible || seen.status === FrameStatus.OldEpoch)
    ) {
      // The timeline followed rests on one frame nobody vouched for (a forged first frame, say
      // with a huge epoch or index): it may not refuse the frames after it. Start over from this
      // one, which needs a second agreeing frame in turn.
      this.#tracker.reset();
      this.#drop(this.#windows.size > 0 ? Math.min(...this.#windows.keys()) : 0);
      this.#nextBar = undefined;
      this.#lastBeat = undefined;
      this.#timeline = undefined;
      first = true;
      seen = this.#tracker.observe(frame, arrival, { verified });
    }
    if (seen.status !== FrameStatus.New && seen.status !== FrameStatus.Restart) {
      return { status: seen.status, beat: undefined };
    }
    const beat = frame.beat_index;
    let confirmedNow = false;
    let restarted = false;
    if (seen.status === FrameStatus.Restart) {
      // The old timeline's open windows: report those that saw a beat (a timeline that ends
      // mid-bar still had that bar), drop the rest, then follow the new one from scratch. A
      // restart is vouched for by construction: a verified frame, or a run of agreeing ones.
      if (old !== undefined && wasConfirmed) this.#closeOpen(old);
      else this.#drop(this.#windows.size > 0 ? Math.min(...this.#windows.keys()) : 0);
      this.#nextBar = undefined;
      this.#lastBeat = undefined;
      this.#generation++;
      this.#confirmed = true;
      confirmedNow = true;
      restarted = true;
    } else if (first) {
      // The very first frame: anyone could have sent it. Followed, but vouched for only when
      // verified; otherwise the next frame must agree with it.
      this.#confirmed = verified;
      confirmedNow = verified;
      this.#generation++;
    } else if (!this.#confirmed) {
      // The tracker took this frame as the next beat of the first one's timeline.
      this.#confirmed = true;
      confirmedNow = true;
    }
    if (seen.barChanged) {
      // The bar grid moved (pulse reconfigured): start over at the next downbeat seen.
      this.#drop(this.#nextBar ?? beat);
      this.#nextBar = frame.downbeat ? beat : undefined;
      this.#generation++;
    }
    const previous = this.#timeline;
    const t = this.#tracker.timeline("deadline")!;
    this.#timeline = t;
    let rearm = t !== previous || confirmedNow;
    if (
      seen.status === FrameStatus.New && this.#confirmed && !confirmedNow && old !== undefined &&
      this.#nextBar !== undefined &&
      t.barStart(beat) - this.#nextBar > MAX_OPEN_WINDOWS * t.beatsPerBar
    ) {
      // A jump far ahead on the same timeline (only a verified frame can make one): what was
      // open is reported, the windows in between never happened in time and are counted by
      // the time that passed; windows go on from the frame's bar.
      const from = this.#nextBar;
      this.#closeOpen(old);
      this.#countSkip(from, t.barStart(beat), t);
      this.#nextBar = t.barStart(beat);
      this.#lastCloseAt = this.#clock.now();
      this.#generation++;
      rearm = true;
    }
    if (this.#nextBar === undefined) {
      if (frame.downbeat) {
        this.#nextBar = beat;
        rearm = true;
      } else if (restarted) {
        // A new timeline joined mid-bar (its downbeat came before the frames that vouched for
        // it): its first window is reported too. Bars are taken as aligned to beat 0 (pulse's
        // grid) until the window id says where they start.
        this.#nextBar = t.barStart(beat);
        rearm = true;
        this.#locate(this.#generation, this.#nextBar);
      }
    }
    if (confirmedNow) this.#lastCloseAt = this.#clock.now();
    const due = this.#tracker.last!.due;
    const pos = seen.position;
    const obs: BeatObservation = {
      beat_index: beat,
      phase: frame.phase,
      downbeat: frame.downbeat,
      tempo_bpm: frame.tempo_bpm,
      next_tempo_bpm: frame.next_tempo_bpm,
      beats_per_bar: this.#tracker.beatsPerBar,
      position: pos,
      window_id: frame.window_id,
      deadline_at: frame.deadline_at,
      drift_ms: round3(arrival - due),
      arrival,
    };
    this.#lastBeat = obs;
    const win = this.#window(beat - pos);
    if (win !== undefined) {
      win.driftSum += arrival - due;
      win.beats++;
    }
    if (rearm) this.#arm();
    return { status: seen.status, beat: obs };
  }

  // Checks the guessed bar of a timeline that restarted mid-bar against the restart frame's
  // window id (at most 64 digests, in the report chain so reports stay in order), and moves the
  // windows onto the grid found, unless the timeline moved on meanwhile.
  #locate(generation: number, guess: number): void {
    const tracker = this.#tracker;
    this.#chain = this.#chain.then(async () => {
      try {
        const bar = await tracker.locateBar();
        if (bar === undefined || this.#stopped || generation !== this.#generation) return;
        // The tracker knows the grid now: the timeline it builds is placed on it.
        this.#timeline = tracker.timeline("deadline") ?? this.#timeline;
        if (bar !== guess && this.#nextBar === guess) {
          this.#drop(guess);
          this.#nextBar = bar;
        }
        this.#arm();
      } catch { /* no digest matched: the guessed grid stays */ }
    });
  }

  /**
   * Takes an accepted claim into account: in its own window while that is open; a claim whose
   * window was already reported is `late` (counted, shown in the window open at its arrival, and
   * it still updates the agent's state).
   *
   * @param claim The claim.
   * @param arrival Epoch ms at which it arrived.
   * @param key The key that signed it, if any.
   * @returns Whether the claim was late.
   */
  acceptClaim(claim: StatusClaim, arrival: number, key: KeyEntry | undefined): boolean {
    if (this.#stopped) return false;
    const id = claim.agent_id;
    let rec = this.#agents.get(id);
    if (rec === undefined) {
      if (this.#agents.size >= this.#maxAgents) {
        // Drop the oldest record (insertion order) to stay bounded.
        const oldest = this.#agents.keys().next().value as string;
        this.#agents.delete(oldest);
        this.#evicted++;
        this.#onEvict(oldest);
      }
      rec = {
        claim,
        lastSeen: arrival,
        firstSeen: arrival,
        keyId: undefined,
        helping: false,
        silentBars: 0,
        accepted: 0,
        late: 0,
      };
      this.#agents.set(id, rec);
    }
    rec.claim = claim;
    rec.lastSeen = arrival;
    rec.keyId = key?.keyId;
    rec.silentBars = 0;
    rec.accepted++;
    const state = claim.state;
    const placed = this.#placeClaim(claim.beat_index, arrival);
    if (placed.late) {
      this.#lateClaims++;
      rec.late++;
      if (placed.win !== undefined) this.#tally(placed.win, "late", id);
    }
    let win = placed.late ? undefined : placed.win;
    // Per-window tallies are bounded like the agent records: beyond maxAgents distinct agents in
    // one window, newcomers update their record only.
    if (win !== undefined && win.agents.size >= this.#maxAgents && !win.agents.has(id)) {
      win = undefined;
    }
    if (win === undefined) {
      if (state === "helping") rec.helping = true;
      else if (state === "completed") rec.helping = false;
      return placed.late;
    }
    let flags = (win.agents.get(id) ?? 0) | AgentMark.Reported;
    switch (state) {
      case "helping":
        rec.helping = true;
        break;
      case "failed":
      case "blocked":
        flags |= state === "failed" ? AgentMark.Failed : AgentMark.Blocked;
        win.notes.set(
          id,
          `reported ${state} on task ${claim.task_id} at beat ${claim.beat_index}${
            claim.notes ? `: ${claim.notes}` : ""
          }`,
        );
        break;
      case "completed":
        if (rec.helping) {
          flags |= AgentMark.Helped;
          rec.helping = false;
        }
        flags = this.#review(win, id, flags, arrival);
        break;
      case "reviewing":
        flags = this.#review(win, id, flags, arrival);
        break;
    }
    if (key !== undefined) win.keys.add(key);
    win.agents.set(id, flags);
    return false;
  }

  #review(win: WindowTally, id: string, flags: number, arrival: number): number {
    if (flags & AgentMark.OnTime) return flags;
    const deadline = this.#timeline!.reviewDeadlineAt(this.#effBeat);
    if (arrival <= deadline) return (flags | AgentMark.OnTime) & ~AgentMark.Late;
    if (!(flags & AgentMark.Late)) {
      win.notes.set(
        id,
        `review for beat ${this.#effBeat} arrived ${
          Math.round(arrival - deadline)
        } ms after the review deadline`,
      );
    }
    return flags | AgentMark.Late;
  }

  /**
   * Takes a rejected claim into account (counted in the window open at arrival).
   *
   * @param reason Why it was rejected.
   * @param agentId The claimed agent, when known.
   * @param arrival Epoch ms at which it arrived.
   * @param key The key it was signed with, when known and the reason is about the key.
   */
  rejectClaim(
    reason: RejectReason,
    agentId: string | undefined,
    arrival: number,
    key: KeyEntry | undefined,
  ): void {
    if (this.#stopped || this.#timeline === undefined) return;
    const win = this.#window(this.#timeline.barStart(this.#timeline.beatAt(arrival)));
    if (win === undefined) return;
    this.#tally(win, reason, agentId);
    if (reason === "key_not_valid" && key !== undefined && win.badKeys.size < 32) {
      win.badKeys.set(`${key.agentId}\u0000${key.keyId}`, key);
    }
  }

  #tally(win: WindowTally, reason: RejectReason, agentId: string | undefined): void {
    let tally = win.rejected.get(reason);
    if (tally === undefined) {
      tally = { count: 0, agents: [] };
      win.rejected.set(reason, tally);
    }
    tally.count++;
    if (agentId !== undefined && tally.agents.length < 5 && !tally.agents.includes(agentId)) {
      tally.agents.push(agentId);
    }
  }

  /**
   * The latest claim of every tracked agent, sorted by agent id.
   *
   * @param limit At most this many.
   * @returns The views.
   */
  agents(limit = Infinity): AgentView[] {
    const ids = [...this.#agents.keys()].sort();
    const out: AgentView[] = [];
    for (const id of ids) {
      if (out.length >= limit) break;
      const r = this.#agents.get(id)!;
      const c = r.claim;
      out.push({
        agent_id: id,
        task_id: c.task_id,
        state: c.state,
        beats_left: c.beats_left,
        progress: c.progress,
        notes: c.notes,
        beat_index: c.beat_index,
        hlc: c.hlc,
        last_seen: new Date(r.lastSeen).toISOString(),
        key_id: r.keyId ?? null,
        silent_bars: r.silentBars,
        claims_accepted: r.accepted,
        claims_late: r.late,
      });
    }
    return out;
  }

  /**
   * Resolves once every report of a closed window has been handed to `onReport`.
   *
   * @returns A promise.
   */
  settled(): Promise<void> {
    return this.#chain;
  }

  /** Stops the close timer; nothing is reported afterwards. Idempotent. */
  stop(): void {
    this.#stopped = true;
    this.#cancel?.();
    this.#cancel = undefined;
  }

  #window(bar: number): WindowTally | undefined {
    if (this.#nextBar === undefined || bar < this.#nextBar) return undefined;
    let win = this.#windows.get(bar);
    if (win === undefined) {
      if (this.#windows.size >= MAX_OPEN_WINDOWS) return undefined;
      win = newWindowTally();
      // Derived now, so the report rarely waits on a digest when the window closes.
      if (Number.isSafeInteger(bar) && bar >= 0) {
        cachedWindowId(this.#clusterId, bar, this.#timeline?.epoch ?? 0).catch(() => {});
      }
      this.#windows.set(bar, win);
    }
    return win;
  }

  // A claim counts in the window of its beat_index while that window is open; one for a window
  // already reported is late (tallied in the window open at its arrival); one for a beat more
  // than a bar ahead counts in the window open at its arrival. Sets #effBeat to the beat whose
  // review deadline applies.
  #placeClaim(beat: number, arrival: number): { win: WindowTally | undefined; late: boolean } {
    const t = this.#timeline;
    if (t === undefined || this.#nextBar === undefined) return { win: undefined, late: false };
    const now = t.beatAt(arrival);
    let b = beat;
    // Deadlines stay those of the claimed beat, unless it lies implausibly far ahead.
    if (b > now + t.beatsPerBar) b = this.#effBeat = now;
    else this.#effBeat = b;
    if (t.barStart(b) < this.#nextBar) return { win: this.#window(t.barStart(now)), late: true };
    return { win: this.#window(t.barStart(b)), late: false };
  }

  #closeAt(bar: number, t: Timeline = this.#timeline!): number {
    const end = bar + t.beatsPerBar;
    return t.dueAt(end) + this.#graceFor(t.periodAt(end - 1));
  }

  #arm(): void {
    this.#cancel?.();
    this.#cancel = undefined;
    const t = this.#timeline;
    const bar = this.#nextBar;
    if (this.#stopped || !this.#confirmed || t === undefined || bar === undefined) return;
    // At the end of the index space no later window can close: nothing to wait for.
    if (!Number.isSafeInteger(bar + 2 * t.beatsPerBar)) return;
    this.#cancel = this.#clock.schedule(this.#closeAt(bar), () => this.#closeDue());
  }

  #closeDue(): void {
    this.#cancel = undefined;
    if (this.#stopped) return;
    const t = this.#timeline!;
    const bpb = t.beatsPerBar;
    const now = this.#clock.now();
    let closed = 0;
    while (this.#nextBar !== undefined && this.#closeAt(this.#nextBar) <= now) {
      if (!Number.isSafeInteger(this.#nextBar + 2 * bpb)) {
        this.#drop(this.#nextBar);
        this.#nextBar = undefined;
        break;
      }
      if (closed >= MAX_CATCHUP_BARS) {
        // A long stall (a suspended process): skip to the bar in progress.
        const from = this.#nextBar;
        const current = t.barStart(t.beatAt(now));
        this.#countSkip(from, current, t);
        for (const bar of [...this.#windows.keys()]) if (bar < current) this.#windows.delete(bar);
        // A timeline that cannot reach the present (clamped at the end of the index space) is
        // not followed further: no timer that fires again at once.
        this.#nextBar = current > from ? current : undefined;
        break;
      }
      this.#finalize(this.#nextBar, t);
      this.#nextBar += bpb;
      closed++;
    }
    this.#lastCloseAt = now;
    this.#arm();
  }

  // Counts the windows from `from` to `to` as skipped: at most the bars the time since the last
  // close holds, never what an index says, and always a whole number.
  #countSkip(from: number, to: number, t: Timeline): void {
    const bpb = t.beatsPerBar;
    const barMs = Math.min(t.periodAt(from), t.periodAt(to)) * bpb;
    const jump = Math.max(0, Math.floor((to - from) / bpb));
    const byTime = Math.floor(Math.max(0, this.#clock.now() - this.#lastCloseAt) / barMs) + 1;
    const skipped = Math.min(jump, byTime);
    this.#skippedBars += skipped;
    if (skipped > 0) this.#notifySkip("skipped", skipped, from);
  }

  // Reports the open windows that saw a beat, in order, on the timeline they belong to; drops
  // (and counts) the rest.
  #closeOpen(t: Timeline): void {
    const bars = [...this.#windows.keys()].sort((a, b) => a - b);
    let dropped = 0;
    for (const bar of bars) {
      const w = this.#windows.get(bar)!;
      if (w.beats > 0 && this.#nextBar !== undefined && bar >= this.#nextBar) {
        this.#finalize(bar, t);
      } else {
        this.#windows.delete(bar);
        dropped++;
      }
    }
    if (dropped > 0) {
      this.#droppedWindows += dropped;
      this.#notifySkip("dropped", dropped, bars[0]);
    }
  }

  #drop(fromBeat: number): void {
    const n = this.#windows.size;
    this.#windows.clear();
    if (n === 0) return;
    this.#droppedWindows += n;
    this.#notifySkip("dropped", n, fromBeat);
  }

  #notifySkip(kind: "skipped" | "dropped", windows: number, fromBeat: number): void {
    try {
      this.#onSkip(kind, windows, fromBeat);
    } catch { /* a reporter's bug must not stop windows closing */ }
  }

  #finalize(bar: number, t: Timeline): void {
    const tally = this.#windows.get(bar);
    this.#windows.delete(bar);
    const bpb = t.beatsPerBar;
    if (!Number.isSafeInteger(bar + bpb - 1)) {
      // A window ending beyond 2^53 − 1 has no valid report (to_beat): counted, not reported.
      this.#droppedWindows++;
      this.#notifySkip("dropped", 1, bar);
      return;
    }
    const windowEnd = t.dueAt(bar + bpb);
    const info: WindowInfo = {
      bar,
      windowStart: t.dueAt(bar),
      windowEnd,
      closeAt: this.#closeAt(bar, t),
      beatsObserved: tally?.beats ?? 0,
    };
    const input: Omit<BarReportInput, "windowId"> = {
      fromBeat: bar,
      beatsPerBar: bpb,
      windowEnd,
      barMs: windowEnd - t.dueAt(bar),
      periodMs: t.periodAt(bar),
      tally,
      silent: this.#countSilence(tally, t.dueAt(bar), windowEnd),
      maxIssues: this.#maxIssues,
    };
    const epoch = t.epoch;
    const known = knownWindowId(this.#clusterId, bar, epoch);
    this.#chain = this.#chain.then(async () => {
      // A throwing onReport must neither break the chain for later windows nor become an
      // unhandled rejection (which ends a Deno process).
      try {
        // Derived, never copied from a frame: whoever can publish on the beat subject must not
        // choose the id reports (and their history) are keyed by. The epoch is part of it, so a
        // new timeline never reuses an id.
        const windowId = known ?? await cachedWindowId(this.#clusterId, bar, epoch);
        this.#onReport(buildBarReport({ ...input, windowId }), info);
      } catch { /* the reporter's bug; later windows still report */ }
    });
  }

  // Counts a closed window's silence per agent and evicts agents silent too long; returns the
  // agents to report as silent (the first window of a silence, unless their task completed). An
  // agent heard during the window (a late claim, one for a later bar) is not silent.
  #countSilence(
    tally: WindowTally | undefined,
    windowStart: number,
    windowEnd: number,
  ): SilentAgent[] {
    const silent: SilentAgent[] = [];
    for (const [id, rec] of this.#agents) {
      if (tally?.agents.has(id) || rec.lastSeen >= windowStart) {
        rec.silentBars = 0;
        continue;
      }
      if (rec.firstSeen > windowEnd) continue;
      rec.silentBars++;
      if (rec.silentBars === 1 && rec.claim.state !== "completed") {
        silent.push({ agentId: id, lastBeat: rec.claim.beat_index, lastState: rec.claim.state });
      }
      if (rec.silentBars > this.#evictAfter) {
        this.#agents.delete(id);
        this.#evicted++;
        this.#onEvict(id);
      }
    }
    return silent;
  }
}

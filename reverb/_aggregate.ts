// Aggregation: follows the beat subject through the core FrameTracker (windows, phases,
// deadlines), attributes accepted claims to windows, and closes each window `grace` after its end
// into a BarReport (built by buildBarReport). State is bounded: a few open windows, at most
// `maxAgents` agent records, agents silent for `evictAfterBars` bars are evicted.

import {
  type BarReport,
  type BeatFrame,
  cachedWindowId,
  type ClaimState,
  type Clock,
  DEFAULT_TEMPO_BPM,
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
}

/** Facts about a closed window, alongside its report. */
export interface WindowInfo {
  /** The bar's downbeat index. */
  bar: number;
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
   * Called when an agent is evicted (reverb uses it to free replay memory).
   * @default {undefined}
   */
  onEvict?: (agentId: string) => void;
}

interface AgentRecord {
  claim: StatusClaim;
  lastSeen: number;
  firstSeen: number;
  keyId: string | undefined;
  helping: boolean;
  silentBars: number;
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
  readonly #grace: number | undefined;
  readonly #maxAgents: number;
  readonly #evictAfter: number;
  readonly #maxIssues: number;
  readonly #tracker = new FrameTracker();
  // The timeline the close timer is armed on: the tracker keeps the same object while frames
  // agree with it, so a new object means "rearm".
  #timeline: Timeline | undefined;
  #lastBeat: BeatObservation | undefined;
  #nextBar: number | undefined;
  #windows = new Map<number, WindowTally>();
  #agents = new Map<string, AgentRecord>();
  #cancel: (() => void) | undefined;
  #chain: Promise<void> = Promise.resolve();
  #stopped = false;
  #effBeat = 0;
  #skippedBars = 0;
  #evicted = 0;

  /**
   * Creates an aggregator; it starts closing windows once it has seen a downbeat.
   *
   * @param options Cluster, clock, report callback and limits.
   * @throws {RangeError} On a negative grace or a non-positive limit.
   */
  constructor(options: BarAggregatorOptions) {
    this.#clusterId = options.clusterId;
    this.#clock = options.clock;
    this.#onReport = options.onReport;
    this.#onEvict = options.onEvict ?? (() => {});
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

  /** Times the cluster's timeline was seen to restart (beat_index going back for two bars). */
  get timelineRestarts(): number {
    return this.#tracker.restarts;
  }

  /** Windows skipped after a stall longer than {@linkcode MAX_CATCHUP_BARS} bars. */
  get skippedBars(): number {
    return this.#skippedBars;
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
   * Takes a beat frame into account. Frames of another cluster, frames whose beat_index is not
   * above the highest seen (a deposed pulse leader's) and frames whose `deadline_at` cannot be
   * read are ignored; two bars of lower beats in a row are a restarted timeline, followed.
   *
   * @param frame A valid beat frame.
   * @param arrival Epoch ms at which it arrived.
   * @returns What was observed, or `undefined` when the frame was ignored.
   */
  observeBeat(frame: BeatFrame, arrival: number): BeatObservation | undefined {
    if (this.#stopped || frame.cluster_id !== this.#clusterId) return undefined;
    // Only frames the tracker follows count. Among the others: an unreadable deadline_at (a leap
    // second passes the schema) would make the drift NaN and the window's report invalid.
    const seen = this.#tracker.observe(frame, arrival);
    if (seen.status !== "new" && seen.status !== "restart") return undefined;
    const beat = frame.beat_index;
    if (seen.status === "restart") {
      // The old timeline's windows no longer mean anything.
      this.#windows.clear();
      this.#nextBar = undefined;
      this.#lastBeat = undefined;
    } else if (seen.barChanged) {
      // The bar grid moved (pulse reconfigured): start over at the next downbeat seen.
      this.#windows.clear();
      this.#nextBar = frame.downbeat ? beat : undefined;
    }
    const previous = this.#timeline;
    const t = this.#tracker.timeline("deadline")!;
    this.#timeline = t;
    let rearm = t !== previous;
    if (this.#nextBar === undefined && frame.downbeat) {
      this.#nextBar = beat;
      rearm = true;
    }
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
    return obs;
  }

  /**
   * Takes an accepted claim into account.
   *
   * @param claim The claim.
   * @param arrival Epoch ms at which it arrived.
   * @param key The key that signed it, if any.
   */
  acceptClaim(claim: StatusClaim, arrival: number, key: KeyEntry | undefined): void {
    if (this.#stopped) return;
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
      };
      this.#agents.set(id, rec);
    }
    rec.claim = claim;
    rec.lastSeen = arrival;
    rec.keyId = key?.keyId;
    rec.silentBars = 0;
    const state = claim.state;
    let win = this.#windowForClaim(claim.beat_index, arrival);
    // Per-window tallies are bounded like the agent records: beyond maxAgents distinct agents in
    // one window, newcomers update their record only.
    if (win !== undefined && win.agents.size >= this.#maxAgents && !win.agents.has(id)) {
      win = undefined;
    }
    if (win === undefined) {
      if (state === "helping") rec.helping = true;
      else if (state === "completed") rec.helping = false;
      return;
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
    let tally = win.rejected.get(reason);
    if (tally === undefined) {
      tally = { count: 0, agents: [] };
      win.rejected.set(reason, tally);
    }
    tally.count++;
    if (agentId !== undefined && tally.agents.length < 5 && !tally.agents.includes(agentId)) {
      tally.agents.push(agentId);
    }
    if (reason === "key_not_valid" && key !== undefined && win.badKeys.size < 32) {
      win.badKeys.set(`${key.agentId}\u0000${key.keyId}`, key);
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
      cachedWindowId(this.#clusterId, bar, this.#timeline?.epoch ?? 0).catch(() => {});
      this.#windows.set(bar, win);
    }
    return win;
  }

  // A claim counts in the window of its beat_index while that window is open; a claim for a
  // window already reported, or for a beat more than a bar ahead, counts in the window open at
  // its arrival. Sets #effBeat to the beat whose review deadline applies.
  #windowForClaim(beat: number, arrival: number): WindowTally | undefined {
    const t = this.#timeline;
    if (t === undefined || this.#nextBar === undefined) return undefined;
    const now = t.beatAt(arrival);
    let b = beat;
    // Deadlines stay those of the claimed beat, unless it lies implausibly far ahead.
    if (b > now + t.beatsPerBar) b = this.#effBeat = now;
    else this.#effBeat = b;
    if (t.barStart(b) < this.#nextBar) b = now;
    return this.#window(t.barStart(b));
  }

  #closeAt(bar: number): number {
    const t = this.#timeline!;
    const end = bar + t.beatsPerBar;
    return t.dueAt(end) + this.#graceFor(t.periodAt(end - 1));
  }

  #arm(): void {
    this.#cancel?.();
    this.#cancel = undefined;
    if (this.#stopped || this.#timeline === undefined || this.#nextBar === undefined) return;
    this.#cancel = this.#clock.schedule(this.#closeAt(this.#nextBar), () => this.#closeDue());
  }

  #closeDue(): void {
    this.#cancel = undefined;
    if (this.#stopped) return;
    const t = this.#timeline!;
    const now = this.#clock.now();
    let closed = 0;
    while (this.#nextBar !== undefined && this.#closeAt(this.#nextBar) <= now) {
      if (closed >= MAX_CATCHUP_BARS) {
        // A long stall (suspended process): skip to the bar in progress.
        const current = t.barStart(t.beatAt(now));
        this.#skippedBars += (current - this.#nextBar) / t.beatsPerBar;
        for (const bar of [...this.#windows.keys()]) if (bar < current) this.#windows.delete(bar);
        this.#nextBar = current;
        break;
      }
      this.#finalize(this.#nextBar);
      this.#nextBar += t.beatsPerBar;
      closed++;
    }
    this.#arm();
  }

  #finalize(bar: number): void {
    const t = this.#timeline!;
    const tally = this.#windows.get(bar);
    this.#windows.delete(bar);
    const bpb = t.beatsPerBar;
    const windowEnd = t.dueAt(bar + bpb);
    const info: WindowInfo = {
      bar,
      windowEnd,
      closeAt: this.#closeAt(bar),
      beatsObserved: tally?.beats ?? 0,
    };
    const input: Omit<BarReportInput, "windowId"> = {
      fromBeat: bar,
      beatsPerBar: bpb,
      windowEnd,
      barMs: windowEnd - t.dueAt(bar),
      periodMs: t.periodAt(bar),
      tally,
      silent: this.#countSilence(tally, windowEnd),
      maxIssues: this.#maxIssues,
    };
    const epoch = t.epoch;
    const known = knownWindowId(this.#clusterId, bar, epoch);
    this.#chain = this.#chain.then(async () => {
      // A throwing onReport must neither break the chain for later windows nor become an
      // unhandled rejection (which ends a Deno process).
      try {
        // Derived, never copied from a frame: whoever can publish on the beat subject must not
        // choose the id reports (and their history) are keyed by.
        const windowId = known ?? await cachedWindowId(this.#clusterId, bar, epoch);
        this.#onReport(buildBarReport({ ...input, windowId }), info);
      } catch { /* the reporter's bug; later windows still report */ }
    });
  }

  // Counts a closed window's silence per agent and evicts agents silent too long; returns the
  // agents to report as silent (the first window of a silence, unless their task completed).
  #countSilence(tally: WindowTally | undefined, windowEnd: number): SilentAgent[] {
    const silent: SilentAgent[] = [];
    for (const [id, rec] of this.#agents) {
      if (tally?.agents.has(id)) {
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

// One window's tallies into its BarReport. Pure: everything the report says comes from its input,
// so the report's rules (which issues, in which priority, capped how, worded how) are tested
// without a clock, a bus or an aggregator.

import type { BarReport, BarReportIssue, ClaimState, IssueKind, KeyEntry } from "../core/mod.ts";
import type { RejectReason } from "./_intake.ts";

/** What an agent did in a window, as bit flags (a window keeps one number per agent). */
export const AgentMark = {
  /** Sent at least one accepted claim. */
  Reported: 1,
  /** Reviewed (or completed) by the review deadline. */
  OnTime: 2,
  /** Reviewed after the review deadline. */
  Late: 4,
  /** Reported `failed`. */
  Failed: 8,
  /** Reported `blocked`. */
  Blocked: 16,
  /** Completed a task it had promised help on. */
  Helped: 32,
} as const;
/** One of {@linkcode AgentMark}'s values. */
export type AgentMark = typeof AgentMark[keyof typeof AgentMark];

/** Claims rejected for one reason in a window. */
export interface RejectTally {
  /** How many. */
  count: number;
  /** The first few agents concerned (at most 5). */
  agents: string[];
}

/** What a window collected while it was open; bounded by the aggregator. */
export interface WindowTally {
  /** {@linkcode AgentMark} flags of each agent that reported. */
  readonly agents: Map<string, number>;
  /** Problem details, only for agents that have one. */
  readonly notes: Map<string, string>;
  /** Keys that signed an accepted claim. */
  readonly keys: Set<KeyEntry>;
  /** Keys presented outside their validity period, by agent and key id. */
  readonly badKeys: Map<string, KeyEntry>;
  /** Rejected claims by reason. */
  readonly rejected: Map<RejectReason, RejectTally>;
  /** Sum of the beats' drift (arrival minus announced schedule), ms. */
  driftSum: number;
  /** Beat frames observed. */
  beats: number;
}

/**
 * An empty tally for a window that just opened.
 *
 * @returns A tally with nothing counted.
 *
 * @example Open a window
 * ```ts ignore
 * import { newWindowTally } from "./_report.ts";
 * console.log(newWindowTally().beats); // 0
 * ```
 */
export function newWindowTally(): WindowTally {
  return {
    agents: new Map(),
    notes: new Map(),
    keys: new Set(),
    badKeys: new Map(),
    rejected: new Map(),
    driftSum: 0,
    beats: 0,
  };
}

/** A known agent that sent nothing in the window, for the first time in a row. */
export interface SilentAgent {
  /** The agent. */
  readonly agentId: string;
  /** beat_index of its latest claim. */
  readonly lastBeat: number;
  /** State of its latest claim. */
  readonly lastState: ClaimState;
}

/** Input of {@linkcode buildBarReport}. */
export interface BarReportInput {
  /** The window's id (derived from the cluster and the downbeat, never taken from a frame). */
  readonly windowId: string;
  /** The window's downbeat index. */
  readonly fromBeat: number;
  /** Beats in the window. */
  readonly beatsPerBar: number;
  /** Epoch ms at which the window ended. */
  readonly windowEnd: number;
  /** Length of the window, ms: a key used in it must stay valid this long after its end. */
  readonly barMs: number;
  /** Beat period at the window's start, ms: a mean drift beyond a tenth of it is an issue. */
  readonly periodMs: number;
  /** What the window collected; `undefined` when it saw nothing at all. */
  readonly tally: WindowTally | undefined;
  /** Agents silent in this window (only the first silent window of a run is reported). */
  readonly silent: readonly SilentAgent[];
  /** Issues in the report at most (the schema allows 100). */
  readonly maxIssues: number;
}

const MAX_DETAIL = 512;

function clip(text: string): string {
  return text.length <= MAX_DETAIL ? text : `${text.slice(0, MAX_DETAIL - 1)}…`;
}

function round3(x: number): number {
  return Math.round(x * 1000) / 1000;
}

function issue(kind: IssueKind, detail: string, agentId?: string): BarReportIssue {
  const out: BarReportIssue = { kind, detail: clip(detail) };
  if (agentId !== undefined) out.agent_id = agentId.slice(0, 256);
  return out;
}

/**
 * Builds a window's BarReport from what it collected. Issues come in priority order (rejected
 * claims, key rotation, drift, failed, blocked, late reviews, silence) and are capped at
 * `maxIssues`: a kind that does not fit keeps its first entries and ends with one summary entry
 * carrying the count of the rest.
 *
 * @param input The window's geometry, tallies and silent agents.
 * @returns The report (not yet validated against the schema).
 *
 * @example Report a window nothing happened in
 * ```ts ignore
 * import { buildBarReport } from "./_report.ts";
 * const report = buildBarReport({
 *   windowId: "0".repeat(32),
 *   fromBeat: 0,
 *   beatsPerBar: 4,
 *   windowEnd: 4_000,
 *   barMs: 4_000,
 *   periodMs: 1_000,
 *   tally: undefined,
 *   silent: [],
 *   maxIssues: 100,
 * });
 * console.log(report.issues[0].kind); // "tempo_drift": no beat frames observed
 * ```
 */
export function buildBarReport(input: BarReportInput): BarReport {
  const win = input.tally;
  let agentsReporting = 0;
  let onTime = 0;
  let helped = 0;
  const failed: BarReportIssue[] = [];
  const blocked: BarReportIssue[] = [];
  const late: BarReportIssue[] = [];
  if (win !== undefined) {
    for (const [id, flags] of win.agents) {
      agentsReporting++;
      if (flags & AgentMark.OnTime) onTime++;
      if (flags & AgentMark.Helped) helped++;
      const note = win.notes.get(id) ?? "";
      if (flags & AgentMark.Failed) failed.push(issue("agent_failed", note, id));
      if (flags & AgentMark.Blocked) blocked.push(issue("agent_blocked", note, id));
      if ((flags & AgentMark.Late) && !(flags & AgentMark.OnTime)) {
        late.push(issue("late_review", note, id));
      }
    }
  }
  const silent = input.silent.map((s) =>
    issue(
      "agent_silent",
      `no claim in this window; last claim at beat ${s.lastBeat} (${s.lastState})`,
      s.agentId,
    )
  );

  // Keys: every key used must be valid now and through the next window.
  const keyIssues: BarReportIssue[] = [];
  let rotationsOk = true;
  if (win !== undefined) {
    for (const key of win.badKeys.values()) {
      rotationsOk = false;
      keyIssues.push(issue(
        "key_rotation",
        `key ${key.keyId} was used outside its validity period`,
        key.agentId,
      ));
    }
    const horizon = input.windowEnd + input.barMs;
    for (const key of win.keys) {
      if (key.notAfter !== undefined && key.notAfter < horizon) {
        rotationsOk = false;
        keyIssues.push(issue(
          "key_rotation",
          `key ${key.keyId} expires at ${
            new Date(key.notAfter).toISOString()
          }, within the next window`,
          key.agentId,
        ));
      }
    }
  }

  const rejected: BarReportIssue[] = [];
  if (win !== undefined) {
    for (const [reason, tally] of win.rejected) {
      const who = tally.agents.length > 0 ? ` (agents: ${tally.agents.join(", ")})` : "";
      const entry = issue("claims_rejected", `${tally.count} claims rejected: ${reason}${who}`);
      entry.count = tally.count;
      rejected.push(entry);
    }
  }

  const beats = win?.beats ?? 0;
  const drift = beats > 0 ? round3(win!.driftSum / beats) : 0;
  const driftIssues: BarReportIssue[] = [];
  if (beats === 0) {
    driftIssues.push(issue(
      "tempo_drift",
      "no beat frames observed in this window: schedule extrapolated (pulse leaderless?)",
    ));
  } else if (Math.abs(drift) > input.periodMs * 0.1) {
    driftIssues.push(issue(
      "tempo_drift",
      `beats arrive ${Math.abs(drift)} ms ${
        drift > 0 ? "behind" : "ahead of"
      } the announced schedule`,
    ));
  }

  return {
    type: "backbeat.barreport.v1",
    window_id: input.windowId,
    from_beat: input.fromBeat,
    to_beat: input.fromBeat + input.beatsPerBar - 1,
    agents_reporting: agentsReporting,
    on_time_reviews: onTime,
    help_promises_fulfilled: helped,
    secret_rotations_ok: rotationsOk,
    tempo_drift_ms: drift,
    issues: capIssues(input.maxIssues, [
      rejected,
      keyIssues,
      driftIssues,
      failed,
      blocked,
      late,
      silent,
    ]),
  };
}

// Keeps at most `max` issues across kinds (given in priority order). A kind that does not fit
// keeps its first entries and ends with one summary entry carrying the count of the rest.
function capIssues(max: number, groups: BarReportIssue[][]): BarReportIssue[] {
  const total = groups.reduce((n, g) => n + g.length, 0);
  if (total <= max) return groups.flat();
  const out: BarReportIssue[] = [];
  for (let i = 0; i < groups.length; i++) {
    const g = groups[i];
    const left = max - out.length;
    const restNeed = groups.slice(i + 1).reduce((n, x) => n + Math.min(x.length, 1), 0);
    // Leave room for at least one entry (or summary) of each later non-empty kind.
    const budget = Math.max(0, left - restNeed);
    if (g.length <= budget) {
      out.push(...g);
    } else if (budget > 0) {
      const keep = g.slice(0, budget - 1);
      out.push(...keep);
      const rest = g.length - keep.length;
      out.push({
        kind: g[0].kind,
        detail: `${rest} more ${g[0].kind} entries not listed`,
        count: rest,
      });
    }
  }
  return out;
}

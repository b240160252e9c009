// Wire message types. They mirror schemas/*.schema.json field for field; schemas/types_test.ts
// keeps the two in step.

/** The three phases of a bar. */
export const Phase = {
  Plan: "plan",
  Execute: "execute",
  Review: "review",
} as const;
/** One of {@linkcode Phase}'s values: `"plan"`, `"execute"` or `"review"`. */
export type Phase = typeof Phase[keyof typeof Phase];

/** Every phase, in bar order. */
export const PHASES: readonly Phase[] = ["plan", "execute", "review"];

/** The states an agent may claim. */
export const ClaimState = {
  Idle: "idle",
  Planning: "planning",
  Executing: "executing",
  Reviewing: "reviewing",
  Completed: "completed",
  Failed: "failed",
  Blocked: "blocked",
  Helping: "helping",
} as const;
/** One of {@linkcode ClaimState}'s values. */
export type ClaimState = typeof ClaimState[keyof typeof ClaimState];

/** Every claim state. */
export const CLAIM_STATES: readonly ClaimState[] = [
  "idle",
  "planning",
  "executing",
  "reviewing",
  "completed",
  "failed",
  "blocked",
  "helping",
];

/** The `type` discriminators of the v1 contracts. */
export const MessageType = {
  BeatFrame: "backbeat.beatframe.v1",
  StatusClaim: "backbeat.statusclaim.v1",
  BarReport: "backbeat.barreport.v1",
} as const;
/** One of {@linkcode MessageType}'s values. */
export type MessageType = typeof MessageType[keyof typeof MessageType];

/** INT-A: the frame pulse broadcasts every beat (`backbeat.beatframe.v1`). */
export interface BeatFrame {
  /** Always `"backbeat.beatframe.v1"`. */
  type: "backbeat.beatframe.v1";
  /** The cluster the beat belongs to (a NATS subject token). */
  cluster_id: string;
  /** Monotonic beat counter since the cluster's timeline began. */
  beat_index: number;
  /** True on the first beat of a bar. */
  downbeat: boolean;
  /** The phase this beat belongs to. */
  phase: Phase;
  /** Hybrid logical clock stamp, `XXXX:XXXX:XXXX` hex. */
  hlc: string;
  /** RFC 3339 instant at which the current phase ends. */
  deadline_at: string;
  /** Tempo in beats per minute (≥ 0.1). */
  tempo_bpm: number;
  /** 32 hex digits identifying the bar (window) this beat belongs to. */
  window_id: string;
  /** Optional (v1.1): beats in a bar, so consumers can extrapolate the bar grid. */
  beats_per_bar?: number;
  /** Optional (v1.1): a tempo change that takes effect at the next downbeat. */
  next_tempo_bpm?: number;
  /**
   * Optional (v1.2): the timeline's epoch. A new timeline of the cluster has a greater one, and
   * window ids derive from it, so they never repeat across timelines. Absent means 0.
   */
  epoch?: number;
}

/** INT-B: an agent's status report (`backbeat.statusclaim.v1`). */
export interface StatusClaim {
  /** Always `"backbeat.statusclaim.v1"`. */
  type: "backbeat.statusclaim.v1";
  /** The reporting agent. */
  agent_id: string;
  /** The task the claim is about. */
  task_id: string;
  /** The beat the claim was made on. */
  beat_index: number;
  /** The agent's state. */
  state: ClaimState;
  /** Estimated beats to completion (integer ≥ 0). */
  beats_left: number;
  /** Completion ratio, 0.0 to 1.0. */
  progress: number;
  /** Free text, at most 256 characters. */
  notes: string;
  /** Hybrid logical clock stamp, `XXXX:XXXX:XXXX` hex. */
  hlc: string;
}

/** Kinds of {@linkcode BarReportIssue}. */
export const IssueKind = {
  AgentFailed: "agent_failed",
  AgentBlocked: "agent_blocked",
  AgentSilent: "agent_silent",
  LateReview: "late_review",
  ClaimsRejected: "claims_rejected",
  KeyRotation: "key_rotation",
  TempoDrift: "tempo_drift",
} as const;
/** One of {@linkcode IssueKind}'s values. */
export type IssueKind = typeof IssueKind[keyof typeof IssueKind];

/** One structured entry of {@linkcode BarReport.issues}. */
export interface BarReportIssue {
  /** What went wrong. */
  kind: IssueKind;
  /** The agent concerned, when there is one. */
  agent_id?: string;
  /** A human-readable detail (at most 512 characters). */
  detail: string;
  /** How many times it happened in the window, for aggregated entries. */
  count?: number;
}

/** INT-C: reverb's summary of one window (`backbeat.barreport.v1`). */
export interface BarReport {
  /** Always `"backbeat.barreport.v1"`. */
  type: "backbeat.barreport.v1";
  /** The window (bar) summarised. */
  window_id: string;
  /** First beat of the window. */
  from_beat: number;
  /** Last beat of the window (≥ from_beat). */
  to_beat: number;
  /** Distinct agents with at least one accepted claim in the window. */
  agents_reporting: number;
  /** Agents whose review arrived before the review deadline. */
  on_time_reviews: number;
  /** Agents that claimed `helping` and then reached `completed`. */
  help_promises_fulfilled: number;
  /** Every key used in the window is valid now and for the next window. */
  secret_rotations_ok: boolean;
  /** Observed beat arrival minus schedule, in ms (positive = behind). */
  tempo_drift_ms: number;
  /** Structured problems seen in the window (capped). */
  issues: BarReportIssue[];
}

/** Any of the three v1 messages. */
export type BackbeatMessage = BeatFrame | StatusClaim | BarReport;

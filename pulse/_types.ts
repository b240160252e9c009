// The public types of a pulse: its options, events, role, status and metrics.
import type { BeatFrame, Bus, Clock, Logger, Phase } from "../core/mod.ts";
import type { HistogramSnapshot } from "../service/mod.ts";

/** What a pulse is doing. */
export const PulseRole = {
  /** Not started, or stopped. */
  Stopped: "stopped",
  /** `start()` in progress. */
  Starting: "starting",
  /** Publishing beats. */
  Leader: "leader",
  /** Standing by: following the leader's beats, ready to take over. */
  Follower: "follower",
} as const;
/** One of {@linkcode PulseRole}'s values. */
export type PulseRole = typeof PulseRole[keyof typeof PulseRole];

/** Options of {@linkcode Pulse}. */
export interface PulseOptions {
  /** The cluster (one NATS subject token). */
  clusterId: string;
  /**
   * Transport. A bus connected to NATS (from `connectNatsBus()`) enables leader election in
   * JetStream KV; any other bus makes this pulse the only, always-leading one.
   * @default {a new InMemoryBus, closed by stop()}
   */
  bus?: Bus;
  /** Tempo of a new timeline, 0.1 to 6000 BPM (a timeline found in KV keeps its own). @default {2} */
  tempoBpm?: number;
  /** Beats in a bar of a new timeline. @default {4} */
  beatsPerBar?: number;
  /** Phase map of a new timeline. @default {defaultPhases(beatsPerBar)} */
  phases?: readonly Phase[];
  /** This pulse's id (unique in the cluster), sent as `x-pulse-id`. @default {"pulse-" + random hex} */
  id?: string;
  /** Time source and timers. @default {new SystemClock({ spinMs: 1.5 })} */
  clock?: Clock;
  /**
   * Epoch ms at which beat 0 of a new timeline is due.
   * @default {10 ms after this pulse first leads}
   */
  originTime?: number;
  /** Leader lease time to live in ms, 50 to 60000 (NATS only). @default {600} */
  leaseTtlMs?: number;
  /** How often the leader renews its lease, ms. @default {leaseTtlMs / 4} */
  leaseRenewIntervalMs?: number;
  /** How often a follower checks the lease, ms. @default {leaseTtlMs / 12} */
  leaseCheckIntervalMs?: number;
  /** Bars ahead whose window ids are derived in advance (1 to 256). @default {2} */
  windowLookaheadBars?: number;
  /** How often the leader saves its last beat to KV, ms (at least 10). @default {1000} */
  stateWriteIntervalMs?: number;
  /** Structured logger. @default {silentLogger} */
  logger?: Logger;
}

/** Result of {@linkcode Pulse.setTempo}, and detail of its `tempo` event. */
export interface TempoChange {
  /** The requested tempo. */
  readonly tempoBpm: number;
  /** The downbeat from which it applies (a follower's estimate when forwarded). */
  readonly effectiveBeat: number;
  /** True when a follower forwarded the request to the leader on the control subject. */
  readonly forwarded: boolean;
}

/** Detail of a pulse's `leader` and `follower` events: the tenure that started or ended. */
export interface PulseTenure {
  /** Its fencing token (KV revision); 0 on an embedded bus, or when following from the start. */
  readonly token: number;
}

/** The events of a {@linkcode Pulse}. */
export interface PulseEventMap {
  /** Each frame this pulse publishes. */
  beat: CustomEvent<BeatFrame>;
  /** This pulse became leader: the tenure that started. */
  leader: CustomEvent<PulseTenure>;
  /** This pulse follows: the tenure that ended (token 0 when it follows from the start). */
  follower: CustomEvent<PulseTenure>;
  /** A tempo change was scheduled or forwarded. */
  tempo: CustomEvent<TempoChange>;
  /** A failure with no caller to throw to; the pulse carries on. */
  error: ErrorEvent;
}

/** Counters and gauges of a {@linkcode Pulse}. */
export interface PulseMetrics {
  /** Beat frames published by this pulse. */
  readonly beatsPublished: number;
  /** Of those, frames published late on purpose to fill a takeover gap (not in `lateness`). */
  readonly catchUpBeats: number;
  /** Beats never published because the gap exceeded one bar. */
  readonly beatsSkipped: number;
  /** Publish attempts that failed. */
  readonly publishErrors: number;
  /** Times this pulse became leader. */
  readonly takeovers: number;
  /** Control messages rejected as malformed or out of range. */
  readonly controlRejected: number;
  /** Frames on the beat subject that could not be read, or no pulse would publish. */
  readonly framesRejected: number;
  /** Whether this pulse leads. */
  readonly leader: boolean;
  /** Tempo in force. */
  readonly tempoBpm: number;
  /** Latest beat_index published or followed, -1 before the first. */
  readonly lastBeatIndex: number;
  /** Fencing token of the current tenure, 0 when not leading or embedded. */
  readonly fencingToken: number;
  /** Publish instant minus due time, in seconds, of on-schedule frames. */
  readonly lateness: HistogramSnapshot;
}

/** A summary of a pulse for health endpoints. */
export interface PulseStatus {
  /** Pulse id. */
  readonly id: string;
  /** Cluster id. */
  readonly clusterId: string;
  /** Current role. */
  readonly role: PulseRole;
  /** Leader, or a follower that saw a beat recently. */
  readonly ready: boolean;
  /** Tempo in force. */
  readonly tempoBpm: number;
  /** Latest beat_index published or followed, -1 before the first. */
  readonly lastBeatIndex: number;
  /** Fencing token, 0 when not leading or embedded. */
  readonly fencingToken: number;
}

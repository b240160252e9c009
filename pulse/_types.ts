// The public types of a pulse: its options, events, role, status and metrics.
import type { BeatFrame, Bus, Clock, Keyring, Logger, Phase, SigningKey } from "../core/mod.ts";
import type { HistogramSnapshot } from "../service/mod.ts";

/**
 * A keyring, or something that holds the keyring in force (a `KeyringWatcher` that reloads it
 * from its file): pulse reads `current` for every check, so a reload applies at once.
 */
export type KeyringSource = Keyring | { readonly current: Keyring };

/** Why a control message was refused (the `reason` label of its counter). */
export const ControlRejectReason = {
  /**
   * No proof a pulse can check: no `x-signature`/`x-key-id` (with an admin keyring) and no
   * `x-auth-hmac` (with an admin token).
   */
  Unauthenticated: "unauthenticated",
  /** The signature or HMAC does not verify (or its key is unknown or expired). */
  BadSignature: "bad_signature",
  /** `issued_at` is not newer than the last accepted control message's. */
  Replay: "replay",
  /** `issued_at` is more than 30 s from the pulse's clock. */
  Stale: "stale",
  /** Too large, not JSON, no `tempo_bpm` in range, or no RFC 3339 `issued_at`. */
  Invalid: "invalid",
  /** More control messages waiting for verification than a pulse keeps (32): dropped. */
  RateLimited: "rate_limited",
} as const;
/** One of {@linkcode ControlRejectReason}'s values. */
export type ControlRejectReason = typeof ControlRejectReason[keyof typeof ControlRejectReason];

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
  /**
   * JetStream replicas of the lease bucket `backbeat_<cluster>_pulse`, 1 to 5 (NATS only): 3 on
   * a cluster of three or more nodes, so the lease outlives a node. @default {1}
   */
  replicas?: number;
  /** How often the leader saves its last beat to KV, ms (at least 10). @default {1000} */
  stateWriteIntervalMs?: number;
  /** Structured logger. @default {silentLogger} */
  logger?: Logger;
  /**
   * Signs every frame (`x-signature`, `x-key-id`) over `backbeat.beatframe.v1`, the cluster and
   * the timeline's epoch, ahead of its due time. @default {undefined: frames go unsigned}
   */
  signingKey?: SigningKey;
  /**
   * Trusted pulse keys. With them an unsigned or badly signed frame of another pulse is refused
   * and counted, and only verified frames can end a tenure or seed a takeover.
   * @default {undefined: frames are checked by the gate and the tracker only}
   */
  pulseKeyring?: KeyringSource;
  /**
   * The admin token: a control message proves it with `x-auth-hmac` (HMAC-SHA-256 of the signed
   * bytes, keyed by the token), never by sending it. With it (or `adminKeyring`), control
   * messages must be authenticated, fresh (`issued_at` within 30 s) and newer than the last.
   * @default {undefined}
   */
  adminToken?: string;
  /** Operator keys for Ed25519-signed control messages (see `adminToken`). @default {undefined} */
  adminKeyring?: KeyringSource;
  /**
   * Subscribe to `backbeat.<cluster>.control`. Without `adminToken` and `adminKeyring` anyone
   * who can publish there changes the tempo (a trusted bus); `false` closes that door.
   * @default {true}
   */
  control?: boolean;
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
  /** Beats of the cluster's timeline that no pulse published (due while none led). */
  readonly beatsUnpublished: number;
  /** Control messages refused, all reasons. */
  readonly controlRejected: number;
  /** Control messages refused, by {@linkcode ControlRejectReason}. */
  readonly controlRejectedByReason: Readonly<Record<ControlRejectReason, number>>;
  /** Frames of other pulses refused, all reasons. */
  readonly framesRejected: number;
  /**
   * Frames refused, by reason (reverb's names where it has the same): the gate's (`oversized`,
   * `malformed`, `schema`, `cluster`, and `tempo` beyond pulse's range), the signature's
   * (`unsigned`, `unknown_key`, `key_expired`, `bad_signature`), the tracker's (`implausible`,
   * `old_epoch`, `unreadable`), and `overload` (too many waiting for verification).
   */
  readonly framesRejectedByReason: Readonly<Record<string, number>>;
  /** Frames of other pulses whose signature verified. */
  readonly framesVerified: number;
  /** Times the leader asked the KV lease because an unverified frame showed a higher token. */
  readonly fencingChecks: number;
  /** Epoch of the timeline led or followed (0: a timeline without epochs). */
  readonly epoch: number;
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

/** The tempo of a pulse's timeline now: what `GET /tempo` answers. */
export interface PulseTempo {
  /** Tempo in force, BPM. */
  readonly tempoBpm: number;
  /** A scheduled change: its tempo and the downbeat it lands on; `undefined` when none. */
  readonly pending: { readonly tempoBpm: number; readonly effectiveBeat?: number } | undefined;
  /** The next downbeat's beat_index (-1 while a follower has seen no beat). */
  readonly nextDownbeat: number;
  /**
   * When it is due, epoch ms (a follower's estimate from the beats it follows); `undefined`
   * when unknown.
   */
  readonly nextDownbeatAt: number | undefined;
  /** Epoch of the timeline (0: a timeline without epochs). */
  readonly epoch: number;
  /** The pulse's role. */
  readonly role: PulseRole;
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
  /** Epoch of the timeline led or followed (0: a timeline without epochs). */
  readonly epoch: number;
  /** Control messages refused, by reason. */
  readonly controlRejected: Readonly<Record<ControlRejectReason, number>>;
}

// Reverb: verified status aggregation. Wires the bus subscriptions (beat, status, bar) to the
// intake and the aggregator, publishes one BarReport per window when active, keeps a bounded
// history (replayed from JetStream on NATS) and elects one active aggregator through the shared
// KvLease, whose bucket also keeps the claims' replay marks. HTTP is served beside it
// (serveReverbHttp), not by it.
//
// The bus is hostile: every frame and claim is gated (size, JSON, schema, cluster, signature,
// plausibility, freshness, replay), every refusal is counted by reason and logged rate-limited,
// and no input makes reverb loop, grow without bound or publish a report of a timeline nobody
// vouched for.

import {
  assertClusterId,
  BackbeatError,
  type BarReport,
  type BeatFrame,
  type Bus,
  type BusMessage,
  type BusSubscription,
  type Clock,
  type ClusterSubjects,
  InMemoryBus,
  isKeyValidAt,
  IsolatedEventTarget,
  Keyring,
  type LogFields,
  type Logger,
  parseInstant,
  Rejections,
  silentLogger,
  subjects,
  SystemClock,
  verifySigned,
  withTimeout,
} from "../core/mod.ts";
import {
  DEFAULT_LEASE_TTL_MS,
  kvBucketName,
  type KvLease,
  type NatsBusLike,
  openKvLease,
} from "../nats/mod.ts";
import { decodeBeatFrame, defaultMessageValidator, type MessageValidator } from "../schemas/mod.ts";
import { type HistogramSnapshot, KeyringWatcher } from "../service/mod.ts";
import {
  type AgentView,
  BarAggregator,
  type BeatObservation,
  DEFAULT_EVICT_AFTER_BARS,
  DEFAULT_MAX_AGENTS,
  MAX_OPEN_WINDOWS,
  type WindowInfo,
} from "./_aggregate.ts";
import {
  ClaimIntake,
  DEFAULT_MAX_CLAIM_AGE_MS,
  DEFAULT_MAX_CLAIM_BYTES,
  DEFAULT_MAX_CLOCK_OFFSET_MS,
  DEFAULT_MAX_IN_FLIGHT,
  DEFAULT_MAX_QUEUED,
  MAX_CLAIM_AGE_LIMIT_MS,
  type RejectReason,
} from "./_intake.ts";
import { DEFAULT_REPLAY_FLUSH_MS, ReplayGuard } from "./_replay.ts";
import type { BarStream } from "./_stream.ts";

/** Why a beat frame was refused. */
export const FrameRejectReason = {
  /** Larger than 16 KiB. */
  Oversized: "oversized",
  /** Not JSON. */
  Malformed: "malformed",
  /** JSON, but not a valid `backbeat.beatframe.v1` (an index above 2^53 − 1, a tempo out of
   * range, a wrong type, …). */
  Schema: "schema",
  /** Another cluster's frame on this cluster's subject. */
  Cluster: "cluster",
  /** A `deadline_at` no clock can read (a leap second). */
  Unreadable: "unreadable",
  /** No signature while a pulse keyring is configured. */
  Unsigned: "unsigned",
  /** Signed with a key the pulse keyring does not hold. */
  UnknownKey: "unknown_key",
  /** Signed with a pulse key outside its validity period. */
  KeyExpired: "key_expired",
  /** The signature does not verify over this cluster's and epoch's signed bytes. */
  BadSignature: "bad_signature",
  /** Too many frames waiting for verification. */
  Overload: "overload",
  /** At or below the latest beat (a duplicate, a deposed pulse). */
  Stale: "stale",
  /** An index or tempo the followed timeline cannot explain (a forged jump). */
  Implausible: "implausible",
  /** A frame of an older timeline epoch. */
  OldEpoch: "old_epoch",
  /** The first unverified frame of a newer epoch: followed once a second one agrees. */
  Pending: "pending",
} as const;
/** One of {@linkcode FrameRejectReason}'s values. */
export type FrameRejectReason = typeof FrameRejectReason[keyof typeof FrameRejectReason];
/** Every frame reject reason. */
export const FRAME_REJECT_REASONS: readonly FrameRejectReason[] = Object.values(FrameRejectReason);

const DEFAULT_HISTORY_SIZE = 256;
// 7 days.
const DEFAULT_HISTORY_MAX_AGE_MS = 7 * 24 * 3_600_000;
const DEFAULT_HISTORY_MAX_MSGS = 10_000;
// One less than the CPUs (reverb's own thread keeps one), at most 4.
const DEFAULT_VERIFY_WORKERS: number = Math.max(
  0,
  Math.min(4, (globalThis.navigator?.hardwareConcurrency ?? 1) - 1),
);
const DEFAULT_SUMMARY_INTERVAL_MS = 500;
/** The claims rate's sliding window: at 30 BPM an agent claims every 2 s, so 30 s smooths it. */
const RATE_WINDOW_MS = 30_000;
/** Spacing of the window's samples: about 31 of them, whatever the summary interval. */
const RATE_SAMPLE_MS = 1_000;
/** Most JetStream replicas. */
const MAX_REPLICAS = 5;
/** Reports computed while standby, kept for a takeover. */
const MAX_SHADOW_REPORTS = 16;
/** Wait before trying an unavailable history stream again. */
const STREAM_RETRY_MS = 5_000;
/** Largest bar report read from the bus. */
const MAX_REPORT_BYTES = 65_536;
/** Longest wait for verifications in flight when stopping. */
const STOP_DRAIN_MS = 2_000;
/** Frames waiting for their signature check at most; more are refused as `overload`. */
const MAX_PENDING_FRAMES = 256;

/** Options of {@linkcode Reverb}. */
export interface ReverbOptions {
  /** The cluster (one NATS subject token). */
  clusterId: string;
  /**
   * The transport. On a NATS bus reverb also keeps the JetStream history and competes for the
   * active role. Reverb closes only a bus it created.
   * @default {a new InMemoryBus}
   */
  bus?: Bus;
  /** This instance's id (lease holder id, logs, headers). @default {"reverb-" + random} */
  id?: string;
  /**
   * The agents' keyring: a file path (watched and reloaded) or a loaded {@linkcode Keyring}. An
   * agent listed in it must sign its claims, always.
   * @default {Keyring.EMPTY}
   */
  keyring?: string | Keyring;
  /**
   * Reject every unsigned claim, also from agents without keys. Needs `keyring`: without one
   * the constructor throws.
   * @default {false}
   */
  requireSignatures?: boolean;
  /**
   * Also accept claim signatures over the payload alone (the 0.1 form), besides the form bound
   * to domain and cluster (`signedBytes("backbeat.statusclaim.v1", cluster, payload)`).
   * @default {false}
   */
  legacyClaimSignatures?: boolean;
  /**
   * The pulses' keyring: a file path (watched and reloaded) or a loaded {@linkcode Keyring}.
   * With it every frame must be signed by one of its keys (owners are labels; keys are found by
   * `x-key-id`) over `signedBytes("backbeat.beatframe.v1", cluster, payload, epoch)`; unsigned
   * and badly signed frames are refused and counted. Without it frames are checked for
   * plausibility only, and a consistent forged stream can steer the windows.
   * @default {undefined}
   */
  pulseKeyring?: string | Keyring;
  /**
   * Wait after a window's end before reporting it, in ms; `undefined` means a quarter beat, at
   * most 2000 ms.
   * @default {undefined}
   */
  graceMs?: number;
  /** Largest claim in bytes. @default {4096} */
  maxClaimBytes?: number;
  /**
   * Claims whose HLC physical time is older than this (vs reverb's clock) are rejected as stale,
   * in ms (at most 7 days). A younger claim is accepted: in its own window while that is open,
   * else as `late` (counted; it still updates the agent's state). The default covers what the
   * SDK buffers through a 60 s outage.
   * @default {120000}
   */
  maxClaimAgeMs?: number;
  /**
   * Claims whose HLC stands more than this ahead of reverb's clock are rejected as `future`,
   * in ms; they do not move the agent's replay mark.
   * @default {10000}
   */
  maxClockOffsetMs?: number;
  /**
   * Keep the claims' replay marks (one HLC per agent) in the KV bucket
   * `backbeat_<cluster>_reverb`, so a restarted reverb refuses replays of what it accepted
   * before (NATS only). Marks are written in batches: a claim accepted less than one
   * `replayFlushIntervalMs` before a crash is not stored, and could be replayed once after it.
   * @default {true}
   */
  replayStore?: boolean;
  /** How often changed replay marks are written, in ms. @default {1000} */
  replayFlushIntervalMs?: number;
  /** Agents tracked at most. @default {10000} */
  maxAgents?: number;
  /** Bars of silence after which an agent is evicted. @default {16} */
  evictAfterBars?: number;
  /** Reports kept in memory (and replayed from the stream). @default {256} */
  historySize?: number;
  /** Signature verifications running at once. @default {2048} */
  maxInFlight?: number;
  /**
   * Web Workers verifying signatures (Deno's WebCrypto verifies on the calling thread); 0
   * verifies on reverb's own thread.
   * @default {one less than the CPUs, at most 4}
   */
  verifyWorkers?: number;
  /** Claims waiting for a verification slot. @default {65536} */
  maxQueued?: number;
  /** Keep the history in the JetStream stream (NATS only). @default {true} */
  stream?: boolean;
  /** Oldest report the stream keeps, in ms. @default {604800000} */
  historyMaxAgeMs?: number;
  /** Reports the stream keeps at most. @default {10000} */
  historyMaxMsgs?: number;
  /** Compete for the active role through a KV lease (NATS only). @default {true} */
  ha?: boolean;
  /** Lease time to live in ms (50 to 60000). @default {600, the KV lease's own default} */
  leaseTtlMs?: number;
  /**
   * JetStream replicas (1 to 5) of the KV bucket (lease and replay marks) and of the history
   * stream (NATS only): 3 on a cluster of 3 or more, so both outlive a node. An existing bucket
   * or stream with fewer replicas is scaled up. When the cluster cannot hold them, the bucket
   * fails the start (with `ha`; without it the replay marks stay in memory) and the stream stays
   * unavailable (retried), each with an error that says so.
   * @default {1}
   */
  replicas?: number;
  /** How often a claims summary event is dispatched, in ms. @default {500} */
  summaryIntervalMs?: number;
  /**
   * Time source and every timer (windows, summaries, keyring debounce, stream retries, the
   * bounded waits of stop()).
   * @default {new SystemClock()}
   */
  clock?: Clock;
  /** Where reverb logs. @default {silentLogger} */
  logger?: Logger;
  /** Schema validator. @default {defaultMessageValidator()} */
  validator?: MessageValidator;
}

/** The events of a {@linkcode Reverb}. */
export interface ReverbEventMap {
  /** A beat frame was taken into account. */
  beat: CustomEvent<BeatObservation>;
  /** A report entered the history, whoever published it. */
  report: CustomEvent<BarReport>;
  /** The periodic claims summary (every `summaryIntervalMs`). */
  claims: CustomEvent<ClaimsSummary>;
  /** This instance became active (`detail.active`: it publishes reports) or standby. */
  role: CustomEvent<{ readonly active: boolean }>;
  /** A failure with no caller to throw to (a report not published, the stream unavailable). */
  error: ErrorEvent;
}

/** A snapshot of reverb's counters, for {@linkcode renderReverbMetrics}. */
export interface ReverbMetrics {
  /** The cluster (the `cluster` label of every metric). */
  readonly clusterId: string;
  /** Status claims accepted. */
  readonly claimsAccepted: number;
  /** Accepted claims that carried a verified signature. */
  readonly claimsSigned: number;
  /** Claims rejected, by reason. */
  readonly claimsRejected: Readonly<Record<RejectReason, number>>;
  /** Signature verification times, seconds. */
  readonly verifyTime: HistogramSnapshot;
  /** Signatures verified in worker threads. */
  readonly verifyOffloaded: number;
  /** Verifications running. */
  readonly verifyInFlight: number;
  /** Claims waiting for verification. */
  readonly verifyQueued: number;
  /** Reports published by this instance. */
  readonly reportsPublished: number;
  /** Reports that failed schema validation and were not published. */
  readonly reportsInvalid: number;
  /** Delay of the last published report after its window's end plus grace, ms. */
  readonly reportLagMs: number;
  /** Largest such delay since start, ms. */
  readonly reportLagMaxMs: number;
  /** Agents tracked. */
  readonly agentsTracked: number;
  /** Agents evicted after silence (or to stay within `maxAgents`). */
  readonly agentsEvicted: number;
  /** Beat frames taken into account. */
  readonly beatsObserved: number;
  /** Beat frames that were not valid JSON, failed the schema or had an unreadable deadline. */
  readonly framesInvalid: number;
  /** Beat frames ignored because their beat_index was not above the highest seen. */
  readonly framesStale: number;
  /** Beat frames refused, by reason. */
  readonly framesRejected: Readonly<Record<FrameRejectReason, number>>;
  /** Beat frames taken whose signature was verified against the pulse keyring. */
  readonly framesVerified: number;
  /** Times the cluster's timeline restarted (a new epoch, a restart, a realignment) and reverb
   * followed it. */
  readonly timelineRestarts: number;
  /** The epoch of the timeline followed (0 for v1.0 pulses). */
  readonly epoch: number;
  /** Windows not reported after a stall (at most what the time that passed holds). */
  readonly barsSkipped: number;
  /** Windows dropped without a beat at a timeline restart or a bar grid change. */
  readonly windowsDropped: number;
  /** Reports not published because their window id was reported before (a v1.0 timeline that
   * restarted without an epoch). */
  readonly reportsDuplicate: number;
  /** Replay marks held (one per agent seen inside the claim age window). */
  readonly replayMarks: number;
  /** Replay marks dropped while still inside their window, to stay within `maxAgents`. */
  readonly replayMarksEvicted: number;
  /** Replay mark store reads or writes that failed (retried). */
  readonly replayStoreFailures: number;
  /** Whether this instance publishes reports. */
  readonly active: boolean;
  /** Tempo of the latest beat (0 before any). */
  readonly tempoBpm: number;
  /** Arrival of the latest beat minus its announced schedule, ms (0 before any). */
  readonly tempoDriftMs: number;
  /** Keys in the keyring. */
  readonly keyringKeys: number;
  /** Keyring reloads that failed (the previous keyring was kept). */
  readonly keyringReloadFailures: number;
  /** Keys in the pulse keyring (0 when frames are not verified). */
  readonly pulseKeyringKeys: number;
  /** Whether the JetStream history stream is open. */
  readonly historyStreamReady: boolean;
}

/** A claims summary, dispatched as the `claims` event and served in `/api/v1/status`. */
export interface ClaimsSummary {
  /** Claims accepted since start. */
  accepted: number;
  /** Claims rejected since start, by reason. */
  rejected: Record<RejectReason, number>;
  /** Accepted claims per second over the last summary interval (jumpy at slow tempos). */
  accepted_per_second: number;
  /**
   * Accepted claims per second over the last `rate_window_seconds`, a sliding window of up to
   * 30 s: steady also at slow tempos, where an agent claims once every few seconds.
   */
  accepted_rate_per_second: number;
  /** Seconds `accepted_rate_per_second` covers: 30 once reverb has run that long, less before. */
  rate_window_seconds: number;
  /** Agents tracked. */
  agents_tracked: number;
  /** Verifications running. */
  in_flight: number;
  /** Claims waiting for verification. */
  queued: number;
}

/** What `/api/v1/status` returns. */
export interface ReverbStatus {
  /** The cluster. */
  cluster_id: string;
  /** This instance. */
  reverb_id: string;
  /** Whether this instance publishes reports. */
  active: boolean;
  /** The lease holder last seen, when competing. */
  active_id: string | null;
  /** Current tempo, when known. */
  tempo_bpm: number | null;
  /** Beats in a bar. */
  beats_per_bar: number;
  /** The latest beat observed. */
  beat: BeatObservation | null;
  /** Grace after a window's end, ms. */
  grace_ms: number;
  /** Whether every unsigned claim is rejected (agents with keys must sign regardless). */
  require_signatures: boolean;
  /** Whether claim signatures over the payload alone (the 0.1 form) are accepted. */
  legacy_claim_signatures: boolean;
  /** Claims older than this are stale, ms. */
  max_claim_age_ms: number;
  /** Claims further ahead than this are `future`, ms. */
  max_clock_offset_ms: number;
  /** Keys in the keyring. */
  keyring_keys: number;
  /** The beat frames: verification, refusals, the timeline followed. */
  frames: {
    /** Whether frames must be signed by a pulse key. */
    verified: boolean;
    /** Keys in the pulse keyring, `null` without one. */
    pulse_keyring_keys: number | null;
    /** Frames refused, by reason. */
    rejected: Record<FrameRejectReason, number>;
    /** The epoch of the timeline followed. */
    epoch: number;
    /** Whether the followed timeline is vouched for (windows close on it). */
    confirmed: boolean;
    /** Timeline restarts followed. */
    timeline_restarts: number;
  };
  /** The claims' replay marks. */
  replay: {
    /** Marks held. */
    marks: number;
    /** Whether they were loaded from (and are written to) the KV bucket. */
    persistent: boolean;
    /** Marks dropped inside their window to stay bounded. */
    evicted: number;
    /** Store reads or writes that failed. */
    store_failures: number;
  };
  /** Claims counters. */
  claims: ClaimsSummary;
  /** Reports published by this instance. */
  reports_published: number;
  /** Reports held in history. */
  history_size: number;
  /** Delay of the last report this instance published after its window's end plus grace, ms. */
  report_lag_ms: number | null;
  /** Largest such delay since start, ms. */
  report_lag_max_ms: number | null;
  /** The JetStream stream, when used. */
  stream: { name: string; ready: boolean } | null;
  /** Bus connection state. */
  bus: string;
  /** Problems an operator should see (empty when healthy). */
  warnings: string[];
}

/**
 * Sanitised JetStream stream name of a cluster's bar history: `BACKBEAT_<CLUSTER>_BARS`, the
 * cluster upper-cased with every character outside `A-Z 0-9 _ -` replaced by `_`.
 *
 * @param clusterId The cluster.
 * @returns The stream name.
 * @throws {TypeError} When the cluster id is not a valid NATS token.
 *
 * @example Name a stream
 * ```ts
 * import { barStreamName } from "@chorus/backbeat/reverb";
 * console.log(barStreamName("chorus-dev")); // "BACKBEAT_CHORUS-DEV_BARS"
 * ```
 */
export function barStreamName(clusterId: string): string {
  assertClusterId(clusterId);
  return `BACKBEAT_${clusterId.toUpperCase().replace(/[^A-Z0-9_-]/g, "_")}_BARS`;
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();

function round3(x: number): number {
  return Math.round(x * 1000) / 1000;
}

function isNatsBus(bus: Bus): bus is NatsBusLike {
  const c = (bus as { connection?: unknown }).connection;
  return typeof c === "object" && c !== null;
}

// The frame gate answers in sentences; metrics and logs count by a stable reason.
function frameErrorReason(sentence: string): FrameRejectReason {
  if (sentence.startsWith("frame of cluster")) return "cluster";
  if (sentence.startsWith("frame of ")) return "oversized";
  if (sentence.startsWith("frame is not JSON")) return "malformed";
  return "schema";
}

const PENDING = 0;
const DONE = 1;

// A frame waiting for its signature check: frames are applied in arrival order.
interface FrameJob {
  frame: BeatFrame;
  arrival: number;
  state: number;
  reason: FrameRejectReason | undefined;
}

/**
 * The reverb service as a library: subscribes to a cluster's beat and status subjects, verifies
 * and aggregates claims, and publishes one {@linkcode BarReport} per window on the bar subject.
 * Its events are those of {@linkcode ReverbEventMap}. Serve it over HTTP with
 * `serveReverbHttp()`.
 *
 * @example Aggregate on the embedded bus
 * ```ts
 * import { InMemoryBus } from "@chorus/backbeat/sdk";
 * import { Reverb } from "@chorus/backbeat/reverb";
 * const bus = new InMemoryBus();
 * const reverb = new Reverb({ clusterId: "dev", bus });
 * reverb.addEventListener("report", (e) => console.log(e.detail.from_beat));
 * await reverb.start();
 * await reverb.stop();
 * await bus.close();
 * ```
 */
export class Reverb extends IsolatedEventTarget<ReverbEventMap> {
  /** The cluster. */
  readonly clusterId: string;
  /** This instance's id. */
  readonly id: string;
  readonly #subjects: ClusterSubjects;
  readonly #bus: Bus;
  readonly #ownsBus: boolean;
  readonly #clock: Clock;
  readonly #logger: Logger;
  readonly #validator: MessageValidator;
  readonly #options: ReverbOptions;
  readonly #historySize: number;
  readonly #intake: ClaimIntake;
  readonly #aggregator: BarAggregator;
  readonly #replay: ReplayGuard;
  readonly #frameLog: Rejections;
  readonly #claimLog: Rejections;
  readonly #reportLog: Rejections;
  readonly #storeLog: Rejections;
  readonly #framesRejected: Record<FrameRejectReason, number>;
  #keyring: Keyring;
  #watcher: KeyringWatcher | undefined;
  #pulseKeyring: Keyring | undefined;
  #pulseWatcher: KeyringWatcher | undefined;
  #frameJobs: FrameJob[] = [];
  #frameHead = 0;
  #framesVerified = 0;
  #reportsDuplicate = 0;
  #subs: BusSubscription[] = [];
  #history: BarReport[] = [];
  // Window id → when it entered the history (a recent one is another reverb's report of the same
  // window; an old one is an id a timeline without epoch reused).
  #historyIds = new Map<string, number>();
  #shadow: Array<{ report: BarReport; info: WindowInfo }> = [];
  #stream: BarStream | undefined;
  #streamWanted = false;
  #cancelStreamRetry: (() => void) | undefined;
  #lease: KvLease | undefined;
  // The KV bucket of the lease, opened for the replay marks also when not competing.
  #kv: KvLease | undefined;
  #active = false;
  #started = false;
  // Started all the way: a start that failed half-way logs no "reverb stopped".
  #running = false;
  #stopping: Promise<void> | undefined;
  #summaryCancel: (() => void) | undefined;
  #lastAccepted = 0;
  #lastSummaryAt = 0;
  // (time, accepted) samples of the claims rate's sliding window, oldest first.
  #rateSamples: Array<{ at: number; accepted: number }> = [];
  #summary: ClaimsSummary;
  #beats = 0;
  #framesInvalid = 0;
  #reportsPublished = 0;
  #reportsInvalid = 0;
  #barsInvalid = 0;
  #lastReportSeenAt = 0;
  #lastLagMs = 0;
  #maxLagMs = 0;
  #signal: AbortSignal | undefined;
  #onAbort = () => void this.stop();

  /**
   * Creates a reverb; nothing runs until {@linkcode Reverb.start}.
   *
   * @param options Cluster, transport, keyring, limits.
   * @throws {TypeError} On an invalid cluster id, or `requireSignatures` without a keyring.
   * @throws {RangeError} On an out-of-range limit.
   */
  constructor(options: ReverbOptions) {
    super();
    if (options.requireSignatures && options.keyring === undefined) {
      throw new TypeError(
        "Invalid requireSignatures without a keyring: every claim would be refused; give keyring",
      );
    }
    this.#subjects = subjects(options.clusterId);
    this.clusterId = options.clusterId;
    this.#options = options;
    this.id = options.id ?? `reverb-${crypto.randomUUID().slice(0, 8)}`;
    this.#ownsBus = options.bus === undefined;
    this.#bus = options.bus ?? new InMemoryBus();
    this.#clock = options.clock ?? new SystemClock();
    this.#logger = options.logger ?? silentLogger;
    this.#validator = options.validator ?? defaultMessageValidator();
    this.#historySize = options.historySize ?? DEFAULT_HISTORY_SIZE;
    if (!(Number.isInteger(this.#historySize) && this.#historySize > 0)) {
      throw new RangeError(`Invalid historySize ${options.historySize}: expected an integer > 0`);
    }
    const replicas = options.replicas ?? 1;
    if (!Number.isInteger(replicas) || replicas < 1 || replicas > MAX_REPLICAS) {
      throw new RangeError(
        `Invalid replicas ${options.replicas}: expected an integer from 1 to ${MAX_REPLICAS}`,
      );
    }
    const maxAge = options.maxClaimAgeMs ?? DEFAULT_MAX_CLAIM_AGE_MS;
    const maxOffset = options.maxClockOffsetMs ?? DEFAULT_MAX_CLOCK_OFFSET_MS;
    for (const [name, v] of [["maxClaimAgeMs", maxAge], ["maxClockOffsetMs", maxOffset]] as const) {
      if (!(v > 0 && v <= MAX_CLAIM_AGE_LIMIT_MS)) {
        throw new RangeError(`Invalid ${name} ${v}: expected a number > 0, at most 7 days`);
      }
    }
    this.#keyring = options.keyring instanceof Keyring ? options.keyring : Keyring.EMPTY;
    this.#pulseKeyring = options.pulseKeyring instanceof Keyring ? options.pulseKeyring : undefined;
    const logger = this.#logger;
    const clock = this.#clock;
    this.#frameLog = new Rejections({ logger, clock, message: "frames rejected" });
    this.#claimLog = new Rejections({ logger, clock, message: "claims rejected" });
    this.#reportLog = new Rejections({ logger, clock, message: "windows not reported" });
    this.#storeLog = new Rejections({ logger, clock, message: "replay marks store failing" });
    this.#framesRejected = {} as Record<FrameRejectReason, number>;
    for (const r of FRAME_REJECT_REASONS) this.#framesRejected[r] = 0;
    const validator = this.#validator;
    const maxAgents = options.maxAgents ?? DEFAULT_MAX_AGENTS;
    this.#aggregator = new BarAggregator({
      clusterId: options.clusterId,
      clock: this.#clock,
      graceMs: options.graceMs,
      maxAgents,
      evictAfterBars: options.evictAfterBars ?? DEFAULT_EVICT_AFTER_BARS,
      onReport: (report, info) => this.#onWindowClosed(report, info),
      onSkip: (kind, windows, fromBeat) =>
        this.#reportLog.add(kind, { windows, from_beat: fromBeat }),
    });
    const aggregator = this.#aggregator;
    this.#replay = new ReplayGuard({
      clock,
      // Marks outlive agent records (an evicted agent's old claims must stay refused).
      maxAgents: Math.max(maxAgents, 1),
      windowMs: () => maxAge + maxOffset,
      isKeyed: (agentId) => this.keyring.keysOf(agentId).length > 0,
      flushIntervalMs: options.replayFlushIntervalMs ?? DEFAULT_REPLAY_FLUSH_MS,
      onStoreError: (what, fields) => this.#storeLog.add("replay_store", { what, ...fields }),
    });
    this.#intake = new ClaimIntake({
      clusterId: options.clusterId,
      validate: (value) => {
        const r = validator.validateMessage(value);
        return r.valid && r.type === "backbeat.statusclaim.v1";
      },
      keyring: () => this.#keyring,
      requireSignatures: options.requireSignatures ?? false,
      legacySignatures: options.legacyClaimSignatures ?? false,
      maxClaimBytes: options.maxClaimBytes ?? DEFAULT_MAX_CLAIM_BYTES,
      maxInFlight: options.maxInFlight ?? DEFAULT_MAX_IN_FLIGHT,
      maxQueued: options.maxQueued ?? DEFAULT_MAX_QUEUED,
      verifyWorkers: options.verifyWorkers ?? DEFAULT_VERIFY_WORKERS,
      maxClaimAgeMs: maxAge,
      maxClockOffsetMs: maxOffset,
      clock: this.#clock,
      replay: this.#replay,
      onAccept: (claim, arrival, key) => {
        if (aggregator.acceptClaim(claim, arrival, key)) {
          this.#claimLog.add("late", { agent_id: claim.agent_id, beat_index: claim.beat_index });
        }
      },
      onReject: (reason, agentId, arrival, key) => {
        aggregator.rejectClaim(reason, agentId, arrival, key);
        this.#claimLog.add(reason, agentId === undefined ? undefined : { agent_id: agentId });
      },
    });
    this.#summary = this.#makeSummary(this.#clock.now(), 0);
  }

  /**
   * Logs what a listener threw; reverb keeps aggregating.
   *
   * @param type The event type whose listener threw.
   * @param error What it threw.
   */
  protected override onListenerError(type: string, error: unknown): void {
    this.#logger.error("event listener threw", { event: type, error: String(error) });
  }

  /** Whether this instance publishes reports now. */
  get active(): boolean {
    return this.#active && (this.#lease === undefined || this.#lease.isHeld());
  }

  /** Recent reports, oldest first (at most `historySize`). */
  get reports(): readonly BarReport[] {
    return this.#history;
  }

  /** Web Workers verifying signatures (0: on reverb's own thread). */
  get verifyWorkers(): number {
    return this.#intake.verifyWorkers;
  }

  /** The aggregator's latest beat. */
  get lastBeat(): BeatObservation | undefined {
    return this.#aggregator.lastBeat;
  }

  /** The keyring in force. */
  get keyring(): Keyring {
    return this.#watcher?.current ?? this.#keyring;
  }

  /** The pulse keyring in force, `undefined` when frames are not verified. */
  get pulseKeyring(): Keyring | undefined {
    return this.#pulseWatcher?.current ?? this.#pulseKeyring;
  }

  /**
   * The latest claim of every tracked agent, sorted by agent id.
   *
   * @param limit At most this many.
   * @returns The views.
   */
  agents(limit?: number): AgentView[] {
    return this.#aggregator.agents(limit);
  }

  /**
   * Starts reverb: loads the keyring, opens the stream and replays history (NATS), subscribes
   * and competes for the active role (NATS).
   *
   * @param signal Stops reverb when aborted.
   * @returns Resolves once reverb runs.
   * @throws {BackbeatError} `key` when the keyring file cannot be loaded; `closed` after stop.
   */
  async start(signal?: AbortSignal): Promise<void> {
    if (this.#stopping) throw new BackbeatError("closed", "Cannot start reverb: it was stopped");
    if (this.#started) return;
    this.#started = true;
    try {
      await this.#startInner();
      this.#running = true;
    } catch (err) {
      await this.stop();
      throw err;
    }
    if (signal) {
      this.#signal = signal;
      if (signal.aborted) await this.stop();
      else signal.addEventListener("abort", this.#onAbort, { once: true });
    }
  }

  async #startInner(): Promise<void> {
    const o = this.#options;
    if (typeof o.keyring === "string") {
      this.#watcher = new KeyringWatcher(o.keyring, { clock: this.#clock });
      this.#watcher.addEventListener("error", (e) => {
        this.#logger.error("keyring reload failed", { error: e.message });
      });
      this.#watcher.addEventListener("reload", (e) => {
        this.#logger.info("keyring reloaded", { ...e.detail });
      });
      await this.#watcher.start();
      const watcher = this.#watcher;
      this.#keyring = watcher.current;
      watcher.addEventListener("reload", () => this.#keyring = watcher.current);
    }
    if (typeof o.pulseKeyring === "string") {
      const watcher = new KeyringWatcher(o.pulseKeyring, { clock: this.#clock });
      this.#pulseWatcher = watcher;
      watcher.addEventListener("error", (e) => {
        this.#logger.error("pulse keyring reload failed", { error: e.message });
      });
      watcher.addEventListener("reload", (e) => {
        this.#pulseKeyring = watcher.current;
        this.#logger.info("pulse keyring reloaded", { ...e.detail });
      });
      await watcher.start();
      this.#pulseKeyring = watcher.current;
    }
    const bus = this.#bus;
    const nats = isNatsBus(bus);
    const ha = nats && (o.ha ?? true);
    // Bar subscription first, then the replay: no report slips between the two.
    this.#subs.push(bus.subscribe(this.#subjects.bar, (m) => this.#onBarMessage(m)));
    if (nats && (o.stream ?? true)) {
      this.#streamWanted = true;
      await this.#openStream(bus);
    }
    if (ha || (nats && (o.replayStore ?? true))) {
      try {
        this.#kv = await openKvLease({
          bus,
          bucket: await kvBucketName(this.clusterId, "reverb"),
          holderId: this.id,
          // Reverb's HA takes over as fast as pulse's: the lease's own default is the one fact.
          ttlMs: o.leaseTtlMs ?? DEFAULT_LEASE_TTL_MS,
          replicas: o.replicas ?? 1,
          clock: this.#clock,
        });
      } catch (error) {
        // Competing needs the bucket; the replay marks can live in memory without it.
        if (ha) throw error;
        this.#logger.error("replay marks kept in memory only: KV bucket unavailable", {
          error: (error as Error).message,
        });
      }
    }
    // Marks before the status subscription: the first claim is checked against them.
    if (this.#kv && (o.replayStore ?? true)) {
      await this.#replay.attach(this.#kv);
      this.#logger.info("replay marks loaded", {
        marks: this.#replay.stats.marks,
        persistent: this.#replay.stats.persistent,
      });
    }
    this.#subs.push(bus.subscribe(this.#subjects.beat, (m) => this.#onBeatMessage(m)));
    this.#subs.push(bus.subscribe(this.#subjects.status, (m) => this.#intake.handle(m)));
    if (ha) {
      this.#lease = this.#kv!;
      this.#lease.addEventListener("acquired", () => this.#setActive(true));
      this.#lease.addEventListener("lost", (e) => {
        const detail = { ...e.detail };
        if (detail.reason === "released") this.#logger.info("handed the active role over", detail);
        else this.#logger.warn("lost the active role", detail);
        this.#setActive(false);
      });
      this.#lease.addEventListener("error", (e) => {
        this.#logger.warn("lease error", { error: e.message });
      });
      await this.#lease.start();
    } else {
      this.#setActive(true);
    }
    this.#armSummary();
    this.#logger.info("reverb started", {
      cluster: this.clusterId,
      id: this.id,
      nats,
      stream: this.#stream?.name ?? null,
      frames_verified: this.pulseKeyring !== undefined,
    });
  }

  async #openStream(bus: NatsBusLike): Promise<void> {
    const { BarStream } = await import("./_stream.ts");
    const o = this.#options;
    let stream: BarStream | undefined;
    try {
      stream = await BarStream.open(bus.connection, {
        name: barStreamName(this.clusterId),
        subject: this.#subjects.bar,
        maxAgeMs: o.historyMaxAgeMs ?? DEFAULT_HISTORY_MAX_AGE_MS,
        maxMsgs: o.historyMaxMsgs ?? DEFAULT_HISTORY_MAX_MSGS,
        replicas: o.replicas ?? 1,
        logger: this.#logger,
        clock: this.#clock,
      });
      const payloads = await stream.replay(this.#historySize);
      if (this.#stopping) {
        await stream.close();
        return;
      }
      for (const data of payloads) this.#onBarMessage({ subject: this.#subjects.bar, data });
      this.#stream = stream;
      this.#logger.info("history replayed", { stream: stream.name, reports: payloads.length });
    } catch (error) {
      await stream?.close();
      // Reverb still aggregates and publishes on the core subject; the warning stays visible
      // and the stream is tried again.
      this.#logger.error("history stream unavailable", { error: (error as Error).message });
      this.#error("History stream unavailable", error);
      if (!this.#stopping) {
        this.#cancelStreamRetry = this.#clock.schedule(this.#clock.now() + STREAM_RETRY_MS, () => {
          this.#cancelStreamRetry = undefined;
          if (!this.#stopping) this.#openStream(bus);
        });
      }
    }
  }

  #setActive(active: boolean): void {
    if (this.#active === active) return;
    this.#active = active;
    this.#logger.info(active ? "active aggregator" : "standby", { id: this.id });
    this.dispatchEvent(new CustomEvent<{ active: boolean }>("role", { detail: { active } }));
    if (active) {
      // Take over: publish what the previous holder did not, window by window.
      const pending = this.#shadow;
      this.#shadow = [];
      for (const { report, info } of pending) {
        if (!this.#historyIds.has(report.window_id)) this.#publish(report, info);
      }
    }
  }

  #onBeatMessage(m: BusMessage): void {
    const arrival = this.#clock.now();
    const frame = decodeBeatFrame(m.data, this.clusterId, this.#validator);
    if (typeof frame === "string") {
      return this.#frameRejected(frameErrorReason(frame), { error: frame.slice(0, 200) });
    }
    // The schema's date-time admits instants Date.parse cannot read (a leap second).
    if (!Number.isFinite(parseInstant(frame.deadline_at))) return this.#frameRejected("unreadable");
    const ring = this.pulseKeyring;
    if (ring === undefined) {
      if (this.#frameHead === this.#frameJobs.length) this.#applyFrame(frame, arrival, false);
      else this.#frameJobs.push({ frame, arrival, state: DONE, reason: undefined });
      return;
    }
    // Cheap refusals first, so junk costs no signature check.
    const headers = m.headers;
    const keyId = headers?.["x-key-id"];
    if (!headers?.["x-signature"] || !keyId) return this.#frameRejected("unsigned");
    const key = ring.findKey(keyId);
    if (key === undefined) {
      return this.#frameRejected("unknown_key", { key_id: keyId.slice(0, 64) });
    }
    if (!isKeyValidAt(key, arrival)) {
      return this.#frameRejected("key_expired", { key_id: key.keyId });
    }
    const epoch = frame.epoch ?? 0;
    // An older epoch is refused whoever signed it: no need to check the signature.
    if (epoch < this.#aggregator.epoch && this.#aggregator.confirmed) {
      return this.#frameRejected("old_epoch");
    }
    if (this.#frameJobs.length - this.#frameHead >= MAX_PENDING_FRAMES) {
      return this.#frameRejected("overload");
    }
    const job: FrameJob = { frame, arrival, state: PENDING, reason: undefined };
    this.#frameJobs.push(job);
    // A copy: the bus may reuse the buffer once this handler returns.
    verifySigned(ring, "backbeat.beatframe.v1", this.clusterId, m.data.slice(), headers, {
      epoch,
      at: arrival,
    }).then(
      (r) => r.ok ? undefined : job.reason = r.reason,
      () => job.reason = "bad_signature",
    ).finally(() => {
      job.state = DONE;
      this.#drainFrames();
    });
  }

  // Applies checked frames in arrival order, stopping at the first still being checked.
  #drainFrames(): void {
    const jobs = this.#frameJobs;
    while (this.#frameHead < jobs.length && jobs[this.#frameHead].state === DONE) {
      const job = jobs[this.#frameHead];
      jobs[this.#frameHead++] = undefined as unknown as FrameJob;
      if (this.#stopping) continue;
      if (job.reason !== undefined) this.#frameRejected(job.reason);
      else this.#applyFrame(job.frame, job.arrival, this.pulseKeyring !== undefined);
    }
    if (this.#frameHead === jobs.length) {
      this.#frameJobs = [];
      this.#frameHead = 0;
    }
  }

  #applyFrame(frame: BeatFrame, arrival: number, verified: boolean): void {
    const epoch = this.#aggregator.epoch;
    const r = this.#aggregator.observeBeat(frame, arrival, { verified });
    if (r.beat === undefined) {
      const st = r.status;
      if (st !== "ignored" && st !== "new" && st !== "restart") this.#frameRejected(st);
      return;
    }
    this.#beats++;
    if (verified) this.#framesVerified++;
    if (r.status === "restart") {
      this.#logger.info("following a new timeline", {
        epoch: frame.epoch ?? 0,
        previous_epoch: epoch,
        beat: frame.beat_index,
        verified,
      });
    }
    this.dispatchEvent(new CustomEvent<BeatObservation>("beat", { detail: r.beat }));
  }

  #frameRejected(reason: FrameRejectReason, detail?: LogFields): void {
    this.#framesRejected[reason]++;
    if (
      reason === "oversized" || reason === "malformed" || reason === "schema" ||
      reason === "cluster" || reason === "unreadable"
    ) this.#framesInvalid++;
    this.#frameLog.add(reason, detail);
  }

  #onBarMessage(m: BusMessage): void {
    let report: unknown;
    try {
      if (m.data.byteLength > MAX_REPORT_BYTES) throw new RangeError("report too large");
      report = JSON.parse(decoder.decode(m.data));
    } catch {
      this.#barsInvalid++;
      return;
    }
    const r = this.#validator.validateMessage(report);
    if (!r.valid || r.type !== "backbeat.barreport.v1") {
      this.#barsInvalid++;
      return;
    }
    this.#addHistory(report as BarReport);
  }

  #addHistory(report: BarReport): void {
    const now = this.#clock.now();
    this.#lastReportSeenAt = now;
    if (this.#historyIds.has(report.window_id)) return;
    this.#historyIds.set(report.window_id, now);
    // History is in publish order: a new timeline starts at a low beat again and is still the
    // newest. Only a report a few windows below the newest (two reverbs around a takeover) moves
    // to its place, looking back a bounded number of entries.
    const h = this.#history;
    const span = (report.to_beat - report.from_beat + 1) * MAX_OPEN_WINDOWS;
    let i = h.length;
    while (
      i > 0 && h.length - i < MAX_OPEN_WINDOWS && h[i - 1].from_beat > report.from_beat &&
      h[i - 1].from_beat - report.from_beat <= span
    ) i--;
    h.splice(i, 0, report);
    while (h.length > this.#historySize) this.#historyIds.delete(h.shift()!.window_id);
    this.#shadow = this.#shadow.filter((s) => s.report.window_id !== report.window_id);
    this.dispatchEvent(new CustomEvent<BarReport>("report", { detail: report }));
  }

  #onWindowClosed(report: BarReport, info: WindowInfo): void {
    const v = this.#validator.validateMessage(report);
    if (!v.valid) {
      // A bug, not bad input: never publish a report that breaks the contract.
      this.#reportsInvalid++;
      this.#logger.error("report failed schema validation, not published", {
        window_id: report.window_id,
        errors: v.errors,
      });
      return;
    }
    if (this.active) {
      this.#publish(report, info);
    } else {
      this.#shadow.push({ report, info });
      if (this.#shadow.length > MAX_SHADOW_REPORTS) this.#shadow.shift();
    }
  }

  #publish(report: BarReport, info: WindowInfo): void {
    const seen = this.#historyIds.get(report.window_id);
    if (seen !== undefined) {
      // Reported already. By another reverb moments ago (a takeover), that is expected; long ago,
      // the id was reused (a v1.0 timeline restarted without an epoch): say so.
      const barMs = info.windowEnd - info.windowStart;
      if (this.#clock.now() - seen > 4 * barMs + this.#aggregator.graceMs) {
        this.#reportsDuplicate++;
        this.#reportLog.add("duplicate_window_id", {
          window_id: report.window_id,
          from_beat: report.from_beat,
        });
      }
      return;
    }
    const data = encoder.encode(JSON.stringify(report));
    const headers = { "x-window-id": report.window_id, "x-reverb-id": this.id };
    try {
      if (this.#stream) this.#stream.publish(data, report.window_id, headers);
      else this.#bus.publish(this.#subjects.bar, data, { headers });
    } catch (error) {
      this.#logger.error("cannot publish report", {
        window_id: report.window_id,
        error: (error as Error).message,
      });
      this.#error("Cannot publish report", error);
    }
    this.#reportsPublished++;
    const lag = Math.max(0, this.#clock.now() - info.closeAt);
    this.#lastLagMs = lag;
    if (lag > this.#maxLagMs) this.#maxLagMs = lag;
    this.#addHistory(report);
    this.#logger.debug("report published", {
      window_id: report.window_id,
      from_beat: report.from_beat,
      agents_reporting: report.agents_reporting,
      lag_ms: round3(lag),
    });
  }

  #armSummary(): void {
    const every = this.#options.summaryIntervalMs ?? DEFAULT_SUMMARY_INTERVAL_MS;
    this.#lastSummaryAt = this.#clock.now();
    // The window starts now: the time between construction and start saw no claims, and would
    // dilute the rate.
    this.#rateSamples = [{ at: this.#lastSummaryAt, accepted: this.#intake.stats.accepted }];
    const tick = () => {
      if (this.#stopping) return;
      const now = this.#clock.now();
      this.#summary = this.#makeSummary(now, now - this.#lastSummaryAt);
      this.#lastSummaryAt = now;
      this.dispatchEvent(new CustomEvent<ClaimsSummary>("claims", { detail: this.#summary }));
      this.#summaryCancel = this.#clock.schedule(now + every, tick);
    };
    this.#summaryCancel = this.#clock.schedule(this.#lastSummaryAt + every, tick);
  }

  // The intake's refusals, and the aggregator's late claims (accepted, but not in their window).
  #rejected(): Record<RejectReason, number> {
    return { ...this.#intake.stats.rejected, late: this.#aggregator.lateClaims };
  }

  #makeSummary(now: number, elapsedMs: number): ClaimsSummary {
    const s = this.#intake.stats;
    const rate = elapsedMs > 0 ? (s.accepted - this.#lastAccepted) / (elapsedMs / 1000) : 0;
    this.#lastAccepted = s.accepted;
    const samples = this.#rateSamples;
    const last = samples.at(-1);
    if (last === undefined || now - last.at >= RATE_SAMPLE_MS) {
      samples.push({ at: now, accepted: s.accepted });
    }
    // Keep the newest sample at or before the window's start, so the window is covered whole.
    while (samples.length > 1 && samples[1].at <= now - RATE_WINDOW_MS) samples.shift();
    const span = now - samples[0].at;
    const windowRate = span > 0 ? (s.accepted - samples[0].accepted) / (span / 1000) : 0;
    return {
      accepted: s.accepted,
      rejected: this.#rejected(),
      accepted_per_second: Math.round(rate * 10) / 10,
      accepted_rate_per_second: Math.round(windowRate * 10) / 10,
      rate_window_seconds: Math.round(span / 100) / 10,
      agents_tracked: this.#aggregator.agentCount,
      in_flight: s.inFlight,
      queued: s.queued,
    };
  }

  /**
   * The current claims counters.
   *
   * @returns A summary (the rate is the one of the last summary interval).
   */
  claimsSummary(): ClaimsSummary {
    const s = this.#intake.stats;
    return {
      ...this.#summary,
      accepted: s.accepted,
      rejected: this.#rejected(),
      agents_tracked: this.#aggregator.agentCount,
      in_flight: s.inFlight,
      queued: s.queued,
    };
  }

  /**
   * Problems an operator should see: no beats (pulse leaderless), a disconnected bus, no
   * history stream, no report for more than a bar (no active aggregator).
   *
   * @returns Human-readable warnings, empty when healthy.
   */
  warnings(): string[] {
    const out: string[] = [];
    const now = this.#clock.now();
    const agg = this.#aggregator;
    if (this.#bus.status !== "connected") out.push(`bus ${this.#bus.status}`);
    if (agg.lastBeat === undefined) out.push("no beat frames received yet");
    else if (agg.isLeaderless(now)) {
      out.push(
        `no beat for ${
          ((now - agg.lastBeat.arrival) / 1000).toFixed(1)
        } s: pulse leaderless or unreachable; windows extrapolated`,
      );
    }
    if (this.#streamWanted && this.#stream === undefined) {
      out.push("history stream unavailable: reports are not persisted");
    }
    if (this.#stream && this.#stream.pending > 0) {
      out.push(`${this.#stream.pending} reports waiting to be stored`);
    }
    const replay = this.#replay.stats;
    if (this.#started && this.#replayWanted() && !replay.persistent) {
      out.push("replay marks not loaded from the KV bucket: a restart forgets them");
    }
    if (agg.lastBeat !== undefined && !agg.confirmed) {
      out.push("following a timeline no second frame has confirmed yet: no window closes");
    }
    const t = agg.timeline;
    if (t && agg.lastBeat && agg.nextBar !== undefined) {
      const barMs = t.periodAt(agg.lastBeat.beat_index) * t.beatsPerBar;
      const since = this.#lastReportSeenAt || this.#firstWindowDue();
      if (since > 0 && now - since > barMs * 1.5 + agg.graceMs) {
        out.push(
          `no bar report for ${((now - since) / 1000).toFixed(1)} s: no active aggregator?`,
        );
      }
    }
    return out;
  }

  #replayWanted(): boolean {
    return isNatsBus(this.#bus) && (this.#options.replayStore ?? true);
  }

  #firstWindowDue(): number {
    const agg = this.#aggregator;
    const t = agg.timeline;
    if (!t || agg.nextBar === undefined) return 0;
    return t.dueAt(agg.nextBar + t.beatsPerBar) + agg.graceMs;
  }

  /**
   * Everything `/api/v1/status` shows.
   *
   * @returns The status.
   */
  status(): ReverbStatus {
    const agg = this.#aggregator;
    const beat = agg.lastBeat ?? null;
    return {
      cluster_id: this.clusterId,
      reverb_id: this.id,
      active: this.active,
      active_id: this.active ? this.id : this.#lease?.holder ?? null,
      tempo_bpm: beat ? agg.timeline!.tempoAt(beat.beat_index) : null,
      beats_per_bar: agg.timeline?.beatsPerBar ?? beat?.beats_per_bar ?? 4,
      beat,
      grace_ms: round3(agg.graceMs),
      require_signatures: this.#intake.requireSignatures,
      legacy_claim_signatures: this.#intake.legacySignatures,
      max_claim_age_ms: this.#intake.maxClaimAgeMs,
      max_clock_offset_ms: this.#intake.maxClockOffsetMs,
      keyring_keys: this.keyring.size,
      frames: {
        verified: this.pulseKeyring !== undefined,
        pulse_keyring_keys: this.pulseKeyring?.size ?? null,
        rejected: { ...this.#framesRejected },
        epoch: agg.epoch,
        confirmed: agg.confirmed,
        timeline_restarts: agg.timelineRestarts,
      },
      replay: {
        marks: this.#replay.stats.marks,
        persistent: this.#replay.stats.persistent,
        evicted: this.#replay.stats.evicted,
        store_failures: this.#replay.stats.storeFailures,
      },
      claims: this.claimsSummary(),
      reports_published: this.#reportsPublished,
      history_size: this.#history.length,
      report_lag_ms: this.#reportsPublished ? round3(this.#lastLagMs) : null,
      report_lag_max_ms: this.#reportsPublished ? round3(this.#maxLagMs) : null,
      stream: this.#streamWanted
        ? { name: barStreamName(this.clusterId), ready: this.#stream !== undefined }
        : null,
      bus: this.#bus.status,
      warnings: this.warnings(),
    };
  }

  /**
   * Readiness: started, not stopping, bus connected, history stream open when wanted.
   *
   * @returns Whether ready, and why not.
   */
  readiness(): { ready: boolean; reasons: string[] } {
    const reasons: string[] = [];
    if (!this.#started) reasons.push("not started");
    if (this.#stopping) reasons.push("stopping");
    if (this.#bus.status !== "connected") reasons.push(`bus ${this.#bus.status}`);
    if (this.#streamWanted && this.#stream === undefined) {
      reasons.push("history stream unavailable");
    }
    return { ready: reasons.length === 0, reasons };
  }

  /**
   * A snapshot of reverb's counters (render it with {@linkcode renderReverbMetrics}).
   *
   * @returns The counters now.
   */
  metrics(): ReverbMetrics {
    const s = this.#intake.stats;
    const agg = this.#aggregator;
    const replay = this.#replay.stats;
    return {
      clusterId: this.clusterId,
      claimsAccepted: s.accepted,
      claimsSigned: s.signed,
      claimsRejected: this.#rejected(),
      verifyTime: this.#intake.verifyTime.snapshot(),
      verifyOffloaded: s.offloaded,
      verifyInFlight: s.inFlight,
      verifyQueued: s.queued,
      reportsPublished: this.#reportsPublished,
      reportsInvalid: this.#reportsInvalid,
      reportLagMs: this.#lastLagMs,
      reportLagMaxMs: this.#maxLagMs,
      agentsTracked: agg.agentCount,
      agentsEvicted: agg.evicted,
      beatsObserved: this.#beats,
      framesInvalid: this.#framesInvalid,
      framesStale: agg.staleFrames,
      framesRejected: { ...this.#framesRejected },
      framesVerified: this.#framesVerified,
      timelineRestarts: agg.timelineRestarts,
      epoch: agg.epoch,
      barsSkipped: agg.skippedBars,
      windowsDropped: agg.droppedWindows,
      reportsDuplicate: this.#reportsDuplicate,
      replayMarks: replay.marks,
      replayMarksEvicted: replay.evicted,
      replayStoreFailures: replay.storeFailures,
      active: this.active,
      tempoBpm: agg.lastBeat?.tempo_bpm ?? 0,
      tempoDriftMs: agg.lastBeat?.drift_ms ?? 0,
      keyringKeys: this.keyring.size,
      keyringReloadFailures: this.#watcher?.failures ?? 0,
      pulseKeyringKeys: this.pulseKeyring?.size ?? 0,
      historyStreamReady: this.#stream !== undefined,
    };
  }

  /**
   * Stops everything started: subscriptions, timers, lease (released, so a standby takes over
   * at once), stream, keyring watcher, and the bus if reverb created it. Idempotent. An HTTP
   * server serving this reverb keeps running (its readiness turns false): shut it down after.
   *
   * @returns Resolves once stopped.
   */
  stop(): Promise<void> {
    this.#stopping ??= this.#stopInner();
    return this.#stopping;
  }

  async #stopInner(): Promise<void> {
    this.#signal?.removeEventListener("abort", this.#onAbort);
    this.#summaryCancel?.();
    this.#cancelStreamRetry?.();
    for (const s of this.#subs) s.unsubscribe();
    this.#subs = [];
    this.#aggregator.stop();
    await this.#aggregator.settled();
    await withTimeout(this.#intake.idle(), STOP_DRAIN_MS, this.#clock);
    await this.#intake.close();
    // The last marks are written before the bucket is let go (bounded).
    await this.#replay.stop();
    this.#active = false;
    await this.#kv?.release().catch(() => {});
    await this.#stream?.close();
    await this.#watcher?.stop();
    await this.#pulseWatcher?.stop();
    this.#frameLog.stop();
    this.#claimLog.stop();
    this.#reportLog.stop();
    this.#storeLog.stop();
    if (this.#ownsBus) await this.#bus.close();
    if (this.#running) this.#logger.info("reverb stopped", { id: this.id });
  }

  /**
   * `await using` support: {@linkcode Reverb.stop}.
   *
   * @returns Resolves once stopped.
   */
  [Symbol.asyncDispose](): Promise<void> {
    return this.stop();
  }

  #error(message: string, error: unknown): void {
    this.dispatchEvent(new ErrorEvent("error", { message, error }));
  }
}

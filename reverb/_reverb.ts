// Reverb: verified status aggregation. Wires the bus subscriptions (beat, status, bar) to the
// intake and the aggregator, publishes one BarReport per window when active, keeps a bounded
// history (replayed from JetStream on NATS) and elects one active aggregator through the shared
// KvLease. HTTP is served beside it (serveReverbHttp), not by it.

import {
  assertClusterId,
  BackbeatError,
  type BarReport,
  type Bus,
  type BusMessage,
  type BusSubscription,
  type Clock,
  type ClusterSubjects,
  InMemoryBus,
  IsolatedEventTarget,
  Keyring,
  type Logger,
  parseInstant,
  silentLogger,
  subjects,
  SystemClock,
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
  type WindowInfo,
} from "./_aggregate.ts";
import {
  ClaimIntake,
  DEFAULT_MAX_CLAIM_BYTES,
  DEFAULT_MAX_IN_FLIGHT,
  DEFAULT_MAX_QUEUED,
  type RejectReason,
} from "./_intake.ts";
import type { BarStream } from "./_stream.ts";

/** Default for {@linkcode ReverbOptions.maxClaimAgeBeats} (the CLI's default too). */
export const DEFAULT_MAX_CLAIM_AGE_BEATS = 8;
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
/** Reports computed while standby, kept for a takeover. */
const MAX_SHADOW_REPORTS = 16;
/** Wait before trying an unavailable history stream again. */
const STREAM_RETRY_MS = 5_000;
/** Largest bar report read from the bus. */
const MAX_REPORT_BYTES = 65_536;
/** Longest wait for verifications in flight when stopping. */
const STOP_DRAIN_MS = 2_000;

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
   * The keyring: a file path (watched and reloaded) or a loaded {@linkcode Keyring}.
   * @default {Keyring.EMPTY}
   */
  keyring?: string | Keyring;
  /** Reject unsigned claims. @default {false} */
  requireSignatures?: boolean;
  /**
   * Wait after a window's end before reporting it, in ms; `undefined` means a quarter beat, at
   * most 2000 ms.
   * @default {undefined}
   */
  graceMs?: number;
  /** Largest claim in bytes. @default {4096} */
  maxClaimBytes?: number;
  /** Claims whose HLC is older than this many beats are rejected as stale. @default {8} */
  maxClaimAgeBeats?: number;
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
  /** Times the cluster's timeline restarted and reverb followed it. */
  readonly timelineRestarts: number;
  /** Windows not reported after a stall. */
  readonly barsSkipped: number;
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
  /** Whether the JetStream history stream is open. */
  readonly historyStreamReady: boolean;
}

/** A claims summary, dispatched as the `claims` event and served in `/api/v1/status`. */
export interface ClaimsSummary {
  /** Claims accepted since start. */
  accepted: number;
  /** Claims rejected since start, by reason. */
  rejected: Record<RejectReason, number>;
  /** Accepted claims per second over the last interval. */
  accepted_per_second: number;
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
  /** Whether unsigned claims are rejected. */
  require_signatures: boolean;
  /** Keys in the keyring. */
  keyring_keys: number;
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
  readonly #maxClaimAgeBeats: number;
  readonly #intake: ClaimIntake;
  readonly #aggregator: BarAggregator;
  #keyring: Keyring;
  #watcher: KeyringWatcher | undefined;
  #subs: BusSubscription[] = [];
  #history: BarReport[] = [];
  #historyIds = new Set<string>();
  #shadow: Array<{ report: BarReport; info: WindowInfo }> = [];
  #stream: BarStream | undefined;
  #streamWanted = false;
  #cancelStreamRetry: (() => void) | undefined;
  #lease: KvLease | undefined;
  #active = false;
  #started = false;
  #stopping: Promise<void> | undefined;
  #summaryCancel: (() => void) | undefined;
  #lastAccepted = 0;
  #lastSummaryAt = 0;
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
   * @throws {TypeError} On an invalid cluster id.
   * @throws {RangeError} On an out-of-range limit.
   */
  constructor(options: ReverbOptions) {
    super();
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
    this.#maxClaimAgeBeats = options.maxClaimAgeBeats ?? DEFAULT_MAX_CLAIM_AGE_BEATS;
    if (!(this.#maxClaimAgeBeats > 0)) {
      throw new RangeError(
        `Invalid maxClaimAgeBeats ${options.maxClaimAgeBeats}: expected a number > 0`,
      );
    }
    this.#keyring = options.keyring instanceof Keyring ? options.keyring : Keyring.EMPTY;
    const validator = this.#validator;
    this.#aggregator = new BarAggregator({
      clusterId: options.clusterId,
      clock: this.#clock,
      graceMs: options.graceMs,
      maxAgents: options.maxAgents ?? DEFAULT_MAX_AGENTS,
      evictAfterBars: options.evictAfterBars ?? DEFAULT_EVICT_AFTER_BARS,
      onReport: (report, info) => this.#onWindowClosed(report, info),
      onEvict: (agentId) => this.#intake.forget(agentId),
    });
    const aggregator = this.#aggregator;
    this.#intake = new ClaimIntake({
      validate: (value) => {
        const r = validator.validateMessage(value);
        return r.valid && r.type === "backbeat.statusclaim.v1";
      },
      keyring: () => this.#keyring,
      requireSignatures: options.requireSignatures ?? false,
      maxClaimBytes: options.maxClaimBytes ?? DEFAULT_MAX_CLAIM_BYTES,
      maxInFlight: options.maxInFlight ?? DEFAULT_MAX_IN_FLIGHT,
      maxQueued: options.maxQueued ?? DEFAULT_MAX_QUEUED,
      verifyWorkers: options.verifyWorkers ?? DEFAULT_VERIFY_WORKERS,
      maxClaimAgeMs: () => this.#maxClaimAgeBeats * aggregator.periodMs,
      clock: this.#clock,
      // Replay memory is kept for as many agents as the aggregator tracks (evictions free it).
      maxTrackedAgents: options.maxAgents ?? DEFAULT_MAX_AGENTS,
      onAccept: (claim, arrival, key) => aggregator.acceptClaim(claim, arrival, key),
      onReject: (reason, agentId, arrival, key) =>
        aggregator.rejectClaim(reason, agentId, arrival, key),
    });
    this.#summary = this.#makeSummary(0);
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
    const bus = this.#bus;
    const nats = isNatsBus(bus);
    // Bar subscription first, then the replay: no report slips between the two.
    this.#subs.push(bus.subscribe(this.#subjects.bar, (m) => this.#onBarMessage(m)));
    if (nats && (o.stream ?? true)) {
      this.#streamWanted = true;
      await this.#openStream(bus);
    }
    this.#subs.push(bus.subscribe(this.#subjects.beat, (m) => this.#onBeatMessage(m)));
    this.#subs.push(bus.subscribe(this.#subjects.status, (m) => this.#intake.handle(m)));
    if (nats && (o.ha ?? true)) {
      this.#lease = await openKvLease({
        bus,
        bucket: await kvBucketName(this.clusterId, "reverb"),
        holderId: this.id,
        // Reverb's HA takes over as fast as pulse's: the lease's own default is the one fact.
        ttlMs: o.leaseTtlMs ?? DEFAULT_LEASE_TTL_MS,
        clock: this.#clock,
      });
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
    // The schema's date-time admits instants Date.parse cannot read (a leap second).
    if (typeof frame === "string" || !Number.isFinite(parseInstant(frame.deadline_at))) {
      this.#framesInvalid++;
      return;
    }
    const obs = this.#aggregator.observeBeat(frame, arrival);
    if (obs === undefined) return;
    this.#beats++;
    this.dispatchEvent(new CustomEvent<BeatObservation>("beat", { detail: obs }));
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
    this.#lastReportSeenAt = this.#clock.now();
    if (this.#historyIds.has(report.window_id)) return;
    this.#historyIds.add(report.window_id);
    const h = this.#history;
    if (h.length === 0 || h[h.length - 1].from_beat <= report.from_beat) h.push(report);
    else {
      h.push(report);
      h.sort((a, b) => a.from_beat - b.from_beat);
    }
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
    if (this.#historyIds.has(report.window_id)) return;
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
    const tick = () => {
      if (this.#stopping) return;
      const now = this.#clock.now();
      this.#summary = this.#makeSummary(now - this.#lastSummaryAt);
      this.#lastSummaryAt = now;
      this.dispatchEvent(new CustomEvent<ClaimsSummary>("claims", { detail: this.#summary }));
      this.#summaryCancel = this.#clock.schedule(now + every, tick);
    };
    this.#summaryCancel = this.#clock.schedule(this.#lastSummaryAt + every, tick);
  }

  #makeSummary(elapsedMs: number): ClaimsSummary {
    const s = this.#intake.stats;
    const rate = elapsedMs > 0 ? (s.accepted - this.#lastAccepted) / (elapsedMs / 1000) : 0;
    this.#lastAccepted = s.accepted;
    return {
      accepted: s.accepted,
      rejected: { ...s.rejected },
      accepted_per_second: Math.round(rate * 10) / 10,
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
      rejected: { ...s.rejected },
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
      keyring_keys: this.keyring.size,
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
    return {
      claimsAccepted: s.accepted,
      claimsSigned: s.signed,
      claimsRejected: { ...s.rejected },
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
      timelineRestarts: agg.timelineRestarts,
      barsSkipped: agg.skippedBars,
      active: this.active,
      tempoBpm: agg.lastBeat?.tempo_bpm ?? 0,
      tempoDriftMs: agg.lastBeat?.drift_ms ?? 0,
      keyringKeys: this.keyring.size,
      keyringReloadFailures: this.#watcher?.failures ?? 0,
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
    if (this.#lease) {
      this.#active = false;
      await this.#lease.release().catch(() => {});
    }
    await this.#stream?.close();
    await this.#watcher?.stop();
    if (this.#ownsBus) await this.#bus.close();
    if (this.#started) this.#logger.info("reverb stopped", { id: this.id });
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

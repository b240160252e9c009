// Reverb: verified status aggregation. Wires the bus subscriptions (beat, status, bar) to the
// intake and the aggregator, publishes one BarReport per window when active, keeps a bounded
// history (replayed from JetStream on NATS), elects one active aggregator through the shared
// KvLease, and serves HTTP when asked.

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
  type Logger,
  parseInstant,
  silentLogger,
  subjects,
  SystemClock,
} from "../core/mod.ts";
import { kvBucketName, type KvLease, type NatsBusLike, openKvLease } from "../nats/mod.ts";
import { decodeBeatFrame, defaultMessageValidator, type MessageValidator } from "../schemas/mod.ts";
import { PrometheusWriter } from "../service/mod.ts";
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
  REJECT_REASONS,
  type RejectReason,
} from "./_intake.ts";
import { Keyring, KeyringWatcher } from "./_keyring.ts";
import type { BarStream } from "./_stream.ts";
import { type HttpServerHandle, startHttpServer } from "./_http.ts";

/** Default for {@linkcode ReverbOptions.maxClaimAgeBeats}. */
export const DEFAULT_MAX_CLAIM_AGE_BEATS = 8;
/** Default for {@linkcode ReverbOptions.historySize}. */
export const DEFAULT_HISTORY_SIZE = 256;
/** Default for {@linkcode ReverbOptions.historyMaxAgeMs}: 7 days. */
export const DEFAULT_HISTORY_MAX_AGE_MS = 7 * 24 * 3_600_000;
/** Default for {@linkcode ReverbOptions.historyMaxMsgs}. */
export const DEFAULT_HISTORY_MAX_MSGS = 10_000;
/** Default for {@linkcode ReverbOptions.leaseTtlMs}. */
export const DEFAULT_REVERB_LEASE_TTL_MS = 600;
/** Default for {@linkcode ReverbOptions.verifyWorkers}: one less than the CPUs, at most 4. */
export const DEFAULT_VERIFY_WORKERS: number = Math.max(
  0,
  Math.min(4, (globalThis.navigator?.hardwareConcurrency ?? 1) - 1),
);
/** Default for {@linkcode ReverbOptions.summaryIntervalMs}. */
export const DEFAULT_SUMMARY_INTERVAL_MS = 500;
/** Reports computed while standby, kept for a takeover. */
const MAX_SHADOW_REPORTS = 16;
/** Wait before trying an unavailable history stream again. */
const STREAM_RETRY_MS = 5_000;
/** Largest bar report read from the bus. */
const MAX_REPORT_BYTES = 65_536;

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
   * @default {DEFAULT_VERIFY_WORKERS: one less than the CPUs, at most 4}
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
  /** Lease time to live in ms. @default {600} */
  leaseTtlMs?: number;
  /** Serve HTTP here (port 0: any free port). @default {undefined, no HTTP} */
  http?: { hostname?: string; port: number };
  /** How often a claims summary event is dispatched, in ms. @default {500} */
  summaryIntervalMs?: number;
  /** Time source and timers. @default {new SystemClock()} */
  clock?: Clock;
  /** Where reverb logs. @default {silentLogger} */
  logger?: Logger;
  /** Schema validator. @default {defaultMessageValidator()} */
  validator?: MessageValidator;
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
 *
 * Events: `beat` (`CustomEvent<BeatObservation>`), `report` (`CustomEvent<BarReport>`, every
 * report entering the history, whoever published it), `claims` (`CustomEvent<ClaimsSummary>`,
 * periodic), `role` (`CustomEvent<{ active: boolean }>`), `error` (`ErrorEvent`).
 *
 * @example Aggregate on the embedded bus
 * ```ts
 * import { InMemoryBus } from "@chorus/backbeat/sdk";
 * import { Reverb } from "@chorus/backbeat/reverb";
 * const bus = new InMemoryBus();
 * const reverb = new Reverb({ clusterId: "dev", bus });
 * reverb.addEventListener("report", (e) => console.log((e as CustomEvent).detail));
 * await reverb.start();
 * await reverb.stop();
 * await bus.close();
 * ```
 */
export class Reverb extends IsolatedEventTarget {
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
  #streamRetry: ReturnType<typeof setTimeout> | undefined;
  #lease: KvLease | undefined;
  #active = false;
  #http: HttpServerHandle | undefined;
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

  /** The HTTP address, once serving. */
  get httpAddr(): Deno.NetAddr | undefined {
    return this.#http?.addr;
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
   * Starts reverb: loads the keyring, opens the stream and replays history (NATS), subscribes,
   * competes for the active role (NATS) and serves HTTP when configured.
   *
   * @param signal Stops reverb when aborted.
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
      this.#watcher = new KeyringWatcher(o.keyring);
      this.#watcher.addEventListener("error", (e) => {
        this.#logger.error("keyring reload failed", { error: (e as ErrorEvent).message });
      });
      this.#watcher.addEventListener("reload", (e) => {
        this.#logger.info("keyring reloaded", (e as CustomEvent).detail);
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
        ttlMs: o.leaseTtlMs ?? DEFAULT_REVERB_LEASE_TTL_MS,
      });
      this.#lease.addEventListener("acquired", () => this.#setActive(true));
      this.#lease.addEventListener("lost", (e) => {
        const detail = (e as CustomEvent).detail;
        if (detail.reason === "released") this.#logger.info("handed the active role over", detail);
        else this.#logger.warn("lost the active role", detail);
        this.#setActive(false);
      });
      this.#lease.addEventListener("error", (e) => {
        this.#logger.warn("lease error", { error: (e as ErrorEvent).message });
      });
      await this.#lease.start();
    } else {
      this.#setActive(true);
    }
    if (o.http) {
      this.#http = startHttpServer(this, {
        hostname: o.http.hostname ?? "127.0.0.1",
        port: o.http.port,
        logger: this.#logger,
      });
    }
    this.#armSummary();
    this.#logger.info("reverb started", {
      cluster: this.clusterId,
      id: this.id,
      nats,
      stream: this.#stream?.name ?? null,
      http: this.#http ? `${this.#http.addr.hostname}:${this.#http.addr.port}` : null,
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
        this.#streamRetry = setTimeout(() => {
          this.#streamRetry = undefined;
          if (!this.#stopping) this.#openStream(bus);
        }, STREAM_RETRY_MS);
      }
    }
  }

  #setActive(active: boolean): void {
    if (this.#active === active) return;
    this.#active = active;
    this.#logger.info(active ? "active aggregator" : "standby", { id: this.id });
    this.dispatchEvent(new CustomEvent("role", { detail: { active } }));
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
    this.dispatchEvent(new CustomEvent("beat", { detail: obs }));
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
    this.dispatchEvent(new CustomEvent("report", { detail: report }));
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
      this.dispatchEvent(new CustomEvent("claims", { detail: this.#summary }));
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
   * The Prometheus exposition of reverb's metrics.
   *
   * @returns The text (content type {@linkcode PROMETHEUS_CONTENT_TYPE}).
   */
  metricsText(): string {
    const s = this.#intake.stats;
    const agg = this.#aggregator;
    const w = new PrometheusWriter();
    w.counter(
      "backbeat_reverb_claims_accepted_total",
      "Status claims accepted.",
      s.accepted,
    );
    w.counter(
      "backbeat_reverb_claims_signed_total",
      "Accepted status claims that carried a verified signature.",
      s.signed,
    );
    w.histogram(
      "backbeat_reverb_verify_seconds",
      "Ed25519 signature verification time.",
      this.#intake.verifyTime.snapshot(),
      [1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 0.1, 1],
    );
    w.counter(
      "backbeat_reverb_reports_published_total",
      "Bar reports published.",
      this
        .#reportsPublished,
    );
    w.counter(
      "backbeat_reverb_reports_invalid_total",
      "Bar reports that failed schema validation and were not published.",
      this.#reportsInvalid,
    );
    w.gauge(
      "backbeat_reverb_report_lag_seconds",
      "Delay of the last published report after its window's end plus grace.",
      this.#lastLagMs / 1000,
    );
    w.gauge(
      "backbeat_reverb_report_lag_max_seconds",
      "Largest report delay after window end plus grace since start.",
      this.#maxLagMs / 1000,
    );
    w.gauge("backbeat_reverb_agents_tracked", "Agents tracked.", agg.agentCount);
    w.counter(
      "backbeat_reverb_agents_evicted_total",
      "Agents evicted after silence.",
      agg
        .evicted,
    );
    w.counter("backbeat_reverb_beats_observed_total", "Beat frames observed.", this.#beats);
    w.counter(
      "backbeat_reverb_frames_invalid_total",
      "Beat frames that were not valid JSON or failed the schema.",
      this.#framesInvalid,
    );
    w.counter(
      "backbeat_reverb_frames_stale_total",
      "Beat frames ignored because their beat_index was not above the highest seen.",
      agg.staleFrames,
    );
    w.counter(
      "backbeat_reverb_timeline_restarts_total",
      "Times the cluster's beat_index went back for two bars and reverb followed the new timeline.",
      agg.timelineRestarts,
    );
    w.counter(
      "backbeat_reverb_bars_skipped_total",
      "Windows not reported after a stall.",
      agg.skippedBars,
    );
    w.gauge("backbeat_reverb_active", "1 when this reverb publishes reports.", this.active ? 1 : 0);
    w.gauge(
      "backbeat_reverb_tempo_bpm",
      "Tempo of the latest beat.",
      agg.lastBeat?.tempo_bpm ?? 0,
    );
    w.gauge(
      "backbeat_reverb_tempo_drift_ms",
      "Arrival of the latest beat minus its announced schedule (positive = behind).",
      agg.lastBeat?.drift_ms ?? 0,
    );
    w.counter(
      "backbeat_reverb_verify_offloaded_total",
      "Signatures verified in worker threads.",
      s.offloaded,
    );
    w.gauge("backbeat_reverb_verify_in_flight", "Signature verifications running.", s.inFlight);
    w.gauge("backbeat_reverb_verify_queued", "Claims waiting for verification.", s.queued);
    w.gauge("backbeat_reverb_keyring_keys", "Keys in the keyring.", this.keyring.size);
    w.counter(
      "backbeat_reverb_keyring_reload_failures_total",
      "Keyring reloads that failed (the previous keyring was kept).",
      this.#watcher?.failures ?? 0,
    );
    w.gauge(
      "backbeat_reverb_history_stream_ready",
      "1 when the JetStream history stream is open.",
      this.#stream ? 1 : 0,
    );
    // One family with a sample per reason (the writer emits one sample per family).
    const lines = [
      "# HELP backbeat_reverb_claims_rejected_total Status claims rejected, by reason.",
      "# TYPE backbeat_reverb_claims_rejected_total counter",
    ];
    for (const r of REJECT_REASONS) {
      lines.push(`backbeat_reverb_claims_rejected_total{reason="${r}"} ${s.rejected[r]}`);
    }
    return w.toString() + lines.join("\n") + "\n";
  }

  /**
   * Stops everything started: subscriptions, timers, lease (released, so a standby takes over
   * at once), stream, keyring watcher, HTTP (event streams are closed), and the bus if reverb
   * created it. Idempotent.
   */
  stop(): Promise<void> {
    this.#stopping ??= this.#stopInner();
    return this.#stopping;
  }

  async #stopInner(): Promise<void> {
    this.#signal?.removeEventListener("abort", this.#onAbort);
    this.#summaryCancel?.();
    clearTimeout(this.#streamRetry);
    for (const s of this.#subs) s.unsubscribe();
    this.#subs = [];
    this.#aggregator.stop();
    await this.#aggregator.settled();
    let timer: ReturnType<typeof setTimeout> | undefined;
    await Promise.race([
      this.#intake.idle(),
      new Promise((r) => timer = setTimeout(r, 2_000)),
    ]);
    clearTimeout(timer);
    await this.#intake.close();
    if (this.#lease) {
      this.#active = false;
      await this.#lease.release().catch(() => {});
    }
    await this.#http?.close();
    await this.#stream?.close();
    await this.#watcher?.close();
    if (this.#ownsBus) await this.#bus.close();
    if (this.#started) this.#logger.info("reverb stopped", { id: this.id });
  }

  /** `await using` support: {@linkcode Reverb.stop}. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.stop();
  }

  #error(message: string, error: unknown): void {
    this.dispatchEvent(new ErrorEvent("error", { message, error }));
  }
}

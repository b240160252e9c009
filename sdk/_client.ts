import {
  assertClusterId,
  BackbeatError,
  type BeatFrame,
  type Bus,
  type BusHeaders,
  type BusStatusDetail,
  CLAIM_STATES,
  type ClaimState,
  type Clock,
  type ClusterSubjects,
  HybridLogicalClock,
  importSigningKey,
  InvalidMessageError,
  IsolatedEventTarget,
  type Logger,
  type SigningKey,
  type SigningKeyInput,
  signPayload,
  type StatusClaim,
  subjects,
  SystemClock,
} from "../core/mod.ts";
import { type BudgetSource, type BudgetWatcher, runWithBeatBudget } from "./_budget.ts";
import { type FeedFrame, type FeedListener, joinBeatFeed } from "./_beat_feed.ts";
import { type Watchdogs, watchdogsOf } from "./_watchdog.ts";
import {
  type ClientConfig,
  DEFAULT_BEATS_PER_BAR_HINT,
  DEFAULT_CLAIM_BUFFER_SIZE,
  DEFAULT_ERROR_HISTORY_SIZE,
  DEFAULT_JITTER_TOLERANCE_MS,
  DEFAULT_LATENCY_WINDOW_SIZE,
  DEFAULT_MAX_CALLBACKS,
  DEFAULT_TASK_ID,
} from "./_config.ts";
import { rememberWindowId, SyntheticBeats, windowIdCached } from "./_degrade.ts";
import { type ClientHealth, ErrorRing, LatencyWindow } from "./_health.ts";
import { leaseNatsBus, type NatsConnectionOptions, type NatsLease } from "../nats/mod.ts";
import { defaultMessageValidator } from "../schemas/mod.ts";

/** What a callback learns about a beat besides the frame. */
export interface BeatInfo {
  /** True for a beat the client made up while pulse was quiet (degraded mode). */
  readonly synthetic: boolean;
  /** When the frame arrived, or when a synthetic beat fell due (client clock, epoch ms). */
  readonly at: number;
  /** Pulse's publish instant from the `x-pulse-sent` header (epoch ms), when sent. */
  readonly sentAt?: number;
  /** Headers of a real frame (`x-pulse-id`, `x-fencing-token`, …). */
  readonly headers?: BusHeaders;
}

/**
 * A beat or downbeat callback. A thrown error or rejected promise is isolated and counted. The
 * frame is frozen: one object is shared by every client of the process.
 */
export type BeatCallback = (frame: BeatFrame, info: BeatInfo) => void | Promise<void>;

/** The fields a caller gives `emitStatusClaim`; the client fills in the rest. */
export interface StatusClaimInput {
  /** The agent's state. */
  state: ClaimState;
  /** Completion ratio, 0 to 1. @default {0} */
  progress?: number;
  /** Estimated beats to completion (integer ≥ 0). @default {0} */
  beats_left?: number;
  /** Free text, at most 256 characters. @default {""} */
  notes?: string;
  /** The task; overrides the configured `taskId`. @default {config.taskId} */
  task_id?: string;
}

/** Detail of the `beat` and `downbeat` events. */
export interface BeatEventDetail {
  /** The frame. */
  readonly frame: BeatFrame;
  /** Synthetic flag and arrival data. */
  readonly info: BeatInfo;
}

/** Detail of the `degraded` event. */
export interface DegradedEventDetail {
  /** The last real beat_index received. */
  readonly lastBeat: number;
  /** When degraded mode began (client clock, epoch ms). */
  readonly at: number;
}

/** Detail of the `recovered` event. */
export interface RecoveredEventDetail {
  /** The real beat_index that ended degraded mode. */
  readonly beat: number;
  /** Synthetic beats delivered while degraded. */
  readonly syntheticBeats: number;
  /** How long degraded mode lasted, in ms. */
  readonly degradedMs: number;
}

/** Lifecycle states of a {@linkcode Client}. */
export const ClientState = {
  Idle: "idle",
  Starting: "starting",
  Running: "running",
  Stopping: "stopping",
  Stopped: "stopped",
} as const;
/** One of {@linkcode ClientState}'s values. */
export type ClientState = typeof ClientState[keyof typeof ClientState];

/** Wait at most this long for the bus to confirm claims while stopping. */
const STOP_FLUSH_TIMEOUT_MS = 2_000;
/** Log dropped stale frames at most this often. */
const STALE_LOG_INTERVAL_MS = 10_000;

interface Entry {
  readonly fn: BeatCallback;
}

interface Pending {
  readonly payload: Uint8Array;
  readonly headers: Record<string, string>;
}

const encoder = new TextEncoder();
// Clients left on the default clock share it, and so share one watchdog timer.
const DEFAULT_CLOCK = new SystemClock();

function checkText(value: unknown, what: string, min: number): void {
  if (typeof value !== "string" || value.length < min || value.length > 256) {
    throw new TypeError(
      `Invalid ${what} ${JSON.stringify(value)}: expected a string of ${min} to 256 characters`,
    );
  }
}

function checkInt(value: number, what: string, min: number, max: number): void {
  if (!Number.isInteger(value) || value < min || value > max) {
    throw new RangeError(`Invalid ${what} ${value}: expected an integer from ${min} to ${max}`);
  }
}

/**
 * A BACKBEAT-aware service in a few lines: beat and downbeat callbacks (in order, once each,
 * isolated from each other), signed status claims, beat budgets, health, and local degradation
 * (synthetic beats on the cluster's timeline while pulse is quiet).
 *
 * Events (besides the callbacks): `beat` and `downbeat` (`CustomEvent<BeatEventDetail>`),
 * `degraded` (`CustomEvent<DegradedEventDetail>`), `recovered`
 * (`CustomEvent<RecoveredEventDetail>`), `error` (`ErrorEvent`: failed callbacks, dropped
 * frames, lost claims), `status` (`CustomEvent<BusStatusDetail>`, the bus's). An event
 * listener that throws is isolated like a callback.
 *
 * @example The reference usage, embedded
 * ```ts
 * import { Client, defaultConfig, InMemoryBus } from "@chorus/backbeat";
 * const config = defaultConfig();
 * config.clusterId = "chorus-dev";
 * config.agentId = "my-service";
 * config.bus = new InMemoryBus(); // or: config.natsUrl = "nats://localhost:4222"
 * await using client = new Client(config);
 * client.onBeat(() => client.emitStatusClaim({ state: "executing", progress: 0.5, notes: "Processing data" }));
 * client.onDownbeat((beat) => console.log("bar started", beat.window_id));
 * await client.start();
 * console.log(client.health().connected); // true
 * ```
 */
export class Client extends IsolatedEventTarget {
  /** The cluster followed. */
  readonly clusterId: string;
  /** This agent's id. */
  readonly agentId: string;
  readonly #taskId: string;
  readonly #subjects: ClusterSubjects;
  readonly #clock: Clock;
  readonly #watchdogs: Watchdogs;
  readonly #logger: Logger;
  readonly #jitter: number;
  readonly #bpbHint: number;
  readonly #bufferCap: number;
  readonly #degradeOn: boolean;
  readonly #maxCallbacks: number;
  readonly #natsUrl: string | undefined;
  readonly #natsOptions: NatsConnectionOptions;
  readonly #givenBus: Bus | undefined;
  readonly #keyInput: SigningKeyInput | undefined;
  readonly #keyId: string | undefined;
  readonly #latency: LatencyWindow;
  readonly #errors: ErrorRing;
  readonly #hlc: HybridLogicalClock;
  // Listeners per event type, so a beat with no `beat` listener skips building an event. A
  // `once` listener stays counted after it fires: an extra dispatch is harmless, a missed one not.
  readonly #listening = new Map<string, Set<EventListenerOrEventListenerObject>>();

  #state: ClientState = "idle";
  #starting: Promise<void> | undefined;
  #stopping: Promise<void> | undefined;
  #bus: Bus | undefined;
  #lease: NatsLease | undefined;
  #leaveFeed: (() => void) | undefined;
  #signal: AbortSignal | undefined;
  #key: SigningKey | undefined;
  #firstWindow = "";

  #beatCbs: readonly Entry[] = [];
  #downbeatCbs: readonly Entry[] = [];
  readonly #budgets = new Set<BudgetWatcher>();

  #lastDelivered = -1;
  #lastReal = -1;
  #current: BeatFrame | undefined;
  #currentAt = 0;
  #missed = 0;
  #dropped = 0;
  #callbackErrors = 0;
  #lastStaleLog = -Infinity;

  #anchor: BeatFrame | undefined;
  #anchorAt = 0;
  #lastDownbeat: number | undefined;
  #previousDownbeat: number | undefined;
  #remoteHlc: string | undefined;

  #synthetic: SyntheticBeats | undefined;
  #degradedSince = 0;
  #syntheticCount = 0;

  #buffer: Pending[] = [];
  #claimsSent = 0;
  #claimsDropped = 0;
  #chain: Promise<void> | undefined;

  readonly #listener: FeedListener = {
    frame: (f) => this.#onFrame(f),
    invalid: (reason) => this.#onInvalid(reason),
  };
  readonly #budgetSource: BudgetSource = {
    add: (w) => {
      this.#budgets.add(w);
      return () => this.#budgets.delete(w);
    },
  };

  /**
   * Creates a client; nothing connects until {@linkcode Client.start}.
   *
   * @param config From {@linkcode defaultConfig}, with `clusterId`, `agentId` and `natsUrl` or
   * `bus` set. The values are copied: later changes to the object have no effect.
   * @throws {TypeError} On a missing or malformed cluster id, agent id, task id or transport.
   * @throws {RangeError} On a numeric option out of range.
   */
  constructor(config: ClientConfig) {
    super();
    if (config === null || typeof config !== "object") {
      throw new TypeError("Invalid client config: expected an object (see defaultConfig())");
    }
    assertClusterId(config.clusterId);
    checkText(config.agentId, "agentId", 1);
    const taskId = config.taskId ?? DEFAULT_TASK_ID;
    checkText(taskId, "taskId", 1);
    if (config.bus === undefined && !config.natsUrl) {
      throw new TypeError(
        "Invalid client config: set natsUrl (a NATS server URL) or bus (e.g. new InMemoryBus())",
      );
    }
    const jitter = config.jitterToleranceMs ?? DEFAULT_JITTER_TOLERANCE_MS;
    if (!(jitter >= 0 && jitter <= 3_600_000)) {
      throw new RangeError(`Invalid jitterToleranceMs ${jitter}: expected 0 to 3600000`);
    }
    const bpb = config.beatsPerBar ?? DEFAULT_BEATS_PER_BAR_HINT;
    checkInt(bpb, "beatsPerBar", 1, 64);
    const bufferCap = config.claimBufferSize ?? DEFAULT_CLAIM_BUFFER_SIZE;
    checkInt(bufferCap, "claimBufferSize", 0, 1_000_000);
    const window = config.latencyWindowSize ?? DEFAULT_LATENCY_WINDOW_SIZE;
    checkInt(window, "latencyWindowSize", 1, 1_000_000);
    const history = config.errorHistorySize ?? DEFAULT_ERROR_HISTORY_SIZE;
    checkInt(history, "errorHistorySize", 0, 10_000);
    const maxCallbacks = config.maxCallbacks ?? DEFAULT_MAX_CALLBACKS;
    checkInt(maxCallbacks, "maxCallbacks", 1, 1_000_000);

    this.clusterId = config.clusterId;
    this.agentId = config.agentId;
    this.#taskId = taskId;
    this.#subjects = subjects(config.clusterId);
    this.#clock = config.clock ?? DEFAULT_CLOCK;
    this.#watchdogs = watchdogsOf(this.#clock);
    this.#logger = config.logger ?? console;
    this.#jitter = jitter;
    this.#bpbHint = bpb;
    this.#bufferCap = bufferCap;
    this.#degradeOn = config.localDegradation ?? true;
    this.#maxCallbacks = maxCallbacks;
    this.#natsUrl = config.natsUrl;
    this.#natsOptions = { ...config.natsOptions };
    this.#givenBus = config.bus;
    this.#keyInput = config.signingKey;
    this.#keyId = config.keyId;
    this.#latency = new LatencyWindow(window);
    this.#errors = new ErrorRing(history);
    this.#hlc = new HybridLogicalClock({ clock: () => this.#clock.now() });
  }

  /** The lifecycle state. */
  get state(): ClientState {
    return this.#state;
  }

  /** The bus in use once started (shared with other clients when it came from `natsUrl`). */
  get bus(): Bus | undefined {
    return this.#bus;
  }

  /** Base64 of the raw Ed25519 public key claims are signed with, once started. */
  get publicKey(): string | undefined {
    return this.#key?.publicKey;
  }

  /** The `x-key-id` sent with signed claims, once started. */
  get keyId(): string | undefined {
    return this.#key?.keyId;
  }

  /**
   * Connects (or joins the process's shared connection), imports the signing key and starts
   * following the beat. Calling it again while starting or running returns the same promise.
   *
   * @param signal Stops the client when aborted.
   * @returns Resolves once beats are being received.
   * @throws {BackbeatError} `connection` when NATS cannot be reached, `key` on a bad signing
   * key, `aborted` when the signal aborts first, `closed` after `stop()`.
   */
  start(signal?: AbortSignal): Promise<void> {
    if (this.#state === "idle") {
      this.#starting = this.#start(signal);
      return this.#starting;
    }
    if (this.#state === "starting" || this.#state === "running") return this.#starting!;
    return Promise.reject(
      new BackbeatError("closed", "Cannot start: the client was stopped; create a new one"),
    );
  }

  async #start(signal: AbortSignal | undefined): Promise<void> {
    this.#state = "starting";
    const aborted = () =>
      new BackbeatError("aborted", "Cannot start: the signal was aborted", {
        cause: signal?.reason,
      });
    try {
      if (signal?.aborted) throw aborted();
      if (this.#keyInput !== undefined) {
        this.#key = await importSigningKey(this.#keyInput, this.#keyId);
      }
      this.#firstWindow = await windowIdCached(this.clusterId, 0);
      if (this.#givenBus) {
        this.#bus = this.#givenBus;
      } else {
        this.#lease = await leaseNatsBus(this.#natsUrl!, this.#natsOptions);
        this.#bus = this.#lease.bus;
      }
      if (this.#state !== "starting") {
        throw new BackbeatError("closed", "Cannot start: the client was stopped while starting");
      }
      if (signal?.aborted) throw aborted();
      this.#bus.addEventListener("status", this.#onStatus);
      this.#leaveFeed = joinBeatFeed(this.#bus, this.clusterId, this.#listener);
      this.#state = "running";
      if (signal) {
        this.#signal = signal;
        signal.addEventListener("abort", this.#onAbort, { once: true });
      }
    } catch (error) {
      await this.#teardown();
      this.#state = "stopped";
      throw error;
    }
  }

  /**
   * Stops: no more beats, synthetic beats or budgets (running budgets reject with `closed`),
   * pending claims are published and flushed, and the shared connection is released (closed
   * when this was its last client). Claims still buffered because the bus is down are counted
   * as dropped and reported. Idempotent.
   *
   * @returns Resolves when stopped.
   */
  stop(): Promise<void> {
    this.#stopping ??= this.#stop();
    return this.#stopping;
  }

  /** `await using` support: same as {@linkcode Client.stop}. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.stop();
  }

  async #stop(): Promise<void> {
    if (this.#state === "idle" || this.#state === "stopped") {
      this.#state = "stopped";
      return;
    }
    if (this.#state === "starting") {
      this.#state = "stopping";
      await this.#starting!.catch(() => {});
      this.#state = "stopped";
      return;
    }
    this.#state = "stopping";
    this.#leaveFeed?.();
    this.#leaveFeed = undefined;
    this.#watchdogs.forget(this.#watched);
    this.#isWatched = false;
    this.#synthetic?.stop();
    this.#synthetic = undefined;
    this.#signal?.removeEventListener("abort", this.#onAbort);
    this.#signal = undefined;
    for (const b of [...this.#budgets]) {
      b.close(new BackbeatError("closed", "Beat budget ended: the client stopped"));
    }
    await this.#chain;
    const bus = this.#bus;
    if (bus) {
      this.#flushBuffer();
      if (bus.status === "connected") await this.#flushBus(bus);
    }
    if (this.#buffer.length > 0) {
      const lost = this.#buffer.length;
      this.#claimsDropped += lost;
      this.#buffer = [];
      this.#report(
        "claim",
        `Lost ${lost} buffered claims: the client stopped while the bus was ${bus?.status}`,
        new BackbeatError("buffer_full", `Lost ${lost} buffered claims on stop`),
        "error",
      );
    }
    await this.#teardown();
    this.#state = "stopped";
  }

  async #flushBus(bus: Bus): Promise<void> {
    let timer: ReturnType<typeof setTimeout> | undefined;
    try {
      await Promise.race([
        bus.flush(),
        new Promise((resolve) => timer = setTimeout(resolve, STOP_FLUSH_TIMEOUT_MS)),
      ]);
    } catch (error) {
      this.#report("connection", `Cannot flush claims on stop: ${error}`, error);
    } finally {
      clearTimeout(timer);
    }
  }

  async #teardown(): Promise<void> {
    this.#bus?.removeEventListener("status", this.#onStatus);
    const lease = this.#lease;
    this.#lease = undefined;
    if (lease) {
      try {
        await lease.release();
      } catch (error) {
        this.#report("connection", `Cannot close the NATS connection: ${error}`, error);
      }
    }
  }

  #onAbort = (): void => {
    this.stop().catch((error) => this.#report("connection", `Stop failed: ${error}`, error));
  };

  #onStatus = (event: Event): void => {
    const detail = (event as CustomEvent<BusStatusDetail>).detail;
    if (detail.status === "connected") this.#flushBuffer();
    else if (detail.status === "closed" && this.#state === "running") {
      this.#report("connection", "The bus was closed while the client was running", undefined);
    }
    this.dispatchEvent(new CustomEvent<BusStatusDetail>("status", { detail }));
  };

  /**
   * Registers a callback for every beat (real or synthetic), in beat order, once per beat.
   *
   * @param callback Receives the frame and {@linkcode BeatInfo}; may be async (not awaited).
   * @returns Unsubscribe (idempotent).
   * @throws {TypeError} When `callback` is not a function.
   * @throws {RangeError} When `maxCallbacks` callbacks are already registered.
   *
   * @example Log each beat
   * ```ts
   * import { Client, InMemoryBus } from "@chorus/backbeat";
   * const client = new Client({ clusterId: "dev", agentId: "a", bus: new InMemoryBus() });
   * const off = client.onBeat((beat, info) => console.log(beat.beat_index, info.synthetic));
   * off();
   * ```
   */
  onBeat(callback: BeatCallback): () => void {
    return this.#register(false, callback);
  }

  /**
   * Registers a callback for the first beat of every bar.
   *
   * @param callback Receives the frame and {@linkcode BeatInfo}; may be async (not awaited).
   * @returns Unsubscribe (idempotent).
   * @throws {TypeError} When `callback` is not a function.
   * @throws {RangeError} When `maxCallbacks` callbacks are already registered.
   *
   * @example Log each bar
   * ```ts
   * import { Client, InMemoryBus } from "@chorus/backbeat";
   * const client = new Client({ clusterId: "dev", agentId: "a", bus: new InMemoryBus() });
   * client.onDownbeat((beat) => console.log("bar started", beat.window_id));
   * ```
   */
  onDownbeat(callback: BeatCallback): () => void {
    return this.#register(true, callback);
  }

  #register(downbeat: boolean, callback: BeatCallback): () => void {
    if (typeof callback !== "function") {
      throw new TypeError(
        `Cannot register ${downbeat ? "downbeat" : "beat"} callback: expected a function`,
      );
    }
    if (this.#beatCbs.length + this.#downbeatCbs.length >= this.#maxCallbacks) {
      throw new RangeError(
        `Cannot register callback: ${this.#maxCallbacks} callbacks are already registered`,
      );
    }
    // Copy on write: a beat being delivered keeps the list it started with.
    const entry: Entry = { fn: callback };
    if (downbeat) this.#downbeatCbs = [...this.#downbeatCbs, entry];
    else this.#beatCbs = [...this.#beatCbs, entry];
    return () => {
      if (downbeat) this.#downbeatCbs = this.#downbeatCbs.filter((e) => e !== entry);
      else this.#beatCbs = this.#beatCbs.filter((e) => e !== entry);
    };
  }

  #onInvalid(reason: string): void {
    if (this.#state !== "running") return;
    this.#dropped++;
    this.#report("invalid_frame", `Dropped a beat frame: ${reason}`, undefined);
  }

  #onFrame(f: FeedFrame): void {
    if (this.#state !== "running") return;
    const frame = f.frame;
    const index = frame.beat_index;
    const now = this.#clock.now();
    if (index <= this.#lastReal) {
      // A deposed pulse still publishing, or a duplicate.
      this.#dropped++;
      if (now - this.#lastStaleLog >= STALE_LOG_INTERVAL_MS) {
        this.#lastStaleLog = now;
        this.#logger.warn(
          `[backbeat] Dropped stale beat ${index} (last real beat ${this.#lastReal}): a deposed pulse or a duplicate`,
        );
      }
      return;
    }
    this.#lastReal = index;
    this.#anchor = frame;
    this.#anchorAt = now;
    this.#remoteHlc = frame.hlc;
    if (frame.downbeat) {
      this.#previousDownbeat = this.#lastDownbeat;
      this.#lastDownbeat = index;
    }
    if (this.#synthetic) this.#recover(index, now);
    // A beat already delivered synthetically is not delivered again.
    if (index > this.#lastDelivered) {
      const info: BeatInfo = { synthetic: false, at: now, sentAt: f.sentAt, headers: f.headers };
      this.#deliver(frame, info, now, true);
    }
    this.#armWatchdog(frame, now);
    if (frame.downbeat && this.#degradeOn) this.#lookAhead(frame);
  }

  // Synthetic beats need the next bar's window id the moment pulse goes quiet: compute it a bar
  // ahead (once per process, whatever the number of clients).
  #lookAhead(frame: BeatFrame): void {
    const index = frame.beat_index;
    rememberWindowId(this.clusterId, index, frame.window_id);
    const spacing = this.#previousDownbeat === undefined
      ? undefined
      : index - this.#previousDownbeat;
    const bpb = frame.beats_per_bar ??
      (spacing !== undefined && spacing >= 1 && spacing <= 64 ? spacing : this.#bpbHint);
    windowIdCached(this.clusterId, index + bpb).catch(() => {});
  }

  #deliver(frame: BeatFrame, info: BeatInfo, at: number, fresh: boolean): void {
    const index = frame.beat_index;
    if (this.#lastDelivered >= 0 && index > this.#lastDelivered + 1) {
      this.#missed += index - this.#lastDelivered - 1;
    }
    this.#lastDelivered = index;
    this.#current = frame;
    this.#currentAt = at;
    // Budgets first, so a budget started by a callback of this beat does not count it.
    if (this.#budgets.size > 0) { for (const b of this.#budgets) b.tick(); }
    // A real frame's arrival was read just now: the first callback's entry is that instant.
    let entry = fresh ? at : this.#clock.now();
    for (const e of this.#beatCbs) {
      this.#invoke(e.fn, frame, info, entry - at);
      entry = this.#clock.now();
    }
    if (frame.downbeat) {
      for (const e of this.#downbeatCbs) {
        this.#invoke(e.fn, frame, info, entry - at);
        entry = this.#clock.now();
      }
    }
    const beatListeners = this.#listening.get("beat")?.size ?? 0;
    const downbeatListeners = frame.downbeat ? this.#listening.get("downbeat")?.size ?? 0 : 0;
    if (beatListeners + downbeatListeners > 0) {
      const detail: BeatEventDetail = { frame, info };
      this.dispatchEvent(new CustomEvent<BeatEventDetail>("beat", { detail }));
      if (frame.downbeat) {
        this.dispatchEvent(new CustomEvent<BeatEventDetail>("downbeat", { detail }));
      }
    }
  }

  #invoke(fn: BeatCallback, frame: BeatFrame, info: BeatInfo, latency: number): void {
    this.#latency.record(latency);
    try {
      const result = fn(frame, info) as unknown;
      if (result !== null && typeof result === "object" && "then" in result) {
        // Not awaited: a slow async callback must not hold up the others or the next beat.
        (result as PromiseLike<unknown>).then(undefined, (e) => this.#callbackFailed(e, frame));
      }
    } catch (error) {
      this.#callbackFailed(error, frame);
    }
  }

  #callbackFailed(error: unknown, frame: BeatFrame): void {
    this.#callbackErrors++;
    const why = error instanceof Error ? error.message : String(error);
    this.#report("callback", `Beat callback failed on beat ${frame.beat_index}: ${why}`, error);
  }

  #report(
    kind: string,
    message: string,
    error: unknown,
    level: "warn" | "error" = "warn",
  ): void {
    this.#errors.push({ at: this.#clock.now(), kind, message });
    this.#logger[level](`[backbeat] ${message}`);
    this.dispatchEvent(new ErrorEvent("error", { message, error }));
  }

  // The watchdog is shared by every client on this clock (one timer), and re-arming it here is
  // a field write: it is not on the delivery path.
  readonly #watched: { watchdogDue: number; watchdogExpired(now: number): void } = {
    watchdogDue: Infinity,
    watchdogExpired: (now: number) => {
      this.#isWatched = false;
      this.#onWatchdog(now);
    },
  };
  #isWatched = false;

  #armWatchdog(frame: BeatFrame, now: number): void {
    if (!this.#degradeOn) return;
    let period = 60_000 / frame.tempo_bpm;
    if (frame.next_tempo_bpm !== undefined) {
      period = Math.max(period, 60_000 / frame.next_tempo_bpm);
    }
    const due = now + period + this.#jitter;
    this.#watched.watchdogDue = due;
    if (!this.#isWatched || due < this.#watchdogs.at) {
      this.#isWatched = true;
      this.#watchdogs.watch(this.#watched);
    }
  }

  #onWatchdog(now: number): void {
    if (this.#state !== "running" || this.#synthetic) return;
    this.#enterDegraded(now);
  }

  #enterDegraded(now: number): void {
    const anchor = this.#anchor;
    if (!anchor) return;
    this.#degradedSince = now;
    this.#syntheticCount = 0;
    const synthetic = new SyntheticBeats({
      clock: this.#clock,
      clusterId: this.clusterId,
      anchor: {
        frame: anchor,
        at: this.#anchorAt,
        lastDownbeat: this.#lastDownbeat,
        previousDownbeat: this.#previousDownbeat,
        beatsPerBarHint: this.#bpbHint,
      },
      hlc: () => this.#hlc.now(),
      deliver: (frame, due) => this.#deliverSynthetic(synthetic, frame, due),
      fail: (error) =>
        this.#report("degraded", `Synthetic beats stopped: ${error}`, error, "error"),
    });
    this.#synthetic = synthetic;
    this.#logger.warn(
      `[backbeat] No beat from pulse within ${
        Math.round(now - this.#anchorAt)
      } ms after beat ${anchor.beat_index}: degraded mode, producing synthetic beats`,
    );
    this.dispatchEvent(
      new CustomEvent<DegradedEventDetail>("degraded", {
        detail: { lastBeat: anchor.beat_index, at: now },
      }),
    );
    synthetic.start(this.#lastDelivered);
  }

  #deliverSynthetic(source: SyntheticBeats, frame: BeatFrame, due: number): void {
    if (this.#state !== "running" || this.#synthetic !== source) return;
    if (frame.beat_index <= this.#lastDelivered) return;
    this.#syntheticCount++;
    this.#deliver(frame, { synthetic: true, at: due }, due, false);
  }

  #recover(index: number, now: number): void {
    this.#synthetic!.stop();
    this.#synthetic = undefined;
    const detail: RecoveredEventDetail = {
      beat: index,
      syntheticBeats: this.#syntheticCount,
      degradedMs: now - this.#degradedSince,
    };
    this.#logger.info(
      `[backbeat] Pulse is back at beat ${index}: left degraded mode after ${
        Math.round(detail.degradedMs)
      } ms and ${detail.syntheticBeats} synthetic beats`,
    );
    this.dispatchEvent(new CustomEvent<RecoveredEventDetail>("recovered", { detail }));
  }

  /**
   * Publishes a StatusClaim on `backbeat.<cluster>.status`. The client fills `type`,
   * `agent_id`, `task_id` (unless given), `beat_index` (the current beat) and `hlc`, validates
   * the claim (nothing is sent when it is invalid), and sends headers `x-window-id`, `x-hlc`,
   * `x-agent-id`, plus `x-signature` and `x-key-id` when a signing key is configured. Claims
   * keep their call order. While the bus is disconnected the claim waits in a bounded buffer,
   * flushed in order on reconnect.
   *
   * @param claim The state and optional progress, beats_left, notes, task_id.
   * @returns Resolves when the claim is published or buffered.
   * @throws {InvalidMessageError} `invalid_claim`, e.g. `Cannot emit claim: progress 1.5 is
   * above 1`.
   * @throws {BackbeatError} `buffer_full` when disconnected with a full buffer (counted in
   * `claimsDropped`), `not_started` before `start()`, `closed` after `stop()`.
   *
   * @example Report progress
   * ```ts
   * import { Client, InMemoryBus } from "@chorus/backbeat";
   * await using client = new Client({ clusterId: "dev", agentId: "a", bus: new InMemoryBus() });
   * await client.start();
   * await client.emitStatusClaim({ state: "executing", progress: 0.5, beats_left: 2, notes: "half way" });
   * console.log(client.health().claimsSent); // 1
   * ```
   */
  emitStatusClaim(claim: StatusClaimInput): Promise<void> {
    try {
      if (this.#state !== "running") {
        throw this.#stateError("emit claim");
      }
      const full = this.#buildClaim(claim);
      const payload = encoder.encode(JSON.stringify(full));
      const headers: Record<string, string> = {
        "x-window-id": this.#current?.window_id ?? this.#firstWindow,
        "x-hlc": full.hlc,
        "x-agent-id": this.agentId,
      };
      const key = this.#key;
      if (!key) {
        this.#send(payload, headers);
        return Promise.resolve();
      }
      // Sign at once (in parallel with earlier claims), publish in call order.
      const signature = signPayload(key.privateKey, payload);
      const previous = this.#chain;
      const done = (async () => {
        if (previous) await previous;
        headers["x-signature"] = await signature;
        headers["x-key-id"] = key.keyId;
        this.#send(payload, headers);
      })();
      const link: Promise<void> = done.catch(() => {}).then(() => {
        if (this.#chain === link) this.#chain = undefined;
      });
      this.#chain = link;
      return done;
    } catch (error) {
      return Promise.reject(error);
    }
  }

  #stateError(action: string): BackbeatError {
    return this.#state === "idle" || this.#state === "starting"
      ? new BackbeatError("not_started", `Cannot ${action}: the client is not started`)
      : new BackbeatError("closed", `Cannot ${action}: the client is stopped`);
  }

  #buildClaim(input: StatusClaimInput): StatusClaim {
    if (input === null || typeof input !== "object") {
      throw new TypeError("Cannot emit claim: expected an object with at least a state");
    }
    const problems: { path: string; keyword: string; message: string }[] = [];
    const { state, progress = 0, beats_left = 0, notes = "", task_id = this.#taskId } = input;
    if (!(CLAIM_STATES as readonly unknown[]).includes(state)) {
      problems.push({
        path: "/state",
        keyword: "enum",
        message: `state ${JSON.stringify(state)} is not one of ${CLAIM_STATES.join(", ")}`,
      });
    }
    if (typeof progress !== "number" || Number.isNaN(progress)) {
      problems.push({
        path: "/progress",
        keyword: "type",
        message: `progress ${JSON.stringify(progress)} is not a number`,
      });
    } else if (progress > 1) {
      problems.push({
        path: "/progress",
        keyword: "maximum",
        message: `progress ${progress} is above 1`,
      });
    } else if (progress < 0) {
      problems.push({
        path: "/progress",
        keyword: "minimum",
        message: `progress ${progress} is below 0`,
      });
    }
    if (!Number.isSafeInteger(beats_left)) {
      problems.push({
        path: "/beats_left",
        keyword: "type",
        message: `beats_left ${JSON.stringify(beats_left)} is not an integer`,
      });
    } else if (beats_left < 0) {
      problems.push({
        path: "/beats_left",
        keyword: "minimum",
        message: `beats_left ${beats_left} is below 0`,
      });
    }
    if (typeof notes !== "string") {
      problems.push({ path: "/notes", keyword: "type", message: "notes is not a string" });
    } else if (notes.length > 256) {
      problems.push({
        path: "/notes",
        keyword: "maxLength",
        message: `notes is ${notes.length} characters long, above the limit of 256`,
      });
    }
    if (typeof task_id !== "string" || task_id.length < 1 || task_id.length > 256) {
      problems.push({
        path: "/task_id",
        keyword: "type",
        message: `task_id ${JSON.stringify(task_id)} is not a string of 1 to 256 characters`,
      });
    }
    if (problems.length > 0) {
      throw new InvalidMessageError(
        "invalid_claim",
        `Cannot emit claim: ${problems.map((p) => p.message).join("; ")}`,
        problems,
      );
    }
    if (this.#remoteHlc !== undefined) {
      // Merge the last frame's stamp (a receive event) only when it matters: before a send.
      try {
        this.#hlc.update(this.#remoteHlc);
      } catch (error) {
        this.#report("hlc", `Ignored the HLC of beat ${this.#lastReal}: ${error}`, error);
      }
      this.#remoteHlc = undefined;
    }
    const claim: StatusClaim = {
      type: "backbeat.statusclaim.v1",
      agent_id: this.agentId,
      task_id,
      beat_index: this.#lastDelivered >= 0 ? this.#lastDelivered : 0,
      state,
      beats_left,
      progress,
      notes,
      hlc: this.#hlc.now(),
    };
    // The schema has the last word, so the client can never send what reverb would reject.
    const result = defaultMessageValidator().validateMessage(claim);
    if (!result.valid) {
      throw new InvalidMessageError(
        "invalid_claim",
        `Cannot emit claim: ${result.errors.map((e) => e.message).join("; ")}`,
        result.errors,
      );
    }
    return claim;
  }

  #send(payload: Uint8Array, headers: Record<string, string>): void {
    const bus = this.#bus!;
    if (bus.status === "closed") {
      throw new BackbeatError("closed", "Cannot emit claim: the bus is closed");
    }
    // Claims left behind by a flush that failed go first, so order holds without a new event.
    if (this.#buffer.length > 0 && bus.status === "connected") this.#flushBuffer();
    if (this.#buffer.length === 0 && bus.status === "connected") {
      try {
        bus.publish(this.#subjects.status, payload, { headers });
        this.#claimsSent++;
        return;
      } catch (error) {
        // A connection lost under us: keep the claim for the reconnect.
        if (!(error instanceof BackbeatError && error.code === "connection")) throw error;
      }
    }
    if (this.#buffer.length >= this.#bufferCap) {
      this.#claimsDropped++;
      const error = new BackbeatError(
        "buffer_full",
        `Cannot emit claim: the buffer of ${this.#bufferCap} claims is full while the bus is ${bus.status}`,
        { detail: { capacity: this.#bufferCap, dropped: this.#claimsDropped } },
      );
      this.#errors.push({ at: this.#clock.now(), kind: "claim", message: error.message });
      throw error;
    }
    this.#buffer.push({ payload, headers });
  }

  #flushBuffer(): void {
    const bus = this.#bus;
    if (!bus) return;
    while (this.#buffer.length > 0 && bus.status === "connected") {
      const next = this.#buffer[0];
      try {
        bus.publish(this.#subjects.status, next.payload, { headers: next.headers });
      } catch (error) {
        this.#report("connection", `Cannot flush buffered claims: ${error}`, error);
        return;
      }
      this.#buffer.shift();
      this.#claimsSent++;
    }
  }

  /**
   * Runs `fn(signal)` with a budget of `beats` beats (real or synthetic, counted from the call):
   * when the `beats`-th beat arrives first, the signal aborts and the call rejects with
   * {@linkcode BeatBudgetExceededError}. An error from `fn` passes through; its result is
   * returned. No timer or listener outlives the call.
   *
   * @param beats Budget in beats (integer ≥ 1).
   * @param fn The work; it should stop when the signal aborts.
   * @returns What `fn` returns.
   * @throws {BeatBudgetExceededError} When the budget runs out (`beatsUsed`, `budget`).
   * @throws {RangeError} When `beats` is not a positive integer.
   * @throws {TypeError} When `fn` is not a function.
   * @throws {BackbeatError} `not_started` before `start()`; `closed` when the client stops.
   *
   * @example Give work ten beats
   * ```ts
   * import { Client, InMemoryBus } from "@chorus/backbeat";
   * await using client = new Client({ clusterId: "dev", agentId: "a", bus: new InMemoryBus() });
   * await client.start();
   * const answer = await client.withBeatBudget(10, async (signal) => {
   *   signal.throwIfAborted();
   *   return 42;
   * });
   * console.log(answer); // 42
   * ```
   */
  withBeatBudget<T>(beats: number, fn: (signal: AbortSignal) => T | Promise<T>): Promise<T> {
    try {
      if (this.#state !== "running") throw this.#stateError("run with a beat budget");
      return runWithBeatBudget(this.#budgetSource, beats, fn);
    } catch (error) {
      return Promise.reject(error);
    }
  }

  /**
   * A snapshot of the client's state and counters.
   *
   * @returns Connection, degradation, the last beat, counters, callback latency and the last
   * errors.
   *
   * @example Print a health line
   * ```ts
   * import { Client, InMemoryBus } from "@chorus/backbeat";
   * const client = new Client({ clusterId: "dev", agentId: "a", bus: new InMemoryBus() });
   * const h = client.health();
   * console.log(h.connected, h.degraded, h.lastBeat); // false false null
   * ```
   */
  health(): ClientHealth {
    const bus = this.#bus;
    const current = this.#current;
    return {
      connected: this.#state === "running" && bus?.status === "connected",
      degraded: this.#synthetic !== undefined,
      lastBeat: current ? current.beat_index : null,
      lastBeatAt: current ? this.#currentAt : null,
      tempoBpm: current ? current.tempo_bpm : null,
      phase: current ? current.phase : null,
      windowId: current ? current.window_id : null,
      reconnectCount: bus?.reconnects ?? 0,
      missedBeats: this.#missed,
      droppedFrames: this.#dropped,
      claimsSent: this.#claimsSent,
      claimsBuffered: this.#buffer.length,
      claimsDropped: this.#claimsDropped,
      callbackErrors: this.#callbackErrors,
      callbackLatency: this.#latency.stats(),
      lastErrors: this.#errors.list(),
    };
  }

  /**
   * Adds an event listener; one that throws is isolated (counted and reported as an `error`
   * event) instead of becoming an uncaught exception.
   *
   * @param type The event type (`beat`, `downbeat`, `degraded`, `recovered`, `error`, `status`).
   * @param listener The listener.
   * @param options Standard listener options.
   */
  override addEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject | null,
    options?: boolean | AddEventListenerOptions,
  ): void {
    if (listener === null) return;
    super.addEventListener(type, listener, options);
    let set = this.#listening.get(type);
    if (!set) this.#listening.set(type, set = new Set());
    set.add(listener);
  }

  /**
   * Removes an event listener added with {@linkcode Client.addEventListener}.
   *
   * @param type The event type.
   * @param listener The listener.
   * @param options Standard listener options.
   */
  override removeEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject | null,
    options?: boolean | EventListenerOptions,
  ): void {
    if (listener === null) return;
    super.removeEventListener(type, listener, options);
    this.#listening.get(type)?.delete(listener);
  }

  /**
   * Counts what a listener threw and reports it as an `error` event (one from an `error`
   * listener is only logged, so errors cannot loop).
   *
   * @param type The event type whose listener threw.
   * @param error What it threw.
   */
  protected override onListenerError(type: string, error: unknown): void {
    this.#callbackErrors++;
    const message = `Event listener for ${type} failed: ${
      error instanceof Error ? error.message : error
    }`;
    if (type === "error") {
      this.#errors.push({ at: this.#clock.now(), kind: "callback", message });
      this.#logger.warn(`[backbeat] ${message}`);
    } else this.#report("callback", message, error);
  }
}

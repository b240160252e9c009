import {
  assertClusterId,
  BackbeatError,
  type BeatFrame,
  type Bus,
  type BusHeaders,
  type BusStatusDetail,
  cachedWindowId,
  type Clock,
  DEFAULT_BEATS_PER_BAR,
  DEFAULT_TEMPO_BPM,
  type FrameStatus,
  FrameTracker,
  HybridLogicalClock,
  importSigningKey,
  IsolatedEventTarget,
  type Keyring,
  knownWindowId,
  type LogFields,
  type Logger,
  MAX_BEAT_INDEX,
  parseInstant,
  Rejections,
  type SigningKey,
  type SigningKeyInput,
  subjects,
  SystemClock,
  Timeline,
} from "../core/mod.ts";
import { type BudgetSource, type BudgetWatcher, runWithBeatBudget } from "./_budget.ts";
import {
  type BeatFeed,
  type FeedFrame,
  type FeedListener,
  type FeedRejection,
  joinBeatFeed,
} from "./_beat_feed.ts";
import { copyPulseKeys, type PulseKeysInput, resolvePulseKeys } from "./_pulse_keys.ts";
import { type Watchdogs, watchdogsOf } from "./_watchdog.ts";
import {
  type ClientConfig,
  DEFAULT_CLAIM_BUFFER_SIZE,
  DEFAULT_DELIVERY,
  DEFAULT_ERROR_HISTORY_SIZE,
  DEFAULT_JITTER_TOLERANCE_MS,
  DEFAULT_LATENCY_WINDOW_SIZE,
  DEFAULT_MAX_CALLBACKS,
  DEFAULT_TASK_ID,
  type DeliveryMode,
  PHASE_SPIN_MS,
} from "./_config.ts";
import { type ClockSync, clockSyncOf, IDENTITY } from "./_clock_sync.ts";
import { beatDispatchOf, BeatScheduler } from "./_scheduler.ts";
import { BeatWaiters } from "./_waiters.ts";
import { type ClientHealth, ErrorRing, LatencyWindow } from "./_health.ts";
import { ListenerRegistry } from "./_listeners.ts";
import { ClaimOutbox, type StatusClaimInput } from "./_outbox.ts";
import { leaseNatsBus, type NatsConnectionOptions, type NatsLease } from "../nats/mod.ts";

/** What a callback learns about a beat besides the frame. */
export interface BeatInfo {
  /** True for a beat the client made up while pulse was quiet (degraded mode). */
  readonly synthetic: boolean;
  /**
   * True when the frame was built from the followed timeline rather than received: in scheduled
   * mode, a beat whose instant came before pulse's frame did (the usual case; a `confirmed` event
   * follows when the frame arrives and agrees, a `realigned` one when it does not), and every
   * synthetic beat. A predicted frame is exactly the frame pulse publishes for the beat, except
   * its `hlc`, which is this client's stamp taken when the frame was prepared, shortly before the
   * beat, and `next_tempo_bpm`, known only once a frame announced the change.
   */
  readonly predicted: boolean;
  /**
   * The instant the beat was delivered for (client clock, epoch ms): its due instant in scheduled
   * mode and for synthetic beats (pulse's schedule mapped through the clock estimate, or the
   * arrival-anchored timeline), the frame's arrival in arrival mode.
   */
  readonly at: number;
  /** When the real frame arrived (client clock, epoch ms); `undefined` for a predicted beat. */
  readonly arrivedAt?: number;
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

/** Detail of the `confirmed` event. */
export interface ConfirmedEventDetail {
  /** The beat_index. */
  readonly beat: number;
  /** Pulse's frame, which agreed with the prediction delivered. */
  readonly frame: BeatFrame;
  /** The instant the predicted beat was delivered for (client clock, epoch ms). */
  readonly predictedAt: number;
  /** When pulse's frame arrived (client clock, epoch ms). */
  readonly at: number;
}

/** Why the client moved to another timeline than the one it predicted from. */
export type RealignReason =
  /** Pulse's frame for a beat delivered as predicted disagrees (an unannounced change). */
  | "mismatch"
  /** A frame of another timeline: a newer epoch, or a realignment after agreeing frames. */
  | "restart"
  /** Pulse's frame is for a beat past the one scheduled next: the beats between are missed. */
  | "skip";

/** Detail of the `realigned` event. */
export interface RealignedEventDetail {
  /** Why. */
  readonly reason: RealignReason;
  /** The real frame that moved the timeline. */
  readonly frame: BeatFrame;
  /** The frame delivered for that beat as predicted, for a `mismatch`. */
  readonly predicted?: BeatFrame;
  /** Beats skipped (counted in `health().missedBeats`), for a `skip`. */
  readonly missed: number;
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

/**
 * The events of a {@linkcode Client}: they type each listener's event, so no listener casts.
 *
 * @example Typed listeners
 * ```ts
 * import { Client, InMemoryBus } from "@chorus/backbeat";
 * const client = new Client({ clusterId: "dev", agentId: "a", bus: new InMemoryBus() });
 * client.addEventListener("degraded", (e) => console.log("quiet after", e.detail.lastBeat));
 * client.addEventListener("error", (e) => console.log(e.message));
 * ```
 */
export interface ClientEventMap {
  /** Every beat, real or synthetic, after the callbacks. */
  beat: CustomEvent<BeatEventDetail>;
  /** The first beat of every bar, after the `beat` event. */
  downbeat: CustomEvent<BeatEventDetail>;
  /** Pulse went quiet: synthetic beats begin. */
  degraded: CustomEvent<DegradedEventDetail>;
  /** A real beat arrived again: synthetic beats end. */
  recovered: CustomEvent<RecoveredEventDetail>;
  /** Pulse's frame arrived for a beat delivered as predicted, and agrees with the prediction. */
  confirmed: CustomEvent<ConfirmedEventDetail>;
  /**
   * A real frame moved the followed timeline (an unannounced change, a new epoch, a jump): no
   * beat is delivered twice, and skipped ones are counted as missed.
   */
  realigned: CustomEvent<RealignedEventDetail>;
  /**
   * A failure nobody awaits: a callback or listener that threw, lost claims (every one), a
   * connection problem, synthetic beats that had to stop. Refused frames are not events (a
   * hostile bus must not drive a listener): they are counted in `health().framesRejected` and
   * logged at most every few seconds.
   */
  error: ErrorEvent;
  /** The bus's connection state changed (the bus's own detail). */
  status: CustomEvent<BusStatusDetail>;
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
/** Default of `ClientConfig.startupGraceMs`. */
const DEFAULT_STARTUP_GRACE_MS = 10_000;
const STOP_FLUSH_TIMEOUT_MS = 2_000;

/** Why a client refused a frame: the feed's reasons, or the tracker's. */
type FrameRefusal = FeedRejection | Exclude<FrameStatus, "new" | "restart">;

interface Entry {
  readonly fn: BeatCallback;
}

// Clients left on the default clock share it, and so share one watchdog timer.
const DEFAULT_CLOCK = new SystemClock();
// Scheduled beats of those clients: the same time, with timers finished by a spin, shared too, so
// the process has one wake-up and one spin per instant.
const PHASE_CLOCK = new SystemClock({ spinMs: PHASE_SPIN_MS });

/** Predictions remembered for their confirmation. */
const MAX_PREDICTIONS = 16;
/**
 * A real frame arriving at most this long (ms) before its instant, beyond the estimate's
 * uncertainty, is held until the instant; one arriving earlier proves the estimate wrong (pulse
 * never sends before a beat is due), and is delivered at once.
 */
const HOLD_SLACK_MS = 0.5;
/** Farthest `at()` target, in ms from now. */
const MAX_WAIT_MS = 86_400_000;

// Whether pulse's frame for a beat agrees with the frame predicted for it: the fields the
// timeline determines, the deadline within the tracker's own tolerance. An announcement
// (`next_tempo_bpm`) first seen in the real frame is news, not a disagreement.
function agrees(predicted: BeatFrame, real: BeatFrame): boolean {
  if (
    predicted.beat_index !== real.beat_index || predicted.downbeat !== real.downbeat ||
    predicted.phase !== real.phase || predicted.tempo_bpm !== real.tempo_bpm ||
    (predicted.epoch ?? 0) !== (real.epoch ?? 0) ||
    predicted.window_id !== real.window_id.toLowerCase() ||
    (real.beats_per_bar !== undefined && predicted.beats_per_bar !== real.beats_per_bar)
  ) return false;
  if (predicted.deadline_at === real.deadline_at) return true;
  const drift = Math.abs(parseInstant(predicted.deadline_at) - parseInstant(real.deadline_at));
  return drift <= Math.max(2, (60_000 / real.tempo_bpm) * 0.02);
}

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

// One line for a log of rate-limited refusals: the first refusal with its detail, then a summary
// of the counts since the previous line.
function refusalLine(message: string, fields: LogFields | undefined): string {
  const counts = fields?.counts as Record<string, number> | undefined;
  if (counts !== undefined) {
    const list = Object.entries(counts).map(([reason, n]) => `${n} ${reason}`).join(", ");
    return `${message} since the last line: ${list}`;
  }
  const detail = fields?.detail === undefined ? "" : `: ${fields.detail}`;
  return `${message} (${fields?.reason})${detail}; more are summarised every few seconds`;
}

function checkSignal(options: { signal?: AbortSignal } | undefined): AbortSignal | undefined {
  const signal = options?.signal;
  if (signal !== undefined && !(signal instanceof AbortSignal)) {
    throw new TypeError("Invalid signal: expected an AbortSignal");
  }
  return signal;
}

function captureOf(options: boolean | EventListenerOptions | undefined): boolean {
  return typeof options === "boolean" ? options : Boolean(options?.capture);
}

// A bus is any EventTarget: read its status event's detail only when it has the expected shape.
function busStatusDetail(event: Event): BusStatusDetail | undefined {
  if (!(event instanceof CustomEvent)) return undefined;
  const detail: unknown = event.detail;
  return detail !== null && typeof detail === "object" && "status" in detail &&
      typeof detail.status === "string"
    ? detail as BusStatusDetail
    : undefined;
}

// What the log says about a frame the tracker refused: enough to tell a forgery from a deposed
// pulse, bounded (every field the gate passed is short).
function refusalDetail(
  status: FrameRefusal,
  frame: BeatFrame,
  previous: BeatFrame | undefined,
): string {
  const beat = `beat ${frame.beat_index}`;
  const epoch = frame.epoch ?? 0;
  switch (status) {
    case "stale":
      return `${beat} is not after the latest beat ${previous?.beat_index} (a duplicate, or a deposed pulse)`;
    case "implausible":
      return `${beat} at ${frame.tempo_bpm} BPM is not what the followed timeline has due now`;
    case "old_epoch":
      return `${beat} is of epoch ${epoch}, older than the followed epoch ${previous?.epoch ?? 0}`;
    case "pending":
      return `${beat} opens epoch ${epoch}: followed once a second frame of it agrees`;
    case "unreadable":
      return `${beat} has a deadline_at no clock can read (${frame.deadline_at})`;
    default:
      return beat;
  }
}

// The listener registry of a client, for the SDK's own tests (not exported from mod.ts).
let registryOf: (client: Client) => ListenerRegistry;

/**
 * A BACKBEAT-aware service in a few lines: beat and downbeat callbacks (in order, once each,
 * isolated from each other), signed status claims, beat budgets, health, and local degradation
 * (synthetic beats on the cluster's timeline while pulse is quiet).
 *
 * By default (`config.delivery: "scheduled"`) every callback of a beat runs at the beat's instant
 * on pulse's own timeline, mapped onto this host's clock through an estimate of pulse's clock
 * that the process's clients share (clock exchanges with pulse, checked against the frames'
 * send instants), through one wake-up per instant for the whole process. The frame is pulse's
 * when it has arrived by then, else the one the timeline predicts (`info.predicted`), then
 * confirmed by pulse's (`confirmed`) or corrected (`realigned`); no beat is delivered twice, and a
 * skipped one is counted as missed. Until pulse answers a clock request beats are delivered on
 * arrival, as with `delivery: "arrival"`. {@linkcode Client.nextDownbeat} and
 * {@linkcode Client.at} resolve at a downbeat's or a beat's instant, so services start a job on
 * the same downbeat.
 *
 * Events (besides the callbacks): `beat` and `downbeat` (`CustomEvent<BeatEventDetail>`),
 * `degraded` (`CustomEvent<DegradedEventDetail>`), `recovered`
 * (`CustomEvent<RecoveredEventDetail>`), `confirmed` (`CustomEvent<ConfirmedEventDetail>`),
 * `realigned` (`CustomEvent<RealignedEventDetail>`), `error` (`ErrorEvent`: failed callbacks,
 * lost claims, connection trouble; refused frames are counted in `health().framesRejected` and
 * logged rate-limited instead), `status` (`CustomEvent<BusStatusDetail>`, the bus's); see
 * {@linkcode ClientEventMap}. An event listener that throws is isolated like a callback.
 *
 * Frames are untrusted: each goes through the frame gate, the signature check when
 * `config.pulseKeys` is set, and the client's frame tracker, which follows only a later beat of
 * the timeline it follows or a timeline it moves to (a newer epoch, or a realignment after a run
 * of agreeing frames); see docs/security.md.
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
export class Client extends IsolatedEventTarget<ClientEventMap> {
  static {
    registryOf = (client) => client.#listening;
  }

  /** The cluster followed. */
  readonly clusterId: string;
  /** This agent's id. */
  readonly agentId: string;
  readonly #clock: Clock;
  readonly #watchdogs: Watchdogs;
  readonly #logger: Logger;
  readonly #jitter: number;
  readonly #degradeOn: boolean;
  readonly #maxCallbacks: number;
  readonly #natsUrl: string | undefined;
  readonly #natsOptions: NatsConnectionOptions;
  readonly #givenBus: Bus | undefined;
  readonly #keyInput: SigningKeyInput | undefined;
  readonly #keyId: string | undefined;
  readonly #pulseKeysInput: PulseKeysInput | undefined;
  // Refused frames and lost claims: counted at once, logged rate-limited.
  readonly #refusals: Rejections;
  readonly #claimLosses: Rejections;
  readonly #latency: LatencyWindow;
  readonly #errors: ErrorRing;
  readonly #hlc: HybridLogicalClock;
  // Listeners per event type, so a beat with no `beat` listener skips building an event.
  readonly #listening = new ListenerRegistry();
  readonly #tracker: FrameTracker;
  readonly #outbox: ClaimOutbox;
  readonly #delivery: DeliveryMode;
  // The clock scheduled and synthetic beats are timed by (a spinning one by default).
  readonly #phaseClock: Clock;
  readonly #scheduler: BeatScheduler;
  readonly #phaseError: LatencyWindow;
  readonly #waiters = new BeatWaiters();
  readonly #realigns: Rejections;

  #state: ClientState = "idle";
  #starting: Promise<void> | undefined;
  #stopping: Promise<void> | undefined;
  #bus: Bus | undefined;
  #lease: NatsLease | undefined;
  #feed: BeatFeed | undefined;
  #leaveFeed: (() => void) | undefined;
  #signal: AbortSignal | undefined;
  #key: SigningKey | undefined;
  #pulseKeys: Keyring | undefined;
  #firstWindow = "";

  #beatCbs: readonly Entry[] = [];
  #downbeatCbs: readonly Entry[] = [];
  readonly #budgets = new Set<BudgetWatcher>();

  #lastDelivered = -1;
  #current: BeatFrame | undefined;
  #currentAt = 0;
  #missed = 0;
  #verifiedFrames = 0;
  #callbackErrors = 0;

  #remoteHlc: string | undefined;

  #degraded = false;
  #degradedSince = 0;
  #noPulse = false;
  readonly #graceMs: number;
  readonly #fallbackTempo: number;
  #cancelGrace: (() => void) | undefined;
  #syntheticCount = 0;

  #sync: ClockSync | undefined;
  #offSync: (() => void) | undefined;
  #locating = false;
  // Beats delivered as predicted, awaiting pulse's frame: a ring by beat_index (a slot is
  // overwritten by the beat MAX_PREDICTIONS later).
  readonly #predictions: ({ beat: number; frame: BeatFrame; at: number } | undefined)[] = new Array(
    MAX_PREDICTIONS,
  );
  #predictedBeats = 0;
  #confirmedBeats = 0;
  #realignments = 0;

  readonly #listener: FeedListener = (() => {
    // deno-lint-ignore no-this-alias
    const client = this;
    return {
      // Read by the feed when the client joins, after start() resolved the keys.
      get keyring(): Keyring | undefined {
        return client.#pulseKeys;
      },
      frame: (f: FeedFrame, verified: boolean) => client.#onFrame(f, verified),
      rejected: (reason: FeedRejection, detail: string) => client.#refuse(reason, detail),
    };
  })();
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
   * @throws {TypeError} On a missing or malformed cluster id, agent id, task id, transport or
   * delivery mode, or `pulseKeys` that are neither a `Keyring` nor its JSON.
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
    const bpb = config.beatsPerBar ?? DEFAULT_BEATS_PER_BAR;
    checkInt(bpb, "beatsPerBar", 1, 64);
    const bufferCap = config.claimBufferSize ?? DEFAULT_CLAIM_BUFFER_SIZE;
    checkInt(bufferCap, "claimBufferSize", 0, 1_000_000);
    const window = config.latencyWindowSize ?? DEFAULT_LATENCY_WINDOW_SIZE;
    checkInt(window, "latencyWindowSize", 1, 1_000_000);
    const history = config.errorHistorySize ?? DEFAULT_ERROR_HISTORY_SIZE;
    checkInt(history, "errorHistorySize", 0, 10_000);
    const maxCallbacks = config.maxCallbacks ?? DEFAULT_MAX_CALLBACKS;
    checkInt(maxCallbacks, "maxCallbacks", 1, 1_000_000);
    const delivery = config.delivery ?? DEFAULT_DELIVERY;
    if (delivery !== "scheduled" && delivery !== "arrival") {
      throw new TypeError(
        `Invalid delivery ${JSON.stringify(delivery)}: expected "scheduled" or "arrival"`,
      );
    }

    this.clusterId = config.clusterId;
    this.agentId = config.agentId;
    this.#clock = config.clock ?? DEFAULT_CLOCK;
    this.#phaseClock = config.clock ?? PHASE_CLOCK;
    this.#delivery = delivery;
    this.#watchdogs = watchdogsOf(this.#clock);
    this.#logger = config.logger ?? console;
    this.#jitter = jitter;
    this.#degradeOn = config.localDegradation ?? true;
    this.#graceMs = config.startupGraceMs ?? DEFAULT_STARTUP_GRACE_MS;
    if (!(Number.isFinite(this.#graceMs) && this.#graceMs >= 0 && this.#graceMs <= 86_400_000)) {
      throw new RangeError(
        `Invalid startupGraceMs ${config.startupGraceMs}: expected 0 to 86400000 ms`,
      );
    }
    this.#fallbackTempo = config.fallbackTempoBpm ?? DEFAULT_TEMPO_BPM;
    if (!(this.#fallbackTempo >= 0.1 && this.#fallbackTempo <= 6_000)) {
      throw new RangeError(
        `Invalid fallbackTempoBpm ${config.fallbackTempoBpm}: expected 0.1 to 6000`,
      );
    }
    this.#maxCallbacks = maxCallbacks;
    this.#natsUrl = config.natsUrl;
    this.#natsOptions = { ...config.natsOptions };
    this.#givenBus = config.bus;
    this.#keyInput = config.signingKey;
    this.#keyId = config.keyId;
    this.#pulseKeysInput = copyPulseKeys(config.pulseKeys);
    this.#latency = new LatencyWindow(window);
    this.#phaseError = new LatencyWindow(window);
    this.#errors = new ErrorRing(history);
    this.#hlc = new HybridLogicalClock({ clock: () => this.#clock.now() });
    this.#tracker = new FrameTracker({ beatsPerBarHint: bpb });
    this.#refusals = new Rejections({
      logger: this.#rateLimitedLog("invalid_frame", "warn"),
      clock: this.#clock,
      message: "Refused beat frames",
    });
    this.#claimLosses = new Rejections({
      logger: this.#rateLimitedLog("claim", "error"),
      clock: this.#clock,
      message: "Lost status claims",
    });
    this.#realigns = new Rejections({
      logger: this.#rateLimitedLog("realigned", "warn"),
      clock: this.#clock,
      message: "Realigned the beat timeline",
    });
    this.#scheduler = new BeatScheduler({
      clock: this.#phaseClock,
      dispatch: beatDispatchOf(this.#phaseClock),
      clusterId: config.clusterId,
      hlc: () => this.#hlc.now(),
      deliver: (frame, due, held) => this.#onScheduled(frame, due, held),
      fail: (error) =>
        this.#report("degraded", `Beat scheduling stopped: ${error}`, error, "error"),
    });
    this.#outbox = new ClaimOutbox({
      clusterId: config.clusterId,
      subject: subjects(config.clusterId).status,
      agentId: config.agentId,
      taskId,
      capacity: bufferCap,
      clock: this.#clock,
      position: () => ({
        beatIndex: this.#lastDelivered >= 0 ? this.#lastDelivered : 0,
        windowId: this.#current?.window_id ?? this.#firstWindow,
      }),
      stamp: () => this.#stamp(),
      report: (kind, message, error, level) => this.#report(kind, message, error, level),
      lost: (count, error) => {
        // Every loss is an error event and counted; the log is rate-limited, as a client emitting
        // each beat while disconnected for an hour would otherwise write a line per beat.
        this.#claimLosses.add(error.code, { detail: error.message, count });
        this.dispatchEvent(new ErrorEvent("error", { message: error.message, error }));
      },
    });
  }

  // A logger for Rejections: its lines go to the client's logger at `level`, prefixed, and to
  // lastErrors.
  #rateLimitedLog(kind: string, level: "warn" | "error"): Logger {
    const line = (message: string, fields?: LogFields) => {
      const text = refusalLine(message, fields);
      this.#errors.push({ at: this.#clock.now(), kind, message: text });
      this.#logger[level](`[backbeat] ${text}`);
    };
    return { debug: line, info: line, warn: line, error: line };
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
      if (this.#pulseKeysInput !== undefined) {
        this.#pulseKeys = await resolvePulseKeys(this.#pulseKeysInput);
      }
      this.#firstWindow = await cachedWindowId(this.clusterId, 0);
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
      this.#outbox.open(this.#bus, this.#key);
      const membership = joinBeatFeed(this.#bus, this.clusterId, this.#listener);
      this.#feed = membership.feed;
      this.#leaveFeed = membership.leave;
      if (this.#delivery === "scheduled") {
        // One estimate of pulse's clock per process (bus, cluster, keys, clock): the first client
        // starts measuring, the others read it.
        const sync = this.#sync = clockSyncOf(
          this.#bus,
          this.clusterId,
          this.#pulseKeys,
          this.#clock,
        );
        this.#offSync = sync.onChange(this.#onSyncChange);
        sync.join();
      }
      this.#state = "running";
      if (this.#degradeOn) {
        this.#cancelGrace = this.#clock.schedule(
          this.#clock.now() + this.#graceMs,
          () => this.#onNoPulse(),
        );
      }
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
    this.#cancelGrace?.();
    this.#cancelGrace = undefined;
    this.#scheduler.stop();
    this.#degraded = false;
    this.#offSync?.();
    this.#offSync = undefined;
    // The last client of the estimate waits for its exchange in flight (bounded by the request
    // timeout), so no timer outlives it.
    const synced = this.#sync?.leave();
    this.#sync = undefined;
    this.#signal?.removeEventListener("abort", this.#onAbort);
    this.#signal = undefined;
    for (const b of [...this.#budgets]) {
      b.close(new BackbeatError("closed", "Beat budget ended: the client stopped"));
    }
    this.#waiters.close(new BackbeatError("closed", "Beat wait ended: the client stopped"));
    await this.#outbox.close(STOP_FLUSH_TIMEOUT_MS);
    await synced;
    await this.#teardown();
    // The last summaries go out now; no timer outlives the client.
    this.#refusals.stop();
    this.#claimLosses.stop();
    this.#realigns.stop();
    this.#state = "stopped";
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
    const detail = busStatusDetail(event);
    if (detail === undefined) return;
    if (detail.status === "connected") this.#outbox.flush();
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

  #refuse(reason: FrameRefusal, detail: string): void {
    if (this.#state !== "running") return;
    this.#refusals.add(reason, { detail });
  }

  // Every frame goes through the tracker, which decides whether it is followed: a later beat of
  // the followed timeline (`new`), or a timeline the client moves to (`restart`: a newer epoch
  // vouched for by a pulse key or by a second agreeing frame, or a realignment after a run of
  // agreeing frames). Everything else is refused and counted, and changes nothing.
  #onFrame(f: FeedFrame, verified: boolean): void {
    if (this.#state !== "running") return;
    const frame = f.frame;
    const index = frame.beat_index;
    const now = this.#clock.now();
    const previous = this.#tracker.last?.frame;
    let status: FrameStatus;
    try {
      status = this.#tracker.observe(frame, now, { verified }).status;
    } catch (error) {
      // The tracker checks order, not shape; a frame the gate passed should not throw there.
      this.#refuse("unreadable", `beat ${index} cannot be tracked: ${error}`);
      return;
    }
    if (status !== "new" && status !== "restart") {
      this.#refuse(status, refusalDetail(status, frame, previous));
      return;
    }
    if (verified) this.#verifiedFrames++;
    this.#remoteHlc = frame.hlc;
    const sync = this.#sync;
    if (sync !== undefined) {
      // Once per frame for the process: a leader change, and the frame's evidence on the clock.
      sync.observe(frame, f.headers?.["x-pulse-id"], f.sentAt, this.#tracker.last!.due, now);
      // Predictions need the bar grid: a client that joined mid-bar finds it from the window id.
      if (this.#tracker.barOrigin === undefined) this.#locate();
    }
    if (this.#degraded) this.#recover(index, now);
    // A restart is another timeline: its beats owe nothing to the old one's numbering (it may
    // start again at 0), and no gap between the two is a missed beat.
    if (status === "restart") {
      if (this.#lastDelivered >= 0) this.#realign("restart", frame, undefined, 0);
      this.#lastDelivered = -1;
      this.#predictions.fill(undefined);
      // Nothing more of the old timeline; the new one is scheduled once its grid is known.
      this.#scheduler.stop();
    }
    if (this.#scheduling) this.#scheduledFrame(f, now);
    else if (index > this.#lastDelivered) {
      // Arrival delivery (also a scheduled client's while it has no clock estimate yet).
      const info: BeatInfo = {
        synthetic: false,
        predicted: false,
        at: now,
        arrivedAt: now,
        sentAt: f.sentAt,
        headers: f.headers,
      };
      this.#deliver(frame, info, now, true, undefined);
    } else this.#settle(frame, now);
    this.#armWatchdog(frame, now);
    if (frame.downbeat) this.#lookAhead(frame);
  }

  // One search at a time; the tracker keeps a result only while no newer frame came, so a
  // search overtaken by a frame starts again from the newest.
  #locate(): void {
    if (this.#locating) return;
    this.#locating = true;
    const from = this.#tracker.last?.frame;
    this.#tracker.locateBar().catch(() => {}).finally(() => {
      this.#locating = false;
      if (this.#state !== "running") return;
      if (this.#tracker.barOrigin === undefined && this.#tracker.last?.frame !== from) {
        this.#locate();
      } else this.#resume();
    });
  }

  // The estimate changed: the next beat's instant moves with it; a first estimate starts
  // scheduling at once; a dropped one (it proved implausible) sends beats back to arrival.
  #onSyncChange = (): void => {
    if (this.#state !== "running") return;
    const s = this.#scheduler;
    if (s.active && s.mapping !== IDENTITY) {
      if (this.#sync?.ready) s.remap();
      else s.stop();
      return;
    }
    this.#resume();
  };

  // Starts scheduling from the next beat when it just became possible (an estimate, the bar
  // grid), while pulse's frames flow: otherwise the next frame starts it.
  #resume(): void {
    if (
      this.#state !== "running" || this.#degraded || this.#scheduler.active ||
      !this.#isWatched || !this.#scheduling
    ) return;
    this.#scheduler.follow(
      this.#tracker.timeline("deadline")!,
      this.#sync!,
      this.#lastDelivered + 1,
    );
  }

  // Scheduled delivery times beats by pulse's own schedule (the deadline-anchored timeline, in
  // pulse's clock) through the clock estimate, once the bar grid is known.
  get #scheduling(): boolean {
    return this.#sync?.ready === true && this.#tracker.barOrigin !== undefined;
  }

  // A followed frame in scheduled mode: it confirms (or corrects) a beat delivered as predicted,
  // waits for its instant when it came early, or, when nothing scheduled its beat (the first
  // frame, a jump), is delivered at once; then the next beat is scheduled on the timeline as it
  // now stands.
  #scheduledFrame(f: FeedFrame, now: number): void {
    const frame = f.frame;
    const index = frame.beat_index;
    const timeline = this.#tracker.timeline("deadline")!;
    const sync = this.#sync!;
    const scheduler = this.#scheduler;
    if (index <= this.#lastDelivered) this.#settle(frame, now);
    else {
      const due = sync.toLocal(timeline.dueAt(index));
      const early = due - now;
      if (
        scheduler.active && index === scheduler.next && early > 0 &&
        early <= sync.uncertaintyMs + HOLD_SLACK_MS
      ) {
        scheduler.hold(frame, { f, arrival: now });
      } else {
        if (scheduler.active && this.#lastDelivered >= 0 && index > this.#lastDelivered + 1) {
          this.#realign("skip", frame, undefined, index - this.#lastDelivered - 1);
        }
        const info: BeatInfo = {
          synthetic: false,
          predicted: false,
          at: now,
          arrivedAt: now,
          sentAt: f.sentAt,
          headers: f.headers,
        };
        this.#deliver(frame, info, now, true, undefined);
      }
    }
    if (this.#state === "running") scheduler.follow(timeline, sync, this.#lastDelivered + 1);
  }

  // Pulse's frame for a beat already delivered from the timeline (predicted, or synthetic while
  // degraded): it agrees (`confirmed`) or the timeline moved (`realigned`). Never delivered twice.
  #settle(frame: BeatFrame, now: number): void {
    const index = frame.beat_index;
    const slot = index % MAX_PREDICTIONS;
    const p = this.#predictions[slot];
    if (p === undefined || p.beat !== index) return;
    this.#predictions[slot] = undefined;
    if (!agrees(p.frame, frame)) {
      this.#realign("mismatch", frame, p.frame, 0);
      return;
    }
    this.#confirmedBeats++;
    if (this.#listening.has("confirmed")) {
      const detail: ConfirmedEventDetail = { beat: index, frame, predictedAt: p.at, at: now };
      this.dispatchEvent(new CustomEvent<ConfirmedEventDetail>("confirmed", { detail }));
    }
  }

  #realign(
    reason: RealignReason,
    frame: BeatFrame,
    predicted: BeatFrame | undefined,
    missed: number,
  ): void {
    this.#realignments++;
    const what = reason === "mismatch"
      ? `pulse's frame for beat ${frame.beat_index} differs from the one predicted`
      : reason === "skip"
      ? `pulse's frame is for beat ${frame.beat_index}: ${missed} beats skipped`
      : `a new timeline (epoch ${frame.epoch ?? 0}) from beat ${frame.beat_index}`;
    this.#realigns.add(reason, { detail: what });
    if (this.#listening.has("realigned")) {
      const detail: RealignedEventDetail = { reason, frame, predicted, missed };
      this.dispatchEvent(new CustomEvent<RealignedEventDetail>("realigned", { detail }));
    }
  }

  // A beat at its instant, from the scheduler: predicted (or synthetic while degraded), or pulse's
  // frame that arrived before its instant and waited for it.
  #onScheduled(frame: BeatFrame, due: number, data: unknown): void {
    if (this.#state !== "running") return;
    const index = frame.beat_index;
    if (index <= this.#lastDelivered) return;
    const held = data as { f: FeedFrame; arrival: number } | undefined;
    let info: BeatInfo;
    if (held !== undefined) {
      info = {
        synthetic: false,
        predicted: false,
        at: due,
        arrivedAt: held.arrival,
        sentAt: held.f.sentAt,
        headers: held.f.headers,
      };
    } else {
      const synthetic = this.#degraded;
      // One shape for every BeatInfo, so the code reading it stays monomorphic.
      info = {
        synthetic,
        predicted: true,
        at: due,
        arrivedAt: undefined,
        sentAt: undefined,
        headers: undefined,
      };
      this.#predictedBeats++;
      if (synthetic) this.#syntheticCount++;
      this.#predictions[index % MAX_PREDICTIONS] = { beat: index, frame, at: due };
    }
    this.#deliver(frame, info, due, false, due);
  }

  // Synthetic beats need this bar's and the next bar's window ids the moment pulse goes quiet,
  // and scheduled beats need them before each instant: derive them on the downbeat (once per
  // process, whatever the number of clients). Derived, not copied from the frame, so a hostile
  // bus cannot choose the ids of predicted beats.
  #lookAhead(frame: BeatFrame): void {
    if (!this.#degradeOn && this.#sync === undefined) return;
    const index = frame.beat_index;
    const epoch = frame.epoch ?? 0;
    const next = index + this.#tracker.beatsPerBar;
    for (const bar of [index, next]) {
      if (!Number.isSafeInteger(bar) || knownWindowId(this.clusterId, bar, epoch) !== undefined) {
        continue;
      }
      cachedWindowId(this.clusterId, bar, epoch).catch(() => {});
    }
  }

  // `due`: the beat's instant, when the scheduler delivers it at that instant; the entry of each
  // callback is then also measured against it (health().phaseError).
  #deliver(
    frame: BeatFrame,
    info: BeatInfo,
    at: number,
    fresh: boolean,
    due: number | undefined,
  ): void {
    const index = frame.beat_index;
    if (this.#lastDelivered >= 0 && index > this.#lastDelivered + 1) {
      this.#missed += index - this.#lastDelivered - 1;
    }
    this.#lastDelivered = index;
    this.#current = frame;
    this.#currentAt = at;
    // Budgets first, so a budget started by a callback of this beat does not count it.
    if (this.#budgets.size > 0) { for (const b of this.#budgets) b.tick(); }
    // A real frame's arrival was read just now: the first callback's entry is that instant. The
    // clock is read before each later one (a read costs ~0.2 µs, times every client of the
    // instant, all waiting).
    let entry = fresh ? at : NaN;
    for (const e of this.#beatCbs) {
      entry = Number.isNaN(entry) ? this.#clock.now() : entry;
      this.#invoke(e.fn, frame, info, entry - at, due === undefined ? -1 : entry - due);
      entry = NaN;
    }
    if (frame.downbeat) {
      for (const e of this.#downbeatCbs) {
        entry = Number.isNaN(entry) ? this.#clock.now() : entry;
        this.#invoke(e.fn, frame, info, entry - at, due === undefined ? -1 : entry - due);
        entry = NaN;
      }
    }
    if (this.#listening.has("beat") || (frame.downbeat && this.#listening.has("downbeat"))) {
      const detail: BeatEventDetail = { frame, info };
      this.dispatchEvent(new CustomEvent<BeatEventDetail>("beat", { detail }));
      if (frame.downbeat) {
        this.dispatchEvent(new CustomEvent<BeatEventDetail>("downbeat", { detail }));
      }
    }
    if (this.#waiters.size > 0) this.#waiters.delivered(frame);
  }

  // `phase`: |entry − due| for a beat delivered at its instant, or -1.
  #invoke(
    fn: BeatCallback,
    frame: BeatFrame,
    info: BeatInfo,
    latency: number,
    phase: number,
  ): void {
    this.#latency.record(latency);
    if (phase !== -1) this.#phaseError.record(Math.abs(phase));
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

  // Without local degradation a scheduled client still watches: predictions stop when pulse
  // goes quiet.
  #armWatchdog(frame: BeatFrame, now: number): void {
    if (!this.#degradeOn && !this.#scheduler.active) return;
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
    if (this.#state !== "running" || this.#degraded) return;
    if (!this.#degradeOn) {
      this.#scheduler.stop();
      return;
    }
    this.#enterDegraded(now);
  }

  // Degraded mode: beats go on from the timeline, now without confirmations. A scheduled client's
  // scheduler simply keeps going (its beats are now synthetic); otherwise one starts on the
  // timeline extrapolated from the last real beat, anchored on its arrival.
  #enterDegraded(now: number): void {
    const last = this.#tracker.last;
    if (!last) return;
    const anchor = last.frame;
    this.#degraded = true;
    this.#degradedSince = now;
    this.#syntheticCount = 0;
    this.#logger.warn(
      `[backbeat] No beat from pulse within ${
        Math.round(now - last.arrival)
      } ms after beat ${anchor.beat_index}: degraded mode, producing synthetic beats`,
    );
    this.dispatchEvent(
      new CustomEvent<DegradedEventDetail>("degraded", {
        detail: { lastBeat: anchor.beat_index, at: now },
      }),
    );
    if (!this.#scheduler.active) {
      this.#startSynthetic().catch((error) => {
        if (this.#degraded) {
          this.#report("degraded", `Synthetic beats stopped: ${error}`, error, "error");
        }
      });
    }
  }

  // No beat at all since start (pulse down, or a typo in the cluster id): the seed promises
  // synthetic beats whenever pulse is unavailable, so run them on a fallback timeline, and say
  // once why.
  #onNoPulse(): void {
    this.#cancelGrace = undefined;
    if (this.#state !== "running" || this.#degraded || this.#tracker.last !== undefined) return;
    const now = this.#clock.now();
    this.#degraded = true;
    this.#noPulse = true;
    this.#degradedSince = now;
    this.#syntheticCount = 0;
    this.#logger.warn(
      `[backbeat] No beat from pulse on ${
        subjects(this.clusterId).beat
      } within ${this.#graceMs} ms of start ` +
        `(is pulse running, and is the cluster id "${this.clusterId}" right?): degraded mode on a ` +
        `fallback timeline at ${this.#fallbackTempo} BPM`,
    );
    this.dispatchEvent(
      new CustomEvent<DegradedEventDetail>("degraded", { detail: { lastBeat: -1, at: now } }),
    );
    const timeline = new Timeline({
      originTime: now,
      tempoBpm: this.#fallbackTempo,
      beatsPerBar: this.#tracker.beatsPerBar,
    });
    // Beat 0's window id was derived at start.
    if (!this.#scheduler.active) this.#scheduler.follow(timeline, IDENTITY, 0);
  }

  async #startSynthetic(): Promise<void> {
    // A client that joined mid-bar has seen no downbeat: the window id tells where bars start.
    await this.#tracker.locateBar();
    if (!this.#degraded || this.#state !== "running" || this.#scheduler.active) return;
    // The client degrades only after a tracked frame, so there is always one.
    const timeline: Timeline | undefined = this.#tracker.timeline("arrival");
    if (timeline === undefined) return;
    const first = Math.max(this.#lastDelivered + 1, timeline.beatAt(this.#clock.now()));
    if (first > MAX_BEAT_INDEX) {
      throw new RangeError(
        `the timeline reached the highest beat index there is (${MAX_BEAT_INDEX})`,
      );
    }
    const bar = timeline.barStart(first);
    // Usually the last real bar, derived by the client's look-ahead: no digest before the first
    // beat. Never the id a frame claimed: a hostile bus must not choose synthetic window ids.
    if (knownWindowId(this.clusterId, bar, timeline.epoch) === undefined) {
      await cachedWindowId(this.clusterId, bar, timeline.epoch);
    }
    if (!this.#degraded || this.#state !== "running" || this.#scheduler.active) return;
    this.#scheduler.follow(timeline, IDENTITY, first);
  }

  #recover(index: number, now: number): void {
    this.#degraded = false;
    if (this.#noPulse) {
      // The fallback timeline is not pulse's: the real one replaces it, numbering included.
      this.#noPulse = false;
      this.#scheduler.stop();
      this.#lastDelivered = -1;
    }
    // Synthetic beats of an arrival timeline end here; a scheduled client's scheduler goes on,
    // on the timeline this frame confirms or moves.
    if (this.#scheduler.mapping === IDENTITY) this.#scheduler.stop();
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
   * @throws {BackbeatError} `buffer_full` when disconnected with a full buffer, `closed` when
   * the bus was closed under the client, `key` when signing fails: each such claim is counted in
   * `health().claimsDropped` and also reported as an `error` event. `not_started` before
   * `start()`, `closed` after `stop()` (nothing counted: the claim was never taken).
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
    if (this.#state !== "running") return Promise.reject(this.#stateError("emit claim"));
    return this.#outbox.emit(claim);
  }

  #stateError(action: string): BackbeatError {
    return this.#state === "idle" || this.#state === "starting"
      ? new BackbeatError("not_started", `Cannot ${action}: the client is not started`)
      : new BackbeatError("closed", `Cannot ${action}: the client is stopped`);
  }

  // A claim's stamp: the last frame's stamp (a receive event) is merged only when it matters,
  // before a send.
  #stamp(): string {
    if (this.#remoteHlc !== undefined) {
      try {
        this.#hlc.update(this.#remoteHlc);
      } catch (error) {
        const beat = this.#tracker.last?.frame.beat_index;
        this.#report("hlc", `Ignored the HLC of beat ${beat}: ${error}`, error);
      }
      this.#remoteHlc = undefined;
    }
    return this.#hlc.now();
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
   * Resolves at the next downbeat's instant (in scheduled mode; on its arrival in arrival mode)
   * with its frame, after the beat's callbacks: N services awaiting it start a job on the same
   * downbeat. A downbeat being delivered when this is called does not count.
   *
   * @param options `signal`: rejects with the signal's reason when it aborts.
   * @returns The downbeat's frame.
   * @throws {BackbeatError} `not_started` before `start()`; `closed` when the client stops.
   * @throws {RangeError} When 1,024 waits are already pending.
   *
   * @example Start a job on the next bar
   * ```ts
   * import { Client, InMemoryBus } from "@chorus/backbeat";
   * await using client = new Client({ clusterId: "dev", agentId: "a", bus: new InMemoryBus() });
   * await client.start();
   * const ac = new AbortController();
   * const bar = client.nextDownbeat({ signal: ac.signal });
   * ac.abort(new Error("no pulse here"));
   * await bar.catch((e) => console.log(e.message)); // "no pulse here"
   * ```
   */
  nextDownbeat(options: { signal?: AbortSignal } = {}): Promise<BeatFrame> {
    try {
      if (this.#state !== "running") throw this.#stateError("wait for a downbeat");
      return this.#waiters.wait(-1, checkSignal(options));
    } catch (error) {
      return Promise.reject(error);
    }
  }

  /**
   * Resolves at a beat's instant (`{ beat }`), or at the instant of a bar's downbeat
   * (`{ bar }`), with its frame, after that beat's callbacks. Bars are counted on the followed
   * grid from the bar holding beat 0: bar `n` opens at beat `n × beatsPerBar` on a grid whose
   * downbeats fall on multiples of `beatsPerBar`. The promise follows beat numbers: should the
   * beat be skipped (a jump of the timeline), the first beat delivered after it resolves it.
   *
   * @param target `{ beat }` or `{ bar }`, a non-negative integer.
   * @param options `signal`: rejects with the signal's reason when it aborts.
   * @returns The frame of the beat.
   * @throws {TypeError} When `target` is neither `{ beat }` nor `{ bar }`.
   * @throws {RangeError} When the target is not a non-negative integer, already delivered (in the
   * past), due more than a day from now, or when 1,024 waits are already pending.
   * @throws {BackbeatError} `not_started` before `start()`; `closed` when the client stops.
   *
   * @example Start a job eight beats from now
   * ```ts
   * import { Client, InMemoryBus } from "@chorus/backbeat";
   * await using client = new Client({ clusterId: "dev", agentId: "a", bus: new InMemoryBus() });
   * await client.start();
   * const beat = (client.health().lastBeat ?? 0) + 8;
   * const ac = new AbortController();
   * const due = client.at({ beat }, { signal: ac.signal });
   * ac.abort(new Error("no pulse here"));
   * await due.catch((e) => console.log(e.message)); // "no pulse here"
   * ```
   */
  at(target: { beat: number } | { bar: number }, options: { signal?: AbortSignal } = {}): Promise<
    BeatFrame
  > {
    try {
      if (this.#state !== "running") throw this.#stateError("wait for a beat");
      const signal = checkSignal(options);
      const beat = this.#targetBeat(target);
      if (beat <= this.#lastDelivered) {
        throw new RangeError(
          `Cannot wait for beat ${beat}: it is in the past (beat ${this.#lastDelivered} was delivered)`,
        );
      }
      const due = this.#localDue(beat);
      if (due !== undefined && !(due - this.#clock.now() <= MAX_WAIT_MS)) {
        throw new RangeError(`Cannot wait for beat ${beat}: it is due more than a day from now`);
      }
      return this.#waiters.wait(beat, signal);
    } catch (error) {
      return Promise.reject(error);
    }
  }

  #targetBeat(target: unknown): number {
    const t = target as { beat?: unknown; bar?: unknown } | null;
    const hasBeat = t !== null && typeof t === "object" && "beat" in t;
    const hasBar = t !== null && typeof t === "object" && "bar" in t;
    if (hasBeat === hasBar) {
      throw new TypeError("Invalid beat target: expected { beat: n } or { bar: n }");
    }
    const n = hasBeat ? t!.beat : t!.bar;
    const what = hasBeat ? "beat" : "bar";
    if (typeof n !== "number" || !Number.isSafeInteger(n) || n < 0) {
      throw new RangeError(`Invalid ${what} ${String(n)}: expected an integer >= 0`);
    }
    if (hasBeat) return n;
    const bpb = this.#tracker.beatsPerBar;
    const shift = (((this.#tracker.barOrigin ?? 0) % bpb) + bpb) % bpb;
    const beat = n * bpb + shift;
    if (!Number.isSafeInteger(beat) || beat > MAX_BEAT_INDEX) {
      throw new RangeError(`Invalid bar ${n}: its downbeat is past the highest beat index`);
    }
    return beat;
  }

  // A beat's instant on the local clock by the timeline followed, when one is.
  #localDue(beat: number): number | undefined {
    if (this.#scheduling) {
      return this.#sync!.toLocal(this.#tracker.timeline("deadline")!.dueAt(beat));
    }
    return this.#tracker.timeline("arrival")?.dueAt(beat);
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
      degraded: this.#degraded,
      degradedReason: !this.#degraded ? null : this.#noPulse ? "no_pulse" : "pulse_quiet",
      lastBeat: current ? current.beat_index : null,
      lastBeatAt: current ? this.#currentAt : null,
      tempoBpm: current ? current.tempo_bpm : null,
      phase: current ? current.phase : null,
      windowId: current ? current.window_id : null,
      reconnectCount: bus?.reconnects ?? 0,
      missedBeats: this.#missed,
      droppedFrames: this.#refusals.total,
      framesRejected: this.#refusals.counts,
      framesParsed: this.#feed?.parsed ?? 0,
      framesVerified: this.#verifiedFrames,
      claimsSent: this.#outbox.sent,
      claimsBuffered: this.#outbox.buffered,
      claimsDropped: this.#outbox.dropped,
      callbackErrors: this.#callbackErrors,
      callbackLatency: this.#latency.stats(),
      lastErrors: this.#errors.list(),
      delivery: this.#scheduling ? "scheduled" : "arrival",
      clock: this.#sync?.snapshot() ?? null,
      phaseError: this.#phaseError.stats(),
      predictedBeats: this.#predictedBeats,
      confirmedBeats: this.#confirmedBeats,
      realignments: this.#realignments,
    };
  }

  /**
   * Adds an event listener; one that throws is isolated (counted and reported as an `error`
   * event) instead of becoming an uncaught exception. The event is typed by
   * {@linkcode ClientEventMap}.
   *
   * @param type The event type (`beat`, `downbeat`, `degraded`, `recovered`, `error`, `status`).
   * @param listener The listener.
   * @param options Standard listener options (`once`, `signal` and `capture` included).
   */
  override addEventListener<K extends keyof ClientEventMap & string>(
    type: K,
    listener:
      | ((event: ClientEventMap[K]) => void)
      | { handleEvent(event: ClientEventMap[K]): void }
      | null,
    options?: boolean | AddEventListenerOptions,
  ): void;
  /**
   * Adds a listener for an event type outside {@linkcode ClientEventMap}.
   *
   * @param type The event type.
   * @param listener The listener.
   * @param options Standard listener options.
   */
  override addEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject | null,
    options?: boolean | AddEventListenerOptions,
  ): void;
  override addEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject | null,
    options?: boolean | AddEventListenerOptions,
  ): void {
    if (listener === null) return;
    const capture = captureOf(options);
    const o = typeof options === "object" && options !== null ? options : undefined;
    const signal = o?.signal;
    // The target ignores both as well: keep the registry equal to what it holds.
    if (signal?.aborted || this.#listening.get(type, listener, capture)) return;
    let registered = listener;
    if (o?.once) {
      // The target drops a `once` listener when it fires; the registry must drop it then too.
      const once = (event: Event) => {
        this.#listening.delete(type, listener, capture, once);
        if (typeof listener === "function") listener.call(this, event);
        else listener.handleEvent(event);
      };
      registered = once;
    }
    super.addEventListener(type, registered, options);
    this.#listening.add(type, listener, capture, registered, signal);
  }

  /**
   * Removes an event listener added with {@linkcode Client.addEventListener}.
   *
   * @param type The event type.
   * @param listener The listener.
   * @param options Standard listener options.
   */
  override removeEventListener<K extends keyof ClientEventMap & string>(
    type: K,
    listener:
      | ((event: ClientEventMap[K]) => void)
      | { handleEvent(event: ClientEventMap[K]): void }
      | null,
    options?: boolean | EventListenerOptions,
  ): void;
  /**
   * Removes a listener for an event type outside {@linkcode ClientEventMap}.
   *
   * @param type The event type.
   * @param listener The listener.
   * @param options Standard listener options.
   */
  override removeEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject | null,
    options?: boolean | EventListenerOptions,
  ): void;
  override removeEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject | null,
    options?: boolean | EventListenerOptions,
  ): void {
    if (listener === null) return;
    const entry = this.#listening.delete(type, listener, captureOf(options));
    super.removeEventListener(type, entry?.registered ?? listener, options);
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

/**
 * The listener registry of a client, for the SDK's tests and diagnostics: it must hold no more
 * than the client's EventTarget does. Not part of the public API (not in mod.ts).
 *
 * @param client The client.
 * @returns Its registry.
 *
 * @example See that a once listener is dropped after it fired
 * ```ts ignore
 * client.addEventListener("beat", () => {}, { once: true });
 * console.log(listenerRegistryOf(client).count("beat")); // 1, and 0 after the next beat
 * ```
 */
export function listenerRegistryOf(client: Client): ListenerRegistry {
  return registryOf(client);
}

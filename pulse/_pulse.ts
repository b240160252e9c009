import {
  BackbeatError,
  type BeatFrame,
  type Bus,
  type BusMessage,
  type BusSubscription,
  type Clock,
  type ClusterSubjects,
  DEFAULT_BEATS_PER_BAR,
  DEFAULT_TEMPO_BPM,
  HybridLogicalClock,
  InMemoryBus,
  IsolatedEventTarget,
  type Logger,
  MIN_TEMPO_BPM,
  type Phase,
  silentLogger,
  subjects,
  SystemClock,
  Timeline,
  type TimelineJson,
  windowId,
} from "../core/mod.ts";
import {
  kvBucketName,
  type KvLease,
  type LeaseEventDetail,
  type NatsBusLike,
  openKvLease,
} from "../nats/mod.ts";
import { Histogram, type HistogramSnapshot } from "../service/mod.ts";
import { decodeBeatFrame } from "../schemas/mod.ts";

/** Default for {@linkcode PulseOptions.clock}'s spin: wake 1.5 ms early and spin to the due time. */
export const DEFAULT_PULSE_SPIN_MS = 1.5;
/** Highest tempo pulse accepts: 10 ms beats. */
export const MAX_PULSE_TEMPO_BPM = 6000;
/** Default for {@linkcode PulseOptions.leaseTtlMs}. */
export const DEFAULT_PULSE_LEASE_TTL_MS = 600;
/** Default for {@linkcode PulseOptions.windowLookaheadBars}. */
export const DEFAULT_WINDOW_LOOKAHEAD_BARS = 2;
/** Default for {@linkcode PulseOptions.stateWriteIntervalMs}. */
export const DEFAULT_STATE_WRITE_INTERVAL_MS = 1000;
/** KV key (in the pulse bucket) holding the cluster's timeline and last beat. */
export const PULSE_STATE_KEY = "timeline";

// The first leader schedules beat 0 this far ahead, so even beat 0 is published on time.
const START_LEAD_MS = 10;
const MAX_CONTROL_BYTES = 4096;
// On a real clock the beat's timer fires this early: the HLC stamp and the encoding (tens of µs
// on a cold CPU) happen before the due time, and only the publish itself is left after it.
const PREP_LEAD_MS = 0.3;
// Lease work due this close to a beat waits until the beat is published.
const QUIET_GUARD_MS = 4;
const PLACEHOLDER_HLC = "0000:0000:0000";
const encoder = new TextEncoder();
const decoder = new TextDecoder();

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
  /** Leader lease time to live in ms (NATS only). @default {600} */
  leaseTtlMs?: number;
  /** How often the leader renews its lease, ms. @default {leaseTtlMs / 4} */
  leaseRenewIntervalMs?: number;
  /** How often a follower checks the lease, ms. @default {leaseTtlMs / 12} */
  leaseCheckIntervalMs?: number;
  /** Bars ahead whose window ids are derived in advance (1 to 4096). @default {2} */
  windowLookaheadBars?: number;
  /** How often the leader saves its last beat to KV, ms. @default {1000} */
  stateWriteIntervalMs?: number;
  /** Structured logger. @default {silentLogger} */
  logger?: Logger;
}

/** Result of {@linkcode Pulse.setTempo}. */
export interface TempoChange {
  /** The requested tempo. */
  readonly tempoBpm: number;
  /** The downbeat from which it applies (a follower's estimate when forwarded). */
  readonly effectiveBeat: number;
  /** True when a follower forwarded the request to the leader on the control subject. */
  readonly forwarded: boolean;
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
  /** Frames on the beat subject that could not be read. */
  readonly framesRejected: number;
  /** Whether this pulse leads. */
  readonly leader: boolean;
  /** Tempo in force. */
  readonly tempoBpm: number;
  /** Highest beat_index published or seen, -1 before the first. */
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
  /** Highest beat_index published or seen, -1 before the first. */
  readonly lastBeatIndex: number;
  /** Fencing token, 0 when not leading or embedded. */
  readonly fencingToken: number;
}

/** What the leader keeps in KV so a successor continues the same timeline. */
interface StoredState {
  version: 1;
  cluster_id: string;
  timeline: TimelineJson;
  last_beat: number;
  holder: string;
  updated_at: string;
}

interface Prepared {
  beat: number;
  timeline: Timeline;
  frame: BeatFrame;
  // The frame's JSON around its HLC value: only the stamp is left to do at the due time.
  head: string;
  tail: string;
}

const HLC_FIELD = `"hlc":"${PLACEHOLDER_HLC}"`;

function prepared(beat: number, timeline: Timeline, frame: BeatFrame): Prepared {
  const json = JSON.stringify(frame);
  const at = json.indexOf(HLC_FIELD) + 7;
  return { beat, timeline, frame, head: json.slice(0, at), tail: json.slice(at + 14) };
}

/**
 * Checks a tempo against pulse's range.
 *
 * @param tempoBpm The tempo.
 * @throws {RangeError} When it is not a finite number from 0.1 to 6000.
 *
 * @example Reject a tempo
 * ```ts
 * import { assertPulseTempo } from "@chorus/backbeat/pulse";
 * try { assertPulseTempo(9000); } catch (e) { console.log((e as Error).message); }
 * ```
 */
export function assertPulseTempo(tempoBpm: number): void {
  if (
    typeof tempoBpm !== "number" ||
    !(tempoBpm >= MIN_TEMPO_BPM && tempoBpm <= MAX_PULSE_TEMPO_BPM)
  ) {
    throw new RangeError(
      `tempo_bpm must be a number from ${MIN_TEMPO_BPM} to ${MAX_PULSE_TEMPO_BPM}, got ${
        JSON.stringify(tempoBpm) ?? String(tempoBpm)
      }`,
    );
  }
}

/**
 * Reads a tempo request (`{"tempo_bpm": n}`, from `POST /tempo` or the control subject).
 *
 * @param value The parsed JSON body.
 * @returns The requested tempo.
 * @throws {TypeError} When it is not an object with a `tempo_bpm` field.
 * @throws {RangeError} When the tempo is not a number from 0.1 to 6000.
 *
 * @example Read a request
 * ```ts
 * import { parseTempoRequest } from "@chorus/backbeat/pulse";
 * console.log(parseTempoRequest({ tempo_bpm: 120 })); // 120
 * ```
 */
export function parseTempoRequest(value: unknown): number {
  if (!value || typeof value !== "object" || Array.isArray(value)) {
    throw new TypeError('Invalid tempo request: expected a JSON object like {"tempo_bpm": 120}');
  }
  if (!("tempo_bpm" in value)) {
    throw new TypeError("Invalid tempo request: tempo_bpm field is required");
  }
  const tempo = (value as { tempo_bpm: unknown }).tempo_bpm;
  assertPulseTempo(tempo as number);
  return tempo as number;
}

function isNatsBus(bus: Bus): bus is NatsBusLike {
  const c = (bus as { connection?: unknown }).connection;
  return typeof c === "object" && c !== null;
}

function randomHex(bytes: number): string {
  return Array.from(crypto.getRandomValues(new Uint8Array(bytes)), (b) => {
    return b.toString(16).padStart(2, "0");
  }).join("");
}

/**
 * The beat service. The leader publishes a {@linkcode BeatFrame} on `backbeat.<cluster>.beat`
 * for every beat of an absolute {@linkcode Timeline}: beat n is due at `origin + n × period`, is
 * never published before its due time, and error never accumulates. Each frame is prepared
 * ahead of time (window ids are derived bars in advance), so nothing asynchronous sits between
 * the timer and the publish. Headers: `x-window-id`, `x-hlc`, `x-pulse-id`, `x-fencing-token`
 * and `x-pulse-sent` (epoch ms of the publish, µs resolution).
 *
 * On an in-memory (or any non-NATS) bus the pulse leads alone. On NATS, pulses of one cluster
 * elect a leader through a JetStream KV lease (bucket `backbeat_<cluster>_pulse`); the leader
 * stores the timeline there, followers track the beat subject, and a new leader continues the
 * same timeline after the last beat seen, publishing beats missed during the takeover at once
 * (at most one bar; beyond that the gap is skipped and counted). The leader checks its lease
 * (by a monotonic clock) right before every publish, so a paused and resumed leader stops at
 * once, and a leader that sees frames with a higher fencing token steps down.
 *
 * Tempo changes ({@linkcode Pulse.setTempo}, or `{"tempo_bpm": n}` on
 * `backbeat.<cluster>.control`) take effect at a downbeat, announced by `next_tempo_bpm` in the
 * frames of the bar before. A follower forwards `setTempo` to the leader on the control subject.
 *
 * Events: `beat` (`CustomEvent<BeatFrame>`, each frame this pulse publishes), `leader` and
 * `follower` (`CustomEvent<{ token: number }>`), `tempo` (`CustomEvent<TempoChange>`), `error`
 * (`ErrorEvent`).
 *
 * @example Run an embedded pulse
 * ```ts
 * import { Pulse } from "@chorus/backbeat/pulse";
 * import { InMemoryBus } from "@chorus/backbeat/sdk";
 * const bus = new InMemoryBus();
 * bus.subscribe("backbeat.dev.beat", (m) => console.log(new TextDecoder().decode(m.data)));
 * await using pulse = new Pulse({ clusterId: "dev", bus, tempoBpm: 600 });
 * await pulse.start();
 * await new Promise((r) => setTimeout(r, 250));
 * ```
 */
export class Pulse extends IsolatedEventTarget {
  /** This pulse's id. */
  readonly id: string;
  /** The cluster. */
  readonly clusterId: string;
  readonly #subjects: ClusterSubjects;
  readonly #bus: Bus;
  readonly #ownsBus: boolean;
  readonly #clock: Clock;
  readonly #spinToDue: boolean;
  readonly #idleClock: Clock;
  // Lease timers run through this clock: work that would land just before a beat's wake-up
  // waits until the beat is out (a KV round trip on the event loop costs ~1 ms).
  readonly #leaseClock: Clock;
  #nextDue = -Infinity;
  #afterBeat: (() => void)[] = [];
  readonly #logger: Logger;
  readonly #hlc: HybridLogicalClock;
  readonly #options: PulseOptions;
  readonly #lookahead: number;
  readonly #stateEveryMs: number;
  #timeline: Timeline;
  #role: PulseRole = "stopped";
  #starting: Promise<void> | undefined;
  #stopping: Promise<void> | undefined;
  #stopped = false;
  #everLed = false;
  #lease: KvLease | undefined;
  #token = 0;
  #tokenText = "0";
  #epoch = 0;
  #acquiring: Promise<void> | undefined;
  #next = 0;
  #cancelBeat: (() => void) | undefined;
  #armedLate = false;
  #prepared: Prepared | undefined;
  // Window ids by downbeat index, derived ahead: a string once known, a promise until then.
  // Entries are inserted in request order (ascending), so eviction walks from the front.
  #windows = new Map<number, string | Promise<string>>();
  #windowsTo = -Infinity;
  #lastBeat: BeatFrame | undefined;
  #lastBeatAt = -Infinity;
  #lastDownbeat = -1;
  // Since when this pulse has surely received every frame published (NATS only).
  #listeningSince = Infinity;
  #subs: BusSubscription[] = [];
  #background = new Set<Promise<unknown>>();
  #abortCleanup: (() => void) | undefined;
  #stateRev = 0;
  #stateTimer: (() => void) | undefined;
  #stateWriting: Promise<void> | undefined;
  #stateWrittenBeat = -1;
  #stateDirty = false;
  #lateness = new Histogram();
  #published = 0;
  #catchUp = 0;
  #skipped = 0;
  #publishErrors = 0;
  #takeovers = 0;
  #controlRejected = 0;
  #framesRejected = 0;

  /**
   * Creates a pulse; nothing runs until {@linkcode Pulse.start}.
   *
   * @param options Cluster, bus, tempo, bar shape, clock, lease timings.
   * @throws {TypeError} On an invalid cluster id, pulse id or phase map.
   * @throws {RangeError} On a tempo, beat count or timing out of range.
   */
  constructor(options: PulseOptions) {
    super();
    this.#options = options;
    this.clusterId = options?.clusterId;
    this.#subjects = subjects(this.clusterId);
    this.id = options.id ?? `pulse-${randomHex(4)}`;
    if (typeof this.id !== "string" || !/^[\x21-\x7e]{1,128}$/.test(this.id)) {
      throw new TypeError(
        `Invalid pulse id ${JSON.stringify(options.id)}: expected 1 to 128 printable characters`,
      );
    }
    const tempo = options.tempoBpm ?? DEFAULT_TEMPO_BPM;
    assertPulseTempo(tempo);
    const ttl = options.leaseTtlMs ?? DEFAULT_PULSE_LEASE_TTL_MS;
    if (!(ttl >= 50 && ttl <= 60_000)) {
      throw new RangeError(`Invalid leaseTtlMs ${options.leaseTtlMs}: expected 50 to 60000`);
    }
    this.#lookahead = options.windowLookaheadBars ?? DEFAULT_WINDOW_LOOKAHEAD_BARS;
    if (!Number.isInteger(this.#lookahead) || this.#lookahead < 1 || this.#lookahead > 4096) {
      throw new RangeError(
        `Invalid windowLookaheadBars ${options.windowLookaheadBars}: expected an integer from 1 to 4096`,
      );
    }
    this.#stateEveryMs = options.stateWriteIntervalMs ?? DEFAULT_STATE_WRITE_INTERVAL_MS;
    if (!(this.#stateEveryMs >= 10)) {
      throw new RangeError(
        `Invalid stateWriteIntervalMs ${options.stateWriteIntervalMs}: expected at least 10`,
      );
    }
    this.#clock = options.clock ?? new SystemClock({ spinMs: DEFAULT_PULSE_SPIN_MS });
    // Only a clock that moves by itself can be spun on; a ManualClock gets exact timers instead.
    this.#spinToDue = this.#clock instanceof SystemClock;
    // Housekeeping timers must not spin: a spin there could hold up a beat's wake-up.
    this.#idleClock = this.#spinToDue ? new SystemClock() : this.#clock;
    this.#leaseClock = this.#spinToDue
      ? {
        now: () => this.#idleClock.now(),
        schedule: (at, fn) => this.#idleClock.schedule(at, () => this.#whenQuiet(fn)),
      }
      : this.#clock;
    if (options.originTime !== undefined && !Number.isFinite(options.originTime)) {
      throw new RangeError(`Invalid originTime ${options.originTime}: expected a finite number`);
    }
    this.#timeline = new Timeline({
      originTime: options.originTime ?? this.#clock.now(),
      tempoBpm: tempo,
      beatsPerBar: options.beatsPerBar ?? DEFAULT_BEATS_PER_BAR,
      phases: options.phases,
    });
    this.#ownsBus = options.bus === undefined;
    this.#bus = options.bus ?? new InMemoryBus();
    this.#logger = options.logger ?? silentLogger;
    this.#hlc = new HybridLogicalClock({ clock: () => this.#clock.now() });
  }

  /** The schedule this pulse leads, or last loaded or configured. */
  get timeline(): Timeline {
    return this.#timeline;
  }

  /** Whether this pulse is publishing beats. */
  get isLeader(): boolean {
    return this.#role === "leader";
  }

  /** Current role. */
  get role(): PulseRole {
    return this.#role;
  }

  /** The highest-indexed frame this pulse published or saw, if any. */
  get lastBeat(): BeatFrame | undefined {
    return this.#lastBeat;
  }

  /** Fencing token of the current tenure (KV revision), 0 when not leading or embedded. */
  get fencingToken(): number {
    return this.#role === "leader" ? this.#token : 0;
  }

  /** Leader, or a follower that saw a beat within three beats (at least 2 s). */
  get ready(): boolean {
    if (this.#role === "leader") return true;
    if (this.#role !== "follower" || !this.#lastBeat) return false;
    const period = 60_000 / (this.#lastBeat.tempo_bpm || DEFAULT_TEMPO_BPM);
    return this.#clock.now() - this.#lastBeatAt <= Math.max(3 * period, 2000);
  }

  /**
   * Starts the pulse; resolves once it leads or follows.
   *
   * @param signal Stops the pulse when aborted.
   * @throws {BackbeatError} `closed` after stop; `aborted` when the signal is already aborted;
   * `connection` when the KV bucket cannot be opened.
   */
  start(signal?: AbortSignal): Promise<void> {
    if (this.#stopped) {
      return Promise.reject(new BackbeatError("closed", "Cannot start a stopped pulse"));
    }
    this.#starting ??= this.#start(signal);
    return this.#starting;
  }

  /** Stops publishing and following; a leader saves its state and releases its lease at once. */
  stop(): Promise<void> {
    this.#stopping ??= this.#stop();
    return this.#stopping;
  }

  /** `await using` support: {@linkcode Pulse.stop}. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.stop();
  }

  /**
   * Resolves once background preparation (window ids of the bars ahead, the next frame, KV
   * writes) has finished. Tests driving a `ManualClock` await it between advances: WebCrypto
   * digests are real asynchronous work that cannot complete while simulated time jumps.
   */
  async settled(): Promise<void> {
    while (this.#background.size > 0) await Promise.allSettled([...this.#background]);
  }

  /**
   * Requests a tempo change at the next downbeat after the beat about to be published (so the
   * frames of at least one bar announce it). A follower forwards it to the leader.
   *
   * @param tempoBpm The new tempo, 0.1 to 6000 BPM.
   * @returns The tempo and the downbeat it applies from.
   * @throws {RangeError} When the tempo is out of range.
   * @throws {BackbeatError} `not_started` when the pulse is not running, or a follower has not
   * seen a beat yet.
   */
  setTempo(tempoBpm: number): TempoChange {
    assertPulseTempo(tempoBpm);
    if (this.#role === "leader") {
      const tl = this.#timeline.withTempo(tempoBpm, this.#next);
      const effectiveBeat = tl.segments[tl.segments.length - 1].beat;
      this.#timeline = tl;
      this.#prepareFrame(this.#next);
      this.#stateDirty = true;
      this.#track(this.#writeState());
      const change: TempoChange = { tempoBpm, effectiveBeat, forwarded: false };
      this.#logger.info("tempo change scheduled", {
        tempo_bpm: tempoBpm,
        effective_beat: effectiveBeat,
      });
      this.dispatchEvent(new CustomEvent<TempoChange>("tempo", { detail: change }));
      return change;
    }
    if (this.#role === "follower" && this.#lastBeat) {
      const next = this.#lastBeat.beat_index + 1;
      const bpb = this.#lastBeat.beats_per_bar ?? this.#timeline.beatsPerBar;
      let start = this.#timeline.barStart(next);
      if (this.#lastDownbeat >= 0) {
        start = next - ((((next - this.#lastDownbeat) % bpb) + bpb) % bpb);
      }
      this.#bus.publish(
        this.#subjects.control,
        encoder.encode(JSON.stringify({ tempo_bpm: tempoBpm, requested_by: this.id })),
      );
      const change: TempoChange = { tempoBpm, effectiveBeat: start + bpb, forwarded: true };
      this.#logger.info("tempo change forwarded to the leader", { tempo_bpm: tempoBpm });
      this.dispatchEvent(new CustomEvent<TempoChange>("tempo", { detail: change }));
      return change;
    }
    throw new BackbeatError(
      "not_started",
      `Cannot set tempo: the pulse is ${this.#role}${
        this.#role === "follower" ? " and has not seen a beat yet" : ""
      }`,
    );
  }

  /**
   * Summarises the pulse for health endpoints.
   *
   * @returns Role, readiness, tempo, last beat.
   */
  status(): PulseStatus {
    return {
      id: this.id,
      clusterId: this.clusterId,
      role: this.#role,
      ready: this.ready,
      tempoBpm: this.#tempoNow(),
      lastBeatIndex: this.#lastBeat?.beat_index ?? -1,
      fencingToken: this.fencingToken,
    };
  }

  /**
   * Reads the pulse's counters and gauges.
   *
   * @returns A snapshot, including the publish lateness histogram.
   */
  metrics(): PulseMetrics {
    return {
      beatsPublished: this.#published,
      catchUpBeats: this.#catchUp,
      beatsSkipped: this.#skipped,
      publishErrors: this.#publishErrors,
      takeovers: this.#takeovers,
      controlRejected: this.#controlRejected,
      framesRejected: this.#framesRejected,
      leader: this.#role === "leader",
      tempoBpm: this.#tempoNow(),
      lastBeatIndex: this.#lastBeat?.beat_index ?? -1,
      fencingToken: this.fencingToken,
      lateness: this.#lateness.snapshot(),
    };
  }

  #tempoNow(): number {
    if (this.#role !== "leader" && this.#lastBeat) return this.#lastBeat.tempo_bpm;
    return this.#timeline.tempoAt(this.#lastBeat?.beat_index ?? this.#next);
  }

  // --- lifecycle ---

  async #start(signal?: AbortSignal): Promise<void> {
    if (this.#stopped) throw new BackbeatError("closed", "Cannot start a stopped pulse");
    if (signal?.aborted) {
      throw new BackbeatError("aborted", "Cannot start the pulse: the signal is aborted");
    }
    if (signal) {
      const onAbort = () => {
        this.stop().catch((error) => this.#error("Cannot stop on abort", error));
      };
      signal.addEventListener("abort", onAbort, { once: true });
      this.#abortCleanup = () => signal.removeEventListener("abort", onAbort);
    }
    this.#role = "starting";
    try {
      this.#subs.push(this.#bus.subscribe(this.#subjects.control, (m) => this.#onControl(m)));
      if (!isNatsBus(this.#bus)) {
        await this.#lead(0, undefined, this.#epoch);
        await this.settled();
        return;
      }
      // Other pulses' frames only matter when there are other pulses.
      this.#subs.push(this.#bus.subscribe(this.#subjects.beat, (m) => this.#onBeat(m)));
      await this.#bus.flush();
      this.#listeningSince = this.#clock.now();
      const bucket = await kvBucketName(this.clusterId, "pulse");
      const ttl = this.#options.leaseTtlMs ?? DEFAULT_PULSE_LEASE_TTL_MS;
      const lease = await openKvLease({
        bus: this.#bus,
        bucket,
        holderId: this.id,
        ttlMs: ttl,
        renewIntervalMs: this.#options.leaseRenewIntervalMs,
        checkIntervalMs: this.#options.leaseCheckIntervalMs,
        clock: this.#leaseClock,
      });
      if (this.#stopped) {
        await lease.release();
        return;
      }
      this.#lease = lease;
      lease.addEventListener("acquired", (e) => {
        const { token } = (e as CustomEvent<LeaseEventDetail>).detail;
        const epoch = ++this.#epoch;
        this.#acquiring = this.#track(this.#onAcquired(token, epoch));
      });
      lease.addEventListener("lost", (e) => {
        const { reason } = (e as CustomEvent<LeaseEventDetail>).detail;
        if (!this.#stopped) this.#demote(`lease ${reason}`);
      });
      lease.addEventListener("error", (e) => {
        this.#error((e as ErrorEvent).message, (e as ErrorEvent).error);
      });
      this.#logger.info("pulse joined", { bucket, pulse_id: this.id });
      if (await lease.start()) await this.#acquiring;
      if (this.#role === "starting" && !this.#stopped) {
        this.#role = "follower";
        this.#logger.info("following", { leader: lease.holder });
        this.dispatchEvent(new CustomEvent("follower", { detail: { token: 0 } }));
      }
    } catch (error) {
      await this.stop();
      throw error;
    }
  }

  async #stop(): Promise<void> {
    const wasLeader = this.#role === "leader";
    this.#stopped = true;
    this.#haltBeats();
    this.#abortCleanup?.();
    this.#abortCleanup = undefined;
    for (const sub of this.#subs) sub.unsubscribe();
    this.#subs = [];
    if (this.#lease) {
      if (wasLeader) {
        this.#stateDirty = true;
        await this.#stateWriting?.catch(() => {});
        await this.#writeState(true);
      }
      await this.#lease.release();
    }
    this.#role = "stopped";
    if (wasLeader) {
      this.#logger.info(this.#lease ? "stopped; lease released" : "stopped", {
        last_beat: this.#next - 1,
      });
    }
    await this.settled();
    if (this.#ownsBus) await this.#bus.close();
  }

  // --- leadership ---

  async #onAcquired(token: number, epoch: number): Promise<void> {
    const lease = this.#lease!;
    let stored: StoredState | undefined;
    try {
      const entry = await lease.getJson<StoredState>(PULSE_STATE_KEY);
      this.#stateRev = entry?.revision ?? 0;
      stored = entry?.value;
    } catch (error) {
      // Leading without the stored timeline could fork it: hand the lease on instead.
      this.#error("Cannot read the stored timeline; stepping down", error);
      if (epoch === this.#epoch) await lease.stepDown();
      return;
    }
    if (epoch !== this.#epoch || this.#stopped || !lease.isHeld()) return;
    try {
      await this.#lead(token, stored, epoch);
    } catch (error) {
      // Holding the lease without publishing would silence the cluster: let another lead.
      this.#error("Cannot lead; stepping down", error);
      if (epoch === this.#epoch) {
        this.#demote("cannot lead");
        await lease.stepDown();
      }
      return;
    }
    if (this.#role === "leader" && epoch === this.#epoch) {
      this.#stateDirty = true;
      await this.#writeState();
      this.#scheduleStateWrite();
    }
  }

  async #lead(token: number, stored: StoredState | undefined, epoch: number): Promise<void> {
    let tl: Timeline | undefined;
    if (stored) {
      try {
        if (stored.cluster_id !== this.clusterId) throw new TypeError("cluster id differs");
        tl = Timeline.fromJSON(stored.timeline);
      } catch (error) {
        this.#logger.warn("ignoring unreadable stored timeline", { error });
      }
    }
    let last = Math.max(
      this.#lastBeat?.beat_index ?? -1,
      stored && Number.isSafeInteger(stored.last_beat) ? stored.last_beat : -1,
    );
    if (tl && Number.isFinite(this.#listeningSince)) {
      // Beats due before this pulse started listening may have been published unseen (the
      // stored last beat lags by up to a second): presume they were, rather than repeat them.
      last = Math.max(last, tl.beatAt(this.#listeningSince));
    }
    if (!tl) tl = this.#freshTimeline(last);
    let next = last + 1;
    if (last < 0) next = Math.max(0, tl.segments[0].beat);
    const bar = tl.barStart(next);
    this.#timeline = tl;
    await this.#window(bar);
    if (epoch !== this.#epoch || this.#stopped) return;
    this.#requestWindows(bar);
    this.#token = token;
    this.#tokenText = String(token);
    this.#next = next;
    this.#role = "leader";
    this.#everLed = true;
    this.#takeovers++;
    this.#logger.info("leading", {
      token,
      next_beat: next,
      tempo_bpm: tl.tempoAt(next),
      continued_from: last,
    });
    this.dispatchEvent(new CustomEvent("leader", { detail: { token } }));
    this.#arm();
  }

  // A timeline for a leader that found none stored: the configured one, re-based to now on the
  // first leadership unless an origin was given, or continuing the beats it saw.
  #freshTimeline(last: number): Timeline {
    const tl = this.#timeline;
    const now = this.#clock.now();
    if (last >= 0) {
      // Continue after the last known beat, from now, with what the frames said.
      const f = this.#lastBeat;
      const bpb = f?.beats_per_bar ?? tl.beatsPerBar;
      return new Timeline({
        originTime: now + START_LEAD_MS,
        originBeat: last + 1,
        tempoBpm: f?.tempo_bpm ?? tl.tempoAt(last + 1),
        beatsPerBar: bpb,
        phases: bpb === tl.beatsPerBar ? tl.phases : undefined,
        barOrigin: this.#lastDownbeat >= 0 ? this.#lastDownbeat : last + 1,
      });
    }
    if (this.#everLed || this.#options.originTime !== undefined) return tl;
    return new Timeline({
      originTime: now + START_LEAD_MS,
      tempoBpm: tl.tempoAt(0),
      beatsPerBar: tl.beatsPerBar,
      phases: tl.phases,
    });
  }

  #demote(reason: string): void {
    if (this.#role !== "leader") return;
    this.#haltBeats();
    this.#role = "follower";
    const token = this.#token;
    this.#token = 0;
    this.#tokenText = "0";
    this.#logger.warn("leadership lost", { reason, token, last_beat: this.#next - 1 });
    this.dispatchEvent(new CustomEvent("follower", { detail: { token } }));
  }

  // Ends the current tenure's beat loop and state writes; a new epoch voids pending work.
  #haltBeats(): void {
    this.#epoch++;
    this.#cancelBeat?.();
    this.#cancelBeat = undefined;
    this.#prepared = undefined;
    this.#stateTimer?.();
    this.#stateTimer = undefined;
    this.#nextDue = -Infinity;
    this.#runAfterBeat();
  }

  // Runs fn now, unless the leader's next beat is due within QUIET_GUARD_MS: then right after it.
  #whenQuiet(fn: () => void): void {
    const left = this.#nextDue - this.#clock.now();
    if (this.#role === "leader" && left > -1 && left < QUIET_GUARD_MS) {
      // A beat that cannot go out on time must not hold the lease's work back for long.
      if (this.#afterBeat.length === 0) {
        this.#idleClock.schedule(this.#nextDue + QUIET_GUARD_MS, () => this.#runAfterBeat());
      }
      this.#afterBeat.push(fn);
    } else fn();
  }

  #runAfterBeat(): void {
    const queued = this.#afterBeat;
    if (queued.length === 0) return;
    this.#afterBeat = [];
    for (const fn of queued) fn();
  }

  /**
   * Logs what a listener threw; the pulse keeps beating.
   *
   * @param type The event type whose listener threw.
   * @param error What it threw.
   */
  protected override onListenerError(type: string, error: unknown): void {
    this.#logger.error("event listener threw", { event: type, error: String(error) });
  }

  // --- the beat loop ---

  #arm(): void {
    const tl = this.#timeline;
    let n = this.#next;
    let due = tl.dueAt(n);
    const now = this.#clock.now();
    this.#armedLate = due < now;
    if (this.#armedLate) {
      const current = tl.beatAt(now);
      if (current - n + 1 > tl.beatsPerBar) {
        // Too far behind to replay: publish the current beat and count the rest as skipped.
        this.#skipped += current - n;
        this.#logger.warn("beats skipped", { from: n, to: current - 1 });
        n = this.#next = current;
        due = tl.dueAt(n);
      }
    }
    const at = this.#spinToDue ? due - PREP_LEAD_MS : due;
    this.#nextDue = due;
    this.#cancelBeat = this.#clock.schedule(at, () => this.#fire(n, due));
    this.#prepareFrame(n);
  }

  #fire(n: number, due: number): void {
    this.#cancelBeat = undefined;
    if (this.#role !== "leader" || n !== this.#next) return;
    if (this.#lease && !this.#lease.isHeld()) {
      this.#demote(`lease expired before beat ${n}`);
      return;
    }
    const p = this.#prepared;
    if (!p || p.beat !== n || p.timeline !== this.#timeline) {
      // The frame is not ready (its window id is still being derived): publish once it is; if
      // preparing failed, try again shortly rather than stall the beat.
      const epoch = this.#epoch;
      const again = () => {
        if (epoch !== this.#epoch || this.#next !== n || this.#role !== "leader") return;
        if (this.#prepared?.beat === n) this.#fire(n, due);
        else {this.#cancelBeat = this.#clock.schedule(this.#clock.now() + 5, () =>
            this.#fire(n, due));}
      };
      this.#track(this.#buildFrame(n).finally(again));
      return;
    }
    this.#prepared = undefined;
    const frame = p.frame;
    frame.hlc = this.#hlc.now();
    const data = encoder.encode(p.head + frame.hlc + p.tail);
    const headers: Record<string, string> = {
      "x-window-id": frame.window_id,
      "x-hlc": frame.hlc,
      "x-pulse-id": this.id,
      "x-fencing-token": this.#tokenText,
      "x-pulse-sent": "",
    };
    // Never before the due time.
    let sent = this.#clock.now();
    while (sent < due) sent = this.#clock.now();
    headers["x-pulse-sent"] = sent.toFixed(3);
    try {
      this.#bus.publish(this.#subjects.beat, data, { headers });
      this.#published++;
      if (this.#armedLate) this.#catchUp++;
      else this.#lateness.observe((sent - due) / 1000);
    } catch (error) {
      this.#publishErrors++;
      this.#error(`Cannot publish beat ${n}`, error);
    }
    this.#lastBeat = frame;
    this.#lastBeatAt = sent;
    if (frame.downbeat) {
      this.#lastDownbeat = n;
      const tl = this.#timeline;
      if (tl.segments.length > 1 && tl.segments[1].beat <= n) {
        this.#timeline = tl.trimBefore(n);
        this.#stateDirty = true;
      }
    }
    this.#next = n + 1;
    this.#arm();
    this.#runAfterBeat();
    this.dispatchEvent(new CustomEvent<BeatFrame>("beat", { detail: frame }));
  }

  #prepareFrame(n: number): void {
    const p = this.#prepared;
    if (p && p.beat === n && p.timeline === this.#timeline) return;
    this.#prepared = undefined;
    const tl = this.#timeline;
    const bar = tl.barStart(n);
    const w = this.#windows.get(bar);
    if (typeof w !== "string") {
      this.#track(this.#buildFrame(n));
      return;
    }
    // The usual case, once per beat: the frame is ready before this returns.
    try {
      this.#prepared = prepared(n, tl, tl.frameWithWindow(this.clusterId, n, PLACEHOLDER_HLC, w));
    } catch (error) {
      this.#error(`Cannot prepare beat ${n}`, error);
      return;
    }
    if (tl.isDownbeat(n) || this.#windowsTo < bar) this.#requestWindows(bar);
  }

  async #buildFrame(n: number): Promise<void> {
    const tl = this.#timeline;
    const bar = tl.barStart(n);
    const known = this.#windows.get(bar);
    const w = typeof known === "string" ? known : await this.#window(bar);
    const frame = await tl.frame(this.clusterId, n, PLACEHOLDER_HLC, w);
    if (this.#timeline === tl && this.#next === n && this.#role === "leader") {
      this.#prepared = prepared(n, tl, frame);
    }
    this.#requestWindows(bar);
  }

  #window(bar: number): Promise<string> {
    const have = this.#windows.get(bar);
    if (typeof have === "string") return Promise.resolve(have);
    if (have) return have;
    const p: Promise<string> = windowId(this.clusterId, Math.max(0, bar)).then((w) => {
      if (this.#windows.get(bar) === p) this.#windows.set(bar, w);
      return w;
    }, (error) => {
      if (this.#windows.get(bar) === p) this.#windows.delete(bar);
      throw error;
    });
    this.#windows.set(bar, p);
    this.#track(p);
    return p;
  }

  // Derives window ids of the bars ahead and forgets those behind (bounded by the lookahead).
  #requestWindows(bar: number): void {
    const tl = this.#timeline;
    const bpb = tl.beatsPerBar;
    const until = bar + this.#lookahead * bpb;
    if (until > this.#windowsTo) {
      let b = Math.max(bar, this.#windowsTo + 1);
      if (tl.barStart(b) !== b) b = tl.barStart(b) + bpb;
      for (; b <= until; b += bpb) void this.#window(b).catch(() => {});
      this.#windowsTo = until;
    }
    const cap = this.#lookahead + 4;
    for (const k of this.#windows.keys()) {
      if (k >= bar - bpb && this.#windows.size <= cap) break;
      this.#windows.delete(k);
    }
  }

  // --- state in KV ---

  #scheduleStateWrite(): void {
    this.#stateTimer?.();
    this.#stateTimer = this.#idleClock.schedule(this.#clock.now() + this.#stateEveryMs, () => {
      this.#stateTimer = undefined;
      if (this.#role !== "leader") return;
      if (this.#next - 1 !== this.#stateWrittenBeat) this.#stateDirty = true;
      this.#track(this.#writeState());
      this.#scheduleStateWrite();
    });
  }

  async #writeState(final = false): Promise<void> {
    const lease = this.#lease;
    if (!lease || !this.#stateDirty) return;
    if (!final && this.#role !== "leader") return;
    if (this.#stateWriting) return;
    this.#stateDirty = false;
    const last = this.#next - 1;
    const value: StoredState = {
      version: 1,
      cluster_id: this.clusterId,
      timeline: this.#timeline.toJSON(),
      last_beat: last,
      holder: this.id,
      updated_at: new Date(this.#clock.now()).toISOString(),
    };
    const write = (async () => {
      if (!lease.isHeld()) return;
      try {
        this.#stateRev = await lease.putJson(PULSE_STATE_KEY, value, this.#stateRev);
        this.#stateWrittenBeat = last;
      } catch (error) {
        if (error instanceof BackbeatError && error.code === "lease") {
          // Someone else wrote it: we are probably deposed; learn the revision for next time.
          const entry = await lease.getJson(PULSE_STATE_KEY).catch(() => undefined);
          this.#stateRev = entry?.revision ?? 0;
          this.#logger.warn("stored timeline changed under us", { revision: this.#stateRev });
        } else {
          this.#error("Cannot store the timeline", error);
        }
        this.#stateDirty = true;
      }
    })();
    this.#stateWriting = write;
    try {
      await write;
    } finally {
      this.#stateWriting = undefined;
    }
  }

  // --- inbound messages ---

  #onBeat(msg: BusMessage): void {
    if (msg.headers?.["x-pulse-id"] === this.id) return;
    // Schema-checked like the SDK does: a bad frame must not seed a successor's timeline.
    const frame = decodeBeatFrame(msg.data, this.clusterId);
    if (typeof frame === "string") {
      this.#framesRejected++;
      return;
    }
    try {
      this.#hlc.update(frame.hlc);
    } catch { /* a remote clock far ahead must not move ours */ }
    if (!this.#lastBeat || frame.beat_index >= this.#lastBeat.beat_index) {
      this.#lastBeat = frame;
      this.#lastBeatAt = this.#clock.now();
    }
    if (frame.downbeat === true && frame.beat_index > this.#lastDownbeat) {
      this.#lastDownbeat = frame.beat_index;
    }
    if (this.#role === "leader" && this.#lease) {
      const token = Number(msg.headers?.["x-fencing-token"]);
      if (token > this.#token) {
        const from = msg.headers?.["x-pulse-id"];
        this.#demote(`superseded by ${from} (fencing token ${token} > ${this.#token})`);
        this.#track(this.#lease.stepDown());
      }
    }
  }

  #onControl(msg: BusMessage): void {
    if (this.#role !== "leader") return;
    let tempo: number;
    try {
      if (msg.data.byteLength > MAX_CONTROL_BYTES) {
        throw new RangeError(
          `message of ${msg.data.byteLength} bytes exceeds ${MAX_CONTROL_BYTES}`,
        );
      }
      let body: unknown;
      try {
        body = JSON.parse(decoder.decode(msg.data));
      } catch {
        throw new TypeError("Invalid tempo request: not JSON");
      }
      tempo = parseTempoRequest(body);
    } catch (error) {
      this.#controlRejected++;
      this.#logger.warn("control message rejected", {
        subject: msg.subject,
        reason: (error as Error).message,
      });
      return;
    }
    try {
      this.setTempo(tempo);
    } catch (error) {
      // A message handler must not throw: count it like any other refused request.
      this.#controlRejected++;
      this.#error("Cannot apply the tempo request", error);
    }
  }

  // --- helpers ---

  #track<T>(p: Promise<T>): Promise<T> {
    const guarded = p.catch((error) => {
      this.#error("Background task failed", error);
    }).finally(() => this.#background.delete(guarded));
    this.#background.add(guarded);
    return p;
  }

  #error(message: string, error: unknown): void {
    this.#logger.error(message, { error });
    this.dispatchEvent(new ErrorEvent("error", { message, error }));
  }
}

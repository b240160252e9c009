import {
  answerTimeRequests,
  BackbeatError,
  type BeatFrame,
  type Bus,
  type BusHeaders,
  type BusMessage,
  type BusSubscription,
  type Clock,
  type ClusterSubjects,
  DEFAULT_BEATS_PER_BAR,
  DEFAULT_TEMPO_BPM,
  FrameTracker,
  hmacKey,
  HybridLogicalClock,
  InMemoryBus,
  IsolatedEventTarget,
  Keyring,
  type Logger,
  parseInstant,
  Rejections,
  SignatureDomain,
  type SigningKey,
  silentLogger,
  subjects,
  SystemClock,
  Timeline,
  verifySigned,
} from "../core/mod.ts";
import type { NatsBusLike } from "../nats/mod.ts";
import { decodeBeatFrame } from "../schemas/mod.ts";
import { BeatLoop, MAX_WINDOW_LOOKAHEAD_BARS, PULSE_SPIN_MS } from "./_beat_loop.ts";
import {
  authenticateControl,
  CONTROL_MAX_SKEW_MS,
  CONTROL_REJECT_REASONS,
  type ControlAuth,
  controlMessage,
  controlPayload,
  hasControlProof,
  keyringOf,
  readControlMessage,
} from "./_control.ts";
import {
  Leadership,
  type LeadershipHost,
  planTenure,
  STATE_WRITE_INTERVAL_MS,
  type TenurePlan,
} from "./_leadership.ts";
import {
  assertPulseTempo,
  MAX_PULSE_TEMPO_BPM,
  MAX_TEMPO_REQUEST_BYTES,
  readTempoRequest,
} from "./_tempo.ts";
import type {
  ControlRejectReason,
  KeyringSource,
  PulseEventMap,
  PulseMetrics,
  PulseOptions,
  PulseRole,
  PulseStatus,
  PulseTempo,
  TempoChange,
} from "./_types.ts";
import { OrderedWork } from "./_work_queue.ts";

const DEFAULT_WINDOW_LOOKAHEAD_BARS = 2;
// Checks (signatures, HMACs) waiting at most, per kind of message; beyond it a flood is dropped
// and counted (control: rate_limited, frames: overload). A turn of the event loop runs at most
// VERIFY_BATCH of them (~1 ms).
const MAX_VERIFY_PENDING = 32;
const VERIFY_BATCH = 8;
// A signature says who made a frame, not when: a verified frame whose deadline is further than
// this (plus a bar) from its arrival is a replay, and is taken as unverified.
const FRESH_FRAME_MS = 60_000;
// A verified frame deposes a leader only when it continues the beats (not behind by more).
const FENCING_BEHIND_BEATS = 2;

// The frame gate's sentences, as stable reasons for counting (reverb's names for the same).
function gateReason(why: string): string {
  if (why.startsWith("frame of cluster")) return "cluster";
  if (why.startsWith("frame of ")) return "oversized";
  if (why.startsWith("frame is not JSON")) return "malformed";
  return "schema";
}

function isKeyringSource(value: unknown): value is KeyringSource {
  return value instanceof Keyring ||
    (typeof value === "object" && value !== null &&
      (value as { current?: unknown }).current instanceof Keyring);
}

function assertSigningKey(key: SigningKey): void {
  const k = key?.privateKey;
  if (
    !(k instanceof CryptoKey) || k.type !== "private" || k.algorithm.name !== "Ed25519" ||
    typeof key.keyId !== "string" || key.keyId.length === 0
  ) {
    throw new TypeError(
      "Invalid signingKey: expected an Ed25519 SigningKey (importSigningKey, readSigningKeyFile)",
    );
  }
}

function isNatsBus(bus: Bus): bus is NatsBusLike {
  const c = (bus as { connection?: unknown }).connection;
  return typeof c === "object" && c !== null;
}

// Pulses only ever publish tempos in their own range: a frame beyond it is not a pulse's, and
// must not become the tempo a successor continues at.
function pulseMightSend(frame: BeatFrame): boolean {
  return frame.tempo_bpm <= MAX_PULSE_TEMPO_BPM &&
    (frame.next_tempo_bpm === undefined || frame.next_tempo_bpm <= MAX_PULSE_TEMPO_BPM);
}

/**
 * The beat service. The leader publishes a {@linkcode BeatFrame} on `backbeat.<cluster>.beat`
 * for every beat of an absolute {@linkcode Timeline}: beat n is due at `origin + n × period`, is
 * never published before its due time, and error never accumulates. Each frame is prepared
 * ahead of time (window ids are derived bars in advance), so nothing asynchronous sits between
 * the timer and the publish. Headers: `x-window-id`, `x-hlc`, `x-pulse-id`, `x-fencing-token`
 * and `x-pulse-sent` (epoch ms of the publish, µs resolution); with `signingKey`, also
 * `x-signature` and `x-key-id` over `backbeat.beatframe.v1`, the cluster and the epoch, signed
 * before the beat is due. A timeline the pulse creates gets an epoch (its creation instant, above
 * any stored one), which frames carry and window ids derive from.
 *
 * On an in-memory (or any non-NATS) bus the pulse leads alone. On NATS, pulses of one cluster
 * elect a leader through a JetStream KV lease (bucket `backbeat_<cluster>_pulse`); the leader
 * stores the timeline there, followers track the beat subject, and a new leader continues the
 * stored timeline after the last beat stored or seen where that timeline explains it (a forged
 * frame cannot move the numbering), publishing beats missed during the takeover at once (at
 * most one bar; beyond that the gap is skipped and counted). The leader checks its lease (by a
 * monotonic clock) right before every publish, so a paused and resumed leader stops at once. A
 * frame's fencing token alone never deposes it: a verified frame with a higher token does;
 * an unverified one makes it ask the lease (at most once a second). With `pulseKeyring`,
 * unsigned or badly signed frames are refused and counted.
 *
 * Tempo changes ({@linkcode Pulse.setTempo}, or `{"tempo_bpm": n}` on
 * `backbeat.<cluster>.control`) take effect at a downbeat, announced by `next_tempo_bpm` in the
 * frames of the bar before. With `adminToken` or `adminKeyring`, a control message must be
 * authenticated (see `controlMessage()`), fresh and newer than the last; refusals are counted by
 * reason, and checks in flight are bounded, so a flood costs little. A follower forwards
 * `setTempo` to the leader on the control subject.
 *
 * Events: see {@linkcode PulseEventMap}.
 *
 * @example Run an embedded pulse
 * ```ts
 * import { Pulse } from "@chorus/backbeat/pulse";
 * import { InMemoryBus } from "@chorus/backbeat/sdk";
 * const bus = new InMemoryBus();
 * bus.subscribe("backbeat.dev.beat", (m) => console.log(new TextDecoder().decode(m.data)));
 * await using pulse = new Pulse({ clusterId: "dev", bus, tempoBpm: 600 });
 * pulse.addEventListener("leader", (e) => console.log("leading, token", e.detail.token));
 * await pulse.start();
 * await new Promise((r) => setTimeout(r, 250));
 * ```
 */
export class Pulse extends IsolatedEventTarget<PulseEventMap> {
  /** This pulse's id. */
  readonly id: string;
  /** The cluster. */
  readonly clusterId: string;
  readonly #subjects: ClusterSubjects;
  readonly #bus: Bus;
  readonly #ownsBus: boolean;
  readonly #clock: Clock;
  readonly #logger: Logger;
  readonly #hlc: HybridLogicalClock;
  readonly #options: PulseOptions;
  readonly #stateEveryMs: number;
  // The one record of the beats: frames this pulse published and frames it followed.
  readonly #tracker = new FrameTracker();
  readonly #loop: BeatLoop;
  #leadership: Leadership | undefined;
  #role: PulseRole = "stopped";
  #starting: Promise<void> | undefined;
  #stopping: Promise<void> | undefined;
  #stopped = false;
  #everLed = false;
  #subs: BusSubscription[] = [];
  // Clock answers on the time subject: only while leading, so clients measure the clock whose
  // beats they follow.
  #timeAnswers: BusSubscription | undefined;
  #background = new Set<Promise<unknown>>();
  #abortCleanup: (() => void) | undefined;
  #takeovers = 0;
  #beatsUnpublished = 0;
  readonly #frameRejections: Rejections;
  readonly #controlRejections: Rejections;
  readonly #frameWork: OrderedWork;
  readonly #controlWork: OrderedWork;
  readonly #pulseKeys: KeyringSource | undefined;
  readonly #controlOn: boolean;
  // Control messages must prove the admin token or an operator key (set up by start()).
  readonly #controlSecured: boolean;
  #controlAuth: ControlAuth | undefined;
  #lastIssuedAt = -Infinity;
  // Whether the tracker's latest frame is vouched for (verified, own, or explained by an earlier).
  #trackedConfirmed = false;
  #framesVerified = 0;

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
    this.id = options.id ?? `pulse-${crypto.getRandomValues(new Uint8Array(4)).toHex()}`;
    if (typeof this.id !== "string" || !/^[\x21-\x7e]{1,128}$/.test(this.id)) {
      throw new TypeError(
        `Invalid pulse id ${JSON.stringify(options.id)}: expected 1 to 128 printable characters`,
      );
    }
    const tempo = options.tempoBpm ?? DEFAULT_TEMPO_BPM;
    assertPulseTempo(tempo);
    // The lease owns its TTL's default; only a given one is checked here, to fail early.
    const ttl = options.leaseTtlMs;
    if (ttl !== undefined && !(ttl >= 50 && ttl <= 60_000)) {
      throw new RangeError(`Invalid leaseTtlMs ${ttl}: expected 50 to 60000`);
    }
    const lookahead = options.windowLookaheadBars ?? DEFAULT_WINDOW_LOOKAHEAD_BARS;
    if (!Number.isInteger(lookahead) || lookahead < 1 || lookahead > MAX_WINDOW_LOOKAHEAD_BARS) {
      throw new RangeError(
        `Invalid windowLookaheadBars ${options.windowLookaheadBars}: expected an integer from 1 to ${MAX_WINDOW_LOOKAHEAD_BARS}`,
      );
    }
    this.#stateEveryMs = options.stateWriteIntervalMs ?? STATE_WRITE_INTERVAL_MS;
    if (!(this.#stateEveryMs >= 10)) {
      throw new RangeError(
        `Invalid stateWriteIntervalMs ${options.stateWriteIntervalMs}: expected at least 10`,
      );
    }
    this.#clock = options.clock ?? new SystemClock({ spinMs: PULSE_SPIN_MS });
    if (options.originTime !== undefined && !Number.isFinite(options.originTime)) {
      throw new RangeError(`Invalid originTime ${options.originTime}: expected a finite number`);
    }
    const replicas = options.replicas;
    if (replicas !== undefined && !(Number.isInteger(replicas) && replicas >= 1 && replicas <= 5)) {
      throw new RangeError(`Invalid replicas ${replicas}: expected an integer from 1 to 5`);
    }
    if (options.signingKey !== undefined) assertSigningKey(options.signingKey);
    for (const name of ["pulseKeyring", "adminKeyring"] as const) {
      if (options[name] !== undefined && !isKeyringSource(options[name])) {
        throw new TypeError(`Invalid ${name}: expected a Keyring or a KeyringWatcher`);
      }
    }
    const token = options.adminToken;
    if (token !== undefined && !(typeof token === "string" && /^\S{1,1024}$/.test(token))) {
      // Never the token itself in the message.
      throw new TypeError("Invalid adminToken: expected 1 to 1024 non-space characters");
    }
    if (options.control !== undefined && typeof options.control !== "boolean") {
      throw new TypeError(`Invalid control ${JSON.stringify(options.control)}: expected a boolean`);
    }
    this.#pulseKeys = options.pulseKeyring;
    this.#controlOn = options.control ?? true;
    this.#controlSecured = token !== undefined || options.adminKeyring !== undefined;
    const timeline = new Timeline({
      originTime: options.originTime ?? this.#clock.now(),
      tempoBpm: tempo,
      beatsPerBar: options.beatsPerBar ?? DEFAULT_BEATS_PER_BAR,
      phases: options.phases,
    });
    this.#ownsBus = options.bus === undefined;
    this.#bus = options.bus ?? new InMemoryBus();
    this.#logger = options.logger ?? silentLogger;
    this.#hlc = new HybridLogicalClock({ clock: () => this.#clock.now() });
    this.#loop = new BeatLoop({
      clusterId: this.clusterId,
      pulseId: this.id,
      bus: this.#bus,
      subject: this.#subjects.beat,
      clock: this.#clock,
      hlc: this.#hlc,
      lookaheadBars: lookahead,
      timeline,
      logger: this.#logger,
      mayPublish: (n) => {
        if (!this.#leadership || this.#leadership.isHeld()) return true;
        this.#demote(`lease expired before beat ${n}`);
        return false;
      },
      onPublished: (frame, sent) => {
        this.#observe(frame, sent, true);
        this.dispatchEvent(new CustomEvent("beat", { detail: frame }));
      },
      onTimelineTrimmed: () => this.#leadership?.markDirty(),
      onError: (message, error) => this.#error(message, error),
      track: (work) => this.#track(work),
      signingKey: options.signingKey,
    });
    const idle = this.#loop.idleClock;
    this.#frameRejections = new Rejections({
      logger: this.#logger,
      clock: idle,
      message: "frames rejected",
    });
    this.#controlRejections = new Rejections({
      logger: this.#logger,
      clock: idle,
      message: "control messages rejected",
    });
    const work = () =>
      new OrderedWork({
        limit: MAX_VERIFY_PENDING,
        batch: VERIFY_BATCH,
        pause: () => this.#loop.pause(),
        track: (w) => this.#track(w),
        onError: (error) => this.#error("A message check failed", error),
      });
    this.#frameWork = work();
    this.#controlWork = work();
  }

  /** The schedule this pulse leads, or last loaded or configured. */
  get timeline(): Timeline {
    return this.#loop.timeline;
  }

  /** Whether this pulse is publishing beats. */
  get isLeader(): boolean {
    return this.#role === "leader";
  }

  /** Current role. */
  get role(): PulseRole {
    return this.#role;
  }

  /** The latest frame this pulse published or followed, if any. */
  get lastBeat(): BeatFrame | undefined {
    return this.#tracker.last?.frame;
  }

  /** Fencing token of the current tenure (KV revision), 0 when not leading or embedded. */
  get fencingToken(): number {
    return this.#role === "leader" ? this.#loop.token : 0;
  }

  /** Epoch of the timeline led, or followed (0: a timeline without epochs). */
  get epoch(): number {
    const last = this.#tracker.last;
    if (this.#role !== "leader" && last) return last.frame.epoch ?? 0;
    return this.#loop.timeline.epoch;
  }

  /** Leader, or a follower that saw a beat within three beats (at least 2 s). */
  get ready(): boolean {
    if (this.#role === "leader") return true;
    const last = this.#tracker.last;
    if (this.#role !== "follower" || !last) return false;
    const period = 60_000 / (last.frame.tempo_bpm || DEFAULT_TEMPO_BPM);
    return this.#clock.now() - last.arrival <= Math.max(3 * period, 2000);
  }

  /**
   * Starts the pulse; resolves once it leads or follows.
   *
   * @param signal Stops the pulse when aborted.
   * @returns Resolves once the pulse leads or follows.
   * @throws {BackbeatError} `closed` after stop; `aborted` when the signal is already aborted;
   * `connection` when the KV bucket cannot be opened.
   *
   * @example Start and stop
   * ```ts
   * import { Pulse } from "@chorus/backbeat/pulse";
   * const pulse = new Pulse({ clusterId: "dev" });
   * await pulse.start();
   * console.log(pulse.role); // "leader"
   * await pulse.stop();
   * ```
   */
  start(signal?: AbortSignal): Promise<void> {
    if (this.#stopped) {
      return Promise.reject(new BackbeatError("closed", "Cannot start a stopped pulse"));
    }
    this.#starting ??= this.#start(signal);
    return this.#starting;
  }

  /**
   * Stops publishing and following; a leader saves its state and releases its lease at once.
   * Idempotent; a stopped pulse cannot start again.
   *
   * @returns Resolves once stopped (and an owned bus closed).
   *
   * @example Stop on shutdown
   * ```ts
   * import { Pulse } from "@chorus/backbeat/pulse";
   * const pulse = new Pulse({ clusterId: "dev" });
   * await pulse.start();
   * await pulse.stop();
   * console.log(pulse.role); // "stopped"
   * ```
   */
  stop(): Promise<void> {
    this.#stopping ??= this.#stop();
    return this.#stopping;
  }

  /**
   * `await using` support: {@linkcode Pulse.stop}.
   *
   * @returns Resolves once stopped.
   */
  [Symbol.asyncDispose](): Promise<void> {
    return this.stop();
  }

  /**
   * Resolves once background preparation (window ids of the bars ahead, the next frame, KV
   * writes) has finished. Tests driving a `ManualClock` await it between advances: WebCrypto
   * digests are real asynchronous work that cannot complete while simulated time jumps.
   *
   * @returns Resolves when no background work is left.
   *
   * @example Step a pulse on a manual clock
   * ```ts
   * import { Pulse } from "@chorus/backbeat/pulse";
   * import { ManualClock } from "@chorus/backbeat/testing";
   * const clock = new ManualClock(0);
   * await using pulse = new Pulse({ clusterId: "dev", clock, tempoBpm: 600 });
   * await pulse.start();
   * await clock.advance(110);
   * await pulse.settled();
   * console.log(pulse.lastBeat?.beat_index); // 1
   * ```
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
   *
   * @example Slow down from the next downbeat
   * ```ts
   * import { Pulse } from "@chorus/backbeat/pulse";
   * await using pulse = new Pulse({ clusterId: "dev", tempoBpm: 120 });
   * await pulse.start();
   * console.log(pulse.setTempo(60)); // { tempoBpm: 60, effectiveBeat: 4, forwarded: false }
   * ```
   */
  setTempo(tempoBpm: number): TempoChange {
    assertPulseTempo(tempoBpm);
    if (this.#role === "leader") {
      const effectiveBeat = this.#loop.setTempo(tempoBpm);
      this.#leadership?.save();
      const change: TempoChange = { tempoBpm, effectiveBeat, forwarded: false };
      this.#logger.info("tempo change scheduled", {
        tempo_bpm: tempoBpm,
        effective_beat: effectiveBeat,
      });
      this.dispatchEvent(new CustomEvent("tempo", { detail: change }));
      return change;
    }
    const last = this.#tracker.last;
    if (this.#role === "follower" && last) {
      if (!this.#controlOn) {
        throw new BackbeatError(
          "closed",
          "Cannot forward the tempo change: the control subject is off; ask the leader",
        );
      }
      const token = this.#options.adminToken;
      if (this.#controlSecured && token === undefined) {
        throw new BackbeatError(
          "auth",
          "Cannot forward the tempo change: control messages must be signed and this pulse has " +
            "no admin token; send a signed control message or ask the leader",
        );
      }
      // The leader applies it at the downbeat after its next beat: estimate that on the grid seen.
      const next = last.frame.beat_index + 1;
      const start = next - this.#tracker.positionInBar(next);
      if (token === undefined) {
        this.#bus.publish(
          this.#subjects.control,
          controlPayload(tempoBpm, this.#clock.now(), this.id),
        );
      } else {
        // The HMAC is asynchronous: a publish failure is reported as an error event.
        this.#track((async () => {
          const { data, headers } = await controlMessage({
            clusterId: this.clusterId,
            tempoBpm,
            token,
            issuedAt: this.#clock.now(),
            requestedBy: this.id,
          });
          this.#bus.publish(this.#subjects.control, data, { headers });
        })());
      }
      const change: TempoChange = {
        tempoBpm,
        effectiveBeat: start + this.#tracker.beatsPerBar,
        forwarded: true,
      };
      this.#logger.info("tempo change forwarded to the leader", { tempo_bpm: tempoBpm });
      this.dispatchEvent(new CustomEvent("tempo", { detail: change }));
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
   *
   * @example Ask for readiness
   * ```ts
   * import { Pulse } from "@chorus/backbeat/pulse";
   * await using pulse = new Pulse({ clusterId: "dev" });
   * console.log(pulse.status().ready); // false: not started
   * ```
   */
  status(): PulseStatus {
    return {
      id: this.id,
      clusterId: this.clusterId,
      role: this.#role,
      ready: this.ready,
      tempoBpm: this.#tempoNow(),
      lastBeatIndex: this.#tracker.last?.frame.beat_index ?? -1,
      fencingToken: this.fencingToken,
      epoch: this.epoch,
      controlRejected: this.#controlCounts(),
    };
  }

  /**
   * The tempo now, a scheduled change, and the next downbeat: from the timeline it leads, or, as
   * a follower, from the frames it follows.
   *
   * @returns The tempo summary.
   *
   * @example Ask for the next downbeat
   * ```ts
   * import { Pulse } from "@chorus/backbeat/pulse";
   * await using pulse = new Pulse({ clusterId: "dev", tempoBpm: 120 });
   * await pulse.start();
   * console.log(pulse.tempo().tempoBpm, pulse.tempo().nextDownbeat); // 120 0
   * ```
   */
  tempo(): PulseTempo {
    const last = this.#tracker.last;
    if (this.#role !== "leader" && last) {
      const frame = last.frame;
      const next = frame.beat_index + 1;
      const pos = this.#tracker.positionInBar(next);
      const downbeat = pos === 0 ? next : next - pos + this.#tracker.beatsPerBar;
      return {
        tempoBpm: frame.tempo_bpm,
        pending: frame.next_tempo_bpm === undefined || frame.next_tempo_bpm === frame.tempo_bpm
          ? undefined
          : { tempoBpm: frame.next_tempo_bpm, effectiveBeat: downbeat },
        nextDownbeat: downbeat,
        nextDownbeatAt: last.arrival + (downbeat - frame.beat_index) * 60_000 / frame.tempo_bpm,
        epoch: frame.epoch ?? 0,
        role: this.#role,
      };
    }
    const tl = this.#loop.timeline;
    if (this.#role !== "leader" && this.#role !== "stopped" && !this.#everLed) {
      return {
        tempoBpm: tl.tempoAt(0),
        pending: undefined,
        nextDownbeat: -1,
        nextDownbeatAt: undefined,
        epoch: this.epoch,
        role: this.#role,
      };
    }
    const next = Math.max(this.#loop.next, tl.segments[0].beat);
    const downbeat = tl.isDownbeat(next) ? next : tl.barStart(next) + tl.beatsPerBar;
    // The beat in force: the last published, or the first to come.
    const now = Math.max(next - 1, tl.segments[0].beat);
    const change = tl.pendingChange(now);
    return {
      tempoBpm: tl.tempoAt(now),
      pending: change ? { tempoBpm: change.tempoBpm, effectiveBeat: change.beat } : undefined,
      nextDownbeat: downbeat,
      nextDownbeatAt: tl.dueAt(downbeat),
      epoch: tl.epoch,
      role: this.#role,
    };
  }

  /**
   * Reads the pulse's counters and gauges.
   *
   * @returns A snapshot, including the publish lateness histogram.
   *
   * @example Count published beats
   * ```ts
   * import { Pulse } from "@chorus/backbeat/pulse";
   * await using pulse = new Pulse({ clusterId: "dev" });
   * console.log(pulse.metrics().beatsPublished); // 0
   * ```
   */
  metrics(): PulseMetrics {
    const loop = this.#loop;
    return {
      beatsPublished: loop.published,
      catchUpBeats: loop.catchUpBeats,
      beatsSkipped: loop.skipped,
      publishErrors: loop.publishErrors,
      takeovers: this.#takeovers,
      beatsUnpublished: this.#beatsUnpublished,
      controlRejected: this.#controlRejections.total,
      controlRejectedByReason: this.#controlCounts(),
      framesRejected: this.#frameRejections.total,
      framesRejectedByReason: this.#frameRejections.counts,
      framesVerified: this.#framesVerified,
      fencingChecks: this.#leadership?.fencingChecks ?? 0,
      epoch: this.epoch,
      leader: this.#role === "leader",
      tempoBpm: this.#tempoNow(),
      lastBeatIndex: this.#tracker.last?.frame.beat_index ?? -1,
      fencingToken: this.fencingToken,
      lateness: loop.lateness(),
    };
  }

  #controlCounts(): Record<ControlRejectReason, number> {
    const out = {} as Record<ControlRejectReason, number>;
    for (const r of CONTROL_REJECT_REASONS) out[r] = this.#controlRejections.count(r);
    return out;
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

  #tempoNow(): number {
    const last = this.#tracker.last?.frame;
    if (this.#role !== "leader" && last) return last.tempo_bpm;
    return this.#loop.timeline.tempoAt(last?.beat_index ?? this.#loop.next);
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
      if (this.#controlSecured) {
        const token = this.#options.adminToken;
        this.#controlAuth = {
          hmac: token === undefined ? undefined : await hmacKey(token),
          keyring: this.#options.adminKeyring,
        };
      }
      if (this.#controlOn) {
        this.#subs.push(this.#bus.subscribe(this.#subjects.control, (m) => this.#onControl(m)));
      }
      if (!isNatsBus(this.#bus)) {
        const plan = await planTenure({
          clusterId: this.clusterId,
          tracker: this.#tracker,
          trackerConfirmed: this.#trackedConfirmed,
          current: this.#loop.timeline,
          keepCurrent: this.#keepTimeline(),
          listeningSince: Infinity,
          clock: this.#clock,
          logger: this.#logger,
        });
        await this.#lead(0, plan, () => !this.#stopped);
        await this.settled();
        return;
      }
      // Other pulses' frames only matter when there are other pulses.
      this.#subs.push(this.#bus.subscribe(this.#subjects.beat, (m) => this.#onBeat(m)));
      await this.#bus.flush();
      const leadership = await Leadership.open({
        clusterId: this.clusterId,
        pulseId: this.id,
        bus: this.#bus,
        clock: this.#clock,
        leaseClock: this.#loop.quietClock,
        idleClock: this.#loop.idleClock,
        tracker: this.#tracker,
        trackerConfirmed: () => this.#trackedConfirmed,
        listeningSince: this.#clock.now(),
        leaseTtlMs: this.#options.leaseTtlMs,
        leaseRenewIntervalMs: this.#options.leaseRenewIntervalMs,
        leaseCheckIntervalMs: this.#options.leaseCheckIntervalMs,
        stateWriteIntervalMs: this.#stateEveryMs,
        replicas: this.#options.replicas,
        logger: this.#logger,
      }, this.#host());
      if (this.#stopped) {
        await leadership.close(false);
        return;
      }
      this.#leadership = leadership;
      this.#logger.info("pulse joined", { bucket: leadership.bucket, pulse_id: this.id });
      await leadership.start();
      if (this.#role === "starting" && !this.#stopped) {
        this.#role = "follower";
        this.#logger.info("following", { leader: leadership.holder });
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
    this.#endTenure();
    this.#abortCleanup?.();
    this.#abortCleanup = undefined;
    for (const sub of this.#subs) sub.unsubscribe();
    this.#subs = [];
    this.#frameWork.close();
    this.#controlWork.close();
    // An embedded pulse stops synchronously (an abort listener sees it stopped at once).
    if (this.#leadership) await this.#leadership.close(wasLeader);
    this.#role = "stopped";
    if (wasLeader) {
      this.#logger.info(this.#leadership ? "stopped; lease released" : "stopped", {
        last_beat: this.#loop.next - 1,
      });
    }
    await this.settled();
    this.#frameRejections.stop();
    this.#controlRejections.stop();
    if (this.#ownsBus) await this.#bus.close();
  }

  // --- leadership ---

  // A timeline never led keeps its time only when an origin was configured.
  #keepTimeline(): boolean {
    return this.#everLed || this.#options.originTime !== undefined;
  }

  #host(): LeadershipHost {
    return {
      leading: () => this.#role === "leader",
      timeline: () => this.#loop.timeline,
      lastPublished: () => this.#loop.next - 1,
      keepTimeline: () => this.#keepTimeline(),
      lead: (token, plan, current) => this.#lead(token, plan, current),
      demote: (reason) => this.#demote(reason),
      error: (message, error) => this.#error(message, error),
      track: (work) => this.#track(work),
    };
  }

  async #lead(token: number, plan: TenurePlan, current: () => boolean): Promise<boolean> {
    await this.#loop.prefetch(plan.timeline, plan.next);
    if (!current() || this.#stopped) return false;
    this.#role = "leader";
    this.#everLed = true;
    this.#takeovers++;
    this.#loop.run(plan.timeline, plan.next, token);
    this.#answerTime();
    if (plan.keptTempo) {
      // A restarted pulse keeps the cluster's timeline: say so, or a new --tempo looks ignored.
      this.#logger.info("kept the stored timeline's tempo", {
        tempo_bpm: plan.keptTempo.stored,
        configured_tempo_bpm: plan.keptTempo.configured,
        why:
          "the cluster's timeline is in KV; change its tempo with POST /tempo or `backbeat tempo set`",
      });
    }
    if (plan.unpublished > 0) {
      this.#beatsUnpublished += plan.unpublished;
      this.#logger.warn("beats were never published while no pulse led", {
        beats: plan.unpublished,
        from_beat: plan.next - plan.unpublished,
        to_beat: plan.next - 1,
      });
    }
    this.#logger.info("leading", {
      token,
      next_beat: plan.next,
      tempo_bpm: plan.timeline.tempoAt(plan.next),
      continued_from: plan.last,
    });
    this.dispatchEvent(new CustomEvent("leader", { detail: { token } }));
    return true;
  }

  #demote(reason: string): void {
    if (this.#role !== "leader" || this.#stopped) return;
    const token = this.#loop.token;
    this.#endTenure();
    this.#role = "follower";
    this.#logger.warn("leadership lost", { reason, token, last_beat: this.#loop.next - 1 });
    this.dispatchEvent(new CustomEvent("follower", { detail: { token } }));
  }

  // Ends the current tenure's beats and state writes, and voids an acquisition in progress.
  #endTenure(): void {
    this.#loop.halt();
    this.#leadership?.interrupt();
    this.#timeAnswers?.unsubscribe();
    this.#timeAnswers = undefined;
  }

  // Answers clock requests on backbeat.<cluster>.time with the clock beats are scheduled by,
  // signed with the frame key when there is one.
  #answerTime(): void {
    if (this.#timeAnswers) return;
    try {
      this.#timeAnswers = answerTimeRequests(this.#bus, this.clusterId, {
        clock: this.#clock,
        signingKey: this.#options.signingKey,
        pulseId: this.id,
      });
    } catch (error) {
      // Beats matter more than clock answers: lead on without them.
      this.#error("Cannot answer clock requests", error);
    }
  }

  // --- inbound messages ---

  // Frames of other pulses. A leader only asks whether a frame shows a later tenure; a follower
  // tracks them to continue the timeline. With a pulse keyring, only frames whose signature
  // verifies count at all. Refusals are counted by reason and logged rate-limited.
  #onBeat(msg: BusMessage): void {
    const headers = msg.headers;
    if (headers?.["x-pulse-id"] === this.id) return;
    const arrival = this.#clock.now();
    // Through the one frame gate: a bad frame must not seed a successor's timeline.
    const frame = decodeBeatFrame(msg.data, this.clusterId);
    if (typeof frame === "string") {
      this.#frameRejections.add(gateReason(frame), { error: frame.slice(0, 200) });
      return;
    }
    if (!pulseMightSend(frame)) {
      this.#frameRejections.add("tempo", { tempo_bpm: frame.tempo_bpm });
      return;
    }
    if (this.#role === "leader") {
      // Only a later tenure matters to a leader: nothing else is worth a verification.
      const theirs = Number(headers?.["x-fencing-token"]);
      if (!(Number.isSafeInteger(theirs) && theirs > this.#loop.token)) return;
    }
    const keys = this.#pulseKeys;
    if (keys === undefined) {
      this.#takeFrame(frame, headers, arrival, undefined);
      return;
    }
    if (!headers?.["x-signature"] || !headers["x-key-id"]) {
      this.#frameRejections.add("unsigned", { beat_index: frame.beat_index });
      return;
    }
    const queued = this.#frameWork.push(async () => {
      const check = await verifySigned(
        keyringOf(keys),
        SignatureDomain.BeatFrame,
        this.clusterId,
        msg.data,
        headers,
        { epoch: frame.epoch ?? 0, at: this.#clock.now() },
      );
      if (!check.ok) {
        this.#frameRejections.add(check.reason, {
          key_id: headers["x-key-id"].slice(0, 64),
          beat_index: frame.beat_index,
        });
        return;
      }
      this.#framesVerified++;
      this.#takeFrame(frame, headers, arrival, check.key.keyId);
    });
    if (!queued) this.#frameRejections.add("overload");
  }

  // `keyId`: the trusted key the frame's signature verified with, if it did.
  #takeFrame(
    frame: BeatFrame,
    headers: BusHeaders | undefined,
    arrival: number,
    keyId: string | undefined,
  ): void {
    if (this.#stopped) return;
    const deadline = parseInstant(frame.deadline_at);
    const bar = (frame.beats_per_bar ?? DEFAULT_BEATS_PER_BAR) * 60_000 / frame.tempo_bpm;
    const verified = keyId !== undefined && Math.abs(deadline - arrival) <= FRESH_FRAME_MS + bar;
    if (this.#role === "leader") {
      // The token is a header, outside the signature: a replay of a signed frame (this pulse's
      // own, or an old one) with a forged token must not count as a later tenure's. Such a frame
      // only makes the leader ask the lease.
      const later = verified && keyId !== this.#options.signingKey?.keyId &&
        (frame.epoch ?? 0) >= this.#loop.timeline.epoch &&
        frame.beat_index >= this.#loop.next - FENCING_BEHIND_BEATS;
      this.#leadership?.checkFencing(headers, this.#loop.token, later);
      return;
    }
    const seen = this.#observe(frame, arrival, verified);
    if (seen === "new" || seen === "restart") {
      try {
        this.#hlc.update(frame.hlc);
      } catch { /* a remote clock far ahead must not move ours */ }
    } else if (seen === "implausible" || seen === "old_epoch" || seen === "unreadable") {
      this.#frameRejections.add(seen, { beat_index: frame.beat_index, epoch: frame.epoch ?? 0 });
    }
  }

  // Feeds the tracker and notes whether its latest frame is vouched for: a successor continues
  // only such frames when no stored timeline says otherwise.
  #observe(frame: BeatFrame, arrival: number, verified: boolean): string {
    const had = this.#tracker.last !== undefined;
    const { status } = this.#tracker.observe(frame, arrival, { verified });
    if (status === "new" || status === "restart") {
      this.#trackedConfirmed = verified || status === "restart" || had;
    }
    return status;
  }

  // Tempo requests. Open (no admin token or keyring): the leader applies any well-formed one.
  // Secured: every pulse checks the proof, freshness and order (so a successor knows the last
  // accepted), with bounded work in flight; the leader applies what passes.
  #onControl(msg: BusMessage): void {
    const auth = this.#controlAuth;
    if (auth === undefined) {
      if (this.#role !== "leader") return;
      let tempo: number;
      try {
        tempo = readTempoRequest(msg.data);
      } catch (error) {
        this.#controlRejections.add("invalid", { error: (error as Error).message.slice(0, 200) });
        return;
      }
      this.#applyTempo(tempo);
      return;
    }
    if (msg.data.byteLength > MAX_TEMPO_REQUEST_BYTES) {
      this.#controlRejections.add("invalid", { bytes: msg.data.byteLength });
      return;
    }
    const headers = msg.headers;
    if (!hasControlProof(auth, headers)) {
      this.#controlRejections.add("unauthenticated");
      return;
    }
    const queued = this.#controlWork.push(async () => {
      const now = this.#clock.now();
      const check = await authenticateControl(auth, this.clusterId, msg.data, headers, now);
      if (!check.ok) {
        this.#controlRejections.add(
          check.reason,
          check.failure ? { failure: check.failure } : undefined,
        );
        return;
      }
      let request;
      try {
        request = readControlMessage(msg.data);
        if (request.issuedAt === undefined) {
          throw new TypeError("Invalid control message: issued_at field is required");
        }
      } catch (error) {
        this.#controlRejections.add("invalid", { error: (error as Error).message.slice(0, 200) });
        return;
      }
      const issuedAt = request.issuedAt;
      if (Math.abs(issuedAt - now) > CONTROL_MAX_SKEW_MS) {
        this.#controlRejections.add("stale", { skew_ms: Math.round(issuedAt - now) });
        return;
      }
      if (issuedAt <= this.#lastIssuedAt) {
        this.#controlRejections.add("replay", { by: check.by });
        return;
      }
      this.#lastIssuedAt = issuedAt;
      if (this.#role === "leader" && !this.#stopped) this.#applyTempo(request.tempoBpm);
    });
    if (!queued) this.#controlRejections.add("rate_limited");
  }

  #applyTempo(tempo: number): void {
    try {
      this.setTempo(tempo);
    } catch (error) {
      // A message handler must not throw: count it like any other refused request.
      this.#controlRejections.add("invalid", { error: (error as Error).message.slice(0, 200) });
    }
  }

  // --- helpers ---

  #track<T>(work: Promise<T>): Promise<T> {
    const guarded = work.catch((error) => {
      this.#error("Background task failed", error);
    }).finally(() => this.#background.delete(guarded));
    this.#background.add(guarded);
    return work;
  }

  #error(message: string, error: unknown): void {
    this.#logger.error(message, { error });
    this.dispatchEvent(new ErrorEvent("error", { message, error }));
  }
}

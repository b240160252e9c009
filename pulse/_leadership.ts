// Leadership of a pulse on NATS: the KV lease, fencing, the takeover plan (which timeline to
// continue, from which beat, in which epoch) and the stored state a successor continues from.
import {
  BackbeatError,
  type BusHeaders,
  type Clock,
  type FrameTracker,
  type Logger,
  MAX_TIMELINE_SEGMENTS,
  MIN_TEMPO_BPM,
  Timeline,
  type TimelineJson,
} from "../core/mod.ts";
import { kvBucketName, type KvLease, type NatsBusLike, openKvLease } from "../nats/mod.ts";
import { MAX_PULSE_TEMPO_BPM } from "./_tempo.ts";

/** KV key (in the pulse bucket) holding the cluster's timeline and last beat. */
export const PULSE_STATE_KEY = "timeline";
/** Default for `PulseOptions.stateWriteIntervalMs`. */
export const STATE_WRITE_INTERVAL_MS = 1_000;
/** Shortest time between two KV lease checks prompted by unverified frames, ms. */
export const FENCING_CHECK_INTERVAL_MS = 1_000;
/**
 * Highest beat a tenure continues after (2^52; 1.4 million years of beats at 6,000 BPM). A frame
 * or stored state beyond it is not a real timeline's, and continuing it would leave no safe
 * integer to count on with.
 */
export const MAX_CONTINUED_BEAT = 2 ** 52;
/**
 * Beats a seen frame may stand ahead of the stored timeline's current beat and still count (two:
 * for pulses whose clocks disagree a little).
 */
export const SEEN_AHEAD_BEATS = 2;

// A new tenure schedules its first beat this far ahead, so even that one is published on time.
const START_LEAD_MS = 10;
// The lease's own key in the bucket (nats' DEFAULT_LEASE_KEY), read to ask who holds the lease.
const LEASE_KEY = "leader";

/** What the leader keeps in KV so a successor continues the same timeline. */
export interface StoredState {
  /** Format version. */
  version: 1;
  /** The cluster, checked on load. */
  cluster_id: string;
  /** The timeline led. */
  timeline: TimelineJson;
  /** The last beat published when written. */
  last_beat: number;
  /** The pulse that wrote it. */
  holder: string;
  /** When it was written, RFC 3339. */
  updated_at: string;
}

/** Where a tenure starts. */
export interface TenurePlan {
  /** The schedule to lead. */
  readonly timeline: Timeline;
  /** The first beat to publish. */
  readonly next: number;
  /** The last beat known to be published before (-1 for none). */
  readonly last: number;
  /**
   * Beats of the stored timeline that no pulse published: due after the last state write (plus
   * one write interval, for the writes' own lag) and before this tenure, with no frame of them
   * seen. 0 when the timeline is new or nothing was missed.
   */
  readonly unpublished: number;
  /** The stored timeline's tempo when it differs from the configured one (the stored one wins). */
  readonly keptTempo?: { readonly stored: number; readonly configured: number };
}

/** What {@linkcode planTenure} decides from. */
export interface TenureInput {
  /** The cluster. */
  readonly clusterId: string;
  /** The state found in KV, if any (unchecked: it came over the network). */
  readonly stored?: StoredState;
  /** The frames this pulse published or followed. */
  readonly tracker: FrameTracker;
  /**
   * Whether the tracker's latest frame is vouched for: verified, this pulse's own, or explained by
   * an earlier frame (a single unexplained frame could be anyone's). @default {false}
   */
  readonly trackerConfirmed?: boolean;
  /** The timeline last led, or configured. */
  readonly current: Timeline;
  /** Lead `current` as it is when nothing was seen (it led before, or has a configured origin). */
  readonly keepCurrent: boolean;
  /** Since when every frame published reached this pulse (`Infinity` when not listening). */
  readonly listeningSince: number;
  /** The pulse's clock. */
  readonly clock: Clock;
  /** How often the leader writes its state (the stored last beat lags by up to this). @default {1000} */
  readonly stateWriteIntervalMs?: number;
  /** Where an unreadable stored timeline is reported. */
  readonly logger: Logger;
}

// A stored timeline is network input: bounded, finite, in pulse's tempo range, before it is used.
function readStoredTimeline(stored: StoredState, clusterId: string): Timeline {
  if (stored.cluster_id !== clusterId) throw new TypeError("cluster id differs");
  const segments = stored.timeline?.segments;
  if (!Array.isArray(segments) || segments.length > MAX_TIMELINE_SEGMENTS) {
    throw new RangeError(`expected 1 to ${MAX_TIMELINE_SEGMENTS} segments`);
  }
  for (const seg of segments) {
    if (
      !Number.isFinite(seg?.at) || !(seg.tempoBpm >= MIN_TEMPO_BPM) ||
      !(seg.tempoBpm <= MAX_PULSE_TEMPO_BPM)
    ) {
      throw new RangeError("a segment has no finite time or a tempo out of range");
    }
  }
  return Timeline.fromJSON(stored.timeline);
}

// An epoch above `floor`, as an integer: the creation instant, or floor + 1 when that is later
// (a clock set back must not reuse an epoch).
function newEpoch(now: number, floor: number): number {
  const next = floor + 1;
  return Math.max(Math.floor(now), Number.isSafeInteger(next) ? next : 0);
}

function withEpoch(tl: Timeline, epoch: number): Timeline {
  return Timeline.fromJSON({ ...tl.toJSON(), epoch });
}

/**
 * Plans a tenure. With a readable stored timeline: continue it (its epoch kept) after the last
 * beat stored, due when this pulse began listening, or seen on the bus where the stored timeline
 * explains it (at most two beats ahead of the beat due now, in its epoch); one forged frame
 * cannot move the numbering. Without one: continue the frames seen, when the tracker vouches for
 * them, from now; with nothing usable, lead the configured timeline (re-based to now on a first
 * tenure without a configured origin). A timeline created here gets a new epoch: the creation
 * instant, and always above the stored one.
 *
 * @param input The stored state, the frames seen, the timeline so far.
 * @returns The timeline and the first beat.
 * @throws {RangeError} When the continuation cannot be built.
 *
 * @example Plan the first tenure of an embedded pulse
 * ```ts ignore
 * import { planTenure } from "./_leadership.ts";
 * const plan = await planTenure({ clusterId: "dev", tracker, current, keepCurrent: false,
 *   listeningSince: Infinity, clock, logger });
 * console.log(plan.next, plan.timeline.epoch > 0); // 0 true
 * ```
 */
export async function planTenure(input: TenureInput): Promise<TenurePlan> {
  const { stored, tracker, current, clock } = input;
  const now = clock.now();
  let tl: Timeline | undefined;
  let storedTimeline: Timeline | undefined;
  let floorEpoch = 0;
  let last = -1;
  if (stored) {
    // The epoch counts even when the rest is unusable: a new timeline must still get a greater one.
    const e = (stored.timeline as { epoch?: unknown } | undefined)?.epoch;
    if (typeof e === "number" && Number.isSafeInteger(e) && e >= 0) floorEpoch = e;
    try {
      tl = storedTimeline = readStoredTimeline(stored, input.clusterId);
      if (!(tl.beatAt(now) < MAX_CONTINUED_BEAT)) {
        throw new RangeError("its current beat is beyond the safe range");
      }
    } catch (error) {
      tl = storedTimeline = undefined;
      input.logger.warn("ignoring unreadable stored timeline", { error });
    }
    const b = stored.last_beat;
    if (Number.isSafeInteger(b) && b >= 0 && b < MAX_CONTINUED_BEAT) last = b;
  }
  const seen = tracker.last;
  const seenEpoch = seen?.frame.epoch ?? 0;
  if (seen && input.trackerConfirmed && seenEpoch > floorEpoch) floorEpoch = seenEpoch;
  if (tl) {
    const due = tl.beatAt(now);
    // The stored last beat is the leader's own word, but not past what its timeline allows.
    if (last > due + SEEN_AHEAD_BEATS) last = Math.max(-1, due + SEEN_AHEAD_BEATS);
    if (
      seen && seenEpoch === tl.epoch && seen.frame.beat_index <= due + SEEN_AHEAD_BEATS &&
      seen.frame.beat_index > last
    ) {
      last = seen.frame.beat_index;
    }
    if (Number.isFinite(input.listeningSince)) {
      // Beats due before this pulse started listening may have been published unseen (the
      // stored last beat lags by up to a second): presume they were, rather than repeat them.
      last = Math.max(last, Math.min(tl.beatAt(input.listeningSince), due));
    }
  } else {
    const usable = seen !== undefined && input.trackerConfirmed === true &&
      seen.frame.beat_index < MAX_CONTINUED_BEAT;
    if (usable && seen.frame.beat_index >= last) {
      last = seen.frame.beat_index;
      // Continue after the last beat, from now, with what the frames said (their epoch too).
      // Without a downbeat seen, the window id locates the bar.
      if (tracker.barOrigin === undefined) await tracker.locateBar();
      tl = tracker.timeline({ beat: last + 1, at: now + START_LEAD_MS })!;
    } else if (last >= 0) {
      // A stored last beat, no readable timeline and no usable frame: the configured bar and
      // tempo, as a new timeline.
      tl = new Timeline({
        originTime: now + START_LEAD_MS,
        originBeat: last + 1,
        tempoBpm: current.tempoAt(last + 1),
        beatsPerBar: current.beatsPerBar,
        phases: current.phases,
        barOrigin: last + 1,
        epoch: newEpoch(now, floorEpoch),
      });
    } else if (input.keepCurrent) {
      // Led before (its epoch stays), or configured with an origin (a new timeline: an epoch).
      tl = current.epoch > 0 ? current : withEpoch(current, newEpoch(now, floorEpoch));
    } else {
      tl = new Timeline({
        originTime: now + START_LEAD_MS,
        tempoBpm: current.tempoAt(0),
        beatsPerBar: current.beatsPerBar,
        phases: current.phases,
        epoch: newEpoch(now, floorEpoch),
      });
    }
  }
  const next = last < 0 ? Math.max(0, tl.segments[0].beat) : last + 1;
  let unpublished = 0;
  let keptTempo: TenurePlan["keptTempo"];
  if (stored && tl && tl === storedTimeline) {
    const writtenAt = Date.parse(stored.updated_at);
    if (Number.isFinite(writtenAt)) {
      // Beats due up to one write interval after the last write were likely published (the
      // stored last beat lags); later ones were not, unless a frame of them was seen.
      const lag = input.stateWriteIntervalMs ?? 1_000;
      const surely = Math.max(tl.beatAt(writtenAt + lag), seen?.frame.beat_index ?? -1);
      unpublished = Math.max(0, Math.min(next - 1 - surely, MAX_CONTINUED_BEAT));
    }
    const kept = tl.tempoAt(next);
    const configured = current.tempoAt(current.segments.at(-1)!.beat);
    if (kept !== configured) keptTempo = { stored: kept, configured };
  }
  return { timeline: tl, next, last, unpublished, ...(keptTempo ? { keptTempo } : {}) };
}

/** What {@linkcode Leadership} needs from the pulse it serves. */
export interface LeadershipHost {
  /** Whether the pulse is leading. */
  leading(): boolean;
  /** The timeline led (stored for a successor). */
  timeline(): Timeline;
  /** The last beat published (stored for a successor). */
  lastPublished(): number;
  /** Whether to lead the current timeline as it is when nothing was seen (see `TenureInput`). */
  keepTimeline(): boolean;
  /**
   * Starts a tenure.
   *
   * @param token The fencing token.
   * @param plan Where to start.
   * @param current Whether the tenure still stands (checked after each wait).
   * @returns Whether the pulse now leads.
   */
  lead(token: number, plan: TenurePlan, current: () => boolean): Promise<boolean>;
  /** Ends the tenure, e.g. when the lease was lost. */
  demote(reason: string): void;
  /** Reports a failure with no caller to throw to. */
  error(message: string, error: unknown): void;
  /** Keeps background work visible to `settled()`. */
  track<T>(work: Promise<T>): Promise<T>;
}

/** Options of {@linkcode Leadership.open}. */
export interface LeadershipOptions {
  /** The cluster. */
  readonly clusterId: string;
  /** The pulse's id: the lease holder id. */
  readonly pulseId: string;
  /** A bus connected to NATS. */
  readonly bus: NatsBusLike;
  /** The pulse's clock. */
  readonly clock: Clock;
  /** Timers of the lease (kept clear of beats). */
  readonly leaseClock: Clock;
  /** Timers of the state writes. */
  readonly idleClock: Clock;
  /** The frames the pulse published or followed. */
  readonly tracker: FrameTracker;
  /** Whether the tracker's latest frame is vouched for (see `TenureInput.trackerConfirmed`). */
  readonly trackerConfirmed: () => boolean;
  /** Since when every frame published reaches the pulse. */
  readonly listeningSince: number;
  /** Lease TTL, ms. @default {the lease's default, 600} */
  readonly leaseTtlMs?: number;
  /** Lease renew interval, ms. @default {leaseTtlMs / 4} */
  readonly leaseRenewIntervalMs?: number;
  /** Lease check interval, ms. @default {leaseTtlMs / 12} */
  readonly leaseCheckIntervalMs?: number;
  /** How often the leader stores its last beat, ms. */
  readonly stateWriteIntervalMs: number;
  /** JetStream replicas of the lease bucket. @default {1} */
  readonly replicas?: number;
  /** Structured logger. */
  readonly logger: Logger;
}

/**
 * One pulse's part in the cluster's election: competes for the KV lease, plans and starts a
 * tenure when it is acquired, ends it when the lease is lost, when a verified frame shows a later
 * tenure (a higher fencing token), or when the lease itself names another holder after an
 * unverified frame made it ask (at most once a second), and keeps the timeline and last beat in
 * KV while leading. A frame's token alone never ends a tenure.
 *
 * @example Compete for the lease
 * ```ts ignore
 * import { Leadership } from "./_leadership.ts";
 * const leadership = await Leadership.open(options, host);
 * if (await leadership.start()) console.log("leading");
 * await leadership.close(host.leading());
 * ```
 */
export class Leadership {
  readonly #o: LeadershipOptions;
  readonly #host: LeadershipHost;
  readonly #lease: KvLease;
  // Never started: reads the lease's key, which the lease itself keeps to itself.
  readonly #probe: KvLease;
  /** The lease's bucket. */
  readonly bucket: string;
  // Voids an acquisition still in progress when a newer one, a demotion or the close comes.
  #attempt = 0;
  #acquiring: Promise<void> | undefined;
  #closed = false;
  #stateRev = 0;
  #stateTimer: (() => void) | undefined;
  #stateWriting: Promise<void> | undefined;
  #stateWrittenBeat = -1;
  #stateDirty = false;
  #lastCheck = -Infinity;
  #checking = false;
  #checks = 0;

  private constructor(
    options: LeadershipOptions,
    host: LeadershipHost,
    bucket: string,
    lease: KvLease,
    probe: KvLease,
  ) {
    this.#o = options;
    this.#host = host;
    this.bucket = bucket;
    this.#lease = lease;
    this.#probe = probe;
    lease.addEventListener("acquired", (e) => {
      const { token } = e.detail;
      const attempt = ++this.#attempt;
      this.#acquiring = host.track(this.#onAcquired(token, attempt));
    });
    lease.addEventListener("lost", (e) => {
      const { reason } = e.detail;
      if (!this.#closed) host.demote(`lease ${reason}`);
    });
    lease.addEventListener("error", (e) => {
      host.error(e.message, e.error);
    });
  }

  /**
   * Opens the pulse bucket's lease (not competing yet).
   *
   * @param options Bus, ids, clocks, timings.
   * @param host The pulse.
   * @returns The leadership.
   * @throws {BackbeatError} `connection` when the bucket cannot be opened.
   * @throws {RangeError} On lease timings out of range.
   */
  static async open(options: LeadershipOptions, host: LeadershipHost): Promise<Leadership> {
    const bucket = await kvBucketName(options.clusterId, "pulse");
    const lease = await openKvLease({
      bus: options.bus,
      bucket,
      holderId: options.pulseId,
      ttlMs: options.leaseTtlMs,
      renewIntervalMs: options.leaseRenewIntervalMs,
      checkIntervalMs: options.leaseCheckIntervalMs,
      clock: options.leaseClock,
      replicas: options.replicas,
    });
    let probe: KvLease;
    try {
      probe = await openKvLease({
        bus: options.bus,
        bucket,
        key: "fencing-probe",
        holderId: `${options.pulseId}~probe`,
        ttlMs: options.leaseTtlMs,
        clock: options.leaseClock,
        replicas: options.replicas,
      });
    } catch (error) {
      await lease.release();
      throw error;
    }
    return new Leadership(options, host, bucket, lease, probe);
  }

  /** Times the lease was asked because an unverified frame showed a higher token. */
  get fencingChecks(): number {
    return this.#checks;
  }

  /** The holder last seen in the lease key. */
  get holder(): string | undefined {
    return this.#lease.holder;
  }

  /**
   * Starts competing; when the first attempt wins, resolves once the tenure has started.
   *
   * @returns Whether the lease is held after the first attempt.
   */
  async start(): Promise<boolean> {
    const held = await this.#lease.start();
    if (held) await this.#acquiring;
    return held;
  }

  /**
   * Whether the lease is held by its monotonic expiry: checked right before every publish, so a
   * paused and resumed leader stops at once.
   *
   * @returns `true` while held.
   */
  isHeld(): boolean {
    return this.#lease.isHeld();
  }

  /**
   * Acts on a frame that shows a higher fencing token than this tenure's. A verified frame (signed
   * by a trusted pulse key) ends the tenure. An unverified one only makes the leader ask the KV
   * lease, at most once a second, and the tenure ends only when the lease names another holder:
   * anyone can write a header.
   *
   * @param headers The frame's headers.
   * @param token This pulse's token.
   * @param verified Whether the frame's signature verified.
   */
  checkFencing(headers: BusHeaders | undefined, token: number, verified: boolean): void {
    const theirs = Number(headers?.["x-fencing-token"]);
    if (!Number.isSafeInteger(theirs) || theirs <= token) return;
    if (verified) {
      this.#host.demote(
        `superseded by ${headers?.["x-pulse-id"]} (verified fencing token ${theirs} > ${token})`,
      );
      this.#host.track(this.#lease.stepDown());
      return;
    }
    const now = this.#o.idleClock.now();
    if (this.#checking || now - this.#lastCheck < FENCING_CHECK_INTERVAL_MS) return;
    this.#lastCheck = now;
    this.#checking = true;
    this.#checks++;
    // Through the lease's clock: the KV round trip never lands just before a beat.
    this.#o.leaseClock.schedule(now, () => {
      this.#host.track(this.#askLease(token));
    });
  }

  async #askLease(token: number): Promise<void> {
    // The tenure may end meanwhile (checked before and after the read); then there is nothing to end.
    const current = () => !this.#closed && this.#host.leading() && this.#lease.token === token;
    try {
      if (!current()) return;
      const entry = await this.#probe.getJson<{ holder?: unknown }>(LEASE_KEY);
      if (!current()) return;
      const holder = entry?.value?.holder;
      if (typeof holder === "string" && holder !== this.#o.pulseId) {
        this.#host.demote(`the lease names ${JSON.stringify(holder.slice(0, 128))}`);
        await this.#lease.stepDown();
      } else {
        this.#o.logger.debug("a frame showed a higher fencing token; the lease is still ours", {
          token,
        });
      }
    } finally {
      this.#checking = false;
    }
  }

  /** Voids an acquisition in progress and the state timer (the tenure ended). */
  interrupt(): void {
    this.#attempt++;
    this.#stateTimer?.();
    this.#stateTimer = undefined;
  }

  /** Notes that the stored state is behind (the timeline changed), to write with the next save. */
  markDirty(): void {
    this.#stateDirty = true;
  }

  /** Stores the state now (a tempo change must survive a takeover). */
  save(): void {
    this.#stateDirty = true;
    this.#host.track(this.#writeState());
  }

  /**
   * Stops competing: a leader stores its state first; the lease is released so a follower takes
   * over at once. Idempotent.
   *
   * @param wasLeader Whether the pulse led until now.
   */
  async close(wasLeader: boolean): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.interrupt();
    if (wasLeader) {
      this.#stateDirty = true;
      await this.#stateWriting?.catch(() => {});
      await this.#writeState(true);
    }
    await this.#lease.release();
    await this.#probe.release();
  }

  async #onAcquired(token: number, attempt: number): Promise<void> {
    const lease = this.#lease;
    let stored: StoredState | undefined;
    try {
      const entry = await lease.getJson<StoredState>(PULSE_STATE_KEY);
      this.#stateRev = entry?.revision ?? 0;
      stored = entry?.value;
    } catch (error) {
      // Leading without the stored timeline could fork it: hand the lease on instead.
      this.#host.error("Cannot read the stored timeline; stepping down", error);
      if (attempt === this.#attempt) await lease.stepDown();
      return;
    }
    const current = () => attempt === this.#attempt && !this.#closed && lease.isHeld();
    if (!current()) return;
    let led: boolean;
    try {
      const plan = await planTenure({
        clusterId: this.#o.clusterId,
        stored,
        tracker: this.#o.tracker,
        trackerConfirmed: this.#o.trackerConfirmed(),
        current: this.#host.timeline(),
        keepCurrent: this.#host.keepTimeline(),
        listeningSince: this.#o.listeningSince,
        clock: this.#o.clock,
        stateWriteIntervalMs: this.#o.stateWriteIntervalMs,
        logger: this.#o.logger,
      });
      led = await this.#host.lead(token, plan, current);
    } catch (error) {
      // Holding the lease without publishing would silence the cluster: let another lead.
      this.#host.error("Cannot lead; stepping down", error);
      if (attempt === this.#attempt) {
        this.#host.demote("cannot lead");
        await lease.stepDown();
      }
      return;
    }
    if (led && this.#host.leading() && attempt === this.#attempt) {
      this.#stateDirty = true;
      await this.#writeState();
      this.#scheduleStateWrite();
    }
  }

  #scheduleStateWrite(): void {
    this.#stateTimer?.();
    const at = this.#o.clock.now() + this.#o.stateWriteIntervalMs;
    this.#stateTimer = this.#o.idleClock.schedule(at, () => {
      this.#stateTimer = undefined;
      if (!this.#host.leading() || this.#closed) return;
      if (this.#host.lastPublished() !== this.#stateWrittenBeat) this.#stateDirty = true;
      this.#host.track(this.#writeState());
      this.#scheduleStateWrite();
    });
  }

  async #writeState(final = false): Promise<void> {
    if (!this.#stateDirty) return;
    if (!final && !this.#host.leading()) return;
    if (this.#stateWriting) return;
    const lease = this.#lease;
    this.#stateDirty = false;
    const last = this.#host.lastPublished();
    const value: StoredState = {
      version: 1,
      cluster_id: this.#o.clusterId,
      timeline: this.#host.timeline().toJSON(),
      last_beat: last,
      holder: this.#o.pulseId,
      updated_at: new Date(this.#o.clock.now()).toISOString(),
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
          this.#o.logger.warn("stored timeline changed under us", { revision: this.#stateRev });
        } else {
          this.#host.error("Cannot store the timeline", error);
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
}

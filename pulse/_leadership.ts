// Leadership of a pulse on NATS: the KV lease, fencing, the takeover plan (which timeline to
// continue, from which beat) and the stored state a successor continues from.
import {
  BackbeatError,
  type BusHeaders,
  type Clock,
  type FrameTracker,
  type Logger,
  Timeline,
  type TimelineJson,
} from "../core/mod.ts";
import { kvBucketName, type KvLease, type NatsBusLike, openKvLease } from "../nats/mod.ts";

/** KV key (in the pulse bucket) holding the cluster's timeline and last beat. */
export const PULSE_STATE_KEY = "timeline";
/** Default for `PulseOptions.stateWriteIntervalMs`. */
export const STATE_WRITE_INTERVAL_MS = 1_000;

// A new tenure schedules its first beat this far ahead, so even that one is published on time.
const START_LEAD_MS = 10;

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
}

/** What {@linkcode planTenure} decides from. */
export interface TenureInput {
  /** The cluster. */
  readonly clusterId: string;
  /** The state found in KV, if any (unchecked: it came over the network). */
  readonly stored?: StoredState;
  /** The frames this pulse published or followed. */
  readonly tracker: FrameTracker;
  /** The timeline last led, or configured. */
  readonly current: Timeline;
  /** Lead `current` as it is when nothing was seen (it led before, or has a configured origin). */
  readonly keepCurrent: boolean;
  /** Since when every frame published reached this pulse (`Infinity` when not listening). */
  readonly listeningSince: number;
  /** The pulse's clock. */
  readonly clock: Clock;
  /** Where an unreadable stored timeline is reported. */
  readonly logger: Logger;
}

/**
 * Plans a tenure: continue the stored timeline after the last beat stored or seen; without one,
 * continue the frames seen from now (the tracker infers their timeline); with nothing seen, lead
 * the configured timeline, re-based to now on a first tenure without a configured origin.
 *
 * @param input The stored state, the frames seen, the timeline so far.
 * @returns The timeline and the first beat.
 * @throws {RangeError} When the continuation cannot be built (a beat index at the safe limit).
 *
 * @example Plan the first tenure of an embedded pulse
 * ```ts ignore
 * import { planTenure } from "./_leadership.ts";
 * const plan = await planTenure({ clusterId: "dev", tracker, current, keepCurrent: false,
 *   listeningSince: Infinity, clock, logger });
 * console.log(plan.next); // 0
 * ```
 */
export async function planTenure(input: TenureInput): Promise<TenurePlan> {
  const { stored, tracker, current, clock } = input;
  let tl: Timeline | undefined;
  if (stored) {
    try {
      if (stored.cluster_id !== input.clusterId) throw new TypeError("cluster id differs");
      tl = Timeline.fromJSON(stored.timeline);
    } catch (error) {
      input.logger.warn("ignoring unreadable stored timeline", { error });
    }
  }
  let last = Math.max(
    tracker.last?.frame.beat_index ?? -1,
    stored && Number.isSafeInteger(stored.last_beat) ? stored.last_beat : -1,
  );
  if (tl && Number.isFinite(input.listeningSince)) {
    // Beats due before this pulse started listening may have been published unseen (the
    // stored last beat lags by up to a second): presume they were, rather than repeat them.
    last = Math.max(last, tl.beatAt(input.listeningSince));
  }
  if (!tl) {
    if (last >= 0 && tracker.last) {
      // Continue after the last beat, from now, with what the frames said. Without a downbeat
      // seen, the window id locates the bar.
      if (tracker.barOrigin === undefined) await tracker.locateBar();
      tl = tracker.timeline({ beat: last + 1, at: clock.now() + START_LEAD_MS })!;
    } else if (last >= 0) {
      // A stored last beat, no readable timeline and no frame: the configured bar and tempo.
      tl = new Timeline({
        originTime: clock.now() + START_LEAD_MS,
        originBeat: last + 1,
        tempoBpm: current.tempoAt(last + 1),
        beatsPerBar: current.beatsPerBar,
        phases: current.phases,
        barOrigin: last + 1,
      });
    } else if (input.keepCurrent) {
      tl = current;
    } else {
      tl = new Timeline({
        originTime: clock.now() + START_LEAD_MS,
        tempoBpm: current.tempoAt(0),
        beatsPerBar: current.beatsPerBar,
        phases: current.phases,
      });
    }
  }
  const next = last < 0 ? Math.max(0, tl.segments[0].beat) : last + 1;
  return { timeline: tl, next, last };
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
  /** Structured logger. */
  readonly logger: Logger;
}

/**
 * One pulse's part in the cluster's election: competes for the KV lease, plans and starts a
 * tenure when it is acquired, ends it when the lease is lost or a frame shows a later tenure
 * (a higher fencing token), and keeps the timeline and last beat in KV while leading.
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

  private constructor(
    options: LeadershipOptions,
    host: LeadershipHost,
    bucket: string,
    lease: KvLease,
  ) {
    this.#o = options;
    this.#host = host;
    this.bucket = bucket;
    this.#lease = lease;
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
    });
    return new Leadership(options, host, bucket, lease);
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
   * Ends the tenure when a frame shows a later one: another pulse leads with a higher token.
   *
   * @param headers The frame's headers.
   * @param token This pulse's token.
   */
  checkFencing(headers: BusHeaders | undefined, token: number): void {
    const theirs = Number(headers?.["x-fencing-token"]);
    if (!Number.isSafeInteger(theirs) || theirs <= token) return;
    this.#host.demote(
      `superseded by ${headers?.["x-pulse-id"]} (fencing token ${theirs} > ${token})`,
    );
    this.#host.track(this.#lease.stepDown());
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
        current: this.#host.timeline(),
        keepCurrent: this.#host.keepTimeline(),
        listeningSince: this.#o.listeningSince,
        clock: this.#o.clock,
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

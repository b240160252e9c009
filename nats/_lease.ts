// A leadership lease in NATS JetStream KV, shared by pulse and reverb for their high availability.
// Loaded only through a dynamic import on the NATS path, so embedded users never load the KV client.
import { jetstream, JetStreamApiError, jetstreamManager } from "@nats-io/jetstream";
import { type KV, Kvm, KvWatchInclude } from "@nats-io/kv";
import type { NatsConnection } from "@nats-io/nats-core";
import { DEFAULT_LEASE_TTL_MS, type NatsBusLike } from "./_options.ts";
import { BackbeatError, type Clock, IsolatedEventTarget, SystemClock } from "../core/mod.ts";

/** Default for {@linkcode KvLeaseOptions.key}. */
export const DEFAULT_LEASE_KEY = "leader";

/** Most replicas a JetStream stream (and so a KV bucket) can have. */
const MAX_REPLICAS = 5;

/** Detail of the `acquired` and `lost` events of a {@linkcode KvLease}. */
export interface LeaseEventDetail {
  /** The fencing token of the tenure that started or ended. */
  readonly token: number;
  /** Why it ended (`lost` only). */
  readonly reason?: LeaseLossReason;
}

/** The events of a {@linkcode KvLease}, by type. */
export interface KvLeaseEventMap {
  /** This contender became the holder. */
  acquired: CustomEvent<LeaseEventDetail>;
  /** This contender stopped being the holder. */
  lost: CustomEvent<LeaseEventDetail>;
  /** A KV failure; the lease keeps trying. */
  error: ErrorEvent;
}

/** Why a lease ended. */
export const LeaseLossReason = {
  /** Not renewed in time (paused process, slow server). */
  Expired: "expired",
  /** Another holder wrote the key (a renew's compare-and-set failed). */
  Taken: "taken",
  /** Given up by {@linkcode KvLease.release}. */
  Released: "released",
  /** Given up by {@linkcode KvLease.stepDown}. */
  SteppedDown: "stepped_down",
} as const;
/** One of {@linkcode LeaseLossReason}'s values. */
export type LeaseLossReason = typeof LeaseLossReason[keyof typeof LeaseLossReason];

/** Options of {@linkcode KvLease.open}. */
export interface KvLeaseOptions {
  /** A bus connected to NATS (JetStream enabled). */
  bus: NatsBusLike;
  /** KV bucket, created when missing (see `kvBucketName()`). */
  bucket: string;
  /** Key holding the lease. @default {"leader"} */
  key?: string;
  /** This contender's id (unique among contenders). */
  holderId: string;
  /** Lease time to live in ms (50 to 60000). @default {600} */
  ttlMs?: number;
  /**
   * Copies of the bucket JetStream keeps (1 to 5): 1 on a single server, 3 on a cluster of 3
   * or more, so the lease outlives a node. An existing bucket with fewer replicas is scaled up
   * to this; one with more is left as it is (another contender, or the operator, asked for
   * them). @default {1}
   */
  replicas?: number;
  /** How often the holder renews, in ms. @default {ttlMs / 4} */
  renewIntervalMs?: number;
  /** How often a contender checks the key, in ms. @default {ttlMs / 12, at least 10} */
  checkIntervalMs?: number;
  /** Timers for renewing and checking. @default {new SystemClock()} */
  clock?: Clock;
  /**
   * Monotonic milliseconds for expiry: must keep counting while the process is paused, so a
   * resumed holder knows at once its lease may have passed on. @default {performance.now}
   */
  monotonicNow?: () => number;
}

/** A JSON value read from the lease's bucket with its revision. */
export interface KvJsonEntry<T> {
  /** The parsed value. */
  readonly value: T;
  /** Its KV revision (for compare-and-set). */
  readonly revision: number;
}

interface LeaseValue {
  holder: string;
  instance: string;
  ttl_ms: number;
  renewed_at: string;
}

const BUCKET_SAFE = /^[A-Za-z0-9_-]{1,64}$/;
const KEY = /^[-/_=.a-zA-Z0-9]+$/;

function isWrongSequence(error: unknown): boolean {
  const code = error instanceof JetStreamApiError ? error.code : undefined;
  return code === 10071 || code === 10164;
}

function randomId(): string {
  return crypto.randomUUID().replaceAll("-", "").slice(0, 16);
}

/**
 * A leadership lease on one key of a JetStream KV bucket (works on nats-server 2.9+: no
 * per-message TTL is needed). The holder renews with compare-and-set on the key's revision; a
 * contender takes over with compare-and-set once the revision has not moved for the TTL, as
 * measured on its own monotonic clock, or at once after {@linkcode KvLease.release} deletes the
 * key. The revision written at acquisition is the fencing token: it grows with every tenure.
 *
 * {@linkcode KvLease.isHeld} compares a locally computed expiry (send time of the last
 * successful renew + TTL) against a monotonic clock, so a holder that was paused knows it may
 * have lost the lease before any timer or network message tells it. Check it right before every
 * action that needs the lease.
 *
 * Events: `acquired` and `lost` (`CustomEvent<LeaseEventDetail>`), `error` (`ErrorEvent`, for
 * KV failures; the lease keeps trying).
 *
 * The same bucket stores the service's state through {@linkcode KvLease.getJson} and
 * {@linkcode KvLease.putJson}.
 *
 * @example Lead while the lease is held
 * ```ts ignore
 * import { connectNatsBus } from "./mod.ts";
 * import { KvLease } from "./_lease.ts";
 * const bus = await connectNatsBus({ servers: "nats://127.0.0.1:4222" });
 * const lease = await KvLease.open({ bus, bucket: "backbeat_dev_pulse", holderId: "p1" });
 * lease.addEventListener("acquired", (e) => console.log("leading with token", e.detail.token));
 * await lease.start();
 * if (lease.isHeld()) console.log("token", lease.token);
 * await lease.release();
 * await bus.close();
 * ```
 */
export class KvLease extends IsolatedEventTarget<KvLeaseEventMap> {
  /** The bucket. */
  readonly bucket: string;
  /** The lease key. */
  readonly key: string;
  /** This contender's id. */
  readonly holderId: string;
  /** Time to live in ms. */
  readonly ttlMs: number;
  readonly #kv: KV;
  readonly #instance = randomId();
  readonly #renewMs: number;
  readonly #checkMs: number;
  readonly #clock: Clock;
  readonly #mono: () => number;
  #held = false;
  #token = 0;
  #rev = 0;
  #expiresAt = 0;
  #epoch = 0;
  #observedRev = -1;
  #observedAt = 0;
  #holder: string | undefined;
  #holdoffUntil = 0;
  #running = false;
  #closed = false;
  #timer: (() => void) | undefined;
  #expiryTimer: (() => void) | undefined;
  #inflight: Promise<void> | undefined;
  #kicked = false;
  #watcher: { stop(): void } | undefined;
  #watching: Promise<void> | undefined;

  private constructor(kv: KV, options: KvLeaseOptions) {
    super();
    this.#kv = kv;
    this.bucket = options.bucket;
    this.key = options.key ?? DEFAULT_LEASE_KEY;
    this.holderId = options.holderId;
    this.ttlMs = options.ttlMs ?? DEFAULT_LEASE_TTL_MS;
    this.#renewMs = options.renewIntervalMs ?? this.ttlMs / 4;
    this.#checkMs = options.checkIntervalMs ?? Math.max(10, this.ttlMs / 12);
    this.#clock = options.clock ?? new SystemClock();
    this.#mono = options.monotonicNow ?? (() => performance.now());
  }

  /**
   * Opens (creating when missing) the bucket and returns a lease that is not yet competing;
   * call {@linkcode KvLease.start}.
   *
   * @param options Bus, bucket, key, holder id, timings.
   * @returns The lease.
   * @throws {TypeError} On a bad bucket, key, holder id or bus.
   * @throws {RangeError} On timings or replicas out of range.
   * @throws {BackbeatError} `connection` when the bucket cannot be opened.
   */
  static async open(options: KvLeaseOptions): Promise<KvLease> {
    const nc = (options.bus as { connection?: unknown })?.connection as NatsConnection | undefined;
    if (!nc || typeof nc !== "object") {
      throw new TypeError("Cannot open a KV lease: the bus is not connected to NATS");
    }
    if (typeof options.bucket !== "string" || !BUCKET_SAFE.test(options.bucket)) {
      throw new TypeError(`Invalid bucket ${JSON.stringify(options.bucket)}`);
    }
    const key = options.key ?? DEFAULT_LEASE_KEY;
    if (!KEY.test(key)) throw new TypeError(`Invalid lease key ${JSON.stringify(key)}`);
    if (typeof options.holderId !== "string" || options.holderId.length === 0) {
      throw new TypeError("Invalid holderId: expected a non-empty string");
    }
    const replicas = options.replicas ?? 1;
    if (!Number.isInteger(replicas) || replicas < 1 || replicas > MAX_REPLICAS) {
      throw new RangeError(
        `Invalid replicas ${options.replicas}: expected an integer from 1 to ${MAX_REPLICAS}`,
      );
    }
    const ttl = options.ttlMs ?? DEFAULT_LEASE_TTL_MS;
    if (!(ttl >= 50 && ttl <= 60_000)) {
      throw new RangeError(`Invalid ttlMs ${options.ttlMs}: expected 50 to 60000`);
    }
    for (
      const [name, v] of [
        ["renewIntervalMs", options.renewIntervalMs],
        ["checkIntervalMs", options.checkIntervalMs],
      ] as const
    ) {
      if (v !== undefined && !(v >= 1 && v < ttl)) {
        throw new RangeError(`Invalid ${name} ${v}: expected 1 to below ttlMs (${ttl})`);
      }
    }
    try {
      // A request timeout above the TTL: a slow reply must not be mistaken for a lost lease.
      const js = jetstream(nc, { timeout: Math.max(1000, 2 * ttl) });
      // `replicas` applies when the bucket is created; an older, smaller one is scaled up, or
      // a cluster upgrade would keep a lease that dies with one node.
      const kv = await new Kvm(js).create(options.bucket, { history: 1, replicas });
      if (replicas > 1) {
        const status = await kv.status();
        if (status.replicas < replicas) {
          // Fatal, not silently R1: the operator asked for copies that outlive a node.
          try {
            // No API probe: a role user may lack $JS.API.INFO.
            const jsm = await jetstreamManager(nc, {
              timeout: Math.max(1000, 2 * ttl),
              checkAPI: false,
            });
            await jsm.streams.update(status.streamInfo.config.name, { num_replicas: replicas });
          } catch (cause) {
            throw new BackbeatError(
              "connection",
              `Cannot open KV bucket ${options.bucket}: it has ${status.replicas} replica(s), and scaling it to ${replicas} failed: ${
                (cause as Error).message
              }`,
              { cause },
            );
          }
        }
      }
      return new KvLease(kv, options);
    } catch (cause) {
      if (cause instanceof BackbeatError) throw cause;
      throw new BackbeatError(
        "connection",
        `Cannot open KV bucket ${options.bucket}: ${(cause as Error).message}`,
        { cause },
      );
    }
  }

  /**
   * Whether this contender holds the lease right now, by its local monotonic expiry.
   *
   * @returns `true` while held and not expired.
   */
  isHeld(): boolean {
    return this.#held && this.#mono() < this.#expiresAt;
  }

  /** Fencing token of the current tenure (the revision written at acquisition), 0 when not held. */
  get token(): number {
    return this.#held ? this.#token : 0;
  }

  /** The holder id last seen in the key (this one's while held). */
  get holder(): string | undefined {
    return this.#held ? this.holderId : this.#holder;
  }

  /**
   * Starts competing: makes one attempt, then keeps renewing or checking in the background.
   *
   * @returns Whether the lease is held after the first attempt.
   * @throws {BackbeatError} `closed` after release.
   */
  async start(): Promise<boolean> {
    if (this.#closed) throw new BackbeatError("closed", "Cannot start a released lease");
    if (this.#running) return this.isHeld();
    this.#running = true;
    await this.#watch();
    await this.#run();
    return this.isHeld();
  }

  /**
   * Gives the lease up if held (deleting the key so a contender takes over at once) and stops
   * competing. Idempotent.
   */
  async release(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#running = false;
    this.#timer?.();
    this.#timer = undefined;
    this.#watcher?.stop();
    await this.#watching;
    await this.#inflight?.catch(() => {});
    if (this.#held) await this.#giveUp("released");
    this.#expiryTimer?.();
    this.#expiryTimer = undefined;
  }

  /**
   * Gives the lease up if held but keeps competing after one TTL (for a holder that learned it
   * was superseded, or wants to hand over).
   */
  async stepDown(): Promise<void> {
    if (!this.#held) return;
    this.#holdoffUntil = this.#mono() + this.ttlMs;
    await this.#giveUp("stepped_down");
  }

  /**
   * Reads a JSON value from the bucket.
   *
   * @param key The key.
   * @returns The value and its revision, or `undefined` when absent or deleted.
   * @throws {TypeError} On an invalid key.
   * @throws {BackbeatError} `invalid_message` when the value is not JSON; `connection` when the
   * read fails.
   */
  async getJson<T>(key: string): Promise<KvJsonEntry<T> | undefined> {
    this.#checkKey(key);
    let entry;
    try {
      entry = await this.#kv.get(key);
    } catch (cause) {
      throw new BackbeatError("connection", `Cannot read ${key} from ${this.bucket}`, { cause });
    }
    if (!entry || entry.operation !== "PUT") return undefined;
    try {
      return { value: entry.json<T>(), revision: entry.revision };
    } catch (cause) {
      throw new BackbeatError(
        "invalid_message",
        `Cannot read ${key} from ${this.bucket}: the value is not JSON`,
        { cause },
      );
    }
  }

  /**
   * Writes a JSON value to the bucket.
   *
   * @param key The key (not the lease key).
   * @param value A JSON-serialisable value.
   * @param expectedRevision Compare-and-set: the revision the key must still have (0: must not
   * exist). @default {undefined, an unconditional write}
   * @returns The new revision.
   * @throws {TypeError} On an invalid key.
   * @throws {BackbeatError} `lease` when the key changed since `expectedRevision`;
   * `connection` when the write fails.
   */
  async putJson(key: string, value: unknown, expectedRevision?: number): Promise<number> {
    this.#checkKey(key);
    const data = JSON.stringify(value);
    try {
      if (expectedRevision === undefined) return await this.#kv.put(key, data);
      if (expectedRevision === 0) return await this.#kv.create(key, data);
      return await this.#kv.update(key, data, expectedRevision);
    } catch (cause) {
      if (isWrongSequence(cause)) {
        throw new BackbeatError(
          "lease",
          `Cannot write ${key}: it changed since revision ${expectedRevision}`,
          { cause, detail: { key, expectedRevision } },
        );
      }
      throw new BackbeatError("connection", `Cannot write ${key} to ${this.bucket}`, { cause });
    }
  }

  /** `await using` support: {@linkcode KvLease.release}. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.release();
  }

  #checkKey(key: string): void {
    if (typeof key !== "string" || !KEY.test(key) || key === this.key) {
      throw new TypeError(`Invalid key ${JSON.stringify(key)} in ${this.bucket}`);
    }
  }

  #value(): string {
    const v: LeaseValue = {
      holder: this.holderId,
      instance: this.#instance,
      ttl_ms: this.ttlMs,
      renewed_at: new Date().toISOString(),
    };
    return JSON.stringify(v);
  }

  // A watch on the key tells contenders at once when it is deleted (a holder's release), so a
  // handover does not wait for the next check. Polling remains the fallback.
  async #watch(): Promise<void> {
    try {
      const it = await this.#kv.watch({ key: this.key, include: KvWatchInclude.UpdatesOnly });
      this.#watcher = it;
      this.#watching = (async () => {
        for await (const e of it) {
          if (this.#closed) break;
          if (!this.#held && (e.operation === "DEL" || e.operation === "PURGE")) this.#kick();
        }
      })().catch((error) => this.#error(`Watch on lease ${this.bucket}/${this.key} ended`, error));
    } catch (error) {
      this.#error(`Cannot watch lease ${this.bucket}/${this.key}; polling only`, error);
    }
  }

  // Runs a check now (or right after the one in flight).
  #kick(): void {
    if (!this.#running || this.#closed) return;
    if (this.#inflight) {
      this.#kicked = true;
      return;
    }
    this.#timer?.();
    this.#timer = undefined;
    this.#run();
  }

  async #run(): Promise<void> {
    if (!this.#running || this.#closed) return;
    this.#kicked = false;
    const tick = this.#held ? this.#renew() : this.#tryAcquire();
    this.#inflight = tick;
    try {
      await tick;
    } finally {
      if (this.#inflight === tick) this.#inflight = undefined;
    }
    if (!this.#running || this.#closed) return;
    const wait = this.#kicked ? 0 : this.#held ? this.#renewMs : this.#checkMs;
    this.#timer = this.#clock.schedule(this.#clock.now() + wait, () => {
      this.#timer = undefined;
      this.#run();
    });
  }

  async #renew(): Promise<void> {
    const epoch = this.#epoch;
    const sent = this.#mono();
    try {
      const rev = await this.#kv.update(this.key, this.#value(), this.#rev);
      if (epoch !== this.#epoch) {
        // Lost locally while the renew was in flight; the key still names us, so the next
        // check may reclaim it with compare-and-set on this revision.
        this.#observe(rev, this.holderId);
        return;
      }
      this.#rev = rev;
      this.#setExpiry(sent + this.ttlMs);
    } catch (error) {
      if (epoch !== this.#epoch) return;
      if (isWrongSequence(error)) this.#lose("taken");
      else this.#error(`Cannot renew lease ${this.bucket}/${this.key}`, error);
    }
  }

  async #tryAcquire(): Promise<void> {
    if (this.#mono() < this.#holdoffUntil) return;
    let entry;
    try {
      entry = await this.#kv.get(this.key);
    } catch (error) {
      this.#error(`Cannot read lease ${this.bucket}/${this.key}`, error);
      return;
    }
    if (this.#closed || this.#held) return;
    if (!entry || entry.operation !== "PUT") {
      const sent = this.#mono();
      try {
        const rev = await this.#kv.create(this.key, this.#value());
        this.#acquire(rev, sent);
      } catch (error) {
        if (!isWrongSequence(error)) {
          this.#error(`Cannot create lease ${this.bucket}/${this.key}`, error);
        }
      }
      return;
    }
    let value: Partial<LeaseValue> = {};
    try {
      value = entry.json<LeaseValue>() ?? {};
    } catch { /* unreadable: treat as someone else's, expiring after our TTL */ }
    const mine = value.instance === this.#instance;
    const ttl = typeof value.ttl_ms === "number" && value.ttl_ms >= 50 && value.ttl_ms <= 60_000
      ? value.ttl_ms
      : this.ttlMs;
    if (entry.revision !== this.#observedRev) {
      this.#observe(entry.revision, typeof value.holder === "string" ? value.holder : undefined);
      if (!mine) return;
    }
    if (!mine && this.#mono() - this.#observedAt < ttl) return;
    const sent = this.#mono();
    try {
      const rev = await this.#kv.update(this.key, this.#value(), entry.revision);
      this.#acquire(rev, sent);
    } catch (error) {
      if (!isWrongSequence(error)) {
        this.#error(`Cannot take over lease ${this.bucket}/${this.key}`, error);
      }
    }
  }

  #observe(rev: number, holder: string | undefined): void {
    this.#observedRev = rev;
    this.#observedAt = this.#mono();
    this.#holder = holder;
  }

  #acquire(rev: number, sent: number): void {
    if (this.#closed) {
      // Won while releasing: hand it straight back.
      this.#kv.delete(this.key, { previousSeq: rev }).catch(() => {});
      return;
    }
    this.#held = true;
    this.#epoch++;
    this.#rev = rev;
    this.#token = rev;
    this.#holder = this.holderId;
    this.#setExpiry(sent + this.ttlMs);
    this.dispatchEvent(
      new CustomEvent<LeaseEventDetail>("acquired", { detail: { token: rev } }),
    );
  }

  #setExpiry(at: number): void {
    this.#expiresAt = at;
    this.#expiryTimer?.();
    const wait = Math.max(0, at - this.#mono());
    this.#expiryTimer = this.#clock.schedule(this.#clock.now() + wait, () => {
      this.#expiryTimer = undefined;
      if (this.#held && this.#mono() >= this.#expiresAt) this.#lose("expired");
    });
  }

  #lose(reason: LeaseLossReason): void {
    if (!this.#held) return;
    const token = this.#token;
    this.#held = false;
    this.#epoch++;
    this.#expiryTimer?.();
    this.#expiryTimer = undefined;
    // Others measure the TTL from our last write; so do we before reclaiming.
    this.#observe(this.#rev, this.holderId);
    this.dispatchEvent(new CustomEvent<LeaseEventDetail>("lost", { detail: { token, reason } }));
  }

  async #giveUp(reason: LeaseLossReason): Promise<void> {
    const rev = this.#rev;
    this.#lose(reason);
    try {
      // Compare-and-set: never delete a successor's lease.
      await this.#kv.delete(this.key, { previousSeq: rev });
    } catch (error) {
      if (!isWrongSequence(error)) {
        this.#error(`Cannot release lease ${this.bucket}/${this.key}`, error);
      }
    }
  }

  #error(message: string, error: unknown): void {
    this.dispatchEvent(
      new ErrorEvent("error", { message: `${message}: ${(error as Error)?.message}`, error }),
    );
  }
}

// Claim intake: size cap → JSON parse → schema → signature → freshness → replay. Every failure
// is counted by reason and never thrown. Signatures are verified concurrently (a bounded
// in-flight window, then a bounded wait queue), while each agent's claims are applied in arrival
// order through a per-agent FIFO: a claim whose verification finishes early waits for its
// agent's older claims. That order is what lets one high-water mark per agent (./_replay.ts)
// refuse every replay.
//
// A signature covers signedBytes("backbeat.statusclaim.v1", cluster, payload): a claim signed for
// one cluster verifies in no other. The 0.1 form (the payload alone) is accepted only with
// `legacySignatures`. An agent with keys in the keyring must sign, whatever `requireSignatures`
// says: otherwise anyone could speak for it unsigned.

import {
  type BusMessage,
  type Clock,
  DEFAULT_HLC_MAX_OFFSET_MS,
  type Hlc,
  hlcPhysicalDiff,
  isKeyValidAt,
  type KeyEntry,
  type Keyring,
  parseHlc,
  signedBytes,
  type StatusClaim,
  verifyPayload,
} from "../core/mod.ts";
import { Histogram, logBuckets } from "../service/mod.ts";
import { ReplayGuard } from "./_replay.ts";
import { VerifyPool } from "./_verify_pool.ts";

/** Why a claim was rejected. */
export const RejectReason = {
  /** Larger than the size cap. */
  Oversized: "oversized",
  /** Not JSON. */
  Malformed: "malformed",
  /** JSON, but not a valid `backbeat.statusclaim.v1`. */
  Schema: "schema",
  /** No signature while signatures are required, or from an agent that has keys. */
  Unsigned: "unsigned",
  /** Signed with a key the keyring does not hold for that agent. */
  UnknownKey: "unknown_key",
  /** Signed with the agent's key outside the key's validity period. */
  KeyNotValid: "key_not_valid",
  /** The signature does not verify (over this cluster's signed bytes). */
  BadSignature: "bad_signature",
  /** The claim's HLC is older than `maxClaimAgeMs`. */
  Stale: "stale",
  /** The claim's HLC stands beyond the maximum clock offset ahead of reverb's clock. */
  Future: "future",
  /** The claim's HLC is not above the agent's high-water mark (seen before, or older). */
  Replay: "replay",
  /** The verification queue is full. */
  Overload: "overload",
  /**
   * Accepted for the agent's state, but its window was already reported: counted here and in the
   * window open at its arrival, not in its own window's tallies. Set by the aggregator.
   */
  Late: "late",
} as const;
/** One of {@linkcode RejectReason}'s values. */
export type RejectReason = typeof RejectReason[keyof typeof RejectReason];

/** Every reject reason, in pipeline order. */
export const REJECT_REASONS: readonly RejectReason[] = Object.values(RejectReason);

/** Default for {@linkcode ClaimIntakeOptions.maxClaimBytes}. */
export const DEFAULT_MAX_CLAIM_BYTES = 4096;
/** Default for {@linkcode ClaimIntakeOptions.maxInFlight}. */
export const DEFAULT_MAX_IN_FLIGHT = 2048;
/** Default for {@linkcode ClaimIntakeOptions.maxQueued}. */
export const DEFAULT_MAX_QUEUED = 65_536;
/**
 * Default for {@linkcode ClaimIntakeOptions.maxClaimAgeMs}: two minutes, which covers what the
 * SDK buffers through a 60 s outage and delivers on reconnect.
 */
export const DEFAULT_MAX_CLAIM_AGE_MS = 120_000;
/** Largest {@linkcode ClaimIntakeOptions.maxClaimAgeMs}: 7 days, far from the HLC's 2^31 ms. */
export const MAX_CLAIM_AGE_LIMIT_MS = 7 * 24 * 3_600_000;
/**
 * Default for {@linkcode ClaimIntakeOptions.maxClockOffsetMs}: how far ahead of reverb's clock a
 * claim's HLC may stand. Synchronised hosts differ by milliseconds; ten seconds leaves room for a
 * poorly synchronised one, and a claim beyond it (a broken clock, or a forgery meant to raise the
 * replay mark and lock the agent out) is refused without touching the mark.
 */
export const DEFAULT_MAX_CLOCK_OFFSET_MS: number = DEFAULT_HLC_MAX_OFFSET_MS;
/** Default for {@linkcode ClaimIntakeOptions.maxTrackedAgents}. */
export const DEFAULT_MAX_TRACKED_AGENTS = 100_000;

/** Bounds (seconds) of the verify-time histogram: 1 µs to 1 s, ten per decade. */
export const VERIFY_TIME_BOUNDS: readonly number[] = logBuckets(-6, 0);

/** Counters of a {@linkcode ClaimIntake}. */
export interface IntakeStats {
  /** Claims accepted. */
  accepted: number;
  /** Claims rejected, by reason. */
  rejected: Record<RejectReason, number>;
  /** Of the accepted claims, how many were signed. */
  signed: number;
  /** Signatures verified in worker threads (the rest on the calling thread). */
  offloaded: number;
  /** Verifications running now. */
  inFlight: number;
  /** Claims waiting for a verification slot. */
  queued: number;
}

/** Options of {@linkcode ClaimIntake}. */
export interface ClaimIntakeOptions {
  /** The cluster signatures must be bound to. */
  clusterId: string;
  /** Checks a parsed claim against the StatusClaim schema. */
  validate: (value: unknown) => boolean;
  /** The keyring in force (called per signed claim, so reloads apply at once). */
  keyring: () => Keyring;
  /** Called for each accepted claim, in per-agent order. */
  onAccept: (claim: StatusClaim, arrival: number, key: KeyEntry | undefined) => void;
  /**
   * Called for each rejected claim.
   * @default {undefined}
   */
  onReject?: (
    reason: RejectReason,
    agentId: string | undefined,
    arrival: number,
    key: KeyEntry | undefined,
  ) => void;
  /**
   * Claims whose HLC physical time is older than this (vs reverb's clock) are refused as stale,
   * in ms (1 to 7 days).
   * @default {120000}
   */
  maxClaimAgeMs?: number;
  /**
   * Claims whose HLC stands more than this ahead of reverb's clock are refused as `future`
   * (they do not move the replay mark), in ms.
   * @default {10000}
   */
  maxClockOffsetMs?: number;
  /** Time source. */
  clock: Clock;
  /** Reject every unsigned claim (agents with keys must sign regardless). @default {false} */
  requireSignatures?: boolean;
  /** Also accept signatures over the payload alone (the 0.1 form). @default {false} */
  legacySignatures?: boolean;
  /** Largest claim in bytes. @default {4096} */
  maxClaimBytes?: number;
  /** Verifications running at once. @default {2048} */
  maxInFlight?: number;
  /** Claims waiting for a verification slot before new ones are rejected. @default {65536} */
  maxQueued?: number;
  /**
   * Agents whose replay mark is kept, per class (with keys, without); the least recently raised
   * is forgotten beyond. Used when `replay` is not given.
   * @default {100000}
   */
  maxTrackedAgents?: number;
  /**
   * The replay marks (reverb passes its own, stored in KV).
   * @default {an in-memory ReplayGuard}
   */
  replay?: ReplayGuard;
  /**
   * Web Workers that verify signatures in batches; 0 verifies on the calling thread (Deno's
   * WebCrypto verifies Ed25519 on the thread that calls it). Call
   * {@linkcode ClaimIntake.close} to stop them.
   * @default {0}
   */
  verifyWorkers?: number;
}

// Claims waiting in each verification worker before this thread starts verifying as well.
const POOL_DEPTH = 1024;

const PENDING = 0;
const VERIFIED = 1;
const FAILED = 2;

interface Job {
  claim: StatusClaim;
  arrival: number;
  key: KeyEntry | undefined;
  state: number;
  // Why it failed, when state is FAILED.
  reason: RejectReason;
  lane: Lane;
  // The signed bytes, set while waiting for a verification slot, or while in a worker (for a
  // fallback).
  data: Uint8Array | undefined;
  signature: string | undefined;
  // The payload alone, kept for a second check in the legacy form when the first fails.
  legacy: Uint8Array | undefined;
  started: number;
}

// Per-agent FIFO of claims not applied yet; dropped once empty, so lanes are bounded by the
// claims in flight and waiting.
interface Lane {
  agentId: string;
  jobs: Job[];
  head: number;
}

const decoder = new TextDecoder();

// The HLC of a claim, or undefined when it is not the wire form (the schema requires it, but
// the validator is the caller's).
function claimHlc(text: unknown): Hlc | undefined {
  try {
    return parseHlc(text as string);
  } catch {
    return undefined;
  }
}

/**
 * The intake pipeline of reverb. Feed it bus messages with {@linkcode ClaimIntake.handle}; it
 * calls `onAccept` for good claims (per agent, in arrival order) and `onReject` for the rest.
 *
 * @example Accept an unsigned claim
 * ```ts ignore
 * import { formatHlc, Keyring, ManualClock } from "../core/mod.ts";
 * import { ClaimIntake } from "./_intake.ts";
 * const clock = new ManualClock(Date.now());
 * const intake = new ClaimIntake({
 *   clusterId: "dev",
 *   validate: () => true,
 *   keyring: () => Keyring.EMPTY,
 *   clock,
 *   onAccept: (claim) => console.log("accepted", claim.agent_id),
 * });
 * const claim = { agent_id: "a", hlc: formatHlc({ physical: clock.now() >>> 0, logical: 0 }) };
 * intake.handle({ subject: "s", data: new TextEncoder().encode(JSON.stringify(claim)) });
 * ```
 */
export class ClaimIntake {
  readonly #clusterId: string;
  readonly #validate: (value: unknown) => boolean;
  readonly #keyring: () => Keyring;
  readonly #onAccept: ClaimIntakeOptions["onAccept"];
  readonly #onReject: NonNullable<ClaimIntakeOptions["onReject"]>;
  readonly #maxAge: number;
  readonly #maxOffset: number;
  readonly #clock: Clock;
  readonly #requireSignatures: boolean;
  readonly #legacy: boolean;
  readonly #maxBytes: number;
  readonly #maxInFlight: number;
  readonly #maxQueued: number;
  readonly #replay: ReplayGuard;
  readonly #lanes = new Map<string, Lane>();
  #waiting: Job[] = [];
  #waitHead = 0;
  #idle: Array<() => void> = [];
  readonly #stats: IntakeStats;
  readonly #verifyTime = new Histogram(VERIFY_TIME_BOUNDS);
  readonly #workers: number;
  #pool: VerifyPool | undefined;
  #closed = false;

  /**
   * Creates an intake.
   *
   * @param options Callbacks, keyring, limits.
   * @throws {RangeError} On a non-positive limit, or a claim age beyond 7 days.
   */
  constructor(options: ClaimIntakeOptions) {
    this.#clusterId = options.clusterId;
    this.#validate = options.validate;
    this.#keyring = options.keyring;
    this.#onAccept = options.onAccept;
    this.#onReject = options.onReject ?? (() => {});
    this.#maxAge = positive("maxClaimAgeMs", options.maxClaimAgeMs, DEFAULT_MAX_CLAIM_AGE_MS);
    if (this.#maxAge > MAX_CLAIM_AGE_LIMIT_MS) {
      throw new RangeError(
        `Invalid maxClaimAgeMs ${options.maxClaimAgeMs}: expected at most ${MAX_CLAIM_AGE_LIMIT_MS}`,
      );
    }
    this.#maxOffset = positive(
      "maxClockOffsetMs",
      options.maxClockOffsetMs,
      DEFAULT_MAX_CLOCK_OFFSET_MS,
    );
    if (this.#maxOffset > MAX_CLAIM_AGE_LIMIT_MS) {
      throw new RangeError(
        `Invalid maxClockOffsetMs ${options.maxClockOffsetMs}: expected at most ${MAX_CLAIM_AGE_LIMIT_MS}`,
      );
    }
    this.#clock = options.clock;
    this.#requireSignatures = options.requireSignatures ?? false;
    this.#legacy = options.legacySignatures ?? false;
    this.#maxBytes = positive("maxClaimBytes", options.maxClaimBytes, DEFAULT_MAX_CLAIM_BYTES);
    this.#maxInFlight = positive("maxInFlight", options.maxInFlight, DEFAULT_MAX_IN_FLIGHT);
    this.#maxQueued = positive("maxQueued", options.maxQueued, DEFAULT_MAX_QUEUED);
    const maxAgents = positive(
      "maxTrackedAgents",
      options.maxTrackedAgents,
      DEFAULT_MAX_TRACKED_AGENTS,
    );
    const window = this.#maxAge + this.#maxOffset;
    this.#replay = options.replay ?? new ReplayGuard({
      clock: this.#clock,
      maxAgents: Math.ceil(maxAgents),
      windowMs: () => window,
      isKeyed: (id) => this.#keyring().keysOf(id).length > 0,
    });
    const workers = options.verifyWorkers ?? 0;
    if (!(Number.isInteger(workers) && workers >= 0 && workers <= 64)) {
      throw new RangeError(`Invalid verifyWorkers ${workers}: expected an integer from 0 to 64`);
    }
    this.#workers = workers;
    const rejected = {} as Record<RejectReason, number>;
    for (const r of REJECT_REASONS) rejected[r] = 0;
    this.#stats = {
      accepted: 0,
      rejected,
      signed: 0,
      offloaded: 0,
      inFlight: 0,
      queued: 0,
    };
  }

  /** Live counters (the same object every time; copy it to keep a snapshot). */
  get stats(): IntakeStats {
    this.#stats.queued = this.#waiting.length - this.#waitHead;
    return this.#stats;
  }

  /** Signature verification times, in seconds (from start to result, queueing excluded). */
  get verifyTime(): Histogram {
    return this.#verifyTime;
  }

  /** Whether every unsigned claim is rejected. */
  get requireSignatures(): boolean {
    return this.#requireSignatures;
  }

  /** Whether signatures over the payload alone are accepted too. */
  get legacySignatures(): boolean {
    return this.#legacy;
  }

  /** The claim age limit, ms. */
  get maxClaimAgeMs(): number {
    return this.#maxAge;
  }

  /** How far ahead of reverb's clock a claim's HLC may stand, ms. */
  get maxClockOffsetMs(): number {
    return this.#maxOffset;
  }

  /** The replay marks. */
  get replay(): ReplayGuard {
    return this.#replay;
  }

  /**
   * Runs one message through the pipeline. Never throws.
   *
   * @param msg A message from the status subject.
   */
  handle(msg: BusMessage): void {
    const arrival = this.#clock.now();
    const data = msg.data;
    if (data.byteLength > this.#maxBytes) return this.#reject("oversized", undefined, arrival);
    let value: unknown;
    try {
      value = JSON.parse(decoder.decode(data));
    } catch {
      return this.#reject("malformed", undefined, arrival);
    }
    if (!this.#validate(value)) {
      const id = (value as { agent_id?: unknown } | null)?.agent_id;
      return this.#reject("schema", typeof id === "string" ? id.slice(0, 256) : undefined, arrival);
    }
    const claim = value as StatusClaim;
    const agentId = claim.agent_id;
    const signature = msg.headers?.["x-signature"];
    const ring = this.#keyring();
    if (signature === undefined) {
      // An agent in the keyring always signs: an unsigned claim in its name is anyone's.
      if (this.#requireSignatures || ring.keysOf(agentId).length > 0) {
        return this.#reject("unsigned", agentId, arrival);
      }
      const lane = this.#lanes.get(agentId);
      if (lane === undefined) {
        // Nothing of this agent's is waiting: apply at once, no job allocated.
        this.#apply(claim, arrival, undefined, agentId);
        return;
      }
      lane.jobs.push({
        claim,
        arrival,
        key: undefined,
        state: VERIFIED,
        reason: "bad_signature",
        lane,
        data: undefined,
        signature: undefined,
        legacy: undefined,
        started: 0,
      });
      return;
    }
    const keyId = msg.headers?.["x-key-id"];
    let key: KeyEntry | undefined;
    if (keyId !== undefined) {
      key = ring.get(agentId, keyId);
    } else {
      // No key id: take the agent's key valid now (rotation overlaps pick the newest).
      const keys = ring.keysOf(agentId);
      for (let i = keys.length - 1; i >= 0; i--) {
        if (isKeyValidAt(keys[i], arrival)) {
          key = keys[i];
          break;
        }
      }
      key ??= keys[keys.length - 1];
    }
    if (key === undefined) return this.#reject("unknown_key", agentId, arrival);
    if (!isKeyValidAt(key, arrival)) return this.#reject("key_not_valid", agentId, arrival, key);
    let lane = this.#lanes.get(agentId);
    if (lane === undefined) {
      lane = { agentId, jobs: [], head: 0 };
      this.#lanes.set(agentId, lane);
    }
    // A new array, so the message buffer (which the bus may reuse once we return) is copied.
    const bytes = signedBytes("backbeat.statusclaim.v1", this.#clusterId, data);
    const job: Job = {
      claim,
      arrival,
      key,
      state: PENDING,
      reason: "bad_signature",
      lane,
      data: undefined,
      signature: undefined,
      legacy: this.#legacy ? data.slice() : undefined,
      started: 0,
    };
    lane.jobs.push(job);
    if (this.#stats.inFlight < this.#maxInFlight) {
      this.#verify(job, bytes, signature);
    } else if (this.#waiting.length - this.#waitHead < this.#maxQueued) {
      job.data = bytes;
      job.signature = signature;
      this.#waiting.push(job);
    } else {
      job.state = FAILED;
      job.reason = "overload";
      this.#drain(lane);
    }
  }

  /**
   * Resolves when no verification is running or waiting.
   *
   * @returns A promise that settles once idle.
   */
  idle(): Promise<void> {
    if (this.#stats.inFlight === 0 && this.#waiting.length === this.#waitHead) {
      return Promise.resolve();
    }
    return new Promise((resolve) => this.#idle.push(resolve));
  }

  /** Stops the verification workers, if any, after in-flight claims are answered (bounded). */
  async close(): Promise<void> {
    this.#closed = true;
    await this.#pool?.close();
  }

  /** Web Workers verifying signatures (0: on the calling thread). */
  get verifyWorkers(): number {
    return this.#workers;
  }

  /** Agents with a claim being verified or waiting behind one. */
  get lanes(): number {
    return this.#lanes.size;
  }

  #verify(job: Job, data: Uint8Array, signature: string): void {
    this.#stats.inFlight++;
    job.started = performance.now();
    // Workers take claims while they have less than a few batches waiting; beyond that this
    // thread verifies too, so a burst uses every core instead of queueing behind the workers.
    if (
      this.#workers > 0 && !this.#closed &&
      (this.#pool === undefined || this.#pool.pending < this.#workers * POOL_DEPTH)
    ) {
      // Started on the first signed claim, so intakes that never see one start no worker.
      this.#pool ??= new VerifyPool(
        this.#workers,
        (token, ok) => this.#pooled(token as Job, ok),
        this.#clock,
      );
      // Kept for a fallback should a worker fail.
      job.data = data;
      job.signature = signature;
      this.#pool.submit(job, job.key!.publicKey, data, signature);
      return;
    }
    this.#verifyHere(job, data, signature);
  }

  #verifyHere(job: Job, data: Uint8Array, signature: string): void {
    verifyPayload(job.key!.key, data, signature).then(
      (ok) => this.#checked(job, ok, signature),
      () => this.#checked(job, false, signature),
    );
  }

  #pooled(job: Job, ok: boolean | null): void {
    const data = job.data!;
    const signature = job.signature!;
    job.data = undefined;
    job.signature = undefined;
    if (ok === null) this.#verifyHere(job, data, signature);
    else {
      this.#stats.offloaded++;
      this.#checked(job, ok, signature);
    }
  }

  // A failed check in the bound form gets one more in the legacy form, when allowed.
  #checked(job: Job, ok: boolean, signature: string): void {
    const legacy = job.legacy;
    job.legacy = undefined;
    if (ok || legacy === undefined) return this.#verified(job, ok);
    verifyPayload(job.key!.key, legacy, signature).then(
      (ok2) => this.#verified(job, ok2),
      () => this.#verified(job, false),
    );
  }

  #verified(job: Job, ok: boolean): void {
    const stats = this.#stats;
    this.#verifyTime.observe((performance.now() - job.started) / 1000);
    stats.inFlight--;
    job.state = ok ? VERIFIED : FAILED;
    this.#drain(job.lane);
    // Refill the in-flight window from the wait queue.
    while (this.#stats.inFlight < this.#maxInFlight && this.#waitHead < this.#waiting.length) {
      const next = this.#waiting[this.#waitHead];
      this.#waiting[this.#waitHead++] = undefined as unknown as Job;
      const data = next.data!;
      const signature = next.signature!;
      next.data = undefined;
      next.signature = undefined;
      this.#verify(next, data, signature);
    }
    if (this.#waitHead > 1024 && this.#waitHead * 2 > this.#waiting.length) {
      this.#waiting = this.#waiting.slice(this.#waitHead);
      this.#waitHead = 0;
    }
    if (stats.inFlight === 0 && this.#waitHead === this.#waiting.length && this.#idle.length) {
      const waiters = this.#idle;
      this.#idle = [];
      for (const w of waiters) w();
    }
  }

  // Applies the agent's finished claims in order, stopping at the first still verifying.
  #drain(lane: Lane): void {
    const jobs = lane.jobs;
    while (lane.head < jobs.length) {
      const job = jobs[lane.head];
      if (job.state === PENDING) break;
      jobs[lane.head++] = undefined as unknown as Job;
      if (job.state === VERIFIED) this.#apply(job.claim, job.arrival, job.key, lane.agentId);
      else this.#reject(job.reason, lane.agentId, job.arrival, job.key);
    }
    // Nothing left in flight for the agent: the lane goes, so lanes stay bounded.
    if (lane.head === jobs.length && this.#lanes.get(lane.agentId) === lane) {
      this.#lanes.delete(lane.agentId);
    }
  }

  // Freshness and replay, then acceptance. Runs in per-agent order.
  #apply(claim: StatusClaim, arrival: number, key: KeyEntry | undefined, agentId: string): void {
    const hlc = claimHlc(claim.hlc);
    if (hlc === undefined) return this.#reject("schema", agentId, arrival, key);
    const age = hlcPhysicalDiff({ physical: Math.floor(arrival) >>> 0, logical: 0 }, hlc);
    if (age > this.#maxAge) return this.#reject("stale", agentId, arrival, key);
    // Before the replay check, and without touching the mark: a claim stamped far ahead would
    // otherwise raise the mark and lock the agent's honest claims out until its time comes.
    if (-age > this.#maxOffset) return this.#reject("future", agentId, arrival, key);
    if (this.#replay.isReplay(agentId, hlc, arrival)) {
      return this.#reject("replay", agentId, arrival, key);
    }
    this.#replay.advance(agentId, hlc, claim.hlc, arrival);
    this.#stats.accepted++;
    if (key !== undefined) this.#stats.signed++;
    try {
      this.#onAccept(claim, arrival, key);
    } catch {
      // Often called from a verification's promise or a worker's message, where a throw would
      // end the process; the intake's contract is to never throw.
    }
  }

  #reject(
    reason: RejectReason,
    agentId: string | undefined,
    arrival: number,
    key?: KeyEntry,
  ): void {
    this.#stats.rejected[reason]++;
    try {
      this.#onReject(reason, agentId, arrival, key);
    } catch { /* as in #apply: never throw, least of all from a promise or worker callback */ }
  }
}

function positive(name: string, value: number | undefined, fallback: number): number {
  const v = value ?? fallback;
  if (!(typeof v === "number" && v > 0 && Number.isFinite(v))) {
    throw new RangeError(`Invalid ${name} ${value}: expected a number > 0`);
  }
  return v;
}

// Claim intake: size cap → JSON parse → schema → signature → freshness. Every failure is counted
// by reason and never thrown. Signatures are verified concurrently (a bounded in-flight window,
// then a bounded wait queue), while each agent's claims are applied in arrival order through a
// per-agent FIFO: a claim whose verification finishes early waits for its agent's older claims.

import {
  type BusMessage,
  type Clock,
  compareHlc,
  type Hlc,
  hlcPhysicalDiff,
  isKeyValidAt,
  type KeyEntry,
  type Keyring,
  parseHlc,
  type StatusClaim,
  verifyPayload,
} from "../core/mod.ts";
import { Histogram, logBuckets } from "../service/mod.ts";
import { VerifyPool } from "./_verify_pool.ts";

/** Why a claim was rejected. */
export const RejectReason = {
  /** Larger than the size cap. */
  Oversized: "oversized",
  /** Not JSON. */
  Malformed: "malformed",
  /** JSON, but not a valid `backbeat.statusclaim.v1`. */
  Schema: "schema",
  /** No signature while signatures are required. */
  Unsigned: "unsigned",
  /** Signed with a key the keyring does not hold for that agent. */
  UnknownKey: "unknown_key",
  /** Signed with the agent's key outside the key's validity period. */
  KeyNotValid: "key_not_valid",
  /** The signature does not verify over the payload. */
  BadSignature: "bad_signature",
  /** The claim's HLC is older than the freshness limit. */
  Stale: "stale",
  /** The claim's HLC stands too far in the future. */
  Future: "future",
  /** The same agent and HLC were seen before. */
  Replay: "replay",
  /** The verification queue is full. */
  Overload: "overload",
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
/** Default for {@linkcode ClaimIntakeOptions.maxFutureMs}. */
export const DEFAULT_MAX_FUTURE_MS = 60_000;
/** Default for {@linkcode ClaimIntakeOptions.replayMemory}. */
export const DEFAULT_REPLAY_MEMORY = 64;
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
  /** Freshness limit in ms (HLC age), asked per claim. */
  maxClaimAgeMs: () => number;
  /** Time source. */
  clock: Clock;
  /** Reject unsigned claims. @default {false} */
  requireSignatures?: boolean;
  /** Largest claim in bytes. @default {4096} */
  maxClaimBytes?: number;
  /** Verifications running at once. @default {2048} */
  maxInFlight?: number;
  /** Claims waiting for a verification slot before new ones are rejected. @default {65536} */
  maxQueued?: number;
  /** How far ahead of our clock a claim's HLC may stand, in ms. @default {60000} */
  maxFutureMs?: number;
  /** Recent HLCs remembered per agent for replay detection. @default {64} */
  replayMemory?: number;
  /** Agents whose replay memory is kept; the oldest is forgotten beyond. @default {100000} */
  maxTrackedAgents?: number;
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
  // Set while waiting for a verification slot, or while in a worker (for a fallback).
  data: Uint8Array | undefined;
  signature: string | undefined;
  started: number;
}

// Per-agent state: the FIFO of claims not applied yet, and replay memory.
interface Lane {
  agentId: string;
  jobs: Job[];
  head: number;
  recent: string[];
  recentSet: Set<string>;
  recentPos: number;
  // Highest HLC forgotten from `recent`; anything at or below it is refused.
  floor: Hlc | undefined;
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
 * ```ts
 * import { ManualClock } from "@chorus/backbeat/sdk";
 * import { ClaimIntake, Keyring } from "@chorus/backbeat/reverb";
 * const clock = new ManualClock(Date.now());
 * const intake = new ClaimIntake({
 *   validate: () => true,
 *   keyring: () => Keyring.EMPTY,
 *   clock,
 *   maxClaimAgeMs: () => 60_000,
 *   onAccept: (claim) => console.log("accepted", claim.agent_id),
 * });
 * const hlc = Math.floor(clock.now()).toString(16).padStart(8, "0");
 * const claim = { agent_id: "a", hlc: `${hlc.slice(-8, -4)}:${hlc.slice(-4)}:0000` };
 * intake.handle({ subject: "s", data: new TextEncoder().encode(JSON.stringify(claim)) });
 * ```
 */
export class ClaimIntake {
  readonly #validate: (value: unknown) => boolean;
  readonly #keyring: () => Keyring;
  readonly #onAccept: ClaimIntakeOptions["onAccept"];
  readonly #onReject: NonNullable<ClaimIntakeOptions["onReject"]>;
  readonly #maxAge: () => number;
  readonly #clock: Clock;
  readonly #requireSignatures: boolean;
  readonly #maxBytes: number;
  readonly #maxInFlight: number;
  readonly #maxQueued: number;
  readonly #maxFuture: number;
  readonly #replayMemory: number;
  readonly #maxAgents: number;
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
   * @throws {RangeError} On a non-positive limit.
   */
  constructor(options: ClaimIntakeOptions) {
    this.#validate = options.validate;
    this.#keyring = options.keyring;
    this.#onAccept = options.onAccept;
    this.#onReject = options.onReject ?? (() => {});
    this.#maxAge = options.maxClaimAgeMs;
    this.#clock = options.clock;
    this.#requireSignatures = options.requireSignatures ?? false;
    this.#maxBytes = positive("maxClaimBytes", options.maxClaimBytes, DEFAULT_MAX_CLAIM_BYTES);
    this.#maxInFlight = positive("maxInFlight", options.maxInFlight, DEFAULT_MAX_IN_FLIGHT);
    this.#maxQueued = positive("maxQueued", options.maxQueued, DEFAULT_MAX_QUEUED);
    this.#maxFuture = positive("maxFutureMs", options.maxFutureMs, DEFAULT_MAX_FUTURE_MS);
    this.#replayMemory = positive("replayMemory", options.replayMemory, DEFAULT_REPLAY_MEMORY);
    this.#maxAgents = positive(
      "maxTrackedAgents",
      options.maxTrackedAgents,
      DEFAULT_MAX_TRACKED_AGENTS,
    );
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

  /** Whether unsigned claims are rejected. */
  get requireSignatures(): boolean {
    return this.#requireSignatures;
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
    if (signature === undefined) {
      if (this.#requireSignatures) return this.#reject("unsigned", agentId, arrival);
      const lane = this.#lanes.get(agentId);
      if (lane === undefined || lane.head === lane.jobs.length) {
        // Nothing of this agent's is waiting: apply at once, no job allocated.
        this.#apply(claim, arrival, undefined, lane ?? this.#lane(agentId));
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
        started: 0,
      });
      return;
    }
    const keyId = msg.headers?.["x-key-id"];
    const ring = this.#keyring();
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
    const lane = this.#lane(agentId);
    const job: Job = {
      claim,
      arrival,
      key,
      state: PENDING,
      reason: "bad_signature",
      lane,
      data: undefined,
      signature: undefined,
      started: 0,
    };
    lane.jobs.push(job);
    if (this.#stats.inFlight < this.#maxInFlight) {
      this.#verify(job, data, signature);
    } else if (this.#waiting.length - this.#waitHead < this.#maxQueued) {
      // The message buffer may be reused once we return: keep a copy while waiting.
      job.data = data.slice();
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

  /**
   * Forgets an agent's replay memory (called when the agent is evicted).
   *
   * @param agentId The agent.
   */
  forget(agentId: string): void {
    const lane = this.#lanes.get(agentId);
    if (lane && lane.head === lane.jobs.length) this.#lanes.delete(agentId);
  }

  /** Web Workers verifying signatures (0: on the calling thread). */
  get verifyWorkers(): number {
    return this.#workers;
  }

  /** Agents with replay memory. */
  get trackedAgents(): number {
    return this.#lanes.size;
  }

  #lane(agentId: string): Lane {
    let lane = this.#lanes.get(agentId);
    if (lane === undefined) {
      if (this.#lanes.size >= this.#maxAgents) {
        // Forget the oldest idle lane (insertion order) to stay bounded.
        for (const [id, l] of this.#lanes) {
          if (l.head === l.jobs.length) {
            this.#lanes.delete(id);
            break;
          }
        }
      }
      lane = {
        agentId,
        jobs: [],
        head: 0,
        recent: [],
        recentSet: new Set(),
        recentPos: 0,
        floor: undefined,
      };
      this.#lanes.set(agentId, lane);
    }
    return lane;
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
      (ok) => this.#verified(job, ok),
      () => this.#verified(job, false),
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
      this.#verified(job, ok);
    }
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
      if (job.state === VERIFIED) this.#apply(job.claim, job.arrival, job.key, lane);
      else this.#reject(job.reason, lane.agentId, job.arrival, job.key);
    }
    if (lane.head === jobs.length) {
      jobs.length = 0;
      lane.head = 0;
    }
  }

  // Freshness and replay, then acceptance. Runs in per-agent order.
  #apply(claim: StatusClaim, arrival: number, key: KeyEntry | undefined, lane: Lane): void {
    const hlc = claimHlc(claim.hlc);
    if (hlc === undefined) return this.#reject("schema", lane.agentId, arrival, key);
    const age = hlcPhysicalDiff({ physical: Math.floor(arrival) >>> 0, logical: 0 }, hlc);
    if (age > this.#maxAge()) return this.#reject("stale", lane.agentId, arrival, key);
    if (-age > this.#maxFuture) return this.#reject("future", lane.agentId, arrival, key);
    const canonical = claim.hlc.toLowerCase();
    if (lane.recentSet.has(canonical)) return this.#reject("replay", lane.agentId, arrival, key);
    if (lane.floor !== undefined && compareHlc(hlc, lane.floor) <= 0) {
      // Older than everything still remembered: it may be a replay we can no longer prove.
      return this.#reject("replay", lane.agentId, arrival, key);
    }
    this.#remember(lane, canonical);
    this.#stats.accepted++;
    if (key !== undefined) this.#stats.signed++;
    try {
      this.#onAccept(claim, arrival, key);
    } catch {
      // Often called from a verification's promise or a worker's message, where a throw would
      // end the process; the intake's contract is to never throw.
    }
  }

  #remember(lane: Lane, hlc: string): void {
    if (lane.recent.length < this.#replayMemory) {
      lane.recent.push(hlc);
    } else {
      const old = lane.recent[lane.recentPos];
      lane.recentSet.delete(old);
      // Only well-formed stamps are remembered, so this parse cannot fail.
      const forgotten = parseHlc(old);
      if (lane.floor === undefined || compareHlc(forgotten, lane.floor) > 0) {
        lane.floor = forgotten;
      }
      lane.recent[lane.recentPos] = hlc;
      lane.recentPos = (lane.recentPos + 1) % this.#replayMemory;
    }
    lane.recentSet.add(hlc);
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

// Replay protection for claims: one high-water mark of HLC per agent. A claim at or below its
// agent's mark was seen before (or is older than something seen) and is refused. The marks
// survive a restart: they are written in batches to reverb's JetStream KV bucket (the lease
// bucket `backbeat_<cluster>_reverb`, keys `replay.00` to `replay.3f`) and loaded on start.
//
// Why a mark and not a memory of recent stamps: the SDK stamps an agent's claims with a
// monotonic HLC and the intake applies them in arrival order, so "not above the highest accepted"
// is exact and needs no freshness window to be short. A mark stops mattering once any claim it
// could refuse would be refused as stale anyway (its claim arrived more than maxClaimAgeMs plus
// the clock offset ago): such marks are dropped, which bounds the state by the agents active in
// that window, and keeps the 32-bit HLC comparisons (serial arithmetic) far from their wrap.
//
// The window between batches: a claim accepted less than one flush interval (1 s by default)
// before reverb crashes is not yet stored, so a restarted reverb could accept one replay of it.
// A graceful stop writes every mark first.

import {
  BackbeatError,
  type Clock,
  compareHlc,
  type Hlc,
  type LogFields,
  parseHlc,
  withTimeout,
} from "../core/mod.ts";

/** Shards of the stored marks (one KV key each). */
export const REPLAY_SHARDS = 64;
/** Marks one stored shard holds at most (the newest are kept). */
export const MAX_SHARD_MARKS = 1_000;
/** Default for {@linkcode ReplayGuardOptions.flushIntervalMs}. */
export const DEFAULT_REPLAY_FLUSH_MS = 1_000;
/** Longest wait for the store when loading or for the last write when stopping, in ms. */
export const REPLAY_STORE_WAIT_MS = 5_000;
const FORMAT = 1;

/** The part of `KvLease` the marks are stored through (structural, so tests can fake it). */
export interface JsonKv {
  /** Reads a JSON value and its revision; `undefined` when absent. */
  getJson<T>(key: string): Promise<{ readonly value: T; readonly revision: number } | undefined>;
  /** Writes a JSON value; compare-and-set when `expectedRevision` is given (0: must not exist). */
  putJson(key: string, value: unknown, expectedRevision?: number): Promise<number>;
}

/** One agent's mark. */
interface Mark {
  hlc: Hlc;
  text: string;
  // Epoch ms at which the claim that set the mark arrived (reverb's clock).
  at: number;
}

/** A stored shard: `[agent_id, hlc, arrival ms]` triples (an array, so no agent id is a key). */
interface ShardJson {
  v: number;
  marks: Array<[string, string, number]>;
}

/** Options of {@linkcode ReplayGuard}. */
export interface ReplayGuardOptions {
  /** Time source and the flush timer. */
  clock: Clock;
  /** Marks kept per class (agents with keys, agents without) at most. */
  maxAgents: number;
  /**
   * How long a mark matters, in ms: the claim age limit plus the clock offset allowed. Asked
   * each time, so it follows the options.
   */
  windowMs: () => number;
  /** Whether an agent has keys in the keyring (its mark cannot be evicted by unkeyed ones). */
  isKeyed: (agentId: string) => boolean;
  /** How often changed marks are written, in ms. @default {1000} */
  flushIntervalMs?: number;
  /** Reports a store failure (rate-limit it). @default {undefined} */
  onStoreError?: (what: string, fields: LogFields) => void;
}

/** Counters of a {@linkcode ReplayGuard}. */
export interface ReplayStats {
  /** Marks held. */
  readonly marks: number;
  /** Marks dropped while still inside their window, to stay within `maxAgents`. */
  readonly evicted: number;
  /** Marks taken from the store (on load, and from other reverbs' writes). */
  readonly loaded: number;
  /** Shard writes that succeeded. */
  readonly writes: number;
  /** Store reads or writes that failed (each is retried on the next flush). */
  readonly storeFailures: number;
  /** Whether the marks were loaded from the store at start. */
  readonly persistent: boolean;
}

/**
 * The shard of an agent id: FNV-1a over its UTF-16 code units, so every reverb agrees.
 *
 * @param agentId The agent.
 * @returns 0 to {@linkcode REPLAY_SHARDS} − 1.
 */
export function replayShard(agentId: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < agentId.length; i++) {
    h ^= agentId.charCodeAt(i);
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h % REPLAY_SHARDS;
}

/**
 * The KV key of a shard.
 *
 * @param shard 0 to {@linkcode REPLAY_SHARDS} − 1.
 * @returns `replay.00` to `replay.3f`.
 */
export function replayKey(shard: number): string {
  return `replay.${shard.toString(16).padStart(2, "0")}`;
}

// A stored triple, checked: the store is shared with other reverbs and anyone with write rights
// on the bucket, so its content is input like any other.
function readTriple(t: unknown): [string, Hlc, string, number] | undefined {
  if (!Array.isArray(t) || t.length !== 3) return undefined;
  const [id, text, at] = t;
  if (typeof id !== "string" || id.length === 0 || id.length > 256) return undefined;
  // Epoch ms; another writer may have kept the fraction of a fractional clock.
  if (typeof at !== "number" || !(at >= 0 && at <= Number.MAX_SAFE_INTEGER)) return undefined;
  try {
    const hlc = parseHlc(text);
    return [id, hlc, (text as string).toLowerCase(), Math.floor(at)];
  } catch {
    return undefined;
  }
}

/**
 * Per-agent high-water marks of accepted claims' HLCs, bounded, with batched persistence.
 *
 * @example Refuse a replay
 * ```ts ignore
 * import { ManualClock, parseHlc } from "../core/mod.ts";
 * import { ReplayGuard } from "./_replay.ts";
 * const guard = new ReplayGuard({
 *   clock: new ManualClock(0),
 *   maxAgents: 100,
 *   windowMs: () => 130_000,
 *   isKeyed: () => false,
 * });
 * const hlc = parseHlc("0000:0001:0000");
 * guard.advance("a", hlc, "0000:0001:0000", 0);
 * console.log(guard.isReplay("a", hlc, 0)); // true
 * ```
 */
export class ReplayGuard {
  readonly #o: ReplayGuardOptions;
  readonly #flushMs: number;
  // Two classes, so a flood of made-up agent ids can evict only other unkeyed agents' marks.
  readonly #keyed = new Map<string, Mark>();
  readonly #unkeyed = new Map<string, Mark>();
  readonly #dirty = new Set<number>();
  #kv: JsonKv | undefined;
  #cancel: (() => void) | undefined;
  #flushing: Promise<void> | undefined;
  #stopped = false;
  #evicted = 0;
  #loaded = 0;
  #writes = 0;
  #failures = 0;
  #persistent = false;

  /**
   * Creates an empty guard; {@linkcode ReplayGuard.attach} connects it to a store.
   *
   * @param options Clock, bounds, window and the keyring question.
   * @throws {RangeError} On a non-positive bound or interval.
   */
  constructor(options: ReplayGuardOptions) {
    if (!(Number.isInteger(options.maxAgents) && options.maxAgents > 0)) {
      throw new RangeError(`Invalid maxAgents ${options.maxAgents}: expected an integer > 0`);
    }
    this.#flushMs = options.flushIntervalMs ?? DEFAULT_REPLAY_FLUSH_MS;
    if (!(this.#flushMs >= 10 && Number.isFinite(this.#flushMs))) {
      throw new RangeError(
        `Invalid replay flushIntervalMs ${options.flushIntervalMs}: expected a number >= 10`,
      );
    }
    this.#o = options;
  }

  /** The counters. */
  get stats(): ReplayStats {
    return {
      marks: this.#keyed.size + this.#unkeyed.size,
      evicted: this.#evicted,
      loaded: this.#loaded,
      writes: this.#writes,
      storeFailures: this.#failures,
      persistent: this.#persistent,
    };
  }

  /** Changed shards not written yet. */
  get dirtyShards(): number {
    return this.#dirty.size;
  }

  /**
   * Whether a claim is a replay: its HLC is at or below the agent's mark, while the mark still
   * matters.
   *
   * @param agentId The agent.
   * @param hlc The claim's HLC.
   * @param now Reverb's clock, epoch ms.
   * @returns True when the claim must be refused.
   */
  isReplay(agentId: string, hlc: Hlc, now: number): boolean {
    const mark = this.#get(agentId);
    if (mark === undefined) return false;
    if (mark.at < now - this.#o.windowMs()) {
      // Any claim at or below it is refused as stale already: forget it.
      this.#keyed.delete(agentId);
      this.#unkeyed.delete(agentId);
      return false;
    }
    return compareHlc(hlc, mark.hlc) <= 0;
  }

  /**
   * Raises an agent's mark to an accepted claim's HLC.
   *
   * @param agentId The agent.
   * @param hlc The claim's HLC (above the mark: the caller checked {@linkcode ReplayGuard.isReplay}).
   * @param text Its wire form.
   * @param at When the claim arrived, epoch ms.
   */
  advance(agentId: string, hlc: Hlc, text: string, at: number): void {
    this.#set(agentId, { hlc, text: text.toLowerCase(), at }, at);
    this.#dirty.add(replayShard(agentId));
  }

  #get(agentId: string): Mark | undefined {
    return this.#keyed.get(agentId) ?? this.#unkeyed.get(agentId);
  }

  // Insertion order is update order: the first entry is the least recently raised mark.
  #set(agentId: string, mark: Mark, now: number): void {
    const keyed = this.#o.isKeyed(agentId);
    const map = keyed ? this.#keyed : this.#unkeyed;
    (keyed ? this.#unkeyed : this.#keyed).delete(agentId);
    map.delete(agentId);
    if (map.size >= this.#o.maxAgents) {
      const [oldest, m] = map.entries().next().value!;
      map.delete(oldest);
      // Only a mark that still mattered is a loss worth counting.
      if (m.at >= now - this.#o.windowMs()) this.#evicted++;
    }
    map.set(agentId, mark);
  }

  /**
   * Loads the stored marks and starts writing changed ones every flush interval. A store that
   * cannot be read leaves the guard in memory only (reported through `onStoreError`), and writes
   * are still tried.
   *
   * @param kv The store (reverb's KV lease).
   * @returns Resolves once loaded, or once the load gave up (bounded).
   */
  async attach(kv: JsonKv): Promise<void> {
    if (this.#stopped) return;
    this.#kv = kv;
    const shards = Array.from({ length: REPLAY_SHARDS }, (_, i) => i);
    const read = Promise.all(shards.map((s) => this.#read(s)));
    let results: Array<{ value: ShardJson; revision: number } | undefined | null> = [];
    const done = await withTimeout(
      read.then((r) => results = r),
      REPLAY_STORE_WAIT_MS,
      this.#o.clock,
    );
    if (!done) {
      this.#failures++;
      this.#report("replay marks not loaded: the store did not answer in time", {});
    } else if (results.every((r) => r !== null)) {
      this.#persistent = true;
    }
    const now = this.#o.clock.now();
    for (const r of results) if (r) this.#merge(r.value, now);
    this.#arm();
  }

  // One shard; null when the read failed (reported), undefined when absent.
  async #read(shard: number): Promise<{ value: ShardJson; revision: number } | undefined | null> {
    try {
      const entry = await this.#kv!.getJson<ShardJson>(replayKey(shard));
      if (entry === undefined) return undefined;
      const v = entry.value;
      if (v === null || typeof v !== "object" || !Array.isArray(v.marks)) {
        // Unreadable content is overwritten by the next write of the shard.
        this.#report("replay shard unreadable, ignored", { key: replayKey(shard) });
        return { value: { v: FORMAT, marks: [] }, revision: entry.revision };
      }
      return { value: v, revision: entry.revision };
    } catch (error) {
      this.#failures++;
      this.#report("cannot read replay marks", {
        key: replayKey(shard),
        error: (error as Error).message,
      });
      return null;
    }
  }

  // Takes the stored marks above ours (another reverb's, or ours from before a restart).
  #merge(value: ShardJson, now: number): void {
    const window = this.#o.windowMs();
    const list = value.marks;
    // Bounded by what a shard may hold, whatever was written into it.
    const n = Math.min(list.length, MAX_SHARD_MARKS);
    for (let i = 0; i < n; i++) {
      const t = readTriple(list[i]);
      if (t === undefined) continue;
      const [id, hlc, text, at] = t;
      if (at < now - window) continue;
      const mine = this.#get(id);
      if (mine !== undefined && compareHlc(hlc, mine.hlc) <= 0) continue;
      this.#set(id, { hlc, text, at: Math.min(at, now) }, now);
      this.#loaded++;
    }
  }

  #arm(): void {
    if (this.#stopped || this.#kv === undefined) return;
    this.#cancel = this.#o.clock.schedule(this.#o.clock.now() + this.#flushMs, () => {
      this.#cancel = undefined;
      this.flush().finally(() => this.#arm());
    });
  }

  /**
   * Writes the changed shards now (one write at a time; a call during a write waits for it).
   *
   * @returns Resolves when written, or when the writes failed (kept for the next flush).
   */
  flush(): Promise<void> {
    this.#flushing ??= this.#flushInner().finally(() => this.#flushing = undefined);
    return this.#flushing;
  }

  async #flushInner(): Promise<void> {
    const kv = this.#kv;
    if (kv === undefined || this.#dirty.size === 0) return;
    const shards = [...this.#dirty];
    this.#dirty.clear();
    const now = this.#o.clock.now();
    const window = this.#o.windowMs();
    // One pass over the marks for every changed shard.
    const mine = new Map<number, Array<[string, string, number]>>();
    for (const s of shards) mine.set(s, []);
    for (const map of [this.#keyed, this.#unkeyed]) {
      for (const [id, m] of map) {
        if (m.at < now - window) continue;
        mine.get(replayShard(id))?.push([id, m.text, Math.floor(m.at)]);
      }
    }
    await Promise.all(shards.map(async (s) => {
      try {
        // Read, merge, compare-and-set: two reverbs (active and standby) write the same keys,
        // and neither may lower the other's marks.
        const stored = await this.#read(s);
        if (stored === null) {
          // Counted and reported by the read; kept dirty for the next flush.
          this.#dirty.add(s);
          return;
        }
        if (stored) this.#merge(stored.value, now);
        const merged = new Map<string, [string, string, number]>();
        for (const t of mine.get(s)!) merged.set(t[0], t);
        if (stored) {
          for (let i = 0; i < Math.min(stored.value.marks.length, MAX_SHARD_MARKS); i++) {
            const t = readTriple(stored.value.marks[i]);
            if (t === undefined || t[3] < now - window) continue;
            const have = merged.get(t[0]);
            if (have === undefined || compareHlc(t[1], have[1]) > 0) {
              merged.set(t[0], [t[0], t[2], t[3]]);
            }
          }
        }
        let marks = [...merged.values()];
        if (marks.length > MAX_SHARD_MARKS) {
          // The newest matter most: they are the ones still inside their window longest.
          marks.sort((a, b) => b[2] - a[2]);
          marks = marks.slice(0, MAX_SHARD_MARKS);
        }
        const value: ShardJson = { v: FORMAT, marks };
        await kv.putJson(replayKey(s), value, stored?.revision ?? 0);
        this.#writes++;
      } catch (error) {
        // Kept dirty: the next flush merges and tries again.
        this.#dirty.add(s);
        this.#failures++;
        const lost = error instanceof BackbeatError && error.code === "lease";
        if (!lost) {
          this.#report("cannot write replay marks", {
            key: replayKey(s),
            error: (error as Error).message,
          });
        }
      }
    }));
  }

  #report(what: string, fields: LogFields): void {
    try {
      this.#o.onStoreError?.(what, fields);
    } catch { /* a reporter must not break the flush */ }
  }

  /**
   * Stops the flush timer after one last write of the changed marks (bounded). Idempotent.
   *
   * @returns Resolves once stopped.
   */
  async stop(): Promise<void> {
    if (this.#stopped) return;
    this.#stopped = true;
    this.#cancel?.();
    this.#cancel = undefined;
    if (this.#kv === undefined) return;
    await withTimeout(
      (this.#flushing ?? Promise.resolve()).then(() => this.flush()),
      REPLAY_STORE_WAIT_MS,
      this.#o.clock,
    );
  }
}

// A pool of Web Workers that verify Ed25519 signatures in batches. Deno's WebCrypto verifies on
// the calling thread, so without workers every signature costs the thread that also parses and
// aggregates claims. Claims are packed into one transferable buffer per batch; a batch leaves
// when it is full or at the end of the current task (a microtask), whichever comes first.

import { type Clock, withTimeout } from "../core/mod.ts";

/** Claims per batch at most. */
export const VERIFY_BATCH = 256;

/**
 * Receives each claim's result: true or false, or `null` when the pool could not verify it (a
 * worker failed), in which case the caller verifies it itself.
 */
export type VerifyResult = (token: unknown, ok: boolean | null) => void;

interface Slot {
  worker: Worker;
  pending: number;
  batches: Set<number>;
}

interface Batch {
  tokens: unknown[];
  keys: string[];
  signatures: string[];
  buffer: Uint8Array;
  offsets: number[];
  used: number;
}

function newBatch(): Batch {
  return {
    tokens: [],
    keys: [],
    signatures: [],
    buffer: new Uint8Array(64 * 1024),
    offsets: [0],
    used: 0,
  };
}

/**
 * Verifies signatures in `size` workers.
 *
 * @example Verify one signature off the calling thread
 * ```ts ignore
 * import { SystemClock } from "../core/mod.ts";
 * import { VerifyPool } from "./_verify_pool.ts";
 * const pool = new VerifyPool(1, (token, ok) => console.log(token, ok), new SystemClock());
 * pool.submit("claim-1", publicKey, payload, signature);
 * await pool.close();
 * ```
 */
export class VerifyPool {
  /** Number of workers. */
  readonly size: number;
  readonly #slots: Slot[] = [];
  readonly #onResult: VerifyResult;
  readonly #clock: Clock;
  readonly #inflight = new Map<number, { tokens: unknown[]; slot: Slot }>();
  #batch: Batch = newBatch();
  #scheduled = false;
  #nextId = 1;
  #closed = false;
  #idle: Array<() => void> = [];

  /**
   * Starts the workers.
   *
   * @param size Workers to start (at least 1).
   * @param onResult Receives each result.
   * @param clock Times the bounded wait of {@linkcode VerifyPool.close}.
   * @throws {RangeError} When size is not an integer from 1 to 64.
   */
  constructor(size: number, onResult: VerifyResult, clock: Clock) {
    if (!(Number.isInteger(size) && size > 0 && size <= 64)) {
      throw new RangeError(`Invalid verify pool size ${size}: expected an integer from 1 to 64`);
    }
    this.size = size;
    this.#onResult = onResult;
    this.#clock = clock;
    const url = new URL("./_verify_worker.ts", import.meta.url);
    for (let i = 0; i < size; i++) {
      const slot: Slot = {
        worker: new Worker(url, { type: "module", name: `reverb-verify-${i}` }),
        pending: 0,
        batches: new Set(),
      };
      slot.worker.onmessage = (e: MessageEvent<{ id: number; results: Uint8Array }>) =>
        this.#reply(slot, e.data.id, e.data.results);
      slot.worker.onerror = (e) => {
        e.preventDefault();
        this.#fail(slot);
      };
      this.#slots.push(slot);
    }
  }

  /** Claims submitted and not yet answered. */
  get pending(): number {
    let n = this.#batch.tokens.length;
    for (const s of this.#slots) n += s.pending;
    return n;
  }

  /**
   * Queues one claim for verification. The payload is copied at once.
   *
   * @param token Handed back with the result.
   * @param publicKey Base64 of the raw 32-byte public key.
   * @param data The exact signed bytes.
   * @param signature Base64 of the 64-byte signature.
   */
  submit(token: unknown, publicKey: string, data: Uint8Array, signature: string): void {
    if (this.#closed) {
      queueMicrotask(() => this.#onResult(token, null));
      return;
    }
    const b = this.#batch;
    if (b.used + data.length > b.buffer.length) {
      const grown = new Uint8Array(Math.max(b.buffer.length * 2, b.used + data.length));
      grown.set(b.buffer.subarray(0, b.used));
      b.buffer = grown;
    }
    b.buffer.set(data, b.used);
    b.used += data.length;
    b.offsets.push(b.used);
    b.tokens.push(token);
    b.keys.push(publicKey);
    b.signatures.push(signature);
    if (b.tokens.length >= VERIFY_BATCH) this.#flush();
    else if (!this.#scheduled) {
      this.#scheduled = true;
      queueMicrotask(() => this.#flush());
    }
  }

  #flush(): void {
    this.#scheduled = false;
    const b = this.#batch;
    const n = b.tokens.length;
    if (n === 0) return;
    this.#batch = newBatch();
    let slot = this.#slots[0];
    for (const s of this.#slots) if (s.pending < slot.pending) slot = s;
    const id = this.#nextId++;
    const data = b.buffer.slice(0, b.used).buffer;
    const offsets = Uint32Array.from(b.offsets);
    slot.pending += n;
    slot.batches.add(id);
    this.#inflight.set(id, { tokens: b.tokens, slot });
    slot.worker.postMessage(
      { id, n, data, offsets, signatures: b.signatures, keys: b.keys },
      [data, offsets.buffer],
    );
  }

  #reply(slot: Slot, id: number, results: Uint8Array): void {
    const entry = this.#inflight.get(id);
    if (entry === undefined) return;
    this.#inflight.delete(id);
    slot.batches.delete(id);
    slot.pending -= entry.tokens.length;
    for (let i = 0; i < entry.tokens.length; i++) this.#onResult(entry.tokens[i], results[i] === 1);
    this.#settle();
  }

  // A worker died: hand its claims back unverified and replace it.
  #fail(slot: Slot): void {
    const ids = [...slot.batches];
    slot.batches.clear();
    slot.pending = 0;
    try {
      slot.worker.terminate();
    } catch { /* gone */ }
    if (!this.#closed) {
      slot.worker = new Worker(new URL("./_verify_worker.ts", import.meta.url), { type: "module" });
      slot.worker.onmessage = (e: MessageEvent<{ id: number; results: Uint8Array }>) =>
        this.#reply(slot, e.data.id, e.data.results);
      slot.worker.onerror = (e) => {
        e.preventDefault();
        this.#fail(slot);
      };
    }
    for (const id of ids) {
      const entry = this.#inflight.get(id);
      this.#inflight.delete(id);
      for (const t of entry?.tokens ?? []) this.#onResult(t, null);
    }
    this.#settle();
  }

  #settle(): void {
    if (this.#inflight.size === 0 && this.#batch.tokens.length === 0 && this.#idle.length) {
      const waiters = this.#idle;
      this.#idle = [];
      for (const w of waiters) w();
    }
  }

  /**
   * Waits (at most `timeoutMs`) for submitted claims to be answered, then stops the workers.
   * Claims still unanswered get `null`. Idempotent.
   *
   * @param timeoutMs Longest wait. @default {2000}
   * @returns Resolves once the workers are stopped.
   */
  async close(timeoutMs = 2_000): Promise<void> {
    if (this.#closed) return;
    this.#flush();
    if (this.#inflight.size > 0) {
      await withTimeout(new Promise<void>((r) => this.#idle.push(r)), timeoutMs, this.#clock);
    }
    this.#closed = true;
    for (const s of this.#slots) s.worker.terminate();
    for (const [id, entry] of this.#inflight) {
      this.#inflight.delete(id);
      for (const t of entry.tokens) this.#onResult(t, null);
    }
  }
}

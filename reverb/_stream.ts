// The JetStream history of bar reports. Loaded by reverb through a dynamic import, only when it
// runs on NATS, so the embedded path never pulls @nats-io/jetstream in. Works with
// nats-server 2.9 (stream create/update, message dedupe by Nats-Msg-Id, ordered consumers).

import {
  DeliverPolicy,
  DiscardPolicy,
  jetstream,
  type JetStreamClient,
  type JetStreamManager,
  jetstreamManager,
  RetentionPolicy,
  StorageType,
} from "@nats-io/jetstream";
import { headers as natsHeaders, type NatsConnection } from "@nats-io/nats-core";
import { BackbeatError, type Clock, type Logger, withTimeout } from "../core/mod.ts";

/** Options of {@linkcode BarStream.open}. */
export interface BarStreamOpenOptions {
  /** The stream name. */
  name: string;
  /** The bar subject it captures. */
  subject: string;
  /** Oldest report kept, in ms. */
  maxAgeMs: number;
  /** Reports kept at most. */
  maxMsgs: number;
  /**
   * Copies JetStream keeps (`num_replicas`, 1 to 5): 3 on a cluster of 3 or more, so the history
   * outlives a node. An existing stream with fewer is scaled up to this; one with more is left
   * as it is (another reverb, or the operator, asked for them).
   * @default {1}
   */
  replicas?: number;
  /** Where failures are logged. */
  logger: Logger;
  /** Times store retries and the bounded wait of {@linkcode BarStream.close}. */
  clock: Clock;
}

/** Reports waiting to be stored again after a failed publish. */
export const MAX_PENDING_REPORTS = 256;
const RETRY_MS = 1_000;
const CLOSE_WAIT_MS = 2_000;
const NS_PER_MS = 1_000_000;
/** Most replicas a JetStream stream can have. */
const MAX_REPLICAS = 5;

interface Pending {
  data: Uint8Array;
  msgId: string;
  headers: Readonly<Record<string, string>> | undefined;
}

/**
 * The `BACKBEAT_<CLUSTER>_BARS` stream: appends reports (deduplicated) and replays them.
 *
 * @example Keep and replay reports
 * ```ts ignore
 * import { BarStream } from "./_stream.ts";
 * const stream = await BarStream.open(bus.connection, {
 *   name: "BACKBEAT_DEV_BARS",
 *   subject: "backbeat.dev.bar",
 *   maxAgeMs: 86_400_000,
 *   maxMsgs: 10_000,
 *   logger,
 *   clock,
 * });
 * console.log((await stream.replay(10)).length);
 * await stream.close();
 * ```
 */
export class BarStream {
  /** The stream name. */
  readonly name: string;
  readonly #subject: string;
  readonly #js: JetStreamClient;
  readonly #jsm: JetStreamManager;
  readonly #logger: Logger;
  readonly #clock: Clock;
  #pending: Pending[] = [];
  #cancelRetry: (() => void) | undefined;
  #inflight = new Set<Promise<unknown>>();
  #closed = false;
  #stored = 0;
  #failed = 0;

  private constructor(
    name: string,
    subject: string,
    js: JetStreamClient,
    jsm: JetStreamManager,
    logger: Logger,
    clock: Clock,
  ) {
    this.name = name;
    this.#subject = subject;
    this.#js = js;
    this.#jsm = jsm;
    this.#logger = logger;
    this.#clock = clock;
  }

  /**
   * Creates the stream, or brings an existing one's limits in line and scales its replicas up
   * to `replicas`.
   *
   * @param connection A nats.js `NatsConnection`.
   * @param options Name, subject, limits, replicas.
   * @returns The stream handle.
   * @throws {RangeError} When `replicas` is not an integer from 1 to 5.
   * @throws {BackbeatError} `connection` when JetStream is unavailable or refuses the stream, or
   * when the cluster cannot hold the replicas asked for (the message says how many it has).
   */
  static async open(connection: unknown, options: BarStreamOpenOptions): Promise<BarStream> {
    const nc = connection as NatsConnection;
    const replicas = options.replicas ?? 1;
    if (!Number.isInteger(replicas) || replicas < 1 || replicas > MAX_REPLICAS) {
      throw new RangeError(
        `Invalid replicas ${options.replicas}: expected an integer from 1 to ${MAX_REPLICAS}`,
      );
    }
    const config = {
      name: options.name,
      subjects: [options.subject],
      retention: RetentionPolicy.Limits,
      storage: StorageType.File,
      discard: DiscardPolicy.Old,
      max_age: options.maxAgeMs * NS_PER_MS,
      max_msgs: options.maxMsgs,
      // Two reverbs may publish the same window around a takeover: the window id dedupes.
      duplicate_window: Math.min(options.maxAgeMs, 10 * 60_000) * NS_PER_MS,
      num_replicas: replicas,
    };
    try {
      const jsm = await jetstreamManager(nc, { timeout: 5_000 });
      let info;
      try {
        info = await jsm.streams.info(options.name);
      } catch {
        info = undefined;
      }
      if (info === undefined) {
        await jsm.streams.add(config);
      } else {
        const c = info.config;
        if (
          c.max_age !== config.max_age || c.max_msgs !== config.max_msgs ||
          !c.subjects?.includes(options.subject)
        ) {
          await jsm.streams.update(options.name, {
            subjects: [...new Set([...(c.subjects ?? []), options.subject])],
            max_age: config.max_age,
            max_msgs: config.max_msgs,
            duplicate_window: config.duplicate_window,
          });
        }
        const has = c.num_replicas ?? 1;
        if (has < replicas) {
          // Fatal for this attempt, not silently fewer copies: the operator asked for copies
          // that outlive a node. (Reverb retries the stream, so it may succeed once the
          // cluster's nodes are back.)
          try {
            await jsm.streams.update(options.name, { num_replicas: replicas });
          } catch (cause) {
            throw new BackbeatError(
              "connection",
              `Cannot open JetStream stream ${options.name}: it has ${has} replica(s), and scaling it to ${replicas} failed: ${
                (cause as Error).message
              }`,
              { cause },
            );
          }
        }
      }
      return new BarStream(
        options.name,
        options.subject,
        jetstream(nc, { timeout: 5_000 }),
        jsm,
        options.logger,
        options.clock,
      );
    } catch (cause) {
      if (cause instanceof BackbeatError) throw cause;
      throw new BackbeatError(
        "connection",
        `Cannot open JetStream stream ${options.name}: ${(cause as Error).message}`,
        { cause },
      );
    }
  }

  /** Reports stored so far. */
  get stored(): number {
    return this.#stored;
  }

  /** Store attempts that failed (each is retried). */
  get failed(): number {
    return this.#failed;
  }

  /** Reports waiting for a retry. */
  get pending(): number {
    return this.#pending.length;
  }

  /**
   * Publishes a report on the bar subject through JetStream (core subscribers receive it too)
   * and keeps retrying, bounded, until the stream acknowledges it.
   *
   * @param data The report's JSON bytes.
   * @param msgId The window id, for deduplication.
   * @param headers Extra headers (e.g. `x-reverb-id`).
   */
  publish(data: Uint8Array, msgId: string, headers?: Readonly<Record<string, string>>): void {
    this.#send({ data, msgId, headers });
  }

  #send(p: Pending): void {
    if (this.#closed) return;
    let hdrs;
    if (p.headers) {
      hdrs = natsHeaders();
      for (const [k, v] of Object.entries(p.headers)) hdrs.set(k, v);
    }
    const attempt = this.#js
      .publish(this.#subject, p.data, { msgID: p.msgId, timeout: 5_000, headers: hdrs })
      .then(
        () => {
          this.#stored++;
        },
        (err: Error) => {
          this.#failed++;
          this.#logger.warn("cannot store bar report, will retry", {
            stream: this.name,
            window_id: p.msgId,
            error: err.message,
          });
          if (this.#pending.length >= MAX_PENDING_REPORTS) this.#pending.shift();
          this.#pending.push(p);
          this.#arm();
        },
      )
      .finally(() => this.#inflight.delete(attempt));
    this.#inflight.add(attempt);
  }

  #arm(): void {
    if (this.#closed || this.#cancelRetry !== undefined) return;
    this.#cancelRetry = this.#clock.schedule(this.#clock.now() + RETRY_MS, () => {
      this.#cancelRetry = undefined;
      const batch = this.#pending;
      this.#pending = [];
      for (const p of batch) this.#send(p);
    });
  }

  /**
   * Reads the newest reports, oldest first.
   *
   * @param count How many at most.
   * @returns Their payloads.
   * @throws {BackbeatError} `connection` when the stream cannot be read.
   */
  async replay(count: number): Promise<Uint8Array[]> {
    try {
      const info = await this.#jsm.streams.info(this.name);
      const last = info.state.last_seq;
      if (info.state.messages === 0 || last === 0 || count <= 0) return [];
      const start = Math.max(info.state.first_seq, last - count + 1);
      const consumer = await this.#js.consumers.get(this.name, {
        deliver_policy: DeliverPolicy.StartSequence,
        opt_start_seq: start,
      });
      const out: Uint8Array[] = [];
      const messages = await consumer.fetch({ max_messages: last - start + 1, expires: 5_000 });
      for await (const m of messages) {
        out.push(m.data);
        if (m.seq >= last) break;
      }
      await messages.close();
      return out;
    } catch (cause) {
      throw new BackbeatError(
        "connection",
        `Cannot replay stream ${this.name}: ${(cause as Error).message}`,
        { cause },
      );
    }
  }

  /**
   * Waits for in-flight stores (at most 2 s) and stops retrying. Idempotent.
   *
   * @returns Resolves once closed.
   */
  async close(): Promise<void> {
    if (this.#closed) return;
    await withTimeout(Promise.allSettled([...this.#inflight]), CLOSE_WAIT_MS, this.#clock);
    this.#closed = true;
    this.#cancelRetry?.();
    this.#cancelRetry = undefined;
  }
}

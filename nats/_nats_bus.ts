// Loaded only through connectNatsBus()'s dynamic import: the embedded path never pulls nats.js in.
import {
  connect,
  headers as natsHeaders,
  type Msg,
  type NatsConnection,
  type Subscription,
} from "@nats-io/transport-node";
import {
  assertSubject,
  BackbeatError,
  type BusEventMap,
  type BusHandler,
  type BusHeaders,
  type BusMessage,
  type BusStatus,
  type BusStatusDetail,
  type BusSubscription,
  IsolatedEventTarget,
  type PublishOptions,
  type SubscribeOptions,
} from "../core/mod.ts";
import { Backoff } from "./_backoff.ts";
import {
  DEFAULT_MAX_RECONNECT_WAIT_MS,
  type NatsBusLike,
  type NatsBusOptions,
} from "./_options.ts";

class NatsSubscription implements BusSubscription {
  readonly subject: string;
  #sub: Subscription;
  #bus: NatsBus;
  constructor(bus: NatsBus, subject: string, sub: Subscription) {
    this.#bus = bus;
    this.subject = subject;
    this.#sub = sub;
  }
  get dropped(): number {
    return this.#bus.slowDrops.get(this.#sub) ?? 0;
  }
  unsubscribe(): void {
    if (!this.#sub.isClosed()) this.#sub.unsubscribe();
  }
}

function readHeaders(msg: Msg): BusHeaders | undefined {
  const h = msg.headers;
  if (!h) return undefined;
  const out: Record<string, string> = {};
  for (const k of h.keys()) out[k.toLowerCase()] = h.get(k);
  return out;
}

/** A {@linkcode NatsBusLike} over nats.js (`@nats-io/transport-node`). */
export class NatsBus extends IsolatedEventTarget<BusEventMap> implements NatsBusLike {
  readonly connection: NatsConnection;
  readonly url: string;
  /** Slow-consumer drops per subscription, as reported by nats.js. */
  readonly slowDrops: WeakMap<Subscription, number> = new WeakMap();
  #status: BusStatus = "connected";
  #reconnects = 0;
  #closing: Promise<void> | undefined;

  #backoff: Backoff;

  private constructor(nc: NatsConnection, url: string, backoff: Backoff) {
    super();
    this.connection = nc;
    this.url = url;
    this.#backoff = backoff;
    this.#watch();
  }

  /**
   * Connects to NATS.
   *
   * @param options Servers, credentials, reconnect policy.
   * @returns The bus.
   * @throws {BackbeatError} `connection` when the connect fails.
   */
  static async connect(options: NatsBusOptions): Promise<NatsBus> {
    const backoff = new Backoff(
      options.reconnectTimeWait ?? 250,
      options.maxReconnectWait ?? DEFAULT_MAX_RECONNECT_WAIT_MS,
    );
    const servers = Array.isArray(options.servers) ? options.servers : [options.servers];
    if (servers.length === 0 || servers.some((s) => typeof s !== "string" || s === "")) {
      throw new TypeError("Cannot connect to NATS: no server URL given");
    }
    try {
      const nc = await connect({
        servers,
        name: options.name ?? "backbeat",
        user: options.user,
        pass: options.pass,
        token: options.token,
        maxReconnectAttempts: options.maxReconnectAttempts ?? -1,
        reconnectTimeWait: options.reconnectTimeWait ?? 250,
        reconnectDelayHandler: backoff.delay,
        timeout: options.timeout ?? 5000,
        waitOnFirstConnect: options.waitOnFirstConnect ?? false,
      });
      return new NatsBus(nc, servers[0], backoff);
    } catch (cause) {
      throw new BackbeatError(
        "connection",
        `Cannot connect to NATS at ${servers.join(", ")}: ${(cause as Error).message}`,
        { cause },
      );
    }
  }

  get status(): BusStatus {
    return this.#status;
  }

  get reconnects(): number {
    return this.#reconnects;
  }

  get maxPayload(): number {
    return this.connection.info?.max_payload ?? 1_048_576;
  }

  publish(subject: string, data: Uint8Array, options?: PublishOptions): void {
    if (this.#status === "closed" || this.connection.isClosed()) {
      throw new BackbeatError(
        "closed",
        `Cannot publish on ${subject}: the NATS connection is closed`,
      );
    }
    assertSubject(subject);
    // nats.js discards what is published while it is disconnected (its outbound buffer is reset
    // on every reconnect), so refuse instead of losing silently: callers buffer and retry.
    if (!this.#connected()) {
      throw new BackbeatError(
        "connection",
        `Cannot publish on ${subject}: not connected to NATS (${this.#status})`,
      );
    }
    if (data.byteLength > this.maxPayload) {
      throw new RangeError(
        `Cannot publish on ${subject}: payload of ${data.byteLength} bytes exceeds the limit of ${this.maxPayload}`,
      );
    }
    let hdrs;
    if (options?.headers) {
      hdrs = natsHeaders();
      for (const [k, v] of Object.entries(options.headers)) hdrs.set(k, v);
    }
    try {
      this.connection.publish(subject, data, hdrs ? { headers: hdrs } : undefined);
    } catch (cause) {
      throw new BackbeatError(
        "connection",
        `Cannot publish on ${subject}: ${(cause as Error).message}`,
        { cause },
      );
    }
  }

  subscribe(subject: string, handler: BusHandler, options?: SubscribeOptions): BusSubscription {
    if (this.#status === "closed" || this.connection.isClosed()) {
      throw new BackbeatError(
        "closed",
        `Cannot subscribe to ${subject}: the NATS connection is closed`,
      );
    }
    assertSubject(subject, true);
    const sub = this.connection.subscribe(subject, {
      queue: options?.queue,
      callback: (err, msg) => {
        if (err) {
          this.#error(`Subscription ${subject} failed: ${err.message}`, err);
          return;
        }
        const m: BusMessage = { subject: msg.subject, data: msg.data, headers: readHeaders(msg) };
        try {
          handler(m);
        } catch (error) {
          this.#error(`Subscription handler for ${subject} threw: ${error}`, error);
        }
      },
    });
    return new NatsSubscription(this, subject, sub);
  }

  // The protocol's own flag flips the moment the socket closes, before the status event.
  #connected(): boolean {
    const protocol = (this.connection as unknown as { protocol?: { connected?: boolean } })
      .protocol;
    return this.#status === "connected" && protocol?.connected !== false;
  }

  async flush(): Promise<void> {
    if (this.connection.isClosed()) return;
    await this.connection.flush();
  }

  close(): Promise<void> {
    this.#closing ??= (async () => {
      if (!this.connection.isClosed()) {
        try {
          await this.connection.drain();
        } catch {
          await this.connection.close();
        }
      }
      await this.connection.closed();
      this.#set("closed");
    })();
    return this.#closing;
  }

  /** Closes, for `await using`. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  async #watch(): Promise<void> {
    for await (const s of this.connection.status()) {
      switch (s.type) {
        case "disconnect":
          this.#set("disconnected");
          break;
        case "reconnecting":
          // nats.js emits this before each dial: one backoff step per real attempt.
          this.#backoff.dialed();
          if (this.#status !== "closed") this.#set("reconnecting");
          break;
        case "reconnect":
          this.#backoff.reset();
          this.#reconnects++;
          this.#set("connected");
          break;
        case "slowConsumer":
          this.slowDrops.set(s.sub, (this.slowDrops.get(s.sub) ?? 0) + 1);
          this.#error(`Slow consumer on ${s.sub.getSubject()}: ${s.pending} pending`);
          break;
        case "error":
          this.#error(`NATS error: ${s.error.message}`, s.error);
          break;
        case "close":
          this.#set("closed");
          break;
      }
    }
  }

  #set(status: BusStatus): void {
    if (this.#status === status) return;
    this.#status = status;
    this.dispatchEvent(
      new CustomEvent<BusStatusDetail>("status", {
        detail: { status, reconnects: this.#reconnects },
      }),
    );
  }

  #error(message: string, error?: unknown): void {
    this.dispatchEvent(new ErrorEvent("error", { message, error }));
  }
}

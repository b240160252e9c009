// Loaded only through connectNatsBus()'s dynamic import: the embedded path never pulls nats.js in.
import {
  errors as natsErrors,
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
  type RequestOptions,
  type SubscribeOptions,
} from "../core/mod.ts";
import { resolveSecurity } from "./_auth.ts";
import { Backoff } from "./_backoff.ts";
import {
  DEFAULT_MAX_RECONNECT_WAIT_MS,
  type NatsBusLike,
  type NatsBusOptions,
} from "./_options.ts";
import { type ConnectionPlan, planConnection } from "./_settings.ts";
import { connectNats } from "./_transport.ts";

const DEFAULT_TIMEOUT_MS = 5000;

/**
 * Why a connect failed, in a few words for `Cannot connect to <url>: <reason>`. nats.js's own
 * messages carry no secret (credentials never reach it inside URLs), but some are terse.
 */
function connectFailure(cause: unknown, plan: ConnectionPlan, timeoutMs: number): string {
  if (cause instanceof natsErrors.AuthorizationError) return "authorization violation";
  if (cause instanceof natsErrors.UserAuthenticationExpiredError) {
    return "user authentication expired";
  }
  if (cause instanceof natsErrors.TimeoutError) {
    // A server that verifies client certificates closes the connection after the handshake,
    // which nats.js only notices when its timeout fires.
    return plan.requireTls && plan.certFile === undefined
      ? `no answer within ${timeoutMs} ms (does the server require a client certificate?)`
      : `no answer within ${timeoutMs} ms`;
  }
  const message = cause instanceof Error ? cause.message : String(cause);
  if (message === "server does not support 'tls'") {
    return "the server does not offer TLS, and TLS is required";
  }
  if (/certificate|tls|ssl|handshake|alert/i.test(message)) {
    // The usual first mistake: a private CA without caFile.
    const hint = plan.caFile === undefined && /verify|self[- ]signed|issuer/i.test(message)
      ? " (the server's certificate is not signed by a trusted CA: give its CA file)"
      : "";
    return `TLS failed: ${message}${hint}`;
  }
  return message === "" ? "unknown error" : message.replace(/\.$/, "");
}

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
   * @param options Servers, credentials, TLS, reconnect policy.
   * @returns The bus.
   * @throws {TypeError} On bad options (see `planConnection()`).
   * @throws {BackbeatError} `connection` when a file cannot be used or the connect fails, as
   * `Cannot connect to <redacted url>: <reason>`.
   */
  static async connect(options: NatsBusOptions): Promise<NatsBus> {
    const plan = planConnection(options);
    const security = await resolveSecurity(plan);
    const backoff = new Backoff(
      options.reconnectTimeWait ?? 250,
      options.maxReconnectWait ?? DEFAULT_MAX_RECONNECT_WAIT_MS,
    );
    const timeout = options.timeout ?? DEFAULT_TIMEOUT_MS;
    const where = plan.shown.join(", ");
    try {
      const nc = await connectNats({
        // Without credentials: nats.js 3 ignores them in URLs (and reads digits after
        // "user:" as the port); they travel in the authenticator.
        servers: [...plan.servers],
        name: options.name ?? "backbeat",
        authenticator: security.authenticator,
        tls: security.tls,
        inboxPrefix: plan.inboxPrefix,
        noRandomize: options.noRandomize ?? false,
        maxReconnectAttempts: options.maxReconnectAttempts ?? -1,
        reconnectTimeWait: options.reconnectTimeWait ?? 250,
        reconnectDelayHandler: backoff.delay,
        timeout,
        waitOnFirstConnect: options.waitOnFirstConnect ?? false,
      });
      return new NatsBus(nc, plan.redacted[0], backoff);
    } catch (cause) {
      // A refused login is its own code, so a program can tell it from a network failure.
      const refused = cause instanceof natsErrors.AuthorizationError ||
        cause instanceof natsErrors.UserAuthenticationExpiredError;
      throw new BackbeatError(
        refused ? "auth" : "connection",
        `Cannot connect to ${where}: ${connectFailure(cause, plan, timeout)}`,
        { cause, detail: { servers: [...plan.redacted] } },
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
        const m: BusMessage = msg.reply
          ? { subject: msg.subject, data: msg.data, headers: readHeaders(msg), reply: msg.reply }
          : { subject: msg.subject, data: msg.data, headers: readHeaders(msg) };
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

  async request(
    subject: string,
    data: Uint8Array,
    options: RequestOptions = {},
  ): Promise<BusMessage> {
    const timeout = options.timeoutMs ?? 1_000;
    if (!(timeout > 0 && Number.isFinite(timeout))) {
      throw new RangeError(`Invalid timeoutMs ${timeout}: expected a number > 0`);
    }
    if (this.#status === "closed" || this.connection.isClosed()) {
      throw new BackbeatError(
        "closed",
        `Cannot request on ${subject}: the NATS connection is closed`,
      );
    }
    assertSubject(subject);
    if (!this.#connected()) {
      throw new BackbeatError(
        "connection",
        `Cannot request on ${subject}: not connected to NATS (${this.#status})`,
      );
    }
    let hdrs;
    if (options.headers) {
      hdrs = natsHeaders();
      for (const [k, v] of Object.entries(options.headers)) hdrs.set(k, v);
    }
    try {
      const msg = await this.connection.request(subject, data, { timeout, headers: hdrs });
      return { subject: msg.subject, data: msg.data, headers: readHeaders(msg) };
    } catch (cause) {
      // nats.js wraps both in a RequestError (its cause says which).
      const inner = cause instanceof natsErrors.RequestError ? cause.cause ?? cause : cause;
      const noResponders = inner instanceof natsErrors.NoRespondersError ||
        (cause instanceof natsErrors.RequestError && cause.isNoResponders());
      const timedOut = inner instanceof natsErrors.TimeoutError;
      throw new BackbeatError(
        noResponders || timedOut ? "timeout" : "connection",
        noResponders
          ? `No responders for request on ${subject}`
          : timedOut
          ? `No reply to request on ${subject} within ${timeout} ms`
          : `Cannot request on ${subject}: ${(cause as Error).message}`,
        { cause },
      );
    }
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
    try {
      await this.#follow();
    } catch (error) {
      // The status iterator does not fail today; if it ever does, say so instead of leaving an
      // unhandled rejection behind.
      this.#error(`NATS status feed ended: ${(error as Error)?.message}`, error);
    }
  }

  async #follow(): Promise<void> {
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

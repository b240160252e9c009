import { BackbeatError } from "./_errors.ts";
import { IsolatedEventTarget } from "./_events.ts";

/** Message headers: lowercase names to values. */
export type BusHeaders = Readonly<Record<string, string>>;

/** A message as a {@linkcode Bus} delivers it. */
export interface BusMessage {
  /** The subject it was published on. */
  readonly subject: string;
  /** The exact payload bytes. */
  readonly data: Uint8Array;
  /** Headers (lowercase names), when the publisher sent any. */
  readonly headers?: BusHeaders;
  /** Where a reply goes, when the message is a request ({@linkcode Bus.request}). */
  readonly reply?: string;
}

/** Receives messages of a subscription. Exceptions are caught and reported as `error` events. */
export type BusHandler = (message: BusMessage) => void;

/** Options of {@linkcode Bus.publish}. */
export interface PublishOptions {
  /** Headers to send (names are sent as given; use lowercase). @default {undefined} */
  headers?: BusHeaders;
}

/** Options of {@linkcode Bus.request}. */
export interface RequestOptions {
  /** Headers to send. @default {undefined} */
  headers?: BusHeaders;
  /** How long to wait for the reply, in ms. @default {1000} */
  timeoutMs?: number;
}

/** Options of {@linkcode Bus.subscribe}. */
export interface SubscribeOptions {
  /** Queue group: each message goes to one member of the group. @default {undefined} */
  queue?: string;
}

/** A live subscription. */
export interface BusSubscription {
  /** The subject (may hold `*` and `>` wildcards). */
  readonly subject: string;
  /** Messages dropped because the subscriber fell too far behind. */
  readonly dropped: number;
  /** Stops delivery. Idempotent. */
  unsubscribe(): void;
}

/** Connection states of a bus. */
export const BusStatus = {
  Connected: "connected",
  Disconnected: "disconnected",
  Reconnecting: "reconnecting",
  Closed: "closed",
} as const;
/** One of {@linkcode BusStatus}'s values. */
export type BusStatus = typeof BusStatus[keyof typeof BusStatus];

/** Detail of the `status` events a bus dispatches. */
export interface BusStatusDetail {
  /** The new state. */
  status: BusStatus;
  /** Reconnections so far. */
  reconnects: number;
}

/**
 * The transport BACKBEAT runs on: publish with headers, subscribe (optionally in a queue group),
 * flush, close, and `status` events (`CustomEvent<BusStatusDetail>`) plus `error` events
 * (`ErrorEvent`) for failures that have no caller to throw to. {@linkcode InMemoryBus} is the
 * embedded default; `connectNatsBus()` gives a bus over a real NATS server.
 */
export interface Bus extends EventTarget {
  /** Current connection state. */
  readonly status: BusStatus;
  /** Reconnections so far. */
  readonly reconnects: number;
  /** Largest payload accepted, in bytes. */
  readonly maxPayload: number;
  /**
   * Publishes a message.
   *
   * @throws {BackbeatError} `closed` after close; `connection` while a network bus is not
   * connected (nothing is queued behind the caller's back); {@linkcode RangeError} over
   * `maxPayload`.
   */
  publish(subject: string, data: Uint8Array, options?: PublishOptions): void;
  /**
   * Sends a request and waits for the first reply (a responder publishes it on the message's
   * `reply` subject).
   *
   * @throws {BackbeatError} `timeout` when no reply comes in time or nobody listens on the
   * subject; `closed` after close; `connection` while a network bus is not connected.
   */
  request(subject: string, data: Uint8Array, options?: RequestOptions): Promise<BusMessage>;
  /**
   * Subscribes a handler.
   *
   * @throws {BackbeatError} `closed` after close.
   */
  subscribe(subject: string, handler: BusHandler, options?: SubscribeOptions): BusSubscription;
  /** Resolves when everything published so far has reached the server (or subscribers). */
  flush(): Promise<void>;
  /** Drains and closes. Idempotent. */
  close(): Promise<void>;
  /** Closes, for `await using`. */
  [Symbol.asyncDispose](): Promise<void>;
  /**
   * Adds a listener; `status` and `error` events are typed by {@linkcode BusEventMap}, so
   * `e.detail.status` needs no cast.
   *
   * @param type The event type.
   * @param listener The listener.
   * @param options Standard listener options.
   */
  addEventListener<K extends keyof BusEventMap>(
    type: K,
    listener:
      | ((event: BusEventMap[K]) => void)
      | { handleEvent(event: BusEventMap[K]): void }
      | null,
    options?: boolean | AddEventListenerOptions,
  ): void;
  /**
   * Adds a listener for another event type.
   *
   * @param type The event type.
   * @param listener The listener.
   * @param options Standard listener options.
   */
  addEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject | null,
    options?: boolean | AddEventListenerOptions,
  ): void;
  /**
   * Removes a listener added for a {@linkcode BusEventMap} event.
   *
   * @param type The event type.
   * @param listener The listener.
   * @param options Standard listener options.
   */
  removeEventListener<K extends keyof BusEventMap>(
    type: K,
    listener:
      | ((event: BusEventMap[K]) => void)
      | { handleEvent(event: BusEventMap[K]): void }
      | null,
    options?: boolean | EventListenerOptions,
  ): void;
  /**
   * Removes a listener for another event type.
   *
   * @param type The event type.
   * @param listener The listener.
   * @param options Standard listener options.
   */
  removeEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject | null,
    options?: boolean | EventListenerOptions,
  ): void;
}

/** The events of a {@linkcode Bus}. */
export interface BusEventMap {
  /** The connection state changed. */
  status: CustomEvent<BusStatusDetail>;
  /** A failure with no caller to throw to (a throwing handler, a slow consumer). */
  error: ErrorEvent;
}

/** Default for {@linkcode RequestOptions.timeoutMs}. */
const DEFAULT_REQUEST_TIMEOUT_MS = 1_000;

/** Default for {@linkcode InMemoryBusOptions.maxPending}. */
export const DEFAULT_MAX_PENDING = 65_536;
/** Default for {@linkcode InMemoryBusOptions.maxPayload}: 1 MiB, as nats-server. */
export const DEFAULT_MAX_PAYLOAD = 1_048_576;

/** Options of {@linkcode InMemoryBus}. */
export interface InMemoryBusOptions {
  /** Messages a subscription may have waiting before new ones are dropped. @default {65536} */
  maxPending?: number;
  /** Largest payload in bytes. @default {1048576} */
  maxPayload?: number;
}

/**
 * Checks a subject (or, with `wildcards`, a subscription pattern) the way NATS does.
 *
 * @param subject The subject.
 * @param wildcards Whether `*` and a final `>` are allowed.
 * @throws {TypeError} When it is empty, has empty tokens or whitespace, or misplaces wildcards.
 */
export function assertSubject(subject: string, wildcards = false): void {
  const tokens = typeof subject === "string" ? subject.split(".") : [];
  const ok = tokens.length > 0 && tokens.every((t, i) => {
    if (t.length === 0 || /\s/.test(t)) return false;
    if (t === "*") return wildcards;
    if (t === ">") return wildcards && i === tokens.length - 1;
    return !t.includes("*") && !t.includes(">");
  });
  if (!ok) throw new TypeError(`Invalid subject ${JSON.stringify(subject)}`);
}

function matches(pattern: readonly string[], subject: readonly string[]): boolean {
  for (let i = 0; i < pattern.length; i++) {
    const p = pattern[i];
    if (p === ">") return subject.length > i;
    if (i >= subject.length) return false;
    if (p !== "*" && p !== subject[i]) return false;
  }
  return pattern.length === subject.length;
}

class MemorySubscription implements BusSubscription {
  readonly subject: string;
  readonly tokens: readonly string[];
  readonly queue: string | undefined;
  readonly handler: BusHandler;
  dropped = 0;
  closed = false;
  pending: BusMessage[] = [];
  scheduled = false;
  #bus: InMemoryBus;

  constructor(bus: InMemoryBus, subject: string, handler: BusHandler, queue?: string) {
    this.#bus = bus;
    this.subject = subject;
    this.tokens = subject.split(".");
    this.handler = handler;
    this.queue = queue;
  }

  unsubscribe(): void {
    if (this.closed) return;
    this.closed = true;
    this.pending = [];
    this.#bus._remove(this);
  }
}

/**
 * The embedded bus for one process: NATS semantics (subjects with `*`/`>` wildcards, queue
 * groups, headers, per-subscription ordering, asynchronous delivery, payload limit) with bounded
 * queues. A subscriber that falls `maxPending` messages behind loses new ones, counted in its
 * `dropped` and reported as an `error` event, as a NATS slow consumer would.
 *
 * @example Publish and receive in one process
 * ```ts
 * import { InMemoryBus } from "@chorus/backbeat";
 * const bus = new InMemoryBus();
 * bus.subscribe("backbeat.dev.beat", (m) => console.log(new TextDecoder().decode(m.data)));
 * bus.publish("backbeat.dev.beat", new TextEncoder().encode("hello"));
 * await bus.flush();
 * await bus.close();
 * ```
 */
export class InMemoryBus extends IsolatedEventTarget<BusEventMap> implements Bus {
  readonly maxPayload: number;
  readonly reconnects: number = 0;
  #maxPending: number;
  #subs = new Set<MemorySubscription>();
  #queueCursor = new Map<string, number>();
  #status: BusStatus = "connected";
  #inflight = 0;
  #idle: Array<() => void> = [];

  /**
   * Creates an empty bus.
   *
   * @param options Queue and payload limits.
   */
  constructor(options: InMemoryBusOptions = {}) {
    super();
    this.#maxPending = options.maxPending ?? DEFAULT_MAX_PENDING;
    this.maxPayload = options.maxPayload ?? DEFAULT_MAX_PAYLOAD;
    if (!(Number.isInteger(this.#maxPending) && this.#maxPending > 0)) {
      throw new RangeError(`Invalid maxPending ${options.maxPending}: expected an integer > 0`);
    }
  }

  /** Always `connected` until closed. */
  get status(): BusStatus {
    return this.#status;
  }

  /** Number of live subscriptions. */
  get subscriptionCount(): number {
    return this.#subs.size;
  }

  publish(subject: string, data: Uint8Array, options?: PublishOptions): void {
    this.#publish(subject, data, options?.headers, undefined);
  }

  request(subject: string, data: Uint8Array, options: RequestOptions = {}): Promise<BusMessage> {
    const timeoutMs = options.timeoutMs ?? DEFAULT_REQUEST_TIMEOUT_MS;
    if (!(timeoutMs > 0 && Number.isFinite(timeoutMs))) {
      return Promise.reject(
        new RangeError(`Invalid timeoutMs ${timeoutMs}: expected a number > 0`),
      );
    }
    const inbox = `_INBOX.${crypto.randomUUID().replaceAll("-", "")}`;
    return new Promise<BusMessage>((resolve, reject) => {
      // Delivery is asynchronous, so the reply handler never runs before `timer` is set.
      const sub = this.subscribe(inbox, (m) => {
        clearTimeout(timer);
        sub.unsubscribe();
        resolve(m);
      });
      const timer = setTimeout(() => {
        sub.unsubscribe();
        reject(
          new BackbeatError("timeout", `No reply to request on ${subject} within ${timeoutMs} ms`),
        );
      }, timeoutMs);
      try {
        if (this.#publish(subject, data, options.headers, inbox) === 0) {
          // As NATS answers at once when no subscription matches.
          clearTimeout(timer);
          sub.unsubscribe();
          reject(new BackbeatError("timeout", `No responders for request on ${subject}`));
        }
      } catch (error) {
        clearTimeout(timer);
        sub.unsubscribe();
        reject(error);
      }
    });
  }

  // Returns how many subscriptions (queue groups counting once) it was delivered to.
  #publish(
    subject: string,
    data: Uint8Array,
    headers: BusHeaders | undefined,
    reply: string | undefined,
  ): number {
    if (this.#status === "closed") {
      throw new BackbeatError("closed", `Cannot publish on ${subject}: the bus is closed`);
    }
    assertSubject(subject);
    if (data.byteLength > this.maxPayload) {
      throw new RangeError(
        `Cannot publish on ${subject}: payload of ${data.byteLength} bytes exceeds the limit of ${this.maxPayload}`,
      );
    }
    const msg: BusMessage = {
      subject,
      data,
      ...(headers ? { headers: { ...headers } } : {}),
      ...(reply ? { reply } : {}),
    };
    let delivered = 0;
    const tokens = subject.split(".");
    let groups: Map<string, MemorySubscription[]> | undefined;
    for (const sub of this.#subs) {
      if (!matches(sub.tokens, tokens)) continue;
      if (sub.queue === undefined) {
        this.#enqueue(sub, msg);
        delivered++;
      } else {
        groups ??= new Map();
        const g = groups.get(sub.queue);
        if (g) g.push(sub);
        else groups.set(sub.queue, [sub]);
      }
    }
    if (groups) {
      for (const [name, members] of groups) {
        const i = (this.#queueCursor.get(name) ?? 0) % members.length;
        this.#queueCursor.set(name, i + 1);
        this.#enqueue(members[i], msg);
        delivered++;
      }
    }
    return delivered;
  }

  subscribe(subject: string, handler: BusHandler, options?: SubscribeOptions): BusSubscription {
    if (this.#status === "closed") {
      throw new BackbeatError("closed", `Cannot subscribe to ${subject}: the bus is closed`);
    }
    assertSubject(subject, true);
    if (typeof handler !== "function") {
      throw new TypeError("Cannot subscribe: handler is not a function");
    }
    const sub = new MemorySubscription(this, subject, handler, options?.queue);
    this.#subs.add(sub);
    return sub;
  }

  flush(): Promise<void> {
    if (this.#inflight === 0) return Promise.resolve();
    return new Promise((resolve) => this.#idle.push(resolve));
  }

  async close(): Promise<void> {
    if (this.#status === "closed") return;
    await this.flush();
    this.#status = "closed";
    for (const sub of [...this.#subs]) sub.unsubscribe();
    this.#queueCursor.clear();
    this.dispatchEvent(
      new CustomEvent<BusStatusDetail>("status", { detail: { status: "closed", reconnects: 0 } }),
    );
  }

  /** Closes, for `await using`. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  /** @ignore Called by a subscription when it ends. */
  _remove(sub: MemorySubscription): void {
    this.#subs.delete(sub);
    this.#settle(0);
  }

  #enqueue(sub: MemorySubscription, msg: BusMessage): void {
    if (sub.pending.length >= this.#maxPending) {
      sub.dropped++;
      this.dispatchEvent(
        new ErrorEvent("error", {
          message: `Slow consumer on ${sub.subject}: ${sub.dropped} messages dropped`,
          error: new BackbeatError("connection", `Slow consumer on ${sub.subject}`),
        }),
      );
      return;
    }
    sub.pending.push(msg);
    if (!sub.scheduled) {
      sub.scheduled = true;
      this.#inflight++;
      // Delivery is asynchronous, as over a network: a publisher never re-enters its handlers.
      queueMicrotask(() => this.#drain(sub));
    }
  }

  #drain(sub: MemorySubscription): void {
    const batch = sub.pending;
    sub.pending = [];
    sub.scheduled = false;
    for (const msg of batch) {
      if (sub.closed) break;
      try {
        sub.handler(msg);
      } catch (error) {
        this.dispatchEvent(
          new ErrorEvent("error", {
            message: `Subscription handler for ${sub.subject} threw: ${error}`,
            error,
          }),
        );
      }
    }
    this.#settle(1);
  }

  #settle(done: number): void {
    this.#inflight -= done;
    if (this.#inflight === 0 && this.#idle.length > 0) {
      const waiting = this.#idle;
      this.#idle = [];
      for (const resolve of waiting) resolve();
    }
  }
}

// Test helpers for the SDK client: a bus whose connection can be cut, a quiet logger, a beat
// recorder; the hand-driven beat source is public, in testing/, and polling is in ./until.ts.
export { BeatSource } from "../testing/mod.ts";
import {
  BackbeatError,
  type BeatFrame,
  type Bus,
  type BusHandler,
  type BusMessage,
  type BusStatus,
  type BusStatusDetail,
  type BusSubscription,
  type Client,
  InMemoryBus,
  type Logger,
  type PublishOptions,
  type RequestOptions,
  type SubscribeOptions,
} from "../mod.ts";

/** Lets pending I/O (digests, bus deliveries) finish. */
export function settle(): Promise<void> {
  return new Promise((r) => setTimeout(r, 1));
}

/** A logger that keeps what it is told. */
export function quietLogger(): Logger & { lines: string[] } {
  const lines: string[] = [];
  const keep = (...data: unknown[]) => {
    lines.push(data.map(String).join(" "));
  };
  return { lines, debug: keep, info: keep, warn: keep, error: keep };
}

/** Records what a client's beat callbacks receive. */
export function recordBeats(
  client: Client,
): { index: number; synthetic: boolean; at: number; frame: BeatFrame }[] {
  const got: { index: number; synthetic: boolean; at: number; frame: BeatFrame }[] = [];
  client.onBeat((frame, info) => {
    got.push({ index: frame.beat_index, synthetic: info.synthetic, at: info.at, frame });
  });
  return got;
}

/**
 * An InMemoryBus whose connection a test can cut and restore: while down, `publish` throws a
 * `connection` error and `status` events are sent as a NATS bus would.
 */
export class SwitchBus extends EventTarget implements Bus {
  readonly inner: InMemoryBus = new InMemoryBus();
  readonly maxPayload: number = this.inner.maxPayload;
  #status: BusStatus = "connected";
  #reconnects = 0;
  /** Publishes still to fail with a `connection` error although connected (a flapping link). */
  failPublishes = 0;

  get status(): BusStatus {
    return this.#status;
  }
  get reconnects(): number {
    return this.#reconnects;
  }

  set(status: BusStatus): void {
    if (status === "connected" && this.#status !== "connected") this.#reconnects++;
    this.#status = status;
    this.dispatchEvent(
      new CustomEvent<BusStatusDetail>("status", {
        detail: { status, reconnects: this.#reconnects },
      }),
    );
  }

  publish(subject: string, data: Uint8Array, options?: PublishOptions): void {
    if (this.#status !== "connected" || this.failPublishes > 0) {
      if (this.failPublishes > 0) this.failPublishes--;
      throw new BackbeatError("connection", `Cannot publish on ${subject}: disconnected`);
    }
    this.inner.publish(subject, data, options);
  }

  request(subject: string, data: Uint8Array, options?: RequestOptions): Promise<BusMessage> {
    if (this.#status !== "connected") {
      return Promise.reject(
        new BackbeatError("connection", `Cannot request on ${subject}: disconnected`),
      );
    }
    return this.inner.request(subject, data, options);
  }

  subscribe(subject: string, handler: BusHandler, options?: SubscribeOptions): BusSubscription {
    return this.inner.subscribe(subject, handler, options);
  }

  flush(): Promise<void> {
    return this.inner.flush();
  }

  async close(): Promise<void> {
    await this.inner.close();
    this.set("closed");
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}

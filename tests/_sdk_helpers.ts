// Test helpers for the SDK client: a hand-driven beat source (frames exactly as pulse builds
// them, from a Timeline), a bus whose connection can be cut, a quiet logger, and polling.
import {
  BackbeatError,
  type BeatFrame,
  type Bus,
  type BusHandler,
  type BusStatus,
  type BusStatusDetail,
  type BusSubscription,
  type Client,
  type ClientLogger,
  HybridLogicalClock,
  InMemoryBus,
  type PublishOptions,
  subjects,
  type SubscribeOptions,
  Timeline,
} from "../mod.ts";

const enc = new TextEncoder();

/** Waits until `cond()` holds, polling every few ms. */
export async function until(cond: () => boolean, ms = 5000, what = "condition"): Promise<void> {
  const end = performance.now() + ms;
  while (!cond()) {
    if (performance.now() > end) throw new Error(`${what} not met within ${ms} ms`);
    await new Promise((r) => setTimeout(r, 2));
  }
}

/** Lets pending I/O (digests, bus deliveries) finish. */
export function settle(): Promise<void> {
  return new Promise((r) => setTimeout(r, 1));
}

/** A logger that keeps what it is told. */
export function quietLogger(): ClientLogger & { lines: string[] } {
  const lines: string[] = [];
  const keep = (...data: unknown[]) => {
    lines.push(data.map(String).join(" "));
  };
  return { lines, debug: keep, info: keep, warn: keep, error: keep };
}

/** Publishes BeatFrames by hand on a cluster's beat subject, built as pulse builds them. */
export class BeatSource {
  readonly timeline: Timeline;
  readonly #bus: Bus;
  readonly #cluster: string;
  readonly #hlc = new HybridLogicalClock();
  readonly pulseId: string;

  constructor(
    bus: Bus,
    clusterId: string,
    options: { tempoBpm?: number; beatsPerBar?: number; originTime?: number; pulseId?: string } =
      {},
  ) {
    this.#bus = bus;
    this.#cluster = clusterId;
    this.pulseId = options.pulseId ?? "pulse-a";
    this.timeline = new Timeline({
      originTime: options.originTime ?? 0,
      tempoBpm: options.tempoBpm ?? 60,
      beatsPerBar: options.beatsPerBar ?? 4,
    });
  }

  /** The frame pulse would publish for `index`. */
  frame(index: number): Promise<BeatFrame> {
    return this.timeline.frame(this.#cluster, index, this.#hlc.now());
  }

  /** Publishes beat `index` (optionally altered) with pulse's headers. */
  async publish(index: number, alter?: (f: BeatFrame) => unknown): Promise<BeatFrame> {
    const frame = await this.frame(index);
    const body = alter ? alter(frame) ?? frame : frame;
    this.publishRaw(typeof body === "string" ? body : JSON.stringify(body), frame);
    return frame;
  }

  /** Publishes a text as-is on the beat subject. */
  publishRaw(text: string, frame?: BeatFrame): void {
    this.#bus.publish(subjects(this.#cluster).beat, enc.encode(text), {
      headers: {
        "x-window-id": frame?.window_id ?? "",
        "x-hlc": frame?.hlc ?? "",
        "x-pulse-id": this.pulseId,
        "x-fencing-token": "1",
        "x-pulse-sent": String(performance.timeOrigin + performance.now()),
      },
    });
  }
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
}

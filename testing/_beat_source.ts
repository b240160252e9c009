import { type BeatFrame, type Bus, HybridLogicalClock, subjects, Timeline } from "../core/mod.ts";

const enc = new TextEncoder();

/** Options of {@linkcode BeatSource}. */
export interface BeatSourceOptions {
  /** Tempo of the scripted timeline. @default {60} */
  tempoBpm?: number;
  /** Beats in a bar. @default {4} */
  beatsPerBar?: number;
  /** Epoch ms at which beat 0 is due. @default {0} */
  originTime?: number;
  /** The `x-pulse-id` header sent. @default {"pulse-a"} */
  pulseId?: string;
  /** The `x-fencing-token` header sent. @default {1} */
  fencingToken?: number;
}

/**
 * Publishes BeatFrames by hand on a cluster's beat subject, built from a {@linkcode Timeline}
 * exactly as pulse builds them, with pulse's headers. A test decides which beat goes out when,
 * and may alter or replace a frame to try what a client does with it.
 *
 * @example Publish beat 0, then a broken frame
 * ```ts
 * import { BeatSource, InMemoryBus } from "@chorus/backbeat/testing";
 * const bus = new InMemoryBus();
 * const source = new BeatSource(bus, "dev");
 * const frame = await source.publish(0);
 * console.log(frame.downbeat); // true
 * source.publishRaw("{not json");
 * await bus.close();
 * ```
 */
export class BeatSource {
  /** The scripted schedule. */
  readonly timeline: Timeline;
  /** The `x-pulse-id` header sent. */
  readonly pulseId: string;
  readonly #bus: Bus;
  readonly #cluster: string;
  readonly #hlc = new HybridLogicalClock();
  readonly #token: string;

  /**
   * Creates a source; nothing is published until asked.
   *
   * @param bus Where to publish.
   * @param clusterId The cluster whose beat subject is used.
   * @param options Tempo, bar shape, origin and headers.
   */
  constructor(bus: Bus, clusterId: string, options: BeatSourceOptions = {}) {
    this.#bus = bus;
    this.#cluster = clusterId;
    this.pulseId = options.pulseId ?? "pulse-a";
    this.#token = String(options.fencingToken ?? 1);
    this.timeline = new Timeline({
      originTime: options.originTime ?? 0,
      tempoBpm: options.tempoBpm ?? 60,
      beatsPerBar: options.beatsPerBar ?? 4,
    });
  }

  /**
   * The frame pulse would publish for a beat.
   *
   * @param index The beat_index.
   * @returns The frame.
   */
  frame(index: number): Promise<BeatFrame> {
    return this.timeline.frame(this.#cluster, index, this.#hlc.now());
  }

  /**
   * Publishes a beat's frame, optionally altered.
   *
   * @param index The beat_index.
   * @param alter Returns a replacement (an object, or a string sent as-is), or edits in place.
   * @returns The frame as built, before any alteration.
   */
  async publish(index: number, alter?: (frame: BeatFrame) => unknown): Promise<BeatFrame> {
    const frame = await this.frame(index);
    const body = alter ? alter(frame) ?? frame : frame;
    this.publishRaw(typeof body === "string" ? body : JSON.stringify(body), frame);
    return frame;
  }

  /**
   * Publishes a text as-is on the beat subject, with pulse's headers (taken from `frame`).
   *
   * @param text The payload.
   * @param frame The frame whose window id and HLC go in the headers.
   */
  publishRaw(text: string, frame?: BeatFrame): void {
    this.#bus.publish(subjects(this.#cluster).beat, enc.encode(text), {
      headers: {
        "x-window-id": frame?.window_id ?? "",
        "x-hlc": frame?.hlc ?? "",
        "x-pulse-id": this.pulseId,
        "x-fencing-token": this.#token,
        "x-pulse-sent": String(performance.timeOrigin + performance.now()),
      },
    });
  }
}

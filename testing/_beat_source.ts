import {
  type BeatFrame,
  type Bus,
  type Clock,
  HybridLogicalClock,
  importSigningKey,
  type SigningKey,
  type SigningKeyInput,
  signMessage,
  subjects,
  Timeline,
} from "../core/mod.ts";

const enc = new TextEncoder();

// The epoch a receiver binds the signature to: the one in what it receives (0 when absent or
// unreadable), so an altered frame is signed as sent.
function epochOf(text: string): number {
  try {
    const epoch: unknown = JSON.parse(text)?.epoch;
    return Number.isSafeInteger(epoch) && (epoch as number) >= 0 ? epoch as number : 0;
  } catch {
    return 0;
  }
}

/** Options of {@linkcode BeatSource}. */
export interface BeatSourceOptions {
  /** Tempo of the scripted timeline. @default {60} */
  tempoBpm?: number;
  /** Beats in a bar. @default {4} */
  beatsPerBar?: number;
  /** Epoch ms at which beat 0 is due. @default {0} */
  originTime?: number;
  /**
   * The timeline's epoch, sent as the frames' `epoch` when above 0 (a pulse that started a new
   * timeline has a greater one). Window ids are derived with it, as pulse derives them.
   * @default {0}
   */
  epoch?: number;
  /** The `x-pulse-id` header sent. @default {"pulse-a"} */
  pulseId?: string;
  /** The `x-fencing-token` header sent. @default {1} */
  fencingToken?: number;
  /**
   * Signs what {@linkcode BeatSource.publish} sends as pulse does (`x-signature`, `x-key-id`
   * over `backbeat.beatframe.v1`, the cluster and the frame's epoch), for clients configured with
   * `pulseKeys`: a private `CryptoKey`, PKCS#8 bytes, a 32-byte seed or a private JWK. Unsigned
   * without it.
   * @default {undefined}
   */
  signingKey?: SigningKeyInput;
  /** The `x-key-id` sent with signed frames. @default {derived from the public key} */
  keyId?: string;
  /**
   * Pulse's clock: it stamps `x-pulse-sent` and the frames' HLC. Give the clock a test's pulse
   * runs on (a `ManualClock`, or one running ahead of the client's) so the send instants agree
   * with the timeline; its timers are not used.
   * @default {the system clock, `performance.timeOrigin + performance.now()`}
   */
  clock?: Clock;
}

/**
 * Publishes BeatFrames by hand on a cluster's beat subject, built from a {@linkcode Timeline}
 * exactly as pulse builds them, with pulse's headers (and pulse's signature, given a signing
 * key). A test decides which beat goes out when, and may alter or replace a frame to try what a
 * client does with it.
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
  readonly #hlc: HybridLogicalClock;
  readonly #now: () => number;
  readonly #token: string;
  readonly #keyInput: SigningKeyInput | undefined;
  readonly #keyId: string | undefined;
  #key: Promise<SigningKey> | undefined;

  /**
   * Creates a source; nothing is published until asked.
   *
   * @param bus Where to publish.
   * @param clusterId The cluster whose beat subject is used.
   * @param options Tempo, bar shape, origin, epoch, headers, signing key and clock.
   * @throws {RangeError} On a tempo, bar shape or epoch out of range.
   */
  constructor(bus: Bus, clusterId: string, options: BeatSourceOptions = {}) {
    this.#bus = bus;
    this.#cluster = clusterId;
    this.pulseId = options.pulseId ?? "pulse-a";
    this.#token = String(options.fencingToken ?? 1);
    this.#keyInput = options.signingKey;
    this.#keyId = options.keyId;
    const clock = options.clock;
    this.#now = clock === undefined
      ? () => performance.timeOrigin + performance.now()
      : () => clock.now();
    this.#hlc = new HybridLogicalClock({ clock: this.#now });
    this.timeline = new Timeline({
      originTime: options.originTime ?? 0,
      tempoBpm: options.tempoBpm ?? 60,
      beatsPerBar: options.beatsPerBar ?? 4,
      epoch: options.epoch ?? 0,
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
   * Publishes a beat's frame, optionally altered, signed when the source has a signing key (the
   * signature covers what is sent, bound to the sent frame's epoch: an altered frame is signed as
   * altered, as a compromised pulse would).
   *
   * @param index The beat_index.
   * @param alter Returns a replacement (an object, or a string sent as-is), or edits in place.
   * @returns The frame as built, before any alteration.
   * @throws {BackbeatError} `key` when the signing key cannot be imported.
   */
  async publish(index: number, alter?: (frame: BeatFrame) => unknown): Promise<BeatFrame> {
    const frame = await this.frame(index);
    const body = alter ? alter(frame) ?? frame : frame;
    const text = typeof body === "string" ? body : JSON.stringify(body);
    if (this.#keyInput === undefined) {
      this.publishRaw(text, frame);
      return frame;
    }
    this.#key ??= importSigningKey(this.#keyInput, this.#keyId);
    const key = await this.#key;
    const data = enc.encode(text);
    const signature = await signMessage(
      key,
      "backbeat.beatframe.v1",
      this.#cluster,
      data,
      epochOf(text),
    );
    this.#send(data, frame, signature);
    return frame;
  }

  /**
   * Publishes a text as-is on the beat subject, with pulse's headers (taken from `frame`), never
   * signed: for junk and forgeries.
   *
   * @param text The payload.
   * @param frame The frame whose window id and HLC go in the headers.
   */
  publishRaw(text: string, frame?: BeatFrame): void {
    this.#send(enc.encode(text), frame, undefined);
  }

  #send(
    data: Uint8Array,
    frame: BeatFrame | undefined,
    signed: Record<string, string> | undefined,
  ) {
    this.#bus.publish(subjects(this.#cluster).beat, data, {
      headers: {
        "x-window-id": frame?.window_id ?? "",
        "x-hlc": frame?.hlc ?? "",
        "x-pulse-id": this.pulseId,
        "x-fencing-token": this.#token,
        "x-pulse-sent": String(this.#now()),
        ...signed,
      },
    });
  }
}

// One subscription per (bus, cluster) for the whole process: each frame is decoded, parsed and
// validated once, then handed to every client following that cluster on that bus. Clients with
// pulse keys get frames through a verifier of their keyring: each frame's signature is checked
// once per keyring, whatever the number of clients holding it, and never shared with clients of
// another keyring. Keyed by the bus object in a WeakMap, so a bus that is dropped takes its feeds
// with it.
import {
  type BeatFrame,
  type Bus,
  type BusHeaders,
  type BusMessage,
  type BusSubscription,
  type Keyring,
  type SignatureCheck,
  type SignatureFailure,
  subjects,
  verifySigned,
} from "../core/mod.ts";
import { decodeBeatFrame } from "../schemas/mod.ts";

/** Frames waiting on their signature check, per keyring; beyond it frames are refused. */
export const MAX_VERIFY_BACKLOG = 256;

/** Why the frame gate refused a message: size, JSON, schema, type or cluster. */
export type GateFailure = "size" | "json" | "schema" | "type" | "cluster";

/**
 * Why a feed refused a message: the gate's reasons, a signature failure, or `verify_backlog`
 * (more than {@linkcode MAX_VERIFY_BACKLOG} frames were already waiting on verification).
 */
export type FeedRejection = GateFailure | SignatureFailure | "verify_backlog";

/** A frame as every client of a feed receives it. */
export interface FeedFrame {
  /** The validated frame, frozen: it is shared by all clients. */
  readonly frame: BeatFrame;
  /** The message headers. */
  readonly headers: BusHeaders | undefined;
  /** `x-pulse-sent` (pulse's publish instant, epoch ms) when present and numeric. */
  readonly sentAt: number | undefined;
}

/** A client's view of a feed. */
export interface FeedListener {
  /** Frames must verify against these pulse keys; `undefined` takes them unverified. */
  readonly keyring: Keyring | undefined;
  /**
   * A frame of the feed's cluster passed the gate (and, with a keyring, its signature verified),
   * in the order frames arrived.
   */
  frame(frame: FeedFrame, verified: boolean): void;
  /** A message on the beat subject was refused, with a sentence saying why. */
  rejected(reason: FeedRejection, detail: string): void;
}

// The gate says why in a sentence; clients count by a stable reason.
function gateReason(sentence: string): GateFailure {
  if (sentence.startsWith("frame of cluster")) return "cluster";
  if (sentence.startsWith("frame of ")) return "size";
  if (sentence.startsWith("frame is not JSON")) return "json";
  if (sentence.startsWith("message of type")) return "type";
  return "schema";
}

function notify(
  listeners: readonly FeedListener[],
  reason: FeedRejection,
  detail: string,
): void {
  for (const l of listeners) {
    try {
      l.rejected(reason, detail);
    } catch { /* reported by the listener */ }
  }
}

interface Waiting {
  readonly frame: FeedFrame;
  result: SignatureCheck | undefined;
}

/**
 * The clients of one keyring on a feed, and the frames waiting on their signature check.
 * Checks run concurrently; frames are handed on strictly in arrival order, so a frame whose
 * check finished early waits for the ones before it.
 */
export class FrameVerifier {
  /** The pulse keys. */
  readonly keyring: Keyring;
  /** Frames whose signature verified. */
  verified = 0;
  /** Frames refused (bad or missing signature, or a full backlog). */
  refused = 0;
  #clusterId: string;
  #listeners: readonly FeedListener[] = [];
  #waiting: Waiting[] = [];
  #closed = false;
  #idle: (() => void)[] = [];

  constructor(keyring: Keyring, clusterId: string) {
    this.keyring = keyring;
    this.#clusterId = clusterId;
  }

  /** Listeners attached. */
  get listeners(): readonly FeedListener[] {
    return this.#listeners;
  }

  /** Frames waiting on their check now. */
  get backlog(): number {
    return this.#waiting.length;
  }

  add(listener: FeedListener): void {
    this.#listeners = [...this.#listeners, listener];
  }

  /** @returns Whether listeners are left. */
  remove(listener: FeedListener): boolean {
    this.#listeners = this.#listeners.filter((l) => l !== listener);
    if (this.#listeners.length > 0) return true;
    this.#closed = true;
    this.#waiting = [];
    this.#wake();
    return false;
  }

  /** Resolves when no frame waits on its check. */
  idle(): Promise<void> {
    if (this.#waiting.length === 0) return Promise.resolve();
    return new Promise((resolve) => this.#idle.push(resolve));
  }

  push(frame: FeedFrame, data: Uint8Array): void {
    const headers = frame.headers;
    // Refused before queueing when no check could pass, so junk without a signature or with an
    // unknown key id never takes a place a real frame needs. verifySigned decides the rest.
    const signature = headers?.["x-signature"];
    const keyId = headers?.["x-key-id"];
    if (!signature || !keyId) return this.#refuse("unsigned", "no x-signature or x-key-id");
    if (this.keyring.findKey(keyId) === undefined) {
      return this.#refuse("unknown_key", `no pulse key ${JSON.stringify(keyId.slice(0, 64))}`);
    }
    if (this.#waiting.length >= MAX_VERIFY_BACKLOG) {
      return this.#refuse(
        "verify_backlog",
        `${MAX_VERIFY_BACKLOG} frames already wait on their signature check`,
      );
    }
    const entry: Waiting = { frame, result: undefined };
    this.#waiting.push(entry);
    const settle = (result: SignatureCheck) => {
      entry.result = result;
      this.#drain();
    };
    verifySigned(this.keyring, "backbeat.beatframe.v1", this.#clusterId, data, headers, {
      epoch: frame.frame.epoch ?? 0,
    }).then(settle, () => settle({ ok: false, reason: "bad_signature" }));
  }

  #refuse(reason: FeedRejection, detail: string): void {
    this.refused++;
    notify(this.#listeners, reason, detail);
  }

  #drain(): void {
    if (this.#closed) return;
    const waiting = this.#waiting;
    while (waiting.length > 0 && waiting[0].result !== undefined) {
      const { frame, result } = waiting.shift()!;
      if (!result!.ok) {
        const reason = result!.reason;
        this.#refuse(reason, `beat ${frame.frame.beat_index}: ${reason.replace("_", " ")}`);
        continue;
      }
      this.verified++;
      for (const l of this.#listeners) {
        try {
          l.frame(frame, true);
        } catch { /* reported by the listener */ }
      }
    }
    if (waiting.length === 0) this.#wake();
  }

  #wake(): void {
    const waiters = this.#idle;
    this.#idle = [];
    for (const resolve of waiters) resolve();
  }
}

/** The shared subscription of one (bus, cluster). Exported for tests. */
export class BeatFeed {
  /** The cluster. */
  readonly clusterId: string;
  /** Frames parsed so far (each once, whatever the number of listeners). */
  parsed = 0;
  /** Messages the gate rejected so far. */
  rejected = 0;
  #plain: readonly FeedListener[] = [];
  #verifiers = new Map<Keyring, FrameVerifier>();
  #size = 0;
  #sub: BusSubscription;
  #onEmpty: () => void;

  constructor(bus: Bus, clusterId: string, onEmpty: () => void) {
    this.clusterId = clusterId;
    this.#onEmpty = onEmpty;
    this.#sub = bus.subscribe(subjects(clusterId).beat, (m) => this.#receive(m));
  }

  /** Listeners attached. */
  get size(): number {
    return this.#size;
  }

  /**
   * The verifier of a keyring, while a listener holds it.
   *
   * @param keyring The pulse keys.
   * @returns The verifier, or `undefined`.
   */
  verifierOf(keyring: Keyring): FrameVerifier | undefined {
    return this.#verifiers.get(keyring);
  }

  /** Resolves when no frame waits on a signature check. */
  async idle(): Promise<void> {
    await Promise.all([...this.#verifiers.values()].map((v) => v.idle()));
  }

  add(listener: FeedListener): () => void {
    const keyring = listener.keyring;
    // Copy on write: a frame being fanned out keeps the list it started with.
    if (keyring === undefined) this.#plain = [...this.#plain, listener];
    else {
      let v = this.#verifiers.get(keyring);
      if (!v) {
        v = new FrameVerifier(keyring, this.clusterId);
        this.#verifiers.set(keyring, v);
      }
      v.add(listener);
    }
    this.#size++;
    let removed = false;
    return () => {
      if (removed) return;
      removed = true;
      this.#size--;
      if (keyring === undefined) this.#plain = this.#plain.filter((l) => l !== listener);
      else if (this.#verifiers.get(keyring)?.remove(listener) === false) {
        this.#verifiers.delete(keyring);
      }
      if (this.#size === 0) {
        this.#sub.unsubscribe();
        this.#onEmpty();
      }
    };
  }

  #receive(message: BusMessage): void {
    const plain = this.#plain;
    const checked = this.#check(message);
    if (typeof checked === "string") {
      this.rejected++;
      const reason = gateReason(checked);
      notify(plain, reason, checked);
      for (const v of this.#verifiers.values()) notify(v.listeners, reason, checked);
      return;
    }
    for (const l of plain) {
      // A listener guards its own callbacks; this only keeps one broken listener from starving
      // the rest.
      try {
        l.frame(checked, false);
      } catch { /* reported by the listener */ }
    }
    for (const v of this.#verifiers.values()) v.push(checked, message.data);
  }

  #check(message: BusMessage): FeedFrame | string {
    this.parsed++;
    const frame = decodeBeatFrame(message.data, this.clusterId);
    if (typeof frame === "string") return frame;
    const sent = message.headers?.["x-pulse-sent"];
    const sentAt = sent === undefined ? undefined : Number(sent);
    return {
      frame: Object.freeze(frame),
      headers: message.headers,
      sentAt: sentAt !== undefined && Number.isFinite(sentAt) ? sentAt : undefined,
    };
  }
}

const feeds = new WeakMap<Bus, Map<string, BeatFeed>>();

/** A listener's place on a feed. */
export interface FeedMembership {
  /** The shared feed: its counters cover every client of the process on this bus and cluster. */
  readonly feed: BeatFeed;
  /** Detaches the listener (idempotent); the last detach unsubscribes. */
  readonly leave: () => void;
}

/**
 * Attaches a listener to the process-wide feed of a (bus, cluster), subscribing on first use.
 *
 * @param bus The bus.
 * @param clusterId The cluster.
 * @param listener The listener (with its keyring, if frames must verify).
 * @returns The feed and the listener's detach.
 * @throws {BackbeatError} `closed` when the bus is closed.
 */
export function joinBeatFeed(
  bus: Bus,
  clusterId: string,
  listener: FeedListener,
): FeedMembership {
  let byCluster = feeds.get(bus);
  if (!byCluster) {
    byCluster = new Map();
    feeds.set(bus, byCluster);
  }
  let feed = byCluster.get(clusterId);
  if (!feed) {
    const map = byCluster;
    const created: BeatFeed = new BeatFeed(bus, clusterId, () => {
      if (map.get(clusterId) === created) map.delete(clusterId);
    });
    feed = created;
    map.set(clusterId, feed);
  }
  return { feed, leave: feed.add(listener) };
}

/**
 * The live feed of a (bus, cluster), for tests and diagnostics.
 *
 * @param bus The bus.
 * @param clusterId The cluster.
 * @returns The feed, or `undefined` when no client follows it.
 */
export function beatFeedOf(bus: Bus, clusterId: string): BeatFeed | undefined {
  return feeds.get(bus)?.get(clusterId);
}

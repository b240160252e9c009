// One subscription per (bus, cluster) for the whole process: each frame is decoded, parsed and
// validated once, then handed to every client following that cluster on that bus. Keyed by the
// bus object in a WeakMap, so a bus that is dropped takes its feeds with it.
import {
  type BeatFrame,
  type Bus,
  type BusHeaders,
  type BusMessage,
  type BusSubscription,
  subjects,
} from "../core/mod.ts";
import { decodeBeatFrame } from "../schemas/mod.ts";

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
  /** A valid frame of the feed's cluster arrived. */
  frame(frame: FeedFrame): void;
  /** A message on the beat subject was not a valid frame of the cluster. */
  invalid(reason: string): void;
}

/** The shared subscription of one (bus, cluster). Exported for tests. */
export class BeatFeed {
  /** The cluster. */
  readonly clusterId: string;
  /** Frames parsed so far (each once, whatever the number of listeners). */
  parsed = 0;
  /** Messages rejected so far. */
  rejected = 0;
  #listeners: readonly FeedListener[] = [];
  #sub: BusSubscription;
  #onEmpty: () => void;

  constructor(bus: Bus, clusterId: string, onEmpty: () => void) {
    this.clusterId = clusterId;
    this.#onEmpty = onEmpty;
    this.#sub = bus.subscribe(subjects(clusterId).beat, (m) => this.#receive(m));
  }

  /** Listeners attached. */
  get size(): number {
    return this.#listeners.length;
  }

  add(listener: FeedListener): () => void {
    // Copy on write: a frame being fanned out keeps the list it started with.
    this.#listeners = [...this.#listeners, listener];
    let removed = false;
    return () => {
      if (removed) return;
      removed = true;
      this.#listeners = this.#listeners.filter((l) => l !== listener);
      if (this.#listeners.length === 0) {
        this.#sub.unsubscribe();
        this.#onEmpty();
      }
    };
  }

  #receive(message: BusMessage): void {
    const listeners = this.#listeners;
    const reason = this.#check(message);
    if (typeof reason === "string") {
      this.rejected++;
      for (const l of listeners) {
        try {
          l.invalid(reason);
        } catch { /* reported by the listener */ }
      }
      return;
    }
    for (const l of listeners) {
      // A listener guards its own callbacks; this only keeps one broken listener from starving
      // the rest.
      try {
        l.frame(reason);
      } catch { /* reported by the listener */ }
    }
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
 * @param listener The listener.
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

import type { Bus } from "../core/mod.ts";

/** Default for {@linkcode NatsBusOptions.maxReconnectWait}. */
export const DEFAULT_MAX_RECONNECT_WAIT_MS = 10_000;

/**
 * Default lease time to live (`KvLeaseOptions.ttlMs`), the one lease TTL of pulse and reverb:
 * short enough that a follower takes over a dead holder within 2 beats at 120 BPM, long enough
 * to ride out a busy event loop. Here, not beside the lease, so reading it loads no nats.js.
 */
export const DEFAULT_LEASE_TTL_MS = 600;

/** Options of `connectNatsBus()`. */
export interface NatsBusOptions {
  /** Server URL(s), e.g. `nats://localhost:4222`. */
  servers: string | string[];
  /** Connection name shown by the server. @default {"backbeat"} */
  name?: string;
  /** User name. @default {undefined} */
  user?: string;
  /** Password. @default {undefined} */
  pass?: string;
  /** Auth token. @default {undefined} */
  token?: string;
  /** Reconnect attempts; -1 reconnects forever. @default {-1} */
  maxReconnectAttempts?: number;
  /** First wait between reconnect attempts in ms; it doubles per failure (with jitter). @default {250} */
  reconnectTimeWait?: number;
  /** Longest wait between reconnect attempts in ms. @default {10000} */
  maxReconnectWait?: number;
  /** Connect timeout in ms. @default {5000} */
  timeout?: number;
  /** Keep retrying when the first connect fails instead of throwing. @default {false} */
  waitOnFirstConnect?: boolean;
}

/**
 * A {@linkcode Bus} over a real NATS server, with access to the underlying nats.js connection
 * for JetStream and KV. Obtain one with {@linkcode connectNatsBus}.
 */
export interface NatsBusLike extends Bus {
  /** The underlying nats.js `NatsConnection`. */
  readonly connection: unknown;
  /** The server URL it was asked to connect to (first one). */
  readonly url: string;
}

/** NATS connection options of a client: {@linkcode NatsBusOptions} without `servers`. */
export type NatsConnectionOptions = Omit<NatsBusOptions, "servers">;

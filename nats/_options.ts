import type { Bus } from "../core/mod.ts";

/** Default for {@linkcode NatsBusOptions.maxReconnectWait}. */
export const DEFAULT_MAX_RECONNECT_WAIT_MS = 10_000;

/**
 * Default lease time to live (`KvLeaseOptions.ttlMs`), the one lease TTL of pulse and reverb:
 * short enough that a follower takes over a dead holder within 2 beats at 120 BPM, long enough
 * to ride out a busy event loop. Here, not beside the lease, so reading it loads no nats.js.
 */
export const DEFAULT_LEASE_TTL_MS = 600;

/**
 * Options of `connectNatsBus()`: servers, credentials, TLS and reconnect policy; the one set of
 * NATS connection settings of pulse, reverb, the SDK and the examples.
 *
 * Credentials: at most one of `user`/`pass`, `token`, `nkeySeed`/`nkeySeedFile`,
 * `creds`/`credsFile`, or credentials in the server URLs (`nats://user:pass@host:4222`, or
 * `nats://token@host:4222`; percent-encoded). Files are read when connecting; prefer them to
 * secrets in options, URLs or command lines.
 *
 * TLS: a server that requires TLS is always met with TLS (trusting the system's CAs unless
 * `caFile` is given). `requireTls`, a `tls://` URL or any TLS file makes TLS mandatory: a server
 * without TLS is refused.
 */
export interface NatsBusOptions {
  /**
   * Server URL(s): `nats://host:port`, `tls://host:port` or `host:port`, optionally with
   * credentials. With several, nats.js dials them in random order and fails over between them;
   * it also learns the other nodes of a cluster from the server.
   */
  servers: string | string[];
  /** Connection name shown by the server. @default {"backbeat"} */
  name?: string;
  /** User name. @default {undefined} */
  user?: string;
  /** Password (with `user`). @default {undefined} */
  pass?: string;
  /** Auth token. @default {undefined} */
  token?: string;
  /** An NKey user seed (`SU...`). @default {undefined} */
  nkeySeed?: string;
  /** A file holding an NKey user seed (`SU...`), read when connecting. @default {undefined} */
  nkeySeedFile?: string;
  /** User credentials in the `.creds` format (JWT and seed). @default {undefined} */
  creds?: string;
  /** A `.creds` file (JWT and seed, as `nsc` writes it), read when connecting. @default {undefined} */
  credsFile?: string;
  /** PEM file of the CA(s) to trust for the server's certificate. @default {undefined, the system's CAs} */
  caFile?: string;
  /** PEM client certificate for servers that verify clients (with `keyFile`). @default {undefined} */
  certFile?: string;
  /** PEM private key of `certFile`. @default {undefined} */
  keyFile?: string;
  /** Refuse a server that does not offer TLS. @default {false, true with a TLS file or a tls:// URL} */
  requireTls?: boolean;
  /**
   * Prefix of reply subjects (request/reply, JetStream and KV calls), e.g. `_INBOX_pulse`, so a
   * server can confine each role to its own inboxes. @default {"_INBOX"}
   */
  inboxPrefix?: string;
  /** Dial the servers in the given order instead of a random one. @default {false} */
  noRandomize?: boolean;
  /** Reconnect attempts per server; -1 reconnects forever. @default {-1} */
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
  /** The server URL it was asked to connect to (the first one), with its secret redacted. */
  readonly url: string;
}

/** NATS connection options of a client: {@linkcode NatsBusOptions} without `servers`. */
export type NatsConnectionOptions = Omit<NatsBusOptions, "servers">;

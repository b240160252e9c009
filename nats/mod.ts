/**
 * BACKBEAT over a real NATS server: `connectNatsBus()` and its options (servers of a cluster,
 * user/password, token, NKey, `.creds`, TLS), URL redaction, the process-wide shared connection
 * pool, the reconnect backoff, and the JetStream KV leadership lease pulse and reverb share for
 * high availability.
 *
 * nats.js is loaded on first use (dynamic imports), so importing this module costs an embedded
 * user nothing. Imports only `core/`.
 *
 * @example Connect and close
 * ```ts ignore
 * import { connectNatsBus } from "@chorus/backbeat/nats";
 * const bus = await connectNatsBus({ servers: "nats://127.0.0.1:4222" });
 * await bus.close();
 * ```
 *
 * @example A TLS cluster with NKey authentication
 * ```ts ignore
 * import { connectNatsBus } from "@chorus/backbeat/nats";
 * const bus = await connectNatsBus({
 *   servers: ["tls://n1.example:4222", "tls://n2.example:4222", "tls://n3.example:4222"],
 *   nkeySeedFile: "/etc/backbeat/pulse.nk",
 *   caFile: "/etc/backbeat/ca.pem",
 * });
 * console.log(bus.url); // the first URL, any secret shown as ***
 * await bus.close();
 * ```
 *
 * @module
 */
export { connectNatsBus } from "./_connect.ts";
export {
  DEFAULT_LEASE_TTL_MS,
  DEFAULT_MAX_RECONNECT_WAIT_MS,
  type NatsBusLike,
  type NatsBusOptions,
  type NatsConnectionOptions,
} from "./_options.ts";
export { leaseNatsBus, type NatsLease, natsPoolStats } from "./_pool.ts";
export { kvBucketName } from "./_bucket.ts";
export { redactUrl } from "./_url.ts";
export { validateNatsBusOptions } from "./_settings.ts";
export { openKvLease } from "./_open_lease.ts";
export type {
  KvJsonEntry,
  KvLease,
  KvLeaseEventMap,
  KvLeaseOptions,
  LeaseEventDetail,
  LeaseLossReason,
} from "./_lease.ts";

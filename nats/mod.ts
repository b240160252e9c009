/**
 * BACKBEAT over a real NATS server: `connectNatsBus()` and its options, the process-wide shared
 * connection pool, the reconnect backoff, and the JetStream KV leadership lease pulse and reverb
 * share for high availability.
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
export { openKvLease } from "./_open_lease.ts";
export type {
  KvJsonEntry,
  KvLease,
  KvLeaseEventMap,
  KvLeaseOptions,
  LeaseEventDetail,
  LeaseLossReason,
} from "./_lease.ts";

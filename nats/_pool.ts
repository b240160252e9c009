// Clients in one process share one NATS connection per (server URLs, credentials, TLS): a
// refcounted cache, closed (drained) when its last client stops.
import { connectNatsBus } from "./_connect.ts";
import type { NatsBusLike, NatsConnectionOptions } from "./_options.ts";
import { planConnection } from "./_settings.ts";

interface Entry {
  refs: number;
  bus: Promise<NatsBusLike>;
}

const pool = new Map<string, Entry>();

/** A shared connection held by one client. */
export interface NatsLease {
  /** The shared bus. */
  readonly bus: NatsBusLike;
  /** Gives the lease back; the last one closes the connection. Idempotent. */
  release(): Promise<void>;
}

// Everything that decides where and as whom a connection logs in (and its inbox prefix, which
// permissions may depend on); the name and the reconnect policy do not split the pool. The key
// holds secrets and stays in this module's map.
function keyOf(url: string | readonly string[], options: NatsConnectionOptions): string {
  const plan = planConnection({ ...options, servers: typeof url === "string" ? url : [...url] });
  return JSON.stringify([
    plan.servers,
    plan.auth,
    plan.requireTls,
    plan.caFile ?? null,
    plan.certFile ?? null,
    plan.keyFile ?? null,
    plan.inboxPrefix ?? null,
  ]);
}

/**
 * Takes a lease on the process's connection to `url` with these credentials, connecting on
 * first use.
 *
 * @param url The server URL, or the URLs of a cluster's nodes.
 * @param options Credentials, TLS and reconnect policy (the reconnect policy and the name of
 * the first lease win).
 * @returns The lease.
 * @throws {TypeError} On bad options, as `connectNatsBus()`.
 * @throws {BackbeatError} `connection` when the connection cannot be made.
 *
 * @example Share one connection between two clients
 * ```ts ignore
 * import { leaseNatsBus } from "@chorus/backbeat/nats";
 * const a = await leaseNatsBus("nats://127.0.0.1:4222");
 * const b = await leaseNatsBus("nats://127.0.0.1:4222");
 * console.log(a.bus === b.bus); // true
 * await a.release();
 * await b.release(); // the last release closes the connection
 * ```
 */
export async function leaseNatsBus(
  url: string | readonly string[],
  options: NatsConnectionOptions = {},
): Promise<NatsLease> {
  const key = keyOf(url, options);
  let entry = pool.get(key);
  if (entry) {
    // A connection closed for good (reconnect attempts exhausted) is not reused.
    const existing = await entry.bus.catch(() => undefined);
    if (existing?.status === "closed" && pool.get(key) === entry) pool.delete(key);
    entry = pool.get(key);
  }
  if (!entry) {
    entry = {
      refs: 0,
      bus: connectNatsBus({ ...options, servers: typeof url === "string" ? url : [...url] }),
    };
    pool.set(key, entry);
  }
  const held = entry;
  held.refs++;
  let bus: NatsBusLike;
  try {
    bus = await held.bus;
  } catch (error) {
    held.refs--;
    if (pool.get(key) === held) pool.delete(key);
    throw error;
  }
  let released = false;
  return {
    bus,
    async release() {
      if (released) return;
      released = true;
      held.refs--;
      if (held.refs > 0) return;
      if (pool.get(key) === held) pool.delete(key);
      await bus.close();
    },
  };
}

/**
 * Connections open in the pool, with their lease counts (for tests and diagnostics).
 *
 * @returns One entry per connection.
 */
export function natsPoolStats(): { connections: number; leases: number } {
  let leases = 0;
  for (const e of pool.values()) leases += e.refs;
  return { connections: pool.size, leases };
}

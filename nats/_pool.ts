// Clients in one process share one NATS connection per (server URL, credentials): a refcounted
// cache, closed (drained) when its last client stops.
import { connectNatsBus } from "./_connect.ts";
import type { NatsBusLike, NatsConnectionOptions } from "./_options.ts";

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

function keyOf(url: string, options: NatsConnectionOptions): string {
  return JSON.stringify([url, options.user ?? null, options.pass ?? null, options.token ?? null]);
}

/**
 * Takes a lease on the process's connection to `url` with these credentials, connecting on
 * first use.
 *
 * @param url The server URL.
 * @param options Credentials and reconnect policy (used by the first lease only).
 * @returns The lease.
 * @throws {BackbeatError} `connection` when the connection cannot be made.
 */
export async function leaseNatsBus(
  url: string,
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
    entry = { refs: 0, bus: connectNatsBus({ ...options, servers: url }) };
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

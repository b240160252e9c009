import type { NatsBusLike, NatsBusOptions } from "./_options.ts";

/**
 * Connects a {@linkcode Bus} to NATS. The nats.js client is loaded here, on first use, so an
 * embedded user never loads it.
 *
 * Credentials in a server URL (`nats://user:pass@host:4222`, `nats://token@host:4222`) are
 * taken out of it and presented like the `user`/`pass` or `token` options; files (`credsFile`,
 * `nkeySeedFile`, `caFile`, `certFile`, `keyFile`) are read now. A refused login fails at once,
 * as `Cannot connect to nats://alice:***@127.0.0.1:4222: authorization violation`; error
 * messages and the bus's `url` show URLs through `redactUrl()`.
 *
 * @param options Servers, credentials, TLS, reconnect policy.
 * @returns A connected bus.
 * @throws {TypeError} On bad options: a malformed URL, two credentials, `certFile` without
 * `keyFile`, a malformed inline `nkeySeed` or `creds`.
 * @throws {BackbeatError} `connection` when a file is missing, unreadable or malformed (the
 * message names the file and the setting, never the content), or when the first connect fails
 * (unless `waitOnFirstConnect`).
 *
 * @example Connect and close
 * ```ts ignore
 * import { connectNatsBus } from "@chorus/backbeat";
 * const bus = await connectNatsBus({ servers: "nats://localhost:4222" });
 * await bus.close();
 * ```
 */
export async function connectNatsBus(options: NatsBusOptions): Promise<NatsBusLike> {
  const { NatsBus } = await import("./_nats_bus.ts");
  return await NatsBus.connect(options);
}

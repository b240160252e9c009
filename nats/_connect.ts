import type { NatsBusLike, NatsBusOptions } from "./_options.ts";

/**
 * Connects a {@linkcode Bus} to NATS. The nats.js client is loaded here, on first use, so an
 * embedded user never loads it.
 *
 * @param options Servers, credentials, reconnect policy.
 * @returns A connected bus.
 * @throws {BackbeatError} `connection` when the first connect fails (unless
 * `waitOnFirstConnect`).
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

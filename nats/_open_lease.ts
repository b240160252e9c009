import type { KvLease, KvLeaseOptions } from "./_lease.ts";

/**
 * Opens a {@linkcode KvLease} on a JetStream KV bucket (created when missing). The KV client is
 * loaded here, on first use, so a service on the embedded bus never loads it.
 *
 * @param options The bus, bucket, holder id and timing.
 * @returns The lease, not yet started.
 * @throws {BackbeatError} `connection` when JetStream or the bucket cannot be reached.
 *
 * @example Lead while the lease is held
 * ```ts ignore
 * import { connectNatsBus, kvBucketName, openKvLease } from "@chorus/backbeat/nats";
 * const bus = await connectNatsBus({ servers: "nats://127.0.0.1:4222" });
 * const lease = await openKvLease({
 *   bus,
 *   bucket: await kvBucketName("dev", "pulse"),
 *   holderId: "p1",
 * });
 * await lease.start();
 * if (lease.isHeld()) console.log("leading with token", lease.token);
 * await lease.release();
 * await bus.close();
 * ```
 */
export async function openKvLease(options: KvLeaseOptions): Promise<KvLease> {
  const { KvLease } = await import("./_lease.ts");
  return await KvLease.open(options);
}

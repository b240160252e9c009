import { assertClusterId } from "../core/mod.ts";

const BUCKET_SAFE = /^[A-Za-z0-9_-]{1,64}$/;

/**
 * Names a KV bucket for a cluster and role, e.g. `backbeat_chorus-dev_pulse`. Cluster ids with
 * characters a bucket name cannot hold are mapped to `_` and suffixed with a SHA-256 prefix so
 * distinct ids never share a bucket.
 *
 * @param clusterId The cluster id.
 * @param role The service, e.g. `pulse` or `reverb` (letters, digits, `_`, `-`).
 * @returns A valid bucket name.
 * @throws {TypeError} On an invalid cluster id or role.
 *
 * @example Name pulse's bucket
 * ```ts ignore
 * import { kvBucketName } from "@chorus/backbeat/nats";
 * console.log(await kvBucketName("chorus-dev", "pulse")); // "backbeat_chorus-dev_pulse"
 * ```
 */
export async function kvBucketName(clusterId: string, role: string): Promise<string> {
  assertClusterId(clusterId);
  if (typeof role !== "string" || !/^[A-Za-z0-9_-]{1,32}$/.test(role)) {
    throw new TypeError(`Invalid role ${JSON.stringify(role)}: expected 1 to 32 of [A-Za-z0-9_-]`);
  }
  if (BUCKET_SAFE.test(clusterId)) return `backbeat_${clusterId}_${role}`;
  const digest = new Uint8Array(
    await crypto.subtle.digest("SHA-256", new TextEncoder().encode(clusterId)),
  );
  const hash = Array.from(digest.subarray(0, 8), (b) => b.toString(16).padStart(2, "0")).join("");
  const safe = clusterId.replace(/[^A-Za-z0-9_-]/g, "_").slice(0, 48);
  return `backbeat_${safe}_${hash}_${role}`;
}

import { assertClusterId } from "./_subjects.ts";

const encoder = new TextEncoder();

/**
 * Derives the window id of a bar: the first 32 hex digits of SHA-256(`<cluster_id>:<epoch>:
 * <beat_index of the bar's downbeat>`), or of `<cluster_id>:<downbeat>` for epoch 0 (the v1.0
 * form). Every pulse, reverb and degraded client derives the same id, and a new timeline (a
 * greater epoch) never reuses one.
 *
 * @param clusterId The cluster id.
 * @param downbeatIndex The beat_index of the bar's downbeat.
 * @param epoch The timeline's epoch. @default {0}
 * @returns 32 lowercase hex digits.
 * @throws {TypeError} When the cluster id is not a valid NATS token.
 * @throws {RangeError} When the index is not a non-negative safe integer.
 *
 * @example Derive a window id
 * ```ts ignore
 * import { windowId } from "./mod.ts";
 * const id = await windowId("chorus-dev", 1336);
 * console.log(id.length); // 32
 * ```
 */
export async function windowId(
  clusterId: string,
  downbeatIndex: number,
  epoch = 0,
): Promise<string> {
  assertClusterId(clusterId);
  if (!Number.isSafeInteger(downbeatIndex) || downbeatIndex < 0) {
    throw new RangeError(`Invalid downbeat index ${downbeatIndex}: expected an integer >= 0`);
  }
  if (!Number.isSafeInteger(epoch) || epoch < 0) {
    throw new RangeError(`Invalid epoch ${epoch}: expected an integer >= 0`);
  }
  const text = epoch === 0
    ? `${clusterId}:${downbeatIndex}`
    : `${clusterId}:${epoch}:${downbeatIndex}`;
  const digest = await crypto.subtle.digest("SHA-256", encoder.encode(text));
  return new Uint8Array(digest, 0, 16).toHex();
}

/** Window ids kept by the process-wide cache (a few bars of several clusters). */
export const WINDOW_CACHE_SIZE = 1_024;

// Process-wide: a window id is a pure function of (cluster, downbeat), so pulse, reverb and every
// client of a cluster in one process share one digest per bar. Only derived ids are stored: an id
// a frame claims is never trusted into the cache.
const cache = new Map<string, string | Promise<string>>();

function put(key: string, value: string | Promise<string>): void {
  cache.delete(key);
  cache.set(key, value);
  // Maps iterate in insertion order: drop the oldest bars.
  while (cache.size > WINDOW_CACHE_SIZE) cache.delete(cache.keys().next().value!);
}

/**
 * The window id of a bar, derived once per process and cached.
 *
 * @param clusterId The cluster id.
 * @param downbeatIndex The bar's downbeat index.
 * @param epoch The timeline's epoch. @default {0}
 * @returns The id.
 * @throws {TypeError} When the cluster id is not a valid NATS token.
 * @throws {RangeError} When the index or epoch is not a non-negative safe integer.
 */
export function cachedWindowId(
  clusterId: string,
  downbeatIndex: number,
  epoch = 0,
): Promise<string> {
  const key = `${clusterId}:${epoch}:${downbeatIndex}`;
  const v = cache.get(key);
  if (v !== undefined) return typeof v === "string" ? Promise.resolve(v) : v;
  const p = windowId(clusterId, downbeatIndex, epoch).then((id) => {
    if (cache.get(key) === p) cache.set(key, id);
    return id;
  }, (error) => {
    if (cache.get(key) === p) cache.delete(key);
    throw error;
  });
  put(key, p);
  return p;
}

/**
 * The window id of a bar if it is already derived (for hot paths that cannot wait on a digest).
 *
 * @param clusterId The cluster id.
 * @param downbeatIndex The bar's downbeat index.
 * @param epoch The timeline's epoch. @default {0}
 * @returns The id, or `undefined` while it is not derived yet.
 */
export function knownWindowId(
  clusterId: string,
  downbeatIndex: number,
  epoch = 0,
): string | undefined {
  const v = cache.get(`${clusterId}:${epoch}:${downbeatIndex}`);
  return typeof v === "string" ? v : undefined;
}

/**
 * Resolves when every window id being derived is known (for tests on a manual clock).
 *
 * @returns Resolves after the pending digests settle.
 */
export async function windowIdsSettled(): Promise<void> {
  await Promise.allSettled([...cache.values()].filter((v) => typeof v !== "string"));
}

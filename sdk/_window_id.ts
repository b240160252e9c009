import { assertClusterId } from "./_subjects.ts";

const encoder = new TextEncoder();
const HEX: string[] = Array.from({ length: 256 }, (_, i) => i.toString(16).padStart(2, "0"));

/**
 * Derives the window id of a bar: the first 32 hex digits of SHA-256(`<cluster_id>:<beat_index
 * of the bar's downbeat>`). Every pulse, reverb and degraded client derives the same id.
 *
 * @param clusterId The cluster id.
 * @param downbeatIndex The beat_index of the bar's downbeat.
 * @returns 32 lowercase hex digits.
 * @throws {TypeError} When the cluster id is not a valid NATS token.
 * @throws {RangeError} When the index is not a non-negative safe integer.
 *
 * @example Derive a window id
 * ```ts
 * import { windowId } from "@chorus/backbeat/sdk";
 * const id = await windowId("chorus-dev", 1336);
 * console.log(id.length); // 32
 * ```
 */
export async function windowId(clusterId: string, downbeatIndex: number): Promise<string> {
  assertClusterId(clusterId);
  if (!Number.isSafeInteger(downbeatIndex) || downbeatIndex < 0) {
    throw new RangeError(`Invalid downbeat index ${downbeatIndex}: expected an integer >= 0`);
  }
  const digest = new Uint8Array(
    await crypto.subtle.digest("SHA-256", encoder.encode(`${clusterId}:${downbeatIndex}`)),
  );
  let out = "";
  for (let i = 0; i < 16; i++) out += HEX[digest[i]];
  return out;
}

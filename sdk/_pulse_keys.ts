// `config.pulseKeys`: a Keyring, or its JSON. Clients given equal JSON get one Keyring object,
// so the process's feed verifies each frame once for all of them (the feed shares verification
// by keyring identity, never across different keys).
import { BackbeatError, Keyring, type KeyringJson } from "../core/mod.ts";

/** Keyrings built from JSON, by a digest of the JSON text (bounded; the oldest is forgotten). */
const MAX_CACHED_KEYRINGS = 16;
const cache = new Map<string, Promise<Keyring>>();
const encoder = new TextEncoder();

/** What the client keeps of `config.pulseKeys` until `start()`. */
export type PulseKeysInput = Keyring | { readonly json: string };

/**
 * Checks and copies `config.pulseKeys` (later changes to the caller's object have no effect).
 *
 * @param value The configured value.
 * @returns The keyring, the JSON text, or `undefined` when none is configured.
 * @throws {TypeError} When it is neither a `Keyring` nor a JSON object.
 */
export function copyPulseKeys(value: unknown): PulseKeysInput | undefined {
  if (value === undefined) return undefined;
  if (value instanceof Keyring) return value;
  if (value === null || typeof value !== "object" || Array.isArray(value)) {
    throw new TypeError(
      "Invalid pulseKeys: expected a Keyring or its JSON ({ owner: [{ key_id, public_key }] })",
    );
  }
  let json: string;
  try {
    json = JSON.stringify(value);
  } catch (cause) {
    throw new TypeError(`Invalid pulseKeys: not JSON (${(cause as Error).message})`);
  }
  return { json };
}

/**
 * The keyring frames are verified against.
 *
 * @param input From {@linkcode copyPulseKeys}.
 * @returns The keyring (one object for equal JSON).
 * @throws {BackbeatError} `key` when the JSON holds a bad entry, or the keyring holds no key (it
 * would refuse every frame).
 */
export async function resolvePulseKeys(input: PulseKeysInput): Promise<Keyring> {
  let keyring: Keyring;
  if (input instanceof Keyring) keyring = input;
  else {
    const digest = new Uint8Array(
      await crypto.subtle.digest("SHA-256", encoder.encode(input.json)),
    ).toHex();
    let built = cache.get(digest);
    if (built === undefined) {
      built = Keyring.fromJson(JSON.parse(input.json) as KeyringJson);
      cache.set(digest, built);
      // A failed build is not kept: the next client reports the same error afresh.
      built.catch(() => {
        if (cache.get(digest) === built) cache.delete(digest);
      });
      while (cache.size > MAX_CACHED_KEYRINGS) cache.delete(cache.keys().next().value!);
    }
    try {
      keyring = await built;
    } catch (cause) {
      throw new BackbeatError(
        "key",
        `Invalid pulseKeys: ${(cause as Error).message.replace(/^Cannot load keyring: /, "")}`,
        { cause },
      );
    }
  }
  if (keyring.size === 0) {
    throw new BackbeatError(
      "key",
      "Invalid pulseKeys: the keyring holds no key, so every beat frame would be refused",
    );
  }
  return keyring;
}

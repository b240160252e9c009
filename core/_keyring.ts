// The keyring: which Ed25519 public keys may sign for whom (an agent's claims, a pulse's frames,
// an operator's control messages), and when. One file format for all three. Imported CryptoKeys
// are cached by public key so a reload re-imports only new keys. (The file watcher that reloads
// a keyring lives in service/.)

import { BackbeatError } from "./_errors.ts";

/** One key as written in the keyring file. */
export interface KeyringEntryJson {
  /** The id agents send as `x-key-id`. */
  key_id: string;
  /** Standard base64 of the raw 32-byte Ed25519 public key. */
  public_key: string;
  /** RFC 3339 instant before which the key is not valid. */
  not_before?: string;
  /** RFC 3339 instant after which the key is not valid. */
  not_after?: string;
}

/** The keyring file: agent id to its keys. */
export type KeyringJson = Record<string, KeyringEntryJson[]>;

/** A key ready for verification. */
export interface KeyEntry {
  /** The agent the key speaks for. */
  readonly agentId: string;
  /** The key id (`x-key-id`). */
  readonly keyId: string;
  /** Base64 of the raw public key. */
  readonly publicKey: string;
  /** The imported WebCrypto verify key. */
  readonly key: CryptoKey;
  /** Epoch ms before which the key is not valid, if any. */
  readonly notBefore: number | undefined;
  /** Epoch ms after which the key is not valid, if any. */
  readonly notAfter: number | undefined;
}

/** Largest keyring file read, in bytes. */
export const MAX_KEYRING_BYTES = 16 * 1024 * 1024;
/** Most keys a keyring may hold. */
export const MAX_KEYRING_KEYS = 200_000;

const RFC3339 = /^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$/;

function parseInstant(value: unknown, where: string): number | undefined {
  if (value === undefined || value === null) return undefined;
  const ms = typeof value === "string" && RFC3339.test(value) ? Date.parse(value) : NaN;
  if (!Number.isFinite(ms)) {
    throw new TypeError(`${where} must be an RFC 3339 date-time, got ${JSON.stringify(value)}`);
  }
  return ms;
}

/**
 * Whether a key may be used at an instant.
 *
 * @param entry The key.
 * @param at Epoch milliseconds.
 * @returns True when `at` lies inside the key's validity period.
 *
 * @example Check a key
 * ```ts ignore
 * import { isKeyValidAt, Keyring } from "./mod.ts";
 * const ring = await Keyring.fromJson({});
 * const key = ring.get("worker-1", "k1");
 * console.log(key ? isKeyValidAt(key, Date.now()) : "no such key");
 * ```
 */
export function isKeyValidAt(entry: KeyEntry, at: number): boolean {
  return (entry.notBefore === undefined || at >= entry.notBefore) &&
    (entry.notAfter === undefined || at <= entry.notAfter);
}

/**
 * Trusted public keys, per owner (an agent id for claims, a pulse id or role for frames, an
 * operator for control). Immutable: a reload builds a new one.
 *
 * @example Build a keyring and look a key up
 * ```ts
 * import { generateSigningKeyPair, Keyring } from "@chorus/backbeat";
 * const { publicKey, keyId } = await generateSigningKeyPair();
 * const ring = await Keyring.fromJson({ "worker-1": [{ key_id: keyId, public_key: publicKey }] });
 * console.log(ring.get("worker-1", keyId)?.agentId); // "worker-1"
 * ```
 */
export class Keyring {
  readonly #byAgent: Map<string, KeyEntry[]>;
  readonly #size: number;

  private constructor(byAgent: Map<string, KeyEntry[]>, size: number) {
    this.#byAgent = byAgent;
    this.#size = size;
  }

  /** An empty keyring: every signed claim is rejected as `unknown_key`. */
  static readonly EMPTY: Keyring = new Keyring(new Map(), 0);

  /**
   * Builds a keyring from the file's JSON value.
   *
   * @param json `agent_id → [{ key_id, public_key, not_before?, not_after? }]`.
   * @param cache Imported keys by base64 public key, reused and filled in.
   * @returns The keyring.
   * @throws {BackbeatError} `key` naming the first bad entry.
   */
  static async fromJson(json: unknown, cache?: Map<string, CryptoKey>): Promise<Keyring> {
    if (json === null || typeof json !== "object" || Array.isArray(json)) {
      throw new BackbeatError("key", "Cannot load keyring: expected an object of agent id to keys");
    }
    const byAgent = new Map<string, KeyEntry[]>();
    const used = new Map<string, CryptoKey>();
    let size = 0;
    for (const [agentId, list] of Object.entries(json as Record<string, unknown>)) {
      if (agentId.length === 0 || agentId.length > 256) {
        throw new BackbeatError("key", `Cannot load keyring: agent id "${agentId}" is invalid`);
      }
      if (!Array.isArray(list)) {
        throw new BackbeatError(
          "key",
          `Cannot load keyring: keys of agent "${agentId}" must be an array`,
        );
      }
      const entries: KeyEntry[] = [];
      for (let i = 0; i < list.length; i++) {
        const where = `${agentId}[${i}]`;
        if (++size > MAX_KEYRING_KEYS) {
          throw new BackbeatError(
            "key",
            `Cannot load keyring: more than ${MAX_KEYRING_KEYS} keys`,
          );
        }
        try {
          entries.push(await buildEntry(agentId, list[i], where, cache, used));
        } catch (cause) {
          throw new BackbeatError(
            "key",
            `Cannot load keyring: ${(cause as Error).message}`,
            { cause, detail: { agentId, index: i } },
          );
        }
      }
      byAgent.set(agentId, entries);
    }
    if (cache) {
      // Keep only keys still in use so the cache stays as small as the keyring.
      cache.clear();
      for (const [k, v] of used) cache.set(k, v);
    }
    return new Keyring(byAgent, size);
  }

  /**
   * Reads and builds a keyring from a file.
   *
   * @param path The JSON file.
   * @param cache Imported keys by public key, reused and filled in.
   * @returns The keyring.
   * @throws {BackbeatError} `key` when the file cannot be read, is too large, is not JSON or
   * holds a bad entry.
   */
  static async fromFile(path: string, cache?: Map<string, CryptoKey>): Promise<Keyring> {
    let text: string;
    try {
      const info = await Deno.stat(path);
      if (info.size > MAX_KEYRING_BYTES) {
        throw new RangeError(`${info.size} bytes is above the limit of ${MAX_KEYRING_BYTES}`);
      }
      text = await Deno.readTextFile(path);
    } catch (cause) {
      throw new BackbeatError(
        "key",
        `Cannot read keyring ${path}: ${(cause as Error).message}`,
        { cause },
      );
    }
    let json: unknown;
    try {
      json = JSON.parse(text);
    } catch (cause) {
      throw new BackbeatError(
        "key",
        `Cannot load keyring ${path}: not JSON (${(cause as Error).message})`,
        { cause },
      );
    }
    try {
      return await Keyring.fromJson(json, cache);
    } catch (err) {
      if (err instanceof BackbeatError) {
        throw new BackbeatError("key", err.message.replace("keyring:", `keyring ${path}:`), {
          cause: err.cause,
          detail: err.detail,
        });
      }
      throw err;
    }
  }

  /** Number of keys. */
  get size(): number {
    return this.#size;
  }

  /** Number of agents with at least one key entry. */
  get agentCount(): number {
    return this.#byAgent.size;
  }

  /**
   * Looks up one of an agent's keys.
   *
   * @param agentId An agent.
   * @param keyId A key id.
   * @returns The agent's key with that id, or `undefined`.
   */
  get(agentId: string, keyId: string): KeyEntry | undefined {
    const list = this.#byAgent.get(agentId);
    if (list === undefined) return undefined;
    for (let i = 0; i < list.length; i++) if (list[i].keyId === keyId) return list[i];
    return undefined;
  }

  /**
   * Finds a key by its id alone, whoever owns it (for pulse and operator keyrings, where the
   * sender's name is not what is trusted).
   *
   * @param keyId A key id.
   * @returns The first key with that id, or `undefined`.
   */
  findKey(keyId: string): KeyEntry | undefined {
    for (const list of this.#byAgent.values()) {
      for (let i = 0; i < list.length; i++) if (list[i].keyId === keyId) return list[i];
    }
    return undefined;
  }

  /**
   * Lists an agent's keys.
   *
   * @param agentId An agent.
   * @returns All of the agent's keys (empty when none).
   */
  keysOf(agentId: string): readonly KeyEntry[] {
    return this.#byAgent.get(agentId) ?? [];
  }
}

async function buildEntry(
  agentId: string,
  raw: unknown,
  where: string,
  cache: Map<string, CryptoKey> | undefined,
  used: Map<string, CryptoKey>,
): Promise<KeyEntry> {
  if (raw === null || typeof raw !== "object" || Array.isArray(raw)) {
    throw new TypeError(`${where} must be an object`);
  }
  const e = raw as Record<string, unknown>;
  if (typeof e.key_id !== "string" || e.key_id.length === 0 || e.key_id.length > 256) {
    throw new TypeError(`${where}.key_id must be a string of 1 to 256 characters`);
  }
  if (typeof e.public_key !== "string") {
    throw new TypeError(`${where}.public_key must be base64 text`);
  }
  let bytes: Uint8Array;
  try {
    bytes = Uint8Array.fromBase64(e.public_key.replaceAll("-", "+").replaceAll("_", "/"));
  } catch {
    throw new TypeError(`${where}.public_key is not base64`);
  }
  if (bytes.length !== 32) {
    throw new TypeError(`${where}.public_key is ${bytes.length} bytes, expected 32`);
  }
  const notBefore = parseInstant(e.not_before, `${where}.not_before`);
  const notAfter = parseInstant(e.not_after, `${where}.not_after`);
  if (notBefore !== undefined && notAfter !== undefined && notAfter < notBefore) {
    throw new RangeError(`${where}.not_after is before not_before`);
  }
  let key = used.get(e.public_key) ?? cache?.get(e.public_key);
  key ??= await crypto.subtle.importKey("raw", bytes as BufferSource, "Ed25519", false, [
    "verify",
  ]);
  used.set(e.public_key, key);
  return { agentId, keyId: e.key_id, publicKey: e.public_key, key, notBefore, notAfter };
}

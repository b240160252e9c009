// Signing and checking whole BACKBEAT messages: the x-signature / x-key-id headers over
// signedBytes(), against a keyring. Pulse signs frames, the SDK signs claims, operators sign
// control messages; the SDK, pulse followers and reverb check them here, one way.
import { BackbeatError } from "./_errors.ts";
import { isKeyValidAt, type KeyEntry, type Keyring } from "./_keyring.ts";
import {
  importSigningKey,
  type SignatureDomain,
  signedBytes,
  type SigningKey,
  signPayload,
  verifyPayload,
} from "./_signing.ts";

/** Largest private key file read, in bytes. */
const MAX_KEY_FILE_BYTES = 64 * 1024;

/** The headers of a signed message (a type alias, so it fits any header record). */
export type SignatureHeaders = {
  /** Standard base64 of the Ed25519 signature. */
  readonly "x-signature": string;
  /** The signing key's id. */
  readonly "x-key-id": string;
};

/** Why a signed message was refused. */
export const SignatureFailure = {
  /** No `x-signature` (or no `x-key-id`) header. */
  Unsigned: "unsigned",
  /** No key with that id in the keyring (or not the sender's). */
  UnknownKey: "unknown_key",
  /** The key is outside its validity period. */
  KeyExpired: "key_expired",
  /** The signature does not verify. */
  BadSignature: "bad_signature",
} as const;
/** One of {@linkcode SignatureFailure}'s values. */
export type SignatureFailure = typeof SignatureFailure[keyof typeof SignatureFailure];

/** What {@linkcode verifySigned} found. */
export type SignatureCheck =
  | { readonly ok: true; readonly key: KeyEntry }
  | { readonly ok: false; readonly reason: SignatureFailure };

/**
 * Signs a message's exact payload bytes, bound to its domain, cluster and epoch.
 *
 * @param key The signing key.
 * @param domain What is signed.
 * @param clusterId The cluster.
 * @param payload The exact bytes to send.
 * @param epoch The timeline epoch (frames). @default {0}
 * @returns The headers to send with the payload.
 *
 * @example Sign a frame payload
 * ```ts
 * import { generateSigningKeyPair, importSigningKey, signMessage } from "./mod.ts";
 * const key = await importSigningKey((await generateSigningKeyPair()).keyPair.privateKey);
 * const headers = await signMessage(key, "backbeat.beatframe.v1", "dev", new Uint8Array([123, 125]), 5);
 * console.log(headers["x-key-id"] === key.keyId); // true
 * ```
 */
export async function signMessage(
  key: SigningKey,
  domain: SignatureDomain,
  clusterId: string,
  payload: Uint8Array,
  epoch = 0,
): Promise<SignatureHeaders> {
  const signature = await signPayload(
    key.privateKey,
    signedBytes(domain, clusterId, payload, epoch),
  );
  return { "x-signature": signature, "x-key-id": key.keyId };
}

/** Options of {@linkcode verifySigned}. */
export interface VerifySignedOptions {
  /** The timeline epoch the signature must be bound to (frames). @default {0} */
  epoch?: number;
  /** Only keys of this owner count (an agent's claims); any owner when absent. @default {undefined} */
  owner?: string;
  /** The instant the key must be valid at (epoch ms). @default {Date.now()} */
  at?: number;
}

/**
 * Checks a signed message against a keyring. Never throws on bad input.
 *
 * @param keyring The trusted keys.
 * @param domain What must have been signed.
 * @param clusterId The cluster the message must be bound to.
 * @param payload The exact payload bytes received.
 * @param headers The received headers (lowercase names).
 * @param options Epoch, owner and instant.
 * @returns `ok` with the key, or the reason it failed.
 *
 * @example Check a signed frame
 * ```ts
 * import { generateSigningKeyPair, importSigningKey, Keyring, signMessage, verifySigned } from "./mod.ts";
 * const pair = await generateSigningKeyPair();
 * const keyring = await Keyring.fromJson({ pulse: [{ key_id: pair.keyId, public_key: pair.publicKey }] });
 * const key = await importSigningKey(pair.keyPair.privateKey);
 * const payload = new TextEncoder().encode("{}");
 * const headers = await signMessage(key, "backbeat.beatframe.v1", "dev", payload);
 * console.log((await verifySigned(keyring, "backbeat.beatframe.v1", "dev", payload, headers)).ok); // true
 * ```
 */
export async function verifySigned(
  keyring: Keyring,
  domain: SignatureDomain,
  clusterId: string,
  payload: Uint8Array,
  headers: Readonly<Record<string, string>> | undefined,
  options: VerifySignedOptions = {},
): Promise<SignatureCheck> {
  const signature = headers?.["x-signature"];
  const keyId = headers?.["x-key-id"];
  if (!signature || !keyId) return { ok: false, reason: "unsigned" };
  const key = options.owner === undefined
    ? keyring.findKey(keyId)
    : keyring.get(options.owner, keyId);
  if (key === undefined) return { ok: false, reason: "unknown_key" };
  if (!isKeyValidAt(key, options.at ?? Date.now())) return { ok: false, reason: "key_expired" };
  let bytes: Uint8Array;
  try {
    bytes = signedBytes(domain, clusterId, payload, options.epoch ?? 0);
  } catch {
    return { ok: false, reason: "bad_signature" };
  }
  return await verifyPayload(key.key, bytes, signature)
    ? { ok: true, key }
    : { ok: false, reason: "bad_signature" };
}

/**
 * Reads a private key file: an Ed25519 JWK (`{"kty":"OKP","crv":"Ed25519","d":…,"x":…}`) whose
 * `kid` is the key id (derived from the public key when absent). This is what `backbeat keygen`
 * writes; keep it readable by its service only.
 *
 * @param path The file.
 * @returns The signing key.
 * @throws {BackbeatError} `key` naming the file when it cannot be read or holds no Ed25519 private
 * key (the message never contains the file's content).
 *
 * @example Load pulse's key
 * ```ts ignore
 * import { readSigningKeyFile } from "./mod.ts";
 * const key = await readSigningKeyFile("pulse.key.json");
 * console.log(key.keyId);
 * ```
 */
export async function readSigningKeyFile(path: string): Promise<SigningKey> {
  let json: unknown;
  try {
    const info = await Deno.stat(path);
    if (info.size > MAX_KEY_FILE_BYTES) throw new RangeError(`${info.size} bytes is too large`);
    json = JSON.parse(await Deno.readTextFile(path));
  } catch (cause) {
    // The parser's message could quote the file; name the kind of failure only.
    const why = cause instanceof SyntaxError ? "not JSON" : (cause as Error).name;
    throw new BackbeatError("key", `Cannot read key file ${path}: ${why}`);
  }
  const jwk = json as JsonWebKey & { kid?: unknown };
  if (
    jwk === null || typeof jwk !== "object" || jwk.kty !== "OKP" || jwk.crv !== "Ed25519" ||
    typeof jwk.d !== "string"
  ) {
    throw new BackbeatError(
      "key",
      `Cannot read key file ${path}: expected an Ed25519 private JWK (kty OKP, crv Ed25519, d)`,
    );
  }
  try {
    return await importSigningKey(jwk, typeof jwk.kid === "string" ? jwk.kid : undefined);
  } catch {
    throw new BackbeatError("key", `Cannot read key file ${path}: not a usable Ed25519 key`);
  }
}

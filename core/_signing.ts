import { BackbeatError } from "./_errors.ts";

/** What a signing key may be given as. */
export type SigningKeyInput = CryptoKey | Uint8Array | JsonWebKey;

/** An Ed25519 signing key ready to use, with its id and public half. */
export interface SigningKey {
  /** The private key (WebCrypto, usage `sign`). */
  readonly privateKey: CryptoKey;
  /** Standard base64 of the raw 32-byte public key, or `undefined` when it cannot be derived. */
  readonly publicKey: string | undefined;
  /** The key id sent as `x-key-id`. */
  readonly keyId: string;
}

/** A generated key pair with its exports. */
export interface GeneratedKeyPair {
  /** The WebCrypto key pair (private key extractable so it can be stored). */
  readonly keyPair: CryptoKeyPair;
  /** Standard base64 of the raw 32-byte public key: what reverb's keyring holds. */
  readonly publicKey: string;
  /** A key id derived from the public key (16 hex digits of its SHA-256). */
  readonly keyId: string;
  /** The private key as JWK, for storing in a secret store. */
  readonly privateJwk: JsonWebKey;
}

const ED25519 = { name: "Ed25519" } as const;
// DER prefix of a PKCS#8 Ed25519 private key; the 32-byte seed follows it.
const PKCS8_PREFIX = new Uint8Array([
  0x30,
  0x2e,
  0x02,
  0x01,
  0x00,
  0x30,
  0x05,
  0x06,
  0x03,
  0x2b,
  0x65,
  0x70,
  0x04,
  0x22,
  0x04,
  0x20,
]);

// Keys and signatures travel as standard base64; URL-safe text is accepted on the way in.
function fromBase64(text: string): Uint8Array {
  try {
    return Uint8Array.fromBase64(text.replaceAll("-", "+").replaceAll("_", "/"));
  } catch {
    throw new TypeError("Invalid base64 text");
  }
}

async function deriveKeyId(rawPublic: Uint8Array): Promise<string> {
  const d = await crypto.subtle.digest("SHA-256", rawPublic as BufferSource);
  return new Uint8Array(d, 0, 8).toHex();
}

/**
 * Generates an Ed25519 key pair for signing status claims.
 *
 * @returns The pair, its public key in base64 (for the keyring), a key id and a private JWK.
 *
 * @example Make a key for an agent
 * ```ts
 * import { generateSigningKeyPair } from "@chorus/backbeat";
 * const { publicKey, keyId } = await generateSigningKeyPair();
 * console.log(keyId.length, publicKey.length); // 16 44
 * ```
 */
export async function generateSigningKeyPair(): Promise<GeneratedKeyPair> {
  const keyPair = await crypto.subtle.generateKey(ED25519, true, [
    "sign",
    "verify",
  ]) as CryptoKeyPair;
  const raw = new Uint8Array(await crypto.subtle.exportKey("raw", keyPair.publicKey));
  const privateJwk = await crypto.subtle.exportKey("jwk", keyPair.privateKey);
  return { keyPair, publicKey: raw.toBase64(), keyId: await deriveKeyId(raw), privateJwk };
}

/**
 * Exports a public key as standard base64 of its raw 32 bytes (the keyring format).
 *
 * @param key An Ed25519 public `CryptoKey`, or a private JWK (its `x`).
 * @returns Base64 text.
 * @throws {BackbeatError} `key` when the key is not an exportable Ed25519 public key.
 *
 * @example Export for reverb's keyring
 * ```ts
 * import { exportPublicKey, generateSigningKeyPair } from "@chorus/backbeat";
 * const { keyPair } = await generateSigningKeyPair();
 * console.log(await exportPublicKey(keyPair.publicKey));
 * ```
 */
export async function exportPublicKey(key: CryptoKey | JsonWebKey): Promise<string> {
  try {
    if (key instanceof CryptoKey) {
      return new Uint8Array(await crypto.subtle.exportKey("raw", key)).toBase64();
    }
    if (typeof key.x !== "string") throw new TypeError("JWK has no x");
    return fromBase64(key.x).toBase64();
  } catch (cause) {
    throw new BackbeatError("key", `Cannot export public key: ${(cause as Error).message}`, {
      cause,
    });
  }
}

/**
 * Imports a signing key from a `CryptoKey`, a PKCS#8 DER export, a JWK, or a 32-byte seed.
 *
 * @param input The key material.
 * @param keyId The id to send as `x-key-id`; derived from the public key when omitted.
 * @returns The key ready for {@linkcode signPayload}.
 * @throws {BackbeatError} `key` when the material is not an Ed25519 private key, or when no key
 * id is given and the public key cannot be derived (a non-extractable `CryptoKey`).
 *
 * @example From a seed
 * ```ts
 * import { importSigningKey } from "./mod.ts";
 * const key = await importSigningKey(crypto.getRandomValues(new Uint8Array(32)));
 * console.log(key.keyId.length); // 16
 * ```
 */
export async function importSigningKey(
  input: SigningKeyInput,
  keyId?: string,
): Promise<SigningKey> {
  try {
    let privateKey: CryptoKey;
    let jwk: JsonWebKey | undefined;
    if (input instanceof CryptoKey) {
      if (input.type !== "private" || input.algorithm.name !== "Ed25519") {
        throw new TypeError("expected an Ed25519 private key");
      }
      privateKey = input;
      if (input.extractable) jwk = await crypto.subtle.exportKey("jwk", input);
    } else if (input instanceof Uint8Array) {
      const der = input.length === 32 ? new Uint8Array([...PKCS8_PREFIX, ...input]) : input;
      const extractable = await crypto.subtle.importKey(
        "pkcs8",
        der as BufferSource,
        ED25519,
        true,
        ["sign"],
      );
      jwk = await crypto.subtle.exportKey("jwk", extractable);
      privateKey = await crypto.subtle.importKey("pkcs8", der as BufferSource, ED25519, false, [
        "sign",
      ]);
    } else if (
      input && typeof input === "object" && input.kty === "OKP" && input.crv === "Ed25519"
    ) {
      jwk = input;
      privateKey = await crypto.subtle.importKey("jwk", input, ED25519, false, ["sign"]);
    } else {
      throw new TypeError("expected a CryptoKey, PKCS#8 bytes, a 32-byte seed or an Ed25519 JWK");
    }
    const publicKey = jwk?.x ? fromBase64(jwk.x).toBase64() : undefined;
    const id = keyId ?? (publicKey ? await deriveKeyId(fromBase64(publicKey)) : undefined);
    if (!id) throw new TypeError("a key id is required for a non-extractable key");
    return { privateKey, publicKey, keyId: id };
  } catch (cause) {
    if (cause instanceof BackbeatError) throw cause;
    throw new BackbeatError("key", `Cannot import signing key: ${(cause as Error).message}`, {
      cause,
    });
  }
}

/**
 * Signs payload bytes with Ed25519.
 *
 * @param key The private key.
 * @param payload The exact bytes to sign.
 * @returns Standard base64 of the 64-byte signature (the `x-signature` header).
 *
 * @example Sign and verify
 * ```ts
 * import { generateSigningKeyPair, importPublicKey, signPayload, verifyPayload } from "./mod.ts";
 * const { keyPair, publicKey } = await generateSigningKeyPair();
 * const bytes = new TextEncoder().encode("{}");
 * const sig = await signPayload(keyPair.privateKey, bytes);
 * console.log(await verifyPayload(await importPublicKey(publicKey), bytes, sig)); // true
 * ```
 */
export async function signPayload(key: CryptoKey, payload: Uint8Array): Promise<string> {
  return new Uint8Array(await crypto.subtle.sign(ED25519, key, payload as BufferSource))
    .toBase64();
}

/**
 * Imports a public key from standard base64 of its raw 32 bytes.
 *
 * @param base64 The keyring's `public_key`.
 * @returns A WebCrypto verify key.
 * @throws {BackbeatError} `key` when it is not 32 bytes of base64.
 *
 * @example Import a keyring entry
 * ```ts
 * import { generateSigningKeyPair, importPublicKey } from "./mod.ts";
 * const pair = await generateSigningKeyPair();
 * const key = await importPublicKey(pair.publicKey);
 * console.log(key.algorithm.name); // "Ed25519"
 * ```
 */
export async function importPublicKey(base64: string): Promise<CryptoKey> {
  let raw: Uint8Array;
  try {
    raw = fromBase64(base64);
  } catch (cause) {
    throw new BackbeatError("key", "Cannot import public key: not base64", { cause });
  }
  if (raw.length !== 32) {
    throw new BackbeatError("key", `Cannot import public key: ${raw.length} bytes, expected 32`);
  }
  return await crypto.subtle.importKey("raw", raw as BufferSource, ED25519, true, ["verify"]);
}

/**
 * Verifies an Ed25519 signature over payload bytes. Malformed signatures verify as false.
 *
 * @param key The public key.
 * @param payload The exact bytes that were signed.
 * @param signature Standard base64 of the 64-byte signature.
 * @returns Whether the signature is valid.
 *
 * @example Verify a signed payload
 * ```ts
 * import { generateSigningKeyPair, importPublicKey, signPayload, verifyPayload } from "./mod.ts";
 * const pair = await generateSigningKeyPair();
 * const payload = new TextEncoder().encode('{"state":"idle"}');
 * const signature = await signPayload(pair.keyPair.privateKey, payload);
 * console.log(await verifyPayload(await importPublicKey(pair.publicKey), payload, signature)); // true
 * ```
 */
export async function verifyPayload(
  key: CryptoKey,
  payload: Uint8Array,
  signature: string,
): Promise<boolean> {
  let sig: Uint8Array;
  try {
    sig = fromBase64(signature);
  } catch {
    return false;
  }
  if (sig.length !== 64) return false;
  return await crypto.subtle.verify(ED25519, key, sig as BufferSource, payload as BufferSource);
}

/** What a signature covers: each kind of message signs under its own domain. */
export const SignatureDomain = {
  /** A pulse's BeatFrame, bound to cluster and timeline epoch. */
  BeatFrame: "backbeat.beatframe.v1",
  /** An agent's StatusClaim, bound to the cluster. */
  StatusClaim: "backbeat.statusclaim.v1",
  /** An operator's control message (a tempo change), bound to the cluster. */
  Control: "backbeat.control.v1",
  /** Pulse's answer to a clock request, bound to the cluster. */
  Time: "backbeat.time.v1",
} as const;
/** One of {@linkcode SignatureDomain}'s values. */
export type SignatureDomain = typeof SignatureDomain[keyof typeof SignatureDomain];

const encoder = new TextEncoder();

/**
 * The bytes a BACKBEAT signature covers: `<domain>\n<cluster_id>\n<epoch>\n` then the exact
 * payload bytes. Binding the domain, cluster and epoch means a signature made for one kind of
 * message, one cluster or one timeline verifies for no other.
 *
 * @param domain What is signed.
 * @param clusterId The cluster the message is for.
 * @param payload The exact payload bytes.
 * @param epoch The timeline epoch (frames); 0 for claims and control. @default {0}
 * @returns The bytes to sign or verify.
 * @throws {RangeError} When the epoch is not a non-negative safe integer.
 *
 * @example Sign a claim for one cluster
 * ```ts
 * import { generateSigningKeyPair, signedBytes } from "./mod.ts";
 * const { keyPair } = await generateSigningKeyPair();
 * const payload = new TextEncoder().encode('{"type":"backbeat.statusclaim.v1"}');
 * const bytes = signedBytes("backbeat.statusclaim.v1", "prod", payload);
 * const signature = await crypto.subtle.sign("Ed25519", keyPair.privateKey, bytes);
 * console.log(signature.byteLength); // 64
 * ```
 */
export function signedBytes(
  domain: SignatureDomain,
  clusterId: string,
  payload: Uint8Array,
  epoch = 0,
): Uint8Array {
  if (!Number.isSafeInteger(epoch) || epoch < 0) {
    throw new RangeError(`Invalid epoch ${epoch}: expected an integer >= 0`);
  }
  const head = encoder.encode(`${domain}\n${clusterId}\n${epoch}\n`);
  const out = new Uint8Array(head.length + payload.length);
  out.set(head, 0);
  out.set(payload, head.length);
  return out;
}

/**
 * Imports a shared secret (an admin token) as an HMAC-SHA-256 key.
 *
 * @param secret The token.
 * @returns A key for {@linkcode hmacSign} and {@linkcode hmacVerify}; not extractable.
 * @throws {TypeError} When the secret is empty.
 *
 * @example Prove a token without sending it
 * ```ts
 * import { hmacKey, hmacSign, hmacVerify } from "./mod.ts";
 * const key = await hmacKey("s3cret");
 * const bytes = new TextEncoder().encode("{}");
 * console.log(await hmacVerify(key, bytes, await hmacSign(key, bytes))); // true
 * ```
 */
export async function hmacKey(secret: string): Promise<CryptoKey> {
  if (typeof secret !== "string" || secret.length === 0) {
    throw new TypeError("Cannot use an empty token as an HMAC key");
  }
  return await crypto.subtle.importKey(
    "raw",
    encoder.encode(secret),
    { name: "HMAC", hash: "SHA-256" },
    false,
    ["sign", "verify"],
  );
}

/**
 * HMAC-SHA-256 of bytes.
 *
 * @param key A key from {@linkcode hmacKey}.
 * @param bytes The bytes.
 * @returns 64 lowercase hex digits.
 */
export async function hmacSign(key: CryptoKey, bytes: Uint8Array): Promise<string> {
  return new Uint8Array(await crypto.subtle.sign("HMAC", key, bytes as BufferSource)).toHex();
}

/**
 * Checks an HMAC-SHA-256 (WebCrypto compares in constant time). Malformed input is `false`.
 *
 * @param key A key from {@linkcode hmacKey}.
 * @param bytes The bytes.
 * @param hex The claimed MAC, hex.
 * @returns Whether it matches.
 */
export async function hmacVerify(key: CryptoKey, bytes: Uint8Array, hex: string): Promise<boolean> {
  if (typeof hex !== "string" || !/^[0-9a-fA-F]{64}$/.test(hex)) return false;
  return await crypto.subtle.verify(
    "HMAC",
    key,
    Uint8Array.fromHex(hex) as BufferSource,
    bytes as BufferSource,
  );
}

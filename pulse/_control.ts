// Tempo changes on backbeat.<cluster>.control: the message format, the helper operators (and a
// follower forwarding a request) build authenticated ones with, and pulse's checks of them.
import {
  assertClusterId,
  type BusHeaders,
  hmacKey,
  hmacSign,
  hmacVerify,
  Keyring,
  parseInstant,
  SignatureDomain,
  type SignatureFailure,
  signedBytes,
  type SigningKey,
  signMessage,
  verifySigned,
} from "../core/mod.ts";
import { assertPulseTempo, readTempoRequest } from "./_tempo.ts";
import type { ControlRejectReason, KeyringSource } from "./_types.ts";

/** How far `issued_at` may stand from pulse's clock, either way, in ms. */
export const CONTROL_MAX_SKEW_MS = 30_000;

/** Every reason a control message is refused for, in exposition order. */
export const CONTROL_REJECT_REASONS: readonly ControlRejectReason[] = [
  "unauthenticated",
  "bad_signature",
  "replay",
  "stale",
  "invalid",
  "rate_limited",
];

const RFC3339 = /^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$/;
const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** Options of {@linkcode controlMessage}. */
export interface ControlMessageOptions {
  /** The cluster whose pulse should change tempo (the message is bound to it). */
  clusterId: string;
  /** The new tempo, 0.1 to 6000 BPM; it lands on the next downbeat. */
  tempoBpm: number;
  /** The admin token: proves it with `x-auth-hmac` (the token itself is never sent). @default {undefined} */
  token?: string;
  /** An operator's Ed25519 key: signs with `x-signature`/`x-key-id`. @default {undefined} */
  key?: SigningKey;
  /** The message's `issued_at`, epoch ms; pulse refuses it 30 s either side of its clock. @default {Date.now()} */
  issuedAt?: number;
  /** Who asks, written as `requested_by` (for logs). @default {undefined} */
  requestedBy?: string;
}

/** A control message ready to publish on `backbeat.<cluster>.control`. */
export interface ControlMessage {
  /** The exact payload bytes (what the proof covers). */
  readonly data: Uint8Array;
  /** The proof headers (`x-auth-hmac`, or `x-signature` and `x-key-id`, or both). */
  readonly headers: Record<string, string>;
}

/**
 * Builds the payload of a control message: `{"tempo_bpm": n, "issued_at": "<RFC 3339>"}`.
 *
 * @param tempoBpm The tempo (checked by the caller).
 * @param issuedAt Epoch ms.
 * @param requestedBy Who asks, if anyone says.
 * @returns The exact bytes.
 */
export function controlPayload(
  tempoBpm: number,
  issuedAt: number,
  requestedBy?: string,
): Uint8Array {
  const body: Record<string, unknown> = {
    tempo_bpm: tempoBpm,
    issued_at: new Date(issuedAt).toISOString(),
  };
  if (requestedBy !== undefined) body.requested_by = requestedBy;
  return encoder.encode(JSON.stringify(body));
}

/**
 * Builds an authenticated tempo change for `backbeat.<cluster>.control`: the payload with
 * `tempo_bpm` and `issued_at`, and its proof over
 * `backbeat.control.v1\n<cluster>\n0\n<payload>`: an HMAC-SHA-256 keyed by the admin token
 * (`x-auth-hmac`, lowercase hex), an Ed25519 signature by an operator key (`x-signature`,
 * `x-key-id`), or both. With neither, the message is unauthenticated (for a pulse whose control
 * subject is open).
 *
 * @param options Cluster, tempo, token or key, instant.
 * @returns The bytes and headers to publish.
 * @throws {TypeError} On an invalid cluster id, an empty token, a key that is not a signing key,
 * or an `issuedAt` that is not a finite time.
 * @throws {RangeError} When the tempo is not a number from 0.1 to 6000.
 *
 * @example Change the tempo with the admin token
 * ```ts
 * import { controlMessage } from "@chorus/backbeat/pulse";
 * const { data, headers } = await controlMessage({ clusterId: "prod", tempoBpm: 90, token: "s3cret" });
 * console.log(headers["x-auth-hmac"].length, new TextDecoder().decode(data).includes('"tempo_bpm":90')); // 64 true
 * // bus.publish("backbeat.prod.control", data, { headers });
 * ```
 */
export async function controlMessage(options: ControlMessageOptions): Promise<ControlMessage> {
  const { clusterId, tempoBpm, token, key } = options ?? {};
  assertClusterId(clusterId);
  assertPulseTempo(tempoBpm);
  if (token !== undefined && (typeof token !== "string" || token.length === 0)) {
    throw new TypeError("Invalid token: expected a non-empty string");
  }
  if (
    key !== undefined &&
    !(key?.privateKey instanceof CryptoKey && typeof key.keyId === "string" && key.keyId !== "")
  ) {
    throw new TypeError(
      "Invalid key: expected a SigningKey (importSigningKey, readSigningKeyFile)",
    );
  }
  const issuedAt = options.issuedAt ?? Date.now();
  if (!Number.isFinite(issuedAt) || Number.isNaN(new Date(issuedAt).getTime())) {
    throw new TypeError(`Invalid issuedAt ${issuedAt}: expected epoch milliseconds`);
  }
  const data = controlPayload(tempoBpm, issuedAt, options.requestedBy);
  const headers: Record<string, string> = {};
  if (token !== undefined) {
    headers["x-auth-hmac"] = await hmacSign(
      await hmacKey(token),
      signedBytes(SignatureDomain.Control, clusterId, data),
    );
  }
  if (key !== undefined) {
    Object.assign(headers, await signMessage(key, SignatureDomain.Control, clusterId, data));
  }
  return { data, headers };
}

/** A tempo request read from a control message. */
export interface ControlRequest {
  /** The requested tempo. */
  readonly tempoBpm: number;
  /** `issued_at` in epoch ms, if the message had one. */
  readonly issuedAt: number | undefined;
}

/**
 * Reads a control message: `tempo_bpm` as a tempo request, and `issued_at` when present.
 *
 * @param data The payload.
 * @returns The request.
 * @throws {TypeError} When it is not a JSON object with `tempo_bpm`, or `issued_at` is not an
 * RFC 3339 date-time.
 * @throws {RangeError} When it is too large or the tempo is out of range.
 */
export function readControlMessage(data: Uint8Array): ControlRequest {
  const tempoBpm = readTempoRequest(data);
  // readTempoRequest checked size and shape: this parse succeeds.
  const raw = (JSON.parse(decoder.decode(data)) as { issued_at?: unknown }).issued_at;
  if (raw === undefined) return { tempoBpm, issuedAt: undefined };
  const issuedAt = typeof raw === "string" && RFC3339.test(raw) ? parseInstant(raw) : NaN;
  if (!Number.isFinite(issuedAt)) {
    throw new TypeError(
      `Invalid control message: issued_at must be an RFC 3339 date-time, got ${
        JSON.stringify(raw)?.slice(0, 64)
      }`,
    );
  }
  return { tempoBpm, issuedAt };
}

/** What a pulse checks control messages against. */
export interface ControlAuth {
  /** HMAC key from the admin token, if one is configured. */
  readonly hmac: CryptoKey | undefined;
  /** Operator keys, if configured. */
  readonly keyring: KeyringSource | undefined;
}

/** What {@linkcode authenticateControl} found. */
export type ControlCheck =
  | { readonly ok: true; readonly by: string }
  | {
    readonly ok: false;
    readonly reason: "unauthenticated" | "bad_signature";
    readonly failure?: SignatureFailure | "bad_hmac";
  };

/**
 * Resolves the keyring in force of a {@linkcode KeyringSource}.
 *
 * @param source A keyring or a holder of one.
 * @returns The keyring.
 */
export function keyringOf(source: KeyringSource): Keyring {
  return source instanceof Keyring ? source : source.current;
}

/**
 * Whether a message carries a proof this pulse can check (a cheap test before any verification).
 *
 * @param auth The pulse's token key and keyring.
 * @param headers The message's headers.
 * @returns True when a signature (with a keyring) or an HMAC (with a token) is present.
 */
export function hasControlProof(auth: ControlAuth, headers: BusHeaders | undefined): boolean {
  return (auth.keyring !== undefined && !!headers?.["x-signature"] && !!headers?.["x-key-id"]) ||
    (auth.hmac !== undefined && !!headers?.["x-auth-hmac"]);
}

/**
 * Checks a control message's proof: an Ed25519 signature against the admin keyring, else an
 * HMAC against the admin token. Never throws on bad input.
 *
 * @param auth The pulse's token key and keyring.
 * @param clusterId The cluster the message must be bound to.
 * @param data The exact payload.
 * @param headers The message's headers.
 * @param at The instant operator keys must be valid at (epoch ms).
 * @returns `ok` with who proved it (a key id, or `admin-token`), or why not.
 */
export async function authenticateControl(
  auth: ControlAuth,
  clusterId: string,
  data: Uint8Array,
  headers: BusHeaders | undefined,
  at: number,
): Promise<ControlCheck> {
  let failure: SignatureFailure | "bad_hmac" | undefined;
  if (auth.keyring !== undefined && headers?.["x-signature"] && headers["x-key-id"]) {
    const check = await verifySigned(
      keyringOf(auth.keyring),
      SignatureDomain.Control,
      clusterId,
      data,
      headers,
      { at },
    );
    if (check.ok) return { ok: true, by: check.key.keyId };
    failure = check.reason;
  }
  const mac = headers?.["x-auth-hmac"];
  if (auth.hmac !== undefined && mac) {
    if (await hmacVerify(auth.hmac, signedBytes(SignatureDomain.Control, clusterId, data), mac)) {
      return { ok: true, by: "admin-token" };
    }
    failure ??= "bad_hmac";
  }
  return failure === undefined
    ? { ok: false, reason: "unauthenticated" }
    : { ok: false, reason: "bad_signature", failure };
}

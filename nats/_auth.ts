// Turns a connection plan into nats.js options: one authenticator and the TLS settings. Files
// are read here, at connect time, with Deno.readTextFile; a problem names the file and the
// setting, never the content (seeds, keys and JWTs are secrets). Credentials live only inside
// authenticator closures, not in option fields anyone can read. Loaded only from _nats_bus.ts.

import {
  type Authenticator,
  credsAuthenticator,
  nkeyAuthenticator,
  nkeys,
  type NodeConnectionOptions,
  tokenAuthenticator,
  usernamePasswordAuthenticator,
} from "@nats-io/transport-node";
import { BackbeatError } from "../core/mod.ts";
import type { ConnectionPlan } from "./_settings.ts";

/** The parts of nats.js's options that carry credentials and TLS. */
export interface ResolvedSecurity {
  /** Presents the planned credential; absent without one. */
  readonly authenticator?: Authenticator;
  /** An object makes TLS mandatory; absent lets the server decide (TLS when it requires it). */
  readonly tls?: NonNullable<NodeConnectionOptions["tls"]>;
}

const encoder = new TextEncoder();

function failure(setting: string, file: string, reason: string, cause?: unknown): BackbeatError {
  return new BackbeatError(
    "connection",
    `Cannot connect to NATS: cannot use the ${setting} file ${file}: ${reason}`,
    { cause, detail: { setting, file } },
  );
}

async function readFile(setting: string, file: string): Promise<string> {
  try {
    return await Deno.readTextFile(file);
  } catch (err) {
    const reason = err instanceof Deno.errors.NotFound
      ? "no such file"
      : err instanceof Deno.errors.NotCapable
      ? "no read permission (run with --allow-read)"
      : err instanceof Deno.errors.PermissionDenied
      ? "permission denied"
      : err instanceof Deno.errors.IsADirectory
      ? "it is a directory"
      : "unreadable";
    throw failure(setting, file, reason, err);
  }
}

// Rejects anything but a user seed up front: nats.js would only fail inside the handshake, with
// a message about the nonce signature.
function checkUserSeed(seed: string): boolean {
  try {
    return nkeys.fromSeed(encoder.encode(seed)).getPublicKey().startsWith("U");
  } catch {
    return false;
  }
}

async function nkey(plan: { seed?: string; file?: string }): Promise<Authenticator> {
  const seed = (plan.file !== undefined ? await readFile("nkeySeedFile", plan.file) : plan.seed!)
    .trim();
  if (!checkUserSeed(seed)) {
    if (plan.file !== undefined) {
      throw failure("nkeySeedFile", plan.file, "not an NKey user seed (SU...)");
    }
    throw new TypeError("Invalid NATS option nkeySeed: not an NKey user seed (SU...)");
  }
  return nkeyAuthenticator(encoder.encode(seed));
}

async function creds(plan: { creds?: string; file?: string }): Promise<Authenticator> {
  const text = plan.file !== undefined ? await readFile("credsFile", plan.file) : plan.creds!;
  const bytes = encoder.encode(text);
  const auth = credsAuthenticator(bytes);
  // nats.js parses the creds only when the server asks (inside the handshake, where a throw
  // closes the connection with "unable to parse credentials"); parse and sign once now.
  let ok = false;
  try {
    const presented = auth("nonce") as { jwt?: string; nkey?: string } | undefined;
    ok = typeof presented?.jwt === "string" && presented.jwt.split(".").length === 3 &&
      typeof presented.nkey === "string" && presented.nkey.startsWith("U");
  } catch {
    ok = false;
  }
  if (!ok) {
    const reason = "not a .creds file (a user JWT and an NKey user seed between ----- lines)";
    if (plan.file !== undefined) throw failure("credsFile", plan.file, reason);
    throw new TypeError(`Invalid NATS option creds: ${reason}`);
  }
  return auth;
}

/** Checks that `file` is a readable PEM file; returns its path. */
async function pem(setting: string, file: string): Promise<string> {
  const text = await readFile(setting, file);
  if (!text.includes("-----BEGIN ")) throw failure(setting, file, "not a PEM file");
  return file;
}

/**
 * Reads the plan's files and builds the authenticator and TLS options.
 *
 * @param plan From `planConnection()`.
 * @returns The nats.js options that carry credentials and TLS.
 * @throws {BackbeatError} `connection` when a file is missing, unreadable or malformed (naming
 * the file and the setting).
 * @throws {TypeError} On a malformed inline `nkeySeed` or `creds`.
 */
export async function resolveSecurity(plan: ConnectionPlan): Promise<ResolvedSecurity> {
  let authenticator: Authenticator | undefined;
  const auth = plan.auth;
  switch (auth.kind) {
    case "user":
      authenticator = usernamePasswordAuthenticator(auth.user, auth.pass);
      break;
    case "token":
      authenticator = tokenAuthenticator(auth.token);
      break;
    case "nkey":
      authenticator = await nkey(auth);
      break;
    case "creds":
      authenticator = await creds(auth);
      break;
  }
  if (!plan.requireTls) return { authenticator };
  // Checked here for a clear first error, then handed to nats.js as paths: its loader reads them
  // on every TLS handshake, so a renewed certificate is used at the next reconnect, and no key
  // material stays in the connection's options (reachable through `bus.connection`).
  const tls: NonNullable<NodeConnectionOptions["tls"]> = {};
  if (plan.caFile !== undefined) tls.caFile = await pem("caFile", plan.caFile);
  if (plan.certFile !== undefined) tls.certFile = await pem("certFile", plan.certFile);
  if (plan.keyFile !== undefined) tls.keyFile = await pem("keyFile", plan.keyFile);
  return { authenticator, tls };
}

// Checks NatsBusOptions and turns them into one connection plan: the URLs to dial (without
// credentials), their redacted forms, one credential and the TLS demand. Pure (no nats.js, no
// I/O), so the flag parser can report a bad setting before anything connects.

import type { NatsBusOptions } from "./_options.ts";
import { parseServerUrl, type ServerUrl } from "./_url.ts";

/** The one credential a connection presents. */
export type PlannedAuth =
  | { readonly kind: "none" }
  | { readonly kind: "user"; readonly user: string; readonly pass?: string }
  | { readonly kind: "token"; readonly token: string }
  | { readonly kind: "nkey"; readonly seed?: string; readonly file?: string }
  | { readonly kind: "creds"; readonly creds?: string; readonly file?: string };

/** What {@linkcode planConnection} makes of the options. */
export interface ConnectionPlan {
  /** URLs to dial, without credentials. */
  readonly servers: readonly string[];
  /** The URLs as they may be shown. */
  readonly redacted: readonly string[];
  /**
   * The URLs for error messages: redacted, with the user name of a `user` credential (or the
   * `***` of a token) given in the options, so a refused login names who was refused.
   */
  readonly shown: readonly string[];
  /** The credential. */
  readonly auth: PlannedAuth;
  /** TLS is mandatory. */
  readonly requireTls: boolean;
  /** PEM files to read. */
  readonly caFile?: string;
  /** Client certificate file. */
  readonly certFile?: string;
  /** Client key file. */
  readonly keyFile?: string;
  /** Reply-subject prefix (permissions may depend on it). */
  readonly inboxPrefix?: string;
}

const STRINGS = [
  "name",
  "user",
  "pass",
  "token",
  "nkeySeed",
  "nkeySeedFile",
  "creds",
  "credsFile",
  "caFile",
  "certFile",
  "keyFile",
  "inboxPrefix",
] as const;

// Never the value: some of these are secrets.
function checkTypes(options: NatsBusOptions): void {
  if (options === null || typeof options !== "object") {
    throw new TypeError("Invalid NATS options: expected an object");
  }
  for (const key of STRINGS) {
    const v = options[key];
    if (v === undefined) continue;
    if (typeof v !== "string") throw new TypeError(`Invalid NATS option ${key}: expected a string`);
    // An empty password is a password; an empty anything else is a mistake.
    if (v === "" && key !== "pass") {
      throw new TypeError(`Invalid NATS option ${key}: expected a non-empty string`);
    }
  }
  for (const key of ["requireTls", "noRandomize", "waitOnFirstConnect"] as const) {
    const v = options[key];
    if (v !== undefined && typeof v !== "boolean") {
      throw new TypeError(`Invalid NATS option ${key}: expected a boolean`);
    }
  }
}

function sameCredentials(a: ServerUrl, b: ServerUrl): boolean {
  return a.user === b.user && a.pass === b.pass && a.token === b.token;
}

function hasCredentials(u: ServerUrl): boolean {
  return u.user !== undefined || u.token !== undefined;
}

function optionsAuth(options: NatsBusOptions): PlannedAuth {
  const given: string[] = [];
  if (options.user !== undefined) given.push("user");
  if (options.token !== undefined) given.push("token");
  if (options.nkeySeed !== undefined || options.nkeySeedFile !== undefined) given.push("nkey");
  if (options.creds !== undefined || options.credsFile !== undefined) given.push("creds");
  if (options.pass !== undefined && options.user === undefined) {
    throw new TypeError("Invalid NATS options: pass without user");
  }
  if (given.length > 1) {
    throw new TypeError(
      `Invalid NATS options: give one credential, not ${given.join(" and ")}`,
    );
  }
  if (options.nkeySeed !== undefined && options.nkeySeedFile !== undefined) {
    throw new TypeError("Invalid NATS options: nkeySeed and nkeySeedFile both given");
  }
  if (options.creds !== undefined && options.credsFile !== undefined) {
    throw new TypeError("Invalid NATS options: creds and credsFile both given");
  }
  switch (given[0]) {
    case "user":
      return { kind: "user", user: options.user!, pass: options.pass };
    case "token":
      return { kind: "token", token: options.token! };
    case "nkey":
      return { kind: "nkey", seed: options.nkeySeed, file: options.nkeySeedFile };
    case "creds":
      return { kind: "creds", creds: options.creds, file: options.credsFile };
    default:
      return { kind: "none" };
  }
}

/**
 * Checks the options and plans the connection.
 *
 * @param options The options of `connectNatsBus()`.
 * @returns The plan.
 * @throws {TypeError} On a bad URL, option type or combination (messages never show a secret).
 */
export function planConnection(options: NatsBusOptions): ConnectionPlan {
  checkTypes(options);
  const list = Array.isArray(options.servers) ? options.servers : [options.servers];
  if (list.length === 0 || list.some((s) => typeof s !== "string" || s.trim() === "")) {
    throw new TypeError("Cannot connect to NATS: no server URL given");
  }
  const urls = list.map(parseServerUrl);
  const withCredentials = urls.filter(hasCredentials);
  let auth = optionsAuth(options);
  if (withCredentials.length > 0) {
    if (auth.kind !== "none") {
      throw new TypeError(
        `Invalid NATS options: credentials both in ${
          withCredentials[0].redacted
        } and in the options`,
      );
    }
    // nats.js presents one credential to every server, so URLs must agree on it.
    const first = withCredentials[0];
    const other = withCredentials.find((u) => !sameCredentials(u, first));
    if (other) {
      throw new TypeError(
        `Invalid NATS options: ${first.redacted} and ${other.redacted} carry different credentials`,
      );
    }
    auth = first.token !== undefined
      ? { kind: "token", token: first.token }
      : { kind: "user", user: first.user!, pass: first.pass };
  }
  if (options.certFile !== undefined && options.keyFile === undefined) {
    throw new TypeError("Invalid NATS options: certFile without keyFile");
  }
  if (options.keyFile !== undefined && options.certFile === undefined) {
    throw new TypeError("Invalid NATS options: keyFile without certFile");
  }
  if (options.inboxPrefix !== undefined && !/^[^\s*>.]+(\.[^\s*>.]+)*$/.test(options.inboxPrefix)) {
    throw new TypeError(
      `Invalid NATS option inboxPrefix ${
        JSON.stringify(options.inboxPrefix)
      }: expected subject tokens without wildcards`,
    );
  }
  const requireTls = options.requireTls === true || urls.some((u) => u.tls) ||
    options.caFile !== undefined || options.certFile !== undefined;
  const login = withCredentials.length > 0
    ? undefined
    : auth.kind === "user"
    ? `${encodeURIComponent(auth.user)}:***@`
    : auth.kind === "token"
    ? "***@"
    : undefined;
  return {
    servers: urls.map((u) => u.dial),
    redacted: urls.map((u) => u.redacted),
    shown: urls.map((u) => {
      if (login === undefined) return u.redacted;
      const at = u.dial.indexOf("://");
      return at < 0
        ? `${login}${u.dial}`
        : `${u.dial.slice(0, at + 3)}${login}${u.dial.slice(at + 3)}`;
    }),
    auth,
    requireTls,
    caFile: options.caFile,
    certFile: options.certFile,
    keyFile: options.keyFile,
    inboxPrefix: options.inboxPrefix,
  };
}

/**
 * Checks NATS options without connecting: the URLs, the option types and that at most one
 * credential is given, as `connectNatsBus()` does first. Files are not read. Use it to report a
 * bad setting at start-up (e.g. as a usage error).
 *
 * @param options The options.
 * @throws {TypeError} On a bad URL, type or combination (e.g. `certFile without keyFile`); the
 * message shows URLs redacted and never a secret.
 *
 * @example Refuse two credentials
 * ```ts
 * import { validateNatsBusOptions } from "@chorus/backbeat/nats";
 * try {
 *   validateNatsBusOptions({ servers: "nats://alice:pw@127.0.0.1:4222", token: "t" });
 * } catch (err) {
 *   console.log((err as Error).message);
 *   // "Invalid NATS options: credentials both in nats://alice:***@127.0.0.1:4222 and in the options"
 * }
 * ```
 */
export function validateNatsBusOptions(options: NatsBusOptions): void {
  planConnection(options);
}

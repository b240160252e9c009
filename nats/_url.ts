// NATS server URLs: credentials out of them (nats.js 3 ignores them), and redaction for every
// message and field that shows a URL. Pure: no nats.js, no I/O.

/** A server URL taken apart by {@linkcode parseServerUrl}. */
export interface ServerUrl {
  /** The URL to dial: scheme (if given), host and port, never credentials. */
  readonly dial: string;
  /** The URL as it may be shown: {@linkcode redactUrl} of the input. */
  readonly redacted: string;
  /** `tls://`: the connection must be TLS. */
  readonly tls: boolean;
  /** User name from `user:pass@` (percent-decoded). */
  readonly user?: string;
  /** Password from `user:pass@` (percent-decoded). */
  readonly pass?: string;
  /** Token from a lone `token@` (percent-decoded). */
  readonly token?: string;
}

const SCHEME = /^([A-Za-z][A-Za-z0-9+.-]*):\/\//;
// Host name, IPv4 or bracketed IPv6, an optional port, an optional trailing slash.
const HOST_PORT = /^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(?::(\d{1,5}))?\/?$/;

interface Parts {
  readonly scheme: string;
  readonly userinfo: string | undefined;
  readonly hostPort: string;
}

// The userinfo ends at the LAST "@": a password with an unencoded "@", "/" or "?" is still
// taken (and redacted) whole rather than half shown as a host or path.
function split(url: string): Parts {
  const m = SCHEME.exec(url);
  const scheme = m ? m[1].toLowerCase() : "";
  const rest = m ? url.slice(m[0].length) : url;
  const at = rest.lastIndexOf("@");
  if (at < 0) return { scheme, userinfo: undefined, hostPort: rest };
  return { scheme, userinfo: rest.slice(0, at), hostPort: rest.slice(at + 1) };
}

/**
 * A server URL fit for a log line or an error message: the user name is kept, a password or a
 * token is replaced by `***`. Never throws on a string, whatever its shape.
 *
 * @param url A NATS server URL, e.g. `nats://alice:secret@127.0.0.1:4222`.
 * @returns The URL without its secret, e.g. `nats://alice:***@127.0.0.1:4222`.
 * @throws {TypeError} When `url` is not a string.
 *
 * @example Redact a password and a token
 * ```ts
 * import { redactUrl } from "@chorus/backbeat/nats";
 * console.log(redactUrl("nats://alice:secret@127.0.0.1:4222")); // "nats://alice:***@127.0.0.1:4222"
 * console.log(redactUrl("tls://s3cr3t@nats.example:4222")); // "tls://***@nats.example:4222"
 * ```
 */
export function redactUrl(url: string): string {
  if (typeof url !== "string") {
    throw new TypeError(`Invalid server URL: expected a string, got ${typeof url}`);
  }
  const m = SCHEME.exec(url);
  const prefix = m ? m[0] : "";
  const rest = url.slice(prefix.length);
  const at = rest.lastIndexOf("@");
  if (at < 0) return url;
  const userinfo = rest.slice(0, at);
  const colon = userinfo.indexOf(":");
  const shown = colon >= 0 ? `${userinfo.slice(0, colon)}:***` : "***";
  return `${prefix}${shown}@${rest.slice(at + 1)}`;
}

function decode(text: string, redacted: string): string {
  try {
    return decodeURIComponent(text);
  } catch {
    throw new TypeError(
      `Invalid server URL ${redacted}: bad percent-encoding in its credentials`,
    );
  }
}

/**
 * Takes a server URL apart: `nats://`, `tls://` or no scheme, `host[:port]`, and optional
 * credentials `user:pass@` or `token@` (percent-encoded).
 *
 * @param url The URL.
 * @returns The URL to dial (without credentials), its redacted form, TLS and the credentials.
 * @throws {TypeError} When it is not a NATS URL; the message shows it redacted.
 */
export function parseServerUrl(url: string): ServerUrl {
  if (typeof url !== "string" || url.trim() === "") {
    throw new TypeError("Invalid server URL: expected a non-empty string");
  }
  const text = url.trim();
  const redacted = redactUrl(text);
  const { scheme, userinfo, hostPort } = split(text);
  if (scheme === "ws" || scheme === "wss") {
    throw new TypeError(
      `Invalid server URL ${redacted}: WebSocket is not supported here, use nats:// or tls://`,
    );
  }
  if (scheme !== "" && scheme !== "nats" && scheme !== "tls") {
    throw new TypeError(`Invalid server URL ${redacted}: expected nats://host:port or tls://`);
  }
  const hp = HOST_PORT.exec(hostPort);
  if (!hp || (hp[1] !== undefined && Number(hp[1]) > 65535)) {
    throw new TypeError(`Invalid server URL ${redacted}: expected nats://host:port`);
  }
  const host = hostPort.endsWith("/") ? hostPort.slice(0, -1) : hostPort;
  const dial = scheme ? `${scheme}://${host}` : host;
  const tls = scheme === "tls";
  if (userinfo === undefined || userinfo === "") return { dial, redacted, tls };
  const colon = userinfo.indexOf(":");
  if (colon < 0) return { dial, redacted, tls, token: decode(userinfo, redacted) };
  const user = decode(userinfo.slice(0, colon), redacted);
  if (user === "") {
    throw new TypeError(`Invalid server URL ${redacted}: a password without a user name`);
  }
  return { dial, redacted, tls, user, pass: decode(userinfo.slice(colon + 1), redacted) };
}

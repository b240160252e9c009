// Whatever an error or a log line quotes, a secret given as a setting must not reach the output:
// the services write every line through a scrubber that masks them.
import { type NatsBusOptions, redactUrl } from "../nats/mod.ts";

// Secrets shorter than this are not masked: replacing a 2-character password everywhere would
// garble every line, and such a password is no protection anyway.
const MIN_MASKED_SECRET = 4;

/**
 * The secrets among NATS settings and others given: a password, a token, credentials in a URL
 * (raw and percent-decoded), longest first so a secret containing another is masked whole.
 *
 * @param nats The NATS settings, if any.
 * @param others More secrets (an admin token).
 * @returns The secrets worth masking.
 *
 * @example Mask a URL's password
 * ```ts
 * import { secretsOf } from "./mod.ts";
 * console.log(secretsOf({ servers: "nats://alice:s3cret@127.0.0.1:4222" })); // ["s3cret"]
 * ```
 */
export function secretsOf(
  nats: NatsBusOptions | undefined,
  others: readonly (string | undefined)[] = [],
): string[] {
  const out: (string | undefined)[] = [...others];
  if (nats !== undefined) {
    out.push(nats.pass, nats.token);
    for (const url of Array.isArray(nats.servers) ? nats.servers : [nats.servers]) {
      if (redactUrl(url) === url) continue;
      const rest = url.replace(/^[A-Za-z][A-Za-z0-9+.-]*:\/\//, "");
      const userinfo = rest.slice(0, rest.lastIndexOf("@"));
      const colon = userinfo.indexOf(":");
      const secret = colon >= 0 ? userinfo.slice(colon + 1) : userinfo;
      out.push(secret);
      try {
        out.push(decodeURIComponent(secret));
      } catch { /* not percent-encoded */ }
    }
  }
  const secrets = out.filter((s): s is string => s !== undefined && s.length >= MIN_MASKED_SECRET);
  return [...new Set(secrets)].sort((a, b) => b.length - a.length);
}

/**
 * Wraps a line writer so the given secrets (and their JSON-escaped forms) become `***`.
 *
 * @param write Where lines go.
 * @param secrets What to mask.
 * @returns The masking writer (`write` itself when there is nothing to mask).
 *
 * @example Scrub a log line
 * ```ts
 * import { scrubbing } from "./mod.ts";
 * const lines: string[] = [];
 * scrubbing((l) => lines.push(l), ["s3cret"])('{"url":"nats://alice:s3cret@host"}');
 * console.log(lines[0]); // {"url":"nats://alice:***@host"}
 * ```
 */
export function scrubbing(
  write: (line: string) => void,
  secrets: readonly string[],
): (line: string) => void {
  if (secrets.length === 0) return write;
  const forms = [...new Set(secrets.flatMap((s) => [s, JSON.stringify(s).slice(1, -1)]))];
  return (line) => {
    let out = line;
    for (const s of forms) out = out.replaceAll(s, "***");
    write(out);
  };
}

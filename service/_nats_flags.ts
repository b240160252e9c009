// The NATS connection flags every entrypoint shares (pulse, reverb, any CLI): one spelling, one
// set of BACKBEAT_* variables, one help block, one translation into connectNatsBus() options.
// Only types and pure checks come from nats/ (downward); nats.js is not loaded here.

import { type NatsBusOptions, redactUrl, validateNatsBusOptions } from "../nats/mod.ts";
import { type FlagSpec, type ParsedFlags, parseNumber } from "./_flags.ts";

/** Most JetStream replicas a stream or KV bucket can have. */
const MAX_REPLICAS = 5;

/**
 * The NATS flags, for {@linkcode parseFlags} next to a command's own: `--nats`, `--nats-user`,
 * `--nats-password`, `--nats-token`, `--nats-nkey`, `--nats-creds`, `--nats-ca`, `--nats-cert`,
 * `--nats-key`, `--nats-tls`, `--nats-inbox-prefix` and `--replicas`, each with a `BACKBEAT_*`
 * variable.
 */
export const NATS_FLAG_SPECS: readonly FlagSpec[] = [
  { name: "nats", env: "BACKBEAT_NATS_URL" },
  { name: "nats-user", env: "BACKBEAT_NATS_USER" },
  { name: "nats-password", env: "BACKBEAT_NATS_PASSWORD" },
  { name: "nats-token", env: "BACKBEAT_NATS_TOKEN" },
  { name: "nats-nkey", env: "BACKBEAT_NATS_NKEY" },
  { name: "nats-creds", env: "BACKBEAT_NATS_CREDS" },
  { name: "nats-ca", env: "BACKBEAT_NATS_CA" },
  { name: "nats-cert", env: "BACKBEAT_NATS_CERT" },
  { name: "nats-key", env: "BACKBEAT_NATS_KEY" },
  { name: "nats-tls", type: "boolean", env: "BACKBEAT_NATS_TLS" },
  { name: "nats-inbox-prefix", env: "BACKBEAT_NATS_INBOX_PREFIX" },
  { name: "replicas", env: "BACKBEAT_REPLICAS" },
];

/** The help lines of {@linkcode NATS_FLAG_SPECS}, for a command's usage text. */
export const NATS_FLAGS_HELP: string =
  `NATS (environment variable in brackets; without --nats: the embedded in-memory bus):
  --nats URL[,URL...]   NATS server(s), comma-separated: nats://host:4222, tls://host:4222 for
                        TLS, every node of a cluster [BACKBEAT_NATS_URL]
  --nats-user NAME      user name [BACKBEAT_NATS_USER]
  --nats-password PW    password, with --nats-user [BACKBEAT_NATS_PASSWORD]
  --nats-token TOKEN    auth token [BACKBEAT_NATS_TOKEN]
  --nats-nkey FILE      NKey user seed file (SU...) [BACKBEAT_NATS_NKEY]
  --nats-creds FILE     .creds file: user JWT and NKey seed [BACKBEAT_NATS_CREDS]
  --nats-ca FILE        CA certificate(s) to trust, PEM; implies --nats-tls [BACKBEAT_NATS_CA]
  --nats-cert FILE      client certificate, PEM, with --nats-key [BACKBEAT_NATS_CERT]
  --nats-key FILE       client private key, PEM [BACKBEAT_NATS_KEY]
  --nats-tls            refuse a server without TLS [BACKBEAT_NATS_TLS]
  --nats-inbox-prefix P reply subjects under P (default _INBOX), for servers that confine each
                        user to its own inboxes [BACKBEAT_NATS_INBOX_PREFIX]
  --replicas N          JetStream replicas of the KV lease bucket and stream, 1 to ${MAX_REPLICAS};
                        3 on a cluster of 3 or more [BACKBEAT_REPLICAS] (default 1)
  Give one credential. A password or token on the command line is visible to every user of
  the machine (ps, /proc); prefer the variables, or better an --nats-nkey or --nats-creds file.
  Credentials in a URL (nats://user:pass@host:4222) work too; logs show them as ***.
`;

/** What {@linkcode natsSettingsFromFlags} found. */
export interface NatsFlagSettings {
  /**
   * Options for `connectNatsBus()` (add a `name`), or `undefined` without `--nats`: run on the
   * embedded bus.
   */
  readonly nats: NatsBusOptions | undefined;
  /** `--replicas`: JetStream replicas of the lease bucket and stream. */
  readonly replicas: number;
}

// Flags that only make sense with a server, in help order.
const CONNECTION_FLAGS = [
  "nats-user",
  "nats-password",
  "nats-token",
  "nats-nkey",
  "nats-creds",
  "nats-ca",
  "nats-cert",
  "nats-key",
  "nats-tls",
  "nats-inbox-prefix",
] as const;

/**
 * Turns the NATS flags of a {@linkcode parseFlags} result into `connectNatsBus()` options and
 * the replica count. Checks everything that can be checked without connecting: URLs, one
 * credential, certificate and key together; files are read when connecting. Messages name the
 * flag or variable a value came from, show URLs redacted and never a secret.
 *
 * @param flags Parsed with {@linkcode NATS_FLAG_SPECS} among the specs.
 * @returns The options (`undefined` without `--nats`) and the replica count.
 * @throws {TypeError} On a bad URL, a connection flag without `--nats`, two credentials,
 * `--nats-password` without `--nats-user`, `--nats-cert` without `--nats-key` (or the reverse),
 * or credentials both in a URL and in flags.
 * @throws {RangeError} When `--replicas` is not an integer from 1 to 5.
 *
 * @example Flags into options
 * ```ts ignore
 * import { NATS_FLAG_SPECS, natsSettingsFromFlags, parseFlags } from "./mod.ts";
 * const flags = parseFlags(
 *   ["--nats", "nats://n1:4222,nats://n2:4222", "--nats-creds", "/etc/backbeat/pulse.creds"],
 *   NATS_FLAG_SPECS,
 *   { BACKBEAT_REPLICAS: "3" },
 * );
 * const { nats, replicas } = natsSettingsFromFlags(flags);
 * console.log(nats?.servers, nats?.credsFile, replicas);
 * // ["nats://n1:4222", "nats://n2:4222"] "/etc/backbeat/pulse.creds" 3
 * ```
 */
export function natsSettingsFromFlags(flags: ParsedFlags): NatsFlagSettings {
  const { values, sources } = flags;
  const str = (name: string): string | undefined =>
    typeof values[name] === "string" ? values[name] as string : undefined;
  const src = (name: string): string => sources[name] ?? `--${name}`;

  const replicasText = str("replicas");
  const replicas = replicasText === undefined
    ? 1
    : parseNumber(replicasText, src("replicas"), { min: 1, max: MAX_REPLICAS, integer: true });

  const given = CONNECTION_FLAGS.filter((name) => values[name] !== undefined);
  for (const name of given) {
    if (values[name] === "") throw new TypeError(`Missing value for ${src(name)}`);
  }
  const natsText = str("nats");
  if (natsText === undefined) {
    if (given.length > 0) {
      throw new TypeError(`${src(given[0])} without --nats (BACKBEAT_NATS_URL)`);
    }
    return { nats: undefined, replicas };
  }
  const servers = natsText.split(",").map((s) => s.trim()).filter((s) => s !== "");
  if (servers.length === 0) throw new TypeError(`Invalid ${src("nats")}: no server URL`);
  for (const url of servers) {
    try {
      validateNatsBusOptions({ servers: url });
    } catch (error) {
      // The message already shows the URL redacted.
      throw new TypeError(`Invalid ${src("nats")}: ${(error as Error).message}`, { cause: error });
    }
  }

  const credentials = (["nats-user", "nats-token", "nats-nkey", "nats-creds"] as const)
    .filter((name) => values[name] !== undefined);
  if (credentials.length > 1) {
    throw new TypeError(
      `${src(credentials[0])} and ${src(credentials[1])}: give one NATS credential`,
    );
  }
  if (values["nats-password"] !== undefined && values["nats-user"] === undefined) {
    throw new TypeError(`${src("nats-password")} without --nats-user (BACKBEAT_NATS_USER)`);
  }
  if (values["nats-cert"] !== undefined && values["nats-key"] === undefined) {
    throw new TypeError(`${src("nats-cert")} without --nats-key (BACKBEAT_NATS_KEY)`);
  }
  if (values["nats-key"] !== undefined && values["nats-cert"] === undefined) {
    throw new TypeError(`${src("nats-key")} without --nats-cert (BACKBEAT_NATS_CERT)`);
  }
  const inUrl = servers.find((url) => redactUrl(url) !== url);
  if (inUrl !== undefined && credentials.length > 0) {
    throw new TypeError(
      `${src("nats")} ${redactUrl(inUrl)} carries credentials and ${
        src(credentials[0])
      } is given: give them in one place`,
    );
  }

  const nats: NatsBusOptions = {
    servers,
    user: str("nats-user"),
    pass: str("nats-password"),
    token: str("nats-token"),
    nkeySeedFile: str("nats-nkey"),
    credsFile: str("nats-creds"),
    caFile: str("nats-ca"),
    certFile: str("nats-cert"),
    keyFile: str("nats-key"),
    requireTls: values["nats-tls"] === true ? true : undefined,
    inboxPrefix: str("nats-inbox-prefix"),
  };
  for (const key of Object.keys(nats) as (keyof NatsBusOptions)[]) {
    if (nats[key] === undefined) delete nats[key];
  }
  // Whatever the checks above missed (e.g. URLs that disagree on credentials).
  validateNatsBusOptions(nats);
  return { nats, replicas };
}

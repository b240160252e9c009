// The reverb command: flags and BACKBEAT_* variables into a configuration (a pure, tested
// function), then the run loop that main.ts calls: it composes a Reverb and its HTTP server.
//
// Output contract: logs are JSON lines on stderr; a bad command line is `reverb: <message>` and
// exit 2; a failure to start is ONE line `reverb: <message>` and exit 1. No line carries a NATS
// password or token: connectNatsBus() redacts its messages, and every line written here passes
// through a scrubber that masks the secrets given on the command line or in the environment.

import { assertClusterId } from "../core/mod.ts";
import { connectNatsBus, type NatsBusLike, type NatsBusOptions } from "../nats/mod.ts";
import {
  type EnvVars,
  type FlagSpec,
  type HostPort,
  JsonLogger,
  type LogLevel,
  NATS_FLAG_SPECS,
  NATS_FLAGS_HELP,
  natsSettingsFromFlags,
  parseFlags,
  parseHostPort,
  parseLogLevel,
  parseNumber,
  resolveNatsFiles,
  scrubbing,
  secretsOf,
  userPaths,
} from "../service/mod.ts";
import {
  DEFAULT_REVERB_HTTP_HOSTNAME,
  DEFAULT_REVERB_HTTP_PORT,
  type ReverbHttpServer,
  serveReverbHttp,
} from "./_http.ts";
import {
  DEFAULT_MAX_CLAIM_AGE_MS,
  DEFAULT_MAX_CLAIM_BYTES,
  DEFAULT_MAX_CLOCK_OFFSET_MS,
  MAX_CLAIM_AGE_LIMIT_MS,
} from "./_intake.ts";
import { Reverb } from "./_reverb.ts";

/** Default of `--cluster`. */
export const DEFAULT_REVERB_CLUSTER = "chorus-dev";
/** Default of `--http`: the HTTP server's own default address. */
export const DEFAULT_REVERB_HTTP = `${DEFAULT_REVERB_HTTP_HOSTNAME}:${DEFAULT_REVERB_HTTP_PORT}`;

/** What the reverb command was asked to do. */
export interface ReverbCliConfig {
  /** `--cluster` / `BACKBEAT_CLUSTER`. */
  clusterId: string;
  /**
   * `connectNatsBus()` options from the shared NATS flags (`--nats`, `--nats-user`, ...), file
   * paths absolute; `undefined` without `--nats`: the embedded bus.
   */
  nats: NatsBusOptions | undefined;
  /** `--replicas` / `BACKBEAT_REPLICAS`: JetStream replicas of the KV bucket and the stream. */
  replicas: number;
  /** `--http` / `BACKBEAT_REVERB_HTTP`; `undefined` when `off`. */
  http: HostPort | undefined;
  /** Where `http` came from, for messages: `--http`, `BACKBEAT_REVERB_HTTP` or `default`. */
  httpSource: string;
  /** `--keyring` / `BACKBEAT_KEYRING`, absolute. */
  keyring: string | undefined;
  /** `--require-signatures` / `BACKBEAT_REQUIRE_SIGNATURES` (needs `--keyring`). */
  requireSignatures: boolean;
  /** `--legacy-claim-signatures` / `BACKBEAT_LEGACY_CLAIM_SIGNATURES`. */
  legacyClaimSignatures: boolean;
  /** `--pulse-keyring` / `BACKBEAT_PULSE_KEYRING`, absolute. */
  pulseKeyring: string | undefined;
  /** `--grace-ms` / `BACKBEAT_GRACE_MS`; `undefined` for a quarter beat. */
  graceMs: number | undefined;
  /** `--max-claim-bytes` / `BACKBEAT_MAX_CLAIM_BYTES`. */
  maxClaimBytes: number;
  /** `--max-claim-age-ms` / `BACKBEAT_MAX_CLAIM_AGE_MS`. */
  maxClaimAgeMs: number;
  /** `--max-clock-offset-ms` / `BACKBEAT_MAX_CLOCK_OFFSET_MS`. */
  maxClockOffsetMs: number;
  /** `--id` / `BACKBEAT_REVERB_ID`. */
  id: string | undefined;
  /** `--log-level` / `BACKBEAT_LOG_LEVEL`. */
  logLevel: LogLevel;
}

/** The outcome of {@linkcode parseReverbArgs}: help was asked for, or a configuration. */
export type ReverbCliParse =
  | { readonly help: true }
  | { readonly help: false; readonly config: ReverbCliConfig };

/** `reverb --help`. */
export const REVERB_USAGE: string = `reverb: verified status aggregation for BACKBEAT

Usage: deno task reverb -- [flags]
       backbeat-reverb [flags]

Flags (environment variable in brackets):
  --cluster ID          cluster to aggregate, one NATS token [BACKBEAT_CLUSTER]
                        (default ${DEFAULT_REVERB_CLUSTER})
  --http HOST:PORT|off  HTTP API and dashboard, port 0 = any [BACKBEAT_REVERB_HTTP]
                        (default ${DEFAULT_REVERB_HTTP})
  --keyring FILE        agents' JSON keyring, reloaded on change and on SIGHUP; an agent
                        listed there must sign [BACKBEAT_KEYRING]
  --require-signatures  reject every unsigned claim; needs --keyring
                        [BACKBEAT_REQUIRE_SIGNATURES]
  --legacy-claim-signatures
                        also accept claim signatures over the payload alone (the 0.1 form)
                        [BACKBEAT_LEGACY_CLAIM_SIGNATURES]
  --pulse-keyring FILE  pulses' keyring: only frames signed by its keys are followed
                        [BACKBEAT_PULSE_KEYRING]
  --grace-ms MS         wait after a window's end before reporting it [BACKBEAT_GRACE_MS]
                        (default a quarter beat, at most 2000)
  --max-claim-bytes N   largest claim accepted [BACKBEAT_MAX_CLAIM_BYTES]
                        (default ${DEFAULT_MAX_CLAIM_BYTES})
  --max-claim-age-ms MS claims with an older HLC are rejected as stale
                        [BACKBEAT_MAX_CLAIM_AGE_MS] (default ${DEFAULT_MAX_CLAIM_AGE_MS})
  --max-clock-offset-ms MS
                        claims with an HLC further ahead are rejected as future
                        [BACKBEAT_MAX_CLOCK_OFFSET_MS] (default ${DEFAULT_MAX_CLOCK_OFFSET_MS})
  --id ID               this instance's id, the lease holder among reverbs
                        [BACKBEAT_REVERB_ID] (default random)
  --log-level LEVEL     debug, info, warn or error [BACKBEAT_LOG_LEVEL] (default info)
  -h, --help            show this help

${NATS_FLAGS_HELP}
Relative file paths are resolved against the directory the command was started from (under
deno task: INIT_CWD). Logs are JSON lines on stderr. A bad command line exits 2, a failure to
start is one line "reverb: <reason>" and exits 1. SIGINT/SIGTERM stop reverb (handing the
active role over); SIGHUP reloads the keyrings.
`;

const SPECS: readonly FlagSpec[] = [
  { name: "cluster", env: "BACKBEAT_CLUSTER" },
  ...NATS_FLAG_SPECS,
  { name: "http", env: "BACKBEAT_REVERB_HTTP" },
  { name: "keyring", env: "BACKBEAT_KEYRING" },
  { name: "require-signatures", type: "boolean", env: "BACKBEAT_REQUIRE_SIGNATURES" },
  {
    name: "legacy-claim-signatures",
    type: "boolean",
    env: "BACKBEAT_LEGACY_CLAIM_SIGNATURES",
  },
  { name: "pulse-keyring", env: "BACKBEAT_PULSE_KEYRING" },
  { name: "grace-ms", env: "BACKBEAT_GRACE_MS" },
  { name: "max-claim-bytes", env: "BACKBEAT_MAX_CLAIM_BYTES" },
  { name: "max-claim-age-ms", env: "BACKBEAT_MAX_CLAIM_AGE_MS" },
  { name: "max-clock-offset-ms", env: "BACKBEAT_MAX_CLOCK_OFFSET_MS" },
  { name: "id", env: "BACKBEAT_REVERB_ID" },
  { name: "log-level", env: "BACKBEAT_LOG_LEVEL" },
  { name: "help", type: "boolean", short: "h" },
];

/**
 * Parses reverb's flags, falling back to `BACKBEAT_*` environment variables; the NATS flags are
 * the shared ones (`NATS_FLAG_SPECS`). One leading `--` is skipped (`deno task reverb -- --cluster
 * prod` passes it through). Relative file paths are resolved against `INIT_CWD` when set (the
 * directory `deno task` was started from), else the working directory.
 *
 * @param args Command-line arguments.
 * @param env Environment variables. @default {{}}
 * @returns Help requested, or the configuration.
 * @throws {TypeError} On an unknown flag, a missing value, a bad cluster id, URL or address, a
 * NATS setting that does not fit (two credentials, a password without user, ...), or
 * `--require-signatures` without `--keyring`. Messages show URLs redacted, never a secret.
 * @throws {RangeError} On a number out of range.
 *
 * @example Parse flags with an environment fallback
 * ```ts ignore
 * import { parseReverbArgs } from "./_cli.ts";
 * const r = parseReverbArgs(["--cluster", "prod", "--grace-ms=250"], {
 *   BACKBEAT_NATS_URL: "nats://n:4222",
 * });
 * if (!r.help) console.log(r.config.clusterId, r.config.graceMs, r.config.nats?.servers); // prod 250 ["nats://n:4222"]
 * ```
 */
export function parseReverbArgs(args: readonly string[], env: EnvVars = {}): ReverbCliParse {
  // parseFlags skips one leading "--" itself: skipping another here would take a second one too.
  const flags = parseFlags(args, SPECS, env);
  const { values, sources, positionals } = flags;
  if (values.help) return { help: true };
  if (positionals.length > 0) {
    throw new TypeError(`Unexpected argument ${JSON.stringify(positionals[0])}`);
  }
  const str = (name: string): string | undefined => values[name] as string | undefined;
  const src = (name: string): string => sources[name] ?? `--${name}`;
  const clusterId = str("cluster") ?? DEFAULT_REVERB_CLUSTER;
  assertClusterId(clusterId);
  const settings = natsSettingsFromFlags(flags);
  const httpText = str("http") ?? DEFAULT_REVERB_HTTP;
  const http = httpText === "off" ? undefined : parseHostPort(httpText, src("http"));
  const file = (name: string): string | undefined => {
    const v = str(name);
    if (v !== undefined && v.trim() === "") {
      throw new TypeError(`Invalid ${src(name)}: expected a file path`);
    }
    return v;
  };
  const keyringText = file("keyring");
  const pulseKeyringText = file("pulse-keyring");
  const requireSignatures = values["require-signatures"] === true;
  if (requireSignatures && keyringText === undefined) {
    // Every claim would be refused: a configuration mistake, not a policy.
    throw new TypeError(
      `Invalid ${
        src("require-signatures")
      } without --keyring (BACKBEAT_KEYRING): no claim could be verified`,
    );
  }
  const grace = str("grace-ms");
  const bytes = str("max-claim-bytes");
  const age = str("max-claim-age-ms");
  const offset = str("max-clock-offset-ms");
  const id = str("id");
  if (id !== undefined && !/^[\w.:-]{1,128}$/.test(id)) {
    throw new TypeError(
      `Invalid ${src("id")} ${JSON.stringify(id)}: expected 1 to 128 of letters, digits, _ . : -`,
    );
  }
  const level = str("log-level");
  const config: ReverbCliConfig = {
    clusterId,
    nats: settings.nats,
    replicas: settings.replicas,
    http,
    httpSource: sources.http ?? "default",
    keyring: keyringText,
    requireSignatures,
    legacyClaimSignatures: values["legacy-claim-signatures"] === true,
    pulseKeyring: pulseKeyringText,
    graceMs: grace === undefined
      ? undefined
      : parseNumber(grace, src("grace-ms"), { min: 0, max: 600_000 }),
    maxClaimBytes: bytes === undefined
      ? DEFAULT_MAX_CLAIM_BYTES
      : parseNumber(bytes, src("max-claim-bytes"), { min: 64, max: 1_048_576, integer: true }),
    maxClaimAgeMs: age === undefined
      ? DEFAULT_MAX_CLAIM_AGE_MS
      : parseNumber(age, src("max-claim-age-ms"), { min: 1, max: MAX_CLAIM_AGE_LIMIT_MS }),
    maxClockOffsetMs: offset === undefined
      ? DEFAULT_MAX_CLOCK_OFFSET_MS
      : parseNumber(offset, src("max-clock-offset-ms"), { min: 1, max: MAX_CLAIM_AGE_LIMIT_MS }),
    id,
    logLevel: level === undefined ? "info" : parseLogLevel(level),
  };
  // Paths last: everything else is checked without touching the file system.
  const resolve = userPaths(env);
  if (keyringText !== undefined) config.keyring = resolve(keyringText);
  if (pulseKeyringText !== undefined) config.pulseKeyring = resolve(pulseKeyringText);
  config.nats = resolveNatsFiles(config.nats, resolve);
  return { help: false, config };
}

/** Where {@linkcode runReverbCli} writes and how it waits for a stop request. */
export interface ReverbCliIo {
  /** Writes text to standard output. */
  stdout: (text: string) => void;
  /** Writes one line (no newline) to standard error: a JSON log line or a `reverb:` message. */
  stderr: (line: string) => void;
  /** Resolves when the process is asked to stop (SIGINT/SIGTERM). */
  stopRequested: Promise<unknown>;
}

function messageOf(error: unknown): string {
  const text = error instanceof Error ? error.message : String(error);
  // One line, whatever the cause said.
  return text.replace(/\s*\n\s*/g, "; ");
}

/**
 * Runs the reverb command until a stop is requested: connects to NATS (unless on the embedded
 * bus), listens for HTTP (unless `--http off`), then starts reverb. The port is bound before
 * reverb starts, so a taken port fails before reverb competes for the active role.
 *
 * @param args Command-line arguments.
 * @param env Environment variables.
 * @param io Output and the stop signal.
 * @returns The exit code: 0 after a clean stop or `--help`, 2 on a bad command line, 1 when
 * reverb cannot start (one line `reverb: <reason>` on stderr).
 *
 * @example Print the help
 * ```ts ignore
 * import { runReverbCli } from "./_cli.ts";
 * const code = await runReverbCli(["--help"], {}, {
 *   stdout: (t) => console.log(t),
 *   stderr: () => {},
 *   stopRequested: Promise.resolve(),
 * });
 * console.log(code); // 0
 * ```
 */
export async function runReverbCli(
  args: readonly string[],
  env: EnvVars,
  io: ReverbCliIo,
): Promise<number> {
  let parsed: ReverbCliParse;
  try {
    parsed = parseReverbArgs(args, env);
  } catch (error) {
    if (error instanceof TypeError || error instanceof RangeError) {
      io.stderr(`reverb: ${messageOf(error)}`);
      io.stderr("Run with --help for usage.");
      return 2;
    }
    io.stderr(`reverb: ${messageOf(error)}`);
    return 1;
  }
  if (parsed.help) {
    io.stdout(REVERB_USAGE);
    return 0;
  }
  const c = parsed.config;
  const write = scrubbing(io.stderr, secretsOf(c.nats));
  const logger = new JsonLogger({
    level: c.logLevel,
    write,
    fields: { service: "reverb", cluster: c.clusterId },
  });
  let bus: NatsBusLike | undefined;
  let reverb: Reverb | undefined;
  let http: ReverbHttpServer | undefined;
  try {
    if (c.nats) {
      bus = await connectNatsBus({ ...c.nats, name: `backbeat-reverb${c.id ? `-${c.id}` : ""}` });
      logger.info("connected to NATS", { url: bus.url });
    }
    reverb = new Reverb({
      clusterId: c.clusterId,
      bus,
      id: c.id,
      keyring: c.keyring,
      requireSignatures: c.requireSignatures,
      legacyClaimSignatures: c.legacyClaimSignatures,
      pulseKeyring: c.pulseKeyring,
      graceMs: c.graceMs,
      maxClaimBytes: c.maxClaimBytes,
      maxClaimAgeMs: c.maxClaimAgeMs,
      maxClockOffsetMs: c.maxClockOffsetMs,
      replicas: c.replicas,
      logger,
    });
    if (c.http) {
      try {
        http = serveReverbHttp(reverb, { ...c.http, logger });
      } catch (error) {
        const how = c.httpSource === "BACKBEAT_REVERB_HTTP"
          ? "BACKBEAT_REVERB_HTTP or --http HOST:PORT"
          : "--http HOST:PORT";
        throw new Error(`${messageOf(error)} (change it with ${how})`, { cause: error });
      }
    }
    await reverb.start();
    // Logged once reverb runs too: whoever waits for this line finds the whole service up.
    if (http) logger.info("serving http", { url: http.url });
  } catch (error) {
    write(`reverb: ${messageOf(error)}`);
    await reverb?.stop();
    await http?.stop();
    await bus?.close();
    return 1;
  }
  await io.stopRequested;
  logger.info("stop requested");
  // Reverb first: while it hands its role over, /readyz already answers "stopping".
  await reverb.stop();
  await http?.stop();
  await bus?.close();
  return 0;
}

// The reverb command: flags and BACKBEAT_* variables into a configuration (a pure, tested
// function), then the run loop that main.ts calls: it composes a Reverb and its HTTP server.

import { assertClusterId } from "../core/mod.ts";
import { connectNatsBus, type NatsBusLike } from "../nats/mod.ts";
import {
  type EnvVars,
  type HostPort,
  JsonLogger,
  type LogLevel,
  parseFlags,
  parseHostPort,
  parseLogLevel,
  parseNumber,
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
  /** `--nats` / `BACKBEAT_NATS_URL` (comma-separated); empty runs on the embedded bus. */
  natsServers: readonly string[];
  /** `--http` / `BACKBEAT_REVERB_HTTP`; `undefined` when `off`. */
  http: HostPort | undefined;
  /** `--keyring` / `BACKBEAT_KEYRING`. */
  keyring: string | undefined;
  /** `--require-signatures` / `BACKBEAT_REQUIRE_SIGNATURES` (needs `--keyring`). */
  requireSignatures: boolean;
  /** `--legacy-claim-signatures` / `BACKBEAT_LEGACY_CLAIM_SIGNATURES`. */
  legacyClaimSignatures: boolean;
  /** `--pulse-keyring` / `BACKBEAT_PULSE_KEYRING`. */
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

Usage: deno task reverb [flags]

Flags (each falls back to the BACKBEAT_* variable shown):
  --cluster ID            cluster to aggregate            BACKBEAT_CLUSTER   (default ${DEFAULT_REVERB_CLUSTER})
  --nats URL[,URL]        NATS server(s); without it       BACKBEAT_NATS_URL
                          reverb runs on the embedded bus
  --http HOST:PORT|off    HTTP API and dashboard           BACKBEAT_REVERB_HTTP (default ${DEFAULT_REVERB_HTTP})
  --keyring FILE          agents' JSON keyring, reloaded   BACKBEAT_KEYRING
                          on change and on SIGHUP; an
                          agent listed there must sign
  --require-signatures    reject every unsigned claim      BACKBEAT_REQUIRE_SIGNATURES
                          (needs --keyring)
  --legacy-claim-signatures  also accept signatures over   BACKBEAT_LEGACY_CLAIM_SIGNATURES
                          the payload alone (the 0.1 form)
  --pulse-keyring FILE    pulses' keyring: only frames     BACKBEAT_PULSE_KEYRING
                          signed by its keys are followed
  --grace-ms MS           wait after a window's end        BACKBEAT_GRACE_MS  (default: a quarter beat, <= 2000)
  --max-claim-bytes N     largest claim accepted           BACKBEAT_MAX_CLAIM_BYTES (default ${DEFAULT_MAX_CLAIM_BYTES})
  --max-claim-age-ms MS   claims with an older HLC are     BACKBEAT_MAX_CLAIM_AGE_MS (default ${DEFAULT_MAX_CLAIM_AGE_MS})
                          rejected as stale
  --max-clock-offset-ms MS  claims with an HLC further     BACKBEAT_MAX_CLOCK_OFFSET_MS (default ${DEFAULT_MAX_CLOCK_OFFSET_MS})
                          ahead are rejected as future
  --id ID                 this instance's id (HA holder)   BACKBEAT_REVERB_ID (default: random)
  --log-level LEVEL       debug, info, warn, error         BACKBEAT_LOG_LEVEL (default info)
  -h, --help              show this help

Logs are JSON lines on stderr. SIGINT/SIGTERM stop reverb (handing the active role over);
SIGHUP reloads the keyrings.
`;

const SPECS = [
  { name: "cluster", env: "BACKBEAT_CLUSTER" },
  { name: "nats", env: "BACKBEAT_NATS_URL" },
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
] as const;

/**
 * Parses reverb's flags, falling back to `BACKBEAT_*` environment variables. One leading `--`
 * is skipped (`deno task reverb -- --cluster prod` passes it through).
 *
 * @param args Command-line arguments.
 * @param env Environment variables.
 * @returns Help requested, or the configuration.
 * @throws {TypeError} On an unknown flag, a missing value, a bad cluster id, URL or address,
 * or `--require-signatures` without `--keyring`.
 * @throws {RangeError} On a number out of range.
 *
 * @example Parse flags with an environment fallback
 * ```ts ignore
 * import { parseReverbArgs } from "./_cli.ts";
 * const r = parseReverbArgs(["--cluster", "prod", "--grace-ms=250"], {
 *   BACKBEAT_NATS_URL: "nats://n:4222",
 * });
 * if (!r.help) console.log(r.config.clusterId, r.config.graceMs, r.config.natsServers); // prod 250 ["nats://n:4222"]
 * ```
 */
export function parseReverbArgs(args: readonly string[], env: EnvVars = {}): ReverbCliParse {
  // parseFlags skips one leading "--" itself: skipping another here would take a second one too.
  const { values, sources, positionals } = parseFlags(args, SPECS, env);
  if (values.help) return { help: true };
  if (positionals.length > 0) {
    throw new TypeError(`Unexpected argument ${JSON.stringify(positionals[0])}`);
  }
  const str = (name: string): string | undefined => values[name] as string | undefined;
  const src = (name: string): string => sources[name] ?? `--${name}`;
  const clusterId = str("cluster") ?? DEFAULT_REVERB_CLUSTER;
  assertClusterId(clusterId);
  const natsServers = (str("nats") ?? "").split(",").map((s) => s.trim()).filter((s) => s);
  for (const url of natsServers) {
    if (!/^(nats|tls|ws|wss):\/\/[^\s]+$|^[^\s:/]+:\d+$/.test(url)) {
      throw new TypeError(
        `Invalid ${src("nats")} ${JSON.stringify(url)}: expected a URL like nats://host:4222`,
      );
    }
  }
  const httpText = str("http") ?? DEFAULT_REVERB_HTTP;
  const http = httpText === "off" ? undefined : parseHostPort(httpText, src("http"));
  const keyring = str("keyring");
  if (keyring !== undefined && keyring.trim() === "") {
    throw new TypeError(`Invalid ${src("keyring")}: expected a file path`);
  }
  const pulseKeyring = str("pulse-keyring");
  if (pulseKeyring !== undefined && pulseKeyring.trim() === "") {
    throw new TypeError(`Invalid ${src("pulse-keyring")}: expected a file path`);
  }
  const requireSignatures = values["require-signatures"] === true;
  if (requireSignatures && keyring === undefined) {
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
  return {
    help: false,
    config: {
      clusterId,
      natsServers,
      http,
      keyring,
      requireSignatures,
      legacyClaimSignatures: values["legacy-claim-signatures"] === true,
      pulseKeyring,
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
    },
  };
}

/** Where {@linkcode runReverbCli} writes and how it waits for a stop request. */
export interface ReverbCliIo {
  /** Writes text to standard output. */
  stdout: (text: string) => void;
  /** Writes one log line (no newline) to standard error. */
  stderr: (line: string) => void;
  /** Resolves when the process is asked to stop (SIGINT/SIGTERM). */
  stopRequested: Promise<unknown>;
}

/**
 * Runs the reverb command until a stop is requested: reverb, and its HTTP server unless
 * `--http off`.
 *
 * @param args Command-line arguments.
 * @param env Environment variables.
 * @param io Output and the stop signal.
 * @returns The exit code: 0 after a clean stop or `--help`, 2 on bad flags, 1 when reverb
 * cannot start.
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
    io.stderr(`error: ${(error as Error).message}\n\nRun with --help for usage.`);
    return 2;
  }
  if (parsed.help) {
    io.stdout(REVERB_USAGE);
    return 0;
  }
  const c = parsed.config;
  const logger = new JsonLogger({
    level: c.logLevel,
    write: io.stderr,
    fields: { service: "reverb", cluster: c.clusterId },
  });
  let bus: NatsBusLike | undefined;
  let reverb: Reverb | undefined;
  let http: ReverbHttpServer | undefined;
  try {
    if (c.natsServers.length > 0) {
      bus = await connectNatsBus({
        servers: [...c.natsServers],
        name: `reverb ${c.id ?? ""}`.trim(),
      });
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
      logger,
    });
    await reverb.start();
    if (c.http) {
      http = serveReverbHttp(reverb, { ...c.http, logger });
      logger.info("serving http", { url: http.url });
    }
  } catch (error) {
    logger.error("cannot start reverb", { error: (error as Error).message });
    await reverb?.stop();
    await bus?.close();
    return 1;
  }
  await io.stopRequested;
  logger.info("stop requested");
  // Reverb first: while it hands its role over, /readyz already answers "stopping".
  await reverb.stop();
  await http?.shutdown();
  await bus?.close();
  return 0;
}

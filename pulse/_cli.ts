import {
  assertClusterId,
  type Bus,
  DEFAULT_BEATS_PER_BAR,
  DEFAULT_TEMPO_BPM,
  InMemoryBus,
  type Logger,
  parsePhases,
  type Phase,
  readSigningKeyFile,
  type SigningKey,
} from "../core/mod.ts";
import { connectNatsBus, type NatsBusOptions } from "../nats/mod.ts";
import {
  type EnvVars,
  type FlagSpec,
  type HostPort,
  JsonLogger,
  KeyringWatcher,
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
  DEFAULT_PULSE_HTTP_HOSTNAME,
  DEFAULT_PULSE_HTTP_PORT,
  type PulseHttpServer,
  servePulseHttp,
} from "./_http.ts";
import { Pulse } from "./_pulse.ts";
import { MAX_PULSE_TEMPO_BPM } from "./_tempo.ts";

const DEFAULT_PULSE_CLUSTER = "chorus-dev";

const FLAGS: readonly FlagSpec[] = [
  { name: "cluster", env: "BACKBEAT_CLUSTER" },
  ...NATS_FLAG_SPECS,
  { name: "tempo", env: "BACKBEAT_TEMPO" },
  { name: "beats-per-bar", env: "BACKBEAT_BEATS_PER_BAR" },
  { name: "phases", env: "BACKBEAT_PHASES" },
  { name: "id", env: "BACKBEAT_PULSE_ID" },
  { name: "http", env: "BACKBEAT_PULSE_HTTP" },
  { name: "admin-token", env: "BACKBEAT_ADMIN_TOKEN" },
  { name: "admin-keyring", env: "BACKBEAT_ADMIN_KEYRING" },
  { name: "control", env: "BACKBEAT_CONTROL" },
  { name: "signing-key", env: "BACKBEAT_SIGNING_KEY" },
  { name: "pulse-keyring", env: "BACKBEAT_PULSE_KEYRING" },
  { name: "log-level", env: "BACKBEAT_LOG_LEVEL" },
  { name: "help", type: "boolean", short: "h" },
];

/** Environment variables the pulse command reads. */
export const PULSE_ENV_VARS: readonly string[] = FLAGS.flatMap((f) => f.env ? [f.env] : []);

/** The pulse command's `--help` text. */
export const PULSE_USAGE: string = `backbeat pulse: the cluster's beat service

Usage: deno task pulse -- [flags]
       backbeat-pulse [flags]            (the compiled binary: deno task compile:pulse)

Flags (environment variable in brackets):
  --cluster ID          cluster id, one NATS token [BACKBEAT_CLUSTER] (default ${DEFAULT_PULSE_CLUSTER})
  --tempo BPM           tempo of a new timeline, 0.1 to ${MAX_PULSE_TEMPO_BPM} [BACKBEAT_TEMPO] (default ${DEFAULT_TEMPO_BPM})
  --beats-per-bar N     beats in a bar, 1 to 64 [BACKBEAT_BEATS_PER_BAR] (default ${DEFAULT_BEATS_PER_BAR})
  --phases LIST         phase of each bar position, e.g. plan,execute,execute,review [BACKBEAT_PHASES]
  --id ID               pulse id, unique in the cluster [BACKBEAT_PULSE_ID] (default random)
  --http HOST:PORT      HTTP listen address, port 0 = any [BACKBEAT_PULSE_HTTP]
                        (default ${DEFAULT_PULSE_HTTP_HOSTNAME}:${DEFAULT_PULSE_HTTP_PORT})
  --admin-token TOKEN   bearer token required by POST /tempo; control messages must prove it
                        with x-auth-hmac [BACKBEAT_ADMIN_TOKEN]
  --admin-keyring FILE  operator keys: control messages signed by one of them are accepted
                        [BACKBEAT_ADMIN_KEYRING]
  --control on|off      subscribe to backbeat.<cluster>.control [BACKBEAT_CONTROL] (default on;
                        without --admin-token or --admin-keyring anyone on the bus may use it)
  --signing-key FILE    Ed25519 private JWK (with kid): sign every frame [BACKBEAT_SIGNING_KEY]
  --pulse-keyring FILE  trusted pulse keys: refuse unsigned or badly signed frames of other
                        pulses [BACKBEAT_PULSE_KEYRING]
  --log-level LEVEL     debug, info, warn or error [BACKBEAT_LOG_LEVEL] (default info)
  -h, --help            show this help

Keyring files ({"<owner>": [{"key_id", "public_key", "not_before"?, "not_after"?}]}) are
reloaded on change and on SIGHUP. Keep the signing key file readable by pulse only.
HTTP: GET /healthz, GET /readyz, GET /metrics, GET /tempo, POST /tempo {"tempo_bpm": n}.
Control (backbeat.<cluster>.control): {"tempo_bpm": n, "issued_at": "<RFC 3339>"}; with
--admin-token or --admin-keyring it needs x-auth-hmac or x-signature/x-key-id over
"backbeat.control.v1\\n<cluster>\\n0\\n<payload>", issued_at within 30 s and newer than the last.
A timeline stored in KV keeps its tempo over --tempo: change it with POST /tempo or
\`backbeat tempo set\`.
Logs: one JSON object per line on stderr. A bad command line exits 2; a failure to start is one
line "pulse: <reason>" on stderr and exits 1. SIGINT/SIGTERM: hand over and exit 0.

${NATS_FLAGS_HELP}`;

/** Settings of a pulse process, from flags and environment. */
export interface PulseConfig {
  /** Cluster id. */
  readonly clusterId: string;
  /** Options for `connectNatsBus()` (without `name`); `undefined` for the embedded bus. */
  readonly nats: NatsBusOptions | undefined;
  /** JetStream replicas of the lease bucket (`--replicas`). */
  readonly replicas: number;
  /** Tempo of a new timeline. */
  readonly tempoBpm: number;
  /** Beats in a bar. */
  readonly beatsPerBar: number;
  /** Phase map, if given. */
  readonly phases?: readonly Phase[];
  /** Pulse id, if given. */
  readonly id?: string;
  /** HTTP listen address. */
  readonly http: HostPort;
  /** Where the address came from (`--http`, `BACKBEAT_PULSE_HTTP`), for messages. */
  readonly httpSource?: string;
  /** Admin token for `POST /tempo` and control messages, if any. */
  readonly adminToken?: string;
  /** Operator keyring file for signed control messages, if any. */
  readonly adminKeyringFile?: string;
  /** Whether to subscribe to the control subject. */
  readonly control: boolean;
  /** Private key file to sign frames with, if any. */
  readonly signingKeyFile?: string;
  /** Trusted pulse keyring file, if any. */
  readonly pulseKeyringFile?: string;
  /** Log level. */
  readonly logLevel: LogLevel;
}

/** What the command line asks for. */
export type PulseCommand =
  | { readonly help: true }
  | { readonly help: false; readonly config: PulseConfig };

/**
 * Parses the pulse command line; flags win over `BACKBEAT_*` environment variables. One leading
 * `--` is skipped: `deno task pulse -- --help` passes it on.
 *
 * @param args Command-line arguments.
 * @param env Environment variables (see {@linkcode PULSE_ENV_VARS}). @default {{}}
 * @returns Help, or the configuration to run.
 * @throws {TypeError} On an unknown flag, missing value, bad cluster id, phase map or address.
 * @throws {RangeError} On a number out of range.
 *
 * @example Parse flags
 * ```ts ignore
 * import { parsePulseArgs } from "./_cli.ts";
 * const cmd = parsePulseArgs(["--cluster", "prod", "--tempo", "120"], { BACKBEAT_LOG_LEVEL: "debug" });
 * if (!cmd.help) console.log(cmd.config.tempoBpm, cmd.config.logLevel); // 120 "debug"
 * ```
 */
export function parsePulseArgs(args: readonly string[], env: EnvVars = {}): PulseCommand {
  // parseFlags skips one leading "--" itself (`deno task pulse -- --help` passes it on).
  const flags = parseFlags(args, FLAGS, env);
  const { values, sources, positionals } = flags;
  if (values.help) return { help: true };
  if (positionals.length > 0) {
    throw new TypeError(`Unexpected argument ${JSON.stringify(positionals[0])}`);
  }
  const str = (name: string): string | undefined => values[name] as string | undefined;
  const clusterId = str("cluster") ?? DEFAULT_PULSE_CLUSTER;
  assertClusterId(clusterId);
  // Messages name the flag or variable and show URLs redacted, never a secret.
  const { nats, replicas } = natsSettingsFromFlags(flags);
  const tempoText = str("tempo");
  const tempoBpm = tempoText === undefined
    ? DEFAULT_TEMPO_BPM
    : parseNumber(tempoText, sources.tempo, { min: 0.1, max: MAX_PULSE_TEMPO_BPM });
  const bpbText = str("beats-per-bar");
  const beatsPerBar = bpbText === undefined
    ? DEFAULT_BEATS_PER_BAR
    : parseNumber(bpbText, sources["beats-per-bar"], { min: 1, max: 64, integer: true });
  const phasesText = str("phases");
  let phases: Phase[] | undefined;
  if (phasesText !== undefined) {
    phases = parsePhases(phasesText);
    if (phases.length !== beatsPerBar) {
      if (bpbText !== undefined) {
        throw new TypeError(
          `Invalid ${sources.phases}: ${phases.length} phases for ${beatsPerBar} beats per bar`,
        );
      }
    }
  }
  const id = str("id");
  if (id !== undefined && !/^[\x21-\x7e]{1,128}$/.test(id)) {
    throw new TypeError(
      `Invalid ${sources.id} ${JSON.stringify(id)}: 1 to 128 printable characters`,
    );
  }
  const httpText = str("http");
  const http = httpText === undefined
    ? { hostname: DEFAULT_PULSE_HTTP_HOSTNAME, port: DEFAULT_PULSE_HTTP_PORT }
    : parseHostPort(httpText, sources.http);
  const adminToken = str("admin-token");
  if (adminToken !== undefined && !/^\S{1,1024}$/.test(adminToken)) {
    throw new TypeError(
      `Invalid ${sources["admin-token"]}: expected 1 to 1024 non-space characters`,
    );
  }
  const controlText = str("control");
  if (controlText !== undefined && !/^(on|off)$/i.test(controlText)) {
    throw new TypeError(
      `Invalid ${sources.control} ${JSON.stringify(controlText)}: expected on or off`,
    );
  }
  // Paths the user typed are read from where they typed them (INIT_CWD under deno task).
  const resolve = userPaths(env);
  const file = (name: string): string | undefined => {
    const v = str(name);
    if (v !== undefined && v.trim() === "") {
      throw new TypeError(`Invalid ${sources[name]}: expected a file path`);
    }
    return v === undefined ? undefined : resolve(v);
  };
  const levelText = str("log-level");
  const logLevel = levelText === undefined ? "info" : parseLogLevel(levelText);
  return {
    help: false,
    config: {
      clusterId,
      nats: resolveNatsFiles(nats, resolve),
      replicas,
      tempoBpm,
      // A phase list alone sets the bar length.
      beatsPerBar: phases && bpbText === undefined ? phases.length : beatsPerBar,
      phases,
      id,
      http,
      httpSource: sources.http ?? "--http",
      adminToken,
      adminKeyringFile: file("admin-keyring"),
      control: controlText === undefined || controlText.toLowerCase() === "on",
      signingKeyFile: file("signing-key"),
      pulseKeyringFile: file("pulse-keyring"),
      logLevel,
    },
  };
}

/** Options of {@linkcode runPulse}. */
export interface RunPulseOptions {
  /** Stops the pulse (hand over, close) when aborted. */
  signal: AbortSignal;
  /** Logger. @default {a JsonLogger on stderr at the configured level, secrets masked} */
  logger?: Logger;
  /**
   * Writes one line (no newline) to standard error: why the pulse cannot start,
   * `pulse: <reason>`. @default {a synchronous write to stderr}
   */
  stderr?: (line: string) => void;
}

const encoder = new TextEncoder();

// One line to stderr, synchronously (as JsonLogger's own default writes).
function writeStderr(line: string): void {
  const bytes = encoder.encode(line + "\n");
  let off = 0;
  while (off < bytes.length) off += Deno.stderr.writeSync(bytes.subarray(off));
}

function messageOf(error: unknown): string {
  const text = error instanceof Error ? error.message : String(error);
  // One line, whatever the cause said.
  return text.replace(/\s*\n\s*/g, "; ");
}

// Starts watching a keyring file; reloads and failures are logged (a bad file keeps the old keys).
async function watchKeyring(path: string, what: string, logger: Logger): Promise<KeyringWatcher> {
  const watcher = new KeyringWatcher(path);
  watcher.addEventListener("reload", (e) => {
    logger.info(`${what} reloaded`, { path, keys: e.detail.keys });
  });
  watcher.addEventListener("error", (e) => {
    logger.warn(`${what} reload failed`, { path, error: e.message });
  });
  await watcher.start();
  return watcher;
}

// Binds the HTTP server; a taken or refused address is one sentence naming it and the flag.
function listen(pulse: Pulse, config: PulseConfig, logger: Logger): PulseHttpServer {
  const { hostname, port } = config.http;
  const addr = `${hostname.includes(":") ? `[${hostname}]` : hostname}:${port}`;
  const source = config.httpSource ?? "--http";
  const how = source === "--http" ? "--http HOST:PORT" : `${source} or --http HOST:PORT`;
  try {
    return servePulseHttp(pulse, { ...config.http, adminToken: config.adminToken, logger });
  } catch (error) {
    const why = error instanceof Deno.errors.AddrInUse
      ? "address in use"
      : error instanceof Deno.errors.PermissionDenied
      ? "permission denied"
      : error instanceof Deno.errors.AddrNotAvailable
      ? "address not available"
      : messageOf(error);
    throw new Error(`Cannot listen on ${addr}: ${why} (change it with ${how})`, { cause: error });
  }
}

/**
 * Runs a pulse process: loads its keys, connects the bus, binds its HTTP server, starts the
 * pulse, and on abort hands over (releasing the lease), shuts down and closes everything. The
 * port is bound before the pulse competes for the lease, so a taken port fails before it leads.
 * A failure to start is one line `pulse: <reason>` (URLs redacted, never a secret).
 *
 * @param config The configuration (from {@linkcode parsePulseArgs}).
 * @param options The stop signal, logger and error output.
 * @returns The exit code: 0 after a clean stop, 1 when startup failed.
 *
 * @example Run until aborted
 * ```ts ignore
 * import { parsePulseArgs, runPulse } from "./_cli.ts";
 * const cmd = parsePulseArgs(["--http", "127.0.0.1:0"]);
 * const ac = new AbortController();
 * setTimeout(() => ac.abort(), 1000);
 * if (!cmd.help) console.log(await runPulse(cmd.config, { signal: ac.signal })); // 0
 * ```
 */
export async function runPulse(config: PulseConfig, options: RunPulseOptions): Promise<number> {
  const stderr = scrubbing(
    options.stderr ?? writeStderr,
    secretsOf(config.nats, [config.adminToken]),
  );
  const logger = options.logger ??
    new JsonLogger({
      level: config.logLevel,
      write: stderr,
      fields: { service: "pulse", cluster: config.clusterId },
    });
  let signingKey: SigningKey | undefined;
  const watchers: KeyringWatcher[] = [];
  let pulseKeyring: KeyringWatcher | undefined;
  let adminKeyring: KeyringWatcher | undefined;
  let bus: Bus | undefined;
  let pulse: Pulse | undefined;
  let http: PulseHttpServer | undefined;
  const fail = async (error: unknown): Promise<number> => {
    stderr(`pulse: ${messageOf(error)}`);
    await pulse?.stop().catch(() => {});
    await http?.stop().catch(() => {});
    await bus?.close().catch(() => {});
    await Promise.all(watchers.map((w) => w.stop()));
    return 1;
  };
  try {
    // The messages name the file and the kind of failure, never a key's content.
    if (config.signingKeyFile !== undefined) {
      signingKey = await readSigningKeyFile(config.signingKeyFile);
    }
    if (config.pulseKeyringFile !== undefined) {
      pulseKeyring = await watchKeyring(config.pulseKeyringFile, "pulse keyring", logger);
      watchers.push(pulseKeyring);
    }
    if (config.adminKeyringFile !== undefined) {
      adminKeyring = await watchKeyring(config.adminKeyringFile, "admin keyring", logger);
      watchers.push(adminKeyring);
    }
  } catch (error) {
    return await fail(new Error(`Cannot load keys: ${messageOf(error)}`, { cause: error }));
  }
  try {
    // connectNatsBus's message names the (redacted) URL and the reason.
    bus = config.nats !== undefined
      ? await connectNatsBus({
        ...config.nats,
        name: `backbeat-pulse${config.id ? `-${config.id}` : ""}`,
      })
      : new InMemoryBus();
  } catch (error) {
    return await fail(error);
  }
  try {
    pulse = new Pulse({
      clusterId: config.clusterId,
      bus,
      tempoBpm: config.tempoBpm,
      beatsPerBar: config.beatsPerBar,
      phases: config.phases,
      id: config.id,
      logger,
      signingKey,
      pulseKeyring,
      adminToken: config.adminToken,
      adminKeyring,
      control: config.control,
      replicas: config.replicas,
    });
    pulse.addEventListener("tempo", (e) => {
      logger.info("tempo", {
        tempo_bpm: e.detail.tempoBpm,
        effective_beat: e.detail.effectiveBeat,
      });
    });
    http = listen(pulse, config, logger);
    await pulse.start(options.signal);
  } catch (error) {
    return await fail(error);
  }
  logger.info("pulse running", {
    pulse_id: pulse.id,
    cluster_id: pulse.clusterId,
    role: pulse.role,
    transport: config.nats !== undefined ? "nats" : "embedded",
    nats: (bus as { url?: string }).url,
    http: http.url,
    signing_key_id: signingKey?.keyId,
    verifies_frames: pulseKeyring !== undefined,
    control: !config.control
      ? "off"
      : config.adminToken !== undefined || adminKeyring !== undefined
      ? "authenticated"
      : "open",
    epoch: pulse.epoch,
  });
  if (!options.signal.aborted) {
    await new Promise<void>((resolve) => {
      options.signal.addEventListener("abort", () => resolve(), { once: true });
    });
  }
  await pulse.stop();
  await http.stop();
  await bus.close();
  await Promise.all(watchers.map((w) => w.stop()));
  logger.info("pulse stopped", { pulse_id: pulse.id });
  return 0;
}

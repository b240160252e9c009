// The `backbeat` dispatcher: picks the subcommand, parses its flags (a failure there is a usage
// error, exit 2), runs it (a failure there is exit 1), and reports both one way:
// `backbeat <cmd>: <message>` on stderr.

import { type EnvVars, parseFlags, parseNumber } from "../service/mod.ts";
import { parseKeygen, parseKeyring, runKeygen, runKeyring } from "./_keys.ts";
import { KEYGEN_USAGE, KEYRING_USAGE } from "./_keys.ts";
import { LOAD_USAGE, LOAD_WORKER_COMMAND, parseLoad, runLoad } from "./_load.ts";
import { runLoadWorker } from "./_load_agents.ts";
import { parseStatus, runStatus, STATUS_USAGE } from "./_status.ts";
import { parseTail, runTail, TAIL_USAGE } from "./_tail.ts";
import { parseTempoCommand, runTempo, TEMPO_USAGE } from "./_tempo.ts";
import { runValidate } from "./_validate.ts";
import {
  callerDirectory,
  type CliIo,
  type CommandContext,
  commandContext,
  errorMessage,
  EXIT_FAILURE,
  EXIT_OK,
  EXIT_USAGE,
  TextSink,
} from "./_io.ts";

/** The streams and settings {@linkcode runBackbeatCli} runs with. */
export interface BackbeatCliIo {
  /** Standard input (read by `validate --message -`). @default {undefined} */
  readonly stdin?: ReadableStream<Uint8Array>;
  /** Standard output. */
  readonly stdout: WritableStream<Uint8Array>;
  /** Standard error. */
  readonly stderr: WritableStream<Uint8Array>;
  /** Environment variables: `BACKBEAT_*` fallbacks of flags, `INIT_CWD`. @default {{}} */
  readonly env?: Readonly<Record<string, string | undefined>>;
  /**
   * The absolute directory relative paths are resolved against.
   * @default {INIT_CWD when set (deno task runs in the project folder), else Deno.cwd()}
   */
  readonly cwd?: string;
  /** Aborting it stops a running `tail` or `load` cleanly (wire SIGINT to it). @default {never aborted} */
  readonly signal?: AbortSignal;
  /** Whether stderr is a terminal (the load progress line rewrites itself). @default {false} */
  readonly stderrIsTerminal?: boolean;
}

/** `backbeat --help`. */
export const BACKBEAT_USAGE: string = `backbeat: operate a BACKBEAT cluster from the command line

Usage:
  deno task backbeat <command> [flags]
  backbeat <command> [flags]    (the compiled binary: deno task compile:backbeat)

Commands:
  tail beats|claims|bars   follow beats, claims or bar reports live (--json: NDJSON)
  tempo get                read the tempo (pulse's HTTP API, or a beat frame)
  tempo set <bpm>          change it with an authenticated control message; lands on the
                           next downbeat
  status                   pulse's and reverb's health in a few lines
  keygen                   make an Ed25519 key file for an agent, a pulse or an operator
  keyring add|list|remove  edit a keyring file atomically
  validate ...             check messages against the v1 schemas (backbeat-validate)
  load                     load-test a running pulse and reverb with N SDK agents
  help <command>           a command's flags (also: backbeat <command> --help)

Flags fall back to BACKBEAT_* environment variables (each command's --help names them).
Relative paths are read from the directory you ran the command in (INIT_CWD under deno task).
Errors: "backbeat <command>: <message>" on stderr; exit status 1 for a failure, 2 for a bad
command line. Secrets (tokens, passwords, private keys) are never printed.
`;

interface Command {
  readonly usage: string;
  parse(args: readonly string[], env: EnvVars, path: (p: string) => string): unknown;
  run(options: unknown, ctx: CommandContext): Promise<number>;
}

function command<T>(
  usage: string,
  parse: (args: readonly string[], env: EnvVars, path: (p: string) => string) => T | "help",
  run: (options: T, ctx: CommandContext) => Promise<number>,
): Command {
  return { usage, parse, run: (o, ctx) => run(o as T, ctx) };
}

const COMMANDS: Readonly<Record<string, Command>> = {
  tail: command(TAIL_USAGE, parseTail, runTail),
  tempo: command(TEMPO_USAGE, parseTempoCommand, runTempo),
  status: command(STATUS_USAGE, (a, env) => parseStatus(a, env), runStatus),
  keygen: command(KEYGEN_USAGE, parseKeygen, runKeygen),
  keyring: command(KEYRING_USAGE, parseKeyring, runKeyring),
  load: command(LOAD_USAGE, parseLoad, runLoad),
};

async function write(stream: WritableStream<Uint8Array>, text: string): Promise<void> {
  const sink = new TextSink(stream);
  await sink.write(text);
  await sink.release();
}

/**
 * Runs one `backbeat` command line.
 *
 * @param args The arguments (one leading `--`, which `deno task` passes on, is skipped).
 * @param io Streams, environment, directory and stop signal.
 * @returns The exit status: 0, 1 for a failure, 2 for a bad command line.
 *
 * @example Tail eight beats
 * ```ts ignore
 * import { runBackbeatCli } from "@chorus/backbeat/cli";
 * const code = await runBackbeatCli(["tail", "beats", "--count", "8"], {
 *   stdout: Deno.stdout.writable,
 *   stderr: Deno.stderr.writable,
 *   env: { BACKBEAT_NATS_URL: "nats://127.0.0.1:4222" },
 * });
 * console.log(code); // 0
 * ```
 */
export async function runBackbeatCli(args: readonly string[], io: BackbeatCliIo): Promise<number> {
  const env = io.env ?? {};
  const cliIo: CliIo = {
    stdin: io.stdin,
    stdout: io.stdout,
    stderr: io.stderr,
    env,
    cwd: io.cwd ?? callerDirectory(env, Deno.cwd()),
    signal: io.signal ?? new AbortController().signal,
    stderrIsTerminal: io.stderrIsTerminal ?? false,
  };
  const rest = args[0] === "--" ? args.slice(1) : [...args];
  const [name, ...sub] = rest;
  if (name === undefined) {
    await write(io.stderr, `${BACKBEAT_USAGE}\nbackbeat: missing command\n`);
    return EXIT_USAGE;
  }
  if (name === "-h" || name === "--help") {
    await write(io.stdout, BACKBEAT_USAGE);
    return EXIT_OK;
  }
  if (name === "help") {
    const which = sub[0];
    if (which === undefined) {
      await write(io.stdout, BACKBEAT_USAGE);
      return EXIT_OK;
    }
    if (which === "validate") return await runValidate(["--help"], cliIo);
    const cmd = COMMANDS[which];
    if (!cmd) {
      await write(
        io.stderr,
        `backbeat: unknown command ${
          JSON.stringify(which)
        }\nRun "backbeat --help" for the commands.\n`,
      );
      return EXIT_USAGE;
    }
    await write(io.stdout, cmd.usage);
    return EXIT_OK;
  }
  if (name === "validate") return await runValidate(sub, cliIo);
  if (name === LOAD_WORKER_COMMAND) return await loadWorker(sub, cliIo);
  const cmd = COMMANDS[name];
  if (!cmd) {
    await write(
      io.stderr,
      `backbeat: unknown command ${
        JSON.stringify(name)
      }\nRun "backbeat --help" for the commands.\n`,
    );
    return EXIT_USAGE;
  }
  // A closed stdout (`| head`) stops a streaming command as SIGINT would.
  const gone = new AbortController();
  const runIo: CliIo = { ...cliIo, signal: AbortSignal.any([cliIo.signal, gone.signal]) };
  const ctx = commandContext(runIo, name, () => gone.abort());
  try {
    let options: unknown;
    try {
      options = cmd.parse(sub, env, ctx.path);
    } catch (error) {
      await ctx.warn(errorMessage(error));
      await ctx.err.write(`Run "backbeat ${name} --help" for usage.\n`);
      return EXIT_USAGE;
    }
    if (options === "help") {
      await ctx.out.write(cmd.usage);
      return EXIT_OK;
    }
    try {
      return await cmd.run(options, ctx);
    } catch (error) {
      await ctx.warn(errorMessage(error));
      return EXIT_FAILURE;
    }
  } finally {
    await ctx.out.release();
    await ctx.err.release();
  }
}

async function loadWorker(args: readonly string[], io: CliIo): Promise<number> {
  const { values } = parseFlags(args, [{ name: "worker" }]);
  const worker = parseNumber(String(values.worker ?? "1"), "--worker", { min: 1, integer: true });
  if (io.stdin === undefined) return EXIT_USAGE;
  return await runLoadWorker({ stdin: io.stdin, stdout: io.stdout, stderr: io.stderr }, worker);
}

/** The variables the tool reads (asked one by one when not every variable may be read). */
const ENV_VARS = [
  "INIT_CWD",
  "BACKBEAT_CLUSTER",
  "BACKBEAT_NATS_URL",
  "BACKBEAT_NATS_USER",
  "BACKBEAT_NATS_PASSWORD",
  "BACKBEAT_NATS_TOKEN",
  "BACKBEAT_NATS_NKEY",
  "BACKBEAT_NATS_CREDS",
  "BACKBEAT_NATS_CA",
  "BACKBEAT_NATS_CERT",
  "BACKBEAT_NATS_KEY",
  "BACKBEAT_NATS_TLS",
  "BACKBEAT_NATS_INBOX_PREFIX",
  "BACKBEAT_REPLICAS",
  "BACKBEAT_PULSE_URL",
  "BACKBEAT_REVERB_URL",
  "BACKBEAT_ADMIN_TOKEN",
  "BACKBEAT_ADMIN_KEY",
  "BACKBEAT_KEYRING",
];

function readEnv(): Record<string, string | undefined> {
  // Only what is granted: asking for more would prompt on a terminal.
  if (Deno.permissions.querySync({ name: "env" }).state === "granted") return Deno.env.toObject();
  const env: Record<string, string | undefined> = {};
  for (const name of ENV_VARS) {
    if (Deno.permissions.querySync({ name: "env", variable: name }).state === "granted") {
      env[name] = Deno.env.get(name);
    }
  }
  return env;
}

/**
 * The process's streams, environment (what may be read without a prompt) and terminal state,
 * for {@linkcode runBackbeatCli}.
 *
 * @param signal Aborted on SIGINT/SIGTERM.
 * @returns The I/O of this process.
 *
 * @example Run with this process's streams
 * ```ts ignore
 * const stop = new AbortController();
 * Deno.addSignalListener("SIGINT", () => stop.abort());
 * Deno.exit(await runBackbeatCli(Deno.args, processIo(stop.signal)));
 * ```
 */
export function processIo(signal: AbortSignal): BackbeatCliIo {
  return {
    stdin: Deno.stdin.readable,
    stdout: Deno.stdout.writable,
    stderr: Deno.stderr.writable,
    env: readEnv(),
    signal,
    stderrIsTerminal: Deno.stderr.isTerminal(),
  };
}

// Flags and connections the subcommands share: the cluster, the NATS connection flags of every
// BACKBEAT entrypoint (service NATS_FLAG_SPECS) with a local default server, numbers, and the
// usage block that shows both ways of running the tool.

import { assertClusterId, type BeatFrame, subjects } from "../core/mod.ts";
import { connectNatsBus, type NatsBusLike, type NatsBusOptions } from "../nats/mod.ts";
import { decodeBeatFrame } from "../schemas/mod.ts";
import {
  type EnvVars,
  type FlagSpec,
  NATS_FLAG_SPECS,
  NATS_FLAGS_HELP,
  natsSettingsFromFlags,
  type ParsedFlags,
  parseFlags,
  parseNumber,
} from "../service/mod.ts";
import { parseHttpUrl } from "./_io.ts";

/** Default of `--cluster`, as pulse's and reverb's. */
export const DEFAULT_CLUSTER = "chorus-dev";
/** The server used when neither `--nats` nor `BACKBEAT_NATS_URL` is given. */
export const DEFAULT_NATS_URL = "nats://127.0.0.1:4222";

/** `-h`/`--help`, accepted by every subcommand. */
export const HELP_SPEC: FlagSpec = { name: "help", type: "boolean", short: "h" };
/** `--cluster` with its variable. */
export const CLUSTER_SPEC: FlagSpec = { name: "cluster", env: "BACKBEAT_CLUSTER" };
/** `--json`: machine-readable output. */
export const JSON_SPEC: FlagSpec = { name: "json", type: "boolean" };
/** The NATS connection flags plus `--cluster`. */
export const BUS_SPECS: readonly FlagSpec[] = [...NATS_FLAG_SPECS, CLUSTER_SPEC];

/** The NATS flags' help, for a tool where a server is always used. */
export const BUS_HELP: string =
  `  --cluster ID          cluster id [BACKBEAT_CLUSTER] (default ${DEFAULT_CLUSTER})\n` +
  NATS_FLAGS_HELP
    .replace("without --nats: the embedded in-memory bus", `default --nats ${DEFAULT_NATS_URL}`)
    .replace(/^/gm, "  ")
    .replace(/^ {2}$/gm, "");

/**
 * The usage lines of a subcommand, both ways it is run.
 *
 * @param synopsis The subcommand and its arguments, e.g. `tail beats|claims|bars [flags]`.
 * @returns `Usage:` and two lines.
 *
 * @example Both ways of running a command
 * ```ts ignore
 * console.log(usageLines("status [flags]"));
 * // Usage:
 * //   deno task backbeat status [flags]
 * //   backbeat status [flags]    (the compiled binary)
 * ```
 */
export function usageLines(synopsis: string): string {
  return `Usage:\n  deno task backbeat ${synopsis}\n  backbeat ${synopsis}    (the compiled binary)\n`;
}

/**
 * Parses a subcommand's flags (`node:util` parseArgs through service `parseFlags`).
 *
 * @param args The arguments after the subcommand.
 * @param specs Its flags (help is added).
 * @param env The environment.
 * @returns The values.
 * @throws {TypeError} On an unknown flag or a missing value.
 *
 * @example Flags with a variable
 * ```ts ignore
 * const flags = parseCommandFlags(["--count", "3"], [{ name: "count" }], {});
 * console.log(flags.values.count); // "3"
 * ```
 */
export function parseCommandFlags(
  args: readonly string[],
  specs: readonly FlagSpec[],
  env: EnvVars,
): ParsedFlags {
  return parseFlags(args, [...specs, HELP_SPEC], env);
}

/**
 * A string flag's value.
 *
 * @param flags Parsed flags.
 * @param name The flag.
 * @returns The value, `undefined` when absent.
 * @throws {TypeError} When it is given empty.
 *
 * @example Read a flag
 * ```ts ignore
 * const flags = parseCommandFlags(["--out", "k.json"], [{ name: "out" }], {});
 * console.log(stringFlag(flags, "out")); // "k.json"
 * ```
 */
export function stringFlag(flags: ParsedFlags, name: string): string | undefined {
  const v = flags.values[name];
  if (v === undefined) return undefined;
  if (typeof v !== "string" || v.trim() === "") {
    throw new TypeError(`Missing value for ${flags.sources[name] ?? `--${name}`}`);
  }
  return v;
}

/**
 * A numeric flag's value.
 *
 * @param flags Parsed flags.
 * @param name The flag.
 * @param limits Range and integer requirement.
 * @returns The number, `undefined` when absent.
 * @throws {RangeError} When it is not a number in range.
 *
 * @example A count of at least one
 * ```ts ignore
 * const flags = parseCommandFlags(["--count", "3"], [{ name: "count" }], {});
 * console.log(numberFlag(flags, "count", { min: 1, integer: true })); // 3
 * ```
 */
export function numberFlag(
  flags: ParsedFlags,
  name: string,
  limits: { min?: number; max?: number; integer?: boolean },
): number | undefined {
  const text = stringFlag(flags, name);
  return text === undefined
    ? undefined
    : parseNumber(text, flags.sources[name] ?? `--${name}`, limits);
}

/**
 * An HTTP URL flag's value.
 *
 * @param flags Parsed flags.
 * @param name The flag.
 * @returns The URL without a trailing slash, `undefined` when absent.
 * @throws {TypeError} When it is not an http(s) URL.
 *
 * @example A base URL
 * ```ts ignore
 * const flags = parseCommandFlags(["--pulse", "127.0.0.1:8080/"], [{ name: "pulse" }], {});
 * console.log(urlFlag(flags, "pulse")); // "http://127.0.0.1:8080"
 * ```
 */
export function urlFlag(flags: ParsedFlags, name: string): string | undefined {
  const text = stringFlag(flags, name);
  return text === undefined ? undefined : parseHttpUrl(text, flags.sources[name] ?? `--${name}`);
}

/**
 * Refuses arguments a subcommand does not take.
 *
 * @param flags Parsed flags.
 * @param expected How many positionals are allowed.
 * @throws {TypeError} When there are more.
 *
 * @example Refuse a stray argument
 * ```ts ignore
 * const flags = parseCommandFlags(["extra"], [], {});
 * noExtraArguments(flags); // TypeError: Unexpected argument "extra"
 * ```
 */
export function noExtraArguments(flags: ParsedFlags, expected = 0): void {
  if (flags.positionals.length > expected) {
    throw new TypeError(`Unexpected argument ${JSON.stringify(flags.positionals[expected])}`);
  }
}

/**
 * The cluster flag's value, checked.
 *
 * @param flags Parsed flags.
 * @returns The cluster id.
 * @throws {TypeError} When it is not one NATS subject token.
 *
 * @example The default cluster
 * ```ts ignore
 * console.log(clusterFlag(parseCommandFlags([], [CLUSTER_SPEC], {}))); // "chorus-dev"
 * ```
 */
export function clusterFlag(flags: ParsedFlags): string {
  const cluster = stringFlag(flags, "cluster") ?? DEFAULT_CLUSTER;
  assertClusterId(cluster);
  return cluster;
}

/**
 * The NATS connection options of the flags, with {@linkcode DEFAULT_NATS_URL} when no server is
 * given, and every file path resolved against the caller's directory (`connectNatsBus` would
 * resolve them against the working directory, the project folder under `deno task`).
 *
 * @param flags Parsed with {@linkcode BUS_SPECS}.
 * @param path Resolves a user path.
 * @returns Options for `connectNatsBus()`.
 * @throws {TypeError} On a bad URL or credential combination (never showing a secret).
 * @throws {RangeError} On a bad `--replicas`.
 *
 * @example Options from flags
 * ```ts ignore
 * const flags = parseCommandFlags(["--nats-creds", "ops.creds"], BUS_SPECS, {});
 * console.log(natsOptionsOf(flags, (p) => `/home/me/${p}`));
 * // { servers: ["nats://127.0.0.1:4222"], credsFile: "/home/me/ops.creds" }
 * ```
 */
export function natsOptionsOf(flags: ParsedFlags, path: (p: string) => string): NatsBusOptions {
  const withServer: ParsedFlags = flags.values.nats === undefined
    ? {
      ...flags,
      values: { ...flags.values, nats: DEFAULT_NATS_URL },
      sources: { ...flags.sources, nats: "the default server" },
    }
    : flags;
  const { nats } = natsSettingsFromFlags(withServer);
  // withServer always names a server, so there are options.
  if (nats === undefined) throw new TypeError("Missing --nats");
  const out: NatsBusOptions = { ...nats };
  for (const key of ["nkeySeedFile", "credsFile", "caFile", "certFile", "keyFile"] as const) {
    const v = out[key];
    if (v !== undefined) out[key] = path(v);
  }
  return out;
}

/**
 * Connects to NATS for the CLI (a connection name the server shows, no retry on the first
 * connect: a CLI should fail at once when the server is not there).
 *
 * @param options From {@linkcode natsOptionsOf}.
 * @param what Who connects, for the connection name.
 * @returns The bus.
 * @throws {BackbeatError} `connection` or `auth` (messages show URLs redacted).
 *
 * @example Connect and close
 * ```ts ignore
 * const bus = await connectCli({ servers: "nats://127.0.0.1:4222" }, "tail");
 * await bus.close();
 * ```
 */
export async function connectCli(options: NatsBusOptions, what: string): Promise<NatsBusLike> {
  return await connectNatsBus({ name: `backbeat-cli ${what}`, timeout: 5_000, ...options });
}

/** A beat frame as the CLI received it. */
export interface SeenBeat {
  /** The frame. */
  readonly frame: BeatFrame;
  /** Arrival, epoch ms. */
  readonly at: number;
  /** The message's headers. */
  readonly headers: Readonly<Record<string, string>>;
}

/**
 * Follows a cluster's beat subject: each frame passes the one frame gate (`decodeBeatFrame`) and
 * goes to the listeners; waiting for a frame that satisfies a test is bounded.
 */
export class BeatWatch {
  readonly #listeners = new Set<(beat: SeenBeat) => void>();
  readonly #unsubscribe: () => void;
  /** The latest frame, if any. */
  last: SeenBeat | undefined;
  /** The latest downbeat, if any. */
  lastDownbeat: SeenBeat | undefined;

  /**
   * Subscribes.
   *
   * @param bus The bus.
   * @param clusterId The cluster.
   */
  constructor(bus: NatsBusLike, clusterId: string) {
    const sub = bus.subscribe(subjects(clusterId).beat, (m) => {
      const frame = decodeBeatFrame(m.data, clusterId);
      if (typeof frame === "string") return;
      const beat: SeenBeat = { frame, at: Date.now(), headers: m.headers ?? {} };
      this.last = beat;
      if (frame.downbeat) this.lastDownbeat = beat;
      for (const l of [...this.#listeners]) l(beat);
    });
    this.#unsubscribe = () => sub.unsubscribe();
  }

  /**
   * Calls `fn` on every frame until the returned function is called.
   *
   * @param fn The listener.
   * @returns Removes it.
   */
  listen(fn: (beat: SeenBeat) => void): () => void {
    this.#listeners.add(fn);
    return () => this.#listeners.delete(fn);
  }

  /**
   * Waits for the next frame that satisfies `test`.
   *
   * @param test The condition. @default {any frame}
   * @param timeoutMs Longest wait.
   * @param signal Ends the wait early.
   * @returns The frame, or `undefined` on timeout or abort.
   */
  next(
    test: (beat: SeenBeat) => boolean,
    timeoutMs: number,
    signal: AbortSignal,
  ): Promise<SeenBeat | undefined> {
    return new Promise((done) => {
      const finish = (beat: SeenBeat | undefined) => {
        clearTimeout(timer);
        remove();
        signal.removeEventListener("abort", onAbort);
        done(beat);
      };
      const onAbort = () => finish(undefined);
      const remove = this.listen((b) => {
        if (test(b)) finish(b);
      });
      const timer = setTimeout(() => finish(undefined), timeoutMs);
      signal.addEventListener("abort", onAbort, { once: true });
    });
  }

  /** Stops following. */
  close(): void {
    this.#unsubscribe();
    this.#listeners.clear();
  }
}

/**
 * The beat a frame's bar ends after: the next downbeat's index, when the frame says how many
 * beats a bar has (counted from the latest downbeat seen, else from beat 0).
 *
 * @param frame The frame.
 * @param downbeat The latest downbeat seen at or before it.
 * @returns The next downbeat's beat_index, or `undefined` when it cannot be told.
 *
 * @example Where a change lands
 * ```ts ignore
 * // beat 13 of a 4-beat bar that began on beat 12
 * console.log(nextDownbeat({ ...frame, beat_index: 13, beats_per_bar: 4 }, downbeatAt12)); // 16
 * ```
 */
export function nextDownbeat(
  frame: BeatFrame,
  downbeat: BeatFrame | undefined,
): number | undefined {
  const bpb = frame.beats_per_bar;
  if (bpb === undefined) return undefined;
  // Without a downbeat seen, the grid a timeline starts with: bars from beat 0.
  const origin = downbeat !== undefined && downbeat.beat_index <= frame.beat_index
    ? downbeat.beat_index
    : 0;
  return origin + (Math.floor((frame.beat_index - origin) / bpb) + 1) * bpb;
}

/**
 * Seconds from an instant to a beat at a tempo, from a frame's arrival.
 *
 * @param from The frame.
 * @param at Its arrival, epoch ms.
 * @param beat The later beat.
 * @returns Epoch ms at which `beat` is due (constant tempo assumed).
 *
 * @example Two beats later at 120 BPM
 * ```ts ignore
 * console.log(dueAt({ ...frame, beat_index: 10, tempo_bpm: 120 }, 1_000, 12)); // 2000
 * ```
 */
export function dueAt(from: BeatFrame, at: number, beat: number): number {
  return at + (beat - from.beat_index) * 60_000 / from.tempo_bpm;
}

/**
 * Whether a URL's host is this machine (a bearer token then does not cross a network).
 *
 * @param url An http(s) URL.
 * @returns True for localhost and loopback addresses.
 *
 * @example Loopback or not
 * ```ts ignore
 * console.log(isLoopback("http://127.0.0.1:8080"), isLoopback("http://pulse.example")); // true false
 * ```
 */
export function isLoopback(url: string): boolean {
  const host = new URL(url).hostname.replace(/^\[|\]$/g, "");
  return host === "localhost" || host === "::1" || /^127\./.test(host);
}

// Small command-line helpers shared by the service entrypoints (pulse, reverb): flags with
// environment-variable fallbacks, numbers and host:port values with clear errors.

import { parseArgs } from "node:util";

/** One flag a command accepts. */
export interface FlagSpec {
  /** Long name without dashes, e.g. `cluster` for `--cluster`. */
  readonly name: string;
  /** `string` flags take a value (`--x v` or `--x=v`); `boolean` ones do not. @default {"string"} */
  readonly type?: "string" | "boolean";
  /** Environment variable read when the flag is absent. @default {undefined} */
  readonly env?: string;
  /** One-letter alias, e.g. `h` for `-h`. @default {undefined} */
  readonly short?: string;
}

/** Environment variables, by name. */
export type EnvVars = Readonly<Record<string, string | undefined>>;

/** Values found by {@linkcode parseFlags}. */
export interface ParsedFlags {
  /** Flag values by name: strings, `true` for booleans present, absent otherwise. */
  readonly values: Readonly<Record<string, string | boolean>>;
  /** Where each value came from (`flag` or `env`), for error messages. */
  readonly sources: Readonly<Record<string, string>>;
  /** Arguments that are not flags. */
  readonly positionals: readonly string[];
}

const TRUE = new Set(["1", "true", "yes", "on"]);
const FALSE = new Set(["0", "false", "no", "off", ""]);

/** The error codes of `node:util` `parseArgs` that are the user's mistake. */
const UNKNOWN = "ERR_PARSE_ARGS_UNKNOWN_OPTION";
const INVALID_VALUE = "ERR_PARSE_ARGS_INVALID_OPTION_VALUE";

/**
 * Rewrites `--flag=value` of boolean flags, which `parseArgs` refuses, into `--flag` or
 * `--no-flag`; stops at the end-of-flags `--`. An option-like argument can never be a string
 * flag's value in strict mode, so no value is rewritten by mistake.
 */
function rewriteBooleanValues(args: readonly string[], booleans: ReadonlySet<string>): string[] {
  const out = [...args];
  for (let i = 0; i < out.length && out[i] !== "--"; i++) {
    const m = /^--([^=]+)=(.*)$/s.exec(out[i]);
    if (!m || !booleans.has(m[1])) continue;
    const value = m[2].toLowerCase();
    if (TRUE.has(value)) out[i] = `--${m[1]}`;
    else if (FALSE.has(value)) out[i] = `--no-${m[1]}`;
    else throw new TypeError(`Invalid value for --${m[1]}: ${JSON.stringify(m[2])}`);
  }
  return out;
}

/** Turns a `parseArgs` error into this module's messages (`Unknown flag --x`, ...). */
function translate(err: unknown, byShort: ReadonlyMap<string, FlagSpec>): never {
  const code = (err as { code?: unknown } | null)?.code;
  const message = err instanceof Error ? err.message : String(err);
  // parseArgs names the flag as typed, in quotes, at the start of its message.
  const raw = /^(?:Unknown option|Option) '([^' ,<]+)/.exec(message)?.[1];
  if (code === UNKNOWN && raw) throw new TypeError(`Unknown flag ${raw}`, { cause: err });
  if (code === INVALID_VALUE && raw) {
    const name = raw.startsWith("--") ? raw.slice(2) : byShort.get(raw.slice(1))?.name ?? raw;
    if (/does not take an argument/.test(message)) {
      throw new TypeError(`Flag --${name} takes no value`, { cause: err });
    }
    const hint = /ambiguous/.test(message)
      ? ` (to pass a value starting with "-", write --${name}=-x)`
      : "";
    throw new TypeError(`Missing value for --${name}${hint}`, { cause: err });
  }
  throw new TypeError(message, { cause: err });
}

/**
 * Parses `--name value`, `--name=value`, boolean `--name`, `--name=false` and `--no-name`, `-x`
 * aliases and `--` (end of flags) with `node:util` `parseArgs` in strict mode; a flag not given
 * falls back to its environment variable. One leading `--` is skipped, as `deno task x -- --flag`
 * passes it on. A string flag followed by another flag (`--tempo --http x`) lacks its value.
 *
 * @param args Command-line arguments.
 * @param specs The accepted flags.
 * @param env Environment variables. @default {{}}
 * @returns The values.
 * @throws {TypeError} On an unknown flag (`Unknown flag --x`), a missing value (`Missing value
 * for --x`) or a bad boolean value.
 *
 * @example Flags with an environment fallback
 * ```ts ignore
 * const specs = [{ name: "cluster", env: "X_CLUSTER" }, { name: "help", type: "boolean" as const, short: "h" }];
 * const { values, sources } = parseFlags(["-h"], specs, { X_CLUSTER: "dev" });
 * console.log(values, sources); // { help: true, cluster: "dev" } { help: "--help", cluster: "X_CLUSTER" }
 * ```
 */
export function parseFlags(
  args: readonly string[],
  specs: readonly FlagSpec[],
  env: EnvVars = {},
): ParsedFlags {
  const options: Record<string, { type: "string" | "boolean"; short?: string }> = {};
  for (const spec of specs) {
    options[spec.name] = { type: spec.type ?? "string", ...(spec.short && { short: spec.short }) };
  }
  const booleans = new Set(specs.filter((s) => s.type === "boolean").map((s) => s.name));
  const byShort = new Map(specs.filter((s) => s.short).map((s) => [s.short!, s]));
  const rest = args[0] === "--" ? args.slice(1) : args;
  let parsed: ReturnType<typeof parseArgs>;
  try {
    parsed = parseArgs({
      args: rewriteBooleanValues(rest, booleans),
      options,
      strict: true,
      allowPositionals: true,
      allowNegative: true,
    });
  } catch (err) {
    translate(err, byShort);
  }
  const values: Record<string, string | boolean> = {};
  const sources: Record<string, string> = {};
  for (const [name, value] of Object.entries(parsed.values)) {
    // A flag given on the command line (even `--x=false`) wins over the environment.
    sources[name] = `--${name}`;
    if (value !== false && value !== undefined) values[name] = value as string | boolean;
  }
  for (const spec of specs) {
    if (Object.hasOwn(sources, spec.name) || !spec.env) continue;
    const value = env[spec.env];
    if (value === undefined || value === "") continue;
    if (spec.type === "boolean") {
      if (TRUE.has(value.toLowerCase())) values[spec.name] = true;
      else if (!FALSE.has(value.toLowerCase())) {
        throw new TypeError(`Invalid value for ${spec.env}: ${JSON.stringify(value)}`);
      }
    } else {
      values[spec.name] = value;
    }
    sources[spec.name] = spec.env;
  }
  return { values, sources, positionals: parsed.positionals };
}

/** Limits of {@linkcode parseNumber}. */
export interface NumberLimits {
  /** Smallest accepted value. @default {-Infinity} */
  min?: number;
  /** Largest accepted value. @default {Infinity} */
  max?: number;
  /** Require an integer. @default {false} */
  integer?: boolean;
}

/**
 * Parses a decimal number from a flag or variable.
 *
 * @param text The text.
 * @param what What it is, for the message (e.g. `--tempo`).
 * @param limits Range and integer requirement.
 * @returns The number.
 * @throws {RangeError} When it is not a number in range.
 */
export function parseNumber(text: string, what: string, limits: NumberLimits = {}): number {
  const n = /^\s*[-+]?(\d+\.?\d*|\.\d+)(e[-+]?\d+)?\s*$/i.test(text) ? Number(text) : NaN;
  const min = limits.min ?? -Infinity;
  const max = limits.max ?? Infinity;
  const kind = limits.integer ? "an integer" : "a number";
  if (!Number.isFinite(n) || n < min || n > max || (limits.integer && !Number.isInteger(n))) {
    const range = Number.isFinite(min) && Number.isFinite(max)
      ? ` from ${min} to ${max}`
      : Number.isFinite(min)
      ? ` >= ${min}`
      : "";
    throw new RangeError(`Invalid ${what} ${JSON.stringify(text)}: expected ${kind}${range}`);
  }
  return n;
}

/** A listening address. */
export interface HostPort {
  /** Host name or IP (IPv6 without brackets). */
  readonly hostname: string;
  /** Port, 0 for any free port. */
  readonly port: number;
}

/**
 * Parses `host:port`, `[v6]:port` or `:port` (all interfaces' default host `0.0.0.0`).
 *
 * @param text The address.
 * @param what What it is, for the message (e.g. `--http`).
 * @returns Host and port.
 * @throws {TypeError} When it is not host:port with a port from 0 to 65535.
 */
export function parseHostPort(text: string, what: string): HostPort {
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([^:\s\[\]]*)):(\d{1,5})$/.exec(String(text).trim());
  const port = m ? Number(m[3]) : NaN;
  if (!m || port > 65535) {
    throw new TypeError(
      `Invalid ${what} ${JSON.stringify(text)}: expected host:port with a port from 0 to 65535`,
    );
  }
  return { hostname: m[1] ?? (m[2] || "0.0.0.0"), port };
}

// Small command-line helpers shared by the service entrypoints (pulse, reverb): flags with
// environment-variable fallbacks, numbers and host:port values with clear errors.

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

/**
 * Parses `--name value`, `--name=value`, boolean `--name`, `-x` aliases and `--` (end of flags);
 * a flag not given falls back to its environment variable.
 *
 * @param args Command-line arguments.
 * @param specs The accepted flags.
 * @param env Environment variables. @default {{}}
 * @returns The values.
 * @throws {TypeError} On an unknown flag or a missing value.
 */
export function parseFlags(
  args: readonly string[],
  specs: readonly FlagSpec[],
  env: EnvVars = {},
): ParsedFlags {
  const byName = new Map(specs.map((s) => [s.name, s]));
  const byShort = new Map(specs.filter((s) => s.short).map((s) => [s.short!, s]));
  const values: Record<string, string | boolean> = {};
  const sources: Record<string, string> = {};
  const positionals: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const arg = args[i];
    if (arg === "--") {
      positionals.push(...args.slice(i + 1));
      break;
    }
    let spec: FlagSpec | undefined;
    let inline: string | undefined;
    if (arg.startsWith("--")) {
      const eq = arg.indexOf("=");
      const name = eq < 0 ? arg.slice(2) : arg.slice(2, eq);
      if (eq >= 0) inline = arg.slice(eq + 1);
      spec = byName.get(name);
      if (!spec) throw new TypeError(`Unknown flag --${name}`);
    } else if (arg.startsWith("-") && arg.length > 1) {
      spec = byShort.get(arg.slice(1));
      if (!spec) throw new TypeError(`Unknown flag ${arg}`);
    } else {
      positionals.push(arg);
      continue;
    }
    if (spec.type === "boolean") {
      if (inline === undefined) values[spec.name] = true;
      else if (TRUE.has(inline.toLowerCase())) values[spec.name] = true;
      else if (FALSE.has(inline.toLowerCase())) delete values[spec.name];
      else throw new TypeError(`Invalid value for --${spec.name}: ${JSON.stringify(inline)}`);
    } else {
      const value = inline ?? args[++i];
      if (value === undefined) throw new TypeError(`Missing value for --${spec.name}`);
      values[spec.name] = value;
    }
    sources[spec.name] = `--${spec.name}`;
  }
  for (const spec of specs) {
    // A flag given on the command line (even `--x=false`) wins over the environment.
    if (spec.name in sources || !spec.env) continue;
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
  return { values, sources, positionals };
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

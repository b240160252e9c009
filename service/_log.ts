// Structured logging shared by the services (pulse, reverb): one JSON object per line.
import type { LogFields, Logger } from "../core/mod.ts";

/** Log levels, least to most severe. */
export const LogLevel = {
  Debug: "debug",
  Info: "info",
  Warn: "warn",
  Error: "error",
} as const;
/** One of {@linkcode LogLevel}'s values. */
export type LogLevel = typeof LogLevel[keyof typeof LogLevel];

/** Every level, least severe first. */
export const LOG_LEVELS: readonly LogLevel[] = ["debug", "info", "warn", "error"];

/**
 * Parses a level name.
 *
 * @param text `debug`, `info`, `warn` or `error` (case-insensitive).
 * @returns The level.
 * @throws {TypeError} When the name is not a level.
 *
 * @example Read a flag value
 * ```ts
 * import { parseLogLevel } from "./mod.ts";
 * console.log(parseLogLevel("WARN")); // "warn"
 * ```
 */
export function parseLogLevel(text: string): LogLevel {
  const level = String(text).trim().toLowerCase();
  if (!(LOG_LEVELS as readonly string[]).includes(level)) {
    throw new TypeError(
      `Invalid log level ${JSON.stringify(text)}: expected one of ${LOG_LEVELS.join(", ")}`,
    );
  }
  return level as LogLevel;
}

/** Options of {@linkcode JsonLogger}. */
export interface JsonLoggerOptions {
  /** Lines below this level are dropped. @default {"info"} */
  level?: LogLevel;
  /** Receives each line (without the newline). @default {writes to stderr} */
  write?: (line: string) => void;
  /** Fields added to every line, e.g. `{ service: "pulse" }`. @default {{}} */
  fields?: LogFields;
  /** Wall clock for the `time` field, epoch ms. @default {Date.now} */
  now?: () => number;
}

const encoder = new TextEncoder();

function writeStderr(line: string): void {
  const bytes = encoder.encode(line + "\n");
  let off = 0;
  while (off < bytes.length) off += Deno.stderr.writeSync(bytes.subarray(off));
}

// Errors and bigints do not survive JSON.stringify on their own.
function replacer(_key: string, value: unknown): unknown {
  if (value instanceof Error) {
    const out: Record<string, unknown> = { name: value.name, message: value.message };
    const code = (value as { code?: unknown }).code;
    if (code !== undefined) out.code = code;
    return out;
  }
  if (typeof value === "bigint") return value.toString();
  return value;
}

/**
 * Writes one JSON object per line: `time` (RFC 3339), `level`, `msg`, then the fields, flat.
 * Fields named `time`, `level` or `msg` cannot overwrite those keys.
 *
 * @example Log a line
 * ```ts
 * import { JsonLogger } from "./mod.ts";
 * const lines: string[] = [];
 * const log = new JsonLogger({ level: "debug", write: (l) => lines.push(l), fields: { service: "pulse" } });
 * log.info("leader", { token: 7 });
 * console.log(JSON.parse(lines[0]).token); // 7
 * ```
 */
export class JsonLogger implements Logger {
  readonly #min: number;
  readonly #write: (line: string) => void;
  readonly #fields: LogFields;
  readonly #now: () => number;

  /**
   * Creates a logger.
   *
   * @param options Level, sink, base fields.
   */
  constructor(options: JsonLoggerOptions = {}) {
    this.#min = LOG_LEVELS.indexOf(options.level ?? "info");
    if (this.#min < 0) throw new TypeError(`Invalid log level ${options.level}`);
    this.#write = options.write ?? writeStderr;
    this.#fields = options.fields ?? {};
    this.#now = options.now ?? Date.now;
  }

  /**
   * A logger writing to the same sink with extra base fields.
   *
   * @param fields Fields added to every line.
   * @returns The new logger.
   */
  child(fields: LogFields): JsonLogger {
    return new JsonLogger({
      level: LOG_LEVELS[this.#min],
      write: this.#write,
      fields: { ...this.#fields, ...fields },
      now: this.#now,
    });
  }

  debug(msg: string, fields?: LogFields): void {
    this.#log(0, msg, fields);
  }

  info(msg: string, fields?: LogFields): void {
    this.#log(1, msg, fields);
  }

  warn(msg: string, fields?: LogFields): void {
    this.#log(2, msg, fields);
  }

  error(msg: string, fields?: LogFields): void {
    this.#log(3, msg, fields);
  }

  #log(level: number, msg: string, fields?: LogFields): void {
    if (level < this.#min) return;
    try {
      const line = JSON.stringify(
        {
          ...this.#fields,
          ...fields,
          time: new Date(this.#now()).toISOString(),
          level: LOG_LEVELS[level],
          msg,
        },
        replacer,
      );
      this.#write(line);
    } catch {
      // A logger must never take the service down (closed stderr, cyclic fields).
    }
  }
}

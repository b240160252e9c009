// What every subcommand shares: the process streams as text sinks, the one error format
// (`backbeat <cmd>: <message>`), the split between usage errors (exit 2) and failures (exit 1),
// paths resolved against the caller's directory, and HTTP requests with a deadline.

import { isAbsolute, resolve } from "node:path";
import { redactUrl } from "../nats/mod.ts";
import type { EnvVars } from "../service/mod.ts";

/** Exit status of a command that did its job. */
export const EXIT_OK = 0;
/** Exit status of a command that failed (a service unreachable, a file that exists, …). */
export const EXIT_FAILURE = 1;
/** Exit status of a bad command line. */
export const EXIT_USAGE = 2;

/** The process as a command sees it; tests pass their own streams. */
export interface CliIo {
  /** Standard input (only `validate --message -` reads it). */
  readonly stdin?: ReadableStream<Uint8Array>;
  /** Standard output. */
  readonly stdout: WritableStream<Uint8Array>;
  /** Standard error. */
  readonly stderr: WritableStream<Uint8Array>;
  /** Environment variables (`BACKBEAT_*`, `INIT_CWD`). */
  readonly env: EnvVars;
  /** The absolute directory relative paths are resolved against. */
  readonly cwd: string;
  /** Aborted on SIGINT/SIGTERM: long-running commands stop cleanly. */
  readonly signal: AbortSignal;
  /** Whether stderr is a terminal (the load progress line then rewrites itself). */
  readonly stderrIsTerminal: boolean;
}

const encoder = new TextEncoder();
/** Lines a streaming command may have waiting for a slow reader before it drops new ones. */
const MAX_QUEUED_WRITES = 10_000;

/**
 * A text sink over a byte stream: writes go out in order, one at a time. `write` may be called
 * without awaiting (a subscription handler cannot wait): at most {@linkcode MAX_QUEUED_WRITES}
 * writes wait, beyond that they are dropped and counted, so a reader that stops reading costs
 * bounded memory. A closed pipe (`| head`) marks the sink broken instead of throwing.
 */
export class TextSink {
  readonly #writer: WritableStreamDefaultWriter<Uint8Array>;
  #chain: Promise<void> = Promise.resolve();
  #queued = 0;
  #dropped = 0;
  #broken = false;
  #released = false;
  readonly #onBroken: (() => void) | undefined;

  /**
   * Takes the stream's writer until {@linkcode TextSink.release}.
   *
   * @param stream The byte stream.
   * @param onBroken Called once when the reader goes away.
   */
  constructor(stream: WritableStream<Uint8Array>, onBroken?: () => void) {
    this.#writer = stream.getWriter();
    this.#onBroken = onBroken;
  }

  /** Writes that were dropped because the reader was too slow. */
  get dropped(): number {
    return this.#dropped;
  }

  /** Whether the reader went away. */
  get broken(): boolean {
    return this.#broken;
  }

  /**
   * Queues text.
   *
   * @param text The text, newlines included.
   * @returns Resolves once this text is written (or dropped).
   */
  write(text: string): Promise<void> {
    if (this.#broken || this.#released) return Promise.resolve();
    if (this.#queued >= MAX_QUEUED_WRITES) {
      this.#dropped++;
      return Promise.resolve();
    }
    this.#queued++;
    this.#chain = this.#chain.then(async () => {
      this.#queued--;
      if (this.#broken) return;
      try {
        await this.#writer.write(encoder.encode(text));
      } catch {
        this.#broken = true;
        this.#onBroken?.();
      }
    });
    return this.#chain;
  }

  /**
   * Waits for every queued write.
   *
   * @returns Resolves once the queue is empty.
   */
  flush(): Promise<void> {
    return this.#chain;
  }

  /**
   * Flushes and gives the stream back (it is not closed: it belongs to the caller).
   *
   * @returns Resolves once released.
   */
  async release(): Promise<void> {
    if (this.#released) return;
    await this.flush();
    this.#released = true;
    this.#writer.releaseLock();
  }
}

/** What a subcommand runs with. */
export interface CommandContext {
  /** The process. */
  readonly io: CliIo;
  /** The subcommand's name, for messages (`tail`, `keyring add`, …). */
  readonly command: string;
  /** Standard output. */
  readonly out: TextSink;
  /** Standard error. */
  readonly err: TextSink;
  /** Writes `backbeat <cmd>: <message>` on stderr (warnings and notes; errors are thrown). */
  warn(message: string): Promise<void>;
  /**
   * Resolves a user path against the caller's directory.
   *
   * @param path As given.
   * @returns An absolute path.
   */
  path(path: string): string;
}

/**
 * The caller's directory: `INIT_CWD` when set (`deno task` runs tasks in the project folder and
 * names the caller's directory there), otherwise the working directory.
 *
 * @param env The environment.
 * @param cwd The working directory.
 * @returns An absolute directory.
 *
 * @example Under deno task
 * ```ts ignore
 * console.log(callerDirectory({ INIT_CWD: "/home/me" }, "/src/backbeat")); // "/home/me"
 * ```
 */
export function callerDirectory(env: EnvVars, cwd: string): string {
  const dir = env.INIT_CWD;
  if (dir === undefined || dir === "") return cwd;
  return isAbsolute(dir) ? dir : resolve(cwd, dir);
}

/**
 * Builds the context of one subcommand run.
 *
 * @param io The process.
 * @param command The subcommand's name.
 * @param onBroken Called when stdout's reader goes away (a streaming command stops then).
 * @returns The context; release its sinks when done.
 *
 * @example Warn in the one format
 * ```ts ignore
 * const ctx = commandContext(io, "tail");
 * await ctx.warn("NATS connection reconnecting"); // backbeat tail: NATS connection reconnecting
 * await ctx.out.release();
 * await ctx.err.release();
 * ```
 */
export function commandContext(
  io: CliIo,
  command: string,
  onBroken?: () => void,
): CommandContext {
  const out = new TextSink(io.stdout, onBroken);
  const err = new TextSink(io.stderr);
  return {
    io,
    command,
    out,
    err,
    warn: (message) => err.write(`backbeat ${command}: ${oneLine(message)}\n`),
    path: (p) => resolve(io.cwd, p),
  };
}

/**
 * Makes text safe to print from untrusted input: control characters (terminal escapes, bidi
 * overrides) become `?`, newlines become spaces, and it is cut to `max` characters.
 *
 * @param text Any text.
 * @param max Longest result. @default {200}
 * @returns Printable text on one line.
 *
 * @example A hostile agent id
 * ```ts ignore
 * console.log(printable("evil\u001b[2Jagent")); // "evil?[2Jagent"
 * ```
 */
export function printable(text: unknown, max = 200): string {
  const s = String(text)
    .replace(/[\r\n\t]+/g, " ")
    // deno-lint-ignore no-control-regex
    .replace(/[\u0000-\u001f\u007f-\u009f\u200e\u200f\u202a-\u202e\u2066-\u2069]/g, "?");
  return s.length > max ? `${s.slice(0, max - 1)}…` : s;
}

/**
 * A message on one line (errors of libraries sometimes carry several).
 *
 * @param text The message.
 * @returns The message with newlines folded.
 *
 * @example Fold a message
 * ```ts ignore
 * console.log(oneLine("a\n  b")); // "a; b"
 * ```
 */
export function oneLine(text: string): string {
  return text.replace(/\s*\n\s*/g, "; ");
}

/**
 * An error's message for the one error line; URLs with credentials are shown redacted.
 *
 * @param error Anything thrown.
 * @returns The message.
 *
 * @example A URL with a password
 * ```ts ignore
 * console.log(errorMessage(new Error("cannot reach nats://u:pw@h:4222")));
 * // "cannot reach nats://u:***@h:4222"
 * ```
 */
export function errorMessage(error: unknown): string {
  const text = error instanceof Error ? error.message : String(error);
  // Libraries redact what they know; this catches a URL with userinfo that slipped through.
  return oneLine(text.replace(/\b[a-z][a-z0-9+.-]*:\/\/[^\s/@]+@[^\s/]+/gi, (u) => redactUrl(u)));
}

/** A JSON answer of an HTTP endpoint. */
export interface HttpAnswer {
  /** The status code. */
  readonly status: number;
  /** The parsed body, `undefined` when it is not JSON. */
  readonly json: unknown;
  /** The body text (cut to 64 KiB). */
  readonly text: string;
}

const MAX_HTTP_BODY = 4 * 1024 * 1024;

/**
 * Requests an HTTP endpoint with a deadline; the body is read (bounded) and parsed as JSON when
 * it is JSON.
 *
 * @param url The URL.
 * @param init Method, headers, body.
 * @param timeoutMs The deadline.
 * @param signal Aborts early (SIGINT).
 * @returns The status and body.
 * @throws {Error} When the server cannot be reached or does not answer in time (the message
 * shows the URL redacted).
 *
 * @example Ask for health
 * ```ts ignore
 * const { status, json } = await httpJson("http://127.0.0.1:8080/healthz", {}, 3_000, signal);
 * ```
 */
export async function httpJson(
  url: string,
  init: RequestInit,
  timeoutMs: number,
  signal: AbortSignal,
): Promise<HttpAnswer> {
  const deadline = AbortSignal.any([signal, AbortSignal.timeout(timeoutMs)]);
  let res: Response;
  try {
    res = await fetch(url, { ...init, signal: deadline, redirect: "manual" });
  } catch (error) {
    // fetch says only "fetch failed"; the reason is its cause (which names the URL: cut off).
    const cause = (error as Error)?.cause;
    const why = deadline.aborted && !signal.aborted
      ? `no answer within ${timeoutMs} ms`
      : errorMessage(cause instanceof Error ? cause : error)
        .replace(/^error sending request for url \([^)]*\):\s*/i, "")
        .replace(/^client error \(\w+\):\s*/i, "");
    throw new Error(`${redactUrl(url)} is unreachable: ${why}`);
  }
  let text = "";
  try {
    const body = await res.arrayBuffer();
    text = new TextDecoder().decode(body.slice(0, MAX_HTTP_BODY));
  } catch (error) {
    throw new Error(`${redactUrl(url)} answered ${res.status} but the body failed: ${error}`);
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    json = undefined;
  }
  return { status: res.status, json, text: text.slice(0, 65_536) };
}

/**
 * Checks an HTTP base URL from a flag and drops a trailing slash.
 *
 * @param text The flag's value.
 * @param what The flag, for the message.
 * @returns `http(s)://host[:port][/path]` without the trailing slash.
 * @throws {TypeError} When it is not an http or https URL.
 *
 * @example Host and port only
 * ```ts ignore
 * console.log(parseHttpUrl("127.0.0.1:8081", "--reverb")); // "http://127.0.0.1:8081"
 * ```
 */
export function parseHttpUrl(text: string, what: string): string {
  let url: URL;
  try {
    url = new URL(text.includes("://") ? text : `http://${text}`);
  } catch {
    throw new TypeError(
      `Invalid ${what} ${JSON.stringify(redactUrl(text))}: expected http://host:port`,
    );
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") {
    throw new TypeError(
      `Invalid ${what} ${JSON.stringify(redactUrl(text))}: expected http://host:port`,
    );
  }
  return url.href.replace(/\/+$/, "");
}

/**
 * Sleeps unless aborted first.
 *
 * @param ms How long.
 * @param signal Ends the wait early.
 * @returns Resolves after `ms` or on abort.
 *
 * @example Wait, unless interrupted
 * ```ts ignore
 * await sleep(1_000, signal);
 * ```
 */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((done) => {
    if (signal?.aborted) return done();
    const timer = setTimeout(finish, Math.max(0, ms));
    function finish() {
      clearTimeout(timer);
      signal?.removeEventListener("abort", finish);
      done();
    }
    signal?.addEventListener("abort", finish, { once: true });
  });
}

/**
 * Formats a number with at most `digits` decimals and no trailing zeros.
 *
 * @param n The number.
 * @param digits Most decimals. @default {3}
 * @returns The text.
 *
 * @example Trim decimals
 * ```ts ignore
 * console.log(num(120), num(0.12345)); // "120" "0.123"
 * ```
 */
export function num(n: number, digits = 3): string {
  return Number.isFinite(n) ? String(Number(n.toFixed(digits))) : String(n);
}

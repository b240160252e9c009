// The backbeat-validate command. validate.ts only wires it to the process; everything here takes
// its streams as arguments so tests drive it in memory.

import { isAbsolute } from "node:path";
import { parseArgs, type ParseArgsOptionsConfig } from "node:util";
import {
  DEFAULT_MAX_ERRORS,
  loadSchemaDirectory,
  MessageValidator,
  validateJsonText,
  type ValidationResult,
} from "./_validator.ts";
import type { ValidationError } from "./_messages_text.ts";

/** The streams {@linkcode runValidateCli} reads and writes. */
export interface ValidateCliIo {
  /**
   * Standard input, read only for `--message -`.
   * @default {undefined}
   */
  stdin?: ReadableStream<Uint8Array>;
  /** Where results and the summary go. */
  stdout: WritableStream<Uint8Array>;
  /** Where usage errors and "no messages found" go. */
  stderr: WritableStream<Uint8Array>;
  /**
   * The absolute directory relative paths (`--file`, `--dir`, `--schemas`) are resolved against;
   * results still name paths as given. `validate.ts` passes the caller's directory.
   * @default {Deno.cwd()}
   */
  cwd?: string;
}

/** Largest single input (a file, or a stdin document) the CLI reads: 16 MiB. */
export const MAX_INPUT_BYTES: number = 16 * 1024 * 1024;
/** Longest NDJSON line the CLI accepts from stdin: 1 MiB. */
export const MAX_LINE_CHARS: number = 1024 * 1024;

/** Exit status: everything checked (and valid, when `--exit-code` is set). */
const EXIT_OK = 0;
/**
 * Exit status with `--exit-code` when at least one message was invalid or unreadable, and with
 * or without it when a `--dir` or stdin held no message at all.
 */
const EXIT_INVALID = 1;
/** Exit status for a bad command line or unusable schemas. */
const EXIT_USAGE = 2;

const USAGE = `backbeat-validate: check BACKBEAT messages against the v1 JSON Schemas

Usage:
  backbeat-validate [options] (--file F | --dir D | --message -)...

Inputs (repeatable, checked in the order given):
  --file F        one JSON message file
  --dir D         every *.json file under D, recursively
  --message -     stdin: one JSON document, or NDJSON (one message a line), streamed
  --message TEXT  the JSON text given on the command line

Options:
  --schemas DIR   load every *.json schema of DIR instead of the built-in ones
  --json          machine-readable report: one JSON document
                  {"results":[...],"summary":{"passed":N,"failed":N}}, written as it goes
                  (the summary adds "problems":[...] when an input held no message)
  --quiet         report only failures (and the summary)
  --exit-code     exit with status 1 when any message is invalid or unreadable
  -h, --help      show this help

Human output: "✓ path (type)" per valid message, "✗ path: reason (at /pointer)" per problem,
and a last line "N passed, N failed". A --dir with no *.json file below it, or an empty stdin,
prints "no messages found in ..." on stderr and exits 1, with or without --exit-code: checking
nothing is an error. Exit status 2 means a bad command line or bad schemas. Relative paths are
resolved against the directory the command was run from (under deno task: INIT_CWD, when
--allow-env=INIT_CWD is granted).
`;

type Input =
  | { kind: "file"; path: string }
  | { kind: "dir"; path: string }
  | { kind: "message"; text: string | null }; // null: read stdin

interface Options {
  schemas?: string;
  inputs: Input[];
  json: boolean;
  quiet: boolean;
  exitCode: boolean;
  help: boolean;
}

/** Thrown by the argument parser; becomes exit status 2. */
class UsageError extends Error {}

// The flags as node:util's parseArgs reads them. The inputs are repeatable and are read from the
// tokens, which keep them in the order given (`values` would group them by flag).
const FLAGS = {
  schemas: { type: "string" },
  file: { type: "string", multiple: true },
  dir: { type: "string", multiple: true },
  message: { type: "string", multiple: true },
  json: { type: "boolean" },
  quiet: { type: "boolean" },
  "exit-code": { type: "boolean" },
  help: { type: "boolean", short: "h" },
} as const satisfies ParseArgsOptionsConfig;

type StrictParse = { args: string[]; options: typeof FLAGS; strict: true; tokens: true };
type LenientParse = {
  args: string[];
  options: typeof FLAGS;
  strict: false;
  allowPositionals: true;
  tokens: true;
};
type Parsed = ReturnType<typeof parseArgs<StrictParse>>;
type LenientToken = ReturnType<typeof parseArgs<LenientParse>>["tokens"][number];

function parseCommandLine(args: readonly string[]): Options {
  // `deno task validate -- --help` hands the `--` on; a leading one means nothing here.
  const rest = args[0] === "--" ? args.slice(1) : [...args];
  let parsed: Parsed;
  try {
    parsed = parseArgs({ args: rest, options: FLAGS, strict: true, tokens: true });
  } catch (error) {
    throw new UsageError(diagnose(rest) ?? errorText(error));
  }
  const { values, tokens } = parsed;
  const options: Options = {
    schemas: values.schemas,
    inputs: [],
    json: values.json === true,
    quiet: values.quiet === true,
    exitCode: values["exit-code"] === true,
    help: values.help === true,
  };
  let readsStdin = false;
  for (const token of tokens) {
    if (token.kind !== "option" || token.value === undefined) continue;
    if (token.name === "file" || token.name === "dir") {
      options.inputs.push({ kind: token.name, path: token.value });
    } else if (token.name === "message") {
      const stdin = token.value === "-";
      if (stdin && readsStdin) {
        throw new UsageError("--message - can be given once (stdin is read once)");
      }
      readsStdin ||= stdin;
      options.inputs.push({ kind: "message", text: stdin ? null : token.value });
    }
  }
  if (!options.help && options.inputs.length === 0) {
    throw new UsageError("nothing to validate: give --file, --dir or --message");
  }
  return options;
}

/**
 * Names what is wrong with a command line the strict parse refused, in this CLI's words (node's
 * own messages are long and name no fix). Re-reads it leniently and blames the first bad token;
 * `undefined` when it finds none, and the caller falls back to node's message.
 */
function diagnose(args: string[]): string | undefined {
  let tokens: LenientToken[];
  try {
    ({ tokens } = parseArgs({
      args,
      options: FLAGS,
      strict: false,
      allowPositionals: true,
      tokens: true,
    }));
  } catch {
    return undefined;
  }
  for (const token of tokens) {
    if (token.kind === "positional") return `unexpected argument ${token.value}`;
    if (token.kind !== "option") continue;
    if (!Object.hasOwn(FLAGS, token.name)) return `unknown option ${token.rawName}`;
    const flag = token.rawName;
    if (FLAGS[token.name as keyof typeof FLAGS].type === "boolean") {
      if (token.value !== undefined) return `${flag} takes no value`;
    } else if (token.value === undefined) {
      return `${flag} needs a value`;
    } else if (!token.inlineValue && token.value.length > 1 && token.value.startsWith("-")) {
      // Strict parsing refuses `--file --json`: most likely the value was forgotten.
      return `${flag} needs a value, not the option ${token.value} (write ${flag}=${token.value} for a value starting with "-")`;
    }
  }
  return undefined;
}

/**
 * Buffers output and writes it in large chunks. One chunk may be in flight while the next fills
 * (work overlaps the write); the second waits for the first, so memory stays bounded.
 */
class Output {
  readonly #writer: WritableStreamDefaultWriter<Uint8Array>;
  readonly #encoder = new TextEncoder();
  #buffer = "";
  #inFlight: Promise<void> = Promise.resolve();

  constructor(stream: WritableStream<Uint8Array>) {
    this.#writer = stream.getWriter();
  }

  /** Buffers text; returns a promise (to await) only when a chunk had to be sent. */
  write(text: string): Promise<void> | undefined {
    this.#buffer += text;
    return this.#buffer.length >= 64 * 1024 ? this.#send() : undefined;
  }

  async #send(): Promise<void> {
    const previous = this.#inFlight;
    const chunk = this.#encoder.encode(this.#buffer);
    this.#buffer = "";
    await previous;
    this.#inFlight = this.#writer.write(chunk);
    // A failed write surfaces from flush(); don't let it become an unhandled rejection here.
    this.#inFlight.catch(() => {});
  }

  async flush(): Promise<void> {
    if (this.#buffer !== "") await this.#send();
    await this.#inFlight;
  }

  async release(): Promise<void> {
    try {
      await this.flush();
    } finally {
      this.#writer.releaseLock();
    }
  }
}

/** Writes each result as it comes and counts them. */
class Reporter {
  passed = 0;
  failed = 0;
  /** Sentences about inputs that held no message; each also went to stderr. */
  readonly problems: string[] = [];
  #first = true;

  constructor(
    readonly out: Output,
    readonly err: Output,
    readonly json: boolean,
    readonly quiet: boolean,
  ) {}

  /** Records an input that yielded no message at all. */
  async nothingIn(what: string): Promise<void> {
    const problem = `no messages found in ${what}`;
    this.problems.push(problem);
    // On stderr even with --json: the report usually goes to a file, and a CI log should still
    // say why the job failed.
    await this.err.write(`backbeat-validate: ${problem}\n`);
  }

  async start(): Promise<void> {
    if (this.json) await this.out.write('{"results":[');
  }

  /** Counts and writes one result; returns a promise (to await) only when output was sent. */
  report(
    source: string,
    line: number | undefined,
    result: ValidationResult,
  ): Promise<void> | undefined {
    if (result.valid) this.passed++;
    else this.failed++;
    if (this.quiet && result.valid) return;
    if (this.json) {
      const entry = line === undefined
        ? { source, valid: result.valid, type: result.type, errors: result.errors }
        : { source, line, valid: result.valid, type: result.type, errors: result.errors };
      const text = `${this.#first ? "\n" : ",\n"}${JSON.stringify(entry)}`;
      this.#first = false;
      return this.out.write(text);
    }
    const label = line === undefined ? source : `${source}:${line}`;
    if (result.valid) return this.out.write(`✓ ${label} (${result.type})\n`);
    let text = "";
    for (const error of result.errors) {
      text += `✗ ${label}: ${error.message}${error.path === "" ? "" : ` (at ${error.path})`}\n`;
    }
    return this.out.write(text);
  }

  async finish(): Promise<void> {
    const { passed, failed, problems } = this;
    // `problems` only when there are some, so a clean report keeps its shape.
    const summary = problems.length === 0 ? { passed, failed } : { passed, failed, problems };
    await this.out.write(
      this.json
        ? `${this.#first ? "" : "\n"}],"summary":${JSON.stringify(summary)}}\n`
        : `${passed} passed, ${failed} failed\n`,
    );
  }
}

function failure(keyword: string, message: string): ValidationResult {
  return { valid: false, type: null, errors: [{ path: "", keyword, message }] };
}

function errorText(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

/** Parses then validates, numbering JSON syntax errors and repeated keys from `firstLine`. */
function check(validator: MessageValidator, text: string, firstLine = 1): ValidationResult {
  return validateJsonText(validator, text, firstLine);
}

const utf8 = new TextDecoder("utf-8", { fatal: true });

// Reused by every file read: message files are small, so one allocation serves them all.
const SHARED_BUFFER_BYTES = 64 * 1024;
const readBuffer = new Uint8Array(SHARED_BUFFER_BYTES);

/**
 * Reads a file as UTF-8, refusing files over {@linkcode MAX_INPUT_BYTES} while reading them (no
 * stat call). Synchronous on purpose: a blocking read costs a fraction of an async op round trip
 * and the CLI has nothing else to do meanwhile (measured: 10,000 files read in about half the
 * time of a pool of concurrent async reads).
 */
function readText(path: string, regular: boolean): string | ValidationResult {
  let buffer = readBuffer;
  let filled = 0;
  let file: Deno.FsFile | undefined;
  try {
    file = Deno.openSync(path);
    for (;;) {
      // On a regular file a short read means end of file, which saves a read call per file;
      // pipes and devices (`--file /dev/stdin`) are read until they say so.
      if (regular && filled > 0 && filled < buffer.length) break;
      if (filled === buffer.length) {
        if (filled > MAX_INPUT_BYTES) {
          return failure("read", `file is larger than ${MAX_INPUT_BYTES} bytes`);
        }
        const bigger = new Uint8Array(Math.min(filled * 2, MAX_INPUT_BYTES + 1));
        bigger.set(buffer);
        buffer = bigger;
      }
      const n = file.readSync(buffer.subarray(filled));
      if (n === null) break;
      filled += n;
    }
  } catch (error) {
    return failure("read", `cannot read file: ${errorText(error)}`);
  } finally {
    file?.close();
  }
  try {
    return utf8.decode(buffer.subarray(0, filled));
  } catch {
    return failure("read", "file is not valid UTF-8");
  }
}

/** Reads and validates one file; every failure becomes a result, never a throw. */
function checkFile(
  validator: MessageValidator,
  path: string,
  regular: boolean,
): ValidationResult {
  const text = readText(path, regular);
  return typeof text === "string" ? check(validator, text) : text;
}

/**
 * `path` resolved against `cwd` (absolute). Joined, not `path.resolve`d: resolve folds `..`
 * lexically, which is not what the system does when the component before it is a symlink.
 */
function resolveAgainst(cwd: string, path: string): string {
  return isAbsolute(path) ? path : `${cwd.replace(/[\\/]+$/, "")}/${path}`;
}

/**
 * Validates every `*.json` file under `dir` (shown as given, read at `absoluteDir`), sorted by
 * name at each level, recursing into subdirectories; symlinks to files count, symlinks to
 * directories are not followed (no cycles). A plain loop rather than a generator of paths: this
 * is the hot path of `--dir`.
 */
async function checkDir(
  validator: MessageValidator,
  dir: string,
  absoluteDir: string,
  reporter: Reporter,
): Promise<void> {
  // Names only (10,000 DirEntry objects cost a visible garbage-collection pause); the few
  // directories and symlinks are remembered in sets.
  const names: string[] = [];
  const dirs = new Set<string>();
  const links = new Set<string>();
  try {
    for (const entry of Deno.readDirSync(absoluteDir)) {
      if (entry.isDirectory) dirs.add(entry.name);
      else if (!entry.name.endsWith(".json")) continue;
      else if (entry.isSymlink) links.add(entry.name);
      else if (!entry.isFile) continue;
      names.push(entry.name);
    }
  } catch (error) {
    await reporter.report(
      dir,
      undefined,
      failure("read", `cannot read directory: ${errorText(error)}`),
    );
    return;
  }
  names.sort(); // by UTF-16 code units: stable across platforms and locales
  const base = dir.endsWith("/") ? dir : `${dir}/`;
  // Files are opened by absolute path (the caller's directory may not be the process's, and
  // Deno resolves a relative path on every open) but reported as the user wrote them.
  const absoluteBase = absoluteDir.endsWith("/") ? absoluteDir : `${absoluteDir}/`;
  for (const name of names) {
    const path = base + name;
    if (dirs.has(name)) {
      await checkDir(validator, path, absoluteBase + name, reporter);
      continue;
    }
    let result: ValidationResult;
    if (!links.has(name)) {
      result = checkFile(validator, absoluteBase + name, true);
    } else {
      // A link to a file counts; a link to a directory is not followed (no cycles).
      try {
        if (!Deno.statSync(absoluteBase + name).isFile) continue;
        result = checkFile(validator, absoluteBase + name, false);
      } catch (error) {
        result = failure("read", `cannot read file: ${errorText(error)}`);
      }
    }
    const sent = reporter.report(path, undefined, result);
    if (sent) await sent;
  }
}

/**
 * Reads stdin: NDJSON line by line in constant memory, or one JSON document (bounded). The
 * first non-blank line decides: when it is a JSON value on its own, or looks like one object
 * (`{` … `}`), the input is NDJSON.
 */
async function checkStdin(
  validator: MessageValidator,
  stdin: ReadableStream<Uint8Array>,
  reporter: Reporter,
): Promise<void> {
  const reader = stdin.pipeThrough(new TextDecoderStream()).getReader();
  try {
    let carry = "";
    let lineNo = 0; // lines completed so far
    let mode: "undecided" | "lines" | "document" = "undecided";
    let skipping = false; // inside an over-long line: drop text up to its newline

    const tooLong = failure("read", `line is longer than ${MAX_LINE_CHARS} characters`);
    const lineDone = async (raw: string) => {
      lineNo++;
      const text = raw.endsWith("\r") ? raw.slice(0, -1) : raw;
      if (text.length > MAX_LINE_CHARS) return await reporter.report("stdin", lineNo, tooLong);
      if (text.trim() === "") return;
      const sent = reporter.report("stdin", lineNo, check(validator, text, lineNo));
      if (sent) await sent;
    };

    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      if (mode === "document") {
        carry += value;
        if (carry.length > MAX_INPUT_BYTES) {
          await reader.cancel();
          await reporter.report(
            "stdin",
            undefined,
            failure(
              "read",
              `stdin document is larger than ${MAX_INPUT_BYTES} characters; send NDJSON (one message a line) instead`,
            ),
          );
          return;
        }
        continue;
      }
      let chunk = value;
      if (skipping) {
        const nl = chunk.indexOf("\n");
        if (nl === -1) continue;
        skipping = false;
        lineNo++;
        chunk = chunk.slice(nl + 1);
      }
      carry += chunk;
      if (mode === "undecided") {
        const first = firstLine(carry);
        if (first === undefined) {
          // No complete non-blank line yet; a huge first line is a document, not NDJSON.
          if (carry.length > MAX_LINE_CHARS) mode = "document";
          continue;
        }
        mode = looksLikeOneMessage(first) ? "lines" : "document";
        if (mode === "document") continue;
      }
      let start = 0;
      for (let nl = carry.indexOf("\n"); nl !== -1; nl = carry.indexOf("\n", start)) {
        await lineDone(carry.slice(start, nl));
        start = nl + 1;
      }
      carry = start === 0 ? carry : carry.slice(start);
      if (carry.length > MAX_LINE_CHARS) {
        // Report the line now and drop the rest of it; its newline will count it.
        await reporter.report("stdin", lineNo + 1, tooLong);
        carry = "";
        skipping = true;
      }
    }
    if (mode === "lines") {
      if (carry !== "" && !skipping) await lineDone(carry);
    } else if (/[^ \t\r\n]/.test(carry)) {
      await reporter.report("stdin", undefined, check(validator, carry));
    }
    // Else stdin was empty or blank: no message, which runInputs reports as such.
  } finally {
    reader.releaseLock();
  }
}

/** The first non-blank line of `text` when it is complete (ends in a newline). */
function firstLine(text: string): string | undefined {
  let start = 0;
  for (let nl = text.indexOf("\n"); nl !== -1; nl = text.indexOf("\n", start)) {
    const line = text.slice(start, nl).trim();
    if (line !== "") return line;
    start = nl + 1;
  }
  return undefined;
}

function looksLikeOneMessage(line: string): boolean {
  if (line.startsWith("{") && line.endsWith("}")) return true;
  try {
    JSON.parse(line);
    return true;
  } catch {
    return false;
  }
}

/**
 * Runs `backbeat-validate` with the given arguments and streams. Never throws for bad input:
 * unreadable files, malformed JSON and invalid messages are reported as failures.
 *
 * @param args The command-line arguments (without the program name; one leading `--` is
 * ignored).
 * @param io Standard input (read only for `--message -`), output and error streams, and the
 * directory relative paths are resolved against. The streams' locks are released, not closed,
 * when it returns.
 * @returns The exit status: 0 when everything was checked (and valid, with `--exit-code`),
 * 1 with `--exit-code` when anything was invalid or unreadable, and also without it when a
 * `--dir` or stdin held no message at all; 2 for a bad command line or unusable `--schemas`.
 * @throws {TypeError} When `io.cwd` is given but is not an absolute path.
 *
 * @example Validate a directory in process
 * ```ts ignore
 * import { runValidateCli } from "@chorus/backbeat/validate";
 * const status = await runValidateCli(["--dir", "messages", "--exit-code"], {
 *   stdout: Deno.stdout.writable,
 *   stderr: Deno.stderr.writable,
 * });
 * console.log(status);
 * ```
 */
export async function runValidateCli(args: readonly string[], io: ValidateCliIo): Promise<number> {
  if (io.cwd !== undefined && (typeof io.cwd !== "string" || !isAbsolute(io.cwd))) {
    throw new TypeError(`Cannot run backbeat-validate: cwd ${io.cwd} is not an absolute path`);
  }
  const cwd = io.cwd ?? Deno.cwd();
  const err = new Output(io.stderr);
  try {
    let options: Options;
    try {
      options = parseCommandLine(args);
    } catch (error) {
      if (!(error instanceof UsageError)) throw error;
      await err.write(`backbeat-validate: ${error.message}\nRun with --help for usage.\n`);
      return EXIT_USAGE;
    }
    if (options.help) {
      const out = new Output(io.stdout);
      await out.write(USAGE);
      await out.release();
      return EXIT_OK;
    }
    let validator: MessageValidator;
    try {
      validator = options.schemas === undefined
        ? new MessageValidator({ maxErrors: DEFAULT_MAX_ERRORS })
        : await loadSchemaDirectory(resolveAgainst(cwd, options.schemas), options.schemas, {
          maxErrors: DEFAULT_MAX_ERRORS,
        });
    } catch (error) {
      await err.write(`backbeat-validate: ${errorText(error)}\n`);
      return EXIT_USAGE;
    }
    const out = new Output(io.stdout);
    try {
      const reporter = new Reporter(out, err, options.json, options.quiet);
      await reporter.start();
      await runInputs(validator, options.inputs, io.stdin, cwd, reporter);
      await reporter.finish();
      // Checking nothing fails even without --exit-code: that flag is about whether messages
      // are valid, while an empty or mistyped --dir means the job checked nothing at all, and
      // a CI step must not pass on that.
      if (reporter.problems.length > 0) return EXIT_INVALID;
      return options.exitCode && reporter.failed > 0 ? EXIT_INVALID : EXIT_OK;
    } finally {
      await out.release();
    }
  } finally {
    await err.release();
  }
}

async function runInputs(
  validator: MessageValidator,
  inputs: readonly Input[],
  stdin: ReadableStream<Uint8Array> | undefined,
  cwd: string,
  reporter: Reporter,
): Promise<void> {
  for (const input of inputs) {
    const before = reporter.passed + reporter.failed;
    if (input.kind === "dir") {
      await checkDir(validator, input.path, resolveAgainst(cwd, input.path), reporter);
    } else if (input.kind === "file") {
      const result = checkFile(validator, resolveAgainst(cwd, input.path), false);
      await reporter.report(input.path, undefined, result);
    } else if (input.text !== null) {
      await reporter.report("argument", undefined, check(validator, input.text));
    } else if (stdin === undefined) {
      await reporter.report("stdin", undefined, failure("read", "no standard input available"));
    } else {
      await checkStdin(validator, stdin, reporter);
    }
    // A --file or --message always yields a result; a directory or stdin may yield none.
    if (reporter.passed + reporter.failed === before) {
      await reporter.nothingIn(input.kind === "dir" ? input.path : "stdin");
    }
  }
}

export type { ValidationError };

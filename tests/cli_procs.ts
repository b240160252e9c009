// Processes for tests/cli_test.ts: the backbeat CLI run as a real subprocess (`deno run -A
// cli.ts …`, so exit codes and stderr are the real ones), and pulse and reverb processes whose
// HTTP address is read from their JSON log. Every wait is bounded.

const ROOT = new URL("../", import.meta.url);
const CLI = new URL("../cli.ts", import.meta.url).pathname;

// The test's own environment is passed on; these would change what a command does (an empty
// value counts as unset), so each test sets what it wants.
const BLANK_ENV: Record<string, string> = Object.fromEntries(
  [
    "INIT_CWD",
    "BACKBEAT_CLUSTER",
    "BACKBEAT_NATS_URL",
    "BACKBEAT_NATS_USER",
    "BACKBEAT_NATS_PASSWORD",
    "BACKBEAT_NATS_TOKEN",
    "BACKBEAT_PULSE_URL",
    "BACKBEAT_REVERB_URL",
    "BACKBEAT_ADMIN_TOKEN",
    "BACKBEAT_ADMIN_KEY",
    "BACKBEAT_KEYRING",
  ].map((name) => [name, ""]),
);

/** What a finished CLI run printed. */
export interface CliResult {
  /** Exit status. */
  readonly code: number;
  /** Standard output. */
  readonly stdout: string;
  /** Standard error. */
  readonly stderr: string;
}

/** Options of {@linkcode runCli}. */
export interface RunCliOptions {
  /** Extra environment variables (the rest of the test's environment is passed on). */
  readonly env?: Record<string, string>;
  /** Working directory. @default {the project folder} */
  readonly cwd?: string;
  /** Killed (and the test failed) after this long, ms. @default {20000} */
  readonly timeoutMs?: number;
  /** Text for standard input. @default {none} */
  readonly stdin?: string;
  /** Called while it runs (e.g. to publish what it waits for); its returned stop is called at the end. */
  readonly during?: (child: Deno.ChildProcess) => () => void;
}

/** A CLI process still running. */
export interface CliProc {
  /** The process. */
  readonly child: Deno.ChildProcess;
  /** Standard output so far. */
  stdout(): string;
  /** Standard error so far. */
  stderr(): string;
  /** Resolves with the result when it exits (killed after the timeout). */
  readonly result: Promise<CliResult>;
}

/**
 * Starts `deno run -A cli.ts <args>`.
 *
 * @param args The command line.
 * @param options Environment, directory, timeout, stdin.
 * @returns The running process.
 */
export function spawnCli(args: readonly string[], options: RunCliOptions = {}): CliProc {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "--frozen", "-A", CLI, ...args],
    cwd: options.cwd ?? ROOT,
    env: { NO_COLOR: "1", ...BLANK_ENV, ...options.env },
    stdin: options.stdin === undefined ? "null" : "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  if (options.stdin !== undefined) {
    const w = child.stdin.getWriter();
    w.write(new TextEncoder().encode(options.stdin)).then(() => w.close()).catch(() => {});
  }
  let out = "";
  let err = "";
  const reading = Promise.all([
    (async () => {
      for await (const c of child.stdout.pipeThrough(new TextDecoderStream())) out += c;
    })(),
    (async () => {
      for await (const c of child.stderr.pipeThrough(new TextDecoderStream())) err += c;
    })(),
  ]);
  const timeoutMs = options.timeoutMs ?? 20_000;
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    try {
      child.kill("SIGKILL");
    } catch { /* gone */ }
  }, timeoutMs);
  const stopDuring = options.during?.(child);
  const result = (async () => {
    const status = await child.status;
    clearTimeout(timer);
    stopDuring?.();
    await reading;
    if (timedOut) {
      throw new Error(
        `backbeat ${
          args.join(" ")
        } did not end within ${timeoutMs} ms\nstdout:\n${out}\nstderr:\n${err}`,
      );
    }
    return { code: status.code, stdout: out, stderr: err };
  })();
  return { child, stdout: () => out, stderr: () => err, result };
}

/**
 * Runs `deno run -A cli.ts <args>` to the end.
 *
 * @param args The command line.
 * @param options Environment, directory, timeout, stdin.
 * @returns Exit status, stdout and stderr.
 * @throws {Error} When it runs longer than the timeout.
 */
export function runCli(args: readonly string[], options: RunCliOptions = {}): Promise<CliResult> {
  return spawnCli(args, options).result;
}

/** A pulse or reverb process. */
export interface ServiceProc {
  /** Its JSON log lines. */
  readonly log: Record<string, unknown>[];
  /** Resolves with its HTTP URL once it logs it (rejects if it exits first or after 20 s). */
  readonly url: Promise<string>;
  /** SIGTERM, SIGKILL after 5 s; resolves when it has exited. */
  close(): Promise<void>;
}

/**
 * Starts `deno run -A <main> <args>` and reads its JSON log from stderr.
 *
 * @param main `pulse/main.ts` or `reverb/main.ts`.
 * @param args Its flags.
 * @param ready The log message that carries the URL, and the field that holds it.
 * @returns The process.
 */
export function spawnService(
  main: string,
  args: readonly string[],
  ready: { msg: string; field: string },
): ServiceProc {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "--frozen", "-A", main, ...args],
    cwd: ROOT,
    env: { NO_COLOR: "1" },
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).spawn();
  const log: Record<string, unknown>[] = [];
  const url = Promise.withResolvers<string>();
  const timer = setTimeout(
    () => url.reject(new Error(`${main} logged no URL within 20 s`)),
    20_000,
  );
  const reading = (async () => {
    let buf = "";
    for await (const chunk of child.stderr.pipeThrough(new TextDecoderStream())) {
      buf += chunk;
      let nl;
      while ((nl = buf.indexOf("\n")) >= 0) {
        const text = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        let rec: Record<string, unknown>;
        try {
          rec = JSON.parse(text);
        } catch {
          rec = { msg: "(not json)", text };
        }
        log.push(rec);
        if (rec.msg === ready.msg && typeof rec[ready.field] === "string") {
          clearTimeout(timer);
          url.resolve(rec[ready.field] as string);
        }
      }
    }
  })();
  let exited = false;
  const status = child.status.then((s) => {
    exited = true;
    clearTimeout(timer);
    url.reject(new Error(`${main} exited with ${s.code}: ${JSON.stringify(log.slice(-5))}`));
    return s;
  });
  url.promise.catch(() => {});
  return {
    log,
    url: url.promise,
    async close() {
      if (!exited) {
        try {
          child.kill("SIGTERM");
        } catch { /* gone */ }
      }
      const kill = setTimeout(() => {
        try {
          child.kill("SIGKILL");
        } catch { /* gone */ }
      }, 5_000);
      await status;
      clearTimeout(kill);
      await reading;
    },
  };
}

/**
 * A pulse process on NATS with a free HTTP port.
 *
 * @param args Its flags (cluster, nats, tempo, admin token…).
 * @returns The process.
 */
export function spawnPulseProc(args: readonly string[]): ServiceProc {
  return spawnService("pulse/main.ts", ["--http", "127.0.0.1:0", ...args], {
    msg: "pulse running",
    field: "http",
  });
}

/**
 * A reverb process on NATS with a free HTTP port.
 *
 * @param args Its flags (cluster, nats, keyring…).
 * @returns The process.
 */
export function spawnReverbProc(args: readonly string[]): ServiceProc {
  return spawnService("reverb/main.ts", ["--http", "127.0.0.1:0", ...args], {
    msg: "serving http",
    field: "url",
  });
}

/**
 * Fetches JSON from a service.
 *
 * @param url The URL.
 * @returns The parsed body.
 */
export async function getJson(url: string): Promise<Record<string, unknown>> {
  const res = await fetch(url, { signal: AbortSignal.timeout(5_000) });
  return await res.json();
}

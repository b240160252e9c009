// Starts a real nats-server for tests: a loopback port the server picks itself, JetStream on, a
// temporary store. A missing nats-server is a loud failure, never a skip.
//
// The server binds port -1 (any free port) and reports the port it got in a ports file, as
// nats.js's own test kit does: picking a free port here and handing it over would leave a window
// in which another process could take it.

import { until } from "./until.ts";

/** A running test server. */
export interface NatsServer {
  /** `nats://127.0.0.1:<port>`. */
  readonly url: string;
  /** The port, chosen by the server at the first start and kept across restarts. */
  readonly port: number;
  /** The server's process id (for signals in tests), -1 while it is not running. */
  readonly pid: number;
  /** Stops the server and removes its store. Idempotent. */
  stop(): Promise<void>;
  /** Stops the process (keeping its store) and starts it again on the same port. */
  restart(): Promise<void>;
  /** Stops the process with SIGKILL but keeps the store, so `start()` can bring it back. */
  kill(): Promise<void>;
  /** Starts it again after `kill()`, on the same port; does nothing while it runs. */
  start(): Promise<void>;
  /** `await using` support. */
  [Symbol.asyncDispose](): Promise<void>;
}

/** Options of {@linkcode startNatsServer}. */
export interface StartNatsServerOptions {
  /** Enable JetStream, with a store in the server's temporary directory. @default {true} */
  readonly jetstream?: boolean;
  /**
   * Extra command-line arguments, e.g. `["-c", "nats.conf"]`. They come after the address, port,
   * log and store flags set here, and nats-server lets command-line flags win over a config
   * file's settings.
   * @default {[]}
   */
  readonly args?: readonly string[];
  /** Longest wait for the server to listen, ms. @default {10000} */
  readonly startTimeoutMs?: number;
}

/** The client port in nats-server's ports file (`{"nats":["nats://127.0.0.1:PORT"],...}`). */
async function readPortsFile(dir: string, pid: number): Promise<number | undefined> {
  // The file is `<executable name>_<pid>.ports`; match on the pid alone.
  for await (const entry of Deno.readDir(dir)) {
    if (!entry.name.endsWith(`_${pid}.ports`)) continue;
    try {
      const { nats } = JSON.parse(await Deno.readTextFile(`${dir}/${entry.name}`));
      const port = Number(new URL(nats[0]).port);
      if (Number.isInteger(port) && port > 0) return port;
    } catch {
      // Caught while nats-server was still writing it: read it again on the next pass.
    }
  }
  return undefined;
}

async function tail(path: string, from: number): Promise<string> {
  const text = await Deno.readTextFile(path).catch(() => "");
  return text.slice(from).slice(-2000);
}

/**
 * Starts nats-server on a free loopback port of its own choosing.
 *
 * @param options JetStream, extra arguments and the start timeout.
 * @returns The running server.
 * @throws {Error} When nats-server is not installed or does not start; on a restart, when its
 * port was taken meanwhile.
 *
 * @example A server for one test
 * ```ts ignore
 * await using server = await startNatsServer({ jetstream: false });
 * const bus = await connectNatsBus({ servers: server.url });
 * ```
 */
export async function startNatsServer(options: StartNatsServerOptions = {}): Promise<NatsServer> {
  const startTimeoutMs = options.startTimeoutMs ?? 10_000;
  const dir = await Deno.makeTempDir({ prefix: "backbeat-nats-" });
  const portsDir = `${dir}/ports`;
  await Deno.mkdir(portsDir);
  const log = `${dir}/server.log`;
  const base = ["-a", "127.0.0.1", "-l", log, "--ports_file_dir", portsDir];
  if (options.jetstream ?? true) base.push("-js", "-sd", `${dir}/store`);
  const extra = options.args ?? [];
  let child: Deno.ChildProcess | undefined;
  let stderr: Promise<string> = Promise.resolve("");
  let port = 0;
  let removed = false;

  const remove = async () => {
    if (removed) return;
    removed = true;
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  };

  const kill = async () => {
    if (!child) return;
    const c = child;
    child = undefined;
    try {
      c.kill("SIGKILL");
    } catch { /* already gone */ }
    await c.status;
    await stderr;
    // SIGKILL leaves the ports file behind; the next start looks for its own pid's file anyway.
    for await (const entry of Deno.readDir(portsDir)) {
      if (entry.name.endsWith(`_${c.pid}.ports`)) {
        await Deno.remove(`${portsDir}/${entry.name}`).catch(() => {});
      }
    }
  };

  // `wanted` 0 is the first start (any port); afterwards the learned port, so clients that
  // reconnect to `url` find the server again.
  const spawn = async (wanted: number): Promise<number> => {
    const logStart = (await Deno.stat(log).catch(() => undefined))?.size ?? 0;
    let c: Deno.ChildProcess;
    try {
      c = new Deno.Command("nats-server", {
        args: [...base, "-p", wanted === 0 ? "-1" : String(wanted), ...extra],
        stdin: "null",
        stdout: "null",
        // Flag errors go to stderr, not to the log file.
        stderr: "piped",
      }).spawn();
    } catch (err) {
      if (err instanceof Deno.errors.NotFound) {
        throw new Error(
          "nats-server is not installed: these tests need a real server (apt-get install -y nats-server)",
        );
      }
      throw err;
    }
    child = c;
    stderr = new Response(c.stderr).text().catch(() => "");
    let exited = false;
    c.status.then(() => exited = true);
    let got: number | undefined;
    try {
      await until(
        async () => exited || (got = await readPortsFile(portsDir, c.pid)) !== undefined,
        {
          timeoutMs: startTimeoutMs,
          intervalMs: 10,
          what: "nats-server to listen",
        },
      );
    } catch (err) {
      await kill();
      throw err;
    }
    if (got === undefined) {
      child = undefined;
      const text = `${await stderr}${await tail(log, logStart)}`;
      if (wanted !== 0 && /address already in use/i.test(text)) {
        throw new Error(
          `nats-server could not start again on port ${wanted}: another process took it meanwhile`,
        );
      }
      throw new Error(`nats-server exited during start:\n${text}`);
    }
    return got;
  };

  const start = async () => {
    if (child) return;
    await spawn(port);
  };

  try {
    port = await spawn(0);
  } catch (err) {
    await remove();
    throw err;
  }
  const server: NatsServer = {
    url: `nats://127.0.0.1:${port}`,
    port,
    get pid() {
      return child?.pid ?? -1;
    },
    kill,
    start,
    async restart() {
      await kill();
      await start();
    },
    async stop() {
      await kill();
      await remove();
    },
    [Symbol.asyncDispose]() {
      return this.stop();
    },
  };
  return server;
}

// Starts a real nats-server for tests: a free loopback port, JetStream on, a temporary store.
// A missing nats-server is a loud failure, never a skip.

/** A running test server. */
export interface NatsServer {
  /** `nats://127.0.0.1:<port>`. */
  readonly url: string;
  /** The port. */
  readonly port: number;
  /** The server's process id (for signals in tests). */
  readonly pid: number;
  /** Stops the server and removes its store. Idempotent. */
  stop(): Promise<void>;
  /** Stops the process (keeping its store) and starts it again on the same port. */
  restart(): Promise<void>;
  /** Stops the process but keeps the store, so `start()` can bring it back. */
  kill(): Promise<void>;
  /** Starts it again after `kill()`. */
  start(): Promise<void>;
  /** `await using` support. */
  [Symbol.asyncDispose](): Promise<void>;
}

/** Options of {@linkcode startNatsServer}. */
export interface StartNatsServerOptions {
  /** Enable JetStream. @default {true} */
  jetstream?: boolean;
  /** Extra command-line arguments. @default {[]} */
  args?: string[];
}

function freePort(): number {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  return port;
}

async function waitForPort(port: number, child: Deno.ChildProcess, log: string): Promise<void> {
  const deadline = performance.now() + 10_000;
  let exited = false;
  child.status.then(() => exited = true);
  while (performance.now() < deadline) {
    if (exited) {
      const text = await Deno.readTextFile(log).catch(() => "");
      throw new Error(`nats-server exited during start:\n${text.slice(-2000)}`);
    }
    try {
      const c = await Deno.connect({ hostname: "127.0.0.1", port });
      c.close();
      return;
    } catch {
      await new Promise((r) => setTimeout(r, 20));
    }
  }
  throw new Error(`nats-server did not listen on port ${port} within 10 s`);
}

/**
 * Starts nats-server on a free loopback port.
 *
 * @param options JetStream and extra arguments.
 * @returns The running server.
 * @throws {Error} When nats-server is not installed or does not start.
 */
export async function startNatsServer(options: StartNatsServerOptions = {}): Promise<NatsServer> {
  const dir = await Deno.makeTempDir({ prefix: "backbeat-nats-" });
  const port = freePort();
  const log = `${dir}/server.log`;
  const args = ["-a", "127.0.0.1", "-p", String(port), "-l", log];
  if (options.jetstream ?? true) args.push("-js", "-sd", `${dir}/store`);
  args.push(...(options.args ?? []));
  let child: Deno.ChildProcess | undefined;
  let removed = false;

  const start = async () => {
    try {
      child = new Deno.Command("nats-server", {
        args,
        stdin: "null",
        stdout: "null",
        stderr: "null",
      })
        .spawn();
    } catch (err) {
      if (err instanceof Deno.errors.NotFound) {
        throw new Error(
          "nats-server is not installed: these tests need a real server (apt-get install -y nats-server)",
        );
      }
      throw err;
    }
    await waitForPort(port, child, log);
  };
  const kill = async () => {
    if (!child) return;
    const c = child;
    child = undefined;
    try {
      c.kill("SIGKILL");
    } catch { /* already gone */ }
    await c.status;
  };
  await start();
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
      if (!removed) {
        removed = true;
        await Deno.remove(dir, { recursive: true }).catch(() => {});
      }
    },
    [Symbol.asyncDispose]() {
      return this.stop();
    },
  };
  return server;
}

// reverb/main.ts as an operator runs it: a real process (with the permissions of `deno task
// reverb`) against real nats-servers with users, an NKey user and a three-node JetStream cluster.
// What is checked is what an operator sees: one `reverb: <reason>` line and exit 1 for a refused
// login or a taken port, exit 2 for a bad command line, no password or seed in any output line,
// /metrics or /api/*, relative paths read from the caller's directory (INIT_CWD), and
// `--replicas` on the lease bucket and the bar stream.
//
// Timing: a reverb process starts in a few seconds on a loaded two-core machine; waits are
// bounded generously (30 s for a start, 15 s for JetStream in a fresh cluster).

import assert from "node:assert/strict";
import { jetstreamManager } from "@nats-io/jetstream";
import { type NatsConnection, nkeys } from "@nats-io/transport-node";
import { generateSigningKeyPair } from "../core/mod.ts";
import { connectNatsBus, kvBucketName, type NatsBusLike } from "../nats/mod.ts";
import { barStreamName, Reverb } from "../reverb/mod.ts";
import { type NatsServer, startNatsServer } from "./nats_server.ts";
import { until } from "./until.ts";

const ROOT = new URL("../", import.meta.url).pathname.replace(/\/$/, "");
const MAIN = `${ROOT}/reverb/main.ts`;
const START_MS = 30_000;
const CLUSTER_MS = 15_000;
const decoder = new TextDecoder();

/** A reverb process; its output is collected as it comes. */
class ReverbProcess {
  readonly child: Deno.ChildProcess;
  stdout = "";
  stderr = "";
  readonly #reading: Promise<unknown>;
  #code: number | undefined;

  constructor(args: readonly string[], options: { env?: Record<string, string>; cwd?: string }) {
    this.child = new Deno.Command(Deno.execPath(), {
      // The permissions of `deno task reverb`; the config named, as the cwd may be elsewhere.
      args: [
        "run",
        "--frozen",
        "--config",
        `${ROOT}/deno.json`,
        "--allow-net",
        "--allow-read",
        "--allow-env",
        "--allow-sys",
        MAIN,
        ...args,
      ],
      cwd: options.cwd ?? ROOT,
      // The test runner's own INIT_CWD (under deno task) must not leak into the process.
      env: { INIT_CWD: "", NO_COLOR: "1", ...options.env },
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const read = async (stream: ReadableStream<Uint8Array>, into: "stdout" | "stderr") => {
      for await (const chunk of stream) this[into] += decoder.decode(chunk, { stream: true });
    };
    this.#reading = Promise.all([
      read(this.child.stdout, "stdout"),
      read(this.child.stderr, "stderr"),
    ]);
    this.child.status.then((s) => this.#code = s.code);
  }

  /** Complete stderr lines. */
  get lines(): string[] {
    return this.stderr.split("\n").slice(0, -1);
  }

  /** The JSON log lines. */
  get log(): Array<Record<string, unknown>> {
    return this.lines.filter((l) => l.startsWith("{")).map((l) => JSON.parse(l));
  }

  /** Waits until a log line with this message appears (failing early if the process exits). */
  async waitFor(msg: string): Promise<Record<string, unknown>> {
    await until(() => {
      if (this.#code !== undefined) {
        throw new Error(`reverb exited with ${this.#code} before "${msg}": ${this.stderr}`);
      }
      return this.log.some((l) => l.msg === msg);
    }, { what: `reverb to log "${msg}"`, timeoutMs: START_MS, intervalMs: 20 });
    return this.log.find((l) => l.msg === msg)!;
  }

  /** Waits for the process to exit by itself; kills it when it does not in time. */
  async exit(timeoutMs = START_MS): Promise<number> {
    try {
      await until(() => this.#code !== undefined, {
        what: "reverb to exit",
        timeoutMs,
        intervalMs: 20,
      });
    } catch (error) {
      this.kill("SIGKILL");
      await this.child.status;
      await this.#reading;
      throw error;
    }
    await this.#reading;
    return this.#code!;
  }

  /** SIGTERM, then the exit code. */
  async stop(): Promise<number> {
    this.kill("SIGTERM");
    return await this.exit(10_000);
  }

  kill(signal: Deno.Signal): void {
    try {
      this.child.kill(signal);
    } catch { /* gone already */ }
  }
}

/** Runs reverb until it exits by itself. */
async function runToExit(
  args: readonly string[],
  options: { env?: Record<string, string>; cwd?: string } = {},
): Promise<ReverbProcess> {
  const p = new ReverbProcess(args, options);
  await p.exit();
  return p;
}

function assertNoSecret(text: string, secrets: readonly string[], where: string): void {
  for (const s of secrets) assert.ok(!text.includes(s), `a secret appears in ${where}`);
}

function assertNoStackTrace(p: ReverbProcess): void {
  assert.ok(!/^\s+at /m.test(p.stderr), `no stack trace: ${p.stderr}`);
  assert.ok(!/Uncaught/.test(p.stderr), `nothing uncaught: ${p.stderr}`);
}

async function withDir<T>(fn: (dir: string) => Promise<T>): Promise<T> {
  const dir = await Deno.makeTempDir({ prefix: "reverb-ops-" });
  try {
    return await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

async function confServer(dir: string, conf: string): Promise<NatsServer> {
  const path = `${dir}/nats.conf`;
  await Deno.writeTextFile(path, conf);
  return await startNatsServer({ args: ["-c", path] });
}

/** Everything a running reverb serves that could leak: metrics, status, bars, agents. */
async function served(url: string): Promise<string> {
  const out: string[] = [];
  for (const path of ["/metrics", "/api/v1/status", "/api/v1/bars", "/api/v1/agents", "/"]) {
    const res = await fetch(`${url}${path}`);
    out.push(await res.text());
  }
  return out.join("\n");
}

Deno.test("reverb process: a wrong password or unknown user is one redacted line and exit 1; the right one runs, and no output carries the password", async () => {
  await withDir(async (dir) => {
    const pass = `bb${crypto.randomUUID().replaceAll("-", "")}`;
    const wrong = `bbwrong${crypto.randomUUID().slice(0, 8)}`;
    await using server = await confServer(
      dir,
      `authorization { users = [ { user: alice, password: "${pass}" } ] }\n`,
    );
    const where = `127.0.0.1:${server.port}`;
    const secrets = [pass, wrong];
    const refusals: Array<[string[], Record<string, string>, string]> = [
      [["--nats", `nats://alice:${wrong}@${where}`], {}, `nats://alice:***@${where}`],
      [["--nats", `nats://${where}`, "--nats-user", "alice"], {
        BACKBEAT_NATS_PASSWORD: wrong,
      }, `nats://alice:***@${where}`],
      [["--nats", `nats://${where}`, "--nats-user", "mallory"], {
        BACKBEAT_NATS_PASSWORD: pass,
      }, `nats://mallory:***@${where}`],
    ];
    for (const [args, env, shown] of refusals) {
      const p = await runToExit([...args, "--http", "off", "--cluster", "ops-auth"], { env });
      assert.equal(await p.exit(), 1, p.stderr);
      assert.deepEqual(p.lines, [`reverb: Cannot connect to ${shown}: authorization violation`]);
      assert.equal(p.stdout, "");
      assertNoStackTrace(p);
      assertNoSecret(p.stderr, secrets, "the output");
    }

    // The right password, from the environment and in the URL: reverb runs, and neither its
    // logs (at debug) nor anything it serves shows the password.
    for (
      const [args, env] of [
        [["--nats", `nats://${where}`, "--nats-user", "alice"], { BACKBEAT_NATS_PASSWORD: pass }],
        [["--nats", `nats://alice:${pass}@${where}`], {}],
      ] as const
    ) {
      const p = new ReverbProcess([
        ...args,
        "--http",
        "127.0.0.1:0",
        "--cluster",
        "ops-auth",
        "--log-level",
        "debug",
      ], { env });
      try {
        const connected = await p.waitFor("connected to NATS");
        assert.equal(connected.url, `nats://${args[1].includes("@") ? "alice:***@" : ""}${where}`);
        const url = (await p.waitFor("serving http")).url as string;
        await p.waitFor("reverb started");
        const status = await (await fetch(`${url}/api/v1/status`)).json();
        assert.equal(status.bus, "connected");
        assertNoSecret(await served(url), secrets, "/metrics or /api/*");
      } finally {
        assert.equal(await p.stop(), 0, p.stderr);
      }
      assert.ok(p.log.some((l) => l.msg === "reverb stopped"));
      assertNoSecret(p.stderr + p.stdout, secrets, "a log line");
      assertNoStackTrace(p);
    }
  });
});

Deno.test("reverb process: an NKey seed file relative to INIT_CWD logs in, and no output carries the seed", async () => {
  await withDir(async (dir) => {
    const user = nkeys.createUser();
    const seed = decoder.decode(user.getSeed());
    await Deno.mkdir(`${dir}/secrets`);
    await Deno.writeTextFile(`${dir}/secrets/reverb.nk`, `${seed}\n`, { mode: 0o600 });
    await Deno.writeTextFile(`${dir}/ring.json`, JSON.stringify({}));
    await using server = await confServer(
      dir,
      `authorization { users = [ { nkey: "${user.getPublicKey()}" } ] }\n`,
    );
    // As `deno task reverb -- ...` runs it: in the project folder, the caller's directory in
    // INIT_CWD.
    const p = new ReverbProcess([
      "--nats",
      server.url,
      "--nats-nkey",
      "secrets/reverb.nk",
      "--keyring",
      "ring.json",
      "--http",
      "127.0.0.1:0",
      "--cluster",
      "ops-nkey",
      "--log-level",
      "debug",
    ], { env: { INIT_CWD: dir }, cwd: ROOT });
    try {
      await p.waitFor("connected to NATS");
      const url = (await p.waitFor("serving http")).url as string;
      await p.waitFor("reverb started");
      assertNoSecret(await served(url), [seed], "/metrics or /api/*");
    } finally {
      assert.equal(await p.stop(), 0, p.stderr);
    }
    assertNoSecret(p.stderr + p.stdout, [seed], "a log line");

    // The same relative path without INIT_CWD means the working directory, where it is not:
    // one line naming the file as resolved.
    const missing = await runToExit([
      "--nats",
      server.url,
      "--nats-nkey",
      "secrets/reverb.nk",
      "--http",
      "off",
    ], { cwd: ROOT });
    assert.equal(await missing.exit(), 1);
    assert.equal(missing.lines.length, 1, missing.stderr);
    assert.match(
      missing.lines[0],
      new RegExp(
        `^reverb: Cannot connect to NATS: cannot use the nkeySeedFile file ${ROOT}/secrets/reverb\\.nk: `,
      ),
    );
    assertNoStackTrace(missing);
  });
});

Deno.test("reverb process: --keyring resolves against INIT_CWD, else the working directory", async () => {
  await withDir(async (dir) => {
    const ring = { a1: [{ key_id: "k1", public_key: (await generateSigningKeyPair()).publicKey }] };
    await Deno.writeTextFile(`${dir}/ring.json`, JSON.stringify(ring));
    for (const [env, cwd] of [[{ INIT_CWD: dir }, ROOT], [{}, dir]] as const) {
      const p = new ReverbProcess(["--keyring", "ring.json", "--http", "127.0.0.1:0"], {
        env,
        cwd,
      });
      try {
        const url = (await p.waitFor("serving http")).url as string;
        await p.waitFor("reverb started");
        const status = await (await fetch(`${url}/api/v1/status`)).json();
        assert.equal(status.keyring_keys, 1, `the keyring from ${dir}`);
      } finally {
        assert.equal(await p.stop(), 0, p.stderr);
      }
    }
  });
});

Deno.test("reverb process: a taken HTTP port is one line naming the address and the flag, exit 1; bad flags exit 2", async () => {
  using taken = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (taken.addr as Deno.NetAddr).port;
  const busy = await runToExit(["--http", `127.0.0.1:${port}`]);
  assert.equal(await busy.exit(), 1);
  assert.deepEqual(busy.lines, [
    `reverb: Cannot listen on 127.0.0.1:${port}: address in use (change it with --http HOST:PORT)`,
  ]);
  assertNoStackTrace(busy);

  const usage = await runToExit(["--keyring", "--http", "127.0.0.1:0"]);
  assert.equal(await usage.exit(), 2);
  assert.match(usage.lines[0], /^reverb: Missing value for --keyring/);
  assert.equal(usage.lines[1], "Run with --help for usage.");
  const help = await runToExit(["--help"]);
  assert.equal(await help.exit(), 0);
  assert.match(help.stdout, /^Usage: deno task reverb -- \[flags\]$/m);
  assert.match(help.stdout, /--nats-password PW/);
});

// nats-server writes each listener's port to its ports file; the kit reads only the client
// port, so find the file by the server's pid under the kit's temporary directory.
async function clusterUrl(server: NatsServer): Promise<string> {
  const tmp = Deno.env.get("TMPDIR") ?? "/tmp";
  for await (const dir of Deno.readDir(tmp)) {
    if (!dir.isDirectory || !dir.name.startsWith("backbeat-nats-")) continue;
    const ports = `${tmp}/${dir.name}/ports`;
    try {
      for await (const f of Deno.readDir(ports)) {
        if (!f.name.endsWith(`_${server.pid}.ports`)) continue;
        const listed = JSON.parse(await Deno.readTextFile(`${ports}/${f.name}`));
        // A crashed run's stale file may carry a reused pid: the client port must match too.
        if (listed.nats?.[0] !== server.url) continue;
        const url = listed.cluster?.[0];
        if (typeof url === "string") return url;
      }
    } catch { /* another test's server, gone meanwhile */ }
  }
  throw new Error(`no cluster port found for nats-server pid ${server.pid}`);
}

/** Three JetStream servers clustered on loopback: the first listens, the others route to it. */
async function startCluster(): Promise<NatsServer[]> {
  const name = `reverb-${crypto.randomUUID().slice(0, 8)}`;
  const args = (i: number, routes: string) => [
    "--server_name",
    `n${i}`,
    "--cluster_name",
    name,
    "--cluster",
    "nats://127.0.0.1:-1",
    "--routes",
    routes,
  ];
  const servers: NatsServer[] = [];
  try {
    // JetStream clustering insists on configured routes: the first node gets one to a port
    // nobody listens on (it keeps retrying, harmlessly) and learns the others as they route in.
    servers.push(await startNatsServer({ args: args(0, "nats://127.0.0.1:1") }));
    const seed = await clusterUrl(servers[0]);
    for (let i = 1; i < 3; i++) servers.push(await startNatsServer({ args: args(i, seed) }));
    return servers;
  } catch (error) {
    await Promise.all(servers.map((s) => s.stop()));
    throw error;
  }
}

Deno.test("reverb --replicas on a single server: one clear line, exit 1", async () => {
  await using server = await startNatsServer();
  const p = await runToExit(["--nats", server.url, "--replicas", "3", "--http", "off"]);
  assert.equal(await p.exit(), 1, p.stderr);
  const last = p.lines.at(-1)!;
  const bucket = await kvBucketName("chorus-dev", "reverb");
  assert.match(last, new RegExp(`^reverb: Cannot open KV bucket ${bucket}: .*replicas`));
  // The stream was refused for the same reason first (it is retried, so it is logged).
  const streamError = p.log.find((l) => l.msg === "history stream unavailable");
  assert.match(String(streamError?.error), /replicas/);
  assertNoStackTrace(p);
});

Deno.test("reverb --replicas 3 on a three-node cluster: the bucket and the stream get 3 copies, old ones are scaled up", async () => {
  const servers = await startCluster();
  let bus: NatsBusLike | undefined;
  try {
    bus = await connectNatsBus({ servers: servers.map((s) => s.url) });
    const jsm = await jetstreamManager(bus.connection as NatsConnection, {
      timeout: 2000,
      checkAPI: false,
    });
    // The meta leader is elected a few seconds after the routes are up.
    await until(async () => {
      try {
        await jsm.getAccountInfo();
        return true;
      } catch {
        return false;
      }
    }, { timeoutMs: CLUSTER_MS, intervalMs: 200, what: "JetStream in the cluster" });
    const replicas = async (cluster: string) => ({
      bucket: (await jsm.streams.info(`KV_${await kvBucketName(cluster, "reverb")}`)).config
        .num_replicas,
      stream: (await jsm.streams.info(barStreamName(cluster))).config.num_replicas,
    });

    // An old reverb made both with one copy; a reverb with replicas 3 scales them up.
    const old = new Reverb({ clusterId: "ops-r1", bus, id: "old" });
    await old.start();
    await old.stop();
    assert.deepEqual(await replicas("ops-r1"), { bucket: 1, stream: 1 });
    const upgraded = new Reverb({ clusterId: "ops-r1", bus, id: "new", replicas: 3 });
    await upgraded.start();
    try {
      assert.equal(upgraded.status().stream?.ready, true);
    } finally {
      await upgraded.stop();
    }
    assert.deepEqual(await replicas("ops-r1"), { bucket: 3, stream: 3 });

    // The process, from the shared flag: created with 3 copies.
    const urls = servers.map((s) => s.url).join(",");
    const p = new ReverbProcess(["--nats", urls, "--cluster", "ops-r3", "--replicas", "3"], {
      env: { BACKBEAT_REVERB_HTTP: "off" },
    });
    try {
      await p.waitFor("reverb started");
    } finally {
      assert.equal(await p.stop(), 0, p.stderr);
    }
    assert.deepEqual(await replicas("ops-r3"), { bucket: 3, stream: 3 });
  } finally {
    await bus?.close();
    await Promise.all(servers.map((s) => s.stop()));
  }
});

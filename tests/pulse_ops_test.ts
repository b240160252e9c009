// Pulse operations on a real nats-server: clock answers from the leader only, NATS credentials
// (never logged), one-line startup failures, GET /tempo, a restart on a stored timeline.
import assert from "node:assert/strict";
import type { NatsConnection } from "@nats-io/nats-core";
import { requestTimeSample, SystemClock } from "../core/mod.ts";
import { connectNatsBus, type NatsBusLike } from "../nats/mod.ts";
import { Pulse } from "../pulse/mod.ts";
import { startNatsServer } from "./nats_server.ts";
import { spawnPulse, waitFor } from "./pulse_procs.ts";

const decoder = new TextDecoder();

// Every answer to one clock request within `ms`: a raw request with its own inbox, so a second
// responder would show (Bus.request keeps only the first reply).
async function allTimeAnswers(
  bus: NatsBusLike,
  cluster: string,
  ms: number,
): Promise<Record<string, unknown>[]> {
  const nc = bus.connection as NatsConnection;
  const inbox = `_INBOX.ops.${crypto.randomUUID().replaceAll("-", "")}`;
  const sub = nc.subscribe(inbox);
  const answers: Record<string, unknown>[] = [];
  const reading = (async () => {
    for await (const m of sub) answers.push(JSON.parse(decoder.decode(m.data)));
  })();
  const nonce = crypto.getRandomValues(new Uint8Array(16)).toHex();
  nc.publish(`backbeat.${cluster}.time`, JSON.stringify({ nonce }), { reply: inbox });
  await new Promise((r) => setTimeout(r, ms));
  sub.unsubscribe();
  await reading;
  return answers;
}

Deno.test("the leader answers clock requests, a follower does not, a new leader takes over", async () => {
  await using server = await startNatsServer();
  const cluster = "timeops";
  const buses: NatsBusLike[] = [];
  const pulses: Pulse[] = [];
  const client = await connectNatsBus({ servers: server.url });
  buses.push(client);
  try {
    for (const id of ["a", "b"]) {
      const bus = await connectNatsBus({ servers: server.url });
      buses.push(bus);
      const p = new Pulse({ clusterId: cluster, bus, id, tempoBpm: 120 });
      pulses.push(p);
      await p.start();
    }
    const [a, b] = pulses;
    assert.equal(a.role, "leader");
    assert.equal(b.role, "follower");

    // The same system clock on both ends: the offset is within half the round trip of 0.
    const clock = new SystemClock();
    const sample = await requestTimeSample(client, cluster, { clock, timeoutMs: 2000 });
    assert.ok(sample, "the leader answers");
    assert.equal(sample.pulseId, "a");
    const offset = ((sample.t1 - sample.t0) + (sample.t2 - sample.t3)) / 2;
    const halfRtt = (sample.t3 - sample.t0) / 2;
    assert.ok(Math.abs(offset) <= halfRtt + 0.5, `offset ${offset} ms, half rtt ${halfRtt} ms`);

    const answers = await allTimeAnswers(client, cluster, 300);
    assert.deepEqual(answers.map((x) => x.pulse_id), ["a"], "only the leader answers");

    // SIGTERM-like stop: a hands over at once, and stops answering.
    await a.stop();
    await waitFor(() => b.isLeader, 5000, "b to lead");
    const next = await requestTimeSample(client, cluster, { clock, timeoutMs: 2000 });
    assert.equal(next?.pulseId, "b");
    const after = await allTimeAnswers(client, cluster, 300);
    assert.deepEqual(after.map((x) => x.pulse_id), ["b"]);
  } finally {
    for (const p of pulses) await p.stop();
    for (const bus of buses) await bus.close();
  }
});

// A nats-server whose only user is alice (password s3cret), with JetStream.
async function startAuthServer() {
  const dir = await Deno.makeTempDir({ prefix: "backbeat-auth-" });
  const conf = `${dir}/auth.conf`;
  await Deno.writeTextFile(conf, "authorization { users = [{user: alice, password: s3cret}] }\n");
  const server = await startNatsServer({ args: ["-c", conf] });
  return {
    server,
    hostPort: server.url.replace("nats://", ""),
    async [Symbol.asyncDispose]() {
      await server.stop();
      await Deno.remove(dir, { recursive: true });
    },
  };
}

// Runs pulse/main.ts to its end (it must end by itself, within `ms`).
async function runPulseMain(args: string[], ms: number, env: Record<string, string> = {}) {
  const started = performance.now();
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", new URL("../pulse/main.ts", import.meta.url).pathname, ...args],
    env,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const timer = setTimeout(() => child.kill("SIGKILL"), ms);
  const out = await child.output();
  clearTimeout(timer);
  return {
    code: out.code,
    stdout: decoder.decode(out.stdout),
    stderr: decoder.decode(out.stderr),
    ms: performance.now() - started,
  };
}

Deno.test("pulse on a server with users: a wrong password is one line, the right one leads", async (t) => {
  await using auth = await startAuthServer();
  const cluster = "authops";
  const url = (pass: string) => `nats://alice:${pass}@${auth.hostPort}`;

  await t.step("a wrong password or an unknown user: one line, exit 1, fast", async () => {
    for (const [user, pass] of [["alice", "wrong"], ["mallory", "s3cret"]]) {
      const res = await runPulseMain([
        "--cluster",
        cluster,
        "--nats",
        `nats://${user}:${pass}@${auth.hostPort}`,
        "--http",
        "127.0.0.1:0",
      ], 10_000);
      assert.equal(res.code, 1, res.stderr);
      assert.equal(
        res.stderr,
        `pulse: Cannot connect to nats://${user}:***@${auth.hostPort}: authorization violation\n`,
      );
      assert.equal(res.stdout, "");
      assert.doesNotMatch(res.stderr, new RegExp(pass));
      // No retry loop, no hang: a refused login ends the process at once (loaded CI: 5 s).
      assert.ok(res.ms < 5000, `took ${res.ms.toFixed(0)} ms`);
    }
    // The same with the password in a variable: it never reaches the output either.
    const res = await runPulseMain(
      [
        "--cluster",
        cluster,
        "--nats",
        `nats://${auth.hostPort}`,
        "--nats-user",
        "alice",
        "--http",
        "127.0.0.1:0",
      ],
      10_000,
      { BACKBEAT_NATS_PASSWORD: "wr0ngpass" },
    );
    assert.equal(res.code, 1, res.stderr);
    assert.match(
      res.stderr,
      /^pulse: Cannot connect to nats:\/\/(alice:\*\*\*@)?127\.0\.0\.1:\d+: authorization violation\n$/,
    );
    assert.doesNotMatch(res.stderr + res.stdout, /wr0ngpass/);
  });

  await t.step("the right password in the URL: it leads and publishes beats", async () => {
    const watcher = await connectNatsBus({ servers: url("s3cret") });
    const beats: number[] = [];
    watcher.subscribe(`backbeat.${cluster}.beat`, (m) => {
      beats.push(JSON.parse(decoder.decode(m.data)).beat_index);
    });
    await watcher.flush();
    const p = spawnPulse("auth1", [
      "--cluster",
      cluster,
      "--nats",
      url("s3cret"),
      "--tempo",
      "600",
    ]);
    try {
      await p.url;
      await waitFor(() => beats.length >= 3, 10_000, "three beats");
      const running = p.lines.find((l) => l.rec.msg === "pulse running")!.rec;
      assert.equal(running.role, "leader");
      assert.equal(running.nats, `nats://alice:***@${auth.hostPort}`);
    } finally {
      await p.close();
      await watcher.close();
    }
    assert.ok(p.raw.stderr.length > 0);
    for (const line of [...p.raw.stderr, p.raw.stdout]) assert.doesNotMatch(line, /s3cret/);
  });
});

Deno.test("a busy HTTP port is one line naming the address and the flag, exit 1", async () => {
  using busy = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const addr = `127.0.0.1:${busy.addr.port}`;
  const res = await runPulseMain(["--http", addr], 10_000);
  assert.equal(res.code, 1, res.stderr);
  assert.equal(
    res.stderr,
    `pulse: Cannot listen on ${addr}: address in use (change it with --http HOST:PORT)\n`,
  );
  const env = await runPulseMain([], 10_000, { BACKBEAT_PULSE_HTTP: addr });
  assert.equal(env.code, 1, env.stderr);
  assert.equal(
    env.stderr,
    `pulse: Cannot listen on ${addr}: address in use (change it with BACKBEAT_PULSE_HTTP or --http HOST:PORT)\n`,
  );
});

Deno.test("a bad command line exits 2 with one pulse: line and a pointer to --help", async () => {
  const res = await runPulseMain(["--tempo", "nope"], 10_000);
  assert.equal(res.code, 2);
  assert.match(res.stderr, /^pulse: Invalid --tempo .*\nRun with --help for usage\.\n$/);
  const help = await runPulseMain(["--help"], 10_000);
  assert.equal(help.code, 0);
  assert.match(help.stdout, /Usage: deno task pulse -- \[flags\]\n\s+backbeat-pulse \[flags\]/);
  assert.match(help.stdout, /--nats-password PW/);
});

// `deno task start` as a user runs it: flags, the dashboard and its reports, one-line failures.
import assert from "node:assert/strict";
import { until } from "./until.ts";

const ROOT = new URL("..", import.meta.url).pathname;

function freePort(): number {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  return port;
}

function start(args: string[]) {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["task", "--quiet", "start", ...args],
    cwd: ROOT,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const out: string[] = [];
  const err: string[] = [];
  const pump = async (s: ReadableStream<Uint8Array>, into: string[]) => {
    for await (const chunk of s.pipeThrough(new TextDecoderStream())) into.push(chunk);
  };
  const done = Promise.all([pump(child.stdout, out), pump(child.stderr, err)]);
  return {
    child,
    out: () => out.join(""),
    err: () => err.join(""),
    async finish(): Promise<Deno.CommandStatus> {
      const status = await child.status;
      await done;
      return status;
    },
  };
}

Deno.test("deno task start --http --agents 4: the dashboard and /api/v1/bars show reports of 4 agents", async () => {
  const port = freePort();
  const demo = start(["--http", `127.0.0.1:${port}`, "--agents", "4", "--tempo", "240"]);
  try {
    await until(() => demo.out().includes(`Dashboard: http://127.0.0.1:${port}/`), {
      timeoutMs: 30_000,
      what: "the dashboard URL",
    });
    const page = await fetch(`http://127.0.0.1:${port}/`);
    assert.equal(page.status, 200);
    assert.match(await page.text(), /<html/i);
    let reports: { agents_reporting: number }[] = [];
    await until(async () => {
      const res = await fetch(`http://127.0.0.1:${port}/api/v1/bars`);
      reports = (await res.json()).reports;
      return reports.some((r) => r.agents_reporting === 4);
    }, { timeoutMs: 20_000, intervalMs: 200, what: "a report with 4 agents" });
    assert.ok(reports.every((r) => r.agents_reporting <= 4));
  } finally {
    demo.child.kill("SIGINT");
    const status = await demo.finish();
    assert.equal(status.code, 0, demo.err());
  }
});

Deno.test("deno task start: a busy port, a bad flag and --help are one line each", async () => {
  const held = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (held.addr as Deno.NetAddr).port;
  try {
    const busy = start(["--http", `127.0.0.1:${port}`]);
    const status = await busy.finish();
    assert.equal(status.code, 1);
    assert.equal(
      busy.err().trim(),
      `demo: Cannot listen on 127.0.0.1:${port}: address in use (change it with --http HOST:PORT)`,
    );
  } finally {
    held.close();
  }
  const bad = start(["--agents", "lots"]);
  assert.equal((await bad.finish()).code, 2);
  assert.match(bad.err(), /^demo: Invalid --agents "lots": expected a number from 1 to 100\n/);
  const missing = start(["--tempo", "--http", "127.0.0.1:1"]);
  assert.equal((await missing.finish()).code, 2);
  assert.match(missing.err(), /^demo: .*--tempo/);
  const help = start(["--", "--help"]);
  assert.equal((await help.finish()).code, 0);
  assert.match(help.out(), /Usage: deno task start \[flags\]/);
  const nats = start(["--nats", `nats://alice:s3cret@127.0.0.1:${freePort()}`]);
  assert.equal((await nats.finish()).code, 1);
  assert.equal(nats.err().split("\n").filter((l) => l.trim()).length, 1, nats.err());
  assert.doesNotMatch(nats.err(), /s3cret/);
  assert.match(nats.err(), /^demo: Cannot connect to nats:\/\/alice:\*\*\*@127\.0\.0\.1/);
});

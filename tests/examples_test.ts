// Runs each SDK example as a subprocess for a few seconds and checks that its output shows real
// beats from a pulse: embedded (the default), and simple_agent on NATS with a Pulse there.
import assert from "node:assert/strict";
import { connectNatsBus } from "../mod.ts";
import { Pulse } from "../pulse/mod.ts";
import { startNatsServer } from "./nats_server.ts";

const root = new URL("..", import.meta.url).pathname;
const dec = new TextDecoder();

async function run(example: string, env: Record<string, string> = {}): Promise<string> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", `examples/${example}`, "--seconds", "3"],
    cwd: root,
    env: { BACKBEAT_NATS_URL: "", NO_COLOR: "1", ...env },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = dec.decode(out.stdout);
  assert.equal(out.code, 0, `${example} failed:\n${text}\n${dec.decode(out.stderr)}`);
  return text;
}

function realBeats(text: string, pattern: RegExp): number[] {
  return text.split("\n").flatMap((l) => {
    const m = pattern.exec(l);
    return m && !l.includes("synthetic") ? [Number(m[1])] : [];
  });
}

Deno.test("the SDK examples run embedded and show real beats", async () => {
  const [simple, tasks, monitor] = await Promise.all([
    run("simple_agent.ts"),
    run("task_processor.ts"),
    run("service_monitor.ts"),
  ]);

  assert.match(simple, /following an embedded pulse/);
  const beats = realBeats(simple, /^beat (\d+) (plan|execute|review)$/);
  assert.ok(beats.length >= 5, simple);
  for (let i = 1; i < beats.length; i++) assert.equal(beats[i], beats[i - 1] + 1);
  assert.match(simple, /^bar started [0-9a-f]{32}$/m);
  assert.match(simple, /^work: (finished in \d+ ms|Beat budget exceeded: 10 of 10 beats used)$/m);
  assert.match(simple, /claimsSent=\d+/);

  assert.ok(realBeats(tasks, /^beat (\d+): task-\d+ \d+%/).length >= 5, tasks);
  assert.match(tasks, /^task-\d+: (completed|Beat budget exceeded)/m);
  assert.match(tasks, /^tasks: \d+ completed, \d+ over budget; claims sent \d+/m);

  assert.match(monitor, /^beat=\d+ phase=(plan|execute|review) tempo=300 connected=true/m);
  assert.match(monitor, /^DEGRADED: no beat after beat \d+/m);
  assert.match(monitor, /^RECOVERED at beat \d+ after \d+ ms and \d+ synthetic beats/m);
});

Deno.test("simple_agent follows a Pulse on NATS when BACKBEAT_NATS_URL is set", async () => {
  await using server = await startNatsServer();
  const bus = await connectNatsBus({ servers: server.url });
  const pulse = new Pulse({ clusterId: "chorus-dev", bus, tempoBpm: 300 });
  try {
    await pulse.start();
    const text = await run("simple_agent.ts", { BACKBEAT_NATS_URL: server.url });
    assert.match(text, /following NATS at nats:\/\/127\.0\.0\.1:\d+/);
    assert.ok(realBeats(text, /^beat (\d+) (plan|execute|review)$/).length >= 5, text);
    assert.match(text, /connected=true/);
  } finally {
    await pulse.stop();
    await bus.close();
  }
});

Deno.test("an example whose NATS is unreachable says so in one line, password redacted", async () => {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "examples/simple_agent.ts", "--seconds", "3"],
    cwd: root,
    env: { BACKBEAT_NATS_URL: `nats://bob:pw-s3cret@127.0.0.1:${port}`, NO_COLOR: "1" },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  const stderr = dec.decode(out.stderr);
  assert.equal(out.code, 1);
  assert.equal(
    stderr.trim(),
    `example: Cannot connect to nats://bob:***@127.0.0.1:${port}: connection refused`,
  );
  assert.doesNotMatch(dec.decode(out.stdout) + stderr, /pw-s3cret/);
});

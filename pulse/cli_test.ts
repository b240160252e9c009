import assert from "node:assert/strict";
import { parsePulseArgs, type PulseConfig, runPulse } from "./_cli.ts";

function config(args: string[], env: Record<string, string> = {}): PulseConfig {
  const cmd = parsePulseArgs(args, env);
  assert.equal(cmd.help, false);
  return (cmd as { config: PulseConfig }).config;
}

Deno.test("parsePulseArgs() reads flags, falls back to BACKBEAT_* variables, flags win", () => {
  const c = config(
    [
      "--cluster=prod",
      "--tempo",
      "120",
      "--beats-per-bar",
      "3",
      "--phases",
      "plan,execute,review",
      "--id",
      "p1",
      "--http",
      "0.0.0.0:9000",
    ],
    {
      BACKBEAT_CLUSTER: "ignored",
      BACKBEAT_NATS_URL: "nats://a:4222, nats://b:4222",
      BACKBEAT_ADMIN_TOKEN: "tok",
      BACKBEAT_LOG_LEVEL: "DEBUG",
    },
  );
  assert.deepEqual(c, {
    clusterId: "prod",
    nats: { servers: ["nats://a:4222", "nats://b:4222"] },
    replicas: 1,
    tempoBpm: 120,
    beatsPerBar: 3,
    phases: ["plan", "execute", "review"],
    id: "p1",
    http: { hostname: "0.0.0.0", port: 9000 },
    httpSource: "--http",
    adminToken: "tok",
    adminKeyringFile: undefined,
    control: true,
    signingKeyFile: undefined,
    pulseKeyringFile: undefined,
    logLevel: "debug",
  });
});

Deno.test("parsePulseArgs() reads the key, keyring and control flags and their variables", () => {
  const c = config(["--signing-key", "pulse.key.json", "--control", "OFF"], {
    BACKBEAT_PULSE_KEYRING: "pulses.json",
    BACKBEAT_ADMIN_KEYRING: "operators.json",
    BACKBEAT_CONTROL: "on",
  });
  // Relative paths are read from the caller's directory (here the working one).
  const here = (p: string) => `${Deno.cwd()}/${p}`;
  assert.equal(c.signingKeyFile, here("pulse.key.json"));
  assert.equal(c.pulseKeyringFile, here("pulses.json"));
  assert.equal(c.adminKeyringFile, here("operators.json"));
  assert.equal(c.control, false);
  assert.equal(config([], { BACKBEAT_CONTROL: "off" }).control, false);
  assert.equal(config([]).control, true);
  assert.throws(
    () => parsePulseArgs(["--control", "maybe"]),
    /Invalid --control "maybe": expected on or off/,
  );
  assert.throws(
    () => parsePulseArgs([], { BACKBEAT_SIGNING_KEY: " " }),
    /Invalid BACKBEAT_SIGNING_KEY/,
  );
});

Deno.test("runPulse() exits 1 on an unreadable key file and never logs its content", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/key.json`;
    // A JWK whose private part is malformed: the secret-looking text must not reach the log.
    await Deno.writeTextFile(path, '{"kty":"OKP","crv":"Ed25519","d":"SECRET-SEED","x":"AA"}');
    const lines: string[] = [];
    const code = await runPulse(config(["--http", "127.0.0.1:0", "--signing-key", path]), {
      signal: new AbortController().signal,
      stderr: (line) => lines.push(line),
    });
    assert.equal(code, 1);
    assert.equal(lines.length, 1);
    assert.match(lines[0], /^pulse: Cannot load keys: /);
    assert.match(lines[0], /key\.json/);
    assert.doesNotMatch(lines[0], /SECRET-SEED/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("parsePulseArgs() has working defaults and --help", () => {
  const c = config([]);
  assert.equal(c.clusterId, "chorus-dev");
  assert.equal(c.nats, undefined);
  assert.equal(c.replicas, 1);
  assert.equal(c.tempoBpm, 2);
  assert.equal(c.beatsPerBar, 4);
  assert.deepEqual(c.http, { hostname: "127.0.0.1", port: 8080 });
  assert.equal(c.logLevel, "info");
  assert.deepEqual(parsePulseArgs(["--help"]), { help: true });
  assert.deepEqual(parsePulseArgs(["-h", "--tempo", "nope"]), { help: true });
  // A phase list alone sets the bar length.
  assert.equal(config(["--phases", "plan,review"]).beatsPerBar, 2);
  assert.equal(config(["--http", ":0"]).http.port, 0);
  assert.deepEqual(config(["--http", "[::1]:80"]).http, { hostname: "::1", port: 80 });
});

Deno.test("parsePulseArgs() skips one leading -- (as `deno task pulse -- --help` passes it)", () => {
  assert.deepEqual(parsePulseArgs(["--", "--help"]), { help: true });
  assert.equal(config(["--", "--tempo", "120"]).tempoBpm, 120);
  assert.equal(config(["--"]).clusterId, "chorus-dev");
  // A `--` further on still ends the flags: what follows is a stray argument.
  assert.throws(() => parsePulseArgs(["--tempo", "120", "--", "x"]), /Unexpected argument "x"/);
});

Deno.test("parsePulseArgs() rejects bad input with messages naming the flag or variable", () => {
  const cases: [string[], Record<string, string>, RegExp][] = [
    [["--bogus"], {}, /Unknown flag --bogus/],
    [["--tempo"], {}, /Missing value for --tempo/],
    [["--tempo", "0.01"], {}, /Invalid --tempo "0.01": expected a number from 0.1 to 6000/],
    [[], { BACKBEAT_TEMPO: "fast" }, /Invalid BACKBEAT_TEMPO "fast"/],
    [["--beats-per-bar", "2.5"], {}, /expected an integer from 1 to 64/],
    [["--phases", "plan,nap"], {}, /Invalid phase "nap"/],
    [["--beats-per-bar", "4", "--phases", "plan,review"], {}, /2 phases for 4 beats per bar/],
    [["--cluster", "a.b"], {}, /Invalid cluster id "a.b"/],
    [["--http", "localhost"], {}, /Invalid --http "localhost": expected host:port/],
    [["--http", "h:70000"], {}, /Invalid --http/],
    [["--log-level", "loud"], {}, /Invalid log level "loud"/],
    [["--nats", "not a url"], {}, /Invalid --nats/],
    [["stray"], {}, /Unexpected argument "stray"/],
  ];
  for (const [args, env, message] of cases) {
    assert.throws(() => parsePulseArgs(args, env), message, args.join(" "));
  }
});

Deno.test("runPulse() serves HTTP on an embedded bus and exits 0 when aborted", async () => {
  const lines: Record<string, unknown>[] = [];
  const logger = {
    debug() {},
    info(msg: string, fields?: Record<string, unknown>) {
      lines.push({ msg, ...fields });
    },
    warn() {},
    error(msg: string, fields?: Record<string, unknown>) {
      lines.push({ msg, ...fields });
    },
  };
  const ac = new AbortController();
  const run = runPulse(config(["--http", "127.0.0.1:0", "--tempo", "600"]), {
    signal: ac.signal,
    logger,
  });
  let url: string | undefined;
  for (let i = 0; i < 200 && !url; i++) {
    url = lines.find((l) => l.msg === "pulse running")?.http as string | undefined;
    if (!url) await new Promise((r) => setTimeout(r, 10));
  }
  assert.ok(url, JSON.stringify(lines));
  const res = await fetch(`${url}/readyz`);
  assert.equal(res.status, 200);
  assert.equal((await res.json()).role, "leader");
  ac.abort();
  assert.equal(await run, 0);
  assert.ok(lines.some((l) => l.msg === "pulse stopped"));
  // The listener is gone.
  await assert.rejects(fetch(`${url}/healthz`));
});

Deno.test("parsePulseArgs() takes the shared NATS flags: credentials, --replicas, redacted errors", () => {
  const c = config(["--nats", "nats://n1:4222", "--nats-user", "alice", "--replicas", "3"], {
    BACKBEAT_NATS_PASSWORD: "s3cret",
  });
  assert.deepEqual(c.nats, { servers: ["nats://n1:4222"], user: "alice", pass: "s3cret" });
  assert.equal(c.replicas, 3);
  assert.throws(() => parsePulseArgs(["--replicas", "7"]), RangeError);
  assert.throws(() => parsePulseArgs(["--nats-user", "alice"]), /--nats-user without --nats/);
  let message = "";
  try {
    parsePulseArgs(["--nats", "nats://alice:s3cret@127.0.0.1:4222", "--nats-token", "tok1"]);
  } catch (error) {
    message = (error as Error).message;
  }
  assert.match(message, /alice:\*\*\*@127\.0\.0\.1/);
  assert.doesNotMatch(message, /s3cret/);
});

Deno.test("parsePulseArgs() reads file paths from the caller's directory (INIT_CWD under deno task)", () => {
  const cmd = parsePulseArgs(
    ["--signing-key", "pulse.key.json", "--pulse-keyring", "/etc/backbeat/pulses.json"],
    { INIT_CWD: "/home/ops/cluster" },
  );
  if (cmd.help) throw new Error("unexpected help");
  assert.equal(cmd.config.signingKeyFile, "/home/ops/cluster/pulse.key.json");
  assert.equal(cmd.config.pulseKeyringFile, "/etc/backbeat/pulses.json");
});

import assert from "node:assert/strict";
import {
  DEFAULT_REVERB_CLUSTER,
  parseReverbArgs,
  REVERB_USAGE,
  type ReverbCliConfig,
  runReverbCli,
} from "./_cli.ts";

// Relative paths resolve against INIT_CWD; a fixed one keeps the expectations exact.
const CALLER = "/home/op/work";

function config(args: string[], env: Record<string, string> = {}): ReverbCliConfig {
  const r = parseReverbArgs(args, { INIT_CWD: CALLER, ...env });
  if (r.help) throw new Error("unexpected help");
  return r.config;
}

Deno.test("parseReverbArgs() gives defaults when nothing is set", () => {
  assert.deepEqual(config([]), {
    clusterId: DEFAULT_REVERB_CLUSTER,
    nats: undefined,
    replicas: 1,
    http: { hostname: "127.0.0.1", port: 8081 },
    httpSource: "default",
    keyring: undefined,
    requireSignatures: false,
    legacyClaimSignatures: false,
    pulseKeyring: undefined,
    graceMs: undefined,
    maxClaimBytes: 4096,
    maxClaimAgeMs: 120_000,
    maxClockOffsetMs: 10_000,
    id: undefined,
    logLevel: "info",
  });
});

Deno.test("parseReverbArgs() reads every flag, and flags win over BACKBEAT_* variables", () => {
  const c = config([
    "--cluster=prod",
    "--nats",
    "nats://10.0.0.1:4222, nats://10.0.0.2:4222",
    "--http",
    ":9000",
    "--keyring",
    "/etc/ring.json",
    "--require-signatures",
    "--legacy-claim-signatures",
    "--pulse-keyring",
    "/etc/pulses.json",
    "--grace-ms",
    "250",
    "--max-claim-bytes",
    "2048",
    "--max-claim-age-ms",
    "90000",
    "--max-clock-offset-ms=2500",
    "--id",
    "reverb-b",
    "--log-level",
    "DEBUG",
    "--nats-user",
    "reverb",
    "--nats-ca",
    "tls/ca.pem",
    "--replicas",
    "3",
  ], {
    BACKBEAT_CLUSTER: "ignored",
    BACKBEAT_GRACE_MS: "999",
    BACKBEAT_NATS_PASSWORD: "from-env",
    BACKBEAT_REPLICAS: "5",
  });
  assert.deepEqual(c, {
    clusterId: "prod",
    nats: {
      servers: ["nats://10.0.0.1:4222", "nats://10.0.0.2:4222"],
      user: "reverb",
      pass: "from-env",
      caFile: `${CALLER}/tls/ca.pem`,
    },
    replicas: 3,
    http: { hostname: "0.0.0.0", port: 9000 },
    httpSource: "--http",
    keyring: "/etc/ring.json",
    requireSignatures: true,
    legacyClaimSignatures: true,
    pulseKeyring: "/etc/pulses.json",
    graceMs: 250,
    maxClaimBytes: 2048,
    maxClaimAgeMs: 90_000,
    maxClockOffsetMs: 2_500,
    id: "reverb-b",
    logLevel: "debug",
  });
});

Deno.test("parseReverbArgs() falls back to BACKBEAT_* variables", () => {
  const c = config([], {
    BACKBEAT_CLUSTER: "staging",
    BACKBEAT_NATS_URL: "nats://nats:4222",
    BACKBEAT_REVERB_HTTP: "off",
    BACKBEAT_KEYRING: "ring.json",
    BACKBEAT_REQUIRE_SIGNATURES: "true",
    BACKBEAT_GRACE_MS: "0",
    BACKBEAT_MAX_CLAIM_BYTES: "512",
    BACKBEAT_MAX_CLAIM_AGE_MS: "60000",
    BACKBEAT_MAX_CLOCK_OFFSET_MS: "1000",
    BACKBEAT_PULSE_KEYRING: "pulses.json",
    BACKBEAT_LEGACY_CLAIM_SIGNATURES: "true",
    BACKBEAT_REVERB_ID: "r1",
    BACKBEAT_LOG_LEVEL: "warn",
  });
  assert.equal(c.maxClaimAgeMs, 60_000);
  assert.equal(c.maxClockOffsetMs, 1_000);
  assert.equal(c.pulseKeyring, `${CALLER}/pulses.json`);
  assert.equal(c.legacyClaimSignatures, true);
  assert.equal(c.clusterId, "staging");
  assert.deepEqual(c.nats, { servers: ["nats://nats:4222"] });
  assert.equal(c.http, undefined);
  assert.equal(c.httpSource, "BACKBEAT_REVERB_HTTP");
  assert.equal(c.keyring, `${CALLER}/ring.json`);
  assert.equal(c.requireSignatures, true);
  assert.equal(c.graceMs, 0);
  assert.equal(c.maxClaimBytes, 512);
  assert.equal(c.id, "r1");
  assert.equal(c.logLevel, "warn");
});

Deno.test("parseReverbArgs() skips one leading -- (deno task reverb -- --flags)", () => {
  assert.deepEqual(
    config(["--", "--cluster", "prod", "--http=off"]),
    config(["--cluster=prod", "--http", "off"]),
  );
  assert.equal(config(["--", "--grace-ms", "250"]).graceMs, 250);
  // Only one: a second -- ends the flags, so what follows is an unexpected argument.
  assert.throws(() => parseReverbArgs(["--", "--", "--cluster", "prod"]), /Unexpected argument/);
  const r = parseReverbArgs(["--", "-h"]);
  assert.equal(r.help, true);
});

Deno.test("parseReverbArgs() explains bad values, naming the flag or variable", () => {
  const cases: Array<[string[], Record<string, string>, RegExp]> = [
    [["--cluster", "a.b"], {}, /Invalid cluster id "a\.b"/],
    [["--nats", "http://localhost"], {}, /: Invalid --nats: Invalid server URL http:\/\/localhost/],
    // A string flag followed by a flag lacks its value: the flag after is not taken as it.
    [["--keyring", "--http", "127.0.0.1:0"], {}, /: Missing value for --keyring/],
    [["--nats-user", "alice"], {}, /: --nats-user without --nats/],
    [["--replicas", "9"], {}, /: Invalid --replicas "9": expected an integer from 1 to 5/],
    [
      ["--nats", "nats://a:pw@h:4222", "--nats-token", "t0k3n"],
      {},
      /: --nats nats:\/\/a:\*\*\*@h:4222 carries credentials/,
    ],
    [["--http", "nope"], {}, /Invalid --http "nope": expected host:port/],
    // A value starting with "-" is written --flag=value (otherwise it reads as a flag).
    [["--grace-ms=-1"], {}, /Invalid --grace-ms "-1": expected a number from 0/],
    [
      [],
      { BACKBEAT_MAX_CLAIM_BYTES: "1.5" },
      /Invalid BACKBEAT_MAX_CLAIM_BYTES "1\.5": expected an integer/,
    ],
    [["--log-level", "loud"], {}, /Invalid log level "loud"/],
    [["--id", "has space"], {}, /Invalid --id "has space"/],
    [["--bogus"], {}, /Unknown flag --bogus/],
    [["extra"], {}, /Unexpected argument "extra"/],
    [["--cluster"], {}, /Missing value for --cluster/],
    // Every claim would be refused: a startup error, not a silent policy.
    [["--require-signatures"], {}, /Invalid --require-signatures without --keyring/],
    [[], { BACKBEAT_REQUIRE_SIGNATURES: "1" }, /BACKBEAT_REQUIRE_SIGNATURES without --keyring/],
    [["--max-claim-age-ms", "0"], {}, /Invalid --max-claim-age-ms "0"/],
    [["--max-clock-offset-ms", "x"], {}, /Invalid --max-clock-offset-ms "x"/],
    [["--pulse-keyring", " "], {}, /Invalid --pulse-keyring: expected a file path/],
    // The beat-count limit is gone: claims age by time.
    [["--max-claim-age-beats", "8"], {}, /Unknown flag --max-claim-age-beats/],
  ];
  for (const [args, env, message] of cases) {
    assert.throws(() => parseReverbArgs(args, env), message, args.join(" "));
  }
});

Deno.test("runReverbCli() prints help, exits 2 on bad flags and 1 when reverb cannot start", async () => {
  const out: string[] = [];
  const err: string[] = [];
  const io = {
    stdout: (t: string) => out.push(t),
    stderr: (l: string) => err.push(l),
    stopRequested: Promise.resolve(),
  };
  assert.equal(await runReverbCli(["-h"], {}, io), 0);
  assert.equal(out[0], REVERB_USAGE);
  for (
    const flag of [
      "--cluster",
      "--nats",
      "--http",
      "--keyring",
      "--require-signatures",
      "--legacy-claim-signatures",
      "--pulse-keyring",
      "--max-claim-age-ms",
      "--max-clock-offset-ms",
      "--grace-ms",
      "--max-claim-bytes",
      "--id",
      "--log-level",
      "--help",
    ]
  ) {
    assert.ok(REVERB_USAGE.includes(flag), flag);
  }
  for (const flag of ["--nats-user", "--nats-password", "--nats-creds", "--replicas"]) {
    assert.ok(REVERB_USAGE.includes(flag), `the shared NATS flags: ${flag}`);
  }
  assert.match(
    REVERB_USAGE,
    /^Usage: deno task reverb -- \[flags\]\n {7}backbeat-reverb \[flags\]$/m,
  );
  // Usage errors: "reverb: <message>", a hint, exit 2.
  for (
    const [args, message] of [
      [["--bogus"], "reverb: Unknown flag --bogus"],
      [
        ["--keyring", "--http", "127.0.0.1:0"],
        'reverb: Missing value for --keyring (to pass a value starting with "-", write --keyring=-x)',
      ],
      [["--replicas=0"], 'reverb: Invalid --replicas "0": expected an integer from 1 to 5'],
    ] as const
  ) {
    err.length = 0;
    assert.equal(await runReverbCli(args, {}, io), 2, args.join(" "));
    assert.deepEqual(err, [message, "Run with --help for usage."]);
  }
  // A failure to start: one line, exit 1.
  err.length = 0;
  assert.equal(await runReverbCli(["--http", "off", "--keyring", "/nonexistent.json"], {}, io), 1);
  assert.equal(err.length, 1, err.join("\n"));
  assert.match(err[0], /^reverb: Cannot read keyring \/nonexistent\.json/);
  assert.ok(!err[0].includes("\n"));
});

Deno.test("runReverbCli() resolves --keyring against INIT_CWD, the directory deno task started in", async () => {
  const caller = await Deno.makeTempDir({ prefix: "reverb-cli-" });
  try {
    await Deno.writeTextFile(`${caller}/ring.json`, JSON.stringify({}));
    const err: string[] = [];
    const io = { stdout: () => {}, stderr: (l: string) => err.push(l) };
    // Relative to INIT_CWD, not to the working directory (the project folder under deno task).
    const stop = Promise.withResolvers<void>();
    const run = runReverbCli(["--http", "off", "--keyring", "ring.json"], {
      INIT_CWD: caller,
    }, { ...io, stopRequested: stop.promise });
    while (!err.some((l) => l.includes("reverb started") || l.startsWith("reverb:"))) {
      await new Promise((r) => setTimeout(r, 5));
    }
    stop.resolve();
    assert.equal(await run, 0, err.join("\n"));
    // Without INIT_CWD: the working directory, where ring.json is not.
    err.length = 0;
    const code = await runReverbCli(["--http", "off", "--keyring", "ring.json"], {}, {
      ...io,
      stopRequested: Promise.resolve(),
    });
    assert.equal(code, 1);
    assert.equal(err.length, 1);
    assert.ok(
      err[0].startsWith(`reverb: Cannot read keyring ${Deno.cwd()}/ring.json`),
      err[0],
    );
  } finally {
    await Deno.remove(caller, { recursive: true });
  }
});

Deno.test("runReverbCli() names the address and the flag when the HTTP port is taken", async () => {
  using taken = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (taken.addr as Deno.NetAddr).port;
  for (
    const [args, env, how] of [
      [["--http", `127.0.0.1:${port}`], {}, "--http HOST:PORT"],
      [
        [],
        { BACKBEAT_REVERB_HTTP: `127.0.0.1:${port}` },
        "BACKBEAT_REVERB_HTTP or --http HOST:PORT",
      ],
    ] as const
  ) {
    const err: string[] = [];
    const code = await runReverbCli(args, env, {
      stdout: () => {},
      stderr: (l) => err.push(l),
      stopRequested: Promise.resolve(),
    });
    assert.equal(code, 1);
    assert.deepEqual(err, [
      `reverb: Cannot listen on 127.0.0.1:${port}: address in use (change it with ${how})`,
    ]);
  }
});

Deno.test("runReverbCli() runs on the embedded bus until asked to stop", async () => {
  const err: string[] = [];
  const stop = Promise.withResolvers<void>();
  const run = runReverbCli(["--http", "127.0.0.1:0", "--cluster", "cli"], {}, {
    stdout: () => {},
    stderr: (l) => err.push(l),
    stopRequested: stop.promise,
  });
  while (!err.some((l) => l.includes("reverb started"))) {
    await new Promise((r) => setTimeout(r, 5));
  }
  stop.resolve();
  assert.equal(await run, 0);
  assert.ok(err.some((l) => JSON.parse(l).msg === "reverb stopped"));
});

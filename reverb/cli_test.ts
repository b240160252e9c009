import assert from "node:assert/strict";
import {
  DEFAULT_REVERB_CLUSTER,
  parseReverbArgs,
  REVERB_USAGE,
  type ReverbCliConfig,
  runReverbCli,
} from "./_cli.ts";

function config(args: string[], env: Record<string, string> = {}): ReverbCliConfig {
  const r = parseReverbArgs(args, env);
  if (r.help) throw new Error("unexpected help");
  return r.config;
}

Deno.test("parseReverbArgs() gives defaults when nothing is set", () => {
  assert.deepEqual(config([]), {
    clusterId: DEFAULT_REVERB_CLUSTER,
    natsServers: [],
    http: { hostname: "127.0.0.1", port: 8081 },
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
  ], { BACKBEAT_CLUSTER: "ignored", BACKBEAT_GRACE_MS: "999" });
  assert.deepEqual(c, {
    clusterId: "prod",
    natsServers: ["nats://10.0.0.1:4222", "nats://10.0.0.2:4222"],
    http: { hostname: "0.0.0.0", port: 9000 },
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
  assert.equal(c.pulseKeyring, "pulses.json");
  assert.equal(c.legacyClaimSignatures, true);
  assert.equal(c.clusterId, "staging");
  assert.deepEqual(c.natsServers, ["nats://nats:4222"]);
  assert.equal(c.http, undefined);
  assert.equal(c.keyring, "ring.json");
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
    [["--nats", "localhost"], {}, /Invalid --nats "localhost": expected a URL/],
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
  assert.equal(await runReverbCli(["--bogus"], {}, io), 2);
  assert.match(err.at(-1)!, /^error: Unknown flag --bogus/);
  assert.equal(await runReverbCli(["--http", "off", "--keyring", "/nonexistent.json"], {}, io), 1);
  const line = JSON.parse(err.at(-1)!);
  assert.equal(line.level, "error");
  assert.equal(line.service, "reverb");
  assert.match(line.error, /Cannot read keyring \/nonexistent\.json/);
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

// The backbeat CLI as a user runs it: a subprocess (`deno run -A cli.ts …`) with real exit codes
// and stderr, against a real nats-server, a pulse process and a reverb process. Every process
// run here has a deadline.

import assert from "node:assert/strict";
import { type BarReport, type BeatFrame, readSigningKeyFile, subjects } from "../core/mod.ts";
import { connectNatsBus, type NatsBusLike } from "../nats/mod.ts";
import { validateMessage } from "../schemas/mod.ts";
import { Client, defaultConfig } from "../sdk/mod.ts";
import { startNatsServer } from "./nats_server.ts";
import { until } from "./until.ts";
import {
  getJson,
  runCli,
  type ServiceProc,
  spawnCli,
  spawnPulseProc,
  spawnReverbProc,
} from "./cli_procs.ts";

const encoder = new TextEncoder();
const COMMANDS = ["tail", "tempo", "status", "keygen", "keyring", "validate", "load"];

Deno.test("backbeat: help for the tool and each command, one error format, exit 2 for usage", async () => {
  const [top, dashed, ...each] = await Promise.all([
    runCli(["--help"]),
    // deno task passes one leading "--" on.
    runCli(["--", "--help"]),
    ...COMMANDS.map((c) => runCli([c, "--help"])),
  ]);
  assert.equal(top.code, 0);
  assert.match(top.stdout, /deno task backbeat <command>/);
  assert.match(top.stdout, /^ {2}backbeat <command>/m);
  for (const c of COMMANDS) assert.match(top.stdout, new RegExp(`^  ${c}\\b`, "m"));
  assert.equal(dashed.code, 0);
  assert.equal(dashed.stdout, top.stdout);
  each.forEach((r, i) => {
    assert.equal(r.code, 0, `${COMMANDS[i]} --help: ${r.stderr}`);
    assert.match(r.stdout, new RegExp(`deno task backbeat ${COMMANDS[i]}`), COMMANDS[i]);
    assert.match(r.stdout, new RegExp(`^ {2}backbeat ${COMMANDS[i]}`, "m"), COMMANDS[i]);
  });

  const usage = await Promise.all([
    runCli([]),
    runCli(["bogus"]),
    runCli(["tail"]),
    runCli(["tail", "beats", "--count", "0"]),
    runCli(["tail", "beats", "--wat"]),
    runCli(["tempo", "set", "9999"]),
    runCli(["keygen"]),
    runCli(["keyring", "add", "--keyring", "/tmp/x.json", "--agent", "a"]),
    runCli(["load", "--agents", "10", "--duration", "1", "--sign"]),
    runCli(["status", "--pulse", "ftp://x"]),
    runCli(["validate", "--bogus"]),
  ]);
  const expected = [
    /^backbeat: missing command$/m,
    /^backbeat: unknown command "bogus"$/m,
    /^backbeat tail: Missing what to tail: beats, claims or bars$/m,
    /^backbeat tail: Invalid --count "0"/m,
    /^backbeat tail: Unknown flag --wat$/m,
    /^backbeat tempo: Invalid tempo "9999"/m,
    /^backbeat keygen: Missing whose key/m,
    /^backbeat keyring: keyring add needs --from KEYFILE/m,
    /^backbeat load: --sign needs --keyring FILE/m,
    /^backbeat status: Invalid --pulse/m,
    /^backbeat validate: /m,
  ];
  usage.forEach((r, i) => {
    assert.equal(r.code, 2, `case ${i}: ${r.stderr}`);
    assert.match(r.stderr, expected[i]);
    assert.equal(r.stdout, "", `case ${i} writes nothing on stdout`);
  });
});

Deno.test("backbeat keygen and keyring: a 0600 key file never overwritten, atomic keyring edits", async () => {
  const dir = await Deno.makeTempDir({ prefix: "backbeat-cli-keys-" });
  // Relative paths are the caller's: INIT_CWD, as deno task sets it.
  const env = { INIT_CWD: dir };
  try {
    const gen = await runCli(["keygen", "--agent", "worker-1"], { env });
    assert.equal(gen.code, 0, gen.stderr);
    const file = `${dir}/worker-1.key.json`;
    assert.equal((await Deno.stat(file)).mode! & 0o777, 0o600);
    const jwk = JSON.parse(await Deno.readTextFile(file));
    assert.deepEqual(Object.keys(jwk).sort(), ["crv", "d", "kid", "kty", "x"]);
    assert.equal(jwk.kty, "OKP");
    assert.equal(jwk.crv, "Ed25519");
    const entry = JSON.parse(gen.stdout);
    const key = await readSigningKeyFile(file);
    assert.deepEqual(entry, { "worker-1": [{ key_id: key.keyId, public_key: key.publicKey }] });
    assert.ok(!gen.stdout.includes(jwk.d) && !gen.stderr.includes(jwk.d), "private key printed");
    assert.match(gen.stderr, /keyring add/);

    const again = await runCli(["keygen", "--agent", "worker-1"], { env });
    assert.equal(again.code, 1);
    assert.match(again.stderr, /^backbeat keygen: worker-1\.key\.json exists: give --force/m);
    assert.equal(JSON.parse(await Deno.readTextFile(file)).d, jwk.d, "the old key is kept");
    const forced = await runCli(["keygen", "--agent", "worker-1", "--force"], { env });
    assert.equal(forced.code, 0, forced.stderr);
    assert.notEqual(JSON.parse(await Deno.readTextFile(file)).d, jwk.d);
    assert.equal((await Deno.stat(file)).mode! & 0o777, 0o600);
    const admin = await runCli(["keygen", "--admin", "ops", "--out", "keys/ops.json"], { env });
    // keys/ does not exist: a failure, with the one prefix.
    assert.equal(admin.code, 1);
    assert.match(admin.stderr, /^backbeat keygen: Cannot write keys\/ops\.json/m);

    const ring = `${dir}/ring.json`;
    const add = await runCli(
      [
        "keyring",
        "add",
        "--keyring",
        "ring.json",
        "--agent",
        "worker-1",
        "--from",
        "worker-1.key.json",
      ],
      { env },
    );
    assert.equal(add.code, 0, add.stderr);
    assert.match(
      add.stdout,
      /^added key worker-1-[0-9a-f]{8} of worker-1 in ring\.json: 1 key of 1 owner$/m,
    );
    const forcedKey = await readSigningKeyFile(file);
    assert.deepEqual(JSON.parse(await Deno.readTextFile(ring)), {
      "worker-1": [{ key_id: forcedKey.keyId, public_key: forcedKey.publicKey }],
    });
    const dup = await runCli(
      ["keyring", "add", "--keyring", ring, "--agent", "worker-1", "--from", file],
    );
    assert.equal(dup.code, 1);
    assert.match(dup.stderr, /^backbeat keyring: worker-1 already has key .* give --force/m);
    const other = await runCli([
      "keyring",
      "add",
      "--keyring",
      ring,
      "--agent",
      "worker-2",
      "--public-key",
      forcedKey.publicKey!,
      "--key-id",
      "w2",
      "--not-after",
      "2020-01-01T00:00:00Z",
    ]);
    assert.equal(other.code, 0, other.stderr);
    assert.match(other.stdout, /\(not valid now\)/);
    const list = await runCli(["keyring", "list", "--keyring", ring]);
    assert.equal(list.code, 0);
    assert.match(list.stdout, /^worker-2 +w2 +\S+ +EXPIRED \(2020-01-01T00:00:00Z\)$/m);
    assert.match(list.stdout, /^2 keys of 2 owners in /m);
    const removeNone = await runCli(["keyring", "remove", "--keyring", ring, "--agent", "nobody"]);
    assert.equal(removeNone.code, 1);
    assert.match(removeNone.stderr, /^backbeat keyring: .* has no key of nobody$/m);
    const remove = await runCli([
      "keyring",
      "remove",
      "--keyring",
      ring,
      "--agent",
      "worker-2",
      "--key-id",
      "w2",
    ]);
    assert.equal(remove.code, 0, remove.stderr);
    assert.deepEqual(Object.keys(JSON.parse(await Deno.readTextFile(ring))), ["worker-1"]);
    // Nothing left behind: no temporary file, no lock.
    const names = [];
    for await (const e of Deno.readDir(dir)) names.push(e.name);
    assert.deepEqual(names.sort(), ["ring.json", "worker-1.key.json"]);

    // A keyring that does not load is never edited.
    await Deno.writeTextFile(ring, '{"worker-1": [{"key_id": "k", "public_key": "short"}]}');
    const broken = await runCli([
      "keyring",
      "add",
      "--keyring",
      ring,
      "--agent",
      "w3",
      "--from",
      file,
    ]);
    assert.equal(broken.code, 1);
    assert.match(broken.stderr, /^backbeat keyring: .*public_key/m);
    assert.match(await Deno.readTextFile(ring), /"short"/);

    // validate delegates to the validator, paths from the caller's directory.
    await Deno.writeTextFile(`${dir}/claim.json`, '{"type": "backbeat.statusclaim.v1"}');
    const v = await runCli(["validate", "--file", "claim.json", "--exit-code"], { env });
    assert.equal(v.code, 1);
    assert.match(v.stdout, /✗ claim\.json/);
    assert.match(v.stdout, /0 passed, 1 failed/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

/** Frames seen by the test itself on the beat subject. */
function watchFrames(bus: NatsBusLike, cluster: string): BeatFrame[] {
  const frames: BeatFrame[] = [];
  bus.subscribe(subjects(cluster).beat, (m) => {
    frames.push(JSON.parse(new TextDecoder().decode(m.data)));
  });
  return frames;
}

function watchReports(bus: NatsBusLike, cluster: string): Map<string, BarReport> {
  const reports = new Map<string, BarReport>();
  bus.subscribe(subjects(cluster).bar, (m) => {
    const r = JSON.parse(new TextDecoder().decode(m.data)) as BarReport;
    if (!reports.has(r.window_id)) reports.set(r.window_id, r);
  });
  return reports;
}

Deno.test("backbeat against nats-server, pulse and reverb: tail, status, keys, tempo, load", async (t) => {
  await using server = await startNatsServer();
  const cluster = `cli-${crypto.randomUUID().slice(0, 8)}`;
  const dir = await Deno.makeTempDir({ prefix: "backbeat-cli-" });
  const nats = ["--nats", server.url, "--cluster", cluster];
  const token = `tok${crypto.randomUUID().replaceAll("-", "")}`;
  const bus = await connectNatsBus({ servers: server.url });
  const frames = watchFrames(bus, cluster);
  const reports = watchReports(bus, cluster);
  const procs: ServiceProc[] = [];
  const clients: Client[] = [];
  try {
    const pulse = spawnPulseProc([...nats, "--tempo", "240", "--admin-token", token]);
    procs.push(pulse);
    const pulseUrl = await pulse.url;
    await until(() => frames.length >= 1, { timeoutMs: 10_000, what: "a first beat" });

    await t.step(
      "tail beats: one aligned line per beat; --json passes frames through",
      async () => {
        const r = await runCli(["tail", "beats", ...nats, "--count", "4"]);
        assert.equal(r.code, 0, r.stderr);
        const lines = r.stdout.trimEnd().split("\n");
        assert.equal(lines.length, 4, r.stdout);
        const idx = lines.map((l) => Number(/^beat +(\d+) /.exec(l)?.[1]));
        for (let i = 1; i < 4; i++) assert.equal(idx[i], idx[i - 1] + 1, r.stdout);
        for (const l of lines) {
          assert.match(
            l,
            /^beat +\d+ {2}(bar| {3}) {2}(plan|execute|review) +240 bpm {2}epoch \d+ {2}window [0-9a-f]{8} {2}unsigned$/,
          );
        }
        assert.ok(lines.some((l) => / bar /.test(l)) || idx[0] % 4 !== 0, "downbeats are marked");
        const j = await runCli(["tail", "beats", ...nats, "--count", "2", "--json"]);
        assert.equal(j.code, 0, j.stderr);
        const out = j.stdout.trimEnd().split("\n").map((l) => JSON.parse(l));
        assert.equal(out.length, 2);
        for (const f of out) {
          assert.ok(validateMessage(f).valid);
          assert.equal(f.cluster_id, cluster);
        }
      },
    );

    await t.step(
      "tail: a malformed message is one line; --timeout bounds a wait; SIGINT stops",
      async () => {
        const status = subjects(cluster).status;
        const r = await runCli(["tail", "claims", ...nats, "--count", "2"], {
          during: () => {
            let n = 0;
            const timer = setInterval(() => {
              bus.publish(
                status,
                encoder.encode(n++ % 2 ? "not json" : '{"type":"backbeat.statusclaim.v1"}'),
              );
            }, 100);
            return () => clearInterval(timer);
          },
        });
        assert.equal(r.code, 0, r.stderr);
        const lines = r.stdout.trimEnd().split("\n");
        assert.equal(lines.length, 2, r.stdout);
        for (const l of lines) assert.match(l, /^claim +malformed: /);
        assert.ok(lines.some((l) => /not JSON/.test(l)) || lines.some((l) => /required/.test(l)));

        const quiet = await runCli([
          "tail",
          "bars",
          "--nats",
          server.url,
          "--cluster",
          "nobody",
          "--count",
          "1",
          "--timeout",
          "0.5",
        ]);
        assert.equal(quiet.code, 1);
        assert.match(quiet.stderr, /^backbeat tail: 0 of 1 messages within 500 ms$/m);

        const live = spawnCli(["tail", "beats", ...nats]);
        await until(() => live.stdout().includes("\n"), {
          timeoutMs: 10_000,
          what: "a tailed beat",
        });
        live.child.kill("SIGINT");
        const end = await live.result;
        assert.equal(end.code, 0, end.stderr);
        assert.equal(end.stderr, "");
      },
    );

    const keyFile = `${dir}/agent-cli.key.json`;
    const keyring = `${dir}/keyring.json`;
    let reverbUrl = "";
    await t.step(
      "keygen + keyring add: reverb --require-signatures accepts the agent's signed claims",
      async () => {
        const gen = await runCli(["keygen", "--agent", "agent-cli", "--out", keyFile]);
        assert.equal(gen.code, 0, gen.stderr);
        const add = await runCli([
          "keyring",
          "add",
          "--keyring",
          keyring,
          "--agent",
          "agent-cli",
          "--from",
          keyFile,
        ]);
        assert.equal(add.code, 0, add.stderr);
        const reverb = spawnReverbProc([...nats, "--keyring", keyring, "--require-signatures"]);
        procs.push(reverb);
        reverbUrl = await reverb.url;
        const key = await readSigningKeyFile(keyFile);
        for (const [agentId, signed] of [["agent-cli", true], ["agent-unsigned", false]] as const) {
          const c = new Client({
            ...defaultConfig(),
            clusterId: cluster,
            agentId,
            natsUrl: server.url,
            ...(signed && { signingKey: key.privateKey, keyId: key.keyId }),
            logger: { debug() {}, info() {}, warn() {}, error() {} },
          });
          c.onBeat(() => c.emitStatusClaim({ state: "executing", progress: 0.5 }));
          await c.start();
          clients.push(c);
        }
        await until(async () => {
          const agents = (await getJson(`${reverbUrl}/api/v1/agents`)).agents as {
            agent_id: string;
            key_id: string | null;
          }[];
          return agents.some((a) => a.agent_id === "agent-cli" && a.key_id === key.keyId);
        }, {
          timeoutMs: 15_000,
          intervalMs: 100,
          what: "reverb to accept agent-cli's signed claims",
        });
        const status = await getJson(`${reverbUrl}/api/v1/status`);
        const claims = status.claims as { rejected: Record<string, number> };
        assert.ok(
          claims.rejected.unsigned > 0,
          `the unsigned agent is refused: ${JSON.stringify(claims)}`,
        );
        const agents = (await getJson(`${reverbUrl}/api/v1/agents`)).agents as {
          agent_id: string;
        }[];
        assert.ok(!agents.some((a) => a.agent_id === "agent-unsigned"));

        const tail = await runCli([
          "tail",
          "claims",
          ...nats,
          "--count",
          "4",
          "--keyring",
          keyring,
        ]);
        assert.equal(tail.code, 0, tail.stderr);
        assert.match(
          tail.stdout,
          new RegExp(
            `^claim agent-cli +executing +50%  beat +\\d+  task default  verified ${key.keyId}$`,
            "m",
          ),
        );
        assert.match(
          tail.stdout,
          /^claim agent-unsigned +executing +50% {2}beat +\d+ {2}task default {2}unsigned$/m,
        );
        const bars = await runCli(["tail", "bars", ...nats, "--count", "1"]);
        assert.equal(bars.code, 0, bars.stderr);
        assert.match(
          bars.stdout,
          /^bar +[0-9a-f]{8} {2}beats \d+-\d+ {2}agents +1 {2}on-time reviews +\d+ {2}drift -?[\d.]+ ms {2}issues /,
        );
        await Promise.all(clients.splice(0).map((c) => c.stop()));
      },
    );

    await t.step(
      "status: pulse and reverb in a few lines; exit 1 when one is unreachable",
      async () => {
        const r = await runCli(["status", "--pulse", pulseUrl, "--reverb", reverbUrl]);
        assert.equal(r.code, 0, r.stderr);
        assert.match(
          r.stdout,
          /^pulse +http:\/\/127\.0\.0\.1:\d+ +ready +leader \S+ +tempo 240 bpm +beat \d+ +epoch \d+ +cluster cli-/m,
        );
        assert.match(
          r.stdout,
          /^reverb +http:\/\/127\.0\.0\.1:\d+ +ready +active \S+ +tempo 240 bpm +beat \d+ (plan|execute|review) /m,
        );
        assert.match(
          r.stdout,
          /keyring 1 key, signatures required|keyring 1 keys, signatures required/,
        );
        assert.match(r.stdout, /rejected: claims .*unsigned \d+/);
        const json = JSON.parse((await runCli(["status", "--pulse", pulseUrl, "--json"])).stdout);
        assert.equal(json.pulse.ready, true);
        assert.equal(json.pulse.detail.role, "leader");
        assert.equal(json.reverb, null);
        const down = await runCli([
          "status",
          "--pulse",
          "http://127.0.0.1:9",
          "--reverb",
          reverbUrl,
        ]);
        assert.equal(down.code, 1);
        assert.match(down.stdout, /^pulse +http:\/\/127\.0\.0\.1:9 +UNREACHABLE: /m);
        assert.match(
          down.stderr,
          /^backbeat status: pulse: http:\/\/127\.0\.0\.1:9\/\S+ is unreachable: /m,
        );
      },
    );

    await t.step(
      "tempo set over NATS with the admin token lands on the next downbeat",
      async () => {
        const get = await runCli(["tempo", "get", "--pulse", pulseUrl]);
        assert.equal(get.code, 0, get.stderr);
        assert.match(
          get.stdout,
          /^tempo 240 bpm \((pulse \S+, )?leader, .*from GET \/(tempo|healthz)\)$/m,
        );
        const before = frames.length;
        const set = await runCli(["tempo", "set", "300", ...nats], {
          env: { BACKBEAT_ADMIN_TOKEN: token },
        });
        assert.equal(set.code, 0, set.stderr);
        assert.ok(
          !set.stdout.includes(token) && !set.stderr.includes(token),
          "the token is never printed",
        );
        const landed = /^landed: tempo 300 bpm from beat (\d+) \(a downbeat\)/m.exec(set.stdout);
        assert.ok(landed, set.stdout);
        assert.match(set.stdout, /^pulse announced 300 bpm on beat \d+: it lands on beat \d+/m);
        const beat = Number(landed[1]);
        const seen = frames.slice(before);
        const first = seen.find((f) => f.tempo_bpm === 300)!;
        assert.equal(first.beat_index, beat);
        assert.equal(first.downbeat, true);
        const prev = seen.find((f) => f.beat_index === beat - 1);
        assert.equal(prev?.tempo_bpm, 240);
        assert.equal(prev?.next_tempo_bpm, 300, "the bar before announced it");

        const wrong = await runCli([
          "tempo",
          "set",
          "200",
          ...nats,
          "--admin-token",
          "nope",
          "--timeout",
          "2",
        ]);
        assert.equal(wrong.code, 1);
        assert.match(
          wrong.stderr,
          /^backbeat tempo: no frame announced 200 bpm within 2 s: pulse did not take it/m,
        );
        const health = await getJson(`${pulseUrl}/healthz`);
        assert.ok((health.control_rejected as Record<string, number>).bad_signature >= 1);
        const now = JSON.parse((await runCli(["tempo", "get", ...nats, "--json"])).stdout);
        assert.equal(now.tempo_bpm, 300);
        assert.equal(now.source, "beat frame");
      },
    );

    await t.step(
      "load --agents 200 --duration 10: its summary matches reverb's reports",
      async () => {
        const r = await runCli([
          "load",
          "--agents",
          "200",
          "--duration",
          "10",
          "--sign",
          "--keyring",
          keyring,
          "--reverb",
          reverbUrl,
          "--json",
          ...nats,
        ], { timeoutMs: 60_000 });
        assert.equal(r.code, 0, r.stderr);
        const s = JSON.parse(r.stdout);
        assert.equal(s.agents, 200);
        assert.equal(s.processes, 1);
        assert.equal(s.signed, true);
        assert.equal(s.tempo_bpm, 300);
        assert.ok(s.beats.received >= 200 * 40, `beats ${JSON.stringify(s.beats)}`);
        assert.equal(s.claims.failed, 0);
        assert.equal(s.claims.sent, s.beats.received + s.beats.synthetic, "one claim per beat");
        assert.equal(s.latency_ms.samples, s.beats.received);
        assert.ok(s.latency_ms.p50 > 0 && s.latency_ms.p50 <= s.latency_ms.p99);
        assert.ok(s.latency_ms.p99 <= s.latency_ms.max + 1e-9);
        // 10 s at 300 BPM is 12.5 bars: at least 10 of them whole.
        assert.ok(s.reverb.full_bars >= 10, `full bars ${s.reverb.full_bars}`);
        assert.equal(s.reverb.reported, s.reverb.full_bars);
        assert.equal(s.reverb.all_agents_reported, true, JSON.stringify(s.bars));
        assert.equal(s.reverb.agents_reporting_min, 200);
        assert.equal(s.reverb.agents_reporting_max, 200);
        assert.ok(s.reverb.claims_accepted >= s.claims.sent * 0.95, JSON.stringify(s.reverb));
        for (const bar of s.bars) {
          // What load says reverb reported is what reverb published.
          const report = reports.get(bar.window_id);
          assert.ok(report, `reverb's report of ${bar.window_id}`);
          assert.equal(bar.report.agents_reporting, report.agents_reporting);
          assert.equal(report.agents_reporting, 200);
          assert.equal(report.from_beat, bar.from_beat);
          assert.equal(report.to_beat, bar.to_beat);
          assert.equal(
            bar.claims_sent,
            200 * 4,
            `every agent claimed on every beat of the bar: ${
              JSON.stringify({
                beats: s.beats,
                bars: s.bars.map((
                  b: { from_beat: number; claims_sent: number },
                ) => [b.from_beat, b.claims_sent]),
              })
            }`,
          );
        }
        assert.match(
          r.stderr,
          /^load \d+(\.\d)?\/10 s {2}beats \d+ {2}claims \d+ {2}latency p50 /m,
        );
        // The agents' keys were added for the run and removed after it.
        assert.deepEqual(Object.keys(JSON.parse(await Deno.readTextFile(keyring))), ["agent-cli"]);
      },
    );
  } finally {
    await Promise.all(clients.map((c) => c.stop()));
    await Promise.all(procs.map((p) => p.close()));
    await bus.close();
    await Deno.remove(dir, { recursive: true });
  }
});

// Attacks on reverb through a real nats-server: forged frames, an index at the end of the index
// space, cross-cluster and replayed claims (also across a reverb restart), unsigned claims for a
// keyed agent, claims stamped far ahead, and a timeline that restarts with a new epoch. Real
// traffic comes from pulse (pulse/mod.ts) and the SDK client (mod.ts); attacks are built by hand
// (core Timeline, signMessage) so each test controls exactly what the attacker sends.
//
// Timing: pulse runs at 240 BPM (250 ms beats, 1 s bars); waits are bounded generously for a
// loaded two-core machine, and "within one beat" checks allow the 250 ms a beat lasts.

import assert from "node:assert/strict";
import {
  type BarReport,
  type BeatFrame,
  type BusMessage,
  formatInstant,
  generateSigningKeyPair,
  HybridLogicalClock,
  importSigningKey,
  Keyring,
  Timeline,
  windowId,
} from "../core/mod.ts";
import { connectNatsBus, kvBucketName, type NatsBusLike, openKvLease } from "../nats/mod.ts";
import { Client, defaultConfig } from "../mod.ts";
import { Pulse } from "../pulse/mod.ts";
import { renderReverbMetrics, Reverb, type ReverbOptions, serveReverbHttp } from "../reverb/mod.ts";
import { startNatsServer } from "./nats_server.ts";
import { hlcAt, makeClaim, signedMessage } from "./reverb_helpers.ts";
import { until } from "./until.ts";

const TEMPO = 240;
const BEAT_MS = 60_000 / TEMPO;
const encoder = new TextEncoder();
const decoder = new TextDecoder();

function publish(bus: NatsBusLike, m: BusMessage): void {
  bus.publish(m.subject, m.data, m.headers ? { headers: m.headers } : undefined);
}

function watchBars(bus: NatsBusLike, cluster: string): BarReport[] {
  const seen: BarReport[] = [];
  bus.subscribe(`backbeat.${cluster}.bar`, (m) => seen.push(JSON.parse(decoder.decode(m.data))));
  return seen;
}

function watchFrames(bus: NatsBusLike, cluster: string): BusMessage[] {
  const seen: BusMessage[] = [];
  bus.subscribe(`backbeat.${cluster}.beat`, (m) => {
    // Copied: the bus may reuse the buffer.
    seen.push({ subject: m.subject, data: m.data.slice(), headers: m.headers });
  });
  return seen;
}

function frameOf(m: BusMessage): BeatFrame {
  return JSON.parse(decoder.decode(m.data));
}

// Every claim reverb has decided on (accepted, or refused for a reason other than `late`).
function decided(reverb: Reverb): number {
  const c = reverb.claimsSummary();
  let n = c.accepted;
  for (const [reason, count] of Object.entries(c.rejected)) if (reason !== "late") n += count;
  return n;
}

async function keyringFile(ring: Record<string, unknown>): Promise<{ path: string; dir: string }> {
  const dir = await Deno.makeTempDir({ prefix: "reverb-attacks-" });
  const path = `${dir}/keyring.json`;
  await Deno.writeTextFile(path, JSON.stringify(ring));
  return { path, dir };
}

// The reports seen must be real: windows of the pulse's timeline, ids derived from it, no gap.
async function assertReal(reports: BarReport[], cluster: string, pulse: Pulse): Promise<void> {
  const now = pulse.timeline.beatAt(Date.now());
  for (const r of reports) {
    assert.ok(r.from_beat <= now, `report from beat ${r.from_beat} is ahead of pulse (${now})`);
    assert.equal(r.window_id, await windowId(cluster, r.from_beat, pulse.epoch), `${r.from_beat}`);
  }
  const froms = reports.map((r) => r.from_beat);
  for (let i = 1; i < froms.length; i++) {
    assert.equal(froms[i], froms[i - 1] + 4, `consecutive windows: ${froms.join(", ")}`);
  }
}

// A reverb as its own process (reverb/main.ts), so its memory can be measured alone; its JSON
// log lines are collected.
interface ReverbProcess {
  readonly child: Deno.ChildProcess;
  readonly log: Array<Record<string, unknown>>;
  readonly url: string;
  /** Resident set size of the process, bytes (from ps). */
  rss(): Promise<number>;
  close(): Promise<void>;
}

async function spawnReverb(args: string[]): Promise<ReverbProcess> {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "reverb/main.ts", ...args],
    cwd: new URL("../", import.meta.url),
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).spawn();
  const log: Array<Record<string, unknown>> = [];
  let text = "";
  const reading = (async () => {
    for await (const chunk of child.stderr.pipeThrough(new TextDecoderStream())) {
      text += chunk;
      const parts = text.split("\n");
      text = parts.pop()!;
      for (const line of parts) {
        try {
          log.push(JSON.parse(line));
        } catch {
          log.push({ msg: line });
        }
      }
    }
  })();
  const close = async () => {
    try {
      child.kill("SIGTERM");
    } catch { /* gone */ }
    await child.status;
    await reading;
  };
  try {
    await until(() => log.some((l) => l.msg === "serving http"), {
      what: "the reverb process",
      timeoutMs: 30_000,
    });
  } catch (error) {
    await close();
    throw new Error(`${(error as Error).message}; its log: ${JSON.stringify(log).slice(-2000)}`);
  }
  return {
    child,
    log,
    url: log.find((l) => l.msg === "serving http")!.url as string,
    async rss() {
      // Through ps, not /proc/<pid>/status: Deno 2 reads /proc only with --allow-all, and the
      // test task runs with narrower permissions (--allow-run covers ps).
      const out = await new Deno.Command("ps", {
        args: ["-o", "rss=", "-p", String(child.pid)],
        stdout: "piped",
        stderr: "null",
      }).output();
      const kib = Number(new TextDecoder().decode(out.stdout).trim());
      assert.ok(out.success && kib > 0, `ps reports the reverb process's RSS (${kib} KiB)`);
      return kib * 1024;
    },
    close,
  };
}

Deno.test("attack: one forged first frame, then storms of 20,000 junk frames and claims: no bogus report, real windows, a few log lines, bounded memory", async () => {
  await using server = await startNatsServer();
  const cluster = "atk-storm";
  const pulseBus = await connectNatsBus({ servers: server.url });
  const evil = await connectNatsBus({ servers: server.url });
  const pulse = new Pulse({ clusterId: cluster, bus: pulseBus, tempoBpm: TEMPO });
  const bars = watchBars(evil, cluster);
  const beat = `backbeat.${cluster}.beat`;
  const status = `backbeat.${cluster}.status`;
  const reverb = await spawnReverb([
    `--nats=${server.url}`,
    `--cluster=${cluster}`,
    "--http=127.0.0.1:0",
    "--grace-ms=100",
    "--id=rv-storm",
  ]);
  const api = async (path: string) => await (await fetch(`${reverb.url}${path}`)).json();
  // Every sample carries the cluster label, reason families a reason too.
  const metric = async (name: string, reason?: string) => {
    const text = await (await fetch(`${reverb.url}/metrics`)).text();
    const series = `${name}{cluster="${cluster}"${reason ? `,reason="${reason}"` : ""}}`;
    const m = new RegExp(`^${series.replace(/[{}"]/g, "\\$&")} (\\S+)$`, "m").exec(text);
    return m ? Number(m[1]) : NaN;
  };
  try {
    await until(async () => (await api("/api/v1/status")).active === true, {
      what: "the reverb process to lead",
      timeoutMs: 10_000,
    });
    // The first frame reverb ever sees: 1 ms beats, index 10^12, a deadline a year ago.
    const template = await new Timeline({ originTime: Date.now(), tempoBpm: TEMPO })
      .frame(cluster, 0, "0000:0000:0000");
    const forged = (fields: Partial<BeatFrame>) =>
      encoder.encode(JSON.stringify({ ...template, ...fields }));
    evil.publish(
      beat,
      forged({
        beat_index: 1e12,
        tempo_bpm: 60_000,
        deadline_at: formatInstant(Date.now() - 365 * 86_400_000),
      }),
    );
    await evil.flush();
    await until(async () => (await api("/api/v1/status")).beat?.beat_index === 1e12, {
      what: "the forged frame taken",
    });
    await pulse.start();
    await until(() => bars.length >= 2, { what: "two real reports", timeoutMs: 10_000 });

    // Storms: malformed, oversized, schema-invalid, another cluster's, and forged frames of
    // every kind; claims malformed, schema-invalid, oversized, signed by nobody known, stale and
    // stamped far ahead.
    const junkFrames = [
      encoder.encode("{junk"),
      forged({ beat_index: 2 ** 53 }),
      forged({ cluster_id: "other" }),
      encoder.encode(JSON.stringify({ pad: "x".repeat(17_000) })),
    ];
    const claim = (i: number, fields: Record<string, unknown>) =>
      encoder.encode(
        JSON.stringify({ ...makeClaim({ agent_id: `a-${i}`, hlc: hlcAt(Date.now()) }), ...fields }),
      );
    const storm = async () => {
      for (let i = 0; i < 20_000; i++) {
        const kind = i % 8;
        evil.publish(
          beat,
          kind < 4 ? junkFrames[kind] : forged({
            beat_index: kind === 4 ? 1e12 + i : kind === 5 ? 1 : pulse.timeline.beatAt(Date.now()),
            tempo_bpm: kind === 6 ? 60_000 : TEMPO,
            epoch: kind === 7 ? 1 : undefined,
            deadline_at: formatInstant(Date.now()),
          }),
        );
        const c = i % 6;
        evil.publish(
          status,
          c === 0
            ? encoder.encode("{junk")
            : c === 1
            ? claim(i, { progress: 7 })
            : c === 2
            ? claim(i, { notes: "x".repeat(5_000) })
            : c === 3
            ? claim(i, { hlc: hlcAt(Date.now() - 600_000) })
            : claim(i, { hlc: hlcAt(Date.now() + 600_000) }),
          c === 5 ? { headers: { "x-signature": "AAAA", "x-key-id": "nobody" } } : undefined,
        );
      }
      await evil.flush();
      const seen = bars.length;
      await until(() => bars.length >= seen + 3, { what: "three more reports", timeoutMs: 10_000 });
    };
    const rss0 = await reverb.rss();
    await storm();
    const rss1 = await reverb.rss();
    await storm();
    const rss2 = await reverb.rss();

    await assertReal(bars, cluster, pulse);
    assert.ok(bars.every((r) => r.from_beat < 1e9), "no report of the forged timeline");
    const newest = (await api("/api/v1/bars?limit=1")).reports[0];
    assert.equal(newest.window_id, bars.at(-1)!.window_id, "the newest report is real");
    assert.equal(await metric("backbeat_reverb_bars_skipped_total"), 0);
    assert.equal(await metric("backbeat_reverb_reports_invalid_total"), 0);
    const frames = (await api("/api/v1/status")).frames.rejected;
    for (const r of ["malformed", "schema", "cluster", "oversized"]) {
      assert.equal(frames[r], 5_000, r);
    }
    // Every forged frame is of an older epoch than pulse's (none, or 1).
    assert.equal(frames.old_epoch, 20_000, JSON.stringify(frames));
    // Pulse's first frame, of a newer epoch than the forgery's, waited for its second; a real
    // frame handled behind 40,000 junk messages may arrive too late to be explained (it is
    // refused, and the next one is followed): a few at most.
    assert.ok(
      frames.pending <= 1 && frames.implausible + frames.stale <= 4,
      JSON.stringify(frames),
    );
    const claims = (await api("/api/v1/status")).claims.rejected;
    assert.deepEqual(
      [
        claims.malformed,
        claims.schema,
        claims.oversized,
        claims.stale,
        claims.future,
        claims.unknown_key,
      ],
      [6_668, 6_668, 6_666, 6_666, 6_666, 6_666],
    );
    assert.equal(await metric("backbeat_reverb_claims_rejected_total", "future"), 6_666);
    const logged = (msg: string) => reverb.log.filter((l) => l.msg === msg).length;
    assert.ok(logged("frames rejected") <= 8, `${logged("frames rejected")} frame log lines`);
    assert.ok(logged("claims rejected") <= 8, `${logged("claims rejected")} claim log lines`);
    const mib = (n: number) => (n / 1_048_576).toFixed(1);
    console.log(
      `RSS ${mib(rss0)} MiB, after one storm ${mib(rss1)}, after two ${mib(rss2)}; log lines: ` +
        `${logged("frames rejected")} frames, ${logged("claims rejected")} claims`,
    );
    // Each storm delivers about 30 MB; reverb keeps none of it, so a second storm adds little.
    assert.ok(rss1 - rss0 < 96 * 1_048_576, `the first storm grew RSS by ${mib(rss1 - rss0)} MiB`);
    assert.ok(rss2 - rss1 < 32 * 1_048_576, `the second storm grew RSS by ${mib(rss2 - rss1)} MiB`);
  } finally {
    await pulse.stop();
    await reverb.close();
    await Promise.all([pulseBus.close(), evil.close()]);
  }
});

Deno.test("attack: a 2^53 − 1 frame and a garbage claim do not hang reverb: timers and HTTP answer within a beat", async () => {
  await using server = await startNatsServer();
  const reverbBus = await connectNatsBus({ servers: server.url });
  const pulseBus = await connectNatsBus({ servers: server.url });
  const evil = await connectNatsBus({ servers: server.url });
  // One reverb already following pulse, one that sees the frame before anything else.
  const clusters = ["atk-max-a", "atk-max-b"];
  const reverbs = clusters.map((c) => new Reverb({ clusterId: c, bus: reverbBus, graceMs: 100 }));
  const pulses = clusters.map((c) => new Pulse({ clusterId: c, bus: pulseBus, tempoBpm: TEMPO }));
  const bars = clusters.map((c) => watchBars(evil, c));
  const https = reverbs.map((r) => serveReverbHttp(r, { port: 0 }));
  const attack = async (cluster: string) => {
    const t = new Timeline({ originTime: Date.now(), tempoBpm: 60_000, beatsPerBar: 4 });
    const frame = {
      ...await t.frame(cluster, 0, "0000:0000:0000"),
      beat_index: Number.MAX_SAFE_INTEGER,
      downbeat: true,
      deadline_at: formatInstant(Date.now() - 86_400_000),
    };
    evil.publish(`backbeat.${cluster}.beat`, encoder.encode(JSON.stringify(frame)));
    const claim = makeClaim({
      agent_id: "garbage",
      beat_index: Number.MAX_SAFE_INTEGER,
      state: "reviewing",
      hlc: hlcAt(Date.now()),
    });
    evil.publish(`backbeat.${cluster}.status`, encoder.encode(JSON.stringify(claim)));
    evil.publish(`backbeat.${cluster}.status`, encoder.encode('{"beat_index": 1e400'));
    await evil.flush();
  };
  const responsive = async (label: string) => {
    for (let i = 0; i < 8; i++) {
      const t0 = performance.now();
      await new Promise((r) => setTimeout(r, 0));
      const timer = performance.now() - t0;
      const t1 = performance.now();
      for (const h of https) {
        const res = await fetch(`${h.url}/api/v1/status`);
        assert.equal(res.status, 200);
        await res.body?.cancel();
      }
      const answer = performance.now() - t1;
      assert.ok(timer < BEAT_MS, `${label}: a timer fired after ${timer.toFixed(1)} ms`);
      assert.ok(answer < BEAT_MS, `${label}: HTTP answered after ${answer.toFixed(1)} ms`);
      await new Promise((r) => setTimeout(r, 100));
    }
  };
  try {
    for (const r of reverbs) await r.start();
    await pulses[0].start();
    await until(() => bars[0].length >= 2, {
      what: "reports before the attack",
      timeoutMs: 10_000,
    });
    await attack(clusters[0]);
    await attack(clusters[1]);
    await responsive("just after the attack");
    await pulses[1].start();
    const before = bars[0].length;
    await until(() => bars[0].length >= before + 2 && bars[1].length >= 2, {
      what: "real reports on both clusters",
      timeoutMs: 10_000,
    });
    await responsive("while reporting");
    for (let i = 0; i < 2; i++) {
      await assertReal(bars[i], clusters[i], pulses[i]);
      const m = reverbs[i].metrics();
      assert.equal(m.barsSkipped, 0, clusters[i]);
      assert.ok(Number.isSafeInteger(m.windowsDropped));
    }
    const refused = reverbs[0].metrics().framesRejected;
    // Pulse's frames carry an epoch; the attacker's has none (0): older, refused as such.
    assert.equal(refused.implausible + refused.old_epoch, 1, "refused mid-stream");
  } finally {
    for (const p of pulses) await p.stop();
    for (const r of reverbs) await r.stop();
    for (const h of https) await h.stop();
    await Promise.all([reverbBus.close(), pulseBus.close(), evil.close()]);
  }
});

Deno.test("attack: a claim signed for cluster A is refused by cluster B's reverb with the same keyring", async () => {
  await using server = await startNatsServer();
  const pair = await generateSigningKeyPair();
  const ring = await keyringFile({ agent: [{ key_id: "k", public_key: pair.publicKey }] });
  const busA = await connectNatsBus({ servers: server.url });
  const busB = await connectNatsBus({ servers: server.url });
  const evil = await connectNatsBus({ servers: server.url });
  const base: Omit<ReverbOptions, "clusterId" | "bus"> = { keyring: ring.path, ha: false };
  const reverbA = new Reverb({ ...base, clusterId: "atk-xa", bus: busA });
  const reverbB = new Reverb({ ...base, clusterId: "atk-xb", bus: busB });
  // A real SDK client of cluster A signs its claims (signMessage over signedBytes).
  const client = new Client({
    ...defaultConfig(),
    clusterId: "atk-xa",
    agentId: "agent",
    bus: evil,
    signingKey: pair.keyPair.privateKey,
    keyId: "k",
  });
  const captured: BusMessage[] = [];
  evil.subscribe("backbeat.atk-xa.status", (m) => {
    captured.push({ subject: m.subject, data: m.data.slice(), headers: m.headers });
  });
  try {
    await reverbA.start();
    await reverbB.start();
    await client.start();
    await client.emitStatusClaim({ state: "executing", progress: 0.5 });
    await until(() => captured.length === 1 && decided(reverbA) === 1, { what: "A's verdict" });
    assert.equal(reverbA.claimsSummary().accepted, 1, "A accepts its own agent's claim");
    // The attacker replays the exact signed message on cluster B's subject.
    publish(evil, { ...captured[0], subject: "backbeat.atk-xb.status" });
    // And a claim of its own, signed with the agent's key for cluster A, sent to B.
    publish(
      evil,
      await signedMessage(
        makeClaim({ agent_id: "agent", hlc: hlcAt(Date.now()) }),
        pair.keyPair.privateKey,
        "k",
        "backbeat.atk-xb.status",
        { clusterId: "atk-xa" },
      ),
    );
    await until(() => decided(reverbB) === 2, { what: "B's verdicts" });
    assert.equal(reverbB.claimsSummary().accepted, 0);
    assert.equal(reverbB.claimsSummary().rejected.bad_signature, 2);
    // Bound to B, the same key is good on B: the refusal is about the cluster, not the key.
    publish(
      evil,
      await signedMessage(
        makeClaim({ agent_id: "agent", hlc: hlcAt(Date.now(), 1) }),
        pair.keyPair.privateKey,
        "k",
        "backbeat.atk-xb.status",
      ),
    );
    await until(() => decided(reverbB) === 3, { what: "B's third verdict" });
    assert.equal(reverbB.claimsSummary().accepted, 1);
  } finally {
    await client.stop();
    await reverbA.stop();
    await reverbB.stop();
    await Promise.all([busA.close(), busB.close(), evil.close()]);
    await Deno.remove(ring.dir, { recursive: true });
  }
});

Deno.test("attack: claims replayed to a restarted reverb (killed, not stopped) are refused: the marks are in KV", async () => {
  await using server = await startNatsServer();
  const cluster = "atk-replay";
  const pair = await generateSigningKeyPair();
  const ring = await keyringFile({ agent: [{ key_id: "k", public_key: pair.publicKey }] });
  const evil = await connectNatsBus({ servers: server.url });
  const status = `backbeat.${cluster}.status`;
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      "reverb/main.ts",
      `--nats=${server.url}`,
      `--cluster=${cluster}`,
      `--keyring=${ring.path}`,
      "--id=rv-first",
      "--http=off",
    ],
    cwd: new URL("../", import.meta.url),
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).spawn();
  const log: string[] = [];
  const reading = (async () => {
    for await (const chunk of child.stderr.pipeThrough(new TextDecoderStream())) log.push(chunk);
  })();
  let bus: NatsBusLike | undefined;
  let second: Reverb | undefined;
  try {
    await until(() => log.join("").includes('"msg":"reverb started"'), {
      what: "the first reverb",
      timeoutMs: 20_000,
    });
    const hlc = new HybridLogicalClock();
    const sent: BusMessage[] = [];
    for (let i = 0; i < 3; i++) {
      const m = await signedMessage(
        makeClaim({ agent_id: "agent", hlc: hlc.now() }),
        pair.keyPair.privateKey,
        "k",
        status,
      );
      sent.push(m);
      publish(evil, m);
    }
    await evil.flush();
    // The batch write: poll the bucket (64 shard keys) until the agent's mark is in it.
    const kv = await openKvLease({
      bus: evil,
      bucket: await kvBucketName(cluster, "reverb"),
      holderId: "probe",
    });
    const last = decoder.decode(sent[2].data);
    const markStored = async () => {
      for (let s = 0; s < 64; s++) {
        const e = await kv.getJson<{ marks: [string, string, number][] }>(
          `replay.${s.toString(16).padStart(2, "0")}`,
        );
        const mark = e?.value.marks.find((m) => m[0] === "agent");
        if (mark && last.includes(mark[1])) return true;
      }
      return false;
    };
    const waited = await until(markStored, {
      what: "the mark written",
      timeoutMs: 5_000,
      intervalMs: 100,
    });
    console.log(`mark stored ${waited.toFixed(0)} ms after the claims`);
    await kv.release();
    child.kill("SIGKILL");
    await child.status;

    bus = await connectNatsBus({ servers: server.url });
    second = new Reverb({ clusterId: cluster, bus, keyring: ring.path, id: "rv-second" });
    await second.start();
    assert.equal(second.status().replay.persistent, true);
    for (const m of sent) publish(evil, m);
    const fresh = await signedMessage(
      makeClaim({ agent_id: "agent", hlc: hlc.now() }),
      pair.keyPair.privateKey,
      "k",
      status,
    );
    publish(evil, fresh);
    await until(() => decided(second!) === 4, { what: "the second reverb's verdicts" });
    console.log(JSON.stringify(second.claimsSummary()), JSON.stringify(second.status().replay));
    assert.equal(second.claimsSummary().rejected.replay, 3, "every replay refused");
    assert.equal(second.claimsSummary().accepted, 1, "a fresh claim accepted");
  } finally {
    try {
      child.kill("SIGKILL");
    } catch { /* gone */ }
    await child.status;
    await reading;
    await second?.stop();
    await Promise.all([evil.close(), bus?.close()]);
    await Deno.remove(ring.dir, { recursive: true });
  }
});

Deno.test("attack: an unsigned claim for an agent in the keyring is refused, without --require-signatures", async () => {
  await using server = await startNatsServer();
  const cluster = "atk-unsigned";
  const pair = await generateSigningKeyPair();
  const ring = await keyringFile({ keyed: [{ key_id: "k", public_key: pair.publicKey }] });
  const reverbBus = await connectNatsBus({ servers: server.url });
  const evil = await connectNatsBus({ servers: server.url });
  const reverb = new Reverb({ clusterId: cluster, bus: reverbBus, keyring: ring.path, ha: false });
  const client = new Client({
    ...defaultConfig(),
    clusterId: cluster,
    agentId: "keyed",
    bus: evil,
    signingKey: pair.keyPair.privateKey,
    keyId: "k",
  });
  try {
    await reverb.start();
    await client.start();
    assert.equal(reverb.status().require_signatures, false);
    const status = `backbeat.${cluster}.status`;
    evil.publish(
      status,
      encoder.encode(JSON.stringify(makeClaim({ agent_id: "keyed", hlc: hlcAt(Date.now()) }))),
    );
    evil.publish(
      status,
      encoder.encode(JSON.stringify(makeClaim({ agent_id: "unkeyed", hlc: hlcAt(Date.now()) }))),
    );
    await client.emitStatusClaim({ state: "executing" });
    await until(() => decided(reverb) === 3, { what: "three verdicts" });
    const s = reverb.claimsSummary();
    assert.equal(s.rejected.unsigned, 1);
    assert.equal(s.accepted, 2, "the unkeyed agent's unsigned claim and the SDK's signed one");
    const views = Object.fromEntries(reverb.agents().map((a) => [a.agent_id, a]));
    assert.equal(views.keyed.key_id, "k", "the keyed agent's state comes from its signed claim");
    assert.match(
      renderReverbMetrics(reverb.metrics()),
      /claims_rejected_total\{cluster="[^"]+",reason="unsigned"\} 1$/m,
    );
  } finally {
    await client.stop();
    await reverb.stop();
    await Promise.all([reverbBus.close(), evil.close()]);
    await Deno.remove(ring.dir, { recursive: true });
  }
});

Deno.test("attack: 65 claims stamped 50 s ahead are refused as future and do not lock the agent out", async () => {
  await using server = await startNatsServer();
  const cluster = "atk-future";
  const pair = await generateSigningKeyPair();
  const ring = await keyringFile({ agent: [{ key_id: "k", public_key: pair.publicKey }] });
  const reverbBus = await connectNatsBus({ servers: server.url });
  const pulseBus = await connectNatsBus({ servers: server.url });
  const agentBus = await connectNatsBus({ servers: server.url });
  const reverb = new Reverb({ clusterId: cluster, bus: reverbBus, keyring: ring.path, ha: false });
  const pulse = new Pulse({ clusterId: cluster, bus: pulseBus, tempoBpm: TEMPO });
  const client = new Client({
    ...defaultConfig(),
    clusterId: cluster,
    agentId: "agent",
    bus: agentBus,
    signingKey: pair.keyPair.privateKey,
    keyId: "k",
  });
  let honest = 0;
  client.onBeat(() => {
    honest++;
    client.emitStatusClaim({ state: "executing", progress: 0.1 }).catch(() => {});
  });
  try {
    await reverb.start();
    // Signed with the agent's own key (a stolen message, or a clock gone wrong): valid signatures.
    for (let i = 0; i < 65; i++) {
      publish(
        agentBus,
        await signedMessage(
          makeClaim({ agent_id: "agent", hlc: hlcAt(Date.now() + 50_000, i) }),
          pair.keyPair.privateKey,
          "k",
          `backbeat.${cluster}.status`,
        ),
      );
    }
    // Generous: 65 signature checks in reverb's verify workers, on a loaded 2-core CI machine.
    await until(() => decided(reverb) === 65, {
      what: "the future claims refused",
      timeoutMs: 20_000,
    });
    assert.equal(reverb.claimsSummary().rejected.future, 65);
    await pulse.start();
    await client.start();
    await until(() => reverb.claimsSummary().accepted >= 5, {
      what: "honest claims accepted",
      timeoutMs: 20_000,
    });
    const s = reverb.claimsSummary();
    assert.equal(s.rejected.replay, 0, "the mark did not move ahead");
    assert.equal(s.rejected.future, 65);
    assert.ok(honest >= s.accepted);
  } finally {
    await client.stop();
    await pulse.stop();
    await reverb.stop();
    await Promise.all([reverbBus.close(), pulseBus.close(), agentBus.close()]);
    await Deno.remove(ring.dir, { recursive: true });
  }
});

// Runs pulse A, loses its KV state, runs pulse B (a new timeline, a greater epoch), and checks
// what reverb reported around the restart.
async function epochRestart(signed: boolean): Promise<void> {
  await using server = await startNatsServer();
  const cluster = signed ? "atk-epoch-keys" : "atk-epoch";
  const pair = await generateSigningKeyPair();
  const key = await importSigningKey(pair.keyPair.privateKey, "pulse-key");
  const pulseKeyring = signed
    ? await Keyring.fromJson({ pulses: [{ key_id: "pulse-key", public_key: pair.publicKey }] })
    : undefined;
  const reverbBus = await connectNatsBus({ servers: server.url });
  const pulseBus = await connectNatsBus({ servers: server.url });
  const watch = await connectNatsBus({ servers: server.url });
  const reverb = new Reverb({
    clusterId: cluster,
    bus: reverbBus,
    graceMs: 100,
    ha: false,
    pulseKeyring,
  });
  const bars = watchBars(watch, cluster);
  const frames = watchFrames(watch, cluster);
  const options = {
    clusterId: cluster,
    bus: pulseBus,
    tempoBpm: TEMPO,
    signingKey: signed ? key : undefined,
  };
  let a: Pulse | undefined = new Pulse(options);
  let b: Pulse | undefined;
  try {
    await reverb.start();
    await a.start();
    await until(() => bars.length >= 2, {
      what: "reports of the first timeline",
      timeoutMs: 10_000,
    });
    const e1 = a.epoch;
    const lastOld = frames.at(-1)!;
    await a.stop();
    a = undefined;
    // The timeline's state is lost: the next pulse starts afresh, with a greater epoch.
    const { jetstreamManager } = await import("@nats-io/jetstream");
    const jsm = await jetstreamManager(watch.connection as never);
    await jsm.streams.delete(`KV_${await kvBucketName(cluster, "pulse")}`);
    const oldReports = bars.length;
    b = new Pulse(options);
    await b.start();
    const e2 = b.epoch;
    assert.ok(e2 > e1, `epoch ${e2} after ${e1}`);
    const firstNew = () => frames.find((f) => (frameOf(f).epoch ?? 0) === e2);
    await until(() => firstNew() !== undefined, { what: "a frame of the new epoch" });
    const first = frameOf(firstNew()!);
    const moved = await until(() => reverb.metrics().epoch === e2, {
      what: "reverb on the new epoch",
    });
    assert.ok(moved < BEAT_MS * (signed ? 1 : 2) + 250, `moved after ${moved.toFixed(0)} ms`);
    const newReports = async () => {
      let n = 0;
      for (const r of bars.slice(oldReports)) {
        if (r.window_id === await windowId(cluster, r.from_beat, e2)) n++;
      }
      return n;
    };
    await until(async () => await newReports() >= 3, {
      what: "reports of the new timeline",
      timeoutMs: 10_000,
    });
    // A captured frame of the old timeline, replayed: refused.
    publish(watch, lastOld);
    await until(() => reverb.metrics().framesRejected.old_epoch >= 1, {
      what: "the old frame refused",
    });

    const newIds = new Set<string>();
    const firstBar = first.beat_index - (first.beat_index % 4);
    const news: BarReport[] = [];
    for (const r of bars.slice(oldReports)) {
      if (r.window_id === await windowId(cluster, r.from_beat, e2)) news.push(r);
      else {assert.equal(
          r.window_id,
          await windowId(cluster, r.from_beat, e1),
          "an old-epoch report",
        );}
    }
    assert.equal(news[0].from_beat, firstBar, "the new timeline is reported from its first window");
    for (let i = 1; i < news.length; i++) {
      assert.equal(news[i].from_beat, news[i - 1].from_beat + 4);
    }
    for (const r of news) newIds.add(r.window_id);
    for (const r of bars.slice(0, oldReports)) assert.ok(!newIds.has(r.window_id), "no id reused");
    const m = reverb.metrics();
    assert.equal(m.barsSkipped, 0);
    assert.equal(m.reportsDuplicate, 0);
    assert.equal(m.timelineRestarts, 1);
    if (signed) assert.equal(m.framesRejected.unsigned + m.framesRejected.bad_signature, 0);
  } finally {
    await a?.stop();
    await b?.stop();
    await reverb.stop();
    await Promise.all([reverbBus.close(), pulseBus.close(), watch.close()]);
  }
}

Deno.test("attack-proof epoch restart with pulse keys: reverb follows the new epoch at its first verified frame and reports it from its first window", async () => {
  await epochRestart(true);
});

Deno.test("epoch restart without keys: reverb follows the new epoch at its second agreeing frame and reports it from its first window", async () => {
  await epochRestart(false);
});

// reverb against a real nats-server, with real Ed25519 keys and pulse running in-process at
// 240 BPM (250 ms beats, 1 s bars).

import assert from "node:assert/strict";
import {
  type BarReport,
  type BeatFrame,
  type BusMessage,
  type GeneratedKeyPair,
  generateSigningKeyPair,
  HybridLogicalClock,
  type StatusClaim,
  Timeline,
} from "../core/mod.ts";
import { connectNatsBus, type NatsBusLike } from "../nats/mod.ts";
import { Client, defaultConfig } from "../sdk/mod.ts";
import { Pulse } from "../pulse/mod.ts";
import {
  barStreamName,
  renderReverbMetrics,
  Reverb,
  type ReverbHttpServer,
  serveReverbHttp,
} from "../reverb/mod.ts";
import { startNatsServer } from "./nats_server.ts";
import { hlcAt, makeClaim, signedMessage } from "./reverb_helpers.ts";
import { until } from "./until.ts";

const TEMPO = 240;
const BEAT_MS = 60_000 / TEMPO;
const BAR_MS = 4 * BEAT_MS;
const encoder = new TextEncoder();
const decoder = new TextDecoder();

interface Seen {
  report: BarReport;
  reverbId: string | undefined;
  at: number;
}

function watchBars(bus: NatsBusLike, cluster: string): Seen[] {
  const seen: Seen[] = [];
  bus.subscribe(`backbeat.${cluster}.bar`, (m) => {
    seen.push({
      report: JSON.parse(decoder.decode(m.data)),
      reverbId: m.headers?.["x-reverb-id"],
      at: Date.now(),
    });
  });
  return seen;
}

function onBeats(bus: NatsBusLike, cluster: string, fn: (f: BeatFrame) => void): () => void {
  const sub = bus.subscribe(`backbeat.${cluster}.beat`, (m) => {
    try {
      fn(JSON.parse(decoder.decode(m.data)));
    } catch (error) {
      console.error("beat script failed", error);
    }
  });
  return () => sub.unsubscribe();
}

async function keyringFile(ring: Record<string, unknown>): Promise<{ path: string; dir: string }> {
  const dir = await Deno.makeTempDir({ prefix: "reverb-nats-" });
  const path = `${dir}/keyring.json`;
  await Deno.writeTextFile(path, JSON.stringify(ring));
  return { path, dir };
}

function publish(bus: NatsBusLike, m: BusMessage): void {
  bus.publish(m.subject, m.data, m.headers ? { headers: m.headers } : undefined);
}

Deno.test("reverb on NATS reports a scripted bar right and rejects every bad claim by reason", async () => {
  await using server = await startNatsServer();
  const cluster = "rv-script";
  const status = `backbeat.${cluster}.status`;
  const ids = ["on-time", "late", "helper", "failer", "quiet"] as const;
  const keys: Record<string, GeneratedKeyPair> = {};
  for (const id of ids) keys[id] = await generateSigningKeyPair();
  const stranger = await generateSigningKeyPair();
  const ring = await keyringFile(
    Object.fromEntries(ids.map((id) => [id, [{ key_id: id, public_key: keys[id].publicKey }]])),
  );
  const reverbBus = await connectNatsBus({ servers: server.url });
  const pulseBus = await connectNatsBus({ servers: server.url });
  const agentBus = await connectNatsBus({ servers: server.url });
  const reverb = new Reverb({
    clusterId: cluster,
    bus: reverbBus,
    keyring: ring.path,
    requireSignatures: true,
    graceMs: 150,
  });
  const pulse = new Pulse({ clusterId: cluster, bus: pulseBus, tempoBpm: TEMPO });
  // The on-time agent is a real SDK client signing its claims.
  const client = new Client({
    ...defaultConfig(),
    clusterId: cluster,
    agentId: "on-time",
    bus: agentBus,
    signingKey: keys["on-time"].keyPair.privateKey,
    keyId: "on-time",
  });
  const bars = watchBars(agentBus, cluster);
  const hlc = new HybridLogicalClock();
  const timers = new Set<ReturnType<typeof setTimeout>>();
  let stopBeats = () => {};
  try {
    await reverb.start();
    await pulse.start();
    await client.start();
    const sign = async (
      id: string,
      claim: Partial<StatusClaim>,
      key = keys[id].keyPair.privateKey,
      kid = id,
    ) =>
      await signedMessage(
        makeClaim({ agent_id: id, task_id: `${id}-task`, hlc: hlc.now(), ...claim }),
        key,
        kid,
        status,
      );
    const send = async (id: string, claim: Partial<StatusClaim>) =>
      publish(agentBus, await sign(id, claim));

    let warmup: number | undefined; // downbeat of the bar where everyone says hello
    let scripted: number | undefined; // downbeat of the scripted bar
    let replayable: BusMessage | undefined;
    stopBeats = onBeats(agentBus, cluster, async (f) => {
      if (warmup === undefined && f.downbeat) warmup = f.beat_index;
      if (warmup === undefined) return;
      if (f.beat_index === warmup) {
        for (const id of ids) await send(id, { beat_index: f.beat_index, state: "planning" });
        return;
      }
      if (scripted === undefined && f.downbeat) scripted = f.beat_index;
      if (scripted === undefined) return;
      const pos = f.beat_index - scripted;
      const b = f.beat_index;
      if (pos === 0) {
        await client.emitStatusClaim({ state: "executing", progress: 0.2, beats_left: 3 });
        await send("late", { beat_index: b, state: "executing" });
        await send("helper", { beat_index: b, state: "helping" });
        await send("failer", { beat_index: b, state: "executing" });
        replayable = await sign("late", { beat_index: b, state: "executing", progress: 0.3 });
        publish(agentBus, replayable);
      } else if (pos === 1) {
        await send("failer", { beat_index: b, state: "failed", notes: "out of disk" });
        // Forged: the failer's key, speaking for on-time.
        publish(
          agentBus,
          await sign("on-time", { beat_index: b }, keys.failer.keyPair.privateKey, "failer"),
        );
        // A stranger's key under on-time's own key id: the signature does not verify.
        publish(
          agentBus,
          await sign("on-time", { beat_index: b }, stranger.keyPair.privateKey, "on-time"),
        );
        // Unsigned while signatures are required.
        agentBus.publish(
          status,
          encoder.encode(
            JSON.stringify(makeClaim({ agent_id: "helper", hlc: hlc.now(), beat_index: b })),
          ),
        );
        // Replayed: the exact signed message again.
        publish(agentBus, replayable!);
        // Stale: an HLC 130 s old (the limit is two minutes).
        publish(
          agentBus,
          await sign("helper", { beat_index: b, hlc: hlcAt(Date.now() - 130_000) }),
        );
        // Oversized and malformed.
        agentBus.publish(status, encoder.encode(JSON.stringify({ pad: "x".repeat(5_000) })));
        agentBus.publish(status, encoder.encode('{"type": "backbeat.statusclaim.v1",'));
      } else if (pos === 3) {
        await client.emitStatusClaim({ state: "reviewing", progress: 1, beats_left: 0 });
        await send("helper", { beat_index: b, state: "completed", progress: 1 });
        // The late agent reviews 60 ms after the review deadline, inside the 150 ms grace.
        const late = Date.parse(f.deadline_at) + 60 - Date.now();
        const t = setTimeout(() => {
          timers.delete(t);
          send("late", { beat_index: b, state: "reviewing", progress: 1 });
        }, late);
        timers.add(t);
      }
    });
    await until(
      () => scripted !== undefined && bars.some((s) => s.report.from_beat === scripted),
      { what: "the scripted bar's report", timeoutMs: 10_000 },
    );
    const report = bars.find((s) => s.report.from_beat === scripted)!.report;
    assert.equal(report.to_beat, scripted! + 3);
    assert.equal(report.agents_reporting, 4, "on-time, late, helper, failer; quiet is silent");
    assert.equal(report.on_time_reviews, 2, "on-time and helper");
    assert.equal(report.help_promises_fulfilled, 1);
    assert.equal(report.secret_rotations_ok, true);
    assert.ok(Math.abs(report.tempo_drift_ms) < 50, `drift ${report.tempo_drift_ms} ms`);
    const issues = report.issues.filter((i) => i.kind !== "tempo_drift");
    const byAgent = issues.filter((i) => i.agent_id).map((i) => `${i.kind}:${i.agent_id}`).sort();
    assert.deepEqual(byAgent, ["agent_failed:failer", "agent_silent:quiet", "late_review:late"]);
    const rejected = issues.filter((i) => i.kind === "claims_rejected").map((i) =>
      i.detail.split(": ")[1].split(" ")[0]
    ).sort();
    assert.deepEqual(rejected, [
      "bad_signature",
      "malformed",
      "oversized",
      "replay",
      "stale",
      "unknown_key",
      "unsigned",
    ]);
    for (const i of issues.filter((i) => i.kind === "claims_rejected")) {
      assert.equal(i.count, 1, i.detail);
    }

    const summary = reverb.claimsSummary();
    for (
      const reason of [
        "bad_signature",
        "malformed",
        "oversized",
        "replay",
        "stale",
        "unknown_key",
        "unsigned",
      ] as const
    ) {
      assert.equal(summary.rejected[reason], 1, reason);
    }
    // Still alive: the next bar is reported too.
    await until(
      () => bars.some((s) => s.report.from_beat === scripted! + 4),
      { what: "the next report", timeoutMs: 5_000 },
    );
    assert.equal(reverb.status().active, true);
    assert.ok(
      renderReverbMetrics(reverb.metrics()).includes(
        `backbeat_reverb_claims_rejected_total{cluster="${cluster}",reason="replay"} 1`,
      ),
    );
  } finally {
    stopBeats();
    for (const t of timers) clearTimeout(t);
    await client.stop();
    await pulse.stop();
    await reverb.stop();
    await Promise.all([reverbBus.close(), pulseBus.close(), agentBus.close()]);
    await Deno.remove(ring.dir, { recursive: true });
  }
});

Deno.test("reverb on NATS follows a key rotation: an expiring key flags the bar, the expired key is refused", async () => {
  await using server = await startNatsServer();
  const cluster = "rv-rotate";
  const oldKey = await generateSigningKeyPair();
  const newKey = await generateSigningKeyPair();
  const ring = await keyringFile({ rot: [{ key_id: "old", public_key: oldKey.publicKey }] });
  const reverbBus = await connectNatsBus({ servers: server.url });
  const pulseBus = await connectNatsBus({ servers: server.url });
  const agentBus = await connectNatsBus({ servers: server.url });
  const reverb = new Reverb({
    clusterId: cluster,
    bus: reverbBus,
    keyring: ring.path,
    graceMs: 150,
  });
  const pulse = new Pulse({ clusterId: cluster, bus: pulseBus, tempoBpm: TEMPO });
  const bars = watchBars(agentBus, cluster);
  const hlc = new HybridLogicalClock();
  let stopBeats = () => {};
  try {
    await reverb.start();
    await pulse.start();
    let b1: number | undefined;
    let rotated = false;
    const keyFor = (beat: number) =>
      b1 !== undefined && beat >= b1 + 8
        ? { id: "new", pair: newKey }
        : { id: "old", pair: oldKey };
    const send = async (beat: number, key: { id: string; pair: GeneratedKeyPair }) =>
      publish(
        agentBus,
        await signedMessage(
          makeClaim({ agent_id: "rot", beat_index: beat, hlc: hlc.now() }),
          key.pair.keyPair.privateKey,
          key.id,
          `backbeat.${cluster}.status`,
        ),
      );
    stopBeats = onBeats(agentBus, cluster, async (f) => {
      if (b1 === undefined) {
        if (!f.downbeat) return;
        b1 = f.beat_index + 4;
        // "old" expires half-way through the bar after b1; "new" is valid from now on.
        const expiry = pulse.timeline.dueAt(b1 + 4) + BAR_MS / 2;
        await Deno.writeTextFile(
          ring.path,
          JSON.stringify({
            rot: [
              {
                key_id: "old",
                public_key: oldKey.publicKey,
                not_after: new Date(expiry).toISOString(),
              },
              {
                key_id: "new",
                public_key: newKey.publicKey,
                not_before: new Date(Date.now() - 1_000).toISOString(),
              },
            ],
          }),
        );
        rotated = true;
      }
      await send(f.beat_index, keyFor(f.beat_index));
      // In the bar after the switch, one claim still comes signed with the expired key.
      if (f.beat_index === b1 + 13) await send(f.beat_index, { id: "old", pair: oldKey });
    });
    await until(
      () => rotated && reverb.keyring.get("rot", "new") !== undefined,
      { what: "the keyring reload", timeoutMs: 5_000 },
    );
    await until(() => bars.some((s) => s.report.from_beat === b1! + 12), {
      what: "four more bars",
      timeoutMs: 10_000,
    });
    const at = (from: number) => bars.find((s) => s.report.from_beat === from)!.report;
    const flagged = at(b1!);
    assert.equal(
      flagged.secret_rotations_ok,
      false,
      "a key used in b1 expires within the next window",
    );
    const rotation = flagged.issues.filter((i) => i.kind === "key_rotation");
    assert.equal(rotation.length, 1);
    assert.equal(rotation[0].agent_id, "rot");
    assert.match(rotation[0].detail, /key old expires at .*, within the next window/);
    const clean = at(b1! + 8);
    assert.equal(clean.secret_rotations_ok, true, "only the new key, valid without end, was used");
    assert.equal(clean.agents_reporting, 1);
    const refused = at(b1! + 12);
    assert.equal(refused.secret_rotations_ok, false);
    assert.deepEqual(refused.issues.map((i) => i.kind).sort(), ["claims_rejected", "key_rotation"]);
    assert.match(refused.issues.find((i) => i.kind === "claims_rejected")!.detail, /key_not_valid/);
    assert.equal(reverb.claimsSummary().rejected.key_not_valid >= 1, true);
  } finally {
    stopBeats();
    await pulse.stop();
    await reverb.stop();
    await Promise.all([reverbBus.close(), pulseBus.close(), agentBus.close()]);
    await Deno.remove(ring.dir, { recursive: true });
  }
});

Deno.test("a restarted reverb replays its history from the JetStream stream; no report is lost", async () => {
  await using server = await startNatsServer();
  const cluster = "rv-restart";
  const pulseBus = await connectNatsBus({ servers: server.url });
  const watchBus = await connectNatsBus({ servers: server.url });
  const busA = await connectNatsBus({ servers: server.url });
  const pulse = new Pulse({ clusterId: cluster, bus: pulseBus, tempoBpm: TEMPO });
  const bars = watchBars(watchBus, cluster);
  let busB: NatsBusLike | undefined;
  let reverbB: Reverb | undefined;
  let httpB: ReverbHttpServer | undefined;
  const reverbA = new Reverb({ clusterId: cluster, bus: busA, graceMs: 100, id: "rv-a" });
  try {
    await pulse.start();
    await reverbA.start();
    await until(() => reverbA.reports.length >= 3, {
      what: "three reports from the first reverb",
      timeoutMs: 10_000,
    });
    await reverbA.stop();
    await busA.close();
    const published = bars.map((s) => s.report.window_id);
    assert.deepEqual(reverbA.reports.map((r) => r.window_id), published);

    busB = await connectNatsBus({ servers: server.url });
    reverbB = new Reverb({
      clusterId: cluster,
      bus: busB,
      graceMs: 100,
      id: "rv-b",
    });
    await reverbB.start();
    httpB = serveReverbHttp(reverbB, { port: 0 });
    // Straight after start, before any new window closes, the history is back.
    assert.deepEqual(reverbB.reports.map((r) => r.window_id), published);
    const res = await fetch(`${httpB.url}/api/v1/bars?limit=100`);
    const api = await res.json();
    assert.deepEqual(api.reports.map((r: BarReport) => r.window_id), [...published].reverse());
    assert.equal(reverbB.status().stream?.name, barStreamName(cluster));

    // And it carries on: its next report lands in the stream and the history alike.
    const before = bars.length;
    await until(() => bars.length > before, {
      what: "a report from the restarted reverb",
      timeoutMs: 5_000,
    });
    const next = bars[bars.length - 1];
    assert.equal(next.reverbId, "rv-b");
    await until(
      () => reverbB!.reports.at(-1)?.window_id === next.report.window_id,
      { what: "history", timeoutMs: 2_000 },
    );
    const { jetstreamManager } = await import("@nats-io/jetstream");
    const jsm = await jetstreamManager(watchBus.connection as never);
    const info = await jsm.streams.info(barStreamName(cluster));
    assert.equal(info.state.messages, bars.length, "every report published is stored once");
  } finally {
    await pulse.stop();
    await reverbA.stop();
    await reverbB?.stop();
    await httpB?.stop();
    await Promise.all([pulseBus.close(), watchBus.close(), busA.close(), busB?.close()]);
  }
});

Deno.test("a standby reverb takes over within one bar when the active one is killed, losing no window", async () => {
  await using server = await startNatsServer();
  const cluster = "rv-ha";
  const pulseBus = await connectNatsBus({ servers: server.url });
  const watchBus = await connectNatsBus({ servers: server.url });
  const busB = await connectNatsBus({ servers: server.url });
  const pulse = new Pulse({ clusterId: cluster, bus: pulseBus, tempoBpm: TEMPO });
  const bars = watchBars(watchBus, cluster);
  const reverbB = new Reverb({ clusterId: cluster, bus: busB, graceMs: 150, id: "rv-b" });
  // The active reverb runs as its own process so it can really be killed.
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      "reverb/main.ts",
      `--nats=${server.url}`,
      `--cluster=${cluster}`,
      "--id=rv-a",
      "--http=off",
      "--grace-ms=150",
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
  let becameActiveAt = 0;
  reverbB.addEventListener("role", (e) => {
    if (e.detail.active) becameActiveAt = Date.now();
  });
  try {
    await pulse.start();
    await until(
      () => log.join("").includes('"msg":"active aggregator"'),
      { what: "the first reverb to lead", timeoutMs: 15_000 },
    );
    await reverbB.start();
    assert.equal(reverbB.status().active, false, "the second reverb stands by");
    await until(
      () => bars.filter((s) => s.reverbId === "rv-a").length >= 2,
      { what: "reports from rv-a", timeoutMs: 10_000 },
    );
    // Kill mid-bar.
    const t = pulse.timeline;
    const beat = t.beatAt(Date.now());
    await new Promise((r) =>
      setTimeout(r, Math.max(0, t.dueAt(t.barStart(beat) + 4) + BAR_MS / 2 - Date.now()))
    );
    child.kill("SIGKILL");
    const killedAt = Date.now();
    await child.status;
    await until(() => becameActiveAt > 0, { what: "the standby to take over", timeoutMs: 5_000 });
    const takeoverMs = becameActiveAt - killedAt;
    assert.ok(takeoverMs <= BAR_MS, `took over after ${takeoverMs} ms (one bar is ${BAR_MS} ms)`);
    const firstB = bars.length;
    await until(
      () => bars.slice(firstB).filter((s) => s.reverbId === "rv-b").length >= 2,
      { what: "reports from rv-b", timeoutMs: 5_000 },
    );
    const froms = [...new Set(bars.map((s) => s.report.from_beat))];
    for (let i = 1; i < froms.length; i++) {
      assert.equal(
        froms[i],
        froms[i - 1] + 4,
        `no window lost around the takeover: ${froms.join(", ")}`,
      );
    }
    assert.ok(bars.some((s) => s.reverbId === "rv-a") && bars.some((s) => s.reverbId === "rv-b"));
    assert.equal(reverbB.status().active, true);
  } finally {
    try {
      child.kill("SIGKILL");
    } catch { /* already gone */ }
    await child.status;
    await reading;
    await pulse.stop();
    await reverbB.stop();
    await Promise.all([pulseBus.close(), watchBus.close(), busB.close()]);
  }
});

Deno.test("reverb without JetStream keeps reporting on the core subject and says it is degraded", async () => {
  await using server = await startNatsServer({ jetstream: false });
  const cluster = "rv-nojs";
  const bus = await connectNatsBus({ servers: server.url });
  const feed = await connectNatsBus({ servers: server.url });
  const bars = watchBars(feed, cluster);
  const reverb = new Reverb({ clusterId: cluster, bus, ha: false, graceMs: 20 });
  const timeline = new Timeline({ originTime: Date.now() + 50, tempoBpm: 600 });
  const hlc = new HybridLogicalClock();
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    await reverb.start();
    assert.deepEqual(reverb.readiness(), { ready: false, reasons: ["history stream unavailable"] });
    assert.ok(reverb.warnings().some((w) => w.startsWith("history stream unavailable")));
    let n = 0;
    const tick = async () => {
      feed.publish(
        `backbeat.${cluster}.beat`,
        encoder.encode(JSON.stringify(await timeline.frame(cluster, n, hlc.now()))),
      );
      n++;
      timer = setTimeout(tick, Math.max(0, timeline.dueAt(n) - Date.now()));
    };
    timer = setTimeout(tick, Math.max(0, timeline.dueAt(0) - Date.now()));
    await until(() => bars.length >= 1, { what: "a report on the core subject", timeoutMs: 5_000 });
    assert.equal(bars[0].report.from_beat, 0);
    assert.equal(bars[0].reverbId, reverb.id);
  } finally {
    clearTimeout(timer);
    await reverb.stop();
    await Promise.all([bus.close(), feed.close()]);
  }
});

// Pulse benchmark: publish lateness and CPU at 600 and 6,000 BPM on a real nats-server (and at
// 6,000 BPM with every frame signed), the cost of signing a frame, and takeover time after SIGKILL
// and SIGTERM with three pulse processes at 120 BPM against the goal of 2 beats
// (tests/pulse_nats_test.ts allows 3, for loaded CI machines).
//
//   deno run -A bench/pulse_bench.ts [--seconds 20] [--rounds 3] [--signing-only]
//
// --signing-only: the signing cost and the 6,000 BPM rows, unsigned and signed; no takeovers.
import { cpuUsage } from "node:process";
import {
  generateSigningKeyPair,
  importSigningKey,
  type SigningKey,
  signMessage,
  SystemClock,
  Timeline,
} from "../core/mod.ts";
import { connectNatsBus } from "../nats/mod.ts";
import { Histogram, type HistogramSnapshot, quantile } from "../service/mod.ts";
import { Pulse } from "../pulse/mod.ts";
import { startNatsServer } from "../tests/nats_server.ts";
import {
  currentLeader,
  measureHandover,
  type PulseProc,
  spawnPulse,
  waitFor,
  watchBeats,
} from "../tests/pulse_procs.ts";

function flag(name: string, fallback: number): number {
  const i = Deno.args.indexOf(`--${name}`);
  return i >= 0 ? Number(Deno.args[i + 1]) : fallback;
}
const SECONDS = flag("seconds", 20);
const ROUNDS = flag("rounds", 3);
const SIGNING_ONLY = Deno.args.includes("--signing-only");
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const us = (s: number) => (s * 1e6).toFixed(1);
const PERIOD_MS = 500; // 120 BPM
// The takeover goal: a new leader within 2 beats, and no beat more than 2 beats late.
const GOAL_MS = 2 * PERIOD_MS;

interface LatenessRow {
  label: string;
  beats: number;
  p50: number;
  p99: number;
  max: number;
  within100us: number;
  cpu: number;
}

function row(label: string, s: HistogramSnapshot, cpu: number): LatenessRow {
  let within = 0;
  for (let i = 0; i < s.bounds.length && s.bounds[i] <= 1e-4; i++) within += s.counts[i];
  return {
    label,
    beats: s.count,
    p50: quantile(s, 0.5),
    p99: quantile(s, 0.99),
    max: s.max,
    within100us: s.count ? within / s.count : 0,
    cpu,
  };
}

// The floor this machine allows: the same timer and spin with nothing else to do.
async function baseline(tempoBpm: number): Promise<LatenessRow> {
  const clock = new SystemClock({ spinMs: 1.5 });
  const h = new Histogram();
  const period = 60_000 / tempoBpm;
  const end = clock.now() + SECONDS * 1000;
  const wall0 = performance.now();
  const cpu0 = cpuUsage();
  await new Promise<void>((done) => {
    const step = (at: number) => {
      clock.schedule(at, () => {
        h.observe((clock.now() - at) / 1000);
        if (at + period < end) step(at + period);
        else done();
      });
    };
    step(clock.now() + period);
  });
  const cpu = cpuUsage(cpu0);
  return row(
    `timer + spin alone, ${tempoBpm} BPM`,
    h.snapshot(),
    (cpu.user + cpu.system) / 1000 / (performance.now() - wall0),
  );
}

// Signing one frame as pulse does: signMessage over the exact payload, bound to cluster and epoch.
async function signingCost(key: SigningKey): Promise<{ us: number; frames: number }> {
  const tl = new Timeline({ originTime: Date.now(), tempoBpm: 6000, epoch: Date.now() });
  const data = new TextEncoder().encode(
    JSON.stringify(await tl.frame("benchsign", 1234, "0000:0000:0001")),
  );
  for (let i = 0; i < 500; i++) {
    await signMessage(key, "backbeat.beatframe.v1", "benchsign", data, 7);
  }
  const frames = 20_000;
  const t0 = performance.now();
  for (let i = 0; i < frames; i++) {
    await signMessage(key, "backbeat.beatframe.v1", "benchsign", data, 7);
  }
  return { us: (performance.now() - t0) * 1000 / frames, frames };
}

async function lateness(
  url: string,
  tempoBpm: number,
  spinMs: number,
  signingKey?: SigningKey,
): Promise<LatenessRow> {
  const bus = await connectNatsBus({ servers: url });
  const pulse = new Pulse({
    clusterId: `bench${tempoBpm}s${String(spinMs).replace(".", "_")}${signingKey ? "signed" : ""}`,
    bus,
    tempoBpm,
    clock: new SystemClock({ spinMs }),
    signingKey,
  });
  await pulse.start();
  const wall0 = performance.now();
  const cpu0 = cpuUsage();
  await sleep(SECONDS * 1000);
  const cpu = cpuUsage(cpu0);
  const wall = performance.now() - wall0;
  const m = pulse.metrics();
  await pulse.stop();
  await bus.close();
  return row(
    `pulse, ${tempoBpm} BPM, spin ${spinMs} ms${signingKey ? ", signed" : ""}`,
    m.lateness,
    (cpu.user + cpu.system) / 1000 / wall,
  );
}

interface TakeoverRow {
  kind: string;
  takeoverMs: number;
  maxBeatDelayMs: number;
}

async function takeovers(url: string): Promise<TakeoverRow[]> {
  const cluster = "benchha";
  const args = ["--cluster", cluster, "--nats", url, "--tempo", "120", "--log-level", "info"];
  const { frames, bus } = await watchBeats(url, cluster);
  const procs: PulseProc[] = [];
  let next = 1;
  const spawn = () => {
    const p = spawnPulse(`b${next++}`, args);
    procs.push(p);
    return p;
  };
  const alive = () => procs.filter((p) => !p.lines.some((l) => l.rec.msg === "gone"));
  const rows: TakeoverRow[] = [];
  try {
    for (let i = 0; i < 3; i++) spawn();
    await Promise.all(procs.map((p) => p.url));
    await waitFor(() => frames.length >= 4, 15_000, "first frames");
    for (let round = 0; round < ROUNDS; round++) {
      for (const sig of ["SIGKILL", "SIGTERM"] as const) {
        // Standbys must be ready (following a live leader) before the leader goes.
        for (const p of alive()) {
          await waitFor(() => p.lines.some((l) => l.rec.msg === "pulse running"), 15_000, "up");
        }
        await sleep(1500);
        const old = currentLeader(frames);
        const leader = procs.find((p) => p.id === old)!;
        const from = frames.length;
        const t0 = performance.now();
        leader.signal(sig);
        await waitFor(() => frames.slice(from).some((f) => f.from !== old), 10_000, "new leader");
        await sleep(2500);
        const h = measureHandover(frames, procs, old, t0, PERIOD_MS);
        rows.push({ kind: sig, takeoverMs: h.takeoverMs, maxBeatDelayMs: h.maxBeatDelayMs });
        console.error(
          `${sig}: takeover ${h.takeoverMs.toFixed(0)} ms, worst beat ${
            h.maxBeatDelayMs.toFixed(0)
          } ms late`,
        );
        await leader.close();
        leader.lines.push({ at: performance.now(), rec: { msg: "gone" } });
        const p = spawn();
        await p.url;
      }
    }
  } finally {
    await Promise.all(procs.map((p) => p.close()));
    await bus.close();
  }
  return rows;
}

const server = await startNatsServer();
try {
  const version = new TextDecoder().decode(
    (await new Deno.Command("nats-server", { args: ["--version"] }).output()).stdout,
  ).trim();
  console.error(
    `pulse bench: ${SECONDS} s per tempo${
      SIGNING_ONLY ? ", signing only" : `, ${ROUNDS} takeover rounds`
    }`,
  );
  const key = await importSigningKey((await generateSigningKeyPair()).keyPair.privateKey);
  const sign = await signingCost(key);
  console.error(`signing: ${sign.us.toFixed(1)} µs per frame (${sign.frames} frames)`);
  const rows: LatenessRow[] = [];
  const runs: [number, number, SigningKey | undefined][] = SIGNING_ONLY
    ? [[6000, 1.5, undefined], [6000, 1.5, key]]
    : [[600, 1.5, undefined], [6000, 1.5, undefined], [6000, 1.5, key], [600, 0, undefined]];
  for (const [tempo, spin, signing] of runs) {
    const r = await lateness(server.url, tempo, spin, signing);
    console.error(
      `${r.label}: ${r.beats} beats, p50 ${us(r.p50)} µs, p99 ${us(r.p99)} µs, max ${
        us(r.max)
      } µs, CPU ${(100 * r.cpu).toFixed(1)} %`,
    );
    rows.push(r);
  }
  rows.push(await baseline(6000));
  console.error(`${rows.at(-1)!.label}: p99 ${us(rows.at(-1)!.p99)} µs`);
  const ho = SIGNING_ONLY ? [] : await takeovers(server.url);
  const stats = (kind: string) => {
    const t = ho.filter((r) => r.kind === kind);
    const ms = t.map((r) => r.takeoverMs);
    const late = t.map((r) => r.maxBeatDelayMs);
    const met = t.filter((r) => r.takeoverMs <= GOAL_MS && r.maxBeatDelayMs <= GOAL_MS).length;
    return `| ${kind} | ${t.length} | ${Math.min(...ms).toFixed(0)} / ${
      (ms.reduce((a, b) => a + b, 0) / ms.length).toFixed(0)
    } / ${Math.max(...ms).toFixed(0)} | ${Math.max(...late).toFixed(0)} | ${met} of ${t.length} |`;
  };
  console.log(
    [
      `Deno ${Deno.version.deno}, ${version}, ${navigator.hardwareConcurrency} CPUs, ${Deno.build.os}, ` +
      `load average ${Deno.loadavg().map((l) => l.toFixed(2)).join(" ")} at the end.`,
      "",
      "| Run | On-time beats | Lateness p50 | p99 | max | ≤ 0.1 ms | CPU (process) |",
      "|---|---|---|---|---|---|---|",
      ...rows.map((r) =>
        `| ${r.label} | ${r.beats} | ${us(r.p50)} µs | ${us(r.p99)} µs | ${us(r.max)} µs | ${
          (100 * r.within100us).toFixed(1)
        } % | ${(100 * r.cpu).toFixed(1)} % |`
      ),
      "",
      `Signing a frame (signMessage, Ed25519 over ~300 bytes): ${
        sign.us.toFixed(1)
      } µs per frame, ${sign.frames} frames; done before the beat is due.`,
      ...(SIGNING_ONLY ? [] : [
        "",
        `| Handover at 120 BPM | Rounds | Takeover min / mean / max (ms) | Worst beat delay (ms) | Within 2 beats (${GOAL_MS} ms) |`,
        "|---|---|---|---|---|",
        stats("SIGKILL"),
        stats("SIGTERM"),
      ]),
    ].join("\n"),
  );
} finally {
  await server.stop();
}

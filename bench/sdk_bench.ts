// SDK benchmark: end-to-end beat latency (pulse's publish instant, carried in `x-pulse-sent`, to
// callback entry) on a real nats-server at 600 BPM, for one client and for 1,000 clients in 4
// processes (250 each on one shared connection), each beside raw nats.js subscribers of the same
// topology measured in the same run; phase alignment (|callback entry − the beat's due instant|,
// scheduled delivery beside arrival delivery, and the spread of one beat over all clients); then
// the cost of emitStatusClaim, unsigned and signed, and the cost of a frame in the SDK with and
// without `pulseKeys` (signature verification). Results go to the `## SDK` section of
// bench/RESULTS.md (with --no-write, printed only).
//
//   deno run -A bench/sdk_bench.ts [--seconds 15] [--clients 1000] [--procs 4] [--no-write]
//   deno run -A bench/sdk_bench.ts --only phase       # phase alignment alone, printed
//   deno run -A bench/sdk_bench.ts --only verify      # the frame verification cost alone, printed
//
// Worker mode (spawned by the coordinator): --worker sdk|raw|phase --count N --url U --seconds S
import {
  Client,
  connectNatsBus,
  defaultConfig,
  generateSigningKeyPair,
  InMemoryBus,
  Keyring,
} from "../mod.ts";
import {
  answerTimeRequests,
  signMessage,
  subjects,
  SystemClock,
  Timeline,
  type TimelineJson,
} from "../core/mod.ts";
import { Pulse } from "../pulse/mod.ts";
import { startNatsServer } from "../tests/nats_server.ts";

const CLUSTER = "bench";
const TEMPO = 600;
const WARMUP_S = 3;
const ROOT = new URL("..", import.meta.url).pathname;
const HEADING = "## SDK";

function flag(name: string, fallback: string): string {
  const i = Deno.args.indexOf(`--${name}`);
  return i >= 0 && i + 1 < Deno.args.length ? Deno.args[i + 1] : fallback;
}

const now = () => performance.timeOrigin + performance.now();
const quiet = { debug() {}, info() {}, warn() {}, error() {} };

// ---------------------------------------------------------------- worker side

/** Latency samples in ms, bounded by the expected count. */
class Samples {
  readonly data: Float64Array;
  n = 0;
  constructor(cap: number) {
    this.data = new Float64Array(cap);
  }
  add(ms: number): void {
    if (this.n < this.data.length) this.data[this.n++] = ms;
  }
}

async function worker(kind: string): Promise<void> {
  const count = Number(flag("count", "1"));
  const url = flag("url", "");
  const seconds = Number(flag("seconds", "30"));
  const beat = `backbeat.${CLUSTER}.beat`;
  const samples = new Samples(Math.ceil(count * (seconds + 2) * (TEMPO / 60) * 1.2));
  let recording = false;
  let synthetic = 0;
  let close: () => Promise<void>;
  if (kind === "sdk") {
    const clients: Client[] = [];
    for (let i = 0; i < count; i++) {
      const c = defaultConfig();
      c.clusterId = CLUSTER;
      c.agentId = `bench-${Deno.pid}-${i}`;
      c.natsUrl = url;
      c.logger = quiet;
      // The latency from pulse's send to the callback is the arrival path's figure.
      c.delivery = "arrival";
      const client = new Client(c);
      client.onBeat((_frame, info) => {
        const t = now();
        if (!recording) return;
        if (info.synthetic) synthetic++;
        else if (info.sentAt !== undefined) samples.add(t - info.sentAt);
      });
      await client.start();
      clients.push(client);
    }
    await clients[0].bus!.flush();
    close = async () => {
      for (const c of clients) await c.stop();
    };
  } else {
    // Raw nats.js, same topology and the strictest baseline: one connection, one subscription,
    // the frame parsed once and handed to `count` plain callbacks (no validation, ordering or
    // isolation).
    const { connect } = await import("@nats-io/transport-node");
    const nc = await connect({ servers: url });
    type Raw = (frame: unknown, sentAt: number) => void;
    const callbacks: Raw[] = [];
    for (let i = 0; i < count; i++) {
      callbacks.push((_frame, sentAt) => {
        const t = now();
        if (recording) samples.add(t - sentAt);
      });
    }
    const decoder = new TextDecoder();
    nc.subscribe(beat, {
      callback: (_err, msg) => {
        const sentAt = Number(msg.headers?.get("x-pulse-sent"));
        const frame = JSON.parse(decoder.decode(msg.data));
        for (const cb of callbacks) cb(frame, sentAt);
      },
    });
    await nc.flush();
    close = () => nc.close();
  }
  console.log("ready");
  await new Promise((r) => setTimeout(r, WARMUP_S * 1000));
  recording = true;
  await new Promise((r) => setTimeout(r, seconds * 1000));
  recording = false;
  await close();
  const out = Array.from(samples.data.subarray(0, samples.n), (x) => Math.round(x * 1000) / 1000);
  console.log(JSON.stringify({ samples: out, synthetic }));
}

/** CPU time of this process (all threads), user + system, in ms, from /proc/self/stat. */
async function cpuMs(): Promise<number> {
  const stat = await Deno.readTextFile("/proc/self/stat");
  // Fields after the command name (which may hold spaces, so split after its closing paren).
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after the name.
  return (Number(fields[11]) + Number(fields[12])) * 10; // clock ticks of 10 ms (USER_HZ 100)
}

/** What a phase worker reports. */
interface PhaseReport {
  /** |entry − the instant the client delivered the beat for| (info.at), ms. */
  sched: number[];
  /** entry − pulse's due instant of the beat (both clocks of this host), ms. */
  due: number[];
  /** Per beat: [beat, earliest entry − due, latest entry − due, callbacks]. */
  beats: [number, number, number, number][];
  /** Callbacks delivered at the beat's instant (predicted or held) / on arrival. */
  scheduled: number;
  arrival: number;
  synthetic: number;
  /** CPU of the process while recording, % of one core. */
  cpu: number;
  /** The SDK's clock estimate at the end (scheduled workers). */
  clock: unknown;
}

// N clients of one delivery mode; every callback's entry against the beat's instant.
async function phaseWorker(): Promise<void> {
  const count = Number(flag("count", "1"));
  const url = flag("url", "");
  const seconds = Number(flag("seconds", "15"));
  const delivery = flag("delivery", "scheduled") as "scheduled" | "arrival";
  const timeline = Timeline.fromJSON(JSON.parse(flag("timeline", "")) as TimelineJson);
  const cap = Math.ceil(count * (seconds + 2) * (TEMPO / 60) * 1.2);
  const sched = new Samples(cap);
  const due = new Samples(cap);
  const first = new Map<number, [number, number, number]>();
  let recording = false;
  let scheduled = 0;
  let arrival = 0;
  let synthetic = 0;
  const clients: Client[] = [];
  for (let i = 0; i < count; i++) {
    const c = defaultConfig();
    c.clusterId = CLUSTER;
    c.agentId = `phase-${Deno.pid}-${i}`;
    c.natsUrl = url;
    c.logger = quiet;
    c.delivery = delivery;
    const client = new Client(c);
    client.onBeat((frame, info) => {
      const t = now();
      if (!recording) return;
      const d = t - timeline.dueAt(frame.beat_index);
      due.add(d);
      if (info.arrivedAt === undefined || info.at !== info.arrivedAt) {
        scheduled++;
        sched.add(t - info.at);
      } else arrival++;
      if (info.synthetic) synthetic++;
      const b = first.get(frame.beat_index);
      if (b === undefined) first.set(frame.beat_index, [d, d, 1]);
      else {
        if (d < b[0]) b[0] = d;
        if (d > b[1]) b[1] = d;
        b[2]++;
      }
    });
    await client.start();
    clients.push(client);
  }
  console.log("ready");
  await new Promise((r) => setTimeout(r, WARMUP_S * 1000));
  const cpu0 = await cpuMs();
  const wall0 = performance.now();
  recording = true;
  await new Promise((r) => setTimeout(r, seconds * 1000));
  recording = false;
  const cpu = (await cpuMs() - cpu0) / (performance.now() - wall0) * 100;
  const clock = clients[0].health().clock;
  for (const c of clients) await c.stop();
  const r3 = (x: number) => Math.round(x * 1000) / 1000;
  const report: PhaseReport = {
    sched: Array.from(sched.data.subarray(0, sched.n), r3),
    due: Array.from(due.data.subarray(0, due.n), r3),
    beats: [...first].map(([beat, [lo, hi, n]]) => [beat, r3(lo), r3(hi), n]),
    scheduled,
    arrival,
    synthetic,
    cpu: Math.round(cpu * 10) / 10,
    clock,
  };
  console.log(JSON.stringify(report));
}

// ---------------------------------------------------------------- coordinator side

interface Stats {
  n: number;
  min: number;
  p50: number;
  p99: number;
  max: number;
}

function stats(all: number[]): Stats {
  const s = Float64Array.from(all).sort();
  const q = (p: number) => s[Math.min(s.length - 1, Math.max(0, Math.ceil(p * s.length) - 1))];
  return { n: s.length, min: s[0], p50: q(0.5), p99: q(0.99), max: s[s.length - 1] };
}

function spawn<T = { samples: number[]; synthetic: number }>(
  kind: string,
  count: number,
  url: string,
  seconds: number,
  extra: string[] = [],
): { isReady: Promise<void>; done: Promise<T> } {
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      import.meta.filename!,
      "--worker",
      kind,
      "--count",
      String(count),
      "--url",
      url,
      "--seconds",
      String(seconds),
      ...extra,
    ],
    stdin: "null",
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const lines: string[] = [];
  let ready!: () => void;
  const isReady = new Promise<void>((r) => ready = r);
  const done = (async () => {
    let buf = "";
    for await (const chunk of child.stdout.pipeThrough(new TextDecoderStream())) {
      buf += chunk;
      let i;
      while ((i = buf.indexOf("\n")) >= 0) {
        const line = buf.slice(0, i);
        buf = buf.slice(i + 1);
        if (line === "ready") ready();
        else lines.push(line);
      }
    }
    const status = await child.status;
    if (!status.success) throw new Error(`${kind} worker failed (${status.code})`);
    return JSON.parse(lines.at(-1)!) as T;
  })();
  return { isReady, done };
}

// nats-server hands a message to subscribers in subscription order, so whichever process
// subscribed first is served first. Each topology runs twice, half the time each, with the SDK
// subscribed first and then the raw baseline first, and the samples are merged.
async function topology(
  url: string,
  clients: number,
  procs: number,
  seconds: number,
): Promise<{ sdk: Stats; raw: Stats; synthetic: number }> {
  const per = Math.ceil(clients / procs);
  const all: { kind: string; samples: number[]; synthetic: number }[] = [];
  for (const order of [["sdk", "raw"], ["raw", "sdk"]]) {
    const workers: {
      kind: string;
      w: ReturnType<typeof spawn<{ samples: number[]; synthetic: number }>>;
    }[] = [];
    for (let p = 0; p < procs; p++) {
      for (const kind of order) {
        const w = spawn(kind, per, url, seconds / 2);
        workers.push({ kind, w });
        await w.isReady; // subscribed before the next one subscribes
      }
    }
    all.push(...await Promise.all(workers.map(async (x) => ({ kind: x.kind, ...await x.w.done }))));
  }
  const pick = (kind: string) => all.filter((r) => r.kind === kind).flatMap((r) => r.samples);
  const synthetic = all.reduce((n, r) => n + r.synthetic, 0);
  return { sdk: stats(pick("sdk")), raw: stats(pick("raw")), synthetic };
}

/** Phase alignment of one topology and delivery mode. */
interface PhaseResult {
  clients: number;
  procs: number;
  delivery: string;
  /** |entry − the instant delivered for| (scheduled deliveries only). */
  sched: Stats | undefined;
  /** |entry − pulse's due instant|. */
  due: Stats;
  /** Per beat, latest − earliest entry over every client of every process. */
  spread: Stats;
  scheduled: number;
  arrival: number;
  synthetic: number;
  cpu: number[];
  clocks: unknown[];
}

async function phaseTopology(
  url: string,
  timeline: TimelineJson,
  clients: number,
  procs: number,
  seconds: number,
  delivery: string,
): Promise<PhaseResult> {
  const per = Math.ceil(clients / procs);
  const workers = [];
  for (let p = 0; p < procs; p++) {
    const w = spawn<PhaseReport>("phase", per, url, seconds, [
      "--delivery",
      delivery,
      "--timeline",
      JSON.stringify(timeline),
    ]);
    workers.push(w);
    await w.isReady;
  }
  const reports = await Promise.all(workers.map((w) => w.done));
  const beats = new Map<number, [number, number, number]>();
  for (const r of reports) {
    for (const [beat, lo, hi, n] of r.beats) {
      const b = beats.get(beat);
      if (b === undefined) beats.set(beat, [lo, hi, n]);
      else beats.set(beat, [Math.min(b[0], lo), Math.max(b[1], hi), b[2] + n]);
    }
  }
  // Beats every client delivered while recording (the windows of the workers differ a little).
  const full = [...beats.values()].filter((b) => b[2] === per * procs);
  const sched = reports.flatMap((r) => r.sched.map(Math.abs));
  return {
    clients: per * procs,
    procs,
    delivery,
    sched: sched.length > 0 ? stats(sched) : undefined,
    due: stats(reports.flatMap((r) => r.due.map(Math.abs))),
    spread: stats(full.map((b) => b[1] - b[0])),
    scheduled: reports.reduce((n, r) => n + r.scheduled, 0),
    arrival: reports.reduce((n, r) => n + r.arrival, 0),
    synthetic: reports.reduce((n, r) => n + r.synthetic, 0),
    cpu: reports.map((r) => r.cpu),
    clocks: reports.map((r) => r.clock),
  };
}

async function phases(
  url: string,
  timeline: TimelineJson,
  clients: number,
  procs: number,
  seconds: number,
): Promise<PhaseResult[]> {
  const out: PhaseResult[] = [];
  for (const [n, p] of [[1, 1], [clients, procs]]) {
    for (const delivery of ["scheduled", "arrival"]) {
      console.error(`phase: ${n} ${delivery} clients in ${p} processes, ${seconds} s...`);
      out.push(await phaseTopology(url, timeline, n, p, seconds, delivery));
    }
  }
  return out;
}

function phaseRows(rows: PhaseResult[]): string {
  const f = (x: number | undefined) => x === undefined ? "–" : x.toFixed(3);
  return rows.map((r) =>
    `| ${r.clients.toLocaleString("en")} in ${r.procs} | ${r.delivery} | ${f(r.sched?.p50)} / ${
      f(r.sched?.p99)
    } / ${f(r.sched?.max)} | ${f(r.due.p50)} / ${f(r.due.p99)} / ${f(r.due.max)} | ${
      f(r.spread.p50)
    } / ${f(r.spread.p99)} / ${f(r.spread.max)} | ${r.cpu.map((c) => c.toFixed(1)).join(", ")} |`
  ).join("\n");
}

// The scheduled workers' estimates of pulse's clock: offset ± uncertainty, in ms.
function offsets(rows: PhaseResult[]): string {
  const all = rows.flatMap((r) =>
    r.clocks
  ) as ({ offsetMs: number; uncertaintyMs: number } | null)[];
  const known = all.filter((c) => c !== null);
  if (known.length === 0) return "no estimate";
  return known.map((c) => `${c.offsetMs.toFixed(3)} ± ${c.uncertaintyMs.toFixed(3)}`).join(", ");
}

const PHASE_TABLE_HEAD =
  `| Clients in processes | delivery | \\|entry − instant delivered for\\| p50 / p99 / max | \\|entry − pulse's due instant\\| p50 / p99 / max | spread of one beat p50 / p99 / max | CPU per process, % of a core |
|---|---|---|---|---|---|`;

interface ClaimCost {
  awaited: number;
  pipelined: number;
}

/** µs per claim, awaited one at a time and pipelined (all emitted, then awaited). */
async function claimCost(url: string): Promise<{ unsigned: ClaimCost; signed: ClaimCost }> {
  const make = async (signingKey?: CryptoKey) => {
    const c = defaultConfig();
    c.clusterId = CLUSTER;
    c.agentId = "bench-claims";
    c.natsUrl = url;
    c.logger = quiet;
    c.localDegradation = false;
    c.signingKey = signingKey;
    const client = new Client(c);
    await client.start();
    return client;
  };
  const claim = (i: number) => ({
    state: "executing" as const,
    progress: (i % 100) / 100,
    beats_left: 3,
    notes: "processing batch",
  });
  const time = async (client: Client, n: number): Promise<ClaimCost> => {
    for (let i = 0; i < 1000; i++) await client.emitStatusClaim(claim(i));
    await client.bus!.flush();
    let t0 = performance.now();
    for (let i = 0; i < n; i++) await client.emitStatusClaim(claim(i));
    await client.bus!.flush();
    const awaited = ((performance.now() - t0) * 1000) / n;
    t0 = performance.now();
    const pending: Promise<void>[] = [];
    for (let i = 0; i < n; i++) pending.push(client.emitStatusClaim(claim(i)));
    await Promise.all(pending);
    await client.bus!.flush();
    const pipelined = ((performance.now() - t0) * 1000) / n;
    return { awaited, pipelined };
  };
  const plain = await make();
  const unsigned = await time(plain, 20_000);
  await plain.stop();
  const { keyPair } = await generateSigningKeyPair();
  const signer = await make(keyPair.privateKey);
  const signed = await time(signer, 5_000);
  await signer.stop();
  return { unsigned, signed };
}

interface FrameCost {
  /** µs per frame, frames published in bursts of 200 (checks in flight together). */
  burst: number;
  /** µs per frame, each published once the previous one was delivered. */
  serial: number;
}

/**
 * The SDK's cost of a frame, per process, from the bus handing it over to the last client's
 * callback: gate (size, JSON, schema), the tracker, and with `pulseKeys` the Ed25519 check
 * (once per frame for all clients sharing the keyring). In-process (an InMemoryBus), so the
 * network is not in the figure.
 */
async function verifyCost(): Promise<
  { clients: number; off: FrameCost; on: FrameCost }[]
> {
  const pair = await generateSigningKeyPair();
  const key = { privateKey: pair.keyPair.privateKey, publicKey: pair.publicKey, keyId: pair.keyId };
  const keyring = await Keyring.fromJson({
    pulse: [{ key_id: pair.keyId, public_key: pair.publicKey }],
  });
  const cluster = "bench-verify";
  const subject = subjects(cluster).beat;
  const timeline = new Timeline({ originTime: Date.now(), tempoBpm: 60 });
  const enc = new TextEncoder();
  const frames = async (n: number) => {
    const out: { data: Uint8Array; headers: Record<string, string> }[] = [];
    for (let i = 0; i < n; i++) {
      const data = enc.encode(JSON.stringify(await timeline.frame(cluster, i, "0000:0000:0000")));
      out.push({ data, headers: await signMessage(key, "backbeat.beatframe.v1", cluster, data) });
    }
    return out;
  };
  const BURST_FRAMES = 4_000;
  const SERIAL_FRAMES = 1_000;
  const signedBurst = await frames(BURST_FRAMES);
  const signedSerial = await frames(SERIAL_FRAMES);
  const measure = async (count: number, keys: boolean): Promise<FrameCost> => {
    const run = async (
      batch: { data: Uint8Array; headers: Record<string, string> }[],
      step: number,
    ): Promise<number> => {
      const bus = new InMemoryBus({ maxPending: 100_000 });
      const clients: Client[] = [];
      let want = -1;
      let reached: () => void = () => {};
      for (let i = 0; i < count; i++) {
        const c = defaultConfig();
        c.clusterId = cluster;
        c.agentId = `verify-${i}`;
        c.bus = bus;
        c.logger = quiet;
        c.localDegradation = false;
        if (keys) c.pulseKeys = keyring;
        const client = new Client(c);
        if (i === count - 1) {
          client.onBeat((frame) => {
            if (frame.beat_index === want) reached();
          });
        } else client.onBeat(() => {});
        await client.start();
        clients.push(client);
      }
      const t0 = performance.now();
      for (let from = 0; from < batch.length; from += step) {
        const chunk = batch.slice(from, from + step);
        want = from + chunk.length - 1;
        const done = new Promise<void>((r) => reached = r);
        for (const m of chunk) bus.publish(subject, m.data, { headers: m.headers });
        await done;
      }
      const us = ((performance.now() - t0) * 1000) / batch.length;
      for (const c of clients) {
        if (c.health().lastBeat !== batch.length - 1) throw new Error("a frame was not delivered");
        await c.stop();
      }
      await bus.close();
      return us;
    };
    await run(signedBurst.slice(0, 400), 200); // warm-up
    return { burst: await run(signedBurst, 200), serial: await run(signedSerial, 1) };
  };
  const out = [];
  for (const clients of [1, 100]) {
    out.push({ clients, off: await measure(clients, false), on: await measure(clients, true) });
  }
  return out;
}

function verifyRows(rows: Awaited<ReturnType<typeof verifyCost>>): string {
  const f = (x: number) => x.toFixed(1);
  return rows.map((r) =>
    `| ${r.clients} ${r.clients === 1 ? "client" : "clients"} | ${f(r.off.burst)} | ${
      f(r.on.burst)
    } | ${f(r.on.burst - r.off.burst)} | ${f(r.off.serial)} | ${f(r.on.serial)} | ${
      f(r.on.serial - r.off.serial)
    } |`
  ).join("\n");
}

const VERIFY_TABLE_HEAD =
  `| Clients in the process | burst, keys off | burst, keys on | on − off | one at a time, keys off | one at a time, keys on | on − off |
|---|---|---|---|---|---|---|`;

async function coordinator(): Promise<void> {
  const seconds = Number(flag("seconds", "15"));
  const clients = Number(flag("clients", "1000"));
  const procs = Number(flag("procs", "4"));
  const only = flag("only", "");
  const write = !Deno.args.includes("--no-write") && only === "";
  if (only === "verify") {
    console.log(`Frame cost in the SDK, µs per frame per process:\n\n${VERIFY_TABLE_HEAD}`);
    console.log(verifyRows(await verifyCost()));
    return;
  }
  const load = async () =>
    (await Deno.readTextFile("/proc/loadavg").catch(() => "? ? ?")).split(" ")[0];
  const loadBefore = await load();
  await using server = await startNatsServer();
  const bus = await connectNatsBus({ servers: server.url });
  // Pulse's clock, as pulse makes it by default; the same one answers clock requests (pulse's
  // own answers are on their way: until then this responder stands in for them).
  const pulseClock = new SystemClock({ spinMs: 1.5 });
  const pulse = new Pulse({ clusterId: CLUSTER, bus, tempoBpm: TEMPO, clock: pulseClock });
  const responder = answerTimeRequests(bus, CLUSTER, { clock: pulseClock, pulseId: pulse.id });
  if (only === "phase") {
    try {
      await pulse.start();
      const rows = await phases(server.url, pulse.timeline.toJSON(), clients, procs, seconds);
      console.log(
        `Phase alignment at ${TEMPO} BPM, ms:\n\n${PHASE_TABLE_HEAD}\n${phaseRows(rows)}`,
      );
      for (const r of rows) {
        console.log(
          `${r.clients} ${r.delivery}: ${r.scheduled} at the instant, ${r.arrival} on arrival, ${r.synthetic} synthetic`,
        );
      }
      console.log(`estimates of pulse's clock (offset ± uncertainty, ms): ${offsets(rows)}`);
      console.log(`load ${loadBefore} → ${await load()}`);
    } finally {
      responder.unsubscribe();
      await pulse.stop();
      await bus.close();
    }
    return;
  }
  let single, many, claims, phased;
  try {
    await pulse.start();
    console.error(`pulse leading at ${TEMPO} BPM; single client, ${seconds} s...`);
    single = await topology(server.url, 1, 1, seconds);
    console.error(`${clients} clients in ${procs} processes, ${seconds} s...`);
    many = await topology(server.url, clients, procs, seconds);
    phased = await phases(server.url, pulse.timeline.toJSON(), clients, procs, seconds);
    console.error("emitStatusClaim cost...");
    claims = await claimCost(server.url);
  } finally {
    responder.unsubscribe();
    await pulse.stop();
    await bus.close();
  }
  console.error("frame verification cost...");
  const verify = await verifyCost();
  const loadAfter = await load();
  const f = (x: number) => x.toFixed(2);
  const row = (name: string, s: Stats) =>
    `| ${name} | ${s.n.toLocaleString("en")} | ${f(s.min)} | ${f(s.p50)} | ${f(s.p99)} | ${
      f(s.max)
    } |`;
  const ratio1 = single.sdk.p99 / single.raw.p99;
  const ratioN = many.sdk.p99 / many.raw.p99;
  const cpu = (await Deno.readTextFile("/proc/cpuinfo").catch(() => "")).match(
    /model name\s*:\s*(.+)/,
  )?.[1];
  const section = `${HEADING}

Command: \`deno task bench:sdk\` (= \`deno run -A bench/sdk_bench.ts\`), run ${
    new Date().toISOString().slice(0, 10)
  }.

End-to-end beat latency, in ms: pulse's publish instant (\`x-pulse-sent\`) to the entry of the
callback, on a local nats-server with a \`Pulse\` leading at ${TEMPO} BPM, ${seconds} s per topology
after ${WARMUP_S} s of warm-up. The SDK clients share one NATS connection per process (one
subscription; each frame parsed and validated once and fanned out to every client). The raw
baseline is nats.js in the same topology, in its strictest form: one connection and one
subscription per process, the frame parsed once and handed to ${
    Math.ceil(clients / procs)
  } plain callbacks (no
validation, ordering, isolation or health). SDK and raw processes run side by side;
nats-server serves subscribers in subscription order, so half the time the SDK subscribes first
and half the time the baseline does.

| Topology | Samples | min | p50 | p99 | max |
|----------|---------|-----|-----|-----|-----|
${row("1 SDK client", single.sdk)}
${row("1 raw nats.js subscriber", single.raw)}
${row(`${clients} SDK clients, ${procs} processes`, many.sdk)}
${row(`${clients} raw callbacks, ${procs} processes`, many.raw)}

- SDK p99 / raw p99: **${ratio1.toFixed(2)}×** for one client, **${
    ratioN.toFixed(2)
  }×** for ${clients} (goal ≤ 1.2×: ${ratioN <= 1.2 && ratio1 <= 1.2 ? "met" : "not met"}).
- Beats delivered synthetically instead (a frame later than one period + the 50 ms jitter
  tolerance puts a client in degraded mode; the late real frame is then not delivered twice):
  ${single.synthetic} for one client, ${many.synthetic.toLocaleString("en")} for ${clients}.
- Max at ${clients} clients: **${f(many.sdk.max)} ms** (goal ≤ 5 ms: ${
    many.sdk.max <= 5 ? "met" : "not met"
  }; the raw baseline's max in the same run: ${f(many.raw.max)} ms).
- \`emitStatusClaim\` on NATS (fill, validate, serialise, sign, publish; then flushed), µs per
  claim: unsigned **${
    claims.unsigned.awaited.toFixed(1)
  }** awaited one at a time (each claim its own socket write) and **${
    claims.unsigned.pipelined.toFixed(1)
  }** pipelined; signed (Ed25519, WebCrypto) **${
    claims.signed.awaited.toFixed(1)
  }** awaited and **${claims.signed.pipelined.toFixed(1)}** pipelined.

Phase alignment (issue 12), ms: each callback's entry against the beat's instant, on a local
nats-server with the same \`Pulse\` at ${TEMPO} BPM, ${seconds} s per row after ${WARMUP_S} s of
warm-up, each row run on its own (scheduled, then arrival). Scheduled clients call back at pulse's
instants through the SDK's estimate of pulse's clock (the coordinator answers clock requests with
pulse's clock); arrival clients when the frame arrives. "Instant delivered for" is \`info.at\`
(scheduled deliveries only: the scheduler's own precision); "pulse's due instant" is pulse's
timeline read on the worker's own clock (one host, so it holds the estimate's error and the
small difference between processes' clocks, which the estimate measures: ${offsets(phased)});
the spread is, per beat, the latest minus the earliest entry over all clients of all processes.
CPU is utime + stime of each worker process from \`/proc/self/stat\`.

${PHASE_TABLE_HEAD}
${phaseRows(phased)}

Frame cost in the SDK with and without \`pulseKeys\`, µs per frame per process: from an
in-process bus handing the frame over to the last client's callback (gate, tracker, and with keys
the Ed25519 check, once per frame for all clients sharing the keyring), frames published in bursts
of 200 (checks in flight together) and one at a time (each once the previous one was delivered).
A verified frame skips the tracker's plausibility check (a few µs per client), so with many
clients keys on can cost less than keys off.

${VERIFY_TABLE_HEAD}
${verifyRows(verify)}

Load average (1 min) ${loadBefore} before the run and ${loadAfter} after it; on a shared machine
other work inflates the tails of both columns alike.

Environment: ${Deno.build.target}, Deno ${Deno.version.deno}, ${navigator.hardwareConcurrency} CPUs (${
    cpu ?? "unknown CPU"
  }).
`;
  console.log(section);
  if (write) {
    const path = `${ROOT}bench/RESULTS.md`;
    let text = await Deno.readTextFile(path).catch(() => "# Benchmark results\n");
    const start = text.indexOf(`\n${HEADING}\n`);
    if (start === -1) text = `${text.trimEnd()}\n\n${section}`;
    else {
      const next = text.indexOf("\n## ", start + HEADING.length + 1);
      text = `${text.slice(0, start + 1)}${section}${next === -1 ? "" : text.slice(next)}`;
    }
    await Deno.writeTextFile(path, text);
    // Keep the file as `deno fmt --check` wants it (tables aligned, prose wrapped).
    await new Deno.Command(Deno.execPath(), { args: ["fmt", "-q", path], stdout: "null" }).output();
    console.error(`updated ${path}`);
  }
}

const kind = flag("worker", "");
if (kind === "phase") await phaseWorker();
else if (kind) await worker(kind);
else await coordinator();

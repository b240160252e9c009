// `backbeat load`: N SDK agents spread over P worker processes against a running pulse and
// reverb. It watches the beat and bar subjects itself, so the summary puts what the agents saw
// (beats, claims, beat latency) next to what reverb reported for the same bars.

import { type BarReport, subjects } from "../core/mod.ts";
import { redactUrl } from "../nats/mod.ts";
import { validateMessageString } from "../schemas/mod.ts";
import { type EnvVars, type HistogramSnapshot, quantile } from "../service/mod.ts";
import {
  BeatWatch,
  BUS_HELP,
  BUS_SPECS,
  clusterFlag,
  connectCli,
  JSON_SPEC,
  natsOptionsOf,
  noExtraArguments,
  numberFlag,
  parseCommandFlags,
  stringFlag,
  urlFlag,
  usageLines,
} from "./_common.ts";
import { editKeyringFile } from "./_files.ts";
import { issuesText } from "./_format.ts";
import {
  type CommandContext,
  errorMessage,
  EXIT_FAILURE,
  EXIT_OK,
  httpJson,
  num,
  printable,
  sleep,
} from "./_io.ts";
import {
  type AgentKey,
  type FromWorker,
  LATENCY_BOUNDS,
  type LatencyCounts,
  lines,
  mergeLatency,
  type ToWorker,
  type WorkerConfig,
  type WorkerStats,
} from "./_load_protocol.ts";
import { controlAuthOf, type ControlAuthOptions, parseTempo, sendTempoChange } from "./_tempo.ts";
import type { NatsBusOptions } from "../nats/mod.ts";

const SPECS = [
  ...BUS_SPECS,
  JSON_SPEC,
  { name: "agents" },
  { name: "duration" },
  { name: "tempo" },
  { name: "sign", type: "boolean" },
  { name: "keyring", env: "BACKBEAT_KEYRING" },
  { name: "processes" },
  { name: "reverb", env: "BACKBEAT_REVERB_URL" },
  { name: "admin-token", env: "BACKBEAT_ADMIN_TOKEN" },
  { name: "admin-key", env: "BACKBEAT_ADMIN_KEY" },
  { name: "agent-prefix" },
  { name: "delivery" },
  { name: "warmup" },
] as const;

/** Most agents one run starts. */
export const MAX_LOAD_AGENTS = 100_000;
/** Most worker processes. */
export const MAX_LOAD_PROCESSES = 64;
/** The hidden subcommand a compiled binary runs its load workers with. */
export const LOAD_WORKER_COMMAND = "__load-worker";

/** `backbeat load --help`. */
export const LOAD_USAGE: string =
  `backbeat load: load-test a running pulse and reverb with SDK agents

${usageLines("load --agents N --duration S [--tempo BPM] [--sign --keyring FILE] [flags]")}
Starts N SDK clients (agents <prefix>-1 ... <prefix>-N) in P worker processes on NATS. Each
agent claims on every beat it gets (planning, executing, reviewing by phase), synthetic beats
of the SDK's degraded mode included. While it runs, a progress
line on stderr (beats, claims, latency so far); then a summary: beats received, claims sent, beat
latency p50/p99/max (callback entry minus the frame's x-pulse-sent), and, for every full bar of
the run, what reverb reported on backbeat.<cluster>.bar (agents_reporting, on-time reviews,
issues) next to the claims the agents sent in it.

It does not start pulse or reverb: both must run on the same NATS server and cluster.

Flags:
  --agents N          agents to run, 1 to ${MAX_LOAD_AGENTS}
  --duration S        seconds measured, once every agent is up and warmed up
  --warmup S          seconds the agents run before the measurement (default 2): fresh
                      processes are slow at first (compiling, the first signatures, the SDK's
                      clock exchange), which is not what a load test measures
  --processes P       worker processes (default min(4, ceil(N / 250)))
  --tempo BPM         run at this tempo: when pulse beats another, change it first (an
                      authenticated control message: --admin-token or --admin-key) and wait
                      for it to land; the previous tempo is restored at the end
  --sign              every agent signs its claims with a key of its own, made for the run
                      (private keys never leave the worker that made them); needs --keyring
  --keyring FILE      reverb's keyring file [BACKBEAT_KEYRING]: the agents' public keys are
                      written to it before they start (replacing older keys of the same agent
                      ids) and removed at the end. Reverb must watch this file (reverb
                      --keyring FILE reloads it on change); with --reverb the run waits until
                      reverb holds the keys, otherwise it waits one second
  --reverb URL        reverb's HTTP address [BACKBEAT_REVERB_URL]: wait for its keyring reload,
                      and add its accepted and rejected claim counts to the summary
  --agent-prefix P    agent ids are P-1 ... P-N (default load)
  --delivery MODE     the SDK's beat delivery: arrival (default: callbacks run when pulse's
                      frame arrives, so the latency measured is pulse's send to the callback)
                      or scheduled (callbacks run at the beat's instant on pulse's timeline,
                      usually before the frame arrives: such "predicted" beats have no
                      x-pulse-sent, and "lateness" shows how late callbacks ran for the instant)
  --admin-token TOKEN for --tempo [BACKBEAT_ADMIN_TOKEN]
  --admin-key FILE    for --tempo [BACKBEAT_ADMIN_KEY]
  --json              the summary as one JSON object on stdout
${BUS_HELP}  -h, --help          show this help

Ctrl-C stops the run early and prints the summary of what ran. Exit status 1 when a worker
failed, no beat arrived, or reverb reported none of the full bars.
`;

/** What `load` was asked to do. */
export interface LoadOptions {
  /** Agents. */
  readonly agents: number;
  /** Measured run time once every agent is up and warmed up, ms. */
  readonly durationMs: number;
  /** Warm-up before the measurement, ms. */
  readonly warmupMs: number;
  /** Worker processes. */
  readonly processes: number;
  /** A tempo to run at. */
  readonly tempo: number | undefined;
  /** Signed claims. */
  readonly sign: boolean;
  /** Reverb's keyring file (absolute) and as given. */
  readonly keyring: { readonly file: string; readonly shown: string } | undefined;
  /** Reverb's HTTP URL. */
  readonly reverb: string | undefined;
  /** Proof for a tempo change. */
  readonly auth: ControlAuthOptions;
  /** Agent id prefix. */
  readonly prefix: string;
  /** The SDK's beat delivery. */
  readonly delivery: "arrival" | "scheduled";
  /** The cluster. */
  readonly cluster: string;
  /** NATS options. */
  readonly nats: NatsBusOptions;
  /** JSON summary. */
  readonly json: boolean;
}

/**
 * Parses `load`'s command line.
 *
 * @param args The arguments after `load`.
 * @param env The environment.
 * @param path Resolves user paths.
 * @returns The options, or `help`.
 * @throws {TypeError} On a bad or missing flag, or --sign without --keyring.
 * @throws {RangeError} On a number out of range.
 *
 * @example 200 agents for 10 s
 * ```ts ignore
 * const o = parseLoad(["--agents", "200", "--duration", "10"], {}, ctx.path);
 * if (o !== "help") console.log(o.processes); // 1
 * ```
 */
export function parseLoad(
  args: readonly string[],
  env: EnvVars,
  path: (p: string) => string,
): LoadOptions | "help" {
  const flags = parseCommandFlags(args, SPECS, env);
  if (flags.values.help) return "help";
  noExtraArguments(flags);
  const agents = numberFlag(flags, "agents", { min: 1, max: MAX_LOAD_AGENTS, integer: true });
  if (agents === undefined) throw new TypeError("Missing --agents N");
  const seconds = numberFlag(flags, "duration", { min: 0.1, max: 86_400 });
  if (seconds === undefined) throw new TypeError("Missing --duration S");
  const processes = numberFlag(flags, "processes", {
    min: 1,
    max: Math.min(MAX_LOAD_PROCESSES, agents),
    integer: true,
  }) ?? Math.min(4, Math.ceil(agents / 250));
  const tempoText = stringFlag(flags, "tempo");
  const sign = flags.values.sign === true;
  const keyringText = stringFlag(flags, "keyring");
  if (sign && keyringText === undefined) {
    throw new TypeError(
      "--sign needs --keyring FILE: reverb must know the agents' new keys (its --keyring file)",
    );
  }
  if (!sign && keyringText !== undefined && flags.sources.keyring === "--keyring") {
    throw new TypeError("--keyring is where --sign writes the agents' keys: give --sign too");
  }
  const prefix = stringFlag(flags, "agent-prefix") ?? "load";
  if (!/^[\w.:-]{1,100}$/.test(prefix)) {
    throw new TypeError(
      `Invalid --agent-prefix ${JSON.stringify(printable(prefix, 60))}: letters, digits, _ . : -`,
    );
  }
  const delivery = stringFlag(flags, "delivery") ?? "arrival";
  if (delivery !== "arrival" && delivery !== "scheduled") {
    throw new TypeError(
      `Invalid --delivery ${
        JSON.stringify(printable(delivery, 40))
      }: expected arrival or scheduled`,
    );
  }
  const warmup = numberFlag(flags, "warmup", { min: 0, max: 3_600 }) ?? 2;
  return {
    delivery,
    agents,
    durationMs: seconds * 1000,
    warmupMs: warmup * 1000,
    processes,
    tempo: tempoText === undefined ? undefined : parseTempo(tempoText, "--tempo"),
    sign,
    keyring: sign ? { file: path(keyringText!), shown: keyringText! } : undefined,
    reverb: urlFlag(flags, "reverb"),
    auth: controlAuthOf(flags, path),
    prefix,
    cluster: clusterFlag(flags),
    nats: natsOptionsOf(flags, path),
    json: flags.values.json === true,
  };
}

/** How to start a worker: the `deno run` line, or the compiled binary's hidden subcommand. */
function workerCommand(index: number): { args: string[]; cwd?: string } {
  const here = new URL("./load_worker.ts", import.meta.url);
  // A compiled binary cannot `deno run` a file: it runs itself with the hidden subcommand.
  if (here.protocol === "file:" && here.pathname.includes("/deno-compile-")) {
    return { args: [LOAD_WORKER_COMMAND, "--worker", String(index)] };
  }
  const perms = ["--allow-net", "--allow-read", "--allow-env", "--allow-sys", "--no-prompt"];
  if (here.protocol === "file:") {
    const config = new URL("../deno.json", import.meta.url);
    const hasConfig = (() => {
      try {
        return Deno.statSync(config).isFile;
      } catch {
        return false;
      }
    })();
    const root = decodeURIComponent(new URL("../", import.meta.url).pathname);
    return {
      args: [
        "run",
        ...(hasConfig ? ["--frozen", "--config", decodeURIComponent(config.pathname)] : []),
        ...perms,
        decodeURIComponent(here.pathname),
        "--worker",
        String(index),
      ],
      cwd: root,
    };
  }
  return { args: ["run", ...perms, here.href, "--worker", String(index)] };
}

/** One worker process and what it said. */
class WorkerProc {
  readonly index: number;
  readonly agents: readonly string[];
  readonly #child: Deno.ChildProcess;
  readonly #stdin: WritableStreamDefaultWriter<Uint8Array>;
  readonly #reading: Promise<void>;
  readonly status: Promise<Deno.CommandStatus>;
  keys: readonly AgentKey[] | undefined;
  ready = false;
  measuring = false;
  progress: WorkerStats | undefined;
  done: WorkerStats | undefined;
  error: string | undefined;
  exited = false;

  constructor(index: number, agents: readonly string[], ctx: CommandContext) {
    this.index = index;
    this.agents = agents;
    const { args, cwd } = workerCommand(index);
    let child: Deno.ChildProcess;
    try {
      child = new Deno.Command(Deno.execPath(), {
        args,
        cwd,
        stdin: "piped",
        stdout: "piped",
        stderr: "piped",
      }).spawn();
    } catch (error) {
      if (
        error instanceof Deno.errors.NotCapable || error instanceof Deno.errors.PermissionDenied
      ) {
        throw new Error("load starts worker processes: run it with --allow-run");
      }
      throw error;
    }
    this.#child = child;
    this.#stdin = child.stdin.getWriter();
    this.status = this.#child.status.then((s) => {
      this.exited = true;
      if (!s.success && this.done === undefined) {
        this.error ??= `worker ${index} exited with ${s.code}`;
      }
      return s;
    });
    let shown = 0;
    const relay = (async () => {
      for await (const line of lines(child.stderr)) {
        // A worker's diagnostics, bounded: a failing agent must not flood the terminal.
        if (line.trim() && shown++ < 10) await ctx.warn(`worker ${index}: ${printable(line, 300)}`);
      }
    })();
    const read = (async () => {
      for await (const line of lines(child.stdout)) {
        let m: FromWorker;
        try {
          m = JSON.parse(line);
        } catch {
          continue;
        }
        if (m.type === "keys") this.keys = m.keys;
        else if (m.type === "ready") this.ready = true;
        else if (m.type === "measuring") this.measuring = true;
        else if (m.type === "progress") this.progress = m.stats;
        else if (m.type === "done") this.done = m.stats;
        else if (m.type === "error") this.error = `worker ${index}: ${m.message}`;
      }
    })();
    this.#reading = Promise.all([relay, read]).then(() => {}, () => {});
  }

  get failed(): boolean {
    return this.error !== undefined || (this.exited && this.done === undefined);
  }

  get stats(): WorkerStats | undefined {
    return this.done ?? this.progress;
  }

  async send(m: ToWorker): Promise<void> {
    try {
      await this.#stdin.write(new TextEncoder().encode(`${JSON.stringify(m)}\n`));
    } catch { /* it exited; its status says why */ }
  }

  async close(): Promise<void> {
    await this.#stdin.close().catch(() => {});
    const timer = setTimeout(() => {
      try {
        this.#child.kill("SIGKILL");
      } catch { /* gone */ }
    }, 5_000);
    await this.status;
    clearTimeout(timer);
    await this.#reading;
  }
}

async function waitFor(
  cond: () => boolean,
  timeoutMs: number,
  signal: AbortSignal,
): Promise<boolean> {
  const end = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() >= end || signal.aborted) return cond();
    await sleep(20, signal);
  }
  return true;
}

function snapshotOf(l: LatencyCounts): HistogramSnapshot {
  return {
    bounds: LATENCY_BOUNDS,
    counts: l.counts,
    count: l.count,
    sum: 0,
    min: l.min,
    max: l.max,
  };
}

function latencyMs(l: LatencyCounts): { samples: number; p50: number; p99: number; max: number } {
  const s = snapshotOf(l);
  const ms = (v: number) => Number((v * 1000).toFixed(3));
  return {
    samples: l.count,
    p50: ms(quantile(s, 0.5)),
    p99: ms(quantile(s, 0.99)),
    max: ms(l.max),
  };
}

function total(workers: readonly WorkerProc[]): WorkerStats {
  const all = workers.map((w) => w.stats).filter((s): s is WorkerStats => s !== undefined);
  const perWindow: Record<string, number> = {};
  for (const s of all) {
    for (const [w, n] of Object.entries(s.perWindow ?? {})) perWindow[w] = (perWindow[w] ?? 0) + n;
  }
  return {
    beats: all.reduce((n, s) => n + s.beats, 0),
    synthetic: all.reduce((n, s) => n + s.synthetic, 0),
    claims: all.reduce((n, s) => n + s.claims, 0),
    claimErrors: all.reduce((n, s) => n + s.claimErrors, 0),
    missed: all.reduce((n, s) => n + s.missed, 0),
    predicted: all.reduce((n, s) => n + s.predicted, 0),
    latency: mergeLatency(all.map((s) => s.latency)),
    lateness: mergeLatency(all.map((s) => s.lateness)),
    perWindow,
  };
}

/** A bar of the run, and reverb's report of it. */
export interface LoadBar {
  /** The window id. */
  readonly window_id: string;
  /** Its first beat. */
  readonly from_beat: number;
  /** Its last beat. */
  readonly to_beat: number;
  /** Claims the agents sent in it. */
  readonly claims_sent: number;
  /** What reverb reported, `null` when no report came. */
  readonly report: {
    readonly agents_reporting: number;
    readonly on_time_reviews: number;
    readonly issues: string;
  } | null;
}

/** The summary of a run (`--json` prints it). */
export interface LoadSummary {
  /** The cluster. */
  readonly cluster: string;
  /** Agents run. */
  readonly agents: number;
  /** Worker processes. */
  readonly processes: number;
  /** Whether claims were signed. */
  readonly signed: boolean;
  /** Seconds the agents ran. */
  readonly duration_s: number;
  /** The tempo of the last beat seen. */
  readonly tempo_bpm: number | null;
  /** Beats. */
  readonly beats: {
    readonly received: number;
    readonly frames: number;
    readonly missed: number;
    readonly synthetic: number;
    readonly predicted: number;
  };
  /** Claims. */
  readonly claims: { readonly sent: number; readonly failed: number };
  /** The SDK's beat delivery. */
  readonly delivery: string;
  /** Beat latency, callback entry minus `x-pulse-sent`, ms (beats delivered with pulse's frame). */
  readonly latency_ms: { samples: number; p50: number; p99: number; max: number };
  /** Callback entry minus the instant the SDK delivered the beat for, ms (every beat). */
  readonly lateness_ms: { samples: number; p50: number; p99: number; max: number };
  /** Every full bar of the run. */
  readonly bars: readonly LoadBar[];
  /** What reverb said. */
  readonly reverb: {
    readonly full_bars: number;
    readonly reported: number;
    readonly agents_reporting_min: number | null;
    readonly agents_reporting_max: number | null;
    readonly all_agents_reported: boolean;
    readonly claims_accepted: number | null;
    readonly claims_rejected: Readonly<Record<string, number>> | null;
  };
  /** Problems. */
  readonly problems: readonly string[];
}

interface ReverbCounts {
  readonly accepted: number;
  readonly rejected: Record<string, number>;
  readonly keys: number;
}

async function reverbCounts(url: string, signal: AbortSignal): Promise<ReverbCounts | undefined> {
  try {
    const res = await httpJson(`${url}/api/v1/status`, {}, 3_000, signal);
    const s = res.json as {
      claims?: { accepted?: unknown; rejected?: unknown };
      keyring_keys?: unknown;
    };
    if (res.status !== 200 || typeof s?.claims?.accepted !== "number") return undefined;
    const rejected: Record<string, number> = {};
    for (const [k, v] of Object.entries(s.claims.rejected ?? {})) {
      if (typeof v === "number") rejected[k] = v;
    }
    return {
      accepted: s.claims.accepted,
      rejected,
      keys: typeof s.keyring_keys === "number" ? s.keyring_keys : -1,
    };
  } catch {
    return undefined;
  }
}

/**
 * Runs the load test and prints its summary.
 *
 * @param o The options.
 * @param ctx The command context.
 * @returns 0, or 1 when a worker failed, no beat came or reverb reported no full bar.
 * @throws {Error} When NATS, the keyring or the workers cannot be set up.
 *
 * @example Run it
 * ```ts ignore
 * const o = parseLoad(["--agents", "200", "--duration", "10"], {}, ctx.path);
 * if (o !== "help") Deno.exit(await runLoad(o, ctx));
 * ```
 */
export async function runLoad(o: LoadOptions, ctx: CommandContext): Promise<number> {
  const signal = ctx.io.signal;
  // Clean-up runs even after Ctrl-C: it gets its own signal and bounded waits.
  const cleanup = new AbortController().signal;
  const subject = subjects(o.cluster);
  const bus = await connectCli(o.nats, "load");
  const watch = new BeatWatch(bus, o.cluster);
  const reports = new Map<string, BarReport>();
  const barSub = bus.subscribe(subject.bar, (m) => {
    const text = new TextDecoder().decode(m.data);
    const r = validateMessageString(text);
    if (!r.valid || r.type !== "backbeat.barreport.v1") return;
    const report = JSON.parse(text) as BarReport;
    // A JetStream publish reaches core subscribers too, duplicates included: keep the first.
    if (!reports.has(report.window_id)) reports.set(report.window_id, report);
  });
  const downbeats: { window: string; beat: number; at: number }[] = [];
  const frames: number[] = [];
  watch.listen((b) => {
    frames.push(b.at);
    if (b.frame.downbeat) {
      downbeats.push({ window: b.frame.window_id, beat: b.frame.beat_index, at: b.at });
    }
  });
  const width = String(o.agents).length;
  const ids = Array.from(
    { length: o.agents },
    (_, i) => `${o.prefix}-${String(i + 1).padStart(width, "0")}`,
  );
  const per = Math.ceil(o.agents / o.processes);
  const workers: WorkerProc[] = [];
  const problems: string[] = [];
  let writtenKeys: readonly AgentKey[] = [];
  let restoreTempo: number | undefined;
  let t0 = 0;
  let tStop = 0;
  let before: ReverbCounts | undefined;
  let fatal: unknown;
  // Progress and notes go to stderr: with --json, stdout holds the summary alone.
  const say = (text: string) => ctx.err.write(`${text}\n`);
  try {
    await bus.flush();
    for (let i = 0; i < o.processes; i++) {
      const agents = ids.slice(i * per, (i + 1) * per);
      if (agents.length === 0) break;
      const w = new WorkerProc(i + 1, agents, ctx);
      workers.push(w);
      const config: WorkerConfig = {
        type: "config",
        worker: i + 1,
        cluster: o.cluster,
        nats: o.nats,
        agents,
        sign: o.sign,
        delivery: o.delivery,
      };
      await w.send(config);
    }
    const failed = () => workers.find((w) => w.failed);
    const keysIn = await waitFor(() => workers.every((w) => w.keys || w.failed), 120_000, signal);
    if (failed()) throw new Error(failed()!.error ?? "a worker failed");
    if (!keysIn) {
      throw new Error(
        signal.aborted ? "interrupted" : "the workers did not make their keys in time",
      );
    }

    if (o.sign && o.keyring) {
      const keys = workers.flatMap((w) => w.keys ?? []);
      const json = await editKeyringFile(o.keyring.file, o.keyring.shown, true, (json) => {
        for (const k of keys) json[k.agent] = [{ key_id: k.key_id, public_key: k.public_key }];
        return true;
      }, signal);
      writtenKeys = keys;
      const expected = Object.values(json).reduce((n, l) => n + l.length, 0);
      await say(
        `load: wrote ${keys.length} agent keys to ${o.keyring.shown}; waiting for reverb to reload it`,
      );
      // Reverb reloads the file on change after a short debounce.
      await sleep(300, signal);
      if (o.reverb !== undefined) {
        let seen = -1;
        const end = Date.now() + 10_000;
        while (!signal.aborted && Date.now() < end) {
          seen = (await reverbCounts(o.reverb, signal))?.keys ?? -1;
          if (seen === expected) break;
          await sleep(100, signal);
        }
        if (seen !== expected) {
          await ctx.warn(
            `reverb at ${
              redactUrl(o.reverb)
            } holds ${seen} keys, ${o.keyring.shown} ${expected}: ` +
              `is reverb watching that file (--keyring)? Claims of unknown keys are rejected`,
          );
        }
      } else {
        await sleep(1_000, signal);
      }
    }

    if (o.tempo !== undefined && !signal.aborted) {
      const first = watch.last ?? await watch.next(() => true, 10_000, signal);
      if (first === undefined) {
        throw new Error(`no beat on ${subject.beat}: is pulse running for cluster ${o.cluster}?`);
      }
      if (first.frame.tempo_bpm !== o.tempo) {
        await say(
          `load: changing the tempo from ${num(first.frame.tempo_bpm)} to ${num(o.tempo)} bpm`,
        );
        const r = await sendTempoChange({
          bus,
          cluster: o.cluster,
          bpm: o.tempo,
          auth: o.auth,
          wait: true,
          timeoutMs: undefined,
          signal,
        });
        restoreTempo = first.frame.tempo_bpm;
        if (r.landed_beat === null && !r.already) {
          throw new Error(
            `the tempo change did not land in time (announced on beat ${r.announced_beat})`,
          );
        }
      }
    }

    if (o.reverb !== undefined) before = await reverbCounts(o.reverb, signal);
    for (const w of workers) await w.send({ type: "start" });
    const up = await waitFor(() => workers.every((w) => w.ready || w.failed), 120_000, signal);
    if (failed()) throw new Error(failed()!.error ?? "a worker failed");
    if (!up) throw new Error(signal.aborted ? "interrupted" : "the agents did not start in time");
    await say(
      `load: ${o.agents} agents up in ${workers.length} worker process${
        workers.length === 1 ? "" : "es"
      }${o.warmupMs > 0 ? `; warming up for ${num(o.warmupMs / 1000, 1)} s` : ""}`,
    );
    await sleep(o.warmupMs, signal);
    for (const w of workers) await w.send({ type: "measure" });
    const measuring = await waitFor(
      () => workers.every((w) => w.measuring || w.failed),
      30_000,
      signal,
    );
    if (failed()) throw new Error(failed()!.error ?? "a worker failed");
    if (!measuring) throw new Error(signal.aborted ? "interrupted" : "the workers did not answer");
    t0 = Date.now();
    await say(`load: measuring for ${num(o.durationMs / 1000, 1)} s`);
    const end = t0 + o.durationMs;
    while (!signal.aborted && Date.now() < end && !failed()) {
      await sleep(Math.min(1_000, end - Date.now()), signal);
      await progressLine(ctx, workers, t0, o.durationMs, reports, downbeats);
    }
    tStop = Date.now();
    if (ctx.io.stderrIsTerminal) await ctx.err.write("\n");
    if (failed()) problems.push(failed()!.error ?? "a worker failed");
    for (const w of workers) await w.send({ type: "stop" });
    await waitFor(() => workers.every((w) => w.done !== undefined || w.failed), 30_000, cleanup);
  } catch (error) {
    // Thrown after the clean-up below: keys written and a tempo changed must not stay behind.
    fatal = error;
  } finally {
    await Promise.all(workers.map((w) => w.close()));
    for (const w of workers) if (w.error && !problems.includes(w.error)) problems.push(w.error);
  }

  // The full bars: a downbeat after every agent was up, and the next one before they stopped.
  const full: { window: string; from: number; to: number }[] = [];
  if (t0 > 0) {
    for (let i = 0; i + 1 < downbeats.length; i++) {
      const d = downbeats[i];
      const next = downbeats[i + 1];
      if (d.at >= t0 && next.at <= tStop) {
        full.push({ window: d.window, from: d.beat, to: next.beat - 1 });
      }
    }
  }
  // Reports come a grace period after a bar ends.
  const beatMs = watch.last ? 60_000 / watch.last.frame.tempo_bpm : 1_000;
  if (!signal.aborted && fatal === undefined) {
    await waitFor(
      () => full.every((b) => reports.has(b.window)),
      Math.min(15_000, 3_000 + 2 * beatMs),
      cleanup,
    );
  }
  const after = o.reverb !== undefined && before !== undefined && fatal === undefined
    ? await reverbCounts(o.reverb, cleanup)
    : undefined;
  barSub.unsubscribe();
  watch.close();

  if (writtenKeys.length > 0 && o.keyring) {
    try {
      const ours = new Map(writtenKeys.map((k) => [k.agent, k.key_id]));
      await editKeyringFile(o.keyring.file, o.keyring.shown, false, (json) => {
        let changed = false;
        for (const [agent, keyId] of ours) {
          const keys = json[agent];
          if (!keys) continue;
          const keep = keys.filter((k) => k.key_id !== keyId);
          if (keep.length === keys.length) continue;
          changed = true;
          if (keep.length === 0) delete json[agent];
          else json[agent] = keep;
        }
        return changed;
      }, cleanup);
      await say(`load: removed the ${writtenKeys.length} agent keys from ${o.keyring.shown}`);
    } catch (error) {
      problems.push(
        `cannot remove the agents' keys from ${o.keyring.shown}: ${errorMessage(error)}`,
      );
    }
  }
  if (restoreTempo !== undefined) {
    try {
      await sendTempoChange({
        bus,
        cluster: o.cluster,
        bpm: restoreTempo,
        auth: o.auth,
        wait: false,
        timeoutMs: undefined,
        signal: cleanup,
      });
      await say(`load: asked pulse to go back to ${num(restoreTempo)} bpm`);
    } catch (error) {
      problems.push(`cannot restore the tempo: ${errorMessage(error)}`);
    }
  }
  const lastTempo = watch.last?.frame.tempo_bpm ?? null;
  await bus.close();
  if (fatal !== undefined) {
    for (const p of problems) await ctx.warn(p);
    throw fatal;
  }

  const t = total(workers);
  const bars: LoadBar[] = full.map((b) => {
    const r = reports.get(b.window);
    return {
      window_id: b.window,
      from_beat: b.from,
      to_beat: b.to,
      claims_sent: t.perWindow?.[b.window] ?? 0,
      report: r
        ? {
          agents_reporting: r.agents_reporting,
          on_time_reviews: r.on_time_reviews,
          issues: issuesText(r),
        }
        : null,
    };
  });
  const reported = bars.filter((b) => b.report !== null);
  const agentsReporting = reported.map((b) => b.report!.agents_reporting);
  const delta = (a: ReverbCounts, b: ReverbCounts) => {
    const out: Record<string, number> = {};
    for (const [k, v] of Object.entries(b.rejected)) {
      if (v - (a.rejected[k] ?? 0) > 0) out[k] = v - (a.rejected[k] ?? 0);
    }
    return out;
  };
  const frameCount = frames.filter((at) => at >= t0 && at <= tStop).length;
  if (t.beats === 0) {
    problems.push(`no beat reached the agents: is pulse running for cluster ${o.cluster}?`);
  }
  if (full.length > 0 && reported.length === 0) {
    problems.push(
      `reverb reported none of the ${full.length} full bars: is reverb running for cluster ${o.cluster}?`,
    );
  } else if (reported.length < full.length) {
    problems.push(`reverb reported ${reported.length} of the ${full.length} full bars`);
  }
  if (t0 > 0 && full.length === 0 && !signal.aborted) {
    problems.push("the run held no full bar: give a longer --duration");
  }
  const summary: LoadSummary = {
    cluster: o.cluster,
    agents: o.agents,
    processes: workers.length,
    signed: o.sign,
    duration_s: t0 > 0 ? Number(((tStop - t0) / 1000).toFixed(3)) : 0,
    tempo_bpm: lastTempo,
    beats: {
      received: t.beats,
      frames: frameCount,
      missed: t.missed,
      synthetic: t.synthetic,
      predicted: t.predicted,
    },
    claims: { sent: t.claims, failed: t.claimErrors },
    delivery: o.delivery,
    latency_ms: latencyMs(t.latency),
    lateness_ms: latencyMs(t.lateness),
    bars,
    reverb: {
      full_bars: full.length,
      reported: reported.length,
      agents_reporting_min: agentsReporting.length ? Math.min(...agentsReporting) : null,
      agents_reporting_max: agentsReporting.length ? Math.max(...agentsReporting) : null,
      all_agents_reported: reported.length > 0 && reported.length === full.length &&
        agentsReporting.every((n) => n >= o.agents),
      claims_accepted: before && after ? after.accepted - before.accepted : null,
      claims_rejected: before && after ? delta(before, after) : null,
    },
    problems,
  };
  await ctx.out.write(o.json ? `${JSON.stringify(summary)}\n` : summaryText(summary));
  for (const p of problems) await ctx.warn(p);
  const bad = workers.some((w) => w.error !== undefined) || t.beats === 0 ||
    (full.length > 0 && reported.length === 0);
  return bad ? EXIT_FAILURE : EXIT_OK;
}

async function progressLine(
  ctx: CommandContext,
  workers: readonly WorkerProc[],
  t0: number,
  durationMs: number,
  reports: ReadonlyMap<string, BarReport>,
  downbeats: readonly { window: string; at: number }[],
): Promise<void> {
  const t = total(workers);
  const l = latencyMs(t.latency);
  const bars = downbeats.filter((d) => d.at >= t0 && reports.has(d.window)).length;
  const line = `load ${num((Date.now() - t0) / 1000, 1)}/${num(durationMs / 1000, 1)} s  ` +
    `beats ${t.beats}  claims ${t.claims}${t.claimErrors ? ` (${t.claimErrors} failed)` : ""}  ` +
    `latency p50 ${num(l.p50, 2)} p99 ${num(l.p99, 2)} max ${
      num(l.max, 2)
    } ms  bars reported ${bars}`;
  // On a terminal the line rewrites itself; in a log, one line a second.
  await ctx.err.write(ctx.io.stderrIsTerminal ? `\r${line}\x1b[K` : `${line}\n`);
}

function summaryText(s: LoadSummary): string {
  const out: string[] = [];
  out.push(
    `load: ${s.agents} agents in ${s.processes} worker process${
      s.processes === 1 ? "" : "es"
    } on cluster ${s.cluster}, ` +
      `${num(s.duration_s, 1)} s${
        s.tempo_bpm !== null ? ` at ${num(s.tempo_bpm)} bpm` : ""
      }, claims ${s.signed ? "signed" : "unsigned"}`,
  );
  out.push(
    `beats      ${s.beats.received} received (${s.beats.frames} frames x ${s.agents} agents = ${
      s.beats.frames * s.agents
    }); ` +
      `missed ${s.beats.missed}, synthetic ${s.beats.synthetic}`,
  );
  out.push(`claims     ${s.claims.sent} sent, ${s.claims.failed} failed`);
  const l = s.latency_ms;
  out.push(
    `latency    p50 ${num(l.p50, 3)} ms  p99 ${num(l.p99, 3)} ms  max ${num(l.max, 3)} ms  ` +
      `(callback entry - x-pulse-sent, ${l.samples} beats, ${s.delivery} delivery)`,
  );
  if (s.delivery === "scheduled") {
    const d = s.lateness_ms;
    out.push(
      `lateness   p50 ${num(d.p50, 3)} ms  p99 ${num(d.p99, 3)} ms  max ${num(d.max, 3)} ms  ` +
        `(callback entry - the beat's instant; ${s.beats.predicted} beats predicted before pulse's frame)`,
    );
  }
  const r = s.reverb;
  const agents = r.agents_reporting_min === null
    ? "no report"
    : r.agents_reporting_min === r.agents_reporting_max
    ? `agents_reporting ${r.agents_reporting_min} in every reported bar`
    : `agents_reporting ${r.agents_reporting_min} to ${r.agents_reporting_max}`;
  out.push(
    `reverb     ${r.reported} of ${r.full_bars} full bars reported; ${agents} (${s.agents} agents ran: ${
      r.all_agents_reported ? "all reported" : "NOT all reported"
    })`,
  );
  if (r.claims_accepted !== null) {
    const rej = Object.entries(r.claims_rejected ?? {}).map(([k, n]) => `${k} ${n}`).join(", ");
    out.push(
      `           accepted ${r.claims_accepted} claims during the run (all agents); rejected ${
        rej || "none"
      }`,
    );
  }
  if (s.bars.length > 0) {
    out.push(
      `bars       window    beats              claims sent  agents reporting  on-time reviews  issues`,
    );
    const shown = s.bars.length > 24
      ? [...s.bars.slice(0, 12), undefined, ...s.bars.slice(-12)]
      : s.bars;
    for (const b of shown) {
      if (b === undefined) {
        out.push(`           … ${s.bars.length - 24} more`);
        continue;
      }
      out.push(
        `           ${b.window_id.slice(0, 8)}  ${`${b.from_beat}-${b.to_beat}`.padEnd(17)}  ${
          String(b.claims_sent).padStart(11)
        }  ` +
          (b.report
            ? `${String(b.report.agents_reporting).padStart(16)}  ${
              String(b.report.on_time_reviews).padStart(15)
            }  ${b.report.issues}`
            : "       no report"),
      );
    }
  }
  return out.map((l) => `${l}\n`).join("");
}

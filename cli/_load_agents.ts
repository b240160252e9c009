// One worker process of `backbeat load`: SDK clients on one shared NATS connection, each
// claiming on every beat it gets (state from the phase: planning, executing, reviewing) and
// timing its beat callback against pulse's `x-pulse-sent`. It reports to the parent in JSON
// lines (_load_protocol.ts); its private keys never leave it.

import { type ClaimState, generateSigningKeyPair, type Logger, type Phase } from "../core/mod.ts";
import { connectNatsBus, type NatsBusLike } from "../nats/mod.ts";
import { Client, type ClientConfig, defaultConfig } from "../sdk/mod.ts";
import { Histogram } from "../service/mod.ts";
import {
  type AgentKey,
  type FromWorker,
  LATENCY_BOUNDS,
  lines,
  type ToWorker,
  type WorkerConfig,
  type WorkerStats,
} from "./_load_protocol.ts";

/** The streams of a worker process. */
export interface LoadWorkerIo {
  /** The parent's messages. */
  readonly stdin: ReadableStream<Uint8Array>;
  /** Messages to the parent. */
  readonly stdout: WritableStream<Uint8Array>;
  /** Diagnostics (the parent shows the first few lines). */
  readonly stderr: WritableStream<Uint8Array>;
}

const STATE_OF: Readonly<Record<Phase, ClaimState>> = {
  plan: "planning",
  execute: "executing",
  review: "reviewing",
};
const PROGRESS_MS = 1_000;
/** Diagnostic lines a worker writes at most (a flood of SDK warnings stays bounded). */
const MAX_LOG_LINES = 20;

const encoder = new TextEncoder();

/**
 * Runs one worker until the parent says stop or goes away.
 *
 * @param io The worker's streams.
 * @param worker The worker's number (for its diagnostics).
 * @returns The exit status: 0, or 1 after an error it reported.
 *
 * @example A worker process's main
 * ```ts ignore
 * Deno.exit(await runLoadWorker({
 *   stdin: Deno.stdin.readable,
 *   stdout: Deno.stdout.writable,
 *   stderr: Deno.stderr.writable,
 * }, 1));
 * ```
 */
export async function runLoadWorker(io: LoadWorkerIo, worker: number): Promise<number> {
  const out = io.stdout.getWriter();
  const err = io.stderr.getWriter();
  let chain = Promise.resolve();
  const send = (m: FromWorker): Promise<void> =>
    chain = chain.then(() => out.write(encoder.encode(`${JSON.stringify(m)}\n`))).catch(() => {});
  let logged = 0;
  const log = (text: string) => {
    if (logged++ < MAX_LOG_LINES) err.write(encoder.encode(`${text}\n`)).catch(() => {});
  };
  const input = lines(io.stdin)[Symbol.asyncIterator]();
  const next = async (): Promise<ToWorker | undefined> => {
    const r = await input.next();
    return r.done ? undefined : JSON.parse(r.value) as ToWorker;
  };
  let bus: NatsBusLike | undefined;
  const clients: Client[] = [];
  let timer: ReturnType<typeof setInterval> | undefined;
  try {
    const config = await next();
    if (config?.type !== "config") throw new Error("expected the configuration first");
    const keys = await makeKeys(config);
    const publicKeys = keys.filter((k) => k.privateKey !== undefined)
      .map(({ agent, key_id, public_key }) => ({ agent, key_id, public_key }));
    await send({ type: "keys", keys: publicKeys });
    const go = await next();
    if (go?.type !== "start") return 0;
    bus = await connectNatsBus({ name: `backbeat-load worker ${worker}`, ...config.nats });
    const stats = new Counters();
    const logger: Logger = {
      debug() {},
      info() {},
      warn: (m) => log(`warn: ${m}`),
      error: (m) => log(`error: ${m}`),
    };
    // Claims go out after every agent's callback of the beat has run: building and signing a
    // claim takes a while, and the hundreds of agents sharing this process must not make each
    // other's callbacks late (that would measure this tool, not the beat's delivery).
    let batch: (() => void)[] = [];
    const later = (fn: () => void) => {
      batch.push(fn);
      if (batch.length > 1) return;
      setTimeout(() => {
        const run = batch;
        batch = [];
        for (const f of run) f();
      }, 0);
    };
    for (const k of keys) {
      const clientConfig: ClientConfig = {
        ...defaultConfig(),
        clusterId: config.cluster,
        agentId: k.agent,
        taskId: "load",
        bus,
        signingKey: k.privateKey,
        keyId: k.privateKey ? k.key_id : undefined,
        logger,
      };
      // Set by name: an SDK without the option ignores it.
      if (config.delivery !== undefined) Object.assign(clientConfig, { delivery: config.delivery });
      const c = new Client(clientConfig);
      c.onBeat((frame, info) => {
        // Callback entry, on the same wall-clock basis as pulse's x-pulse-sent and info.at.
        const entry = performance.timeOrigin + performance.now();
        // A synthetic beat (pulse's frame late or missing) is a beat to the agent too: it claims
        // on it as on any other, as a real agent would; only real ones are timed.
        if (info.synthetic) stats.synthetic++;
        else {
          stats.beats++;
          if ((info as { predicted?: boolean }).predicted === true) stats.predicted++;
          if (info.sentAt !== undefined) stats.latency.observe((entry - info.sentAt) / 1000);
          stats.lateness.observe((entry - info.at) / 1000);
        }
        // A claim of the warm-up that completes after `measure` is not counted.
        const generation = stats.generation;
        const bpb = frame.beats_per_bar ?? 4;
        const window = frame.window_id;
        later(() =>
          c.emitStatusClaim({
            state: STATE_OF[frame.phase],
            progress: Math.min(1, (frame.beat_index % bpb + 1) / bpb),
            beats_left: bpb - 1 - frame.beat_index % bpb,
          }).then(() => {
            if (generation !== stats.generation) return;
            stats.claims++;
            stats.perWindow.set(window, (stats.perWindow.get(window) ?? 0) + 1);
          }, () => {
            if (generation === stats.generation) stats.claimErrors++;
          })
        );
      });
      clients.push(c);
    }
    await Promise.all(clients.map((c) => c.start()));
    // Subscriptions are live at the server once flushed: from here every beat reaches them all.
    await bus.flush();
    await send({ type: "ready", agents: clients.length });
    timer = setInterval(
      () => send({ type: "progress", stats: stats.snapshot(clients, false) }),
      PROGRESS_MS,
    );
    for (;;) {
      const m = await next();
      if (m === undefined || m.type === "stop") break;
      if (m.type === "measure") {
        stats.reset(clients);
        await send({ type: "measuring" });
      }
    }
    clearInterval(timer);
    timer = undefined;
    await Promise.all(clients.map((c) => c.stop()));
    await send({ type: "done", stats: stats.snapshot(clients, true) });
    return 0;
  } catch (error) {
    await send({ type: "error", message: (error as Error).message ?? String(error) });
    return 1;
  } finally {
    if (timer !== undefined) clearInterval(timer);
    await Promise.all(clients.map((c) => c.stop().catch(() => {})));
    await bus?.close().catch(() => {});
    await chain;
    out.releaseLock();
    err.releaseLock();
  }
}

interface AgentWithKey extends AgentKey {
  readonly privateKey: CryptoKey | undefined;
}

async function makeKeys(config: WorkerConfig): Promise<AgentWithKey[]> {
  const out: AgentWithKey[] = [];
  for (const agent of config.agents) {
    if (!config.sign) {
      out.push({ agent, key_id: "", public_key: "", privateKey: undefined });
      continue;
    }
    const pair = await generateSigningKeyPair();
    out.push({
      agent,
      key_id: `${agent}-${pair.keyId.slice(0, 8)}`,
      public_key: pair.publicKey,
      privateKey: pair.keyPair.privateKey,
    });
  }
  return out;
}

class Counters {
  generation = 0;
  #missedBefore = 0;
  beats = 0;
  synthetic = 0;
  claims = 0;
  claimErrors = 0;
  predicted = 0;
  readonly latency = new Histogram(LATENCY_BOUNDS);
  readonly lateness = new Histogram(LATENCY_BOUNDS);
  readonly perWindow = new Map<string, number>();

  // The warm-up is over: count from here.
  reset(clients: readonly Client[]): void {
    this.generation++;
    this.beats =
      this.synthetic =
      this.claims =
      this.claimErrors =
      this.predicted =
        0;
    this.latency.reset();
    this.lateness.reset();
    this.perWindow.clear();
    this.#missedBefore = missedOf(clients);
  }

  snapshot(clients: readonly Client[], final: boolean): WorkerStats {
    const counts = (hist: Histogram) => {
      const h = hist.snapshot();
      return { counts: h.counts, count: h.count, min: h.min, max: h.max };
    };
    const missed = missedOf(clients) - this.#missedBefore;
    return {
      beats: this.beats,
      synthetic: this.synthetic,
      claims: this.claims,
      claimErrors: this.claimErrors,
      missed,
      predicted: this.predicted,
      latency: counts(this.latency),
      lateness: counts(this.lateness),
      ...(final && { perWindow: Object.fromEntries(this.perWindow) }),
    };
  }
}

function missedOf(clients: readonly Client[]): number {
  let missed = 0;
  for (const c of clients) missed += c.health().missedBeats;
  return missed;
}

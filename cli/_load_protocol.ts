// What `backbeat load` and its worker processes say to each other: one JSON object a line, the
// parent on the worker's stdin, the worker on its stdout. Configuration (NATS credentials
// included) goes over the pipe, never on a command line or in the environment, where other
// users of the machine could read it; private keys never leave the worker that made them.

import type { NatsBusOptions } from "../nats/mod.ts";
import { DEFAULT_LATENCY_BOUNDS_SECONDS } from "../service/mod.ts";

/** Bucket bounds of the latency histograms workers send (seconds): both sides use these. */
export const LATENCY_BOUNDS: readonly number[] = DEFAULT_LATENCY_BOUNDS_SECONDS;

/** The parent's first line: what the worker runs. */
export interface WorkerConfig {
  /** Always `config`. */
  readonly type: "config";
  /** The worker's number, from 1. */
  readonly worker: number;
  /** The cluster. */
  readonly cluster: string;
  /** How to reach NATS. */
  readonly nats: NatsBusOptions;
  /** The agent ids this worker runs. */
  readonly agents: readonly string[];
  /** Whether the agents sign their claims (each with a key of its own). */
  readonly sign: boolean;
  /** The SDK's beat delivery (`arrival` or `scheduled`); the SDK's default when absent. */
  readonly delivery?: string;
}

/** What the parent sends. */
export type ToWorker =
  | WorkerConfig
  | { readonly type: "start" }
  | { readonly type: "measure" }
  | { readonly type: "stop" };

/** A latency histogram as sent (counts per {@linkcode LATENCY_BOUNDS} bucket, one overflow). */
export interface LatencyCounts {
  /** Observations per bucket. */
  readonly counts: readonly number[];
  /** Number of observations. */
  readonly count: number;
  /** Smallest, seconds (0 when empty). */
  readonly min: number;
  /** Largest, seconds (0 when empty). */
  readonly max: number;
}

/** A worker's counters, cumulative since the parent said `measure` (after the warm-up). */
export interface WorkerStats {
  /** Beat callbacks run on real frames (agents × beats). */
  readonly beats: number;
  /** Beat callbacks run on synthetic beats (pulse went quiet). */
  readonly synthetic: number;
  /** Claims published (one per beat, synthetic ones included). */
  readonly claims: number;
  /** Claims that failed (rejected by the SDK or lost). */
  readonly claimErrors: number;
  /** Beats the agents missed (SDK health). */
  readonly missed: number;
  /** Beats delivered from the timeline before pulse's frame arrived (scheduled delivery). */
  readonly predicted: number;
  /** Callback entry minus `x-pulse-sent`, for beats delivered with pulse's frame. */
  readonly latency: LatencyCounts;
  /** Callback entry minus the instant the SDK delivered the beat for (`info.at`), every beat. */
  readonly lateness: LatencyCounts;
  /** Claims published per window id (in `done` only). */
  readonly perWindow?: Readonly<Record<string, number>>;
}

/** One agent's public key, for reverb's keyring. */
export interface AgentKey {
  /** The agent. */
  readonly agent: string;
  /** Its key id. */
  readonly key_id: string;
  /** Base64 of the raw public key. */
  readonly public_key: string;
}

/** What a worker sends. */
export type FromWorker =
  | { readonly type: "keys"; readonly keys: readonly AgentKey[] }
  | { readonly type: "ready"; readonly agents: number }
  | { readonly type: "measuring" }
  | { readonly type: "progress"; readonly stats: WorkerStats }
  | { readonly type: "done"; readonly stats: WorkerStats }
  | { readonly type: "error"; readonly message: string };

/**
 * Splits a byte stream into lines.
 *
 * @param stream The stream.
 * @returns The lines, without their newlines.
 *
 * @example Read a child's reports
 * ```ts ignore
 * for await (const line of lines(child.stdout)) console.log(JSON.parse(line).type);
 * ```
 */
export async function* lines(stream: ReadableStream<Uint8Array>): AsyncGenerator<string> {
  let buf = "";
  for await (const chunk of stream.pipeThrough(new TextDecoderStream())) {
    buf += chunk;
    let nl;
    while ((nl = buf.indexOf("\n")) >= 0) {
      yield buf.slice(0, nl);
      buf = buf.slice(nl + 1);
    }
  }
  if (buf) yield buf;
}

/**
 * Adds histograms (same bounds).
 *
 * @param all The histograms.
 * @returns Their sum.
 *
 * @example Two workers' histograms
 * ```ts ignore
 * const all = mergeLatency([a.latency, b.latency]);
 * console.log(all.count === a.latency.count + b.latency.count); // true
 * ```
 */
export function mergeLatency(all: readonly LatencyCounts[]): LatencyCounts {
  const counts = new Array<number>(LATENCY_BOUNDS.length + 1).fill(0);
  let count = 0;
  let min = Infinity;
  let max = -Infinity;
  for (const h of all) {
    if (h.count === 0) continue;
    for (let i = 0; i < counts.length; i++) counts[i] += h.counts[i] ?? 0;
    count += h.count;
    min = Math.min(min, h.min);
    max = Math.max(max, h.max);
  }
  return { counts, count, min: count ? min : 0, max: count ? max : 0 };
}

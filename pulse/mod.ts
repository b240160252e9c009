/**
 * Pulse, BACKBEAT's beat service: a drift-free beat on `backbeat.<cluster>.beat` from an
 * absolute timeline, tempo changes at downbeats, and high availability on NATS through a
 * JetStream KV lease (one leader publishes; a follower continues the same timeline when it goes).
 *
 * Run it as a process with `deno run -A pulse/main.ts --help`, or embed {@linkcode Pulse}.
 *
 * @example Embed a pulse and follow its beats
 * ```ts
 * import { Pulse } from "@chorus/backbeat/pulse";
 * import { InMemoryBus } from "@chorus/backbeat/sdk";
 *
 * const bus = new InMemoryBus();
 * await using pulse = new Pulse({ clusterId: "dev", bus, tempoBpm: 1200 });
 * pulse.addEventListener("beat", (e) => {
 *   const frame = (e as CustomEvent).detail;
 *   console.log(frame.beat_index, frame.phase, frame.downbeat);
 * });
 * await pulse.start();
 * pulse.setTempo(600); // from the next downbeat
 * await new Promise((r) => setTimeout(r, 300));
 * ```
 *
 * @module
 */

export {
  assertPulseTempo,
  DEFAULT_PULSE_LEASE_TTL_MS,
  DEFAULT_PULSE_SPIN_MS,
  DEFAULT_STATE_WRITE_INTERVAL_MS,
  DEFAULT_WINDOW_LOOKAHEAD_BARS,
  MAX_PULSE_TEMPO_BPM,
  parseTempoRequest,
  Pulse,
  PULSE_STATE_KEY,
  type PulseMetrics,
  type PulseOptions,
  PulseRole,
  type PulseStatus,
  type TempoChange,
} from "./_pulse.ts";
export { renderPulseMetrics } from "./_metrics.ts";
export {
  DEFAULT_PULSE_HTTP_HOSTNAME,
  DEFAULT_PULSE_HTTP_PORT,
  MAX_TEMPO_BODY_BYTES,
  pulseHttpHandler,
  type PulseHttpHandlerOptions,
  type PulseHttpOptions,
  type PulseHttpServer,
  servePulseHttp,
} from "./_http.ts";
export {
  DEFAULT_PULSE_CLUSTER,
  parsePulseArgs,
  PULSE_ENV_VARS,
  PULSE_USAGE,
  type PulseCommand,
  type PulseConfig,
  runPulse,
  type RunPulseOptions,
} from "./_cli.ts";
// Types of the SDK that pulse's API refers to (the values live in @chorus/backbeat/sdk).
export type {
  BeatFrame,
  Bus,
  BusHandler,
  BusHeaders,
  BusMessage,
  BusStatus,
  BusSubscription,
  Clock,
  IsolatedEventTarget,
  LogFields,
  Logger,
  Phase,
  PublishOptions,
  SubscribeOptions,
  Timeline,
  TimelineJson,
  TimelineSegment,
} from "../core/mod.ts";
export type { HistogramSnapshot, LogLevel } from "../service/mod.ts";
export type { EnvVars, HostPort } from "../service/mod.ts";

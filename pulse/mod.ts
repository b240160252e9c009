/**
 * Pulse, BACKBEAT's beat service: a drift-free beat on `backbeat.<cluster>.beat` from an
 * absolute timeline, tempo changes at downbeats, and high availability on NATS through a
 * JetStream KV lease (one leader publishes; a follower continues the same timeline when it goes).
 *
 * Run it as a process with `deno run -A pulse/main.ts --help` (`@chorus/backbeat/pulse/main`),
 * or embed {@linkcode Pulse} and, for health, metrics and tempo requests over HTTP,
 * {@linkcode servePulseHttp}. On a bus others can publish to, give pulse a `signingKey`, other
 * pulses a `pulseKeyring`, and operators an `adminToken` or `adminKeyring`;
 * {@linkcode controlMessage} builds the authenticated tempo change they send.
 *
 * @example Embed a pulse and follow its beats
 * ```ts
 * import { Pulse } from "@chorus/backbeat/pulse";
 * import { InMemoryBus } from "@chorus/backbeat/sdk";
 *
 * const bus = new InMemoryBus();
 * await using pulse = new Pulse({ clusterId: "dev", bus, tempoBpm: 1200 });
 * pulse.addEventListener("beat", (e) => {
 *   console.log(e.detail.beat_index, e.detail.phase, e.detail.downbeat);
 * });
 * await pulse.start();
 * pulse.setTempo(600); // from the next downbeat
 * await new Promise((r) => setTimeout(r, 300));
 * ```
 *
 * @module
 */

export { Pulse } from "./_pulse.ts";
export { type ControlMessage, controlMessage, type ControlMessageOptions } from "./_control.ts";
export {
  ControlRejectReason,
  type KeyringSource,
  type PulseEventMap,
  type PulseMetrics,
  type PulseOptions,
  PulseRole,
  type PulseStatus,
  type PulseTempo,
  type PulseTenure,
  type TempoChange,
} from "./_types.ts";
export { type PulseHttpOptions, type PulseHttpServer, servePulseHttp } from "./_http.ts";
// Types of core and service that pulse's API refers to (the values live in
// @chorus/backbeat and @chorus/backbeat/sdk).
export type {
  BeatFrame,
  Bus,
  BusEventMap,
  BusHandler,
  BusHeaders,
  BusMessage,
  BusStatus,
  BusStatusDetail,
  BusSubscription,
  Clock,
  IsolatedEventTarget,
  KeyEntry,
  Keyring,
  LogFields,
  Logger,
  Phase,
  PublishOptions,
  RequestOptions,
  SigningKey,
  SubscribeOptions,
  Timeline,
  TimelineJson,
  TimelineSegment,
} from "../core/mod.ts";
export type { HistogramSnapshot } from "../service/mod.ts";

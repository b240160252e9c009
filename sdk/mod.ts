/**
 * The BACKBEAT SDK: what a service imports to become beat-aware. A {@linkcode Client} follows
 * the cluster's beat (`onBeat`, `onDownbeat`, typed `beat`/`downbeat` events) with every
 * callback at the beat's instant on pulse's timeline (`config.delivery`, through an estimate of
 * pulse's clock), starts work on a shared downbeat (`nextDownbeat`, `at`), emits signed status
 * claims, runs work within a beat budget (`withBeatBudget`), reports `health()`, and keeps the
 * rhythm with synthetic beats on the same timeline while pulse is unreachable.
 *
 * The embedded {@linkcode InMemoryBus} is the default transport; {@linkcode connectNatsBus}
 * (or `config.natsUrl`) loads nats.js only when it is used.
 *
 * Layering: `sdk/` imports `core/`, `nats/` and `schemas/`, nothing above.
 *
 * @example Follow the beat and report progress
 * ```ts
 * import { Client, defaultConfig, InMemoryBus } from "@chorus/backbeat";
 * const bus = new InMemoryBus();
 * const config = { ...defaultConfig(), clusterId: "dev", agentId: "agent-1", bus };
 * await using client = new Client(config);
 * client.onBeat((frame) => console.log("beat", frame.beat_index, frame.phase));
 * await client.start();
 * await client.emitStatusClaim({ state: "executing", progress: 0.5 });
 * ```
 *
 * @module
 */

// --- the client ---
export {
  type BeatCallback,
  type BeatEventDetail,
  type BeatInfo,
  Client,
  type ClientEventMap,
  ClientState,
  type ConfirmedEventDetail,
  type DegradedEventDetail,
  type RealignedEventDetail,
  type RealignReason,
  type RecoveredEventDetail,
} from "./_client.ts";
export type { StatusClaimInput } from "./_outbox.ts";
export { type ClientConfig, defaultConfig, type DeliveryMode } from "./_config.ts";
export type { ClientHealth, ClockHealth, HealthError, LatencyStats } from "./_health.ts";

// --- the messages it sends and receives ---
export {
  type BackbeatMessage,
  type BarReport,
  type BarReportIssue,
  type BeatFrame,
  ClaimState,
  IssueKind,
  MessageType,
  Phase,
  type StatusClaim,
} from "../core/mod.ts";
export {
  BackbeatError,
  type BackbeatErrorOptions,
  BeatBudgetExceededError,
  ErrorCode,
  InvalidMessageError,
} from "../core/mod.ts";
export { compareHlc, type Hlc, parseHlc } from "../core/mod.ts";
export { type ClusterSubjects, subjects } from "../core/mod.ts";

// --- transport ---
export {
  type Bus,
  type BusEventMap,
  type BusHandler,
  type BusHeaders,
  type BusMessage,
  BusStatus,
  type BusStatusDetail,
  type BusSubscription,
  InMemoryBus,
  type InMemoryBusOptions,
  type PublishOptions,
  type RequestOptions,
  type SubscribeOptions,
} from "../core/mod.ts";
export {
  connectNatsBus,
  type NatsBusLike,
  type NatsBusOptions,
  type NatsConnectionOptions,
} from "../nats/mod.ts";

// --- keys, time, logs, events ---
export {
  exportPublicKey,
  type GeneratedKeyPair,
  generateSigningKeyPair,
  type KeyEntry,
  Keyring,
  type KeyringEntryJson,
  type KeyringJson,
  type SigningKey,
  type SigningKeyInput,
} from "../core/mod.ts";
export { type Clock, IsolatedEventTarget, type LogFields, type Logger } from "../core/mod.ts";

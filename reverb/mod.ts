/**
 * reverb: verified status aggregation. Reverb follows a cluster's beat subject, verifies every
 * status claim (size cap, JSON, schema, Ed25519 signature against a keyring, freshness and
 * replay), and publishes one `BarReport` per window on `backbeat.<cluster>.bar`, validated
 * against the contract. On NATS it keeps the reports in the JetStream stream
 * `BACKBEAT_<CLUSTER>_BARS` and elects one active aggregator among several reverbs through the
 * same KV lease pulse uses. It serves health, metrics, a JSON API, Server-Sent Events and a live
 * dashboard over HTTP.
 *
 * @example Run reverb on NATS with a keyring and a dashboard
 * ```ts ignore
 * import { connectNatsBus } from "@chorus/backbeat/sdk";
 * import { Reverb } from "@chorus/backbeat/reverb";
 *
 * const bus = await connectNatsBus({ servers: "nats://127.0.0.1:4222" });
 * const reverb = new Reverb({
 *   clusterId: "chorus-prod",
 *   bus,
 *   keyring: "/etc/backbeat/keyring.json",
 *   requireSignatures: true,
 *   http: { hostname: "0.0.0.0", port: 8081 },
 * });
 * reverb.addEventListener("report", (e) => console.log((e as CustomEvent).detail));
 * await reverb.start();
 * ```
 *
 * @example Aggregate in one process on the embedded bus
 * ```ts
 * import { InMemoryBus } from "@chorus/backbeat/sdk";
 * import { Reverb } from "@chorus/backbeat/reverb";
 *
 * const bus = new InMemoryBus();
 * await using reverb = new Reverb({ clusterId: "dev", bus, graceMs: 100 });
 * await reverb.start();
 * console.log(reverb.status().active); // true
 * ```
 *
 * @module
 */

export {
  barStreamName,
  type ClaimsSummary,
  DEFAULT_HISTORY_MAX_AGE_MS,
  DEFAULT_HISTORY_MAX_MSGS,
  DEFAULT_HISTORY_SIZE,
  DEFAULT_MAX_CLAIM_AGE_BEATS,
  DEFAULT_REVERB_LEASE_TTL_MS,
  DEFAULT_SUMMARY_INTERVAL_MS,
  DEFAULT_VERIFY_WORKERS,
  Reverb,
  type ReverbOptions,
  type ReverbStatus,
} from "./_reverb.ts";
export {
  type AgentView,
  BarAggregator,
  type BarAggregatorOptions,
  type BeatObservation,
  DEFAULT_EVICT_AFTER_BARS,
  DEFAULT_MAX_AGENTS,
  DEFAULT_MAX_ISSUES,
  MAX_AUTO_GRACE_MS,
  MAX_CATCHUP_BARS,
  MAX_OPEN_WINDOWS,
  type WindowInfo,
} from "./_aggregate.ts";
export {
  ClaimIntake,
  type ClaimIntakeOptions,
  DEFAULT_MAX_CLAIM_BYTES,
  DEFAULT_MAX_FUTURE_MS,
  DEFAULT_MAX_IN_FLIGHT,
  DEFAULT_MAX_QUEUED,
  DEFAULT_MAX_TRACKED_AGENTS,
  DEFAULT_REPLAY_MEMORY,
  type IntakeStats,
  REJECT_REASONS,
  RejectReason,
  VERIFY_TIME_BOUNDS,
} from "./_intake.ts";
export {
  DEFAULT_KEYRING_DEBOUNCE_MS,
  isKeyValidAt,
  type KeyEntry,
  Keyring,
  type KeyringEntryJson,
  type KeyringJson,
  KeyringWatcher,
  type KeyringWatcherOptions,
  MAX_KEYRING_BYTES,
  MAX_KEYRING_KEYS,
} from "./_keyring.ts";
export {
  DEFAULT_REVERB_CLUSTER,
  DEFAULT_REVERB_HTTP,
  parseReverbArgs,
  REVERB_USAGE,
  type ReverbCliConfig,
  type ReverbCliIo,
  type ReverbCliParse,
  runReverbCli,
} from "./_cli.ts";
// Types of the SDK and the contracts that reverb's API refers to (the values live in
// @chorus/backbeat/sdk and @chorus/backbeat/schemas).
export type {
  BarReport,
  BarReportIssue,
  BeatFrame,
  Bus,
  BusHandler,
  BusHeaders,
  BusMessage,
  BusStatus,
  BusSubscription,
  ClaimState,
  Clock,
  IsolatedEventTarget,
  IssueKind,
  LogFields,
  Logger,
  Phase,
  PublishOptions,
  StatusClaim,
  SubscribeOptions,
  Timeline,
  TimelineJson,
  TimelineSegment,
} from "../core/mod.ts";
export type { LogLevel } from "../service/mod.ts";
export type { Histogram, HistogramSnapshot } from "../service/mod.ts";
export type { EnvVars, HostPort } from "../service/mod.ts";
export type {
  JsonSchema,
  MessageValidator,
  MessageValidatorOptions,
  ValidationResult,
} from "../schemas/mod.ts";
export type { ValidationError } from "../schemas/mod.ts";

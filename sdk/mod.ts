/**
 * The BACKBEAT SDK: everything a service needs to follow the cluster's beat, plus the wire core
 * that pulse and reverb share (message types, hybrid logical clock, window ids, subjects, the
 * {@linkcode Timeline} and the {@linkcode Bus}).
 *
 * The embedded {@linkcode InMemoryBus} is the default transport; {@linkcode connectNatsBus}
 * loads nats.js only when it is called.
 *
 * @example Follow the beat schedule
 * ```ts
 * import { HybridLogicalClock, Timeline, subjects } from "@chorus/backbeat/sdk";
 * const timeline = new Timeline({ originTime: Date.now(), tempoBpm: 120 });
 * const frame = await timeline.frame("chorus-dev", 4, new HybridLogicalClock().now());
 * console.log(subjects("chorus-dev").beat, frame.downbeat, frame.window_id);
 * ```
 *
 * @module
 */

// --- wire core ---
export {
  type BackbeatMessage,
  type BarReport,
  type BarReportIssue,
  type BeatFrame,
  CLAIM_STATES,
  ClaimState,
  IssueKind,
  MessageType,
  Phase,
  PHASES,
  type StatusClaim,
} from "./_messages.ts";
export {
  BackbeatError,
  type BackbeatErrorOptions,
  BeatBudgetExceededError,
  ErrorCode,
  InvalidMessageError,
} from "./_errors.ts";
export {
  compareHlc,
  DEFAULT_HLC_MAX_OFFSET_MS,
  formatHlc,
  type Hlc,
  type HlcOptions,
  hlcPhysicalDiff,
  HybridLogicalClock,
  parseHlc,
} from "./_hlc.ts";
export { windowId } from "./_window_id.ts";
export { assertClusterId, type ClusterSubjects, subjects } from "./_subjects.ts";
export {
  assertTempo,
  DEFAULT_BEATS_PER_BAR,
  DEFAULT_TEMPO_BPM,
  defaultPhases,
  formatInstant,
  MAX_TEMPO_BPM,
  MAX_TIMELINE_SEGMENTS,
  MIN_TEMPO_BPM,
  parseInstant,
  parsePhases,
  Timeline,
  type TimelineJson,
  type TimelineOptions,
  type TimelineSegment,
} from "./_timeline.ts";
export {
  assertSubject,
  type Bus,
  type BusHandler,
  type BusHeaders,
  type BusMessage,
  BusStatus,
  type BusStatusDetail,
  type BusSubscription,
  connectNatsBus,
  DEFAULT_MAX_PAYLOAD,
  DEFAULT_MAX_PENDING,
  DEFAULT_MAX_RECONNECT_WAIT_MS,
  InMemoryBus,
  type InMemoryBusOptions,
  type NatsBusLike,
  type NatsBusOptions,
  type PublishOptions,
  type SubscribeOptions,
} from "./_bus.ts";
export {
  decodeBase64,
  encodeBase64,
  exportPublicKey,
  type GeneratedKeyPair,
  generateSigningKeyPair,
  importPublicKey,
  importSigningKey,
  type SigningKey,
  type SigningKeyInput,
  signPayload,
  verifyPayload,
} from "./_signing.ts";

// --- client (sdk/_client.ts and friends) ---
export {
  type BeatCallback,
  type BeatEventDetail,
  type BeatInfo,
  Client,
  ClientState,
  type DegradedEventDetail,
  type RecoveredEventDetail,
  type StatusClaimInput,
} from "./_client.ts";
export {
  type ClientConfig,
  type ClientLogger,
  DEFAULT_BEATS_PER_BAR_HINT,
  DEFAULT_CLAIM_BUFFER_SIZE,
  DEFAULT_ERROR_HISTORY_SIZE,
  DEFAULT_JITTER_TOLERANCE_MS,
  DEFAULT_LATENCY_WINDOW_SIZE,
  DEFAULT_MAX_CALLBACKS,
  DEFAULT_TASK_ID,
  defaultConfig,
  type NatsConnectionOptions,
} from "./_config.ts";
export type { ClientHealth, HealthError, LatencyStats } from "./_health.ts";
export { IsolatedEventTarget } from "./_events.ts";
export {
  type Clock,
  DEFAULT_SPIN_MS,
  ManualClock,
  SystemClock,
  type SystemClockOptions,
} from "./_clock.ts";

// --- service support (sdk/_log.ts, sdk/_metrics.ts; shared by pulse and reverb) ---
export {
  JsonLogger,
  type JsonLoggerOptions,
  LOG_LEVELS,
  type LogFields,
  type Logger,
  LogLevel,
  parseLogLevel,
  silentLogger,
} from "./_log.ts";
export {
  DEFAULT_LATENCY_BOUNDS_SECONDS,
  Histogram,
  type HistogramSnapshot,
  logBuckets,
  type MetricLabels,
  PROMETHEUS_CONTENT_TYPE,
  PrometheusWriter,
  quantile,
} from "./_metrics.ts";

/**
 * The wire core every other folder builds on: message types, errors, the hybrid logical clock,
 * window ids, subjects, the beat timeline and the frame tracker that infers one from frames,
 * clocks, events, Ed25519 signing, and the `Bus` contract with its embedded `InMemoryBus`.
 *
 * `core/` imports nothing of this project outside itself, and no NATS code: it is what an
 * embedded user loads. Users reach it through `@chorus/backbeat` and its other entrypoints.
 *
 * @example A timeline's beats
 * ```ts ignore
 * import { Timeline } from "./mod.ts";
 * const t = new Timeline({ clusterId: "dev", tempoBpm: 120, startMs: 0 });
 * console.log(t.beatAt(1_250)); // 2
 * ```
 *
 * @module
 */
export {
  assertSubject,
  type Bus,
  type BusEventMap,
  type BusHandler,
  type BusHeaders,
  type BusMessage,
  BusStatus,
  type BusStatusDetail,
  type BusSubscription,
  DEFAULT_MAX_PAYLOAD,
  DEFAULT_MAX_PENDING,
  InMemoryBus,
  type InMemoryBusOptions,
  type PublishOptions,
  type RequestOptions,
  type SubscribeOptions,
} from "./_bus.ts";
export {
  type Clock,
  DEFAULT_SPIN_MS,
  ManualClock,
  SystemClock,
  type SystemClockOptions,
} from "./_clock.ts";
export {
  type ClockEstimate,
  ClockEstimator,
  type ClockEstimatorOptions,
  type TimeSample,
} from "./_clock_sync.ts";
export {
  BackbeatError,
  type BackbeatErrorOptions,
  BeatBudgetExceededError,
  ErrorCode,
  InvalidMessageError,
} from "./_errors.ts";
export { IsolatedEventTarget } from "./_events.ts";
export {
  type FrameObservation,
  FrameStatus,
  FrameTracker,
  type FrameTrackerOptions,
  type ObserveOptions,
  type TimelineAnchor,
  type TrackedFrame,
} from "./_frame_tracker.ts";
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
export {
  isKeyValidAt,
  type KeyEntry,
  Keyring,
  type KeyringEntryJson,
  type KeyringJson,
  MAX_KEYRING_BYTES,
  MAX_KEYRING_KEYS,
} from "./_keyring.ts";
export { type LogFields, type Logger, silentLogger } from "./_log.ts";
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
export { Rejections, type RejectionsOptions } from "./_rejections.ts";
export {
  readSigningKeyFile,
  type SignatureCheck,
  SignatureFailure,
  type SignatureHeaders,
  signMessage,
  verifySigned,
  type VerifySignedOptions,
} from "./_signed.ts";
export {
  exportPublicKey,
  type GeneratedKeyPair,
  generateSigningKeyPair,
  hmacKey,
  hmacSign,
  hmacVerify,
  importPublicKey,
  importSigningKey,
  SignatureDomain,
  signedBytes,
  type SigningKey,
  type SigningKeyInput,
  signPayload,
  verifyPayload,
} from "./_signing.ts";
export { assertClusterId, type ClusterSubjects, subjects } from "./_subjects.ts";
export {
  type AnswerTimeOptions,
  answerTimeRequests,
  type RequestTimeOptions,
  requestTimeSample,
  type TimeExchange,
} from "./_time_sync.ts";
export {
  assertTempo,
  DEFAULT_BEATS_PER_BAR,
  DEFAULT_TEMPO_BPM,
  defaultPhases,
  formatInstant,
  MAX_BEAT_INDEX,
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
export { withTimeout } from "./_timeout.ts";
export { sharedWakeScheduler, WakeScheduler } from "./_wake.ts";
export {
  cachedWindowId,
  knownWindowId,
  WINDOW_CACHE_SIZE,
  windowId,
  windowIdsSettled,
} from "./_window_id.ts";

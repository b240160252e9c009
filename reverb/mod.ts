/**
 * reverb: verified status aggregation. Reverb follows a cluster's beat subject, verifies every
 * status claim (size cap, JSON, schema, Ed25519 signature against a keyring, freshness and
 * replay), and publishes one `BarReport` per window on `backbeat.<cluster>.bar`, validated
 * against the contract. On NATS it keeps the reports in the JetStream stream
 * `BACKBEAT_<CLUSTER>_BARS` and elects one active aggregator among several reverbs through the
 * same KV lease pulse uses. {@linkcode serveReverbHttp} serves it over HTTP: health, metrics, a
 * JSON API, Server-Sent Events and a live dashboard. Run it as a process with
 * `deno task reverb -- --help`. Its `/metrics` labels every sample with `cluster` and gives times
 * in seconds.
 *
 * The bus is treated as hostile (docs/security.md):
 * - **Frames.** With `pulseKeyring` only frames signed by a pulse key are followed; without it
 *   frames are checked for plausibility, and no window is reported from a timeline that a second
 *   frame has not confirmed, so one forged frame never produces a report. A newer epoch is
 *   followed at its first verified frame (its second agreeing one without keys), an older one is
 *   refused, and the new timeline's windows are reported from its first.
 * - **Claims.** Signatures cover `signedBytes("backbeat.statusclaim.v1", cluster, payload)` (the
 *   payload alone only with `legacyClaimSignatures`); an agent in the keyring must sign, always.
 *   A claim older than `maxClaimAgeMs` is stale, one further ahead than `maxClockOffsetMs` is
 *   `future` (the replay mark does not move), one at or below the agent's high-water mark is a
 *   replay. The marks survive a restart in the KV bucket `backbeat_<cluster>_reverb`, written in
 *   batches every `replayFlushIntervalMs`: a claim accepted within that interval before a crash
 *   can be replayed once to the restarted reverb.
 * - Every refusal is counted by reason (`/metrics`, `/api/v1/status`) and logged as a few summary
 *   lines however many arrive; every map and list is bounded.
 *
 * @example Run reverb on NATS with a keyring and a dashboard
 * ```ts ignore
 * import { connectNatsBus } from "@chorus/backbeat/nats";
 * import { Reverb, serveReverbHttp } from "@chorus/backbeat/reverb";
 *
 * const bus = await connectNatsBus({ servers: "nats://127.0.0.1:4222" });
 * const reverb = new Reverb({
 *   clusterId: "chorus-prod",
 *   bus,
 *   keyring: "/etc/backbeat/keyring.json",
 *   requireSignatures: true,
 * });
 * reverb.addEventListener("report", (e) => console.log(e.detail.window_id));
 * await reverb.start();
 * const http = serveReverbHttp(reverb, { hostname: "0.0.0.0", port: 8081 });
 * // ... later
 * await reverb.stop();
 * await http.stop();
 * await bus.close();
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
  FRAME_REJECT_REASONS,
  FrameRejectReason,
  Reverb,
  type ReverbEventMap,
  type ReverbMetrics,
  type ReverbOptions,
  type ReverbStatus,
} from "./_reverb.ts";
export { renderReverbMetrics } from "./_metrics.ts";
export { type ReverbHttpOptions, type ReverbHttpServer, serveReverbHttp } from "./_http.ts";
export type { AgentView, BeatObservation } from "./_aggregate.ts";
export {
  DEFAULT_MAX_CLAIM_AGE_MS,
  DEFAULT_MAX_CLOCK_OFFSET_MS,
  REJECT_REASONS,
  RejectReason,
} from "./_intake.ts";
export { type KeyEntry, Keyring, type KeyringEntryJson, type KeyringJson } from "../core/mod.ts";
// Types of the other entrypoints that reverb's API refers to (the values live in
// @chorus/backbeat/sdk and @chorus/backbeat/schemas).
export type {
  BarReport,
  BarReportIssue,
  Bus,
  BusEventMap,
  BusHandler,
  BusHeaders,
  BusMessage,
  BusStatus,
  BusStatusDetail,
  BusSubscription,
  ClaimState,
  Clock,
  IsolatedEventTarget,
  IssueKind,
  LogFields,
  Logger,
  Phase,
  PublishOptions,
  RequestOptions,
  SubscribeOptions,
} from "../core/mod.ts";
export type {
  JsonSchema,
  MessageValidator,
  MessageValidatorOptions,
  ValidationError,
  ValidationResult,
} from "../schemas/mod.ts";
export type { HistogramSnapshot } from "../service/mod.ts";

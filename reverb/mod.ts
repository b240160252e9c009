/**
 * reverb: verified status aggregation. Reverb follows a cluster's beat subject, verifies every
 * status claim (size cap, JSON, schema, Ed25519 signature against a keyring, freshness and
 * replay), and publishes one `BarReport` per window on `backbeat.<cluster>.bar`, validated
 * against the contract. On NATS it keeps the reports in the JetStream stream
 * `BACKBEAT_<CLUSTER>_BARS` and elects one active aggregator among several reverbs through the
 * same KV lease pulse uses. {@linkcode serveReverbHttp} serves it over HTTP: health, metrics, a
 * JSON API, Server-Sent Events and a live dashboard. Run it as a process with
 * `deno run -A reverb/main.ts --help`.
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
 * await http.shutdown();
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
  Reverb,
  type ReverbEventMap,
  type ReverbMetrics,
  type ReverbOptions,
  type ReverbStatus,
} from "./_reverb.ts";
export { renderReverbMetrics } from "./_metrics.ts";
export { type ReverbHttpOptions, type ReverbHttpServer, serveReverbHttp } from "./_http.ts";
export type { AgentView, BeatObservation } from "./_aggregate.ts";
export { RejectReason } from "./_intake.ts";
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

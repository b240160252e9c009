/**
 * What pulse and reverb share as services, and nothing a library user needs: JSON logs with
 * rate-limited repeats, Prometheus metrics (labelled families, histograms), command-line flags
 * with `BACKBEAT_*` environment fallbacks, and timeouts.
 *
 * Internal: not an entrypoint of the package. Imports `core/` only.
 *
 * @example A JSON log line
 * ```ts ignore
 * import { JsonLogger } from "./mod.ts";
 * new JsonLogger({ fields: { service: "pulse" } }).info("started", { cluster: "dev" });
 * ```
 *
 * @module
 */
export {
  type EnvVars,
  type FlagSpec,
  type HostPort,
  type NumberLimits,
  type ParsedFlags,
  parseFlags,
  parseHostPort,
  parseNumber,
} from "./_flags.ts";
export {
  type KeyringReloadDetail,
  KeyringWatcher,
  type KeyringWatcherEventMap,
  type KeyringWatcherOptions,
} from "./_keyring_watcher.ts";
export { JsonLogger, type JsonLoggerOptions, LOG_LEVELS, LogLevel, parseLogLevel } from "./_log.ts";
export {
  DEFAULT_LATENCY_BOUNDS_SECONDS,
  Histogram,
  type HistogramSnapshot,
  logBuckets,
  type MetricLabels,
  type MetricSample,
  PROMETHEUS_CONTENT_TYPE,
  PrometheusWriter,
  quantile,
} from "./_metrics.ts";
export {
  NATS_FLAG_SPECS,
  NATS_FLAGS_HELP,
  type NatsFlagSettings,
  natsSettingsFromFlags,
} from "./_nats_flags.ts";
export { resolveNatsFiles, userPaths } from "./_paths.ts";
export { scrubbing, secretsOf } from "./_secrets.ts";

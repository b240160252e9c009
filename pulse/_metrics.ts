import { logBuckets, type MetricLabels, PrometheusWriter } from "../service/mod.ts";
import type { PulseMetrics } from "./_types.ts";

/** Why a `POST /tempo` was refused: the `reason` label of `backbeat_pulse_http_rejected_total`. */
export const HTTP_REJECT_REASONS = [
  "unauthorized",
  "invalid",
  "too_large",
  "method_not_allowed",
  "unavailable",
] as const;
/** One of {@linkcode HTTP_REJECT_REASONS}. */
export type HttpRejectReason = typeof HTTP_REJECT_REASONS[number];

// Frame refusals always exposed (at 0 too), so dashboards see a stable set; others follow.
const FRAME_REJECT_REASONS = [
  "oversized",
  "malformed",
  "schema",
  "cluster",
  "tempo",
  "unsigned",
  "unknown_key",
  "key_expired",
  "bad_signature",
  "implausible",
  "old_epoch",
  "unreadable",
  "overload",
];

// One sample per reason: the always-listed ones (so a dashboard sees 0 before the first), then
// any others seen.
function byReason(
  counts: Readonly<Record<string, number>>,
  always: readonly string[],
): [MetricLabels, number][] {
  const reasons = [...always, ...Object.keys(counts).filter((r) => !always.includes(r)).sort()];
  return reasons.map((r) => [{ reason: r.replace(/[^a-z0-9_]/gi, "_") }, counts[r] ?? 0]);
}

// The exposition shows 1, 2.5 and 5 per decade; the histogram itself keeps ten per decade.
const EXPORTED_BOUNDS: readonly number[] = logBuckets(-6, 1).filter((b) => {
  const m = Number((b / 10 ** Math.floor(Math.log10(b) + 1e-9)).toPrecision(3));
  return m === 1 || m === 2.5 || m === 5;
});

/**
 * Renders a pulse's metrics in the Prometheus text format (0.0.4).
 *
 * @param m A snapshot from {@linkcode Pulse.metrics}.
 * @param httpRejected Refused `POST /tempo` requests by reason (the HTTP server's own count).
 * @param clusterId The `cluster` label of every sample. @default {undefined (no label)}
 * @returns The exposition text.
 *
 * @example Render metrics
 * ```ts ignore
 * import { Pulse } from "./_pulse.ts";
 * import { renderPulseMetrics } from "./_metrics.ts";
 * const pulse = new Pulse({ clusterId: "dev" });
 * console.log(renderPulseMetrics(pulse.metrics()).includes("backbeat_pulse_leader 0")); // true
 * await pulse.stop();
 * ```
 */
export function renderPulseMetrics(
  m: PulseMetrics,
  httpRejected: Readonly<Record<string, number>> = {},
  clusterId?: string,
): string {
  return new PrometheusWriter(clusterId === undefined ? {} : { cluster: clusterId })
    .counter(
      "backbeat_pulse_beats_published_total",
      "Beat frames published by this pulse.",
      m.beatsPublished,
    )
    .counter(
      "backbeat_pulse_catchup_beats_total",
      "Frames published late on purpose to fill a takeover gap.",
      m.catchUpBeats,
    )
    .counter(
      "backbeat_pulse_beats_skipped_total",
      "Beats never published because a gap exceeded one bar.",
      m.beatsSkipped,
    )
    .counter(
      "backbeat_pulse_publish_errors_total",
      "Beat publishes that failed.",
      m.publishErrors,
    )
    .histogram(
      "backbeat_pulse_publish_lateness_seconds",
      "Publish instant minus due time of on-schedule beat frames.",
      m.lateness,
      EXPORTED_BOUNDS,
    )
    .gauge("backbeat_pulse_leader", "1 while this pulse leads, else 0.", m.leader ? 1 : 0)
    .counter(
      "backbeat_pulse_takeovers_total",
      "Times this pulse became leader.",
      m.takeovers,
    )
    .counter(
      "backbeat_pulse_beats_unpublished_total",
      "Beats of the timeline no pulse published, found at takeovers (due while none led).",
      m.beatsUnpublished,
    )
    .gauge("backbeat_pulse_tempo_bpm", "Tempo in force, beats per minute.", m.tempoBpm)
    .gauge(
      "backbeat_pulse_last_beat_index",
      "Highest beat_index published or seen.",
      m.lastBeatIndex,
    )
    .gauge(
      "backbeat_pulse_fencing_token",
      "Fencing token of the current tenure (0 when not leading).",
      m.fencingToken,
    )
    .gauge(
      "backbeat_pulse_timeline_epoch",
      "Epoch of the timeline led or followed (0: a timeline without epochs).",
      m.epoch,
    )
    .counter(
      "backbeat_pulse_frames_verified_total",
      "Frames of other pulses whose signature verified.",
      m.framesVerified,
    )
    .counter(
      "backbeat_pulse_fencing_checks_total",
      "KV lease checks prompted by unverified frames with a higher fencing token.",
      m.fencingChecks,
    )
    .counter(
      "backbeat_pulse_control_rejected_total",
      "Control messages refused, by reason.",
      byReason(m.controlRejectedByReason, Object.keys(m.controlRejectedByReason)),
    )
    .counter(
      "backbeat_pulse_frames_rejected_total",
      "Frames of other pulses refused, by reason.",
      byReason(m.framesRejectedByReason, FRAME_REJECT_REASONS),
    )
    .counter(
      "backbeat_pulse_http_rejected_total",
      "POST /tempo requests refused, by reason.",
      byReason(httpRejected, HTTP_REJECT_REASONS),
    )
    .toString();
}

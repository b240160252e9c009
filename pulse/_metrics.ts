import { logBuckets, PrometheusWriter } from "../service/mod.ts";
import type { PulseMetrics } from "./_types.ts";

// The exposition shows 1, 2.5 and 5 per decade; the histogram itself keeps ten per decade.
const EXPORTED_BOUNDS: readonly number[] = logBuckets(-6, 1).filter((b) => {
  const m = Number((b / 10 ** Math.floor(Math.log10(b) + 1e-9)).toPrecision(3));
  return m === 1 || m === 2.5 || m === 5;
});

/**
 * Renders a pulse's metrics in the Prometheus text format (0.0.4).
 *
 * @param m A snapshot from {@linkcode Pulse.metrics}.
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
export function renderPulseMetrics(m: PulseMetrics): string {
  return new PrometheusWriter()
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
    .counter(
      "backbeat_pulse_control_rejected_total",
      "Control messages rejected as malformed or out of range.",
      m.controlRejected,
    )
    .counter(
      "backbeat_pulse_frames_rejected_total",
      "Unreadable frames seen on the beat subject.",
      m.framesRejected,
    )
    .toString();
}

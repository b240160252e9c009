// Reverb's /metrics: the Prometheus text format (0.0.4). Every sample carries a `cluster` label,
// so one Prometheus can scrape the reverbs of several clusters without relabelling; values are in
// base units (seconds, not milliseconds).
//
// service's PrometheusWriter heads every sample with its own HELP and TYPE, so a family with one
// sample per reason would repeat them, which the format forbids. The small writer below keeps
// one head per family and puts all its samples under it. It belongs in service/ (pulse needs
// the same); until it moves there it lives here.

import { type MetricSample, PrometheusWriter } from "../service/mod.ts";
import { REJECT_REASONS } from "./_intake.ts";
import { FRAME_REJECT_REASONS, type ReverbMetrics } from "./_reverb.ts";

// The exposition shows a few bounds per decade; the histogram itself keeps ten per decade.
const VERIFY_EXPORT_BOUNDS: readonly number[] = [
  1e-5,
  2.5e-5,
  5e-5,
  1e-4,
  2.5e-4,
  5e-4,
  1e-3,
  2.5e-3,
  5e-3,
  1e-2,
  2.5e-2,
  0.1,
  1,
];

type Sample = MetricSample;

function byReason(
  reasons: readonly string[],
  values: Readonly<Record<string, number>>,
): Sample[] {
  return reasons.map((reason) => [{ reason }, values[reason] ?? 0]);
}

/**
 * Renders reverb's metrics in the Prometheus text format (0.0.4): one `# HELP` and `# TYPE` per
 * family, every sample labelled `cluster="<cluster id>"`, times in seconds.
 *
 * @param m A snapshot from {@linkcode Reverb.metrics}.
 * @returns The exposition text.
 *
 * @example Render metrics
 * ```ts
 * import { renderReverbMetrics, Reverb } from "@chorus/backbeat/reverb";
 * const reverb = new Reverb({ clusterId: "dev" });
 * console.log(renderReverbMetrics(reverb.metrics()).includes('backbeat_reverb_active{cluster="dev"} 0')); // true
 * await reverb.stop();
 * ```
 */
export function renderReverbMetrics(m: ReverbMetrics): string {
  return new PrometheusWriter({ cluster: m.clusterId })
    .counter("backbeat_reverb_claims_accepted_total", "Status claims accepted.", m.claimsAccepted)
    .counter(
      "backbeat_reverb_claims_signed_total",
      "Accepted status claims that carried a verified signature.",
      m.claimsSigned,
    )
    .counter(
      "backbeat_reverb_claims_rejected_total",
      "Status claims rejected, by reason (late: accepted for the agent, after its window closed).",
      byReason(REJECT_REASONS, m.claimsRejected),
    )
    .histogram(
      "backbeat_reverb_verify_seconds",
      "Ed25519 signature verification time.",
      m.verifyTime,
      VERIFY_EXPORT_BOUNDS,
    )
    .counter(
      "backbeat_reverb_reports_published_total",
      "Bar reports published.",
      m.reportsPublished,
    )
    .counter(
      "backbeat_reverb_reports_invalid_total",
      "Bar reports that failed schema validation and were not published.",
      m.reportsInvalid,
    )
    .gauge(
      "backbeat_reverb_report_lag_seconds",
      "Delay of the last published report after its window's end plus grace.",
      m.reportLagMs / 1000,
    )
    .gauge(
      "backbeat_reverb_report_lag_max_seconds",
      "Largest report delay after window end plus grace since start.",
      m.reportLagMaxMs / 1000,
    )
    .gauge("backbeat_reverb_agents_tracked", "Agents tracked.", m.agentsTracked)
    .counter(
      "backbeat_reverb_agents_evicted_total",
      "Agents evicted after silence.",
      m.agentsEvicted,
    )
    .counter("backbeat_reverb_beats_observed_total", "Beat frames observed.", m.beatsObserved)
    .counter(
      "backbeat_reverb_frames_invalid_total",
      "Beat frames that were not valid JSON or failed the schema.",
      m.framesInvalid,
    )
    .counter(
      "backbeat_reverb_frames_stale_total",
      "Beat frames ignored because their beat_index was not above the highest seen.",
      m.framesStale,
    )
    .counter(
      "backbeat_reverb_frames_rejected_total",
      "Beat frames refused, by reason.",
      byReason(FRAME_REJECT_REASONS, m.framesRejected),
    )
    .counter(
      "backbeat_reverb_frames_verified_total",
      "Beat frames followed whose signature was verified against the pulse keyring.",
      m.framesVerified,
    )
    .counter(
      "backbeat_reverb_timeline_restarts_total",
      "Times reverb followed a new timeline: a newer epoch, a restart or a realignment.",
      m.timelineRestarts,
    )
    .gauge("backbeat_reverb_timeline_epoch", "Epoch of the timeline followed.", m.epoch)
    .counter(
      "backbeat_reverb_bars_skipped_total",
      "Windows not reported after a stall (at most what the time that passed holds).",
      m.barsSkipped,
    )
    .counter(
      "backbeat_reverb_windows_dropped_total",
      "Windows dropped without a beat at a timeline restart or a bar grid change.",
      m.windowsDropped,
    )
    .counter(
      "backbeat_reverb_reports_duplicate_total",
      "Reports not published because their window id was reported before.",
      m.reportsDuplicate,
    )
    .gauge(
      "backbeat_reverb_replay_marks",
      "Agents' replay marks held (one per agent inside the claim age window).",
      m.replayMarks,
    )
    .counter(
      "backbeat_reverb_replay_marks_evicted_total",
      "Replay marks dropped inside their window to stay within the agent bound.",
      m.replayMarksEvicted,
    )
    .counter(
      "backbeat_reverb_replay_store_failures_total",
      "Replay mark reads or writes in the KV bucket that failed (retried).",
      m.replayStoreFailures,
    )
    .gauge("backbeat_reverb_active", "1 when this reverb publishes reports.", m.active ? 1 : 0)
    .gauge("backbeat_reverb_tempo_bpm", "Tempo of the latest beat.", m.tempoBpm)
    .gauge(
      "backbeat_reverb_tempo_drift_seconds",
      "Arrival of the latest beat minus its announced schedule (positive = behind).",
      m.tempoDriftMs / 1000,
    )
    .counter(
      "backbeat_reverb_verify_offloaded_total",
      "Signatures verified in worker threads.",
      m.verifyOffloaded,
    )
    .gauge("backbeat_reverb_verify_in_flight", "Signature verifications running.", m.verifyInFlight)
    .gauge("backbeat_reverb_verify_queued", "Claims waiting for verification.", m.verifyQueued)
    .gauge("backbeat_reverb_keyring_keys", "Keys in the keyring.", m.keyringKeys)
    .gauge(
      "backbeat_reverb_pulse_keyring_keys",
      "Keys in the pulse keyring (0: frames are not verified).",
      m.pulseKeyringKeys,
    )
    .counter(
      "backbeat_reverb_keyring_reload_failures_total",
      "Keyring reloads that failed (the previous keyring was kept).",
      m.keyringReloadFailures,
    )
    .gauge(
      "backbeat_reverb_history_stream_ready",
      "1 when the JetStream history stream is open.",
      m.historyStreamReady ? 1 : 0,
    )
    .toString();
}

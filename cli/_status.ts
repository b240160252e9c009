// `backbeat status`: pulse's and reverb's health in a few lines, from their HTTP endpoints
// (pulse: /healthz, /readyz, /metrics; reverb: /readyz, /api/v1/status). Exit 1 when a service
// is unreachable or not ready, so a script can gate on it.

import type { EnvVars } from "../service/mod.ts";
import { redactUrl } from "../nats/mod.ts";
import {
  JSON_SPEC,
  noExtraArguments,
  numberFlag,
  parseCommandFlags,
  urlFlag,
  usageLines,
} from "./_common.ts";
import {
  type CommandContext,
  errorMessage,
  EXIT_FAILURE,
  EXIT_OK,
  httpJson,
  num,
  printable,
} from "./_io.ts";

/** Pulse's default HTTP address. */
export const DEFAULT_PULSE_URL = "http://127.0.0.1:8080";
/** Reverb's default HTTP address. */
export const DEFAULT_REVERB_URL = "http://127.0.0.1:8081";

const SPECS = [
  JSON_SPEC,
  { name: "pulse", env: "BACKBEAT_PULSE_URL" },
  { name: "reverb", env: "BACKBEAT_REVERB_URL" },
  { name: "timeout" },
] as const;

/** `backbeat status --help`. */
export const STATUS_USAGE: string = `backbeat status: pulse's and reverb's health in a few lines

${usageLines("status [--pulse URL] [--reverb URL] [flags]")}
Reads pulse's GET /healthz, /readyz and /metrics and reverb's GET /readyz and /api/v1/status:
role (leader, follower; active or standby), tempo, beat, phase, epoch, agents, claims and
refusals by reason, warnings. Without --pulse and --reverb it asks both at their default
addresses; with one of them, only that one.

Flags:
  --pulse URL     pulse's HTTP address [BACKBEAT_PULSE_URL] (default ${DEFAULT_PULSE_URL})
  --reverb URL    reverb's HTTP address [BACKBEAT_REVERB_URL] (default ${DEFAULT_REVERB_URL})
  --timeout S     per request (default 3)
  --json          one JSON object: {"pulse": {...}, "reverb": {...}}
  -h, --help      show this help

Exit status: 0 when every service asked is reachable and ready, 1 otherwise.
`;

/** What `status` was asked to do. */
export interface StatusOptions {
  /** Pulse's URL, if asked. */
  readonly pulse: string | undefined;
  /** Reverb's URL, if asked. */
  readonly reverb: string | undefined;
  /** Per request, ms. */
  readonly timeoutMs: number;
  /** JSON output. */
  readonly json: boolean;
}

/**
 * Parses `status`'s command line.
 *
 * @param args The arguments after `status`.
 * @param env The environment.
 * @returns The options, or `help`.
 * @throws {TypeError} On a bad flag or URL.
 * @throws {RangeError} On a bad timeout.
 *
 * @example Only pulse
 * ```ts ignore
 * const o = parseStatus(["--pulse", "http://127.0.0.1:8080"], {});
 * if (o !== "help") console.log(o.reverb); // undefined
 * ```
 */
export function parseStatus(args: readonly string[], env: EnvVars): StatusOptions | "help" {
  const flags = parseCommandFlags(args, SPECS, env);
  if (flags.values.help) return "help";
  noExtraArguments(flags);
  let pulse = urlFlag(flags, "pulse");
  let reverb = urlFlag(flags, "reverb");
  if (pulse === undefined && reverb === undefined) {
    pulse = DEFAULT_PULSE_URL;
    reverb = DEFAULT_REVERB_URL;
  }
  const seconds = numberFlag(flags, "timeout", { min: 0.001, max: 600 }) ?? 3;
  return { pulse, reverb, timeoutMs: seconds * 1000, json: flags.values.json === true };
}

type Json = Record<string, unknown>;

function obj(v: unknown): Json {
  return v !== null && typeof v === "object" && !Array.isArray(v) ? v as Json : {};
}

function counts(v: unknown): Record<string, number> {
  const out: Record<string, number> = {};
  for (const [k, n] of Object.entries(obj(v))) {
    if (typeof n === "number" && n > 0) out[printable(k, 40)] = n;
  }
  return out;
}

function countsText(c: Record<string, number>): string {
  return Object.entries(c).map(([k, n]) => `${k} ${n}`).join(", ");
}

// Prometheus text: the samples of one family, by their `reason` label.
function byReason(metrics: string, family: string): Record<string, number> {
  const out: Record<string, number> = {};
  const re = new RegExp(`^${family}\\{reason="([^"]*)"\\} (\\S+)$`, "gm");
  for (const m of metrics.matchAll(re)) {
    const n = Number(m[2]);
    if (n > 0) out[printable(m[1], 40)] = n;
  }
  return out;
}

function sample(metrics: string, name: string): number | undefined {
  const m = new RegExp(`^${name} (\\S+)$`, "m").exec(metrics);
  return m ? Number(m[1]) : undefined;
}

/** One service's health. */
export interface ServiceHealth {
  /** The URL asked (redacted). */
  readonly url: string;
  /** Whether it answered. */
  readonly reachable: boolean;
  /** Whether it is ready. */
  readonly ready: boolean;
  /** Why not, when it is not reachable or ready. */
  readonly error: string | null;
  /** The fields shown. */
  readonly detail: Json;
  /** Problems an operator should see. */
  readonly warnings: readonly string[];
}

// A service that did not answer: what the summary shows for it.
function unreachable(url: string, error: unknown): ServiceHealth {
  return {
    url,
    reachable: false,
    ready: false,
    error: errorMessage(error),
    detail: {},
    warnings: [],
  };
}

async function pulseHealth(
  url: string,
  o: StatusOptions,
  signal: AbortSignal,
): Promise<ServiceHealth> {
  const shown = redactUrl(url);
  let health, ready, metrics, tempo;
  try {
    [health, ready, metrics, tempo] = await Promise.all([
      httpJson(`${url}/healthz`, {}, o.timeoutMs, signal),
      httpJson(`${url}/readyz`, {}, o.timeoutMs, signal),
      httpJson(`${url}/metrics`, {}, o.timeoutMs, signal),
      // GET /tempo (pending change, next downbeat) exists on newer pulses only.
      httpJson(`${url}/tempo`, {}, o.timeoutMs, signal).catch(() => undefined),
    ]);
  } catch (error) {
    return unreachable(shown, error);
  }
  const h = obj(health.json);
  const r = obj(ready.json);
  const t = tempo?.status === 200 ? obj(tempo.json) : {};
  const text = metrics.status === 200 ? metrics.text : "";
  const isReady = ready.status === 200 && r.ready === true;
  const warnings: string[] = [];
  const controlRejected = counts(h.control_rejected);
  const framesRejected = byReason(text, "backbeat_pulse_frames_rejected_total");
  const httpRejected = byReason(text, "backbeat_pulse_http_rejected_total");
  const publishErrors = sample(text, "backbeat_pulse_publish_errors_total") ?? 0;
  const skipped = sample(text, "backbeat_pulse_beats_skipped_total") ?? 0;
  if (publishErrors > 0) warnings.push(`${publishErrors} beats could not be published`);
  if (skipped > 0) warnings.push(`${skipped} beats skipped`);
  if (h.role === "follower" && !isReady) warnings.push("follower without a live leader");
  const detail: Json = {
    pulse_id: typeof h.pulse_id === "string" ? printable(h.pulse_id, 64) : null,
    cluster_id: typeof h.cluster_id === "string" ? printable(h.cluster_id, 64) : null,
    role: typeof h.role === "string" ? h.role : null,
    leader_id: typeof h.leader_id === "string"
      ? printable(h.leader_id, 64)
      : h.role === "leader" && typeof h.pulse_id === "string"
      ? printable(h.pulse_id, 64)
      : null,
    tempo_bpm: typeof h.tempo_bpm === "number" ? h.tempo_bpm : null,
    next_tempo_bpm: typeof t.next_tempo_bpm === "number"
      ? t.next_tempo_bpm
      : typeof h.next_tempo_bpm === "number"
      ? h.next_tempo_bpm
      : null,
    next_downbeat: typeof t.next_downbeat === "number" && t.next_downbeat >= 0
      ? t.next_downbeat
      : null,
    beat: typeof h.last_beat_index === "number" ? h.last_beat_index : null,
    phase: typeof h.phase === "string" ? h.phase : null,
    epoch: typeof h.epoch === "number" ? h.epoch : null,
    control_rejected: controlRejected,
    frames_rejected: framesRejected,
    http_rejected: httpRejected,
  };
  return {
    url: shown,
    reachable: health.status === 200,
    ready: isReady,
    error: isReady
      ? null
      : health.status !== 200
      ? `/healthz answered ${health.status}`
      : `not ready (role ${String(r.role ?? h.role ?? "unknown")})`,
    detail,
    warnings,
  };
}

async function reverbHealth(
  url: string,
  o: StatusOptions,
  signal: AbortSignal,
): Promise<ServiceHealth> {
  const shown = redactUrl(url);
  let ready, status;
  try {
    [ready, status] = await Promise.all([
      httpJson(`${url}/readyz`, {}, o.timeoutMs, signal),
      httpJson(`${url}/api/v1/status`, {}, o.timeoutMs, signal),
    ]);
  } catch (error) {
    return unreachable(shown, error);
  }
  const r = obj(ready.json);
  const s = obj(status.json);
  const beat = obj(s.beat);
  const claims = obj(s.claims);
  const frames = obj(s.frames);
  const isReady = ready.status === 200 && r.ready === true;
  const reasons = Array.isArray(r.reasons) ? r.reasons.map((x) => printable(x, 80)) : [];
  const warnings = Array.isArray(s.warnings) ? s.warnings.map((x) => printable(x, 160)) : [];
  const detail: Json = {
    reverb_id: typeof s.reverb_id === "string" ? printable(s.reverb_id, 64) : null,
    cluster_id: typeof s.cluster_id === "string" ? printable(s.cluster_id, 64) : null,
    active: s.active === true,
    active_id: typeof s.active_id === "string" ? printable(s.active_id, 64) : null,
    tempo_bpm: typeof s.tempo_bpm === "number" ? s.tempo_bpm : null,
    beat: typeof beat.beat_index === "number" ? beat.beat_index : null,
    phase: typeof beat.phase === "string" ? beat.phase : null,
    window_id: typeof beat.window_id === "string" ? printable(beat.window_id, 32) : null,
    epoch: typeof frames.epoch === "number" ? frames.epoch : null,
    agents: typeof claims.agents_tracked === "number" ? claims.agents_tracked : null,
    claims_accepted: typeof claims.accepted === "number" ? claims.accepted : null,
    claims_per_second: typeof claims.accepted_per_second === "number"
      ? claims.accepted_per_second
      : null,
    claims_rejected: counts(claims.rejected),
    frames_rejected: counts(frames.rejected),
    keyring_keys: typeof s.keyring_keys === "number" ? s.keyring_keys : null,
    require_signatures: s.require_signatures === true,
    reports_published: typeof s.reports_published === "number" ? s.reports_published : null,
    report_lag_ms: typeof s.report_lag_ms === "number" ? s.report_lag_ms : null,
  };
  return {
    url: shown,
    reachable: status.status === 200 || ready.status === 200 || ready.status === 503,
    ready: isReady,
    error: isReady ? null : `not ready${reasons.length ? `: ${reasons.join(", ")}` : ""}`,
    detail,
    warnings,
  };
}

function value(v: unknown, suffix = ""): string {
  return v === null || v === undefined ? "?" : `${typeof v === "number" ? num(v) : v}${suffix}`;
}

function pulseLines(p: ServiceHealth): string[] {
  const head = `pulse   ${p.url}`;
  if (!p.reachable) return [`${head}  UNREACHABLE: ${p.error}`];
  const d = p.detail;
  const role = d.role === "leader"
    ? `leader ${value(d.pulse_id)}`
    : `${value(d.role)} ${value(d.pulse_id)}${d.leader_id ? ` (leader ${d.leader_id})` : ""}`;
  const next = d.next_tempo_bpm !== null && d.next_tempo_bpm !== d.tempo_bpm
    ? ` -> ${num(d.next_tempo_bpm as number)} bpm on beat ${value(d.next_downbeat)}`
    : "";
  const lines = [
    [
      head,
      p.ready ? "ready" : "NOT READY",
      role,
      `tempo ${value(d.tempo_bpm, " bpm")}${next}`,
      `beat ${value(d.beat)}${d.phase ? ` ${d.phase}` : ""}`,
      `epoch ${value(d.epoch)}`,
      `cluster ${value(d.cluster_id)}`,
    ].join("   "),
  ];
  const rejected = [
    ["control", d.control_rejected],
    ["frames", d.frames_rejected],
    ["http", d.http_rejected],
  ].flatMap(([what, c]) => {
    const text = countsText(c as Record<string, number>);
    return text ? [`${what} ${text}`] : [];
  });
  if (rejected.length) lines.push(`        rejected: ${rejected.join("; ")}`);
  if (!p.ready && p.error) lines.push(`        ${p.error}`);
  for (const w of p.warnings) lines.push(`        warning: ${w}`);
  return lines;
}

function reverbLines(r: ServiceHealth): string[] {
  const head = `reverb  ${r.url}`;
  if (!r.reachable) return [`${head}  UNREACHABLE: ${r.error}`];
  const d = r.detail;
  const role = d.active
    ? `active ${value(d.reverb_id)}`
    : `standby ${value(d.reverb_id)}${d.active_id ? ` (active ${d.active_id})` : ""}`;
  const lines = [
    [
      head,
      r.ready ? "ready" : "NOT READY",
      role,
      `tempo ${value(d.tempo_bpm, " bpm")}`,
      `beat ${value(d.beat)}${d.phase ? ` ${d.phase}` : ""}`,
      `epoch ${value(d.epoch)}`,
      `cluster ${value(d.cluster_id)}`,
    ].join("   "),
    [
      `        agents ${value(d.agents)}`,
      `claims ${value(d.claims_accepted)} accepted (${value(d.claims_per_second)}/s)`,
      `reports ${value(d.reports_published)}${
        d.report_lag_ms !== null ? ` (lag ${num(d.report_lag_ms as number, 1)} ms)` : ""
      }`,
      `keyring ${value(d.keyring_keys)} key${d.keyring_keys === 1 ? "" : "s"}${
        d.require_signatures ? ", signatures required" : ""
      }`,
    ].join("   "),
  ];
  const rejected = [
    ["claims", d.claims_rejected],
    ["frames", d.frames_rejected],
  ].flatMap(([what, c]) => {
    const text = countsText(c as Record<string, number>);
    return text ? [`${what} ${text}`] : [];
  });
  if (rejected.length) lines.push(`        rejected: ${rejected.join("; ")}`);
  if (!r.ready && r.error) lines.push(`        ${r.error}`);
  for (const w of r.warnings) lines.push(`        warning: ${w}`);
  return lines;
}

/**
 * Asks the services and prints their health.
 *
 * @param o The options.
 * @param ctx The command context.
 * @returns 0 when every service asked is reachable and ready, else 1.
 *
 * @example Gate a script on health
 * ```ts ignore
 * const o = parseStatus([], {});
 * if (o !== "help") Deno.exit(await runStatus(o, ctx)); // 1 when a service is down
 * ```
 */
export async function runStatus(o: StatusOptions, ctx: CommandContext): Promise<number> {
  const signal = ctx.io.signal;
  const [pulse, reverb] = await Promise.all([
    o.pulse === undefined ? undefined : pulseHealth(o.pulse, o, signal),
    o.reverb === undefined ? undefined : reverbHealth(o.reverb, o, signal),
  ]);
  if (o.json) {
    await ctx.out.write(`${JSON.stringify({ pulse: pulse ?? null, reverb: reverb ?? null })}\n`);
  } else {
    const lines = [...(pulse ? pulseLines(pulse) : []), ...(reverb ? reverbLines(reverb) : [])];
    await ctx.out.write(lines.map((l) => `${l}\n`).join(""));
  }
  const bad = [["pulse", pulse], ["reverb", reverb]].filter(([, h]) =>
    h !== undefined && !(h as ServiceHealth).ready
  );
  for (const [name, h] of bad) {
    const s = h as ServiceHealth;
    // An unreachable service's error already names its URL.
    await ctx.warn(
      s.reachable ? `${name} at ${s.url} is ${s.error ?? "not ready"}` : `${name}: ${s.error}`,
    );
  }
  return bad.length > 0 ? EXIT_FAILURE : EXIT_OK;
}

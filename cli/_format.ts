// One aligned line per message for `tail`: beats, claims and bar reports, and the line that says
// a message was malformed. Everything printed from a message passes printable(): the bus is
// hostile, and an agent id must not be able to move the terminal's cursor.

import type { BarReport, BeatFrame, StatusClaim } from "../core/mod.ts";
import { num, printable } from "./_io.ts";

/** What is known about a message's signature. */
export type SignatureView =
  | { readonly kind: "unsigned" }
  | { readonly kind: "signed"; readonly keyId: string }
  | { readonly kind: "verified"; readonly keyId: string }
  | { readonly kind: "bad"; readonly reason: string };

/**
 * The signature column.
 *
 * @param sig What is known.
 * @returns `unsigned`, `signed <key>`, `verified <key>` or `BAD SIGNATURE (<reason>)`.
 *
 * @example A verified signature
 * ```ts ignore
 * console.log(signatureText({ kind: "verified", keyId: "pulse-1" })); // "verified pulse-1"
 * ```
 */
export function signatureText(sig: SignatureView): string {
  switch (sig.kind) {
    case "unsigned":
      return "unsigned";
    case "signed":
      return `signed ${printable(sig.keyId, 40)}`;
    case "verified":
      return `verified ${printable(sig.keyId, 40)}`;
    case "bad":
      return `BAD SIGNATURE (${sig.reason})`;
  }
}

/**
 * One beat: index, downbeat mark, phase, tempo, epoch, window id prefix, signature, and an
 * announced tempo change.
 *
 * @param frame The frame (valid).
 * @param sig Its signature.
 * @returns The line, without newline.
 *
 * @example One beat
 * ```ts ignore
 * console.log(beatLine(frame, { kind: "unsigned" }));
 * // beat         12  bar  plan         240 bpm  epoch 1796110702355  window de543189  unsigned
 * ```
 */
export function beatLine(frame: BeatFrame, sig: SignatureView): string {
  const next = frame.next_tempo_bpm === undefined
    ? ""
    : `  next bar ${num(frame.next_tempo_bpm)} bpm`;
  return [
    `beat  ${String(frame.beat_index).padStart(9)}`,
    frame.downbeat ? "bar" : "   ",
    frame.phase.padEnd(7),
    `${num(frame.tempo_bpm).padStart(7)} bpm`,
    `epoch ${frame.epoch ?? 0}`,
    `window ${frame.window_id.slice(0, 8)}`,
    signatureText(sig),
  ].join("  ") + next;
}

/**
 * One claim: agent, state, progress, beat, task, signature, notes.
 *
 * @param claim The claim (valid).
 * @param sig Its signature.
 * @returns The line, without newline.
 *
 * @example One claim
 * ```ts ignore
 * console.log(claimLine(claim, { kind: "signed", keyId: "k1" }));
 * // claim agent-1                   executing   50%  beat        12  task default  signed k1
 * ```
 */
export function claimLine(claim: StatusClaim, sig: SignatureView): string {
  const notes = claim.notes ? `  ${printable(claim.notes, 80)}` : "";
  return [
    `claim ${printable(claim.agent_id, 40).padEnd(24)}`,
    claim.state.padEnd(9),
    `${Math.round(claim.progress * 100)}%`.padStart(4),
    `beat ${String(claim.beat_index).padStart(9)}`,
    `task ${printable(claim.task_id, 24)}`,
    signatureText(sig),
  ].join("  ") + notes;
}

/**
 * One bar report: window, beats, agents reporting, on-time reviews, drift, issues by kind.
 *
 * @param report The report (valid).
 * @returns The line, without newline.
 *
 * @example One report
 * ```ts ignore
 * console.log(barLine(report));
 * // bar   de543189  beats 12-15  agents   200  on-time reviews   200  drift 0.4 ms  issues none
 * ```
 */
export function barLine(report: BarReport): string {
  return [
    `bar   ${report.window_id.slice(0, 8)}`,
    `beats ${report.from_beat}-${report.to_beat}`,
    `agents ${String(report.agents_reporting).padStart(5)}`,
    `on-time reviews ${String(report.on_time_reviews).padStart(5)}`,
    `drift ${num(report.tempo_drift_ms, 1)} ms`,
    `issues ${issuesText(report)}`,
  ].join("  ");
}

/**
 * A report's issues as `none` or `kind n, kind n` (counts of aggregated entries added up).
 *
 * @param report The report.
 * @returns The text.
 *
 * @example Issues by kind
 * ```ts ignore
 * console.log(issuesText({ ...report, issues: [{ kind: "agent_silent", detail: "", count: 3 }] }));
 * // "agent_silent 3"
 * ```
 */
export function issuesText(report: BarReport): string {
  if (report.issues.length === 0) return "none";
  const byKind = new Map<string, number>();
  for (const issue of report.issues) {
    byKind.set(issue.kind, (byKind.get(issue.kind) ?? 0) + (issue.count ?? 1));
  }
  return [...byKind].map(([k, n]) => `${k} ${n}`).join(", ");
}

/**
 * The line of a message that is not what its subject carries.
 *
 * @param kind `beat`, `claim` or `bar`.
 * @param why Why (from the gate or the validator; untrusted text is made printable).
 * @returns The line, without newline.
 *
 * @example Not JSON
 * ```ts ignore
 * console.log(malformedLine("claim", "not JSON")); // "claim malformed: not JSON"
 * ```
 */
export function malformedLine(kind: string, why: string): string {
  return `${kind.padEnd(5)} malformed: ${printable(why, 160)}`;
}

import assert from "node:assert/strict";
import type { BarReport, KeyEntry } from "../core/mod.ts";
import { MessageValidator } from "../schemas/mod.ts";
import {
  AgentMark,
  type BarReportInput,
  buildBarReport,
  newWindowTally,
  type WindowTally,
} from "./_report.ts";

const validator = new MessageValidator();
const T0 = Date.parse("2030-01-01T00:00:00Z");

// A key as the keyring builds it; buildBarReport reads only ids and validity.
function key(agentId: string, keyId: string, notAfter?: number): KeyEntry {
  return {
    agentId,
    keyId,
    publicKey: "",
    key: {} as CryptoKey,
    notBefore: undefined,
    notAfter,
  };
}

function input(fields: Partial<BarReportInput> = {}): BarReportInput {
  return {
    windowId: "ab".repeat(16),
    fromBeat: 8,
    beatsPerBar: 4,
    windowEnd: T0 + 12_000,
    barMs: 4_000,
    periodMs: 1_000,
    tally: undefined,
    silent: [],
    maxIssues: 100,
    ...fields,
  };
}

function tally(build: (t: WindowTally) => void): WindowTally {
  const t = newWindowTally();
  t.beats = 4;
  t.driftSum = 4 * 0.5;
  build(t);
  return t;
}

function valid(r: BarReport): void {
  const v = validator.validateMessage(r);
  assert.equal(v.valid, true, JSON.stringify(v.errors));
}

Deno.test("buildBarReport() counts agents, on-time reviews and kept help promises from the marks", () => {
  const t = tally((t) => {
    t.agents.set("on-time", AgentMark.Reported | AgentMark.OnTime);
    t.agents.set("helper", AgentMark.Reported | AgentMark.OnTime | AgentMark.Helped);
    t.agents.set("late", AgentMark.Reported | AgentMark.Late);
    t.notes.set("late", "review for beat 11 arrived 100 ms after the review deadline");
    t.agents.set("failer", AgentMark.Reported | AgentMark.Failed);
    t.notes.set("failer", "reported failed on task t at beat 9: disk full");
    t.agents.set("blocker", AgentMark.Reported | AgentMark.Blocked);
    // Late first, then on time: the on-time review wins, no late_review issue.
    t.agents.set("recovered", AgentMark.Reported | AgentMark.Late | AgentMark.OnTime);
  });
  const r = buildBarReport(input({
    tally: t,
    silent: [{ agentId: "quiet", lastBeat: 5, lastState: "executing" }],
  }));
  valid(r);
  assert.equal(r.type, "backbeat.barreport.v1");
  assert.equal(r.window_id, "ab".repeat(16));
  assert.equal(r.from_beat, 8);
  assert.equal(r.to_beat, 11);
  assert.equal(r.agents_reporting, 6);
  assert.equal(r.on_time_reviews, 3);
  assert.equal(r.help_promises_fulfilled, 1);
  assert.equal(r.secret_rotations_ok, true);
  assert.equal(r.tempo_drift_ms, 0.5);
  assert.deepEqual(r.issues, [
    {
      kind: "agent_failed",
      agent_id: "failer",
      detail: "reported failed on task t at beat 9: disk full",
    },
    { kind: "agent_blocked", agent_id: "blocker", detail: "" },
    {
      kind: "late_review",
      agent_id: "late",
      detail: "review for beat 11 arrived 100 ms after the review deadline",
    },
    {
      kind: "agent_silent",
      agent_id: "quiet",
      detail: "no claim in this window; last claim at beat 5 (executing)",
    },
  ]);
});

Deno.test("buildBarReport() reports a window that saw nothing as extrapolated, with zero drift", () => {
  const r = buildBarReport(input());
  valid(r);
  assert.equal(r.agents_reporting, 0);
  assert.equal(r.tempo_drift_ms, 0);
  assert.equal(r.secret_rotations_ok, true);
  assert.deepEqual(r.issues.map((i) => i.kind), ["tempo_drift"]);
  assert.match(r.issues[0].detail, /no beat frames observed in this window/);
});

Deno.test("buildBarReport() flags drift beyond a tenth of a beat, signed, rounded to the microsecond", () => {
  const behind = buildBarReport(input({ tally: tally((t) => t.driftSum = 4 * 150.00049) }));
  assert.equal(behind.tempo_drift_ms, 150);
  assert.equal(behind.issues[0].detail, "beats arrive 150 ms behind the announced schedule");
  const ahead = buildBarReport(input({ tally: tally((t) => t.driftSum = -4 * 120) }));
  assert.equal(ahead.tempo_drift_ms, -120);
  assert.equal(ahead.issues[0].detail, "beats arrive 120 ms ahead of the announced schedule");
  const within = buildBarReport(input({ tally: tally((t) => t.driftSum = 4 * 100) }));
  assert.equal(within.tempo_drift_ms, 100);
  assert.deepEqual(within.issues, [], "exactly a tenth of a 1000 ms beat is not an issue");
});

Deno.test("buildBarReport() requires every key used to stay valid through the next window", () => {
  const end = T0 + 12_000;
  const t = tally((t) => {
    t.keys.add(key("a", "soon", end + 3_999));
    t.keys.add(key("b", "enough", end + 4_000));
    t.keys.add(key("c", "forever"));
    t.badKeys.set("d\u0000old", key("d", "old", T0));
  });
  const r = buildBarReport(input({ tally: t }));
  valid(r);
  assert.equal(r.secret_rotations_ok, false);
  assert.deepEqual(r.issues, [
    { kind: "key_rotation", agent_id: "d", detail: "key old was used outside its validity period" },
    {
      kind: "key_rotation",
      agent_id: "a",
      detail: `key soon expires at ${new Date(end + 3_999).toISOString()}, within the next window`,
    },
  ]);
});

Deno.test("buildBarReport() tallies rejected claims per reason with a count and the first agents", () => {
  const t = tally((t) => {
    t.rejected.set("stale", { count: 3, agents: ["x", "y"] });
    t.rejected.set("malformed", { count: 1, agents: [] });
  });
  const r = buildBarReport(input({ tally: t }));
  valid(r);
  assert.deepEqual(r.issues, [
    { kind: "claims_rejected", detail: "3 claims rejected: stale (agents: x, y)", count: 3 },
    { kind: "claims_rejected", detail: "1 claims rejected: malformed", count: 1 },
  ]);
});

Deno.test("buildBarReport() caps issues in priority order, summarising each kind that does not fit", () => {
  const t = tally((t) => {
    t.rejected.set("replay", { count: 2, agents: ["r"] });
    for (let i = 0; i < 10; i++) t.agents.set(`f${i}`, AgentMark.Reported | AgentMark.Failed);
    t.agents.set("b", AgentMark.Reported | AgentMark.Blocked);
  });
  const silent = Array.from({ length: 3 }, (_, i) => ({
    agentId: `s${i}`,
    lastBeat: 1,
    lastState: "planning" as const,
  }));
  const r = buildBarReport(input({ tally: t, silent, maxIssues: 6 }));
  valid(r);
  assert.deepEqual(r.issues.map((i) => i.kind), [
    "claims_rejected",
    "agent_failed",
    "agent_failed",
    "agent_failed",
    "agent_blocked",
    "agent_silent",
  ]);
  assert.deepEqual(r.issues[3], {
    kind: "agent_failed",
    detail: "8 more agent_failed entries not listed",
    count: 8,
  });
  assert.deepEqual(r.issues[5], {
    kind: "agent_silent",
    detail: "3 more agent_silent entries not listed",
    count: 3,
  });
});

Deno.test("buildBarReport() clips details and agent ids to the schema's limits", () => {
  const long = "x".repeat(600);
  const t = tally((t) => {
    t.agents.set("a".repeat(300), AgentMark.Reported | AgentMark.Failed);
    t.notes.set("a".repeat(300), long);
  });
  const r = buildBarReport(input({ tally: t }));
  valid(r);
  assert.equal(r.issues[0].detail.length, 512);
  assert.ok(r.issues[0].detail.endsWith("…"));
  assert.equal(r.issues[0].agent_id?.length, 256);
});

Deno.test("buildBarReport() is pure: same input, same report, input untouched", () => {
  const t = tally((t) => {
    t.agents.set("a", AgentMark.Reported | AgentMark.OnTime);
    t.rejected.set("schema", { count: 1, agents: ["z"] });
  });
  const i = input({ tally: t, silent: [{ agentId: "q", lastBeat: 0, lastState: "planning" }] });
  const before = structuredClone({ agents: [...t.agents], rejected: [...t.rejected] });
  const first = buildBarReport(i);
  assert.deepEqual(buildBarReport(i), first);
  assert.deepEqual({ agents: [...t.agents], rejected: [...t.rejected] }, before);
});

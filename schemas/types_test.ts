// Keeps sdk/_messages.ts and the JSON Schemas in step. Each FIELDS table below must satisfy a
// type derived from the TypeScript interface (every key, `required` true exactly for the
// non-optional ones, the JSON type matching the TS type), so adding or changing a field in the
// interface breaks `deno check`; the tests then compare the same tables with the schemas, so a
// schema change without the interface change fails the run.

import assert from "node:assert/strict";
import { type JsonSchema, validateMessage } from "./mod.ts";
import {
  BARREPORT_V1_SCHEMA,
  BEATFRAME_V1_SCHEMA,
  STATUSCLAIM_V1_SCHEMA,
} from "./_builtin_schemas.ts";
import {
  type BarReport,
  type BarReportIssue,
  type BeatFrame,
  CLAIM_STATES,
  IssueKind,
  MessageType,
  PHASES,
  type StatusClaim,
} from "../core/mod.ts";

type JsonTypeOf<T> = T extends string ? "string"
  : T extends number ? "integer" | "number"
  : T extends boolean ? "boolean"
  : T extends readonly unknown[] ? "array"
  : "object";

type FieldSpec<T> = {
  [K in keyof T]-?: {
    required: Partial<Pick<T, K>> extends Pick<T, K> ? false : true;
    type: JsonTypeOf<NonNullable<T[K]>>;
  };
};

const BEATFRAME_FIELDS = {
  type: { required: true, type: "string" },
  cluster_id: { required: true, type: "string" },
  beat_index: { required: true, type: "integer" },
  downbeat: { required: true, type: "boolean" },
  phase: { required: true, type: "string" },
  hlc: { required: true, type: "string" },
  deadline_at: { required: true, type: "string" },
  tempo_bpm: { required: true, type: "number" },
  window_id: { required: true, type: "string" },
  beats_per_bar: { required: false, type: "integer" },
  next_tempo_bpm: { required: false, type: "number" },
  epoch: { required: false, type: "integer" },
} as const satisfies FieldSpec<BeatFrame>;

const STATUSCLAIM_FIELDS = {
  type: { required: true, type: "string" },
  agent_id: { required: true, type: "string" },
  task_id: { required: true, type: "string" },
  beat_index: { required: true, type: "integer" },
  state: { required: true, type: "string" },
  beats_left: { required: true, type: "integer" },
  progress: { required: true, type: "number" },
  notes: { required: true, type: "string" },
  hlc: { required: true, type: "string" },
} as const satisfies FieldSpec<StatusClaim>;

const BARREPORT_FIELDS = {
  type: { required: true, type: "string" },
  window_id: { required: true, type: "string" },
  from_beat: { required: true, type: "integer" },
  to_beat: { required: true, type: "integer" },
  agents_reporting: { required: true, type: "integer" },
  on_time_reviews: { required: true, type: "integer" },
  help_promises_fulfilled: { required: true, type: "integer" },
  secret_rotations_ok: { required: true, type: "boolean" },
  tempo_drift_ms: { required: true, type: "number" },
  issues: { required: true, type: "array" },
} as const satisfies FieldSpec<BarReport>;

const ISSUE_FIELDS = {
  kind: { required: true, type: "string" },
  agent_id: { required: false, type: "string" },
  detail: { required: true, type: "string" },
  count: { required: false, type: "integer" },
} as const satisfies FieldSpec<BarReportIssue>;

type Fields = Record<string, { required: boolean; type: string }>;

function assertMatches(schema: JsonSchema, fields: Fields, label: string): void {
  const properties = schema.properties as Record<string, { type: string }>;
  assert.deepEqual(Object.keys(properties).sort(), Object.keys(fields).sort(), `${label} fields`);
  const required = Object.entries(fields).filter(([, f]) => f.required).map(([k]) => k);
  assert.deepEqual([...(schema.required as string[])].sort(), required.sort(), `${label} required`);
  for (const [key, field] of Object.entries(fields)) {
    assert.equal(properties[key].type, field.type, `${label}.${key} type`);
  }
  assert.equal(schema.additionalProperties, false, `${label} additionalProperties`);
}

function prop(schema: JsonSchema, ...path: string[]): Record<string, unknown> {
  let node = schema as Record<string, unknown>;
  for (const key of path) node = node[key] as Record<string, unknown>;
  return node;
}

Deno.test("BeatFrame's interface and schema declare the same fields", () => {
  assertMatches(BEATFRAME_V1_SCHEMA, BEATFRAME_FIELDS, "BeatFrame");
  assert.equal(prop(BEATFRAME_V1_SCHEMA, "properties", "type").const, MessageType.BeatFrame);
  assert.deepEqual(prop(BEATFRAME_V1_SCHEMA, "properties", "phase").enum, PHASES);
});

Deno.test("StatusClaim's interface and schema declare the same fields", () => {
  assertMatches(STATUSCLAIM_V1_SCHEMA, STATUSCLAIM_FIELDS, "StatusClaim");
  assert.equal(prop(STATUSCLAIM_V1_SCHEMA, "properties", "type").const, MessageType.StatusClaim);
  assert.deepEqual(prop(STATUSCLAIM_V1_SCHEMA, "properties", "state").enum, CLAIM_STATES);
});

Deno.test("BarReport's and BarReportIssue's interfaces and schemas declare the same fields", () => {
  assertMatches(BARREPORT_V1_SCHEMA, BARREPORT_FIELDS, "BarReport");
  assert.equal(prop(BARREPORT_V1_SCHEMA, "properties", "type").const, MessageType.BarReport);
  const items = prop(BARREPORT_V1_SCHEMA, "properties", "issues", "items");
  assertMatches(items, ISSUE_FIELDS, "BarReportIssue");
  assert.deepEqual(prop(items, "properties", "kind").enum, Object.values(IssueKind));
});

Deno.test("each schema carries its $id, title and semver version", () => {
  const expected: [JsonSchema, string, string][] = [
    [BEATFRAME_V1_SCHEMA, "beatframe-v1", "1.2.0"],
    [STATUSCLAIM_V1_SCHEMA, "statusclaim-v1", "1.0.0"],
    [BARREPORT_V1_SCHEMA, "barreport-v1", "1.0.0"],
  ];
  for (const [schema, name, version] of expected) {
    assert.equal(schema.$id, `https://backbeat.chorus.dev/schemas/${name}.schema.json`);
    assert.equal(schema.$schema, "http://json-schema.org/draft-07/schema#");
    assert.equal(typeof schema.title, "string");
    assert.equal(typeof schema.description, "string");
    assert.equal(schema.version, version);
  }
});

Deno.test("messages built from the TypeScript types validate", () => {
  const frame: BeatFrame = {
    type: "backbeat.beatframe.v1",
    cluster_id: "chorus-dev",
    beat_index: 8,
    downbeat: true,
    phase: "plan",
    hlc: "0192:a3f0:0000",
    deadline_at: new Date(Date.UTC(2025, 8, 5, 12, 30)).toISOString(),
    tempo_bpm: 2,
    window_id: "0123456789abcdef0123456789abcdef",
    beats_per_bar: 4,
    next_tempo_bpm: 4,
  };
  const claim: StatusClaim = {
    type: "backbeat.statusclaim.v1",
    agent_id: "worker-1",
    task_id: "task-1",
    beat_index: 8,
    state: "helping",
    beats_left: 0,
    progress: 1,
    notes: "",
    hlc: "0192:a3f0:0001",
  };
  const report: BarReport = {
    type: "backbeat.barreport.v1",
    window_id: "0123456789abcdef0123456789abcdef",
    from_beat: 8,
    to_beat: 11,
    agents_reporting: 1,
    on_time_reviews: 1,
    help_promises_fulfilled: 1,
    secret_rotations_ok: true,
    tempo_drift_ms: -0.5,
    issues: [
      { kind: "late_review", agent_id: "worker-2", detail: "review 3 s late", count: 2 },
      { kind: "key_rotation", detail: "key expires soon" },
    ],
  };
  for (const message of [frame, claim, report]) {
    assert.deepEqual(validateMessage(message), { valid: true, type: message.type, errors: [] });
  }
});

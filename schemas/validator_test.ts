import assert from "node:assert/strict";
import {
  assertValidMessage,
  BUILTIN_SCHEMAS,
  defaultMessageValidator,
  MessageValidator,
  validateMessage,
  validateMessageString,
} from "./mod.ts";
import { BackbeatError, InvalidMessageError } from "../core/mod.ts";

const EXAMPLES = new URL("./examples/", import.meta.url);

interface ExpectedError {
  path: string;
  keyword: string;
  message: string;
  line?: number;
  column?: number;
}
interface Manifest {
  valid: Record<string, string>;
  invalid: Record<string, ExpectedError>;
}

const manifest: Manifest = JSON.parse(
  await Deno.readTextFile(new URL("manifest.jsonc", EXAMPLES)),
);

async function jsonFiles(dir: string): Promise<string[]> {
  const names: string[] = [];
  for await (const entry of Deno.readDir(new URL(dir, EXAMPLES))) {
    if (entry.isFile && entry.name.endsWith(".json")) names.push(entry.name);
  }
  return names.sort();
}

const validator = new MessageValidator();

const README_BEATFRAME = {
  type: "backbeat.beatframe.v1",
  cluster_id: "chorus-prod",
  beat_index: 1337,
  downbeat: false,
  phase: "execute",
  hlc: "7ffd:0001:abcd",
  deadline_at: "2025-09-05T12:30:00Z",
  tempo_bpm: 2.0,
  window_id: "7e9b0e6c4c9a4e59b7f2d9a3c1b2e4d5",
};
const README_STATUSCLAIM = {
  type: "backbeat.statusclaim.v1",
  agent_id: "search-indexer:worker-03",
  task_id: "index-batch:20250905-120",
  beat_index: 1337,
  state: "executing",
  beats_left: 3,
  progress: 0.65,
  notes: "processing batch 120/200",
  hlc: "7ffd:0001:beef",
};
const README_BARREPORT = {
  type: "backbeat.barreport.v1",
  window_id: "7e9b0e6c4c9a4e59b7f2d9a3c1b2e4d5",
  from_beat: 240,
  to_beat: 359,
  agents_reporting: 978,
  on_time_reviews: 942,
  help_promises_fulfilled: 87,
  secret_rotations_ok: true,
  tempo_drift_ms: 7.3,
  issues: [],
};

Deno.test("the manifest lists every example file, and only those", async () => {
  assert.deepEqual(await jsonFiles("valid/"), Object.keys(manifest.valid).sort());
  assert.deepEqual(await jsonFiles("invalid/"), Object.keys(manifest.invalid).sort());
});

Deno.test("every valid example validates with its type", async () => {
  for (const [name, type] of Object.entries(manifest.valid)) {
    const text = await Deno.readTextFile(new URL(`valid/${name}`, EXAMPLES));
    const result = validator.validateMessageString(text);
    assert.deepEqual(result, { valid: true, type, errors: [] }, name);
  }
});

Deno.test("every invalid example fails with exactly its expected error", async () => {
  for (const [name, expected] of Object.entries(manifest.invalid)) {
    const text = await Deno.readTextFile(new URL(`invalid/${name}`, EXAMPLES));
    const result = validator.validateMessageString(text);
    assert.equal(result.valid, false, name);
    assert.deepEqual(result.errors, [expected], name);
  }
});

Deno.test("the published README examples validate", () => {
  for (const message of [README_BEATFRAME, README_STATUSCLAIM, README_BARREPORT]) {
    assert.deepEqual(validateMessage(message), { valid: true, type: message.type, errors: [] });
  }
});

Deno.test("the README example files hold the README examples verbatim", async () => {
  const pairs = [
    ["beatframe-readme.json", README_BEATFRAME],
    ["statusclaim-readme.json", README_STATUSCLAIM],
    ["barreport-readme.json", README_BARREPORT],
  ] as const;
  for (const [name, message] of pairs) {
    const text = await Deno.readTextFile(new URL(`valid/${name}`, EXAMPLES));
    assert.deepEqual(JSON.parse(text), message);
  }
});

Deno.test("each troubleshooting-table case fails with its stated message", () => {
  const cases: [Record<string, unknown>, string][] = [
    [{ ...README_BEATFRAME, type: undefined }, "type field is required"],
    [{ ...README_BEATFRAME, hlc: "7ffd0001abcd" }, "hlc must match pattern XXXX:XXXX:XXXX (hex)"],
    [
      { ...README_BEATFRAME, window_id: "7e9b0e6c" },
      "window_id must be exactly 32 hex characters",
    ],
    [{ ...README_BEATFRAME, phase: "warmup" }, "phase must be one of: plan, execute, review"],
    [{ ...README_BEATFRAME, tempo_bpm: 0.09 }, "tempo_bpm must be at least 0.1"],
  ];
  for (const [message, expected] of cases) {
    const result = validateMessage(message);
    assert.equal(result.valid, false);
    assert.deepEqual(result.errors.map((e) => e.message), [expected]);
    // The table's first column is a prefix search people run on logs.
    assert.ok(result.errors[0].message.startsWith(expected.split(" must ")[0]));
  }
});

Deno.test("an unknown type names the known ones", () => {
  const result = validateMessage({ type: "backbeat.tempo.v1" });
  assert.equal(result.type, null);
  assert.deepEqual(result.errors, [{
    path: "/type",
    keyword: "type",
    message:
      'unknown type "backbeat.tempo.v1"; expected one of: backbeat.beatframe.v1, backbeat.statusclaim.v1, backbeat.barreport.v1',
  }]);
});

Deno.test("validateMessage() reports every problem of a message at once", () => {
  const result = validateMessage({
    ...README_STATUSCLAIM,
    progress: 1.5,
    beats_left: -1,
    state: "waiting",
    extra: true,
  });
  assert.equal(result.type, "backbeat.statusclaim.v1");
  assert.deepEqual(result.errors.map((e) => e.message).sort(), [
    "beats_left must be at least 0",
    "progress must be at most 1",
    "state must be one of: idle, planning, executing, reviewing, completed, failed, blocked, helping",
    'unknown field "extra" is not allowed',
  ]);
});

Deno.test("validateMessage() rejects values that are not objects", () => {
  assert.equal(validateMessage(null).errors[0].message, "message must be a JSON object, not null");
  assert.equal(
    validateMessageString("null").errors[0].message,
    "message must be a JSON object, not null",
  );
  assert.equal(
    validateMessageString('"x"').errors[0].message,
    "message must be a JSON object, not string",
  );
  assert.equal(validateMessage("x").errors[0].message, "message must be a JSON object, not string");
  assert.equal(
    validateMessage([]).errors[0].message,
    "message must be a JSON object, not an array",
  );
});

Deno.test("to_beat below from_beat fails even though each field alone is valid", () => {
  const result = validateMessage({ ...README_BARREPORT, from_beat: 10, to_beat: 9 });
  assert.deepEqual(result.errors, [{
    path: "/to_beat",
    keyword: "beatRange",
    message: "to_beat must be greater than or equal to from_beat",
  }]);
  assert.equal(validateMessage({ ...README_BARREPORT, from_beat: 9, to_beat: 9 }).valid, true);
});

Deno.test("to_beat below from_beat is reported beside schema errors", () => {
  const result = validateMessage({ ...README_BARREPORT, from_beat: 10, to_beat: 9, issues: 1 });
  assert.deepEqual(result.errors.map((e) => e.keyword), ["type", "beatRange"]);
});

Deno.test("validateMessageString() reports malformed JSON with line and column", () => {
  const cases: [string, number, number, string][] = [
    ["", 1, 1, "expected a JSON value, found end of input"],
    ['{"type": }', 1, 10, 'expected a JSON value, found character "}"'],
    [
      '{\n  "a": 1,\n  "b" 2\n}',
      3,
      7,
      "expected ':' after the property name, found character \"2\"",
    ],
    ['{"a": [1 2]}', 1, 10, "expected ',' or ']' after the array element, found character \"2\""],
    [
      '{"a": 1,}',
      1,
      9,
      "expected a property name in double quotes after ',', found character \"}\"",
    ],
    ['{"a": "x\u0001"}', 1, 9, "unescaped control character in string"],
    ['{"a": "\\q"}', 1, 8, "invalid escape sequence in string"],
    ['{"a": "\\u12G4"}', 1, 8, "invalid \\u escape"],
    ['{"a": "abc', 1, 11, "unterminated string"],
    ['{"a": 01}', 1, 8, "expected ',' or '}' after the property value"],
    ['{"a": 1.}', 1, 9, "expected a digit after the decimal point"],
    ['{"a": 1e}', 1, 9, "expected a digit in the exponent"],
    ['{"a": -x}', 1, 8, "expected a digit"],
    ["{} {}", 1, 4, "expected end of input after the JSON value"],
    ["tru", 1, 1, "expected a JSON value"],
    ["{'a': 1}", 1, 2, "expected a property name in double quotes or '}'"],
    ['[1, {"a": [true, nul]}]', 1, 18, "expected a JSON value"],
  ];
  for (const [text, line, column, reason] of cases) {
    const result = validateMessageString(text);
    assert.equal(result.valid, false, text);
    assert.equal(result.type, null);
    assert.equal(result.errors.length, 1);
    const [error] = result.errors;
    assert.equal(error.keyword, "json", text);
    assert.equal(error.path, "");
    assert.deepEqual([error.line, error.column], [line, column], text);
    assert.ok(
      error.message.startsWith(`invalid JSON at line ${line}, column ${column}: ${reason}`),
      `${text}: ${error.message}`,
    );
  }
});

Deno.test("validateMessageString() survives deeply nested JSON without throwing", () => {
  const deep = "[".repeat(100_000);
  const result = validateMessageString(deep);
  assert.equal(result.errors[0].keyword, "json");
  assert.equal(result.errors[0].column, 100_001);
});

Deno.test("MessageValidator caps the number of errors per message", () => {
  const capped = new MessageValidator({ maxErrors: 3 });
  const issues = Array.from({ length: 50 }, () => ({ kind: "nope", detail: 1 }));
  const result = capped.validateMessage({ ...README_BARREPORT, issues });
  assert.equal(result.errors.length, 3);
  assert.equal(
    new MessageValidator().validateMessage({ ...README_BARREPORT, issues }).errors.length,
    50,
  );
});

Deno.test("MessageValidator rejects bad options and unusable schemas", async () => {
  assert.throws(() => new MessageValidator({ maxErrors: 0 }), RangeError);
  assert.throws(() => new MessageValidator({ maxErrors: 1.5 }), RangeError);
  await assert.rejects(MessageValidator.fromSchemas([]), TypeError);
  await assert.rejects(
    MessageValidator.fromSchemas([{ type: "object" }]),
    /must declare its message type as properties.type.const/,
  );
  await assert.rejects(
    MessageValidator.fromSchemas([BUILTIN_SCHEMAS[0], BUILTIN_SCHEMAS[0]]),
    /another schema already declares backbeat.beatframe.v1/,
  );
  await assert.rejects(
    MessageValidator.fromSchemas([{ properties: { type: { const: "x" } }, frobnicate: true }]),
    (err: unknown) => err instanceof TypeError && /Cannot compile schema #0/.test(err.message),
  );
});

Deno.test("schemas compiled at run time agree with the precompiled ones on every example", async () => {
  const runtime = await MessageValidator.fromSchemas(BUILTIN_SCHEMAS);
  for (const dir of ["valid", "invalid"]) {
    for (const name of await jsonFiles(`${dir}/`)) {
      const text = await Deno.readTextFile(new URL(`${dir}/${name}`, EXAMPLES));
      assert.deepEqual(
        runtime.validateMessageString(text),
        validator.validateMessageString(text),
        name,
      );
    }
  }
});

Deno.test("MessageValidator.fromDirectory() loads a custom schema set", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const v2 = structuredClone(BUILTIN_SCHEMAS[1]) as Record<string, unknown>;
    const properties = v2.properties as Record<string, Record<string, unknown>>;
    properties.type.const = "backbeat.statusclaim.v2";
    await Deno.writeTextFile(`${dir}/statusclaim-v2.schema.json`, JSON.stringify(v2));
    await Deno.writeTextFile(`${dir}/notes.txt`, "not a schema");
    const custom = await MessageValidator.fromDirectory(dir);
    assert.deepEqual(custom.types, ["backbeat.statusclaim.v2"]);
    assert.equal(
      custom.validateMessage({ ...README_STATUSCLAIM, type: "backbeat.statusclaim.v2" }).valid,
      true,
    );
    assert.equal(
      custom.validateMessage(README_STATUSCLAIM).errors[0].message,
      'unknown type "backbeat.statusclaim.v1"; expected one of: backbeat.statusclaim.v2',
    );
    await Deno.writeTextFile(`${dir}/broken.json`, "{");
    await assert.rejects(MessageValidator.fromDirectory(dir), /Cannot load schema .*broken.json/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("MessageValidator.fromDirectory() explains a missing or empty directory", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await assert.rejects(MessageValidator.fromDirectory(dir), /holds no \*.json file/);
    await assert.rejects(
      MessageValidator.fromDirectory(`${dir}/absent`),
      /Cannot read schemas directory/,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("defaultMessageValidator() is built once and knows the three v1 types", () => {
  assert.equal(defaultMessageValidator(), defaultMessageValidator());
  assert.deepEqual(defaultMessageValidator().types, [
    "backbeat.beatframe.v1",
    "backbeat.statusclaim.v1",
    "backbeat.barreport.v1",
  ]);
});

Deno.test("assertValidMessage() passes valid messages and throws BackbeatError otherwise", () => {
  const value: unknown = structuredClone(README_BEATFRAME);
  assertValidMessage(value);
  assert.equal(value.type, "backbeat.beatframe.v1"); // narrowed to BackbeatMessage
  assert.throws(
    () => assertValidMessage({ ...README_BEATFRAME, progress: 1 }),
    (err: unknown) =>
      err instanceof InvalidMessageError && err instanceof BackbeatError &&
      err.code === "invalid_message" && err.errors[0].path === "/progress" &&
      err.message ===
        'Invalid backbeat.beatframe.v1 message: unknown field "progress" is not allowed',
  );
});

Deno.test("long unknown names are shortened in messages", () => {
  const result = validateMessage({ type: "x".repeat(10_000) });
  assert.ok(result.errors[0].message.length < 300, result.errors[0].message);
  const extra = validateMessage({ ...README_BEATFRAME, ["k".repeat(10_000)]: 1 });
  assert.ok(extra.errors[0].message.length < 300);
});

// A schema that nests itself: every level of a message is checked by the same schema.
const RECURSIVE_SCHEMA = {
  $id: "https://example.com/nested.schema.json",
  type: "object",
  properties: { type: { const: "example.nested.v1" }, child: { $ref: "#" } },
};
const nestedMessage = (depth: number): string =>
  '{"type":"example.nested.v1","child":'.repeat(depth - 1) + '{"type":"example.nested.v1"}' +
  "}".repeat(depth - 1);

Deno.test("a recursive schema with 100,000-deep input reports the depth, never overflows", async () => {
  const nested = await MessageValidator.fromSchemas([RECURSIVE_SCHEMA]);
  const deep = nestedMessage(100_000);
  const tooDeep = {
    valid: false,
    type: "example.nested.v1",
    errors: [{
      path: "",
      keyword: "depth",
      message: "message nesting is too deep (more than 256 levels of objects and arrays)",
    }],
  };
  assert.deepEqual(nested.validateMessageString(deep), tooDeep);
  assert.deepEqual(nested.validateMessage(JSON.parse(deep)), tooDeep);
  assert.deepEqual(nested.validateMessageString(nestedMessage(257)), tooDeep);
  // 256 levels is the limit, not past it.
  assert.equal(nested.validateMessageString(nestedMessage(256)).valid, true);
  assert.equal(nested.validateMessage(JSON.parse(nestedMessage(256))).valid, true);
  // The built-in schemas refuse a deep text the same way.
  const frame = JSON.stringify({ ...README_BEATFRAME, notes: 0 }).replace(
    "0}",
    `${"[".repeat(100_000)}${"]".repeat(100_000)}}`,
  );
  assert.equal(validateMessageString(frame).errors[0].keyword, "depth");
});

Deno.test("a validator that runs out of stack is reported, not thrown", async () => {
  const nested = await MessageValidator.fromSchemas([RECURSIVE_SCHEMA]);
  // A cycle has no depth to measure, so ajv recurses until the stack runs out.
  const cyclic: Record<string, unknown> = { type: "example.nested.v1" };
  cyclic.child = cyclic;
  assert.deepEqual(nested.validateMessage(cyclic).errors, [{
    path: "",
    keyword: "depth",
    message: "message nesting is too deep for this schema (its validator ran out of stack)",
  }]);
});

Deno.test("validateMessageString() reports a repeated key, so the first value cannot hide", () => {
  // JSON.parse keeps the last hlc, which is valid; the first one is not.
  const text = JSON.stringify(README_BEATFRAME).replace('"hlc":', '"hlc":"nope","hlc":');
  const column = text.lastIndexOf('"hlc"') + 1;
  assert.deepEqual(validateMessageString(text), {
    valid: false,
    type: "backbeat.beatframe.v1",
    errors: [{
      path: "/hlc",
      keyword: "duplicateKey",
      message: `duplicate key "hlc" at line 1, column ${column}`,
      line: 1,
      column,
    }],
  });
  // Schema errors follow the repeats.
  const both = text.replace('"phase":"execute"', '"phase":"rest"');
  assert.deepEqual(validateMessageString(both).errors.map((e) => e.keyword), [
    "duplicateKey",
    "enum",
  ]);
});

Deno.test("validateMessageString() locates a repeated key in a nested object", () => {
  const report = {
    ...README_BARREPORT,
    issues: [{ kind: "agent_silent", detail: "a" }, { kind: "late_review", detail: "b" }],
  };
  const text = JSON.stringify(report, null, 2).replace(
    '"kind": "late_review"',
    '"kind": "late_review",\n      "kind": "agent_failed"',
  );
  const [error, ...rest] = validateMessageString(text).errors;
  assert.deepEqual(rest, []);
  assert.equal(error.path, "/issues/1/kind");
  assert.equal(error.keyword, "duplicateKey");
  const lines = text.split("\n");
  const line = lines.findIndex((l) => l.includes("agent_failed")) + 1;
  assert.equal(error.message, `duplicate key "kind" in issues[1] at line ${line}, column 7`);
  assert.deepEqual([error.line, error.column], [line, 7]);
  // The same key in sibling objects is not a repeat, nor a key written with an escape.
  assert.equal(validateMessageString(JSON.stringify(report)).valid, true);
  const escaped = JSON.stringify(README_BEATFRAME).replace('"phase":', '"\\u0070hase":');
  assert.equal(validateMessageString(escaped).valid, true);
  assert.equal(
    validateMessageString(escaped.replace('"hlc":', '"\\u0070hase":"plan","hlc":')).errors[0]
      .message.startsWith('duplicate key "phase"'),
    true,
  );
});

Deno.test("repeated keys count against maxErrors", () => {
  const repeats = Array.from({ length: 100 }, () => '"notes":"x"').join(",");
  const text = JSON.stringify(README_STATUSCLAIM).replace("{", `{${repeats},`);
  assert.equal(new MessageValidator({ maxErrors: 5 }).validateMessageString(text).errors.length, 5);
  assert.equal(validateMessageString(text).errors.length, 50);
});

Deno.test("MessageValidator.fromDirectory() names the schema file that fails, and why", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const write = (name: string, schema: unknown) =>
      Deno.writeTextFile(`${dir}/${name}`, JSON.stringify(schema));
    await write("a-good.json", BUILTIN_SCHEMAS[0]);
    await write("b-strict.json", { properties: { type: { const: "x" } }, frobnicate: true });
    await assert.rejects(
      MessageValidator.fromDirectory(dir),
      (err: unknown) =>
        err instanceof TypeError &&
        err.message.startsWith(`Cannot compile schema ${dir}/b-strict.json: strict mode`) &&
        err.message.includes("frobnicate"),
    );
    await write("b-strict.json", { type: "object" });
    await assert.rejects(
      MessageValidator.fromDirectory(dir),
      new RegExp(`Cannot use schema ${dir}/b-strict\\.json: it must declare its message type`),
    );
    await write("b-strict.json", BUILTIN_SCHEMAS[0]);
    await assert.rejects(
      MessageValidator.fromDirectory(dir),
      new RegExp(
        `Cannot use schema ${dir}/b-strict\\.json: another schema already declares backbeat\\.beatframe\\.v1 \\(${dir}/a-good\\.json\\)`,
      ),
    );
    await Deno.writeTextFile(`${dir}/b-strict.json`, '{\n  "type": "object",\n}');
    await assert.rejects(
      MessageValidator.fromDirectory(dir),
      new RegExp(
        `Cannot load schema ${dir}/b-strict\\.json: invalid JSON at line 3, column 1: expected a property name`,
      ),
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

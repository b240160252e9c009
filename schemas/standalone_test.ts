import assert from "node:assert/strict";
import { fullFormats } from "ajv-formats/dist/formats.js";
import ucs2lengthModule from "ajv/dist/runtime/ucs2length.js";
import { generateStandalone } from "./_generate_standalone.ts";
import { isDateTime, ucs2length } from "./_standalone_runtime.ts";

Deno.test("_standalone.ts is what ajv generates from the current schemas", async () => {
  const current = await Deno.readTextFile(new URL("./_standalone.ts", import.meta.url));
  assert.ok(
    current === generateStandalone(),
    "schemas/_standalone.ts is stale: run deno run --allow-read --allow-write schemas/_generate_standalone.ts",
  );
});

const ajvDateTime = (fullFormats["date-time"] as { validate: (s: string) => boolean }).validate;
const ajvUcs2length = (ucs2lengthModule as unknown as { default: (s: string) => number }).default;

Deno.test("isDateTime() accepts exactly what ajv-formats' date-time accepts", () => {
  const samples = [
    "2025-09-05T12:30:00Z",
    "2025-09-05t12:30:00z",
    "2025-09-05 12:30:00Z",
    "2025-09-05T12:30:00.123456789Z",
    "2025-09-05T12:30:00+02:00",
    "2025-09-05T12:30:00-0230",
    "2025-09-05T12:30:00+02",
    "2025-09-05T12:30:00",
    "2025-09-05T12:30Z",
    "2025-09-05",
    "2025-02-29T00:00:00Z",
    "2024-02-29T00:00:00Z",
    "1900-02-29T00:00:00Z",
    "2000-02-29T00:00:00Z",
    "2025-04-31T00:00:00Z",
    "2025-13-01T00:00:00Z",
    "2025-00-10T00:00:00Z",
    "2025-01-00T00:00:00Z",
    "2025-09-05T24:00:00Z",
    "2025-09-05T23:60:00Z",
    "2016-12-31T23:59:60Z",
    "2016-12-31T18:59:60-05:00",
    "2016-12-31T22:59:60Z",
    "2016-12-31T23:59:61Z",
    "2025-09-05T12:30:00+24:00",
    "2025-09-05T12:30:00+02:60",
    "2025-09-05T12:30:00.Z",
    "2025-09-05T12:30:00ZZ",
    "2025-09-05T12:30:00 Z",
    "2025-09-05TT12:30:00Z",
    " 2025-09-05T12:30:00Z",
    "２０２５-09-05T12:30:00Z",
    "",
    "next tuesday",
  ];
  for (const sample of samples) {
    assert.equal(isDateTime(sample), ajvDateTime(sample), JSON.stringify(sample));
  }
  // And a few thousand mutations of a valid stamp, character by character.
  const base = "2016-12-31T23:59:60.5+00:00";
  const alphabet = "0123456789-:.+TtZz \t";
  for (let i = 0; i < base.length; i++) {
    for (const c of alphabet) {
      const sample = base.slice(0, i) + c + base.slice(i + 1);
      assert.equal(isDateTime(sample), ajvDateTime(sample), JSON.stringify(sample));
      const shorter = base.slice(0, i) + base.slice(i + 1);
      assert.equal(isDateTime(shorter), ajvDateTime(shorter), JSON.stringify(shorter));
    }
  }
});

Deno.test("ucs2length() counts code points like ajv's runtime helper", () => {
  for (
    const sample of ["", "abc", "ünïcödé", "✓", "😀", "a😀b", "\ud83d", "\ude00x", "\ud83d\ud83d"]
  ) {
    assert.equal(ucs2length(sample), ajvUcs2length(sample), JSON.stringify(sample));
  }
});

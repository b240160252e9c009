import assert from "node:assert/strict";
import { MAX_MESSAGE_DEPTH, nestsDeeperThan, scanJsonText } from "./_json_scan.ts";

const scan = (text: string, max = 50) => scanJsonText(text, JSON.parse(text), max);
const keysOf = (text: string) => scan(text).duplicates.map((d) => [d.container, d.key]);

Deno.test("scanJsonText() finds nothing in texts without repeated keys", () => {
  for (
    const text of [
      "{}",
      "[]",
      '"a"',
      "1",
      "null",
      "true",
      '{"a":{"a":{"a":1}}}', // the same key at different levels
      '{"issues":[{"kind":1},{"kind":2}],"kind":3}', // the same key in sibling objects
      '{"a":"\\"a\\":1,\\"a\\":2","b":"a"}', // keys inside a string value
      '{"a":":","b":" :","c":"\\" : \\"","d":{"e":"\\":"}}', // colons after quotes in strings
      '{"a\\\\":1,"a":2}', // "a\" and "a" differ
      '{"a":1,"b":{"c":[{"a":1,"b":2}],"a":[1,[2,{"b":3}]]}}',
      ' {\n  "a" : 1 ,\n  "b" : [ ] \n} ',
      `{${Array.from({ length: 1000 }, (_, i) => `"k${i}":${i}`).join(",")}}`,
    ]
  ) {
    assert.deepEqual(scan(text), { tooDeep: false, duplicates: [] }, text);
  }
});

Deno.test("scanJsonText() names each repeated key with its object's pointer and offset", () => {
  const text = '{"a":1,"b":[0,{"c":1,"c":2}],"a":3}';
  assert.deepEqual(scan(text).duplicates, [
    { key: "c", container: "/b/1", offset: text.indexOf('"c"', text.indexOf('"c"') + 1) },
    { key: "a", container: "", offset: text.lastIndexOf('"a"') },
  ]);
  // Decoded keys compare equal however they are escaped, and pointers escape "/" and "~".
  assert.deepEqual(keysOf('{"type":1,"\\u0074ype":2}'), [["", "type"]]);
  assert.deepEqual(keysOf('{"a/b":{"~":1,"\\u007e":2}}'), [["/a~1b", "~"]]);
  // After many keys the scan keeps them in a set; a repeat is still found.
  const many = Array.from({ length: 100 }, (_, i) => `"k${i}":${i}`).join(",");
  assert.deepEqual(keysOf(`{${many},"k7":0}`), [["", "k7"]]);
});

Deno.test("scanJsonText() is not fooled by extra colons or inherited keys", () => {
  // A repeat hidden by a string that adds one colon-after-quote: the counts differ, so the text
  // is tokenized and the repeat found.
  assert.deepEqual(keysOf('{"a":1,"a":"\\":"}'), [["", "a"]]);
  assert.deepEqual(keysOf('{"a" :\n1 , "a"\t: 2}'), [["", "a"]]);
  // An enumerable property on Object.prototype is no key of the text.
  const proto = Object.prototype as Record<string, unknown>;
  proto.polluted = 1;
  try {
    assert.deepEqual(keysOf('{"a":1,"a":2}'), [["", "a"]]);
  } finally {
    delete proto.polluted;
  }
});

Deno.test("scanJsonText() stops collecting repeats at the cap", () => {
  const text = `{${Array.from({ length: 20 }, () => '"a":1').join(",")}}`;
  assert.equal(scan(text).duplicates.length, 19);
  assert.equal(scan(text, 3).duplicates.length, 3);
});

Deno.test("scanJsonText() refuses nesting deeper than MAX_MESSAGE_DEPTH", () => {
  const nested = (depth: number) => "[".repeat(depth) + "]".repeat(depth);
  assert.equal(scan(nested(MAX_MESSAGE_DEPTH)).tooDeep, false);
  assert.equal(scan(nested(MAX_MESSAGE_DEPTH + 1)).tooDeep, true);
  assert.equal(scan(nested(100_000)).tooDeep, true);
  const objects = '{"a":'.repeat(100_000) + "1" + "}".repeat(100_000);
  assert.equal(scan(objects).tooDeep, true);
});

Deno.test("scanJsonText() is linear in an object's key count", () => {
  const keys = Array.from({ length: 100_000 }, (_, i) => `"k${i}":0`).join(",");
  const start = performance.now();
  assert.deepEqual(keysOf(`{${keys},"k99999":1}`), [["", "k99999"]]);
  assert.ok(performance.now() - start < 2_000, "100,000 keys scanned in well under 2 s");
});

Deno.test("nestsDeeperThan() measures parsed values, visiting shared parts once", () => {
  const nested = (depth: number): unknown => JSON.parse("[".repeat(depth) + "]".repeat(depth));
  assert.equal(nestsDeeperThan(nested(MAX_MESSAGE_DEPTH)), false);
  assert.equal(nestsDeeperThan(nested(MAX_MESSAGE_DEPTH + 1)), true);
  assert.equal(nestsDeeperThan(nested(100_000)), true);
  assert.equal(nestsDeeperThan({ a: 1, b: "x" }), false);
  assert.equal(nestsDeeperThan(null), false);
  // 2^60 paths through 60 shared levels: a walk that revisited shared parts would never end.
  let shared: unknown[] = [];
  for (let i = 0; i < 60; i++) shared = [shared, shared];
  assert.equal(nestsDeeperThan(shared), false);
  // A cycle ends the walk too (ajv's stack overflow is caught by the validator instead).
  const cycle: Record<string, unknown> = {};
  cycle.self = cycle;
  assert.equal(nestsDeeperThan(cycle), false);
});

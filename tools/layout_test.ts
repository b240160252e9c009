import assert from "node:assert/strict";
import { join } from "node:path";
import { checkLayout, type Edge, findCycles, folderOf, readGraph } from "./layout.ts";

const e = (from: string, to: string): Edge => ({ from, to });
const filesOf = (edges: readonly Edge[]) => [...new Set(edges.flatMap((x) => [x.from, x.to]))];
const check = (edges: readonly Edge[]) => checkLayout(filesOf(edges), edges);

Deno.test("folderOf() is the first path segment, or . at the top", () => {
  assert.equal(folderOf("core/_bus.ts"), "core");
  assert.equal(folderOf("reverb/dashboard/app.js"), "reverb");
  assert.equal(folderOf("mod.ts"), ".");
});

Deno.test("checkLayout() passes a clean graph", () => {
  const edges = [
    e("mod.ts", "sdk/mod.ts"),
    e("sdk/mod.ts", "sdk/_client.ts"),
    e("sdk/_client.ts", "core/mod.ts"),
    e("sdk/mod.ts", "nats/mod.ts"),
    e("nats/_connect.ts", "core/mod.ts"),
    e("core/mod.ts", "core/_bus.ts"),
    e("pulse/_pulse.ts", "service/mod.ts"),
    e("tests/bus_contract_test.ts", "tests/until.ts"),
    e("tests/bus_contract_test.ts", "sdk/mod.ts"),
    e("bench/pulse_bench.ts", "tests/nats_server.ts"),
  ];
  assert.deepEqual(check(edges), []);
});

Deno.test("checkLayout() catches a private file imported from another folder", () => {
  assert.deepEqual(check([e("sdk/_client.ts", "core/_bus.ts")]), [
    "sdk/_client.ts imports core/_bus.ts, a file private to core/ (use core/mod.ts)",
  ]);
  // Outside folders too: tests reach a folder through its mod.ts.
  assert.deepEqual(check([e("tests/x_test.ts", "sdk/_beat_feed.ts")]), [
    "tests/x_test.ts imports sdk/_beat_feed.ts, a file private to sdk/ (use sdk/mod.ts)",
  ]);
  // Within its folder a private file is fair game.
  assert.deepEqual(
    check([e("core/mod.ts", "core/_bus.ts"), e("core/bus_test.ts", "core/_bus.ts")]),
    [],
  );
});

Deno.test("checkLayout() catches upward and sideways imports and unknown folders", () => {
  assert.deepEqual(check([e("core/_bus.ts", "sdk/mod.ts")]), [
    "core/_bus.ts imports sdk/mod.ts: core/ may import only folders below it, not sdk/",
  ]);
  // Same layer is not below.
  assert.deepEqual(check([e("pulse/_pulse.ts", "reverb/mod.ts")]), [
    "pulse/_pulse.ts imports reverb/mod.ts: pulse/ may import only folders below it, not reverb/",
  ]);
  assert.deepEqual(check([e("sdk/mod.ts", "tests/until.ts")]), [
    "sdk/mod.ts imports tests/until.ts: library code must not depend on tests/",
  ]);
  assert.deepEqual(check([e("misc/x.ts", "core/mod.ts")]), [
    "misc/x.ts is in misc/, a folder the layout does not know (add it to LAYERS)",
  ]);
});

Deno.test("checkLayout() lets test files beside the code use tests/ and testing/", () => {
  const edges = [
    e("core/clock_test.ts", "tests/until.ts"),
    e("core/clock_test.ts", "testing/mod.ts"),
    e("nats/pool_test.ts", "tests/nats_server.ts"),
  ];
  assert.deepEqual(check(edges), []);
  // Not the code itself.
  assert.equal(check([e("core/_clock.ts", "testing/mod.ts")]).length, 1);
});

Deno.test("findCycles() and checkLayout() catch a 3-file cycle and a self-import", () => {
  const three = [
    e("sdk/_a.ts", "sdk/_b.ts"),
    e("sdk/_b.ts", "sdk/_c.ts"),
    e("sdk/_c.ts", "sdk/_a.ts"),
    e("sdk/mod.ts", "sdk/_a.ts"),
  ];
  assert.deepEqual(findCycles(filesOf(three), three), [["sdk/_a.ts", "sdk/_b.ts", "sdk/_c.ts"]]);
  assert.deepEqual(check(three), [
    "import cycle: sdk/_a.ts -> sdk/_b.ts -> sdk/_c.ts -> sdk/_a.ts",
  ]);
  const self = [e("core/_x.ts", "core/_x.ts"), e("core/mod.ts", "core/_x.ts")];
  assert.deepEqual(findCycles(filesOf(self), self), [["core/_x.ts"]]);
  assert.deepEqual(check(self), ["import cycle: core/_x.ts -> core/_x.ts"]);
  // A chain and a diamond are no cycles.
  const dag = [e("a.ts", "b.ts"), e("a.ts", "c.ts"), e("b.ts", "d.ts"), e("c.ts", "d.ts")];
  assert.deepEqual(findCycles(filesOf(dag), dag), []);
});

Deno.test("checkLayout() names a real import path when cycles share files", () => {
  // a -> b -> a and a -> c -> a: one component of three files, but b does not import c.
  const edges = [
    e("x/a.ts", "x/b.ts"),
    e("x/b.ts", "x/a.ts"),
    e("x/a.ts", "x/c.ts"),
    e("x/c.ts", "x/a.ts"),
  ];
  const [component] = findCycles(filesOf(edges), edges);
  assert.deepEqual([...component].sort(), ["x/a.ts", "x/b.ts", "x/c.ts"]);
  const cycle = checkLayout(filesOf(edges), edges).filter((v) => v.startsWith("import cycle"));
  assert.equal(cycle.length, 1);
  assert.match(cycle[0], /^import cycle: x\/a\.ts -> x\/b\.ts -> x\/a\.ts \(one of 3 files/);
});

Deno.test("readGraph() + checkLayout() find violations through deno info --json", async () => {
  const root = await Deno.makeTempDir({ prefix: "backbeat-layout-test-" });
  try {
    const write = async (path: string, text: string) => {
      await Deno.mkdir(join(root, path, ".."), { recursive: true });
      await Deno.writeTextFile(join(root, path), text);
    };
    await write("core/_a.ts", "export const a = 1;\n");
    await write("core/mod.ts", 'export { a } from "./_a.ts";\n');
    await write("sdk/b.ts", 'import { a } from "../core/_a.ts";\nexport const b = a;\n');
    // A type-only import is an edge too.
    await write("sdk/_c.ts", 'import type { d } from "./_d.ts";\nexport const c = 1 as d;\n');
    await write("sdk/_d.ts", 'import { c } from "./_c.ts";\nexport type d = typeof c;\n');
    await write("sdk/mod.ts", 'export { b } from "./b.ts";\nexport { c } from "./_c.ts";\n');
    // Loaded only on use: dynamic imports count.
    await write("core/_lazy.ts", 'export const load = () => import("../sdk/mod.ts");\n');
    await write("core/with space.ts", 'import "./_a.ts";\n');
    await write("core/_self.ts", 'import "./_self.ts";\nexport {};\n');
    const { files, edges } = await readGraph(root);
    assert.deepEqual(files, [
      "core/_a.ts",
      "core/_lazy.ts",
      "core/_self.ts",
      "core/mod.ts",
      "core/with space.ts",
      "sdk/_c.ts",
      "sdk/_d.ts",
      "sdk/b.ts",
      "sdk/mod.ts",
    ]);
    assert.ok(edges.some((x) => x.from === "core/with space.ts" && x.to === "core/_a.ts"));
    assert.deepEqual(checkLayout(files, edges), [
      "core/_lazy.ts imports sdk/mod.ts: core/ may import only folders below it, not sdk/",
      "import cycle: core/_self.ts -> core/_self.ts",
      "import cycle: sdk/_c.ts -> sdk/_d.ts -> sdk/_c.ts",
      "sdk/b.ts imports core/_a.ts, a file private to core/ (use core/mod.ts)",
    ]);
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

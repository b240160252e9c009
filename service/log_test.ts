import assert from "node:assert/strict";
import { silentLogger } from "../core/mod.ts";
import { JsonLogger, parseLogLevel } from "./_log.ts";

Deno.test("JsonLogger writes one JSON object per line at or above its level", () => {
  const lines: string[] = [];
  const log = new JsonLogger({
    level: "info",
    write: (l) => lines.push(l),
    now: () => 0,
    fields: { service: "pulse" },
  });
  log.debug("hidden");
  log.info("leading", { token: 7, level: "spoof" });
  log.child({ pulse_id: "p1" }).error("failed", { error: new RangeError("bad") });
  assert.equal(lines.length, 2);
  assert.deepEqual(JSON.parse(lines[0]), {
    service: "pulse",
    token: 7,
    time: "1970-01-01T00:00:00.000Z",
    level: "info",
    msg: "leading",
  });
  assert.deepEqual(JSON.parse(lines[1]).error, { name: "RangeError", message: "bad" });
  assert.equal(JSON.parse(lines[1]).pulse_id, "p1");
  assert.ok(!lines[0].includes("\n"));
});

Deno.test("JsonLogger never throws, even on cyclic fields or a failing sink", () => {
  const cyclic: Record<string, unknown> = {};
  cyclic.self = cyclic;
  const log = new JsonLogger({
    write: () => {
      throw new Error("closed");
    },
  });
  log.warn("x", { cyclic });
  log.warn("y");
  silentLogger.error("nothing");
});

Deno.test("parseLogLevel() accepts the four levels and rejects others", () => {
  assert.equal(parseLogLevel("WARN"), "warn");
  assert.throws(() => parseLogLevel("verbose"), /expected one of debug, info, warn, error/);
});

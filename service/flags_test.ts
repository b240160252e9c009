import assert from "node:assert/strict";
import { parseFlags, parseHostPort, parseNumber } from "./_flags.ts";

const specs = [
  { name: "cluster", env: "X_CLUSTER" },
  { name: "verbose", type: "boolean" as const, env: "X_VERBOSE", short: "v" },
];

Deno.test("parseFlags() reads both flag forms, booleans, aliases and env fallbacks", () => {
  let p = parseFlags(["--cluster", "a", "-v", "rest", "--", "--cluster"], specs);
  assert.deepEqual(p.values, { cluster: "a", verbose: true });
  assert.deepEqual(p.positionals, ["rest", "--cluster"]);
  p = parseFlags(["--cluster=b=c", "--verbose=false"], specs, { X_VERBOSE: "1" });
  assert.deepEqual(p.values, { cluster: "b=c" });
  p = parseFlags([], specs, { X_CLUSTER: "env", X_VERBOSE: "yes" });
  assert.deepEqual(p.values, { cluster: "env", verbose: true });
  assert.equal(p.sources.cluster, "X_CLUSTER");
  assert.throws(() => parseFlags(["--nope"], specs), /Unknown flag --nope/);
  assert.throws(() => parseFlags(["-x"], specs), /Unknown flag -x/);
  assert.throws(() => parseFlags(["--cluster"], specs), /Missing value for --cluster/);
  assert.throws(() => parseFlags([], specs, { X_VERBOSE: "maybe" }), /Invalid value for X_VERBOSE/);
});

Deno.test("parseNumber() and parseHostPort() give clear errors", () => {
  assert.equal(parseNumber(" 1.5e2 ", "--n"), 150);
  assert.throws(() => parseNumber("0x10", "--n"), /Invalid --n "0x10": expected a number/);
  assert.throws(
    () => parseNumber("3", "--n", { min: 4, max: 9, integer: true }),
    /expected an integer from 4 to 9/,
  );
  assert.deepEqual(parseHostPort("127.0.0.1:0", "--http"), { hostname: "127.0.0.1", port: 0 });
  assert.deepEqual(parseHostPort(":8080", "--http"), { hostname: "0.0.0.0", port: 8080 });
  assert.throws(() => parseHostPort("host", "--http"), /expected host:port/);
});

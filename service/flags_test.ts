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

Deno.test("parseFlags() skips one leading --, as deno task passes it on", () => {
  let p = parseFlags(["--", "--cluster", "a", "-v"], specs);
  assert.deepEqual(p.values, { cluster: "a", verbose: true });
  assert.deepEqual(p.positionals, []);
  // Only the first: a second `--` still ends the flags.
  p = parseFlags(["--", "--", "--cluster"], specs);
  assert.deepEqual(p.values, {});
  assert.deepEqual(p.positionals, ["--cluster"]);
  p = parseFlags(["x", "--", "--cluster"], specs);
  assert.deepEqual(p.positionals, ["x", "--cluster"]);
});

Deno.test("parseFlags() reports a string flag followed by another flag as missing its value", () => {
  const more = [...specs, { name: "tempo" }, { name: "http", short: "H" }];
  assert.throws(
    () => parseFlags(["--tempo", "--http", "x"], more),
    (e) => e instanceof TypeError && /^Missing value for --tempo\b/.test(e.message),
  );
  assert.throws(() => parseFlags(["--tempo", "-v"], more), /^TypeError: Missing value for --tempo/);
  assert.throws(() => parseFlags(["-H", "-v"], more), /Missing value for --http/);
  assert.throws(() => parseFlags(["-H"], more), /Missing value for --http/);
  // A value starting with "-" is given inline.
  assert.deepEqual(parseFlags(["--tempo=-5", "-H", ":80"], more).values, {
    tempo: "-5",
    http: ":80",
  });
});

Deno.test("parseFlags() errors are TypeErrors; booleans take =value and --no- forms", () => {
  for (const args of [["--nope"], ["--nope=3"], ["-x"], ["-vx"], ["--no-cluster"], ["--cluster"]]) {
    assert.throws(() => parseFlags(args, specs), TypeError, args.join(" "));
  }
  assert.throws(() => parseFlags(["--nope=3"], specs), /^TypeError: Unknown flag --nope$/);
  assert.throws(() => parseFlags(["-vx"], specs), /Unknown flag -x/);
  assert.throws(
    () => parseFlags(["--verbose=maybe"], specs),
    /Invalid value for --verbose: "maybe"/,
  );
  assert.throws(
    () => parseFlags(["--no-verbose=1"], specs),
    /^TypeError: Flag --verbose takes no value/,
  );
  let p = parseFlags(["--verbose=on", "--cluster="], specs);
  assert.deepEqual(p.values, { verbose: true, cluster: "" });
  assert.deepEqual(p.sources, { verbose: "--verbose", cluster: "--cluster" });
  // The last one wins; an explicit false still hides the environment variable.
  p = parseFlags(["-v", "--no-verbose"], specs, { X_VERBOSE: "1" });
  assert.deepEqual(p.values, {});
  assert.equal(p.sources.verbose, "--verbose");
  p = parseFlags(["--cluster", "a", "--cluster", "b"], specs, { X_CLUSTER: "env" });
  assert.deepEqual(p.values, { cluster: "b" });
  // After the end of flags, `--verbose=x` is a positional, not checked.
  assert.deepEqual(parseFlags(["--", "a", "--", "--verbose=x"], specs).positionals, [
    "a",
    "--verbose=x",
  ]);
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

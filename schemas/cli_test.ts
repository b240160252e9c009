import assert from "node:assert/strict";
import { relative } from "node:path";
import { MAX_INPUT_BYTES, MAX_LINE_CHARS, runValidateCli } from "./_cli.ts";

const EXAMPLES = new URL("./examples/", import.meta.url);
const examplesDir = (sub: string) => new URL(sub, EXAMPLES).pathname;
const manifest: { valid: Record<string, string>; invalid: Record<string, unknown> } = JSON.parse(
  await Deno.readTextFile(new URL("manifest.jsonc", EXAMPLES)),
);

// The contract README's BeatFrame, kept verbatim among the valid examples.
const FRAME = JSON.parse(
  await Deno.readTextFile(new URL("valid/beatframe-readme.json", EXAMPLES)),
);

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

function collector(): { stream: WritableStream<Uint8Array>; text: () => string } {
  const chunks: Uint8Array[] = [];
  return {
    stream: new WritableStream({ write: (chunk) => void chunks.push(chunk) }),
    text: () => new TextDecoder().decode(concat(chunks)),
  };
}

function concat(chunks: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(chunks.reduce((n, c) => n + c.length, 0));
  let at = 0;
  for (const c of chunks) {
    out.set(c, at);
    at += c.length;
  }
  return out;
}

/** A stdin stream that delivers `text` in chunks of `size` bytes (to split lines anywhere). */
function stdinOf(text: string, size = 7): ReadableStream<Uint8Array> {
  const bytes = new TextEncoder().encode(text);
  let at = 0;
  return new ReadableStream({
    pull(controller) {
      if (at >= bytes.length) return controller.close();
      controller.enqueue(bytes.slice(at, at + size));
      at += size;
    },
  });
}

async function run(args: string[], stdin?: string, chunkSize?: number): Promise<Run> {
  const out = collector();
  const err = collector();
  const code = await runValidateCli(args, {
    stdin: stdin === undefined ? undefined : stdinOf(stdin, chunkSize),
    stdout: out.stream,
    stderr: err.stream,
  });
  return { code, stdout: out.text(), stderr: err.text() };
}

function summary(stdout: string): string {
  const lines = stdout.trimEnd().split("\n");
  return lines[lines.length - 1];
}

async function withTempDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "backbeat-validate-" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("runValidateCli() --help prints usage and exits 0", async () => {
  const { code, stdout } = await run(["--help"]);
  assert.equal(code, 0);
  assert.match(stdout, /--schemas DIR/);
  assert.match(stdout, /--exit-code/);
});

Deno.test("runValidateCli() rejects a bad command line with status 2", async () => {
  for (
    const args of [
      [],
      ["--frobnicate"],
      ["--file"],
      ["stray.json"],
      ["--json=yes", "--file", "x"],
      [
        "--message",
        "-",
        "--message",
        "-",
      ],
    ]
  ) {
    const { code, stdout, stderr } = await run(args);
    assert.equal(code, 2, args.join(" "));
    assert.equal(stdout, "");
    assert.match(stderr, /^backbeat-validate: .+\nRun with --help for usage.\n$/);
  }
});

Deno.test("runValidateCli() passes every valid example and ends with the summary", async () => {
  const { code, stdout } = await run(["--dir", examplesDir("valid"), "--exit-code"]);
  const count = Object.keys(manifest.valid).length;
  assert.equal(code, 0);
  assert.equal(summary(stdout), `${count} passed, 0 failed`);
  assert.match(stdout, /^✓ .*\/valid\/barreport-readme\.json \(backbeat\.barreport\.v1\)$/m);
});

Deno.test("runValidateCli() reports a relative --dir with the paths as given", async () => {
  const dir = relative(Deno.cwd(), examplesDir("valid"));
  const { code, stdout } = await run(["--dir", dir, "--exit-code"]);
  assert.equal(code, 0);
  assert.ok(stdout.startsWith(`✓ ${dir}/barreport-long-issue-detail.json (`), stdout);
});

Deno.test("runValidateCli() --exit-code fails every invalid example with its reason", async () => {
  const { code, stdout } = await run(["--dir", examplesDir("invalid"), "--exit-code"]);
  assert.equal(code, 1);
  assert.equal(summary(stdout), `0 passed, ${Object.keys(manifest.invalid).length} failed`);
  assert.match(
    stdout,
    /^✗ .*\/beatframe-bad-hlc\.json: hlc must match pattern XXXX:XXXX:XXXX \(hex\) \(at \/hlc\)$/m,
  );
  assert.match(
    stdout,
    /^✗ .*\/barreport-to-beat-before-from-beat\.json: to_beat must be greater than or equal to from_beat \(at \/to_beat\)$/m,
  );
});

Deno.test("runValidateCli() without --exit-code exits 0 even with failures", async () => {
  const { code, stdout } = await run(["--file", examplesDir("invalid/beatframe-bad-hlc.json")]);
  assert.equal(code, 0);
  assert.equal(summary(stdout), "0 passed, 1 failed");
});

Deno.test("runValidateCli() --quiet prints only failures and the summary", async () => {
  const { stdout } = await run([
    "--quiet",
    "--file",
    examplesDir("valid/beatframe-readme.json"),
    "--file",
    examplesDir("invalid/beatframe-tempo-too-low.json"),
  ]);
  const lines = stdout.trimEnd().split("\n");
  assert.equal(lines.length, 2);
  assert.match(lines[0], /^✗ .*beatframe-tempo-too-low\.json: tempo_bpm must be at least 0\.1/);
  assert.equal(lines[1], "1 passed, 1 failed");
});

Deno.test("runValidateCli() walks directories recursively, *.json only, in name order", async () => {
  await withTempDir(async (dir) => {
    await Deno.mkdir(`${dir}/b/deeper`, { recursive: true });
    await Deno.writeTextFile(`${dir}/c.json`, JSON.stringify(FRAME));
    await Deno.writeTextFile(`${dir}/a.json`, JSON.stringify(FRAME));
    await Deno.writeTextFile(`${dir}/b/deeper/d.json`, JSON.stringify({ ...FRAME, phase: "x" }));
    await Deno.writeTextFile(`${dir}/notes.txt`, "not a message");
    await Deno.symlink(`${dir}/b`, `${dir}/loop.json`); // a directory link: not followed
    const { code, stdout } = await run(["--dir", dir, "--exit-code"]);
    assert.equal(code, 1);
    assert.deepEqual(stdout.trimEnd().split("\n"), [
      `✓ ${dir}/a.json (backbeat.beatframe.v1)`,
      `✗ ${dir}/b/deeper/d.json: phase must be one of: plan, execute, review (at /phase)`,
      `✓ ${dir}/c.json (backbeat.beatframe.v1)`,
      "2 passed, 1 failed",
    ]);
  });
});

Deno.test("runValidateCli() reports unreadable inputs as failures, not crashes", async () => {
  await withTempDir(async (dir) => {
    await Deno.writeFile(`${dir}/latin1.json`, new Uint8Array([0x7b, 0xe9, 0x7d]));
    const { code, stdout } = await run([
      "--file",
      `${dir}/missing.json`,
      "--dir",
      `${dir}/no-such-dir`,
      "--file",
      `${dir}/latin1.json`,
      "--exit-code",
    ]);
    assert.equal(code, 1);
    assert.match(stdout, /^✗ .*missing\.json: cannot read file: .+$/m);
    assert.match(stdout, /^✗ .*no-such-dir: cannot read directory: .+$/m);
    assert.match(stdout, /^✗ .*latin1\.json: file is not valid UTF-8$/m);
    assert.equal(summary(stdout), "0 passed, 3 failed");
  });
});

Deno.test("runValidateCli() reads files larger than its buffer and refuses huge ones", async () => {
  await withTempDir(async (dir) => {
    const padded = JSON.stringify(FRAME, null, 2).replace("{", `{${" ".repeat(200_000)}`);
    await Deno.writeTextFile(`${dir}/padded.json`, padded);
    await Deno.writeTextFile(`${dir}/toobig.json`, " ".repeat(MAX_INPUT_BYTES + 1));
    const { stdout } = await run(["--dir", dir]);
    assert.deepEqual(stdout.trimEnd().split("\n"), [
      `✓ ${dir}/padded.json (backbeat.beatframe.v1)`,
      `✗ ${dir}/toobig.json: file is larger than ${MAX_INPUT_BYTES} bytes`,
      "1 passed, 1 failed",
    ]);
  });
});

Deno.test("runValidateCli() --file reads a pipe to its end", async () => {
  await withTempDir(async (dir) => {
    const fifo = `${dir}/fifo.json`;
    const mkfifo = await new Deno.Command("mkfifo", { args: [fifo] }).output();
    assert.ok(mkfifo.success);
    // Another process writes in two parts, so the first read returns less than the buffer
    // before the end (the CLI reads synchronously: an in-process writer could not run).
    const text = JSON.stringify(FRAME);
    const writer = new Deno.Command("sh", {
      args: ["-c", '{ printf %s "$1"; sleep 0.05; printf %s "$2"; } > "$3"', "sh"].concat([
        text.slice(0, 40),
        text.slice(40),
        fifo,
      ]),
    }).output();
    const { stdout } = await run(["--file", fifo]);
    assert.ok((await writer).success);
    assert.equal(stdout, `✓ ${fifo} (backbeat.beatframe.v1)\n1 passed, 0 failed\n`);
  });
});

Deno.test("runValidateCli() --json writes one JSON document with every result", async () => {
  const { code, stdout } = await run([
    "--json",
    "--file",
    examplesDir("valid/statusclaim-readme.json"),
    "--file",
    examplesDir("invalid/beatframe-malformed-json-comment.json"),
    "--exit-code",
  ]);
  assert.equal(code, 1);
  const report = JSON.parse(stdout);
  assert.deepEqual(report.summary, { passed: 1, failed: 1 });
  assert.equal(report.results.length, 2);
  assert.equal(report.results[0].valid, true);
  assert.equal(report.results[0].type, "backbeat.statusclaim.v1");
  assert.deepEqual(report.results[0].errors, []);
  assert.match(report.results[1].source, /beatframe-malformed-json-comment\.json$/);
  assert.equal(report.results[1].errors[0].keyword, "json");
  assert.deepEqual([report.results[1].errors[0].line, report.results[1].errors[0].column], [2, 3]);
});

Deno.test("runValidateCli() --json with nothing to report is still valid JSON", async () => {
  await withTempDir(async (dir) => {
    // An empty --dir is an error since it checked nothing: status 1, and the summary says why.
    const { code, stdout, stderr } = await run(["--json", "--dir", dir]);
    assert.equal(code, 1);
    assert.deepEqual(JSON.parse(stdout), {
      results: [],
      summary: { passed: 0, failed: 0, problems: [`no messages found in ${dir}`] },
    });
    assert.equal(stderr, `backbeat-validate: no messages found in ${dir}\n`);
  });
});

Deno.test("runValidateCli() --message - reads one pretty-printed document", async () => {
  const { code, stdout } = await run(["--message", "-"], JSON.stringify(FRAME, null, 2));
  assert.equal(code, 0);
  assert.deepEqual(stdout.trimEnd().split("\n"), [
    "✓ stdin (backbeat.beatframe.v1)",
    "1 passed, 0 failed",
  ]);
});

Deno.test("runValidateCli() --message - reports a broken document with its position", async () => {
  const text = JSON.stringify(FRAME, null, 2).replace('"phase"', "phase");
  const { stdout } = await run(["--message", "-"], text);
  assert.match(stdout, /^✗ stdin: invalid JSON at line 6, column 3: /m);
});

Deno.test("runValidateCli() --message - reads NDJSON with line numbers", async () => {
  const lines = [
    JSON.stringify(FRAME),
    "",
    JSON.stringify({ ...FRAME, hlc: "bad" }),
    "   ",
    '{"type": "backbeat.beatframe.v1",}',
    JSON.stringify({ type: "nope" }) + "\r",
    JSON.stringify(FRAME),
  ];
  const { code, stdout } = await run(["--message", "-", "--exit-code"], lines.join("\n") + "\n");
  assert.equal(code, 1);
  assert.deepEqual(stdout.trimEnd().split("\n"), [
    "✓ stdin:1 (backbeat.beatframe.v1)",
    "✗ stdin:3: hlc must match pattern XXXX:XXXX:XXXX (hex) (at /hlc)",
    "✗ stdin:5: invalid JSON at line 5, column 34: expected a property name in double quotes after ',', found character \"}\"",
    '✗ stdin:6: unknown type "nope"; expected one of: backbeat.beatframe.v1, backbeat.statusclaim.v1, backbeat.barreport.v1 (at /type)',
    "✓ stdin:7 (backbeat.beatframe.v1)",
    "2 passed, 3 failed",
  ]);
});

Deno.test("runValidateCli() NDJSON whose first line is broken is still read line by line", async () => {
  const text = `{"type": "backbeat.beatframe.v1" "x": 1}\n${JSON.stringify(FRAME)}`;
  const { stdout } = await run(["--message", "-"], text);
  assert.match(stdout, /^✗ stdin:1: invalid JSON at line 1, column 34: /m);
  assert.match(stdout, /^✓ stdin:2 \(backbeat\.beatframe\.v1\)$/m);
  assert.equal(summary(stdout), "1 passed, 1 failed");
});

Deno.test("runValidateCli() skips an over-long NDJSON line and keeps counting", async () => {
  // One line just over the limit (ends inside a chunk), one far over it (dropped while read).
  const long = `{"notes": "${"n".repeat(MAX_LINE_CHARS + 10)}"}`;
  const huge = `{"notes": "${"n".repeat(3 * MAX_LINE_CHARS)}"}`;
  const text = [JSON.stringify(FRAME), long, huge, JSON.stringify({ ...FRAME, phase: "?" })]
    .join("\n");
  const { stdout } = await run(["--message", "-"], text, 64 * 1024);
  assert.deepEqual(stdout.trimEnd().split("\n"), [
    "✓ stdin:1 (backbeat.beatframe.v1)",
    `✗ stdin:2: line is longer than ${MAX_LINE_CHARS} characters`,
    `✗ stdin:3: line is longer than ${MAX_LINE_CHARS} characters`,
    "✗ stdin:4: phase must be one of: plan, execute, review (at /phase)",
    "1 passed, 3 failed",
  ]);
});

Deno.test("runValidateCli() bounds a stdin document at MAX_INPUT_BYTES", async () => {
  const huge = `{\n"notes": "${"n".repeat(MAX_INPUT_BYTES)}"\n}\n`;
  const { stdout } = await run(["--message", "-"], huge, 1024 * 1024);
  assert.deepEqual(stdout.trimEnd().split("\n"), [
    `✗ stdin: stdin document is larger than ${MAX_INPUT_BYTES} characters; send NDJSON (one message a line) instead`,
    "0 passed, 1 failed",
  ]);
});

Deno.test("runValidateCli() reads a long single-line stdin document whole", async () => {
  const doc = JSON.stringify({ ...FRAME, notes: "n".repeat(2 * MAX_LINE_CHARS) });
  const { stdout } = await run(["--message", "-"], doc, 64 * 1024);
  assert.deepEqual(stdout.trimEnd().split("\n"), [
    '✗ stdin: unknown field "notes" is not allowed (at /notes)',
    "0 passed, 1 failed",
  ]);
});

Deno.test("runValidateCli() --message with JSON text validates the argument", async () => {
  const { stdout } = await run(["--message", '{"type":"backbeat.statusclaim.v1"}', "--quiet"]);
  assert.match(stdout, /^✗ argument: agent_id field is required \(at \/agent_id\)$/m);
});

Deno.test("runValidateCli() --message - without stdin is a failure, not a crash", async () => {
  const { stdout } = await run(["--message", "-"]);
  assert.match(stdout, /^✗ stdin: no standard input available$/m);
});

Deno.test("runValidateCli() --schemas loads another schema set", async () => {
  await withTempDir(async (dir) => {
    const schema = JSON.parse(
      await Deno.readTextFile(new URL("./beatframe-v1.schema.json", import.meta.url)),
    );
    schema.properties.type.const = "backbeat.beatframe.v2";
    await Deno.writeTextFile(`${dir}/beatframe-v2.schema.json`, JSON.stringify(schema));
    const { code, stdout } = await run([
      "--schemas",
      dir,
      "--message",
      JSON.stringify({ ...FRAME, type: "backbeat.beatframe.v2" }),
      "--message",
      JSON.stringify(FRAME),
      "--exit-code",
    ]);
    assert.equal(code, 1);
    assert.match(stdout, /^✓ argument \(backbeat\.beatframe\.v2\)$/m);
    assert.match(stdout, /expected one of: backbeat\.beatframe\.v2 \(at \/type\)$/m);
  });
});

Deno.test("runValidateCli() --schemas with an unusable directory exits 2", async () => {
  await withTempDir(async (dir) => {
    const { code, stderr } = await run(["--schemas", `${dir}/none`, "--dir", dir]);
    assert.equal(code, 2);
    assert.match(stderr, /^backbeat-validate: Cannot read schemas directory /);
  });
});

Deno.test("runValidateCli() streams 100,000 NDJSON messages in bounded memory", async () => {
  const total = 100_000;
  const invalidEvery = 10;
  const encoder = new TextEncoder();
  const valid = JSON.stringify(FRAME);
  const invalid = JSON.stringify({ ...FRAME, tempo_bpm: 0 });
  let produced = 0;
  const baseline = Deno.memoryUsage().heapUsed;
  let peak = baseline;
  const stdin = new ReadableStream<Uint8Array>({
    pull(controller) {
      peak = Math.max(peak, Deno.memoryUsage().heapUsed);
      if (produced >= total) return controller.close();
      let chunk = "";
      for (let i = 0; i < 1000 && produced < total; i++, produced++) {
        chunk += (produced % invalidEvery === 0 ? invalid : valid) + "\n";
      }
      controller.enqueue(encoder.encode(chunk));
    },
  });
  let outBytes = 0;
  let tail = "";
  const stdout = new WritableStream<Uint8Array>({
    write(chunk) {
      outBytes += chunk.length;
      tail = (tail + new TextDecoder().decode(chunk)).slice(-200);
    },
  });
  const stderr = new WritableStream<Uint8Array>();
  const code = await runValidateCli(["--message", "-", "--exit-code"], { stdin, stdout, stderr });
  assert.equal(code, 1);
  assert.equal(tail.trimEnd().split("\n").at(-1), "90000 passed, 10000 failed");
  assert.ok(outBytes > 100_000 * 20, "every message was reported");
  const growth = peak - baseline;
  assert.ok(growth < 50 * 1024 * 1024, `heap grew by ${(growth / 2 ** 20).toFixed(1)} MiB`);
});

Deno.test("runValidateCli() --json streams 100,000 NDJSON results as one valid document", async () => {
  const total = 100_000;
  const line = JSON.stringify(FRAME) + "\n";
  let produced = 0;
  const stdin = new ReadableStream<Uint8Array>({
    pull(controller) {
      if (produced >= total) return controller.close();
      controller.enqueue(new TextEncoder().encode(line.repeat(1000)));
      produced += 1000;
    },
  });
  const out = collector();
  const code = await runValidateCli(["--message", "-", "--json"], {
    stdin,
    stdout: out.stream,
    stderr: new WritableStream(),
  });
  assert.equal(code, 0);
  const report = JSON.parse(out.text());
  assert.equal(report.results.length, total);
  assert.deepEqual(report.summary, { passed: total, failed: 0 });
  assert.deepEqual(report.results[total - 1], {
    source: "stdin",
    line: total,
    valid: true,
    type: "backbeat.beatframe.v1",
    errors: [],
  });
});

Deno.test("validate.ts run by deno exits 1 on a directory with one bad file", async () => {
  await withTempDir(async (dir) => {
    await Deno.writeTextFile(`${dir}/good.json`, JSON.stringify(FRAME));
    await Deno.writeTextFile(`${dir}/bad.json`, JSON.stringify({ ...FRAME, window_id: "abc" }));
    const script = new URL("./validate.ts", import.meta.url).pathname;
    const cwd = new URL("../", import.meta.url).pathname;
    const deno = (...args: string[]) =>
      new Deno.Command(Deno.execPath(), {
        args: ["run", "--allow-read", script, "--dir", dir, ...args],
        cwd,
        stdin: "null",
        stdout: "piped",
        stderr: "piped",
      }).output();
    const human = await deno("--exit-code");
    const stdout = new TextDecoder().decode(human.stdout);
    assert.equal(human.code, 1, new TextDecoder().decode(human.stderr));
    assert.match(
      stdout,
      /^✗ .*\/bad\.json: window_id must be exactly 32 hex characters \(at \/window_id\)$/m,
    );
    assert.equal(summary(stdout), "1 passed, 1 failed");

    const machine = await deno("--json", "--exit-code");
    assert.equal(machine.code, 1);
    const report = JSON.parse(new TextDecoder().decode(machine.stdout));
    assert.deepEqual(report.summary, { passed: 1, failed: 1 });
    assert.equal(report.results[0].source, `${dir}/bad.json`);
    assert.equal(
      report.results[0].errors[0].message,
      "window_id must be exactly 32 hex characters",
    );
  });
});

Deno.test("runValidateCli() names each command-line mistake", async () => {
  const cases: [string[], string][] = [
    [["--frobnicate"], "unknown option --frobnicate"],
    [["-x", "--file", "a"], "unknown option -x"],
    [["--file"], "--file needs a value"],
    [["--file", "a", "--dir"], "--dir needs a value"],
    [["--schemas"], "--schemas needs a value"],
    [
      ["--file", "--json"],
      '--file needs a value, not the option --json (write --file=--json for a value starting with "-")',
    ],
    [["--json=yes", "--file", "x"], "--json takes no value"],
    [["--file", "x", "--quiet=1"], "--quiet takes no value"],
    [["--exit-code=true", "--file", "x"], "--exit-code takes no value"],
    [["stray.json"], "unexpected argument stray.json"],
    [["--file", "a", "--", "b"], "unexpected argument b"],
    [["--message", "-", "--message", "-"], "--message - can be given once (stdin is read once)"],
    [
      ["--message=-", "--file", "a", "--message", "-"],
      "--message - can be given once (stdin is read once)",
    ],
    [[], "nothing to validate: give --file, --dir or --message"],
    [["--json", "--quiet"], "nothing to validate: give --file, --dir or --message"],
  ];
  for (const [args, message] of cases) {
    const { code, stdout, stderr } = await run(args);
    assert.equal(code, 2, args.join(" "));
    assert.equal(stdout, "");
    assert.equal(stderr, `backbeat-validate: ${message}\nRun with --help for usage.\n`);
  }
});

Deno.test("runValidateCli() ignores one leading -- and takes -h for --help", async () => {
  for (const args of [["-h"], ["--", "--help"], ["--", "-h", "--file", "x"]]) {
    const { code, stdout } = await run(args);
    assert.equal(code, 0, args.join(" "));
    assert.match(stdout, /^backbeat-validate: check BACKBEAT messages/);
  }
  const file = examplesDir("valid/beatframe-readme.json");
  const { code, stdout } = await run(["--", `--file=${file}`, "--exit-code"]);
  assert.equal(code, 0);
  assert.equal(summary(stdout), "1 passed, 0 failed");
  // Only a leading one: a second `--` ends the options, and what follows is a stray argument.
  assert.equal((await run(["--", "--", "--file", file])).code, 2);
});

Deno.test("runValidateCli() checks --file, --dir and --message in the order given", async () => {
  await withTempDir(async (dir) => {
    await Deno.writeTextFile(`${dir}/d.json`, JSON.stringify({ ...FRAME, phase: "d" }));
    const file = (name: string) => `${dir}/${name}.json`;
    await Deno.writeTextFile(file("a"), JSON.stringify({ ...FRAME, phase: "a" }));
    const { stdout } = await run([
      "--file",
      file("a"),
      "--message",
      JSON.stringify({ ...FRAME, phase: "m" }),
      `--dir=${dir}`,
      "--file",
      file("a"),
      "--quiet",
    ]);
    const sources = stdout.trimEnd().split("\n").slice(0, -1).map((l) => l.split(":")[0]);
    assert.deepEqual(sources, [
      `✗ ${file("a")}`,
      "✗ argument",
      `✗ ${file("a")}`,
      `✗ ${file("d")}`,
      `✗ ${file("a")}`,
    ]);
  });
});

Deno.test("runValidateCli() fails when a --dir or stdin holds no message", async () => {
  await withTempDir(async (dir) => {
    await Deno.mkdir(`${dir}/empty/a/b`, { recursive: true });
    await Deno.writeTextFile(`${dir}/empty/a/notes.txt`, "not a message");
    await Deno.mkdir(`${dir}/full`);
    await Deno.writeTextFile(`${dir}/full/frame.json`, JSON.stringify(FRAME));
    const empty = `${dir}/empty`;
    // With or without --exit-code: checking nothing is an error.
    for (const extra of [[], ["--exit-code"], ["--quiet"]]) {
      const { code, stdout, stderr } = await run(["--dir", empty, ...extra]);
      assert.equal(code, 1, extra.join(" "));
      assert.equal(stdout, "0 passed, 0 failed\n");
      assert.equal(stderr, `backbeat-validate: no messages found in ${empty}\n`);
    }
    // One empty input among good ones still fails the run, and is named.
    const mixed = await run(["--dir", `${dir}/full`, "--dir", empty, "--exit-code"]);
    assert.equal(mixed.code, 1);
    assert.equal(summary(mixed.stdout), "1 passed, 0 failed");
    assert.equal(mixed.stderr, `backbeat-validate: no messages found in ${empty}\n`);
    // A full directory alone passes as before.
    assert.equal((await run(["--dir", `${dir}/full`, "--exit-code"])).code, 0);
  });
  for (const text of ["", "\n\n  \n"]) {
    const { code, stdout, stderr } = await run(["--message", "-", "--json"], text);
    assert.equal(code, 1, JSON.stringify(text));
    assert.deepEqual(JSON.parse(stdout).summary, {
      passed: 0,
      failed: 0,
      problems: ["no messages found in stdin"],
    });
    assert.equal(stderr, "backbeat-validate: no messages found in stdin\n");
  }
});

Deno.test("runValidateCli() --schemas names the schema file that fails, and why", async () => {
  await withTempDir(async (dir) => {
    await Deno.writeTextFile(
      `${dir}/claim.schema.json`,
      JSON.stringify({ properties: { type: { const: "x" } }, frobnicate: true }),
    );
    let { code, stdout, stderr } = await run(["--schemas", dir, "--message", "{}"]);
    assert.equal(code, 2);
    assert.equal(stdout, "");
    assert.match(
      stderr,
      new RegExp(
        `^backbeat-validate: Cannot compile schema ${dir}/claim\\.schema\\.json: strict mode: unknown keyword: "frobnicate"\\n$`,
      ),
    );
    await Deno.writeTextFile(`${dir}/claim.schema.json`, '{"type": "object"');
    ({ code, stderr } = await run(["--schemas", dir, "--message", "{}"]));
    assert.equal(code, 2);
    assert.equal(
      stderr,
      `backbeat-validate: Cannot load schema ${dir}/claim.schema.json: invalid JSON at line 1, column 18: expected ',' or '}' after the property value, found end of input\n`,
    );
  });
});

Deno.test("runValidateCli() reports 100,000-deep input to a recursive schema as invalid", async () => {
  await withTempDir(async (dir) => {
    await Deno.mkdir(`${dir}/schemas`);
    await Deno.writeTextFile(
      `${dir}/schemas/nested.schema.json`,
      JSON.stringify({
        type: "object",
        properties: { type: { const: "example.nested.v1" }, child: { $ref: "#" } },
      }),
    );
    const depth = 100_000;
    const deep = '{"type":"example.nested.v1","child":'.repeat(depth) + "{}" + "}".repeat(depth);
    await Deno.writeTextFile(`${dir}/deep.json`, deep);
    const { code, stdout, stderr } = await run([
      "--schemas",
      `${dir}/schemas`,
      "--file",
      `${dir}/deep.json`,
      "--message",
      deep,
      "--exit-code",
    ]);
    assert.equal(code, 1, stderr);
    const reason = "message nesting is too deep (more than 256 levels of objects and arrays)";
    assert.deepEqual(stdout.trimEnd().split("\n"), [
      `✗ ${dir}/deep.json: ${reason}`,
      `✗ argument: ${reason}`,
      "0 passed, 2 failed",
    ]);
  });
});

Deno.test("runValidateCli() reports a repeated key with its line, in files and NDJSON", async () => {
  const repeated = JSON.stringify(FRAME).replace('"hlc":', '"hlc":"bad","hlc":');
  const column = repeated.lastIndexOf('"hlc"') + 1;
  const { code, stdout } = await run(
    ["--message", "-", "--exit-code"],
    `${JSON.stringify(FRAME)}\n${repeated}\n`,
  );
  assert.equal(code, 1);
  assert.deepEqual(stdout.trimEnd().split("\n"), [
    "✓ stdin:1 (backbeat.beatframe.v1)",
    `✗ stdin:2: duplicate key "hlc" at line 2, column ${column} (at /hlc)`,
    "1 passed, 1 failed",
  ]);
  const file = examplesDir("invalid/beatframe-duplicate-hlc.json");
  const json = JSON.parse((await run(["--file", file, "--json"])).stdout);
  assert.deepEqual(json.results[0].errors, [{
    path: "/hlc",
    keyword: "duplicateKey",
    message: 'duplicate key "hlc" at line 11, column 3',
    line: 11,
    column: 3,
  }]);
});

Deno.test("runValidateCli() resolves relative paths against io.cwd and prints them as given", async () => {
  await withTempDir(async (dir) => {
    await Deno.mkdir(`${dir}/messages/sub`, { recursive: true });
    await Deno.writeTextFile(`${dir}/messages/a.json`, JSON.stringify(FRAME));
    await Deno.writeTextFile(`${dir}/messages/sub/b.json`, JSON.stringify(FRAME));
    await Deno.symlink(`${dir}/messages/a.json`, `${dir}/messages/link.json`);
    await Deno.mkdir(`${dir}/schemas`);
    await Deno.copyFile(
      new URL("./beatframe-v1.schema.json", import.meta.url),
      `${dir}/schemas/beatframe.json`,
    );
    const out = collector();
    const code = await runValidateCli(
      ["--dir", "messages", "--file", "messages/a.json", "--schemas", "schemas", "--exit-code"],
      { stdout: out.stream, stderr: new WritableStream(), cwd: dir },
    );
    assert.equal(code, 0, out.text());
    assert.deepEqual(out.text().trimEnd().split("\n"), [
      "✓ messages/a.json (backbeat.beatframe.v1)",
      "✓ messages/link.json (backbeat.beatframe.v1)",
      "✓ messages/sub/b.json (backbeat.beatframe.v1)",
      "✓ messages/a.json (backbeat.beatframe.v1)",
      "4 passed, 0 failed",
    ]);
    const bad = () =>
      runValidateCli(["--help"], {
        stdout: new WritableStream(),
        stderr: new WritableStream(),
        cwd: "relative/dir",
      });
    await assert.rejects(bad, TypeError);
  });
});

Deno.test("validate.ts resolves paths against INIT_CWD, the directory deno task started in", async () => {
  await withTempDir(async (caller) => {
    await Deno.writeTextFile(`${caller}/good.json`, JSON.stringify(FRAME));
    await Deno.writeTextFile(`${caller}/bad.json`, JSON.stringify({ ...FRAME, phase: "?" }));
    const script = new URL("./validate.ts", import.meta.url).pathname;
    const project = new URL("../", import.meta.url).pathname;
    const deno = (permissions: string[], cwd: string, ...args: string[]) =>
      new Deno.Command(Deno.execPath(), {
        args: ["run", "--allow-read", ...permissions, script, ...args],
        cwd, // as under deno task: the project folder
        env: { INIT_CWD: caller },
        stdin: "null",
        stdout: "piped",
        stderr: "piped",
      }).output();
    const dir = await deno(["--allow-env=INIT_CWD"], project, "--dir", ".", "--file", "good.json");
    assert.equal(dir.code, 0, new TextDecoder().decode(dir.stderr));
    assert.deepEqual(new TextDecoder().decode(dir.stdout).trimEnd().split("\n"), [
      "✗ ./bad.json: phase must be one of: plan, execute, review (at /phase)",
      "✓ ./good.json (backbeat.beatframe.v1)",
      "✓ good.json (backbeat.beatframe.v1)",
      "2 passed, 1 failed",
    ]);
    // Without permission to read INIT_CWD it uses the working directory, and does not prompt.
    await withTempDir(async (other) => {
      await Deno.writeTextFile(`${other}/only.json`, JSON.stringify(FRAME));
      const fallback = await deno([], other, "--dir", ".");
      assert.equal(fallback.code, 0, new TextDecoder().decode(fallback.stderr));
      assert.equal(
        new TextDecoder().decode(fallback.stdout),
        "✓ ./only.json (backbeat.beatframe.v1)\n1 passed, 0 failed\n",
      );
    });
  });
});

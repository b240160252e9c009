#!/usr/bin/env -S deno run --allow-read --allow-env=INIT_CWD
/**
 * `backbeat-validate`: checks BACKBEAT messages (files, directories, or stdin as one JSON
 * document or streamed NDJSON) against the v1 JSON Schemas and prints `N passed, N failed`.
 *
 * Needs `--allow-read`. With `--allow-env=INIT_CWD` as well, relative paths are resolved against
 * the directory `deno task` (or npm) was started from, which `INIT_CWD` names, rather than the
 * project folder a task runs in; without that permission, against the working directory.
 * Exit status: 0 when everything was checked, 1 with `--exit-code` when anything was invalid or
 * unreadable, 1 also when a `--dir` or stdin held no message at all (checking nothing is an
 * error), 2 for a bad command line or unusable `--schemas`.
 *
 * @example Validate a directory in CI
 * ```sh
 * deno run --allow-read jsr:@chorus/backbeat/validate --dir messages --exit-code
 * # or, from a checkout:
 * deno run --allow-read schemas/validate.ts --dir messages --exit-code
 * ```
 *
 * @module
 */

import { isAbsolute } from "node:path";
import { runValidateCli } from "./_cli.ts";

export { runValidateCli, type ValidateCliIo } from "./_cli.ts";

/**
 * The directory the user ran the command in. `deno task` runs a task in the project folder and
 * names the caller's directory in INIT_CWD; it is read only when permitted, because asking would
 * prompt (or fail) on every run.
 */
function callerDirectory(): string {
  const cwd = Deno.cwd();
  const state = Deno.permissions.querySync({ name: "env", variable: "INIT_CWD" }).state;
  if (state !== "granted") return cwd;
  const dir = Deno.env.get("INIT_CWD");
  if (dir === undefined || dir === "") return cwd;
  return isAbsolute(dir) ? dir : `${cwd}/${dir}`;
}

if (import.meta.main) {
  Deno.exit(
    await runValidateCli(Deno.args, {
      stdin: Deno.stdin.readable,
      stdout: Deno.stdout.writable,
      stderr: Deno.stderr.writable,
      cwd: callerDirectory(),
    }),
  );
}

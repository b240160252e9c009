#!/usr/bin/env -S deno run --allow-read
/**
 * `backbeat-validate`: checks BACKBEAT messages (files, directories, or stdin as one JSON
 * document or streamed NDJSON) against the v1 JSON Schemas and prints `N passed, N failed`.
 *
 * Needs only `--allow-read`. Exit status: 0 when everything was checked, 1 with `--exit-code`
 * when anything was invalid or unreadable, 2 for a bad command line or unusable `--schemas`.
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

import { runValidateCli } from "./_cli.ts";

export { runValidateCli, type ValidateCliIo } from "./_cli.ts";

if (import.meta.main) {
  Deno.exit(
    await runValidateCli(Deno.args, {
      stdin: Deno.stdin.readable,
      stdout: Deno.stdout.writable,
      stderr: Deno.stderr.writable,
    }),
  );
}

#!/usr/bin/env -S deno run --allow-net --allow-read --allow-write --allow-env --allow-run --allow-sys
/**
 * `backbeat`: the operator's tool for a BACKBEAT cluster. `deno task backbeat --help` lists the
 * commands; `deno task compile:backbeat` builds it as one binary (`dist/backbeat`).
 *
 * - `tail beats|claims|bars [--json] [--count N]`: a live stream, one aligned line a message
 * - `tempo get`, `tempo set <bpm>`: read the tempo, change it with an authenticated control
 *   message (lands on the next downbeat)
 * - `status`: pulse's and reverb's health; exit 1 when one is unreachable or not ready
 * - `keygen --agent ID` and `keyring add|list|remove`: keys and keyring files
 * - `validate …`: the message validator
 * - `load --agents N --duration S`: a load test of a running pulse and reverb
 *
 * Errors are `backbeat <command>: <message>` on stderr, exit status 1 for a failure and 2 for a
 * bad command line. Relative paths are read from the caller's directory (`INIT_CWD` under
 * `deno task`).
 *
 * @example Follow the beat and check health
 * ```sh
 * deno task backbeat tail beats --nats nats://127.0.0.1:4222 --cluster prod --count 8
 * deno task backbeat status --pulse http://127.0.0.1:8080 --reverb http://127.0.0.1:8081
 * ```
 *
 * @example Run it from code
 * ```ts ignore
 * import { runBackbeatCli } from "@chorus/backbeat/cli";
 * const code = await runBackbeatCli(["keyring", "list", "--keyring", "keyring.json"], {
 *   stdout: Deno.stdout.writable,
 *   stderr: Deno.stderr.writable,
 * });
 * ```
 *
 * @module
 */
import { processIo, runBackbeatCli } from "./cli/mod.ts";

export { BACKBEAT_USAGE, type BackbeatCliIo, runBackbeatCli } from "./cli/mod.ts";

if (import.meta.main) {
  const stop = new AbortController();
  const signals: Deno.Signal[] = Deno.build.os === "windows" ? ["SIGINT"] : ["SIGINT", "SIGTERM"];
  let received = 0;
  // The first signal stops cleanly; a second one does not wait for the clean-up.
  const onSignal = () => ++received > 1 ? Deno.exit(130) : stop.abort();
  for (const s of signals) Deno.addSignalListener(s, onSignal);
  const code = await runBackbeatCli(Deno.args, processIo(stop.signal));
  for (const s of signals) Deno.removeSignalListener(s, onSignal);
  Deno.exit(code);
}

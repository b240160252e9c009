/**
 * The `backbeat` operator tool: `tail` a cluster's beats, claims or bar reports, read and change
 * the `tempo`, show pulse's and reverb's `status`, make keys (`keygen`) and edit keyrings
 * (`keyring`), `validate` messages, and `load`-test a running pulse and reverb with SDK agents.
 * The top-level `cli.ts` runs it; everything here takes its streams as arguments.
 *
 * Layering: the top of the library (`cli/`), importing `core/`, `nats/`, `schemas/`, `sdk/`,
 * `service/` and `pulse/`.
 *
 * @example Run a command in process
 * ```ts ignore
 * import { runBackbeatCli } from "./mod.ts";
 * const code = await runBackbeatCli(["status", "--pulse", "http://127.0.0.1:8080"], {
 *   stdout: Deno.stdout.writable,
 *   stderr: Deno.stderr.writable,
 * });
 * console.log(code);
 * ```
 *
 * @module
 */
export { BACKBEAT_USAGE, type BackbeatCliIo, processIo, runBackbeatCli } from "./_cli.ts";

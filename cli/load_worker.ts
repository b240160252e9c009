/**
 * A worker process of `backbeat load`: the parent (cli/_load.ts) spawns it with
 * `deno run … cli/load_worker.ts --worker N`, sends its configuration and commands as JSON lines
 * on stdin and reads its reports from stdout. Not a command for people.
 *
 * @module
 */
import { parseFlags, parseNumber } from "../service/mod.ts";
import { runLoadWorker } from "./_load_agents.ts";

if (import.meta.main) {
  const { values } = parseFlags(Deno.args, [{ name: "worker" }]);
  const worker = parseNumber(String(values.worker ?? "1"), "--worker", { min: 1, integer: true });
  Deno.exit(
    await runLoadWorker({
      stdin: Deno.stdin.readable,
      stdout: Deno.stdout.writable,
      stderr: Deno.stderr.writable,
    }, worker),
  );
}

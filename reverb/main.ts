/**
 * The `reverb` command: verified status aggregation for a BACKBEAT cluster. Run
 * `deno task reverb -- --help` (or `backbeat-reverb --help`, the compiled binary) for its flags,
 * each also read from a `BACKBEAT_*` variable.
 *
 * Exit status: 0 after a clean stop (SIGINT/SIGTERM), 1 when reverb cannot start (one line
 * `reverb: <reason>` on stderr), 2 for a bad command line.
 *
 * @example Run reverb against NATS
 * ```sh
 * deno task reverb -- --cluster prod --nats nats://127.0.0.1:4222 --nats-user reverb
 * ```
 *
 * @module
 */
import { runReverbCli } from "./_cli.ts";

if (import.meta.main) {
  const stop = Promise.withResolvers<void>();
  const signals: Deno.Signal[] = Deno.build.os === "windows" ? ["SIGINT"] : ["SIGINT", "SIGTERM"];
  for (const s of signals) Deno.addSignalListener(s, () => stop.resolve());
  const code = await runReverbCli(Deno.args, Deno.env.toObject(), {
    // The usage text ends in its own newline.
    stdout: (text) => console.log(text.trimEnd()),
    stderr: (line) => console.error(line),
    stopRequested: stop.promise,
  });
  Deno.exit(code);
}

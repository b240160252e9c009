/**
 * The `reverb` command: verified status aggregation for a BACKBEAT cluster. Run
 * `deno task reverb --help` for its flags (each also read from a `BACKBEAT_*` variable).
 *
 * @example Run reverb against NATS
 * ```sh
 * deno run -A jsr:@chorus/backbeat/reverb/main --cluster prod --nats nats://127.0.0.1:4222
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
    stdout: (text) => console.log(text),
    stderr: (line) => console.error(line),
    stopRequested: stop.promise,
  });
  Deno.exit(code);
}

/**
 * The pulse command: `deno run -A pulse/main.ts --help`.
 *
 * @example Run three pulses of one cluster on NATS
 * ```sh
 * deno run -A pulse/main.ts --cluster prod --nats nats://127.0.0.1:4222 --tempo 120 --http :8081
 * ```
 *
 * @module
 */
import { parsePulseArgs, PULSE_ENV_VARS, PULSE_USAGE, runPulse } from "./_cli.ts";

function readEnv(): Record<string, string | undefined> {
  const env: Record<string, string | undefined> = {};
  for (const name of PULSE_ENV_VARS) {
    try {
      env[name] = Deno.env.get(name);
    } catch {
      // No --allow-env for this variable: flags only.
    }
  }
  return env;
}

if (import.meta.main) {
  let command;
  try {
    command = parsePulseArgs(Deno.args, readEnv());
  } catch (error) {
    console.error(`pulse: ${(error as Error).message}\nRun with --help for usage.`);
    Deno.exit(2);
  }
  if (command.help) {
    console.log(PULSE_USAGE);
    Deno.exit(0);
  }
  const stop = new AbortController();
  const onSignal = () => stop.abort();
  const signals: Deno.Signal[] = Deno.build.os === "windows" ? ["SIGINT"] : ["SIGINT", "SIGTERM"];
  for (const s of signals) Deno.addSignalListener(s, onSignal);
  const code = await runPulse(command.config, { signal: stop.signal });
  for (const s of signals) Deno.removeSignalListener(s, onSignal);
  Deno.exit(code);
}

// Shared setup of the SDK examples: NATS when BACKBEAT_NATS_URL is set (run a pulse there with
// `deno task pulse`), otherwise an embedded bus with an in-process Pulse at a fast tempo, so beats
// show at once with no setup. Each example ends after `--seconds N` (default 20) or on Ctrl-C.
import { BackbeatError, type Bus, InMemoryBus, subjects } from "../mod.ts";
import { redactUrl } from "../nats/mod.ts";
import { Pulse } from "../pulse/mod.ts";

// A BackbeatError that ends an example (NATS unreachable, a refused login) is one line, not a
// stack trace: its message already names the server and the reason. Top-level await turns it
// into an unhandled rejection.
for (const type of ["error", "unhandledrejection"] as const) {
  globalThis.addEventListener(type, (e) => {
    const error = e instanceof ErrorEvent ? e.error : (e as PromiseRejectionEvent).reason;
    if (!(error instanceof BackbeatError)) return;
    e.preventDefault();
    console.error(`example: ${error.message}`);
    Deno.exit(1);
  });
}

/** What an example runs on. */
export interface ExampleEnv {
  /** Aborts when the time is up or on Ctrl-C. */
  readonly signal: AbortSignal;
  /** `natsUrl` or `bus`, to assign onto a client config. */
  readonly transport: { natsUrl?: string; bus?: Bus };
  /** Where the beats come from, for the first line of output. */
  readonly description: string;
  /**
   * Cuts (true) or restores (false) the link between the embedded pulse and the clients, as a
   * network partition would. Returns false on NATS, where the pulse is not ours to cut.
   */
  partition(cut: boolean): boolean;
  /** Stops the embedded pulse and closes what was opened. */
  close(): Promise<void>;
}

function seconds(): number {
  // `deno task`-style leading "--" is ignored like everywhere else.
  const i = Deno.args.indexOf("--seconds");
  const n = i >= 0 ? Number(Deno.args[i + 1]) : 20;
  if (!(n > 0 && n <= 86_400)) throw new RangeError(`Invalid --seconds ${Deno.args[i + 1]}`);
  return n;
}

/**
 * Prepares the transport, a time limit and Ctrl-C handling.
 *
 * @param clusterId The cluster.
 * @param tempoBpm Tempo of the embedded pulse.
 * @returns The environment; call `close()` at the end.
 */
export async function exampleEnv(clusterId: string, tempoBpm: number): Promise<ExampleEnv> {
  const limit = seconds();
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(new Error("time is up")), limit * 1000);
  const onSigint = () => controller.abort(new Error("interrupted"));
  Deno.addSignalListener("SIGINT", onSigint);
  const release = () => {
    clearTimeout(timer);
    Deno.removeSignalListener("SIGINT", onSigint);
  };
  const natsUrl = Deno.env.get("BACKBEAT_NATS_URL");
  if (natsUrl) {
    return {
      signal: controller.signal,
      transport: { natsUrl },
      description: `NATS at ${redactUrl(natsUrl)} (beats from a running pulse), for ${limit} s`,
      partition: () => false,
      close: () => Promise.resolve(release()),
    };
  }
  // The pulse publishes on its own bus; a relay carries its beats to the clients' bus, so a
  // partition can be simulated by pausing the relay.
  const pulseBus = new InMemoryBus();
  const bus = new InMemoryBus();
  let cut = false;
  pulseBus.subscribe(subjects(clusterId).beat, (m) => {
    if (!cut) bus.publish(m.subject, m.data, { headers: m.headers });
  });
  const pulse = new Pulse({ clusterId, bus: pulseBus, tempoBpm });
  await pulse.start();
  return {
    signal: controller.signal,
    transport: { bus },
    description:
      `an embedded pulse at ${tempoBpm} BPM (set BACKBEAT_NATS_URL to use NATS), for ${limit} s`,
    partition(value) {
      cut = value;
      return true;
    },
    async close() {
      release();
      await pulse.stop();
      await pulseBus.close();
      await bus.close();
    },
  };
}

/**
 * Sleeps, waking early when the signal aborts.
 *
 * @param ms Milliseconds.
 * @param signal Ends the sleep early.
 * @returns Resolves after `ms` or on abort.
 */
export function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve();
    const done = () => {
      clearTimeout(timer);
      signal.removeEventListener("abort", done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal.addEventListener("abort", done, { once: true });
  });
}

// `deno task start`: a whole BACKBEAT cluster in one process on the embedded bus. A pulse beats
// at 30 BPM, six agents sign status claims as their tasks move through the bar, and reverb
// verifies them and publishes a BarReport per bar, with its dashboard on http://127.0.0.1:8787.
// --nats (or BACKBEAT_NATS_URL) runs the same cluster on NATS instead; --help lists the flags.
// Stop with Ctrl-C.
import { parseArgs } from "node:util";
import {
  BackbeatError,
  type Bus,
  Client,
  connectNatsBus,
  defaultConfig,
  generateSigningKeyPair,
  InMemoryBus,
} from "../mod.ts";
import { Pulse } from "../pulse/mod.ts";
import { Keyring, Reverb, serveReverbHttp } from "../reverb/mod.ts";

const USAGE = `Usage: deno task start [flags]

The embedded demo: pulse, reverb (with its dashboard) and signing agents in one process.

Flags (environment variable in brackets):
  --http HOST:PORT  dashboard address            [BACKBEAT_DEMO_HTTP] (default 127.0.0.1:8787)
  --agents N        agents, 1 to 100            [BACKBEAT_DEMO_AGENTS] (default 6)
  --tempo BPM       tempo, 0.1 to 6000          [BACKBEAT_TEMPO] (default 30)
  --nats URL        run on NATS instead of the embedded bus [BACKBEAT_NATS_URL]
  --seconds N       stop after N seconds (0: run until Ctrl-C) [BACKBEAT_DEMO_SECONDS]
  -h, --help        show this help
`;

function fail(message: string, usage = false): never {
  console.error(`demo: ${message}`);
  if (usage) console.error("Run with --help for usage.");
  Deno.exit(usage ? 2 : 1);
}

function env(name: string): string | undefined {
  try {
    return Deno.env.get(name);
  } catch {
    return undefined;
  }
}

let flags;
try {
  const args = Deno.args[0] === "--" ? Deno.args.slice(1) : Deno.args;
  flags = parseArgs({
    args,
    strict: true,
    options: {
      http: { type: "string" },
      agents: { type: "string" },
      tempo: { type: "string" },
      nats: { type: "string" },
      seconds: { type: "string" },
      help: { type: "boolean", short: "h" },
    },
  }).values;
} catch (error) {
  fail((error as Error).message, true);
}
if (flags.help) {
  console.log(USAGE);
  Deno.exit(0);
}

function number(
  name: string,
  text: string | undefined,
  fallback: number,
  min: number,
  max: number,
) {
  if (text === undefined) return fallback;
  const n = Number(text);
  if (text.trim() === "" || !Number.isFinite(n) || n < min || n > max) {
    fail(
      `Invalid --${name} ${JSON.stringify(text)}: expected a number from ${min} to ${max}`,
      true,
    );
  }
  return n;
}

const CLUSTER = "demo";
const TEMPO = number("tempo", flags.tempo ?? env("BACKBEAT_TEMPO"), 30, 0.1, 6_000);
const AGENTS = Math.trunc(number("agents", flags.agents ?? env("BACKBEAT_DEMO_AGENTS"), 6, 1, 100));
const SECONDS = number("seconds", flags.seconds ?? env("BACKBEAT_DEMO_SECONDS"), 0, 0, 86_400);
const httpText = flags.http ?? env("BACKBEAT_DEMO_HTTP") ??
  `127.0.0.1:${env("BACKBEAT_DEMO_PORT") ?? 8787}`;
const http = /^(.+):(\d{1,5})$/.exec(httpText);
if (!http || Number(http[2]) > 65_535) {
  fail(`Invalid --http ${JSON.stringify(httpText)}: expected HOST:PORT`, true);
}
const natsUrl = flags.nats ?? env("BACKBEAT_NATS_URL");

let bus: Bus;
try {
  bus = natsUrl ? await connectNatsBus({ servers: natsUrl }) : new InMemoryBus();
} catch (error) {
  // The message names the (redacted) server and the reason; a stack trace would add nothing.
  fail(error instanceof BackbeatError ? error.message : String(error));
}

// Agents with keys; reverb's keyring holds their public halves.
const BASE = ["indexer-1", "indexer-2", "planner", "reviewer", "helper", "flaky"];
const names = Array.from({ length: AGENTS }, (_, i) => BASE[i] ?? `agent-${i + 1}`);
const keys = await Promise.all(names.map(() => generateSigningKeyPair()));
const keyring = await Keyring.fromJson(
  Object.fromEntries(
    names.map((n, i) => [n, [{ key_id: keys[i].keyId, public_key: keys[i].publicKey }]]),
  ),
);

const pulse = new Pulse({ clusterId: CLUSTER, bus, tempoBpm: TEMPO });
const reverb = new Reverb({
  clusterId: CLUSTER,
  bus,
  keyring,
  requireSignatures: true,
});
await reverb.start();
let dashboard: ReturnType<typeof serveReverbHttp>;
try {
  dashboard = serveReverbHttp(reverb, { hostname: http[1], port: Number(http[2]) });
} catch (error) {
  const why = error instanceof Deno.errors.AddrInUse ? "address in use" : (error as Error).message;
  await reverb.stop();
  await bus.close();
  fail(`Cannot listen on ${httpText}: ${why} (change it with --http HOST:PORT)`);
}
await pulse.start();

const clients = names.map((agentId, i) => {
  const config = defaultConfig();
  config.clusterId = CLUSTER;
  config.agentId = agentId;
  config.taskId = `${agentId}:task`;
  config.bus = bus;
  config.signingKey = keys[i].keyPair.privateKey;
  config.keyId = keys[i].keyId;
  return new Client(config);
});

// Each agent works one task per bar: plan, execute with rising progress, review, complete. The
// helper promises help and delivers; the flaky agent fails every third bar; the reviewer is slow.
clients.forEach((client, i) => {
  const name = names[i];
  let bar = 0;
  client.onBeat(async (beat) => {
    if (beat.downbeat) bar++;
    const pos = beat.phase === "plan" ? 0 : beat.phase === "execute" ? 1 : 2;
    const failing = name === "flaky" && bar % 3 === 0;
    const state = failing && pos > 0
      ? "failed"
      : name === "helper" && pos === 1
      ? "helping"
      : ["planning", "executing", "reviewing"][pos] as "planning" | "executing" | "reviewing";
    if (name === "reviewer" && pos === 2) await new Promise((r) => setTimeout(r, 200));
    await client.emitStatusClaim({
      state,
      progress: failing ? 0.1 : Math.min(1, (pos + 1) / 3),
      beats_left: 2 - pos,
      notes: `bar ${bar}, ${beat.phase}`,
    }).catch((err) => console.error(`${name}: ${err.message}`));
    if (pos === 2 && !failing) {
      await client.emitStatusClaim({
        state: "completed",
        progress: 1,
        beats_left: 0,
        notes: "done",
      })
        .catch((err) => console.error(`${name}: ${err.message}`));
    }
  });
});
await Promise.all(clients.map((c) => c.start()));

console.log(
  `BACKBEAT demo: cluster "${CLUSTER}" at ${TEMPO} BPM on ${
    natsUrl ? `NATS ${natsUrl}` : "the embedded bus"
  }, ${names.length} agents. Dashboard: ${dashboard.url}/  (Ctrl-C stops)`,
);
reverb.addEventListener("report", (e) => {
  const r = e.detail;
  console.log(
    `bar ${r.from_beat}-${r.to_beat}: ${r.agents_reporting} agents, ${r.on_time_reviews} on-time reviews, ` +
      `${r.issues.length} issues, drift ${r.tempo_drift_ms.toFixed(2)} ms`,
  );
});

const stopped = Promise.withResolvers<void>();
Deno.addSignalListener("SIGINT", () => stopped.resolve());
if (SECONDS > 0) setTimeout(() => stopped.resolve(), SECONDS * 1000);
await stopped.promise;
await Promise.all(clients.map((c) => c.stop()));
await pulse.stop();
await reverb.stop();
await dashboard.stop();
await bus.close();
Deno.exit(0);

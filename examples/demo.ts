// `deno task start`: a whole BACKBEAT cluster in one process on the embedded bus. A pulse beats
// at 30 BPM, six agents sign status claims as their tasks move through the bar, and reverb
// verifies them and publishes a BarReport per bar, with its dashboard on http://127.0.0.1:8787.
// Set BACKBEAT_NATS_URL to run the same cluster on NATS instead. Stop with Ctrl-C.
import {
  type Bus,
  Client,
  connectNatsBus,
  defaultConfig,
  generateSigningKeyPair,
  InMemoryBus,
} from "../mod.ts";
import { Pulse } from "../pulse/mod.ts";
import { Keyring, Reverb, serveReverbHttp } from "../reverb/mod.ts";

const CLUSTER = "demo";
const TEMPO = Number(Deno.env.get("BACKBEAT_TEMPO") ?? 30);
const PORT = Number(Deno.env.get("BACKBEAT_DEMO_PORT") ?? 8787);

const natsUrl = Deno.env.get("BACKBEAT_NATS_URL");
const bus: Bus = natsUrl ? await connectNatsBus({ servers: natsUrl }) : new InMemoryBus();

// Agents with keys; reverb's keyring holds their public halves.
const names = ["indexer-1", "indexer-2", "planner", "reviewer", "helper", "flaky"];
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
const dashboard = serveReverbHttp(reverb, { hostname: "127.0.0.1", port: PORT });
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
const limit = Number(Deno.env.get("BACKBEAT_DEMO_SECONDS") ?? 0);
if (limit > 0) setTimeout(() => stopped.resolve(), limit * 1000);
await stopped.promise;
await Promise.all(clients.map((c) => c.stop()));
await pulse.stop();
await dashboard.shutdown();
await reverb.stop();
await bus.close();
Deno.exit(0);

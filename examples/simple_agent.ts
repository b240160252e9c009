// The SDK's reference usage: follow the beat, report status every beat, log each bar, and run
// work under a beat budget. `deno run -A examples/simple_agent.ts [--seconds N]`
import { BeatBudgetExceededError, Client, defaultConfig } from "../mod.ts";
import { exampleEnv, sleep } from "./_example_env.ts";

const env = await exampleEnv("chorus-dev", 240);
console.log(`simple_agent: following ${env.description}`);

const config = defaultConfig();
config.clusterId = "chorus-dev";
config.agentId = "my-service";
Object.assign(config, env.transport); // natsUrl = "nats://localhost:4222", or bus = new InMemoryBus()

const client = new Client(config);
client.onBeat((beat, info) => {
  console.log(`beat ${beat.beat_index} ${beat.phase}${info.synthetic ? " (synthetic)" : ""}`);
  return client.emitStatusClaim({ state: "executing", progress: 0.5, notes: "Processing data" });
});
client.onDownbeat((beat) => console.log("bar started", beat.window_id));
await client.start();

// Work that takes a random while; under a budget of 10 beats some runs are cut short.
async function work(signal: AbortSignal): Promise<string> {
  const ms = 500 + Math.random() * 3000;
  await sleep(ms, AbortSignal.any([signal, env.signal]));
  signal.throwIfAborted();
  return `finished in ${Math.round(ms)} ms`;
}

while (!env.signal.aborted) {
  try {
    const result = await client.withBeatBudget(10, async (signal) => await work(signal));
    console.log("work:", result);
  } catch (error) {
    if (error instanceof BeatBudgetExceededError) console.log("work:", error.message);
    else if (!env.signal.aborted) throw error;
  }
}

const h = client.health();
console.log(
  `health: connected=${h.connected} lastBeat=${h.lastBeat} claimsSent=${h.claimsSent} ` +
    `missedBeats=${h.missedBeats} reconnects=${h.reconnectCount} degraded=${h.degraded}`,
);
await client.stop();
await env.close();

// The reference usage, as written, against an embedded bus and a real Pulse.
import assert from "node:assert/strict";
import {
  BeatBudgetExceededError,
  type BeatFrame,
  Client,
  defaultConfig,
  InMemoryBus,
  type StatusClaim,
  subjects,
} from "../mod.ts";
import { Pulse } from "../pulse/mod.ts";
import { quietLogger } from "./sdk_helpers.ts";

const dec = new TextDecoder();

Deno.test("the reference usage works as written with an InMemoryBus and a Pulse", async () => {
  const bus = new InMemoryBus();
  const claims: StatusClaim[] = [];
  bus.subscribe(subjects("chorus-dev").status, (m) => claims.push(JSON.parse(dec.decode(m.data))));
  await using pulse = new Pulse({ clusterId: "chorus-dev", bus, tempoBpm: 1200 });
  await pulse.start();

  const bars: string[] = [];
  const work = async (signal: AbortSignal) => {
    await new Promise((r) => setTimeout(r, 120));
    signal.throwIfAborted();
    return "processed";
  };

  const config = defaultConfig();
  config.clusterId = "chorus-dev";
  config.agentId = "my-service";
  config.bus = bus; // instead of: config.natsUrl = "nats://localhost:4222";
  config.logger = quietLogger();
  const client = new Client(config);
  client.onBeat((_beat) =>
    client.emitStatusClaim({ state: "executing", progress: 0.5, notes: "Processing data" })
  );
  client.onDownbeat((beat) => {
    bars.push(beat.window_id); // the reference logs: console.log("bar started", beat.window_id)
  });
  await client.start();
  // deno-lint-ignore require-await -- the reference usage, verbatim
  const result = await client.withBeatBudget(10, async (signal) => work(signal));
  assert.equal(result, "processed");
  const h = client.health();
  assert.equal(h.connected, true);
  assert.equal(h.degraded, false);
  assert.equal(h.reconnectCount, 0);
  assert.ok(h.lastBeat !== null && h.lastBeat >= 1);
  await client.stop();

  assert.ok(claims.length >= 2);
  assert.ok(claims.every((c) => c.agent_id === "my-service" && c.state === "executing"));
  assert.ok(bars.every((w) => /^[0-9a-f]{32}$/.test(w)));
  await pulse.stop();
  await bus.close();
});

Deno.test("a beat budget runs out on a Pulse's real beats, and `await using` stops the client", async () => {
  const bus = new InMemoryBus();
  await using pulse = new Pulse({ clusterId: "chorus-dev", bus, tempoBpm: 3000 });
  await pulse.start();
  const config = defaultConfig();
  config.clusterId = "chorus-dev";
  config.agentId = "budgeted";
  config.bus = bus;
  config.logger = quietLogger();
  const seen: BeatFrame[] = [];
  let escaped: Client | undefined;
  {
    await using client = new Client(config);
    escaped = client;
    client.onBeat((f) => {
      seen.push(f);
    });
    await client.start();
    const started = performance.now();
    await assert.rejects(
      client.withBeatBudget(
        3,
        (signal) =>
          new Promise((_, reject) => signal.addEventListener("abort", () => reject(signal.reason))),
      ),
      (e) => e instanceof BeatBudgetExceededError && e.beatsUsed === 3 && e.budget === 3,
    );
    // 3 beats at 3000 BPM is 60 ms.
    assert.ok(performance.now() - started < 1000);
  }
  assert.equal(escaped.state, "stopped");
  for (let i = 1; i < seen.length; i++) {
    assert.equal(seen[i].beat_index, seen[i - 1].beat_index + 1);
  }
  await pulse.stop();
  await bus.close();
});

// A client that never hears pulse (pulse down, or a typo in the cluster id): after the start-up
// grace it runs synthetic beats on a fallback timeline, warns once, says why in health, and
// leaves the fallback for pulse's timeline at pulse's first beat.
import assert from "node:assert/strict";
import { BeatBudgetExceededError, Client, defaultConfig, InMemoryBus } from "./mod.ts";
import { ManualClock } from "../core/mod.ts";
import { BeatSource, quietLogger, recordBeats, settle } from "../tests/sdk_helpers.ts";

const T0 = 1_700_000_000_000;

for (const delivery of ["arrival", "scheduled"] as const) {
  Deno.test(`no pulse at all (${delivery}): fallback beats after the grace, one warning, then pulse's timeline`, async () => {
    const bus = new InMemoryBus();
    const clock = new ManualClock(T0);
    const logger = quietLogger();
    const c = defaultConfig();
    c.clusterId = "typo";
    c.agentId = "agent";
    c.bus = bus;
    c.clock = clock;
    c.logger = logger;
    c.delivery = delivery;
    c.startupGraceMs = 5_000;
    c.fallbackTempoBpm = 60;
    const client = new Client(c);
    const beats = recordBeats(client);
    const degraded: number[] = [];
    client.addEventListener("degraded", (e) => degraded.push(e.detail.lastBeat));
    await client.start();
    try {
      assert.equal(client.health().degraded, false);
      await clock.advance(4_999);
      assert.equal(beats.length, 0);
      await clock.advance(1);
      await settle();
      assert.deepEqual(degraded, [-1]);
      assert.equal(client.health().degradedReason, "no_pulse");
      const warned = logger.lines.filter((l) =>
        l.includes("No beat from pulse on backbeat.typo.beat")
      );
      assert.equal(warned.length, 1);
      assert.match(warned[0], /cluster id "typo"/);
      // A budget ends on fallback beats too.
      const outcome = client.withBeatBudget(2, () => new Promise(() => {})).then(
        () => "resolved",
        (e) => e,
      );
      await clock.advance(3_100);
      await settle();
      assert.ok((await outcome) instanceof BeatBudgetExceededError);
      assert.ok(beats.length >= 3, `${beats.length} fallback beats`);
      assert.ok(beats.every((b) => b.synthetic));
      assert.equal(beats[0].frame.tempo_bpm, 60);
      assert.equal(logger.lines.filter((l) => l.includes("No beat from pulse on")).length, 1);
      // Pulse appears: its beats replace the fallback.
      const source = new BeatSource(bus, "typo", { tempoBpm: 120, originTime: clock.now() });
      for (let i = 0; i < 3; i++) {
        await source.publish(i);
        await settle();
        await clock.advance(500);
        await settle();
      }
      assert.equal(client.health().degraded, false);
      assert.equal(client.health().degradedReason, null);
      const real = beats.filter((b) => !b.synthetic);
      assert.ok(real.length >= 1, "a real beat after the fallback");
      assert.equal(real.at(-1)!.frame.tempo_bpm, 120);
    } finally {
      await client.stop();
      await bus.close();
    }
  });
}

Deno.test("no fallback before the grace, nor with localDegradation off", async () => {
  const bus = new InMemoryBus();
  const clock = new ManualClock(T0);
  const c = defaultConfig();
  c.clusterId = "quiet";
  c.agentId = "agent";
  c.bus = bus;
  c.clock = clock;
  c.logger = quietLogger();
  c.localDegradation = false;
  const client = new Client(c);
  await client.start();
  await clock.advance(60_000);
  await settle();
  assert.equal(client.health().degraded, false);
  assert.equal(client.health().lastBeat, null);
  await client.stop();
  await bus.close();
  assert.throws(() => new Client({ ...c, startupGraceMs: -1 }), RangeError);
  assert.throws(() => new Client({ ...c, fallbackTempoBpm: 10_000 }), RangeError);
});

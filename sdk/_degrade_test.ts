import assert from "node:assert/strict";
import { Client, type Clock, defaultConfig, InMemoryBus } from "./mod.ts";
import {
  type BeatFrame,
  FrameTracker,
  knownWindowId,
  ManualClock,
  Timeline,
  windowId,
  windowIdsSettled,
} from "../core/mod.ts";
import { syntheticFrame } from "./_degrade.ts";
import { BeatSource, quietLogger, recordBeats, settle } from "../tests/sdk_helpers.ts";

const CLUSTER = "degrade";
const T0 = 1_700_000_000_000;

function degradingClient(
  bus: InMemoryBus,
  clock: Clock,
  jitterToleranceMs = 50,
  clusterId = CLUSTER,
): Client {
  const c = defaultConfig();
  c.clusterId = clusterId;
  c.agentId = "agent";
  c.bus = bus;
  c.clock = clock;
  c.jitterToleranceMs = jitterToleranceMs;
  c.logger = quietLogger();
  return new Client(c);
}

/** Drives real beats from a source on the manual clock: publish at each due time. */
async function realBeats(
  clock: ManualClock,
  bus: InMemoryBus,
  source: BeatSource,
  from: number,
  to: number,
): Promise<void> {
  for (let i = from; i <= to; i++) {
    await clock.advance(source.timeline.dueAt(i) - clock.now());
    await source.publish(i);
    await bus.flush();
    await windowIdsSettled();
    await settle();
  }
}

/** Advances in steps no longer than one bar, letting async window-id digests finish. */
async function advance(clock: ManualClock, ms: number, step = 4_000): Promise<void> {
  const end = clock.now() + ms;
  while (clock.now() < end) {
    await clock.advance(Math.min(step, end - clock.now()));
    await windowIdsSettled();
    await settle();
  }
}

Deno.test("syntheticFrame() builds exactly the frame Timeline.frame() builds", async () => {
  const t = new Timeline({ originTime: T0, originBeat: 100, tempoBpm: 120, beatsPerBar: 4 })
    .withTempo(90, 101);
  for (let beat = 100; beat < 120; beat++) {
    const window = await t.windowId(CLUSTER, beat);
    assert.deepEqual(
      syntheticFrame(t, CLUSTER, beat, "0001:0002:0003", window),
      await t.frame(CLUSTER, beat, "0001:0002:0003"),
    );
  }
});

/** What a degraded client extrapolates from its tracker: the bar located, anchored on arrival. */
async function extrapolate(tracker: FrameTracker): Promise<Timeline> {
  await tracker.locateBar();
  return tracker.timeline("arrival")!;
}

Deno.test("a client that joined mid-bar locates the bar's downbeat from the frame's window id", async () => {
  const t = new Timeline({ originTime: 0, tempoBpm: 60, beatsPerBar: 7, barOrigin: 3 });
  for (const beat of [3, 4, 9, 10, 11, 40]) {
    const tracker = new FrameTracker();
    tracker.observe(await t.frame(CLUSTER, beat, "0000:0000:0000"), 0);
    assert.equal(await tracker.locateBar(), t.barStart(beat));
    assert.equal((await extrapolate(tracker)).barStart(beat), t.barStart(beat));
  }
  const frame = await t.frame(CLUSTER, 12, "0000:0000:0000");
  const tracker = new FrameTracker();
  tracker.observe({ ...frame, window_id: "0".repeat(32) }, 0);
  assert.equal(await tracker.locateBar(), undefined);
});

Deno.test("the extrapolated timeline takes the bar from the frame, the downbeat spacing, or the hint", async () => {
  const t = new Timeline({ originTime: 0, tempoBpm: 60, beatsPerBar: 3, barOrigin: 1 });
  const full = (beat: number) => t.frame(CLUSTER, beat, "0000:0000:0000");
  const bare = async (beat: number): Promise<BeatFrame> => {
    const { beats_per_bar: _, ...frame } = await full(beat);
    return frame;
  };
  const frame = await full(8);

  const fromFrame = new FrameTracker();
  fromFrame.observe(frame, 5);
  const a = await extrapolate(fromFrame);
  assert.equal(a.beatsPerBar, 3);
  assert.equal(a.barStart(8), 7);
  assert.equal(a.dueAt(9), 1005);

  const fromSpacing = new FrameTracker({ beatsPerBarHint: 4 });
  fromSpacing.observe(await bare(4), 0);
  fromSpacing.observe(await bare(7), 3);
  fromSpacing.observe(await bare(8), 5);
  assert.equal((await extrapolate(fromSpacing)).beatsPerBar, 3);

  const fromHint = new FrameTracker({ beatsPerBarHint: 5 });
  fromHint.observe(await bare(7), 3);
  fromHint.observe(await bare(8), 5);
  const c = await extrapolate(fromHint);
  assert.equal(c.beatsPerBar, 5);
  assert.equal(c.barStart(8), 7);

  const announced = new FrameTracker();
  announced.observe(await full(4), -4000);
  announced.observe(await full(7), -1000);
  announced.observe({ ...frame, next_tempo_bpm: 120 }, 0);
  const faster = await extrapolate(announced);
  assert.equal(faster.tempoAt(10), 120);
  assert.equal(faster.dueAt(11), 2500);
});

Deno.test("degraded mode is entered when pulse stops and left when it resumes, no beat delivered twice", async () => {
  const bus = new InMemoryBus();
  const clock = new ManualClock(T0);
  await using client = degradingClient(bus, clock);
  const got = recordBeats(client);
  const transitions: string[] = [];
  client.addEventListener("degraded", (e) => {
    transitions.push(`degraded after ${e.detail.lastBeat} at +${e.detail.at - T0}`);
  });
  client.addEventListener("recovered", (e) => {
    const d = e.detail;
    transitions.push(`recovered at ${d.beat} after ${d.syntheticBeats} synthetic`);
  });
  await client.start();
  const source = new BeatSource(bus, CLUSTER, { tempoBpm: 60, originTime: T0 });
  await realBeats(clock, bus, source, 0, 5);
  assert.equal(client.health().degraded, false);

  // Pulse goes quiet after beat 5: beat 6 is due at +6000, the watchdog fires at +6050.
  await advance(clock, 1049);
  assert.equal(client.health().degraded, false);
  await advance(clock, 1);
  assert.equal(client.health().degraded, true);
  assert.deepEqual(transitions, ["degraded after 5 at +6050"]);
  await advance(clock, 5000);
  const synthetic = got.filter((b) => b.synthetic);
  assert.deepEqual(synthetic.map((b) => b.index), [6, 7, 8, 9, 10, 11]);
  // Each synthetic frame is the one pulse would have sent (hlc aside).
  for (const b of synthetic) {
    assert.deepEqual({ ...b.frame, hlc: "" }, { ...(await source.frame(b.index)), hlc: "" });
  }
  assert.equal(client.health().phase, "review");

  // Pulse resumes at beat 11 (already delivered synthetically): re-align without redelivery.
  await source.publish(11);
  await bus.flush();
  assert.equal(client.health().degraded, false);
  await realBeats(clock, bus, source, 12, 14);
  assert.deepEqual(transitions, ["degraded after 5 at +6050", "recovered at 11 after 6 synthetic"]);
  const indexes = got.map((b) => b.index);
  assert.deepEqual(indexes, [...Array(15).keys()]);
  assert.deepEqual(got.filter((b) => !b.synthetic).map((b) => b.index), [
    0,
    1,
    2,
    3,
    4,
    5,
    12,
    13,
    14,
  ]);
  assert.equal(client.health().missedBeats, 0);
  await bus.close();
});

Deno.test("when pulse resumes ahead of the synthetic beats, the gap is counted as missed", async () => {
  const bus = new InMemoryBus();
  const clock = new ManualClock(T0);
  await using client = degradingClient(bus, clock);
  const got = recordBeats(client);
  await client.start();
  const source = new BeatSource(bus, CLUSTER, { tempoBpm: 60, originTime: T0 });
  await realBeats(clock, bus, source, 0, 3);
  await advance(clock, 2_500, 100); // synthetic 4 (late, at detection) and 5
  assert.deepEqual(got.filter((b) => b.synthetic).map((b) => b.index), [4, 5]);
  // A pulse whose clock ran ahead, by as much as the followed timeline can explain (beat 5 is due
  // now; three beats more is within its slack at this tempo).
  await source.publish(8);
  await bus.flush();
  assert.equal(client.health().degraded, false);
  assert.equal(client.health().missedBeats, 2);
  assert.deepEqual(got.map((b) => b.index), [0, 1, 2, 3, 4, 5, 8]);
  await bus.close();
});

Deno.test("stale frames from a deposed pulse do not end degraded mode", async () => {
  const bus = new InMemoryBus();
  const clock = new ManualClock(T0);
  await using client = degradingClient(bus, clock);
  const got = recordBeats(client);
  await client.start();
  const source = new BeatSource(bus, CLUSTER, { tempoBpm: 60, originTime: T0 });
  await realBeats(clock, bus, source, 0, 5);
  await advance(clock, 2_000, 100);
  assert.equal(client.health().degraded, true);
  await source.publish(3);
  await source.publish(5);
  await bus.flush();
  assert.equal(client.health().degraded, true);
  assert.equal(client.health().droppedFrames, 2);
  assert.deepEqual(got.map((b) => b.index), [0, 1, 2, 3, 4, 5, 6, 7]);
  await bus.close();
});

Deno.test("withBeatBudget() counts synthetic beats", async () => {
  const bus = new InMemoryBus();
  const clock = new ManualClock(T0);
  await using client = degradingClient(bus, clock);
  await client.start();
  const source = new BeatSource(bus, CLUSTER, { tempoBpm: 60, originTime: T0 });
  await realBeats(clock, bus, source, 0, 1);
  const call = client.withBeatBudget(2, () => new Promise(() => {}));
  let outcome = "pending";
  call.catch((e) => outcome = e.name);
  await advance(clock, 2_100, 100); // degraded at +2050: synthetic beats 2 and 3
  assert.equal(client.health().degraded, true);
  assert.equal(outcome, "BeatBudgetExceededError");
  await bus.close();
});

/** A manual clock whose timers fire up to 1.5 ms late, like setTimeout. */
class LateClock implements Clock {
  readonly inner: ManualClock;
  #seed = 12345;
  constructor(inner: ManualClock) {
    this.inner = inner;
  }
  now(): number {
    return this.inner.now();
  }
  schedule(at: number, fn: () => void): () => void {
    this.#seed = (this.#seed * 1103515245 + 12345) % 2 ** 31;
    return this.inner.schedule(at + (this.#seed / 2 ** 31) * 1.5, fn);
  }
}

Deno.test("one simulated hour of degraded mode keeps every synthetic beat within 2 ms of schedule", async () => {
  const bus = new InMemoryBus();
  const manual = new ManualClock(T0);
  const clock = new LateClock(manual);
  await using client = degradingClient(bus, clock, 50);
  const got = recordBeats(client);
  const entries: number[] = [];
  client.onBeat(() => {
    entries.push(clock.now());
  });
  await client.start();
  const source = new BeatSource(bus, CLUSTER, { tempoBpm: 60, originTime: T0 });
  await realBeats(manual, bus, source, 0, 3);
  const anchorAt = got[3].at;
  await advance(manual, 2_000, 50); // through detection
  await advance(manual, 3_600_000 - 1_000, 4_000);
  const synthetic = got.map((b, i) => ({ ...b, entry: entries[i] })).filter((b) => b.synthetic);
  assert.equal(synthetic.length, 3600);
  assert.deepEqual(synthetic.map((b) => b.index), Array.from({ length: 3600 }, (_, i) => i + 4));
  // The first synthetic beat is the one whose absence was detected: late by the jitter tolerance.
  const ideal = (index: number) => anchorAt + (index - 3) * 1000;
  assert.ok(
    Math.abs(synthetic[0].entry - ideal(4)) <= 50 + 2,
    `first synthetic beat ${synthetic[0].entry - ideal(4)} ms late`,
  );
  let worst = 0;
  for (const b of synthetic.slice(1)) {
    worst = Math.max(worst, Math.abs(b.entry - ideal(b.index)));
    assert.equal(b.at, ideal(b.index)); // the due time reported is the ideal one
  }
  assert.ok(worst <= 2, `worst synthetic beat error ${worst} ms`);
  // Window ids and downbeats stay on pulse's grid an hour later.
  const last = synthetic.at(-1)!;
  assert.deepEqual({ ...last.frame, hlc: "" }, { ...(await source.frame(last.index)), hlc: "" });
  assert.equal(client.health().missedBeats, 0);
  await bus.close();
});

Deno.test("a client that joined mid-bar degrades on pulse's grid", async () => {
  const bus = new InMemoryBus();
  const clock = new ManualClock(T0);
  await using client = degradingClient(bus, clock);
  const got = recordBeats(client);
  await client.start();
  // Bars of 5 from beat 2 (a pulse that changed its bar shape): 7..11, 12..16.
  const grid = new Timeline({ originTime: T0, tempoBpm: 60, beatsPerBar: 5, barOrigin: 2 });
  const source = new BeatSource(bus, CLUSTER);
  for (const beat of [8, 9]) { // no downbeat seen
    await clock.advance(grid.dueAt(beat) - clock.now());
    const frame = await grid.frame(CLUSTER, beat, "0000:0000:0000");
    await source.publish(beat, () => frame);
    await bus.flush();
    await settle();
  }
  await advance(clock, 8_000, 100);
  const synthetic = got.filter((b) => b.synthetic);
  assert.deepEqual(synthetic.map((b) => b.index), [10, 11, 12, 13, 14, 15, 16, 17]);
  // The grid pulse would have sent. (Phases and deadline_at are left out: the core FrameTracker
  // learns a frame's phase at its position from beat 0 before locateBar() moves the bar, so the
  // phases of the two real beats land on the wrong positions; reported to core.)
  for (const b of synthetic) {
    const want = await grid.frame(CLUSTER, b.index, "0000:0000:0000");
    assert.equal(b.frame.downbeat, want.downbeat, `beat ${b.index}`);
    assert.equal(b.frame.window_id, want.window_id, `beat ${b.index}`);
    assert.equal(b.frame.beats_per_bar, 5);
    assert.equal(b.frame.tempo_bpm, 60);
  }
  await bus.close();
});

Deno.test("synthetic window ids are derived, never copied from a real frame", async () => {
  // A cluster of its own, so no other test derived its bars' ids before.
  const cluster = "degrade-forged";
  const bus = new InMemoryBus();
  const clock = new ManualClock(T0);
  await using client = degradingClient(bus, clock, 50, cluster);
  const got = recordBeats(client);
  await client.start();
  const source = new BeatSource(bus, cluster, { tempoBpm: 60, originTime: T0 });
  // The first frame the client sees: the downbeat of bar 4..7 with a forged (well-formed) window
  // id. Then silence.
  await clock.advance(source.timeline.dueAt(4) - clock.now());
  await source.publish(4, (f) => ({ ...f, window_id: "f".repeat(32) }));
  await bus.flush();
  await settle();
  await windowIdsSettled();
  const derived = await windowId(cluster, 4);
  assert.equal(knownWindowId(cluster, 4), derived);
  await advance(clock, 3_500, 100);
  const synthetic = got.filter((b) => b.synthetic);
  assert.deepEqual(synthetic.map((b) => b.index), [5, 6, 7]);
  for (const b of synthetic) assert.equal(b.frame.window_id, derived);
  await bus.close();
});

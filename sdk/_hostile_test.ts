// The client on a hostile bus, in-process on a manual clock: forged indexes at the edge of the
// safe integers, forged jumps, a timeline restart with a new epoch, and floods of junk. Each
// case is a defect of the client before frames went through the tracker.
import assert from "node:assert/strict";
import { Client, type ClientConfig, type Clock, defaultConfig, InMemoryBus } from "./mod.ts";
import {
  answerTimeRequests,
  ManualClock,
  MAX_BEAT_INDEX,
  subjects,
  windowIdsSettled,
} from "../core/mod.ts";
import { BeatSource, quietLogger, recordBeats, settle } from "../tests/sdk_helpers.ts";

const CLUSTER = "hostile";
const T0 = 1_700_000_000_000;

/**
 * A manual clock that refuses to become a busy loop: a timer source that re-arms without end at
 * one instant (a beat counter stuck at 2^53) would hang `advance()` for ever; here it throws.
 */
class GuardedClock implements Clock {
  readonly inner: ManualClock = new ManualClock(T0);
  scheduled = 0;
  #limit: number;
  constructor(limit = 20_000) {
    this.#limit = limit;
  }
  now(): number {
    return this.inner.now();
  }
  schedule(at: number, fn: () => void): () => void {
    if (++this.scheduled > this.#limit) {
      throw new Error(`runaway timers: ${this.scheduled} scheduled`);
    }
    return this.inner.schedule(at, fn);
  }
}

function hostileConfig(bus: InMemoryBus, clock: Clock, extra: Partial<ClientConfig> = {}) {
  const c = defaultConfig();
  c.clusterId = CLUSTER;
  c.agentId = "agent";
  c.bus = bus;
  c.clock = clock;
  c.logger = quietLogger();
  return { ...c, ...extra };
}

async function settleAll(): Promise<void> {
  await windowIdsSettled();
  await settle();
}

/** Publishes beats `from..to` of a source, each at its due time on the manual clock. */
async function play(
  clock: GuardedClock,
  bus: InMemoryBus,
  source: BeatSource,
  from: number,
  to: number,
  until?: () => boolean,
): Promise<void> {
  for (let i = from; i <= to; i++) {
    await clock.inner.advance(source.timeline.dueAt(i) - clock.now());
    await source.publish(i);
    await bus.flush();
    await settleAll();
    if (until?.()) return;
  }
}

async function advance(clock: GuardedClock, ms: number, step = 250): Promise<void> {
  const end = clock.now() + ms;
  while (clock.now() < end) {
    await clock.inner.advance(Math.min(step, end - clock.now()));
    await settleAll();
  }
}

for (const forged of [MAX_BEAT_INDEX, 1e15]) {
  Deno.test(`a forged frame at beat ${forged} is refused; real beats go on at once`, async () => {
    const bus = new InMemoryBus();
    const clock = new GuardedClock();
    const client = new Client(hostileConfig(bus, clock));
    const got = recordBeats(client);
    await client.start();
    const source = new BeatSource(bus, CLUSTER, { tempoBpm: 60, originTime: T0 });
    await play(clock, bus, source, 0, 3);
    await advance(clock, 400);
    await source.publish(4, (f) => ({ ...f, beat_index: forged }));
    await bus.flush();
    await settleAll();
    // The next real beat, on time, is delivered: not dropped as below a forged high mark.
    await play(clock, bus, source, 4, 6);
    assert.deepEqual(got.map((b) => [b.index, b.synthetic]), [
      [0, false],
      [1, false],
      [2, false],
      [3, false],
      [4, false],
      [5, false],
      [6, false],
    ]);
    const h = client.health();
    assert.equal(h.lastBeat, 6);
    assert.equal(h.framesRejected.implausible, 1);
    assert.equal(h.droppedFrames, 1);
    assert.equal(h.missedBeats, 0);
    // Timers still fire: pulse goes quiet, synthetic beats follow the real timeline.
    await advance(clock, 3_200);
    assert.equal(client.health().degraded, true);
    assert.deepEqual(got.filter((b) => b.synthetic).map((b) => b.index), [7, 8, 9]);
    await client.stop();
    assert.equal(client.state, "stopped");
    await bus.close();
  });

  Deno.test(`a forged first frame at beat ${forged} neither freezes the client nor keeps it`, async () => {
    const bus = new InMemoryBus();
    const clock = new GuardedClock();
    const client = new Client(hostileConfig(bus, clock));
    const got = recordBeats(client);
    await client.start();
    const source = new BeatSource(bus, CLUSTER, { tempoBpm: 60, originTime: T0 });
    await clock.inner.advance(500);
    // The first frame this client ever sees is the forgery: nothing tells it apart yet.
    await source.publish(0, (f) => ({ ...f, beat_index: forged, downbeat: false }));
    await bus.flush();
    await settleAll();
    // Pulse's real beats: three agreeing frames move the client onto the real timeline.
    await play(clock, bus, source, 1, 6);
    assert.ok(client.health().lastBeat !== null && client.health().lastBeat! <= 6);
    const real = got.filter((b) => !b.synthetic && b.index < 100).map((b) => b.index);
    assert.deepEqual(real, [3, 4, 5, 6]);
    assert.equal(client.health().framesRejected.implausible, 2);
    // Timers still fire on the real timeline, and the client stops.
    await advance(clock, 2_200);
    assert.equal(client.health().degraded, true);
    assert.deepEqual(got.filter((b) => b.synthetic && b.index < 100).map((b) => b.index), [7, 8]);
    assert.ok(clock.scheduled < 1_000, `${clock.scheduled} timers scheduled`);
    await client.stop();
    assert.equal(client.state, "stopped");
    await bus.close();
  });
}

for (const delivery of ["arrival", "scheduled"] as const) {
  Deno.test(`[${delivery}] a client degraded at the last beat index there is stops making beats, never spins`, async () => {
    const bus = new InMemoryBus();
    const clock = new GuardedClock();
    // Scheduled: pulse's clock answers (the same manual clock), so beats are timed by it.
    const responder = delivery === "scheduled"
      ? answerTimeRequests(bus, CLUSTER, { clock, pulseId: "pulse-a" })
      : undefined;
    const client = new Client(hostileConfig(bus, clock, { delivery }));
    const got = recordBeats(client);
    const errors: string[] = [];
    client.addEventListener("error", (e) => errors.push(e.message));
    await client.start();
    await settleAll();
    // A timeline at its last beats (a forged first frame, or a cluster older than the universe).
    const source = new BeatSource(bus, CLUSTER, { tempoBpm: 60, originTime: T0, clock });
    await clock.inner.advance(3_000);
    // Scheduled: a downbeat, so the grid is known and the scheduler predicts the last beat (with
    // no grid a scheduled client degrades as an arrival one does).
    const downbeat = delivery === "scheduled";
    await source.publish(3, (f) => ({ ...f, beat_index: MAX_BEAT_INDEX - 1, downbeat }));
    await bus.flush();
    await settleAll();
    await advance(clock, 5_000);
    const h = client.health();
    assert.equal(h.degraded, true);
    // Scheduled: the last beat is predicted at its instant, before the watchdog notices.
    assert.deepEqual(got.map((b) => [b.index, b.synthetic]), [
      [MAX_BEAT_INDEX - 1, false],
      [MAX_BEAT_INDEX, delivery === "arrival"],
    ]);
    assert.ok(errors.some((m) => /highest beat index/.test(m)), errors.join("\n"));
    assert.ok(clock.scheduled < 100, `${clock.scheduled} timers scheduled`);
    responder?.unsubscribe();
    await client.stop();
    await bus.close();
  });
}

Deno.test("a timeline restart (new epoch from beat 0) is followed at its second frame; the old epoch is refused", async () => {
  const bus = new InMemoryBus();
  const clock = new GuardedClock();
  const client = new Client(hostileConfig(bus, clock));
  const got = recordBeats(client);
  const transitions: string[] = [];
  client.addEventListener("recovered", (e) => transitions.push(`recovered at ${e.detail.beat}`));
  await client.start();
  const first = new BeatSource(bus, CLUSTER, { tempoBpm: 60, originTime: T0, epoch: 1_000 });
  await play(clock, bus, first, 0, 5);
  // Pulse's KV state is lost; a pulse starts a new timeline 3.3 s later at beat 0, epoch 2000.
  const second = new BeatSource(bus, CLUSTER, {
    tempoBpm: 120,
    originTime: clock.now() + 3_300,
    epoch: 2_000,
  });
  await play(clock, bus, second, 0, 0);
  assert.equal(client.health().degraded, true); // synthetic beats of the old timeline meanwhile
  const before = got.length;
  await play(clock, bus, second, 1, 4);
  const after = got.slice(before);
  assert.deepEqual(after.map((b) => [b.index, b.synthetic, b.frame.epoch]), [
    [1, false, 2_000],
    [2, false, 2_000],
    [3, false, 2_000],
    [4, false, 2_000],
  ]);
  assert.deepEqual(transitions, ["recovered at 1"]);
  assert.equal(client.health().framesRejected.pending, 1);
  assert.equal(client.health().lastBeat, 4);
  assert.equal(client.health().windowId, (await second.frame(4)).window_id);
  // A deposed pulse of the old timeline is refused, however high its index.
  await first.publish(12);
  await bus.flush();
  assert.equal(client.health().framesRejected.old_epoch, 1);
  assert.equal(client.health().lastBeat, 4);
  // Synthetic beats of the new timeline carry its window ids (derived with its epoch).
  await advance(clock, 1_100);
  const synthetic = got.slice(before).filter((b) => b.synthetic);
  assert.deepEqual(synthetic.map((b) => b.index), [5, 6]);
  for (const b of synthetic) {
    assert.deepEqual({ ...b.frame, hlc: "" }, { ...(await second.frame(b.index)), hlc: "" });
  }
  await client.stop();
  await bus.close();
});

Deno.test("20,000 junk frames give a few log lines, exact counts by reason and bounded memory", async () => {
  const bus = new InMemoryBus({ maxPending: 100_000 });
  const clock = new GuardedClock();
  const logger = quietLogger();
  const client = new Client(hostileConfig(bus, clock, { logger, errorHistorySize: 8 }));
  let errorEvents = 0;
  client.addEventListener("error", () => errorEvents++);
  await client.start();
  const source = new BeatSource(bus, CLUSTER, { tempoBpm: 60, originTime: T0 });
  await play(clock, bus, source, 0, 2);
  const frame = await source.frame(2);
  const enc = new TextEncoder();
  const junk = [
    enc.encode("{not json"),
    enc.encode(JSON.stringify({ ...frame, phase: "rest" })),
    enc.encode(JSON.stringify({ ...frame, cluster_id: "other" })),
    enc.encode(JSON.stringify({ ...frame, beat_index: 1 })), // stale
    enc.encode(JSON.stringify({ ...frame, beat_index: 1e12 })), // implausible
    new Uint8Array(20_000),
  ];
  const lines = logger.lines.length;
  for (let i = 0; i < 20_000; i++) bus.publish(subjects(CLUSTER).beat, junk[i % junk.length]);
  await bus.flush();
  await advance(clock, 11_000, 1_000);
  const h = client.health();
  const perKind = Math.floor(20_000 / junk.length);
  assert.deepEqual(h.framesRejected, {
    json: perKind + 1,
    schema: perKind + 1,
    cluster: perKind,
    stale: perKind,
    implausible: perKind,
    size: perKind,
  });
  assert.equal(h.droppedFrames, 20_000);
  const logged = logger.lines.length - lines;
  assert.ok(logged >= 1 && logged <= 4, `${logged} log lines`);
  assert.ok(h.lastErrors.length <= 8);
  assert.ok(errorEvents <= 4, `${errorEvents} error events`);
  await client.stop();
  await bus.close();
});

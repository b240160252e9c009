import assert from "node:assert/strict";
import {
  BackbeatError,
  type BeatFrame,
  formatInstant,
  InMemoryBus,
  ManualClock,
  windowId,
} from "../core/mod.ts";
import { validateMessage } from "../schemas/mod.ts";
import { Pulse, type PulseOptions, type TempoChange } from "./mod.ts";

const dec = new TextDecoder();
const enc = new TextEncoder();

interface Seen {
  frame: BeatFrame;
  headers: Record<string, string>;
}

async function setup(options: Partial<PulseOptions> = {}, start = 1_700_000_000_000) {
  const clock = new ManualClock(start);
  const bus = new InMemoryBus();
  const seen: Seen[] = [];
  bus.subscribe("backbeat.c1.beat", (m) => {
    seen.push({ frame: JSON.parse(dec.decode(m.data)), headers: { ...m.headers } });
  });
  const pulse = new Pulse({ clusterId: "c1", bus, clock, tempoBpm: 120, ...options });
  await pulse.start();
  return {
    clock,
    bus,
    pulse,
    seen,
    // Window ids are real WebCrypto work: let it finish between steps of simulated time.
    async advance(ms: number) {
      let left = ms;
      do {
        await clock.advance(Math.min(250, left));
        await pulse.settled();
        left -= 250;
      } while (left > 0);
      await bus.flush();
    },
    async done() {
      await pulse.stop();
      await bus.close();
    },
  };
}

Deno.test("Pulse publishes valid, continuous frames at their due time", async () => {
  const t = await setup();
  try {
    assert.equal(t.pulse.isLeader, true);
    const origin = t.pulse.timeline.dueAt(0);
    await t.advance(10 + 19 * 500);
    await t.bus.flush();
    assert.equal(t.seen.length, 20);
    const phases = ["plan", "execute", "execute", "review"];
    // End of phase, in beats after the beat: plan ends next beat, execute at review, review at bar end.
    const phaseEnd = [1, 2, 1, 1];
    for (const [i, { frame, headers }] of t.seen.entries()) {
      const v = validateMessage(frame);
      assert.equal(v.valid, true, JSON.stringify(v.errors));
      assert.equal(frame.beat_index, i);
      assert.equal(frame.cluster_id, "c1");
      assert.equal(frame.downbeat, i % 4 === 0);
      assert.equal(frame.phase, phases[i % 4]);
      assert.equal(frame.tempo_bpm, 120);
      assert.equal(frame.beats_per_bar, 4);
      assert.equal(frame.next_tempo_bpm, undefined);
      const due = origin + i * 500;
      assert.equal(
        frame.deadline_at,
        formatInstant(due + phaseEnd[i % 4] * 500),
      );
      // A timeline this pulse created: an epoch from its creation instant, in every frame and
      // every window id.
      assert.equal(frame.epoch, 1_700_000_000_000);
      assert.equal(frame.window_id, await windowId("c1", i - (i % 4), frame.epoch));
      assert.equal(headers["x-window-id"], frame.window_id);
      assert.equal(headers["x-hlc"], frame.hlc);
      assert.equal(headers["x-pulse-id"], t.pulse.id);
      assert.equal(headers["x-fencing-token"], "0");
      // Published exactly at the due time: never early, and on a manual clock never late.
      assert.equal(headers["x-pulse-sent"], due.toFixed(3));
    }
    const hlcs = t.seen.map((s) => s.frame.hlc);
    assert.deepEqual([...hlcs].sort(), hlcs);
    const m = t.pulse.metrics();
    assert.equal(m.beatsPublished, 20);
    assert.equal(m.lateness.count, 20);
    assert.equal(m.lateness.max, 0);
    assert.equal(t.pulse.lastBeat?.beat_index, 19);
  } finally {
    await t.done();
  }
});

Deno.test("Pulse follows a custom bar shape and phase map", async () => {
  const t = await setup({
    beatsPerBar: 3,
    phases: ["plan", "execute", "execute"],
    originTime: 1_700_000_000_000,
  });
  try {
    await t.advance(6 * 500);
    await t.bus.flush();
    assert.deepEqual(t.seen.map((s) => s.frame.downbeat), [
      true,
      false,
      false,
      true,
      false,
      false,
      true,
    ]);
    assert.deepEqual(t.seen.map((s) => s.frame.phase).slice(0, 3), ["plan", "execute", "execute"]);
    // Execute lasts to the end of the bar (no review beat).
    assert.equal(t.seen[1].frame.deadline_at, formatInstant(1_700_000_000_000 + 1500));
  } finally {
    await t.done();
  }
});

Deno.test("setTempo() lands on the next downbeat, announced in the bar before", async () => {
  const t = await setup();
  try {
    const tempos: TempoChange[] = [];
    t.pulse.addEventListener("tempo", (e) => tempos.push((e as CustomEvent<TempoChange>).detail));
    const origin = t.pulse.timeline.dueAt(0);
    await t.advance(10 + 4 * 500); // beats 0..4 published; 5 is next
    const change = t.pulse.setTempo(240);
    assert.deepEqual(change, { tempoBpm: 240, effectiveBeat: 8, forwarded: false });
    assert.deepEqual(tempos, [change]);
    await t.advance(4 * 500 + 8 * 250);
    await t.bus.flush();
    const frames = t.seen.map((s) => s.frame);
    assert.deepEqual(frames.map((f) => f.beat_index), [...Array(frames.length).keys()]);
    assert.equal(frames.length, 17);
    for (const f of frames.slice(0, 5)) assert.equal(f.next_tempo_bpm, undefined);
    for (const f of frames.slice(5, 8)) {
      assert.equal(f.tempo_bpm, 120);
      assert.equal(f.next_tempo_bpm, 240);
    }
    for (const f of frames.slice(8)) {
      assert.equal(f.tempo_bpm, 240);
      assert.equal(f.next_tempo_bpm, undefined);
    }
    // Beat 7's review phase ends where the new tempo begins.
    assert.equal(frames[7].deadline_at, formatInstant(origin + 8 * 500));
    const sent = t.seen.map((s) => Number(s.headers["x-pulse-sent"]));
    assert.equal(sent[8], origin + 8 * 500);
    assert.equal(sent[16], origin + 8 * 500 + 8 * 250);
    assert.equal(t.pulse.metrics().tempoBpm, 240);
    assert.equal(t.pulse.metrics().lateness.max, 0);
  } finally {
    await t.done();
  }
});

Deno.test("setTempo() on a downbeat-to-be waits a whole bar so frames announce it", async () => {
  const t = await setup();
  try {
    await t.advance(10 + 3 * 500); // beats 0..3 published; 4 (a downbeat) is next
    assert.equal(t.pulse.setTempo(60).effectiveBeat, 8);
    await t.advance(4 * 500);
    await t.bus.flush();
    assert.deepEqual(t.seen.slice(4).map((s) => s.frame.next_tempo_bpm), [60, 60, 60, 60]);
  } finally {
    await t.done();
  }
});

Deno.test("setTempo() rejects out-of-range tempos and changes nothing", async () => {
  const idle = new Pulse({ clusterId: "c1", clock: new ManualClock(0) });
  assert.throws(
    () => idle.setTempo(60),
    (e) => e instanceof BackbeatError && e.code === "not_started",
  );
  await idle.stop();
  const t = await setup();
  try {
    for (const bad of [0.05, 0, -1, 6000.5, NaN, Infinity, "120" as unknown as number]) {
      assert.throws(() => t.pulse.setTempo(bad), RangeError);
    }
    assert.throws(() => t.pulse.setTempo(0.01), /tempo_bpm must be a number from 0\.1 to 6000/);
    assert.equal(t.pulse.timeline.segments.length, 1);
    assert.doesNotThrow(() => t.pulse.setTempo(0.1));
    assert.doesNotThrow(() => t.pulse.setTempo(6000));
    assert.throws(() => new Pulse({ clusterId: "c1", tempoBpm: 7000 }), RangeError);
    assert.throws(() => new Pulse({ clusterId: "c.1" }), TypeError);
  } finally {
    await t.done();
  }
});

Deno.test("control messages change the tempo; malformed ones are counted, never fatal", async () => {
  const t = await setup();
  try {
    await t.advance(10 + 500);
    for (
      const bad of [
        "not json",
        "[]",
        "{}",
        '{"tempo_bpm":"90"}',
        '{"tempo_bpm":0}',
        '{"tempo_bpm":1e9}',
        "x".repeat(5000),
      ]
    ) {
      t.bus.publish("backbeat.c1.control", enc.encode(bad));
    }
    t.bus.publish("backbeat.c1.control", enc.encode('{"tempo_bpm":60}'));
    await t.bus.flush();
    assert.equal(t.pulse.metrics().controlRejected, 7);
    await t.advance(4 * 500);
    await t.bus.flush();
    const frames = t.seen.map((s) => s.frame);
    assert.equal(frames[2].next_tempo_bpm, 60);
    assert.equal(frames[4].tempo_bpm, 60);
    assert.deepEqual(frames.map((f) => f.beat_index), [...Array(frames.length).keys()]);
  } finally {
    await t.done();
  }
});

Deno.test("a pulse behind schedule replays at most one bar and counts the skipped beats", async () => {
  const now = 1_700_000_000_000;
  const late = await setup({ originTime: now - 2.5 * 500 });
  try {
    await late.bus.flush();
    await late.advance(0);
    await late.bus.flush();
    // Beats 0, 1 and 2 were due: published at once, as catch-up, excluded from lateness.
    assert.deepEqual(late.seen.map((s) => s.frame.beat_index), [0, 1, 2]);
    const m = late.pulse.metrics();
    assert.equal(m.catchUpBeats, 3);
    assert.equal(m.beatsSkipped, 0);
    assert.equal(m.lateness.count, 0);
  } finally {
    await late.done();
  }
  const far = await setup({ originTime: now - 10.5 * 500 });
  try {
    await far.advance(0);
    await far.advance(500);
    await far.bus.flush();
    assert.deepEqual(far.seen.map((s) => s.frame.beat_index), [10, 11]);
    assert.equal(far.pulse.metrics().beatsSkipped, 10);
    assert.equal(far.seen[1].headers["x-pulse-sent"], (now - 10.5 * 500 + 11 * 500).toFixed(3));
  } finally {
    await far.done();
  }
});

Deno.test("a frame whose window id is not ready is published late, never early", async () => {
  const now = 1_700_000_000_000;
  const t = await setup({ originTime: now });
  try {
    // Ten seconds in one jump: bar 12's window id (a WebCrypto digest) cannot finish meanwhile.
    await t.clock.advance(10_000);
    for (let i = 0; i < 5; i++) {
      await t.pulse.settled();
      await t.clock.advance(0);
    }
    await t.bus.flush();
    // Whether the digest finishes during the jump is up to the runtime; either way beat 12 and
    // later go out no earlier than due, in order, and any beat not sent is counted as skipped.
    const idx = t.seen.map((s) => s.frame.beat_index);
    assert.deepEqual(idx.slice(0, 13), [...Array(13).keys()]);
    assert.equal(idx.at(-1), 20);
    let gaps = 0;
    for (let i = 1; i < idx.length; i++) {
      assert.ok(idx[i] > idx[i - 1]);
      gaps += idx[i] - idx[i - 1] - 1;
    }
    for (const { frame, headers } of t.seen) {
      assert.ok(Number(headers["x-pulse-sent"]) >= t.pulse.timeline.dueAt(frame.beat_index));
    }
    assert.equal(t.pulse.metrics().beatsSkipped, gaps);
    await t.advance(500);
    assert.equal(t.seen.at(-1)?.frame.beat_index, 21);
  } finally {
    await t.done();
  }
});

Deno.test("stop() is idempotent, stops publishing and a stopped pulse cannot restart", async () => {
  const t = await setup();
  await t.advance(10 + 500);
  await Promise.all([t.pulse.stop(), t.pulse.stop()]);
  const count = t.seen.length;
  await t.advance(5000);
  await t.bus.flush();
  assert.equal(t.seen.length, count);
  assert.equal(t.pulse.role, "stopped");
  await assert.rejects(t.pulse.start(), (e) => e instanceof BackbeatError && e.code === "closed");
  await t.bus.close();
});

Deno.test("start() with an aborted signal fails; aborting later stops the pulse", async () => {
  const p = new Pulse({ clusterId: "c1", clock: new ManualClock(0) });
  await assert.rejects(p.start(AbortSignal.abort()), (e) => e instanceof BackbeatError);
  await p.stop();
  const ac = new AbortController();
  const q = new Pulse({ clusterId: "c1", clock: new ManualClock(0) });
  await q.start(ac.signal);
  assert.equal(q.role, "leader");
  ac.abort();
  // The abort alone stops it (an embedded pulse has no lease to hand over).
  assert.equal(q.role, "stopped");
  await q.stop();
  await assert.rejects(q.start(), (e) => e instanceof BackbeatError && e.code === "closed");
});

Deno.test("24 simulated hours at 1,000 BPM accumulate zero drift", async () => {
  const start = 1_700_000_000_000;
  const clock = new ManualClock(start);
  const bus = new InMemoryBus();
  const beats = 24 * 60 * 1000;
  const origin = start + 60;
  let expected = 0;
  let bad = 0;
  let lastFrame = "";
  bus.subscribe("backbeat.c1.beat", (m) => {
    // Every frame must carry the next index and be sent exactly at origin + n × 60 ms.
    const sent = m.headers!["x-pulse-sent"];
    if (sent !== (origin + expected * 60).toFixed(3)) bad++;
    if (expected % 100_000 === 0 || expected === beats - 1) lastFrame = dec.decode(m.data);
    expected++;
  });
  // Each bar's window id is one WebCrypto digest, real asynchronous work that runs between
  // chunks of simulated time; 64-beat bars keep that work small (drift is about beats, not bars)
  // and a 32-bar lookahead covers a chunk.
  const pulse = new Pulse({
    clusterId: "c1",
    bus,
    clock,
    tempoBpm: 1000,
    beatsPerBar: 64,
    originTime: origin,
    windowLookaheadBars: 32,
  });
  await pulse.start();
  const chunk = 60_000; // one simulated minute = 1,000 beats = 250 bars
  for (let t = 0; t < 24 * 3_600_000; t += chunk) {
    await clock.advance(chunk);
    await bus.flush();
    await pulse.settled();
  }
  await bus.flush();
  assert.equal(bad, 0);
  // Beats 0..1,439,999: the last one due at exactly 24 h after the start.
  assert.equal(expected, beats);
  const m = pulse.metrics();
  assert.equal(m.beatsPublished, beats);
  assert.equal(m.lateness.max, 0);
  assert.equal(m.catchUpBeats, 0);
  const last = JSON.parse(lastFrame) as BeatFrame;
  assert.equal(validateMessage(last).valid, true);
  assert.equal(last.beat_index, beats - 1);
  assert.equal(pulse.timeline.dueAt(beats - 1), start + 24 * 3_600_000);
  await pulse.stop();
  await bus.close();
});

Deno.test("a throwing beat listener is logged and the pulse keeps beating", async () => {
  const clock = new ManualClock(1_700_000_000_000);
  const bus = new InMemoryBus();
  const logged: string[] = [];
  const logger = {
    debug() {},
    info() {},
    warn() {},
    error(msg: string) {
      logged.push(msg);
    },
  };
  const pulse = new Pulse({ clusterId: "dev", bus, clock, tempoBpm: 600, logger } as PulseOptions);
  let beats = 0;
  pulse.addEventListener("beat", () => {
    beats++;
    throw new Error("listener bug");
  });
  await pulse.start();
  for (let i = 0; i < 5; i++) {
    await clock.advance(100);
    await pulse.settled();
  }
  assert.ok(beats >= 4, `only ${beats} beats`);
  assert.equal(pulse.listenerErrors, beats);
  assert.ok(logged.includes("event listener threw"));
  await pulse.stop();
  await bus.close();
});

import assert from "node:assert/strict";
import {
  type BeatFrame,
  FrameTracker,
  type Logger,
  ManualClock,
  silentLogger,
  Timeline,
} from "../core/mod.ts";
import { planTenure, type StoredState, type TenureInput } from "./_leadership.ts";

const HLC = "0000:0000:0001";
const NOW = 1_700_000_000_000;

async function observed(source: Timeline, from: number, to: number): Promise<FrameTracker> {
  const tracker = new FrameTracker();
  for (let n = from; n <= to; n++) {
    const frame: BeatFrame = await source.frame("c1", n, HLC);
    tracker.observe(frame, source.dueAt(n) + 1);
  }
  return tracker;
}

function input(overrides: Partial<TenureInput>): TenureInput {
  return {
    clusterId: "c1",
    tracker: new FrameTracker(),
    current: new Timeline({ originTime: 0, tempoBpm: 120 }),
    keepCurrent: false,
    listeningSince: Infinity,
    clock: new ManualClock(NOW),
    logger: silentLogger,
    ...overrides,
  };
}

Deno.test("planTenure() without a stored timeline continues the frames seen, from now", async () => {
  // Three-beat bars at 300 BPM, a change to 150 BPM announced for the next downbeat (beat 9).
  const source = new Timeline({ originTime: NOW - 5_000, tempoBpm: 300, beatsPerBar: 3 })
    .withTempo(150, 6);
  const tracker = await observed(source, 3, 7);
  const plan = await planTenure(input({ tracker, trackerConfirmed: true }));
  assert.equal(plan.last, 7);
  assert.equal(plan.next, 8);
  const tl = plan.timeline;
  // Beat 8 is due 10 ms from now, then 200 ms beats on the bar grid the frames showed.
  assert.equal(tl.dueAt(8), NOW + 10);
  assert.equal(tl.dueAt(9), NOW + 210);
  assert.equal(tl.beatsPerBar, 3);
  assert.equal(tl.isDownbeat(9), true);
  assert.equal(tl.isDownbeat(10), false);
  assert.equal(tl.tempoAt(8), 300);
  assert.deepEqual(tl.phases, source.phases);
  // The announced change lands where the frames said.
  assert.deepEqual(tl.pendingChange(8), { beat: 9, at: NOW + 210, tempoBpm: 150 });
  assert.equal(tl.dueAt(10), NOW + 610);
});

Deno.test("planTenure() locates the bar from the window id when no downbeat was seen", async () => {
  const source = new Timeline({ originTime: NOW - 5_000, tempoBpm: 600, beatsPerBar: 4 });
  const tracker = await observed(source, 5, 6); // neither is a downbeat
  assert.equal(tracker.barOrigin, undefined);
  const plan = await planTenure(input({ tracker, trackerConfirmed: true }));
  assert.equal(plan.next, 7);
  assert.equal(plan.timeline.isDownbeat(8), true);
  assert.equal(plan.timeline.isDownbeat(7), false);
});

Deno.test("planTenure() continues a stored timeline after the last beat stored, seen or due", async () => {
  const stored: StoredState = {
    version: 1,
    cluster_id: "c1",
    timeline: new Timeline({ originTime: NOW - 10_000, tempoBpm: 120 }).toJSON(),
    last_beat: 12,
    holder: "p0",
    updated_at: new Date(NOW - 4_000).toISOString(),
  };
  const plan = await planTenure(input({ stored }));
  assert.deepEqual([plan.last, plan.next], [12, 13]);
  assert.equal(plan.timeline.dueAt(0), NOW - 10_000);
  // Listening since 8 s in: beat 16 was due and may have gone out unseen.
  const listening = await planTenure(input({ stored, listeningSince: NOW - 2_000 }));
  assert.deepEqual([listening.last, listening.next], [16, 17]);
});

Deno.test("planTenure() ignores a stored timeline of another cluster or unreadable", async () => {
  const warned: string[] = [];
  const logger: Logger = { ...silentLogger, warn: (msg) => void warned.push(msg) };
  const base = {
    version: 1 as const,
    last_beat: 3,
    holder: "p0",
    updated_at: new Date(NOW).toISOString(),
  };
  for (
    const stored of [
      { ...base, cluster_id: "other", timeline: new Timeline({ originTime: 0 }).toJSON() },
      {
        ...base,
        cluster_id: "c1",
        timeline: { segments: [] } as unknown as StoredState["timeline"],
      },
    ]
  ) {
    const plan = await planTenure(input({ stored, logger }));
    // Nothing seen either: beat 4 of the configured tempo and bar, from now.
    assert.deepEqual([plan.last, plan.next], [3, 4]);
    assert.equal(plan.timeline.dueAt(4), NOW + 10);
    assert.equal(plan.timeline.tempoAt(4), 120);
    assert.equal(plan.timeline.isDownbeat(4), true);
  }
  assert.deepEqual(warned, [
    "ignoring unreadable stored timeline",
    "ignoring unreadable stored timeline",
  ]);
});

Deno.test("planTenure() with nothing seen re-bases the configured timeline unless told to keep it", async () => {
  const current = new Timeline({ originTime: NOW - 60_000, tempoBpm: 60, beatsPerBar: 2 });
  const fresh = await planTenure(input({ current }));
  assert.deepEqual([fresh.last, fresh.next], [-1, 0]);
  assert.equal(fresh.timeline.dueAt(0), NOW + 10);
  assert.equal(fresh.timeline.beatsPerBar, 2);
  const kept = await planTenure(input({ current, keepCurrent: true }));
  // The configured schedule, as a new timeline: the same beats, with an epoch.
  assert.equal(kept.timeline.dueAt(7), current.dueAt(7));
  assert.equal(kept.timeline.epoch, NOW);
  assert.equal(kept.next, 0);
  // A timeline led before keeps its epoch.
  const again = await planTenure(input({ current: kept.timeline, keepCurrent: true }));
  assert.equal(again.timeline, kept.timeline);
});

function storedAt(tl: Timeline, lastBeat: number, cluster = "c1"): StoredState {
  return {
    version: 1,
    cluster_id: cluster,
    timeline: tl.toJSON(),
    last_beat: lastBeat,
    holder: "p0",
    updated_at: new Date(NOW).toISOString(),
  };
}

// A frame of `source` for beat n, arriving as a forger would send it: at NOW.
async function forged(source: Timeline, n: number): Promise<FrameTracker> {
  const tracker = new FrameTracker();
  tracker.observe(await source.frame("c1", n, HLC), NOW);
  return tracker;
}

Deno.test("planTenure() counts a frame seen only where the stored timeline explains it", async () => {
  // 120 BPM since 10 s ago: beat 20 is due now; the leader stored beat 18.
  const real = new Timeline({ originTime: NOW - 10_000, tempoBpm: 120, epoch: 5 });
  const stored = storedAt(real, 18);
  // One forged frame, 10^12, on the real timeline's epoch: the numbering does not move.
  const far = new Timeline({ originTime: NOW, originBeat: 1e12, tempoBpm: 120, epoch: 5 });
  for (const trackerConfirmed of [false, true]) {
    const plan = await planTenure(
      input({ stored, tracker: await forged(far, 1e12), trackerConfirmed }),
    );
    assert.deepEqual([plan.last, plan.next], [18, 19]);
    assert.equal(plan.timeline.epoch, 5);
  }
  // A seen frame up to two beats ahead of the beat due counts (clocks that disagree a little)...
  const near = await planTenure(input({ stored, tracker: await forged(real, 22) }));
  assert.deepEqual([near.last, near.next], [22, 23]);
  // ...three is more than any real pulse sends.
  const ahead = await planTenure(input({ stored, tracker: await forged(real, 23) }));
  assert.equal(ahead.next, 19);
  // A frame of another epoch is not the stored timeline's.
  const other = new Timeline({ originTime: NOW - 10_000, tempoBpm: 120, epoch: 6 });
  const foreign = await planTenure(input({ stored, tracker: await forged(other, 20) }));
  assert.equal(foreign.next, 19);
  assert.equal(foreign.timeline.epoch, 5);
});

Deno.test("planTenure() leads after a frame at 2^53 - 1, with or without a stored timeline", async () => {
  const top = Number.MAX_SAFE_INTEGER;
  const source = new Timeline({ originTime: NOW, originBeat: top - 3, tempoBpm: 120, epoch: 5 });
  const tracker = await forged(source, top);
  const real = new Timeline({ originTime: NOW - 10_000, tempoBpm: 120, epoch: 5 });
  const withState = await planTenure(input({ stored: storedAt(real, 18), tracker }));
  assert.equal(withState.next, 19);
  // No stored timeline: even a vouched-for frame that leaves no safe integer to count on is not
  // continued; a new timeline starts at beat 0.
  for (const trackerConfirmed of [false, true]) {
    const fresh = await planTenure(input({ tracker, trackerConfirmed }));
    assert.deepEqual([fresh.last, fresh.next], [-1, 0]);
    assert.equal(fresh.timeline.dueAt(0), NOW + 10);
    assert.ok(Number.isSafeInteger(fresh.timeline.beatAt(NOW + 3_600_000)));
  }
});

Deno.test("planTenure() without a stored timeline continues only frames the tracker vouches for", async () => {
  const far = new Timeline({ originTime: NOW, originBeat: 1e12, tempoBpm: 120 });
  const tracker = await forged(far, 1e12);
  const lone = await planTenure(input({ tracker, trackerConfirmed: false }));
  assert.deepEqual([lone.last, lone.next], [-1, 0]);
  assert.equal(lone.timeline.epoch, NOW);
  // The same frame explained by an earlier one (or verified): the cluster's timeline, continued.
  const vouched = await planTenure(input({ tracker, trackerConfirmed: true }));
  assert.equal(vouched.next, 1e12 + 1);
  // A stored last beat with an unreadable timeline, and nothing usable seen: continue the
  // numbering on the configured bar, as a new timeline.
  const broken = {
    ...storedAt(new Timeline({ originTime: 0 }), 40),
    timeline: { segments: [] } as unknown as StoredState["timeline"],
  };
  const plan = await planTenure(input({ stored: broken, tracker, trackerConfirmed: false }));
  assert.deepEqual([plan.last, plan.next], [40, 41]);
  assert.equal(plan.timeline.epoch, NOW);
});

Deno.test("planTenure() gives a new timeline an epoch above the stored one; a stored one keeps its own", async () => {
  // Fresh: the creation instant, as an integer.
  const clock = new ManualClock(NOW + 0.75);
  const fresh = await planTenure(input({ clock }));
  assert.equal(fresh.timeline.epoch, NOW);
  // A stored epoch ahead of this clock (a clock set back, or another host's): one above it, even
  // when the rest of the stored state is unusable.
  const ahead = {
    ...storedAt(new Timeline({ originTime: NOW - 1000, tempoBpm: 120, epoch: NOW + 5_000 }), 1),
    cluster_id: "other",
  };
  const bumped = await planTenure(input({ stored: ahead }));
  assert.equal(bumped.timeline.epoch, NOW + 5_001);
  // A readable stored timeline keeps its epoch, a pre-epoch one (no field) stays at 0.
  const kept = await planTenure(input({
    stored: storedAt(new Timeline({ originTime: NOW - 1000, tempoBpm: 120, epoch: 77 }), 1),
  }));
  assert.equal(kept.timeline.epoch, 77);
  const legacyJson = new Timeline({ originTime: NOW - 1000, tempoBpm: 120 }).toJSON();
  delete legacyJson.epoch;
  const legacy = await planTenure(input({
    stored: { ...storedAt(new Timeline({ originTime: 0 }), 1), timeline: legacyJson },
  }));
  assert.equal(legacy.timeline.epoch, 0);
  assert.equal(legacy.next, 2);
  assert.equal((await legacy.timeline.frame("c1", 2, HLC)).epoch, undefined);
});

Deno.test("planTenure() bounds what stored state can do: huge last beats, too many segments", async () => {
  const real = new Timeline({ originTime: NOW - 10_000, tempoBpm: 120, epoch: 5 });
  // A stored last beat far past its own timeline is clamped to what the timeline allows.
  const plan = await planTenure(input({ stored: storedAt(real, 1e15) }));
  assert.deepEqual([plan.last, plan.next], [22, 23]);
  // A timeline of a million segments is refused before any of them is looked at.
  const json = real.toJSON();
  const many = Array.from({ length: 1_000_000 }, (_, i) => ({ beat: i * 4, at: i, tempoBpm: 60 }));
  const warned: string[] = [];
  const logger: Logger = { ...silentLogger, warn: (msg) => void warned.push(msg) };
  const t0 = performance.now();
  const refused = await planTenure(input({
    stored: { ...storedAt(real, 3), timeline: { ...json, segments: many } },
    logger,
  }));
  assert.ok(performance.now() - t0 < 1000);
  assert.deepEqual(warned, ["ignoring unreadable stored timeline"]);
  assert.equal(refused.next, 4);
  assert.equal(refused.timeline.epoch, NOW);
  // A stored tempo beyond pulse's range is not continued either.
  const fast = new Timeline({ originTime: NOW - 10_000, tempoBpm: 60_000, epoch: 5 });
  const slowed = await planTenure(input({ stored: storedAt(fast, 3), logger }));
  assert.equal(slowed.timeline.tempoAt(slowed.next), 120);
});

Deno.test("planTenure() counts the beats no pulse published and says when the stored tempo wins", async () => {
  const storedTl = new Timeline({ originTime: NOW - 60_000, tempoBpm: 120, epoch: 7 });
  const stored: StoredState = {
    version: 1,
    cluster_id: "c1",
    timeline: storedTl.toJSON(),
    last_beat: 20,
    holder: "p0",
    // Written at beat 20 (10 s in), then every pulse was gone for 50 s.
    updated_at: new Date(NOW - 50_000).toISOString(),
  };
  // This pulse has listened since now: beats due before were not seen.
  const plan = await planTenure(
    input({ stored, current: new Timeline({ originTime: 0, tempoBpm: 60 }), listeningSince: NOW }),
  );
  assert.equal(plan.timeline.tempoAt(plan.next), 120);
  assert.deepEqual(plan.keptTempo, { stored: 120, configured: 60 });
  // From two beats after the write (one write interval: the stored beat lags) to the one before
  // `next`, no pulse published.
  assert.equal(plan.unpublished, plan.next - 1 - storedTl.beatAt(NOW - 50_000 + 1_000));
  assert.ok(plan.unpublished > 90, `${plan.unpublished}`);
  const fresh = await planTenure(input({}));
  assert.equal(fresh.unpublished, 0);
  assert.equal(fresh.keptTempo, undefined);
});

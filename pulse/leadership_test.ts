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
  const plan = await planTenure(input({ tracker }));
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
  const plan = await planTenure(input({ tracker }));
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
  assert.equal(kept.timeline, current);
  assert.equal(kept.next, 0);
});

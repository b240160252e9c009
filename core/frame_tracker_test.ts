import assert from "node:assert/strict";
import { type BeatFrame, FrameTracker, Timeline } from "./mod.ts";

const HLC = "0000:0000:0001";

async function frames(t: Timeline, from: number, to: number): Promise<BeatFrame[]> {
  const out: BeatFrame[] = [];
  for (let i = from; i <= to; i++) out.push(await t.frame("dev", i, HLC));
  return out;
}

Deno.test("FrameTracker: the deadline timeline is pulse's own schedule, the arrival one is shifted by the delay", async () => {
  const source = new Timeline({ originTime: 1_000, tempoBpm: 120, beatsPerBar: 4 });
  const tracker = new FrameTracker();
  for (const f of await frames(source, 0, 5)) {
    tracker.observe(f, source.dueAt(f.beat_index) + 3);
  }
  const byDeadline = tracker.timeline("deadline")!;
  const byArrival = tracker.timeline("arrival")!;
  for (const beat of [5, 6, 100, 10_000]) {
    assert.ok(Math.abs(byDeadline.dueAt(beat) - source.dueAt(beat)) < 1e-6);
    assert.ok(Math.abs(byArrival.dueAt(beat) - (source.dueAt(beat) + 3)) < 1e-6);
  }
  assert.equal(byDeadline.isDownbeat(8), true);
  assert.equal(byDeadline.phaseOf(7), "review");
  assert.equal(tracker.beatsPerBar, 4);
  assert.equal(tracker.lastDownbeat, 4);
  assert.equal(tracker.last?.frame.beat_index, 5);
});

Deno.test("FrameTracker: the deadline timeline keeps its identity while frames agree, and changes with the tempo", async () => {
  const source = new Timeline({ originTime: 0, tempoBpm: 60 });
  const tracker = new FrameTracker();
  const fs = await frames(source, 0, 3);
  tracker.observe(fs[0], 0);
  const first = tracker.timeline("deadline");
  for (const f of fs.slice(1)) tracker.observe(f, f.beat_index * 1000 + 1);
  assert.equal(tracker.timeline("deadline"), first);
  const faster = source.withTempo(120, 3);
  // Unannounced, so only a verified frame changes it.
  assert.equal(
    tracker.observe(await faster.frame("dev", 4, HLC), faster.dueAt(4)).status,
    "implausible",
  );
  assert.equal(tracker.timeline("deadline"), first);
  tracker.observe(await faster.frame("dev", 4, HLC), faster.dueAt(4), { verified: true });
  assert.notEqual(tracker.timeline("deadline"), first);
  assert.equal(tracker.timeline("deadline")!.tempoAt(5), 120);
});

Deno.test("FrameTracker: an announced tempo change lands on the next downbeat of every anchor", async () => {
  const source = new Timeline({ originTime: 0, tempoBpm: 60 }).withTempo(120, 1);
  const tracker = new FrameTracker();
  const f = await source.frame("dev", 1, HLC);
  assert.equal(f.next_tempo_bpm, 120);
  tracker.observe(await source.frame("dev", 0, HLC), 0);
  tracker.observe(f, 1_000);
  assert.equal(tracker.announcedTempoBpm, 120);
  for (const anchor of ["deadline", "arrival", { beat: 2, at: 2_000 }] as const) {
    const t = tracker.timeline(anchor)!;
    assert.equal(t.tempoAt(3), 60);
    assert.equal(t.tempoAt(4), 120);
    assert.equal(t.dueAt(5), 4_500);
  }
});

Deno.test("FrameTracker: stale frames are refused and counted; a restarted v1.0 timeline is followed after three agreeing beats", async () => {
  const source = new Timeline({ originTime: 0, tempoBpm: 600, beatsPerBar: 4 });
  const tracker = new FrameTracker();
  for (const f of await frames(source, 100, 103)) tracker.observe(f, source.dueAt(f.beat_index));
  assert.equal(tracker.observe(await source.frame("dev", 102, HLC), 1).status, "stale");
  assert.equal(tracker.last?.frame.beat_index, 103);
  const restarted = new Timeline({ originTime: 50_000, tempoBpm: 600, beatsPerBar: 4 });
  const run = await frames(restarted, 0, 3);
  const statuses = run.map((f) => tracker.observe(f, restarted.dueAt(f.beat_index)).status);
  assert.deepEqual(statuses, ["implausible", "implausible", "restart", "new"]);
  assert.equal(tracker.restarts, 1);
  assert.equal(tracker.last?.frame.beat_index, 3);
  assert.equal(tracker.staleFrames, 1);
});

Deno.test("FrameTracker: a v1.0 timeline restarted just below the latest beat is followed after two bars", async () => {
  const source = new Timeline({ originTime: 0, tempoBpm: 600, beatsPerBar: 4 });
  const tracker = new FrameTracker();
  for (const f of await frames(source, 0, 9)) tracker.observe(f, source.dueAt(f.beat_index));
  const restarted = new Timeline({ originTime: 50_000, tempoBpm: 600, beatsPerBar: 4 });
  const run = await frames(restarted, 0, 7);
  const statuses = run.map((f) => tracker.observe(f, restarted.dueAt(f.beat_index)).status);
  assert.deepEqual(statuses, [...Array(7).fill("stale"), "restart"]);
});

Deno.test("FrameTracker: v1.0 frames without beats_per_bar learn the bar from two downbeats", async () => {
  const source = new Timeline({ originTime: 0, tempoBpm: 60, beatsPerBar: 3 });
  const tracker = new FrameTracker({ beatsPerBarHint: 4 });
  for (const f of await frames(source, 0, 3)) {
    const { beats_per_bar: _, ...old } = f;
    tracker.observe(old as BeatFrame, f.beat_index * 1000);
  }
  assert.equal(tracker.beatsPerBar, 3);
  assert.equal(tracker.timeline()!.isDownbeat(6), true);
});

Deno.test("FrameTracker: a tracker that joined mid-bar locates the bar from the window id", async () => {
  const source = new Timeline({ originTime: 0, tempoBpm: 60, beatsPerBar: 4 });
  const tracker = new FrameTracker();
  tracker.observe(await source.frame("dev", 10, HLC), 10_000);
  assert.equal(tracker.barOrigin, undefined);
  assert.equal(await tracker.locateBar(), 8);
  assert.equal(tracker.timeline("arrival")!.isDownbeat(12), true);
  assert.equal(tracker.positionInBar(10), 2);
});

Deno.test("FrameTracker: a new bar shape is reported as a grid change", async () => {
  const four = new Timeline({ originTime: 0, tempoBpm: 60, beatsPerBar: 4 });
  const tracker = new FrameTracker();
  for (const f of await frames(four, 0, 5)) tracker.observe(f, f.beat_index * 1000);
  const three = new Timeline({
    originTime: 6_000,
    originBeat: 6,
    tempoBpm: 60,
    beatsPerBar: 3,
    barOrigin: 6,
  });
  const seen = tracker.observe(await three.frame("dev", 6, HLC), 6_000);
  assert.equal(seen.status, "new");
  assert.equal(seen.barChanged, true);
  assert.equal(tracker.beatsPerBar, 3);
  assert.equal(tracker.positionInBar(6), 0);
  assert.equal(tracker.timeline()!.isDownbeat(9), true);
});

Deno.test("FrameTracker: an unreadable deadline is not tracked", async () => {
  const tracker = new FrameTracker();
  const f = await new Timeline({ originTime: 0 }).frame("dev", 0, HLC);
  assert.equal(
    tracker.observe({ ...f, deadline_at: "2016-12-31T23:59:60Z" }, 0).status,
    "unreadable",
  );
  assert.equal(tracker.last, undefined);
  assert.equal(tracker.timeline(), undefined);
});

Deno.test("FrameTracker: a downbeat off the grid moves the bar origin", async () => {
  const source = new Timeline({ originTime: 0, tempoBpm: 60, beatsPerBar: 4 });
  const tracker = new FrameTracker();
  for (const f of await frames(source, 0, 5)) tracker.observe(f, f.beat_index * 1000);
  const shifted = new Timeline({ originTime: 6_000, originBeat: 6, tempoBpm: 60, barOrigin: 6 });
  const seen = tracker.observe(await shifted.frame("dev", 6, HLC), 6_000);
  assert.equal(seen.barChanged, true);
  assert.equal(tracker.barOrigin, 6);
  assert.equal(tracker.timeline()!.isDownbeat(10), true);
});

Deno.test("FrameTracker: phases seen before the bar is located are learned on the located grid", async () => {
  // A grid starting at beat 2, with a custom phase map, joined mid-bar.
  const phases = ["plan", "plan", "execute", "review"] as const;
  const source = new Timeline({ originTime: 0, tempoBpm: 60, barOrigin: 2, phases: [...phases] });
  const tracker = new FrameTracker();
  tracker.observe(await source.frame("dev", 7, HLC), 7_000);
  tracker.observe(await source.frame("dev", 8, HLC), 8_000);
  assert.equal(await tracker.locateBar(), 6);
  const t = tracker.timeline("arrival")!;
  assert.equal(t.phaseOf(8), "execute");
  assert.equal(t.isDownbeat(10), true);
  assert.equal(t.deadlineAt(8), source.deadlineAt(8));
});

Deno.test("FrameTracker: a continuation anchored on the downbeat of an announced change starts at the new tempo", async () => {
  const source = new Timeline({ originTime: 0, tempoBpm: 60 }).withTempo(120, 3);
  const tracker = new FrameTracker();
  tracker.observe(await source.frame("dev", 0, HLC), 0);
  tracker.observe(await source.frame("dev", 3, HLC), 3_000);
  const t = tracker.timeline({ beat: 4, at: 10_000 })!;
  assert.equal(t.tempoAt(4), 120);
  assert.equal(t.dueAt(5), 10_500);
});

async function track(t: Timeline, from: number, to: number, delay = 2): Promise<FrameTracker> {
  const tracker = new FrameTracker();
  for (const f of await frames(t, from, to)) tracker.observe(f, t.dueAt(f.beat_index) + delay);
  return tracker;
}

Deno.test("FrameTracker: a forged jump far beyond elapsed time is implausible and not followed", async () => {
  const source = new Timeline({ originTime: 0, tempoBpm: 120 });
  const tracker = await track(source, 0, 7);
  const at = source.dueAt(8) + 2;
  for (const beat of [1e12, Number.MAX_SAFE_INTEGER, 8 + 20]) {
    const forged = { ...await source.frame("dev", 8, HLC), beat_index: beat };
    assert.equal(tracker.observe(forged, at).status, "implausible");
  }
  const fast = { ...await source.frame("dev", 8, HLC), tempo_bpm: 6_000 };
  assert.equal(tracker.observe(fast, at).status, "implausible");
  assert.equal(tracker.implausibleFrames, 4);
  assert.equal(tracker.observe(await source.frame("dev", 8, HLC), at).status, "new");
  assert.equal(tracker.last?.frame.beat_index, 8);
});

Deno.test("FrameTracker: beats missed during a takeover are explained by elapsed time", async () => {
  const source = new Timeline({ originTime: 0, tempoBpm: 120 });
  const tracker = await track(source, 0, 7);
  assert.equal(
    tracker.observe(await source.frame("dev", 11, HLC), source.dueAt(11) + 40).status,
    "new",
  );
});

Deno.test("FrameTracker: three agreeing frames move a tracker that locked onto a forged first frame", async () => {
  const source = new Timeline({ originTime: 0, tempoBpm: 120 });
  const tracker = new FrameTracker();
  tracker.observe({ ...await source.frame("dev", 0, HLC), beat_index: 1e15 }, 0);
  const statuses = [];
  for (let i = 1; i <= 3; i++) {
    statuses.push(tracker.observe(await source.frame("dev", i, HLC), source.dueAt(i)).status);
  }
  assert.deepEqual(statuses, ["implausible", "implausible", "restart"]);
  assert.equal(tracker.last?.frame.beat_index, 3);
});

Deno.test("FrameTracker: a newer epoch is followed once two of its frames agree, or at once when verified; older epochs are refused", async () => {
  const old = new Timeline({ originTime: 0, tempoBpm: 120, epoch: 5 });
  const fresh = new Timeline({ originTime: 10_000, tempoBpm: 120, epoch: 9 });
  const tracker = await track(old, 0, 20);
  assert.equal(tracker.epoch, 5);
  assert.equal(tracker.observe(await fresh.frame("dev", 0, HLC), 10_002).status, "pending");
  assert.equal(tracker.epoch, 5);
  assert.equal(tracker.observe(await fresh.frame("dev", 1, HLC), 10_502).status, "restart");
  assert.equal(tracker.epoch, 9);
  assert.equal(tracker.last?.frame.beat_index, 1);
  assert.equal(tracker.observe(await old.frame("dev", 21, HLC), 10_600).status, "old_epoch");
  assert.equal(tracker.oldEpochFrames, 1);
  const newer = new Timeline({ originTime: 20_000, tempoBpm: 120, epoch: 11 });
  assert.equal(
    tracker.observe(await newer.frame("dev", 0, HLC), 20_001, { verified: true }).status,
    "restart",
  );
  // A lone forged frame of a newer epoch restarts nobody.
  const forged = { ...await newer.frame("dev", 5, HLC), epoch: 99 };
  assert.equal(tracker.observe(forged, 22_501).status, "pending");
  assert.equal(tracker.observe(await newer.frame("dev", 5, HLC), 22_501).status, "new");
  assert.equal(tracker.epoch, 11);
});

Deno.test("FrameTracker: junk between a new epoch's frames does not hold its restart off", async () => {
  const old = new Timeline({ originTime: 0, tempoBpm: 120, epoch: 5 });
  const fresh = new Timeline({ originTime: 10_000, tempoBpm: 120, epoch: 9 });
  const tracker = await track(old, 0, 20);
  assert.equal(tracker.observe(await fresh.frame("dev", 0, HLC), 10_002).status, "pending");
  const junk = { ...await fresh.frame("dev", 0, HLC), epoch: 77, beat_index: 500 };
  assert.equal(tracker.observe(junk, 10_300).status, "pending");
  assert.equal(tracker.observe(await fresh.frame("dev", 1, HLC), 10_502).status, "restart");
  assert.equal(tracker.epoch, 9);
});

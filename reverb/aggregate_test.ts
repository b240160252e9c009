import assert from "node:assert/strict";
import {
  type BarReport,
  type BeatFrame,
  generateSigningKeyPair,
  HybridLogicalClock,
  Keyring,
  knownWindowId,
  ManualClock,
  type StatusClaim,
  Timeline,
  windowId,
} from "../core/mod.ts";
import { MessageValidator } from "../schemas/mod.ts";
import { hlcAt, makeClaim } from "../tests/reverb_helpers.ts";
import { BarAggregator, type BarAggregatorOptions, type WindowInfo } from "./_aggregate.ts";

const T0 = Date.parse("2030-01-01T00:00:00Z");
const CLUSTER = "agg-test";
const validator = new MessageValidator();

interface Harness {
  agg: BarAggregator;
  clock: ManualClock;
  timeline: Timeline;
  reports: BarReport[];
  infos: WindowInfo[];
  /** Publishes beat `n`'s frame `late` ms after its due time. */
  beat(n: number, late?: number): Promise<void>;
  /** Moves the clock to an absolute instant. */
  to(t: number): Promise<void>;
  claim(fields: Partial<StatusClaim>): void;
}

function harness(
  options: Partial<BarAggregatorOptions> = {},
  timeline = new Timeline({ originTime: T0, tempoBpm: 60 }),
): Harness {
  const clock = new ManualClock(T0 - 500);
  const hlc = new HybridLogicalClock({ clock: () => clock.now() });
  const reports: BarReport[] = [];
  const infos: WindowInfo[] = [];
  const agg = new BarAggregator({
    clusterId: CLUSTER,
    clock,
    graceMs: 200,
    onReport: (r, i) => {
      reports.push(r);
      infos.push(i);
    },
    ...options,
  });
  let logical = 0;
  const h: Harness = {
    agg,
    clock,
    timeline,
    reports,
    infos,
    async to(t: number) {
      if (t > clock.now()) await clock.advance(t - clock.now());
      await agg.settled();
    },
    async beat(n: number, late = 0.4) {
      const frame = await h.timeline.frame(CLUSTER, n, hlc.now());
      await h.to(h.timeline.dueAt(n) + late);
      agg.observeBeat(frame, clock.now());
    },
    claim(fields: Partial<StatusClaim>) {
      agg.acceptClaim(
        makeClaim({ hlc: hlcAt(clock.now(), logical++), ...fields }),
        clock.now(),
        undefined,
      );
    },
  };
  return h;
}

function kinds(r: BarReport): string[] {
  return r.issues.map((i) => `${i.kind}:${i.agent_id ?? "-"}`).sort();
}

Deno.test("BarAggregator reports a scripted bar: on time, late, helping then completed, failed, blocked, silent", async () => {
  const h = harness();
  // Bar 0 (beats 0-3): everyone reports, so everyone is known.
  await h.beat(0);
  for (const id of ["on-time", "late", "helper", "failer", "blocker", "quiet"]) {
    h.claim({ agent_id: id, beat_index: 0, state: "planning" });
  }
  for (let n = 1; n < 4; n++) await h.beat(n);
  // Bar 1 (beats 4-7), review deadline = due(8) = T0 + 8000.
  await h.beat(4);
  h.claim({ agent_id: "on-time", beat_index: 4, state: "executing" });
  h.claim({ agent_id: "late", beat_index: 4, state: "executing" });
  await h.beat(5);
  h.claim({ agent_id: "helper", beat_index: 5, state: "helping" });
  await h.beat(6);
  h.claim({ agent_id: "failer", beat_index: 6, state: "failed", notes: "disk full" });
  h.claim({ agent_id: "blocker", beat_index: 6, state: "blocked" });
  await h.beat(7);
  await h.to(T0 + 7_500);
  h.claim({ agent_id: "on-time", beat_index: 7, state: "reviewing", progress: 1 });
  h.claim({ agent_id: "helper", beat_index: 7, state: "completed", progress: 1 });
  await h.beat(8); // the next bar's downbeat; bar 1 is still in grace until T0 + 8200
  await h.to(T0 + 8_100);
  h.claim({ agent_id: "late", beat_index: 7, state: "reviewing" });
  await h.to(T0 + 8_199);
  assert.equal(h.reports.length, 1, "bar 1 waits for its grace");
  await h.to(T0 + 8_200);
  assert.equal(h.reports.length, 2);

  const [bar0, bar1] = h.reports;
  assert.equal(bar0.from_beat, 0);
  assert.equal(bar0.agents_reporting, 6);
  assert.equal(bar1.window_id, await windowId(CLUSTER, 4));
  assert.equal(bar1.from_beat, 4);
  assert.equal(bar1.to_beat, 7);
  assert.equal(bar1.agents_reporting, 5);
  assert.equal(bar1.on_time_reviews, 2);
  assert.equal(bar1.help_promises_fulfilled, 1);
  assert.equal(bar1.secret_rotations_ok, true);
  assert.equal(bar1.tempo_drift_ms, 0.4);
  assert.deepEqual(kinds(bar1), [
    "agent_blocked:blocker",
    "agent_failed:failer",
    "agent_silent:quiet",
    "late_review:late",
  ]);
  assert.match(bar1.issues.find((i) => i.kind === "late_review")!.detail, /100 ms after/);
  assert.match(bar1.issues.find((i) => i.kind === "agent_failed")!.detail, /disk full/);
  assert.equal(h.infos[1].windowEnd, T0 + 8_000);
  assert.equal(h.infos[1].closeAt, T0 + 8_200);
  for (const r of h.reports) assert.equal(validator.validateMessage(r).valid, true);
  h.agg.stop();
});

Deno.test("BarAggregator counts a claim for an already reported window as late: the agent's state moves, no window's tallies do", async () => {
  const h = harness();
  for (let n = 0; n <= 4; n++) await h.beat(n);
  await h.to(T0 + 4_300); // bar 0 reported at 4200
  h.claim({ agent_id: "slow", beat_index: 3, state: "reviewing" });
  assert.equal(h.agg.lateClaims, 1);
  const view = h.agg.agents()[0];
  assert.deepEqual([view.state, view.claims_accepted, view.claims_late], ["reviewing", 1, 1]);
  for (let n = 5; n <= 8; n++) await h.beat(n);
  await h.to(T0 + 8_200);
  const bar1 = h.reports[1];
  assert.equal(bar1.from_beat, 4);
  assert.equal(bar1.agents_reporting, 0, "not counted in the window open at its arrival");
  assert.equal(bar1.on_time_reviews, 0);
  assert.deepEqual(bar1.issues, [{
    kind: "claims_rejected",
    detail: "1 claims rejected: late (agents: slow)",
    count: 1,
  }]);
  h.agg.stop();
});

Deno.test("BarAggregator keeps closing windows on the extrapolated schedule when beats stop", async () => {
  const h = harness();
  for (let n = 0; n <= 4; n++) await h.beat(n);
  assert.equal(h.agg.isLeaderless(h.clock.now()), false);
  await h.to(T0 + 16_200); // no frames after beat 4
  assert.equal(h.agg.isLeaderless(h.clock.now()), true);
  assert.deepEqual(h.reports.map((r) => r.from_beat), [0, 4, 8, 12]);
  const last = h.reports[3];
  assert.equal(last.tempo_drift_ms, 0);
  assert.equal(last.window_id, await windowId(CLUSTER, 12));
  assert.match(last.issues[0].detail, /no beat frames observed/);
  h.agg.stop();
});

Deno.test("BarAggregator reports silence once and evicts agents silent for evictAfterBars bars", async () => {
  const evicted: string[] = [];
  const h = harness({ evictAfterBars: 2, onEvict: (id) => evicted.push(id) });
  await h.beat(0);
  h.claim({ agent_id: "gone", state: "executing" });
  h.claim({ agent_id: "done", state: "completed" });
  for (let n = 1; n <= 16; n++) await h.beat(n);
  await h.to(T0 + 16_200);
  const silent = h.reports.map((r) => r.issues.filter((i) => i.kind === "agent_silent").length);
  assert.deepEqual(
    silent,
    [0, 1, 0, 0],
    "only the first silent bar, and not for a completed agent",
  );
  assert.deepEqual(evicted.sort(), ["done", "gone"]);
  assert.equal(h.agg.agentCount, 0);
  h.agg.stop();
});

Deno.test("BarAggregator caps issues and summarises what does not fit", async () => {
  const h = harness({ maxIssues: 5 });
  await h.beat(0);
  for (let i = 0; i < 10; i++) h.claim({ agent_id: `f${i}`, state: "failed" });
  h.claim({ agent_id: "b", state: "blocked" });
  h.agg.rejectClaim("stale", "x", h.clock.now(), undefined);
  h.agg.rejectClaim("stale", "y", h.clock.now(), undefined);
  for (let n = 1; n <= 4; n++) await h.beat(n);
  await h.to(T0 + 4_200);
  const issues = h.reports[0].issues;
  assert.equal(issues.length, 5);
  assert.deepEqual(issues[0], {
    kind: "claims_rejected",
    detail: "2 claims rejected: stale (agents: x, y)",
    count: 2,
  });
  assert.deepEqual(issues.map((i) => i.kind), [
    "claims_rejected",
    "agent_failed",
    "agent_failed",
    "agent_failed",
    "agent_blocked",
  ]);
  assert.equal(issues[3].count, 8, "the summary entry counts the failed agents not listed");
  assert.equal(validator.validateMessage(h.reports[0]).valid, true);
  h.agg.stop();
});

Deno.test("BarAggregator flags a key that expires within the next window", async () => {
  const { publicKey } = await generateSigningKeyPair();
  const ring = await Keyring.fromJson({
    a: [{ key_id: "soon", public_key: publicKey, not_after: new Date(T0 + 11_000).toISOString() }],
    b: [{ key_id: "later", public_key: publicKey, not_after: new Date(T0 + 60_000).toISOString() }],
  });
  const h = harness();
  await h.beat(0);
  h.agg.acceptClaim(
    makeClaim({ agent_id: "b", hlc: hlcAt(h.clock.now()) }),
    h.clock.now(),
    ring.get("b", "later"),
  );
  for (let n = 1; n <= 4; n++) await h.beat(n);
  // Bar 1 ends at 8000; the next window ends at 12000, after "soon" expires at 11000.
  h.agg.acceptClaim(
    makeClaim({ agent_id: "a", beat_index: 4, hlc: hlcAt(h.clock.now()) }),
    h.clock.now(),
    ring.get("a", "soon"),
  );
  for (let n = 5; n <= 8; n++) await h.beat(n);
  await h.to(T0 + 8_200);
  assert.equal(h.reports[0].secret_rotations_ok, true);
  assert.equal(h.reports[1].secret_rotations_ok, false);
  assert.deepEqual(kinds(h.reports[1]), ["agent_silent:b", "key_rotation:a"]);
  assert.match(
    h.reports[1].issues.find((i) => i.kind === "key_rotation")!.detail,
    /key soon expires at .* within the next window/,
  );
  h.agg.stop();
});

Deno.test("BarAggregator marks rotations not ok when an expired key was presented", async () => {
  const { publicKey } = await generateSigningKeyPair();
  const ring = await Keyring.fromJson({
    a: [{ key_id: "old", public_key: publicKey, not_after: new Date(T0 - 1).toISOString() }],
  });
  const h = harness();
  await h.beat(0);
  h.agg.rejectClaim("key_not_valid", "a", h.clock.now(), ring.get("a", "old"));
  for (let n = 1; n <= 4; n++) await h.beat(n);
  await h.to(T0 + 4_200);
  assert.equal(h.reports[0].secret_rotations_ok, false);
  assert.deepEqual(kinds(h.reports[0]), ["claims_rejected:-", "key_rotation:a"]);
  h.agg.stop();
});

Deno.test("BarAggregator measures drift against the announced schedule, signed", async () => {
  const h = harness();
  for (let n = 0; n < 4; n++) await h.beat(n, 150); // 150 ms behind: more than 10% of a beat
  await h.beat(4, -20); // 20 ms early (clock skew)
  for (let n = 5; n < 8; n++) await h.beat(n, -20);
  await h.beat(8);
  await h.to(T0 + 8_200);
  assert.equal(h.reports[0].tempo_drift_ms, 150);
  assert.deepEqual(kinds(h.reports[0]), ["tempo_drift:-"]);
  assert.match(h.reports[0].issues[0].detail, /150 ms behind/);
  assert.equal(h.reports[1].tempo_drift_ms, -20);
  assert.deepEqual(h.reports[1].issues, []);
  h.agg.stop();
});

Deno.test("BarAggregator follows a tempo change announced for the next downbeat", async () => {
  const h = harness();
  for (let n = 0; n <= 2; n++) await h.beat(n);
  h.timeline = h.timeline.withTempo(120, 2); // lands on beat 4 at T0 + 4000
  for (let n = 3; n <= 8; n++) await h.beat(n);
  await h.to(T0 + 6_200);
  // Bar 1 (beats 4-7) at 500 ms beats ends at 6000.
  assert.deepEqual(h.reports.map((r) => r.from_beat), [0, 4]);
  assert.equal(h.infos[1].windowEnd, T0 + 6_000);
  assert.equal(h.reports[1].tempo_drift_ms, 0.4);
  h.agg.stop();
});

Deno.test("BarAggregator ignores frames at or below the highest beat seen (a deposed pulse)", async () => {
  const h = harness();
  await h.beat(0);
  await h.beat(1);
  const stale = await h.timeline.frame(CLUSTER, 1, "0000:0000:0000");
  assert.deepEqual(h.agg.observeBeat(stale, h.clock.now()), { status: "stale", beat: undefined });
  const other: BeatFrame = { ...stale, cluster_id: "other", beat_index: 2 };
  assert.deepEqual(h.agg.observeBeat(other, h.clock.now()), { status: "ignored", beat: undefined });
  assert.equal(h.agg.staleFrames, 1);
  assert.equal(h.agg.lastBeat?.beat_index, 1);
  h.agg.stop();
});

Deno.test("BarAggregator reports nothing before the first downbeat it sees", async () => {
  const h = harness();
  await h.beat(2); // joined mid-bar
  h.claim({ agent_id: "a", beat_index: 2 });
  await h.beat(3);
  await h.beat(4);
  h.claim({ agent_id: "a", beat_index: 4 });
  for (let n = 5; n <= 8; n++) await h.beat(n);
  await h.to(T0 + 8_200);
  assert.deepEqual(h.reports.map((r) => r.from_beat), [4]);
  assert.equal(h.reports[0].agents_reporting, 1);
  h.agg.stop();
});

Deno.test("BarAggregator bounds agents: the oldest record is dropped beyond maxAgents", async () => {
  const evicted: string[] = [];
  const h = harness({ maxAgents: 3, onEvict: (id) => evicted.push(id) });
  await h.beat(0);
  for (const id of ["a", "b", "c", "d"]) h.claim({ agent_id: id });
  assert.equal(h.agg.agentCount, 3);
  assert.deepEqual(evicted, ["a"]);
  assert.deepEqual(h.agg.agents().map((a) => a.agent_id), ["b", "c", "d"]);
  h.agg.stop();
});

Deno.test("BarAggregator follows a restarted timeline after three agreeing beats far below, ignoring a lone one", async () => {
  const h = harness();
  for (let n = 100; n <= 104; n++) await h.beat(n);
  // The cluster starts over at beat 0, 200 ms later than the old schedule would put it.
  h.timeline = new Timeline({ originTime: h.timeline.dueAt(105) + 200, tempoBpm: 60 });
  for (let n = 0; n < 2; n++) await h.beat(n);
  assert.equal(
    h.agg.lastBeat?.beat_index,
    104,
    "one or two low frames (forged or deposed): ignored",
  );
  await h.beat(2);
  assert.equal(h.agg.timelineRestarts, 1);
  assert.equal(h.agg.lastBeat?.beat_index, 2);
  for (let n = 3; n <= 12; n++) await h.beat(n);
  await h.to(h.timeline.dueAt(12) + 200);
  // The old timeline's open bar (104) saw a beat: it is reported at the restart, not dropped.
  // The new timeline is reported from its first bar (0), located from the restart frame's
  // window id although the frames that vouched for it (0, 1, 2) began with one not followed.
  assert.deepEqual(h.reports.map((r) => r.from_beat), [100, 104, 0, 4, 8]);
  assert.equal(h.reports[1].window_id, await windowId(CLUSTER, 104));
  assert.equal(h.agg.droppedWindows, 0);
  assert.equal(h.agg.skippedBars, 0);
  h.agg.stop();
});

Deno.test("BarAggregator ignores a frame whose deadline_at cannot be read, so the report stays valid", async () => {
  const h = harness();
  for (let n = 0; n < 3; n++) await h.beat(n);
  // A leap second passes the schema's date-time but not Date.parse.
  const leap = { ...(await h.timeline.frame(CLUSTER, 3, "0000:0000:0000")) };
  leap.deadline_at = "2030-06-30T23:59:60Z";
  assert.equal(validator.validateMessage(leap).valid, true, "the schema admits it");
  await h.to(h.timeline.dueAt(3));
  assert.deepEqual(h.agg.observeBeat(leap, h.clock.now()), {
    status: "unreadable",
    beat: undefined,
  });
  for (let n = 4; n <= 8; n++) await h.beat(n);
  await h.to(T0 + 8_200);
  assert.equal(h.reports[0].tempo_drift_ms, 0.4);
  assert.equal(validator.validateMessage(h.reports[0]).valid, true);
  h.agg.stop();
});

Deno.test("BarAggregator bounds the agents tallied in one window by maxAgents", async () => {
  const h = harness({ maxAgents: 2 });
  await h.beat(0);
  for (const id of ["a", "b", "c", "d"]) h.claim({ agent_id: id });
  for (let n = 1; n <= 4; n++) await h.beat(n);
  await h.to(T0 + 4_200);
  assert.equal(h.reports[0].agents_reporting, 2);
  h.agg.stop();
});

Deno.test("BarAggregator keeps reporting after onReport throws", async () => {
  let calls = 0;
  const h = harness({
    onReport: () => {
      calls++;
      throw new Error("reporter bug");
    },
  });
  for (let n = 0; n <= 8; n++) await h.beat(n);
  await h.to(T0 + 8_200);
  assert.equal(calls, 2, "the second window is reported although the first onReport threw");
  h.agg.stop();
});

Deno.test("BarAggregator derives each report's window_id; a frame cannot choose it", async () => {
  const h = harness();
  const forged = "f".repeat(32);
  for (let n = 0; n < 5; n++) {
    const frame = { ...await h.timeline.frame(CLUSTER, n, "0000:0000:0000"), window_id: forged };
    await h.to(h.timeline.dueAt(n) + 0.4);
    h.agg.observeBeat(frame, h.clock.now());
  }
  await h.to(T0 + 4_200);
  assert.equal(h.reports.length, 1);
  assert.equal(h.reports[0].window_id, await windowId(CLUSTER, 0));
  h.agg.stop();
});

Deno.test("BarAggregator starts over at the next downbeat when the bar grid changes", async () => {
  const h = harness();
  for (let n = 0; n <= 5; n++) await h.beat(n);
  // Pulse reconfigured to 3 beats a bar from beat 6 on (due at T0 + 6000).
  h.timeline = new Timeline({
    originTime: T0 + 6_000,
    originBeat: 6,
    tempoBpm: 60,
    beatsPerBar: 3,
  });
  h.claim({ agent_id: "a", beat_index: 5 });
  for (let n = 6; n <= 12; n++) await h.beat(n);
  await h.to(h.timeline.dueAt(12) + 200);
  // Bar 0 closed on the old grid; bar 4 was open when the grid moved and is dropped; windows
  // follow the new grid from its first downbeat.
  assert.deepEqual(h.reports.map((r) => [r.from_beat, r.to_beat]), [[0, 3], [6, 8], [9, 11]]);
  assert.equal(h.agg.lastBeat?.beats_per_bar, 3);
  assert.equal(h.agg.lastBeat?.position, 0);
  for (const r of h.reports) assert.equal(validator.validateMessage(r).valid, true);
  h.agg.stop();
});

Deno.test("BarAggregator derives window ids on the frames' timeline epoch, through the core cache", async () => {
  const h = harness({}, new Timeline({ originTime: T0, tempoBpm: 60, epoch: 7 }));
  for (let n = 0; n < 5; n++) await h.beat(n);
  // The window opened with its first beat: its id was derived then, ready when it closes.
  assert.equal(knownWindowId(CLUSTER, 4, 7), await windowId(CLUSTER, 4, 7));
  await h.to(T0 + 4_200);
  assert.equal(h.reports[0].window_id, await windowId(CLUSTER, 0, 7));
  assert.notEqual(h.reports[0].window_id, await windowId(CLUSTER, 0), "epoch 0 would differ");
  h.agg.stop();
});

// A frame nobody's timeline explains: 1 ms beats, index 10^12, a deadline a year in the past.
function forged(from: BeatFrame, fields: Partial<BeatFrame> = {}): BeatFrame {
  return {
    ...from,
    beat_index: 1e12,
    tempo_bpm: 60_000,
    downbeat: true,
    phase: "plan",
    deadline_at: "2029-01-01T00:00:00Z",
    ...fields,
  };
}

Deno.test("BarAggregator: one forged first frame (tempo 60,000, index 10^12) publishes nothing and skips nothing; the real windows are reported", async () => {
  const h = harness();
  const real0 = await h.timeline.frame(CLUSTER, 0, "0000:0000:0000");
  await h.to(T0 - 100);
  // The first frame reverb ever sees is the forgery: followed, but vouched for by nobody.
  assert.equal(h.agg.observeBeat(forged(real0), h.clock.now()).status, "new");
  await h.to(T0 - 50);
  assert.equal(h.agg.confirmed, false);
  for (let n = 0; n <= 12; n++) await h.beat(n);
  await h.to(T0 + 12_200);
  // The forgery was never vouched for: the first real frame replaced it (it may not refuse what
  // follows), the second confirmed the real timeline.
  assert.deepEqual(h.reports.map((r) => r.from_beat), [0, 4, 8]);
  for (const r of h.reports) {
    assert.equal(r.window_id, await windowId(CLUSTER, r.from_beat));
    assert.equal(validator.validateMessage(r).valid, true);
  }
  assert.equal(h.agg.skippedBars, 0);
  assert.equal(h.agg.timelineRestarts, 0);
  assert.equal(h.agg.droppedWindows, 1, "the forgery's window, never reported");
  h.agg.stop();
});

Deno.test("BarAggregator: a forged first frame of a huge epoch cannot pin reverb to it", async () => {
  const h = harness({}, new Timeline({ originTime: T0, tempoBpm: 60, epoch: 5 }));
  const real0 = await h.timeline.frame(CLUSTER, 0, "0000:0000:0000");
  await h.to(T0 - 100);
  h.agg.observeBeat(forged(real0, { epoch: Number.MAX_SAFE_INTEGER }), h.clock.now());
  for (let n = 0; n <= 8; n++) await h.beat(n);
  await h.to(T0 + 8_200);
  assert.equal(h.agg.epoch, 5);
  assert.deepEqual(h.reports.map((r) => r.from_beat), [0, 4]);
  assert.equal(h.reports[0].window_id, await windowId(CLUSTER, 0, 5));
  h.agg.stop();
});

Deno.test("BarAggregator: a forged frame mid-stream is implausible and changes nothing", async () => {
  const h = harness();
  for (let n = 0; n <= 5; n++) await h.beat(n);
  const f = forged(await h.timeline.frame(CLUSTER, 5, "0000:0000:0000"));
  assert.equal(h.agg.observeBeat(f, h.clock.now()).status, "implausible");
  // Another cluster's epoch trick: a lone frame of a newer epoch waits for a second one.
  const e = { ...await h.timeline.frame(CLUSTER, 6, "0000:0000:0000"), epoch: 2 ** 52 };
  assert.equal(h.agg.observeBeat(e, h.clock.now()).status, "pending");
  for (let n = 6; n <= 8; n++) await h.beat(n);
  await h.to(T0 + 8_200);
  assert.deepEqual(h.reports.map((r) => r.from_beat), [0, 4]);
  assert.equal(h.agg.skippedBars, 0);
  assert.equal(h.agg.epoch, 0);
  h.agg.stop();
});

Deno.test("BarAggregator at the end of the index space: a 2^53 − 1 frame reports nothing unverified, arms no timer that fires at once verified", async () => {
  const h = harness();
  const base = await h.timeline.frame(CLUSTER, 0, "0000:0000:0000");
  const max = (bpb: number, epoch: number) =>
    forged(base, { beat_index: Number.MAX_SAFE_INTEGER, beats_per_bar: bpb, epoch });
  // Unverified, as an attacker sends it: followed, never vouched for.
  h.agg.observeBeat(max(4, 0), h.clock.now());
  h.claim({ agent_id: "x", beat_index: Number.MAX_SAFE_INTEGER });
  await h.to(h.clock.now() + 60_000);
  assert.equal(h.reports.length, 0);
  // Verified (a pulse key signed it): still no timer that fires again at once. A hot timer
  // would make advance() run forever; a minute passes in bounded steps instead.
  for (const [bpb, epoch] of [[1, 1], [4, 2], [64, 3]]) {
    const r = h.agg.observeBeat(max(bpb, epoch), h.clock.now(), { verified: true });
    assert.equal(r.status, "restart");
    await h.to(h.clock.now() + 60_000);
    assert.ok(h.clock.pending <= 1, `timers pending: ${h.clock.pending}`);
  }
  // The one window that fits below 2^53 (one beat a bar, at 2^53 − 1) is reported at the next
  // restart; the others cannot end inside the index space and are dropped, counted.
  assert.deepEqual(h.reports.map((r) => [r.from_beat, r.to_beat]), [[
    Number.MAX_SAFE_INTEGER,
    Number.MAX_SAFE_INTEGER,
  ]]);
  for (const r of h.reports) assert.equal(validator.validateMessage(r).valid, true);
  assert.equal(h.agg.skippedBars, 0);
  assert.ok(Number.isSafeInteger(h.agg.droppedWindows));
  h.agg.stop();
});

// A clock whose timers run only when told (a process that was suspended): `run()` fires what
// is due at the current time, bounded.
class StallingClock {
  #now: number;
  #timers: Array<{ at: number; fn: () => void; live: boolean }> = [];
  constructor(now: number) {
    this.#now = now;
  }
  now(): number {
    return this.#now;
  }
  set(now: number): void {
    this.#now = now;
  }
  schedule(at: number, fn: () => void): () => void {
    const t = { at, fn, live: true };
    this.#timers.push(t);
    return () => t.live = false;
  }
  run(): number {
    let fired = 0;
    for (let i = 0; i < 100; i++) {
      const due = this.#timers.filter((t) => t.live && t.at <= this.#now);
      if (due.length === 0) break;
      for (const t of due) {
        t.live = false;
        fired++;
        t.fn();
      }
    }
    this.#timers = this.#timers.filter((t) => t.live);
    return fired;
  }
}

Deno.test("BarAggregator bounds skipped windows by the time that passed, in whole bars", async () => {
  const clock = new StallingClock(T0);
  const reports: BarReport[] = [];
  const skips: Array<[string, number, number]> = [];
  const agg = new BarAggregator({
    clusterId: CLUSTER,
    clock,
    graceMs: 200,
    onReport: (r) => reports.push(r),
    onSkip: (kind, n, from) => skips.push([kind, n, from]),
  });
  const t = new Timeline({ originTime: T0, tempoBpm: 60 });
  for (let n = 0; n <= 1; n++) {
    clock.set(t.dueAt(n));
    agg.observeBeat(await t.frame(CLUSTER, n, "0000:0000:0000"), clock.now());
  }
  // The process stalls for 100 s (25 bars of 4 s); its timers run only then.
  clock.set(T0 + 104_000);
  assert.ok(clock.run() <= 2, "one catch-up, then the timer for the bar in progress");
  await agg.settled();
  assert.equal(reports.length, 8, "eight overdue windows are caught up");
  assert.deepEqual(skips, [["skipped", 18, 32]], "bars 32 to 100 are counted, once");
  assert.equal(agg.skippedBars, 18);
  assert.equal(agg.nextBar, 104);
  agg.stop();
});

Deno.test("BarAggregator counts a verified jump far ahead by the time that passed, not by the index", async () => {
  const h = harness();
  for (let n = 0; n <= 5; n++) await h.beat(n);
  // A verified frame 10^12 beats ahead, one beat later than beat 5.
  const jump = { ...await h.timeline.frame(CLUSTER, 6, "0000:0000:0000"), beat_index: 1e12 };
  await h.to(h.timeline.dueAt(6));
  assert.equal(h.agg.observeBeat(jump, h.clock.now(), { verified: true }).status, "new");
  await h.to(h.clock.now() + 5_000);
  assert.ok(h.agg.skippedBars <= 2, `skipped ${h.agg.skippedBars}`);
  // Bar 0 closed in time; bar 4 (beats 4, 5) is reported at the jump; then the new bars.
  assert.deepEqual(h.reports.slice(0, 3).map((r) => r.from_beat), [0, 4, 1e12]);
  h.agg.stop();
});

Deno.test("BarAggregator follows a verified newer epoch at its first frame: the old open bar is reported, the new windows from the first, ids never reused", async () => {
  const e1 = new Timeline({ originTime: T0, tempoBpm: 60, epoch: 1_000 });
  const h = harness({}, e1);
  for (let n = 0; n <= 5; n++) {
    const frame = await e1.frame(CLUSTER, n, "0000:0000:0000");
    await h.to(e1.dueAt(n) + 0.4);
    h.agg.observeBeat(frame, h.clock.now(), { verified: true });
  }
  // The cluster's timeline is recreated (its state lost): epoch 2000, beat 0 at T0 + 5500.
  const e2 = new Timeline({ originTime: T0 + 5_500, tempoBpm: 60, epoch: 2_000 });
  for (let n = 0; n <= 8; n++) {
    const frame = await e2.frame(CLUSTER, n, "0000:0000:0000");
    await h.to(e2.dueAt(n) + 0.4);
    const r = h.agg.observeBeat(frame, h.clock.now(), { verified: true });
    assert.equal(r.status, n === 0 ? "restart" : "new", `beat ${n}`);
    if (n === 2) {
      // A deposed pulse of the old timeline: refused.
      const old = await e1.frame(CLUSTER, 8, "0000:0000:0000");
      assert.equal(h.agg.observeBeat(old, h.clock.now(), { verified: true }).status, "old_epoch");
    }
  }
  await h.to(e2.dueAt(8) + 200);
  assert.deepEqual(h.reports.map((r) => r.from_beat), [0, 4, 0, 4]);
  assert.deepEqual(h.reports.map((r) => r.window_id), [
    await windowId(CLUSTER, 0, 1_000),
    await windowId(CLUSTER, 4, 1_000),
    await windowId(CLUSTER, 0, 2_000),
    await windowId(CLUSTER, 4, 2_000),
  ]);
  assert.equal(h.agg.epoch, 2_000);
  assert.equal(h.agg.skippedBars + h.agg.droppedWindows, 0);
  h.agg.stop();
});

Deno.test("BarAggregator follows an unverified newer epoch at its second agreeing frame and still reports its first window", async () => {
  const e1 = new Timeline({ originTime: T0, tempoBpm: 60, epoch: 1_000 });
  const h = harness({}, e1);
  for (let n = 0; n <= 5; n++) await h.beat(n);
  h.timeline = new Timeline({ originTime: T0 + 5_500, tempoBpm: 60, epoch: 2_000 });
  await h.beat(0);
  assert.equal(h.agg.epoch, 1_000, "one frame of a new epoch is not enough");
  h.claim({ agent_id: "a", beat_index: 0 });
  await h.beat(1);
  assert.equal(h.agg.epoch, 2_000, "the second agreeing frame moves reverb, within one beat");
  h.claim({ agent_id: "a", beat_index: 1 });
  for (let n = 2; n <= 8; n++) await h.beat(n);
  await h.to(h.timeline.dueAt(8) + 200);
  assert.deepEqual(h.reports.map((r) => r.from_beat), [0, 4, 0, 4]);
  assert.equal(h.reports[2].window_id, await windowId(CLUSTER, 0, 2_000));
  assert.equal(h.reports[2].agents_reporting, 1, "a claim of the new window's beat counts in it");
  h.agg.stop();
});

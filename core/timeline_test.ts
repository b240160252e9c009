import assert from "node:assert/strict";
import {
  assertClusterId,
  defaultPhases,
  formatInstant,
  parseInstant,
  parsePhases,
  subjects,
  Timeline,
  windowId,
} from "./mod.ts";

Deno.test("Timeline answers due time, downbeat, phase and deadline for any beat", () => {
  const t = new Timeline({ originTime: 1_000, tempoBpm: 120 }); // 500 ms beats
  assert.equal(t.dueAt(0), 1_000);
  assert.equal(t.dueAt(9), 5_500);
  assert.deepEqual([8, 9, 10, 11, 12].map((b) => t.isDownbeat(b)), [
    true,
    false,
    false,
    false,
    true,
  ]);
  assert.deepEqual([8, 9, 10, 11].map((b) => t.phaseOf(b)), [
    "plan",
    "execute",
    "execute",
    "review",
  ]);
  // deadline_at is the end of the current phase.
  assert.equal(t.deadlineAt(8), t.dueAt(9)); // plan ends when execute starts
  assert.equal(t.deadlineAt(9), t.dueAt(11)); // execute spans beats 2-3
  assert.equal(t.deadlineAt(10), t.dueAt(11));
  assert.equal(t.deadlineAt(11), t.dueAt(12)); // review ends at the next downbeat
  assert.equal(t.reviewDeadlineAt(9), t.dueAt(12));
  assert.equal(t.barStart(11), 8);
  assert.equal(t.beatAt(5_499.999), 8);
  assert.equal(t.beatAt(5_500), 9);
  assert.equal(t.beatAt(999), -1);
});

Deno.test("Timeline.withTempo() lands on the next downbeat and moves no past beat", () => {
  const t = new Timeline({ originTime: 0, tempoBpm: 60 }); // 1 s beats
  const u = t.withTempo(120, 9); // beat 9 is mid-bar: change lands on beat 12
  for (let b = 0; b <= 12; b++) assert.equal(u.dueAt(b), t.dueAt(b));
  assert.equal(u.tempoAt(11), 60);
  assert.equal(u.tempoAt(12), 120);
  assert.equal(u.dueAt(13), 12_500);
  assert.equal(u.beatAt(12_600), 13);
  assert.equal(u.pendingChange(10)?.beat, 12);
  // A change requested on a downbeat waits for the following bar.
  const v = t.withTempo(30, 8);
  assert.equal(v.tempoAt(11), 60);
  assert.equal(v.tempoAt(12), 30);
  // A second request in the same bar replaces the pending one.
  const w = u.withTempo(240, 10);
  assert.equal(w.segments.length, 2);
  assert.equal(w.tempoAt(12), 240);
  assert.throws(() => t.withTempo(0.05, 1), /Invalid tempo 0.05/);
});

Deno.test("Timeline.frame() carries the announced tempo change during the bar before it", async () => {
  const t = new Timeline({ originTime: 0, tempoBpm: 60 }).withTempo(120, 5);
  const f6 = await t.frame("dev", 6, "0000:0000:0000");
  assert.equal(f6.tempo_bpm, 60);
  assert.equal(f6.next_tempo_bpm, 120);
  const f8 = await t.frame("dev", 8, "0000:0000:0000");
  assert.equal(f8.tempo_bpm, 120);
  assert.equal(f8.next_tempo_bpm, undefined);
  assert.equal(f8.downbeat, true);
  assert.equal(f8.window_id, await windowId("dev", 8));
  assert.equal(f6.window_id, await windowId("dev", 4));
  assert.equal(f8.deadline_at, "1970-01-01T00:00:08.500000Z");
});

Deno.test("Timeline survives a JSON round trip and keeps its segments bounded", () => {
  let t = new Timeline({
    originTime: 10,
    tempoBpm: 2,
    beatsPerBar: 3,
    phases: parsePhases("plan,execute,review"),
  });
  for (let i = 0; i < 40; i++) t = t.withTempo(2 + i, i * 3);
  assert.equal(t.segments.length, 16);
  const back = Timeline.fromJSON(JSON.parse(JSON.stringify(t)));
  for (const b of [100, 110, 117, 118, 200]) {
    assert.equal(back.dueAt(b), t.dueAt(b));
    assert.equal(back.phaseOf(b), t.phaseOf(b));
  }
  assert.equal(t.trimBefore(117).segments[0].beat, 117);
});

Deno.test("Timeline computes 24 hours at 1,000 BPM with zero accumulated error", () => {
  const origin = 1_700_000_000_000;
  const t = new Timeline({ originTime: origin, tempoBpm: 1_000 });
  const beats = 24 * 60 * 1_000;
  // Absolute scheduling: beat n is exactly origin + n * 60 ms, no running sum.
  assert.equal(t.dueAt(beats), origin + 86_400_000);
  assert.equal(t.beatAt(origin + 86_400_000), beats);
  assert.equal(t.beatAt(origin + 86_400_000 - 0.001), beats - 1);
});

Deno.test("Timeline and phases reject bad arguments", () => {
  assert.throws(() => new Timeline({ originTime: 0, tempoBpm: 0 }), RangeError);
  assert.throws(() => new Timeline({ originTime: NaN }), RangeError);
  assert.throws(() => new Timeline({ originTime: 0, beatsPerBar: 0 }), RangeError);
  assert.throws(
    () => new Timeline({ originTime: 0, beatsPerBar: 3, phases: ["plan", "review"] }),
    /expected 3 phases/,
  );
  assert.throws(() => parsePhases("plan,exec"), /Invalid phase "exec"/);
  assert.deepEqual(defaultPhases(1), ["execute"]);
  assert.deepEqual(defaultPhases(2), ["plan", "review"]);
  assert.deepEqual(defaultPhases(6), [
    "plan",
    "execute",
    "execute",
    "execute",
    "execute",
    "review",
  ]);
});

Deno.test("windowId() is the first 32 hex digits of SHA-256(cluster:downbeat)", async () => {
  const digest = new Uint8Array(
    await crypto.subtle.digest("SHA-256", new TextEncoder().encode("chorus-prod:1336")),
  );
  const hex = Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
  assert.equal(await windowId("chorus-prod", 1336), hex.slice(0, 32));
  assert.match(await windowId("x", 0), /^[0-9a-f]{32}$/);
  await assert.rejects(windowId("x", -1), RangeError);
  await assert.rejects(windowId("a.b", 0), TypeError);
});

Deno.test("subjects() names the five cluster subjects and rejects non-token cluster ids", () => {
  assert.deepEqual(subjects("chorus-dev"), {
    beat: "backbeat.chorus-dev.beat",
    status: "backbeat.chorus-dev.status",
    bar: "backbeat.chorus-dev.bar",
    control: "backbeat.chorus-dev.control",
    time: "backbeat.chorus-dev.time",
  });
  for (const bad of ["", "a.b", "a*", ">", "a b", "x".repeat(129)]) {
    assert.throws(() => assertClusterId(bad), /Invalid cluster id .*one NATS subject token/);
  }
});

Deno.test("formatInstant() and parseInstant() keep microseconds that Date drops", () => {
  for (const ms of [0, 1.5, 1_700_000_000_000.25, 1_700_000_000_123.999, 1_700_000_000_999.9999]) {
    const text = formatInstant(ms);
    assert.match(text, /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$/);
    assert.ok(Math.abs(parseInstant(text) - ms) < 0.0006, `${ms} -> ${text}`);
  }
  assert.equal(formatInstant(0.9996), "1970-01-01T00:00:00.001000Z");
  assert.equal(parseInstant("2025-09-05T12:30:00Z"), Date.parse("2025-09-05T12:30:00Z"));
  assert.equal(
    parseInstant("2025-09-05T14:30:00.000250+02:00"),
    Date.parse("2025-09-05T12:30:00Z") + 0.25,
  );
  assert.ok(Number.isNaN(parseInstant("yesterday")));
});

Deno.test("Timeline.beatAt answers in closed form even for an index near 2^53", () => {
  const t = new Timeline({ originTime: 0, originBeat: Number.MAX_SAFE_INTEGER - 10, tempoBpm: 60 });
  const start = performance.now();
  assert.equal(t.beatAt(5_000), Number.MAX_SAFE_INTEGER - 5);
  assert.equal(t.beatAt(1e15), Number.MAX_SAFE_INTEGER);
  assert.equal(t.beatAt(Number.MAX_VALUE), Number.MAX_SAFE_INTEGER);
  assert.equal(t.beatAt(-Number.MAX_VALUE), -Number.MAX_SAFE_INTEGER);
  assert.ok(performance.now() - start < 100);
  assert.ok(Number.isSafeInteger(new Timeline({ originTime: 0, tempoBpm: 60_000 }).beatAt(1e300)));
});

Deno.test("Timeline epochs: frames carry them, window ids derive from them, snapshots keep them", async () => {
  const v1 = new Timeline({ originTime: 0, tempoBpm: 60 });
  const e7 = new Timeline({ originTime: 0, tempoBpm: 60, epoch: 7 });
  const f1 = await v1.frame("dev", 4, "0000:0000:0001");
  const f7 = await e7.frame("dev", 4, "0000:0000:0001");
  assert.equal("epoch" in f1, false);
  assert.equal(f7.epoch, 7);
  assert.equal(f1.window_id, await windowId("dev", 4));
  assert.equal(f7.window_id, await windowId("dev", 4, 7));
  assert.notEqual(f1.window_id, f7.window_id);
  assert.equal(Timeline.fromJSON(e7.withTempo(120, 5).toJSON()).epoch, 7);
  assert.throws(() => new Timeline({ originTime: 0, epoch: -1 }), RangeError);
});

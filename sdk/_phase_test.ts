// Scheduled delivery on manual clocks: pulse's clock is a SkewedClock of the client's (ahead and
// fast), answering clock requests as pulse does, and a BeatSource publishes pulse's frames a
// little after each beat's instant (the network). An hour runs in a few seconds.
import assert from "node:assert/strict";
import {
  type BeatFrame,
  type BeatInfo,
  Client,
  type ClientConfig,
  defaultConfig,
  InMemoryBus,
  type RealignedEventDetail,
} from "./mod.ts";
import {
  answerTimeRequests,
  type BusSubscription,
  generateSigningKeyPair,
  importSigningKey,
  Keyring,
  ManualClock,
  Timeline,
  windowIdsSettled,
} from "../core/mod.ts";
import { SkewedClock } from "../testing/mod.ts";
import {
  CLOCK_SYNC_INTERVAL_MS,
  FOLLOW_UP_SAMPLES,
  FOLLOW_UPS_MS,
  INITIAL_SAMPLES,
} from "./_clock_sync.ts";
import { BeatSource, quietLogger, settle } from "../tests/sdk_helpers.ts";

const T0 = 1_700_000_000_000;
/** What the network adds between pulse's send and the client's arrival, ms. */
const WIRE_MS = 0.3;

function scheduledConfig(
  bus: InMemoryBus,
  clock: ManualClock,
  clusterId: string,
  extra: Partial<ClientConfig> = {},
): ClientConfig {
  const c = defaultConfig();
  c.clusterId = clusterId;
  c.agentId = "agent";
  c.bus = bus;
  c.clock = clock;
  c.logger = quietLogger();
  return { ...c, delivery: "scheduled", ...extra };
}

/** Advances in steps, letting exchanges, digests and deliveries finish between them. */
async function step(clock: ManualClock, to: number, stepMs = 50): Promise<void> {
  while (clock.now() < to) {
    await clock.advance(Math.min(stepMs, to - clock.now()));
    await windowIdsSettled();
    await settle();
  }
}

interface Seen {
  index: number;
  entry: number;
  info: BeatInfo;
  frame: BeatFrame;
}

function record(client: Client, clock: ManualClock): Seen[] {
  const seen: Seen[] = [];
  client.onBeat((frame, info) => {
    seen.push({ index: frame.beat_index, entry: clock.now(), info, frame });
  });
  return seen;
}

/** Publishes beats `from..to` of a source on pulse's clock, each WIRE_MS after its instant. */
async function play(
  local: ManualClock,
  pulse: SkewedClock,
  bus: InMemoryBus,
  source: BeatSource,
  from: number,
  to: number,
): Promise<void> {
  for (let i = from; i <= to; i++) {
    await step(local, pulse.toBase(source.timeline.dueAt(i)) + WIRE_MS);
    await source.publish(i);
    await bus.flush();
    await settle();
  }
}

Deno.test("scheduled: callbacks at pulse's instants on a clock 250 ms ahead and 50 ppm fast, within 0.5 ms through an hour of degraded mode", async () => {
  const cluster = "phase-hour";
  const local = new ManualClock(T0);
  const pulse = new SkewedClock(local, { offsetMs: 250, ratePpm: 50 });
  const bus = new InMemoryBus();
  let responder: BusSubscription | undefined = answerTimeRequests(bus, cluster, {
    clock: pulse,
    pulseId: "pulse-a",
  });
  await using client = new Client(scheduledConfig(bus, local, cluster));
  const seen = record(client, local);
  let confirmed = 0;
  client.addEventListener("confirmed", () => confirmed++);
  await client.start();
  await settle();
  const source = new BeatSource(bus, cluster, {
    tempoBpm: 120,
    originTime: pulse.now() + 1_000,
    clock: pulse,
  });
  // 30 s of pulse: the estimate fits the rate from exchanges spread over the first seconds.
  await play(local, pulse, bus, source, 0, 59);
  const truth = (index: number) => pulse.toBase(source.timeline.dueAt(index));
  // Beat 0 is the first frame (nothing scheduled it): on arrival. Then every beat at its
  // instant, before pulse's frame, and confirmed by it.
  assert.deepEqual(seen.map((s) => s.index), [...Array(60).keys()]);
  assert.equal(seen[0].info.predicted, false);
  for (const s of seen.slice(1)) {
    assert.equal(s.info.predicted, true, `beat ${s.index}`);
    assert.equal(s.info.synthetic, false);
    assert.ok(
      Math.abs(s.entry - truth(s.index)) <= 0.5,
      `beat ${s.index}: ${s.entry - truth(s.index)} ms`,
    );
    // The prediction is pulse's frame (the stamp aside).
    assert.deepEqual({ ...s.frame, hlc: "" }, { ...(await source.frame(s.index)), hlc: "" });
  }
  assert.equal(confirmed, 59);
  let h = client.health();
  assert.equal(h.delivery, "scheduled");
  assert.equal(h.predictedBeats, 59);
  assert.equal(h.confirmedBeats, 59);
  assert.equal(h.realignments, 0);
  const trueOffset = pulse.now() - local.now();
  assert.ok(h.clock !== null);
  assert.ok(Math.abs(h.clock.offsetMs - trueOffset) < 0.01, `offset ${h.clock.offsetMs}`);
  assert.ok(Math.abs(h.clock.ratePpm - 50) < 0.5, `rate ${h.clock.ratePpm}`);
  assert.equal(h.clock.pulseId, "pulse-a");
  assert.ok(h.clock.measuredAt > T0 + 10_000, "remeasured after the first burst");
  assert.ok(h.phaseError.p99 < 0.01 && h.phaseError.count === 59, JSON.stringify(h.phaseError));

  // Pulse goes away (frames and clock answers): an hour of synthetic beats on pulse's timeline,
  // mapped through the fitted rate (50 ppm is 180 ms in an hour: an offset alone would miss).
  responder.unsubscribe();
  responder = undefined;
  const before = seen.length;
  await step(local, local.now() + 3_600_000, 4_000);
  const degraded = seen.slice(before);
  assert.equal(degraded.length, 7_200);
  assert.deepEqual(degraded.map((s) => s.index), Array.from({ length: 7_200 }, (_, i) => 60 + i));
  let worst = 0;
  for (const s of degraded) {
    worst = Math.max(worst, Math.abs(s.entry - truth(s.index)));
    assert.equal(s.info.predicted, true);
  }
  assert.ok(worst <= 0.5, `worst beat ${worst} ms from its instant`);
  // The first beat after pulse went quiet was predicted before the watchdog noticed; the rest are
  // synthetic.
  assert.equal(degraded[0].info.synthetic, false);
  assert.ok(degraded.slice(1).every((s) => s.info.synthetic));
  const last = degraded.at(-1)!;
  assert.deepEqual({ ...last.frame, hlc: "" }, { ...(await source.frame(last.index)), hlc: "" });
  h = client.health();
  assert.equal(h.degraded, true);
  assert.equal(h.missedBeats, 0);
  assert.ok(h.phaseError.max <= 0.5, JSON.stringify(h.phaseError));
  await client.stop();
  await bus.close();
});

Deno.test("arrival: the same pulse, callbacks when frames arrive and no clock exchange", async () => {
  const cluster = "phase-arrival";
  const local = new ManualClock(T0);
  const pulse = new SkewedClock(local, { offsetMs: 250, ratePpm: 50 });
  const bus = new InMemoryBus();
  let requests = 0;
  const responder = answerTimeRequests(bus, cluster, { clock: pulse, pulseId: "pulse-a" });
  const counting = bus.subscribe(`backbeat.${cluster}.time`, () => requests++);
  await using client = new Client(scheduledConfig(bus, local, cluster, { delivery: "arrival" }));
  const seen = record(client, local);
  await client.start();
  const source = new BeatSource(bus, cluster, {
    tempoBpm: 120,
    originTime: pulse.now() + 1_000,
    clock: pulse,
  });
  await play(local, pulse, bus, source, 0, 9);
  assert.deepEqual(seen.map((s) => s.index), [...Array(10).keys()]);
  for (const s of seen) {
    assert.equal(s.info.predicted, false);
    assert.equal(s.entry, s.info.arrivedAt);
    // WIRE_MS after pulse's instant: the delivery delay is in every callback.
    assert.ok(Math.abs(s.entry - pulse.toBase(source.timeline.dueAt(s.index)) - WIRE_MS) < 1e-3);
  }
  const h = client.health();
  assert.equal(h.delivery, "arrival");
  assert.equal(h.clock, null);
  assert.equal(h.phaseError.count, 0);
  assert.equal(requests, 0);
  counting.unsubscribe();
  responder.unsubscribe();
  await client.stop();
  await bus.close();
});

/** A scheduled client following a source, live for `beats` beats. */
async function following(cluster: string, beats = 8) {
  const local = new ManualClock(T0);
  const pulse = new SkewedClock(local, { offsetMs: -40, ratePpm: 0 });
  const bus = new InMemoryBus();
  const responder = answerTimeRequests(bus, cluster, { clock: pulse, pulseId: "pulse-a" });
  const client = new Client(scheduledConfig(bus, local, cluster));
  const seen = record(client, local);
  const realigned: RealignedEventDetail[] = [];
  client.addEventListener("realigned", (e) => realigned.push(e.detail));
  await client.start();
  await settle();
  const source = new BeatSource(bus, cluster, {
    tempoBpm: 120,
    originTime: pulse.now() + 1_000,
    clock: pulse,
  });
  await play(local, pulse, bus, source, 0, beats - 1);
  return {
    local,
    pulse,
    bus,
    client,
    seen,
    realigned,
    source,
    async close() {
      responder.unsubscribe();
      await client.stop();
      await bus.close();
    },
  };
}

Deno.test("scheduled: a real frame arriving before its instant waits for it and is delivered as pulse's", async () => {
  const f = await following("phase-early");
  const i = 8;
  const due = f.pulse.toBase(f.source.timeline.dueAt(i));
  await step(f.local, due - 0.2);
  await f.source.publish(i);
  await f.bus.flush();
  await settle();
  assert.equal(f.seen.length, 8, "not before its instant");
  await step(f.local, due + WIRE_MS);
  const s = f.seen.at(-1)!;
  assert.equal(s.index, i);
  assert.equal(s.info.predicted, false);
  assert.equal(s.info.at, s.entry);
  assert.ok(Math.abs(s.info.at - due) < 0.002, `${s.info.at - due}`);
  assert.ok(s.info.arrivedAt! < s.info.at);
  assert.equal(s.info.headers?.["x-pulse-id"], "pulse-a");
  assert.equal(f.client.health().realignments, 0);
  await f.close();
});

Deno.test("scheduled: pulse's frame that disagrees with the prediction realigns, and no beat is delivered twice", async () => {
  const f = await following("phase-mismatch");
  // Pulse's phase map changes without notice from beat 11: the bar's last beat is execute now.
  const changed = new Timeline({
    originTime: f.source.timeline.dueAt(0),
    tempoBpm: 120,
    phases: ["plan", "execute", "execute", "execute"],
  });
  const frameOf = (i: number) => changed.frame("phase-mismatch", i, "0000:0000:0000");
  await play(f.local, f.pulse, f.bus, f.source, 8, 10);
  await step(f.local, f.pulse.toBase(f.source.timeline.dueAt(11)) + WIRE_MS);
  assert.equal(f.seen.at(-1)!.index, 11);
  assert.equal(f.seen.at(-1)!.frame.phase, "review", "predicted on the old map");
  const eleven = await frameOf(11);
  await f.source.publish(11, () => eleven);
  await f.bus.flush();
  await settle();
  assert.equal(f.realigned.length, 1);
  assert.equal(f.realigned[0].reason, "mismatch");
  assert.equal(f.realigned[0].frame.beat_index, 11);
  assert.equal(f.realigned[0].frame.phase, "execute");
  assert.equal(f.realigned[0].predicted?.phase, "review");
  // The timeline learned the change: the next bar is predicted on the new map, and confirmed.
  for (let i = 12; i <= 15; i++) {
    await step(f.local, f.pulse.toBase(changed.dueAt(i)) + WIRE_MS);
    const frame = await frameOf(i);
    await f.source.publish(i, () => frame);
    await f.bus.flush();
    await settle();
  }
  assert.deepEqual(f.seen.map((s) => s.index), [...Array(16).keys()]);
  for (const s of f.seen.slice(12)) {
    assert.equal(s.info.predicted, true);
    assert.deepEqual({ ...s.frame, hlc: "" }, { ...(await frameOf(s.index)), hlc: "" });
  }
  const h = f.client.health();
  assert.equal(h.realignments, 1);
  assert.equal(h.missedBeats, 0);
  assert.equal(h.confirmedBeats, h.predictedBeats - 1);
  await f.close();
});

Deno.test("scheduled: pulse's frame two beats ahead realigns as a skip, and the skipped beat is counted as missed", async () => {
  const f = await following("phase-skip");
  // Pulse continues two beats ahead of the timeline followed (a successor that counted on), at
  // the same instants: beat 8's instant now carries beat 10.
  const ahead = new BeatSource(f.bus, "phase-skip", {
    tempoBpm: 120,
    originTime: f.source.timeline.dueAt(0) - 2 * 500,
    clock: f.pulse,
  });
  await step(f.local, f.pulse.toBase(f.source.timeline.dueAt(8)) + WIRE_MS);
  await ahead.publish(10);
  await f.bus.flush();
  await settle();
  await play(f.local, f.pulse, f.bus, ahead, 11, 12);
  assert.deepEqual(f.seen.map((s) => s.index), [0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12]);
  assert.equal(f.seen[9].info.predicted, false, "beat 10 on arrival: nothing scheduled it");
  assert.equal(f.realigned.length, 1);
  assert.equal(f.realigned[0].reason, "skip");
  assert.equal(f.realigned[0].missed, 1);
  assert.equal(f.client.health().missedBeats, 1);
  // The new timeline's beats come at their instants again.
  for (const s of f.seen.slice(10)) {
    assert.equal(s.info.predicted, true);
    assert.ok(Math.abs(s.entry - f.pulse.toBase(ahead.timeline.dueAt(s.index))) < 0.002);
  }
  await f.close();
});

Deno.test("scheduled: a new epoch from beat 0 realigns as a restart; the old timeline's beats stop", async () => {
  const f = await following("phase-epoch");
  const next = new BeatSource(f.bus, "phase-epoch", {
    tempoBpm: 240,
    originTime: f.pulse.now() + 2_200,
    epoch: 7,
    clock: f.pulse,
  });
  await play(f.local, f.pulse, f.bus, next, 0, 5);
  const after = f.seen.filter((s) => (s.frame.epoch ?? 0) === 7);
  // The first frame of the new epoch waits for a second one (unsigned); both are then followed.
  assert.deepEqual(after.map((s) => s.index), [1, 2, 3, 4, 5]);
  assert.equal(f.realigned.length, 1);
  assert.equal(f.realigned[0].reason, "restart");
  assert.equal(f.realigned[0].frame.epoch, 7);
  // Beats of the new timeline come at its instants once it is followed.
  for (const s of after.slice(1)) {
    assert.equal(s.info.predicted, true, `beat ${s.index}`);
    assert.ok(Math.abs(s.entry - f.pulse.toBase(next.timeline.dueAt(s.index))) < 0.002);
  }
  // Nothing of the old timeline after the restart.
  const restartAt = f.seen.findIndex((s) => (s.frame.epoch ?? 0) === 7);
  assert.ok(f.seen.slice(restartAt).every((s) => s.frame.epoch === 7));
  await f.close();
});

Deno.test("scheduled: pulse's clock stepping 50 ms is caught by its frames and remeasured", async () => {
  const cluster = "phase-step";
  const local = new ManualClock(T0);
  const before = new SkewedClock(local, { offsetMs: 250 });
  const bus = new InMemoryBus();
  let responder = answerTimeRequests(bus, cluster, { clock: before, pulseId: "pulse-a" });
  await using client = new Client(scheduledConfig(bus, local, cluster));
  const seen = record(client, local);
  await client.start();
  await settle();
  const source = new BeatSource(bus, cluster, {
    tempoBpm: 120,
    originTime: before.now() + 1_000,
    clock: before,
  });
  await play(local, before, bus, source, 0, 9);
  const measured = client.health().clock!.measuredAt;
  // Pulse's clock jumps 50 ms ahead: its frames now leave 50 ms earlier on the client's clock.
  const after = new SkewedClock(local, { offsetMs: 300 });
  responder.unsubscribe();
  responder = answerTimeRequests(bus, cluster, { clock: after, pulseId: "pulse-a" });
  await play(local, after, bus, source, 10, 14);
  const h = client.health();
  assert.ok(h.clock!.measuredAt > measured, "remeasured at once");
  assert.ok(Math.abs(h.clock!.offsetMs - 300) < 0.01, `offset ${h.clock!.offsetMs}`);
  // Beat 10 came 50 ms before the instant the old estimate gave it: delivered on arrival, not
  // held 50 ms. From beat 11 on, at pulse's new instants.
  assert.equal(seen[10].index, 10);
  assert.equal(seen[10].info.predicted, false);
  for (const s of seen.slice(11)) {
    assert.equal(s.info.predicted, true);
    assert.ok(Math.abs(s.entry - after.toBase(source.timeline.dueAt(s.index))) < 0.002);
  }
  assert.deepEqual(seen.map((s) => s.index), [...Array(15).keys()]);
  responder.unsubscribe();
  await client.stop();
  await bus.close();
});

Deno.test("scheduled: a leader change moves the estimate to the new pulse's clock", async () => {
  const cluster = "phase-leader";
  const local = new ManualClock(T0);
  const a = new SkewedClock(local, { offsetMs: 250 });
  const b = new SkewedClock(local, { offsetMs: 180 });
  const bus = new InMemoryBus();
  let responder = answerTimeRequests(bus, cluster, { clock: a, pulseId: "pulse-a" });
  await using client = new Client(scheduledConfig(bus, local, cluster));
  const seen = record(client, local);
  await client.start();
  await settle();
  const first = new BeatSource(bus, cluster, {
    tempoBpm: 120,
    originTime: a.now() + 1_000,
    clock: a,
    pulseId: "pulse-a",
  });
  await play(local, a, bus, first, 0, 7);
  // pulse-b takes over, continuing the stored timeline on its own clock (70 ms behind pulse-a's).
  responder.unsubscribe();
  responder = answerTimeRequests(bus, cluster, { clock: b, pulseId: "pulse-b" });
  const second = new BeatSource(bus, cluster, {
    tempoBpm: 120,
    originTime: first.timeline.dueAt(0),
    clock: b,
    pulseId: "pulse-b",
  });
  await play(local, b, bus, second, 8, 13);
  const h = client.health();
  assert.equal(h.clock!.pulseId, "pulse-b");
  assert.ok(Math.abs(h.clock!.offsetMs - 180) < 0.01, `offset ${h.clock!.offsetMs}`);
  assert.deepEqual(seen.map((s) => s.index), [...Array(14).keys()]);
  // From the beat after the takeover, at pulse-b's instants.
  for (const s of seen.slice(9)) {
    assert.ok(Math.abs(s.entry - b.toBase(second.timeline.dueAt(s.index))) < 0.002, `${s.index}`);
  }
  responder.unsubscribe();
  await client.stop();
  await bus.close();
});

Deno.test("scheduled: a forger answering clock requests first cannot mislead the estimate", async () => {
  const cluster = "phase-forged";
  const local = new ManualClock(T0);
  const pulse = new SkewedClock(local, { offsetMs: 250 });
  const pair = await generateSigningKeyPair();
  const key = await importSigningKey(pair.keyPair.privateKey);
  const pulseKeys = await Keyring.fromJson({
    pulse: [{ key_id: pair.keyId, public_key: pair.publicKey }],
  });
  const bus = new InMemoryBus();
  const enc = new TextEncoder();
  let skew = 3_600_000;
  // A forger answers every request first, unsigned, with a clock an hour off.
  const forger = bus.subscribe(`backbeat.${cluster}.time`, (m) => {
    const nonce = JSON.parse(new TextDecoder().decode(m.data)).nonce;
    const t = local.now() + skew;
    bus.publish(m.reply!, enc.encode(JSON.stringify({ nonce, t1: t, t2: t, pulse_id: "pulse-a" })));
  });
  const signed = answerTimeRequests(bus, cluster, {
    clock: pulse,
    signingKey: key,
    pulseId: "pulse-a",
  });
  const source = new BeatSource(bus, cluster, {
    tempoBpm: 120,
    originTime: pulse.now() + 1_000,
    clock: pulse,
    signingKey: pair.keyPair.privateKey,
  });
  // With pulse keys the forged answers never count (a request takes the first reply, so the
  // forger denies the estimate rather than moves it): the keyed client stays on arrival.
  await using keyed = new Client(scheduledConfig(bus, local, cluster, { pulseKeys }));
  // Without keys the forged hour is believed until pulse's own frames show that they would all
  // have taken an hour to arrive; the estimate is dropped, and further forgeries discarded.
  await using plain = new Client(scheduledConfig(bus, local, cluster));
  await keyed.start();
  await plain.start();
  for (let i = 0; i < 10; i++) await settle();
  assert.equal(keyed.health().clock, null);
  assert.ok(Math.abs(plain.health().clock!.offsetMs - skew) < 1, "the forgery, before any frame");
  const keyedBeats = record(keyed, local);
  const plainBeats = record(plain, local);
  await play(local, pulse, bus, source, 0, 5);
  assert.equal(keyed.health().clock, null);
  assert.equal(keyed.health().delivery, "arrival");
  assert.equal(plain.health().clock, null, "dropped once frames contradicted it");
  assert.deepEqual(plainBeats.map((b) => b.index), [0, 1, 2, 3, 4, 5]);
  assert.ok(plainBeats.every((b) => !b.info.predicted), "on arrival, never an hour late");
  assert.deepEqual(keyedBeats.map((b) => b.index), [0, 1, 2, 3, 4, 5]);
  // A forger that stops lying a little is still caught by the frames: 40 ms behind pulse's send
  // instants is impossible.
  skew = 250 - 40;
  await play(local, pulse, bus, source, 6, 40);
  assert.equal(plain.health().clock, null);
  // The forger gone, the real (unsigned) answers count for the plain client.
  forger.unsubscribe();
  signed.unsubscribe();
  const honest = answerTimeRequests(bus, cluster, { clock: pulse, pulseId: "pulse-a" });
  // With no estimate the client retries every 1, 2, 4, 8, then 15 s.
  await play(local, pulse, bus, source, 41, 80);
  assert.ok(Math.abs(plain.health().clock!.offsetMs - 250) < 0.01);
  assert.equal(plain.health().delivery, "scheduled");
  assert.ok(plainBeats.slice(-5).every((b) => b.info.predicted));
  honest.unsubscribe();
  await keyed.stop();
  await plain.stop();
  await bus.close();
});

Deno.test("scheduled: with pulse keys, signed answers give the estimate", async () => {
  const cluster = "phase-signed";
  const local = new ManualClock(T0);
  const pulse = new SkewedClock(local, { offsetMs: -75 });
  const pair = await generateSigningKeyPair();
  const pulseKeys = await Keyring.fromJson({
    pulse: [{ key_id: pair.keyId, public_key: pair.publicKey }],
  });
  const bus = new InMemoryBus();
  const signed = answerTimeRequests(bus, cluster, {
    clock: pulse,
    signingKey: await importSigningKey(pair.keyPair.privateKey),
    pulseId: "pulse-a",
  });
  await using client = new Client(scheduledConfig(bus, local, cluster, { pulseKeys }));
  await client.start();
  // Signing and verifying are real WebCrypto work: let them finish.
  for (let i = 0; i < 20 && (client.health().clock?.samples ?? 0) < 8; i++) await settle();
  assert.equal(client.health().clock?.samples, 8);
  assert.ok(Math.abs(client.health().clock!.offsetMs + 75) < 0.01);
  signed.unsubscribe();
  await client.stop();
  await bus.close();
});

Deno.test("nextDownbeat() and at(): several clients resolve on the same downbeat; bad targets and aborts reject", async () => {
  const cluster = "phase-quantized";
  const local = new ManualClock(T0);
  // No drift: the rate needs 20 s of exchanges, and this is about the same instant for all.
  const pulse = new SkewedClock(local, { offsetMs: 250 });
  const bus = new InMemoryBus();
  const responder = answerTimeRequests(bus, cluster, { clock: pulse, pulseId: "pulse-a" });
  const clients = [0, 1, 2].map((i) =>
    new Client(scheduledConfig(bus, local, cluster, { agentId: `agent-${i}` }))
  );
  for (const c of clients) await c.start();
  await settle();
  const source = new BeatSource(bus, cluster, {
    tempoBpm: 120,
    originTime: pulse.now() + 1_000,
    clock: pulse,
  });
  await play(local, pulse, bus, source, 0, 5);
  const resolved: { beat: number; at: number }[] = [];
  const waits = clients.map((c) =>
    c.nextDownbeat().then((f) => resolved.push({ beat: f.beat_index, at: local.now() }))
  );
  const bars = clients.map((c) => c.at({ bar: 3 }).then((f) => f.beat_index));
  const beats = clients.map((c) => c.at({ beat: 13 }).then((f) => f.beat_index));
  await play(local, pulse, bus, source, 6, 14);
  await Promise.all(waits);
  assert.deepEqual(resolved.map((r) => r.beat), [8, 8, 8]);
  // At beat 8's instant, each of them (not at its frame's arrival).
  const due8 = pulse.toBase(source.timeline.dueAt(8));
  for (const r of resolved) assert.ok(r.at - due8 >= 0 && r.at - due8 < 0.002, `${r.at - due8}`);
  assert.equal(new Set(resolved.map((r) => r.at)).size, 1, "one instant for all");
  assert.deepEqual(await Promise.all(bars), [12, 12, 12]);
  assert.deepEqual(await Promise.all(beats), [13, 13, 13]);

  const c = clients[0];
  await assert.rejects(c.at({ beat: 3 }), RangeError); // in the past
  await assert.rejects(c.at({ beat: 14 }), /in the past/);
  await assert.rejects(c.at({ bar: 100_000 }), /more than a day/); // 2.2 days at 120 BPM
  await assert.rejects(c.at({ beat: -1 }), RangeError);
  await assert.rejects(c.at({ beat: 1.5 }), RangeError);
  await assert.rejects(c.at({} as { beat: number }), TypeError);
  await assert.rejects(c.at({ beat: 20, bar: 5 } as unknown as { beat: number }), TypeError);
  const ac = new AbortController();
  const aborted = c.at({ beat: 40 }, { signal: ac.signal });
  const reason = new Error("cancelled by the operator");
  ac.abort(reason);
  await assert.rejects(aborted, (e) => e === reason);
  await assert.rejects(c.nextDownbeat({ signal: AbortSignal.abort(reason) }), (e) => e === reason);
  // A client stopping rejects what waits on it.
  const pending = c.nextDownbeat();
  await c.stop();
  await assert.rejects(pending, { name: "BackbeatError", code: "closed" });
  await assert.rejects(c.nextDownbeat(), { code: "closed" });
  await assert.rejects(
    new Client(scheduledConfig(bus, local, cluster)).nextDownbeat(),
    { code: "not_started" },
  );
  responder.unsubscribe();
  for (const other of clients) await other.stop();
  await bus.close();
});

Deno.test("clients of one process share one clock estimate: one burst of exchanges, not one per client", async () => {
  const cluster = "phase-shared";
  const local = new ManualClock(T0);
  const pulse = new SkewedClock(local, { offsetMs: 250 });
  const bus = new InMemoryBus();
  let requests = 0;
  const counting = bus.subscribe(`backbeat.${cluster}.time`, () => requests++);
  const responder = answerTimeRequests(bus, cluster, { clock: pulse });
  const clients = Array.from(
    { length: 50 },
    (_, i) => new Client(scheduledConfig(bus, local, cluster, { agentId: `a${i}` })),
  );
  for (const c of clients) await c.start();
  await settle();
  assert.equal(requests, INITIAL_SAMPLES);
  for (const c of clients) assert.ok(Math.abs(c.health().clock!.offsetMs - 250) < 0.01);
  // The follow-ups and the regular remeasurements over a minute: still shared.
  const start = local.now();
  await step(local, start + 60_000, 500);
  const last = FOLLOW_UPS_MS.at(-1)!;
  const regular = Math.floor((60_000 - last) / CLOCK_SYNC_INTERVAL_MS);
  assert.equal(requests, INITIAL_SAMPLES + FOLLOW_UP_SAMPLES * (FOLLOW_UPS_MS.length + regular));
  counting.unsubscribe();
  responder.unsubscribe();
  for (const c of clients) await c.stop();
  await bus.close();
});

Deno.test("new Client() refuses an unknown delivery mode", () => {
  const bus = new InMemoryBus();
  assert.throws(
    () =>
      new Client({
        ...scheduledConfig(bus, new ManualClock(0), "x"),
        delivery: "early" as "arrival",
      }),
    { name: "TypeError", message: /delivery "early"/ },
  );
});

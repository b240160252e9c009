import assert from "node:assert/strict";
import {
  BackbeatError,
  type BarReport,
  generateSigningKeyPair,
  HybridLogicalClock,
  importSigningKey,
  InMemoryBus,
  Keyring,
  type LogFields,
  type Logger,
  ManualClock,
  type SigningKey,
  signMessage,
  Timeline,
  windowId,
} from "../core/mod.ts";
import { MessageValidator } from "../schemas/mod.ts";
import { hlcAt, makeClaim, signedMessage } from "../tests/reverb_helpers.ts";
import { until } from "../tests/until.ts";
import { renderReverbMetrics } from "./_metrics.ts";
import { barStreamName, FRAME_REJECT_REASONS, Reverb } from "./_reverb.ts";

const T0 = Date.parse("2030-01-01T00:00:00Z");
const encoder = new TextEncoder();
const validator = new MessageValidator();

interface World {
  bus: InMemoryBus;
  clock: ManualClock;
  reverb: Reverb;
  published: BarReport[];
  beat(n: number): Promise<void>;
  send(subject: "status" | "beat", data: unknown): Promise<void>;
  to(t: number): Promise<void>;
  close(): Promise<void>;
}

async function world(
  options: Partial<ConstructorParameters<typeof Reverb>[0]> = {},
): Promise<World> {
  const bus = new InMemoryBus();
  const clock = new ManualClock(T0 - 100);
  const timeline = new Timeline({ originTime: T0, tempoBpm: 60 });
  const hlc = new HybridLogicalClock({ clock: () => clock.now() });
  const published: BarReport[] = [];
  bus.subscribe(
    "backbeat.dev.bar",
    (m) => published.push(JSON.parse(new TextDecoder().decode(m.data))),
  );
  const reverb = new Reverb({ clusterId: "dev", bus, clock, graceMs: 200, ...options });
  await reverb.start();
  const w: World = {
    bus,
    clock,
    reverb,
    published,
    async to(t) {
      if (t > clock.now()) await clock.advance(t - clock.now());
      await bus.flush();
    },
    async send(kind, data) {
      bus.publish(
        `backbeat.dev.${kind}`,
        data instanceof Uint8Array ? data : encoder.encode(JSON.stringify(data)),
      );
      await bus.flush();
    },
    async beat(n) {
      await w.to(timeline.dueAt(n));
      await w.send("beat", await timeline.frame("dev", n, hlc.now()));
    },
    async close() {
      await reverb.stop();
      await bus.close();
    },
  };
  return w;
}

Deno.test("Reverb publishes one schema-valid BarReport per window on the bar subject", async () => {
  const w = await world();
  try {
    await w.beat(0);
    await w.send("status", makeClaim({ agent_id: "a", hlc: hlcAt(w.clock.now()), beat_index: 0 }));
    await w.send("status", encoder.encode("{oops"));
    await w.send("status", { type: "backbeat.statusclaim.v1" });
    for (let n = 1; n <= 4; n++) await w.beat(n);
    await w.to(T0 + 4_200);
    assert.equal(w.published.length, 1);
    const report = w.published[0];
    assert.equal(validator.validateMessage(report).valid, true);
    assert.equal(report.agents_reporting, 1);
    assert.deepEqual(
      report.issues.map((i) => i.detail),
      ["1 claims rejected: malformed", "1 claims rejected: schema"],
    );
    assert.deepEqual(w.reverb.reports, [report], "the history holds what was published");
    const status = w.reverb.status();
    assert.equal(status.active, true);
    assert.equal(status.tempo_bpm, 60);
    assert.equal(status.reports_published, 1);
    assert.equal(status.claims.accepted, 1);
    assert.equal(status.claims.rejected.malformed, 1);
    assert.equal(status.stream, null, "no JetStream on the embedded bus");
    const metrics = renderReverbMetrics(w.reverb.metrics());
    assert.match(metrics, /^backbeat_reverb_claims_accepted_total\{cluster="dev"\} 1$/m);
    assert.match(
      metrics,
      /^backbeat_reverb_claims_rejected_total\{cluster="dev",reason="schema"\} 1$/m,
    );
    assert.match(metrics, /^backbeat_reverb_reports_published_total\{cluster="dev"\} 1$/m);
    assert.match(metrics, /^backbeat_reverb_agents_tracked\{cluster="dev"\} 1$/m);
    assert.equal(metrics.match(/# TYPE backbeat_reverb_claims_rejected_total/g)?.length, 1);
  } finally {
    await w.close();
  }
});

Deno.test("Reverb takes reports published by another reverb into its history, once", async () => {
  const w = await world({ historySize: 2 });
  try {
    const report = (from: number): BarReport => ({
      type: "backbeat.barreport.v1",
      window_id: from.toString(16).padStart(32, "0"),
      from_beat: from,
      to_beat: from + 3,
      agents_reporting: 0,
      on_time_reviews: 0,
      help_promises_fulfilled: 0,
      secret_rotations_ok: true,
      tempo_drift_ms: 0,
      issues: [],
    });
    for (const r of [report(8), report(4), report(8), report(12)]) {
      w.bus.publish("backbeat.dev.bar", encoder.encode(JSON.stringify(r)));
    }
    w.bus.publish("backbeat.dev.bar", encoder.encode('{"type":"backbeat.barreport.v1"}'));
    await w.bus.flush();
    assert.deepEqual(w.reverb.reports.map((r) => r.from_beat), [8, 12]);
  } finally {
    await w.close();
  }
});

Deno.test("Reverb verifies signatures with a keyring file and follows its reload", async () => {
  const dir = await Deno.makeTempDir({ prefix: "reverb-test-" });
  const path = `${dir}/keyring.json`;
  const k1 = await generateSigningKeyPair();
  const k2 = await generateSigningKeyPair();
  await Deno.writeTextFile(
    path,
    JSON.stringify({ a: [{ key_id: "k1", public_key: k1.publicKey }] }),
  );
  const w = await world({ keyring: path, requireSignatures: true });
  try {
    const send = async (key: CryptoKey, kid: string, logical: number) => {
      const m = await signedMessage(
        makeClaim({ agent_id: "a", hlc: hlcAt(w.clock.now(), logical) }),
        key,
        kid,
        "backbeat.dev.status",
      );
      const c = w.reverb.claimsSummary();
      const before = c.accepted + Object.values(c.rejected).reduce((x, y) => x + y, 0);
      w.bus.publish(m.subject, m.data, { headers: m.headers });
      await until(() => {
        const s = w.reverb.claimsSummary();
        return s.accepted + Object.values(s.rejected).reduce((x, y) => x + y, 0) > before;
      }, { what: "the claim to be verified" });
    };
    await send(k1.keyPair.privateKey, "k1", 1);
    await send(k2.keyPair.privateKey, "k2", 2);
    assert.equal(w.reverb.status().claims.accepted, 1);
    assert.equal(w.reverb.status().claims.rejected.unknown_key, 1);
    await Deno.writeTextFile(
      path,
      JSON.stringify({ a: [{ key_id: "k2", public_key: k2.publicKey }] }),
    );
    // The reload's debounce runs on reverb's clock: move it along while the file event arrives.
    await until(async () => {
      await w.clock.advance(50);
      return w.reverb.keyring.get("a", "k2") !== undefined;
    }, { what: "the keyring reload" });
    await send(k2.keyPair.privateKey, "k2", 3);
    await send(k1.keyPair.privateKey, "k1", 4);
    assert.equal(w.reverb.status().claims.accepted, 2);
    assert.equal(w.reverb.status().claims.rejected.unknown_key, 2);
    assert.equal(w.reverb.status().keyring_keys, 1);
  } finally {
    await w.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("Reverb.stop() is idempotent, an abort signal stops it, and a stopped reverb cannot start", async () => {
  const bus = new InMemoryBus();
  const reverb = new Reverb({ clusterId: "dev", bus });
  const controller = new AbortController();
  await reverb.start(controller.signal);
  assert.equal(bus.subscriptionCount, 3);
  controller.abort();
  await reverb.stop();
  await reverb.stop();
  assert.equal(bus.subscriptionCount, 0);
  await assert.rejects(reverb.start(), (e) => e instanceof BackbeatError && e.code === "closed");
  await bus.close();
});

Deno.test("Reverb refuses bad options and fails to start on a missing keyring file", async () => {
  assert.throws(() => new Reverb({ clusterId: "a.b" }), TypeError);
  assert.throws(() => new Reverb({ clusterId: "dev", historySize: 0 }), RangeError);
  assert.throws(() => new Reverb({ clusterId: "dev", maxClaimBytes: -1 }), RangeError);
  const reverb = new Reverb({ clusterId: "dev", keyring: "/nonexistent/keyring.json" });
  await assert.rejects(reverb.start(), (e) => e instanceof BackbeatError && e.code === "key");
});

Deno.test("barStreamName() upper-cases the cluster and replaces what a stream name cannot hold", () => {
  assert.equal(barStreamName("chorus-dev"), "BACKBEAT_CHORUS-DEV_BARS");
  assert.equal(barStreamName("team/a:b"), "BACKBEAT_TEAM_A_B_BARS");
  assert.throws(() => barStreamName("a.b"), TypeError);
});

Deno.test("Reverb's events are typed: beat, report, claims and role carry their detail", async () => {
  const bus = new InMemoryBus();
  const clock = new ManualClock(T0 - 100);
  const timeline = new Timeline({ originTime: T0, tempoBpm: 60 });
  const hlc = new HybridLogicalClock({ clock: () => clock.now() });
  const seen = {
    beats: [] as number[],
    reports: [] as number[],
    claims: 0,
    roles: [] as boolean[],
  };
  {
    await using reverb = new Reverb({ clusterId: "dev", bus, clock, graceMs: 200 });
    // No casts: the event map types each listener's event.
    reverb.addEventListener("beat", (e) => seen.beats.push(e.detail.beat_index));
    reverb.addEventListener("report", (e) => seen.reports.push(e.detail.from_beat));
    reverb.addEventListener("claims", (e) => seen.claims += e.detail.accepted >= 0 ? 1 : 0);
    reverb.addEventListener("role", (e) => seen.roles.push(e.detail.active));
    await reverb.start();
    for (let n = 0; n <= 4; n++) {
      await clock.advance(timeline.dueAt(n) - clock.now());
      bus.publish(
        "backbeat.dev.beat",
        encoder.encode(JSON.stringify(await timeline.frame("dev", n, hlc.now()))),
      );
      await bus.flush();
    }
    await clock.advance(T0 + 4_200 - clock.now());
    await until(() => seen.reports.length === 1, { what: "the report" });
    assert.equal(reverb.metrics().beatsObserved, 5);
  }
  assert.deepEqual(seen.beats, [0, 1, 2, 3, 4]);
  assert.deepEqual(seen.reports, [0]);
  assert.ok(seen.claims >= 8, `a claims summary every 500 ms, got ${seen.claims}`);
  assert.deepEqual(seen.roles, [true]);
  assert.equal(bus.subscriptionCount, 0, "await using stopped reverb");
  await bus.close();
});

Deno.test("Reverb refuses requireSignatures without a keyring: every claim would be refused", () => {
  assert.throws(
    () => new Reverb({ clusterId: "dev", requireSignatures: true }),
    (e) => e instanceof TypeError && /without a keyring/.test(e.message),
  );
  assert.throws(() => new Reverb({ clusterId: "dev", maxClaimAgeMs: 0 }), RangeError);
  assert.throws(() => new Reverb({ clusterId: "dev", maxClockOffsetMs: -1 }), RangeError);
});

interface Lines {
  logger: Logger;
  lines: Array<{ level: string; msg: string; fields?: LogFields }>;
}

function lines(): Lines {
  const out: Lines["lines"] = [];
  const at = (level: string) => (msg: string, fields?: LogFields) =>
    out.push({ level, msg, fields });
  return {
    lines: out,
    logger: { debug: at("debug"), info: at("info"), warn: at("warn"), error: at("error") },
  };
}

Deno.test("Reverb: one forged first frame (tempo 60,000, index 10^12) publishes no report; the real windows are reported, counters sane", async () => {
  const log = lines();
  const w = await world({ logger: log.logger });
  try {
    const frame0 = await new Timeline({ originTime: T0, tempoBpm: 60 }).frame("dev", 0, "0");
    await w.send("beat", {
      ...frame0,
      hlc: "0000:0000:0000",
      beat_index: 1e12,
      tempo_bpm: 60_000,
      deadline_at: "2029-01-01T00:00:00Z",
    });
    for (let n = 0; n <= 12; n++) await w.beat(n);
    await w.to(T0 + 12_200);
    await until(() => w.published.length >= 3, { what: "the real reports" });
    assert.deepEqual(w.published.map((r) => r.from_beat), [0, 4, 8]);
    assert.deepEqual(w.reverb.reports.map((r) => r.from_beat), [0, 4, 8]);
    const m = w.reverb.metrics();
    assert.equal(m.barsSkipped, 0);
    assert.equal(m.reportsPublished, 3);
    // The forgery was never vouched for: the first real frame replaced it, the second confirmed.
    assert.equal(m.framesRejected.implausible, 0);
    assert.equal(m.timelineRestarts, 0);
    assert.equal(m.windowsDropped, 1, "the forgery's window, never reported");
    const text = renderReverbMetrics(m);
    assert.match(text, /^backbeat_reverb_bars_skipped_total\{cluster="dev"\} 0$/m);
    assert.match(text, /^backbeat_reverb_windows_dropped_total\{cluster="dev"\} 1$/m);
    assert.equal(text.match(/# TYPE backbeat_reverb_frames_rejected_total/g)?.length, 1);
  } finally {
    await w.close();
  }
});

Deno.test("Reverb keeps its history in publish order: after an epoch restart the new timeline's report is the newest", async () => {
  const w = await world();
  try {
    const e1 = new Timeline({ originTime: T0, tempoBpm: 60, epoch: 100 });
    const hlc = new HybridLogicalClock({ clock: () => w.clock.now() });
    const send = async (t: Timeline, n: number) => {
      await w.to(t.dueAt(n));
      await w.send("beat", await t.frame("dev", n, hlc.now()));
    };
    for (let n = 1000; n <= 1009; n++) await send(e1, n);
    await w.to(T0 + 1_008_200);
    // Window ids are derived off the clock's turn: wait for the digests.
    await until(() => w.reverb.reports.length >= 2, { what: "two reports" });
    assert.deepEqual(w.reverb.reports.map((r) => r.from_beat), [1000, 1004]);
    const e2 = new Timeline({ originTime: T0 + 1_010_000, tempoBpm: 60, epoch: 200 });
    for (let n = 0; n <= 4; n++) await send(e2, n);
    await w.to(e2.dueAt(4) + 200);
    await until(() => w.reverb.reports.length >= 4, { what: "four reports" });
    // 1000 and 1004 closed in time, 1008 (beats 1008, 1009) at the restart, then the new
    // timeline's 0: the newest, although its beats are lower.
    assert.deepEqual(w.reverb.reports.map((r) => r.from_beat), [1000, 1004, 1008, 0]);
    assert.equal(w.reverb.reports.at(-1)!.window_id, await windowId("dev", 0, 200));
    assert.equal(w.reverb.status().frames.epoch, 200);
    assert.equal(w.reverb.metrics().reportsDuplicate, 0);
  } finally {
    await w.close();
  }
});

Deno.test("Reverb with a pulse keyring follows only frames signed by a pulse key for this cluster and epoch", async () => {
  const pair = await generateSigningKeyPair();
  const key = await importSigningKey(pair.keyPair.privateKey, "pulse-1");
  const stranger = await importSigningKey((await generateSigningKeyPair()).keyPair.privateKey);
  const pulseKeyring = await Keyring.fromJson({
    pulse: [{ key_id: "pulse-1", public_key: pair.publicKey }],
  });
  const w = await world({ pulseKeyring });
  try {
    const t = new Timeline({ originTime: T0, tempoBpm: 60, epoch: 7 });
    const hlc = new HybridLogicalClock({ clock: () => w.clock.now() });
    const publish = async (
      n: number,
      sign?: { key: SigningKey; cluster?: string; epoch?: number },
    ) => {
      await w.to(t.dueAt(n));
      const data = encoder.encode(JSON.stringify(await t.frame("dev", n, hlc.now())));
      const headers = sign
        ? await signMessage(
          sign.key,
          "backbeat.beatframe.v1",
          sign.cluster ?? "dev",
          data,
          sign.epoch ?? 7,
        )
        : undefined;
      w.bus.publish("backbeat.dev.beat", data, headers ? { headers } : undefined);
      await w.bus.flush();
    };
    const seen = () => {
      const m = w.reverb.metrics();
      return m.beatsObserved + Object.values(m.framesRejected).reduce((a, b) => a + b, 0);
    };
    const cases: Array<Parameters<typeof publish>[1]> = [
      undefined, // unsigned
      { key: stranger }, // a key the pulse keyring does not hold
      { key, cluster: "other" }, // signed for another cluster
      { key, epoch: 6 }, // bound to another epoch
    ];
    for (let n = 0; n < cases.length; n++) {
      await publish(n, cases[n]);
      await until(() => seen() === n + 1, { what: `frame ${n} checked` });
    }
    const r = w.reverb.metrics().framesRejected;
    assert.deepEqual([r.unsigned, r.unknown_key, r.bad_signature], [1, 1, 2]);
    assert.equal(w.reverb.lastBeat, undefined, "no forged frame was followed");
    for (let n = 4; n <= 12; n++) {
      await publish(n, { key });
      await until(() => seen() === n + 1, { what: `frame ${n} checked` });
    }
    await w.to(T0 + 12_200);
    await until(() => w.published.length >= 2, { what: "reports" });
    // Verified: followed at once, from the first signed frame (a downbeat).
    assert.deepEqual(w.published.map((p) => p.from_beat), [4, 8]);
    assert.equal(w.published[0].window_id, await windowId("dev", 4, 7));
    const m = w.reverb.metrics();
    assert.equal(m.framesVerified, 9);
    assert.equal(m.pulseKeyringKeys, 1);
    assert.equal(w.reverb.status().frames.verified, true);
    assert.match(
      renderReverbMetrics(m),
      /^backbeat_reverb_frames_rejected_total\{cluster="dev",reason="bad_signature"\} 2$/m,
    );
  } finally {
    await w.close();
  }
});

Deno.test("Reverb counts 20,000 junk frames and 20,000 junk claims by reason in a handful of log lines", async () => {
  const log = lines();
  const w = await world({ logger: log.logger });
  try {
    const frame = await new Timeline({ originTime: T0, tempoBpm: 60 }).frame("dev", 0, "0");
    for (let i = 0; i < 20_000; i++) {
      const kind = i % 4;
      w.bus.publish(
        "backbeat.dev.beat",
        kind === 0 ? encoder.encode("{junk") : encoder.encode(JSON.stringify(
          kind === 1
            ? { ...frame, hlc: "0000:0000:0000", beat_index: 2 ** 53 }
            : kind === 2
            ? { ...frame, hlc: "0000:0000:0000", cluster_id: "other" }
            : { ...frame, hlc: "0000:0000:0000", beat_index: 1e12 + i, tempo_bpm: 60_000 },
        )),
      );
      w.bus.publish(
        "backbeat.dev.status",
        encoder.encode(i % 2 ? "{junk" : JSON.stringify({ type: "backbeat.statusclaim.v1" })),
      );
    }
    await w.bus.flush();
    const m = w.reverb.metrics();
    assert.equal(m.framesRejected.malformed, 5_000);
    assert.equal(m.framesRejected.schema, 5_000);
    assert.equal(m.framesRejected.cluster, 5_000);
    assert.equal(m.claimsRejected.malformed + m.claimsRejected.schema, 20_000);
    assert.equal(m.reportsPublished, 0);
    const rejectLines = log.lines.filter((l) => /rejected/.test(l.msg));
    assert.ok(rejectLines.length <= 4, `${rejectLines.length} log lines`);
    assert.ok(rejectLines.length >= 2, "the first of each kind is logged at once");
  } finally {
    await w.close();
  }
});

Deno.test("Reverb's claims rate is a sliding window: steady at one claim every 2 s, where the interval rate reads 0", async () => {
  const w = await world();
  try {
    const rates: number[] = [];
    const windowRates: number[] = [];
    w.reverb.addEventListener("claims", (e) => {
      rates.push(e.detail.accepted_per_second);
      windowRates.push(e.detail.accepted_rate_per_second);
    });
    // One claim every 2 s for 40 s: a 30 BPM agent.
    for (let i = 0; i < 20; i++) {
      await w.send(
        "status",
        makeClaim({ agent_id: "slow", hlc: hlcAt(w.clock.now()), beat_index: i }),
      );
      await w.to(w.clock.now() + 2_000);
    }
    const s = w.reverb.claimsSummary();
    assert.equal(s.accepted, 20);
    assert.equal(s.rate_window_seconds, 30, "the window is full after 30 s");
    // 15 claims in the last 30 s (one at each even second, the window's first sample included
    // or not depending on the phase): 0.5/s within one claim's worth.
    assert.ok(
      Math.abs(s.accepted_rate_per_second - 0.5) <= 1 / 30 + 0.05,
      `${s.accepted_rate_per_second}`,
    );
    // Every window rate after the first few seconds is near 0.5; the interval rate is 0 three
    // ticks out of four.
    const late = windowRates.slice(20);
    assert.ok(late.every((r) => r >= 0.4 && r <= 0.6), late.join(","));
    const zeros = rates.filter((r) => r === 0).length;
    assert.ok(zeros >= rates.length * 0.7, `${zeros} of ${rates.length} interval rates are 0`);
  } finally {
    await w.close();
  }
});

// The exposition format (0.0.4), checked strictly: one HELP and TYPE per family before its
// samples, samples of a family together, names as Prometheus allows, no series twice.
function assertValidExposition(text: string, cluster: string): Map<string, number> {
  assert.ok(text.endsWith("\n"), "ends in a newline");
  const families = new Map<string, { type: string; help: boolean; done: boolean }>();
  const series = new Map<string, number>();
  let current: string | undefined;
  const NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
  for (const line of text.slice(0, -1).split("\n")) {
    const head = /^# (HELP|TYPE) (\S+) (.*)$/.exec(line);
    if (head) {
      const [, kind, name, rest] = head;
      assert.match(name, NAME);
      if (kind === "HELP") {
        assert.ok(!families.has(name), `one HELP for ${name}`);
        families.set(name, { type: "", help: true, done: false });
        if (current !== undefined) families.get(current)!.done = true;
        current = name;
      } else {
        const f = families.get(name);
        assert.ok(f && f.type === "" && current === name, `TYPE of ${name} right after its HELP`);
        assert.match(rest, /^(counter|gauge|histogram)$/);
        f.type = rest;
        if (rest === "counter") assert.match(name, /_total$/, `counter ${name} ends in _total`);
      }
      continue;
    }
    const sample = /^([a-zA-Z_:][a-zA-Z0-9_:]*)\{([^}]*)\} (\S+)$/.exec(line);
    assert.ok(sample, `a labelled sample: ${line}`);
    const [, name, labels, value] = sample;
    const f = families.get(current!)!;
    const allowed = f.type === "histogram"
      ? [`${current}_bucket`, `${current}_sum`, `${current}_count`]
      : [current];
    assert.ok(allowed.includes(name), `${name} under the head of ${current}`);
    assert.ok(!f.done);
    assert.ok(labels.startsWith(`cluster="${cluster}"`), `${line} carries the cluster`);
    for (const pair of labels.split(",")) assert.match(pair, /^[a-zA-Z_][a-zA-Z0-9_]*="[^"]*"$/);
    assert.ok(!series.has(`${name}{${labels}}`), `${name}{${labels}} once`);
    const n = Number(value.replace(/^\+Inf$/, "Infinity"));
    assert.ok(!Number.isNaN(n) || value === "NaN", `${line}: a number`);
    series.set(`${name}{${labels}}`, n);
  }
  for (const [name, f] of families) {
    assert.ok(f.type !== "", `${name} has a TYPE`);
    assert.ok(!/_ms(_|$)/.test(name), `${name}: base units, not milliseconds`);
  }
  return series;
}

Deno.test("renderReverbMetrics() writes valid Prometheus text: a cluster label on every sample, times in seconds", async () => {
  const w = await world();
  try {
    await w.beat(0);
    await w.send("status", makeClaim({ agent_id: "a", hlc: hlcAt(w.clock.now()), beat_index: 0 }));
    await w.send("status", encoder.encode("{oops"));
    for (let n = 1; n <= 4; n++) await w.beat(n);
    await w.to(T0 + 4_200);
    const m = w.reverb.metrics();
    assert.equal(m.clusterId, "dev");
    const series = assertValidExposition(renderReverbMetrics(m), "dev");
    assert.equal(
      series.get('backbeat_reverb_claims_rejected_total{cluster="dev",reason="malformed"}'),
      1,
    );
    assert.equal(series.get('backbeat_reverb_reports_published_total{cluster="dev"}'), 1);
    // Milliseconds in the snapshot, seconds in the exposition.
    const timed = assertValidExposition(
      renderReverbMetrics({ ...m, tempoDriftMs: 40, reportLagMs: 12.5, reportLagMaxMs: 250 }),
      "dev",
    );
    assert.equal(timed.get('backbeat_reverb_tempo_drift_seconds{cluster="dev"}'), 0.04);
    assert.equal(timed.get('backbeat_reverb_report_lag_seconds{cluster="dev"}'), 0.0125);
    assert.equal(timed.get('backbeat_reverb_report_lag_max_seconds{cluster="dev"}'), 0.25);
    assert.ok(!series.has('backbeat_reverb_tempo_drift_ms{cluster="dev"}'), "renamed");
    const buckets = [...series].filter(([k]) =>
      k.startsWith("backbeat_reverb_verify_seconds_bucket")
    );
    assert.ok(buckets.length >= 2);
    assert.ok(buckets.at(-1)![0].endsWith(',le="+Inf"}'));
    for (let i = 1; i < buckets.length; i++) {
      assert.ok(buckets[i][1] >= buckets[i - 1][1], "cumulative");
    }
    // One family per reason list, all reasons shown (at 0 too).
    const reasons = [...series.keys()].filter((k) =>
      k.startsWith("backbeat_reverb_frames_rejected_total")
    );
    assert.equal(reasons.length, FRAME_REJECT_REASONS.length);
    // A second cluster's reverb: its own label.
    await using other = new Reverb({ clusterId: "prod-2" });
    assertValidExposition(renderReverbMetrics(other.metrics()), "prod-2");
  } finally {
    await w.close();
  }
});

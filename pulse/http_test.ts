import assert from "node:assert/strict";
import { InMemoryBus, ManualClock } from "../core/mod.ts";
import { Pulse, servePulseHttp } from "./mod.ts";

function setup(adminToken?: string) {
  const clock = new ManualClock(1_700_000_000_000);
  const bus = new InMemoryBus();
  const pulse = new Pulse({ clusterId: "c1", bus, clock, tempoBpm: 120 });
  const http = servePulseHttp(pulse, { hostname: "127.0.0.1", port: 0, adminToken });
  return {
    clock,
    pulse,
    http,
    async done() {
      await pulse.stop();
      await http.stop();
      await bus.close();
    },
  };
}

async function call(url: string, init?: RequestInit) {
  const res = await fetch(url, init);
  const text = await res.text();
  return { status: res.status, headers: res.headers, text };
}

function post(url: string, body: string, token?: string) {
  const headers: Record<string, string> = { "content-type": "application/json" };
  if (token) headers.authorization = `Bearer ${token}`;
  return call(url, { method: "POST", body, headers });
}

Deno.test("GET /healthz and /readyz report the role; a pulse not running is not ready", async () => {
  const t = setup();
  try {
    assert.equal(t.http.addr.port > 0, true);
    let r = await call(`${t.http.url}/healthz`);
    assert.equal(r.status, 200);
    assert.equal(JSON.parse(r.text).status, "ok");
    r = await call(`${t.http.url}/readyz`);
    assert.equal(r.status, 503);
    assert.deepEqual(JSON.parse(r.text), { ready: false, role: "stopped", last_beat_index: -1 });
    await t.pulse.start();
    r = await call(`${t.http.url}/readyz`);
    assert.equal(r.status, 200);
    assert.equal(JSON.parse(r.text).role, "leader");
    r = await call(`${t.http.url}/healthz`);
    assert.equal(JSON.parse(r.text).role, "leader");
    r = await call(`${t.http.url}/nope`);
    assert.equal(r.status, 404);
    r = await call(`${t.http.url}/healthz`, { method: "DELETE" });
    assert.equal(r.status, 405);
  } finally {
    await t.done();
  }
});

Deno.test("GET /metrics serves the Prometheus text format with the pulse's counters", async () => {
  const t = setup();
  try {
    await t.pulse.start();
    await t.clock.advance(10 + 3 * 500);
    await t.pulse.settled();
    const r = await call(`${t.http.url}/metrics`);
    assert.equal(r.status, 200);
    assert.equal(r.headers.get("content-type"), "text/plain; version=0.0.4; charset=utf-8");
    // Every sample carries the cluster label; the lookups name the others.
    assert.match(r.text, /^backbeat_pulse_leader\{cluster="[^"]+"\} 1$/m);
    const lines = r.text.split("\n")
      .map((l) => l.replace(/cluster="[^"]*",?/, "").replace(/,\}/, "}").replace("{}", ""));
    const value = (name: string) => {
      const line = lines.find((l) => l.startsWith(name + " "));
      assert.ok(line, `${name} missing`);
      return Number(line.slice(name.length + 1));
    };
    assert.equal(value("backbeat_pulse_beats_published_total"), 4);
    assert.equal(value("backbeat_pulse_leader"), 1);
    assert.equal(value("backbeat_pulse_takeovers_total"), 1);
    assert.equal(value("backbeat_pulse_tempo_bpm"), 120);
    assert.equal(value('backbeat_pulse_publish_lateness_seconds_bucket{le="+Inf"}'), 4);
    assert.equal(value('backbeat_pulse_publish_lateness_seconds_bucket{le="0.000001"}'), 4);
    assert.equal(value("backbeat_pulse_publish_lateness_seconds_count"), 4);
    assert.ok(lines.includes("# TYPE backbeat_pulse_publish_lateness_seconds histogram"));
    assert.ok(lines.includes("# TYPE backbeat_pulse_beats_published_total counter"));
    assert.equal(value('backbeat_pulse_control_rejected_total{reason="unauthenticated"}'), 0);
    assert.equal(value('backbeat_pulse_frames_rejected_total{reason="unsigned"}'), 0);
    assert.equal(value('backbeat_pulse_http_rejected_total{reason="unauthorized"}'), 0);
    assert.ok(value("backbeat_pulse_timeline_epoch") >= 1_700_000_000_000);
    // Every sample line is `name{labels} value`, and each family is headed once.
    for (const l of lines.filter((l) => l && !l.startsWith("#"))) {
      assert.match(l, /^[a-z_]+(\{(le|reason)="[^"]+"\})? -?[0-9.e+-]+$/);
    }
    const types = lines.filter((l) => l.startsWith("# TYPE "));
    assert.equal(new Set(types).size, types.length);
  } finally {
    await t.done();
  }
});

Deno.test("POST /tempo needs the bearer token, rejects bad requests with 400, applies good ones", async () => {
  const t = setup("s3cret");
  try {
    await t.pulse.start();
    const url = `${t.http.url}/tempo`;
    let r = await post(url, '{"tempo_bpm":60}');
    assert.equal(r.status, 401);
    assert.equal(r.headers.get("www-authenticate"), 'Bearer realm="backbeat-pulse"');
    r = await post(url, '{"tempo_bpm":60}', "wrong");
    assert.equal(r.status, 401);
    const bad: [string, RegExp][] = [
      ["{nope", /not JSON/],
      ["[]", /expected a JSON object/],
      ["{}", /tempo_bpm field is required/],
      ['{"tempo_bpm":"60"}', /tempo_bpm must be a number from 0\.1 to 6000/],
      ['{"tempo_bpm":0.01}', /tempo_bpm must be a number from 0\.1 to 6000/],
      ['{"tempo_bpm":6001}', /tempo_bpm must be a number from 0\.1 to 6000/],
    ];
    for (const [body, message] of bad) {
      r = await post(url, body, "s3cret");
      assert.equal(r.status, 400, body);
      assert.match(JSON.parse(r.text).error, message);
    }
    r = await post(url, "x".repeat(5000), "s3cret");
    assert.equal(r.status, 413);
    assert.equal(t.pulse.timeline.segments.length, 1);
    r = await call(url, { method: "DELETE", headers: { authorization: "Bearer s3cret" } });
    assert.equal(r.status, 405);
    assert.equal(r.headers.get("allow"), "GET, POST");
    // GET /tempo needs no token: the tempo is no secret.
    r = await call(url);
    assert.equal(r.status, 200);
    const before = JSON.parse(r.text);
    assert.equal(before.tempo_bpm, 120);
    assert.equal(before.next_tempo_bpm, null);
    assert.equal(before.effective_beat, null);
    assert.equal(before.next_downbeat, 0);
    assert.equal(before.next_downbeat_at, new Date(t.pulse.timeline.dueAt(0)).toISOString());
    assert.equal(before.epoch, t.pulse.epoch);
    assert.equal(before.role, "leader");
    r = await post(url, '{"tempo_bpm":60}', "s3cret");
    assert.equal(r.status, 200);
    assert.deepEqual(JSON.parse(r.text), { tempo_bpm: 60, effective_beat: 4, forwarded: false });
    const after = JSON.parse((await call(url)).text);
    assert.equal(after.tempo_bpm, 120);
    assert.equal(after.next_tempo_bpm, 60);
    assert.equal(after.effective_beat, 4);
    assert.equal(t.pulse.timeline.tempoAt(4), 60);
    // Every refusal above is counted by reason; the accepted request is not.
    const metrics = (await call(`${t.http.url}/metrics`)).text;
    const rejected = (reason: string) =>
      Number(
        new RegExp(
          `^backbeat_pulse_http_rejected_total\\{cluster="[^"]+",reason="${reason}"\\} (\\d+)$`,
          "m",
        )
          .exec(metrics)?.[1],
      );
    assert.equal(rejected("unauthorized"), 2);
    assert.equal(rejected("invalid"), 6);
    assert.equal(rejected("too_large"), 1);
    assert.equal(rejected("method_not_allowed"), 1);
    assert.equal(rejected("unavailable"), 0);
  } finally {
    await t.done();
  }
});

Deno.test("POST /tempo without an admin token configured is open; a stopped pulse answers 503", async () => {
  const t = setup();
  try {
    const url = `${t.http.url}/tempo`;
    let r = await post(url, '{"tempo_bpm":30}');
    assert.equal(r.status, 503);
    await t.pulse.start();
    r = await post(url, '{"tempo_bpm":30}');
    assert.equal(r.status, 200);
    const metrics = (await call(`${t.http.url}/metrics`)).text;
    assert.match(
      metrics,
      /^backbeat_pulse_http_rejected_total\{cluster="[^"]+",reason="unavailable"\} 1$/m,
    );
  } finally {
    await t.done();
  }
});

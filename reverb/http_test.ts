import assert from "node:assert/strict";
import { HybridLogicalClock, InMemoryBus, ManualClock, Timeline } from "../core/mod.ts";
import { makeClaim } from "../tests/reverb_helpers.ts";
import { until } from "../tests/until.ts";
import { MAX_SSE_CLIENTS_PER_ADDRESS, serveReverbHttp, StreamSlots } from "./_http.ts";
import { Reverb } from "./_reverb.ts";

const encoder = new TextEncoder();

// Drives a live reverb at 600 BPM (100 ms beats) on the embedded bus with real timers.
async function live(): Promise<{ reverb: Reverb; base: string; stop(): Promise<void> }> {
  const bus = new InMemoryBus();
  const reverb = new Reverb({
    clusterId: "web",
    bus,
    graceMs: 30,
    summaryIntervalMs: 50,
  });
  await reverb.start();
  const http = serveReverbHttp(reverb, { hostname: "127.0.0.1", port: 0 });
  const timeline = new Timeline({ originTime: Date.now() + 20, tempoBpm: 600 });
  const hlc = new HybridLogicalClock();
  let beat = 0;
  let timer: ReturnType<typeof setTimeout> | undefined;
  const tick = async () => {
    const frame = await timeline.frame("web", beat, hlc.now());
    bus.publish("backbeat.web.beat", encoder.encode(JSON.stringify(frame)));
    bus.publish(
      "backbeat.web.status",
      encoder.encode(
        JSON.stringify(makeClaim({ agent_id: "w1", beat_index: beat, hlc: hlc.now() })),
      ),
    );
    beat++;
    timer = setTimeout(tick, Math.max(0, timeline.dueAt(beat) - Date.now()));
  };
  timer = setTimeout(tick, Math.max(0, timeline.dueAt(0) - Date.now()));
  return {
    reverb,
    base: http.url,
    async stop() {
      clearTimeout(timer);
      await reverb.stop();
      await http.stop();
      await bus.close();
    },
  };
}

Deno.test("reverb HTTP serves health, readiness, metrics and the JSON API", async () => {
  const w = await live();
  try {
    await until(() => w.reverb.reports.length >= 1, { what: "a first report" });
    const health = await fetch(`${w.base}/healthz`);
    assert.equal(health.status, 200);
    assert.equal((await health.json()).status, "ok");
    const ready = await fetch(`${w.base}/readyz`);
    assert.deepEqual(await ready.json(), { ready: true, reasons: [] });
    const metrics = await fetch(`${w.base}/metrics`);
    assert.match(metrics.headers.get("content-type")!, /^text\/plain; version=0\.0\.4/);
    const text = await metrics.text();
    for (
      const name of [
        "backbeat_reverb_claims_accepted_total",
        'backbeat_reverb_claims_rejected_total{cluster="web",reason="bad_signature"}',
        "backbeat_reverb_verify_seconds_count",
        "backbeat_reverb_reports_published_total",
        "backbeat_reverb_agents_tracked",
      ]
    ) assert.ok(text.includes(name), name);
    const bars = await (await fetch(`${w.base}/api/v1/bars?limit=1`)).json();
    assert.equal(bars.count, 1);
    assert.equal(bars.reports[0].window_id, w.reverb.reports.at(-1)!.window_id, "newest first");
    const agents = await (await fetch(`${w.base}/api/v1/agents`)).json();
    assert.equal(agents.total, 1);
    assert.equal(agents.agents[0].agent_id, "w1");
    const status = await (await fetch(`${w.base}/api/v1/status`)).json();
    assert.equal(status.cluster_id, "web");
    assert.equal(status.tempo_bpm, 600);
    const bad = await fetch(`${w.base}/api/v1/bars?limit=zero`);
    assert.equal(bad.status, 400);
    await bad.body?.cancel();
    const missing = await fetch(`${w.base}/nope`);
    assert.equal(missing.status, 404);
    await missing.body?.cancel();
    const post = await fetch(`${w.base}/api/v1/bars`, { method: "POST", body: "{}" });
    assert.equal(post.status, 405);
    await post.body?.cancel();
  } finally {
    await w.stop();
  }
});

Deno.test("reverb HTTP serves the dashboard files with a strict content security policy", async () => {
  const w = await live();
  try {
    const page = await fetch(`${w.base}/`);
    assert.equal(page.status, 200);
    assert.match(page.headers.get("content-security-policy")!, /script-src 'self'/);
    const html = await page.text();
    assert.match(html, /<script type="module" src="app.js"><\/script>/);
    for (const [path, type] of [["/style.css", "text/css"], ["/app.js", "text/javascript"]]) {
      const r = await fetch(`${w.base}${path}`);
      assert.equal(r.status, 200);
      assert.ok(r.headers.get("content-type")!.startsWith(type));
      assert.ok((await r.text()).length > 1000);
    }
  } finally {
    await w.stop();
  }
});

Deno.test("reverb /events streams beats, status and reports, and ends when the server shuts down", async () => {
  const w = await live();
  let reader: ReadableStreamDefaultReader<string> | undefined;
  try {
    const res = await fetch(`${w.base}/events`);
    assert.equal(res.headers.get("content-type"), "text/event-stream; charset=utf-8");
    reader = res.body!.pipeThrough(new TextDecoderStream()).getReader();
    const seen = new Set<string>();
    let buffer = "";
    let beats: number[] = [];
    while (!(seen.has("beat") && seen.has("status") && seen.has("report"))) {
      const { value, done } = await reader.read();
      assert.equal(done, false);
      buffer += value;
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const event = /^event: (\w+)$/m.exec(block)?.[1];
        const data = /^data: (.*)$/m.exec(block)?.[1];
        if (!event || !data) continue;
        seen.add(event);
        if (event === "beat") beats.push(JSON.parse(data).beat_index);
        if (event === "report") assert.equal(JSON.parse(data).type, "backbeat.barreport.v1");
      }
    }
    beats = beats.slice(-3);
    assert.ok(beats.every((b, i) => i === 0 || b === beats[i - 1] + 1), "beats arrive in order");
    await w.stop();
    // Shutting down ends the stream: the reader sees the end instead of hanging.
    for (;;) {
      const { done } = await reader.read();
      if (done) break;
    }
  } finally {
    await reader?.cancel().catch(() => {});
    await w.stop();
  }
});

Deno.test("reverb readiness turns false while stopping and the HTTP server is closed after shutdown()", async () => {
  const bus = new InMemoryBus();
  const reverb = new Reverb({ clusterId: "web", bus });
  await reverb.start();
  const http = serveReverbHttp(reverb, { port: 0 });
  const base = http.url;
  assert.equal(reverb.readiness().ready, true);
  const stopped = reverb.stop();
  assert.deepEqual(reverb.readiness(), { ready: false, reasons: ["stopping"] });
  await stopped;
  const res = await fetch(`${base}/readyz`);
  assert.equal(res.status, 503, "the server outlives reverb until shut down, answering not ready");
  assert.deepEqual(await res.json(), { ready: false, reasons: ["stopping"] });
  await http.stop();
  await assert.rejects(fetch(`${base}/readyz`), "the server is closed after shutdown()");
  await bus.close();
});

Deno.test("serveReverbHttp() sends event-stream keepalives on its clock and refuses a taken port", async () => {
  await using bus = new InMemoryBus();
  await using reverb = new Reverb({ clusterId: "ka", bus, summaryIntervalMs: 60_000 });
  await reverb.start();
  const clock = new ManualClock(0);
  await using http = serveReverbHttp(reverb, { port: 0, clock });
  const res = await fetch(`${http.url}/events`);
  const reader = res.body!.pipeThrough(new TextDecoderStream()).getReader();
  try {
    let text = (await reader.read()).value ?? "";
    assert.match(text, /^retry: 2000\nevent: status\n/);
    await clock.advance(14_999);
    await clock.advance(1);
    while (!text.includes(": keepalive\n\n")) {
      const { value, done } = await reader.read();
      assert.equal(done, false, "the keepalive arrives before the stream ends");
      text += value;
    }
    assert.equal(clock.pending, 1, "the next keepalive is armed");
    assert.throws(
      () => serveReverbHttp(reverb, { hostname: "127.0.0.1", port: http.addr.port }),
      (e: Error) =>
        e instanceof Deno.errors.AddrInUse &&
        e.message === `Cannot listen on 127.0.0.1:${http.addr.port}: address in use`,
    );
    const ready = await fetch(`${http.url}/readyz`);
    assert.equal(ready.status, 200, "the first server still serves");
    await ready.body?.cancel();
  } finally {
    await reader.cancel().catch(() => {});
  }
  await http.stop();
  assert.equal(clock.pending, 0, "shutdown cancels the keepalive");
});

// Opens an event stream and reads its first event (the status), so the server counts it.
async function openStream(url: string): Promise<ReadableStreamDefaultReader<string>> {
  const res = await fetch(url);
  assert.equal(res.status, 200);
  const reader = res.body!.pipeThrough(new TextDecoderStream()).getReader();
  const first = await reader.read();
  assert.match(first.value ?? "", /event: status/);
  return reader;
}

async function refusedWith(url: string, status: number): Promise<string> {
  const res = await fetch(url);
  assert.equal(res.status, status);
  assert.equal(res.headers.get("retry-after"), "10");
  assert.match(res.headers.get("content-type")!, /^application\/json/);
  return (await res.json()).error;
}

Deno.test("serveReverbHttp() caps event streams per client address (429) and in all (503), and frees a slot when a stream ends", async () => {
  await using bus = new InMemoryBus();
  await using reverb = new Reverb({ clusterId: "caps", bus, summaryIntervalMs: 60_000 });
  await reverb.start();
  const open: ReadableStreamDefaultReader<string>[] = [];
  try {
    // The per-address share: the ninth stream from 127.0.0.1 is refused with 429.
    await using http = serveReverbHttp(reverb, { hostname: "127.0.0.1", port: 0 });
    const url = `${http.url}/events`;
    for (let i = 0; i < MAX_SSE_CLIENTS_PER_ADDRESS; i++) open.push(await openStream(url));
    assert.equal(
      await refusedWith(url, 429),
      `too many event streams from 127.0.0.1 (at most ${MAX_SSE_CLIENTS_PER_ADDRESS} per client address)`,
    );
    // A stream that ends frees its slot.
    await open.shift()!.cancel();
    await until(async () => {
      const res = await fetch(url);
      if (res.status !== 200) {
        await res.body?.cancel();
        return false;
      }
      open.push(res.body!.pipeThrough(new TextDecoderStream()).getReader());
      return true;
    }, { what: "the freed slot to be given again" });
    // Other routes are never capped.
    const ready = await fetch(`${http.url}/readyz`);
    assert.equal(ready.status, 200);
    await ready.body?.cancel();
    for (const r of open.splice(0)) await r.cancel();

    // The total: with room for 2 in all, the third is refused with 503.
    await using small = serveReverbHttp(reverb, {
      hostname: "127.0.0.1",
      port: 0,
      maxEventStreams: 2,
    });
    for (let i = 0; i < 2; i++) open.push(await openStream(`${small.url}/events`));
    assert.equal(
      await refusedWith(`${small.url}/events`, 503),
      "too many event streams (at most 2): try again later",
    );
  } finally {
    for (const r of open) await r.cancel().catch(() => {});
  }
  assert.throws(
    () => serveReverbHttp(reverb, { port: 0, maxEventStreamsPerAddress: 0 }),
    RangeError,
  );
  assert.throws(() => serveReverbHttp(reverb, { port: 0, maxEventStreams: 1.5 }), RangeError);
});

Deno.test("StreamSlots: one address's share does not hold back another's; the total caps both", () => {
  const slots = new StreamSlots(5, 3);
  for (let i = 0; i < 3; i++) assert.equal(slots.take("10.0.0.1"), "ok");
  assert.equal(slots.take("10.0.0.1"), "address_full");
  assert.equal(slots.take("10.0.0.2"), "ok");
  assert.equal(slots.take("10.0.0.2"), "ok");
  // Full in all: an address within its share is told the server is full...
  assert.equal(slots.take("10.0.0.3"), "full");
  // ...and one over its share is told that, first.
  assert.equal(slots.take("10.0.0.1"), "address_full");
  assert.equal(slots.total, 5);
  slots.release("10.0.0.1");
  assert.equal(slots.take("10.0.0.3"), "ok");
  // Releasing an address that holds nothing changes nothing.
  slots.release("10.9.9.9");
  assert.equal(slots.total, 5);
  for (const a of ["10.0.0.1", "10.0.0.1", "10.0.0.2", "10.0.0.2", "10.0.0.3"]) slots.release(a);
  assert.equal(slots.total, 0);
  for (let i = 0; i < 3; i++) assert.equal(slots.take("10.0.0.2"), "ok");
});

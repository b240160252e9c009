// The dashboard in a real headless Chromium against a live reverb (real nats-server, pulse at
// 240 BPM, scripted agents): live values move, and what the page shows matches /api/v1/*; the
// counters are the server's (claims rate over its sliding window, reports published); a page
// shows a loading state until its first data; a page refused an event stream (the per-address
// cap) says so and reconnects once a slot frees up.
// Takes a screenshot of the live page; with BACKBEAT_UPDATE_SCREENSHOT=1 it replaces
// docs/dashboard.png (so ordinary runs leave the tree clean).

import assert from "node:assert/strict";
import { chromium } from "playwright-core";
import {
  type BarReport,
  type BeatFrame,
  type ClaimState,
  generateSigningKeyPair,
  HybridLogicalClock,
} from "../core/mod.ts";
import { connectNatsBus, type NatsBusLike } from "../nats/mod.ts";
import { Pulse } from "../pulse/mod.ts";
import { Reverb, type ReverbHttpServer, serveReverbHttp } from "../reverb/mod.ts";
import type { Page } from "playwright-core";
import { startNatsServer } from "./nats_server.ts";
import { makeClaim, signedMessage } from "./reverb_helpers.ts";
import { until } from "./until.ts";

const CHROMIUM_ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];
const encoder = new TextEncoder();
const decoder = new TextDecoder();

// A small fleet with every state a dashboard should show.
function agentsScript(bus: NatsBusLike, cluster: string, signer: CryptoKey): () => void {
  const hlc = new HybridLogicalClock();
  const status = `backbeat.${cluster}.status`;
  const send = (claim: ReturnType<typeof makeClaim>) =>
    bus.publish(status, encoder.encode(JSON.stringify(claim)));
  let n = 0;
  const sub = bus.subscribe(`backbeat.${cluster}.beat`, async (m) => {
    const f: BeatFrame = JSON.parse(decoder.decode(m.data));
    n++;
    const pos = f.beat_index % 4;
    for (let i = 0; i < 8; i++) {
      const progress = Math.min(1, ((n + i * 5) % 40) / 40);
      const state: ClaimState = pos === 3 ? "reviewing" : pos === 0 ? "planning" : "executing";
      send(makeClaim({
        agent_id: `indexer-${i}`,
        task_id: `batch-${Math.floor(f.beat_index / 4)}`,
        beat_index: f.beat_index,
        state,
        progress,
        beats_left: 3 - pos,
        hlc: hlc.now(),
        notes: `batch ${n % 200}/200`,
      }));
    }
    send(
      makeClaim({
        agent_id: "ingest-failed",
        beat_index: f.beat_index,
        state: "failed",
        progress: 0.4,
        hlc: hlc.now(),
        notes: "upstream 503",
      }),
    );
    send(
      makeClaim({
        agent_id: "ingest-blocked",
        beat_index: f.beat_index,
        state: "blocked",
        progress: 0.7,
        hlc: hlc.now(),
      }),
    );
    send(
      makeClaim({
        agent_id: "helper-1",
        beat_index: f.beat_index,
        state: pos === 3 ? "completed" : "helping",
        progress: pos / 3,
        hlc: hlc.now(),
      }),
    );
    const signed = await signedMessage(
      makeClaim({
        agent_id: "signer",
        beat_index: f.beat_index,
        state: "executing",
        progress: 0.5,
        hlc: hlc.now(),
      }),
      signer,
      "signer-2030",
      status,
    );
    bus.publish(signed.subject, signed.data, { headers: signed.headers });
    if (f.beat_index % 3 === 0) bus.publish(status, encoder.encode("{garbage"));
    if (f.beat_index % 5 === 0) {
      // Claims to be "signer" but is signed by nobody it trusts.
      const forged = await signedMessage(
        makeClaim({ agent_id: "signer", beat_index: f.beat_index, hlc: hlc.now() }),
        signer,
        "someone-else",
        status,
      );
      bus.publish(forged.subject, forged.data, { headers: forged.headers });
    }
    // An agent that stops talking after its first beats.
    if (n < 3) {
      send(makeClaim({ agent_id: "flaky-probe", beat_index: f.beat_index, hlc: hlc.now() }));
    }
  });
  return () => sub.unsubscribe();
}

Deno.test("the reverb dashboard shows live values that match /api/v1/* (headless Chromium)", async () => {
  await using server = await startNatsServer();
  const cluster = "chorus-prod";
  const signer = await generateSigningKeyPair();
  const dir = await Deno.makeTempDir({ prefix: "reverb-browser-" });
  const keyring = `${dir}/keyring.json`;
  await Deno.writeTextFile(
    keyring,
    JSON.stringify({ signer: [{ key_id: "signer-2030", public_key: signer.publicKey }] }),
  );
  const reverbBus = await connectNatsBus({ servers: server.url });
  const pulseBus = await connectNatsBus({ servers: server.url });
  const agentBus = await connectNatsBus({ servers: server.url });
  const pulse = new Pulse({ clusterId: cluster, bus: pulseBus, tempoBpm: 240 });
  const reverb = new Reverb({
    clusterId: cluster,
    bus: reverbBus,
    keyring,
    graceMs: 100,
    summaryIntervalMs: 250,
    id: "reverb-a",
  });
  let http: ReverbHttpServer | undefined;
  const stopAgents = agentsScript(agentBus, cluster, signer.keyPair.privateKey);
  const browser = await chromium.launch({
    executablePath: "/usr/bin/chromium",
    args: CHROMIUM_ARGS,
  });
  try {
    await reverb.start();
    http = serveReverbHttp(reverb, { hostname: "127.0.0.1", port: 0 });
    await pulse.start();
    const base = http.url;
    const api = async (path: string) => {
      const r = await fetch(`${base}${path}`);
      return await r.json();
    };
    await until(() => reverb.reports.length >= 3, { what: "three reports", timeoutMs: 10_000 });

    const page = await browser.newPage({ viewport: { width: 1440, height: 900 } });
    const errors: string[] = [];
    page.on("pageerror", (e) => errors.push(String(e)));
    page.on("console", (m) => {
      if (m.type() === "error") errors.push(m.text());
    });
    await page.goto(base);

    // The beat moves, and the phase indicator with it.
    await until(
      async () => /^\d[\d,]*$/.test((await page.textContent("#beat-index")) ?? ""),
      { what: "a beat on the page" },
    );
    const beatOf = async () => Number((await page.textContent("#beat-index"))!.replaceAll(",", ""));
    const first = await beatOf();
    const phases = new Set<string>();
    for (let i = 0; i < 12; i++) {
      phases.add((await page.textContent("#phase"))!);
      await page.waitForTimeout(100);
    }
    const later = await beatOf();
    assert.ok(later > first, `beat index moves: ${first} -> ${later}`);
    assert.ok(phases.size >= 2, `phase indicator moves: ${[...phases].join(", ")}`);
    assert.equal(await page.locator("#phase-cells .cell").count(), 4);
    assert.equal(await page.locator("#phase-cells .cell.on").count(), 1);
    assert.equal(await page.textContent("#tempo"), "240");
    assert.equal(await page.textContent("#cluster"), cluster);
    assert.equal(await page.textContent("#role"), "ACTIVE");

    // The latest report on the page is the latest in the API, the chart has a bar and the
    // table a row for each report (the page may be a report behind: wait until it agrees).
    await until(
      async () => {
        const bars = await api("/api/v1/bars?limit=60");
        const shown = await page.getAttribute("#last-window", "data-window");
        const chartBars = await page.locator("#chart svg g").count();
        const rows = await page.locator("#reports tbody tr[data-window]").count();
        const rowIds = await page.locator("#reports tbody tr[data-window]").evaluateAll((trs) =>
          trs.map((tr) => tr.getAttribute("data-window"))
        );
        return shown === bars.reports[0].window_id && chartBars === bars.count &&
          rows === Math.min(30, bars.count) &&
          JSON.stringify(rowIds) ===
            JSON.stringify(bars.reports.slice(0, 30).map((r: BarReport) => r.window_id));
      },
      { what: "the dashboard's reports to match /api/v1/bars", timeoutMs: 5_000 },
    );
    assert.ok(await page.locator("#chart svg g").count() >= 3);

    // The agents table holds exactly the agents of /api/v1/agents, in their states.
    await until(
      async () => {
        const agents = (await api("/api/v1/agents")).agents as Array<
          { agent_id: string; state: string }
        >;
        const shown = await page.$$eval(
          "#agents tbody tr",
          (trs) =>
            trs.map((tr) => `${tr.getAttribute("data-agent")}=${tr.getAttribute("data-state")}`)
              .sort(),
        );
        return JSON.stringify(shown) === JSON.stringify(
          agents.map((a) => `${a.agent_id}=${a.state}`).sort(),
        );
      },
      { what: "the agents table to match /api/v1/agents", timeoutMs: 5_000 },
    );
    assert.equal(
      await page.getAttribute('#agents tr[data-agent="ingest-failed"]', "data-state"),
      "failed",
    );
    const pill = await page.textContent('#agents tr[data-agent="flaky-probe"] .state');
    assert.match(pill!, /^silent \d+$/);
    const progress = await page.getAttribute(
      '#agents tr[data-agent="ingest-blocked"] .prog',
      "data-progress",
    );
    assert.equal(progress, "0.7");

    // Rejected claims by reason match the status counters.
    await until(
      async () => {
        const s = await api("/api/v1/status");
        const malformed = await page.getAttribute(
          '#rejects tr[data-reason="malformed"] td[data-count]',
          "data-count",
        );
        const unknown = await page.getAttribute(
          '#rejects tr[data-reason="unknown_key"] td[data-count]',
          "data-count",
        );
        return Number(malformed) === s.claims.rejected.malformed &&
          Number(unknown) === s.claims.rejected.unknown_key &&
          s.claims.rejected.malformed > 0 && s.claims.rejected.unknown_key > 0;
      },
      { what: "the rejected table to match /api/v1/status", timeoutMs: 5_000 },
    );

    // The counters are the server's. Claims per second: reverb's sliding-window rate (at 240 BPM
    // the agents send 12 accepted claims a beat, so tens per second), shown with one decimal.
    await until(
      async () => {
        const c = (await api("/api/v1/status")).claims;
        const shown = Number(await page.getAttribute("#claims-rate", "data-value"));
        const text = (await page.textContent("#claims-rate")) ?? "";
        return shown > 10 && Math.abs(shown - c.accepted_rate_per_second) <= shown * 0.1 &&
          text === shown.toFixed(1) && c.rate_window_seconds > 0;
      },
      { what: "the claims rate tile to show the server's windowed rate", timeoutMs: 5_000 },
    );
    assert.match((await page.textContent("#claims-window"))!, /^· last \d+ s$/);
    // Reports: what reverb published, not what the page keeps.
    await until(
      async () => {
        const s = await api("/api/v1/status");
        const shown = Number(await page.getAttribute("#reports-published", "data-value"));
        return shown === s.reports_published && shown >= 3;
      },
      { what: "the reports tile to show reports_published", timeoutMs: 5_000 },
    );
    assert.equal(await page.locator("body.loading").count(), 0, "loaded");
    assert.equal(await page.isVisible("#loading"), false);

    // The screenshot in the docs shows the healthy, live state.
    const png = await page.screenshot({ fullPage: true });
    assert.deepEqual([...png.subarray(1, 4)], [0x50, 0x4e, 0x47], "a PNG");
    assert.ok(png.length > 20_000, `a real picture (${png.length} bytes)`);
    if (Deno.env.get("BACKBEAT_UPDATE_SCREENSHOT") === "1") {
      await Deno.writeFile(new URL("../docs/dashboard.png", import.meta.url), png);
    }

    await checkLoadingState(await browser.newPage(), base);
    await checkRefusedStream(await browser.newPage(), base);

    // A warning appears when the beat stops.
    await pulse.stop();
    await until(
      async () => ((await page.textContent("#warnings")) ?? "").includes("leaderless"),
      { what: "the leaderless warning" },
    );
    const warning = await page.textContent("#warnings");
    assert.match(warning!, /pulse leaderless or unreachable/);
    assert.deepEqual(errors, [], "no script errors on the page");

    await page.close();
  } finally {
    await browser.close();
    stopAgents();
    await pulse.stop();
    await reverb.stop();
    await http?.stop();
    await Promise.all([reverbBus.close(), pulseBus.close(), agentBus.close()]);
    await Deno.remove(dir, { recursive: true });
  }
});

// Before its first data a page says it is loading (not dashes that read as zeros), then shows
// the data once it arrives. The data is held back by the page's own routes; its event stream
// never reaches the server (aborted), so this page holds no event-stream slot afterwards.
async function checkLoadingState(page: Page, base: string): Promise<void> {
  const gate = Promise.withResolvers<void>();
  try {
    await page.route("**/api/v1/**", async (route) => {
      await gate.promise;
      await route.continue().catch(() => {});
    });
    await page.route("**/events", async (route) => {
      await gate.promise;
      await route.abort().catch(() => {});
    });
    await page.goto(base, { waitUntil: "domcontentloaded" });
    await until(async () => await page.isVisible("#loading"), { what: "the loading banner" });
    assert.equal(await page.locator("body.loading").count(), 1);
    assert.match((await page.textContent("#loading"))!, /connecting to reverb/);
    assert.equal(await page.textContent("#claims-rate"), "–");
    assert.equal((await page.textContent("#agents tbody tr.placeholder"))?.trim(), "loading…");
    assert.equal((await page.textContent("#reports tbody tr.placeholder"))?.trim(), "loading…");
    gate.resolve();
    await until(
      async () =>
        await page.locator("body.loading").count() === 0 &&
        /^\d/.test((await page.textContent("#claims-rate")) ?? "") &&
        await page.locator("#agents tbody tr[data-agent]").count() > 0,
      { what: "the page to leave its loading state", timeoutMs: 5_000 },
    );
    assert.equal(await page.isVisible("#loading"), false);
  } finally {
    gate.resolve();
    await page.close();
  }
}

// Fills this address's share of event streams from here, so the page's own stream is refused
// (429): the page says its stream is disconnected and, once a slot frees, reconnects by itself.
async function checkRefusedStream(page: Page, base: string): Promise<void> {
  const held: ReadableStreamDefaultReader<Uint8Array>[] = [];
  try {
    // The first page holds one stream already (and only it: the loading page's never reached
    // the server); take the rest (the cap is 8 per address).
    for (let i = 0; i < 8; i++) {
      const res = await fetch(`${base}/events`);
      if (res.status === 429) {
        await res.body?.cancel();
        break;
      }
      assert.equal(res.status, 200);
      const reader = res.body!.getReader();
      await reader.read();
      held.push(reader);
    }
    assert.equal(held.length, 7, "the first page's stream and these 7 fill the share of 8");
    await page.goto(base);
    await until(
      async () =>
        ((await page.textContent("#warnings")) ?? "").includes("event stream disconnected") &&
        await page.getAttribute("#link", "class") === "dot off",
      { what: "the refused page to say its stream is disconnected", timeoutMs: 5_000 },
    );
    // Still loaded from /api/v1/*: the status came without the stream.
    assert.equal(await page.locator("body.loading").count(), 0);
    assert.match((await page.textContent("#warnings"))!, /retrying in \d+ s/);
    await held.pop()!.cancel();
    // The page backs off 2 s after its first refusal: it is back well within 10 s.
    await until(
      async () => await page.getAttribute("#link", "class") === "dot on",
      { what: "the page to reconnect once a slot freed up", timeoutMs: 10_000 },
    );
    await until(
      async () => !((await page.textContent("#warnings")) ?? "").includes("disconnected"),
      { what: "the disconnected warning to go", timeoutMs: 5_000 },
    );
  } finally {
    for (const r of held) await r.cancel().catch(() => {});
    await page.close();
  }
}

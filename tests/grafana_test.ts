// Every metric the Grafana dashboard queries is exposed by a running pulse or reverb, with the
// cluster label the dashboard filters on.
import assert from "node:assert/strict";
import { InMemoryBus } from "../core/mod.ts";
import { Pulse, servePulseHttp } from "../pulse/mod.ts";
import { Reverb, serveReverbHttp } from "../reverb/mod.ts";

const DASHBOARD = new URL("../deploy/grafana-dashboard.json", import.meta.url);

function queried(dashboard: { panels: { targets: { expr: string }[] }[]; templating: unknown }) {
  const names = new Set<string>();
  const text = JSON.stringify(dashboard);
  for (const m of text.matchAll(/backbeat_[a-z_]+/g)) names.add(m[0]);
  return names;
}

// Families with a cluster label, from the exposition text (histograms by their base name).
function exposed(text: string): Map<string, boolean> {
  const out = new Map<string, boolean>();
  for (const line of text.split("\n")) {
    if (line.startsWith("#") || line.trim() === "") continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s/.exec(line);
    if (!m) continue;
    const labelled = (m[2] ?? "").includes('cluster="');
    for (const name of [m[1], m[1].replace(/_(bucket|sum|count)$/, "")]) {
      out.set(name, (out.get(name) ?? false) || labelled);
    }
  }
  return out;
}

Deno.test("deploy/grafana-dashboard.json queries only metrics that pulse and reverb expose", async () => {
  const dashboard = JSON.parse(await Deno.readTextFile(DASHBOARD));
  const bus = new InMemoryBus();
  const pulse = new Pulse({ clusterId: "grafana", bus, tempoBpm: 600 });
  const reverb = new Reverb({ clusterId: "grafana", bus });
  await reverb.start();
  await pulse.start();
  await using pulseHttp = servePulseHttp(pulse, { hostname: "127.0.0.1", port: 0 });
  await using reverbHttp = serveReverbHttp(reverb, { hostname: "127.0.0.1", port: 0 });
  try {
    await new Promise((r) => setTimeout(r, 300));
    const texts = await Promise.all(
      [pulseHttp.url, reverbHttp.url].map(async (u) => (await fetch(`${u}/metrics`)).text()),
    );
    const families = exposed(texts.join("\n"));
    const wanted = queried(dashboard);
    assert.ok(wanted.size >= 15, `the dashboard queries ${wanted.size} metrics`);
    for (const name of wanted) {
      assert.ok(families.has(name), `${name} is queried but not exposed`);
      assert.ok(families.get(name), `${name} has no cluster label`);
    }
  } finally {
    await pulse.stop();
    await reverb.stop();
    await bus.close();
  }
});

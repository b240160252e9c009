// Watches a client's health as one live line, and prints degradation transitions as they
// happen. Embedded, it cuts the link to the pulse for a while (a simulated partition) so degraded
// mode and recovery show; on NATS, stop and restart the pulse to see them.
// `deno run -A examples/service_monitor.ts [--seconds N]`
import { Client, defaultConfig } from "../mod.ts";
import { exampleEnv, sleep } from "./_example_env.ts";

const env = await exampleEnv("chorus-dev", 300);
console.log(`service_monitor: watching ${env.description}`);

const config = defaultConfig();
config.clusterId = "chorus-dev";
config.agentId = "service-monitor";
config.jitterToleranceMs = 50;
Object.assign(config, env.transport);
const client = new Client(config);

// A TTY gets one line rewritten in place; a pipe gets a line every second.
const live = Deno.stdout.isTerminal();
const enc = new TextEncoder();
const write = (text: string) => Deno.stdout.writeSync(enc.encode(text));

let synthetic = 0;
client.onBeat((_beat, info) => {
  if (info.synthetic) synthetic++;
});
client.addEventListener("degraded", (e) => {
  const d = e.detail;
  write(
    `${live ? "\r\x1b[2K" : ""}DEGRADED: no beat after beat ${d.lastBeat}; beats are synthetic\n`,
  );
});
client.addEventListener("recovered", (e) => {
  const d = e.detail;
  write(
    `${live ? "\r\x1b[2K" : ""}RECOVERED at beat ${d.beat} after ${Math.round(d.degradedMs)} ms ` +
      `and ${d.syntheticBeats} synthetic beats\n`,
  );
});
await client.start(env.signal);

function line(): string {
  const h = client.health();
  const lat = h.callbackLatency;
  return `beat=${h.lastBeat ?? "-"} phase=${h.phase ?? "-"} tempo=${h.tempoBpm ?? "-"} ` +
    `connected=${h.connected} degraded=${h.degraded} synthetic=${synthetic} ` +
    `missed=${h.missedBeats} dropped=${h.droppedFrames} reconnects=${h.reconnectCount} ` +
    `latency p50=${lat.p50.toFixed(2)} p99=${lat.p99.toFixed(2)} max=${lat.max.toFixed(2)} ms`;
}

// The partition script of the embedded demo: cut at 30% of the run for 20% of it.
const started = performance.now();
const total = Number(Deno.args[Deno.args.indexOf("--seconds") + 1]) * 1000 || 20_000;
let cut = false;
let lastPrint = 0;
while (!env.signal.aborted) {
  const t = performance.now() - started;
  if (!cut && t > total * 0.3 && t < total * 0.5 && env.partition(true)) {
    cut = true;
    write(`${live ? "\r\x1b[2K" : ""}(partition: pulse unreachable)\n`);
  } else if (cut && t >= total * 0.5) {
    cut = false;
    env.partition(false);
    write(`${live ? "\r\x1b[2K" : ""}(partition healed)\n`);
  }
  if (live) write(`\r\x1b[2K${line()}`);
  else if (t - lastPrint >= 1000) {
    lastPrint = t;
    write(`${line()}\n`);
  }
  await sleep(100, env.signal);
}
write(`${live ? "\r\x1b[2K" : ""}final: ${line()}\n`);
await client.stop();
await env.close();

// The second process of tests/phase_test.ts: N scheduled clients of one cluster on a NATS server,
// each reporting every callback's entry on stdout as a JSON line, on the system clock both
// processes share (`performance.timeOrigin + performance.now()`), until its time is up.
//
//   deno run --allow-net --allow-env --allow-read tests/phase_worker.ts \
//     --url nats://127.0.0.1:4222 --cluster phase --clients 4 --seconds 8
//
// Lines: {"ready":true} once every client started; one {"client","beat","entry","predicted",
// "scheduled"} per callback; {"done":true,"clock":…} at the end.
import { Client, defaultConfig } from "../mod.ts";

function flag(name: string): string {
  const i = Deno.args.indexOf(`--${name}`);
  if (i < 0 || i + 1 >= Deno.args.length) throw new TypeError(`--${name} is required`);
  return Deno.args[i + 1];
}

const url = flag("url");
const cluster = flag("cluster");
const count = Number(flag("clients"));
const seconds = Number(flag("seconds"));
const now = () => performance.timeOrigin + performance.now();
const quiet = { debug() {}, info() {}, warn() {}, error() {} };
const lines: string[] = [];

const clients: Client[] = [];
for (let i = 0; i < count; i++) {
  const c = defaultConfig();
  c.clusterId = cluster;
  c.agentId = `worker-${Deno.pid}-${i}`;
  c.natsUrl = url;
  c.logger = quiet;
  const client = new Client(c);
  client.onBeat((frame, info) => {
    const entry = now();
    // Written after the beat: a write per callback would delay the clients after it.
    lines.push(JSON.stringify({
      client: i,
      beat: frame.beat_index,
      entry,
      predicted: info.predicted,
      // Delivered at the beat's instant: predicted, or pulse's frame held for it.
      scheduled: info.arrivedAt === undefined || info.at !== info.arrivedAt,
    }));
  });
  await client.start();
  clients.push(client);
}
const out = new TextEncoder();
const write = async (text: string) => {
  await Deno.stdout.write(out.encode(text));
};
await write(`${JSON.stringify({ ready: true })}\n`);
const flushEvery = setInterval(() => {
  if (lines.length === 0) return;
  const batch = lines.splice(0).join("\n") + "\n";
  write(batch).catch(() => {});
}, 100);
await new Promise((r) => setTimeout(r, seconds * 1000));
clearInterval(flushEvery);
const clock = clients[0].health().clock;
for (const c of clients) await c.stop();
if (lines.length > 0) await write(lines.splice(0).join("\n") + "\n");
await write(`${JSON.stringify({ done: true, clock })}\n`);

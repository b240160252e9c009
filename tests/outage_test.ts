// A 15 s NATS outage at 600 BPM: pulse, reverb and one SDK agent (a claim per beat) run on their
// own connections to a real nats-server, which is killed for 15 s and started again on the same
// port and store. Every claim the agent emitted (its buffer holds 1,000, the outage needs 150)
// must reach reverb and be accepted exactly once: the buffered ones late (their windows closed
// during the outage) but not stale (two minutes of age are allowed) and not replays.
//
// Core NATS keeps nothing for a subscriber that is away: claims the agent flushes before reverb
// has resubscribed are lost. On a loaded machine the agent can win that race, so the agent
// reaches the server through a gate the test opens once reverb and pulse are back (as for an
// agent that reconnects a moment later than the services). See the report: the SDK flushes at
// once on reconnect.
//
// Timing: about 25 s. Every bus reconnects within 250 ms of the server's return; the waits after
// it are bounded at 10 s for a loaded two-core machine.

import assert from "node:assert/strict";
import { connectNatsBus } from "../nats/mod.ts";
import { Client, defaultConfig } from "../mod.ts";
import { Pulse } from "../pulse/mod.ts";
import { Reverb } from "../reverb/mod.ts";
import { startNatsServer } from "./nats_server.ts";
import { until } from "./until.ts";

const TEMPO = 600;
const BEAT_MS = 60_000 / TEMPO;
const OUTAGE_MS = 15_000;
const RECONNECT = { reconnectTimeWait: 50, maxReconnectWait: 250 } as const;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

// A TCP relay to the server that can refuse new connections (closed gate) while keeping none
// open across a server restart.
interface Gate {
  readonly url: string;
  open: boolean;
  close(): Promise<void>;
}

function gate(port: number): Gate {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const conns = new Set<Deno.Conn>();
  const pipes = new Set<Promise<unknown>>();
  const drop = (c: Deno.Conn) => {
    if (!conns.delete(c)) return;
    try {
      c.close();
    } catch { /* closed */ }
  };
  const g: Gate = {
    url: `nats://127.0.0.1:${(listener.addr as Deno.NetAddr).port}`,
    open: true,
    async close() {
      listener.close();
      for (const c of [...conns]) drop(c);
      await accepting;
      await Promise.allSettled([...pipes]);
    },
  };
  const accepting = (async () => {
    try {
      for await (const down of listener) {
        conns.add(down);
        let up: Deno.Conn;
        try {
          if (!g.open) throw new Error("gate closed");
          up = await Deno.connect({ hostname: "127.0.0.1", port });
        } catch {
          drop(down);
          continue;
        }
        conns.add(up);
        const both = () => {
          drop(down);
          drop(up);
        };
        const a = down.readable.pipeTo(up.writable).catch(() => {}).finally(both);
        const b = up.readable.pipeTo(down.writable).catch(() => {}).finally(both);
        for (const p of [a, b]) {
          pipes.add(p);
          p.finally(() => pipes.delete(p));
        }
      }
    } catch { /* listener closed */ }
  })();
  return g;
}

Deno.test("a 15 s NATS outage at 600 BPM: every claim the agent emitted is accepted by reverb exactly once", async () => {
  await using server = await startNatsServer();
  const cluster = "outage";
  const pulseBus = await connectNatsBus({ servers: server.url, ...RECONNECT });
  const reverbBus = await connectNatsBus({ servers: server.url, ...RECONNECT });
  const pulse = new Pulse({ clusterId: cluster, bus: pulseBus, tempoBpm: TEMPO });
  const reverb = new Reverb({
    clusterId: cluster,
    bus: reverbBus,
    graceMs: 50,
    // The agent is silent to reverb for the whole outage (37 bars): keep its record.
    evictAfterBars: 1_000,
  });
  const agentGate = gate(server.port);
  const config = defaultConfig();
  config.clusterId = cluster;
  config.agentId = "outage-agent";
  config.natsUrl = agentGate.url;
  config.natsOptions = { ...RECONNECT };
  const client = new Client(config);
  let emitted = 0;
  let refused = 0;
  client.onBeat(() => {
    emitted++;
    client.emitStatusClaim({ state: "executing", progress: 0.5 }).catch(() => refused++);
  });
  const accepted = () => reverb.agents().find((a) => a.agent_id === "outage-agent");
  try {
    await reverb.start();
    await pulse.start();
    await client.start();
    await until(() => (accepted()?.claims_accepted ?? 0) >= 20, {
      what: "claims flowing before the outage",
      timeoutMs: 10_000,
    });
    // Kill half-way between two beats, so no claim is in a socket when the server dies.
    const t = pulse.timeline;
    const next = t.beatAt(Date.now()) + 1;
    await sleep(Math.max(0, t.dueAt(next) + BEAT_MS / 2 - Date.now()));
    const before = client.health().claimsSent;
    agentGate.open = false;
    await server.kill();
    const killedAt = Date.now();
    await until(() => client.health().claimsBuffered > 0, { what: "claims buffered" });
    await sleep(Math.max(0, killedAt + OUTAGE_MS - Date.now()));
    const buffered = client.health().claimsBuffered;
    await server.start();
    await until(() => reverbBus.status === "connected" && pulseBus.status === "connected", {
      what: "reverb and pulse back",
      timeoutMs: 10_000,
    });
    // Resubscribed: a round trip through the server after the reconnect.
    await reverbBus.flush();
    agentGate.open = true;
    await until(() => client.health().claimsBuffered === 0 && client.health().connected, {
      what: "the buffer flushed after the outage",
      timeoutMs: 10_000,
    });
    // A few more beats on the restored bus, then stop the agent and let reverb decide on all.
    await sleep(1_000);
    await client.stop();
    const h = client.health();
    await until(() => reverb.claimsSummary().accepted >= h.claimsSent, {
      what: "reverb to accept every claim sent",
      timeoutMs: 10_000,
    }).catch((error) => {
      throw new Error(
        `${error.message}: sent ${h.claimsSent} (${before} before the outage, ${buffered} ` +
          `buffered), reverb ${JSON.stringify(reverb.claimsSummary())}`,
      );
    });
    await sleep(300); // nothing more may arrive: duplicates would show here
    const view = accepted()!;
    const summary = reverb.claimsSummary();
    console.log(
      `emitted ${emitted}, sent ${h.claimsSent} (${before} before the outage, ${buffered} ` +
        `buffered through it), dropped ${h.claimsDropped}; reverb accepted ` +
        `${view.claims_accepted} (${view.claims_late} late), reconnects ${h.reconnectCount}`,
    );
    assert.ok(buffered >= (OUTAGE_MS / BEAT_MS) * 0.8, `${buffered} claims buffered in 15 s`);
    assert.equal(h.claimsDropped, 0, "the outage fits in the buffer");
    assert.equal(refused, 0);
    assert.equal(h.claimsSent, emitted, "every claim emitted was sent");
    assert.equal(view.claims_accepted, h.claimsSent, "every claim sent accepted exactly once");
    assert.equal(summary.accepted, h.claimsSent);
    for (const [reason, n] of Object.entries(summary.rejected)) {
      if (reason !== "late") assert.equal(n, 0, `rejected as ${reason}`);
    }
    assert.ok(view.claims_late >= buffered * 0.8, "the buffered claims came after their windows");
    assert.equal(summary.rejected.late, view.claims_late);
  } finally {
    await client.stop();
    await pulse.stop();
    await reverb.stop();
    await Promise.all([pulseBus.close(), reverbBus.close()]);
    await agentGate.close();
  }
});

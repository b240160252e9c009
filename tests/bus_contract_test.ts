// One contract, two transports: the same behaviour is asserted of InMemoryBus and of NatsBus on a
// real nats-server.
import assert from "node:assert/strict";
import { BackbeatError, type Bus, InMemoryBus } from "../core/mod.ts";
import { connectNatsBus } from "../nats/mod.ts";
import { startNatsServer } from "./nats_server.ts";
import { until } from "./until.ts";

const enc = new TextEncoder();
const dec = new TextDecoder();

function collect(bus: Bus, subject: string, queue?: string) {
  const got: { subject: string; text: string; headers?: Record<string, string> }[] = [];
  const sub = bus.subscribe(subject, (m) => {
    got.push({ subject: m.subject, text: dec.decode(m.data), headers: m.headers });
  }, { queue });
  return { got, sub };
}

type Factory = () => Promise<{ bus: Bus; peer: Bus; done: () => Promise<void> }>;

function contract(name: string, make: Factory) {
  Deno.test(`${name}: delivers in order with headers to every matching subscriber`, async () => {
    const { bus, peer, done } = await make();
    try {
      const a = collect(peer, "backbeat.c1.beat");
      const b = collect(peer, "backbeat.c1.*");
      const c = collect(peer, "backbeat.>");
      const other = collect(peer, "backbeat.c2.beat");
      await peer.flush();
      for (let i = 0; i < 100; i++) {
        bus.publish("backbeat.c1.beat", enc.encode(String(i)), {
          headers: { "x-window-id": "w", "x-hlc": `h${i}` },
        });
      }
      await bus.flush();
      await until(() => a.got.length === 100 && b.got.length === 100 && c.got.length === 100, {
        timeoutMs: 3000,
        what: "100 messages at each subscriber",
      });
      assert.deepEqual(a.got.map((m) => Number(m.text)), [...Array(100).keys()]);
      assert.equal(a.got[7].headers?.["x-hlc"], "h7");
      assert.equal(a.got[7].headers?.["x-window-id"], "w");
      assert.equal(b.got[99].subject, "backbeat.c1.beat");
      assert.equal(other.got.length, 0);
      a.sub.unsubscribe();
      bus.publish("backbeat.c1.beat", enc.encode("after"));
      await bus.flush();
      await until(() => b.got.length === 101, {
        timeoutMs: 3000,
        what: "the message after unsubscribe",
      });
      assert.equal(a.got.length, 100);
    } finally {
      await done();
    }
  });

  Deno.test(`${name}: request and reply; no responders and no reply are timeout errors`, async () => {
    const { bus, peer, done } = await make();
    try {
      const sub = peer.subscribe("backbeat.c1.time", (m) => {
        if (m.reply) peer.publish(m.reply, enc.encode(`pong ${dec.decode(m.data)}`));
      });
      const silent = peer.subscribe("backbeat.c1.silent", () => {});
      await peer.flush();
      const reply = await bus.request("backbeat.c1.time", enc.encode("1"), { timeoutMs: 2_000 });
      assert.equal(dec.decode(reply.data), "pong 1");
      const t0 = performance.now();
      await assert.rejects(
        bus.request("backbeat.c1.nobody", enc.encode("?"), { timeoutMs: 5_000 }),
        (e) =>
          e instanceof BackbeatError && e.code === "timeout" && /No responders/.test(e.message),
      );
      assert.ok(
        performance.now() - t0 < 2_500,
        "no responders is known without waiting out the timeout",
      );
      await assert.rejects(
        bus.request("backbeat.c1.silent", enc.encode("?"), { timeoutMs: 100 }),
        (e) =>
          e instanceof BackbeatError && e.code === "timeout" && /within 100 ms/.test(e.message),
      );
      sub.unsubscribe();
      silent.unsubscribe();
    } finally {
      await done();
    }
  });

  Deno.test(`${name}: a queue group shares messages, each delivered once`, async () => {
    const { bus, peer, done } = await make();
    try {
      const q1 = collect(peer, "backbeat.c1.status", "reverb");
      const q2 = collect(peer, "backbeat.c1.status", "reverb");
      const all = collect(peer, "backbeat.c1.status");
      await peer.flush();
      for (let i = 0; i < 200; i++) bus.publish("backbeat.c1.status", enc.encode(String(i)));
      await bus.flush();
      await until(() => all.got.length === 200 && q1.got.length + q2.got.length === 200, {
        timeoutMs: 3000,
        what: "200 messages shared by the queue group",
      });
      const seen = [...q1.got, ...q2.got].map((m) => Number(m.text)).sort((x, y) => x - y);
      assert.deepEqual(seen, [...Array(200).keys()]);
    } finally {
      await done();
    }
  });

  Deno.test(`${name}: a throwing handler is reported and does not stop delivery`, async () => {
    const { bus, peer, done } = await make();
    try {
      const errors: string[] = [];
      peer.addEventListener("error", (e) => errors.push((e as ErrorEvent).message));
      let n = 0;
      peer.subscribe("backbeat.c1.bar", () => {
        n++;
        throw new Error("boom");
      });
      await peer.flush();
      bus.publish("backbeat.c1.bar", enc.encode("1"));
      bus.publish("backbeat.c1.bar", enc.encode("2"));
      await bus.flush();
      await until(() => n === 2 && errors.length === 2, {
        timeoutMs: 3000,
        what: "two handler calls and two error events",
      });
      assert.match(errors[0], /boom/);
    } finally {
      await done();
    }
  });

  Deno.test(`${name}: rejects bad subjects, oversized payloads and use after close`, async () => {
    const { bus, done } = await make();
    let closed = false;
    try {
      assert.throws(() => bus.publish("backbeat..beat", enc.encode("x")), TypeError);
      assert.throws(() => bus.publish("backbeat.*.beat", enc.encode("x")), TypeError);
      assert.throws(() => bus.subscribe("a.>.b", () => {}), TypeError);
      assert.throws(
        () => bus.publish("backbeat.c1.beat", new Uint8Array(bus.maxPayload + 1)),
        RangeError,
      );
      assert.equal(bus.status, "connected");
      const statuses: string[] = [];
      bus.addEventListener("status", (e) => statuses.push(e.detail.status));
      await bus.close();
      closed = true;
      await bus.close(); // idempotent
      assert.equal(bus.status, "closed");
      assert.deepEqual(statuses, ["closed"]);
      assert.throws(
        () => bus.publish("backbeat.c1.beat", enc.encode("x")),
        (e) => e instanceof BackbeatError && e.code === "closed",
      );
    } finally {
      if (!closed) await bus.close();
      await done();
    }
  });
}

contract("InMemoryBus", () => {
  const bus = new InMemoryBus();
  return Promise.resolve({ bus, peer: bus, done: () => bus.close() });
});

contract("NatsBus", async () => {
  const server = await startNatsServer({ jetstream: false });
  const bus = await connectNatsBus({ servers: server.url });
  const peer = await connectNatsBus({ servers: server.url });
  return {
    bus,
    peer,
    done: async () => {
      await bus.close();
      await peer.close();
      await server.stop();
    },
  };
});

Deno.test("InMemoryBus drops and counts messages beyond maxPending", async () => {
  const bus = new InMemoryBus({ maxPending: 10 });
  const errors: string[] = [];
  bus.addEventListener("error", (e) => errors.push((e as ErrorEvent).message));
  let n = 0;
  const sub = bus.subscribe("x", () => n++);
  for (let i = 0; i < 25; i++) bus.publish("x", enc.encode("m"));
  await bus.flush();
  assert.equal(n, 10);
  assert.equal(sub.dropped, 15);
  assert.equal(errors.length, 15);
  await bus.close();
});

Deno.test("NatsBus reports disconnect and reconnect across a server restart and refuses publishes between", async () => {
  const server = await startNatsServer({ jetstream: false });
  const bus = await connectNatsBus({
    servers: server.url,
    reconnectTimeWait: 50,
    maxReconnectWait: 250,
  });
  const peerGot: string[] = [];
  try {
    const statuses: string[] = [];
    // NatsBusLike types its events: no cast.
    bus.addEventListener("status", (e) => statuses.push(e.detail.status));
    bus.subscribe("backbeat.c1.beat", (m) => peerGot.push(dec.decode(m.data)));
    await server.kill();
    await until(() => bus.status !== "connected", { timeoutMs: 3000, what: "the disconnect" });
    // Nothing is silently queued into a dead connection: the caller is told and can buffer.
    assert.throws(
      () => bus.publish("backbeat.c1.beat", enc.encode("lost?")),
      (e) =>
        e instanceof BackbeatError && e.code === "connection" && /not connected/.test(e.message),
    );
    // Down for a second: long enough for many passes of nats.js's dial loop.
    await new Promise((r) => setTimeout(r, 1000));
    await server.start();
    const listening = performance.now();
    await until(() => bus.status === "connected" && bus.reconnects === 1, {
      timeoutMs: 8000,
      what: "the reconnect",
    });
    const gap = performance.now() - listening;
    // The backoff is capped at 250 ms here; a second leaves room for a loaded CI machine.
    assert.ok(gap < 1000, `reconnected ${gap.toFixed(0)} ms after the server listened again`);
    assert.ok(statuses.includes("disconnected"));
    assert.equal(statuses.at(-1), "connected");
    // The subscription is restored after the reconnect.
    bus.publish("backbeat.c1.beat", enc.encode("again"));
    await bus.flush();
    await until(() => peerGot.includes("again"), {
      timeoutMs: 3000,
      what: "delivery on the restored subscription",
    });
  } finally {
    await bus.close();
    await server.stop();
  }
});

Deno.test("connectNatsBus() fails with a connection error when no server listens", async () => {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  await assert.rejects(
    connectNatsBus({ servers: `nats://127.0.0.1:${port}`, timeout: 500 }),
    (e) =>
      e instanceof BackbeatError && e.code === "connection" && /Cannot connect/.test(e.message),
  );
});

import assert from "node:assert/strict";
import { BackbeatError } from "../core/mod.ts";
import { startNatsServer } from "../tests/nats_server.ts";
import { leaseNatsBus, natsPoolStats } from "./mod.ts";

Deno.test("leaseNatsBus() shares one connection per server and credentials, closed by the last release", async () => {
  await using server = await startNatsServer({ jetstream: false });
  const a = await leaseNatsBus(server.url);
  const b = await leaseNatsBus(server.url, { name: "ignored for sharing" });
  // Another token is another connection (a server without auth accepts any token).
  const other = await leaseNatsBus(server.url, { token: "t" });
  try {
    assert.equal(a.bus, b.bus);
    assert.notEqual(other.bus, a.bus);
    assert.deepEqual(natsPoolStats(), { connections: 2, leases: 3 });
    await other.release();
    assert.deepEqual(natsPoolStats(), { connections: 1, leases: 2 });
    await a.release();
    await a.release(); // idempotent: does not take b's share
    assert.deepEqual(natsPoolStats(), { connections: 1, leases: 1 });
    assert.equal(b.bus.status, "connected");
    await b.release();
    assert.deepEqual(natsPoolStats(), { connections: 0, leases: 0 });
    assert.equal(b.bus.status, "closed");
    // A connection closed for good is not handed out again.
    const c = await leaseNatsBus(server.url);
    assert.notEqual(c.bus, a.bus);
    await c.bus.close();
    const d = await leaseNatsBus(server.url);
    assert.notEqual(d.bus, c.bus);
    assert.equal(d.bus.status, "connected");
    await c.release();
    await d.release();
    assert.deepEqual(natsPoolStats(), { connections: 0, leases: 0 });
  } finally {
    await a.release();
    await b.release();
    await other.release();
  }
});

Deno.test("leaseNatsBus() leaves nothing in the pool when the connect fails", async () => {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  await assert.rejects(
    leaseNatsBus(`nats://127.0.0.1:${port}`, { timeout: 300 }),
    (e) => e instanceof BackbeatError && e.code === "connection",
  );
  assert.deepEqual(natsPoolStats(), { connections: 0, leases: 0 });
});

Deno.test("leaseNatsBus() keys on the login, wherever it is written, and takes URL lists", async () => {
  await using server = await startNatsServer({ jetstream: false });
  const host = `127.0.0.1:${server.port}`;
  // A server without auth accepts any user; the pool must still tell logins apart.
  const inUrl = await leaseNatsBus(`nats://u:p@${host}`);
  const inOptions = await leaseNatsBus(`nats://${host}`, { user: "u", pass: "p" });
  const listed = await leaseNatsBus([`nats://${host}`], { user: "u", pass: "p" });
  const otherUser = await leaseNatsBus(`nats://${host}`, { user: "v", pass: "p" });
  try {
    assert.equal(inUrl.bus, inOptions.bus);
    assert.equal(listed.bus, inOptions.bus);
    assert.notEqual(otherUser.bus, inUrl.bus);
    assert.equal(inUrl.bus.url, `nats://u:***@${host}`);
    assert.deepEqual(natsPoolStats(), { connections: 2, leases: 4 });
    await assert.rejects(leaseNatsBus(`nats://${host}`, { user: "u", token: "t" }), TypeError);
    assert.deepEqual(natsPoolStats(), { connections: 2, leases: 4 });
  } finally {
    await inUrl.release();
    await inOptions.release();
    await listed.release();
    await otherUser.release();
  }
  assert.deepEqual(natsPoolStats(), { connections: 0, leases: 0 });
});

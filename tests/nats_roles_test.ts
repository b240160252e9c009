// The secured NATS configuration of docs/nats/ against a real nats-server: one user per role
// (pulse, reverb, agent, operator), each allowed what it needs and refused the rest, the real
// pulse and reverb running under their users, and the same over TLS with client certificates.
//
// The config files are the documented ones, rendered for a test cluster id and a temporary
// store with the substitution README.md describes; passwords reach nats-server through the
// environment variables the files reference.

import assert from "node:assert/strict";
import {
  DeliverPolicy,
  DiscardPolicy,
  jetstream,
  jetstreamManager,
  RetentionPolicy,
  StorageType,
} from "@nats-io/jetstream";
import { Kvm } from "@nats-io/kv";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { BackbeatError, subjects } from "../core/mod.ts";
import { connectNatsBus, kvBucketName, type NatsBusLike, openKvLease } from "../nats/mod.ts";
import { Pulse } from "../pulse/mod.ts";
import { Reverb } from "../reverb/mod.ts";
import { renderAuth } from "./nats_config.ts";
import { type NatsServer, startNatsServer } from "./nats_server.ts";
import { makeTestPki, type TestPki } from "./tls.ts";
import { until } from "./until.ts";

const ROLES = ["pulse", "reverb", "agent", "operator"] as const;
type Role = typeof ROLES[number];

const DOCS = new URL("../docs/nats/", import.meta.url);
const encoder = new TextEncoder();
const decoder = new TextDecoder();
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Long enough for a loaded 2-core machine, short enough to keep each test bounded. */
const WAIT_MS = 5_000;
/** How long a refused message is given to show up anyway before "nothing arrived" holds. */
const QUIET_MS = 300;

interface Names {
  readonly cluster: string;
  readonly beat: string;
  readonly status: string;
  readonly bar: string;
  readonly control: string;
  readonly time: string;
  readonly pulseBucket: string;
  readonly reverbBucket: string;
  readonly barStream: string;
}

/**
 * The bar stream's name rule of reverb (README.md, "Another cluster id"): the cluster upper-cased,
 * every character outside `A-Z 0-9 _ -` replaced by `_`. Restated here because reverb/mod.ts does
 * not export it; the live test checks the real reverb creates exactly this stream.
 */
function barStreamName(cluster: string): string {
  return `BACKBEAT_${cluster.toUpperCase().replace(/[^A-Z0-9_-]/g, "_")}_BARS`;
}

async function namesFor(cluster: string): Promise<Names> {
  const s = subjects(cluster);
  return {
    cluster,
    beat: s.beat,
    status: s.status,
    bar: s.bar,
    control: s.control,
    time: `backbeat.${cluster}.time`,
    pulseBucket: await kvBucketName(cluster, "pulse"),
    reverbBucket: await kvBucketName(cluster, "reverb"),
    barStream: barStreamName(cluster),
  };
}

interface Secured {
  readonly server: NatsServer;
  readonly url: string;
  readonly names: Names;
  readonly pass: Readonly<Record<Role, string>>;
  readonly pki: TestPki | undefined;
  /**
   * Connects a NatsBus as `role`, collecting its `error` events (closed by the fixture). Plaintext
   * servers only: NatsBus takes no TLS options yet.
   */
  bus(role: Role): Promise<Watched>;
  /** Connects a raw nats.js connection as `role`, with the client certificate under TLS. */
  raw(role: Role, options?: Record<string, unknown>): Promise<NatsConnection>;
}

interface Watched {
  readonly bus: NatsBusLike;
  readonly errors: ErrorEvent[];
  readonly nc: NatsConnection;
}

interface Violation {
  operation: string;
  subject: string;
}

/** The permission violations among a bus's `error` events (nats.js PermissionViolationError). */
function violations(w: Watched): Violation[] {
  return w.errors.flatMap((e) => {
    const err = e.error as { name?: string; operation?: string; subject?: string } | undefined;
    return err?.name === "PermissionViolationError"
      ? [{ operation: err.operation ?? "", subject: err.subject ?? "" }]
      : [];
  });
}

async function refused(w: Watched, operation: string, subject: string): Promise<void> {
  await until(
    () => violations(w).some((v) => v.operation === operation && v.subject === subject),
    { timeoutMs: WAIT_MS, what: `a permissions violation for ${operation} to ${subject}` },
  );
}

function randomPass(): string {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return "bb" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/**
 * Runs `fn` against a nats-server started with docs/nats/backbeat.conf (rendered for `cluster`
 * and a temporary store), optionally with a `tls {}` block requiring client certificates.
 */
async function withSecured(
  cluster: string,
  options: { tls?: boolean },
  fn: (s: Secured) => Promise<void>,
): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "backbeat-roles-" });
  const closers: (() => Promise<void>)[] = [];
  let server: NatsServer | undefined;
  try {
    const names = await namesFor(cluster);
    const auth = await Deno.readTextFile(new URL("backbeat-auth.conf", DOCS));
    const main = await Deno.readTextFile(new URL("backbeat.conf", DOCS));
    await Deno.writeTextFile(`${dir}/backbeat-auth.conf`, renderAuth(auth, names));
    const store = `store_dir: ${JSON.stringify(`${dir}/store`)}`;
    const rendered = main.replace(/^\s*store_dir:.*$/m, `  ${store}`);
    assert.ok(rendered.includes(store), "backbeat.conf has a store_dir line to substitute");
    let pki: TestPki | undefined;
    let conf = rendered;
    if (options.tls) {
      await Deno.mkdir(`${dir}/pki`);
      pki = await makeTestPki(`${dir}/pki`);
      conf += [
        "",
        "tls {",
        `  cert_file: ${JSON.stringify(pki.serverCert)}`,
        `  key_file: ${JSON.stringify(pki.serverKey)}`,
        `  ca_file: ${JSON.stringify(pki.caCert)}`,
        "  verify: true",
        "  timeout: 2",
        "}",
        "",
      ].join("\n");
    }
    await Deno.writeTextFile(`${dir}/backbeat.conf`, conf);

    // The passwords reach nats-server through the environment, quoted as README.md advises.
    const pass = Object.fromEntries(ROLES.map((r) => [r, randomPass()])) as Record<Role, string>;
    const vars = ROLES.map((r) => `${r.toUpperCase()}_PASS`);
    ROLES.forEach((r, i) => Deno.env.set(vars[i], JSON.stringify(pass[r])));
    try {
      // The config sets JetStream and its store: `-js -sd` on top would be a duplicate.
      server = await startNatsServer({ jetstream: false, args: ["-c", `${dir}/backbeat.conf`] });
    } finally {
      for (const v of vars) Deno.env.delete(v);
    }
    const url = server.url;
    const tlsOptions = pki
      ? { tls: { caFile: pki.caCert, certFile: pki.clientCert, keyFile: pki.clientKey } }
      : {};
    const secured: Secured = {
      server,
      url,
      names,
      pass,
      pki,
      async bus(role) {
        const bus = await connectNatsBus({
          servers: url,
          name: role,
          user: role,
          pass: pass[role],
          timeout: WAIT_MS,
        });
        closers.push(() => bus.close());
        const errors: ErrorEvent[] = [];
        bus.addEventListener("error", (e) => errors.push(e as ErrorEvent));
        return { bus, errors, nc: bus.connection as NatsConnection };
      },
      async raw(role, extra = {}) {
        const nc = await connect({
          servers: url,
          name: `${role}-raw`,
          user: role,
          pass: pass[role],
          timeout: WAIT_MS,
          maxReconnectAttempts: 0,
          ...tlsOptions,
          ...extra,
        });
        closers.push(async () => {
          if (!nc.isClosed()) await nc.close();
        });
        return nc;
      },
    };
    await fn(secured);
  } finally {
    for (const close of closers.reverse()) await close().catch(() => {});
    await server?.stop();
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

/**
 * Speaks the NATS protocol by hand (no nats.js): reads the plaintext INFO, upgrades to Deno's
 * native TLS when `caCert` is given (trusting that CA, presenting no client certificate), sends
 * CONNECT with `fields` and a PING. Returns `PONG` when the server accepted the session, its
 * `-ERR` line when it refused, or `refused: <why>` when the TLS session ended (an alert, a reset,
 * the end of the stream).
 */
async function natsProbe(
  port: number,
  fields: Record<string, unknown>,
  caCert?: string,
): Promise<string> {
  const tcp = await Deno.connect({ hostname: "127.0.0.1", port });
  let conn: Deno.Conn = tcp;
  const timer = setTimeout(() => {
    try {
      conn.close();
    } catch { /* closed already */ }
  }, WAIT_MS);
  const buf = new Uint8Array(4096);
  let text = "";
  try {
    while (!text.includes("\r\n")) {
      const n = await tcp.read(buf);
      if (n === null) return "refused: closed before INFO";
      text += decoder.decode(buf.subarray(0, n));
    }
    assert.match(text, /^INFO /);
    if (caCert !== undefined) {
      const ca = await Deno.readTextFile(caCert);
      const tls = await Deno.startTls(tcp, { hostname: "localhost", caCerts: [ca] });
      conn = tls;
      await tls.handshake();
    }
    const connect = JSON.stringify({ verbose: false, pedantic: false, protocol: 1, ...fields });
    await conn.write(encoder.encode(`CONNECT ${connect}\r\nPING\r\n`));
    text = "";
    while (true) {
      const n = await conn.read(buf);
      if (n === null) return `refused: end of stream${text ? ` after ${text.trim()}` : ""}`;
      text += decoder.decode(buf.subarray(0, n));
      const line = text.split("\r\n").find((l) => l === "PONG" || l.startsWith("-ERR"));
      if (line !== undefined) return line;
    }
  } catch (err) {
    return `refused: ${(err as Error).message}`;
  } finally {
    clearTimeout(timer);
    try {
      conn.close();
    } catch { /* closed already */ }
  }
}

function collect(w: Watched, subject: string): string[] {
  const got: string[] = [];
  w.bus.subscribe(subject, (m) => got.push(decoder.decode(m.data)));
  return got;
}

Deno.test("roles: no anonymous client, no wrong password", async () => {
  // By hand: nats.js 3.4 on Deno's node:net can raise an uncaught ECONNRESET after the server
  // closes a refused connection, which would fail the test run rather than this assertion.
  await withSecured("roles-auth", {}, async (s) => {
    const port = s.server.port;
    assert.equal(await natsProbe(port, { user: "agent", pass: s.pass.agent }), "PONG");
    assert.equal(await natsProbe(port, {}), "-ERR 'Authorization Violation'");
    assert.equal(
      await natsProbe(port, { user: "agent", pass: s.pass.pulse }),
      "-ERR 'Authorization Violation'",
    );
  });
});

Deno.test("roles: an agent publishes status and follows beats and bars, nothing else", async () => {
  await withSecured("roles-agent", {}, async (s) => {
    const n = s.names;
    const agent = await s.bus("agent");
    const pulse = await s.bus("pulse");
    const reverb = await s.bus("reverb");
    const agentBeats = collect(agent, n.beat);
    const agentBars = collect(agent, n.bar);
    const statuses = collect(reverb, n.status);
    const pulseBeats = collect(pulse, n.beat);
    const pulseControl = collect(pulse, n.control);
    await Promise.all([agent.bus.flush(), pulse.bus.flush(), reverb.bus.flush()]);

    agent.bus.publish(n.status, encoder.encode("claim"));
    pulse.bus.publish(n.beat, encoder.encode("beat"));
    reverb.bus.publish(n.bar, encoder.encode("bar"));
    await until(
      () => statuses.includes("claim") && agentBeats.includes("beat") && agentBars.includes("bar"),
      { timeoutMs: WAIT_MS, what: "status to reverb, beat and bar to the agent" },
    );

    agent.bus.publish(n.beat, encoder.encode("forged beat"));
    agent.bus.publish(n.control, encoder.encode('{"tempo_bpm":30}'));
    await refused(agent, "publish", n.beat);
    await refused(agent, "publish", n.control);
    // Reading the other agents' claims is refused too.
    agent.bus.subscribe(n.status, () => {});
    await refused(agent, "subscription", n.status);
    await pulse.bus.flush();
    await sleep(QUIET_MS);
    assert.deepEqual(pulseBeats, ["beat"], "pulse sees its own beat, never the agent's");
    assert.deepEqual(pulseControl, [], "the agent's control request never reaches pulse");
    assert.deepEqual(statuses, ["claim"]);
    assert.equal(agent.bus.status, "connected", "a violation does not cost the connection");
    assert.deepEqual(violations(pulse), []);
    assert.deepEqual(violations(reverb), []);
  });
});

Deno.test("roles: pulse holds its KV lease and state, publishes beats, not bars", async () => {
  await withSecured("roles-pulse", {}, async (s) => {
    const n = s.names;
    const pulse = await s.bus("pulse");
    const agent = await s.bus("agent");
    const reverb = await s.bus("reverb");
    const agentBeats = collect(agent, n.beat);
    const reverbBars = collect(reverb, n.bar);
    await Promise.all([agent.bus.flush(), reverb.bus.flush()]);

    const lease = await openKvLease({
      bus: pulse.bus,
      bucket: n.pulseBucket,
      holderId: "pulse-a",
      ttlMs: 2_000,
    });
    const leaseErrors: string[] = [];
    lease.addEventListener("error", (e) => leaseErrors.push((e as ErrorEvent).message));
    try {
      assert.equal(await lease.start(), true, "the only contender becomes the holder");
      assert.ok(lease.token > 0);
      const rev = await lease.putJson("timeline", { tempo_bpm: 120 }, 0);
      assert.deepEqual(await lease.getJson("timeline"), {
        value: { tempo_bpm: 120 },
        revision: rev,
      });
      const rev2 = await lease.putJson("timeline", { tempo_bpm: 90 }, rev);
      await assert.rejects(
        lease.putJson("timeline", { tempo_bpm: 60 }, rev),
        (e) => e instanceof BackbeatError && e.code === "lease",
      );
      assert.equal((await lease.getJson("timeline"))?.revision, rev2);
      assert.equal(lease.isHeld(), true);
    } finally {
      await lease.release();
    }
    assert.deepEqual(leaseErrors, []);

    pulse.bus.publish(n.beat, encoder.encode("beat"));
    await until(() => agentBeats.includes("beat"), { timeoutMs: WAIT_MS, what: "the beat" });
    pulse.bus.publish(n.bar, encoder.encode("forged bar"));
    await refused(pulse, "publish", n.bar);
    await reverb.bus.flush();
    await sleep(QUIET_MS);
    assert.deepEqual(reverbBars, [], "pulse's bar never arrives");
    // Its JetStream rights stop at its own bucket: reverb's stays out of reach.
    await assert.rejects(
      openKvLease({ bus: pulse.bus, bucket: n.reverbBucket, holderId: "intruder", ttlMs: 500 }),
      // nats.js fails the pending request on the server's -ERR at once, no timeout needed.
      (e) =>
        e instanceof BackbeatError && e.code === "connection" &&
        /Permissions Violation for Publish/.test(e.message),
    );
    await refused(pulse, "publish", `$JS.API.STREAM.INFO.KV_${n.reverbBucket}`);
    assert.deepEqual(
      violations(pulse).map((v) => v.subject).sort(),
      [`$JS.API.STREAM.INFO.KV_${n.reverbBucket}`, n.bar].sort(),
      "nothing the lease did was refused",
    );
  });
});

Deno.test("roles: pulse answers time requests through allow_responses only", async () => {
  await withSecured("roles-time", {}, async (s) => {
    const n = s.names;
    const pulse = await s.bus("pulse");
    // BusMessage has no reply subject yet: answer on the raw connection.
    pulse.nc.subscribe(n.time, {
      callback: (err, msg) => {
        if (!err) msg.respond(encoder.encode(JSON.stringify({ now_ms: 1 })));
      },
    });
    await pulse.bus.flush();
    const operator = await s.raw("operator");
    const reply = await operator.request(n.time, encoder.encode("{}"), { timeout: WAIT_MS });
    assert.deepEqual(reply.json(), { now_ms: 1 });
    // Without a request to answer, pulse cannot publish on an inbox (no forged replies).
    pulse.nc.publish("_INBOX.forged.reply", encoder.encode("{}"));
    await refused(pulse, "publish", "_INBOX.forged.reply");
  });
});

Deno.test("roles: reverb creates, appends to and replays its stream, holds its lease", async () => {
  await withSecured("roles-reverb", {}, async (s) => {
    const n = s.names;
    const reverb = await s.bus("reverb");
    const agent = await s.bus("agent");
    const agentBars = collect(agent, n.bar);
    await agent.bus.flush();
    // The stream as reverb/_stream.ts declares it (BarStream is private to reverb/).
    const ns = 1_000_000;
    const jsm = await jetstreamManager(reverb.nc, { timeout: WAIT_MS });
    await jsm.streams.add({
      name: n.barStream,
      subjects: [n.bar],
      retention: RetentionPolicy.Limits,
      storage: StorageType.File,
      discard: DiscardPolicy.Old,
      max_age: 3_600_000 * ns,
      max_msgs: 1_000,
      duplicate_window: 120_000 * ns,
      num_replicas: 1,
    });
    const js = jetstream(reverb.nc, { timeout: WAIT_MS });
    const first = await js.publish(n.bar, encoder.encode("report 1"), { msgID: "w1" });
    const again = await js.publish(n.bar, encoder.encode("report 1"), { msgID: "w1" });
    const second = await js.publish(n.bar, encoder.encode("report 2"), { msgID: "w2" });
    assert.equal(first.stream, n.barStream);
    assert.equal(again.duplicate, true, "the window id dedupes");
    assert.equal(second.seq, first.seq + 1);
    const updated = await jsm.streams.update(n.barStream, { max_msgs: 500 });
    assert.equal(updated.config.max_msgs, 500);
    // Core subscribers get every publish, the duplicate too: the stream alone dedupes.
    await until(() => agentBars.length === 3, { timeoutMs: WAIT_MS, what: "core subscribers" });
    assert.deepEqual(agentBars, ["report 1", "report 1", "report 2"]);

    const consumer = await js.consumers.get(n.barStream, {
      deliver_policy: DeliverPolicy.StartSequence,
      opt_start_seq: first.seq,
    });
    const messages = await consumer.fetch({ max_messages: 2, expires: WAIT_MS });
    const replayed: string[] = [];
    for await (const m of messages) {
      replayed.push(decoder.decode(m.data));
      if (m.seq >= second.seq) break;
    }
    await messages.close();
    assert.deepEqual(replayed, ["report 1", "report 2"]);

    const lease = await openKvLease({
      bus: reverb.bus,
      bucket: n.reverbBucket,
      holderId: "reverb-a",
      ttlMs: 2_000,
    });
    try {
      assert.equal(await lease.start(), true);
    } finally {
      await lease.release();
    }

    reverb.bus.publish(n.beat, encoder.encode("forged beat"));
    await refused(reverb, "publish", n.beat);
    // Another role's bucket is out of reach, for writes too.
    reverb.nc.publish(`$KV.${n.pulseBucket}.leader`, encoder.encode("{}"));
    await refused(reverb, "publish", `$KV.${n.pulseBucket}.leader`);
    assert.equal(violations(reverb).length, 2, "only the two probes were refused");
  });
});

Deno.test("roles: the operator steers and reads, and writes nothing else", async () => {
  await withSecured("roles-operator", {}, async (s) => {
    const n = s.names;
    const pulse = await s.bus("pulse");
    const reverb = await s.bus("reverb");
    const operator = await s.bus("operator");
    const control = collect(pulse, n.control);
    const statuses = collect(operator, n.status);
    await Promise.all([pulse.bus.flush(), operator.bus.flush()]);
    // Something to read: pulse's lease and state, one stored report.
    const lease = await openKvLease({
      bus: pulse.bus,
      bucket: n.pulseBucket,
      holderId: "pulse-a",
      ttlMs: 2_000,
    });
    try {
      await lease.start();
      await lease.putJson("timeline", { tempo_bpm: 120 });
      const jsmReverb = await jetstreamManager(reverb.nc, { timeout: WAIT_MS });
      await jsmReverb.streams.add({ name: n.barStream, subjects: [n.bar], num_replicas: 1 });
      await jetstream(reverb.nc).publish(n.bar, encoder.encode("report"), { msgID: "w1" });
      const agent = await s.bus("agent");
      agent.bus.publish(n.status, encoder.encode("claim"));

      operator.bus.publish(n.control, encoder.encode('{"tempo_bpm":90}'));
      await until(() => control.length === 1 && statuses.length === 1, {
        timeoutMs: WAIT_MS,
        what: "control to pulse, status to the operator",
      });

      const jsm = await jetstreamManager(operator.nc, { timeout: WAIT_MS });
      const info = await jsm.streams.info(n.barStream);
      assert.equal(info.state.messages, 1);
      assert.equal(
        decoder.decode((await jsm.streams.getMessage(n.barStream, { seq: 1 }))!.data),
        "report",
      );
      const names: string[] = [];
      for await (const name of jsm.streams.names()) names.push(name);
      assert.deepEqual(
        names.sort(),
        [n.barStream, `KV_${n.pulseBucket}`].sort(),
      );
      // KV reads both ways: STREAM.MSG.GET (a bound bucket) and DIRECT.GET.
      const js = jetstream(operator.nc, { timeout: WAIT_MS });
      for (const allow_direct of [false, true]) {
        const kv = await new Kvm(js).open(n.pulseBucket, { allow_direct });
        assert.deepEqual((await kv.get("timeline"))?.json(), { tempo_bpm: 120 });
        assert.equal((await kv.get("leader"))?.json<{ holder: string }>().holder, "pulse-a");
      }
      const consumer = await js.consumers.get(n.barStream);
      assert.equal(decoder.decode((await consumer.next({ expires: WAIT_MS }))!.data), "report");

      // Writes: a beat, a KV put, a stream change.
      operator.bus.publish(n.beat, encoder.encode("forged beat"));
      await refused(operator, "publish", n.beat);
      operator.nc.publish(`$KV.${n.pulseBucket}.leader`, encoder.encode("{}"));
      await refused(operator, "publish", `$KV.${n.pulseBucket}.leader`);
      operator.nc.publish(`$JS.API.STREAM.DELETE.${n.barStream}`, encoder.encode(""));
      await refused(operator, "publish", `$JS.API.STREAM.DELETE.${n.barStream}`);
      assert.equal(violations(operator).length, 3, "every read was allowed");
      assert.equal(lease.isHeld(), true);
    } finally {
      await lease.release();
    }
  });
});

Deno.test("roles: the real pulse and reverb run under their users without a violation", async () => {
  await withSecured("roles-live", {}, async (s) => {
    const n = s.names;
    const pulseA = await s.bus("pulse");
    const pulseB = await s.bus("pulse");
    const reverbA = await s.bus("reverb");
    const reverbB = await s.bus("reverb");
    const agent = await s.bus("agent");
    const beats = collect(agent, n.beat);
    const bars = collect(agent, n.bar);
    await agent.bus.flush();
    const a = new Pulse({ clusterId: n.cluster, bus: pulseA.bus, id: "pulse-a", tempoBpm: 600 });
    const b = new Pulse({ clusterId: n.cluster, bus: pulseB.bus, id: "pulse-b", tempoBpm: 600 });
    const r1 = new Reverb({ clusterId: n.cluster, bus: reverbA.bus, id: "reverb-a", graceMs: 50 });
    const r2 = new Reverb({ clusterId: n.cluster, bus: reverbB.bus, id: "reverb-b", graceMs: 50 });
    try {
      await a.start();
      await b.start();
      await r1.start();
      await until(() => beats.length >= 3 && bars.length >= 2, {
        timeoutMs: 10_000,
        what: "beats and bar reports at the agent",
      });
      // A second reverb replays the stored reports (consumer create and fetch) and stands by.
      await r2.start();
      assert.equal(a.role, "leader");
      assert.equal(b.role, "follower");
      await a.stop();
      await until(() => b.role === "leader", { timeoutMs: WAIT_MS, what: "the follower to lead" });
      const seen = beats.length;
      await until(() => beats.length >= seen + 3, { timeoutMs: WAIT_MS, what: "the new leader" });
      await r1.stop();
      const reports = bars.length;
      await until(() => bars.length >= reports + 2, {
        timeoutMs: 10_000,
        what: "reports from the second reverb",
      });
    } finally {
      await r2.stop();
      await r1.stop();
      await b.stop();
      await a.stop();
    }
    for (const w of [pulseA, pulseB, reverbA, reverbB, agent]) {
      assert.deepEqual(violations(w), [], `no permission violation (${w.bus.url})`);
    }
    const operator = await s.bus("operator");
    const jsm = await jetstreamManager(operator.nc, { timeout: WAIT_MS });
    const streams: string[] = [];
    for await (const name of jsm.streams.names()) streams.push(name);
    assert.deepEqual(
      streams.sort(),
      [n.barStream, `KV_${n.pulseBucket}`, `KV_${n.reverbBucket}`].sort(),
      "the services made exactly the streams the config names",
    );
    assert.ok((await jsm.streams.info(n.barStream)).state.messages >= 2, "reports are stored");
  });
});

Deno.test("roles over TLS: a client certificate from the CA is required", async () => {
  await withSecured("roles-tls", { tls: true }, async (s) => {
    const pki = s.pki!;
    const n = s.names;
    const pulse = await s.raw("pulse");
    assert.equal(pulse.info?.tls_verify, true);
    const got: string[] = [];
    pulse.subscribe(n.control, {
      callback: (_e, m) => {
        got.push(m.string());
      },
    });
    const operator = await s.raw("operator");
    operator.publish(n.control, encoder.encode("tempo"));
    await until(() => got.length === 1, { timeoutMs: WAIT_MS, what: "control over TLS" });
    // The CA alone is not enough: the server asks for a client certificate and ends the
    // session without one. (Probed with Deno's own TLS: nats.js 3.4 on Deno's node:tls reports
    // this refusal as a connect timeout plus an uncaught "BadCertificate" socket error.)
    const without = await natsProbe(
      s.server.port,
      { user: "agent", pass: s.pass.agent },
      pki.caCert,
    );
    assert.match(without, /^refused: /, "no session without a client certificate");
    // Nor is a plain client, whatever its password: the server expects a TLS handshake and
    // drops the plaintext CONNECT.
    assert.match(
      await natsProbe(s.server.port, { user: "agent", pass: s.pass.agent }),
      /^refused: /,
    );
  });
});

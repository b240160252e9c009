// connectNatsBus() against real nats-servers: user/password (options and URL), token, NKey,
// .creds (a JWT operator set-up built here, no nsc), TLS (server CA, client certificates,
// requireTls), failover between two clustered servers, and the KV lease's replicas on a
// three-node JetStream cluster. Refused logins fail fast with one redacted line, and nothing
// uncaught follows them; no message carries a secret.

import assert from "node:assert/strict";
import { jetstreamManager } from "@nats-io/jetstream";
import { type NatsConnection, nkeys } from "@nats-io/transport-node";
import { BackbeatError, type BusStatus } from "../core/mod.ts";
import { connectNatsBus, type NatsBusLike, type NatsBusOptions, openKvLease } from "../nats/mod.ts";
import { type NatsServer, startNatsServer } from "./nats_server.ts";
import { makeTestPki } from "./tls.ts";
import { until } from "./until.ts";

const enc = new TextEncoder();
const dec = new TextDecoder();
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A refused login must be answered well within this (nats.js fails at the first -ERR). */
const FAST_MS = 2_000;
/** Failover and JetStream start-up on a loaded 2-core machine: generous, not tight. */
const CLUSTER_MS = 15_000;

async function withDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "backbeat-connect-" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

async function confServer(dir: string, name: string, conf: string): Promise<NatsServer> {
  const path = `${dir}/${name}.conf`;
  await Deno.writeTextFile(path, conf);
  return await startNatsServer({ jetstream: false, args: ["-c", path] });
}

async function roundTrip(bus: NatsBusLike): Promise<void> {
  const got: string[] = [];
  const sub = bus.subscribe("backbeat.t.check", (m) => got.push(dec.decode(m.data)));
  try {
    await bus.flush();
    bus.publish("backbeat.t.check", enc.encode("hello"));
    await until(() => got.length === 1, { timeoutMs: 3000, what: "the message back" });
  } finally {
    sub.unsubscribe();
  }
}

async function connects(options: NatsBusOptions): Promise<NatsBusLike> {
  const bus = await connectNatsBus(options);
  try {
    await roundTrip(bus);
  } catch (error) {
    await bus.close();
    throw error;
  }
  return bus;
}

function assertNoSecret(text: string, secrets: readonly string[]): void {
  for (const s of secrets) {
    assert.ok(!text.includes(s), "a secret appears in a message");
  }
}

/** Credentials live in authenticator closures: nothing readable through `bus.connection`. */
function assertNoSecretInOptions(bus: NatsBusLike, secrets: readonly string[]): void {
  const options = (bus.connection as { options?: unknown }).options;
  assertNoSecret(JSON.stringify(options), secrets);
}

/**
 * Asserts a refused connect: an `auth` (refused login) or `connection` BackbeatError with exactly `message`, within
 * {@linkcode FAST_MS} (unless `slowMs`), and no secret in its message or detail.
 */
async function refused(
  options: NatsBusOptions,
  message: string | RegExp,
  secrets: readonly string[],
  slowMs = FAST_MS,
): Promise<BackbeatError> {
  const t0 = performance.now();
  let caught: unknown;
  try {
    const bus = await connectNatsBus(options);
    await bus.close();
  } catch (error) {
    caught = error;
  }
  const ms = performance.now() - t0;
  assert.ok(caught instanceof BackbeatError, `expected a BackbeatError, got ${caught}`);
  // A refused login has its own code; anything else (TLS, an unreadable file) is "connection".
  const login = /authorization violation|authentication expired/.test(caught.message);
  assert.equal(caught.code, login ? "auth" : "connection");
  assertNoSecret(caught.message, secrets);
  assertNoSecret(JSON.stringify(caught.detail ?? {}), secrets);
  if (typeof message === "string") assert.equal(caught.message, message);
  else assert.match(caught.message, message);
  assert.ok(!caught.message.includes("\n"), "one line");
  assert.ok(ms < slowMs, `answered in ${Math.round(ms)} ms, expected < ${slowMs} ms`);
  return caught;
}

// The old failure: a socket error scheduled while nats.js dropped its listeners surfaced as
// "Uncaught Error: read ECONNRESET" after the connect had failed. The test runner fails a test
// on an uncaught error, so give a stray one the time to land inside this test.
async function settle(): Promise<void> {
  await sleep(300);
}

Deno.test("user/password: options and URL connect; a wrong password fails fast, one redacted line", async () => {
  await withDir(async (dir) => {
    const pass = "p@ss:w/rd 1%";
    const wrong = "wr0ng-pass";
    await using server = await confServer(
      dir,
      "users",
      `authorization { users = [ { user: "alice", password: ${JSON.stringify(pass)} } ] }\n`,
    );
    const host = `127.0.0.1:${server.port}`;
    const secrets = [pass, encodeURIComponent(pass), wrong];

    const viaOptions = await connects({ servers: server.url, user: "alice", pass });
    assert.equal(viaOptions.url, `nats://${host}`);
    assertNoSecretInOptions(viaOptions, secrets);
    await viaOptions.close();
    const viaUrl = await connects({
      servers: `nats://alice:${encodeURIComponent(pass)}@${host}`,
    });
    assert.equal(viaUrl.url, `nats://alice:***@${host}`);
    assertNoSecretInOptions(viaUrl, secrets);
    await viaUrl.close();

    const expected = `Cannot connect to nats://alice:***@${host}: authorization violation`;
    for (let i = 0; i < 5; i++) {
      await refused({ servers: `nats://alice:${wrong}@${host}` }, expected, secrets);
      await refused({ servers: server.url, user: "alice", pass: wrong }, expected, secrets);
    }
    await refused(
      { servers: `nats://mallory:${wrong}@${host}` },
      `Cannot connect to nats://mallory:***@${host}: authorization violation`,
      secrets,
    );
    await refused(
      { servers: server.url },
      `Cannot connect to nats://${host}: authorization violation`,
      secrets,
    );
    await settle();
  });
});

Deno.test("inboxPrefix: a user confined to its own inboxes can make requests", async () => {
  await withDir(async (dir) => {
    await using server = await confServer(
      dir,
      "inbox",
      `authorization { users = [
        { user: "svc", password: "pw", permissions: {
          publish: ["backbeat.t.>"], subscribe: ["backbeat.t.>", "_INBOX_svc.>"],
          allow_responses: true } },
      ] }\n`,
    );
    const responder = await connectNatsBus({ servers: server.url, user: "svc", pass: "pw" });
    const confined = await connectNatsBus({
      servers: server.url,
      user: "svc",
      pass: "pw",
      inboxPrefix: "_INBOX_svc",
    });
    try {
      const nc = responder.connection as NatsConnection;
      nc.subscribe("backbeat.t.ask", {
        callback: (_e, m) => {
          m.respond(m.data);
        },
      });
      await responder.flush();
      const reply = await (confined.connection as NatsConnection).request(
        "backbeat.t.ask",
        enc.encode("ping"),
        { timeout: 2000 },
      );
      assert.equal(dec.decode(reply.data), "ping");
      // Without the prefix the reply subscription (_INBOX.>) is refused, and so the request.
      await assert.rejects(
        (responder.connection as NatsConnection).request("backbeat.t.ask", enc.encode("x"), {
          timeout: 1000,
        }),
      );
    } finally {
      await confined.close();
      await responder.close();
    }
  });
});

Deno.test("token: options and URL connect; a bad token fails fast, redacted", async () => {
  await withDir(async (dir) => {
    const token = "tok-s3cret-42";
    await using server = await confServer(
      dir,
      "token",
      `authorization { token: ${JSON.stringify(token)} }\n`,
    );
    const host = `127.0.0.1:${server.port}`;
    const secrets = [token, "bad-token-x"];
    await (await connects({ servers: server.url, token })).close();
    const viaUrl = await connects({ servers: `nats://${token}@${host}` });
    assert.equal(viaUrl.url, `nats://***@${host}`);
    await viaUrl.close();
    const expected = `Cannot connect to nats://***@${host}: authorization violation`;
    await refused({ servers: `nats://bad-token-x@${host}` }, expected, secrets);
    await refused({ servers: server.url, token: "bad-token-x" }, expected, secrets);
    await settle();
  });
});

Deno.test("NKey: a seed file or an inline seed connects; wrong, missing and malformed seeds are clear", async () => {
  await withDir(async (dir) => {
    const user = nkeys.createUser();
    const seed = dec.decode(user.getSeed());
    const seedFile = `${dir}/user.nk`;
    await Deno.writeTextFile(seedFile, `${seed}\n`, { mode: 0o600 });
    await using server = await confServer(
      dir,
      "nkey",
      `authorization { users = [ { nkey: "${user.getPublicKey()}" } ] }\n`,
    );
    const host = `127.0.0.1:${server.port}`;
    const stranger = dec.decode(nkeys.createUser().getSeed());
    const secrets = [seed, stranger];

    await (await connects({ servers: server.url, nkeySeedFile: seedFile })).close();
    await (await connects({ servers: server.url, nkeySeed: seed })).close();

    await refused(
      { servers: server.url, nkeySeed: stranger },
      `Cannot connect to nats://${host}: authorization violation`,
      secrets,
    );
    const missing = `${dir}/missing.nk`;
    const err = await refused(
      { servers: server.url, nkeySeedFile: missing },
      `Cannot connect to NATS: cannot use the nkeySeedFile file ${missing}: no such file`,
      secrets,
    );
    assert.deepEqual(err.detail, { setting: "nkeySeedFile", file: missing });
    const garbage = `${dir}/garbage.nk`;
    await Deno.writeTextFile(garbage, "SUNOTAREALSEEDATALL-keep-me-out-of-messages\n");
    const bad = await refused(
      { servers: server.url, nkeySeedFile: garbage },
      `Cannot connect to NATS: cannot use the nkeySeedFile file ${garbage}: not an NKey user seed (SU...)`,
      [...secrets, "keep-me-out"],
    );
    assert.equal(bad.cause, undefined, "no cause that could quote the content");
    const account = `${dir}/account.nk`;
    await Deno.writeTextFile(account, dec.decode(nkeys.createAccount().getSeed()));
    await refused(
      { servers: server.url, nkeySeedFile: account },
      /not an NKey user seed/,
      secrets,
    );
    await assert.rejects(
      connectNatsBus({ servers: server.url, nkeySeed: "SUnotaseed" }),
      (e: Error) => e instanceof TypeError && /nkeySeed: not an NKey user seed/.test(e.message),
    );
    await settle();
  });
});

// --- .creds: an operator, an account and a user, as JWTs signed here (what nsc would write).

function b64url(data: Uint8Array | string): string {
  const bytes = typeof data === "string" ? enc.encode(data) : data;
  return btoa(String.fromCharCode(...bytes)).replaceAll("+", "-").replaceAll("/", "_")
    .replace(/=+$/, "");
}

function jwt(
  issuer: nkeys.KeyPair,
  subject: string,
  name: string,
  nats: Record<string, unknown>,
): string {
  const header = b64url(JSON.stringify({ typ: "JWT", alg: "ed25519-nkey" }));
  const claims = b64url(JSON.stringify({
    jti: crypto.randomUUID().replaceAll("-", "").toUpperCase(),
    iat: Math.floor(Date.now() / 1000),
    iss: issuer.getPublicKey(),
    name,
    sub: subject,
    nats: { ...nats, version: 2 },
  }));
  const signature = issuer.sign(enc.encode(`${header}.${claims}`));
  return `${header}.${claims}.${b64url(signature)}`;
}

function credsText(userJwt: string, seed: string): string {
  return [
    "-----BEGIN NATS USER JWT-----",
    userJwt,
    "------END NATS USER JWT------",
    "",
    "************************* IMPORTANT *************************",
    "NKEY Seed printed below can be used to sign and prove identity.",
    "NKEYs are sensitive and should be treated as secrets.",
    "",
    "-----BEGIN USER NKEY SEED-----",
    seed,
    "------END USER NKEY SEED------",
    "",
    "*************************************************************",
    "",
  ].join("\n");
}

const ACCOUNT_LIMITS = {
  subs: -1,
  data: -1,
  payload: -1,
  imports: -1,
  exports: -1,
  wildcards: true,
  conn: -1,
  leaf: -1,
};

function userCreds(account: nkeys.KeyPair): { creds: string; seed: string; jwt: string } {
  const user = nkeys.createUser();
  const seed = dec.decode(user.getSeed());
  const token = jwt(account, user.getPublicKey(), "backbeat-test", {
    type: "user",
    pub: {},
    sub: {},
    subs: -1,
    data: -1,
    payload: -1,
  });
  return { creds: credsText(token, seed), seed, jwt: token };
}

Deno.test(".creds: a JWT user connects from a file or inline; unknown and malformed creds are clear", async () => {
  await withDir(async (dir) => {
    const operator = nkeys.createOperator();
    const account = nkeys.createAccount();
    await Deno.writeTextFile(
      `${dir}/operator.jwt`,
      jwt(operator, operator.getPublicKey(), "backbeat-test-operator", { type: "operator" }),
    );
    const accountJwt = jwt(operator, account.getPublicKey(), "backbeat-test-account", {
      type: "account",
      limits: ACCOUNT_LIMITS,
      default_permissions: { pub: {}, sub: {} },
    });
    await using server = await confServer(
      dir,
      "operator",
      [
        `operator: "${dir}/operator.jwt"`,
        "resolver: MEMORY",
        `resolver_preload: { ${account.getPublicKey()}: "${accountJwt}" }`,
        "",
      ].join("\n"),
    );
    const host = `127.0.0.1:${server.port}`;
    const good = userCreds(account);
    // Signed by an account the server does not know.
    const foreign = userCreds(nkeys.createAccount());
    const secrets = [good.seed, foreign.seed, good.jwt, foreign.jwt];
    const credsFile = `${dir}/user.creds`;
    await Deno.writeTextFile(credsFile, good.creds, { mode: 0o600 });

    const bus = await connects({ servers: server.url, credsFile });
    assertNoSecretInOptions(bus, secrets);
    await bus.close();
    await (await connects({ servers: server.url, creds: good.creds })).close();

    await refused(
      { servers: server.url, creds: foreign.creds },
      `Cannot connect to nats://${host}: authorization violation`,
      secrets,
    );
    const broken = `${dir}/broken.creds`;
    await Deno.writeTextFile(broken, good.creds.replace(good.seed, "SUAbroken"));
    const err = await refused(
      { servers: server.url, credsFile: broken },
      `Cannot connect to NATS: cannot use the credsFile file ${broken}: not a .creds file (a user JWT and an NKey user seed between ----- lines)`,
      secrets,
    );
    assert.equal(err.cause, undefined);
    await refused(
      { servers: server.url, credsFile: `${dir}/none.creds` },
      /credsFile file .*none\.creds: no such file$/,
      secrets,
    );
    await assert.rejects(
      connectNatsBus({ servers: server.url, creds: "not creds" }),
      (e: Error) => e instanceof TypeError && /creds: not a \.creds file/.test(e.message),
    );
    await settle();
  });
});

Deno.test("TLS: the test CA connects, no CA and a plain server are refused clearly", async () => {
  await withDir(async (dir) => {
    const pki = await makeTestPki(dir);
    await using tls = await confServer(
      dir,
      "tls",
      `tls { cert_file: "${pki.serverCert}", key_file: "${pki.serverKey}" }\n`,
    );
    await using plain = await startNatsServer({ jetstream: false });
    const host = `127.0.0.1:${tls.port}`;
    const key = await Deno.readTextFile(pki.serverKey);
    const secrets = [key.split("\n")[1]];

    const bus = await connects({ servers: tls.url, caFile: pki.caCert });
    assert.equal((bus.connection as NatsConnection).info?.tls_required, true);
    await bus.close();
    await (await connects({ servers: `tls://${host}`, caFile: pki.caCert })).close();

    // The server requires TLS: nats.js upgrades anyway, and the system CAs do not know ours.
    await refused(
      { servers: tls.url },
      new RegExp(`^Cannot connect to nats://${host}: TLS failed: .*certificate`, "i"),
      secrets,
    );
    const noTls =
      `Cannot connect to nats://127.0.0.1:${plain.port}: the server does not offer TLS, and TLS is required`;
    await refused({ servers: plain.url, requireTls: true }, noTls, secrets);
    await refused({ servers: plain.url, caFile: pki.caCert }, noTls, secrets);
    await refused(
      { servers: `tls://127.0.0.1:${plain.port}` },
      noTls.replace("nats://", "tls://"),
      secrets,
    );

    const missing = `${dir}/nope.pem`;
    await refused(
      { servers: tls.url, caFile: missing },
      `Cannot connect to NATS: cannot use the caFile file ${missing}: no such file`,
      secrets,
    );
    const notPem = `${dir}/not.pem`;
    await Deno.writeTextFile(notPem, "hello");
    await refused(
      { servers: tls.url, caFile: notPem },
      `Cannot connect to NATS: cannot use the caFile file ${notPem}: not a PEM file`,
      secrets,
    );
    await settle();
  });
});

Deno.test("TLS: a server that verifies clients takes our certificate and refuses none", async () => {
  await withDir(async (dir) => {
    const pki = await makeTestPki(dir);
    await using server = await confServer(
      dir,
      "mtls",
      `tls { cert_file: "${pki.serverCert}", key_file: "${pki.serverKey}", ca_file: "${pki.caCert}", verify: true }\n`,
    );
    const bus = await connects({
      servers: server.url,
      caFile: pki.caCert,
      certFile: pki.clientCert,
      keyFile: pki.clientKey,
    });
    const key = await Deno.readTextFile(pki.clientKey);
    assertNoSecretInOptions(bus, [key.split("\n")[1]]);
    await bus.close();
    // The server's alert comes after the handshake; nats.js notices at its timeout. This used
    // to end the process with "Uncaught Error: received fatal alert: BadCertificate".
    await refused(
      { servers: server.url, caFile: pki.caCert, timeout: 1000 },
      new RegExp(`^Cannot connect to nats://127\\.0\\.0\\.1:${server.port}: `),
      [],
      5000,
    );
    await settle();
  });
});

// nats-server writes each listener's port to its ports file; the kit reads only the client
// port, so find the file by the server's pid under the kit's temporary directory.
async function clusterUrl(server: NatsServer): Promise<string> {
  const tmp = Deno.env.get("TMPDIR") ?? "/tmp";
  for await (const dir of Deno.readDir(tmp)) {
    if (!dir.isDirectory || !dir.name.startsWith("backbeat-nats-")) continue;
    const ports = `${tmp}/${dir.name}/ports`;
    try {
      for await (const f of Deno.readDir(ports)) {
        if (!f.name.endsWith(`_${server.pid}.ports`)) continue;
        const listed = JSON.parse(await Deno.readTextFile(`${ports}/${f.name}`));
        // A crashed run's stale file may carry a reused pid: the client port must match too.
        if (listed.nats?.[0] !== server.url) continue;
        const url = listed.cluster?.[0];
        if (typeof url === "string") return url;
      }
    } catch { /* another test's server, gone meanwhile */ }
  }
  throw new Error(`no cluster port found for nats-server pid ${server.pid}`);
}

/** Starts `n` servers clustered on loopback: the first listens, the others route to it. */
async function startCluster(n: number, jetstream: boolean): Promise<NatsServer[]> {
  const name = `backbeat-${crypto.randomUUID().slice(0, 8)}`;
  const args = (i: number, routes: string) => [
    ...(jetstream ? ["--server_name", `n${i}`] : []),
    "--cluster_name",
    name,
    "--cluster",
    "nats://127.0.0.1:-1",
    "--routes",
    routes,
  ];
  const servers: NatsServer[] = [];
  try {
    // JetStream clustering insists on configured routes: the first node gets one to a port
    // nobody listens on (it keeps retrying, harmlessly) and learns the others as they route in.
    servers.push(await startNatsServer({ jetstream, args: args(0, "nats://127.0.0.1:1") }));
    const seed = await clusterUrl(servers[0]);
    for (let i = 1; i < n; i++) {
      servers.push(await startNatsServer({ jetstream, args: args(i, seed) }));
    }
    return servers;
  } catch (error) {
    await Promise.all(servers.map((s) => s.stop()));
    throw error;
  }
}

function connectedPort(bus: NatsBusLike): number {
  return Number((bus.connection as NatsConnection).getServer().split(":").pop());
}

Deno.test("cluster: a bus fails over to the other server when its server dies", async () => {
  const servers = await startCluster(2, false);
  const buses: NatsBusLike[] = [];
  try {
    const bus = await connectNatsBus({ servers: servers.map((s) => s.url) });
    buses.push(bus);
    const statuses: BusStatus[] = [];
    bus.addEventListener("status", (e) => statuses.push(e.detail.status));
    const victim = servers.find((s) => s.port === connectedPort(bus))!;
    const survivor = servers.find((s) => s !== victim)!;
    const peer = await connectNatsBus({ servers: survivor.url });
    buses.push(peer);
    const got: string[] = [];
    peer.subscribe("backbeat.t.failover", (m) => got.push(dec.decode(m.data)));
    await peer.flush();
    // Across the route first: the cluster is formed.
    await until(() => {
      bus.publish("backbeat.t.failover", enc.encode("before"));
      return got.includes("before");
    }, { timeoutMs: CLUSTER_MS, intervalMs: 100, what: "a message across the route" });

    await victim.kill();
    await until(() => statuses.includes("connected") && bus.status === "connected", {
      timeoutMs: CLUSTER_MS,
      what: "the bus connected again",
    });
    assert.equal(connectedPort(bus), survivor.port);
    assert.ok(bus.reconnects >= 1);
    assert.ok(statuses.includes("disconnected"), statuses.join(","));
    bus.publish("backbeat.t.failover", enc.encode("after"));
    await until(() => got.includes("after"), { timeoutMs: 3000, what: "a message after failover" });
  } finally {
    await Promise.all(buses.map((b) => b.close()));
    await Promise.all(servers.map((s) => s.stop()));
  }
});

Deno.test("KvLease replicas: checked, refused clearly by a single server", async () => {
  await using server = await startNatsServer();
  const bus = await connectNatsBus({ servers: server.url });
  try {
    for (const replicas of [0, 6, 1.5]) {
      await assert.rejects(
        openKvLease({ bus, bucket: "backbeat_t_replicas", holderId: "a", replicas }),
        RangeError,
      );
    }
    await assert.rejects(
      openKvLease({ bus, bucket: "backbeat_t_replicas", holderId: "a", replicas: 3 }),
      (e: Error) =>
        e instanceof BackbeatError && e.code === "connection" &&
        /^Cannot open KV bucket backbeat_t_replicas: /.test(e.message),
    );
    const lease = await openKvLease({ bus, bucket: "backbeat_t_replicas", holderId: "a" });
    await lease.release();
  } finally {
    await bus.close();
  }
});

Deno.test("KvLease replicas: a three-node JetStream cluster keeps 3 copies, and scales an old bucket up", async () => {
  const servers = await startCluster(3, true);
  let bus: NatsBusLike | undefined;
  try {
    bus = await connectNatsBus({ servers: servers.map((s) => s.url) });
    const jsm = await jetstreamManager(bus.connection as NatsConnection, {
      timeout: 2000,
      checkAPI: false,
    });
    // The meta leader is elected a few seconds after the routes are up.
    await until(async () => {
      try {
        await jsm.getAccountInfo();
        return true;
      } catch {
        return false;
      }
    }, { timeoutMs: CLUSTER_MS, intervalMs: 200, what: "JetStream in the cluster" });
    const replicasOf = async (bucket: string) =>
      (await jsm.streams.info(`KV_${bucket}`)).config.num_replicas;

    const fresh = await openKvLease({ bus, bucket: "backbeat_t_r3", holderId: "a", replicas: 3 });
    assert.equal(await fresh.start(), true);
    assert.equal(await replicasOf("backbeat_t_r3"), 3);
    await fresh.release();

    const old = await openKvLease({ bus, bucket: "backbeat_t_r1", holderId: "a" });
    await old.release();
    assert.equal(await replicasOf("backbeat_t_r1"), 1);
    const upgraded = await openKvLease({
      bus,
      bucket: "backbeat_t_r1",
      holderId: "a",
      replicas: 3,
    });
    await upgraded.release();
    assert.equal(await replicasOf("backbeat_t_r1"), 3);
  } finally {
    await bus?.close();
    await Promise.all(servers.map((s) => s.stop()));
  }
});

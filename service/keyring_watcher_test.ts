import assert from "node:assert/strict";
import {
  BackbeatError,
  generateSigningKeyPair,
  isKeyValidAt,
  Keyring,
  ManualClock,
} from "../core/mod.ts";
import { until } from "../tests/until.ts";
import { KeyringWatcher, type KeyringWatcherEventMap } from "./_keyring_watcher.ts";

Deno.test("Keyring.fromJson() loads keys per agent with their validity periods", async () => {
  const a = await generateSigningKeyPair();
  const b = await generateSigningKeyPair();
  const ring = await Keyring.fromJson({
    "agent-a": [
      { key_id: "a1", public_key: a.publicKey, not_after: "2030-01-01T00:00:00Z" },
      { key_id: "a2", public_key: b.publicKey, not_before: "2029-12-31T00:00:00+00:00" },
    ],
    "agent-b": [],
  });
  assert.equal(ring.size, 2);
  assert.equal(ring.agentCount, 2);
  const a1 = ring.get("agent-a", "a1")!;
  assert.equal(a1.agentId, "agent-a");
  assert.equal(a1.notAfter, Date.parse("2030-01-01T00:00:00Z"));
  assert.equal(a1.notBefore, undefined);
  assert.equal(a1.key.type, "public");
  assert.equal(ring.get("agent-b", "a1"), undefined, "a key belongs to one agent only");
  assert.equal(ring.get("nobody", "a1"), undefined);
  assert.deepEqual(ring.keysOf("agent-a").map((k) => k.keyId), ["a1", "a2"]);
  assert.deepEqual(ring.keysOf("nobody"), []);
  const a2 = ring.get("agent-a", "a2")!;
  assert.equal(isKeyValidAt(a2, Date.parse("2029-12-30T23:59:59Z")), false);
  assert.equal(isKeyValidAt(a2, Date.parse("2029-12-31T00:00:00Z")), true);
  assert.equal(isKeyValidAt(a1, Date.parse("2030-01-01T00:00:00.001Z")), false);
});

Deno.test("Keyring.fromJson() rejects bad entries with a message naming the entry", async () => {
  const { publicKey } = await generateSigningKeyPair();
  const cases: Array<[unknown, RegExp]> = [
    [[], /expected an object/],
    [{ a: {} }, /keys of agent "a" must be an array/],
    [{ a: [{ public_key: publicKey }] }, /a\[0\]\.key_id must be a string/],
    [{ a: [{ key_id: "k", public_key: "!!!" }] }, /a\[0\]\.public_key is not base64/],
    [{ a: [{ key_id: "k", public_key: btoa("short") }] }, /is 5 bytes, expected 32/],
    [
      { a: [{ key_id: "k", public_key: publicKey, not_after: "tomorrow" }] },
      /a\[0\]\.not_after must be an RFC 3339 date-time/,
    ],
    [
      {
        a: [{
          key_id: "k",
          public_key: publicKey,
          not_before: "2030-01-02T00:00:00Z",
          not_after: "2030-01-01T00:00:00Z",
        }],
      },
      /not_after is before not_before/,
    ],
  ];
  for (const [json, message] of cases) {
    await assert.rejects(
      Keyring.fromJson(json),
      (e) => e instanceof BackbeatError && e.code === "key" && message.test(e.message),
      `expected ${message} for ${JSON.stringify(json)}`,
    );
  }
});

Deno.test("Keyring.fromJson() reuses imported keys from the cache", async () => {
  const { publicKey } = await generateSigningKeyPair();
  const cache = new Map<string, CryptoKey>();
  const first = await Keyring.fromJson({ a: [{ key_id: "k", public_key: publicKey }] }, cache);
  assert.equal(cache.size, 1);
  const second = await Keyring.fromJson({ b: [{ key_id: "k", public_key: publicKey }] }, cache);
  assert.equal(second.get("b", "k")!.key, first.get("a", "k")!.key);
  await Keyring.fromJson({}, cache);
  assert.equal(cache.size, 0, "keys no longer in the file leave the cache");
});

Deno.test("KeyringWatcher reloads on change and rename, and keeps the old keyring on a bad file", async () => {
  const dir = await Deno.makeTempDir({ prefix: "reverb-keyring-" });
  const path = `${dir}/keyring.json`;
  const k1 = await generateSigningKeyPair();
  const k2 = await generateSigningKeyPair();
  const k3 = await generateSigningKeyPair();
  await Deno.writeTextFile(
    path,
    JSON.stringify({ a: [{ key_id: "k1", public_key: k1.publicKey }] }),
  );
  const watcher = new KeyringWatcher(path, { debounceMs: 20 });
  const next = <K extends "reload" | "error">(type: K) =>
    new Promise<KeyringWatcherEventMap[K]>((resolve) =>
      watcher.addEventListener(type, resolve, { once: true })
    );
  try {
    await watcher.start();
    assert.ok(watcher.current.get("a", "k1"));

    let reloaded = next("reload");
    await Deno.writeTextFile(
      path,
      JSON.stringify({ a: [{ key_id: "k2", public_key: k2.publicKey }] }),
    );
    await reloaded;
    assert.ok(watcher.current.get("a", "k2"));
    assert.equal(watcher.current.get("a", "k1"), undefined);

    const failed = next("error");
    await Deno.writeTextFile(path, "{ not json");
    const event = await failed;
    assert.match(event.message, /not JSON.*keeping the previous keyring/);
    assert.ok(watcher.current.get("a", "k2"), "the previous keyring stays in force");
    assert.ok(watcher.failures >= 1);

    // Config tools replace the file by rename: the directory watch sees that too.
    await Deno.writeTextFile(
      `${dir}/tmp.json`,
      JSON.stringify({ a: [{ key_id: "k3", public_key: k3.publicKey }] }),
    );
    reloaded = next("reload");
    await Deno.rename(`${dir}/tmp.json`, path);
    await reloaded;
    assert.ok(watcher.current.get("a", "k3"));
  } finally {
    await watcher.stop();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("KeyringWatcher reloads on SIGHUP without waiting for the debounce", async () => {
  const dir = await Deno.makeTempDir({ prefix: "reverb-keyring-" });
  const path = `${dir}/keyring.json`;
  const k1 = await generateSigningKeyPair();
  const k2 = await generateSigningKeyPair();
  await Deno.writeTextFile(
    path,
    JSON.stringify({ a: [{ key_id: "k1", public_key: k1.publicKey }] }),
  );
  // A debounce far longer than the test: only the signal can cause the reload in time.
  const watcher = new KeyringWatcher(path, { debounceMs: 60_000 });
  try {
    await watcher.start();
    await Deno.writeTextFile(
      path,
      JSON.stringify({ a: [{ key_id: "k2", public_key: k2.publicKey }] }),
    );
    const reloaded = new Promise((r) => watcher.addEventListener("reload", r, { once: true }));
    Deno.kill(Deno.pid, "SIGHUP");
    await reloaded;
    assert.ok(watcher.current.get("a", "k2"));
    assert.equal(watcher.reloads, 2);
  } finally {
    await watcher.stop();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("KeyringWatcher.start() fails loudly when the first load fails", async () => {
  const watcher = new KeyringWatcher("/nonexistent/keyring.json");
  await assert.rejects(
    watcher.start(),
    (e) => e instanceof BackbeatError && /Cannot read keyring \/nonexistent/.test(e.message),
  );
  await watcher.stop();
});

Deno.test("KeyringWatcher debounces on its clock: the reload waits for the clock, not the wall", async () => {
  const dir = await Deno.makeTempDir({ prefix: "reverb-keyring-" });
  const path = `${dir}/keyring.json`;
  const k1 = await generateSigningKeyPair();
  const k2 = await generateSigningKeyPair();
  await Deno.writeTextFile(
    path,
    JSON.stringify({ a: [{ key_id: "k1", public_key: k1.publicKey }] }),
  );
  const clock = new ManualClock(0);
  const reloads: number[] = [];
  {
    await using watcher = new KeyringWatcher(path, {
      debounceMs: 100,
      reloadOnSighup: false,
      clock,
    });
    watcher.addEventListener("reload", (e) => reloads.push(e.detail.keys));
    await watcher.start();
    await Deno.writeTextFile(
      path,
      JSON.stringify({ a: [{ key_id: "k2", public_key: k2.publicKey }] }),
    );
    await until(() => clock.pending > 0, { what: "the file event to arm the debounce" });
    await clock.advance(99);
    assert.equal(watcher.reloads, 1, "not before the debounce has passed on the clock");
    await clock.advance(1);
    await until(() => watcher.current.get("a", "k2") !== undefined, { what: "the reload" });
    assert.deepEqual(reloads, [1]);
  }
  // Disposed: no timer left behind, and a later change reloads nothing.
  assert.equal(clock.pending, 0);
  await Deno.writeTextFile(path, "{}");
  await clock.advance(1_000);
  assert.deepEqual(reloads, [1]);
  await Deno.remove(dir, { recursive: true });
});

import assert from "node:assert/strict";
import {
  BackbeatError,
  generateSigningKeyPair,
  importSigningKey,
  Keyring,
  readSigningKeyFile,
  signMessage,
  verifySigned,
} from "./mod.ts";

const payload = new TextEncoder().encode('{"type":"backbeat.beatframe.v1"}');

async function setup() {
  const pair = await generateSigningKeyPair();
  const key = await importSigningKey(pair.keyPair.privateKey);
  const keyring = await Keyring.fromJson({
    "pulse-a": [{ key_id: pair.keyId, public_key: pair.publicKey }],
  });
  return { pair, key, keyring };
}

Deno.test("verifySigned accepts the signer's frame and names why anything else fails", async () => {
  const { key, keyring } = await setup();
  const headers = await signMessage(key, "backbeat.beatframe.v1", "prod", payload, 3);
  const ok = await verifySigned(keyring, "backbeat.beatframe.v1", "prod", payload, headers, {
    epoch: 3,
  });
  assert.equal(ok.ok, true);
  const check = (
    o: Partial<Parameters<typeof verifySigned>[5]>,
    h = headers,
    p = payload,
    c = "prod",
  ) => verifySigned(keyring, "backbeat.beatframe.v1", c, p, h, { epoch: 3, ...o });
  assert.deepEqual(await check({}, {} as typeof headers), { ok: false, reason: "unsigned" });
  assert.deepEqual(await check({}, { ...headers, "x-key-id": "nope" }), {
    ok: false,
    reason: "unknown_key",
  });
  assert.deepEqual(await check({ epoch: 4 }), { ok: false, reason: "bad_signature" });
  assert.deepEqual(await check({}, headers, payload, "staging"), {
    ok: false,
    reason: "bad_signature",
  });
  assert.deepEqual(await check({}, headers, new TextEncoder().encode("{}")), {
    ok: false,
    reason: "bad_signature",
  });
  assert.deepEqual(await check({}, { ...headers, "x-signature": "!!" }), {
    ok: false,
    reason: "bad_signature",
  });
  assert.deepEqual(await check({ owner: "pulse-b" }), { ok: false, reason: "unknown_key" });
  assert.equal((await check({ owner: "pulse-a" })).ok, true);
});

Deno.test("verifySigned refuses a key outside its validity period", async () => {
  const pair = await generateSigningKeyPair();
  const keyring = await Keyring.fromJson({
    ops: [{ key_id: pair.keyId, public_key: pair.publicKey, not_after: "2020-01-01T00:00:00Z" }],
  });
  const key = await importSigningKey(pair.keyPair.privateKey);
  const headers = await signMessage(key, "backbeat.control.v1", "prod", payload);
  assert.deepEqual(
    await verifySigned(keyring, "backbeat.control.v1", "prod", payload, headers),
    { ok: false, reason: "key_expired" },
  );
});

Deno.test("readSigningKeyFile reads a private JWK with its kid, and never prints the file", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const pair = await generateSigningKeyPair();
    const path = `${dir}/pulse.key.json`;
    await Deno.writeTextFile(path, JSON.stringify({ ...pair.privateJwk, kid: "pulse-2026" }));
    const key = await readSigningKeyFile(path);
    assert.equal(key.keyId, "pulse-2026");
    assert.equal(key.publicKey, pair.publicKey);
    const secret = `${dir}/bad.json`;
    await Deno.writeTextFile(secret, '{"d": "SECRET-SEED-VALUE", oops}');
    await assert.rejects(readSigningKeyFile(secret), (e) => {
      assert.ok(e instanceof BackbeatError && e.code === "key");
      assert.match(e.message, /not JSON/);
      assert.doesNotMatch(e.message, /SECRET/);
      return true;
    });
    await assert.rejects(readSigningKeyFile(`${dir}/missing.json`), /Cannot read key file/);
    await Deno.writeTextFile(
      secret,
      JSON.stringify({ kty: "OKP", crv: "Ed25519", x: pair.publicKey }),
    );
    await assert.rejects(readSigningKeyFile(secret), /expected an Ed25519 private JWK/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

import assert from "node:assert/strict";
import {
  BackbeatError,
  exportPublicKey,
  generateSigningKeyPair,
  hmacKey,
  hmacSign,
  hmacVerify,
  importPublicKey,
  importSigningKey,
  signedBytes,
  signPayload,
  verifyPayload,
} from "./mod.ts";

const payload = new TextEncoder().encode('{"type":"backbeat.statusclaim.v1"}');

Deno.test("a generated key signs payloads that verify with its exported public key", async () => {
  const gen = await generateSigningKeyPair();
  assert.equal(Uint8Array.fromBase64(gen.publicKey).length, 32);
  assert.equal(await exportPublicKey(gen.keyPair.publicKey), gen.publicKey);
  const sig = await signPayload(gen.keyPair.privateKey, payload);
  assert.equal(Uint8Array.fromBase64(sig).length, 64);
  const pub = await importPublicKey(gen.publicKey);
  assert.equal(await verifyPayload(pub, payload, sig), true);
  // One flipped byte of payload or signature fails.
  const tampered = payload.slice();
  tampered[3] ^= 1;
  assert.equal(await verifyPayload(pub, tampered, sig), false);
  assert.equal(await verifyPayload(pub, payload, "not base64!"), false);
  assert.equal(await verifyPayload(pub, payload, new Uint8Array(10).toBase64()), false);
});

Deno.test("importSigningKey() accepts a CryptoKey, a JWK, PKCS#8 bytes and a 32-byte seed", async () => {
  const gen = await generateSigningKeyPair();
  const pkcs8 = new Uint8Array(await crypto.subtle.exportKey("pkcs8", gen.keyPair.privateKey));
  const seed = pkcs8.slice(-32);
  const forms = [gen.keyPair.privateKey, gen.privateJwk, pkcs8, seed];
  const pub = await importPublicKey(gen.publicKey);
  for (const form of forms) {
    const key = await importSigningKey(form);
    assert.equal(key.publicKey, gen.publicKey);
    assert.equal(key.keyId, gen.keyId);
    assert.equal(
      await verifyPayload(pub, payload, await signPayload(key.privateKey, payload)),
      true,
    );
  }
  assert.equal((await importSigningKey(seed, "k-2026")).keyId, "k-2026");
});

Deno.test("importSigningKey() rejects what is not an Ed25519 private key", async () => {
  const gen = await generateSigningKeyPair();
  for (const bad of [new Uint8Array(5), gen.keyPair.publicKey, { kty: "EC" } as JsonWebKey]) {
    await assert.rejects(
      importSigningKey(bad),
      (e) =>
        e instanceof BackbeatError && e.code === "key" &&
        /Cannot import signing key/.test(e.message),
    );
  }
  await assert.rejects(importPublicKey(new Uint8Array(31).toBase64()), /31 bytes, expected 32/);
});

Deno.test("signedBytes binds domain, cluster and epoch: a signature verifies for no other", async () => {
  const { keyPair, publicKey } = await generateSigningKeyPair();
  const pub = await importPublicKey(publicKey);
  const payload = new TextEncoder().encode('{"a":1}');
  const bytes = signedBytes("backbeat.beatframe.v1", "prod", payload, 7);
  assert.equal(
    new TextDecoder().decode(bytes),
    'backbeat.beatframe.v1\nprod\n7\n{"a":1}',
  );
  const sig = await signPayload(keyPair.privateKey, bytes);
  assert.equal(await verifyPayload(pub, bytes, sig), true);
  for (
    const other of [
      signedBytes("backbeat.statusclaim.v1", "prod", payload, 7),
      signedBytes("backbeat.beatframe.v1", "staging", payload, 7),
      signedBytes("backbeat.beatframe.v1", "prod", payload, 8),
      payload,
    ]
  ) {
    assert.equal(await verifyPayload(pub, other, sig), false);
  }
  assert.throws(() => signedBytes("backbeat.control.v1", "prod", payload, -1), RangeError);
});

Deno.test("hmacVerify accepts the token's MAC only", async () => {
  const key = await hmacKey("s3cret");
  const other = await hmacKey("s3cret!");
  const bytes = new TextEncoder().encode("{}");
  const mac = await hmacSign(key, bytes);
  assert.match(mac, /^[0-9a-f]{64}$/);
  assert.equal(await hmacVerify(key, bytes, mac), true);
  assert.equal(await hmacVerify(other, bytes, mac), false);
  assert.equal(await hmacVerify(key, new TextEncoder().encode("{ }"), mac), false);
  assert.equal(await hmacVerify(key, bytes, "zz"), false);
  await assert.rejects(hmacKey(""), TypeError);
});

import assert from "node:assert/strict";
import {
  BackbeatError,
  decodeBase64,
  encodeBase64,
  exportPublicKey,
  generateSigningKeyPair,
  importPublicKey,
  importSigningKey,
  signPayload,
  verifyPayload,
} from "./mod.ts";

const payload = new TextEncoder().encode('{"type":"backbeat.statusclaim.v1"}');

Deno.test("a generated key signs payloads that verify with its exported public key", async () => {
  const gen = await generateSigningKeyPair();
  assert.equal(decodeBase64(gen.publicKey).length, 32);
  assert.equal(await exportPublicKey(gen.keyPair.publicKey), gen.publicKey);
  const sig = await signPayload(gen.keyPair.privateKey, payload);
  assert.equal(decodeBase64(sig).length, 64);
  const pub = await importPublicKey(gen.publicKey);
  assert.equal(await verifyPayload(pub, payload, sig), true);
  // One flipped byte of payload or signature fails.
  const tampered = payload.slice();
  tampered[3] ^= 1;
  assert.equal(await verifyPayload(pub, tampered, sig), false);
  assert.equal(await verifyPayload(pub, payload, "not base64!"), false);
  assert.equal(await verifyPayload(pub, payload, encodeBase64(new Uint8Array(10))), false);
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
  await assert.rejects(importPublicKey(encodeBase64(new Uint8Array(31))), /31 bytes, expected 32/);
});

import assert from "node:assert/strict";
import { cachedWindowId, knownWindowId, windowId, windowIdsSettled } from "./mod.ts";

Deno.test("windowId: 32 lowercase hex digits of SHA-256(cluster:downbeat)", async () => {
  const digest = new Uint8Array(
    await crypto.subtle.digest("SHA-256", new TextEncoder().encode("chorus-dev:1336")),
  );
  const expected = Array.from(digest.slice(0, 16), (b) => b.toString(16).padStart(2, "0")).join("");
  assert.equal(await windowId("chorus-dev", 1336), expected);
});

Deno.test("cachedWindowId: derived once, then known synchronously", async () => {
  assert.equal(knownWindowId("cache-test", 8), undefined);
  const p1 = cachedWindowId("cache-test", 8);
  const p2 = cachedWindowId("cache-test", 8);
  assert.equal(p1, p2);
  await windowIdsSettled();
  assert.equal(knownWindowId("cache-test", 8), await windowId("cache-test", 8));
});

Deno.test("cachedWindowId: stays bounded and forgets a failed derivation", async () => {
  for (let i = 0; i < 1_100; i++) cachedWindowId("cache-bound", i);
  await windowIdsSettled();
  assert.equal(knownWindowId("cache-bound", 0), undefined);
  assert.equal(typeof knownWindowId("cache-bound", 1_099), "string");
  await assert.rejects(cachedWindowId("cache-bound", -1), RangeError);
  assert.equal(knownWindowId("cache-bound", -1), undefined);
});

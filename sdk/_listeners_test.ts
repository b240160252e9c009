import assert from "node:assert/strict";
import { type BeatEventDetail, Client, defaultConfig, InMemoryBus } from "./mod.ts";
import { listenerRegistryOf } from "./_client.ts";
import { ListenerRegistry } from "./_listeners.ts";
import { BeatSource, quietLogger } from "../tests/sdk_helpers.ts";

Deno.test("ListenerRegistry keys listeners by type, listener and capture, as EventTarget does", () => {
  const registry = new ListenerRegistry();
  const f = () => {};
  const g = { handleEvent() {} };
  registry.add("beat", f, false, f);
  registry.add("beat", f, true, f);
  registry.add("beat", g, false, g);
  registry.add("error", f, false, f);
  assert.equal(registry.count("beat"), 3);
  assert.equal(registry.size, 4);
  registry.delete("beat", f, true);
  assert.equal(registry.count("beat"), 2);
  assert.equal(registry.get("beat", f, true), undefined);
  assert.ok(registry.get("beat", f, false));
  // A stale wrapper (a `once` that fired after the listener was added again) removes nothing.
  assert.equal(registry.delete("beat", f, false, () => {}), undefined);
  assert.equal(registry.count("beat"), 2);
  registry.delete("beat", f, false);
  registry.delete("beat", g, false);
  registry.delete("error", f, false);
  assert.equal(registry.size, 0);
  assert.equal(registry.has("beat"), false);
});

Deno.test("ListenerRegistry detaches from a signal when the listener goes another way", () => {
  const registry = new ListenerRegistry();
  const controller = new AbortController();
  const f = () => {};
  registry.add("beat", f, false, f, controller.signal);
  registry.delete("beat", f, false);
  registry.add("beat", f, false, f); // added again, without the signal
  controller.abort(); // must not remove the new registration
  assert.equal(registry.count("beat"), 1);
});

Deno.test("a once listener that adds itself again stays registered exactly once", async () => {
  const bus = new InMemoryBus();
  const config = { ...defaultConfig(), clusterId: "lst", agentId: "a", bus, logger: quietLogger() };
  await using client = new Client(config);
  const registry = listenerRegistryOf(client);
  await client.start();
  const seen: number[] = [];
  const again = (e: CustomEvent<BeatEventDetail>) => {
    seen.push(e.detail.frame.beat_index);
    client.addEventListener("beat", again, { once: true });
  };
  client.addEventListener("beat", again, { once: true });
  const source = new BeatSource(bus, "lst");
  for (let i = 0; i < 50; i++) {
    await source.publish(i);
    await bus.flush();
    assert.equal(registry.size, 1);
  }
  assert.deepEqual(seen, Array.from({ length: 50 }, (_, i) => i));
  client.removeEventListener("beat", again);
  assert.equal(registry.size, 0);
  await source.publish(50);
  await bus.flush();
  assert.equal(seen.length, 50);
  await bus.close();
});

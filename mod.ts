/**
 * BACKBEAT: one shared rhythm for a distributed system.
 *
 * - The SDK (`Client`, beat callbacks, status claims, beat budgets, health, local degradation):
 *   this module, the same as `@chorus/backbeat/sdk`.
 * - NATS: `@chorus/backbeat/nats` (also `connectNatsBus` here); a test kit: `@chorus/backbeat/testing`.
 * - The contracts (JSON Schemas and a validator): `@chorus/backbeat/schemas`.
 * - The services: `@chorus/backbeat/pulse` and `@chorus/backbeat/reverb`.
 *
 * @example Follow the beat
 * ```ts
 * import { Client, defaultConfig, InMemoryBus } from "@chorus/backbeat";
 * const config = { ...defaultConfig(), clusterId: "dev", agentId: "a1", bus: new InMemoryBus() };
 * await using client = new Client(config);
 * client.onDownbeat((frame) => console.log("bar", frame.window_id));
 * await client.start();
 * ```
 *
 * @module
 */
export * from "./sdk/mod.ts";

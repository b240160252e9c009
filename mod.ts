/**
 * BACKBEAT: one shared rhythm for a distributed system.
 *
 * - The SDK (`Client`, beat callbacks, status claims, beat budgets, health, local degradation)
 *   and the shared wire core: see `@chorus/backbeat/sdk`.
 * - The contracts (JSON Schemas and a validator): `@chorus/backbeat/schemas`.
 * - The services: `@chorus/backbeat/pulse` and `@chorus/backbeat/reverb`.
 *
 * @example Follow the beat schedule
 * ```ts
 * import { Timeline } from "@chorus/backbeat";
 * const timeline = new Timeline({ originTime: Date.now(), tempoBpm: 120 });
 * console.log(timeline.phaseOf(3)); // "review"
 * ```
 *
 * @module
 */
export * from "./sdk/mod.ts";

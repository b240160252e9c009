/**
 * Test kit for code that uses BACKBEAT: a {@linkcode ManualClock} so hours of beats run in
 * milliseconds, the embedded {@linkcode InMemoryBus}, and a {@linkcode BeatSource} that
 * publishes frames exactly as pulse builds them, beat by beat, on your command: with a timeline
 * epoch, and signed with a pulse key for clients configured with `pulseKeys`. For scheduled
 * delivery (callbacks at pulse's instants), {@linkcode answerTimeRequests} answers the clients'
 * clock requests as pulse does, and a {@linkcode SkewedClock} gives pulse a clock that runs
 * ahead of, or faster than, the clients'.
 *
 * Layering: `testing/` imports `core/` only.
 *
 * @example Drive a client by hand
 * ```ts
 * import { Client, defaultConfig } from "@chorus/backbeat";
 * import { BeatSource, InMemoryBus } from "@chorus/backbeat/testing";
 * const bus = new InMemoryBus();
 * const source = new BeatSource(bus, "dev", { tempoBpm: 120 });
 * await using client = new Client({ ...defaultConfig(), clusterId: "dev", agentId: "a1", bus });
 * const seen: number[] = [];
 * client.onBeat((frame) => {
 *   seen.push(frame.beat_index);
 * });
 * await client.start();
 * await source.publish(0);
 * await bus.flush();
 * console.log(seen); // [0]
 * ```
 *
 * @module
 */
export { BeatSource, type BeatSourceOptions } from "./_beat_source.ts";
export { SkewedClock } from "./_skewed_clock.ts";
export {
  type AnswerTimeOptions,
  answerTimeRequests,
  InMemoryBus,
  type InMemoryBusOptions,
  ManualClock,
} from "../core/mod.ts";
// The schedule a BeatSource scripts (`source.timeline.dueAt(n)`), as a type only.
export type { Timeline, TimelineJson, TimelineOptions, TimelineSegment } from "../core/mod.ts";

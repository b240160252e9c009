/**
 * BACKBEAT's versioned wire contracts: the JSON Schemas of the three v1 messages (BeatFrame,
 * StatusClaim, BarReport), a fast validator whose messages are written for people, and the
 * `backbeat-validate` CLI (`@chorus/backbeat/validate`).
 *
 * The built-in schemas are compiled ahead of time by ajv (standalone code; `allErrors`, strict
 * mode, ajv-formats), so validation starts instantly; other schema sets are compiled once by ajv
 * at run time ({@linkcode MessageValidator.fromSchemas}). A message's `type` picks its schema.
 * Malformed JSON, a key repeated within one object of a text (JSON.parse would keep only the
 * last value), nesting deeper than 256 levels, a missing or unknown `type`, and BarReport's
 * `to_beat < from_beat` (which JSON Schema cannot express) are all reported as validation
 * errors, never thrown. Error messages are the ones of the contracts' troubleshooting table,
 * e.g. `hlc must match pattern XXXX:XXXX:XXXX (hex)`.
 *
 * @example Validate a message
 * ```ts
 * import { validateMessage, validateMessageString } from "@chorus/backbeat/schemas";
 *
 * const frame = {
 *   type: "backbeat.beatframe.v1",
 *   cluster_id: "chorus-prod",
 *   beat_index: 1337,
 *   downbeat: false,
 *   phase: "execute",
 *   hlc: "7ffd:0001:abcd",
 *   deadline_at: "2025-09-05T12:30:00Z",
 *   tempo_bpm: 2.0,
 *   window_id: "7e9b0e6c4c9a4e59b7f2d9a3c1b2e4d5",
 * };
 * console.log(validateMessage(frame).valid); // true
 *
 * const bad = validateMessageString('{"type":"backbeat.beatframe.v1","hlc":"nope"}');
 * for (const error of bad.errors) console.log(`${error.path}: ${error.message}`);
 * // /cluster_id: cluster_id field is required
 * // ...
 * // /hlc: hlc must match pattern XXXX:XXXX:XXXX (hex)
 * ```
 *
 * Layering: `schemas/` imports only `core/`. `decodeBeatFrame()` is the one gate every frame from
 * the bus passes (the SDK, pulse followers and reverb).
 *
 * @module
 */
export {
  assertValidMessage,
  defaultMessageValidator,
  MessageValidator,
  type MessageValidatorOptions,
  validateMessage,
  validateMessageString,
  type ValidationResult,
} from "./_validator.ts";
export { BUILTIN_SCHEMAS, type JsonSchema } from "./_builtin_schemas.ts";
export type { ValidationError } from "./_messages_text.ts";
export { decodeBeatFrame } from "./_decode_frame.ts";
// The message types the functions above narrow to, so this entrypoint documents on its own.
export type {
  BackbeatMessage,
  BarReport,
  BarReportIssue,
  BeatFrame,
  ClaimState,
  IssueKind,
  Phase,
  StatusClaim,
} from "../core/mod.ts";

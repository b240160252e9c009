// The three built-in v1 schemas, imported as JSON modules.

import beatframeSchema from "./beatframe-v1.schema.json" with { type: "json" };
import statusclaimSchema from "./statusclaim-v1.schema.json" with { type: "json" };
import barreportSchema from "./barreport-v1.schema.json" with { type: "json" };

/** A JSON Schema document, as parsed from its file. */
export type JsonSchema = Record<string, unknown>;

/** The BeatFrame (INT-A) schema, `backbeat.beatframe.v1`, version 1.1.0. */
export const BEATFRAME_V1_SCHEMA: JsonSchema = beatframeSchema;
/** The StatusClaim (INT-B) schema, `backbeat.statusclaim.v1`, version 1.0.0. */
export const STATUSCLAIM_V1_SCHEMA: JsonSchema = statusclaimSchema;
/** The BarReport (INT-C) schema, `backbeat.barreport.v1`, version 1.0.0. */
export const BARREPORT_V1_SCHEMA: JsonSchema = barreportSchema;
/** The three built-in v1 schemas. */
export const BUILTIN_SCHEMAS: readonly JsonSchema[] = Object.freeze([
  BEATFRAME_V1_SCHEMA,
  STATUSCLAIM_V1_SCHEMA,
  BARREPORT_V1_SCHEMA,
]);

/** The built-in schemas with the message type each declares. */
export const BUILTIN_SCHEMA_LIST: readonly { type: string; schema: JsonSchema }[] = [
  { type: beatframeSchema.properties.type.const, schema: BEATFRAME_V1_SCHEMA },
  { type: statusclaimSchema.properties.type.const, schema: STATUSCLAIM_V1_SCHEMA },
  { type: barreportSchema.properties.type.const, schema: BARREPORT_V1_SCHEMA },
];

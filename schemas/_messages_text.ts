// Turns ajv's terse error objects into the sentences of the published troubleshooting table.
// Only called for invalid messages, so clarity wins over speed here.

import type { ErrorObject } from "ajv";

/** One problem found in a message. */
export interface ValidationError {
  /** JSON Pointer (RFC 6901) to the offending value, `""` for the whole message. */
  path: string;
  /**
   * What kind of rule failed: a JSON Schema keyword (`required`, `pattern`, `enum`, …), or one of
   * BACKBEAT's own: `json` (not parseable), `duplicateKey` (a key repeated in one object of a
   * text), `depth` (nested too deeply to validate), `type` (missing or unknown message type),
   * `beatRange` (to_beat below from_beat), `read` (the CLI could not read the input).
   */
  keyword: string;
  /** A sentence for people, e.g. `hlc must match pattern XXXX:XXXX:XXXX (hex)`. */
  message: string;
  /** 1-based line of a JSON syntax error or a repeated key (keywords `json`, `duplicateKey`). */
  line?: number;
  /** 1-based column (UTF-16 code units) of the same (keywords `json`, `duplicateKey`). */
  column?: number;
}

// Patterns whose meaning a person cannot read off the regular expression. Keyed by the pattern
// text, so schemas loaded from a custom directory get the same wording when they reuse it.
const PATTERN_TEXT: Readonly<Record<string, string>> = {
  "^[0-9a-fA-F]{4}:[0-9a-fA-F]{4}:[0-9a-fA-F]{4}$": "must match pattern XXXX:XXXX:XXXX (hex)",
  "^[0-9a-fA-F]{32}$": "must be exactly 32 hex characters",
  "^[^\\s.*>\\u0000-\\u001f\\u007f]*$":
    'must be a NATS subject token (no whitespace, ".", "*" or ">")',
};

const TYPE_TEXT: Readonly<Record<string, string>> = {
  integer: "an integer",
  number: "a number",
  string: "a string",
  boolean: "true or false",
  object: "an object",
  array: "an array",
  null: "null",
};

/** Decodes one JSON Pointer segment (RFC 6901). */
function unescapeSegment(segment: string): string {
  return segment.replaceAll("~1", "/").replaceAll("~0", "~");
}

/** Encodes one JSON Pointer segment (RFC 6901). */
function escapeSegment(segment: string): string {
  return segment.replaceAll("~", "~0").replaceAll("/", "~1");
}

/**
 * The name people read for a JSON Pointer: `/issues/0/detail` becomes `issues[0].detail`, a
 * top-level field keeps its bare name, and the root is `message`.
 */
export function fieldName(pointer: string): string {
  if (pointer === "") return "message";
  let name = "";
  for (const raw of pointer.slice(1).split("/")) {
    const segment = unescapeSegment(raw);
    if (/^(0|[1-9][0-9]*)$/.test(segment)) name += `[${segment}]`;
    else name += name === "" ? segment : `.${segment}`;
  }
  return name;
}

/** Quotes a name from the message itself, shortened so a hostile key cannot bloat the report. */
function quote(name: string): string {
  return JSON.stringify(name.length > 64 ? `${name.slice(0, 60)}…` : name);
}

/** Formats a schema value (an enum member, a const, a limit) for a sentence. */
function show(value: unknown): string {
  return typeof value === "string" ? value : JSON.stringify(value);
}

/**
 * Describes one ajv error in words.
 *
 * @param error The ajv error object (with `allErrors`, one of several).
 * @returns The error with path, keyword and message.
 */
export function describeAjvError(error: ErrorObject): ValidationError {
  const path = error.instancePath;
  const field = fieldName(path);
  const params = error.params as Record<string, unknown>;
  switch (error.keyword) {
    case "required": {
      const missing = String(params.missingProperty);
      const at = `${path}/${escapeSegment(missing)}`;
      return { path: at, keyword: "required", message: `${fieldName(at)} field is required` };
    }
    case "additionalProperties": {
      const extra = String(params.additionalProperty);
      const where = path === "" ? "" : ` in ${field}`;
      return {
        path: `${path}/${escapeSegment(extra)}`,
        keyword: "additionalProperties",
        message: `unknown field ${quote(extra)}${where} is not allowed`,
      };
    }
    case "type": {
      const wanted = String(params.type).split(",").map((t) => TYPE_TEXT[t] ?? t).join(" or ");
      const subject = path === "" ? "message" : field;
      return { path, keyword: "type", message: `${subject} must be ${wanted}` };
    }
    case "pattern": {
      const pattern = String(params.pattern);
      const text = PATTERN_TEXT[pattern] ?? `must match pattern ${pattern}`;
      return { path, keyword: "pattern", message: `${field} ${text}` };
    }
    case "enum": {
      const allowed = (params.allowedValues as unknown[]).map(show).join(", ");
      return { path, keyword: "enum", message: `${field} must be one of: ${allowed}` };
    }
    case "const":
      return { path, keyword: "const", message: `${field} must be ${show(params.allowedValue)}` };
    case "minimum":
    case "maximum":
    case "exclusiveMinimum":
    case "exclusiveMaximum": {
      const phrase = {
        minimum: "at least",
        maximum: "at most",
        exclusiveMinimum: "greater than",
        exclusiveMaximum: "less than",
      }[error.keyword];
      return {
        path,
        keyword: error.keyword,
        message: `${field} must be ${phrase} ${params.limit}`,
      };
    }
    case "minLength": {
      const limit = Number(params.limit);
      const message = limit === 1
        ? `${field} must not be empty`
        : `${field} must be at least ${limit} characters long`;
      return { path, keyword: "minLength", message };
    }
    case "maxLength":
      return {
        path,
        keyword: "maxLength",
        message: `${field} must be at most ${params.limit} characters long`,
      };
    case "minItems":
      return {
        path,
        keyword: "minItems",
        message: `${field} must have at least ${params.limit} entries`,
      };
    case "maxItems":
      return {
        path,
        keyword: "maxItems",
        message: `${field} must have at most ${params.limit} entries`,
      };
    case "format": {
      const format = String(params.format);
      const message = format === "date-time"
        ? `${field} must be an RFC 3339 date-time, e.g. 2025-09-05T12:30:00Z`
        : `${field} must be a valid ${format}`;
      return { path, keyword: "format", message };
    }
    default:
      // A keyword we have no sentence for (custom schemas may use any): ajv's own words.
      return { path, keyword: error.keyword, message: `${field} ${error.message ?? "is invalid"}` };
  }
}

/** The message for a value that is not a JSON object at all. */
export function notAnObject(value: unknown): ValidationError {
  const kind = value === null ? "null" : Array.isArray(value) ? "an array" : typeof value;
  return { path: "", keyword: "type", message: `message must be a JSON object, not ${kind}` };
}

/** The message for a missing `type`. */
export const TYPE_REQUIRED: ValidationError = Object.freeze({
  path: "/type",
  keyword: "required",
  message: "type field is required",
});

/** The message for a `type` that is not a string. */
export const TYPE_NOT_STRING: ValidationError = Object.freeze({
  path: "/type",
  keyword: "type",
  message: "type must be a string",
});

/** The message for a `type` no loaded schema declares. */
export function unknownType(type: string, known: readonly string[]): ValidationError {
  return {
    path: "/type",
    keyword: "type",
    message: `unknown type ${quote(type)}; expected one of: ${known.join(", ")}`,
  };
}

/** The message for a BarReport whose window runs backwards. */
export const BEAT_RANGE: ValidationError = Object.freeze({
  path: "/to_beat",
  keyword: "beatRange",
  message: "to_beat must be greater than or equal to from_beat",
});

/**
 * The message for a key repeated in one object of a JSON text. JSON.parse keeps the last value,
 * so the earlier one would otherwise go unchecked.
 *
 * @param key The repeated key.
 * @param container JSON Pointer of the object holding it.
 * @param line 1-based line of the repeat.
 * @param column 1-based column of the repeat.
 */
export function duplicateKey(
  key: string,
  container: string,
  line: number,
  column: number,
): ValidationError {
  const where = container === "" ? "" : ` in ${fieldName(container)}`;
  return {
    path: `${container}/${escapeSegment(key)}`,
    keyword: "duplicateKey",
    message: `duplicate key ${quote(key)}${where} at line ${line}, column ${column}`,
    line,
    column,
  };
}

/**
 * The message for a message nested deeper than the validator allows.
 *
 * @param max The deepest level allowed.
 */
export function tooDeep(max: number): ValidationError {
  return {
    path: "",
    keyword: "depth",
    message: `message nesting is too deep (more than ${max} levels of objects and arrays)`,
  };
}

/** The message when a schema's validator ran out of call stack on a message (the fallback). */
export const STACK_EXHAUSTED: ValidationError = Object.freeze({
  path: "",
  keyword: "depth",
  message: "message nesting is too deep for this schema (its validator ran out of stack)",
});

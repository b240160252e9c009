// Finds where and why a JSON text is malformed. JSON.parse's own messages differ between engines
// and some carry no position at all, so after JSON.parse has failed (never on the hot path) this
// small scanner walks the text again and names the first offending character.

import type { ValidationError } from "./_messages_text.ts";

/** Where a JSON text first breaks the grammar, and why. */
interface JsonSyntaxFault {
  offset: number;
  reason: string;
}

const WS = new Set([0x20, 0x09, 0x0a, 0x0d]);

function describeChar(text: string, offset: number): string {
  const code = text.codePointAt(offset) ?? 0;
  return code < 0x20 || code === 0x7f
    ? `control character U+${code.toString(16).padStart(4, "0").toUpperCase()}`
    : `character ${JSON.stringify(String.fromCodePoint(code))}`;
}

function fault(text: string, offset: number, expected: string): JsonSyntaxFault {
  const found = offset >= text.length ? "end of input" : describeChar(text, offset);
  return { offset, reason: `${expected}, found ${found}` };
}

/** Returns the end offset of the string starting at `start` (a `"`), or a fault. */
function scanString(text: string, start: number): number | JsonSyntaxFault {
  let i = start + 1;
  for (;;) {
    if (i >= text.length) return { offset: i, reason: "unterminated string" };
    const code = text.charCodeAt(i);
    if (code === 0x22) return i + 1;
    if (code === 0x5c) {
      const next = text[i + 1];
      if (next === "u") {
        if (!/^[0-9a-fA-F]{4}$/.test(text.slice(i + 2, i + 6))) {
          return { offset: i, reason: "invalid \\u escape (expected 4 hex digits)" };
        }
        i += 6;
      } else if (next !== undefined && '"\\/bfnrt'.includes(next)) {
        i += 2;
      } else {
        return { offset: i, reason: "invalid escape sequence in string" };
      }
    } else if (code < 0x20) {
      return fault(text, i, "unescaped control character in string; expected it escaped");
    } else {
      i++;
    }
  }
}

function isDigit(text: string, i: number): boolean {
  const c = text.charCodeAt(i);
  return c >= 0x30 && c <= 0x39;
}

/** Returns the end offset of the number starting at `start`, or a fault. */
function scanNumber(text: string, start: number): number | JsonSyntaxFault {
  let i = start;
  if (text[i] === "-") i++;
  if (text[i] === "0") i++;
  else if (isDigit(text, i)) { while (isDigit(text, i)) i++; }
  else return fault(text, i, "expected a digit");
  if (text[i] === ".") {
    i++;
    if (!isDigit(text, i)) return fault(text, i, "expected a digit after the decimal point");
    while (isDigit(text, i)) i++;
  }
  if (text[i] === "e" || text[i] === "E") {
    i++;
    if (text[i] === "+" || text[i] === "-") i++;
    if (!isDigit(text, i)) return fault(text, i, "expected a digit in the exponent");
    while (isDigit(text, i)) i++;
  }
  return i;
}

/**
 * Locates the first syntax error of a JSON text. Iterative (an explicit stack), so deeply
 * nested input cannot overflow the call stack.
 *
 * @returns The fault, or `null` when the text is well-formed JSON.
 */
export function locateJsonFault(text: string): JsonSyntaxFault | null {
  const n = text.length;
  const stack: number[] = []; // 0x7b for objects, 0x5b for arrays
  let i = 0;
  const skip = () => {
    while (i < n && WS.has(text.charCodeAt(i))) i++;
  };
  // Reads `"key" :` and leaves i at the value; returns a fault or null.
  const readKey = (expected: string): JsonSyntaxFault | null => {
    skip();
    if (text[i] !== '"') return fault(text, i, expected);
    const end = scanString(text, i);
    if (typeof end !== "number") return end;
    i = end;
    skip();
    if (text[i] !== ":") return fault(text, i, "expected ':' after the property name");
    i++;
    return null;
  };
  let wantValue = true;
  for (;;) {
    skip();
    if (wantValue) {
      const c = text[i];
      if (c === "{") {
        i++;
        skip();
        if (text[i] === "}") {
          i++;
          wantValue = false;
          continue;
        }
        stack.push(0x7b);
        const bad = readKey("expected a property name in double quotes or '}'");
        if (bad) return bad;
        continue;
      }
      if (c === "[") {
        i++;
        skip();
        if (text[i] === "]") {
          i++;
          wantValue = false;
          continue;
        }
        stack.push(0x5b);
        continue;
      }
      let end: number | JsonSyntaxFault;
      if (c === '"') end = scanString(text, i);
      else if (c === "-" || isDigit(text, i)) end = scanNumber(text, i);
      else if (text.startsWith("true", i)) end = i + 4;
      else if (text.startsWith("false", i)) end = i + 5;
      else if (text.startsWith("null", i)) end = i + 4;
      else return fault(text, i, "expected a JSON value");
      if (typeof end !== "number") return end;
      i = end;
      wantValue = false;
      continue;
    }
    const top = stack.at(-1);
    if (top === undefined) {
      return i < n ? fault(text, i, "expected end of input after the JSON value") : null;
    }
    if (top === 0x7b) {
      if (text[i] === ",") {
        i++;
        const bad = readKey("expected a property name in double quotes after ','");
        if (bad) return bad;
        wantValue = true;
      } else if (text[i] === "}") {
        i++;
        stack.pop();
      } else {
        return fault(text, i, "expected ',' or '}' after the property value");
      }
    } else if (text[i] === ",") {
      i++;
      wantValue = true;
    } else if (text[i] === "]") {
      i++;
      stack.pop();
    } else {
      return fault(text, i, "expected ',' or ']' after the array element");
    }
  }
}

/** 1-based line and column (in UTF-16 code units) of an offset. */
export function lineColumn(text: string, offset: number): { line: number; column: number } {
  let line = 1;
  let lineStart = 0;
  for (let i = text.indexOf("\n"); i !== -1 && i < offset; i = text.indexOf("\n", i + 1)) {
    line++;
    lineStart = i + 1;
  }
  return { line, column: offset - lineStart + 1 };
}

/**
 * The validation error for a text JSON.parse rejected.
 *
 * @param text The text.
 * @param parseError What JSON.parse threw, used only if the scanner finds nothing wrong.
 * @param firstLine The line number of the text's first line (NDJSON input), default 1.
 */
export function jsonSyntaxError(text: string, parseError: unknown, firstLine = 1): ValidationError {
  const found = locateJsonFault(text);
  const offset = found?.offset ?? 0;
  const reason = found?.reason ?? String((parseError as Error)?.message ?? parseError);
  const at = lineColumn(text, offset);
  const line = at.line + firstLine - 1;
  return {
    path: "",
    keyword: "json",
    message: `invalid JSON at line ${line}, column ${at.column}: ${reason}`,
    line,
    column: at.column,
  };
}

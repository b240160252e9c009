// Two limits JSON.parse cannot enforce. Duplicate keys: JSON.parse keeps the last value of a
// repeated key, so an invalid value can hide behind a valid one (or the reverse); only the text
// shows the repeat. Nesting depth: JSON.parse copes with 100,000 levels, but a recursive schema
// makes ajv recurse once per level and overflow the call stack, so a message deeper than
// MAX_MESSAGE_DEPTH is refused before it reaches ajv (which also bounds the work).
//
// No input can overflow the call stack here: the tokenizer and nestsDeeperThan() are iterative
// (explicit stacks), and the one recursive walk stops at the depth limit.

/** The deepest nesting of objects and arrays a message may have; the root object is level 1. */
export const MAX_MESSAGE_DEPTH = 256;

/** A key that appears twice in one object of a JSON text. */
export interface DuplicateKey {
  /** The key, decoded (`"\u0061"` and `"a"` are the same key). */
  key: string;
  /** JSON Pointer of the object holding it (`""` for the root). */
  container: string;
  /** Offset in the text of the repeated occurrence's opening quote. */
  offset: number;
}

/** What {@linkcode scanJsonText} found. */
export interface JsonTextScan {
  /** True when the text nests deeper than the limit (the scan stopped there). */
  tooDeep: boolean;
  /** Repeated keys, in text order, at most the cap given. */
  duplicates: readonly DuplicateKey[];
}

// Shared by every clean scan: the common case allocates nothing for its result.
const CLEAN: JsonTextScan = Object.freeze({ tooDeep: false, duplicates: Object.freeze([]) });
const TOO_DEEP: JsonTextScan = Object.freeze({ tooDeep: true, duplicates: Object.freeze([]) });

const QUOTE = 0x22;
const BACKSLASH = 0x5c;
const COMMA = 0x2c;
const OPEN_OBJECT = 0x7b;
const CLOSE_OBJECT = 0x7d;
const OPEN_ARRAY = 0x5b;
const CLOSE_ARRAY = 0x5d;

// Past this many keys an object's keys move from a list (fastest for the ten or so keys of a
// message) to a Set, so a hostile object with 100,000 keys costs linear time, not quadratic.
const LINEAR_KEYS = 32;

/** Per nesting level, reused from scan to scan (the scanner never runs re-entrantly). */
interface Level {
  isObject: boolean;
  /** Array level: index of the current element. */
  index: number;
  /** Object level: the current key (the one whose value is being read). */
  key: string;
  keys: string[];
  keySet: Set<string> | undefined;
}

const levels: Level[] = [];

function level(depth: number): Level {
  let found = levels[depth];
  if (found === undefined) {
    found = { isObject: false, index: 0, key: "", keys: [], keySet: undefined };
    levels[depth] = found;
  }
  return found;
}

/** Offset of the quote closing the string whose opening quote is at `start`. */
function stringEnd(text: string, start: number): number {
  for (let end = text.indexOf('"', start + 1); end !== -1; end = text.indexOf('"', end + 1)) {
    // Escaped when preceded by an odd number of backslashes.
    let backslashes = 0;
    while (text.charCodeAt(end - 1 - backslashes) === BACKSLASH) backslashes++;
    if (backslashes % 2 === 0) return end;
  }
  return text.length; // unreachable for text JSON.parse accepted
}

function escapeSegment(segment: string): string {
  return segment.replaceAll("~", "~0").replaceAll("/", "~1");
}

/** JSON Pointer of the container at `depth - 1`, from the keys and indexes above it. */
function pointerTo(depth: number): string {
  let pointer = "";
  for (let d = 0; d < depth - 1; d++) {
    const at = levels[d];
    pointer += `/${at.isObject ? escapeSegment(at.key) : at.index}`;
  }
  return pointer;
}

/**
 * Checks a JSON text, already accepted by JSON.parse, for keys repeated within one object and
 * for nesting deeper than {@linkcode MAX_MESSAGE_DEPTH}.
 *
 * The common case is settled without tokenizing the text: JSON.parse keeps one property per
 * distinct key, so the parsed value has as many keys as the text has members exactly when no key
 * repeats. Every member has one colon right after its key's closing quote (JSON whitespace
 * between them allowed); colons inside strings can only add to that count. So when the colons
 * that follow a quote number exactly the parsed keys, nothing repeats. That costs an `indexOf`
 * per colon and a walk of the parsed value (a fraction of the parse); only when the counts differ
 * (a repeat, or a string holding `":`) or the value is too deep does the tokenizer run.
 *
 * @param text Well-formed JSON (the scanner does not check the grammar).
 * @param value What JSON.parse returned for it.
 * @param maxDuplicates Stop collecting duplicates after this many.
 * @returns What was found; a shared frozen object when nothing was.
 */
export function scanJsonText(text: string, value: unknown, maxDuplicates: number): JsonTextScan {
  if (value === null || typeof value !== "object") return CLEAN; // a lone string, number, …
  const keys = countKeys(value, 1);
  if (keys !== -1 && keys === colonsAfterQuotes(text)) return CLEAN;
  return tokenize(text, maxDuplicates);
}

/**
 * The own keys of every object in a parsed value, or -1 when it nests deeper than the limit.
 * Recursive, which is safe: the cap bounds the recursion at MAX_MESSAGE_DEPTH + 1 frames.
 */
function countKeys(value: object, depth: number): number {
  if (depth > MAX_MESSAGE_DEPTH) return -1;
  const isArray = Array.isArray(value);
  // Own enumerable values only: an enumerable property added to Object.prototype must not
  // count as a key of the text.
  const children: unknown[] = isArray ? value : Object.values(value);
  let keys = isArray ? 0 : children.length;
  for (let i = 0; i < children.length; i++) {
    const child = children[i];
    if (child === null || typeof child !== "object") continue;
    const below = countKeys(child, depth + 1);
    if (below === -1) return -1;
    keys += below;
  }
  return keys;
}

/** How many colons of `text` follow a `"`, JSON whitespace allowed between them. */
function colonsAfterQuotes(text: string): number {
  let count = 0;
  for (let i = text.indexOf(":"); i !== -1; i = text.indexOf(":", i + 1)) {
    let before = i - 1;
    let c = text.charCodeAt(before);
    while (c === 0x20 || c === 0x0a || c === 0x0d || c === 0x09) c = text.charCodeAt(--before);
    if (c === QUOTE) count++;
  }
  return count;
}

/**
 * Tokenizes just enough to track each open object's keys: decodes keys, records each repeat with
 * its path and offset, and stops at the depth limit. String contents are skipped with `indexOf`.
 */
function tokenize(text: string, maxDuplicates: number): JsonTextScan {
  let duplicates: DuplicateKey[] | undefined;
  let depth = 0;
  let expectKey = false; // the next string is a key of the innermost object
  const n = text.length;
  for (let i = 0; i < n; i++) {
    const c = text.charCodeAt(i);
    if (c === QUOTE) {
      const end = stringEnd(text, i);
      if (expectKey) {
        expectKey = false;
        const raw = text.slice(i + 1, end);
        const key: string = raw.includes("\\") ? JSON.parse(text.slice(i, end + 1)) : raw;
        const at = levels[depth - 1];
        let repeated: boolean;
        if (at.keySet !== undefined) {
          repeated = at.keySet.has(key);
          if (!repeated) at.keySet.add(key);
        } else {
          repeated = at.keys.includes(key);
          if (!repeated) {
            at.keys.push(key);
            if (at.keys.length > LINEAR_KEYS) at.keySet = new Set(at.keys);
          }
        }
        at.key = key;
        if (repeated && (duplicates ??= []).length < maxDuplicates) {
          duplicates.push({ key, container: pointerTo(depth), offset: i });
        }
      }
      i = end;
    } else if (c === OPEN_OBJECT || c === OPEN_ARRAY) {
      if (depth === MAX_MESSAGE_DEPTH) return TOO_DEEP;
      const at = level(depth++);
      at.isObject = c === OPEN_OBJECT;
      at.index = 0;
      if (at.isObject) {
        at.keys.length = 0;
        at.keySet = undefined;
      }
      expectKey = at.isObject;
    } else if (c === CLOSE_OBJECT || c === CLOSE_ARRAY) {
      depth--;
      expectKey = false;
    } else if (c === COMMA) {
      const at = levels[depth - 1];
      if (at.isObject) expectKey = true;
      else at.index++;
    }
  }
  return duplicates === undefined ? CLEAN : { tooDeep: false, duplicates };
}

/**
 * True when a parsed value nests objects and arrays deeper than `max` levels (the root object is
 * level 1). Each object or array is visited once, so a value that shares sub-objects (or holds a
 * cycle) costs time linear in its distinct parts.
 *
 * @param root The value.
 * @param max The deepest level allowed.
 */
export function nestsDeeperThan(root: unknown, max: number = MAX_MESSAGE_DEPTH): boolean {
  if (root === null || typeof root !== "object") return false;
  const stack: object[] = [root];
  const depths: number[] = [1];
  // Created at the first nested container: most messages are one flat object.
  let seen: Set<object> | undefined;
  while (stack.length > 0) {
    const node = stack.pop() as object;
    const depth = depths.pop() as number;
    for (const child of Object.values(node)) {
      if (child === null || typeof child !== "object") continue;
      seen ??= new Set([root]);
      if (seen.has(child)) continue;
      if (depth === max) return true;
      seen.add(child);
      stack.push(child);
      depths.push(depth + 1);
    }
  }
  return false;
}

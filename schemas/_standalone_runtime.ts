// The two helpers ajv's generated code (_standalone.ts) calls, written here so that validating
// the built-in schemas loads no npm module at all: the first CommonJS import starts Deno's Node
// compatibility layer, which costs more start-up time than everything else the CLI does for a
// small directory. standalone_runtime_test.ts checks both against ajv's own implementations.

/**
 * Length of a string in Unicode code points, as JSON Schema's minLength/maxLength count it (a
 * surrogate pair is one character; a lone surrogate is one too).
 */
export function ucs2length(text: string): number {
  let length = 0;
  for (let i = 0; i < text.length; i++) {
    length++;
    const code = text.charCodeAt(i);
    if (code >= 0xd800 && code <= 0xdbff && i + 1 < text.length) {
      const next = text.charCodeAt(i + 1);
      if (next >= 0xdc00 && next <= 0xdfff) i++;
    }
  }
  return length;
}

const DAYS_IN_MONTH = [0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
// Date, one separator (T, t or a whitespace character), hh:mm:ss[.frac], then a required offset:
// Z, or ±hh, ±hhmm, ±hh:mm. One expression instead of split-then-match: this runs per message.
const DATE_TIME =
  /^(\d{4})-(\d{2})-(\d{2})[Tt\s](\d{2}):(\d{2}):(\d{2}(?:\.\d+)?)(?:[Zz]|([+-])(\d{2})(?::?(\d{2}))?)$/;

/**
 * RFC 3339 `date-time` with a required offset, accepting exactly what ajv-formats' full
 * `date-time` format accepts (so precompiled and run-time compiled schemas agree): `T`, `t` or
 * one whitespace character between date and time, and offsets `Z`, `±hh`, `±hhmm`, `±hh:mm`.
 */
export function isDateTime(text: string): boolean {
  const m = DATE_TIME.exec(text);
  if (m === null) return false;
  const year = Number(m[1]);
  const month = Number(m[2]);
  const day = Number(m[3]);
  if (month < 1 || month > 12 || day < 1) return false;
  const leap = year % 4 === 0 && (year % 100 !== 0 || year % 400 === 0);
  if (day > (month === 2 && leap ? 29 : DAYS_IN_MONTH[month])) return false;
  const hour = Number(m[4]);
  const minute = Number(m[5]);
  const second = Number(m[6]);
  const sign = m[7] === "-" ? -1 : 1;
  const offsetHour = Number(m[8] ?? 0);
  const offsetMinute = Number(m[9] ?? 0);
  if (offsetHour > 23 || offsetMinute > 59) return false;
  if (hour <= 23 && minute <= 59 && second < 60) return true;
  // A leap second (ss = 60) is valid only at 23:59 UTC.
  const utcMinute = minute - sign * offsetMinute;
  const utcHour = hour - sign * offsetHour - (utcMinute < 0 ? 1 : 0);
  return (utcHour === 23 || utcHour === -1) && (utcMinute === 59 || utcMinute === -1) &&
    second < 61;
}

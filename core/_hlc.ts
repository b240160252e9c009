import { BackbeatError } from "./_errors.ts";

/** A hybrid logical clock reading: 32-bit physical milliseconds and a 16-bit logical counter. */
export interface Hlc {
  /** Wall-clock milliseconds since the epoch, modulo 2^32. */
  readonly physical: number;
  /** Logical counter, 0 to 0xffff. */
  readonly logical: number;
}

/**
 * Default for {@linkcode HlcOptions.maxOffsetMs}: ten seconds. The one limit on how far ahead a
 * clock may run for the whole system: an HLC does not follow a remote clock further ahead, and
 * reverb refuses claims stamped further ahead as `future` (so a client cannot push an agent's
 * replay mark into the future and lock its honest claims out).
 */
export const DEFAULT_HLC_MAX_OFFSET_MS = 10_000;

/** Options of {@linkcode HybridLogicalClock}. */
export interface HlcOptions {
  /** Wall clock in epoch milliseconds; injectable for tests. @default {Date.now} */
  clock?: () => number;
  /**
   * How far (ms) a remote clock may stand ahead of ours before `update()` refuses it.
   * @default {60000}
   */
  maxOffsetMs?: number;
}

const HLC_PATTERN = /^([0-9a-fA-F]{4}):([0-9a-fA-F]{4}):([0-9a-fA-F]{4})$/;
const HALF = 2 ** 31;

function hex4(n: number): string {
  return n.toString(16).padStart(4, "0");
}

/**
 * Formats a reading in the wire form `XXXX:XXXX:XXXX` (physical high, physical low, logical).
 *
 * @param hlc The reading.
 * @returns The wire form, lowercase hex.
 *
 * @example Format a reading
 * ```ts
 * import { formatHlc } from "./mod.ts";
 * console.log(formatHlc({ physical: 0x7ffd0001, logical: 0xabcd })); // "7ffd:0001:abcd"
 * ```
 */
export function formatHlc(hlc: Hlc): string {
  return `${hex4(hlc.physical >>> 16)}:${hex4(hlc.physical & 0xffff)}:${hex4(hlc.logical)}`;
}

/**
 * Parses the wire form `XXXX:XXXX:XXXX`.
 *
 * @param text The wire form.
 * @returns The reading.
 * @throws {TypeError} When the text is not three groups of four hex digits.
 *
 * @example Parse a stamp
 * ```ts
 * import { parseHlc } from "@chorus/backbeat";
 * console.log(parseHlc("7ffd:0001:beef").logical); // 48879
 * ```
 */
export function parseHlc(text: string): Hlc {
  const m = typeof text === "string" ? HLC_PATTERN.exec(text) : null;
  if (!m) {
    throw new TypeError(
      `Invalid HLC ${JSON.stringify(text)}: expected XXXX:XXXX:XXXX (hex)`,
    );
  }
  return {
    physical: ((parseInt(m[1], 16) << 16) | parseInt(m[2], 16)) >>> 0,
    logical: parseInt(m[3], 16),
  };
}

/**
 * Signed difference `a.physical - b.physical` in milliseconds under serial-number arithmetic
 * (RFC 1982), so readings on both sides of the 2^32 wrap compare correctly.
 *
 * @param a A reading.
 * @param b Another reading.
 * @returns Milliseconds by which `a` stands after `b` (negative when before).
 *
 * @example Across the wrap
 * ```ts
 * import { hlcPhysicalDiff } from "./mod.ts";
 * console.log(hlcPhysicalDiff({ physical: 5, logical: 0 }, { physical: 0xfffffffb, logical: 0 })); // 10
 * ```
 */
export function hlcPhysicalDiff(a: Hlc, b: Hlc): number {
  const d = (a.physical - b.physical) >>> 0;
  return d >= HALF ? d - 2 ** 32 : d;
}

/**
 * Orders two readings: physical time first (serial arithmetic), then the logical counter.
 *
 * @param a A reading or its wire form.
 * @param b Another reading or its wire form.
 * @returns -1 when `a` is earlier, 1 when later, 0 when equal.
 * @throws {TypeError} When a wire form is malformed.
 *
 * @example Sort stamps
 * ```ts
 * import { compareHlc } from "@chorus/backbeat";
 * console.log(["0000:0002:0000", "0000:0001:0005"].sort(compareHlc)); // ["0000:0001:0005", "0000:0002:0000"]
 * ```
 */
export function compareHlc(a: Hlc | string, b: Hlc | string): -1 | 0 | 1 {
  const x = typeof a === "string" ? parseHlc(a) : a;
  const y = typeof b === "string" ? parseHlc(b) : b;
  const d = hlcPhysicalDiff(x, y);
  if (d !== 0) return d > 0 ? 1 : -1;
  return x.logical === y.logical ? 0 : x.logical > y.logical ? 1 : -1;
}

/**
 * A hybrid logical clock (Kulkarni et al., 2014): readings follow wall time, never go
 * backwards, and order causally related events across processes.
 *
 * @example Stamp local events and merge a remote stamp
 * ```ts
 * import { HybridLogicalClock } from "./mod.ts";
 * const clock = new HybridLogicalClock();
 * const a = clock.now();
 * const b = clock.update("0000:0001:0000");
 * console.log(a < b || a !== b); // readings are monotonic
 * ```
 */
export class HybridLogicalClock {
  #clock: () => number;
  #maxOffset: number;
  #physical = 0;
  #logical = 0;
  #started = false;

  /**
   * Creates a clock.
   *
   * @param options Clock source and the largest remote offset accepted.
   */
  constructor(options: HlcOptions = {}) {
    this.#clock = options.clock ?? Date.now;
    this.#maxOffset = options.maxOffsetMs ?? DEFAULT_HLC_MAX_OFFSET_MS;
    if (!(this.#maxOffset >= 0)) {
      throw new RangeError(`Invalid maxOffsetMs ${options.maxOffsetMs}: expected a number >= 0`);
    }
  }

  /** The last reading issued, or `undefined` before the first. */
  get last(): Hlc | undefined {
    return this.#started ? { physical: this.#physical, logical: this.#logical } : undefined;
  }

  /**
   * Issues a reading for a local or send event.
   *
   * @returns The reading in wire form.
   */
  now(): string {
    return formatHlc(this.tick());
  }

  /**
   * Issues a reading for a local or send event, as a structured value.
   *
   * @returns The reading.
   */
  tick(): Hlc {
    const pt = Math.floor(this.#clock()) >>> 0;
    if (!this.#started || hlcPhysicalDiff({ physical: pt, logical: 0 }, this.#current()) > 0) {
      this.#physical = pt;
      this.#logical = 0;
      this.#started = true;
    } else {
      this.#bump(this.#logical + 1);
    }
    return this.#current();
  }

  /**
   * Merges a remote reading (a receive event) and issues the next local reading.
   *
   * @param remote The remote reading or its wire form.
   * @returns The new local reading in wire form.
   * @throws {TypeError} When the wire form is malformed.
   * @throws {BackbeatError} With code `clock_offset` when the remote physical time stands
   * more than `maxOffsetMs` ahead of the local wall clock; the clock is left unchanged.
   */
  update(remote: Hlc | string): string {
    const r = typeof remote === "string" ? parseHlc(remote) : remote;
    const pt: Hlc = { physical: Math.floor(this.#clock()) >>> 0, logical: 0 };
    const ahead = hlcPhysicalDiff(r, pt);
    if (ahead > this.#maxOffset) {
      throw new BackbeatError(
        "clock_offset",
        `Cannot merge HLC ${
          formatHlc(r)
        }: it is ${ahead} ms ahead of the local clock (max ${this.#maxOffset} ms)`,
        { detail: { aheadMs: ahead, maxOffsetMs: this.#maxOffset } },
      );
    }
    const l = this.#started ? this.#current() : pt;
    // The new physical part is the latest of local, remote and wall time.
    let newest = l;
    if (hlcPhysicalDiff(r, newest) > 0) newest = r;
    if (hlcPhysicalDiff(pt, newest) > 0) newest = pt;
    const fromLocal = this.#started && newest.physical === l.physical;
    const fromRemote = newest.physical === r.physical;
    this.#started = true;
    this.#physical = newest.physical;
    if (fromLocal && fromRemote) this.#bump(Math.max(l.logical, r.logical) + 1);
    else if (fromLocal) this.#bump(l.logical + 1);
    else if (fromRemote) this.#bump(r.logical + 1);
    else this.#logical = 0;
    return formatHlc(this.#current());
  }

  #current(): Hlc {
    return { physical: this.#physical, logical: this.#logical };
  }

  // The 16-bit counter cannot overflow into garbage: borrow one millisecond instead, which keeps
  // readings strictly increasing at the cost of running 1 ms ahead until wall time catches up.
  #bump(logical: number): void {
    if (logical > 0xffff) {
      this.#physical = (this.#physical + 1) >>> 0;
      this.#logical = 0;
    } else {
      this.#logical = logical;
    }
  }
}

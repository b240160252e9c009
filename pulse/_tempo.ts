// Pulse's tempo range and the one reader of tempo requests (`POST /tempo` and the control subject).
import { MIN_TEMPO_BPM } from "../core/mod.ts";

/**
 * Highest tempo pulse publishes: 10 ms beats. A different fact from core's `MAX_TEMPO_BPM`
 * (60,000: what a timeline and the wire contract can describe). One pulse process must also fit
 * its lease's KV work into the quiet time between beats (nothing runs in the 4 ms before a beat,
 * and the timer spins for the last 1.5 ms), which 1 ms beats would never leave.
 */
export const MAX_PULSE_TEMPO_BPM = 6_000;

/** Largest tempo request accepted, in bytes, over HTTP and on the control subject alike. */
export const MAX_TEMPO_REQUEST_BYTES = 4_096;

const decoder = new TextDecoder();

/**
 * Checks a tempo against pulse's range.
 *
 * @param tempoBpm The tempo.
 * @throws {RangeError} When it is not a finite number from 0.1 to 6000.
 *
 * @example Reject a tempo
 * ```ts ignore
 * import { assertPulseTempo } from "./_tempo.ts";
 * try { assertPulseTempo(9000); } catch (e) { console.log((e as Error).message); }
 * ```
 */
export function assertPulseTempo(tempoBpm: number): void {
  if (
    typeof tempoBpm !== "number" ||
    !(tempoBpm >= MIN_TEMPO_BPM && tempoBpm <= MAX_PULSE_TEMPO_BPM)
  ) {
    throw new RangeError(
      `tempo_bpm must be a number from ${MIN_TEMPO_BPM} to ${MAX_PULSE_TEMPO_BPM}, got ${
        JSON.stringify(tempoBpm) ?? String(tempoBpm)
      }`,
    );
  }
}

/**
 * Reads a tempo request (`{"tempo_bpm": n}`) from its JSON text or bytes.
 *
 * @param body The request body.
 * @returns The requested tempo.
 * @throws {RangeError} When the body exceeds 4096 bytes, or the tempo is not a number from 0.1
 * to 6000.
 * @throws {TypeError} When it is not JSON, or not an object with a `tempo_bpm` field.
 *
 * @example Read a request
 * ```ts ignore
 * import { readTempoRequest } from "./_tempo.ts";
 * console.log(readTempoRequest('{"tempo_bpm": 120}')); // 120
 * ```
 */
export function readTempoRequest(body: string | Uint8Array): number {
  if (typeof body !== "string") {
    if (body.byteLength > MAX_TEMPO_REQUEST_BYTES) {
      throw new RangeError(
        `Invalid tempo request: ${body.byteLength} bytes exceed ${MAX_TEMPO_REQUEST_BYTES}`,
      );
    }
    body = decoder.decode(body);
  }
  let value: unknown;
  try {
    value = JSON.parse(body);
  } catch (error) {
    throw new TypeError(`Invalid tempo request: not JSON (${(error as Error).message})`);
  }
  if (!value || typeof value !== "object" || Array.isArray(value)) {
    throw new TypeError('Invalid tempo request: expected a JSON object like {"tempo_bpm": 120}');
  }
  if (!("tempo_bpm" in value)) {
    throw new TypeError("Invalid tempo request: tempo_bpm field is required");
  }
  const tempo = (value as { tempo_bpm: unknown }).tempo_bpm;
  assertPulseTempo(tempo as number);
  return tempo as number;
}

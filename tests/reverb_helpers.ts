// Helpers for reverb's tests: claims, HLC stamps and signed messages built by hand so each test
// controls exactly what reaches reverb.

import { type BusMessage, formatHlc, signPayload, type StatusClaim } from "../core/mod.ts";

const encoder = new TextEncoder();

/** The HLC wire form of an epoch-ms instant. */
export function hlcAt(ms: number, logical = 0): string {
  return formatHlc({ physical: Math.floor(ms) >>> 0, logical });
}

/** A valid claim with overrides. */
export function makeClaim(fields: Partial<StatusClaim> & { hlc: string }): StatusClaim {
  return {
    type: "backbeat.statusclaim.v1",
    agent_id: "agent-1",
    task_id: "task-1",
    beat_index: 0,
    state: "executing",
    beats_left: 2,
    progress: 0.5,
    notes: "",
    ...fields,
  };
}

/** An unsigned bus message carrying a claim. */
export function claimMessage(claim: unknown, subject = "backbeat.test.status"): BusMessage {
  return { subject, data: encoder.encode(JSON.stringify(claim)) };
}

/** A signed bus message: the exact payload bytes are signed, as the SDK client does. */
export async function signedMessage(
  claim: unknown,
  privateKey: CryptoKey,
  keyId: string | undefined,
  subject = "backbeat.test.status",
): Promise<BusMessage> {
  const data = encoder.encode(JSON.stringify(claim));
  const headers: Record<string, string> = { "x-signature": await signPayload(privateKey, data) };
  if (keyId !== undefined) headers["x-key-id"] = keyId;
  return { subject, data, headers };
}

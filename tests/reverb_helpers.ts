// Helpers for reverb's tests: claims, HLC stamps and signed messages built by hand so each test
// controls exactly what reaches reverb.

import {
  type BusMessage,
  formatHlc,
  signedBytes,
  signPayload,
  type StatusClaim,
} from "../core/mod.ts";

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

/** The cluster of a `backbeat.<cluster>.status` subject. */
export function clusterOf(subject: string): string {
  const parts = subject.split(".");
  if (parts.length !== 3 || parts[0] !== "backbeat") {
    throw new TypeError(`Not a cluster subject: ${subject}`);
  }
  return parts[1];
}

/** How {@linkcode signedMessage} signs. */
export interface SignOptions {
  /** The cluster the signature is bound to. @default {the subject's cluster} */
  clusterId?: string;
  /** Sign the payload alone, as the 0.1 SDK did. @default {false} */
  legacy?: boolean;
}

/**
 * A signed bus message: `signedBytes("backbeat.statusclaim.v1", cluster, payload)` signed, as
 * the SDK signs with `signMessage`, or the payload alone in the legacy form.
 */
export async function signedMessage(
  claim: unknown,
  privateKey: CryptoKey,
  keyId: string | undefined,
  subject = "backbeat.test.status",
  options: SignOptions = {},
): Promise<BusMessage> {
  const data = encoder.encode(JSON.stringify(claim));
  const bytes = options.legacy
    ? data
    : signedBytes("backbeat.statusclaim.v1", options.clusterId ?? clusterOf(subject), data);
  const headers: Record<string, string> = { "x-signature": await signPayload(privateKey, bytes) };
  if (keyId !== undefined) headers["x-key-id"] = keyId;
  return { subject, data, headers };
}

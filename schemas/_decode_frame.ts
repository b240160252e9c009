import type { BeatFrame } from "../core/mod.ts";
import { defaultMessageValidator, type MessageValidator } from "./_validator.ts";

/** Largest frame accepted; real frames are a few hundred bytes. */
export const MAX_FRAME_BYTES = 16_384;

const decoder = new TextDecoder();

/**
 * Decodes a message from a cluster's beat subject: size cap, JSON, schema, type and cluster.
 * The SDK's feed, pulse's followers and reverb all read frames through this one gate.
 *
 * @param data The payload bytes.
 * @param clusterId The cluster whose subject it came from.
 * @param validator The validator to use. @default {defaultMessageValidator()}
 * @returns The frame, or a sentence saying why it is not one.
 */
export function decodeBeatFrame(
  data: Uint8Array,
  clusterId: string,
  validator: MessageValidator = defaultMessageValidator(),
): BeatFrame | string {
  if (data.byteLength > MAX_FRAME_BYTES) {
    return `frame of ${data.byteLength} bytes exceeds ${MAX_FRAME_BYTES}`;
  }
  let value: unknown;
  try {
    value = JSON.parse(decoder.decode(data));
  } catch (error) {
    return `frame is not JSON: ${(error as Error).message}`;
  }
  const result = validator.validateMessage(value);
  if (!result.valid) {
    return `frame is invalid: ${result.errors.map((e) => e.message).join("; ")}`;
  }
  const frame = value as BeatFrame;
  if (frame.type !== "backbeat.beatframe.v1") {
    return `message of type ${frame.type} on the beat subject`;
  }
  if (frame.cluster_id !== clusterId) {
    return `frame of cluster ${frame.cluster_id} on the beat subject of ${clusterId}`;
  }
  return frame;
}

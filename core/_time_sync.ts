// Both ends of the clock exchange on backbeat.<cluster>.time: pulse's leader answers with its
// clock's receive and send instants; a client turns each exchange into a TimeSample for its
// ClockEstimator. The request carries a random nonce the answer must echo, so a recorded answer
// cannot be replayed, and with pulse keys the answer is signed.
import type { Bus, BusMessage, BusSubscription } from "./_bus.ts";
import type { Clock } from "./_clock.ts";
import type { TimeSample } from "./_clock_sync.ts";
import type { Keyring } from "./_keyring.ts";
import { signMessage, verifySigned } from "./_signed.ts";
import type { SigningKey } from "./_signing.ts";
import { subjects } from "./_subjects.ts";

const encoder = new TextEncoder();
const decoder = new TextDecoder();
/** Largest clock request or answer read, in bytes. */
const MAX_TIME_BYTES = 512;

/** Options of {@linkcode answerTimeRequests}. */
export interface AnswerTimeOptions {
  /** The clock whose instants are answered. */
  clock: Clock;
  /** Signs each answer (pulse's frame key). @default {undefined} */
  signingKey?: SigningKey;
  /** Sent as `pulse_id` so clients notice a leader change. @default {undefined} */
  pulseId?: string;
}

/**
 * Answers clock requests on a cluster's `time` subject until unsubscribed. Malformed requests
 * (too large, no nonce) are ignored: answering them would only help a flood.
 *
 * @param bus The bus.
 * @param clusterId The cluster.
 * @param options The clock, signing key and pulse id.
 * @returns The subscription; unsubscribe to stop answering.
 *
 * @example Answer and ask on one bus
 * ```ts
 * import { answerTimeRequests, InMemoryBus, requestTimeSample, SystemClock } from "./mod.ts";
 * const bus = new InMemoryBus();
 * const clock = new SystemClock();
 * const sub = answerTimeRequests(bus, "dev", { clock });
 * const sample = await requestTimeSample(bus, "dev", { clock });
 * console.log(sample !== undefined && sample.t3 >= sample.t0); // true
 * sub.unsubscribe();
 * await bus.close();
 * ```
 */
export function answerTimeRequests(
  bus: Bus,
  clusterId: string,
  options: AnswerTimeOptions,
): BusSubscription {
  const subject = subjects(clusterId).time;
  return bus.subscribe(subject, (m) => {
    const t1 = options.clock.now();
    if (!m.reply || m.data.byteLength > MAX_TIME_BYTES) return;
    let nonce: unknown;
    try {
      nonce = (JSON.parse(decoder.decode(m.data)) as { nonce?: unknown }).nonce;
    } catch {
      return;
    }
    if (typeof nonce !== "string" || !/^[0-9a-f]{32}$/.test(nonce)) return;
    const reply = m.reply;
    const answer = (t2: number) => {
      const body: Record<string, unknown> = { nonce, t1, t2 };
      if (options.pulseId !== undefined) body.pulse_id = options.pulseId;
      return encoder.encode(JSON.stringify(body));
    };
    if (options.signingKey === undefined) {
      try {
        bus.publish(reply, answer(options.clock.now()));
      } catch { /* a client that went away, or a reply subject we may not use */ }
      return;
    }
    // Signing takes a few tens of µs: t2 is read before it, so the sample counts it as network
    // delay (it lands in the round trip, not in the offset's asymmetry).
    const data = answer(options.clock.now());
    signMessage(options.signingKey, "backbeat.time.v1", clusterId, data).then(
      (headers) => bus.publish(reply, data, { headers }),
      () => {},
    ).catch(() => {});
  });
}

/** Options of {@linkcode requestTimeSample}. */
export interface RequestTimeOptions {
  /** The local clock. */
  clock: Clock;
  /** How long to wait for the answer, in ms. @default {500} */
  timeoutMs?: number;
  /** When set, only a signed answer that verifies counts. @default {undefined} */
  pulseKeys?: Keyring;
}

/** One exchange: the sample, and who answered. */
export interface TimeExchange extends TimeSample {
  /** The answering pulse's id, when it said. */
  readonly pulseId: string | undefined;
}

/**
 * Asks the cluster's pulse for its clock once.
 *
 * @param bus The bus.
 * @param clusterId The cluster.
 * @param options The clock, timeout and pulse keys.
 * @returns The exchange, or `undefined` when nobody answered in time or the answer was not
 * acceptable (malformed, wrong nonce, unsigned or badly signed with keys configured).
 */
export async function requestTimeSample(
  bus: Bus,
  clusterId: string,
  options: RequestTimeOptions,
): Promise<TimeExchange | undefined> {
  const nonce = crypto.getRandomValues(new Uint8Array(16)).toHex();
  const clock = options.clock;
  let reply: BusMessage;
  const t0 = clock.now();
  try {
    reply = await bus.request(
      subjects(clusterId).time,
      encoder.encode(JSON.stringify({ nonce })),
      { timeoutMs: options.timeoutMs ?? 500 },
    );
  } catch {
    return undefined;
  }
  const t3 = clock.now();
  if (reply.data.byteLength > MAX_TIME_BYTES) return undefined;
  let body: { nonce?: unknown; t1?: unknown; t2?: unknown; pulse_id?: unknown };
  try {
    body = JSON.parse(decoder.decode(reply.data));
  } catch {
    return undefined;
  }
  if (body === null || typeof body !== "object" || body.nonce !== nonce) return undefined;
  const { t1, t2 } = body;
  if (typeof t1 !== "number" || typeof t2 !== "number") return undefined;
  if (!Number.isFinite(t1) || !Number.isFinite(t2) || t2 < t1) return undefined;
  if (options.pulseKeys !== undefined) {
    const check = await verifySigned(
      options.pulseKeys,
      "backbeat.time.v1",
      clusterId,
      reply.data,
      reply.headers,
    );
    if (!check.ok) return undefined;
  }
  return {
    t0,
    t1,
    t2,
    t3,
    pulseId: typeof body.pulse_id === "string" ? body.pulse_id.slice(0, 256) : undefined,
  };
}

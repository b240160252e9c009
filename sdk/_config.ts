import {
  type Bus,
  type Clock,
  DEFAULT_BEATS_PER_BAR,
  type Keyring,
  type KeyringJson,
  type Logger,
  type SigningKeyInput,
} from "../core/mod.ts";
import type { NatsConnectionOptions } from "../nats/mod.ts";

/** Default of {@linkcode ClientConfig.taskId}. */
export const DEFAULT_TASK_ID = "default";
/** Default of {@linkcode ClientConfig.jitterToleranceMs}. */
export const DEFAULT_JITTER_TOLERANCE_MS = 50;
/** Default of {@linkcode ClientConfig.claimBufferSize}. */
export const DEFAULT_CLAIM_BUFFER_SIZE = 1_000;
/** Default of {@linkcode ClientConfig.latencyWindowSize}. */
export const DEFAULT_LATENCY_WINDOW_SIZE = 1_024;
/** Default of {@linkcode ClientConfig.errorHistorySize}. */
export const DEFAULT_ERROR_HISTORY_SIZE = 32;
/** Default of {@linkcode ClientConfig.maxCallbacks}. */
export const DEFAULT_MAX_CALLBACKS = 1_024;

/**
 * When beat callbacks run:
 * - `"scheduled"`: at the beat's due instant, pulse's own schedule mapped onto this host's clock
 *   through a clock estimate, so every agent of the cluster runs a beat at the same instant
 *   (within a fraction of a millisecond on a LAN); the frame is pulse's when it has arrived by
 *   then, else the one the timeline predicts (`info.predicted`), confirmed when pulse's arrives;
 * - `"arrival"`: when pulse's frame arrives, so agents run a beat apart by their delivery delays
 *   (a NATS fan-out to 1,000 subscribers takes tens of ms), with pulse's exact frame.
 */
export type DeliveryMode = "scheduled" | "arrival";

/** Default of {@linkcode ClientConfig.delivery}. */
export const DEFAULT_DELIVERY: DeliveryMode = "scheduled";

/**
 * How long the default clock of scheduled delivery spins before an instant, in ms: `setTimeout`
 * alone is up to a millisecond late at p99, the spin takes it to microseconds. One spin per
 * instant for the whole process (every client shares it).
 */
export const PHASE_SPIN_MS = 1.5;

/**
 * Configuration of a {@linkcode Client}. Start from {@linkcode defaultConfig} and set
 * `clusterId`, `agentId` and a transport (`natsUrl` or `bus`).
 */
export interface ClientConfig {
  /** The cluster to follow (one NATS subject token). Required. @default {""} */
  clusterId: string;
  /** This agent's id, sent in every claim and as `x-agent-id`. Required. @default {""} */
  agentId: string;
  /** Task id of claims that do not name one. @default {"default"} */
  taskId?: string;
  /**
   * NATS server URL. When set, the client connects through a connection shared by every client
   * in the process with the same URL and credentials; nats.js is loaded only then.
   * @default {undefined}
   */
  natsUrl?: string;
  /**
   * Credentials and reconnect policy for `natsUrl`. Clients sharing a connection use the options
   * of the first one to connect (connections are keyed by URL, user, password and token).
   * Reconnects forever by default.
   * @default {{}}
   */
  natsOptions?: NatsConnectionOptions;
  /**
   * A bus to use instead of NATS (e.g. an `InMemoryBus`). Takes precedence over `natsUrl`.
   * The client never closes a bus it was given.
   * @default {undefined}
   */
  bus?: Bus;
  /**
   * Ed25519 key to sign claims with: a private `CryptoKey`, PKCS#8 bytes, a 32-byte seed or a
   * private JWK. Without it claims are unsigned.
   * @default {undefined}
   */
  signingKey?: SigningKeyInput;
  /** Key id sent as `x-key-id`. @default {derived from the public key} */
  keyId?: string;
  /**
   * Pulse's public keys. When set, only beat frames signed by one of them are followed
   * (`x-signature`/`x-key-id` over `backbeat.beatframe.v1`, the cluster and the frame's epoch;
   * see docs/security.md); unsigned and badly signed frames are refused and counted in
   * `health().framesRejected`. Either a {@linkcode Keyring} (`await Keyring.fromJson(json)` or
   * `Keyring.fromFile(path)`) or the keyring's JSON, `{ "<label>": [{ "key_id": "…",
   * "public_key": "<base64 of the raw 32 bytes>", "not_before"?: "…", "not_after"?: "…" }] }`,
   * where any owner label's keys count and `not_before`/`not_after` are judged on the system
   * clock. Each frame is verified once per process for every client with the same keyring (the
   * same object, or equal JSON); clients with other keys never share the result. A frame is
   * delivered after its signature check (a WebCrypto call, in arrival order; at most 256 wait,
   * beyond that frames are refused as `verify_backlog`), so a test on an `InMemoryBus` waits for
   * it, not only for `bus.flush()`. A verified frame of a newer epoch is followed at once. Without
   * keys, any publisher on the beat subject can send frames; they are still checked against the
   * followed timeline, but a consistent stream of forgeries can steer the client.
   * @default {undefined}
   */
  pulseKeys?: Keyring | KeyringJson;
  /**
   * How long after a beat's expected arrival (one period after the previous one) the client
   * waits before entering degraded mode.
   * @default {50}
   */
  jitterToleranceMs?: number;
  /** Beats per bar, used for synthetic beats only when frames do not carry it. @default {4} */
  beatsPerBar?: number;
  /**
   * Claims held while disconnected; beyond it `emitStatusClaim` rejects with `buffer_full` (the
   * claim is counted in `health().claimsDropped` and reported as an `error` event).
   * @default {1000}
   */
  claimBufferSize?: number;
  /**
   * Produce synthetic beats when pulse goes quiet: on the timeline extrapolated from the last real
   * beat, or, when no beat came at all within `startupGraceMs` of `start()` (pulse down, or a typo
   * in the cluster id), on a fallback timeline at `fallbackTempoBpm`.
   * @default {true}
   */
  localDegradation?: boolean;
  /**
   * How long after `start()` a client with no beat at all enters degraded mode on the fallback
   * timeline (and warns once), in ms.
   * @default {10000}
   */
  startupGraceMs?: number;
  /**
   * Tempo of the fallback timeline a client uses when pulse never answered (0.1 to 6000).
   * @default {2}
   */
  fallbackTempoBpm?: number;
  /**
   * Time source for arrival times, the degradation watchdog, clock exchanges, and the timers of
   * scheduled and synthetic beats. Unset, clients share a `SystemClock`, and scheduled beats a
   * `SystemClock` spinning the last 1.5 ms before each instant (one spin per instant for the
   * whole process). A clock given here times every timer of the client, so a spinning one spins
   * for the watchdog too.
   * @default {new SystemClock()}
   */
  clock?: Clock;
  /** Where to log. @default {console} */
  logger?: Logger;
  /** Callback latency samples kept for `health()`. @default {1024} */
  latencyWindowSize?: number;
  /** Errors kept for `health().lastErrors`. @default {32} */
  errorHistorySize?: number;
  /** Most callbacks that may be registered at once (beat and downbeat together). @default {1024} */
  maxCallbacks?: number;
  /**
   * When beat callbacks run: `"scheduled"` at each beat's due instant on pulse's timeline, the
   * same instant for every agent of the cluster, or `"arrival"` when pulse's frame arrives.
   *
   * Scheduled is the default because a shared rhythm is what BACKBEAT is for: on arrival,
   * agents act a beat apart by however long the bus took to reach each of them (nothing on a
   * quiet LAN, tens of milliseconds across a 1,000-subscriber fan-out or a loaded host), whereas
   * scheduled callbacks of every agent run within a fraction of a millisecond of each other and of
   * pulse's own instant. It costs little: clock exchanges with pulse, once per process however
   * many clients (8 at start, 3 at each of seven follow-ups over the first 20 s so a rate can be
   * fitted, then 3 every 15 s and after a leader change), and one short spin before each beat per
   * process (1.5 ms on the default clock). The frame is pulse's when it has arrived by the
   * instant, else the one the timeline predicts (`info.predicted: true`; the `confirmed` event
   * follows when pulse's frame agrees, `realigned` when it does not), built only from frames the
   * client followed (with `pulseKeys`, verified ones). Until pulse answers a clock request (an
   * older pulse that does not, or no leader yet) beats are delivered on arrival. Choose
   * `"arrival"` to act only on frames pulse sent, or to spend no CPU on spinning.
   *
   * With `clock` set, scheduled beats are timed by that clock's timers: give a `SystemClock`
   * with `spinMs` for sub-millisecond precision, or a `ManualClock` in tests.
   * @default {"scheduled"}
   */
  delivery?: DeliveryMode;
}

/**
 * Returns a fresh configuration holding every default; set `clusterId`, `agentId` and `natsUrl`
 * (or `bus`) before passing it to `new Client()`.
 *
 * @returns A new, mutable configuration.
 *
 * @example Configure a client
 * ```ts
 * import { defaultConfig, InMemoryBus } from "@chorus/backbeat";
 * const config = defaultConfig();
 * config.clusterId = "chorus-dev";
 * config.agentId = "my-service";
 * config.bus = new InMemoryBus();
 * console.log(config.jitterToleranceMs); // 50
 * ```
 */
export function defaultConfig(): ClientConfig {
  return {
    clusterId: "",
    agentId: "",
    taskId: DEFAULT_TASK_ID,
    natsUrl: undefined,
    natsOptions: {},
    bus: undefined,
    signingKey: undefined,
    keyId: undefined,
    pulseKeys: undefined,
    jitterToleranceMs: DEFAULT_JITTER_TOLERANCE_MS,
    beatsPerBar: DEFAULT_BEATS_PER_BAR,
    claimBufferSize: DEFAULT_CLAIM_BUFFER_SIZE,
    localDegradation: true,
    clock: undefined,
    logger: console,
    latencyWindowSize: DEFAULT_LATENCY_WINDOW_SIZE,
    errorHistorySize: DEFAULT_ERROR_HISTORY_SIZE,
    maxCallbacks: DEFAULT_MAX_CALLBACKS,
    delivery: DEFAULT_DELIVERY,
  };
}

// The claim side of a client: builds a StatusClaim from what the caller gives, signs it, publishes
// it in call order, and holds it in a bounded buffer while the bus is disconnected. Every claim
// that passes validation ends up counted exactly once: sent, buffered (for now) or dropped, and
// every drop is reported (an `error` event), never silent.
import {
  BackbeatError,
  type Bus,
  CLAIM_STATES,
  type ClaimState,
  type Clock,
  InvalidMessageError,
  type SigningKey,
  signMessage,
  type StatusClaim,
  withTimeout,
} from "../core/mod.ts";
import { defaultMessageValidator } from "../schemas/mod.ts";

/** The fields a caller gives `emitStatusClaim`; the client fills in the rest. */
export interface StatusClaimInput {
  /** The agent's state. */
  state: ClaimState;
  /** Completion ratio, 0 to 1. @default {0} */
  progress?: number;
  /** Estimated beats to completion (integer ≥ 0). @default {0} */
  beats_left?: number;
  /** Free text, at most 256 characters. @default {""} */
  notes?: string;
  /** The task; overrides the configured `taskId`. @default {config.taskId} */
  task_id?: string;
}

/** Where a claim stands in the beat: read when it is built. */
export interface ClaimPosition {
  /** The beat_index the claim reports at. */
  readonly beatIndex: number;
  /** The window id sent as `x-window-id`. */
  readonly windowId: string;
}

/** Options of {@linkcode ClaimOutbox}. */
export interface ClaimOutboxOptions {
  /** The cluster: signatures are bound to it. */
  readonly clusterId: string;
  /** The status subject. */
  readonly subject: string;
  /** The claims' `agent_id`. */
  readonly agentId: string;
  /** `task_id` of claims that do not name one. */
  readonly taskId: string;
  /** Claims held while disconnected. */
  readonly capacity: number;
  /** Times the stop flush. */
  readonly clock: Clock;
  /** The current beat and window. */
  readonly position: () => ClaimPosition;
  /** Issues the claim's HLC stamp (a send event). */
  readonly stamp: () => string;
  /** Reports a failure nobody awaits (logged and dispatched as an `error` event). */
  readonly report: (
    kind: string,
    message: string,
    error: unknown,
    level?: "warn" | "error",
  ) => void;
  /**
   * Reports claims lost (already counted in `dropped`): an `error` event each time, logged
   * rate-limited.
   */
  readonly lost: (count: number, error: BackbeatError) => void;
}

interface Pending {
  readonly payload: Uint8Array;
  readonly headers: Record<string, string>;
}

const encoder = new TextEncoder();

/**
 * A client's outgoing claims: fill, check, sign, publish in call order, and buffer (bounded)
 * while the bus is down, flushed in order when it is back.
 *
 * @example Emit through an in-memory bus
 * ```ts ignore
 * const outbox = new ClaimOutbox({ clusterId: "dev", subject: "backbeat.dev.status",
 *   agentId: "a", taskId: "t", capacity: 10, clock, position: () => ({ beatIndex: 0, windowId }),
 *   stamp: () => hlc.now(), report: () => {}, lost: () => {} });
 * outbox.open(bus, undefined);
 * await outbox.emit({ state: "executing", progress: 0.5 });
 * console.log(outbox.sent); // 1
 * ```
 */
export class ClaimOutbox {
  readonly #o: ClaimOutboxOptions;
  #bus: Bus | undefined;
  #key: SigningKey | undefined;
  #buffer: Pending[] = [];
  #sent = 0;
  #dropped = 0;
  #chain: Promise<void> | undefined;

  /**
   * Creates an outbox; nothing is sent before {@linkcode ClaimOutbox.open}.
   *
   * @param options Subject, identity, capacity and the client's hooks.
   */
  constructor(options: ClaimOutboxOptions) {
    this.#o = options;
  }

  /** Claims published to the bus. */
  get sent(): number {
    return this.#sent;
  }

  /** Claims waiting in the buffer for a connection now. */
  get buffered(): number {
    return this.#buffer.length;
  }

  /**
   * Claims lost: refused with a full buffer, left in the buffer when the outbox closed, or not
   * publishable (the bus closed, signing failed).
   */
  get dropped(): number {
    return this.#dropped;
  }

  /**
   * Starts sending on a bus.
   *
   * @param bus The bus.
   * @param key The signing key, if claims are signed.
   */
  open(bus: Bus, key: SigningKey | undefined): void {
    this.#bus = bus;
    this.#key = key;
  }

  /**
   * Builds, checks, signs and publishes (or buffers) a claim, after every earlier one.
   *
   * @param input What the caller gave.
   * @returns Resolves when the claim is published or buffered.
   * @throws {InvalidMessageError} `invalid_claim` (nothing is sent, nothing counted).
   * @throws {BackbeatError} `buffer_full`, `closed` when the bus is closed, `key` when signing
   * fails (each counted in `dropped` and reported).
   */
  emit(input: StatusClaimInput): Promise<void> {
    try {
      const position = this.#o.position();
      const claim = this.#build(input, position.beatIndex);
      const payload = encoder.encode(JSON.stringify(claim));
      const headers: Record<string, string> = {
        "x-window-id": position.windowId,
        "x-hlc": claim.hlc,
        "x-agent-id": this.#o.agentId,
      };
      const key = this.#key;
      if (!key) {
        this.#send(payload, headers);
        return Promise.resolve();
      }
      // Sign at once (in parallel with earlier claims), publish in call order. The signature
      // covers the domain and cluster too, so it verifies for no other message or cluster.
      const signature = signMessage(key, "backbeat.statusclaim.v1", this.#o.clusterId, payload);
      signature.catch(() => {}); // awaited below, after the claims before it
      const previous = this.#chain;
      const done = (async () => {
        if (previous) await previous;
        let signed: Record<string, string>;
        try {
          signed = await signature;
        } catch (cause) {
          throw this.#lose(
            1,
            new BackbeatError("key", `Cannot emit claim: signing failed: ${cause}`, { cause }),
          );
        }
        this.#send(payload, { ...headers, ...signed });
      })();
      const link: Promise<void> = done.catch(() => {}).then(() => {
        if (this.#chain === link) this.#chain = undefined;
      });
      this.#chain = link;
      return done;
    } catch (error) {
      return Promise.reject(error);
    }
  }

  /** Publishes buffered claims, in order, while the bus is connected (on reconnect). */
  flush(): void {
    const bus = this.#bus;
    if (!bus) return;
    while (this.#buffer.length > 0 && bus.status === "connected") {
      const next = this.#buffer[0];
      try {
        bus.publish(this.#o.subject, next.payload, { headers: next.headers });
      } catch (error) {
        this.#o.report("connection", `Cannot flush buffered claims: ${error}`, error);
        return;
      }
      this.#buffer.shift();
      this.#sent++;
    }
  }

  /**
   * Ends sending: waits for claims being signed, publishes what the bus takes, waits at most
   * `timeoutMs` for the bus to confirm, and counts what is left as dropped (reported).
   *
   * @param timeoutMs The longest wait for the bus's flush.
   * @returns Resolves when done; never rejects.
   */
  async close(timeoutMs: number): Promise<void> {
    await this.#chain;
    const bus = this.#bus;
    if (bus) {
      this.flush();
      if (bus.status === "connected") {
        const flushed = bus.flush().catch((error) =>
          this.#o.report("connection", `Cannot flush claims on stop: ${error}`, error)
        );
        await withTimeout(flushed, timeoutMs, this.#o.clock);
      }
    }
    const lost = this.#buffer.length;
    if (lost === 0) return;
    this.#buffer = [];
    this.#lose(
      lost,
      new BackbeatError(
        "buffer_full",
        `Lost ${lost} buffered claims: the client stopped while the bus was ${bus?.status}`,
        { detail: { lost } },
      ),
    );
  }

  // Counts and reports lost claims; returns the error for the caller, if there is one.
  #lose(count: number, error: BackbeatError): BackbeatError {
    this.#dropped += count;
    this.#o.lost(count, error);
    return error;
  }

  #build(input: StatusClaimInput, beatIndex: number): StatusClaim {
    if (input === null || typeof input !== "object") {
      throw new TypeError("Cannot emit claim: expected an object with at least a state");
    }
    const { state, progress = 0, beats_left = 0, notes = "", task_id = this.#o.taskId } = input;
    // Checked here and again by the schema below, on purpose: these checks name the field and its
    // value (`progress 1.5 is above 1`) before an HLC tick or a signature is spent; the schema is
    // the contract's last gate, so no claim reverb would reject ever leaves, whatever the schema
    // grows to require.
    const problems: { path: string; keyword: string; message: string }[] = [];
    const problem = (path: string, keyword: string, message: string) =>
      problems.push({ path, keyword, message });
    if (!(CLAIM_STATES as readonly unknown[]).includes(state)) {
      problem(
        "/state",
        "enum",
        `state ${JSON.stringify(state)} is not one of ${CLAIM_STATES.join(", ")}`,
      );
    }
    if (typeof progress !== "number" || Number.isNaN(progress)) {
      problem("/progress", "type", `progress ${JSON.stringify(progress)} is not a number`);
    } else if (progress > 1) {
      problem("/progress", "maximum", `progress ${progress} is above 1`);
    } else if (progress < 0) {
      problem("/progress", "minimum", `progress ${progress} is below 0`);
    }
    if (!Number.isSafeInteger(beats_left)) {
      problem("/beats_left", "type", `beats_left ${JSON.stringify(beats_left)} is not an integer`);
    } else if (beats_left < 0) {
      problem("/beats_left", "minimum", `beats_left ${beats_left} is below 0`);
    }
    if (typeof notes !== "string") {
      problem("/notes", "type", "notes is not a string");
    } else if (notes.length > 256) {
      problem(
        "/notes",
        "maxLength",
        `notes is ${notes.length} characters long, above the limit of 256`,
      );
    }
    if (typeof task_id !== "string" || task_id.length < 1 || task_id.length > 256) {
      problem(
        "/task_id",
        "type",
        `task_id ${JSON.stringify(task_id)} is not a string of 1 to 256 characters`,
      );
    }
    if (problems.length > 0) {
      throw new InvalidMessageError(
        "invalid_claim",
        `Cannot emit claim: ${problems.map((p) => p.message).join("; ")}`,
        problems,
      );
    }
    const claim: StatusClaim = {
      type: "backbeat.statusclaim.v1",
      agent_id: this.#o.agentId,
      task_id,
      beat_index: beatIndex,
      state,
      beats_left,
      progress,
      notes,
      hlc: this.#o.stamp(),
    };
    const result = defaultMessageValidator().validateMessage(claim);
    if (!result.valid) {
      throw new InvalidMessageError(
        "invalid_claim",
        `Cannot emit claim: ${result.errors.map((e) => e.message).join("; ")}`,
        result.errors,
      );
    }
    return claim;
  }

  #send(payload: Uint8Array, headers: Record<string, string>): void {
    const bus = this.#bus!;
    if (bus.status === "closed") {
      throw this.#lose(1, new BackbeatError("closed", "Cannot emit claim: the bus is closed"));
    }
    // Claims left behind by a flush that failed go first, so order holds without a new event.
    if (this.#buffer.length > 0 && bus.status === "connected") this.flush();
    if (this.#buffer.length === 0 && bus.status === "connected") {
      try {
        bus.publish(this.#o.subject, payload, { headers });
        this.#sent++;
        return;
      } catch (error) {
        // A connection lost under us: keep the claim for the reconnect.
        if (!(error instanceof BackbeatError && error.code === "connection")) {
          const code = error instanceof BackbeatError ? error.code : "connection";
          throw this.#lose(
            1,
            new BackbeatError(code, `Cannot emit claim: ${(error as Error).message}`, {
              cause: error,
            }),
          );
        }
      }
    }
    const capacity = this.#o.capacity;
    if (this.#buffer.length >= capacity) {
      throw this.#lose(
        1,
        new BackbeatError(
          "buffer_full",
          `Cannot emit claim: the buffer of ${capacity} claims is full while the bus is ${bus.status}`,
          { detail: { capacity, dropped: this.#dropped + 1 } },
        ),
      );
    }
    this.#buffer.push({ payload, headers });
  }
}

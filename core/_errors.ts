/** Stable machine-readable codes carried by every {@linkcode BackbeatError}. */
export const ErrorCode = {
  /** A status claim failed validation; nothing was sent. */
  InvalidClaim: "invalid_claim",
  /** A message (frame, claim, report) failed schema validation. */
  InvalidMessage: "invalid_message",
  /** The claim buffer is full while disconnected; the claim was dropped. */
  BufferFull: "buffer_full",
  /** A beat budget ran out. */
  BudgetExceeded: "budget_exceeded",
  /** The object was used after being closed or stopped. */
  Closed: "closed",
  /** The object was used before being started. */
  NotStarted: "not_started",
  /** A remote hybrid logical clock stands too far ahead of ours. */
  ClockOffset: "clock_offset",
  /** A connection could not be made or was lost. */
  Connection: "connection",
  /** The server refused the credentials (wrong password, unknown user, bad token or key). */
  Auth: "auth",
  /** A signing key could not be imported or used. */
  Key: "key",
  /** A leadership lease was lost or could not be taken. */
  Lease: "lease",
  /** A request got no reply in time, or nobody listens on its subject. */
  Timeout: "timeout",
  /** An operation was aborted through its AbortSignal. */
  Aborted: "aborted",
} as const;
/** One of {@linkcode ErrorCode}'s values. */
export type ErrorCode = typeof ErrorCode[keyof typeof ErrorCode];

/** Options of {@linkcode BackbeatError}. */
export interface BackbeatErrorOptions extends ErrorOptions {
  /** Structured detail for programs (a field name, a limit, …). @default {undefined} */
  detail?: Record<string, unknown>;
}

/**
 * The one error class BACKBEAT throws for anything other than a bad argument. Catch it and
 * branch on {@linkcode BackbeatError.code}, which is stable across versions.
 *
 * @example Branch on the code
 * ```ts
 * import { BackbeatError } from "@chorus/backbeat";
 * try {
 *   throw new BackbeatError("buffer_full", "Cannot emit claim: buffer of 1000 claims is full");
 * } catch (err) {
 *   if (err instanceof BackbeatError && err.code === "buffer_full") console.log("dropped");
 * }
 * ```
 */
export class BackbeatError extends Error {
  /** The stable code. */
  readonly code: ErrorCode;
  /** Structured detail, if any. */
  readonly detail: Record<string, unknown> | undefined;

  /**
   * Creates an error with a stable code.
   *
   * @param code A stable {@linkcode ErrorCode}.
   * @param message A sentence for people.
   * @param options `cause` and structured `detail`.
   */
  constructor(code: ErrorCode, message: string, options?: BackbeatErrorOptions) {
    super(message, options);
    this.name = "BackbeatError";
    this.code = code;
    this.detail = options?.detail;
  }
}

/**
 * Thrown by `withBeatBudget()` when the work did not finish within its beats.
 *
 * @example Catch a blown budget
 * ```ts
 * import { BeatBudgetExceededError } from "@chorus/backbeat";
 * const err = new BeatBudgetExceededError(3, 3);
 * console.log(err.beatsUsed, err.budget, err.code); // 3 3 budget_exceeded
 * ```
 */
export class BeatBudgetExceededError extends BackbeatError {
  /** Beats that passed before the budget ran out. */
  readonly beatsUsed: number;
  /** The budget, in beats. */
  readonly budget: number;

  /**
   * Creates the error for a budget that ran out.
   *
   * @param beatsUsed Beats that passed.
   * @param budget The budget in beats.
   */
  constructor(beatsUsed: number, budget: number) {
    super(
      ErrorCode.BudgetExceeded,
      `Beat budget exceeded: ${beatsUsed} of ${budget} beats used`,
      { detail: { beatsUsed, budget } },
    );
    this.name = "BeatBudgetExceededError";
    this.beatsUsed = beatsUsed;
    this.budget = budget;
  }
}

/**
 * Thrown when a message does not satisfy its contract (schema errors are in `errors`).
 *
 * @example Inspect the errors
 * ```ts
 * import { InvalidMessageError } from "@chorus/backbeat";
 * const err = new InvalidMessageError("invalid_claim", "Cannot emit claim: progress 1.5 is above 1", [
 *   { path: "/progress", keyword: "maximum", message: "progress must be at most 1" },
 * ]);
 * console.log(err.errors[0].path); // "/progress"
 * ```
 */
export class InvalidMessageError extends BackbeatError {
  /** What was wrong, field by field. */
  readonly errors: readonly { path: string; keyword: string; message: string }[];

  /**
   * Creates the error with its field-level details.
   *
   * @param code `invalid_claim` or `invalid_message`.
   * @param message A sentence for people.
   * @param errors Field-level errors.
   */
  constructor(
    code: ErrorCode,
    message: string,
    errors: readonly { path: string; keyword: string; message: string }[],
  ) {
    super(code, message, { detail: { errors } });
    this.name = "InvalidMessageError";
    this.errors = errors;
  }
}

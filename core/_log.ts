// The one logger interface of the project: the SDK, pulse and reverb all log through it.

/** Structured fields attached to a log line. */
export type LogFields = Readonly<Record<string, unknown>>;

/**
 * What BACKBEAT logs through: a message and structured fields. `console` is one; the services
 * use a JSON-lines logger. Implementations must never throw.
 */
export interface Logger {
  /** Detail for debugging. */
  debug(msg: string, fields?: LogFields): void;
  /** Normal operation (leadership changes, tempo changes, startup). */
  info(msg: string, fields?: LogFields): void;
  /** Something went wrong but the service carries on (a rejected message). */
  warn(msg: string, fields?: LogFields): void;
  /** Something failed. */
  error(msg: string, fields?: LogFields): void;
}

/** A logger that drops everything: the library default, so embedding stays quiet. */
export const silentLogger: Logger = {
  debug() {},
  info() {},
  warn() {},
  error() {},
};

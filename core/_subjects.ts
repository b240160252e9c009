/** The four NATS subjects of one cluster. */
export interface ClusterSubjects {
  /** `backbeat.<cluster>.beat`: BeatFrames from pulse. */
  readonly beat: string;
  /** `backbeat.<cluster>.status`: StatusClaims from agents. */
  readonly status: string;
  /** `backbeat.<cluster>.bar`: BarReports from reverb. */
  readonly bar: string;
  /** `backbeat.<cluster>.control`: control requests (tempo changes) to pulse. */
  readonly control: string;
  /** `backbeat.<cluster>.time`: clock requests pulse answers (request/reply), for phase alignment. */
  readonly time: string;
}

// A NATS subject token: printable, no whitespace, no separators or wildcards.
// deno-lint-ignore no-control-regex
const TOKEN = /^[^\s.*>\u0000-\u001f\u007f]{1,128}$/u;

/**
 * Checks that a cluster id can stand as one NATS subject token.
 *
 * @param clusterId The cluster id.
 * @throws {TypeError} When it is empty, longer than 128 characters, or holds whitespace, `.`,
 * `*` or `>`.
 *
 * @example Reject a dotted id
 * ```ts
 * import { assertClusterId } from "./mod.ts";
 * assertClusterId("chorus-dev"); // fine
 * try { assertClusterId("chorus.dev"); } catch (e) { console.log((e as Error).message); }
 * ```
 */
export function assertClusterId(clusterId: string): void {
  if (typeof clusterId !== "string" || !TOKEN.test(clusterId)) {
    throw new TypeError(
      `Invalid cluster id ${
        JSON.stringify(clusterId)
      }: it must be 1 to 128 characters with no whitespace, '.', '*' or '>' (one NATS subject token)`,
    );
  }
}

/**
 * Returns the subjects of a cluster.
 *
 * @param clusterId The cluster id (one NATS token).
 * @returns The beat, status, bar and control subjects.
 * @throws {TypeError} When the cluster id is not a valid NATS token.
 *
 * @example Subjects of a cluster
 * ```ts
 * import { subjects } from "@chorus/backbeat";
 * console.log(subjects("chorus-dev").beat); // "backbeat.chorus-dev.beat"
 * ```
 */
export function subjects(clusterId: string): ClusterSubjects {
  assertClusterId(clusterId);
  const base = `backbeat.${clusterId}`;
  return {
    beat: `${base}.beat`,
    status: `${base}.status`,
    bar: `${base}.bar`,
    control: `${base}.control`,
    time: `${base}.time`,
  };
}

// `backbeat tail beats|claims|bars`: a live, readable stream of one cluster subject. Messages are
// handled one after the other (a signature check is asynchronous, and lines must keep arrival
// order), with a bounded backlog; a malformed message is one line, never a crash.

import {
  type BarReport,
  type BusMessage,
  Keyring,
  SignatureDomain,
  type StatusClaim,
  subjects,
  verifySigned,
} from "../core/mod.ts";
import { redactUrl } from "../nats/mod.ts";
import { decodeBeatFrame, validateMessageString } from "../schemas/mod.ts";
import type { EnvVars, ParsedFlags } from "../service/mod.ts";
import {
  BUS_HELP,
  BUS_SPECS,
  clusterFlag,
  connectCli,
  JSON_SPEC,
  natsOptionsOf,
  numberFlag,
  parseCommandFlags,
  stringFlag,
  usageLines,
} from "./_common.ts";
import { barLine, beatLine, claimLine, malformedLine, type SignatureView } from "./_format.ts";
import { type CommandContext, EXIT_FAILURE, EXIT_OK, sleep } from "./_io.ts";
import type { NatsBusOptions } from "../nats/mod.ts";

/** What `tail` follows. */
export type TailKind = "beats" | "claims" | "bars";

const KINDS: readonly TailKind[] = ["beats", "claims", "bars"];
/** Largest claim or report read; larger ones are reported as malformed unread. */
const MAX_MESSAGE_BYTES = 64 * 1024;
/** Messages waiting to be handled before new ones are dropped (and counted). */
const MAX_BACKLOG = 10_000;

const SPECS = [
  ...BUS_SPECS,
  JSON_SPEC,
  { name: "count" },
  { name: "timeout" },
  { name: "keyring" },
] as const;

/** `backbeat tail --help`. */
export const TAIL_USAGE: string =
  `backbeat tail: follow a cluster's beats, claims or bar reports live

${usageLines("tail beats|claims|bars [flags]")}
One aligned line per message:
  beats   index, "bar" on a downbeat, phase, tempo, epoch, window id prefix, signature, and an
          announced tempo change
  claims  agent, state, progress, beat, task, signature, notes
  bars    window id prefix, beats, agents reporting, on-time reviews, drift, issues by kind
A malformed message (not JSON, not its schema, another cluster's) is one line saying so.

Flags:
  --json                pass messages through as NDJSON on stdout (malformed ones are reported
                        on stderr, so stdout stays one valid message a line)
  --count N             stop after N messages (malformed ones count)
  --timeout S           stop after S seconds; with --count, exit 1 when fewer came
  --keyring FILE        verify signatures against a keyring: claims against their agent's keys,
                        beats against any key (a pulse keyring); shows "verified" or
                        "BAD SIGNATURE (reason)" instead of "signed"
${BUS_HELP}  -h, --help            show this help

Ctrl-C (SIGINT) stops it cleanly (exit 0).
`;

/** What `tail` was asked to do. */
export interface TailOptions {
  /** What to follow. */
  readonly kind: TailKind;
  /** The cluster. */
  readonly cluster: string;
  /** NATS options. */
  readonly nats: NatsBusOptions;
  /** NDJSON output. */
  readonly json: boolean;
  /** Stop after this many messages. */
  readonly count: number | undefined;
  /** Stop after this long, ms. */
  readonly timeoutMs: number | undefined;
  /** A keyring file to verify against (absolute). */
  readonly keyring: string | undefined;
}

/**
 * Parses `tail`'s command line.
 *
 * @param args The arguments after `tail`.
 * @param env The environment.
 * @param path Resolves user paths.
 * @returns The options, or `help`.
 * @throws {TypeError} On a bad flag or kind.
 * @throws {RangeError} On a bad number.
 *
 * @example Count NDJSON claims
 * ```ts ignore
 * const o = parseTail(["claims", "--json", "--count", "10"], {}, ctx.path);
 * if (o !== "help") console.log(o.kind, o.count); // "claims" 10
 * ```
 */
export function parseTail(
  args: readonly string[],
  env: EnvVars,
  path: (p: string) => string,
): TailOptions | "help" {
  const flags: ParsedFlags = parseCommandFlags(args, SPECS, env);
  if (flags.values.help) return "help";
  const [kind, extra] = flags.positionals;
  if (kind === undefined) throw new TypeError("Missing what to tail: beats, claims or bars");
  if (!(KINDS as readonly string[]).includes(kind)) {
    throw new TypeError(
      `Unknown stream ${JSON.stringify(kind)}: expected beats, claims or bars`,
    );
  }
  if (extra !== undefined) throw new TypeError(`Unexpected argument ${JSON.stringify(extra)}`);
  const seconds = numberFlag(flags, "timeout", { min: 0.001, max: 31_536_000 });
  const keyring = stringFlag(flags, "keyring");
  if (keyring !== undefined && kind === "bars") {
    throw new TypeError("--keyring: bar reports are not signed");
  }
  return {
    kind: kind as TailKind,
    cluster: clusterFlag(flags),
    nats: natsOptionsOf(flags, path),
    json: flags.values.json === true,
    count: numberFlag(flags, "count", { min: 1, max: Number.MAX_SAFE_INTEGER, integer: true }),
    timeoutMs: seconds === undefined ? undefined : seconds * 1000,
    keyring: keyring === undefined ? undefined : path(keyring),
  };
}

const decoder = new TextDecoder();

/** One message turned into its output: a line for stdout, or a malformed notice. */
type Rendered = { readonly line: string } | { readonly malformed: string };

async function signatureOf(
  keyring: Keyring | undefined,
  domain: SignatureDomain,
  cluster: string,
  m: BusMessage,
  options: { epoch?: number; owner?: string },
): Promise<SignatureView> {
  const headers = m.headers;
  const keyId = headers?.["x-key-id"];
  if (!headers?.["x-signature"] || !keyId) return { kind: "unsigned" };
  if (keyring === undefined) return { kind: "signed", keyId };
  const check = await verifySigned(keyring, domain, cluster, m.data, headers, options);
  return check.ok ? { kind: "verified", keyId } : { kind: "bad", reason: check.reason };
}

// Claims and reports: size, JSON, schema, and the type their subject carries.
function readMessage(
  m: BusMessage,
  type: string,
  subject: string,
): { value: unknown; text: string } | string {
  if (m.data.byteLength > MAX_MESSAGE_BYTES) {
    return `${m.data.byteLength} bytes, above the ${MAX_MESSAGE_BYTES}-byte limit`;
  }
  const text = decoder.decode(m.data);
  const result = validateMessageString(text);
  if (!result.valid) {
    const first = result.errors.slice(0, 2).map((e) =>
      e.keyword === "json"
        ? `not JSON (${e.message})`
        : e.path
        ? `${e.path}: ${e.message}`
        : e.message
    );
    return first.join("; ") || "invalid";
  }
  if (result.type !== type) return `a ${result.type} on the ${subject} subject`;
  return { value: JSON.parse(text), text };
}

/**
 * Follows the subject until the count, the timeout, SIGINT or a closed stdout.
 *
 * @param o The options.
 * @param ctx The command context.
 * @returns The exit status: 0, or 1 when `--count` was not reached before `--timeout`.
 * @throws {BackbeatError} When NATS cannot be reached or the keyring cannot be read.
 *
 * @example Follow bars until Ctrl-C
 * ```ts ignore
 * const o = parseTail(["bars"], { BACKBEAT_CLUSTER: "prod" }, ctx.path);
 * if (o !== "help") await runTail(o, ctx);
 * ```
 */
export async function runTail(o: TailOptions, ctx: CommandContext): Promise<number> {
  const keyring = o.keyring === undefined ? undefined : await Keyring.fromFile(o.keyring);
  const subject = subjects(o.cluster);
  const bus = await connectCli(o.nats, "tail");
  const stop = new AbortController();
  const stopped = AbortSignal.any([stop.signal, ctx.io.signal]);
  const onStatus = (e: CustomEvent<{ status: string }>) => {
    if (e.detail.status !== "closed") ctx.warn(`NATS connection ${e.detail.status}`);
  };
  bus.addEventListener("status", onStatus);
  let seen = 0;
  let backlog = 0;
  let dropped = 0;
  let chain = Promise.resolve();

  const render = async (m: BusMessage): Promise<Rendered> => {
    if (o.kind === "beats") {
      const frame = decodeBeatFrame(m.data, o.cluster);
      if (typeof frame === "string") return { malformed: frame };
      if (o.json) return { line: passThrough(m.data) };
      const sig = await signatureOf(keyring, SignatureDomain.BeatFrame, o.cluster, m, {
        epoch: frame.epoch ?? 0,
      });
      return { line: beatLine(frame, sig) };
    }
    if (o.kind === "claims") {
      const read = readMessage(m, "backbeat.statusclaim.v1", "status");
      if (typeof read === "string") return { malformed: read };
      if (o.json) return { line: passThrough(m.data) };
      const claim = read.value as StatusClaim;
      const sig = await signatureOf(keyring, SignatureDomain.StatusClaim, o.cluster, m, {
        owner: claim.agent_id,
      });
      return { line: claimLine(claim, sig) };
    }
    const read = readMessage(m, "backbeat.barreport.v1", "bar");
    if (typeof read === "string") return { malformed: read };
    return { line: o.json ? passThrough(m.data) : barLine(read.value as BarReport) };
  };

  const kindName = o.kind === "beats" ? "beat" : o.kind === "claims" ? "claim" : "bar";
  const handle = async (m: BusMessage) => {
    backlog--;
    if (stopped.aborted) return;
    let r: Rendered;
    try {
      r = await render(m);
    } catch (error) {
      r = { malformed: `cannot read it (${(error as Error).name})` };
    }
    if (stopped.aborted) return;
    if ("line" in r) ctx.out.write(`${r.line}\n`);
    else if (o.json) ctx.warn(`malformed ${kindName} message: ${r.malformed}`);
    else ctx.out.write(`${malformedLine(kindName, r.malformed)}\n`);
    seen++;
    if (o.count !== undefined && seen >= o.count) stop.abort();
  };

  const name = o.kind === "beats"
    ? subject.beat
    : o.kind === "claims"
    ? subject.status
    : subject.bar;
  const sub = bus.subscribe(name, (m) => {
    if (stopped.aborted) return;
    if (backlog >= MAX_BACKLOG) {
      dropped++;
      return;
    }
    backlog++;
    chain = chain.then(() => handle(m));
  });
  try {
    await bus.flush();
    if (ctx.io.stderrIsTerminal) {
      await ctx.warn(`following ${name} on ${redactUrl(bus.url)} (Ctrl-C to stop)`);
    }
    if (o.timeoutMs !== undefined) sleep(o.timeoutMs, stopped).then(() => stop.abort());
    if (!stopped.aborted) {
      await new Promise<void>((done) =>
        stopped.addEventListener("abort", () => done(), { once: true })
      );
    }
  } finally {
    sub.unsubscribe();
    bus.removeEventListener("status", onStatus);
    await bus.close();
  }
  await ctx.out.flush();
  if (dropped > 0 || ctx.out.dropped > 0) {
    await ctx.warn(
      `${dropped + ctx.out.dropped} messages not shown: output could not keep up`,
    );
  }
  if (o.count !== undefined && seen < o.count && !ctx.io.signal.aborted && !ctx.out.broken) {
    await ctx.warn(`${seen} of ${o.count} messages within ${o.timeoutMs} ms`);
    return EXIT_FAILURE;
  }
  return EXIT_OK;
}

// NDJSON: the exact payload, with line breaks (whitespace between JSON tokens; inside strings
// they are always escaped) turned into spaces so it stays one line.
function passThrough(data: Uint8Array): string {
  return decoder.decode(data).replace(/[\r\n]+/g, " ");
}

// `backbeat tempo get|set`: read the cluster's tempo from pulse's HTTP API or from a beat frame,
// and change it with an authenticated control message on NATS (pulse's own controlMessage()) or
// with POST /tempo, then say when the change lands: pulse applies a tempo at the next downbeat
// and announces it (`next_tempo_bpm`) in the frames before.

import { type BeatFrame, readSigningKeyFile, type SigningKey, subjects } from "../core/mod.ts";
import type { NatsBusLike, NatsBusOptions } from "../nats/mod.ts";
import { controlMessage } from "../pulse/mod.ts";
import type { EnvVars, ParsedFlags } from "../service/mod.ts";
import {
  BeatWatch,
  BUS_HELP,
  BUS_SPECS,
  clusterFlag,
  connectCli,
  dueAt,
  isLoopback,
  JSON_SPEC,
  natsOptionsOf,
  nextDownbeat,
  numberFlag,
  parseCommandFlags,
  type SeenBeat,
  stringFlag,
  urlFlag,
  usageLines,
} from "./_common.ts";
import { type CommandContext, errorMessage, EXIT_OK, httpJson, num, printable } from "./_io.ts";
import { redactUrl } from "../nats/mod.ts";

/** Pulse's tempo range. */
export const MIN_TEMPO_BPM = 0.1;
/** Pulse's tempo range. */
export const MAX_TEMPO_BPM = 6_000;

const SPECS = [
  ...BUS_SPECS,
  JSON_SPEC,
  { name: "pulse", env: "BACKBEAT_PULSE_URL" },
  { name: "admin-token", env: "BACKBEAT_ADMIN_TOKEN" },
  { name: "admin-key", env: "BACKBEAT_ADMIN_KEY" },
  { name: "timeout" },
  { name: "no-wait", type: "boolean" },
] as const;

/** `backbeat tempo --help`. */
export const TEMPO_USAGE: string = `backbeat tempo: read or change the cluster's tempo

${usageLines("tempo get [flags]")}  deno task backbeat tempo set <bpm> [flags]
  backbeat tempo set <bpm> [flags]

tempo get: with --pulse, pulse's HTTP API (GET /tempo when pulse serves it, else GET /healthz;
  when pulse cannot be reached and --nats is given too, a beat frame); otherwise the next beat
  frame on NATS (its tempo, and a change it announces).
tempo set <bpm> (${MIN_TEMPO_BPM} to ${MAX_TEMPO_BPM}): the change lands on the next downbeat.
  Without --pulse: an authenticated control message on backbeat.<cluster>.control, proving
  --admin-token with x-auth-hmac (the token itself is never sent) or signed with --admin-key;
  then it follows the beats and prints when pulse announced the change and the beat it landed
  on. With --pulse: POST /tempo with the token as bearer token; prints the beat it lands on.

Flags:
  --pulse URL           pulse's HTTP address, e.g. http://127.0.0.1:8080 [BACKBEAT_PULSE_URL]
  --admin-token TOKEN   pulse's admin token [BACKBEAT_ADMIN_TOKEN]; prefer the variable: a
                        command line is visible to every user of the machine
  --admin-key FILE      an operator's Ed25519 key file (backbeat keygen --admin), whose public
                        key is in pulse's --admin-keyring [BACKBEAT_ADMIN_KEY]
  --timeout S           longest wait for a beat or an answer (default 10, or two bars and a
                        beat at a slow tempo)
  --no-wait             tempo set: send and exit, without following the beats
  --json                one JSON object on stdout instead of text
${BUS_HELP}  -h, --help            show this help

Exit status: 0 when read or landed (or announced, if it lands after --timeout), 1 when pulse
did not take the change or cannot be reached, 2 for a bad command line.
`;

/** How a control message proves who sent it. */
export interface ControlAuthOptions {
  /** The admin token (HMAC proof). */
  readonly token?: string;
  /** The operator key file (absolute). */
  readonly keyFile?: string;
}

/** What `tempo` was asked to do. */
export interface TempoOptions {
  /** `get` or `set`. */
  readonly action: "get" | "set";
  /** The tempo to set. */
  readonly bpm: number | undefined;
  /** The cluster. */
  readonly cluster: string;
  /** NATS options. */
  readonly nats: NatsBusOptions;
  /** Whether a NATS server was named (`--nats`, `BACKBEAT_NATS_URL`), not only defaulted. */
  readonly natsGiven: boolean;
  /** Pulse's HTTP base URL. */
  readonly pulse: string | undefined;
  /** The proof. */
  readonly auth: ControlAuthOptions;
  /** Longest wait, ms (undefined: the default). */
  readonly timeoutMs: number | undefined;
  /** Send and exit. */
  readonly noWait: boolean;
  /** JSON output. */
  readonly json: boolean;
}

/**
 * Parses a tempo from the command line.
 *
 * @param text The text.
 * @param what What it is, for the message.
 * @returns The tempo.
 * @throws {RangeError} When it is not a number from 0.1 to 6000.
 *
 * @example A tempo argument
 * ```ts ignore
 * console.log(parseTempo("90", "tempo")); // 90
 * ```
 */
export function parseTempo(text: string, what: string): number {
  const n = /^\s*(\d+\.?\d*|\.\d+)\s*$/.test(text) ? Number(text) : NaN;
  if (!(n >= MIN_TEMPO_BPM && n <= MAX_TEMPO_BPM)) {
    throw new RangeError(
      `Invalid ${what} ${
        JSON.stringify(text)
      }: expected a tempo from ${MIN_TEMPO_BPM} to ${MAX_TEMPO_BPM} BPM`,
    );
  }
  return n;
}

/**
 * The proof flags of a command line.
 *
 * @param flags Parsed flags with `admin-token` and `admin-key`.
 * @param path Resolves user paths.
 * @returns The proof options.
 * @throws {TypeError} When a value is empty.
 *
 * @example The token from the environment
 * ```ts ignore
 * const flags = parseCommandFlags([], [{ name: "admin-token", env: "BACKBEAT_ADMIN_TOKEN" }], {
 *   BACKBEAT_ADMIN_TOKEN: "s3cret",
 * });
 * console.log(controlAuthOf(flags, (p) => p).token !== undefined); // true
 * ```
 */
export function controlAuthOf(flags: ParsedFlags, path: (p: string) => string): ControlAuthOptions {
  const token = stringFlag(flags, "admin-token");
  const key = stringFlag(flags, "admin-key");
  return { token, keyFile: key === undefined ? undefined : path(key) };
}

/**
 * Parses `tempo`'s command line.
 *
 * @param args The arguments after `tempo`.
 * @param env The environment.
 * @param path Resolves user paths.
 * @returns The options, or `help`.
 * @throws {TypeError} On a bad flag or action.
 * @throws {RangeError} On a bad tempo or number.
 *
 * @example Set a tempo
 * ```ts ignore
 * const o = parseTempoCommand(["set", "90"], {}, ctx.path);
 * if (o !== "help") console.log(o.action, o.bpm); // "set" 90
 * ```
 */
export function parseTempoCommand(
  args: readonly string[],
  env: EnvVars,
  path: (p: string) => string,
): TempoOptions | "help" {
  const flags = parseCommandFlags(args, SPECS, env);
  if (flags.values.help) return "help";
  const [action, value, extra] = flags.positionals;
  if (action !== "get" && action !== "set") {
    throw new TypeError(
      action === undefined
        ? "Missing action: tempo get, or tempo set <bpm>"
        : `Unknown action ${JSON.stringify(action)}: expected get or set`,
    );
  }
  let bpm: number | undefined;
  if (action === "set") {
    if (value === undefined) throw new TypeError("Missing the tempo: tempo set <bpm>");
    bpm = parseTempo(value, "tempo");
    if (extra !== undefined) throw new TypeError(`Unexpected argument ${JSON.stringify(extra)}`);
  } else if (value !== undefined) {
    throw new TypeError(`Unexpected argument ${JSON.stringify(value)}`);
  }
  const seconds = numberFlag(flags, "timeout", { min: 0.001, max: 86_400 });
  return {
    action,
    bpm,
    cluster: clusterFlag(flags),
    nats: natsOptionsOf(flags, path),
    natsGiven: flags.values.nats !== undefined,
    pulse: urlFlag(flags, "pulse"),
    auth: controlAuthOf(flags, path),
    timeoutMs: seconds === undefined ? undefined : seconds * 1000,
    noWait: flags.values["no-wait"] === true,
    json: flags.values.json === true,
  };
}

/** What a tempo read found. */
export interface TempoReading {
  /** Tempo in force. */
  readonly tempo_bpm: number;
  /** A change announced for the next downbeat, if any. */
  readonly next_tempo_bpm: number | null;
  /** The latest beat known. */
  readonly beat_index: number | null;
  /** Where it came from: `GET /tempo`, `GET /healthz` or `beat frame`. */
  readonly source: string;
  /** The pulse that answered, when known. */
  readonly pulse_id: string | null;
  /** Its role, when known. */
  readonly role: string | null;
  /** The next downbeat's beat_index, when known (where a change lands). */
  readonly next_downbeat: number | null;
  /** When it is due (RFC 3339), when known. */
  readonly next_downbeat_at: string | null;
}

function record(v: unknown): Record<string, unknown> | undefined {
  return v !== null && typeof v === "object" && !Array.isArray(v)
    ? v as Record<string, unknown>
    : undefined;
}

function finite(v: unknown): number | null {
  return typeof v === "number" && Number.isFinite(v) ? v : null;
}

/**
 * Reads the tempo from pulse's HTTP API: `GET /tempo` when it exists, else `GET /healthz`.
 *
 * @param pulse The base URL.
 * @param timeoutMs Per request.
 * @param signal Aborts.
 * @returns The reading.
 * @throws {Error} When pulse cannot be reached or answers without a tempo.
 *
 * @example Ask pulse
 * ```ts ignore
 * const r = await tempoFromPulse("http://127.0.0.1:8080", 3_000, signal);
 * console.log(r.tempo_bpm, r.next_tempo_bpm);
 * ```
 */
export async function tempoFromPulse(
  pulse: string,
  timeoutMs: number,
  signal: AbortSignal,
): Promise<TempoReading> {
  const viaTempo = await httpJson(`${pulse}/tempo`, {}, timeoutMs, signal);
  const t = record(viaTempo.json);
  if (viaTempo.status === 200 && t && finite(t.tempo_bpm) !== null) {
    const next = finite(t.next_downbeat);
    return {
      tempo_bpm: t.tempo_bpm as number,
      next_tempo_bpm: finite(t.next_tempo_bpm),
      beat_index: finite(t.beat_index) ?? finite(t.last_beat_index),
      source: "GET /tempo",
      pulse_id: typeof t.pulse_id === "string" ? printable(t.pulse_id, 64) : null,
      role: typeof t.role === "string" ? printable(t.role, 32) : null,
      // -1: a pulse that has not led yet does not know it.
      next_downbeat: next !== null && next >= 0 ? next : null,
      next_downbeat_at: typeof t.next_downbeat_at === "string"
        ? printable(t.next_downbeat_at, 40)
        : null,
    };
  }
  const health = await httpJson(`${pulse}/healthz`, {}, timeoutMs, signal);
  const h = record(health.json);
  if (health.status !== 200 || !h || finite(h.tempo_bpm) === null) {
    throw new Error(`${redactUrl(pulse)}/healthz answered ${health.status} without a tempo`);
  }
  return {
    tempo_bpm: h.tempo_bpm as number,
    next_tempo_bpm: finite(h.next_tempo_bpm),
    beat_index: finite(h.last_beat_index),
    source: "GET /healthz",
    pulse_id: typeof h.pulse_id === "string" ? printable(h.pulse_id, 64) : null,
    role: typeof h.role === "string" ? printable(h.role, 32) : null,
    next_downbeat: null,
    next_downbeat_at: null,
  };
}

function readingOfFrame(frame: BeatFrame, headers: Readonly<Record<string, string>>): TempoReading {
  return {
    tempo_bpm: frame.tempo_bpm,
    next_tempo_bpm: frame.next_tempo_bpm ?? null,
    beat_index: frame.beat_index,
    source: "beat frame",
    pulse_id: headers["x-pulse-id"] === undefined ? null : printable(headers["x-pulse-id"], 64),
    role: null,
    next_downbeat: nextDownbeat(frame, frame.downbeat ? frame : undefined) ?? null,
    next_downbeat_at: null,
  };
}

const DEFAULT_TIMEOUT_MS = 10_000;

/** A control message sent, and what the beats showed of it. */
export interface TempoChangeResult {
  /** The tempo asked for. */
  readonly tempo_bpm: number;
  /** When it was sent (RFC 3339). */
  readonly sent_at: string;
  /** How it was authenticated: `hmac`, `signature`, both, or `none`. */
  readonly auth: string;
  /** The first beat that announced it, if seen. */
  readonly announced_beat: number | null;
  /** The downbeat it is expected on, when known. */
  readonly lands_on_beat: number | null;
  /** The downbeat it landed on, if seen. */
  readonly landed_beat: number | null;
  /** When that downbeat arrived (RFC 3339). */
  readonly landed_at: string | null;
  /** The tempo was already in force: nothing changes. */
  readonly already: boolean;
}

/** Options of {@linkcode sendTempoChange}. */
export interface SendTempoOptions {
  /** The bus. */
  readonly bus: NatsBusLike;
  /** The cluster. */
  readonly cluster: string;
  /** The tempo. */
  readonly bpm: number;
  /** The proof. */
  readonly auth: ControlAuthOptions;
  /** Follow the beats until it lands (else return once sent). */
  readonly wait: boolean;
  /** Longest wait, ms (undefined: 10 s, or two bars and a beat at a slow tempo). */
  readonly timeoutMs: number | undefined;
  /** Aborts the wait. */
  readonly signal: AbortSignal;
  /** Called with a progress sentence (announced, …). */
  readonly progress?: (text: string) => void;
}

/**
 * Sends an authenticated tempo change on the control subject and, when asked, follows the
 * beats until it lands on a downbeat.
 *
 * @param o Bus, cluster, tempo, proof and wait.
 * @returns What happened.
 * @throws {BackbeatError} When the key file cannot be read or the bus cannot publish.
 * @throws {Error} When waiting and no frame announced the change in time (pulse refused it or
 * is not running).
 *
 * @example Change the tempo and wait for it
 * ```ts ignore
 * const r = await sendTempoChange({
 *   bus,
 *   cluster: "prod",
 *   bpm: 90,
 *   auth: { token: Deno.env.get("BACKBEAT_ADMIN_TOKEN") },
 *   wait: true,
 *   timeoutMs: undefined,
 *   signal,
 * });
 * console.log(r.landed_beat);
 * ```
 */
export async function sendTempoChange(o: SendTempoOptions): Promise<TempoChangeResult> {
  let key: SigningKey | undefined;
  if (o.auth.keyFile !== undefined) key = await readSigningKeyFile(o.auth.keyFile);
  const watch = o.wait ? new BeatWatch(o.bus, o.cluster) : undefined;
  try {
    if (watch) await o.bus.flush();
    const issuedAt = Date.now();
    const message = await controlMessage({
      clusterId: o.cluster,
      tempoBpm: o.bpm,
      token: o.auth.token,
      key,
      issuedAt,
      requestedBy: "backbeat-cli",
    });
    o.bus.publish(subjects(o.cluster).control, message.data, { headers: message.headers });
    await o.bus.flush();
    const auth = [
      message.headers["x-auth-hmac"] ? "hmac" : "",
      message.headers["x-signature"] ? "signature" : "",
    ].filter(Boolean).join("+") || "none";
    const base = {
      tempo_bpm: o.bpm,
      sent_at: new Date(issuedAt).toISOString(),
      auth,
      announced_beat: null,
      lands_on_beat: null,
      landed_beat: null,
      landed_at: null,
      already: false,
    };
    if (!watch) return base;
    return await followChange(watch, o, base);
  } finally {
    watch?.close();
  }
}

async function followChange(
  watch: BeatWatch,
  o: SendTempoOptions,
  base: TempoChangeResult,
): Promise<TempoChangeResult> {
  const started = Date.now();
  let limit = o.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  let announced: SeenBeat | undefined;
  let landsOn: number | undefined;
  let unchanged = 0;
  let sawOther = false;
  for (;;) {
    const left = limit - (Date.now() - started);
    const beat = left > 0 ? await watch.next(() => true, left, o.signal) : undefined;
    if (beat === undefined) break;
    const f = beat.frame;
    if (o.timeoutMs === undefined) {
      // At a slow tempo a change needs up to two bars: wait for them, not for a fixed 10 s.
      const bar = (f.beats_per_bar ?? 4) * 60_000 / f.tempo_bpm;
      limit = Math.max(limit, Date.now() - started + 2 * bar + 60_000 / f.tempo_bpm + 1_000);
    }
    if (f.tempo_bpm === o.bpm) {
      // A change lands on a downbeat; a request on a bar's last beat may land unannounced.
      if (f.downbeat && (announced !== undefined || sawOther)) {
        return {
          ...base,
          announced_beat: announced?.frame.beat_index ?? null,
          lands_on_beat: landsOn ?? f.beat_index,
          landed_beat: f.beat_index,
          landed_at: new Date(beat.at).toISOString(),
        };
      }
      if (announced === undefined && !sawOther && f.next_tempo_bpm === undefined) {
        // Two frames at that tempo and no change announced: it was in force already.
        if (++unchanged >= 2) return { ...base, already: true };
      }
    } else {
      sawOther = true;
    }
    if (f.next_tempo_bpm === o.bpm && announced === undefined) {
      announced = beat;
      landsOn = nextDownbeat(f, watch.lastDownbeat?.frame);
      const when = landsOn === undefined
        ? "the next downbeat"
        : `beat ${landsOn} (the next downbeat, in about ${
          num(Math.max(0, dueAt(f, beat.at, landsOn) - Date.now()) / 1000, 1)
        } s)`;
      o.progress?.(
        `pulse announced ${num(o.bpm)} bpm on beat ${f.beat_index}: it lands on ${when}`,
      );
    }
  }
  if (announced !== undefined) {
    return { ...base, announced_beat: announced.frame.beat_index, lands_on_beat: landsOn ?? null };
  }
  if (o.signal.aborted) throw new Error("interrupted before pulse announced the change");
  const seen = watch.last === undefined
    ? `no beat arrived on ${subjects(o.cluster).beat}: is pulse running for cluster ${o.cluster}?`
    : "pulse did not take it: a wrong or missing --admin-token or --admin-key, a clock more " +
      "than 30 s off pulse's, or control off (see its control_rejected counters: backbeat status)";
  throw new Error(`no frame announced ${num(o.bpm)} bpm within ${num(limit / 1000, 1)} s: ${seen}`);
}

/**
 * Runs `tempo get` or `tempo set`.
 *
 * @param o The options.
 * @param ctx The command context.
 * @returns The exit status.
 * @throws {Error} When the tempo cannot be read or the change was not taken.
 *
 * @example Read the tempo
 * ```ts ignore
 * const o = parseTempoCommand(["get", "--pulse", "http://127.0.0.1:8080"], {}, ctx.path);
 * if (o !== "help") await runTempo(o, ctx); // tempo 120 bpm (leader, …, from GET /tempo)
 * ```
 */
export async function runTempo(o: TempoOptions, ctx: CommandContext): Promise<number> {
  const timeoutMs = o.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  if (o.action === "get") {
    let reading: TempoReading;
    if (o.pulse === undefined) reading = await tempoFromBeat(o, timeoutMs, ctx);
    else {
      try {
        reading = await tempoFromPulse(o.pulse, timeoutMs, ctx.io.signal);
      } catch (error) {
        // With a server named too, a beat frame still tells the tempo.
        if (!o.natsGiven || ctx.io.signal.aborted) throw error;
        await ctx.warn(`${errorMessage(error)}; reading a beat frame instead`);
        reading = await tempoFromBeat(o, timeoutMs, ctx);
      }
    }
    await ctx.out.write(o.json ? `${JSON.stringify(reading)}\n` : `${readingText(reading)}\n`);
    return EXIT_OK;
  }
  const bpm = o.bpm!;
  if (o.pulse !== undefined) return await setOverHttp(o, bpm, timeoutMs, ctx);
  const bus = await connectCli(o.nats, "tempo");
  try {
    const how = o.auth.token !== undefined || o.auth.keyFile !== undefined
      ? `proven with ${
        [
          o.auth.token !== undefined ? "the admin token (HMAC)" : "",
          o.auth.keyFile ? "the admin key" : "",
        ]
          .filter(Boolean).join(" and ")
      }`
      : "without proof: only a pulse whose control subject is open takes it";
    if (!o.json) {
      await ctx.out.write(
        `sending tempo ${num(bpm)} bpm on ${subjects(o.cluster).control}, ${how}\n`,
      );
    }
    const result = await sendTempoChange({
      bus,
      cluster: o.cluster,
      bpm,
      auth: o.auth,
      wait: !o.noWait,
      timeoutMs: o.timeoutMs,
      signal: ctx.io.signal,
      progress: o.json ? undefined : (text) => ctx.out.write(`${text}\n`),
    });
    if (o.json) {
      await ctx.out.write(`${JSON.stringify(result)}\n`);
    } else if (o.noWait) {
      await ctx.out.write(
        `sent at ${result.sent_at}: pulse applies it on the next downbeat if it takes it\n`,
      );
    } else if (result.already) {
      await ctx.out.write(`the tempo is already ${num(bpm)} bpm: nothing changes\n`);
    } else if (result.landed_beat !== null) {
      await ctx.out.write(
        `landed: tempo ${
          num(bpm)
        } bpm from beat ${result.landed_beat} (a downbeat) at ${result.landed_at}\n`,
      );
    } else {
      await ctx.out.write(
        `not landed within the wait: it lands on ${
          result.lands_on_beat === null ? "the next downbeat" : `beat ${result.lands_on_beat}`
        }\n`,
      );
    }
    return EXIT_OK;
  } finally {
    await bus.close();
  }
}

async function tempoFromBeat(
  o: TempoOptions,
  timeoutMs: number,
  ctx: CommandContext,
): Promise<TempoReading> {
  const bus = await connectCli(o.nats, "tempo");
  const watch = new BeatWatch(bus, o.cluster);
  try {
    await bus.flush();
    const beat = await watch.next(() => true, timeoutMs, ctx.io.signal);
    if (beat === undefined) {
      throw new Error(
        `no beat on ${subjects(o.cluster).beat} within ${num(timeoutMs / 1000, 1)} s: is pulse ` +
          `running for cluster ${o.cluster}? (or give --pulse URL)`,
      );
    }
    return readingOfFrame(beat.frame, beat.headers);
  } finally {
    watch.close();
    await bus.close();
  }
}

function readingText(r: TempoReading): string {
  const parts = [`tempo ${num(r.tempo_bpm)} bpm`];
  const downbeat = r.next_downbeat === null
    ? "the next downbeat"
    : `beat ${r.next_downbeat}${r.next_downbeat_at ? ` at ${r.next_downbeat_at}` : ""}`;
  if (r.next_tempo_bpm !== null && r.next_tempo_bpm !== r.tempo_bpm) {
    parts.push(`changing to ${num(r.next_tempo_bpm)} bpm on ${downbeat}`);
  }
  const from = [
    r.pulse_id !== null ? `pulse ${r.pulse_id}` : "",
    r.role ?? "",
    r.beat_index !== null ? `beat ${r.beat_index}` : "",
    r.next_tempo_bpm === null && r.next_downbeat !== null ? `next downbeat ${downbeat}` : "",
    `from ${r.source}`,
  ].filter(Boolean).join(", ");
  return `${parts.join(", ")} (${from})`;
}

async function setOverHttp(
  o: TempoOptions,
  bpm: number,
  timeoutMs: number,
  ctx: CommandContext,
): Promise<number> {
  const pulse = o.pulse!;
  if (o.auth.keyFile !== undefined) {
    throw new TypeError(
      "--admin-key signs control messages on NATS; POST /tempo takes --admin-token",
    );
  }
  if (o.auth.token !== undefined && new URL(pulse).protocol === "http:" && !isLoopback(pulse)) {
    await ctx.warn(`sending the admin token over plain HTTP to ${redactUrl(pulse)}`);
  }
  const headers: Record<string, string> = { "content-type": "application/json" };
  if (o.auth.token !== undefined) headers.authorization = `Bearer ${o.auth.token}`;
  const res = await httpJson(
    `${pulse}/tempo`,
    {
      method: "POST",
      headers,
      body: JSON.stringify({ tempo_bpm: bpm }),
    },
    timeoutMs,
    ctx.io.signal,
  );
  const body = record(res.json);
  if (res.status !== 200 || !body) {
    const why = typeof body?.error === "string" ? body.error : `HTTP ${res.status}`;
    const hint = res.status === 401
      ? o.auth.token === undefined
        ? " (give --admin-token or BACKBEAT_ADMIN_TOKEN)"
        : " (the token is not pulse's)"
      : "";
    throw new Error(`pulse refused the change: ${why}${hint}`);
  }
  const effective = finite(body.effective_beat);
  let eta = "";
  if (effective !== null) {
    try {
      const now = await tempoFromPulse(pulse, timeoutMs, ctx.io.signal);
      const at = now.next_downbeat === effective && now.next_downbeat_at !== null
        ? Date.parse(now.next_downbeat_at)
        : now.beat_index !== null && effective > now.beat_index
        ? Date.now() + (effective - now.beat_index) * 60_000 / now.tempo_bpm
        : NaN;
      if (Number.isFinite(at)) eta = `, in about ${num(Math.max(0, at - Date.now()) / 1000, 1)} s`;
    } catch { /* the estimate is a nicety */ }
  }
  const result = {
    tempo_bpm: bpm,
    effective_beat: effective,
    forwarded: body.forwarded === true,
  };
  await ctx.out.write(
    o.json
      ? `${JSON.stringify(result)}\n`
      : `pulse took tempo ${num(bpm)} bpm: it lands on ${
        effective === null ? "the next downbeat" : `beat ${effective} (the next downbeat${eta})`
      }${result.forwarded ? "; forwarded to the leader" : ""}\n`,
  );
  return EXIT_OK;
}

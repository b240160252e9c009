import { BackbeatError, type Logger, silentLogger } from "../core/mod.ts";
import { PROMETHEUS_CONTENT_TYPE } from "../service/mod.ts";
import { HTTP_REJECT_REASONS, type HttpRejectReason, renderPulseMetrics } from "./_metrics.ts";
import type { Pulse } from "./_pulse.ts";
import { MAX_TEMPO_REQUEST_BYTES, readTempoRequest } from "./_tempo.ts";

/** Default for {@linkcode PulseHttpOptions.hostname}. */
export const DEFAULT_PULSE_HTTP_HOSTNAME = "127.0.0.1";
/** Default for {@linkcode PulseHttpOptions.port}. */
export const DEFAULT_PULSE_HTTP_PORT = 8080;

/** Options of {@linkcode servePulseHttp}. */
export interface PulseHttpOptions {
  /** Interface to listen on. @default {"127.0.0.1"} */
  hostname?: string;
  /** Port; 0 picks a free one (see {@linkcode PulseHttpServer.addr}). @default {8080} */
  port?: number;
  /** When set, `POST /tempo` requires `Authorization: Bearer <token>`. @default {undefined} */
  adminToken?: string;
  /** Logger for tempo requests. @default {silentLogger} */
  logger?: Logger;
}

/** A running HTTP server of a pulse. */
export interface PulseHttpServer {
  /** The bound address. */
  readonly addr: Deno.NetAddr;
  /** `http://host:port`. */
  readonly url: string;
  /** Resolves when the server has shut down. */
  readonly finished: Promise<void>;
  /**
   * Stops accepting requests and closes the server. Idempotent.
   *
   * @returns Resolves once closed.
   */
  stop(): Promise<void>;
  /**
   * `await using` support: {@linkcode PulseHttpServer.stop}.
   *
   * @returns Resolves once closed.
   */
  [Symbol.asyncDispose](): Promise<void>;
}

function json(status: number, body: unknown, headers?: HeadersInit): Response {
  return new Response(JSON.stringify(body) + "\n", {
    status,
    headers: { "content-type": "application/json", ...headers },
  });
}

function sameToken(given: string, expected: string): boolean {
  const a = new TextEncoder().encode(given);
  const b = new TextEncoder().encode(expected);
  // Constant time in the secret's length: compare every byte whatever the first mismatch.
  let diff = a.length ^ b.length;
  for (let i = 0; i < b.length; i++) diff |= (a[i] ?? 0) ^ b[i];
  return diff === 0;
}

async function readBody(req: Request, max: number): Promise<string | undefined> {
  const declared = Number(req.headers.get("content-length") ?? "0");
  if (declared > max) {
    await req.body?.cancel();
    return undefined;
  }
  if (!req.body) return "";
  const reader = req.body.getReader();
  const chunks: Uint8Array[] = [];
  let total = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    total += value.byteLength;
    if (total > max) {
      await reader.cancel();
      return undefined;
    }
    chunks.push(value);
  }
  const all = new Uint8Array(total);
  let off = 0;
  for (const c of chunks) {
    all.set(c, off);
    off += c.byteLength;
  }
  return new TextDecoder().decode(all);
}

/**
 * The fetch handler behind {@linkcode servePulseHttp} (its documentation lists the routes), for
 * tests and for serving it another way. It counts refused `POST /tempo` requests by reason for
 * its `/metrics`.
 *
 * @param pulse The pulse to serve.
 * @param options Admin token, logger (the address is not used).
 * @returns The handler.
 *
 * @example Ask for health without a server
 * ```ts ignore
 * import { Pulse } from "./_pulse.ts";
 * import { pulseHttpHandler } from "./_http.ts";
 * const pulse = new Pulse({ clusterId: "dev" });
 * const handle = pulseHttpHandler(pulse);
 * const res = await handle(new Request("http://pulse/healthz"));
 * console.log(res.status, await res.json());
 * await pulse.stop();
 * ```
 */
export function pulseHttpHandler(
  pulse: Pulse,
  options: PulseHttpOptions = {},
): (req: Request) => Promise<Response> {
  const logger = options.logger ?? silentLogger;
  const token = options.adminToken;
  // A fixed set of reasons: bounded whatever arrives.
  const rejected = Object.fromEntries(HTTP_REJECT_REASONS.map((r) => [r, 0])) as Record<
    HttpRejectReason,
    number
  >;
  const refuse = (reason: HttpRejectReason, res: Response): Response => {
    rejected[reason]++;
    return res;
  };
  return async (req) => {
    const path = new URL(req.url).pathname;
    const get = req.method === "GET" || req.method === "HEAD";
    if (path === "/healthz" || path === "/readyz" || path === "/metrics") {
      if (!get) return json(405, { error: `${req.method} is not allowed` }, { allow: "GET" });
      const s = pulse.status();
      if (path === "/healthz") {
        return json(200, {
          status: "ok",
          pulse_id: s.id,
          cluster_id: s.clusterId,
          role: s.role,
          tempo_bpm: s.tempoBpm,
          last_beat_index: s.lastBeatIndex,
          epoch: s.epoch,
          control_rejected: s.controlRejected,
        });
      }
      if (path === "/readyz") {
        return json(s.ready ? 200 : 503, {
          ready: s.ready,
          role: s.role,
          last_beat_index: s.lastBeatIndex,
        });
      }
      return new Response(renderPulseMetrics(pulse.metrics(), rejected, pulse.clusterId), {
        headers: { "content-type": PROMETHEUS_CONTENT_TYPE },
      });
    }
    if (path !== "/tempo") {
      await req.body?.cancel();
      return json(404, { error: `No route for ${req.method} ${path}` });
    }
    if (get) {
      const t = pulse.tempo();
      const at = t.nextDownbeatAt;
      return json(200, {
        tempo_bpm: t.tempoBpm,
        next_tempo_bpm: t.pending?.tempoBpm ?? null,
        effective_beat: t.pending?.effectiveBeat ?? null,
        next_downbeat: t.nextDownbeat,
        next_downbeat_at: at === undefined ? null : new Date(Math.round(at)).toISOString(),
        epoch: t.epoch,
        role: t.role,
      });
    }
    if (req.method !== "POST") {
      await req.body?.cancel();
      return refuse(
        "method_not_allowed",
        json(405, { error: `${req.method} is not allowed on /tempo` }, { allow: "GET, POST" }),
      );
    }
    if (token !== undefined) {
      const auth = req.headers.get("authorization") ?? "";
      const m = /^Bearer\s+(\S+)\s*$/i.exec(auth);
      if (!m || !sameToken(m[1], token)) {
        await req.body?.cancel();
        return refuse(
          "unauthorized",
          json(401, { error: "A valid bearer token is required" }, {
            "www-authenticate": 'Bearer realm="backbeat-pulse"',
          }),
        );
      }
    }
    const text = await readBody(req, MAX_TEMPO_REQUEST_BYTES);
    if (text === undefined) {
      return refuse(
        "too_large",
        json(413, { error: `Request body exceeds ${MAX_TEMPO_REQUEST_BYTES} bytes` }),
      );
    }
    let tempo: number;
    try {
      tempo = readTempoRequest(text);
    } catch (error) {
      return refuse("invalid", json(400, { error: (error as Error).message }));
    }
    try {
      const change = pulse.setTempo(tempo);
      logger.info("tempo change requested over HTTP", {
        tempo_bpm: change.tempoBpm,
        effective_beat: change.effectiveBeat,
        forwarded: change.forwarded,
      });
      return json(200, {
        tempo_bpm: change.tempoBpm,
        effective_beat: change.effectiveBeat,
        forwarded: change.forwarded,
      });
    } catch (error) {
      if (error instanceof BackbeatError) {
        return refuse("unavailable", json(503, { error: error.message }));
      }
      return refuse("invalid", json(400, { error: (error as Error).message }));
    }
  };
}

/**
 * Serves a pulse's HTTP API with `Deno.serve`: `GET /healthz`, `GET /readyz` (200 when leading
 * or following a live leader, else 503), `GET /metrics` (Prometheus text), `GET /tempo`
 * (`{tempo_bpm, next_tempo_bpm, effective_beat, next_downbeat, next_downbeat_at, epoch, role}`;
 * `null` where nothing is scheduled or known) and `POST /tempo`
 * (`{"tempo_bpm": n}` → 200 `{tempo_bpm, effective_beat, forwarded}`; 400 on a malformed or
 * out-of-range request; 401 without the admin token when one is set; 413 over 4096 bytes; 503
 * when not running, or when a follower cannot forward it). Refused tempo requests are counted in
 * `/metrics` (`backbeat_pulse_http_rejected_total{reason}`).
 *
 * @param pulse The pulse to serve.
 * @param options Address, admin token, logger.
 * @returns The running server.
 * @throws {Deno.errors.AddrInUse} When the port is taken.
 *
 * @example Serve on a free port
 * ```ts
 * import { Pulse, servePulseHttp } from "@chorus/backbeat/pulse";
 * const pulse = new Pulse({ clusterId: "dev" });
 * await pulse.start();
 * await using http = servePulseHttp(pulse, { port: 0 });
 * const res = await fetch(`${http.url}/readyz`);
 * console.log(res.status); // 200
 * await res.body?.cancel();
 * await http.stop();
 * await pulse.stop();
 * ```
 */
export function servePulseHttp(pulse: Pulse, options: PulseHttpOptions = {}): PulseHttpServer {
  const server = Deno.serve({
    hostname: options.hostname ?? DEFAULT_PULSE_HTTP_HOSTNAME,
    port: options.port ?? DEFAULT_PULSE_HTTP_PORT,
    onListen() {},
  }, pulseHttpHandler(pulse, options));
  const addr = server.addr as Deno.NetAddr;
  const host = addr.hostname.includes(":") ? `[${addr.hostname}]` : addr.hostname;
  let closing: Promise<void> | undefined;
  return {
    addr,
    url: `http://${host}:${addr.port}`,
    finished: server.finished,
    stop() {
      closing ??= server.shutdown();
      return closing;
    },
    [Symbol.asyncDispose]() {
      return this.stop();
    },
  };
}

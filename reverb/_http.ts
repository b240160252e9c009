// Reverb's HTTP face: health, readiness, Prometheus metrics, the JSON API, Server-Sent Events and
// the dashboard (plain files under ./dashboard, read relative to this module so they ship with
// the published package). It serves a Reverb it is given; the reverb knows nothing of it.

import { type BarReport, type Clock, type Logger, silentLogger, SystemClock } from "../core/mod.ts";
import { PROMETHEUS_CONTENT_TYPE } from "../service/mod.ts";
import type { BeatObservation } from "./_aggregate.ts";
import { renderReverbMetrics } from "./_metrics.ts";
import type { Reverb } from "./_reverb.ts";

/** Default of {@linkcode ReverbHttpOptions.maxEventStreams}. */
export const MAX_SSE_CLIENTS = 256;
/** Default of {@linkcode ReverbHttpOptions.maxEventStreamsPerAddress}. */
export const MAX_SSE_CLIENTS_PER_ADDRESS = 8;
/** Seconds a refused event-stream client is asked to wait (`retry-after`). */
const SSE_RETRY_AFTER_S = 10;
/** Events queued for one slow event-stream client before it is dropped. */
export const MAX_SSE_BACKLOG = 512;
const KEEPALIVE_MS = 15_000;
const DEFAULT_LIMIT = 100;
const MAX_AGENT_LIMIT = 10_000;
/** Default for {@linkcode ReverbHttpOptions.hostname}. */
export const DEFAULT_REVERB_HTTP_HOSTNAME = "127.0.0.1";
/** Default for {@linkcode ReverbHttpOptions.port}. */
export const DEFAULT_REVERB_HTTP_PORT = 8081;

/** Options of {@linkcode serveReverbHttp}. */
export interface ReverbHttpOptions {
  /** Interface to listen on. @default {"127.0.0.1"} */
  hostname?: string;
  /** Port; 0 picks a free one (see {@linkcode ReverbHttpServer.addr}). @default {8081} */
  port?: number;
  /** Where request failures are logged. @default {silentLogger} */
  logger?: Logger;
  /** Times the event streams' keepalive comments. @default {new SystemClock()} */
  clock?: Clock;
  /** Event streams (`/events`) served at once; more get 503. @default {256} */
  maxEventStreams?: number;
  /**
   * Event streams served at once to one client address, so one client cannot take them all;
   * more get 429. Behind a reverse proxy every client has the proxy's address: raise it there.
   * @default {8}
   */
  maxEventStreamsPerAddress?: number;
}

/** A running HTTP server of a reverb. */
export interface ReverbHttpServer {
  /** The bound address. */
  readonly addr: Deno.NetAddr;
  /** `http://host:port`. */
  readonly url: string;
  /** Resolves when the server has shut down. */
  readonly finished: Promise<void>;
  /** Ends the event streams, stops accepting requests and closes the server. Idempotent. */
  stop(): Promise<void>;
  /** `await using` support: {@linkcode ReverbHttpServer.stop}. */
  [Symbol.asyncDispose](): Promise<void>;
}

const ASSETS: Record<string, { file: string; type: string }> = {
  "/": { file: "index.html", type: "text/html; charset=utf-8" },
  "/index.html": { file: "index.html", type: "text/html; charset=utf-8" },
  "/style.css": { file: "style.css", type: "text/css; charset=utf-8" },
  "/app.js": { file: "app.js", type: "text/javascript; charset=utf-8" },
};

const SECURITY_HEADERS = {
  "x-content-type-options": "nosniff",
  "referrer-policy": "no-referrer",
};

const CSP =
  "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; frame-ancestors 'none'";

const assetCache = new Map<string, Promise<string>>();

function loadAsset(file: string): Promise<string> {
  let p = assetCache.get(file);
  if (p === undefined) {
    p = fetch(new URL(`./dashboard/${file}`, import.meta.url)).then(async (r) => {
      if (!r.ok) {
        await r.body?.cancel();
        throw new Error(`dashboard file ${file}: HTTP ${r.status}`);
      }
      return await r.text();
    });
    // A failed load is retried on the next request.
    p.catch(() => assetCache.delete(file));
    assetCache.set(file, p);
  }
  return p;
}

function json(body: unknown, status = 200): Response {
  return new Response(JSON.stringify(body), {
    status,
    headers: {
      ...SECURITY_HEADERS,
      "content-type": "application/json; charset=utf-8",
      "cache-control": "no-store",
    },
  });
}

function limitOf(url: URL, max: number): number {
  const raw = url.searchParams.get("limit");
  if (raw === null) return Math.min(DEFAULT_LIMIT, max);
  const n = Number(raw);
  if (!Number.isInteger(n) || n < 1) throw new RangeError(`limit must be an integer >= 1`);
  return Math.min(n, max);
}

interface SseClient {
  controller: ReadableStreamDefaultController<Uint8Array>;
  closed: boolean;
  address: string;
}

function addressText(hostname: string, port: number): string {
  return `${hostname.includes(":") ? `[${hostname}]` : hostname}:${port}`;
}

// Deno's listen failures, and what they mean in a message.
const LISTEN_FAILURES: ReadonlyArray<
  readonly [new (message?: string, options?: ErrorOptions) => Error, string]
> = [
  [Deno.errors.AddrInUse, "address in use"],
  [Deno.errors.AddrNotAvailable, "address not available on this machine"],
  [Deno.errors.PermissionDenied, "permission denied (ports below 1024 need privileges)"],
  [Deno.errors.NotCapable, "not allowed (run with --allow-net)"],
];

// Deno's own messages ("Address already in use (os error 98)") name no address; the caller
// (a CLI) adds how to change it. The same class, so a caller that tells a taken port from other
// failures keeps working.
function listenError(error: unknown, where: string): Error {
  const known = LISTEN_FAILURES.find(([kind]) => error instanceof kind);
  const reason = known?.[1] ?? (error instanceof Error ? error.message : String(error));
  const Kind = known?.[0] ?? Error;
  return new Kind(`Cannot listen on ${where}: ${reason}`, { cause: error });
}

// One client reaching a dual-stack server over IPv4 shows up as ::ffff:a.b.c.d: the same client.
function clientAddress(addr: Deno.Addr): string {
  const host = (addr as Deno.NetAddr).hostname ?? addr.transport;
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(host);
  return mapped ? mapped[1] : host;
}

/**
 * Event-stream slots: at most `max` in all and `perAddress` per client address. Internal to this
 * folder (exported for its tests).
 */
export class StreamSlots {
  readonly #max: number;
  readonly #perAddress: number;
  readonly #byAddress = new Map<string, number>();
  #total = 0;

  /**
   * @param max Slots in all.
   * @param perAddress Slots per client address.
   */
  constructor(max: number, perAddress: number) {
    this.#max = max;
    this.#perAddress = perAddress;
  }

  /** Slots taken. */
  get total(): number {
    return this.#total;
  }

  /**
   * Takes a slot for `address`.
   *
   * @param address The client address.
   * @returns `"ok"` (taken), or why not: the address's share or the total is used up.
   */
  take(address: string): "ok" | "address_full" | "full" {
    // The per-address cap first: a client over its own share is told so, not that the server
    // is full.
    const n = this.#byAddress.get(address) ?? 0;
    if (n >= this.#perAddress) return "address_full";
    if (this.#total >= this.#max) return "full";
    this.#byAddress.set(address, n + 1);
    this.#total++;
    return "ok";
  }

  /**
   * Gives back a slot taken for `address` (once per successful take).
   *
   * @param address The client address.
   */
  release(address: string): void {
    const n = this.#byAddress.get(address);
    if (n === undefined) return;
    // An address leaves the map with its last slot: the map never outgrows the open streams.
    if (n > 1) this.#byAddress.set(address, n - 1);
    else this.#byAddress.delete(address);
    this.#total--;
  }
}

function positiveInteger(value: number | undefined, fallback: number, name: string): number {
  const n = value ?? fallback;
  if (!Number.isInteger(n) || n < 1) {
    throw new RangeError(`Invalid ${name} ${value}: expected an integer >= 1`);
  }
  return n;
}

const encoder = new TextEncoder();

/**
 * Serves a reverb over HTTP: `GET /healthz`, `/readyz`, `/metrics`, `/api/v1/bars`,
 * `/api/v1/agents`, `/api/v1/status`, `/events` (Server-Sent Events: `beat`, `status`, `report`)
 * and the dashboard at `/`. It does not stop with the reverb: shut it down after `reverb.stop()`
 * (readiness answers "stopping" meanwhile).
 *
 * The event streams are capped twice: at `maxEventStreams` in all (more get 503) and at
 * `maxEventStreamsPerAddress` per client address (more get 429), both with `retry-after`.
 *
 * It may serve a reverb before `reverb.start()` (readiness answers "not started" meanwhile), so
 * a taken port can be found before the reverb competes for the active role.
 *
 * @param reverb The reverb to serve.
 * @param options Address, logger, clock and event-stream caps.
 * @returns The running server.
 * @throws {Deno.errors.AddrInUse} When the address is taken, as
 * `Cannot listen on 127.0.0.1:8081: address in use` (other listen failures keep their Deno
 * error class, with the address in the message too).
 * @throws {RangeError} When an event-stream cap is not an integer >= 1.
 *
 * @example Serve a reverb on a free port
 * ```ts
 * import { Reverb, serveReverbHttp } from "@chorus/backbeat/reverb";
 * await using reverb = new Reverb({ clusterId: "dev" });
 * await reverb.start();
 * await using http = serveReverbHttp(reverb, { port: 0 });
 * const res = await fetch(`${http.url}/readyz`);
 * console.log(res.status); // 200
 * await res.body?.cancel();
 * ```
 */
export function serveReverbHttp(reverb: Reverb, options: ReverbHttpOptions = {}): ReverbHttpServer {
  const logger = options.logger ?? silentLogger;
  const clock = options.clock ?? new SystemClock();
  const maxStreams = positiveInteger(options.maxEventStreams, MAX_SSE_CLIENTS, "maxEventStreams");
  const maxPerAddress = positiveInteger(
    options.maxEventStreamsPerAddress,
    MAX_SSE_CLIENTS_PER_ADDRESS,
    "maxEventStreamsPerAddress",
  );
  const clients = new Set<SseClient>();
  const slots = new StreamSlots(maxStreams, maxPerAddress);
  let closing: Promise<void> | undefined;

  // Every way a stream ends comes here once: the count per address stays exact.
  const forget = (c: SseClient) => {
    if (c.closed) return;
    c.closed = true;
    clients.delete(c);
    slots.release(c.address);
  };
  const drop = (c: SseClient) => {
    if (c.closed) return;
    forget(c);
    try {
      c.controller.close();
    } catch { /* already closed */ }
  };
  const send = (c: SseClient, bytes: Uint8Array) => {
    // A client that stopped reading is dropped rather than buffered without bound; a stream
    // that can no longer take data is dropped too (a throw here would escape the keepalive
    // timer and end the process).
    if ((c.controller.desiredSize ?? 0) <= -MAX_SSE_BACKLOG) return drop(c);
    try {
      c.controller.enqueue(bytes);
    } catch {
      drop(c);
    }
  };
  const broadcast = (event: string, data: unknown) => {
    if (clients.size === 0) return;
    const bytes = encoder.encode(`event: ${event}\ndata: ${JSON.stringify(data)}\n\n`);
    for (const c of clients) send(c, bytes);
  };
  const onBeat = (e: CustomEvent<BeatObservation>) => broadcast("beat", e.detail);
  const onReport = (e: CustomEvent<BarReport>) => broadcast("report", e.detail);
  const onStatus = () => {
    if (clients.size > 0) broadcast("status", reverb.status());
  };
  const ping = encoder.encode(": keepalive\n\n");
  let cancelKeepalive: () => void = () => {};
  const keepalive = () => {
    for (const c of clients) send(c, ping);
    cancelKeepalive = clock.schedule(clock.now() + KEEPALIVE_MS, keepalive);
  };

  const refuse = (status: number, error: string): Response => {
    const r = json({ error }, status);
    r.headers.set("retry-after", String(SSE_RETRY_AFTER_S));
    return r;
  };

  const events = (address: string): Response => {
    if (closing) return json({ error: "shutting down" }, 503);
    // Before the slot is taken: nothing after it can throw, so no slot leaks.
    const first = encoder.encode(
      `retry: 2000\nevent: status\ndata: ${JSON.stringify(reverb.status())}\n\n`,
    );
    const slot = slots.take(address);
    if (slot === "address_full") {
      return refuse(
        429,
        `too many event streams from ${address} (at most ${maxPerAddress} per client address)`,
      );
    }
    if (slot === "full") {
      return refuse(503, `too many event streams (at most ${maxStreams}): try again later`);
    }
    let client: SseClient;
    const body = new ReadableStream<Uint8Array>({
      start(controller) {
        client = { controller, closed: false, address };
        clients.add(client);
        controller.enqueue(first);
      },
      cancel() {
        forget(client);
      },
    }, new CountQueuingStrategy({ highWaterMark: 0 }));
    return new Response(body, {
      headers: {
        ...SECURITY_HEADERS,
        "content-type": "text/event-stream; charset=utf-8",
        "cache-control": "no-store",
        "x-accel-buffering": "no",
      },
    });
  };

  const handler = async (req: Request, info: Deno.ServeHandlerInfo): Promise<Response> => {
    const url = new URL(req.url);
    const path = url.pathname;
    if (req.method !== "GET" && req.method !== "HEAD") {
      return new Response(JSON.stringify({ error: `method ${req.method} not allowed` }), {
        status: 405,
        headers: { ...SECURITY_HEADERS, "content-type": "application/json", allow: "GET, HEAD" },
      });
    }
    try {
      switch (path) {
        case "/healthz":
          return json({ status: "ok", reverb_id: reverb.id });
        case "/readyz": {
          const r = reverb.readiness();
          return json(r, r.ready ? 200 : 503);
        }
        case "/metrics":
          return new Response(renderReverbMetrics(reverb.metrics()), {
            headers: { ...SECURITY_HEADERS, "content-type": PROMETHEUS_CONTENT_TYPE },
          });
        case "/api/v1/bars": {
          const all = reverb.reports;
          const limit = limitOf(url, all.length || 1);
          const reports = all.slice(-limit).reverse();
          return json({ cluster_id: reverb.clusterId, count: reports.length, reports });
        }
        case "/api/v1/agents": {
          const agents = reverb.agents(limitOf(url, MAX_AGENT_LIMIT));
          return json({
            cluster_id: reverb.clusterId,
            total: reverb.claimsSummary().agents_tracked,
            count: agents.length,
            agents,
          });
        }
        case "/api/v1/status":
          return json(reverb.status());
        case "/events":
          return events(clientAddress(info.remoteAddr));
      }
      const asset = ASSETS[path];
      if (asset) {
        return new Response(await loadAsset(asset.file), {
          headers: {
            ...SECURITY_HEADERS,
            "content-type": asset.type,
            "cache-control": "no-cache",
            "content-security-policy": CSP,
          },
        });
      }
      return json({ error: `no route for ${path}` }, 404);
    } catch (error) {
      if (error instanceof RangeError) return json({ error: error.message }, 400);
      logger.error("http request failed", { path, error: (error as Error).message });
      return json({ error: "internal error" }, 500);
    }
  };

  const hostname = options.hostname ?? DEFAULT_REVERB_HTTP_HOSTNAME;
  const port = options.port ?? DEFAULT_REVERB_HTTP_PORT;
  let server: Deno.HttpServer<Deno.NetAddr>;
  try {
    server = Deno.serve({
      hostname,
      port,
      onListen: () => {},
      onError: (error) => {
        logger.error("http error", { error: (error as Error).message });
        return json({ error: "internal error" }, 500);
      },
    }, handler);
  } catch (error) {
    throw listenError(error, addressText(hostname, port));
  }
  // Attached once listening, so a taken port leaves nothing behind on the reverb.
  reverb.addEventListener("beat", onBeat);
  reverb.addEventListener("report", onReport);
  reverb.addEventListener("claims", onStatus);
  reverb.addEventListener("role", onStatus);
  cancelKeepalive = clock.schedule(clock.now() + KEEPALIVE_MS, keepalive);
  const addr = server.addr;
  const host = addr.hostname.includes(":") ? `[${addr.hostname}]` : addr.hostname;
  const shutdown = (): Promise<void> => {
    closing ??= (async () => {
      cancelKeepalive();
      reverb.removeEventListener("beat", onBeat);
      reverb.removeEventListener("report", onReport);
      reverb.removeEventListener("claims", onStatus);
      reverb.removeEventListener("role", onStatus);
      // Event streams never end by themselves: end them, or the shutdown waits forever.
      for (const c of [...clients]) drop(c);
      await server.shutdown();
    })();
    return closing;
  };
  return {
    addr,
    url: `http://${host}:${addr.port}`,
    finished: server.finished,
    stop: shutdown,
    [Symbol.asyncDispose]: shutdown,
  };
}

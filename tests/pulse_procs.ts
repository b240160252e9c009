// Runs pulse processes (pulse/main.ts) against a test nats-server and watches the beat subject:
// shared by tests/pulse_nats_test.ts and bench/pulse_bench.ts.
import type { BeatFrame } from "../core/mod.ts";
import { connectNatsBus, type NatsBusLike } from "../nats/mod.ts";
import { until } from "./until.ts";

const MAIN = new URL("../pulse/main.ts", import.meta.url).pathname;

/** One log line of a pulse process, with its arrival time (performance.now()). */
export interface LogLine {
  readonly at: number;
  readonly rec: Record<string, unknown>;
}

/** A pulse process. */
export interface PulseProc {
  readonly id: string;
  readonly child: Deno.ChildProcess;
  readonly lines: LogLine[];
  /** Resolves with the HTTP URL once the pulse logs "pulse running". */
  readonly url: Promise<string>;
  /** Sends a signal (ignored when the process is gone). */
  signal(sig: Deno.Signal): void;
  /** Ends the process (SIGCONT then SIGTERM, SIGKILL after 3 s) and awaits its exit. */
  close(): Promise<Deno.CommandStatus>;
}

/**
 * Starts `deno run -A pulse/main.ts` with the given flags and collects its JSON log lines.
 *
 * @param id Pulse id.
 * @param args Extra flags (cluster, nats, tempo...).
 * @returns The process.
 */
export function spawnPulse(id: string, args: string[]): PulseProc {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", MAIN, "--id", id, "--http", "127.0.0.1:0", ...args],
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).spawn();
  const lines: LogLine[] = [];
  let resolveUrl!: (url: string) => void;
  const url = new Promise<string>((r) => resolveUrl = r);
  const reading = (async () => {
    let buf = "";
    for await (const chunk of child.stderr.pipeThrough(new TextDecoderStream())) {
      const at = performance.now();
      buf += chunk;
      let nl;
      while ((nl = buf.indexOf("\n")) >= 0) {
        const text = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        let rec: Record<string, unknown>;
        try {
          rec = JSON.parse(text);
        } catch {
          rec = { msg: "(not json)", text };
        }
        lines.push({ at, rec });
        if (rec.msg === "pulse running") resolveUrl(rec.http as string);
      }
    }
  })();
  let exited = false;
  const status = child.status.then((s) => {
    exited = true;
    return s;
  });
  const signal = (sig: Deno.Signal) => {
    if (exited) return;
    try {
      child.kill(sig);
    } catch { /* gone */ }
  };
  return {
    id,
    child,
    lines,
    url,
    signal,
    async close() {
      signal("SIGCONT");
      signal("SIGTERM");
      const timer = setTimeout(() => signal("SIGKILL"), 3000);
      const s = await status;
      clearTimeout(timer);
      await reading;
      return s;
    },
  };
}

/** A frame seen on the beat subject. */
export interface SeenFrame {
  /** Arrival, performance.now(). */
  readonly at: number;
  readonly frame: BeatFrame;
  readonly from: string;
  readonly token: number;
  /** x-pulse-sent, epoch ms. */
  readonly sent: number;
}

/** Subscribes to a cluster's beat subject on its own connection. */
export async function watchBeats(
  url: string,
  cluster: string,
): Promise<{ frames: SeenFrame[]; bus: NatsBusLike }> {
  const bus = await connectNatsBus({ servers: url });
  const frames: SeenFrame[] = [];
  const dec = new TextDecoder();
  bus.subscribe(`backbeat.${cluster}.beat`, (m) => {
    const at = performance.now();
    frames.push({
      at,
      frame: JSON.parse(dec.decode(m.data)),
      from: m.headers?.["x-pulse-id"] ?? "",
      token: Number(m.headers?.["x-fencing-token"]),
      sent: Number(m.headers?.["x-pulse-sent"]),
    });
  });
  await bus.flush();
  return { frames, bus };
}

/** Polls until `cond` holds (tests/until.ts, in the argument order of these call sites). */
export async function waitFor(cond: () => boolean, ms: number, what: string): Promise<void> {
  await until(cond, { timeoutMs: ms, what });
}

/** Measures a handover triggered by `act` at performance.now() `t0`. */
export interface Handover {
  /** Signal to the new leader's "leading" log line, ms. */
  readonly takeoverMs: number;
  /** Largest delay of a beat after the signal behind its due time (extrapolated), ms. */
  readonly maxBeatDelayMs: number;
  /** The new leader's id. */
  readonly newLeader: string;
}

/**
 * Finds the new leader after a signal at `t0`, and how late the beats around it were.
 *
 * @param frames Frames seen.
 * @param procs The pulse processes.
 * @param oldLeader The leader signalled.
 * @param t0 performance.now() of the signal.
 * @param periodMs Beat period.
 */
export function measureHandover(
  frames: readonly SeenFrame[],
  procs: readonly PulseProc[],
  oldLeader: string,
  t0: number,
  periodMs: number,
): Handover {
  const lead =
    procs.flatMap((p) =>
      p.id === oldLeader ? [] : p.lines.filter((l) => l.at >= t0 && l.rec.msg === "leading")
        .map((l) => ({ id: p.id, at: l.at }))
    ).sort((a, b) => a.at - b.at)[0];
  if (!lead) throw new Error("no new leader logged");
  const ref = frames.filter((f) => f.from === oldLeader && f.at < t0).at(-1);
  if (!ref) throw new Error("no frame of the old leader before the signal");
  let maxDelay = 0;
  for (const f of frames) {
    if (f.from !== lead.id || f.frame.beat_index <= ref.frame.beat_index) continue;
    if (f.at > lead.at + 4 * periodMs) continue;
    const due = ref.sent + (f.frame.beat_index - ref.frame.beat_index) * periodMs;
    maxDelay = Math.max(maxDelay, f.sent - due);
  }
  return { takeoverMs: lead.at - t0, maxBeatDelayMs: maxDelay, newLeader: lead.id };
}

/** The id of the pulse that sent the latest frame. */
export function currentLeader(frames: readonly SeenFrame[]): string {
  return frames.at(-1)?.from ?? "";
}

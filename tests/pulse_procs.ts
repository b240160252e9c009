// Runs pulse processes (pulse/main.ts) against a test nats-server and watches the beat subject:
// shared by tests/pulse_nats_test.ts and bench/pulse_bench.ts.
import { type BeatFrame, generateSigningKeyPair, Keyring, type KeyringJson } from "../core/mod.ts";
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
  /** Everything the process wrote to stdout, and every stderr line as written (raw text). */
  readonly raw: { stdout: string; stderr: string[] };
  /**
   * Resolves with the HTTP URL once the pulse logs "pulse running"; rejects when the process
   * exits before that (a refused flag, a key that cannot be read), so no test waits forever.
   */
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
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const lines: LogLine[] = [];
  const raw = { stdout: "", stderr: [] as string[] };
  const readingStdout = (async () => {
    for await (const chunk of child.stdout.pipeThrough(new TextDecoderStream())) {
      raw.stdout += chunk;
    }
  })();
  let resolveUrl!: (url: string) => void;
  let rejectUrl!: (error: Error) => void;
  const url = new Promise<string>((resolve, reject) => {
    resolveUrl = resolve;
    rejectUrl = reject;
  });
  // Awaited or not: an early exit must not become an unhandled rejection by itself.
  url.catch(() => {});
  const reading = (async () => {
    let buf = "";
    for await (const chunk of child.stderr.pipeThrough(new TextDecoderStream())) {
      const at = performance.now();
      buf += chunk;
      let nl;
      while ((nl = buf.indexOf("\n")) >= 0) {
        const text = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        raw.stderr.push(text);
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
  const status = child.status.then(async (s) => {
    exited = true;
    await reading.catch(() => {});
    await readingStdout.catch(() => {});
    const last = lines.slice(-3).map((l) => JSON.stringify(l.rec)).join("\n");
    rejectUrl(new Error(`pulse ${id} exited (code ${s.code}) before running:\n${last}`));
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
    raw,
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
  /** The exact payload. */
  readonly data: Uint8Array;
  /** Every header. */
  readonly headers: Record<string, string>;
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
      data: m.data,
      headers: { ...m.headers },
    });
  });
  await bus.flush();
  return { frames, bus };
}

/** Polls until `cond` holds (tests/until.ts, in the argument order of these call sites). */
export async function waitFor(
  cond: () => boolean | Promise<boolean>,
  ms: number,
  what: string,
): Promise<void> {
  await until(cond, { timeoutMs: ms, what, intervalMs: 20 });
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

/** Key files for pulses (or operators) in a temporary directory, and the keyring of them all. */
export interface KeyFiles {
  /** The directory (remove it when done). */
  readonly dir: string;
  /** Each owner's private key file: an Ed25519 JWK with its key id in `kid`. */
  readonly keyFiles: Readonly<Record<string, string>>;
  /** Each owner's key id. */
  readonly keyIds: Readonly<Record<string, string>>;
  /** The keyring file: every owner's public key. */
  readonly keyringFile: string;
  /** The same keyring, loaded. */
  readonly keyring: Keyring;
}

/**
 * Generates one Ed25519 key per owner and writes the private key files (as `backbeat keygen`
 * would) and one keyring file holding every public key.
 *
 * @param owners Owner names (pulse ids, operator names).
 * @returns The files and the keyring.
 */
export async function writeKeyFiles(owners: readonly string[]): Promise<KeyFiles> {
  const dir = await Deno.makeTempDir({ prefix: "backbeat-keys-" });
  const keyFiles: Record<string, string> = {};
  const keyIds: Record<string, string> = {};
  const json: KeyringJson = {};
  for (const owner of owners) {
    const pair = await generateSigningKeyPair();
    const keyId = `${owner}-${pair.keyId.slice(0, 8)}`;
    keyFiles[owner] = `${dir}/${owner}.key.json`;
    keyIds[owner] = keyId;
    await Deno.writeTextFile(keyFiles[owner], JSON.stringify({ ...pair.privateJwk, kid: keyId }), {
      mode: 0o600,
    });
    json[owner] = [{ key_id: keyId, public_key: pair.publicKey }];
  }
  const keyringFile = `${dir}/keyring.json`;
  await Deno.writeTextFile(keyringFile, JSON.stringify(json));
  return { dir, keyFiles, keyIds, keyringFile, keyring: await Keyring.fromJson(json) };
}

/**
 * Reads one sample of a pulse's `/metrics`.
 *
 * @param url The pulse's HTTP URL.
 * @param sample The sample's name with labels, e.g. `backbeat_pulse_leader` or
 * `backbeat_pulse_control_rejected_total{reason="replay"}`.
 * @returns Its value, `NaN` when absent.
 */
export async function metric(url: string, sample: string): Promise<number> {
  const text = await (await fetch(`${url}/metrics`)).text();
  // Every sample carries a cluster label; the caller names the others.
  const line = text.split("\n")
    .map((l) => l.replace(/cluster="[^"]*",?/, "").replace(/,\}/, "}").replace("{}", ""))
    .find((l) => l.startsWith(`${sample} `));
  return line === undefined ? NaN : Number(line.slice(sample.length + 1));
}

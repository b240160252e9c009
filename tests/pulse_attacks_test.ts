// Pulse on a hostile bus, on a real nats-server: forged frames (absurd indices, forged fencing
// tokens, unsigned frames where pulses sign), unauthenticated, replayed and flooding control
// messages, and epochs of a cluster whose KV state was lost. See docs/security.md.
import assert from "node:assert/strict";
import { Kvm } from "@nats-io/kv";
import {
  type BeatFrame,
  formatHlc,
  importSigningKey,
  signMessage,
  Timeline,
  verifySigned,
  windowId,
} from "../core/mod.ts";
import { connectNatsBus, kvBucketName, type NatsBusLike } from "../nats/mod.ts";
import { controlMessage, Pulse } from "../pulse/mod.ts";
import {
  metric,
  type PulseProc,
  type SeenFrame,
  spawnPulse,
  waitFor,
  watchBeats,
  writeKeyFiles,
} from "./pulse_procs.ts";
import { startNatsServer } from "./nats_server.ts";

const enc = new TextEncoder();
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

// A frame that passes the frame gate, as a forger with publish rights would make it.
async function forgedFrame(
  cluster: string,
  beat: number,
  like: BeatFrame,
): Promise<Uint8Array> {
  const tl = new Timeline({
    originTime: Date.now(),
    originBeat: beat - 3,
    tempoBpm: like.tempo_bpm,
    barOrigin: beat - 3,
    epoch: like.epoch ?? 0,
  });
  const frame = await tl.frame(cluster, beat, formatHlc({ physical: Date.now(), logical: 1 }));
  return enc.encode(JSON.stringify(frame));
}

// beat_index goes up by exactly one from frame to frame.
function assertContinuous(frames: readonly SeenFrame[]): void {
  for (let i = 1; i < frames.length; i++) {
    const [a, b] = [frames[i - 1].frame.beat_index, frames[i].frame.beat_index];
    assert.equal(b, a + 1, `beat_index jumps from ${a} to ${b}`);
  }
}

// No two consecutive frames were sent more than `ms` apart (by x-pulse-sent: the test process
// itself is busy publishing, so arrival times here would measure the test, not the pulse).
function assertNoGap(frames: readonly SeenFrame[], ms: number): void {
  for (let i = 1; i < frames.length; i++) {
    const gap = frames[i].sent - frames[i - 1].sent;
    assert.ok(
      gap <= ms,
      `${gap.toFixed(0)} ms between beats ${frames[i - 1].frame.beat_index} and ${
        frames[i].frame.beat_index
      }`,
    );
  }
}

Deno.test("a forged frame cannot set the numbering a successor continues: 10^12 and 2^53 - 1", async (t) => {
  const cluster = "forgedindex";
  await using server = await startNatsServer();
  const { frames, bus } = await watchBeats(server.url, cluster);
  // 30 BPM: a follower that starts right after a beat sees nothing real for 2 s, so the forged
  // frame is the first it sees; that is when one frame could seed a takeover.
  const leader = spawnPulse("p1", ["--cluster", cluster, "--nats", server.url, "--tempo", "30"]);
  const buses: NatsBusLike[] = [];
  const pulses: Pulse[] = [];
  try {
    await leader.url;
    await waitFor(() => frames.length >= 1, 15_000, "the first frame");
    // Starts an in-process follower right after the next frame of `from`, then forges `beat`.
    const followAndForge = async (id: string, from: string, beat: number) => {
      const seen = frames.length;
      await waitFor(
        () => frames.slice(seen).some((f) => f.from === from),
        5000,
        `a frame of ${from}`,
      );
      const b = await connectNatsBus({ servers: server.url });
      buses.push(b);
      const p = new Pulse({ clusterId: cluster, bus: b, id, tempoBpm: 30 });
      pulses.push(p);
      await p.start();
      assert.equal(p.role, "follower");
      bus.publish(
        `backbeat.${cluster}.beat`,
        await forgedFrame(cluster, beat, frames.at(-1)!.frame),
        {
          headers: { "x-pulse-id": "forger", "x-fencing-token": "0" },
        },
      );
      await bus.flush();
      // The precondition of the attack: the forged frame is what the follower tracks.
      await waitFor(
        () => p.lastBeat?.beat_index === beat,
        1500,
        "the follower to track the forged frame",
      );
      return p;
    };

    await t.step(
      "10^12, then the leader is killed: the successor continues the real beats",
      async () => {
        const b = await followAndForge("b", "p1", 1e12);
        leader.signal("SIGKILL");
        await leader.close();
        await waitFor(
          () => frames.some((f) => f.from === "b"),
          10_000,
          "the successor's first beat",
        );
        const real = Math.max(
          ...frames.filter((f) => f.from === "p1").map((f) => f.frame.beat_index),
        );
        const first = frames.find((f) => f.from === "b")!;
        assert.equal(first.frame.beat_index, real + 1);
        assert.equal(b.role, "leader");
        await waitFor(
          () => frames.filter((f) => f.from === "b").length >= 2,
          5000,
          "a second beat",
        );
        assert.equal(frames.filter((f) => f.from === "b")[1].frame.beat_index, real + 2);
      },
    );

    await t.step(
      "2^53 - 1, then a handover: a pulse still leads and the beats continue",
      async () => {
        const c = await followAndForge("c", "b", Number.MAX_SAFE_INTEGER);
        const b = pulses[0];
        await b.stop();
        const real = b.metrics().lastBeatIndex;
        await waitFor(
          () => frames.filter((f) => f.from === "c").length >= 2,
          10_000,
          "two beats of c",
        );
        assert.equal(c.role, "leader");
        assertContinuous(frames.filter((f) => f.from !== "forger" && f.frame.beat_index >= real));
        assert.equal(frames.find((f) => f.from === "c")!.frame.beat_index, real + 1);
      },
    );
  } finally {
    await leader.close();
    for (const p of pulses) await p.stop();
    await Promise.all([...buses, bus].map((b) => b.close()));
  }
});

Deno.test("250 frames with a forged fencing token: the leader keeps leading, no beat skipped", async () => {
  const cluster = "forgedtoken";
  await using server = await startNatsServer();
  const { frames, bus } = await watchBeats(server.url, cluster);
  const args = ["--cluster", cluster, "--nats", server.url, "--tempo", "300"];
  const procs: PulseProc[] = [spawnPulse("p1", args)];
  try {
    await procs[0].url;
    await waitFor(() => frames.length >= 2, 15_000, "frames of p1");
    procs.push(spawnPulse("p2", args)); // a standby that would take over if p1 stepped down
    await procs[1].url;
    await sleep(1000);
    const from = frames.length;
    const t0 = performance.now();
    for (let i = 0; i < 250; i++) {
      const like = frames.at(-1)!;
      // A real frame's bytes, a forged tenure: only the lease can say whether it is real.
      bus.publish(`backbeat.${cluster}.beat`, like.data, {
        headers: { ...like.headers, "x-pulse-id": "forger", "x-fencing-token": String(1e9 + i) },
      });
      if (i % 10 === 9) await sleep(100);
    }
    await bus.flush();
    const sent = performance.now() - t0;
    await sleep(1000);
    const elapsed = performance.now() - t0;
    const window = frames.slice(from).filter((f) => f.from !== "forger");
    assert.ok(
      window.every((f) => f.from === "p1"),
      `frames from ${[...new Set(window.map((f) => f.from))].join(", ")}`,
    );
    assertContinuous(window);
    assertNoGap(window, 2 * 200);
    // Every beat of the window was published: as many as its duration holds (one at each end
    // may fall outside it).
    assert.ok(
      window.length >= Math.floor(elapsed / 200) - 2,
      `${window.length} beats in ${elapsed.toFixed(0)} ms`,
    );
    const url = await procs[0].url;
    assert.equal(await metric(url, "backbeat_pulse_leader"), 1);
    assert.equal(await metric(url, "backbeat_pulse_beats_skipped_total"), 0);
    assert.equal(await metric(url, "backbeat_pulse_takeovers_total"), 1);
    // The lease was asked at most once a second, and answered that p1 still holds it.
    const checks = await metric(url, "backbeat_pulse_fencing_checks_total");
    assert.ok(
      checks >= 1 && checks <= Math.ceil(sent / 1000) + 1,
      `${checks} lease checks in ${sent.toFixed(0)} ms`,
    );
    assert.ok(!procs[0].lines.some((l) => l.rec.msg === "leadership lost"));
    assert.ok(!procs[1].lines.some((l) => l.rec.msg === "leading"));
  } finally {
    await Promise.all(procs.map((p) => p.close()));
    await bus.close();
  }
});

Deno.test("authenticated control: unauthenticated and replayed refused, HMAC and key-signed applied, a flood bounded", async (t) => {
  const cluster = "control";
  await using server = await startNatsServer();
  const keys = await writeKeyFiles(["ops"]);
  const { frames, bus } = await watchBeats(server.url, cluster);
  const args = [
    "--cluster",
    cluster,
    "--nats",
    server.url,
    "--tempo",
    "600",
    "--admin-token",
    "s3cret-token",
    "--admin-keyring",
    keys.keyringFile,
  ];
  const procs = [spawnPulse("p1", args), spawnPulse("p2", args)];
  let leader = procs[0];
  let follower = procs[1];
  const subject = `backbeat.${cluster}.control`;
  const send = async (m: { data: Uint8Array; headers?: Record<string, string> }) => {
    bus.publish(subject, m.data, { headers: m.headers });
    await bus.flush();
  };
  const rejected = async (reason: string) =>
    await metric(await leader.url, `backbeat_pulse_control_rejected_total{reason="${reason}"}`);
  // Waits for `n` frames at a tempo, from the first frame sent after now.
  const atTempo = async (tempo: number, n = 3) => {
    const from = frames.length;
    await waitFor(
      () => frames.slice(from).filter((f) => f.frame.tempo_bpm === tempo).length >= n,
      10_000,
      `${n} frames at ${tempo} BPM`,
    );
    const first = frames.slice(from).find((f) => f.frame.tempo_bpm === tempo)!;
    assert.equal(first.frame.downbeat, true);
  };
  try {
    await Promise.all(procs.map((p) => p.url));
    await waitFor(() => frames.length >= 4, 15_000, "frames");
    if (frames.at(-1)!.from === "p2") [leader, follower] = [procs[1], procs[0]];
    const key = await importSigningKey(
      JSON.parse(await Deno.readTextFile(keys.keyFiles.ops)),
      keys.keyIds.ops,
    );

    await t.step("an unauthenticated request is refused and counted; the tempo stays", async () => {
      await send({
        data: enc.encode(`{"tempo_bpm":300,"issued_at":"${new Date().toISOString()}"}`),
      });
      await send({ data: enc.encode('{"tempo_bpm":300}') });
      await waitFor(async () => await rejected("unauthenticated") === 2, 5000, "two refusals");
      const from = frames.length;
      await sleep(1000); // two and a half bars at 600 BPM
      assert.ok(frames.slice(from).length >= 5);
      assert.ok(
        frames.slice(from).every((f) =>
          f.frame.tempo_bpm === 600 && f.frame.next_tempo_bpm === undefined
        ),
      );
    });

    const hmac = await controlMessage({ clusterId: cluster, tempoBpm: 300, token: "s3cret-token" });
    await t.step("an HMAC-authenticated request is applied at a downbeat", async () => {
      await send(hmac);
      await atTempo(300);
    });

    await t.step("a request signed by an operator key is applied", async () => {
      await send(await controlMessage({ clusterId: cluster, tempoBpm: 450, key }));
      await atTempo(450);
    });

    await t.step("a replayed request is refused; a stale one too", async () => {
      await send(hmac);
      await send(
        await controlMessage({
          clusterId: cluster,
          tempoBpm: 200,
          token: "s3cret-token",
          issuedAt: Date.now() - 60_000,
        }),
      );
      await waitFor(
        async () => await rejected("replay") === 1 && await rejected("stale") === 1,
        5000,
        "replay and stale refusals",
      );
      const from = frames.length;
      await sleep(1500);
      assert.ok(
        frames.slice(from).every((f) =>
          f.frame.tempo_bpm === 450 && f.frame.next_tempo_bpm === undefined
        ),
      );
      // The follower checked them as well: it would refuse the replay as a successor.
      assert.equal(
        await metric(await follower.url, 'backbeat_pulse_control_rejected_total{reason="replay"}'),
        1,
      );
    });

    await t.step("a follower forwards POST /tempo with the token's HMAC", async () => {
      const res = await fetch(`${await follower.url}/tempo`, {
        method: "POST",
        headers: { authorization: "Bearer s3cret-token" },
        body: '{"tempo_bpm":120}',
      });
      assert.equal(res.status, 200);
      assert.equal((await res.json()).forwarded, true);
      await atTempo(120, 2);
      const bad = await fetch(`${await follower.url}/tempo`, {
        method: "POST",
        body: '{"tempo_bpm":60}',
      });
      assert.equal(bad.status, 401);
      await bad.body?.cancel();
      assert.equal(
        await metric(
          await follower.url,
          'backbeat_pulse_http_rejected_total{reason="unauthorized"}',
        ),
        1,
      );
    });

    await t.step(
      "40,000 control messages: every one counted, beats on time, a few log lines",
      async () => {
        const before = leader.lines.length;
        const total = async () => {
          let n = 0;
          for (
            const r of [
              "unauthenticated",
              "bad_signature",
              "replay",
              "stale",
              "invalid",
              "rate_limited",
            ]
          ) {
            n += await rejected(r);
          }
          return n;
        };
        const counted = await total();
        const from = frames.length;
        const body = enc.encode(`{"tempo_bpm":60,"issued_at":"${new Date().toISOString()}"}`);
        for (let i = 0; i < 40_000; i++) {
          // A third without a proof, a third with a forged HMAC, a third with a forged signature.
          const headers: Record<string, string> = i % 3 === 0
            ? {}
            : i % 3 === 1
            ? { "x-auth-hmac": "ab".repeat(32) }
            : { "x-signature": "A".repeat(86) + "==", "x-key-id": keys.keyIds.ops };
          bus.publish(subject, body, { headers });
          if (i % 5000 === 4999) await bus.flush();
        }
        await bus.flush();
        await waitFor(async () => await total() - counted === 40_000, 20_000, "all 40,000 counted");
        await sleep(1000);
        const seen = frames.slice(from - 1);
        assert.ok(seen.length >= 3, `${seen.length} beats`);
        assertContinuous(seen);
        // No beat is skipped (continuous, beats_skipped_total 0). Delays are bounded loosely: the
        // flood's sender, nats-server and the pulses share two cores, and nats.js delivering a
        // 40,000-message burst blocks pulse's event loop for up to ~2 s on a loaded CI machine
        // (measured 1.8 s once; 20-270 ms on a quiet one). The tight figure belongs in the bench.
        assertNoGap(seen, 6 * 500);
        assert.ok(seen.every((f) => f.frame.tempo_bpm === 120));
        assert.equal(await metric(await leader.url, "backbeat_pulse_beats_skipped_total"), 0);
        const lines = leader.lines.slice(before);
        const refusals = lines.filter((l) => l.rec.msg === "control messages rejected");
        assert.ok(refusals.length >= 1 && refusals.length <= 5, `${refusals.length} refusal lines`);
        assert.ok(lines.length <= 10, `${lines.length} log lines`);
        assert.ok(
          !JSON.stringify(leader.lines).includes("s3cret-token"),
          "the token never reaches a log",
        );
      },
    );
  } finally {
    await Promise.all(procs.map((p) => p.close()));
    await bus.close();
    await Deno.remove(keys.dir, { recursive: true });
  }
});

Deno.test("signed frames: they verify, and followers refuse unsigned ones and do not follow them", async () => {
  const cluster = "signed";
  await using server = await startNatsServer();
  const keys = await writeKeyFiles(["p1", "p2", "stranger"]);
  const { frames, bus } = await watchBeats(server.url, cluster);
  const args = (id: string) => [
    "--cluster",
    cluster,
    "--nats",
    server.url,
    "--tempo",
    "300",
    "--signing-key",
    keys.keyFiles[id],
    "--pulse-keyring",
    keys.keyringFile,
  ];
  const procs = [spawnPulse("p1", args("p1")), spawnPulse("p2", args("p2"))];
  const beat = `backbeat.${cluster}.beat`;
  try {
    await Promise.all(procs.map((p) => p.url));
    await waitFor(() => frames.length >= 5, 15_000, "frames");
    const [p1url, p2url] = await Promise.all(procs.map((p) => p.url));
    const leaderUrl = frames.at(-1)!.from === "p1" ? p1url : p2url;
    const followerUrl = leaderUrl === p1url ? p2url : p1url;
    await waitFor(
      async () => await metric(followerUrl, "backbeat_pulse_frames_verified_total") >= 2,
      5000,
      "verified frames",
    );
    // Unsigned, with a higher fencing token and an index far ahead; and one signed by a key the
    // pulses do not trust.
    const like = frames.at(-1)!;
    const ahead = await forgedFrame(cluster, like.frame.beat_index + 1000, like.frame);
    bus.publish(beat, ahead, {
      headers: { "x-pulse-id": "forger", "x-fencing-token": "999999999" },
    });
    const stranger = await importSigningKey(
      JSON.parse(await Deno.readTextFile(keys.keyFiles.stranger)),
      "unknown-key",
    );
    const wrong = await signMessage(
      stranger,
      "backbeat.beatframe.v1",
      cluster,
      ahead,
      like.frame.epoch,
    );
    bus.publish(beat, ahead, {
      headers: { ...wrong, "x-pulse-id": "forger", "x-fencing-token": "999999999" },
    });
    // A real signature over other bytes.
    bus.publish(beat, ahead, {
      headers: { ...like.headers, "x-pulse-id": "forger", "x-fencing-token": "999999999" },
    });
    await bus.flush();
    for (const url of [leaderUrl, followerUrl]) {
      await waitFor(
        async () =>
          await metric(url, 'backbeat_pulse_frames_rejected_total{reason="unsigned"}') === 1 &&
          await metric(url, 'backbeat_pulse_frames_rejected_total{reason="unknown_key"}') === 1 &&
          await metric(url, 'backbeat_pulse_frames_rejected_total{reason="bad_signature"}') === 1,
        5000,
        "the forged frames refused",
      );
    }
    await sleep(600);
    const follower = await (await fetch(`${followerUrl}/healthz`)).json();
    assert.equal(follower.role, "follower");
    assert.ok(
      follower.last_beat_index < like.frame.beat_index + 10,
      `follows ${follower.last_beat_index}`,
    );
    // Refused before fencing: no step-down, not even a lease check.
    assert.equal(await metric(leaderUrl, "backbeat_pulse_leader"), 1);
    assert.equal(await metric(leaderUrl, "backbeat_pulse_fencing_checks_total"), 0);
    // The token is a header the signature does not cover: the leader's own signed frame, replayed
    // with a higher token, verifies but is no later tenure's. The leader asks the lease, once.
    bus.publish(beat, like.data, {
      headers: { ...like.headers, "x-pulse-id": "forger", "x-fencing-token": "999999999" },
    });
    await bus.flush();
    await waitFor(
      async () => await metric(leaderUrl, "backbeat_pulse_fencing_checks_total") === 1,
      5000,
      "one lease check",
    );
    await sleep(600);
    assert.equal(await metric(leaderUrl, "backbeat_pulse_leader"), 1);
    assert.ok(!procs.some((p) => p.lines.some((l) => l.rec.msg === "leadership lost")));
    // 3,000 frames that each need a verification (a trusted key id, other bytes): a few are
    // checked, the rest dropped as overload (with any real frame that arrives meanwhile: the
    // bound does not know which is which), and the beats go on.
    const before = await metric(
      followerUrl,
      'backbeat_pulse_frames_rejected_total{reason="bad_signature"}',
    );
    const from = frames.length;
    for (let i = 0; i < 3000; i++) {
      bus.publish(beat, ahead, {
        headers: { ...like.headers, "x-pulse-id": "forger", "x-fencing-token": "999999999" },
      });
    }
    await bus.flush();
    await waitFor(
      async () =>
        await metric(followerUrl, 'backbeat_pulse_frames_rejected_total{reason="bad_signature"}') +
            await metric(followerUrl, 'backbeat_pulse_frames_rejected_total{reason="overload"}') -
            before >= 3000,
      10_000,
      "3,000 frames refused",
    );
    assert.ok(
      await metric(followerUrl, 'backbeat_pulse_frames_rejected_total{reason="overload"}') > 0,
    );
    // The follower verifies the real frames again once the flood is through.
    const verified = await metric(followerUrl, "backbeat_pulse_frames_verified_total");
    await waitFor(
      async () => await metric(followerUrl, "backbeat_pulse_frames_verified_total") > verified,
      5000,
      "verified frames after the flood",
    );
    const during = frames.slice(from - 1).filter((f) => f.from !== "forger");
    assert.ok(during.length >= 3);
    assertContinuous(during);
    // One second: the burst's sender, nats-server and both pulses share two cores meanwhile.
    assertNoGap(during, 1000);
    assert.equal(await metric(leaderUrl, "backbeat_pulse_leader"), 1);
    // Every frame of the pulses verifies against the keyring, bound to the cluster and epoch.
    const real = frames.filter((f) => f.from !== "forger");
    assert.ok(real.length >= 8);
    for (const f of real) {
      const check = await verifySigned(
        keys.keyring,
        "backbeat.beatframe.v1",
        cluster,
        f.data,
        f.headers,
        {
          epoch: f.frame.epoch ?? 0,
        },
      );
      assert.equal(check.ok, true, `beat ${f.frame.beat_index}`);
      assert.equal(check.ok && check.key.agentId, f.from);
    }
    assertContinuous(real);
  } finally {
    await Promise.all(procs.map((p) => p.close()));
    await bus.close();
    await Deno.remove(keys.dir, { recursive: true });
  }
});

Deno.test("epochs: a restart that finds the stored timeline keeps its epoch; one without it gets a greater one", async () => {
  const cluster = "epochs";
  await using server = await startNatsServer();
  const { frames, bus } = await watchBeats(server.url, cluster);
  const args = ["--cluster", cluster, "--nats", server.url, "--tempo", "600"];
  const run = async (id: string): Promise<SeenFrame[]> => {
    const from = frames.length;
    const p = spawnPulse(id, args);
    try {
      await p.url;
      await waitFor(() => frames.slice(from).length >= 5, 15_000, `frames of ${id}`);
    } finally {
      p.signal("SIGTERM");
      assert.equal((await p.close()).code, 0);
    }
    return frames.slice(from);
  };
  try {
    const first = await run("p1");
    const e1 = first[0].frame.epoch!;
    assert.ok(Number.isSafeInteger(e1) && e1 >= Date.now() - 60_000, `epoch ${e1}`);
    const again = await run("p2");
    assert.deepEqual(new Set(again.map((f) => f.frame.epoch)), new Set([e1]));
    assert.ok(again[0].frame.beat_index > first.at(-1)!.frame.beat_index);
    // The KV state is lost: the cluster starts a new timeline, with a greater epoch.
    const kv = await new Kvm(bus.connection as never).open(await kvBucketName(cluster, "pulse"));
    await kv.purge("timeline");
    const fresh = await run("p3");
    const e2 = fresh[0].frame.epoch!;
    assert.ok(e2 > e1, `epoch ${e2} after ${e1}`);
    for (const f of fresh) {
      const pos = f.frame.beat_index % 4;
      assert.equal(f.frame.epoch, e2);
      assert.equal(f.frame.window_id, await windowId(cluster, f.frame.beat_index - pos, e2));
    }
  } finally {
    await bus.close();
  }
});

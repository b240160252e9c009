import assert from "node:assert/strict";
import {
  answerTimeRequests,
  ClockEstimator,
  generateSigningKeyPair,
  importSigningKey,
  InMemoryBus,
  Keyring,
  requestTimeSample,
  SystemClock,
} from "./mod.ts";

// A clock 250 ms ahead and 50 ppm fast of the system clock.
function skewed(base: SystemClock, offset: number, ppm: number) {
  const origin = base.now();
  return {
    now: () => {
      const t = base.now();
      return t + offset + (t - origin) * ppm / 1e6;
    },
    schedule: (at: number, fn: () => void) => base.schedule(at, fn),
  };
}

Deno.test("time exchange: a client estimates pulse's clock 250 ms ahead within 0.2 ms", async () => {
  const bus = new InMemoryBus();
  const local = new SystemClock({ spinMs: 0 });
  const remote = skewed(local, 250, 50);
  const sub = answerTimeRequests(bus, "dev", { clock: remote, pulseId: "p1" });
  const est = new ClockEstimator();
  for (let i = 0; i < 20; i++) {
    const x = await requestTimeSample(bus, "dev", { clock: local });
    assert.ok(x, "an answer");
    assert.equal(x.pulseId, "p1");
    est.add(x);
  }
  const now = local.now();
  assert.ok(
    Math.abs(est.toRemote(now) - remote.now()) < 0.2,
    `${est.toRemote(now) - remote.now()}`,
  );
  sub.unsubscribe();
  await bus.close();
});

Deno.test("time exchange: with pulse keys only a signed answer counts; a forged responder is ignored", async () => {
  const bus = new InMemoryBus();
  const clock = new SystemClock({ spinMs: 0 });
  const pair = await generateSigningKeyPair();
  const pulseKeys = await Keyring.fromJson({
    pulse: [{ key_id: pair.keyId, public_key: pair.publicKey }],
  });
  // A forger answers first, unsigned, with a clock an hour off.
  const forged = bus.subscribe("backbeat.dev.time", (m) => {
    const nonce = JSON.parse(new TextDecoder().decode(m.data)).nonce;
    const t = clock.now() + 3_600_000;
    bus.publish(m.reply!, new TextEncoder().encode(JSON.stringify({ nonce, t1: t, t2: t })));
  });
  assert.equal(
    await requestTimeSample(bus, "dev", { clock, pulseKeys, timeoutMs: 200 }),
    undefined,
  );
  forged.unsubscribe();
  const key = await importSigningKey(pair.keyPair.privateKey);
  const sub = answerTimeRequests(bus, "dev", { clock, signingKey: key });
  const x = await requestTimeSample(bus, "dev", { clock, pulseKeys });
  assert.ok(x && Math.abs((x.t1 + x.t2) / 2 - (x.t0 + x.t3) / 2) < 5);
  sub.unsubscribe();
  assert.equal(await requestTimeSample(bus, "dev", { clock, timeoutMs: 100 }), undefined);
  await bus.close();
});

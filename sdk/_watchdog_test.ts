import assert from "node:assert/strict";
import { ManualClock } from "../core/mod.ts";
import { watchdogsOf, type Watched } from "./_watchdog.ts";

function member(due: number, expired: string[], name: string): Watched & { watchdogDue: number } {
  return {
    watchdogDue: due,
    watchdogExpired(now: number) {
      expired.push(`${name}@${now}`);
    },
  };
}

Deno.test("watchdogs of one clock share a single timer and expire only late members", async () => {
  const clock = new ManualClock(0);
  const dogs = watchdogsOf(clock);
  assert.equal(watchdogsOf(clock), dogs);
  const expired: string[] = [];
  const members = Array.from({ length: 100 }, (_, i) => member(150, expired, `m${i}`));
  for (const m of members) dogs.watch(m);
  assert.equal(clock.pending, 1);
  // Beats keep coming for everyone but m7: their deadlines move on; no timer is added.
  await clock.advance(100);
  for (const [i, m] of members.entries()) {
    if (i !== 7) {
      m.watchdogDue = 250;
      dogs.watch(m);
    }
  }
  assert.equal(clock.pending, 1);
  await clock.advance(60);
  assert.deepEqual(expired, ["m7@150"]);
  assert.equal(dogs.size, 99);
  assert.equal(clock.pending, 1);
  // An earlier deadline re-arms at once.
  members[3].watchdogDue = 200;
  dogs.watch(members[3]);
  await clock.advance(45);
  assert.deepEqual(expired, ["m7@150", "m3@200"]);
  for (const m of members) dogs.forget(m);
  assert.equal(dogs.size, 0);
  assert.equal(clock.pending, 0);
});

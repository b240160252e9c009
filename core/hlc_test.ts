import assert from "node:assert/strict";
import {
  BackbeatError,
  compareHlc,
  formatHlc,
  hlcPhysicalDiff,
  HybridLogicalClock,
  parseHlc,
} from "./mod.ts";

Deno.test("formatHlc() and parseHlc() round-trip the XXXX:XXXX:XXXX wire form", () => {
  const h = { physical: 0x7ffd0001, logical: 0xabcd };
  assert.equal(formatHlc(h), "7ffd:0001:abcd");
  assert.deepEqual(parseHlc("7FFD:0001:ABCD"), h);
  assert.deepEqual(parseHlc(formatHlc({ physical: 0xffffffff, logical: 0 })), {
    physical: 0xffffffff,
    logical: 0,
  });
});

Deno.test("parseHlc() rejects malformed stamps with a TypeError naming the format", () => {
  for (const bad of ["", "7ffd:0001", "7ffd:0001:abcg", "7ffd-0001-abcd", "07ffd:001:abcd"]) {
    assert.throws(() => parseHlc(bad), /expected XXXX:XXXX:XXXX \(hex\)/);
  }
});

Deno.test("HybridLogicalClock.now() follows wall time and never goes backwards", () => {
  let wall = 1_000;
  const clock = new HybridLogicalClock({ clock: () => wall });
  const a = clock.now();
  const b = clock.now(); // same millisecond: logical counter moves
  wall = 900; // wall clock stepped back
  const c = clock.now();
  wall = 2_000;
  const d = clock.now();
  assert.equal(a, "0000:03e8:0000");
  assert.equal(b, "0000:03e8:0001");
  assert.equal(c, "0000:03e8:0002");
  assert.equal(d, "0000:07d0:0000");
  assert.deepEqual([a, b, c, d].map(parseHlc).sort(compareHlc).map(formatHlc), [a, b, c, d]);
});

Deno.test("HybridLogicalClock.update() moves past a remote stamp ahead of us", () => {
  let wall = 1_000;
  const clock = new HybridLogicalClock({ clock: () => wall });
  clock.now();
  // Remote is 500 ms ahead with logical 7: we adopt its physical time and count past it.
  assert.equal(clock.update(formatHlc({ physical: 1_500, logical: 7 })), "0000:05dc:0008");
  // Equal physical on both sides: max(logical) + 1.
  assert.equal(clock.update(formatHlc({ physical: 1_500, logical: 20 })), "0000:05dc:0015");
  // Remote behind us: local counter moves on.
  assert.equal(clock.update(formatHlc({ physical: 10, logical: 99 })), "0000:05dc:0016");
  // Wall time overtakes everything: logical resets.
  wall = 5_000;
  assert.equal(clock.update(formatHlc({ physical: 10, logical: 0 })), "0000:1388:0000");
});

Deno.test("HybridLogicalClock.update() refuses a remote clock beyond maxOffsetMs and stays put", () => {
  const clock = new HybridLogicalClock({ clock: () => 1_000, maxOffsetMs: 100 });
  const before = clock.now();
  assert.throws(
    () => clock.update(formatHlc({ physical: 1_101, logical: 0 })),
    (e) =>
      e instanceof BackbeatError && e.code === "clock_offset" && /101 ms ahead/.test(e.message),
  );
  assert.equal(formatHlc(clock.last!), before);
  // Exactly at the limit is accepted.
  assert.equal(clock.update(formatHlc({ physical: 1_100, logical: 0 })), "0000:044c:0001");
  assert.throws(() => new HybridLogicalClock({ maxOffsetMs: -1 }), RangeError);
});

Deno.test("HybridLogicalClock borrows a millisecond when the 16-bit logical counter overflows", () => {
  const clock = new HybridLogicalClock({ clock: () => 1_000 });
  let last = clock.tick();
  for (let i = 0; i < 0xffff; i++) last = clock.tick();
  assert.deepEqual(last, { physical: 1_000, logical: 0xffff });
  const next = clock.tick();
  assert.deepEqual(next, { physical: 1_001, logical: 0 });
  assert.equal(compareHlc(next, last), 1);
  // A remote stamp at the counter's top also overflows safely.
  const other = new HybridLogicalClock({ clock: () => 5 });
  assert.equal(other.update("0000:0005:ffff"), "0000:0006:0000");
});

Deno.test("compareHlc() orders stamps across the 2^32 millisecond wrap (RFC 1982)", () => {
  const beforeWrap = { physical: 0xfffffff0, logical: 3 };
  const afterWrap = { physical: 0x00000010, logical: 0 };
  assert.equal(compareHlc(beforeWrap, afterWrap), -1);
  assert.equal(compareHlc(afterWrap, beforeWrap), 1);
  assert.equal(hlcPhysicalDiff(afterWrap, beforeWrap), 0x20);
  assert.equal(compareHlc("0000:0001:0002", "0000:0001:0002"), 0);
  assert.equal(compareHlc("0000:0001:0002", "0000:0001:0003"), -1);
  // The clock itself keeps counting forward through the wrap.
  let wall = 2 ** 32 - 1;
  const clock = new HybridLogicalClock({ clock: () => wall });
  const a = clock.tick();
  wall = 2 ** 32 + 5;
  const b = clock.tick();
  assert.equal(b.physical, 5);
  assert.equal(compareHlc(b, a), 1);
});

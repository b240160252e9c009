import assert from "node:assert/strict";
import { BackbeatError, BeatBudgetExceededError } from "../core/mod.ts";
import { type BudgetSource, type BudgetWatcher, runWithBeatBudget } from "./_budget.ts";

function source(): BudgetSource & { watchers: Set<BudgetWatcher>; beat(): void } {
  const watchers = new Set<BudgetWatcher>();
  return {
    watchers,
    add(w) {
      watchers.add(w);
      return () => watchers.delete(w);
    },
    beat() {
      for (const w of watchers) w.tick();
    },
  };
}

Deno.test("runWithBeatBudget() returns the result and leaves no watcher behind", async () => {
  const s = source();
  const p = runWithBeatBudget(s, 2, () => Promise.resolve(7));
  s.beat();
  assert.equal(await p, 7);
  assert.equal(s.watchers.size, 0);
  assert.equal(await runWithBeatBudget(s, 1, () => "sync"), "sync");
  assert.equal(s.watchers.size, 0);
});

Deno.test("runWithBeatBudget() aborts on the n-th beat and ignores the work's late result", async () => {
  const s = source();
  let signal!: AbortSignal;
  let finish!: (v: string) => void;
  const p = runWithBeatBudget(s, 2, (sig) => {
    signal = sig;
    return new Promise<string>((r) => finish = r);
  });
  const outcome = assert.rejects(p, (e) => {
    assert.ok(e instanceof BeatBudgetExceededError);
    assert.equal(e.message, "Beat budget exceeded: 2 of 2 beats used");
    return true;
  });
  s.beat();
  assert.equal(signal.aborted, false);
  s.beat();
  assert.equal(signal.aborted, true);
  assert.equal(s.watchers.size, 0);
  finish("too late");
  await outcome;
});

Deno.test("runWithBeatBudget() passes the work's errors through and ends on close", async () => {
  const s = source();
  await assert.rejects(
    runWithBeatBudget(s, 3, () => Promise.reject(new EvalError("e"))),
    EvalError,
  );
  await assert.rejects(
    runWithBeatBudget(s, 3, () => {
      throw new EvalError("sync");
    }),
    EvalError,
  );
  assert.equal(s.watchers.size, 0);
  let signal!: AbortSignal;
  const p = runWithBeatBudget(s, 3, (sig) => {
    signal = sig;
    return new Promise(() => {});
  });
  for (const w of [...s.watchers]) w.close(new BackbeatError("closed", "gone"));
  await assert.rejects(p, (e) => e instanceof BackbeatError && e.code === "closed");
  assert.equal(signal.aborted, true);
  assert.equal(s.watchers.size, 0);
});

Deno.test("runWithBeatBudget() rejects a budget that is not a positive integer", () => {
  const s = source();
  for (const n of [0, -1, 1.5, NaN]) {
    assert.throws(() => runWithBeatBudget(s, n, () => 1), RangeError);
  }
  // deno-lint-ignore no-explicit-any
  assert.throws(() => runWithBeatBudget(s, 1, 5 as any), TypeError);
});

import assert from "node:assert/strict";
import { IsolatedEventTarget } from "./mod.ts";

class Recording extends IsolatedEventTarget {
  seen: string[] = [];
  protected override onListenerError(type: string, error: unknown): void {
    this.seen.push(`${type}: ${(error as Error).message}`);
  }
}

Deno.test("IsolatedEventTarget catches a throwing listener and still runs the others", () => {
  const target = new Recording();
  const ran: string[] = [];
  target.addEventListener("beat", () => {
    throw new Error("user bug");
  });
  target.addEventListener("beat", () => ran.push("second"));
  target.addEventListener("beat", { handleEvent: () => ran.push("object") });
  assert.equal(target.dispatchEvent(new Event("beat")), true);
  assert.deepEqual(ran, ["second", "object"]);
  assert.deepEqual(target.seen, ["beat: user bug"]);
  assert.equal(target.listenerErrors, 1);
});

Deno.test("IsolatedEventTarget removes listeners and honours once", () => {
  const target = new IsolatedEventTarget();
  let n = 0;
  const listener = () => n++;
  target.addEventListener("x", listener);
  target.addEventListener("x", listener); // a duplicate is ignored, as by EventTarget
  target.dispatchEvent(new Event("x"));
  target.removeEventListener("x", listener);
  target.dispatchEvent(new Event("x"));
  assert.equal(n, 1);
  target.addEventListener("y", listener, { once: true });
  target.dispatchEvent(new Event("y"));
  target.dispatchEvent(new Event("y"));
  assert.equal(n, 2);
  target.removeEventListener("never-added", listener); // no-op
});

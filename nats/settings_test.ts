import assert from "node:assert/strict";
import { redactUrl, validateNatsBusOptions } from "./mod.ts";
import { planConnection } from "./_settings.ts";
import { parseServerUrl } from "./_url.ts";

Deno.test("redactUrl() keeps the user and hides a password or token", () => {
  assert.equal(redactUrl("nats://alice:secret@127.0.0.1:4222"), "nats://alice:***@127.0.0.1:4222");
  assert.equal(redactUrl("nats://t0ken@127.0.0.1:4222"), "nats://***@127.0.0.1:4222");
  assert.equal(redactUrl("tls://bob:@host:4222"), "tls://bob:***@host:4222");
  assert.equal(redactUrl("alice:secret@host:4222"), "alice:***@host:4222");
  // Up to the last "@": an unencoded "@" or "/" in a password is still hidden whole.
  assert.equal(redactUrl("nats://a:p@ss/w@host:4222"), "nats://a:***@host:4222");
  assert.equal(redactUrl("nats://127.0.0.1:4222"), "nats://127.0.0.1:4222");
  assert.equal(redactUrl("not a url"), "not a url");
  assert.throws(() => redactUrl(42 as unknown as string), TypeError);
});

Deno.test("parseServerUrl() takes credentials out of the URL, decoded", () => {
  assert.deepEqual(parseServerUrl("nats://alice:s%40cr%3At@127.0.0.1:4222"), {
    dial: "nats://127.0.0.1:4222",
    redacted: "nats://alice:***@127.0.0.1:4222",
    tls: false,
    user: "alice",
    pass: "s@cr:t",
  });
  assert.deepEqual(parseServerUrl("tls://tok%2Fen@nats.example"), {
    dial: "tls://nats.example",
    redacted: "tls://***@nats.example",
    tls: true,
    token: "tok/en",
  });
  // A password starting with digits: nats.js 3 alone would take them for the port.
  assert.equal(parseServerUrl("nats://u:1234@127.0.0.1:4222").dial, "nats://127.0.0.1:4222");
  assert.equal(parseServerUrl(" 127.0.0.1:4222/ ").dial, "127.0.0.1:4222");
  assert.equal(parseServerUrl("nats://[::1]:4222").dial, "nats://[::1]:4222");
});

Deno.test("parseServerUrl() refuses what is not a NATS URL, showing it redacted", () => {
  const bad = [
    ["ws://u:secret@host:80", /WebSocket is not supported/],
    ["http://u:secret@host:80", /expected nats:\/\/host:port or tls:\/\//],
    ["nats://u:secret@host:99999", /expected nats:\/\/host:port/],
    ["nats://u:secret@host/path", /expected nats:\/\/host:port/],
    ["nats://u:%E0%A4%A@host:4222", /bad percent-encoding/],
    ["nats://:secret@host:4222", /a password without a user name/],
    ["", /non-empty/],
  ] as const;
  for (const [url, pattern] of bad) {
    assert.throws(() => parseServerUrl(url), (e: Error) => {
      assert.ok(e instanceof TypeError);
      assert.match(e.message, pattern);
      assert.ok(!e.message.includes("secret"), e.message);
      assert.ok(!e.message.includes("%E0"), e.message);
      return true;
    });
  }
});

Deno.test("planConnection() presents exactly one credential", () => {
  assert.deepEqual(planConnection({ servers: "nats://alice:pw@h:1" }).auth, {
    kind: "user",
    user: "alice",
    pass: "pw",
  });
  assert.deepEqual(planConnection({ servers: ["nats://tok@h:1", "nats://tok@h:2", "h:3"] }).auth, {
    kind: "token",
    token: "tok",
  });
  assert.deepEqual(planConnection({ servers: "h:1", nkeySeedFile: "/k.nk" }).auth, {
    kind: "nkey",
    seed: undefined,
    file: "/k.nk",
  });
  const refused = [
    [{ servers: "h:1", user: "a", token: "t" }, /give one credential, not user and token/],
    [{ servers: "h:1", pass: "p" }, /pass without user/],
    [{ servers: "h:1", nkeySeed: "S", nkeySeedFile: "f" }, /nkeySeed and nkeySeedFile/],
    [{ servers: "h:1", creds: "c", credsFile: "f" }, /creds and credsFile/],
    [{ servers: "nats://a:secret@h:1", token: "t" }, /both in nats:\/\/a:\*\*\*@h:1 and in the/],
    [{ servers: ["nats://a:secret@h:1", "nats://b:secret@h:2"] }, /different credentials/],
    [{ servers: "h:1", certFile: "c.pem" }, /certFile without keyFile/],
    [{ servers: "h:1", keyFile: "k.pem" }, /keyFile without certFile/],
    [{ servers: [] }, /no server URL/],
    [{ servers: "h:1", user: "" }, /user: expected a non-empty string/],
    [{ servers: "h:1", requireTls: "yes" }, /requireTls: expected a boolean/],
    [{ servers: "h:1", inboxPrefix: "_INBOX.>" }, /inboxPrefix "_INBOX.>": expected subject/],
  ] as const;
  for (const [options, pattern] of refused) {
    assert.throws(
      () => validateNatsBusOptions(options as never),
      (e: Error) => e instanceof TypeError && pattern.test(e.message) && !/secret/.test(e.message),
      JSON.stringify(pattern.source),
    );
  }
});

Deno.test("planConnection() makes TLS mandatory for tls://, TLS files and requireTls", () => {
  assert.equal(planConnection({ servers: "nats://h:1" }).requireTls, false);
  assert.equal(planConnection({ servers: ["nats://h:1", "tls://h:2"] }).requireTls, true);
  assert.equal(planConnection({ servers: "h:1", caFile: "ca.pem" }).requireTls, true);
  assert.equal(planConnection({ servers: "h:1", requireTls: true }).requireTls, true);
});

Deno.test("planConnection() shows who logs in where, never the secret", () => {
  assert.deepEqual(planConnection({ servers: "nats://h:1", user: "al ice", pass: "pw" }).shown, [
    "nats://al%20ice:***@h:1",
  ]);
  assert.deepEqual(planConnection({ servers: "h:1", token: "t" }).shown, ["***@h:1"]);
  assert.deepEqual(planConnection({ servers: "nats://a:pw@h:1" }).shown, ["nats://a:***@h:1"]);
  assert.deepEqual(planConnection({ servers: "nats://h:1", credsFile: "x" }).shown, ["nats://h:1"]);
});

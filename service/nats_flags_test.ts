import assert from "node:assert/strict";
import { NATS_FLAG_SPECS, NATS_FLAGS_HELP, natsSettingsFromFlags, parseFlags } from "./mod.ts";

const settings = (args: string[], env: Record<string, string> = {}) =>
  natsSettingsFromFlags(parseFlags(args, NATS_FLAG_SPECS, env));

Deno.test("natsSettingsFromFlags(): no --nats is the embedded bus, replicas default to 1", () => {
  assert.deepEqual(settings([]), { nats: undefined, replicas: 1 });
  assert.deepEqual(settings(["--replicas", "3"]), { nats: undefined, replicas: 3 });
});

Deno.test("natsSettingsFromFlags(): servers, credentials and TLS from flags", () => {
  assert.deepEqual(
    settings([
      "--nats",
      "nats://n1:4222, nats://n2:4222,,",
      "--nats-creds",
      "/etc/bb/pulse.creds",
      "--nats-ca",
      "/etc/bb/ca.pem",
      "--nats-cert",
      "/etc/bb/c.pem",
      "--nats-key",
      "/etc/bb/k.pem",
      "--nats-tls",
      "--nats-inbox-prefix",
      "_INBOX_pulse",
      "--replicas=5",
    ]),
    {
      nats: {
        servers: ["nats://n1:4222", "nats://n2:4222"],
        credsFile: "/etc/bb/pulse.creds",
        caFile: "/etc/bb/ca.pem",
        certFile: "/etc/bb/c.pem",
        keyFile: "/etc/bb/k.pem",
        requireTls: true,
        inboxPrefix: "_INBOX_pulse",
      },
      replicas: 5,
    },
  );
  assert.deepEqual(settings(["--nats", "tls://n:4222", "--nats-nkey", "/k.nk"]).nats, {
    servers: ["tls://n:4222"],
    nkeySeedFile: "/k.nk",
  });
  // Credentials in the URL stay there: connectNatsBus() takes them out.
  assert.deepEqual(settings(["--nats", "nats://alice:pw@n:4222"]).nats, {
    servers: ["nats://alice:pw@n:4222"],
  });
});

Deno.test("natsSettingsFromFlags(): BACKBEAT_* variables, flags win", () => {
  const env = {
    BACKBEAT_NATS_URL: "nats://env:4222",
    BACKBEAT_NATS_USER: "pulse",
    BACKBEAT_NATS_PASSWORD: "pw-from-env",
    BACKBEAT_NATS_TLS: "true",
    BACKBEAT_REPLICAS: "3",
  };
  assert.deepEqual(settings([], env), {
    nats: { servers: ["nats://env:4222"], user: "pulse", pass: "pw-from-env", requireTls: true },
    replicas: 3,
  });
  assert.deepEqual(settings(["--nats", "nats://flag:4222", "--no-nats-tls"], env).nats, {
    servers: ["nats://flag:4222"],
    user: "pulse",
    pass: "pw-from-env",
  });
  assert.deepEqual(
    settings([], { BACKBEAT_NATS_URL: "n:4222", BACKBEAT_NATS_TOKEN: "t" }).nats,
    { servers: ["n:4222"], token: "t" },
  );
});

Deno.test("natsSettingsFromFlags(): clear errors that name the flag and never the secret", () => {
  const cases: [string[], Record<string, string>, RegExp, ErrorConstructor][] = [
    [["--nats-user", "a"], {}, /^--nats-user without --nats \(BACKBEAT_NATS_URL\)$/, TypeError],
    [[], { BACKBEAT_NATS_CREDS: "/c" }, /^BACKBEAT_NATS_CREDS without --nats/, TypeError],
    [["--nats", "n:1", "--nats-cert", "c.pem"], {}, /^--nats-cert without --nats-key/, TypeError],
    [["--nats", "n:1", "--nats-key", "k.pem"], {}, /^--nats-key without --nats-cert/, TypeError],
    [
      ["--nats", "n:1", "--nats-password", "secret"],
      {},
      /^--nats-password without --nats-user/,
      TypeError,
    ],
    [
      ["--nats", "n:1", "--nats-user", "a", "--nats-token", "secret"],
      {},
      /^--nats-user and --nats-token: give one NATS credential$/,
      TypeError,
    ],
    [
      ["--nats", "n:1", "--nats-nkey", "f"],
      { BACKBEAT_NATS_CREDS: "c" },
      /^--nats-nkey and BACKBEAT_NATS_CREDS: give one/,
      TypeError,
    ],
    [
      ["--nats", "nats://a:secret@n:1", "--nats-token", "t"],
      {},
      /^--nats nats:\/\/a:\*\*\*@n:1 carries credentials and --nats-token is given/,
      TypeError,
    ],
    [
      ["--nats", "nats://a:secret@n:1,nats://b:secret@n:2"],
      {},
      /different credentials/,
      TypeError,
    ],
    [["--nats", "ws://a:secret@n:1"], {}, /^Invalid --nats: .*ws:\/\/a:\*\*\*@n:1/, TypeError],
    [[], { BACKBEAT_NATS_URL: " , " }, /^Invalid BACKBEAT_NATS_URL: no server URL$/, TypeError],
    [["--nats", "n:1", "--nats-user", ""], {}, /^Missing value for --nats-user$/, TypeError],
    [
      ["--replicas", "0"],
      {},
      /^Invalid --replicas "0": expected an integer from 1 to 5$/,
      RangeError,
    ],
    [[], { BACKBEAT_REPLICAS: "2.5" }, /^Invalid BACKBEAT_REPLICAS/, RangeError],
    [["--replicas", "6"], {}, /from 1 to 5/, RangeError],
  ];
  for (const [args, env, pattern, type] of cases) {
    assert.throws(() => settings(args, env), (e: Error) => {
      assert.ok(e instanceof type, `${args.join(" ")}: ${e}`);
      assert.match(e.message, pattern);
      assert.ok(!e.message.includes("secret"), "no secret in the message");
      return true;
    });
  }
});

Deno.test("NATS_FLAGS_HELP documents every flag and its variable, and warns about ps", () => {
  for (const spec of NATS_FLAG_SPECS) {
    assert.ok(NATS_FLAGS_HELP.includes(`--${spec.name}`), spec.name);
    assert.ok(NATS_FLAGS_HELP.includes(`[${spec.env}]`), spec.env);
  }
  assert.match(NATS_FLAGS_HELP, /visible to every user of\s+the machine \(ps/);
  for (const line of NATS_FLAGS_HELP.split("\n")) assert.ok(line.length <= 100, line);
});

// `backbeat keygen` (an Ed25519 private key file for an agent, a pulse or an operator, and its
// keyring entry) and `backbeat keyring add|list|remove` (edits of a keyring file, checked with
// core Keyring.fromJson and written atomically). A private key is only ever written into its
// file; everything printed is public.

import {
  generateSigningKeyPair,
  isKeyValidAt,
  Keyring,
  type KeyringEntryJson,
  type KeyringJson,
  readSigningKeyFile,
} from "../core/mod.ts";
import type { EnvVars, ParsedFlags } from "../service/mod.ts";
import {
  JSON_SPEC,
  noExtraArguments,
  parseCommandFlags,
  stringFlag,
  usageLines,
} from "./_common.ts";
import { editKeyringFile, readKeyringJson, writePrivateFile } from "./_files.ts";
import { type CommandContext, EXIT_OK, printable } from "./_io.ts";

/** The kinds of key `keygen` makes. */
export type KeyOwnerKind = "agent" | "pulse" | "admin";

// An owner or key id travels in headers and claims: printable ASCII without spaces.
const NAME = /^[\x21-\x7e]{1,128}$/;
const RFC3339 = /^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$/;

function checkName(value: string, what: string): string {
  if (!NAME.test(value)) {
    throw new TypeError(
      `Invalid ${what} ${
        JSON.stringify(printable(value, 60))
      }: 1 to 128 printable characters, no spaces`,
    );
  }
  return value;
}

function instantFlag(flags: ParsedFlags, name: string): string | undefined {
  const v = stringFlag(flags, name);
  if (v === undefined) return undefined;
  if (!RFC3339.test(v) || Number.isNaN(Date.parse(v))) {
    throw new TypeError(
      `Invalid --${name} ${
        JSON.stringify(printable(v, 60))
      }: expected an RFC 3339 date-time, e.g. 2027-01-01T00:00:00Z`,
    );
  }
  return v;
}

function validity(flags: ParsedFlags): Pick<KeyringEntryJson, "not_before" | "not_after"> {
  const notBefore = instantFlag(flags, "not-before");
  const notAfter = instantFlag(flags, "not-after");
  if (
    notBefore !== undefined && notAfter !== undefined &&
    Date.parse(notAfter) < Date.parse(notBefore)
  ) {
    throw new RangeError("--not-after is before --not-before");
  }
  return {
    ...(notBefore !== undefined && { not_before: notBefore }),
    ...(notAfter !== undefined && { not_after: notAfter }),
  };
}

const KEYGEN_SPECS = [
  { name: "agent" },
  { name: "pulse" },
  { name: "admin" },
  { name: "out" },
  { name: "key-id" },
  { name: "not-before" },
  { name: "not-after" },
  { name: "force", type: "boolean" },
] as const;

/** `backbeat keygen --help`. */
export const KEYGEN_USAGE: string = `backbeat keygen: make an Ed25519 signing key

${usageLines("keygen (--agent ID | --pulse ID | --admin NAME) [flags]")}
Writes the private key file, an Ed25519 JWK with the key id in "kid"
({"kty":"OKP","crv":"Ed25519","x":...,"d":...,"kid":...}), readable by its owner only (mode
600), and prints its keyring entry on stdout as JSON ({"<owner>": [{"key_id", "public_key"}]})
with a hint on stderr. The private key is never printed.

  --agent ID        a key for an agent's claims: the SDK's config.signingKey (readSigningKeyFile);
                    its entry goes into reverb's --keyring
  --pulse ID        a key for a pulse's frames: pulse --signing-key FILE; its entry goes into
                    the --pulse-keyring of reverb, the other pulses and the SDK's pulseKeys
  --admin NAME      an operator's key for tempo changes: backbeat tempo set --admin-key FILE;
                    its entry goes into pulse's --admin-keyring

Flags:
  --out FILE        the key file (default <owner>.key.json in the current directory)
  --key-id ID       the key id (default <owner>-<8 hex digits of the public key's hash>)
  --not-before T    RFC 3339: the entry is valid from T
  --not-after T     RFC 3339: the entry is valid until T (rotate before it)
  --force           replace an existing key file (the old key then stops working once its
                    entry leaves the keyring)
  -h, --help        show this help
`;

/** What `keygen` was asked to do. */
export interface KeygenOptions {
  /** Whose key. */
  readonly kind: KeyOwnerKind;
  /** The owner (agent id, pulse id, operator name). */
  readonly owner: string;
  /** The key file (absolute). */
  readonly out: string;
  /** The key file as given, for messages. */
  readonly outShown: string;
  /** The key id, or `undefined` to derive one. */
  readonly keyId: string | undefined;
  /** Validity of the printed entry. */
  readonly validity: Pick<KeyringEntryJson, "not_before" | "not_after">;
  /** Replace an existing file. */
  readonly force: boolean;
}

/**
 * Parses `keygen`'s command line.
 *
 * @param args The arguments after `keygen`.
 * @param env The environment.
 * @param path Resolves user paths.
 * @returns The options, or `help`.
 * @throws {TypeError} On a bad flag, owner or key id, or not exactly one of --agent, --pulse,
 * --admin.
 * @throws {RangeError} When --not-after is before --not-before.
 *
 * @example An agent's key
 * ```ts ignore
 * const o = parseKeygen(["--agent", "worker-1"], {}, (p) => `/home/me/${p}`);
 * if (o !== "help") console.log(o.out); // "/home/me/worker-1.key.json"
 * ```
 */
export function parseKeygen(
  args: readonly string[],
  env: EnvVars,
  path: (p: string) => string,
): KeygenOptions | "help" {
  const flags = parseCommandFlags(args, KEYGEN_SPECS, env);
  if (flags.values.help) return "help";
  noExtraArguments(flags);
  const given = (["agent", "pulse", "admin"] as const).filter((k) => flags.values[k] !== undefined);
  if (given.length !== 1) {
    throw new TypeError(
      given.length === 0
        ? "Missing whose key: --agent ID, --pulse ID or --admin NAME"
        : `Give one of --agent, --pulse and --admin, not ${
          given.map((g) => `--${g}`).join(" and ")
        }`,
    );
  }
  const kind = given[0];
  const owner = checkName(stringFlag(flags, kind)!, `--${kind}`);
  const keyId = stringFlag(flags, "key-id");
  if (keyId !== undefined) checkName(keyId, "--key-id");
  const outShown = stringFlag(flags, "out") ?? `${owner.replace(/[^\w.-]/g, "_")}.key.json`;
  if (outShown === "-") throw new TypeError("--out -: a private key is written to a file only");
  return {
    kind,
    owner,
    out: path(outShown),
    outShown,
    keyId,
    validity: validity(flags),
    force: flags.values.force === true,
  };
}

/**
 * Makes the key, writes its file and prints its keyring entry.
 *
 * @param o The options.
 * @param ctx The command context.
 * @returns 0.
 * @throws {Error} When the file exists (without --force) or cannot be written.
 *
 * @example Make a key
 * ```ts ignore
 * const o = parseKeygen(["--agent", "worker-1"], {}, ctx.path);
 * if (o !== "help") await runKeygen(o, ctx); // prints {"worker-1":[{"key_id":…,"public_key":…}]}
 * ```
 */
export async function runKeygen(o: KeygenOptions, ctx: CommandContext): Promise<number> {
  const pair = await generateSigningKeyPair();
  const keyId = o.keyId ?? `${o.owner}-${pair.keyId.slice(0, 8)}`;
  const jwk = pair.privateJwk;
  // Exactly the documented fields: no `ext` or `key_ops` that another reader might trip on.
  const file = { kty: "OKP", crv: "Ed25519", x: jwk.x, d: jwk.d, kid: keyId };
  try {
    await writePrivateFile(o.out, `${JSON.stringify(file)}\n`, o.force);
  } catch (error) {
    if (error instanceof Deno.errors.AlreadyExists) {
      throw new Error(`${o.outShown} exists: give --force to replace it, or another --out`);
    }
    throw new Error(`Cannot write ${o.outShown}: ${(error as Error).message}`);
  }
  // What was written must load as services load it.
  const check = await readSigningKeyFile(o.out);
  if (check.publicKey !== pair.publicKey || check.keyId !== keyId) {
    throw new Error(`${o.outShown} does not read back as the key just made`);
  }
  const entry: KeyringJson = {
    [o.owner]: [{ key_id: keyId, public_key: pair.publicKey, ...o.validity }],
  };
  await ctx.out.write(`${JSON.stringify(entry)}\n`);
  const add = `backbeat keyring add --keyring KEYRING --agent ${o.owner} --from ${o.outShown}`;
  const hint = o.kind === "agent"
    ? `wrote ${o.outShown} (mode 600); give reverb its entry: ${add}`
    : o.kind === "pulse"
    ? `wrote ${o.outShown} (mode 600): run pulse --signing-key ${o.outShown}; trust it: ${add} (the --pulse-keyring of reverb and the other pulses)`
    : `wrote ${o.outShown} (mode 600): backbeat tempo set BPM --admin-key ${o.outShown}; trust it: ${add} (pulse's --admin-keyring)`;
  await ctx.err.write(`${hint}\n`);
  return EXIT_OK;
}

const KEYRING_SPECS = [
  JSON_SPEC,
  { name: "keyring", env: "BACKBEAT_KEYRING" },
  { name: "agent" },
  { name: "public-key" },
  { name: "key-id" },
  { name: "from" },
  { name: "not-before" },
  { name: "not-after" },
  { name: "force", type: "boolean" },
] as const;

/** `backbeat keyring --help`. */
export const KEYRING_USAGE: string = `backbeat keyring: edit a keyring file

${
  usageLines(
    "keyring add --keyring FILE --agent ID (--from KEYFILE | --public-key B64 --key-id ID)",
  )
}  deno task backbeat keyring list --keyring FILE [--json]
  deno task backbeat keyring remove --keyring FILE --agent ID [--key-id ID]

One format for agents', pulses' and operators' keys:
{"<owner>": [{"key_id", "public_key": "<base64 of the raw 32 bytes>", "not_before"?, "not_after"?}]}.
The owner is the agent id (an agent may sign only with its own keys), or a label in pulse and
operator keyrings. Every edit is checked (Keyring.fromJson) and written atomically (a temporary
file renamed over the old one, under FILE.lock), so reverb and pulse, which reload keyring files
on change and on SIGHUP, never read half a file.

  add       add a key; creates FILE on the first add. --from reads a key file (backbeat keygen)
            and takes its public key and kid; or give --public-key and --key-id
  list      every key with its validity
  remove    remove the agent's key with --key-id, or all of its keys

Flags:
  --keyring FILE     the keyring [BACKBEAT_KEYRING]
  --agent ID         the owner (an agent id, or a pulse or operator label)
  --from KEYFILE     add: the key file whose public half to add
  --public-key B64   add: the raw 32-byte Ed25519 public key, base64
  --key-id ID        add: the key id (with --public-key); remove: the key to remove
  --not-before T     add: RFC 3339, valid from T
  --not-after T      add: RFC 3339, valid until T
  --force            add: replace a key with the same id
  --json             list: the keyring's JSON
  -h, --help         show this help
`;

/** What `keyring` was asked to do. */
export type KeyringOptions =
  | {
    readonly action: "add";
    readonly file: string;
    readonly shown: string;
    readonly agent: string;
    readonly from: string | undefined;
    readonly publicKey: string | undefined;
    readonly keyId: string | undefined;
    readonly validity: Pick<KeyringEntryJson, "not_before" | "not_after">;
    readonly force: boolean;
  }
  | {
    readonly action: "list";
    readonly file: string;
    readonly shown: string;
    readonly json: boolean;
  }
  | {
    readonly action: "remove";
    readonly file: string;
    readonly shown: string;
    readonly agent: string;
    readonly keyId: string | undefined;
  };

/**
 * Parses `keyring`'s command line.
 *
 * @param args The arguments after `keyring`.
 * @param env The environment.
 * @param path Resolves user paths.
 * @returns The options, or `help`.
 * @throws {TypeError} On a bad flag, a missing one, or flags that do not go together.
 * @throws {RangeError} When --not-after is before --not-before.
 *
 * @example Add from a key file
 * ```ts ignore
 * const o = parseKeyring(["add", "--keyring", "ring.json", "--agent", "w1", "--from", "w1.key.json"], {}, ctx.path);
 * ```
 */
export function parseKeyring(
  args: readonly string[],
  env: EnvVars,
  path: (p: string) => string,
): KeyringOptions | "help" {
  const flags = parseCommandFlags(args, KEYRING_SPECS, env);
  if (flags.values.help) return "help";
  const action = flags.positionals[0];
  if (action !== "add" && action !== "list" && action !== "remove") {
    throw new TypeError(
      action === undefined
        ? "Missing action: keyring add, list or remove"
        : `Unknown action ${JSON.stringify(action)}: expected add, list or remove`,
    );
  }
  noExtraArguments(flags, 1);
  const shown = stringFlag(flags, "keyring");
  if (shown === undefined) throw new TypeError("Missing --keyring FILE (BACKBEAT_KEYRING)");
  const file = path(shown);
  const allowed: Record<string, readonly string[]> = {
    add: ["agent", "public-key", "key-id", "from", "not-before", "not-after", "force"],
    list: ["json"],
    remove: ["agent", "key-id"],
  };
  for (
    const name of [
      "agent",
      "public-key",
      "key-id",
      "from",
      "not-before",
      "not-after",
      "force",
      "json",
    ]
  ) {
    if (flags.values[name] !== undefined && !allowed[action].includes(name)) {
      throw new TypeError(`--${name} does not go with keyring ${action}`);
    }
  }
  if (action === "list") return { action, file, shown, json: flags.values.json === true };
  const agentText = stringFlag(flags, "agent");
  if (agentText === undefined) throw new TypeError(`Missing --agent ID for keyring ${action}`);
  const agent = checkName(agentText, "--agent");
  const keyId = stringFlag(flags, "key-id");
  if (keyId !== undefined) checkName(keyId, "--key-id");
  if (action === "remove") return { action, file, shown, agent, keyId };
  const from = stringFlag(flags, "from");
  const publicKey = stringFlag(flags, "public-key");
  if (from !== undefined && (publicKey !== undefined || keyId !== undefined)) {
    throw new TypeError(
      "--from takes the public key and key id from the key file: give --from, or --public-key with --key-id",
    );
  }
  if (from === undefined && (publicKey === undefined || keyId === undefined)) {
    throw new TypeError("keyring add needs --from KEYFILE, or --public-key B64 with --key-id ID");
  }
  if (publicKey !== undefined) {
    let bytes: Uint8Array | undefined;
    try {
      bytes = Uint8Array.fromBase64(publicKey.replaceAll("-", "+").replaceAll("_", "/"));
    } catch { /* reported below */ }
    if (bytes?.length !== 32) {
      throw new TypeError("Invalid --public-key: expected base64 of a raw 32-byte Ed25519 key");
    }
  }
  return {
    action,
    file,
    shown,
    agent,
    from: from === undefined ? undefined : path(from),
    publicKey,
    keyId,
    validity: validity(flags),
    force: flags.values.force === true,
  };
}

function plural(n: number, word: string): string {
  return `${n} ${word}${n === 1 ? "" : "s"}`;
}

function entryState(e: KeyringEntryJson, now: number): string {
  const nb = e.not_before === undefined ? undefined : Date.parse(e.not_before);
  const na = e.not_after === undefined ? undefined : Date.parse(e.not_after);
  if (nb !== undefined && now < nb) return `not yet valid (from ${e.not_before})`;
  if (na !== undefined && now > na) return `EXPIRED (${e.not_after})`;
  return na !== undefined ? `valid until ${e.not_after}` : "valid";
}

/**
 * Runs `keyring add`, `list` or `remove`.
 *
 * @param o The options.
 * @param ctx The command context.
 * @returns 0.
 * @throws {Error} When the file cannot be read or written, is not a valid keyring, or the edit
 * does not apply (a key id already there without --force, nothing to remove).
 *
 * @example List a keyring
 * ```ts ignore
 * const o = parseKeyring(["list", "--keyring", "ring.json"], {}, ctx.path);
 * if (o !== "help") await runKeyring(o, ctx);
 * ```
 */
export async function runKeyring(o: KeyringOptions, ctx: CommandContext): Promise<number> {
  if (o.action === "list") {
    const json = await readKeyringJson(o.file, o.shown, false);
    if (o.json) {
      await ctx.out.write(`${JSON.stringify(json, null, 2)}\n`);
      return EXIT_OK;
    }
    const now = Date.now();
    const rows = Object.entries(json).flatMap(([owner, keys]) =>
      keys.map((
        k,
      ) => [printable(owner, 40), printable(k.key_id, 48), k.public_key, entryState(k, now)])
    );
    const widths = [5, 6].map((_, i) => Math.max(i === 0 ? 5 : 6, ...rows.map((r) => r[i].length)));
    const line = (r: string[]) =>
      `${r[0].padEnd(widths[0])}  ${r[1].padEnd(widths[1])}  ${r[2].padEnd(44)}  ${r[3]}`;
    const lines = [line(["OWNER", "KEY ID", "PUBLIC KEY", "STATE"]), ...rows.map(line)];
    const owners = Object.keys(json).length;
    lines.push(`${plural(rows.length, "key")} of ${plural(owners, "owner")} in ${o.shown}`);
    await ctx.out.write(lines.map((l) => `${l}\n`).join(""));
    return EXIT_OK;
  }
  if (o.action === "remove") {
    let removed = 0;
    await editKeyringFile(o.file, o.shown, false, (json) => {
      const keys = json[o.agent] ?? [];
      const keep = o.keyId === undefined ? [] : keys.filter((k) => k.key_id !== o.keyId);
      removed = keys.length - keep.length;
      if (removed === 0) return false;
      if (keep.length === 0) delete json[o.agent];
      else json[o.agent] = keep;
      return true;
    }, ctx.io.signal);
    if (removed === 0) {
      throw new Error(
        o.keyId === undefined
          ? `${o.shown} has no key of ${o.agent}`
          : `${o.shown} has no key ${o.keyId} of ${o.agent}`,
      );
    }
    await ctx.out.write(`removed ${plural(removed, "key")} of ${o.agent} from ${o.shown}\n`);
    return EXIT_OK;
  }
  let publicKey = o.publicKey;
  let keyId = o.keyId;
  if (o.from !== undefined) {
    const key = await readSigningKeyFile(o.from);
    if (key.publicKey === undefined) throw new Error("the key file holds no public key (x)");
    publicKey = key.publicKey;
    keyId = key.keyId;
  }
  const entry: KeyringEntryJson = { key_id: keyId!, public_key: publicKey!, ...o.validity };
  let replaced = false;
  const notes: string[] = [];
  const json = await editKeyringFile(o.file, o.shown, true, (json) => {
    const keys = json[o.agent] ?? [];
    const same = keys.findIndex((k) => k.key_id === entry.key_id);
    if (same >= 0 && !o.force) {
      throw new Error(
        `${o.agent} already has key ${entry.key_id} in ${o.shown}: give --force to replace it`,
      );
    }
    for (const [owner, list] of Object.entries(json)) {
      if (owner !== o.agent && list.some((k) => k.key_id === entry.key_id)) {
        // Pulse and operator keyrings find keys by id alone: two owners with one id is ambiguous.
        notes.push(`key id ${entry.key_id} is also used by ${owner}`);
      }
    }
    replaced = same >= 0;
    if (same >= 0) keys[same] = entry;
    else keys.push(entry);
    json[o.agent] = keys;
    return true;
  }, ctx.io.signal);
  for (const n of notes) await ctx.warn(`warning: ${n}`);
  const ring = await Keyring.fromJson(json);
  const k = ring.get(o.agent, entry.key_id);
  const state = k && !isKeyValidAt(k, Date.now()) ? " (not valid now)" : "";
  await ctx.out.write(
    `${replaced ? "replaced" : "added"} key ${entry.key_id} of ${o.agent} in ${o.shown}${state}: ` +
      `${plural(ring.size, "key")} of ${plural(ring.agentCount, "owner")}\n`,
  );
  return EXIT_OK;
}

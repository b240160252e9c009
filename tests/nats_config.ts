// Rendering the documented NATS configuration of docs/nats/ for tests: the cluster-id
// substitution of backbeat-auth.conf (README.md, "Another cluster id"), extra users, a `tls {}`
// block, the one-server and the cluster files with a temporary store, and the role passwords,
// which reach nats-server through the environment variables the files reference.

import assert from "node:assert/strict";
import { subjects } from "../core/mod.ts";
import { kvBucketName } from "../nats/mod.ts";
import { barStreamName } from "../reverb/mod.ts";
import type { TestPki } from "./tls.ts";

/** The documented configuration files. */
export const DOCS = new URL("../docs/nats/", import.meta.url);

/** The four users of backbeat-auth.conf. */
export const ROLES = ["pulse", "reverb", "agent", "operator"] as const;
/** One of {@linkcode ROLES}. */
export type Role = typeof ROLES[number];

/** What the cluster-id substitution needs: the names the library computes for a cluster. */
export interface AuthNames {
  readonly cluster: string;
  readonly pulseBucket: string;
  readonly reverbBucket: string;
  readonly barStream: string;
}

/** A cluster's subjects, KV buckets and bar stream, as the library names them. */
export interface ClusterNames extends AuthNames {
  readonly beat: string;
  readonly status: string;
  readonly bar: string;
  readonly control: string;
  readonly time: string;
}

/**
 * The names of `cluster`, from the library's own rules (`subjects()`, `kvBucketName()`,
 * `barStreamName()`).
 */
export async function clusterNames(cluster: string): Promise<ClusterNames> {
  return {
    cluster,
    ...subjects(cluster),
    pulseBucket: await kvBucketName(cluster, "pulse"),
    reverbBucket: await kvBucketName(cluster, "reverb"),
    barStream: barStreamName(cluster),
  };
}

/**
 * The documented cluster-id substitution (README.md, "Another cluster id"): the three forms of
 * `prod` in backbeat-auth.conf become the names the library computes for `names.cluster`.
 */
export function renderAuth(text: string, names: AuthNames): string {
  const out = text
    .replaceAll("backbeat.prod.", `backbeat.${names.cluster}.`)
    .replaceAll("backbeat_prod_pulse", names.pulseBucket)
    .replaceAll("backbeat_prod_reverb", names.reverbBucket)
    .replaceAll("BACKBEAT_PROD_BARS", names.barStream);
  const left = out.split("\n").filter((l) => !l.trimStart().startsWith("#") && /prod/i.test(l));
  assert.deepEqual(left, [], "every `prod` outside comments is substituted");
  return out;
}

/**
 * Appends entries (e.g. `{ nkey: "U…", permissions: $AGENT_PERMS }`) to the `users = [ … ]`
 * list of a rendered backbeat-auth.conf.
 */
export function addUsers(auth: string, entries: readonly string[]): string {
  const start = auth.indexOf("users = [");
  assert.ok(start >= 0, "backbeat-auth.conf has a users list");
  const end = auth.indexOf("\n  ]", start);
  assert.ok(end > start, "the users list ends with `  ]`");
  const lines = entries.map((e) => `\n    ${e}`).join("");
  return auth.slice(0, end) + lines + auth.slice(end);
}

/** A `tls {}` block requiring client certificates of the test CA (README.md, "TLS"). */
export function tlsBlock(pki: TestPki): string {
  return [
    "",
    "tls {",
    `  cert_file: ${JSON.stringify(pki.serverCert)}`,
    `  key_file: ${JSON.stringify(pki.serverKey)}`,
    `  ca_file: ${JSON.stringify(pki.caCert)}`,
    "  verify: true",
    "  timeout: 2",
    "}",
    "",
  ].join("\n");
}

/** A password the config parser reads as a string (hex, letter first; README.md "Passwords"). */
export function randomPass(): string {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return "bb" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** A fresh password per role. */
export function rolePasswords(): Record<Role, string> {
  return Object.fromEntries(ROLES.map((r) => [r, randomPass()])) as Record<Role, string>;
}

/** The environment the config files reference for the passwords, quoted as README.md advises. */
export function passwordEnv(pass: Readonly<Record<Role, string>>): Record<string, string> {
  return Object.fromEntries(ROLES.map((r) => [`${r.toUpperCase()}_PASS`, JSON.stringify(pass[r])]));
}

/** Runs `fn` with `vars` set in the environment (nats-server reads them at start), then unsets them. */
export async function withEnv<T>(vars: Record<string, string>, fn: () => Promise<T>): Promise<T> {
  for (const [k, v] of Object.entries(vars)) Deno.env.set(k, v);
  try {
    return await fn();
  } finally {
    for (const k of Object.keys(vars)) Deno.env.delete(k);
  }
}

/**
 * Writes docs/nats/backbeat.conf and backbeat-auth.conf (rendered for `names`, with `extraUsers`
 * and an optional TLS block) into `dir`, with the JetStream store in `dir/store`.
 *
 * @returns The path of the main config file.
 */
export async function writeServerConf(
  dir: string,
  names: AuthNames,
  options: { extraUsers?: readonly string[]; pki?: TestPki } = {},
): Promise<string> {
  const auth = await Deno.readTextFile(new URL("backbeat-auth.conf", DOCS));
  const main = await Deno.readTextFile(new URL("backbeat.conf", DOCS));
  await Deno.writeTextFile(
    `${dir}/backbeat-auth.conf`,
    addUsers(renderAuth(auth, names), options.extraUsers ?? []),
  );
  const store = `store_dir: ${JSON.stringify(`${dir}/store`)}`;
  let conf = main.replace(/^\s*store_dir:.*$/m, `  ${store}`);
  assert.ok(conf.includes(store), "backbeat.conf has a store_dir line to substitute");
  if (options.pki) conf += tlsBlock(options.pki);
  const path = `${dir}/backbeat.conf`;
  await Deno.writeTextFile(path, conf);
  return path;
}

/**
 * Writes docs/nats/cluster.conf with its three routes on `routePorts` (instead of 6222-6224) and
 * backbeat-auth.conf (rendered for `names`, with `extraUsers`) into `dir`. Each node then takes
 * its name, ports and store from {@linkcode clusterNodeEnv}.
 *
 * @returns The path of the cluster config file.
 */
export async function writeClusterConf(
  dir: string,
  names: AuthNames,
  routePorts: readonly [number, number, number],
  options: { extraUsers?: readonly string[] } = {},
): Promise<string> {
  const auth = await Deno.readTextFile(new URL("backbeat-auth.conf", DOCS));
  let conf = await Deno.readTextFile(new URL("cluster.conf", DOCS));
  await Deno.writeTextFile(
    `${dir}/backbeat-auth.conf`,
    addUsers(renderAuth(auth, names), options.extraUsers ?? []),
  );
  [6222, 6223, 6224].forEach((documented, i) => {
    const route = `nats-route://127.0.0.1:${documented}\n`;
    assert.ok(conf.includes(route), `cluster.conf routes to ${documented}`);
    conf = conf.replace(route, `nats-route://127.0.0.1:${routePorts[i]}\n`);
  });
  const path = `${dir}/cluster.conf`;
  await Deno.writeTextFile(path, conf);
  return path;
}

/**
 * The variables cluster.conf reads for node `i` (0-based): its name, route port and store. The
 * client port is given on the command line by the test server kit (`-p -1`), which wins.
 */
export function clusterNodeEnv(
  dir: string,
  i: number,
  routePorts: readonly number[],
): Record<string, string> {
  return {
    NODE: `n${i + 1}`,
    CLIENT_PORT: "-1",
    ROUTE_PORT: String(routePorts[i]),
    STORE: JSON.stringify(`${dir}/store-n${i + 1}`),
  };
}

/** A loopback port free right now (for route ports, which must be known before any node starts). */
export function freePort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  try {
    return (listener.addr as Deno.NetAddr).port;
  } finally {
    listener.close();
  }
}

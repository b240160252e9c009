// `deno task` runs a task in the project folder and names the caller's directory in INIT_CWD, so a
// path the user typed must be read from where they typed it, not from the project.
import type { NatsBusOptions } from "../nats/mod.ts";
import type { EnvVars } from "./_flags.ts";

/** The NATS options that are user file paths. */
const NATS_FILES = ["nkeySeedFile", "credsFile", "caFile", "certFile", "keyFile"] as const;

function isAbsolutePath(path: string): boolean {
  return path.startsWith("/") || /^[A-Za-z]:[\\/]/.test(path) || path.startsWith("\\\\");
}

// Joined, not normalised: folding ".." would change what a path through a symlink means.
function joinPath(dir: string, path: string): string {
  return `${dir.replace(/[\\/]+$/, "")}/${path}`;
}

/**
 * Resolves user paths against the caller's directory: `INIT_CWD` when set, else the working
 * directory. Absolute paths are kept.
 *
 * @param env Environment variables (for `INIT_CWD`).
 * @returns A function mapping a path as typed to the path to open.
 *
 * @example Under deno task
 * ```ts
 * import { userPaths } from "./mod.ts";
 * const resolve = userPaths({ INIT_CWD: "/home/me/ops" });
 * console.log(resolve("keyring.json"), resolve("/etc/k.json")); // /home/me/ops/keyring.json /etc/k.json
 * ```
 */
export function userPaths(env: EnvVars): (path: string) => string {
  let dir: string | undefined;
  return (path) => {
    if (isAbsolutePath(path)) return path;
    if (dir === undefined) {
      const cwd = Deno.cwd();
      const init = env.INIT_CWD;
      dir = init === undefined || init === ""
        ? cwd
        : isAbsolutePath(init)
        ? init
        : joinPath(cwd, init);
    }
    return joinPath(dir, path);
  };
}

/**
 * The NATS settings with their file paths (NKey seed, creds, CA, certificate, key) resolved.
 *
 * @param nats The settings.
 * @param resolve From {@linkcode userPaths}.
 * @returns A copy with resolved paths (`undefined` stays `undefined`).
 */
export function resolveNatsFiles(
  nats: NatsBusOptions | undefined,
  resolve: (path: string) => string,
): NatsBusOptions | undefined {
  if (nats === undefined || !NATS_FILES.some((k) => nats[k] !== undefined)) return nats;
  const out: NatsBusOptions = { ...nats };
  for (const k of NATS_FILES) {
    const p = out[k];
    if (p !== undefined) out[k] = resolve(p);
  }
  return out;
}

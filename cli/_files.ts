// Files the CLI writes: private key files (mode 0o600, never replaced without --force) and
// keyring files, edited under a lock file and replaced atomically (temporary file + rename), so
// a service reloading the keyring on change never reads half a file and two edits never lose
// one another.

import { basename, dirname, join } from "node:path";
import { Keyring, type KeyringJson, MAX_KEYRING_BYTES } from "../core/mod.ts";
import { errorMessage, sleep } from "./_io.ts";

const encoder = new TextEncoder();
const IS_WINDOWS = Deno.build.os === "windows";
/** A lock older than this is left over from a crashed edit and is taken over. */
const STALE_LOCK_MS = 30_000;
/** Longest wait for another edit's lock. */
const LOCK_WAIT_MS = 10_000;

function tempName(path: string): string {
  return join(dirname(path), `.${basename(path)}.${crypto.randomUUID().slice(0, 8)}.tmp`);
}

async function writeNew(path: string, bytes: Uint8Array, mode: number): Promise<void> {
  const file = await Deno.open(path, { write: true, createNew: true, mode });
  try {
    // The umask may have taken bits away from `mode`; the file must have exactly it.
    if (!IS_WINDOWS) await Deno.chmod(path, mode);
    let off = 0;
    while (off < bytes.length) off += await file.write(bytes.subarray(off));
    await file.sync();
  } finally {
    file.close();
  }
}

/**
 * Writes a file readable by its owner only (mode 0o600). Without `replace`, an existing file is
 * never touched (created exclusively); with it, the new content goes to a temporary file that
 * is renamed over the old one.
 *
 * @param path The file (absolute).
 * @param text The content.
 * @param replace Whether an existing file may be replaced.
 * @throws {Deno.errors.AlreadyExists} When the file exists and `replace` is false.
 *
 * @example Write a key file once
 * ```ts ignore
 * await writePrivateFile("/etc/backbeat/agent.key.json", JSON.stringify(jwk), false);
 * ```
 */
export async function writePrivateFile(
  path: string,
  text: string,
  replace: boolean,
): Promise<void> {
  const bytes = encoder.encode(text);
  if (!replace) return await writeNew(path, bytes, 0o600);
  const temp = tempName(path);
  try {
    await writeNew(temp, bytes, 0o600);
    await Deno.rename(temp, path);
  } catch (error) {
    await Deno.remove(temp).catch(() => {});
    throw error;
  }
}

/**
 * Replaces a file atomically: a temporary file in the same directory, then a rename. The old
 * file's mode is kept (a new file gets 0o644: a keyring holds public keys).
 *
 * @param path The file (absolute).
 * @param text The content.
 *
 * @example Replace a keyring
 * ```ts ignore
 * await replaceFile("/etc/backbeat/keyring.json", "{}\n");
 * ```
 */
export async function replaceFile(path: string, text: string): Promise<void> {
  const mode = await Deno.stat(path).then((s) => (s.mode ?? 0o644) & 0o777, () => 0o644);
  const temp = tempName(path);
  try {
    await writeNew(temp, encoder.encode(text), mode);
    await Deno.rename(temp, path);
  } catch (error) {
    await Deno.remove(temp).catch(() => {});
    throw error;
  }
}

async function lock(path: string, signal?: AbortSignal): Promise<() => Promise<void>> {
  const lockPath = `${path}.lock`;
  const started = Date.now();
  for (;;) {
    try {
      await writeNew(lockPath, encoder.encode(`${Deno.pid}\n`), 0o600);
      return () => Deno.remove(lockPath).catch(() => {});
    } catch (error) {
      if (!(error instanceof Deno.errors.AlreadyExists)) throw error;
    }
    const age = await Deno.stat(lockPath).then(
      (s) => Date.now() - (s.mtime?.getTime() ?? Date.now()),
      () => 0,
    );
    if (age > STALE_LOCK_MS) {
      await Deno.remove(lockPath).catch(() => {});
      continue;
    }
    if (Date.now() - started > LOCK_WAIT_MS || signal?.aborted) {
      throw new Error(
        `${lockPath} is held by another edit (remove it if no backbeat command is running)`,
      );
    }
    await sleep(25, signal);
  }
}

/**
 * Reads a keyring file's JSON and checks it with `Keyring.fromJson`.
 *
 * @param path The file (absolute).
 * @param shown The path as the user gave it, for messages.
 * @param missingIsEmpty Whether a missing file reads as `{}`.
 * @returns The JSON.
 * @throws {Error} When it cannot be read, is not JSON or is not a valid keyring.
 *
 * @example Read a keyring that may not exist yet
 * ```ts ignore
 * const json = await readKeyringJson("/etc/backbeat/keyring.json", "keyring.json", true);
 * console.log(Object.keys(json));
 * ```
 */
export async function readKeyringJson(
  path: string,
  shown: string,
  missingIsEmpty: boolean,
): Promise<KeyringJson> {
  let text: string;
  try {
    const info = await Deno.stat(path);
    if (info.size > MAX_KEYRING_BYTES) {
      throw new Error(`${info.size} bytes is above the limit of ${MAX_KEYRING_BYTES}`);
    }
    text = await Deno.readTextFile(path);
  } catch (error) {
    if (missingIsEmpty && error instanceof Deno.errors.NotFound) return {};
    const why = error instanceof Deno.errors.NotFound ? "no such file" : errorMessage(error);
    throw new Error(`Cannot read keyring ${shown}: ${why}`);
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    throw new Error(`Cannot read keyring ${shown}: not JSON`);
  }
  try {
    await Keyring.fromJson(json);
  } catch (error) {
    throw new Error(errorMessage(error).replace("keyring:", `keyring ${shown}:`));
  }
  return json as KeyringJson;
}

/**
 * Edits a keyring file under its lock: reads it (a missing file is `{}` when `create`), applies
 * the edit, checks the result with `Keyring.fromJson` and replaces the file atomically.
 *
 * @param path The file (absolute).
 * @param shown The path as the user gave it, for messages.
 * @param create Whether a missing file starts empty.
 * @param edit Changes the JSON in place; returns false to leave the file as it is.
 * @param signal Ends a wait for the lock.
 * @returns The JSON now in the file.
 * @throws {Error} When the file cannot be read or written, or the result is not a valid keyring.
 *
 * @example Drop an agent
 * ```ts ignore
 * await editKeyringFile("/etc/backbeat/keyring.json", "keyring.json", false, (json) => {
 *   delete json["old-agent"];
 *   return true;
 * });
 * ```
 */
export async function editKeyringFile(
  path: string,
  shown: string,
  create: boolean,
  edit: (json: KeyringJson) => boolean,
  signal?: AbortSignal,
): Promise<KeyringJson> {
  const unlock = await lock(path, signal);
  try {
    const json = await readKeyringJson(path, shown, create);
    if (!edit(json)) return json;
    try {
      await Keyring.fromJson(json);
    } catch (error) {
      throw new Error(`Not writing keyring ${shown}: ${errorMessage(error)}`);
    }
    await replaceFile(path, `${JSON.stringify(json, null, 2)}\n`);
    return json;
  } finally {
    await unlock();
  }
}

// Reloads a keyring file on change (Deno.watchFs, debounced) and on SIGHUP; a bad file never
// replaces a good keyring.
import { type Clock, IsolatedEventTarget, Keyring, SystemClock } from "../core/mod.ts";

/** Default for {@linkcode KeyringWatcherOptions.debounceMs}. */
const DEFAULT_KEYRING_DEBOUNCE_MS = 100;

/** Options of {@linkcode KeyringWatcher}. */
export interface KeyringWatcherOptions {
  /** Wait this long after the last file event before reloading. @default {100} */
  debounceMs?: number;
  /** Reload on SIGHUP too. @default {true} */
  reloadOnSighup?: boolean;
  /** Times the debounce. @default {new SystemClock()} */
  clock?: Clock;
}

/** Detail of a {@linkcode KeyringWatcher}'s `reload` event. */
export interface KeyringReloadDetail {
  /** Keys in the keyring now in force. */
  readonly keys: number;
}

/** The events of a {@linkcode KeyringWatcher}. */
export interface KeyringWatcherEventMap {
  /** A new keyring is in force. */
  reload: CustomEvent<KeyringReloadDetail>;
  /** A reload failed; the previous keyring stays in force. */
  error: ErrorEvent;
}

/**
 * Keeps a {@linkcode Keyring} in step with its file: reloads on change (debounced) and on SIGHUP.
 * A file that fails to load leaves the previous keyring in place and dispatches an `error` event;
 * a good reload dispatches `reload`.
 *
 * @example Watch a keyring file
 * ```ts ignore
 * import { KeyringWatcher } from "./mod.ts";
 * await using watcher = new KeyringWatcher("/etc/backbeat/keyring.json");
 * watcher.addEventListener("reload", (e) => console.log(e.detail.keys));
 * await watcher.start();
 * console.log(watcher.current.size);
 * ```
 */
export class KeyringWatcher extends IsolatedEventTarget<KeyringWatcherEventMap> {
  /** The file watched. */
  readonly path: string;
  #current: Keyring = Keyring.EMPTY;
  #cache = new Map<string, CryptoKey>();
  #debounce: number;
  #sighup: boolean;
  #clock: Clock;
  #watcher: Deno.FsWatcher | undefined;
  #cancelReload: (() => void) | undefined;
  #onSignal: (() => void) | undefined;
  #loop: Promise<void> | undefined;
  #reloading: Promise<boolean> = Promise.resolve(true);
  #closed = false;
  #reloads = 0;
  #failures = 0;

  /**
   * Creates a watcher; {@linkcode KeyringWatcher.start} loads the file and starts watching.
   *
   * @param path The keyring file.
   * @param options Debounce, SIGHUP handling and the clock.
   * @throws {RangeError} On a negative debounce.
   */
  constructor(path: string, options: KeyringWatcherOptions = {}) {
    super();
    this.path = path;
    this.#debounce = options.debounceMs ?? DEFAULT_KEYRING_DEBOUNCE_MS;
    if (!(this.#debounce >= 0)) {
      throw new RangeError(`Invalid debounceMs ${options.debounceMs}: expected a number >= 0`);
    }
    this.#sighup = options.reloadOnSighup ?? true;
    this.#clock = options.clock ?? new SystemClock();
  }

  /** The keyring in force. */
  get current(): Keyring {
    return this.#current;
  }

  /** Successful loads so far (the first load counts). */
  get reloads(): number {
    return this.#reloads;
  }

  /** Failed reloads so far. */
  get failures(): number {
    return this.#failures;
  }

  /**
   * Loads the file for the first time and starts watching.
   *
   * @returns Resolves once the first keyring is in force.
   * @throws {BackbeatError} `key` when the first load fails (a service should not start
   * without its keyring).
   */
  async start(): Promise<void> {
    this.#current = await Keyring.fromFile(this.path, this.#cache);
    this.#reloads++;
    const dir = this.path.includes("/")
      ? this.path.slice(0, this.path.lastIndexOf("/")) || "/"
      : ".";
    const name = this.path.slice(this.path.lastIndexOf("/") + 1);
    // Watch the directory: editors and config tools replace files by rename.
    this.#watcher = Deno.watchFs(dir, { recursive: false });
    const watcher = this.#watcher;
    this.#loop = (async () => {
      try {
        for await (const event of watcher) {
          if (event.paths.some((p) => p.endsWith(`/${name}`) || p === name)) this.#schedule();
        }
      } catch { /* closed */ }
    })();
    if (this.#sighup && Deno.build.os !== "windows") {
      this.#onSignal = () => this.#schedule(0);
      Deno.addSignalListener("SIGHUP", this.#onSignal);
    }
  }

  /**
   * Reloads now.
   *
   * @returns True when the new keyring was loaded, false when the old one was kept.
   */
  reload(): Promise<boolean> {
    this.#reloading = this.#reloading.then(async () => {
      if (this.#closed) return false;
      try {
        // Load into a copy of the cache so a failed load leaves the old cache untouched.
        const cache = new Map(this.#cache);
        const next = await Keyring.fromFile(this.path, cache);
        if (this.#closed) return false;
        this.#cache = cache;
        this.#current = next;
        this.#reloads++;
        this.dispatchEvent(
          new CustomEvent<KeyringReloadDetail>("reload", { detail: { keys: next.size } }),
        );
        return true;
      } catch (error) {
        this.#failures++;
        this.dispatchEvent(
          new ErrorEvent("error", {
            message: `${(error as Error).message}; keeping the previous keyring`,
            error,
          }),
        );
        return false;
      }
    });
    return this.#reloading;
  }

  #schedule(delay = this.#debounce): void {
    if (this.#closed) return;
    this.#cancelReload?.();
    this.#cancelReload = this.#clock.schedule(this.#clock.now() + delay, () => {
      this.#cancelReload = undefined;
      this.reload();
    });
  }

  /**
   * Stops watching and waits for a reload in progress. Idempotent.
   *
   * @returns Resolves once stopped.
   */
  async stop(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#cancelReload?.();
    this.#cancelReload = undefined;
    if (this.#onSignal) Deno.removeSignalListener("SIGHUP", this.#onSignal);
    try {
      this.#watcher?.close();
    } catch { /* already closed */ }
    await this.#loop;
    await this.#reloading;
  }

  /**
   * `await using` support: {@linkcode KeyringWatcher.stop}.
   *
   * @returns Resolves once stopped.
   */
  [Symbol.asyncDispose](): Promise<void> {
    return this.stop();
  }
}

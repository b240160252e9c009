// Which event types have listeners, so the client builds no event nobody listens to. It mirrors
// the EventTarget exactly: an entry per (type, listener, capture) the target holds, dropped when
// the target drops it (removeEventListener, after a `once` listener fired, on signal abort), so it
// never holds more than the target does.

/** One listener as the registry holds it. */
export interface ListenerEntry {
  /** The function or object actually registered with the target (a wrapper for `once`). */
  readonly registered: EventListenerOrEventListenerObject;
  /** Detaches the registry from the listener's AbortSignal. */
  readonly unlink: () => void;
}

/**
 * The listeners of an event target, per type, keyed as EventTarget keys them.
 *
 * @example Record, query, forget
 * ```ts ignore
 * const registry = new ListenerRegistry();
 * const f = () => {};
 * registry.add("beat", f, false, f);
 * console.log(registry.has("beat"), registry.count("beat")); // true 1
 * registry.delete("beat", f, false);
 * console.log(registry.size); // 0
 * ```
 */
export class ListenerRegistry {
  // type -> listener -> [bubble entry, capture entry], as EventTarget keys its listeners.
  readonly #byType = new Map<
    string,
    Map<EventListenerOrEventListenerObject, [ListenerEntry?, ListenerEntry?]>
  >();
  #size = 0;

  /** Entries held, over every type. */
  get size(): number {
    return this.#size;
  }

  /**
   * Whether a type has a listener.
   *
   * @param type The event type.
   * @returns `true` when at least one listener of the type is registered.
   */
  has(type: string): boolean {
    return this.#byType.has(type);
  }

  /**
   * Listeners of a type.
   *
   * @param type The event type.
   * @returns How many (type, listener, capture) registrations the type has.
   */
  count(type: string): number {
    let n = 0;
    for (const slots of this.#byType.get(type)?.values() ?? []) {
      if (slots[0]) n++;
      if (slots[1]) n++;
    }
    return n;
  }

  /**
   * The entry of a registration.
   *
   * @param type The event type.
   * @param listener The listener as the caller gave it.
   * @param capture The capture flag.
   * @returns The entry, or `undefined` when not registered.
   */
  get(
    type: string,
    listener: EventListenerOrEventListenerObject,
    capture: boolean,
  ): ListenerEntry | undefined {
    return this.#byType.get(type)?.get(listener)?.[capture ? 1 : 0];
  }

  /**
   * Records a registration; it is forgotten by itself when `signal` aborts.
   *
   * @param type The event type.
   * @param listener The listener as the caller gave it.
   * @param capture The capture flag.
   * @param registered What was registered with the target in its place.
   * @param signal The listener's AbortSignal.
   */
  add(
    type: string,
    listener: EventListenerOrEventListenerObject,
    capture: boolean,
    registered: EventListenerOrEventListenerObject,
    signal?: AbortSignal,
  ): void {
    this.delete(type, listener, capture);
    let unlink = () => {};
    if (signal) {
      const onAbort = () => this.delete(type, listener, capture, registered);
      signal.addEventListener("abort", onAbort, { once: true });
      unlink = () => signal.removeEventListener("abort", onAbort);
    }
    let byListener = this.#byType.get(type);
    if (!byListener) this.#byType.set(type, byListener = new Map());
    let slots = byListener.get(listener);
    if (!slots) byListener.set(listener, slots = []);
    slots[capture ? 1 : 0] = { registered, unlink };
    this.#size++;
  }

  /**
   * Forgets a registration.
   *
   * @param type The event type.
   * @param listener The listener as the caller gave it.
   * @param capture The capture flag.
   * @param registered Only when this is what the entry registered (a `once` wrapper that fired
   * must not remove the listener added again after it).
   * @returns The entry forgotten, or `undefined`.
   */
  delete(
    type: string,
    listener: EventListenerOrEventListenerObject,
    capture: boolean,
    registered?: EventListenerOrEventListenerObject,
  ): ListenerEntry | undefined {
    const byListener = this.#byType.get(type);
    const slots = byListener?.get(listener);
    const i = capture ? 1 : 0;
    const entry = slots?.[i];
    if (!entry || (registered !== undefined && entry.registered !== registered)) return undefined;
    entry.unlink();
    slots![i] = undefined;
    this.#size--;
    if (!slots![0] && !slots![1]) {
      byListener!.delete(listener);
      if (byListener!.size === 0) this.#byType.delete(type);
    }
    return entry;
  }
}

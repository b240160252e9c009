/**
 * An `EventTarget` with typed events (`EventMap` maps each type to its event class) whose
 * listeners cannot take the process down: in Deno an exception thrown by
 * a listener is an uncaught error that ends the program, which a long-running service must not
 * allow for user code. A throwing listener is caught and handed to
 * {@linkcode IsolatedEventTarget.onListenerError}; the other listeners still run.
 *
 * @example A throwing listener is isolated
 * ```ts
 * import { IsolatedEventTarget } from "@chorus/backbeat";
 * const target = new IsolatedEventTarget();
 * target.addEventListener("beat", () => { throw new Error("bug in user code"); });
 * target.addEventListener("beat", () => console.log("still runs"));
 * target.dispatchEvent(new Event("beat"));
 * console.log(target.listenerErrors); // 1
 * ```
 */
export class IsolatedEventTarget<EventMap extends object = Record<string, Event>>
  extends EventTarget {
  #wrapped = new WeakMap<object, Map<string, EventListener>>();
  #errors = 0;

  /** Listener exceptions caught so far. */
  get listenerErrors(): number {
    return this.#errors;
  }

  /**
   * Adds a listener that is isolated from the others and from the process. The event map types
   * the listener's event, so `e.detail` needs no cast.
   *
   * @param type The event type.
   * @param listener The listener.
   * @param options Standard listener options.
   */
  override addEventListener<K extends keyof EventMap & string>(
    type: K,
    listener: ((event: EventMap[K]) => void) | { handleEvent(event: EventMap[K]): void } | null,
    options?: boolean | AddEventListenerOptions,
  ): void;
  /**
   * Adds a listener for an event type outside the event map.
   *
   * @param type The event type.
   * @param listener The listener.
   * @param options Standard listener options.
   */
  override addEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject | null,
    options?: boolean | AddEventListenerOptions,
  ): void;
  override addEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject | null,
    options?: boolean | AddEventListenerOptions,
  ): void {
    if (listener === null) return;
    super.addEventListener(type, this.#wrap(type, listener, options, true)!, options);
  }

  /**
   * Removes a listener added with {@linkcode IsolatedEventTarget.addEventListener}.
   *
   * @param type The event type.
   * @param listener The listener.
   * @param options Standard listener options.
   */
  override removeEventListener<K extends keyof EventMap & string>(
    type: K,
    listener: ((event: EventMap[K]) => void) | { handleEvent(event: EventMap[K]): void } | null,
    options?: boolean | EventListenerOptions,
  ): void;
  /**
   * Removes a listener for an event type outside the event map.
   *
   * @param type The event type.
   * @param listener The listener.
   * @param options Standard listener options.
   */
  override removeEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject | null,
    options?: boolean | EventListenerOptions,
  ): void;
  override removeEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject | null,
    options?: boolean | EventListenerOptions,
  ): void {
    if (listener === null) return;
    const wrapped = this.#wrap(type, listener, options, false);
    if (wrapped) super.removeEventListener(type, wrapped, options);
  }

  /**
   * Called with what a listener threw. The default writes it to the console; services override
   * it to log through their logger.
   *
   * @param type The event type whose listener threw.
   * @param error What it threw.
   */
  protected onListenerError(type: string, error: unknown): void {
    console.error(`[backbeat] a listener for "${type}" threw:`, error);
  }

  #wrap(
    type: string,
    listener: EventListenerOrEventListenerObject,
    options: boolean | EventListenerOptions | undefined,
    create: boolean,
  ): EventListener | undefined {
    const capture = typeof options === "boolean" ? options : options?.capture ?? false;
    const key = `${capture}:${type}`;
    let byKey = this.#wrapped.get(listener);
    const found = byKey?.get(key);
    if (found || !create) return found;
    const wrapped = (event: Event) => {
      try {
        if (typeof listener === "function") listener.call(this, event);
        else listener.handleEvent(event);
      } catch (error) {
        this.#errors++;
        try {
          this.onListenerError(type, error);
        } catch { /* a failing error hook must not escape either */ }
      }
    };
    if (!byKey) this.#wrapped.set(listener, byKey = new Map());
    byKey.set(key, wrapped);
    return wrapped;
  }
}

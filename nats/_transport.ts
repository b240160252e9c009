// nats.js's Node transport with one fix: a socket error can no longer crash the process.
//
// The stock NodeTransport (@nats-io/transport-node 3.4) calls `socket.removeAllListeners()`
// when it is done with a socket (after the connect, after reading INFO, on close and discard),
// and Node-style sockets throw an `error` event nobody listens to. A socket error already
// scheduled at that moment is then uncaught: after a refused login the server's reset arrives
// as `read ECONNRESET` while nats.js closes the socket, and a server that rejects the client's
// certificate sends its TLS alert right after the handshake callback removed the listeners.
// Both ended pulse with "Uncaught Error: read ECONNRESET" / "received fatal alert". Every socket
// here keeps a no-op error listener that survives `removeAllListeners()`; nats.js's own
// listeners still see every error while they are attached.
//
// Loaded only from _nats_bus.ts (the dynamic-import path).

import type { Socket } from "node:net";
import { connect as tlsConnect, type ConnectionOptions, type TLSSocket } from "node:tls";
import {
  type ConnectionOptions as NatsOptions,
  errors,
  type NatsConnection,
  NatsConnectionImpl,
  type NodeConnectionOptions,
  setTransportFactory,
} from "@nats-io/transport-node";
// Not re-exported by the package's root; the package has no export map, so the file is public.
import { nodeResolveHost, NodeTransport } from "@nats-io/transport-node/lib/node_transport.js";

const guarded = new WeakSet<Socket>();
const ignore = (): void => {};

function guard(socket: Socket): void {
  if (guarded.has(socket)) return;
  guarded.add(socket);
  socket.on("error", ignore);
  const removeAll = socket.removeAllListeners;
  socket.removeAllListeners = function (this: Socket, event?: string | symbol) {
    if (event === undefined) removeAll.call(this);
    else removeAll.call(this, event);
    if (event === undefined || event === "error") this.on("error", ignore);
    return this;
  };
}

class GuardedTransport extends NodeTransport {
  override async dial(hp: { hostname: string; port: number }): Promise<Socket> {
    // The plain socket's listeners are removed in the connect callback, and no I/O event can
    // run between that callback and this continuation (a microtask).
    const socket = await super.dial(hp);
    guard(socket);
    return socket;
  }

  override async tlsFirst(hp: { hostname: string; port: number }): Promise<TLSSocket> {
    // Unused (BACKBEAT never sets tls.handshakeFirst); guarded for completeness.
    const socket = await super.tlsFirst(hp);
    guard(socket);
    return socket;
  }

  // NodeTransport.startTLS, with the guard attached the moment the TLS socket exists: the
  // server's alert can arrive in the same read as the end of the handshake, before any
  // continuation of ours would run. Also, an unauthorized certificate destroys the socket
  // instead of throwing from an event listener (which is uncaught, too).
  override async startTLS(): Promise<TLSSocket> {
    let options: ConnectionOptions = {
      socket: this.socket,
      servername: this.tlsName,
      rejectUnauthorized: true,
    };
    if (typeof this.options.tls === "object" && this.options.tls !== null) {
      let files: ConnectionOptions;
      try {
        // Only `ca`, `cert` and `key`, from the options or their files.
        files = ((await this.loadClientCerts()) ?? {}) as ConnectionOptions;
      } catch (err) {
        throw new errors.ConnectionError((err as Error).message, { cause: err });
      }
      options = { ...options, ...this.options.tls, ...files } as ConnectionOptions;
    }
    return await new Promise<TLSSocket>((resolve, reject) => {
      let failure: Error | undefined;
      let socket: TLSSocket;
      try {
        socket = tlsConnect(options, () => {
          socket.removeAllListeners();
          if (options.rejectUnauthorized !== false && !socket.authorized) {
            const err = socket.authorizationError ??
              new errors.ConnectionError("the server's certificate is not trusted");
            socket.destroy(err);
            reject(err);
            return;
          }
          resolve(socket);
        });
      } catch (err) {
        reject(new errors.ConnectionError((err as Error).message, { cause: err }));
        return;
      }
      guard(socket);
      socket.on("error", (err) => failure = err);
      socket.on("close", () => {
        socket.removeAllListeners();
        reject(failure ?? new errors.ConnectionError("TLS connection closed during the handshake"));
      });
    });
  }
}

/**
 * `connect()` of `@nats-io/transport-node`, on the guarded transport.
 *
 * nats.js keeps one transport factory per process and creates a transport on every dial,
 * reconnects included; the stock `connect()` installs the stock transport again. A process
 * that mixes both (a benchmark's raw baseline) keeps working, only without the guard.
 *
 * @param options nats.js connection options.
 * @returns The connection.
 * @throws {Error} nats.js's errors when the connect fails.
 */
export function connectNats(options: NodeConnectionOptions): Promise<NatsConnection> {
  setTransportFactory({ factory: () => new GuardedTransport(), dnsResolveFn: nodeResolveHost });
  // NodeConnectionOptions is ConnectionOptions with Node-specific TLS fields.
  return NatsConnectionImpl.connect(options as NatsOptions);
}

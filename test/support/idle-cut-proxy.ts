/**
 * A TCP proxy that behaves like a load balancer in front of the API server: it forwards bytes
 * both ways and cuts a connection that has been idle for `idleMs`. `silent` forgets the flow
 * the way a cloud load balancer or a NAT table does: nothing passes any more and neither side is
 * told. `reset` answers with a TCP reset, the way HAProxy or a firewall that rejects does.
 */
import net from 'node:net';

/** How an idle connection is cut. */
export type IdleCut = 'silent' | 'reset';

/** A running proxy; `opened` and `cut` count client connections. */
export interface IdleCutProxy {
  readonly port: number;
  readonly opened: number;
  readonly cut: number;
  close(): Promise<void>;
}

/** Starts a proxy on 127.0.0.1 to `target` that cuts connections idle for `idleMs`. */
export async function startIdleCutProxy(
  target: { host: string; port: number },
  idleMs: number,
  how: IdleCut,
): Promise<IdleCutProxy> {
  let opened = 0;
  let cut = 0;
  const open = new Set<net.Socket>();
  const server = net.createServer((client) => {
    opened++;
    const upstream = net.connect(target.port, target.host);
    open.add(client).add(upstream);
    let last = Date.now();
    let dropped = false;
    const forward = (from: net.Socket, to: net.Socket) =>
      from.on('data', (chunk: Buffer) => {
        if (dropped) return;
        last = Date.now();
        to.write(chunk);
      });
    forward(client, upstream);
    forward(upstream, client);
    const watchIdle = setInterval(
      () => {
        if (dropped || Date.now() - last < idleMs) return;
        cut++;
        if (how === 'reset') {
          client.resetAndDestroy();
          upstream.destroy();
        } else {
          dropped = true;
        }
      },
      Math.max(20, idleMs / 10),
    );
    const gone = (s: net.Socket) => {
      open.delete(s);
      s.destroy();
    };
    client
      .on('error', () => undefined)
      .on('close', () => {
        clearInterval(watchIdle);
        gone(client);
        gone(upstream);
      });
    // A forgotten flow does not pass the server's close on to the client either.
    upstream
      .on('error', () => undefined)
      .on('close', () => {
        gone(upstream);
        if (!dropped) gone(client);
      });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  return {
    port: (server.address() as net.AddressInfo).port,
    get opened() {
      return opened;
    },
    get cut() {
      return cut;
    },
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of open) s.destroy();
        server.close(() => resolve());
      }),
  };
}

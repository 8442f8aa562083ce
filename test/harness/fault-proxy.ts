// A TCP proxy on loopback between a client and a real server that can misbehave on purpose: slow
// responses down, stall them after N bytes, or reset connections. Everything else is the real server.
import net from 'node:net';

export interface FaultMode {
  /** Throttle server-to-client bytes to about this rate. */
  bytesPerSecond?: number;
  /** Forward this many server-to-client bytes per connection, then go silent (connection stays open). */
  stallAfterBytes?: number;
  /** Forward this many server-to-client bytes per connection, then reset it. */
  resetAfterBytes?: number;
}

export interface FaultProxy {
  url: string;
  port: number;
  mode: FaultMode;
  /** Connections accepted so far. */
  connections(): number;
  stop(): Promise<void>;
}

export async function startFaultProxy(target: { host: string; port: number }, mode: FaultMode = {}): Promise<FaultProxy> {
  const sockets = new Set<net.Socket>();
  let accepted = 0;
  const proxy: FaultProxy = { url: '', port: 0, mode, connections: () => accepted, stop: async () => undefined };
  const server = net.createServer((client) => {
    accepted++;
    const upstream = net.connect(target.port, target.host);
    sockets.add(client).add(upstream);
    let forwarded = 0;
    const close = () => {
      client.destroy();
      upstream.destroy();
      sockets.delete(client);
      sockets.delete(upstream);
    };
    client.on('error', close).on('close', close);
    upstream.on('error', close).on('close', close);
    client.pipe(upstream);
    upstream.on('data', (chunk: Buffer) => {
      const { stallAfterBytes, resetAfterBytes, bytesPerSecond } = proxy.mode;
      const limit = Math.min(stallAfterBytes ?? Infinity, resetAfterBytes ?? Infinity);
      const allowed = Math.max(0, Math.min(chunk.length, limit - forwarded));
      if (allowed > 0) client.write(chunk.subarray(0, allowed));
      forwarded += allowed;
      if (forwarded >= limit) {
        upstream.pause();
        if (resetAfterBytes !== undefined && forwarded >= resetAfterBytes) client.resetAndDestroy();
        return;
      }
      if (bytesPerSecond) {
        upstream.pause();
        setTimeout(() => upstream.resume(), Math.ceil((allowed / bytesPerSecond) * 1000));
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  server.unref();
  proxy.port = (server.address() as net.AddressInfo).port;
  proxy.url = `http://127.0.0.1:${proxy.port}`;
  proxy.stop = async () => {
    for (const socket of sockets) socket.destroy();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  };
  return proxy;
}

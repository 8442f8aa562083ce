// nginx serving a directory of static files: the benchmark's "physical limit" for serving stored
// bytes from this machine's disk and loopback, to compare the mirror against.
import { randomUUID } from 'node:crypto';
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { freePort, httpRequest, isAddressInUse, makeTempDir, spawnServer, type ServerProcess } from './process.ts';

export interface NginxServer {
  url: string;
  port: number;
  root: string;
  configFile: string;
  process: ServerProcess;
  stop(): Promise<void>;
}

export interface StartNginxOptions {
  /** Directory served at / (files only; no listing). */
  root: string;
  port?: number;
  /** Default: one per CPU, as a tuned production nginx would run. */
  workers?: number | 'auto';
  /** Write an access log to <tempdir>/access.log (off by default: it costs throughput). */
  accessLog?: boolean;
}

export async function startNginx(opts: StartNginxOptions): Promise<NginxServer> {
  // a port from freePort can still be taken by another process before nginx binds it
  for (let attempt = 1; ; attempt++) {
    try {
      return await startNginxOnce(opts);
    } catch (error) {
      if (opts.port !== undefined || attempt >= 3 || !isAddressInUse(error)) throw error;
    }
  }
}

async function startNginxOnce(opts: StartNginxOptions): Promise<NginxServer> {
  const dir = await makeTempDir('nginx');
  const port = opts.port ?? (await freePort());
  const temp = path.join(dir, 'temp');
  await mkdir(temp);
  const configFile = path.join(dir, 'nginx.conf');
  const instance = randomUUID(); // tells this nginx's answers from those of whatever else may hold the port
  const q = (value: string): string => JSON.stringify(value); // nginx accepts double-quoted strings
  await writeFile(
    configFile,
    `
# runs as root: the default worker user (nobody) cannot read 0700 temp dirs from makeTempDir
user root;
worker_processes ${opts.workers ?? 'auto'};
daemon off;
pid ${q(path.join(dir, 'nginx.pid'))};
error_log stderr warn;
events { worker_connections 4096; }
http {
  # the package's defaults point at /var/lib/nginx and /var/log/nginx
  client_body_temp_path ${q(path.join(temp, 'body'))};
  proxy_temp_path ${q(path.join(temp, 'proxy'))};
  fastcgi_temp_path ${q(path.join(temp, 'fastcgi'))};
  uwsgi_temp_path ${q(path.join(temp, 'uwsgi'))};
  scgi_temp_path ${q(path.join(temp, 'scgi'))};
  access_log ${opts.accessLog ? q(path.join(dir, 'access.log')) : 'off'};
  default_type application/octet-stream;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 100000;
  server {
    listen 127.0.0.1:${port};
    root ${q(opts.root)};
    add_header X-Regmirror-Harness ${instance} always;
    location / { }
  }
}
`,
  );
  const server = await spawnServer('nginx', ['-c', configFile, '-p', dir, '-e', 'stderr'], {
    logFile: path.join(dir, 'nginx.log'),
    ready: async () => (await httpRequest(`http://127.0.0.1:${port}/`)).headers['x-regmirror-harness'] === instance,
  });
  return {
    url: `http://127.0.0.1:${port}`,
    port,
    root: opts.root,
    configFile,
    process: server,
    // SIGQUIT is nginx's graceful stop; its workers are in its process group
    stop: () => server.stop('SIGQUIT'),
  };
}

// regmirror's own mirror for tests: in-process (fast, with an injectable clock and timeouts) or as
// a child process running `regmirror mirror --config FILE` exactly as users do (for kill -9, SIGTERM).
import { readdir, stat, writeFile } from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { stringify } from 'yaml';
import { createLogger } from '../../common/logger.ts';
import { createMirror, type Mirror } from '../../mirror/app.ts';
import { resolveConfig, type MirrorConfigFile } from '../../mirror/config.ts';
import { HEARTBEAT_FILE } from '../../mirror/store.ts';
import type { UpstreamTimeouts } from '../../mirror/upstream.ts';
import { launcherEnv } from './compiled.ts';
import { freePort, httpRequest, makeTempDir, spawnServer, type ServerProcess } from './process.ts';

export interface TestMirrorOptions {
  upstreams: NonNullable<MirrorConfigFile['upstreams']>;
  default?: string;
  storagePath?: string;
  /** Any other config file keys (auth, storage.maxSize, ...); storage.path comes from storagePath. */
  extra?: Partial<Omit<MirrorConfigFile, 'storage'>> & { storage?: Partial<MirrorConfigFile['storage']> };
  now?: () => number;
  timeouts?: Partial<UpstreamTimeouts>;
  /** In-process mirrors only: how soon repository links are pruned after content was removed. */
  linksPruneDelayMs?: number;
  /** In-process mirrors only: tag records kept in memory (20k by default). */
  tagMemoryLimit?: number;
  /** In-process mirrors only: how long a blob response may take no bytes while some wait for it (60 s by default). */
  sendTimeoutMs?: number;
  /** In-process mirrors only: how often the store's heartbeat is touched and tmp/ swept (30 s by default). */
  heartbeatMs?: number;
  logLevel?: string;
}

export interface TestMirror {
  url: string;
  /** 127.0.0.1:PORT */
  host: string;
  port: number;
  storagePath: string;
  mirror: Mirror;
  stop(): Promise<void>;
}

async function configFor(opts: TestMirrorOptions, port: number): Promise<MirrorConfigFile> {
  const storagePath = opts.storagePath ?? path.join(await makeTempDir('mirror-store'), 'data');
  return {
    listen: `127.0.0.1:${port}`,
    upstreams: opts.upstreams,
    ...(opts.default ? { default: opts.default } : {}),
    log: { level: opts.logLevel ?? process.env.REGMIRROR_TEST_LOG ?? 'silent' },
    ...opts.extra,
    storage: { ...opts.extra?.storage, path: storagePath },
  };
}

/** A mirror in this process, on 127.0.0.1 and a free port. */
export async function startTestMirror(opts: TestMirrorOptions): Promise<TestMirror> {
  const port = await freePort();
  const file = await configFor(opts, port);
  const config = resolveConfig(file, 'test mirror config');
  const mirror = await createMirror(config, {
    logger: createLogger('regmirror-mirror', config.logLevel),
    ...(opts.now ? { now: opts.now } : {}),
    ...(opts.timeouts ? { timeouts: opts.timeouts } : {}),
    ...(opts.linksPruneDelayMs !== undefined ? { linksPruneDelayMs: opts.linksPruneDelayMs } : {}),
    ...(opts.tagMemoryLimit !== undefined ? { tagMemoryLimit: opts.tagMemoryLimit } : {}),
    ...(opts.sendTimeoutMs !== undefined ? { sendTimeoutMs: opts.sendTimeoutMs } : {}),
    ...(opts.heartbeatMs !== undefined ? { heartbeatMs: opts.heartbeatMs } : {}),
  });
  const url = await mirror.listen();
  return { url, host: `127.0.0.1:${port}`, port, storagePath: config.storage.path, mirror, stop: () => mirror.close(2_000) };
}

export interface MirrorProcess {
  url: string;
  host: string;
  port: number;
  storagePath: string;
  configFile: string;
  process: ServerProcess;
}

/**
 * `node bin/regmirror.ts mirror --config FILE` as a child process; with `launcher` (from
 * buildCompiled in compiled.ts), that launcher instead: the compiled programs, as the image runs them.
 */
export async function startMirrorProcess(opts: TestMirrorOptions & { port?: number; /** More flags after --config FILE. */ args?: string[]; launcher?: string; /** More environment variables for the mirror (NODE_EXTRA_CA_CERTS, for one). */ env?: Record<string, string> }): Promise<MirrorProcess> {
  const port = opts.port ?? (await freePort());
  const file = await configFor({ ...opts, logLevel: opts.logLevel ?? 'info' }, port);
  const dir = await makeTempDir('mirror-config');
  const configFile = path.join(dir, 'config.yaml');
  await writeFile(configFile, stringify(file));
  const root = path.resolve(import.meta.dirname, '../..');
  const programArgs = ['mirror', '--config', configFile, ...(opts.args ?? [])];
  const [command, args, env] = opts.launcher
    ? ['sh', [opts.launcher, ...programArgs], { ...launcherEnv(), ...opts.env }]
    : [process.execPath, [path.join(root, 'bin/regmirror.ts'), ...programArgs], { ...process.env, ...opts.env }];
  const child = await spawnServer(command, args, {
    env,
    cwd: root,
    logFile: path.join(dir, 'mirror.log'),
    // with tls: the port taking connections (the test's certificate is not one the probe trusts)
    ready: opts.extra?.tls ? () => acceptsConnections(port) : async () => (await httpRequest(`http://127.0.0.1:${port}/healthz`)).status === 200,
  });
  const scheme = opts.extra?.tls ? 'https' : 'http';
  return { url: `${scheme}://127.0.0.1:${port}`, host: `127.0.0.1:${port}`, port, storagePath: file.storage.path, configFile, process: child };
}

function acceptsConnections(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect(port, '127.0.0.1', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });
}

/** Temporary files (downloads, manifests and tag records being written) under a store's tmp/, every process's, with their sizes: not the heartbeats. */
export async function temporaryFiles(storagePath: string): Promise<{ path: string; size: number }[]> {
  const tmp = path.join(storagePath, 'tmp');
  const found: { path: string; size: number }[] = [];
  for (const name of await readdir(tmp, { recursive: true }).catch(() => [] as string[])) {
    if (path.basename(name) === HEARTBEAT_FILE) continue;
    const info = await stat(path.join(tmp, name)).catch(() => undefined);
    if (info?.isFile()) found.push({ path: name, size: info.size });
  }
  return found;
}

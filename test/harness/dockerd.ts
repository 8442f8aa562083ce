// A node running Docker Engine (dockerd 20.10, Debian's docker.io) with every path under a temp
// dir and nothing that touches the host's network, so several can run in one test run.
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { readFileSync, rmSync } from 'node:fs';
import path from 'node:path';
import { httpRequest, makeTempDir, registerExitCleanup, runCommand, spawnServer, unmountUnder, type CommandResult, type ServerProcess } from './process.ts';

export interface Dockerd {
  /** Path of the API socket. */
  socket: string;
  /** unix://<socket>, for DOCKER_HOST. */
  host: string;
  /** Path of daemon.json (dockerd runs with --config-file daemon.json). */
  daemonJson: string;
  /** dockerd's pid while it runs (changes after start()). */
  pid: number;
  dataRoot: string;
  execRoot: string;
  /** Runs the docker CLI against this daemon, with its own client config dir. */
  docker(args: string[], opts?: { env?: NodeJS.ProcessEnv }): Promise<CommandResult>;
  /** `docker pull ref`; throws with the CLI's output on failure. */
  pull(ref: string): Promise<void>;
  /** GET /info from the Engine API. */
  info(): Promise<Record<string, unknown>>;
  readDaemonJson(): Promise<Record<string, unknown>>;
  /** Replaces daemon.json with these keys merged over the safe ones (then call reload()). */
  writeDaemonJson(keys: Record<string, unknown>): Promise<void>;
  /** SIGHUP: dockerd re-reads daemon.json (registry-mirrors among others). */
  reload(): void;
  output(): string;
  stop(): Promise<void>;
  kill9(): Promise<void>;
  /**
   * Starts again after stop() or kill9() with the same daemon.json and data (and flags, unless
   * new ones are given); throws with dockerd's output when it does not come up.
   */
  start(opts?: { flags?: string[] }): Promise<void>;
}

export interface StartDockerdOptions {
  /** Keys for daemon.json (registry-mirrors, ...), merged over the safe keys. */
  daemonJson?: Record<string, unknown>;
  /** Command-line flags after `--config-file daemon.json` (as a systemd ExecStart adds them). */
  flags?: string[];
  timeoutMs?: number;
}

/**
 * dockerd SIGKILLed leaves exec-root/containerd/containerd.pid naming its managed containerd; a
 * new dockerd trusts that file while the pid exists (even as a zombie not yet reaped) and then
 * waits in vain for the old socket. Kill what is left and drop the file.
 */
function clearStaleContainerd(execRoot: string): void {
  const pidFile = path.join(execRoot, 'containerd', 'containerd.pid');
  let pid: number;
  try {
    pid = Number(readFileSync(pidFile, 'utf8').trim());
  } catch {
    return;
  }
  try {
    if (pid > 0 && readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes(execRoot)) process.kill(pid, 'SIGKILL');
  } catch {
    // gone already
  }
  rmSync(pidFile, { force: true });
}

export async function startDockerd(opts: StartDockerdOptions = {}): Promise<Dockerd> {
  const dir = await makeTempDir('dockerd');
  const dataRoot = path.join(dir, 'data');
  const execRoot = path.join(dir, 'exec');
  const socket = path.join(dir, 'docker.sock');
  const daemonJson = path.join(dir, 'daemon.json');
  const clientConfig = path.join(dir, 'client');
  await mkdir(clientConfig);
  const safeKeys = {
    // no iptables rules, no bridge, no ip_forward/masquerade sysctls: the host's network stays as it was
    iptables: false,
    ip6tables: false,
    'ip-forward': false,
    'ip-masq': false,
    bridge: 'none',
    // vfs needs no kernel support (overlay inside this machine's filesystem is not guaranteed)
    'storage-driver': 'vfs',
    'data-root': dataRoot,
    'exec-root': execRoot,
    pidfile: path.join(dir, 'dockerd.pid'),
    hosts: [`unix://${socket}`],
    // 20.10 writes its legacy trust key to /etc/docker/key.json unless told otherwise (no such flag, only this key)
    'deprecated-key-path': path.join(dir, 'key.json'),
  };
  const writeDaemonJson = async (keys: Record<string, unknown>): Promise<void> => {
    await writeFile(daemonJson, JSON.stringify({ ...safeKeys, ...keys }, null, 2));
  };
  await writeDaemonJson(opts.daemonJson ?? {});
  // dockerd bind-mounts data-root onto itself (and network namespaces under exec-root once
  // containers ran) and leaves those mounts behind when it is killed
  const unregister = registerExitCleanup(() => unmountUnder(dir));

  const env = { ...process.env, DOCKER_HOST: `unix://${socket}`, DOCKER_CONFIG: clientConfig };
  let server: ServerProcess | undefined;
  let earlierOutput = '';
  let flags = opts.flags ?? [];
  const start = async (startOpts: { flags?: string[] } = {}): Promise<void> => {
    if (server && !server.exitStatus()) return;
    flags = startOpts.flags ?? flags;
    if (server) earlierOutput += server.output();
    unmountUnder(dir);
    clearStaleContainerd(execRoot);
    server = await spawnServer(
      'dockerd',
      ['--config-file', daemonJson, ...flags],
      {
        env,
        logFile: path.join(dir, 'dockerd.log'),
        timeoutMs: opts.timeoutMs ?? 30_000,
        ready: async () => (await httpRequest('http://docker/_ping', { socketPath: socket })).status === 200,
      },
    );
    dockerd.pid = server.pid;
  };
  const afterExit = (): void => unmountUnder(dir);

  const dockerd: Dockerd = {
    socket,
    host: `unix://${socket}`,
    daemonJson,
    pid: 0,
    dataRoot,
    execRoot,
    docker: (args, dockerOpts = {}) => runCommand('docker', args, { env: { ...env, ...dockerOpts.env }, timeoutMs: 300_000 }),
    async pull(ref) {
      const result = await dockerd.docker(['pull', ref]);
      if (result.code !== 0) throw new Error(`docker pull ${ref} failed (${result.code}):\n${result.stderr}${result.stdout.slice(-2000)}`);
    },
    async info() {
      const res = await httpRequest('http://docker/info', { socketPath: socket });
      if (res.status !== 200) throw new Error(`GET /info answered ${res.status}`);
      return JSON.parse(res.body.toString()) as Record<string, unknown>;
    },
    readDaemonJson: async () => JSON.parse(await readFile(daemonJson, 'utf8')) as Record<string, unknown>,
    writeDaemonJson,
    reload: () => server?.signal('SIGHUP'),
    output: () => earlierOutput + (server?.output() ?? ''),
    async stop() {
      await server?.stop();
      afterExit();
    },
    async kill9() {
      await server?.kill9();
      afterExit();
    },
    start,
  };
  try {
    await start();
  } catch (error) {
    afterExit();
    unregister();
    throw error;
  }
  return dockerd;
}

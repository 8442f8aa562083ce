// Process basics for the real-component harness: free ports, temporary directories, servers that
// are started, probed until ready, stopped, and never outlive the test process.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createWriteStream, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync, type WriteStream } from 'node:fs';
import { mkdtemp } from 'node:fs/promises';
import http from 'node:http';
import https from 'node:https';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';

// ---------------------------------------------------------------------------------------------
// Cleanup at exit: every child is SIGKILLed (with its process group) and every temp dir removed.

const liveGroups = new Set<number>();
const tempDirs = new Set<string>();
const exitCleanups = new Set<() => void>();
let hooksInstalled = false;

function killGroup(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(-pid, signal);
  } catch {
    try {
      process.kill(pid, signal);
    } catch {
      // already gone
    }
  }
}

function cleanupSync(): void {
  for (const pid of liveGroups) killGroup(pid, 'SIGKILL');
  liveGroups.clear();
  for (const cleanup of exitCleanups) {
    try {
      cleanup();
    } catch {
      // keep going: the rest still has to be cleaned
    }
  }
  exitCleanups.clear();
  for (const dir of tempDirs) {
    try {
      rmSync(dir, { recursive: true, force: true, maxRetries: 3 });
      rmSync(path.join(OWNERS_DIR, path.basename(dir)), { force: true });
    } catch {
      // a mount or a busy file must not hide the test's own result
    }
  }
  tempDirs.clear();
}

function installExitHooks(): void {
  if (hooksInstalled) return;
  hooksInstalled = true;
  process.once('exit', cleanupSync);
  for (const [signal, code] of [['SIGINT', 130], ['SIGTERM', 143], ['SIGHUP', 129]] as const) {
    process.once(signal, () => {
      cleanupSync();
      process.exit(code);
    });
  }
}

/**
 * Registers synchronous work for exit, run after servers are killed and before temp dirs are
 * removed (unmounting what a killed daemon left mounted, for example). Returns an unregister function.
 */
export function registerExitCleanup(cleanup: () => void): () => void {
  installExitHooks();
  exitCleanups.add(cleanup);
  return () => exitCleanups.delete(cleanup);
}

/**
 * Stops every server this process started and removes every temp dir made by makeTempDir.
 * Runs by itself at exit; call it from an `after()` hook to reclaim disk between test files.
 */
export async function cleanupAll(): Promise<void> {
  cleanupSync();
}

// ---------------------------------------------------------------------------------------------

const portsHandedOut = new Set<number>();

/**
 * A TCP port on 127.0.0.1 that was free a moment ago (the kernel picked it). Never the same port
 * twice in one process, so servers started side by side do not race for it.
 */
export async function freePort(): Promise<number> {
  for (let attempt = 0; attempt < 20; attempt++) {
    const port = await new Promise<number>((resolve, reject) => {
      const server = net.createServer();
      server.unref();
      server.on('error', reject);
      server.listen(0, '127.0.0.1', () => {
        const address = server.address();
        const port = typeof address === 'object' && address ? address.port : 0;
        server.close(() => (port ? resolve(port) : reject(new Error('freePort: no port assigned'))));
      });
    });
    if (!portsHandedOut.has(port)) {
      portsHandedOut.add(port);
      return port;
    }
  }
  throw new Error('freePort: the kernel kept handing out ports already given to this process');
}

/** True when a server's start failed only because its port was taken meanwhile (retry on another). */
export function isAddressInUse(error: unknown): boolean {
  return /address already in use|EADDRINUSE|bind\(\) to .* failed \(98/i.test(String(error));
}

// A temp dir's owner (pid and process start time, which survives pid reuse) is recorded beside
// it, so dirs left by a test process that was SIGKILLed are swept by the next one.
const OWNERS_DIR = path.join(os.tmpdir(), 'regmirror-owners');
let ownerTag: string | undefined;
let swept = false;

function processStartTime(pid: number): string | undefined {
  try {
    // field 22 of /proc/PID/stat, counted after the parenthesised command name
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19];
  } catch {
    return undefined;
  }
}

/** Lazily unmounts every mount at or below `dir`, deepest first (what a killed daemon left behind). */
export function unmountUnder(dir: string): void {
  let mounts: string[] = [];
  try {
    mounts = readFileSync('/proc/self/mountinfo', 'utf8').split('\n').map((line) => line.split(' ')[4] ?? '');
  } catch {
    return;
  }
  for (const mount of mounts.filter((m) => m === dir || m.startsWith(`${dir}/`)).sort().reverse()) {
    spawnSync('umount', ['-l', mount], { stdio: 'ignore' });
  }
}

/** Removes temp dirs whose owning test process is gone; runs by itself once per process. */
export function sweepOrphanedTempDirs(): void {
  swept = true;
  let owners: string[] = [];
  try {
    owners = readdirSync(OWNERS_DIR);
  } catch {
    return;
  }
  for (const name of owners) {
    try {
      const [pid, started] = readFileSync(path.join(OWNERS_DIR, name), 'utf8').split(':');
      if (processStartTime(Number(pid)) === started) continue; // its owner still runs
      const dir = path.join(os.tmpdir(), name);
      unmountUnder(dir);
      rmSync(dir, { recursive: true, force: true, maxRetries: 3 });
      rmSync(path.join(OWNERS_DIR, name), { force: true });
    } catch {
      // another process may be sweeping the same dir
    }
  }
}

function registerTempDir(dir: string): void {
  installExitHooks();
  ownerTag ??= `${process.pid}:${processStartTime(process.pid) ?? ''}`;
  mkdirSync(OWNERS_DIR, { recursive: true });
  writeFileSync(path.join(OWNERS_DIR, path.basename(dir)), ownerTag);
  tempDirs.add(dir);
}

function tempDirPrefix(prefix: string): string {
  if (!swept) sweepOrphanedTempDirs();
  return path.join(os.tmpdir(), `regmirror-${prefix.replace(/[^A-Za-z0-9_.-]/g, '-')}-`);
}

/**
 * A fresh directory under os.tmpdir(); removed when the test process exits (or by cleanupAll),
 * or, if the process is SIGKILLed, by the next test process that makes a temp dir.
 */
export async function makeTempDir(prefix: string): Promise<string> {
  const dir = await mkdtemp(tempDirPrefix(prefix));
  registerTempDir(dir);
  return dir;
}

/** Synchronous twin of makeTempDir for places that cannot await. */
export function makeTempDirSync(prefix: string): string {
  const dir = mkdtempSync(tempDirPrefix(prefix));
  registerTempDir(dir);
  return dir;
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Polls `condition` until it returns true; throws after timeoutMs naming `what`. */
export async function waitFor(
  condition: () => Promise<boolean> | boolean,
  opts: { timeoutMs?: number; intervalMs?: number; what?: string } = {},
): Promise<void> {
  const timeoutMs = opts.timeoutMs ?? 10_000;
  const intervalMs = opts.intervalMs ?? 50;
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    let ok = false;
    try {
      ok = await condition();
    } catch {
      ok = false;
    }
    if (ok) return;
    if (Date.now() >= deadline) throw new Error(`timed out after ${timeoutMs}ms waiting for ${opts.what ?? 'condition'}`);
    await sleep(intervalMs);
  }
}

// ---------------------------------------------------------------------------------------------
// One-shot commands (skopeo, ctr, docker): bounded in time, output collected.

export interface CommandResult {
  stdout: string;
  stderr: string;
  code: number;
}

export async function runCommand(
  cmd: string,
  args: string[],
  opts: { env?: NodeJS.ProcessEnv; cwd?: string; timeoutMs?: number; input?: string } = {},
): Promise<CommandResult> {
  installExitHooks();
  const timeoutMs = opts.timeoutMs ?? 120_000;
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { env: opts.env ?? process.env, cwd: opts.cwd, stdio: [opts.input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout?.on('data', (b: Buffer) => out.push(b));
    child.stderr?.on('data', (b: Buffer) => err.push(b));
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`${cmd} ${args.join(' ')}: timed out after ${timeoutMs}ms\n${Buffer.concat(err).toString()}`));
    }, timeoutMs);
    child.on('error', (error) => {
      clearTimeout(timer);
      reject(error);
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ stdout: Buffer.concat(out).toString(), stderr: Buffer.concat(err).toString(), code: code ?? (signal ? 128 : 1) });
    });
    if (child.stdin) {
      child.stdin.on('error', () => undefined); // a command that exits without reading its input
      child.stdin.end(opts.input);
    }
  });
}

// ---------------------------------------------------------------------------------------------
// Minimal HTTP client for probes: no keep-alive (nothing left open to hold the test process).

export interface HttpResponse {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: Buffer;
}

export async function httpRequest(
  url: string,
  opts: {
    method?: string;
    headers?: Record<string, string>;
    /** A Readable is streamed (set content-length in headers for registries that need it). */
    body?: string | Buffer | Readable;
    socketPath?: string;
    timeoutMs?: number;
    /** PEM CA to trust for https:// URLs (the harness's self-signed certificates). */
    ca?: string | Buffer;
  } = {},
): Promise<HttpResponse> {
  const target = new URL(url);
  const secure = target.protocol === 'https:';
  return new Promise((resolve, reject) => {
    const options: https.RequestOptions = {
      host: target.hostname,
      port: target.port || (secure ? 443 : 80),
      path: target.pathname + target.search,
      method: opts.method ?? 'GET',
      headers: opts.headers,
      socketPath: opts.socketPath,
      agent: false,
      timeout: opts.timeoutMs ?? 5_000,
      ...(secure && opts.ca ? { ca: opts.ca } : {}),
    };
    const onResponse = (res: http.IncomingMessage): void => {
      const chunks: Buffer[] = [];
      res.on('data', (b: Buffer) => chunks.push(b));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) }));
      res.on('error', reject);
    };
    const req = secure ? https.request(options, onResponse) : http.request(options, onResponse);
    req.on('timeout', () => req.destroy(new Error(`${opts.method ?? 'GET'} ${url}: timed out`)));
    req.on('error', reject);
    if (opts.body instanceof Readable) {
      opts.body.on('error', (error) => req.destroy(error));
      opts.body.pipe(req);
    } else req.end(opts.body);
  });
}

// ---------------------------------------------------------------------------------------------
// Long-running servers.

export interface ServerProcess {
  pid: number;
  /** Sends `signal` (SIGTERM by default), waits for exit (SIGKILL after 10 s), then kills what is left of its process group. */
  stop(signal?: NodeJS.Signals): Promise<void>;
  /** SIGKILL to the whole process group, as a crash or OOM kill would. */
  kill9(): Promise<void>;
  /** Sends a signal without waiting (SIGHUP to reload dockerd, for example). */
  signal(signal: NodeJS.Signals): void;
  /** stdout and stderr interleaved as they arrived (the last 8 MiB). */
  output(): string;
  /** Exit code or signal once the process has exited; undefined while it runs. */
  exitStatus(): { code: number | null; signal: NodeJS.Signals | null } | undefined;
}

const OUTPUT_CAP = 8 * 1024 * 1024;
const STOP_GRACE_MS = 10_000;

export async function spawnServer(
  cmd: string,
  args: string[],
  opts: {
    ready: () => Promise<boolean>;
    env?: NodeJS.ProcessEnv;
    cwd?: string;
    timeoutMs?: number;
    logFile?: string;
    /** Called with every complete line of stdout and of stderr, however long the server runs. */
    onLine?: (line: string, stream: 'stdout' | 'stderr') => void;
  },
): Promise<ServerProcess> {
  installExitHooks();
  // setpriv --pdeathsig: the kernel kills the server if this process dies without running its exit
  // hooks (SIGKILL, OOM); detached puts it in its own process group so its children go with it.
  const child: ChildProcess = spawn('setpriv', ['--pdeathsig', 'SIGKILL', '--', cmd, ...args], {
    env: opts.env ?? process.env,
    cwd: opts.cwd,
    detached: true,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const pid = child.pid;
  if (pid === undefined) {
    const error = await new Promise<Error>((resolve) => child.once('error', resolve));
    throw new Error(`spawnServer ${cmd}: ${error.message}`);
  }
  liveGroups.add(pid);
  // Unreferenced: a test that forgets stop() still exits, and the exit hook kills the server.
  child.unref();

  let chunks: Buffer[] = [];
  let bytes = 0;
  let log: WriteStream | undefined;
  if (opts.logFile) log = createWriteStream(opts.logFile, { flags: 'a' });
  const collect = (data: Buffer | string): void => {
    const b = typeof data === 'string' ? Buffer.from(data) : data;
    chunks.push(b);
    bytes += b.length;
    if (bytes > OUTPUT_CAP * 2) {
      const all = Buffer.concat(chunks).subarray(-OUTPUT_CAP);
      chunks = [all];
      bytes = all.length;
    }
    log?.write(b);
  };
  for (const [name, stream] of [['stdout', child.stdout], ['stderr', child.stderr]] as const) {
    stream?.on('data', collect);
    if (opts.onLine) {
      const onLine = opts.onLine;
      let partial = '';
      stream?.setEncoding('utf8');
      stream?.on('data', (text: string) => {
        const lines = (partial + text).split('\n');
        partial = lines.pop() ?? '';
        for (const line of lines) onLine(line, name);
      });
      stream?.on('end', () => {
        if (partial) onLine(partial, name);
        partial = '';
      });
    }
    (stream as net.Socket | null)?.unref();
  }

  let status: { code: number | null; signal: NodeJS.Signals | null } | undefined;
  const exited = new Promise<void>((resolve) => {
    child.once('exit', (code, signal) => {
      status = { code, signal };
      liveGroups.delete(pid);
      // leftovers in the group (dockerd's containerd, for example) go with the leader
      killGroup(pid, 'SIGKILL');
      resolve();
    });
  });

  const output = (): string => Buffer.concat(chunks).toString();

  const waitExit = async (ms: number): Promise<boolean> => {
    if (status) return true;
    let timer: NodeJS.Timeout | undefined;
    const timedOut = new Promise<false>((resolve) => (timer = setTimeout(() => resolve(false), ms)));
    const result = await Promise.race([exited.then(() => true as const), timedOut]);
    clearTimeout(timer);
    return result;
  };

  const closeLog = async (): Promise<void> => {
    // let the pipes drain into the log before closing it
    await new Promise<void>((resolve) => setImmediate(resolve));
    if (log) await new Promise<void>((resolve) => log!.end(resolve));
    log = undefined;
  };

  const server: ServerProcess = {
    pid,
    async stop(signal: NodeJS.Signals = 'SIGTERM') {
      if (!status) {
        try {
          process.kill(pid, signal);
        } catch {
          // exited between the check and the kill
        }
        if (!(await waitExit(STOP_GRACE_MS))) {
          killGroup(pid, 'SIGKILL');
          await waitExit(STOP_GRACE_MS);
        }
      }
      await closeLog();
    },
    async kill9() {
      if (!status) {
        killGroup(pid, 'SIGKILL');
        await waitExit(STOP_GRACE_MS);
      }
      await closeLog();
    },
    signal(signal: NodeJS.Signals) {
      if (!status) process.kill(pid, signal);
    },
    output,
    exitStatus: () => status,
  };

  const timeoutMs = opts.timeoutMs ?? 20_000;
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (status) {
      await closeLog();
      throw new Error(`${cmd} exited (${status.code ?? status.signal}) before it was ready:\n${output().slice(-4000)}`);
    }
    let ok = false;
    try {
      ok = await opts.ready();
    } catch {
      ok = false;
    }
    if (ok) return server;
    if (Date.now() >= deadline) {
      await server.kill9();
      throw new Error(`${cmd} was not ready after ${timeoutMs}ms:\n${output().slice(-4000)}`);
    }
    await sleep(50);
  }
}

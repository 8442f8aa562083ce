// A real Kubernetes API for tests, like controller-runtime's envtest: etcd and kube-apiserver (and,
// when asked, kube-controller-manager) on 127.0.0.1, no kubelet and no nodes. Binaries come from
// test/kube/binaries.ts; see test/kube/README.md.
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { closeSync, openSync, readFileSync, rmSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { request } from 'node:https';
import { request as httpRequest } from 'node:http';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { KubeConfig } from '@kubernetes/client-node';
import { stringify } from 'yaml';
import { KUBE_BUILD_COMMAND, type KubeBinary, kubeBinariesStatus, kubeBinaryPath } from './binaries.ts';
import { base64File, createPki, type KeyPair, type Pki, writePrivateKey } from './pki.ts';

export interface KubeEnv {
  server: string; // https://127.0.0.1:PORT
  kubeconfig: string; // path of an admin kubeconfig file
  kubeConfig(): KubeConfig; // @kubernetes/client-node KubeConfig for the admin
  kubeconfigFor(user: string, groups?: string[]): Promise<string>; // kubeconfig that authenticates as that user (client certificate)
  kubectl(args: string[], opts?: { input?: string; kubeconfig?: string }): Promise<{ stdout: string; stderr: string; code: number }>;
  restartApiServer(): Promise<void>; // stop and start kube-apiserver on the same port and etcd data
  auditEvents(): Promise<AuditEvent[]>; // what the audit log holds so far (startKubeEnv's auditPolicy); [] without one
  stop(): Promise<void>;
}

/** An audit.k8s.io/v1 Event as kube-apiserver logs it, the fields tests look at. */
export interface AuditEvent {
  stage: string;
  verb: string;
  requestURI: string;
  user: { username: string; groups?: string[] };
  objectRef?: { resource?: string; namespace?: string; name?: string; apiGroup?: string };
  responseStatus?: { code?: number };
  responseObject?: { kind?: string; apiVersion?: string; items?: Record<string, unknown>[] } & Record<string, unknown>;
  [key: string]: unknown;
}

const ETCD_READY_TIMEOUT_MS = 30_000;
const APISERVER_READY_TIMEOUT_MS = 90_000;
const CONTROLLER_MANAGER_READY_TIMEOUT_MS = 90_000;
const POLL_INTERVAL_MS = 200;
const STOP_GRACE_MS = 10_000;
const KUBECTL_TIMEOUT_MS = 120_000;
const SERVICE_CLUSTER_IP_RANGE = '10.0.0.0/24';
const SERVICE_ACCOUNT_ISSUER = 'https://kubernetes.default.svc.cluster.local';

function commandExists(command: string): boolean {
  return spawnSync('sh', ['-c', `command -v ${command}`], { stdio: 'ignore' }).status === 0;
}

/** Whether startKubeEnv can run here; the reason names what is missing and how to get it. */
export function kubeEnvAvailability(): { ok: true } | { ok: false; reason: string } {
  const binaries = kubeBinariesStatus();
  if (!binaries.ok) return { ok: false, reason: `Kubernetes test binaries missing (${binaries.reason}); run \`${KUBE_BUILD_COMMAND}\`` };
  for (const command of ['openssl', kubectlCommand()]) {
    if (!commandExists(command)) return { ok: false, reason: `\`${command}\` is not on PATH` };
  }
  return { ok: true };
}

function kubectlCommand(): string {
  return process.env.KUBECTL ?? 'kubectl';
}

// Children are killed when this process exits, however the test run ends: by the 'exit' hook for a
// normal exit (which also removes the temporary directories), and by the kernel (setpriv --pdeathsig)
// when this process is killed outright.
const liveChildren = new Set<ChildProcess>();
const liveDirs = new Set<string>();
let exitHookInstalled = false;
let pdeathsig: boolean | undefined;

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on('exit', () => {
    for (const child of liveChildren) child.kill('SIGKILL');
    if (process.env.REGMIRROR_KUBE_KEEP === '1') return;
    for (const dir of liveDirs) rmSync(dir, { recursive: true, force: true, maxRetries: 3 });
  });
}

function spawnControlPlane(binary: KubeBinary, args: string[], logFile: string): ChildProcess {
  pdeathsig ??= spawnSync('setpriv', ['--pdeathsig', 'KILL', 'true'], { stdio: 'ignore' }).status === 0;
  const log = openSync(logFile, 'a');
  const [command, commandArgs] = pdeathsig
    ? ['setpriv', ['--pdeathsig', 'KILL', kubeBinaryPath(binary), ...args]]
    : [kubeBinaryPath(binary), args];
  const child = spawn(command, commandArgs, { stdio: ['ignore', log, log] });
  closeSync(log);
  liveChildren.add(child);
  child.on('exit', () => liveChildren.delete(child));
  child.on('error', () => liveChildren.delete(child));
  return child;
}

async function stopProcess(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  child.kill('SIGTERM');
  const killTimer = setTimeout(() => child.kill('SIGKILL'), STOP_GRACE_MS);
  await exited;
  clearTimeout(killTimer);
}

function logTail(logFile: string, lines = 30): string {
  try {
    return readFileSync(logFile, 'utf8').trimEnd().split('\n').slice(-lines).join('\n');
  } catch {
    return '(no log)';
  }
}

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      const port = typeof address === 'object' && address ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}

interface Tls {
  ca?: Buffer;
  cert?: Buffer;
  key?: Buffer;
  rejectUnauthorized?: boolean;
}

function get(url: string, tls: Tls = {}): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const send = url.startsWith('https:') ? request : httpRequest;
    const req = send(url, { ...tls, timeout: 5_000 }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => (body += chunk));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', reject);
    req.end();
  });
}

/** Polls `check` until it returns true; fails early when `child` exits, and after `timeoutMs`. */
async function waitUntil(what: string, check: () => Promise<boolean>, child: ChildProcess, logFile: string, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let lastError = '';
  while (Date.now() < deadline) {
    if (child.exitCode !== null || child.signalCode !== null) {
      throw new Error(`${what}: process exited (${child.exitCode ?? child.signalCode}); last log lines:\n${logTail(logFile)}`);
    }
    try {
      if (await check()) return;
    } catch (err) {
      lastError = (err as Error).message;
    }
    await sleep(POLL_INTERVAL_MS);
  }
  throw new Error(`${what}: not ready after ${timeoutMs / 1000}s${lastError ? ` (${lastError})` : ''}; last log lines:\n${logTail(logFile)}`);
}

interface ControlPlane {
  etcd?: ChildProcess;
  apiserver?: ChildProcess;
  controllerManager?: ChildProcess;
}

function kubeconfigText(server: string, caData: string, user: string, certData: string, keyData: string): string {
  return stringify({
    apiVersion: 'v1',
    kind: 'Config',
    clusters: [{ name: 'regmirror-test', cluster: { server, 'certificate-authority-data': caData } }],
    users: [{ name: user, user: { 'client-certificate-data': certData, 'client-key-data': keyData } }],
    contexts: [{ name: 'regmirror-test', context: { cluster: 'regmirror-test', user, namespace: 'default' } }],
    'current-context': 'regmirror-test',
  });
}

/**
 * Starts etcd and kube-apiserver (and kube-controller-manager with `controllerManager: true`, for
 * garbage collection, ServiceAccounts and workload status) in a fresh temporary directory. With
 * `auditPolicy` (an audit.k8s.io/v1 Policy), the server logs the requests it selects as JSON lines,
 * which `auditEvents()` reads. Call `stop()` in an `after` hook; children die with this process in
 * any case.
 */
export async function startKubeEnv(opts: { controllerManager?: boolean; auditPolicy?: Record<string, unknown> } = {}): Promise<KubeEnv> {
  const available = kubeEnvAvailability();
  if (!available.ok) throw new Error(available.reason);
  installExitHook();
  const dir = await mkdtemp(path.join(tmpdir(), 'regmirror-kube-'));
  liveDirs.add(dir);
  const processes: ControlPlane = {};
  let stopped = false;

  const stop = async (): Promise<void> => {
    if (stopped) return;
    stopped = true;
    // Reverse start order: controllers first, etcd last, so nothing logs a lost backend on the way down.
    for (const child of [processes.controllerManager, processes.apiserver, processes.etcd]) if (child) await stopProcess(child);
    if (process.env.REGMIRROR_KUBE_KEEP === '1') process.stderr.write(`kube env: kept ${dir}\n`);
    else await rm(dir, { recursive: true, force: true });
    liveDirs.delete(dir);
  };

  try {
    const pkiDir = path.join(dir, 'pki');
    await mkdir(pkiDir);
    const pki = await createPki(pkiDir);
    const serving = await pki.issue('apiserver', { commonName: 'kube-apiserver' }, 'server');
    const admin = await pki.issue('admin', { commonName: 'regmirror-test-admin', organizations: ['system:masters'] }, 'client');
    const serviceAccountKey = path.join(pkiDir, 'service-account.key');
    const serviceAccountPub = path.join(pkiDir, 'service-account.pub');
    await writeFile(serviceAccountPub, await writePrivateKey(serviceAccountKey));

    // etcd
    const [etcdClientPort, etcdPeerPort, apiserverPort] = [await freePort(), await freePort(), await freePort()];
    const etcdUrl = `http://127.0.0.1:${etcdClientPort}`;
    const etcdPeerUrl = `http://127.0.0.1:${etcdPeerPort}`;
    const etcdLog = path.join(dir, 'etcd.log');
    const etcd = (processes.etcd = spawnControlPlane(
      'etcd',
      [
        '--name=regmirror-test',
        `--data-dir=${path.join(dir, 'etcd')}`,
        `--listen-client-urls=${etcdUrl}`,
        `--advertise-client-urls=${etcdUrl}`,
        `--listen-peer-urls=${etcdPeerUrl}`,
        `--initial-advertise-peer-urls=${etcdPeerUrl}`,
        `--initial-cluster=regmirror-test=${etcdPeerUrl}`,
        '--unsafe-no-fsync=true', // test data need not survive a power cut
        '--log-level=warn',
      ],
      etcdLog,
    ));
    await waitUntil('etcd', async () => (await get(`${etcdUrl}/health`)).body.includes('"health":"true"'), etcd, etcdLog, ETCD_READY_TIMEOUT_MS);

    // kube-apiserver
    const server = `https://127.0.0.1:${apiserverPort}`;
    const apiserverLog = path.join(dir, 'kube-apiserver.log');
    const apiserverArgs = [
      `--etcd-servers=${etcdUrl}`,
      '--bind-address=127.0.0.1',
      '--advertise-address=127.0.0.1',
      `--secure-port=${apiserverPort}`,
      `--cert-dir=${path.join(dir, 'apiserver')}`,
      `--tls-cert-file=${serving.certFile}`,
      `--tls-private-key-file=${serving.keyFile}`,
      `--client-ca-file=${pki.ca.certFile}`,
      '--authorization-mode=RBAC',
      `--service-account-issuer=${SERVICE_ACCOUNT_ISSUER}`,
      `--service-account-key-file=${serviceAccountPub}`,
      `--service-account-signing-key-file=${serviceAccountKey}`,
      `--service-cluster-ip-range=${SERVICE_CLUSTER_IP_RANGE}`,
      '--allow-privileged=true',
      // One apiserver on loopback: the `kubernetes` Service would get a loopback endpoint, which is invalid.
      '--endpoint-reconciler-type=none',
      // Without this, open watches hold a stopping kube-apiserver for its 60s request timeout; with it
      // the server answers 429 + Retry-After while it drains and gives connections 2s to go.
      '--shutdown-send-retry-after=true',
    ];
    const auditLog = path.join(dir, 'audit.log');
    if (opts.auditPolicy) {
      const policyFile = path.join(dir, 'audit-policy.yaml');
      await writeFile(policyFile, stringify({ apiVersion: 'audit.k8s.io/v1', kind: 'Policy', ...opts.auditPolicy }));
      // blocking: an event is written before its request is answered
      apiserverArgs.push(`--audit-policy-file=${policyFile}`, `--audit-log-path=${auditLog}`, '--audit-log-format=json', '--audit-log-mode=blocking');
    }
    const adminTls: Tls = { ca: readFileSync(pki.ca.certFile), cert: readFileSync(admin.certFile), key: readFileSync(admin.keyFile) };
    const startApiServer = async (): Promise<void> => {
      const child = (processes.apiserver = spawnControlPlane('kube-apiserver', apiserverArgs, apiserverLog));
      await waitUntil('kube-apiserver', async () => (await get(`${server}/readyz`, adminTls)).status === 200, child, apiserverLog, APISERVER_READY_TIMEOUT_MS);
    };
    await startApiServer();

    const caData = await base64File(pki.ca.certFile);
    const writeKubeconfig = async (file: string, user: string, pair: KeyPair): Promise<string> => {
      await writeFile(file, kubeconfigText(server, caData, user, await base64File(pair.certFile), await base64File(pair.keyFile)), { mode: 0o600 });
      return file;
    };
    const kubeconfig = await writeKubeconfig(path.join(dir, 'admin.kubeconfig'), 'admin', admin);

    if (opts.controllerManager) {
      await startControllerManager(dir, kubeconfig, pki, serviceAccountKey, adminTls, server, processes);
    }

    const userKubeconfigs = new Map<string, Promise<string>>();
    const env: KubeEnv = {
      server,
      kubeconfig,
      kubeConfig() {
        const kc = new KubeConfig();
        kc.loadFromFile(kubeconfig);
        return kc;
      },
      kubeconfigFor(user, groups = []) {
        const key = JSON.stringify([user, [...groups].sort()]);
        let file = userKubeconfigs.get(key);
        if (!file) {
          const name = `user-${userKubeconfigs.size + 1}`;
          file = pki
            .issue(name, { commonName: user, organizations: groups }, 'client')
            .then((pair) => writeKubeconfig(path.join(dir, `${name}.kubeconfig`), user, pair));
          userKubeconfigs.set(key, file);
        }
        return file;
      },
      kubectl(args, kubectlOpts = {}) {
        return runKubectl(['--kubeconfig', kubectlOpts.kubeconfig ?? kubeconfig, ...args], kubectlOpts.input);
      },
      async restartApiServer() {
        if (stopped) throw new Error('restartApiServer: the environment is stopped');
        if (processes.apiserver) await stopProcess(processes.apiserver);
        await startApiServer();
      },
      async auditEvents() {
        if (!opts.auditPolicy) return [];
        const text = await readFile(auditLog, 'utf8').catch((error: NodeJS.ErrnoException) => (error.code === 'ENOENT' ? '' : Promise.reject(error)));
        const lines = text.split('\n');
        lines.pop(); // '' after the last newline, or a line still being written
        return lines.filter((line) => line.trim()).map((line) => JSON.parse(line) as AuditEvent);
      },
      stop,
    };
    return env;
  } catch (err) {
    await stop();
    throw err;
  }
}

async function startControllerManager(
  dir: string,
  kubeconfig: string,
  pki: Pki,
  serviceAccountKey: string,
  adminTls: Tls,
  server: string,
  processes: ControlPlane,
): Promise<void> {
  const port = await freePort();
  const logFile = path.join(dir, 'kube-controller-manager.log');
  const child = (processes.controllerManager = spawnControlPlane(
    'kube-controller-manager',
    [
      `--kubeconfig=${kubeconfig}`,
      `--authentication-kubeconfig=${kubeconfig}`,
      `--authorization-kubeconfig=${kubeconfig}`,
      '--bind-address=127.0.0.1',
      `--secure-port=${port}`,
      `--cert-dir=${path.join(dir, 'kube-controller-manager')}`,
      '--leader-elect=false',
      `--service-account-private-key-file=${serviceAccountKey}`,
      `--root-ca-file=${pki.ca.certFile}`,
      `--cluster-signing-cert-file=${pki.ca.certFile}`,
      `--cluster-signing-key-file=${pki.ca.keyFile}`,
      `--service-cluster-ip-range=${SERVICE_CLUSTER_IP_RANGE}`,
    ],
    logFile,
  ));
  await waitUntil(
    'kube-controller-manager',
    async () => (await get(`https://127.0.0.1:${port}/healthz`, { rejectUnauthorized: false })).status === 200,
    child,
    logFile,
    CONTROLLER_MANAGER_READY_TIMEOUT_MS,
  );
  // Controllers run once the `default` ServiceAccount shows up: the serviceaccount controller made it.
  await waitUntil(
    'kube-controller-manager controllers',
    async () => (await get(`${server}/api/v1/namespaces/default/serviceaccounts/default`, adminTls)).status === 200,
    child,
    logFile,
    CONTROLLER_MANAGER_READY_TIMEOUT_MS,
  );
}

function runKubectl(args: string[], input?: string): Promise<{ stdout: string; stderr: string; code: number }> {
  return new Promise((resolve) => {
    const child = spawn(kubectlCommand(), args, { stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (chunk: string) => (stdout += chunk));
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
    const timer = setTimeout(() => {
      stderr += `\nkubectl killed after ${KUBECTL_TIMEOUT_MS / 1000}s`;
      child.kill('SIGKILL');
    }, KUBECTL_TIMEOUT_MS);
    child.on('error', (err) => {
      clearTimeout(timer);
      resolve({ stdout, stderr: `${stderr}${err.message}`, code: 127 });
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ stdout, stderr, code: code ?? (signal ? 128 : 1) });
    });
    child.stdin.on('error', () => {}); // kubectl may exit before reading its input
    child.stdin.end(input ?? '');
  });
}

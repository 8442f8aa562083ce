// `regmirror operator`: reconciles RegistryMirrors into the objects that run a mirror and configure
// nodes. Reads in-cluster credentials, or --kubeconfig / KUBECONFIG; only the elected leader
// reconciles; /metrics, /healthz and /readyz are served on --metrics-address.
import { createServer, type Server } from 'node:http';
import { hostname } from 'node:os';
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { KubeConfig } from '@kubernetes/client-node';
import { ConfigError } from '../common/config-error.ts';
import { parseDuration } from '../common/duration.ts';
import { createLogger, LOG_LEVELS, type Logger } from '../common/logger.ts';
import type { LevelWithSilent } from 'pino';
import { Controller } from './controller.ts';
import { EventRecorder } from './events.ts';
import { KubeApi } from './kube/api.ts';
import { LeaderElector } from './leader-election.ts';
import { OperatorMetrics } from './metrics.ts';

const VERSION = (JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string }).version;

export const USAGE = `usage: regmirror operator [flags]

Reconciles RegistryMirror resources (regmirror.dev/v1alpha1) into a mirror Deployment, its
Service, volume, configuration and credentials, and a node agent DaemonSet.

flags (each also read from the environment variable in brackets):
  --kubeconfig FILE                 kubeconfig to use [KUBECONFIG]; default: in-cluster service account
  --namespace NS[,NS...]            namespaces to watch; repeatable [WATCH_NAMESPACE]; default: all
  --leader-elect true|false         elect a leader on a Lease before reconciling [LEADER_ELECT]; default true
  --leader-election-namespace NS    namespace of the Lease [POD_NAMESPACE]; default: the pod's own, out of a cluster "default"
  --leader-election-id NAME         name of the Lease; default regmirror-operator
  --identity NAME                   this replica's name in the Lease [POD_NAME]; default host name and pid
  --lease-duration DURATION         how long a standby waits on a silent leader before taking over; default 15s
  --renew-deadline DURATION         how long a leader keeps trying to renew before it stops reconciling; default 10s
  --metrics-address HOST:PORT       /metrics, /healthz, /readyz [METRICS_ADDRESS]; default :8080 ("0" turns it off)
  --mirror-image IMAGE              image for node agent pods, and mirror pods without spec.image [MIRROR_IMAGE]; default ghcr.io/regmirror/regmirror:${VERSION}
  --node-cleanup-timeout DURATION   how long deletion waits for nodes to drop the mirror; default 5m
  --cleanup-namespace NS            where nodes are cleaned for RegistryMirrors whose namespace is being deleted [POD_NAMESPACE]; default: the pod's own, out of a cluster "default"
  --workers N                       RegistryMirrors reconciled at once; default 2
  --log-level LEVEL                 ${LOG_LEVELS.join(', ')} [LOG_LEVEL]; default info
`;

export interface OperatorFlags {
  kubeconfig?: string;
  namespaces: string[];
  leaderElect: boolean;
  leaderElectionNamespace: string;
  leaderElectionId: string;
  identity: string;
  leaseDurationMs: number;
  renewDeadlineMs: number;
  metricsAddress?: { host: string; port: number };
  mirrorImage: string;
  nodeCleanupTimeoutMs: number;
  cleanupNamespace: string;
  workers: number;
  logLevel: LevelWithSilent;
}

const IN_CLUSTER_NAMESPACE = '/var/run/secrets/kubernetes.io/serviceaccount/namespace';

export function parseFlags(argv: string[], env: NodeJS.ProcessEnv = process.env): OperatorFlags | 'help' {
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      options: {
        kubeconfig: { type: 'string' },
        namespace: { type: 'string', multiple: true },
        'leader-elect': { type: 'string' },
        'leader-election-namespace': { type: 'string' },
        'leader-election-id': { type: 'string' },
        identity: { type: 'string' },
        'lease-duration': { type: 'string' },
        'renew-deadline': { type: 'string' },
        'metrics-address': { type: 'string' },
        'mirror-image': { type: 'string' },
        'node-cleanup-timeout': { type: 'string' },
        'cleanup-namespace': { type: 'string' },
        workers: { type: 'string' },
        'log-level': { type: 'string' },
        help: { type: 'boolean', short: 'h' },
      },
      strict: true,
      allowPositionals: false,
    });
  } catch (error) {
    throw new ConfigError('command line', '(flags)', (error as Error).message);
  }
  const v = parsed.values;
  if (v.help) return 'help';
  const flag = (name: string, value: string | undefined, envName?: string) =>
    value !== undefined ? { value, source: 'command line', key: `--${name}` } : envName && env[envName] !== undefined ? { value: env[envName]!, source: 'environment', key: envName } : undefined;

  const namespaces = (v.namespace ?? (env.WATCH_NAMESPACE ? [env.WATCH_NAMESPACE] : []))
    .flatMap((item) => item.split(','))
    .map((ns) => ns.trim())
    .filter(Boolean);

  const leaderElect = flag('leader-elect', v['leader-elect'], 'LEADER_ELECT');
  if (leaderElect && !['true', 'false'].includes(leaderElect.value)) throw new ConfigError(leaderElect.source, leaderElect.key, 'must be true or false');

  // The Lease and the cleanup DaemonSets of mirrors whose namespace is being deleted go in the
  // operator's own namespace unless told otherwise: POD_NAMESPACE, else the service account's.
  const ownNamespace = (name: 'leader-election-namespace' | 'cleanup-namespace'): string => {
    const given = flag(name, v[name], 'POD_NAMESPACE')?.value;
    if (given) return given;
    try {
      return readFileSync(IN_CLUSTER_NAMESPACE, 'utf8').trim();
    } catch {
      return 'default';
    }
  };
  const leaderElectionNamespace = ownNamespace('leader-election-namespace');
  const cleanupNamespace = ownNamespace('cleanup-namespace');

  let metricsAddress: OperatorFlags['metricsAddress'] = { host: '0.0.0.0', port: 8080 };
  const metrics = flag('metrics-address', v['metrics-address'], 'METRICS_ADDRESS');
  if (metrics) {
    if (metrics.value === '0') {
      metricsAddress = undefined;
    } else {
      const match = /^(.*):(\d{1,5})$/.exec(metrics.value);
      const port = match ? Number(match[2]) : NaN;
      if (!match || port > 65535) throw new ConfigError(metrics.source, metrics.key, `"${metrics.value}" is not HOST:PORT or :PORT`);
      metricsAddress = { host: (match[1] || '0.0.0.0').replace(/^\[|\]$/g, ''), port };
    }
  }

  const timeout = flag('node-cleanup-timeout', v['node-cleanup-timeout']);
  const nodeCleanupTimeoutMs = timeout ? parseDuration(timeout.value) : 5 * 60_000;
  if (nodeCleanupTimeoutMs === undefined) throw new ConfigError(timeout!.source, timeout!.key, `"${timeout!.value}" is not a duration (e.g. 30s, 5m)`);

  const durationFlag = (name: string, fallbackMs: number): number => {
    const given = flag(name, v[name as 'lease-duration' | 'renew-deadline']);
    if (!given) return fallbackMs;
    const ms = parseDuration(given.value);
    if (ms === undefined || ms < 1000) throw new ConfigError(given.source, given.key, `"${given.value}" is not a duration of at least 1s`);
    return ms;
  };
  const leaseDurationMs = durationFlag('lease-duration', 15_000);
  const renewDeadlineMs = durationFlag('renew-deadline', 10_000);
  if (renewDeadlineMs >= leaseDurationMs) throw new ConfigError('command line', '--renew-deadline', 'must be shorter than --lease-duration, or two replicas could both reconcile');

  const workersFlag = flag('workers', v.workers);
  const workers = workersFlag ? Number(workersFlag.value) : 2;
  if (!Number.isInteger(workers) || workers < 1 || workers > 64) throw new ConfigError('command line', '--workers', 'must be a whole number from 1 to 64');

  const level = flag('log-level', v['log-level'], 'LOG_LEVEL');
  if (level && !LOG_LEVELS.includes(level.value as LevelWithSilent)) throw new ConfigError(level.source, level.key, `must be one of ${LOG_LEVELS.join(', ')}`);

  return {
    kubeconfig: flag('kubeconfig', v.kubeconfig, 'KUBECONFIG')?.value,
    namespaces,
    leaderElect: leaderElect?.value !== 'false',
    leaderElectionNamespace,
    leaderElectionId: v['leader-election-id'] ?? 'regmirror-operator',
    identity: flag('identity', v.identity, 'POD_NAME')?.value ?? `${hostname()}-${process.pid}`,
    leaseDurationMs,
    renewDeadlineMs,
    metricsAddress,
    mirrorImage: flag('mirror-image', v['mirror-image'], 'MIRROR_IMAGE')?.value ?? `ghcr.io/regmirror/regmirror:${VERSION}`,
    nodeCleanupTimeoutMs,
    cleanupNamespace,
    workers,
    logLevel: (level?.value as LevelWithSilent | undefined) ?? 'info',
  };
}

export function loadKubeConfig(kubeconfig: string | undefined): KubeConfig {
  const config = new KubeConfig();
  if (kubeconfig) {
    try {
      config.loadFromFile(kubeconfig);
    } catch (error) {
      throw new ConfigError(kubeconfig, '(file)', `cannot load kubeconfig: ${(error as Error).message}`);
    }
  } else if (process.env.KUBERNETES_SERVICE_HOST) {
    config.loadFromCluster();
  } else {
    throw new ConfigError('command line', '--kubeconfig', 'not running in a cluster: pass --kubeconfig or set KUBECONFIG');
  }
  if (!config.getCurrentCluster()) throw new ConfigError(kubeconfig ?? 'in-cluster config', 'current-context', 'names no cluster');
  return config;
}

function serveMetrics(address: NonNullable<OperatorFlags['metricsAddress']>, metrics: OperatorMetrics, ready: () => boolean, logger: Logger): Promise<Server> {
  const server = createServer((request, response) => {
    const path = (request.url ?? '/').split('?')[0];
    if (path === '/metrics') {
      metrics.registry.metrics().then(
        (text) => response.writeHead(200, { 'content-type': metrics.registry.contentType }).end(text),
        (error: Error) => response.writeHead(500).end(error.message),
      );
    } else if (path === '/healthz') {
      response.writeHead(200, { 'content-type': 'text/plain' }).end('ok\n');
    } else if (path === '/readyz') {
      // Ready once caches are synced as leader, or as a standby waiting for the lease.
      const ok = ready();
      response.writeHead(ok ? 200 : 503, { 'content-type': 'text/plain' }).end(ok ? 'ok\n' : 'starting\n');
    } else {
      response.writeHead(404).end();
    }
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(address.port, address.host, () => {
      const bound = server.address();
      logger.info({ address: typeof bound === 'object' && bound ? `${bound.address}:${bound.port}` : address }, 'serving metrics');
      resolve(server);
    });
  });
}

export async function main(argv: string[]): Promise<void> {
  const flags = parseFlags(argv);
  if (flags === 'help') {
    process.stdout.write(USAGE);
    return;
  }
  const logger = createLogger('operator', flags.logLevel);
  const kubeConfig = loadKubeConfig(flags.kubeconfig);
  const api = new KubeApi(kubeConfig);
  const metrics = new OperatorMetrics({ processMetrics: true });
  const events = new EventRecorder(api, logger, flags.identity);
  const newController = () =>
    new Controller({
      kubeConfig, api, events, logger, metrics,
      namespaces: flags.namespaces,
      mirrorImage: flags.mirrorImage,
      nodeCleanupTimeoutMs: flags.nodeCleanupTimeoutMs,
      cleanupNamespace: flags.cleanupNamespace,
      workers: flags.workers,
    });
  let controller: Controller | undefined;
  let synced = false;
  const server = flags.metricsAddress
    ? await serveMetrics(flags.metricsAddress, metrics, () => synced || (flags.leaderElect && !controller), logger)
    : undefined;

  logger.info({ version: VERSION, server: kubeConfig.getCurrentCluster()!.server, identity: flags.identity, namespaces: flags.namespaces, cleanupNamespace: flags.cleanupNamespace }, 'regmirror operator starting');

  const elector = flags.leaderElect
    ? new LeaderElector({
      api, logger,
      namespace: flags.leaderElectionNamespace,
      name: flags.leaderElectionId,
      identity: flags.identity,
      leaseDurationMs: flags.leaseDurationMs,
      renewDeadlineMs: flags.renewDeadlineMs,
    })
    : undefined;

  let stopping = false;
  let wakeUp: () => void = () => {};
  const stopped = new Promise<void>((resolve) => (wakeUp = resolve));
  const shutdown = (signal: string) => {
    if (stopping) return;
    stopping = true;
    logger.info({ signal }, 'shutting down');
    elector?.stop();
    wakeUp();
  };
  process.once('SIGTERM', () => shutdown('SIGTERM'));
  process.once('SIGINT', () => shutdown('SIGINT'));

  const startController = async () => {
    const started = (controller = newController());
    metrics.leader.set(1);
    await started.start();
    synced = controller === started;
  };
  const stopController = async () => {
    metrics.leader.set(0);
    synced = false;
    const current = controller;
    controller = undefined;
    await current?.stop();
  };

  if (elector) {
    while (!stopping) {
      await elector.run({ onStarted: startController, onStopped: stopController });
      // Leadership lost (the API server was unreachable past the renew deadline, or another replica
      // holds the Lease): this replica stopped reconciling before the Lease could expire, and
      // campaigns again with fresh caches.
      if (!stopping) logger.warn('leadership lost; reconciling stopped, campaigning again');
    }
  } else {
    await startController();
    await stopped;
    await stopController();
  }
  server?.close();
}

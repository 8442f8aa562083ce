// The thin loop around the reconciler: informers keep caches of RegistryMirrors and the kinds they
// own, and of Secrets' and ConfigMaps' metadata only (the reconciler reads the few it needs by
// name); their event handlers only enqueue keys; workers take keys from the queue and reconcile. A
// watch that fails is restarted from its last resourceVersion (and relists when the server answers
// 410 Gone), so events survive an API server restart.
import { ListWatch, Watch, type Informer, type KubeConfig, type KubernetesObject, type ObjectCache as InformerCache } from '@kubernetes/client-node';
import type { Logger } from '../common/logger.ts';
import { API_VERSION, KIND, type RegistryMirror } from './api/registry-mirror.ts';
import { modeOf } from './desired/daemon-set.ts';
import { FIELD_MANAGER, names, referencedNames } from './desired/inputs.ts';
import type { EventRecorder } from './events.ts';
import { collectionPath, isForbidden, type KubeApi, type KubeObject } from './kube/api.ts';
import { MetadataWatch, routingMetadata } from './kube/metadata.ts';
import type { OperatorMetrics } from './metrics.ts';
import { stoppedBeforeApplying } from './node-conflict.ts';
import { Reconciler, type ObjectCache } from './reconciler.ts';
import { WorkQueue } from './work-queue.ts';

// The owned kinds watched as such, the operator's own only (MANAGED_SELECTOR). ConfigMaps are owned
// too but not here: start watches all of them, by metadata, which brings the owned ones' events.
const OWNED_KINDS: [string, string][] = [
  ['v1', 'Service'],
  ['v1', 'PersistentVolumeClaim'],
  ['apps/v1', 'Deployment'],
  ['apps/v1', 'DaemonSet'],
];
const MANAGED_SELECTOR = `app.kubernetes.io/managed-by=${FIELD_MANAGER}`;

export interface ControllerOptions {
  kubeConfig: KubeConfig;
  api: KubeApi;
  events: EventRecorder;
  logger: Logger;
  metrics: OperatorMetrics;
  /** Namespaces to watch; empty means all. */
  namespaces: string[];
  mirrorImage: string;
  nodeCleanupTimeoutMs: number;
  /** Where cleanup DaemonSets run for mirrors whose namespace is being deleted. */
  cleanupNamespace: string;
  workers?: number;
  /** Every mirror is reconciled at least this often, whatever the watches say. */
  resyncMs?: number;
}

type AnyObject = KubernetesObject & KubeObject;

interface WatchedKind {
  name: string;
  informers: Map<string, Informer<AnyObject> & InformerCache<AnyObject>>;
}

export class Controller {
  private readonly options: ControllerOptions;
  private readonly queue: WorkQueue;
  private readonly reconciler: Reconciler;
  private readonly kinds: WatchedKind[] = [];
  private mirrors!: WatchedKind;
  /** The node agent DaemonSets (and cleanup ones): whether a mirror has agents decides node conflicts. */
  private daemonSets: WatchedKind | undefined;
  private readonly restartTimers = new Set<NodeJS.Timeout>();
  private resyncTimer?: NodeJS.Timeout;
  private workers: Promise<void>[] = [];
  private stopped = false;
  /** Per RegistryMirror: the generation and deletion it was last seen with (see onMirror). */
  private readonly mirrorFingerprints = new Map<string, string>();

  constructor(options: ControllerOptions) {
    this.options = options;
    this.queue = new WorkQueue({ onDepth: (depth) => options.metrics.queueDepth.set(depth) });
    const cache: ObjectCache = {
      mirror: (namespace, name) => this.lookup(this.mirrors, namespace, name) as RegistryMirror | undefined,
      mirrors: () => this.allMirrors() as unknown as RegistryMirror[],
      nodeAgentMode: (m) => {
        const daemonSet = this.daemonSets && this.lookup(this.daemonSets, m.metadata.namespace, names(m).daemonSet);
        return daemonSet ? modeOf(daemonSet) : undefined;
      },
    };
    this.reconciler = new Reconciler({
      api: options.api,
      cache,
      events: options.events,
      logger: options.logger,
      mirrorImage: options.mirrorImage,
      nodeCleanupTimeoutMs: options.nodeCleanupTimeoutMs,
      cleanupNamespace: options.cleanupNamespace,
    });
  }

  /** Starts the watches, waits for their first lists, then starts the workers. */
  async start(): Promise<void> {
    this.mirrors = this.watch(API_VERSION, KIND, undefined, (obj) => this.onMirror(obj));
    // Secrets are many and large (Helm keeps a release's every revision in one): their metadata says
    // which mirror a change concerns, and the reconciler reads the ones it uses by name. So do
    // ConfigMaps, which spec.upstreams[].caConfigMapRef names anywhere in a namespace: this one watch
    // also follows the mirrors' own (their owner references), so none is watched twice.
    this.watch('v1', 'Secret', undefined, (obj) => this.onReferenced(obj, 'Secret'), { metadataOnly: true });
    this.watch('v1', 'ConfigMap', undefined, (obj) => this.onReferenced(obj, 'ConfigMap'), { metadataOnly: true });
    for (const [apiVersion, kind] of OWNED_KINDS) {
      const watched = this.watch(apiVersion, kind, MANAGED_SELECTOR, (obj) => this.enqueueOwner(obj));
      if (kind === 'DaemonSet') this.daemonSets = watched;
    }
    await Promise.all(this.kinds.flatMap((kind) => [...kind.informers.entries()].map(([namespace, informer]) => this.startInformer(kind.name, namespace, informer))));
    this.options.logger.info({ namespaces: this.options.namespaces.length ? this.options.namespaces : 'all' }, 'caches synced; reconciling');
    for (const mirror of this.allMirrors()) this.enqueue(mirror);
    const workers = this.options.workers ?? 2;
    this.workers = Array.from({ length: workers }, () => this.work());
    this.resyncTimer = setInterval(() => {
      for (const mirror of this.allMirrors()) this.enqueue(mirror);
    }, this.options.resyncMs ?? 10 * 60_000);
    this.resyncTimer.unref();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    clearInterval(this.resyncTimer);
    for (const timer of this.restartTimers) clearTimeout(timer);
    this.queue.shutDown();
    await Promise.all(this.kinds.flatMap((kind) => [...kind.informers.values()].map((informer) => informer.stop())));
    await Promise.all(this.workers);
  }

  private lookup(kind: WatchedKind, namespace: string, name: string): AnyObject | undefined {
    const informer = kind.informers.get(namespace) ?? kind.informers.get('');
    return informer?.get(name, namespace);
  }

  private allMirrors(): AnyObject[] {
    return [...this.mirrors.informers.values()].flatMap((informer) => [...informer.list()]);
  }

  /** Informers for a kind, one per watched namespace; metadataOnly keeps routingMetadata of each object only. */
  private watch(apiVersion: string, kind: string, labelSelector: string | undefined, handler: (obj: AnyObject) => void, { metadataOnly = false } = {}): WatchedKind {
    const watched: WatchedKind = { name: `${apiVersion}/${kind}`, informers: new Map() };
    const namespaces = this.options.namespaces.length ? this.options.namespaces : [''];
    for (const namespace of namespaces) {
      const path = collectionPath(apiVersion, kind, namespace || undefined);
      const list = async () => {
        this.options.metrics.lists.inc({ resource: watched.name });
        this.options.logger.debug({ resource: watched.name, namespace: namespace || undefined }, 'listing');
        const result = await this.options.api.list<AnyObject>(apiVersion, kind, namespace || undefined, labelSelector, { metadataOnly });
        if (metadataOnly) result.items = result.items.map(routingMetadata) as AnyObject[];
        // Lists return items without apiVersion/kind; the reconciler and builders want them.
        for (const item of result.items) {
          item.apiVersion ??= apiVersion;
          item.kind ??= kind;
        }
        return result as never;
      };
      const { kubeConfig } = this.options;
      const informer = new ListWatch<AnyObject>(path, metadataOnly ? new MetadataWatch(kubeConfig) : new Watch(kubeConfig), list, false, labelSelector);
      informer.on('add', handler);
      informer.on('update', handler);
      informer.on('delete', handler);
      watched.informers.set(namespace, informer);
    }
    this.kinds.push(watched);
    return watched;
  }

  /**
   * Starts one informer and keeps it running: client-node's ListWatch stops on an error other than
   * 410 Gone, so it is started again with backoff; it resumes from the last resourceVersion it saw.
   */
  private async startInformer(kind: string, namespace: string, informer: Informer<AnyObject>): Promise<void> {
    const { logger, metrics } = this.options;
    let delayMs = 500;
    let failed = false;
    let synced = false;
    let lastError: unknown;
    const restart = async () => {
      if (this.stopped) return;
      failed = false;
      await informer.start();
      // A start that failed again has already scheduled the next try, with a longer delay.
      if (!failed) delayMs = 500;
    };
    const scheduleRestart = () => {
      const timer = setTimeout(() => {
        this.restartTimers.delete(timer);
        void restart();
      }, delayMs);
      delayMs = Math.min(delayMs * 2, 30_000);
      this.restartTimers.add(timer);
    };
    informer.on('error', (error: unknown) => {
      failed = true;
      lastError = error;
      if (this.stopped) return;
      metrics.watchRestarts.inc({ resource: kind });
      logger.warn({ resource: kind, namespace: namespace || undefined, err: (error as Error)?.message ?? String(error), retryInMs: delayMs }, 'watch failed; restarting');
      if (synced) scheduleRestart();
    });
    // The first list must succeed before workers read the caches; except that a namespace whose
    // objects the operator may no longer list (a namespaced install's RoleBinding goes with its
    // namespace when that is deleted) must not keep every other namespace waiting: there, only
    // the RegistryMirrors (bound cluster-wide, operator/rbac.ts MIRROR_RULES) are needed, the
    // finalizer takes refused reads as absent, and the list is tried again in the background.
    const required = kind === this.mirrors.name;
    for (;;) {
      failed = false;
      await informer.start();
      if (!failed || this.stopped) break;
      if (!required && isForbidden(lastError)) {
        logger.warn({ resource: kind, namespace: namespace || undefined, retryInMs: delayMs }, 'may not list this kind here; going on without it, and trying again in the background');
        synced = true;
        scheduleRestart();
        return;
      }
      await new Promise((resolve) => setTimeout(resolve, delayMs));
      delayMs = Math.min(delayMs * 2, 30_000);
    }
    synced = true;
    delayMs = 500;
  }

  /**
   * A RegistryMirror changed. Which mirror may configure which nodes depends on the others
   * (node-conflict.ts), so a new spec, a deletion starting or a mirror going away is a reason to
   * look at every mirror again; status writes, the common case, are not.
   */
  private onMirror(obj: AnyObject): void {
    this.enqueue(obj);
    const { namespace, name } = obj.metadata ?? {};
    if (!namespace || !name) return;
    const key = `${namespace}/${name}`;
    const present = this.lookup(this.mirrors, namespace, name) !== undefined;
    // A mirror whose spec stops it before applying anything does not hold nodes: others may take them.
    const stopped = present && stoppedBeforeApplying(obj as unknown as RegistryMirror);
    const fingerprint = present ? `${obj.metadata?.generation ?? ''}|${obj.metadata?.deletionTimestamp ?? ''}|${stopped}` : 'gone';
    if (this.mirrorFingerprints.get(key) === fingerprint) return;
    if (present) this.mirrorFingerprints.set(key, fingerprint);
    else this.mirrorFingerprints.delete(key);
    for (const other of this.allMirrors()) this.enqueue(other);
  }

  private enqueue(obj: AnyObject): void {
    const { namespace, name } = obj.metadata ?? {};
    if (namespace && name) this.queue.add(`${namespace}/${name}`);
  }

  private enqueueOwner(obj: AnyObject): void {
    const owner = obj.metadata?.ownerReferences?.find((ref) => ref.controller && ref.kind === KIND && ref.apiVersion.startsWith(`${API_VERSION.split('/')[0]}/`));
    if (owner && obj.metadata?.namespace) this.queue.add(`${obj.metadata.namespace}/${owner.name}`);
  }

  /** A Secret or ConfigMap changed or went (its metadata says which): its owner, and the mirrors naming it, look again. */
  private onReferenced(object: AnyObject, kind: 'Secret' | 'ConfigMap'): void {
    this.enqueueOwner(object);
    const namespace = object.metadata?.namespace;
    const name = object.metadata?.name;
    if (!namespace || !name) return;
    for (const mirror of this.allMirrors() as unknown as RegistryMirror[]) {
      if (mirror.metadata.namespace === namespace && referencedNames(mirror.spec, kind).has(name)) this.queue.add(`${namespace}/${mirror.metadata.name}`);
    }
  }

  private async work(): Promise<void> {
    const { metrics, logger } = this.options;
    for (;;) {
      const key = await this.queue.get();
      if (key === undefined) return;
      const end = metrics.duration.startTimer();
      try {
        const started = performance.now();
        const result = await this.reconciler.reconcile(key);
        logger.debug({ mirror: key, ms: Math.round(performance.now() - started), requeueAfterMs: result.requeueAfterMs }, 'reconciled');
        this.queue.forget(key);
        if (result.requeueAfterMs !== undefined) {
          this.queue.addAfter(key, result.requeueAfterMs);
          metrics.reconciles.inc({ result: 'requeue' });
        } else {
          metrics.reconciles.inc({ result: 'success' });
        }
      } catch (error) {
        metrics.reconciles.inc({ result: 'error' });
        metrics.errors.inc();
        const retryInMs = this.queue.addRateLimited(key);
        logger.error({ mirror: key, err: (error as Error).message, retryInMs }, 'reconcile failed');
      } finally {
        end();
        this.queue.done(key);
      }
    }
  }
}

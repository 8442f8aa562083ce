// Leader election on a coordination.k8s.io Lease, after client-go's: a candidate takes the Lease
// when its holder has not renewed it for leaseDuration as measured on the candidate's own clock
// (from when it last saw the record change, so clock skew between replicas does not matter);
// the leader renews every retryPeriod and steps down if it cannot renew within renewDeadline.
// Writes carry the resourceVersion read, so two candidates can never both win the same round.
import type { Logger } from '../common/logger.ts';
import { isConflict, isNotFound, objectPath, type KubeApi, type KubeObject } from './kube/api.ts';

export interface LeaderElectionOptions {
  api: KubeApi;
  namespace: string;
  name: string;
  identity: string;
  logger: Logger;
  leaseDurationMs?: number;
  renewDeadlineMs?: number;
  retryPeriodMs?: number;
}

interface Lease extends KubeObject {
  spec?: {
    holderIdentity?: string;
    leaseDurationSeconds?: number;
    acquireTime?: string;
    renewTime?: string;
    leaseTransitions?: number;
  };
}

const microTime = (date: Date) => date.toISOString().replace('Z', '000Z');

export class LeaderElector {
  private readonly options: Required<LeaderElectionOptions>;
  private observedRecord = '';
  private observedAt = 0;
  private stopped = false;
  private leading = false;
  private wake?: () => void;

  constructor(options: LeaderElectionOptions) {
    this.options = {
      leaseDurationMs: 15_000,
      renewDeadlineMs: 10_000,
      retryPeriodMs: 2_000,
      ...options,
    };
  }

  get isLeader(): boolean {
    return this.leading;
  }

  /**
   * Campaigns until this replica leads, calls onStarted, then renews until leadership is lost
   * (onStopped is called, and the promise resolves) or stop() is called (the Lease is released).
   */
  async run(callbacks: { onStarted: () => void | Promise<void>; onStopped: () => void | Promise<void> }): Promise<void> {
    const { logger, identity, retryPeriodMs, renewDeadlineMs } = this.options;
    while (!this.stopped) {
      if (await this.tryAcquireOrRenew()) break;
      await this.sleep(retryPeriodMs);
    }
    if (this.stopped) return;
    this.leading = true;
    logger.info({ lease: `${this.options.namespace}/${this.options.name}`, identity }, 'became leader');
    // Renewing must not wait for the leader's work to start (cache sync can take a while).
    Promise.resolve()
      .then(callbacks.onStarted)
      .catch((error: unknown) => {
        logger.error({ err: (error as Error).message }, 'leader work failed to start; stepping down');
        this.stop();
      });
    let lastRenew = Date.now();
    while (!this.stopped) {
      await this.sleep(retryPeriodMs);
      if (this.stopped) break;
      if (await this.tryAcquireOrRenew()) {
        lastRenew = Date.now();
      } else if (Date.now() - lastRenew >= renewDeadlineMs || this.heldByOther()) {
        this.leading = false;
        logger.error({ identity }, 'lost leadership');
        await callbacks.onStopped();
        return;
      }
    }
    if (this.leading) {
      this.leading = false;
      await this.release();
      await callbacks.onStopped();
    }
  }

  stop(): void {
    this.stopped = true;
    this.wake?.();
  }

  private heldByOther(): boolean {
    if (!this.observedRecord) return false;
    const record = JSON.parse(this.observedRecord) as Lease['spec'];
    return !!record?.holderIdentity && record.holderIdentity !== this.options.identity;
  }

  private sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(resolve, ms);
      this.wake = () => {
        clearTimeout(timer);
        resolve();
      };
    });
  }

  private async tryAcquireOrRenew(): Promise<boolean> {
    const { api, namespace, name, identity, leaseDurationMs, logger } = this.options;
    const now = new Date();
    const spec = (previous?: Lease['spec']) => ({
      holderIdentity: identity,
      leaseDurationSeconds: Math.ceil(leaseDurationMs / 1000),
      acquireTime: previous?.holderIdentity === identity && previous.acquireTime ? previous.acquireTime : microTime(now),
      renewTime: microTime(now),
      leaseTransitions: (previous?.leaseTransitions ?? 0) + (previous?.holderIdentity && previous.holderIdentity !== identity ? 1 : 0),
    });
    try {
      let lease: Lease;
      try {
        lease = await api.get<Lease>('coordination.k8s.io/v1', 'Lease', namespace, name);
      } catch (error) {
        if (!isNotFound(error)) throw error;
        await api.create({ apiVersion: 'coordination.k8s.io/v1', kind: 'Lease', metadata: { name, namespace }, spec: spec() });
        this.observe(spec());
        return true;
      }
      const record = JSON.stringify(lease.spec ?? {});
      if (record !== this.observedRecord) {
        this.observedRecord = record;
        this.observedAt = Date.now();
      }
      const holder = lease.spec?.holderIdentity;
      const durationMs = (lease.spec?.leaseDurationSeconds ?? 0) * 1000;
      if (holder && holder !== identity && this.observedAt + durationMs > Date.now()) return false;
      const next = spec(lease.spec);
      await api.request('PUT', objectPath('coordination.k8s.io/v1', 'Lease', namespace, name), {
        body: { apiVersion: 'coordination.k8s.io/v1', kind: 'Lease', metadata: { name, namespace, resourceVersion: lease.metadata?.resourceVersion }, spec: next },
      });
      this.observe(next);
      return true;
    } catch (error) {
      if (!isConflict(error)) logger.warn({ err: (error as Error).message }, 'leader election: could not read or write the lease');
      return false;
    }
  }

  private observe(spec: Lease['spec']): void {
    this.observedRecord = JSON.stringify(spec);
    this.observedAt = Date.now();
  }

  /** Gives the Lease up on a clean stop, so the next replica need not wait out the lease. */
  private async release(): Promise<void> {
    const { api, namespace, name, identity, logger } = this.options;
    try {
      const lease = await api.get<Lease>('coordination.k8s.io/v1', 'Lease', namespace, name);
      if (lease.spec?.holderIdentity !== identity) return;
      await api.request('PUT', objectPath('coordination.k8s.io/v1', 'Lease', namespace, name), {
        body: {
          apiVersion: 'coordination.k8s.io/v1', kind: 'Lease',
          metadata: { name, namespace, resourceVersion: lease.metadata?.resourceVersion },
          spec: { ...lease.spec, holderIdentity: '', leaseDurationSeconds: 1, renewTime: microTime(new Date()) },
        },
      });
      logger.info({ identity }, 'released leadership');
    } catch (error) {
      logger.warn({ err: (error as Error).message }, 'could not release the lease');
    }
  }
}

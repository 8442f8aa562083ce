import { test } from 'node:test';
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { createLogger } from '../common/logger.ts';
import { ApiError, type KubeApi, type KubeObject } from './kube/api.ts';
import { LeaderElector } from './leader-election.ts';

/** One Lease with resourceVersion checks, as the API server keeps it. */
class LeaseStore {
  lease?: KubeObject & { spec?: Record<string, unknown> };
  private version = 0;
  reachable = true;

  async get() {
    if (!this.reachable) throw new ApiError(503, 'ServiceUnavailable', 'down');
    if (!this.lease) throw new ApiError(404, 'NotFound', 'no lease');
    return structuredClone(this.lease);
  }

  async create(object: KubeObject) {
    if (!this.reachable) throw new ApiError(503, 'ServiceUnavailable', 'down');
    if (this.lease) throw new ApiError(409, 'AlreadyExists', 'exists');
    this.lease = { ...structuredClone(object), metadata: { ...object.metadata, resourceVersion: String(++this.version) } };
    return structuredClone(this.lease);
  }

  async request(_method: string, _path: string, options: { body: KubeObject }) {
    if (!this.reachable) throw new ApiError(503, 'ServiceUnavailable', 'down');
    if (options.body.metadata?.resourceVersion !== this.lease?.metadata?.resourceVersion) throw new ApiError(409, 'Conflict', 'stale');
    this.lease = { ...structuredClone(options.body), metadata: { ...options.body.metadata, resourceVersion: String(++this.version) } };
    return structuredClone(this.lease);
  }
}

function candidate(store: LeaseStore, identity: string) {
  const elector = new LeaderElector({
    api: store as unknown as KubeApi, namespace: 'regmirror-system', name: 'regmirror-operator', identity,
    logger: createLogger('test', 'silent'), leaseDurationMs: 1_000, renewDeadlineMs: 600, retryPeriodMs: 100,
  });
  const state = { leading: false, stopped: false };
  const done = elector.run({ onStarted: () => { state.leading = true; }, onStopped: () => { state.leading = false; state.stopped = true; } });
  return { elector, state, done };
}

test('of two candidates exactly one leads, and the other takes over when the leader releases', async () => {
  const store = new LeaseStore();
  const a = candidate(store, 'a');
  const b = candidate(store, 'b');
  await sleep(500);
  assert.equal(Number(a.state.leading) + Number(b.state.leading), 1, 'one leader');
  const [leader, standby] = a.state.leading ? [a, b] : [b, a];
  leader.elector.stop();
  await leader.done;
  assert.equal(store.lease?.spec?.holderIdentity, '', 'released on a clean stop');
  await sleep(400);
  assert.equal(standby.state.leading, true, 'taken over without waiting out the lease');
  standby.elector.stop();
  await standby.done;
});

test('a leader that dies without releasing is replaced only after the lease duration', async () => {
  const store = new LeaseStore();
  const a = candidate(store, 'a');
  await sleep(300);
  assert.equal(a.state.leading, true);
  // "a" dies: it stops renewing but its record stays in the Lease.
  const frozen = structuredClone(store.lease);
  a.elector.stop();
  await a.done;
  store.lease = { ...frozen!, metadata: { ...frozen!.metadata, resourceVersion: store.lease!.metadata!.resourceVersion } };
  const b = candidate(store, 'b');
  await sleep(500);
  assert.equal(b.state.leading, false, 'the lease is still within its duration as b observed it');
  await sleep(1_000);
  assert.equal(b.state.leading, true);
  assert.equal(store.lease?.spec?.holderIdentity, 'b');
  b.elector.stop();
  await b.done;
});

test('a leader that cannot renew within the deadline steps down', async () => {
  const store = new LeaseStore();
  const a = candidate(store, 'a');
  await sleep(300);
  assert.equal(a.state.leading, true);
  store.reachable = false;
  await a.done;
  assert.equal(a.state.stopped, true);
  assert.equal(a.elector.isLeader, false);
});

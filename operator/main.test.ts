import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ConfigError } from '../common/config-error.ts';
import { parseFlags } from './main.ts';

test('flags default to all namespaces, leader election on, metrics on :8080 and a 5m cleanup bound', () => {
  const flags = parseFlags(['--kubeconfig', '/k'], {});
  assert.ok(flags !== 'help');
  assert.deepEqual(flags.namespaces, []);
  assert.equal(flags.leaderElect, true);
  assert.deepEqual(flags.metricsAddress, { host: '0.0.0.0', port: 8080 });
  assert.equal(flags.nodeCleanupTimeoutMs, 300_000);
  assert.match(flags.mirrorImage, /^ghcr\.io\/regmirror\/regmirror:/);
});

test('namespaces come from repeated or comma-separated flags, or WATCH_NAMESPACE', () => {
  const flags = parseFlags(['--namespace', 'a,b', '--namespace', 'c'], {});
  assert.ok(flags !== 'help');
  assert.deepEqual(flags.namespaces, ['a', 'b', 'c']);
  const fromEnv = parseFlags([], { WATCH_NAMESPACE: 'x' });
  assert.ok(fromEnv !== 'help');
  assert.deepEqual(fromEnv.namespaces, ['x']);
});

test('cleanup DaemonSets of mirrors whose namespace is being deleted go to the pod\'s own namespace (POD_NAMESPACE) unless --cleanup-namespace says otherwise', () => {
  const fromEnv = parseFlags([], { POD_NAMESPACE: 'regmirror-system' });
  assert.ok(fromEnv !== 'help');
  assert.equal(fromEnv.cleanupNamespace, 'regmirror-system');
  assert.equal(fromEnv.leaderElectionNamespace, 'regmirror-system');
  const given = parseFlags(['--cleanup-namespace', 'node-cleanup', '--leader-election-namespace', 'leases'], { POD_NAMESPACE: 'regmirror-system' });
  assert.ok(given !== 'help');
  assert.equal(given.cleanupNamespace, 'node-cleanup');
  assert.equal(given.leaderElectionNamespace, 'leases', 'each flag on its own');
  const outside = parseFlags([], {});
  assert.ok(outside !== 'help');
  // Outside a cluster there is no service account namespace file to fall back on.
  assert.equal(outside.cleanupNamespace, outside.leaderElectionNamespace);
});

test('bad flag values are configuration errors that name the flag', () => {
  const cases: [string[], RegExp][] = [
    [['--leader-elect', 'maybe'], /--leader-elect/],
    [['--metrics-address', 'nowhere'], /--metrics-address/],
    [['--node-cleanup-timeout', '5 minutes'], /--node-cleanup-timeout/],
    [['--workers', '0'], /--workers/],
    [['--lease-duration', '10s', '--renew-deadline', '10s'], /--renew-deadline/],
    [['--log-level', 'loud'], /--log-level/],
    [['--unknown'], /unknown/i],
  ];
  for (const [argv, message] of cases) {
    assert.throws(() => parseFlags(argv, {}), (error: Error) => error instanceof ConfigError && message.test(error.message));
  }
  const off = parseFlags(['--metrics-address', '0', '--leader-elect', 'false'], {});
  assert.ok(off !== 'help');
  assert.equal(off.metricsAddress, undefined);
  assert.equal(off.leaderElect, false);
});

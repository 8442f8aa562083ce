// The operator's Prometheus metrics, on a registry of its own so two operators in one process
// (tests) do not collide.
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

export class OperatorMetrics {
  readonly registry = new Registry();
  readonly reconciles = new Counter({
    name: 'regmirror_operator_reconcile_total',
    help: 'Reconciles of RegistryMirrors, by result (success, error, requeue).',
    labelNames: ['result'] as const,
    registers: [this.registry],
  });
  readonly errors = new Counter({
    name: 'regmirror_operator_reconcile_errors_total',
    help: 'Reconciles that failed and were retried with backoff.',
    registers: [this.registry],
  });
  readonly duration = new Histogram({
    name: 'regmirror_operator_reconcile_duration_seconds',
    help: 'Time one reconcile took.',
    buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
    registers: [this.registry],
  });
  readonly queueDepth = new Gauge({
    name: 'regmirror_operator_workqueue_depth',
    help: 'RegistryMirror keys waiting to be reconciled.',
    registers: [this.registry],
  });
  readonly leader = new Gauge({
    name: 'regmirror_operator_leader',
    help: '1 while this replica holds the leader-election lease and reconciles.',
    registers: [this.registry],
  });
  readonly lists = new Counter({
    name: 'regmirror_operator_list_total',
    help: 'Full lists per resource: one at start, then one each time the server answers a watch with 410 Gone.',
    labelNames: ['resource'] as const,
    registers: [this.registry],
  });
  readonly watchRestarts = new Counter({
    name: 'regmirror_operator_watch_restarts_total',
    help: 'Watches restarted after an error (API server gone, 410 Gone handled by a new list).',
    labelNames: ['resource'] as const,
    registers: [this.registry],
  });

  constructor(options: { processMetrics?: boolean } = {}) {
    if (options.processMetrics) collectDefaultMetrics({ register: this.registry });
  }
}

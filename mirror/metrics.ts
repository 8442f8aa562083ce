// Prometheus metrics for the mirror, on its own registry so tests can run several mirrors in one
// process. Names follow Prometheus conventions: regmirror_<what>_<unit>.
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

export class MirrorMetrics {
  readonly registry = new Registry();

  readonly requests = new Counter({
    name: 'regmirror_http_requests_total',
    help: 'Client requests by route (manifest, blob, tags, referrers, base, other), method and status.',
    labelNames: ['route', 'method', 'status'] as const,
    registers: [this.registry],
  });

  readonly cacheRequests = new Counter({
    name: 'regmirror_cache_requests_total',
    help: 'Manifest and blob lookups by kind and result: hit (served from the store), miss (fetched upstream), stale (upstream failed, stored copy served), revalidated (stored manifest served after an upstream HEAD: a tag unchanged, or content stored for another repository confirmed for this one).',
    labelNames: ['kind', 'result'] as const,
    registers: [this.registry],
  });

  readonly bytesServed = new Counter({
    name: 'regmirror_served_bytes_total',
    help: 'Bytes sent to clients, by source: store (already cached) or upstream (streamed during a fill).',
    labelNames: ['source'] as const,
    registers: [this.registry],
  });

  readonly bytesFetched = new Counter({
    name: 'regmirror_upstream_fetched_bytes_total',
    help: 'Blob bytes fetched from each upstream.',
    labelNames: ['upstream'] as const,
    registers: [this.registry],
  });

  readonly upstreamRequests = new Histogram({
    name: 'regmirror_upstream_request_duration_seconds',
    help: 'Time to response headers of upstream requests, by upstream, method and status ("error" when no response).',
    labelNames: ['upstream', 'method', 'status'] as const,
    buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
    registers: [this.registry],
  });

  readonly inflightFills = new Gauge({
    name: 'regmirror_inflight_fetches',
    help: 'Upstream blob and manifest fetches in progress (each shared by every client waiting for it).',
    registers: [this.registry],
  });

  readonly fillFailures = new Counter({
    name: 'regmirror_fetch_failures_total',
    help: 'Upstream fetches that failed and stored nothing, by reason (digest, size, upstream, timeout, disk).',
    labelNames: ['reason'] as const,
    registers: [this.registry],
  });

  readonly rateLimitRemaining = new Gauge({
    name: 'regmirror_upstream_ratelimit_remaining',
    help: "The upstream's last ratelimit-remaining header (Docker Hub pulls left in its window).",
    labelNames: ['upstream'] as const,
    registers: [this.registry],
  });

  readonly storeBytes = new Gauge({
    name: 'regmirror_store_bytes',
    help: 'Bytes of blobs and manifests in the store.',
    registers: [this.registry],
  });

  readonly storeReservedBytes = new Gauge({
    name: 'regmirror_store_reserved_bytes',
    help: 'Bytes set aside under storage.maxSize for blob downloads in progress (counted in regmirror_store_bytes once stored).',
    registers: [this.registry],
  });

  readonly storeItems = new Gauge({
    name: 'regmirror_store_items',
    help: 'Blobs and manifests in the store.',
    registers: [this.registry],
  });

  readonly evictions = new Counter({
    name: 'regmirror_evictions_total',
    help: 'Blobs and manifests removed from the store, by reason: ttl (not read for storage.ttl), size (over storage.maxSize) or room (the volume was full).',
    labelNames: ['reason'] as const,
    registers: [this.registry],
  });

  readonly evictedBytes = new Counter({
    name: 'regmirror_evicted_bytes_total',
    help: 'Bytes removed from the store, by reason.',
    labelNames: ['reason'] as const,
    registers: [this.registry],
  });

  readonly prefetchImages = new Counter({
    name: 'regmirror_prefetch_images_total',
    help: 'Images from the prefetch list brought into the store, by result (ok, failed).',
    labelNames: ['result'] as const,
    registers: [this.registry],
  });

  readonly prefetchLastRun = new Gauge({
    name: 'regmirror_prefetch_last_run_timestamp_seconds',
    help: 'When the last prefetch run finished (Unix time).',
    registers: [this.registry],
  });

  constructor() {
    collectDefaultMetrics({ register: this.registry, prefix: 'regmirror_process_' });
  }
}

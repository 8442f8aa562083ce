// Prefetch: images named in the config are brought into the store at start and every
// prefetchInterval, so the first pull on a new node is already local. It goes through the same
// cache as clients (one fetch per blob, verified, tag revalidation), in the background.
import { ConfigError } from '../common/config-error.ts';
import type { Logger } from '../common/logger.ts';
import type { PullThroughCache, Repository } from './cache.ts';
import type { MirrorMetrics } from './metrics.ts';
import { isDigestReference, parseDigest, prefetchTarget, type ImageReference } from './reference.ts';
import type { UpstreamClient } from './upstream.ts';

export interface PrefetchTarget extends ImageReference {
  /** As written in the config, for logs. */
  text: string;
}

interface Descriptor {
  digest: string;
  size?: number;
  platform?: { os?: string; architecture?: string; variant?: string };
}

export class Prefetcher {
  private readonly cache: PullThroughCache;
  private readonly upstreams: Map<string, { client: UpstreamClient; tagTTLMs: number }>;
  private readonly targets: PrefetchTarget[];
  private readonly platforms: string[];
  private readonly logger: Logger;
  private readonly metrics: MirrorMetrics;
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<{ ok: number; failed: number }> | undefined;
  private stopped = false;

  constructor(options: {
    cache: PullThroughCache;
    upstreams: Map<string, { client: UpstreamClient; tagTTLMs: number }>;
    defaultRegistry: string;
    references: string[];
    platforms: string[];
    logger: Logger;
    metrics: MirrorMetrics;
    configSource: string;
  }) {
    this.cache = options.cache;
    this.upstreams = options.upstreams;
    this.platforms = options.platforms;
    this.logger = options.logger.child({ task: 'prefetch' });
    this.metrics = options.metrics;
    const registries = new Set(this.upstreams.keys());
    this.targets = options.references.map((text, index) => {
      const target = prefetchTarget(text, options.defaultRegistry, registries, 'upstreams[].registry');
      if ('problem' in target) throw new ConfigError(options.configSource, `prefetch[${index}]`, target.problem);
      return { text, ...target };
    });
  }

  /** Runs now in the background, then every interval. */
  start(intervalMs: number): void {
    if (this.targets.length === 0) return;
    void this.runOnce();
    this.timer = setInterval(() => void this.runOnce(), intervalMs);
    this.timer.unref();
  }

  stop(): void {
    this.stopped = true;
    clearInterval(this.timer);
  }

  /** One pass over the list; a run already under way is joined, not doubled. */
  runOnce(): Promise<{ ok: number; failed: number }> {
    this.running ??= this.run().finally(() => (this.running = undefined));
    return this.running;
  }

  private async run(): Promise<{ ok: number; failed: number }> {
    let ok = 0;
    let failed = 0;
    this.logger.info({ images: this.targets.length, platforms: this.platforms }, 'prefetch started');
    for (const [index, target] of this.targets.entries()) {
      if (this.stopped) break;
      try {
        const { fetchedBlobs, fetchedBytes, blobs } = await this.prefetchImage(target);
        ok++;
        this.metrics.prefetchImages.inc({ result: 'ok' });
        this.logger.info({ image: target.text, progress: `${index + 1}/${this.targets.length}`, blobs, fetchedBlobs, fetchedBytes }, 'prefetched image');
      } catch (error) {
        failed++;
        this.metrics.prefetchImages.inc({ result: 'failed' });
        this.logger.warn({ image: target.text, progress: `${index + 1}/${this.targets.length}`, reason: (error as Error).message }, 'prefetch of image failed; will retry next run');
      }
    }
    this.metrics.prefetchLastRun.set(Date.now() / 1000);
    this.logger.info({ ok, failed }, 'prefetch finished');
    return { ok, failed };
  }

  private async prefetchImage(target: PrefetchTarget): Promise<{ blobs: number; fetchedBlobs: number; fetchedBytes: number }> {
    const upstream = this.upstreams.get(target.registry)!;
    const repo: Repository = { upstream: upstream.client, name: target.name, tagTTLMs: upstream.tagTTLMs };
    const top = isDigestReference(target.reference) ? await this.cache.manifestByDigest(repo, parseDigest(target.reference)) : await this.cache.manifestByTag(repo, target.reference);
    const document = JSON.parse(top.bytes.toString('utf8')) as { manifests?: Descriptor[]; config?: Descriptor; layers?: Descriptor[] };
    const images = document.manifests
      ? await Promise.all(document.manifests.filter((m) => this.wanted(m)).map(async (m) => JSON.parse((await this.cache.manifestByDigest(repo, parseDigest(m.digest))).bytes.toString('utf8')) as typeof document))
      : [document];
    if (images.length === 0) throw new Error(`no manifest for platforms ${this.platforms.join(', ')} in the index`);
    let blobs = 0;
    let fetchedBlobs = 0;
    let fetchedBytes = 0;
    for (const image of images) {
      for (const blob of [...(image.config ? [image.config] : []), ...(image.layers ?? [])]) {
        blobs++;
        if ((await this.cache.ensureBlob(repo, parseDigest(blob.digest))) === 'fetched') {
          fetchedBlobs++;
          fetchedBytes += blob.size ?? 0;
        }
      }
    }
    return { blobs, fetchedBlobs, fetchedBytes };
  }

  private wanted(descriptor: Descriptor): boolean {
    const p = descriptor.platform;
    if (!p?.os || !p.architecture) return false;
    return this.platforms.some((wanted) => {
      const [os, architecture, variant] = wanted.split('/');
      return os === p.os && architecture === p.architecture && (!variant || variant === p.variant);
    });
  }
}

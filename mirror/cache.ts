// The pull-through cache: local first, then the upstream, once. Manifests by digest and blobs are
// immutable and never re-asked; a tag is re-checked with a HEAD (free of Docker Hub's rate limit)
// once its tagTTL has passed, and when that check fails the stored manifest is served. Content is
// stored once by digest but served only under repositories whose upstream has it
// (repository-links.ts): stored content asked for under another repository is confirmed with a HEAD.
import type { FileHandle } from 'node:fs/promises';
import { pipeline } from 'node:stream';
import { createBrotliDecompress, createGunzip, createInflate } from 'node:zlib';
import type { Logger } from '../common/logger.ts';
import {
  RegistryError,
  blobUnknown,
  upstreamDenied,
  isVolumeFull,
  manifestInvalid,
  manifestUnknown,
  nameUnknown,
  tooManyRequests,
  upstreamUnavailable,
} from './errors.ts';
import type { ByteSource } from './blob-sender.ts';
import { BlobFill, DigestMismatchError, SizeMismatchError, StoreWriteError } from './fill.ts';
import { ManifestMemory } from './manifest-memory.ts';
import type { MirrorMetrics } from './metrics.ts';
import { digestOf, parseDigest, type Digest } from './reference.ts';
import { RepositoryLinks } from './repository-links.ts';
import { TagMemory } from './tag-memory.ts';
import { openTemporary, type ContentStore, type StoredManifest } from './store.ts';
import { TokenServiceError, UpstreamAuthError, type UpstreamClient, type UpstreamResponse } from './upstream.ts';

export const MANIFEST_MEDIA_TYPES = [
  'application/vnd.oci.image.index.v1+json',
  'application/vnd.docker.distribution.manifest.list.v2+json',
  'application/vnd.oci.image.manifest.v1+json',
  'application/vnd.docker.distribution.manifest.v2+json',
] as const;
const ACCEPT = MANIFEST_MEDIA_TYPES.join(', ');
const OCI_INDEX = 'application/vnd.oci.image.index.v1+json';

/** Distribution's own limit: nothing larger is a manifest. */
const MAX_MANIFEST_BYTES = 4 * 1024 * 1024;
/** At most one sweep of the tag records on disk an hour while running (sweepForgottenTags). */
const TAG_SWEEP_INTERVAL_MS = 3_600_000;

export interface ManifestResult extends StoredManifest {
  digest: string;
}

/** An open stored blob; eviction leaves it alone until close(). */
export interface StoredBlobFile {
  handle: FileHandle;
  close(): Promise<void>;
}

export type BlobResult =
  /** openFile: undefined when eviction took the blob since the lookup (then fetch it: blobFromUpstream). */
  | { source: 'store'; size: number; openFile(): Promise<StoredBlobFile | undefined> }
  | {
      source: 'upstream';
      size: number | undefined;
      reader: ByteSource & { close(): void };
      /** Settles once every byte is verified and stored (rejects, with what a client is told, when the fetch fails). */
      verified: Promise<void>;
    };

export interface Repository {
  upstream: UpstreamClient;
  /** Normalised repository name (library/nginx for Docker Hub's nginx). */
  name: string;
  /** Per-upstream tag trust window. */
  tagTTLMs: number;
}

interface FillEntry {
  fill: BlobFill;
  /** The repository (`registry/name`) whose upstream it is fetched from. */
  repository: string;
  /** Set once the fetch failed, before or after the upstream answered: later requests start their own. */
  failed: boolean;
  /** Resolves once the upstream answered 200 and bytes flow. */
  ready: Promise<BlobFill>;
  /** Resolves once the blob is verified and in the store. */
  stored: Promise<void>;
}

export interface CacheHooks {
  /** Told of every stored item read or written, for eviction's access order. */
  onAccess?(kind: 'blob' | 'manifest', digest: Digest, size: number): void;
  /** Told when a client starts streaming a stored blob; the returned function is called when it stops. */
  onStream?(digest: string): () => void;
  /** Told when the cache removed a stored item itself (a manifest that no longer matched its digest). */
  onRemoved?(kind: 'blob' | 'manifest', digest: Digest): void;
  /** Told when a write of this many bytes failed because the store's volume is full. */
  onStoreFull?(bytes: number): void;
  /** Asked before a blob download of this many bytes (undefined: not announced) is written; resolves, once there is room, with the function that gives it back. */
  reserve?(bytes: number | undefined, digest: string): Promise<() => void>;
  /** Whether the store holds this digest; undefined while that is not known yet (repository links are kept then). */
  isStored?(digest: string): boolean | undefined;
}

export class PullThroughCache {
  private readonly store: ContentStore;
  private readonly logger: Logger;
  private readonly metrics: MirrorMetrics;
  private readonly now: () => number;
  private readonly hooks: CacheHooks;
  private readonly blobFills = new Map<string, FillEntry>();
  private readonly manifestFetches = new Map<string, Promise<ManifestResult>>();
  private readonly tagChecks = new Map<string, Promise<ManifestResult>>();
  /** Upstreams that answered 429 with Retry-After: until then, stored tags are served without asking. */
  private readonly quietUntil = new Map<string, number>();
  /** Tag records, read through from disk: a warm tag pull within tagTTL does no file I/O. */
  private readonly tags: TagMemory;
  /** The sweep of tag records on disk started after an eviction (see contentRemoved): when, and whether it runs. */
  private tagSweep = { startedAt: -Infinity, running: false };
  /** Small manifests kept in memory; the store stays the source of truth. */
  private readonly manifestMemory: ManifestMemory;
  /** Which repositories each stored digest may be served under. */
  private readonly links: RepositoryLinks;
  /** Upstream HEADs (askUpstream) in flight, one per repository, kind and digest. */
  private readonly confirmations = new Map<string, Promise<number | undefined>>();

  constructor(options: { store: ContentStore; logger: Logger; metrics: MirrorMetrics; now?: () => number; hooks?: CacheHooks; manifestMemoryBytes?: number; linksPruneDelayMs?: number; tagMemoryLimit?: number }) {
    this.store = options.store;
    this.logger = options.logger;
    this.metrics = options.metrics;
    this.now = options.now ?? Date.now;
    this.hooks = options.hooks ?? {};
    this.manifestMemory = new ManifestMemory(options.manifestMemoryBytes ?? 64 * 1024 * 1024);
    this.tags = new TagMemory(options.tagMemoryLimit);
    this.links = new RepositoryLinks(this.store, this.logger, {
      // content being fetched keeps its links: it is about to be stored
      isKept: (digest) => (this.blobFills.has(digest) ? true : this.hooks.isStored?.(digest)),
      ...(options.linksPruneDelayMs !== undefined ? { pruneDelayMs: options.linksPruneDelayMs } : {}),
    });
  }

  // ---------------------------------------------------------------- manifests

  async manifestByDigest(repo: Repository, digest: Digest): Promise<ManifestResult> {
    const stored = await this.readManifest(digest);
    if (stored) {
      // no await on the hot path (a digest this repository is known to have, its references linked)
      const has = this.links.has(repo.upstream.registry, repo.name, digest.text);
      const known = typeof has === 'boolean' ? has : await has;
      if (!known) await this.askUpstream(repo, 'manifests', digest);
      this.metrics.cacheRequests.inc({ kind: 'manifest', result: known ? 'hit' : 'revalidated' });
      const linking = this.links.addManifest(repo.upstream.registry, repo.name, digest.text, stored.bytes);
      if (linking) await linking;
      return { ...stored, digest: digest.text };
    }
    this.metrics.cacheRequests.inc({ kind: 'manifest', result: 'miss' });
    return this.fetchManifestOnce(repo, digest.text, digest);
  }

  async manifestByTag(repo: Repository, tag: string): Promise<ManifestResult> {
    const key = tagKey(repo.upstream.registry, repo.name, tag);
    const record = await this.readTagRecord(repo, tag, key);
    let result: ManifestResult | undefined;
    if (record && this.now() - record.checkedAt < repo.tagTTLMs) {
      const stored = await this.readManifest(parseDigest(record.digest));
      if (stored) {
        this.metrics.cacheRequests.inc({ kind: 'manifest', result: 'hit' });
        result = { ...stored, digest: record.digest };
      }
    }
    if (!result) {
      let pending = this.tagChecks.get(key);
      if (!pending) {
        pending = this.revalidateTag(repo, tag, key, record).finally(() => this.tagChecks.delete(key));
        this.tagChecks.set(key, pending);
      }
      result = await pending;
    }
    // The tag record is this repository's own, so what it names is too (records from before links
    // were kept gain them here).
    const linking = this.links.addManifest(repo.upstream.registry, repo.name, result.digest, result.bytes);
    if (linking) await linking;
    return result;
  }

  private async revalidateTag(repo: Repository, tag: string, key: string, record: { digest: string; mediaType: string } | undefined): Promise<ManifestResult> {
    const stored = record ? await this.readManifest(parseDigest(record.digest)) : undefined;
    if (!record || !stored) {
      this.metrics.cacheRequests.inc({ kind: 'manifest', result: 'miss' });
      const fetched = await this.fetchManifestOnce(repo, tag);
      await this.rememberTag(repo, tag, key, fetched);
      return fetched;
    }

    // The upstream asked us to hold off (429 with Retry-After): the copy we hold is the answer until then.
    const quiet = this.quietUntil.get(repo.upstream.registry);
    if (quiet !== undefined && this.now() < quiet) return this.serveStale(repo, tag, record, stored, 'upstream rate limit (Retry-After)', 'debug');

    // We hold a copy: ask the upstream, cheaply, whether the tag still points at it.
    let response: UpstreamResponse;
    try {
      response = await repo.upstream.fetch(repo.name, `manifests/${tag}`, { method: 'HEAD', accept: ACCEPT, answerWithinMs: repo.upstream.timeouts.revalidateMs });
      await response.body.dump();
    } catch (error) {
      return this.serveStale(repo, tag, record, stored, describe(error));
    }
    if (response.status === 429) this.holdOff(repo, header(response.headers, 'retry-after'));
    if (response.status === 429 || response.status >= 500) return this.serveStale(repo, tag, record, stored, `HTTP ${response.status}`);
    if (response.status === 404) {
      this.tags.delete(key);
      await this.store.deleteTag(repo.upstream.registry, repo.name, tag);
      throw manifestUnknown(tag);
    }
    if (response.status === 401 || response.status === 403) throw upstreamDenied(`upstream ${repo.upstream.registry} denied access to ${repo.name}`);
    const upstreamDigest = header(response.headers, 'docker-content-digest');
    if (response.status === 200 && upstreamDigest === record.digest) {
      await this.rememberTag(repo, tag, key, { digest: record.digest, mediaType: record.mediaType });
      this.metrics.cacheRequests.inc({ kind: 'manifest', result: 'revalidated' });
      return { ...stored, digest: record.digest };
    }
    // The tag moved (or the upstream did not say where: no digest on its HEAD, or no HEAD at all):
    // take the current manifest.
    const movedTo = tryParseDigest(upstreamDigest);
    const moved = movedTo ? await this.readManifest(movedTo) : undefined;
    let fetched: ManifestResult;
    if (moved && movedTo) {
      fetched = { ...moved, digest: movedTo.text };
    } else {
      try {
        fetched = await this.fetchManifestOnce(repo, tag);
      } catch (error) {
        // The tag moved but the new manifest would not come (Docker Hub's rate limit refuses GETs
        // while HEADs still answer, or the upstream failed): the copy we hold still answers. A tag
        // gone or access denied since the HEAD is the upstream's word and goes to the client.
        if (error instanceof RegistryError && [401, 403, 404].includes(error.status)) throw error;
        if (error instanceof RegistryError && error.status === 429) this.holdOff(repo, error.headers['retry-after']);
        return this.serveStale(repo, tag, record, stored, `tag moved to ${upstreamDigest ?? 'an unnamed digest'} but fetching it failed: ${describe(error)}`);
      }
    }
    if (fetched.digest === record.digest) {
      // it had not moved after all: the GET said what the HEAD did not
      this.metrics.cacheRequests.inc({ kind: 'manifest', result: 'revalidated' });
    } else {
      this.metrics.cacheRequests.inc({ kind: 'manifest', result: 'miss' });
      this.logger.info({ upstream: repo.upstream.registry, repository: repo.name, tag, from: record.digest, to: fetched.digest }, 'tag moved upstream');
    }
    await this.rememberTag(repo, tag, key, fetched);
    return fetched;
  }

  private serveStale(repo: Repository, tag: string, record: { digest: string }, stored: StoredManifest, why: string, level: 'warn' | 'debug' = 'warn'): ManifestResult {
    this.metrics.cacheRequests.inc({ kind: 'manifest', result: 'stale' });
    this.logger[level]({ upstream: repo.upstream.registry, repository: repo.name, tag, digest: record.digest, reason: why }, 'upstream could not revalidate tag; serving stored manifest');
    return { ...stored, digest: record.digest };
  }

  /** Notes an upstream's Retry-After (seconds or an HTTP date; at most an hour is honoured). */
  private holdOff(repo: Repository, retryAfter: string | undefined): void {
    const ms = retryAfterMs(retryAfter, this.now());
    if (ms === undefined || ms <= 0) return;
    const until = this.now() + Math.min(ms, MAX_HOLD_OFF_MS);
    this.quietUntil.set(repo.upstream.registry, until);
    this.logger.warn({ upstream: repo.upstream.registry, retryAfter, until: new Date(until).toISOString() }, 'upstream rate limit: stored tags are served without revalidation until then');
  }

  /**
   * Best effort: the manifest is stored and the record is also kept in memory, so a write that
   * fails (a full volume) must not fail the pull; the record on disk is only what a restart reads.
   */
  private async rememberTag(repo: Repository, tag: string, key: string, manifest: { digest: string; mediaType: string }): Promise<void> {
    const record = { digest: manifest.digest, mediaType: manifest.mediaType, checkedAt: this.now() };
    this.tags.set(key, { registry: repo.upstream.registry, name: repo.name, tag }, record);
    try {
      await this.store.writeTag(repo.upstream.registry, repo.name, tag, record);
    } catch (error) {
      const full = isVolumeFull(error);
      this.logger.warn({ upstream: repo.upstream.registry, repository: repo.name, tag, digest: manifest.digest, err: error }, full ? 'the store volume is full: tag record not written (the manifest is served; making room)' : 'tag record not written (the manifest is served)');
      if (full) this.hooks.onStoreFull?.(Buffer.byteLength(JSON.stringify(record)));
    }
  }

  private async readTagRecord(repo: Repository, tag: string, key: string) {
    const cached = this.tags.get(key);
    if (cached) return cached;
    const record = await this.store.readTag(repo.upstream.registry, repo.name, tag);
    if (record) this.tags.set(key, { registry: repo.upstream.registry, name: repo.name, tag }, record);
    return record;
  }

  /** One upstream GET per manifest reference, however many clients ask at once. */
  private fetchManifestOnce(repo: Repository, reference: string, digest?: Digest): Promise<ManifestResult> {
    const key = `${repo.upstream.registry}/${repo.name}@${reference}`;
    let pending = this.manifestFetches.get(key);
    if (!pending) {
      this.metrics.inflightFills.inc();
      pending = this.fetchManifest(repo, reference, digest).finally(() => {
        this.metrics.inflightFills.dec();
        this.manifestFetches.delete(key);
      });
      this.manifestFetches.set(key, pending);
    }
    return pending;
  }

  private async fetchManifest(repo: Repository, reference: string, expected?: Digest): Promise<ManifestResult> {
    const response = await this.countFetchFailure(this.upstreamGet(repo, `manifests/${reference}`, ACCEPT, () => manifestUnknown(reference)));
    const bytes = await readDocument(repo, response);
    const algorithm = expected?.algorithm ?? 'sha256';
    const actual = digestOf(bytes, algorithm);
    const claimed = expected?.text ?? header(response.headers, 'docker-content-digest');
    if (claimed && claimed.startsWith(`${algorithm}:`) && claimed !== actual) {
      this.metrics.fillFailures.inc({ reason: 'digest' });
      this.logger.error({ upstream: repo.upstream.registry, repository: repo.name, reference, expected: claimed, actual }, 'upstream manifest does not match its digest; not stored');
      throw upstreamUnavailable(repo.upstream.registry, `manifest content does not match digest ${claimed}`);
    }
    const mediaType = manifestMediaType(header(response.headers, 'content-type'), bytes);
    if (!mediaType) {
      const custom = customManifestType(bytes);
      // Not a manifest at all (a proxy's or CDN's HTML page answering 200): the upstream failed,
      // and a stored tag is served instead (revalidateTag).
      if (!custom) throw upstreamUnavailable(repo.upstream.registry, `it answered ${reference} with a document that is not a manifest`);
      // A manifest of a custom artifact type, which the upstream has: not an outage, and a client
      // that falls back to the upstream on a 404 (containerd) still gets it.
      throw new RegistryError('MANIFEST_UNKNOWN', 404, `${reference} is a manifest of type ${custom.slice(0, 200)}, which this mirror does not serve (it serves ${MANIFEST_MEDIA_TYPES.join(', ')})`, { reference });
    }
    const digest = parseDigest(actual);
    try {
      await this.store.writeManifest(digest, { bytes, mediaType });
    } catch (error) {
      // the store's trouble, as for a blob: 503 naming the system's code, counted as a disk failure
      const failure = (error as NodeJS.ErrnoException).syscall ? new StoreWriteError(error as NodeJS.ErrnoException) : error;
      this.metrics.fillFailures.inc({ reason: failureReason(failure as Error) });
      if (isVolumeFull(failure)) this.hooks.onStoreFull?.(bytes.length);
      throw failure;
    }
    this.manifestMemory.add(digest.text, { bytes, mediaType });
    this.hooks.onAccess?.('manifest', digest, bytes.length);
    await this.links.addManifest(repo.upstream.registry, repo.name, actual, bytes);
    this.logger.info({ upstream: repo.upstream.registry, repository: repo.name, reference, digest: actual, mediaType, bytes: bytes.length }, 'manifest fetched from upstream');
    return { bytes, mediaType, digest: actual };
  }

  private async readManifest(digest: Digest): Promise<StoredManifest | undefined> {
    const inMemory = this.manifestMemory.get(digest.text);
    if (inMemory) {
      this.hooks.onAccess?.('manifest', digest, inMemory.bytes.length);
      return inMemory;
    }
    const stored = await this.store.readManifest(digest);
    if (!stored) return undefined;
    // A file changed since it was written (a disk fault, a hand edit) would be served for good under
    // a digest it does not have: checked here, as it leaves the disk (manifests are small).
    const actual = digestOf(stored.bytes, digest.algorithm);
    if (actual !== digest.text) {
      this.logger.warn({ digest: digest.text, actual, bytes: stored.bytes.length }, 'stored manifest does not match its digest; removed from the store, fetching it again');
      await this.store.remove('manifest', digest);
      this.hooks.onRemoved?.('manifest', digest);
      return undefined;
    }
    this.manifestMemory.add(digest.text, stored);
    this.hooks.onAccess?.('manifest', digest, stored.bytes.length);
    return stored;
  }

  /** Repositories and tags the cache holds in memory (both bounded: what they are kept for is in their classes). */
  get memory(): { repositories: number; tags: number } {
    return { repositories: this.links.repositories, tags: this.tags.size };
  }

  /** Content left the store (eviction, or the cache removed it): its in-memory copy goes, and the repositories' links to it a little later. */
  contentRemoved(kind: 'blob' | 'manifest', digest: string): void {
    if (kind === 'manifest') {
      this.manifestMemory.delete(digest);
      // a tag record is only worth its manifest: without it the tag is fetched again either way
      for (const { registry, name, tag } of this.tags.takePointingAt(digest)) {
        void this.store.deleteTag(registry, name, tag).catch((error: unknown) => this.logger.warn({ upstream: registry, repository: name, tag, err: error }, 'could not remove the record of a tag whose manifest was evicted'));
      }
      if (this.tags.forgotten > 0) this.sweepForgottenTags();
    }
    this.links.contentRemoved();
  }

  /**
   * Records that left memory for its limit are not found by their manifest when it is evicted: once
   * some have, an eviction of a manifest starts a sweep of the records on disk (sweepTagRecords), at
   * most one an hour, so a mirror that sees more tags than it keeps in memory (a CI pushing one per
   * build) does not fill its disk with records of evicted manifests until it restarts.
   */
  private sweepForgottenTags(): void {
    const now = this.now();
    if (this.tagSweep.running || now - this.tagSweep.startedAt < TAG_SWEEP_INTERVAL_MS) return;
    this.tagSweep = { startedAt: now, running: true };
    this.tags.forgotten = 0;
    void this.sweepTagRecordsLogged().finally(() => (this.tagSweep.running = false));
  }

  /** sweepTagRecords, saying in the log what it removed or why it could not. */
  async sweepTagRecordsLogged(): Promise<void> {
    try {
      const removed = await this.sweepTagRecords();
      if (removed > 0) this.logger.info({ tags: removed }, 'removed tag records whose manifest is no longer stored');
    } catch (error) {
      this.logger.warn({ err: error }, 'could not sweep the tag records');
    }
  }

  /**
   * Removes the tag records on disk whose manifest the store no longer holds (evicted before the
   * last restart, or while the record was not in memory): once the store's index is built.
   */
  async sweepTagRecords(): Promise<number> {
    let removed = 0;
    for await (const { registry, name, tag, record } of this.store.tagRecords()) {
      // an unreadable record is the mirror's own file and no use to anyone
      if (record && this.hooks.isStored?.(record.digest) !== false) continue;
      this.tags.delete(tagKey(registry, name, tag));
      await this.store.deleteTag(registry, name, tag).catch(() => undefined);
      removed++;
    }
    return removed;
  }

  // ---------------------------------------------------------------- blobs

  /** Whether a blob can be served right now without the upstream (HEAD from the store). */
  async blobFromStore(digest: Digest): Promise<Extract<BlobResult, { source: 'store' }> | undefined> {
    const stat = await this.store.statBlob(digest);
    if (!stat) return undefined;
    this.hooks.onAccess?.('blob', digest, stat.size);
    return {
      source: 'store',
      size: stat.size,
      openFile: async () => {
        const release = this.hooks.onStream?.(digest.text) ?? (() => undefined);
        try {
          const handle = await this.store.openBlob(digest);
          this.metrics.cacheRequests.inc({ kind: 'blob', result: 'hit' });
          return { handle, close: () => handle.close().finally(release) };
        } catch {
          // Evicted between the lookup and now: as if it had never been there.
          release();
          return undefined;
        }
      },
    };
  }

  async blob(repo: Repository, digest: Digest): Promise<BlobResult> {
    // A stored blob counts as a hit once its file is open (eviction may take it before then, and
    // the request becomes a miss), so each request is counted once, by where its bytes came from.
    const stored = await this.blobFromStore(digest);
    if (stored && !(await this.links.has(repo.upstream.registry, repo.name, digest.text))) await this.askUpstream(repo, 'blobs', digest);
    return stored ?? this.blobFromUpstream(repo, digest);
  }

  /** The size of a blob for HEAD: the store's, when this repository may have it, else the upstream's (nothing is fetched). */
  async blobSize(repo: Repository, digest: Digest): Promise<number | undefined> {
    const stored = await this.store.statBlob(digest);
    if (stored && (await this.links.has(repo.upstream.registry, repo.name, digest.text))) return stored.size;
    const size = await this.askUpstream(repo, 'blobs', digest);
    return stored?.size ?? size;
  }

  /** A miss: the blob streamed from the upstream as it is fetched, one fetch for every client. */
  async blobFromUpstream(repo: Repository, digest: Digest): Promise<Extract<BlobResult, { source: 'upstream' }>> {
    this.metrics.cacheRequests.inc({ kind: 'blob', result: 'miss' });
    const repository = `${repo.upstream.registry}/${repo.name}`;
    let entry = this.blobFills.get(digest.text);
    // A fill that failed a moment ago is not joined: this request starts a new one.
    if (!entry || failed(entry)) entry = this.startFill(repo, digest);
    let fill: BlobFill;
    for (let attempt = 1; ; attempt++) {
      try {
        fill = await entry.ready;
        break;
      } catch (error) {
        // Another repository's fetch of the same digest failed before any byte (not there, denied):
        // that is its answer, not this repository's. A fill under way for it (another client of
        // this or a third repository may have started one meanwhile) is joined, as any is: one
        // download per digest. Bounded: each attempt is a different fill.
        if (entry.repository === repository || attempt === 3) throw error;
        const current = this.blobFills.get(digest.text);
        entry = current && !failed(current) ? current : this.startFill(repo, digest);
      }
    }
    // Opened in the same turn as the fill's headers arrived: the fill keeps its bytes for this reader.
    const reader = fill.openReader();
    // once stored, the blob is evicted only after this client has it (the fill reads its file until then)
    const unpin = this.hooks.onStream?.(digest.text) ?? (() => undefined);
    const close = () => {
      reader.close();
      unpin();
    };
    if (entry.repository !== repository && !(await this.links.has(repo.upstream.registry, repo.name, digest.text))) {
      // Joined another repository's fetch: this repository's upstream must have the blob too. The
      // open reader keeps the fill's file meanwhile.
      try {
        await this.askUpstream(repo, 'blobs', digest);
      } catch (error) {
        close();
        throw error;
      }
    }
    // What a client that got no byte yet is told when the fetch fails; one that did is cut.
    const told = (error: unknown) => (failureReason(error as Error) === 'disk' ? error : upstreamUnavailable(repo.upstream.registry, `the transfer of ${digest.text} failed (${describe(error)}); nothing was stored, try again`));
    const read: ByteSource['read'] = (position, max) => {
      try {
        return reader.read(position, max);
      } catch (error) {
        throw told(error);
      }
    };
    const verified = entry.stored.catch((error: unknown) => {
      throw told(error);
    });
    // a client gone before it waited on it must not leave an unhandled rejection
    verified.catch(() => undefined);
    return { source: 'upstream', size: fill.size, reader: { read, close }, verified };
  }

  private startFill(repo: Repository, digest: Digest): FillEntry {
    const fill = new BlobFill(digest, this.store.temporaryPath(), openTemporary);
    const started = this.now();
    this.metrics.inflightFills.inc();
    const ready = this.countFetchFailure(this.upstreamGet(repo, `blobs/${digest.text}`, undefined, () => blobUnknown(digest.text)));
    const stored = ready.then(async (response) => {
      const length = header(response.headers, 'content-length');
      const size = length !== undefined && Number.isFinite(Number(length)) ? Number(length) : undefined;
      this.logger.info({ upstream: repo.upstream.registry, repository: repo.name, digest: digest.text, bytes: size }, 'blob fetch from upstream started');
      const fetched = this.metrics.bytesFetched.labels({ upstream: repo.upstream.registry });
      let release: () => void = () => undefined;
      try {
        await fill.run(
          { size, body: response.body, onBytes: (n) => fetched.inc(n) },
          async (temporary) => {
            await this.store.commitBlob(temporary, digest);
            // From here the store serves it; later requests must not find this fill.
            if (this.blobFills.get(digest.text) === entry) this.blobFills.delete(digest.text);
            this.hooks.onAccess?.('blob', digest, fill.received);
            release(); // counted as stored now
          },
          // Inside the fill, not before it: a reservation that fails then fails the fill, which
          // closes the upstream connection and tells its clients, rather than leaving both waiting.
          async () => {
            release = (await this.hooks.reserve?.(size, digest.text)) ?? release;
          },
        );
        this.logger.info({ upstream: repo.upstream.registry, repository: repo.name, digest: digest.text, bytes: fill.received, ms: this.now() - started }, 'blob stored');
      } catch (error) {
        const reason = failureReason(error as Error);
        release();
        this.metrics.fillFailures.inc({ reason });
        // the next request for it (a runtime retries, or falls back to the upstream meanwhile) finds room
        if (isVolumeFull(error)) this.hooks.onStoreFull?.(size ?? fill.received);
        // An upstream that cuts or stalls a transfer is its trouble, retried by the next request:
        // a warning. Bytes that fail their digest or size, or a store that cannot take them, are
        // what an operator must look at: an error.
        const level = reason === 'upstream' || reason === 'timeout' ? 'warn' : 'error';
        this.logger[level]({ upstream: repo.upstream.registry, repository: repo.name, digest: digest.text, bytesReceived: fill.received, reason, err: error }, 'blob fetch failed; nothing stored');
        throw error;
      }
    });
    const entry: FillEntry = { fill, repository: `${repo.upstream.registry}/${repo.name}`, failed: false, ready: ready.then(() => fill), stored };
    // the upstream answered 200: this repository has the blob
    ready.then(() => this.links.add(repo.upstream.registry, repo.name, [digest.text]), () => undefined);
    stored
      .catch(() => {
        entry.failed = true;
      })
      .finally(() => {
        if (this.blobFills.get(digest.text) === entry) this.blobFills.delete(digest.text);
        this.metrics.inflightFills.dec();
      });
    // Waiters handle failures through `ready` and the fill's readers; this keeps them from being unhandled.
    entry.ready.catch(() => undefined);
    this.blobFills.set(digest.text, entry);
    return entry;
  }

  /**
   * Asks the repository's upstream whether it has this content (a HEAD, nothing fetched), records
   * the answer, and resolves with the size the upstream gives: for stored content asked for under
   * another repository, and for a blob's HEAD that the store cannot answer. Not there: the
   * client gets the upstream's 404 (MANIFEST_UNKNOWN, BLOB_UNKNOWN) as if nothing were stored;
   * upstream away: UNAVAILABLE, as a stored copy cannot be vouched for. One HEAD per repository
   * and digest at a time.
   */
  private askUpstream(repo: Repository, kind: 'manifests' | 'blobs', digest: Digest): Promise<number | undefined> {
    const key = `${repo.upstream.registry}/${repo.name}@${kind}/${digest.text}`;
    let pending = this.confirmations.get(key);
    if (!pending) {
      const notFound = kind === 'manifests' ? () => manifestUnknown(digest.text) : () => blobUnknown(digest.text);
      pending = this.upstreamRequest(repo, `${kind}/${digest.text}`, 'HEAD', kind === 'manifests' ? ACCEPT : undefined, notFound)
        .then(async (response) => {
          await response.body.dump();
          await this.links.add(repo.upstream.registry, repo.name, [digest.text]);
          const length = Number(header(response.headers, 'content-length'));
          return Number.isFinite(length) ? length : undefined;
        })
        .finally(() => this.confirmations.delete(key));
      this.confirmations.set(key, pending);
    }
    return pending;
  }

  /**
   * Counts a fetch that failed before the upstream sent anything (unreachable, timed out, 5xx, 429,
   * refused the mirror) in regmirror_fetch_failures_total, as failures after that are counted where
   * the bytes are checked. An upstream that has no such content (404) failed nothing.
   */
  private countFetchFailure<T>(pending: Promise<T>): Promise<T> {
    return pending.catch((error: Error) => {
      if (!(error instanceof RegistryError && error.status === 404)) this.metrics.fillFailures.inc({ reason: failureReason(error) });
      throw error;
    });
  }

  /** Brings a blob into the store (prefetch); resolves once it is there. */
  async ensureBlob(repo: Repository, digest: Digest): Promise<'present' | 'fetched'> {
    const stat = await this.store.statBlob(digest);
    if (stat) {
      // a read as far as eviction goes: a prefetched image keeps its blobs, not just its manifest
      this.hooks.onAccess?.('blob', digest, stat.size);
      return 'present';
    }
    const running = this.blobFills.get(digest.text);
    const entry = running && !failed(running) ? running : this.startFill(repo, digest);
    await entry.stored;
    return 'fetched';
  }

  // ---------------------------------------------------------------- referrers

  /**
   * The OCI referrers API (signatures, SBOMs and attestations of a manifest), asked of the upstream
   * each time: referrers come and go, and tools ask for them rarely. An upstream without the API
   * (distribution 2.8, Docker Hub) or one that cannot be reached is answered 404 UNSUPPORTED,
   * which tells clients to fall back to the tag schema (`sha256-<hex>` tags), which the mirror serves.
   */
  async referrers(repo: Repository, digest: Digest, query: Record<string, string>): Promise<{ bytes: Buffer; mediaType: string; link?: string; filtersApplied?: string }> {
    const unsupported = (why: string) => new RegistryError('UNSUPPORTED', 404, `the referrers API of upstream ${repo.upstream.registry} ${why}; use the tag schema`);
    let response: UpstreamResponse;
    try {
      response = await this.upstreamRequest(repo, `referrers/${digest.text}`, 'GET', OCI_INDEX, () => unsupported('is not there'), query);
    } catch (error) {
      if (!(error instanceof RegistryError) || error.status < 500) throw error;
      this.logger.warn({ upstream: repo.upstream.registry, repository: repo.name, digest: digest.text, reason: error.message }, 'upstream could not list referrers');
      throw unsupported(`could not be asked (${error.message})`);
    }
    const bytes = await readDocument(repo, response);
    let document: { manifests?: unknown };
    try {
      document = JSON.parse(bytes.toString('utf8')) as { manifests?: unknown };
    } catch {
      document = {};
    }
    if (!Array.isArray(document?.manifests)) throw upstreamUnavailable(repo.upstream.registry, `its referrers answer for ${digest.text} is not an image index`);
    const link = header(response.headers, 'link');
    const filtersApplied = header(response.headers, 'oci-filters-applied');
    return { bytes, mediaType: OCI_INDEX, ...(link ? { link } : {}), ...(filtersApplied ? { filtersApplied } : {}) };
  }

  // ---------------------------------------------------------------- tags/list

  async listTags(repo: Repository, query: Record<string, string>): Promise<{ body: unknown; link?: string }> {
    try {
      const response = await this.upstreamRequest(repo, 'tags/list', 'GET', undefined, () => nameUnknown(repo.name), query);
      const body = await response.body.json();
      const link = header(response.headers, 'link');
      return { body, ...(link ? { link } : {}) };
    } catch (error) {
      if (!(error instanceof RegistryError) || error.status < 500) throw error;
      // The upstream is away: answer with the tags this mirror has seen, rather than nothing.
      const stored = await this.store.listTags(repo.upstream.registry, repo.name);
      if (stored.length === 0) throw error;
      this.logger.warn({ upstream: repo.upstream.registry, repository: repo.name, reason: error.message }, 'upstream could not list tags; listing stored tags');
      return pageOfTags(repo.name, stored, query);
    }
  }

  // ---------------------------------------------------------------- upstream

  private upstreamGet(repo: Repository, path: string, accept: string | undefined, notFound: () => RegistryError): Promise<UpstreamResponse> {
    return this.upstreamRequest(repo, path, 'GET', accept, notFound);
  }

  /** An upstream request whose failures are already registry errors for the client. */
  private async upstreamRequest(repo: Repository, path: string, method: 'GET' | 'HEAD', accept: string | undefined, notFound: () => RegistryError, query?: Record<string, string>): Promise<UpstreamResponse> {
    let response: UpstreamResponse;
    try {
      response = await repo.upstream.fetch(repo.name, path, { method, ...(accept ? { accept } : {}), ...(query ? { query } : {}) });
    } catch (error) {
      if (error instanceof UpstreamAuthError) throw upstreamDenied(error.message);
      // the token service down is an outage, as the registry down is: the client may try again
      if (error instanceof TokenServiceError && error.status === 429) throw tooManyRequests(repo.upstream.registry, error.retryAfter);
      const why = error instanceof TokenServiceError ? error.message : describe(error);
      // the cause keeps the code (a timeout, a refused connection) for the failure metric
      throw Object.assign(upstreamUnavailable(repo.upstream.registry, why), { cause: error });
    }
    if (response.status === 200) return response;
    await response.body.dump();
    // Upstreams that do not answer HEAD (quay.io answers some with 405): a GET says the same; its
    // caller reads no body, and dumping one stops reading after a little (the connection closes).
    if (method === 'HEAD' && (response.status === 405 || response.status === 501)) return this.upstreamRequest(repo, path, 'GET', accept, notFound, query);
    if (response.status === 404) throw notFound();
    if (response.status === 401 || response.status === 403) throw upstreamDenied(`upstream ${repo.upstream.registry} denied access to ${repo.name}`);
    if (response.status === 429) throw tooManyRequests(repo.upstream.registry, header(response.headers, 'retry-after'));
    throw upstreamUnavailable(repo.upstream.registry, `HTTP ${response.status}`);
  }
}

/** A fill that failed, or is failing (its run saw the error; the entry learns it a moment later). */
function failed(entry: FillEntry): boolean {
  return entry.failed || entry.fill.failure !== undefined;
}

function header(headers: UpstreamResponse['headers'], name: string): string | undefined {
  const value = headers[name];
  return Array.isArray(value) ? value[0] : value;
}

/** A digest the upstream sent in a header, or undefined when it is not one we can use. */
function tryParseDigest(text: string | undefined): Digest | undefined {
  if (!text) return undefined;
  try {
    return parseDigest(text);
  } catch {
    return undefined;
  }
}

/** The upstream's Content-Type when it names a manifest type, else the document's own mediaType. */
function manifestMediaType(contentType: string | undefined, bytes: Buffer): string | undefined {
  const declared = contentType?.split(';')[0]?.trim();
  if (declared && (MANIFEST_MEDIA_TYPES as readonly string[]).includes(declared)) return declared;
  try {
    const document = JSON.parse(bytes.toString('utf8')) as { mediaType?: unknown; manifests?: unknown; layers?: unknown };
    if (typeof document.mediaType === 'string' && (MANIFEST_MEDIA_TYPES as readonly string[]).includes(document.mediaType)) return document.mediaType;
    if (Array.isArray(document.manifests)) return 'application/vnd.oci.image.index.v1+json';
    if (Array.isArray(document.layers)) return 'application/vnd.oci.image.manifest.v1+json';
  } catch {
    return undefined;
  }
  return undefined;
}

/** The media type a JSON manifest of another kind declares (an artifact's own type), if it is one. */
function customManifestType(bytes: Buffer): string | undefined {
  try {
    const document = JSON.parse(bytes.toString('utf8')) as { schemaVersion?: unknown; mediaType?: unknown; artifactType?: unknown };
    if (typeof document !== 'object' || document === null || document.schemaVersion !== 2) return undefined;
    if (typeof document.mediaType === 'string' && document.mediaType !== '') return document.mediaType;
    return typeof document.artifactType === 'string' && document.artifactType !== '' ? document.artifactType : undefined;
  } catch {
    return undefined;
  }
}

/**
 * A manifest's bytes, counted as they arrive: an upstream that sends no Content-Length (chunked)
 * is stopped at the limit too, rather than read into memory whole.
 */
async function readManifestBody(body: AsyncIterable<Uint8Array>): Promise<Buffer> {
  const chunks: Uint8Array[] = [];
  let received = 0;
  // leaving the loop early destroys the body, which closes the upstream connection
  for await (const chunk of body) {
    received += chunk.byteLength;
    if (received > MAX_MANIFEST_BYTES) throw manifestInvalid(`upstream manifest is over the ${MAX_MANIFEST_BYTES} byte limit (stopped reading at ${received} bytes)`);
    chunks.push(chunk);
  }
  return Buffer.concat(chunks, received);
}

/**
 * A manifest (or a referrers index) from the upstream, whole: refused over MAX_MANIFEST_BYTES
 * whether announced or not, decoded if it came compressed, a failed transfer an upstream failure.
 */
async function readDocument(repo: Repository, response: UpstreamResponse): Promise<Buffer> {
  const announced = Number(header(response.headers, 'content-length'));
  if (announced > MAX_MANIFEST_BYTES) {
    await response.body.dump();
    throw manifestInvalid(`upstream manifest is ${announced} bytes, over the ${MAX_MANIFEST_BYTES} byte limit`);
  }
  try {
    return await readManifestBody(decodedBody(response));
  } catch (error) {
    if (error instanceof RegistryError) throw error;
    throw upstreamUnavailable(repo.upstream.registry, describe(error));
  }
}

/**
 * A manifest's body as the upstream meant it: decoded when it was compressed on the way anyway (a
 * proxy that ignores Accept-Encoding: identity); the digest is over the decoded bytes. A coding
 * the mirror cannot decode is refused rather than stored as the manifest.
 */
function decodedBody(response: UpstreamResponse): AsyncIterable<Uint8Array> {
  const coding = header(response.headers, 'content-encoding')?.trim().toLowerCase();
  if (!coding || coding === 'identity') return response.body;
  const decoder = coding === 'gzip' || coding === 'x-gzip' ? createGunzip()
    : coding === 'deflate' ? createInflate()
    : coding === 'br' ? createBrotliDecompress()
    : undefined;
  if (!decoder) {
    // an 'error' listener first: destroying undici's body emits one, and unheard it ends the process
    response.body.on('error', () => {}).destroy();
    throw manifestInvalid(`upstream sent the manifest with Content-Encoding ${coding}, which the mirror cannot decode`);
  }
  // leaving the reading loop early (over the size limit) destroys the decoder, and so the body
  pipeline(response.body, decoder, () => {});
  return decoder;
}

/**
 * One page of tags as the distribution spec pages them: sorted, those after `last`, at most `n`,
 * with a `Link` to the next page when more are left (routes.ts points it back at the client's path).
 */
function pageOfTags(name: string, tags: string[], query: Record<string, string>): { body: { name: string; tags: string[] }; link?: string } {
  const sorted = [...tags].sort();
  const after = query.last === undefined ? sorted : sorted.filter((tag) => tag > query.last!);
  const n = query.n === undefined ? Number.NaN : Number(query.n);
  if (!Number.isInteger(n) || n < 0 || n >= after.length) return { body: { name, tags: after } };
  const page = after.slice(0, n);
  if (page.length === 0) return { body: { name, tags: page } };
  const next = new URLSearchParams({ n: String(n), last: page.at(-1)! });
  return { body: { name, tags: page }, link: `</v2/${name}/tags/list?${next.toString()}>; rel="next"` };
}

/** How a tag is named in memory (the tag records, concurrent checks of one tag). */
function tagKey(registry: string, name: string, tag: string): string {
  return `${registry}/${name}:${tag}`;
}

function failureReason(error: Error): string {
  if (error instanceof DigestMismatchError) return 'digest';
  if (error instanceof SizeMismatchError) return 'size';
  if (error instanceof StoreWriteError) return 'disk';
  // a registry error's own code is the client's (UNAVAILABLE); what happened is in its cause
  const cause = error.cause as (NodeJS.ErrnoException & { cause?: NodeJS.ErrnoException }) | undefined;
  const code = (error instanceof RegistryError ? (cause?.code ?? cause?.cause?.code) : (error as NodeJS.ErrnoException).code) ?? '';
  if (code === 'ENOSPC' || code === 'EDQUOT' || code === 'EIO') return 'disk';
  if (code.startsWith('UND_ERR_') && code.includes('TIMEOUT')) return 'timeout';
  return 'upstream';
}

/** The longest Retry-After honoured: past it, tags are asked about again (and served stored while refused). */
const MAX_HOLD_OFF_MS = 3_600_000;

/** Retry-After as milliseconds from `now`: delta-seconds or an HTTP date (RFC 9110 10.2.3). */
export function retryAfterMs(value: string | undefined, now: number): number | undefined {
  if (value === undefined) return undefined;
  const text = value.trim();
  if (/^\d+$/.test(text)) return Number(text) * 1000;
  const date = Date.parse(text);
  return Number.isNaN(date) ? undefined : date - now;
}

function describe(error: unknown): string {
  const err = error as NodeJS.ErrnoException & { cause?: NodeJS.ErrnoException };
  return err.cause?.code ?? err.code ?? err.message ?? String(error);
}

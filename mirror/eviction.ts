// Eviction: content not read for storage.ttl goes, and when the store grows past storage.maxSize
// the least recently read content goes until it is back under; when the volume itself is full (a
// write failed with ENOSPC, with or without maxSize), it goes until what was being written fits. The index of sizes and last-read
// times lives in memory and is rebuilt at start from the store itself: each file's mtime is its
// last read (written through, at most once a minute per item), so the index survives restarts and
// crashes with nothing extra to keep consistent. Content a client is streaming is never removed.
// Other processes on the same store (replicas on a ReadWriteMany volume) store, read and evict
// content too: while their heartbeats are seen, the store is walked again every heartbeat and what
// they did is merged into the index, so maxSize and the TTL hold for the store as a whole.
// A download whose size the upstream announced sets that many bytes aside under maxSize before its
// first byte is written (evicting to make room, or waiting for it), so concurrent misses cannot
// take the store past maxSize; once stored, the bytes count as stored instead.
import { statfs } from 'node:fs/promises';
import type { Logger } from '../common/logger.ts';
import type { MirrorMetrics } from './metrics.ts';
import { parseDigest, type Digest } from './reference.ts';
import type { ContentStore, StoredItem } from './store.ts';

interface Entry {
  kind: StoredItem['kind'];
  digest: string;
  size: number;
  lastAccess: number;
  /** The last-access time last written to the file's mtime. */
  persistedAccess: number;
  /** When it entered the index, in additions counted: a rescan does not drop what was stored after its walk began. */
  added: number;
}

export interface EvictionPolicy {
  maxSizeBytes?: number;
  ttlMs?: number;
}

/** Evicting down to this share of maxSize leaves room, so a full store does not evict on every write. */
const LOW_WATERMARK = 0.9;
/** Making room on a full volume frees this share of the store beyond what the write needed, so the next writes fit too. */
const ROOM_MARGIN = 0.1;
/** Last-read times are written to disk at most this often per item (the hot path stays in memory). */
const PERSIST_EVERY_MS = 60_000;

export class Evictor {
  private readonly store: ContentStore;
  private readonly policy: EvictionPolicy;
  private readonly logger: Logger;
  private readonly metrics: MirrorMetrics;
  private readonly now: () => number;
  private readonly entries = new Map<string, Entry>();
  private readonly pins = new Map<string, number>();
  private totalBytes = 0;
  private indexed = false;
  /** Entries put into the index so far. */
  private additions = 0;
  private rescanning: Promise<void> | undefined;
  /** During a rescan: what this process removed meanwhile, which the walk may still have seen. */
  private removedDuringRescan: Set<string> | undefined;
  private evicting: Promise<void> | undefined;
  /** One more run, asked for while one was under way (it may have passed by what is evictable now). */
  private evictingAgain: Promise<void> | undefined;
  private makingRoom: Promise<unknown> = Promise.resolve();
  /** Bytes set aside under maxSize for downloads in progress. */
  private reservedBytes = 0;
  /** Reservations are granted one at a time, in the order asked: a large one is not starved by small ones. */
  private reserving: Promise<unknown> = Promise.resolve();
  /** Settles when a reservation is released, a stream ends or content is removed: a waiting reservation looks again. */
  private roomChanged!: Promise<void>;
  private signalRoom!: () => void;
  private timer: NodeJS.Timeout | undefined;
  /** Called with each item removed from the store (evicted, or forgotten after the cache removed it), so what refers to it in memory goes too. */
  onRemoved: (kind: StoredItem['kind'], digest: string) => void = () => undefined;

  /** The longest a download waits for room before it goes ahead without a reservation. */
  private readonly reserveWaitMs: number;

  constructor(options: { store: ContentStore; policy: EvictionPolicy; logger: Logger; metrics: MirrorMetrics; now?: () => number; reserveWaitMs?: number }) {
    this.store = options.store;
    this.reserveWaitMs = options.reserveWaitMs ?? 15_000;
    this.policy = options.policy;
    this.logger = options.logger;
    this.metrics = options.metrics;
    this.now = options.now ?? Date.now;
    this.renewRoomSignal();
  }

  get bytes(): number {
    return this.totalBytes;
  }

  get items(): number {
    return this.entries.size;
  }

  get reserved(): number {
    return this.reservedBytes;
  }

  /** Reads the store into the index. Accesses recorded meanwhile win over what the walk finds. */
  async buildIndex(): Promise<void> {
    const started = this.now();
    const foreign = (path: string) => this.logger.warn({ path }, 'a file in the store that the mirror did not write (its name is not a digest): left alone, not counted, never evicted');
    for await (const item of this.store.items(foreign)) {
      const key = `${item.kind}:${item.digest}`;
      if (this.entries.has(key)) continue;
      this.add(item);
    }
    this.indexed = true;
    this.updateGauges();
    this.logger.info({ items: this.entries.size, bytes: this.totalBytes, ms: this.now() - started }, 'store index built');
    await this.inBackground(this.evict());
  }

  /** Sweeps for expired content every interval (a tenth of the TTL, between 1 s and 1 h). */
  start(): void {
    if (!this.policy.ttlMs) return;
    const every = Math.min(3_600_000, Math.max(1_000, this.policy.ttlMs / 10));
    this.timer = setInterval(() => void this.inBackground(this.evict()), every);
    this.timer.unref();
  }

  stop(): void {
    clearInterval(this.timer);
  }

  /** A read or a write of stored content. */
  recordAccess(kind: StoredItem['kind'], digest: Digest, size: number): void {
    const key = `${kind}:${digest.text}`;
    const now = this.now();
    const entry = this.entries.get(key);
    if (entry) {
      entry.lastAccess = now;
      if (now - entry.persistedAccess >= PERSIST_EVERY_MS) {
        entry.persistedAccess = now;
        void this.store.touch(kind, digest, now);
      }
      return;
    }
    this.add({ kind, digest: digest.text, size, lastAccess: now });
    void this.store.touch(kind, digest, now);
    this.updateGauges();
    this.evictIfOverMax();
  }

  /** Starts an eviction in the background when the store is over storage.maxSize. */
  private evictIfOverMax(): void {
    if (this.policy.maxSizeBytes && this.totalBytes > this.policy.maxSizeBytes) void this.inBackground(this.evict());
  }

  /** Marks a blob as being streamed; the returned function releases it. */
  pin(digest: string): () => void {
    this.pins.set(digest, (this.pins.get(digest) ?? 0) + 1);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const left = (this.pins.get(digest) ?? 1) - 1;
      if (left > 0) this.pins.set(digest, left);
      else {
        this.pins.delete(digest);
        // Its last stream ended, so it may go now: a blob larger than maxSize (stored while its
        // clients read it, when eviction had to pass it by) does not wait for unrelated content.
        this.evictIfOverMax();
      }
      this.signalRoom();
    };
  }

  /**
   * A download of `bytes` (the upstream's Content-Length) is about to be written: sets them aside
   * under maxSize, evicting the least recently read content not being streamed to make room, and
   * waits while even that would not be enough (other downloads and streams hold the rest). Resolves
   * with the function that releases them, called once the blob is stored (and counted as stored)
   * or the download failed. Sets nothing aside without maxSize, for an unknown size, or for a blob
   * larger than maxSize by itself (that one is stored, then evicted down to maxSize as it can),
   * nor for a blob the store already holds (another download of it finished: this one's commit
   * replaces the same bytes, and the stored copy, pinned by this download's own clients, could
   * never be evicted to make room for it).
   */
  reserve(bytes: number | undefined, digest: string): Promise<() => void> {
    const max = this.policy.maxSizeBytes;
    if (!max || bytes === undefined || bytes <= 0 || bytes > max || !this.indexed) return Promise.resolve(() => undefined);
    const run = this.reserving.then(() => this.runReserve(bytes, max, `blob:${digest}`));
    this.reserving = run.catch(() => undefined);
    // a download must never be left waiting on a failed eviction: it goes ahead without a reservation
    return run.catch((error: unknown) => {
      this.logger.error({ err: error, bytes }, 'setting room aside for a download failed; it goes ahead without');
      return () => undefined;
    });
  }

  private async runReserve(bytes: number, max: number, key: string): Promise<() => void> {
    // Streams of stored content hold their room until their clients have it, and a client that
    // stalls (a node cut off) would hold it for as long as its connection lives, with every later
    // download queued behind this one: the wait is bounded, and past it the download goes ahead
    // unreserved (the store may pass maxSize until eviction catches up).
    let timer: NodeJS.Timeout | undefined;
    const gaveUp = new Promise<'gave up'>((resolve) => (timer = setTimeout(() => resolve('gave up'), this.reserveWaitMs)));
    try {
      for (let waited = false; ; waited = true) {
        if (this.entries.has(key)) return () => undefined;
        const candidates = this.leastRecentlyReadFirst();
        const evictable = candidates.reduce((sum, entry) => sum + entry.size, 0);
        if (this.totalBytes - evictable + this.reservedBytes + bytes <= max) {
          // down to the low watermark when the rest allows, as eviction by size does, else just enough
          const target = Math.max(max * LOW_WATERMARK, this.totalBytes - evictable + this.reservedBytes + bytes);
          for (const entry of candidates) {
            if (this.totalBytes + this.reservedBytes + bytes <= target) break;
            await this.remove(entry, 'size');
          }
        }
        if (this.totalBytes + this.reservedBytes + bytes <= max) break;
        const facts = { bytes, storeBytes: this.totalBytes, reservedBytes: this.reservedBytes, maxSizeBytes: max, streaming: this.pins.size };
        if (!waited) this.logger.warn(facts, 'storage.maxSize is taken by downloads and streams in progress: this download waits for room');
        if ((await Promise.race([this.roomChanged, gaveUp])) === 'gave up') {
          this.logger.warn({ ...facts, waitedMs: this.reserveWaitMs }, 'no room under storage.maxSize in time (streams of stored content hold it): downloading without a reservation; the store passes maxSize until eviction catches up');
          return () => undefined;
        }
      }
    } finally {
      clearTimeout(timer);
    }
    this.reservedBytes += bytes;
    this.updateGauges();
    let released = false;
    return () => {
      if (released) return;
      released = true;
      this.reservedBytes -= bytes;
      this.updateGauges();
      this.signalRoom();
    };
  }

  private renewRoomSignal(): void {
    this.roomChanged = new Promise((resolve) => {
      this.signalRoom = () => {
        this.renewRoomSignal();
        resolve();
      };
    });
  }

  /** Runs eviction in the background: a failure is logged and the next run tries again. */
  private inBackground(run: Promise<void>): Promise<void> {
    return run.catch((error: unknown) => this.logger.error({ err: error }, 'eviction run failed; the next one tries again'));
  }

  /** Removes expired content, then least recently read content while over maxSize. One run at a time. */
  evict(): Promise<void> {
    if (!this.indexed) return Promise.resolve();
    if (this.evicting) {
      // at most one run waits behind the current one, however many ask meanwhile
      this.evictingAgain ??= this.evicting
        .catch(() => undefined)
        .then(() => {
          this.evictingAgain = undefined;
          return this.evict();
        });
      return this.evictingAgain;
    }
    this.evicting = this.runEviction().finally(() => (this.evicting = undefined));
    return this.evicting;
  }

  /**
   * The volume is full (a write of `bytes` failed with ENOSPC): evicts the least recently read
   * content not being streamed until those bytes fit, and a tenth of the store more. Evicts nothing
   * when even all of that content would not make them fit (the blob is larger than what the volume
   * can hold for the mirror). Resolves with whether the room is there now.
   */
  makeRoom(bytes: number): Promise<boolean> {
    if (!this.indexed) return Promise.resolve(false);
    // one at a time: after the first has made room, the next finds it there
    const run = this.makingRoom.then(() => this.runMakeRoom(bytes));
    this.makingRoom = run.catch(() => false);
    return run;
  }

  private async runMakeRoom(bytes: number): Promise<boolean> {
    const volume = await statfs(this.store.root);
    const free = volume.bavail * volume.bsize;
    const wanted = bytes + this.totalBytes * ROOM_MARGIN - free;
    if (wanted <= 0) return true;
    const candidates = this.leastRecentlyReadFirst();
    const evictable = candidates.reduce((sum, entry) => sum + entry.size, 0);
    if (evictable + free < bytes) {
      this.logger.warn({ bytes, freeBytes: free, evictableBytes: evictable }, 'the store volume is full and evicting would not make room for this write: nothing evicted');
      return false;
    }
    let freed = 0;
    for (const entry of candidates) {
      if (freed >= wanted) break;
      await this.remove(entry, 'room');
      freed += entry.size;
    }
    this.updateGauges();
    this.logger.warn({ bytes, freedBytes: freed, storeBytes: this.totalBytes }, 'the store volume was full: evicted the least recently read content to make room');
    return true;
  }

  private async runEviction(): Promise<void> {
    const now = this.now();
    const { ttlMs, maxSizeBytes } = this.policy;
    if (ttlMs) {
      for (const entry of [...this.entries.values()]) {
        if (now - entry.lastAccess > ttlMs) await this.remove(entry, 'ttl');
      }
    }
    if (maxSizeBytes && this.totalBytes > maxSizeBytes) {
      const target = maxSizeBytes * LOW_WATERMARK;
      for (const entry of this.leastRecentlyReadFirst()) {
        if (this.totalBytes <= target) break;
        await this.remove(entry, 'size');
      }
      if (this.totalBytes > maxSizeBytes) this.logger.warn({ bytes: this.totalBytes, maxSizeBytes, streaming: this.pins.size }, 'store is over storage.maxSize and everything left is being streamed');
    }
    this.updateGauges();
  }

  /**
   * Other processes use the store: walks it again and merges what they did since into the index
   * (content they stored is counted, reads they made count as reads, content they removed leaves
   * the index and the cache's memory), then evicts as usual. Content this process stored or removed
   * while the walk ran is left as this process knows it. One walk at a time.
   */
  rescan(): Promise<void> {
    if (!this.indexed) return Promise.resolve();
    this.rescanning ??= this.runRescan().finally(() => (this.rescanning = undefined));
    return this.rescanning;
  }

  private async runRescan(): Promise<void> {
    const started = this.now();
    const mark = this.additions;
    const removedMeanwhile = new Set<string>();
    this.removedDuringRescan = removedMeanwhile;
    const seen = new Set<string>();
    const merged = { added: 0, addedBytes: 0, vanished: 0, vanishedBytes: 0 };
    try {
      // a media type file without its manifest may be one another process is writing now: left alone
      for await (const item of this.store.items(undefined, { keepLoneMediaTypes: true })) {
        const key = `${item.kind}:${item.digest}`;
        seen.add(key);
        const entry = this.entries.get(key);
        if (entry) {
          // read by another process (its reads reach the file's mtime at most PERSIST_EVERY_MS late)
          if (item.lastAccess > entry.lastAccess) entry.lastAccess = entry.persistedAccess = item.lastAccess;
        } else if (!removedMeanwhile.has(key)) {
          this.add(item);
          merged.added++;
          merged.addedBytes += item.size;
        }
      }
      for (const entry of [...this.entries.values()]) {
        if (entry.added > mark || seen.has(`${entry.kind}:${entry.digest}`)) continue;
        // removed by another process (a stream of it here goes on from its open file)
        this.drop(entry);
        this.onRemoved(entry.kind, entry.digest);
        merged.vanished++;
        merged.vanishedBytes += entry.size;
      }
    } finally {
      this.removedDuringRescan = undefined;
    }
    this.updateGauges();
    if (merged.added > 0 || merged.vanished > 0) this.logger.debug({ ...merged, items: this.entries.size, bytes: this.totalBytes, ms: this.now() - started }, 'store rescanned: content other processes stored or removed merged into the index');
    await this.evict();
  }

  /** Drops an item the store no longer holds (the cache removed it) from the index. */
  forget(kind: StoredItem['kind'], digest: Digest): void {
    const entry = this.entries.get(`${kind}:${digest.text}`);
    if (!entry) return;
    this.drop(entry);
    this.onRemoved(kind, digest.text);
  }

  /** Whether the store holds this digest (as a blob or a manifest); undefined until the index is built. */
  holds(digest: string): boolean | undefined {
    if (!this.indexed) return undefined;
    return this.entries.has(`blob:${digest}`) || this.entries.has(`manifest:${digest}`);
  }

  /** Takes an entry out of the index and its bytes out of the count; a waiting reservation looks again. */
  private drop(entry: Entry): void {
    const key = `${entry.kind}:${entry.digest}`;
    this.entries.delete(key);
    this.removedDuringRescan?.add(key);
    this.totalBytes -= entry.size;
    this.updateGauges();
    this.signalRoom();
  }

  /** Puts stored content into the index and its bytes into the count. */
  private add(item: StoredItem): void {
    this.entries.set(`${item.kind}:${item.digest}`, { kind: item.kind, digest: item.digest, size: item.size, lastAccess: item.lastAccess, persistedAccess: item.lastAccess, added: ++this.additions });
    this.totalBytes += item.size;
  }

  /** What eviction may take, least recently read first: everything not being streamed. */
  private leastRecentlyReadFirst(): Entry[] {
    return [...this.entries.values()].filter((entry) => !this.pins.has(entry.digest)).sort((a, b) => a.lastAccess - b.lastAccess);
  }

  private async remove(entry: Entry, reason: 'ttl' | 'size' | 'room'): Promise<void> {
    if (this.pins.has(entry.digest)) return;
    const key = `${entry.kind}:${entry.digest}`;
    if (this.entries.get(key) !== entry) return;
    this.drop(entry);
    await this.store.remove(entry.kind, parseDigest(entry.digest));
    this.onRemoved(entry.kind, entry.digest);
    this.metrics.evictions.inc({ reason });
    this.metrics.evictedBytes.inc({ reason }, entry.size);
    this.logger.debug({ kind: entry.kind, digest: entry.digest, bytes: entry.size, reason, idleMs: this.now() - entry.lastAccess }, 'evicted');
  }

  private updateGauges(): void {
    this.metrics.storeBytes.set(this.totalBytes);
    this.metrics.storeItems.set(this.entries.size);
    this.metrics.storeReservedBytes.set(this.reservedBytes);
  }
}

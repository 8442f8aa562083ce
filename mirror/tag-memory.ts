// Tag records in memory: a read-through copy of the records on disk (store.ts), so a warm tag pull
// within tagTTL does no file I/O. Bounded, since tags come and go (a CI pushing one per build): past
// LIMIT the records used longest ago leave memory (the disk still has them). Also knows which tags
// point at each manifest, so the records of an evicted manifest can go with it; those that left
// memory are counted, so the cache knows when the disk may hold records it cannot find that way.
import type { TagRecord } from './store.ts';

/** Enough for every tag a cluster pulls in a day many times over: about 0.5 KB each. */
const LIMIT = 20_000;

export interface TagRef {
  registry: string;
  name: string;
  tag: string;
}

interface Entry extends TagRef {
  record: TagRecord;
}

export class TagMemory {
  private readonly limit: number;
  /** By `registry/name:tag`, least recently written or read from disk first. */
  private readonly entries = new Map<string, Entry>();
  private readonly byDigest = new Map<string, Set<string>>();
  /** Records that left memory for the limit (still on disk) since the count was last reset. */
  forgotten = 0;

  constructor(limit = LIMIT) {
    this.limit = limit;
  }

  get size(): number {
    return this.entries.size;
  }

  get(key: string): TagRecord | undefined {
    return this.entries.get(key)?.record;
  }

  set(key: string, ref: TagRef, record: TagRecord): void {
    this.delete(key);
    this.entries.set(key, { ...ref, record });
    let keys = this.byDigest.get(record.digest);
    if (!keys) this.byDigest.set(record.digest, (keys = new Set()));
    keys.add(key);
    for (const oldest of this.entries.keys()) {
      if (this.entries.size <= this.limit) break;
      this.delete(oldest);
      this.forgotten++;
    }
  }

  delete(key: string): void {
    const entry = this.entries.get(key);
    if (!entry) return;
    this.entries.delete(key);
    const keys = this.byDigest.get(entry.record.digest);
    keys?.delete(key);
    if (keys?.size === 0) this.byDigest.delete(entry.record.digest);
  }

  /** Takes out every record pointing at this manifest, and says which tags they were. */
  takePointingAt(digest: string): TagRef[] {
    const refs: TagRef[] = [];
    for (const key of [...(this.byDigest.get(digest) ?? [])]) {
      const entry = this.entries.get(key)!;
      refs.push({ registry: entry.registry, name: entry.name, tag: entry.tag });
      this.delete(key);
    }
    return refs;
  }
}

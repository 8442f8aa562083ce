// Small manifests kept in memory within a byte budget; the store stays the source of truth. When
// the budget is exceeded, the entries not read for longest go first ("second chance": a read only
// sets a flag, and eviction moves entries read since it last passed them to the back instead of
// dropping them). Moving an entry to the back of the Map on every read (delete + set) made V8
// reallocate the Map's table again and again: about 150 bytes of old-generation garbage per
// manifest request, most of what grew the heap under manifest load (bench/profiling.md).
import type { StoredManifest } from './store.ts';

interface Entry {
  manifest: StoredManifest;
  read: boolean;
}

export class ManifestMemory {
  private readonly entries = new Map<string, Entry>();
  private readonly limitBytes: number;
  private totalBytes = 0;

  constructor(limitBytes: number) {
    this.limitBytes = limitBytes;
  }

  /** Bytes of the manifests held. */
  get bytes(): number {
    return this.totalBytes;
  }

  get(digest: string): StoredManifest | undefined {
    const entry = this.entries.get(digest);
    if (!entry) return undefined;
    entry.read = true;
    return entry.manifest;
  }

  has(digest: string): boolean {
    return this.entries.has(digest);
  }

  /**
   * Keeps a manifest (a digest already held stays as it is), then drops others to fit the budget. A
   * manifest larger than the whole budget is not kept, and nothing is dropped for it.
   */
  add(digest: string, manifest: StoredManifest): void {
    if (this.entries.has(digest) || manifest.bytes.length > this.limitBytes) return;
    this.entries.set(digest, { manifest, read: false });
    this.totalBytes += manifest.bytes.length;
    for (const [oldest, entry] of this.entries) {
      if (this.totalBytes <= this.limitBytes) break;
      if (entry.read) {
        // read since last passed: to the back (visited again only after every other entry)
        entry.read = false;
        this.entries.delete(oldest);
        this.entries.set(oldest, entry);
        continue;
      }
      this.delete(oldest);
    }
  }

  delete(digest: string): void {
    const entry = this.entries.get(digest);
    if (!entry) return;
    this.entries.delete(digest);
    this.totalBytes -= entry.manifest.bytes.length;
  }
}

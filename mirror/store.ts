// The content store on a filesystem volume. Content is addressed by digest and written to a
// temporary file that is renamed into place only after its digest checked out, so a crash or
// kill -9 can leave a stray temporary file (removed at the next start) but never a partial blob
// that is later served. Tag records say which digest a tag pointed at and when we last asked; a
// repository's links file lists the digests its upstream is known to have (repository-links.ts).
import { appendFile, mkdir, open, readFile, readdir, rename, rm, stat, unlink, utimes, writeFile, type FileHandle } from 'node:fs/promises';
import { randomUUID } from 'node:crypto';
import { join } from 'node:path';
import { isDigest, parseDigest, type Digest } from './reference.ts';

export interface TagRecord {
  digest: string;
  mediaType: string;
  /** When the upstream last confirmed (or gave us) this digest for the tag, ms since epoch. */
  checkedAt: number;
}

export interface StoredTag {
  registry: string;
  name: string;
  tag: string;
  record: TagRecord | undefined;
}

export interface StoredManifest {
  bytes: Buffer;
  mediaType: string;
}

export interface StoredItem {
  kind: 'blob' | 'manifest';
  digest: string;
  size: number;
  /** Last read (or write), ms since epoch: kept in the file's mtime, so it survives restarts. */
  lastAccess: number;
}

/** Directory names under the store root. Tags live under names that no repository component can take. */
const BLOBS = 'blobs';
const MANIFESTS = 'manifests';
const TAGS = 'tags';
const TMP = 'tmp';
const TAG_DIR = '_tags';
const LINKS_FILE = '_links';

export class ContentStore {
  readonly root: string;

  constructor(root: string) {
    this.root = root;
  }

  /** Creates the layout and removes temporary files a previous process left behind. */
  async init(): Promise<{ removedTemporary: number }> {
    const tmp = join(this.root, TMP);
    let removedTemporary = 0;
    try {
      removedTemporary = (await readdir(tmp)).length;
    } catch {
      // first start: nothing to clean
    }
    await rm(tmp, { recursive: true, force: true });
    for (const dir of [BLOBS, MANIFESTS, TAGS, TMP]) await mkdir(join(this.root, dir), { recursive: true });
    return { removedTemporary };
  }

  blobPath(digest: Digest): string {
    return join(this.root, BLOBS, digest.algorithm, digest.hex.slice(0, 2), digest.hex);
  }

  manifestPath(digest: Digest): string {
    return join(this.root, MANIFESTS, digest.algorithm, digest.hex.slice(0, 2), digest.hex);
  }

  private tagPath(registry: string, name: string, tag: string): string {
    // registry, name and tag were validated against the distribution grammar: no "..", no "/" in a tag.
    return join(this.root, TAGS, registry, name, TAG_DIR, tag);
  }

  /** A new temporary file path on the same filesystem as the store, for write-then-rename. */
  temporaryPath(): string {
    return join(this.root, TMP, randomUUID());
  }

  async statBlob(digest: Digest): Promise<{ size: number } | undefined> {
    try {
      const info = await stat(this.blobPath(digest));
      return { size: info.size };
    } catch {
      return undefined;
    }
  }

  /** Opens a stored blob for reading; rejects when it is not (or no longer) there. */
  openBlob(digest: Digest): Promise<FileHandle> {
    return open(this.blobPath(digest), 'r');
  }

  /** Moves a verified temporary file into place as the blob. */
  async commitBlob(temporary: string, digest: Digest): Promise<void> {
    const target = this.blobPath(digest);
    await mkdir(join(target, '..'), { recursive: true });
    await rename(temporary, target);
  }

  async readManifest(digest: Digest): Promise<StoredManifest | undefined> {
    const path = this.manifestPath(digest);
    try {
      const [bytes, mediaType] = await Promise.all([readFile(path), readFile(`${path}.type`, 'utf8')]);
      return { bytes, mediaType };
    } catch {
      return undefined;
    }
  }

  /** Manifests are small: written whole, media type first, so a present manifest always has one. */
  async writeManifest(digest: Digest, manifest: StoredManifest): Promise<void> {
    const path = this.manifestPath(digest);
    await mkdir(join(path, '..'), { recursive: true });
    await this.writeAtomically(`${path}.type`, manifest.mediaType);
    await this.writeAtomically(path, manifest.bytes);
  }

  async readTag(registry: string, name: string, tag: string): Promise<TagRecord | undefined> {
    try {
      return JSON.parse(await readFile(this.tagPath(registry, name, tag), 'utf8')) as TagRecord;
    } catch {
      return undefined;
    }
  }

  async writeTag(registry: string, name: string, tag: string, record: TagRecord): Promise<void> {
    const path = this.tagPath(registry, name, tag);
    await mkdir(join(path, '..'), { recursive: true });
    await this.writeAtomically(path, JSON.stringify(record));
  }

  async deleteTag(registry: string, name: string, tag: string): Promise<void> {
    await rm(this.tagPath(registry, name, tag), { force: true });
  }

  /** Every tag record in the store (undefined for a record that cannot be read), repository by repository. */
  async *tagRecords(): AsyncGenerator<StoredTag> {
    for (const registry of await readdir(join(this.root, TAGS)).catch(() => [] as string[])) yield* this.tagRecordsUnder(registry, []);
  }

  /** Repository names nest (library/nginx); a repository's records sit in its _tags directory. */
  private async *tagRecordsUnder(registry: string, parts: string[]): AsyncGenerator<StoredTag> {
    const dir = join(this.root, TAGS, registry, ...parts);
    for (const entry of await readdir(dir, { withFileTypes: true }).catch(() => [])) {
      if (!entry.isDirectory()) continue;
      if (entry.name !== TAG_DIR) {
        yield* this.tagRecordsUnder(registry, [...parts, entry.name]);
        continue;
      }
      const name = parts.join('/');
      for (const tag of await readdir(join(dir, TAG_DIR)).catch(() => [] as string[])) yield { registry, name, tag, record: await this.readTag(registry, name, tag) };
    }
  }

  /** Tags stored for one repository (used when the upstream cannot list them). */
  async listTags(registry: string, name: string): Promise<string[]> {
    try {
      return (await readdir(join(this.root, TAGS, registry, name, TAG_DIR))).sort();
    } catch {
      return [];
    }
  }

  /**
   * Digests the repository is known to have, one per line of its links file (appended to, and
   * rewritten whole when pruned); undefined when it has no links file (a store written before
   * links were kept).
   */
  async readLinks(registry: string, name: string): Promise<string[] | undefined> {
    let text: string;
    try {
      text = await readFile(join(this.root, TAGS, registry, name, LINKS_FILE), 'utf8');
    } catch {
      return undefined;
    }
    // a line cut short by a crash is not a digest, and is skipped
    return text.split('\n').filter(isDigest);
  }

  async appendLinks(registry: string, name: string, digests: readonly string[]): Promise<void> {
    const dir = join(this.root, TAGS, registry, name);
    await mkdir(dir, { recursive: true });
    // one write with O_APPEND: lines from concurrent appends do not interleave
    await appendFile(join(dir, LINKS_FILE), `\n${digests.join('\n')}\n`);
  }

  /** Replaces the repository's links file with these digests (atomically: a crash leaves the old file or the new one). */
  async writeLinks(registry: string, name: string, digests: readonly string[]): Promise<void> {
    const dir = join(this.root, TAGS, registry, name);
    await mkdir(dir, { recursive: true });
    await this.writeAtomically(join(dir, LINKS_FILE), digests.length > 0 ? `${digests.join('\n')}\n` : '');
  }

  /** Records a read: the file's mtime is the last-access time that eviction orders by. */
  async touch(kind: StoredItem['kind'], digest: Digest, at = Date.now()): Promise<void> {
    const path = kind === 'blob' ? this.blobPath(digest) : this.manifestPath(digest);
    const seconds = at / 1000;
    await utimes(path, seconds, seconds).catch(() => undefined);
  }

  async remove(kind: StoredItem['kind'], digest: Digest): Promise<void> {
    const path = kind === 'blob' ? this.blobPath(digest) : this.manifestPath(digest);
    await unlink(path).catch(() => undefined);
    if (kind === 'manifest') await unlink(`${path}.type`).catch(() => undefined);
  }

  /**
   * Walks every stored blob and manifest (at start, to rebuild the eviction index). A file whose
   * name is not a digest of its directory's algorithm, in its prefix directory (an unfinished copy
   * such as `ab0123.partial`, an NFS `.nfsXXXX` file) was not written by the mirror: it is passed to
   * `onForeign` and otherwise left alone, never counted or removed.
   */
  async *items(onForeign: (path: string) => void = () => undefined): AsyncGenerator<StoredItem> {
    for (const kind of ['blob', 'manifest'] as const) {
      const top = join(this.root, kind === 'blob' ? BLOBS : MANIFESTS);
      for (const algorithm of await this.directories(top, onForeign)) {
        for (const prefix of await this.directories(join(top, algorithm), onForeign)) {
          for (const file of await readdir(join(top, algorithm, prefix)).catch(() => [] as string[])) {
            const path = join(top, algorithm, prefix, file);
            // a manifest's media type sits next to it as <hex>.type
            const mediaType = kind === 'manifest' && file.endsWith('.type');
            const digest = storedDigest(algorithm, prefix, mediaType ? file.slice(0, -'.type'.length) : file);
            const info = await stat(path).catch(() => undefined);
            if (!info?.isFile()) continue;
            // A media type whose manifest is gone: a crash between writing (or removing) the two
            // files left it. It belongs to no stored item, so no eviction would ever take it.
            if (digest && mediaType && !(await stat(this.manifestPath(digest)).then(() => true, () => false))) {
              await unlink(path).catch(() => undefined);
              continue;
            }
            if (!digest) onForeign(path);
            else if (!mediaType) yield { kind, digest: digest.text, size: info.size, lastAccess: info.mtimeMs };
          }
        }
      }
    }
  }

  /** The directories in `dir`; anything else there (the store puts only directories at that level) goes to `onForeign`. */
  private async directories(dir: string, onForeign: (path: string) => void): Promise<string[]> {
    const entries = await readdir(dir, { withFileTypes: true }).catch(() => []);
    const found: string[] = [];
    for (const entry of entries) {
      if (entry.isDirectory()) found.push(entry.name);
      else onForeign(join(dir, entry.name));
    }
    return found;
  }

  private async writeAtomically(path: string, data: string | Buffer): Promise<void> {
    const temporary = this.temporaryPath();
    try {
      const handle = await open(temporary, 'w');
      try {
        await writeFile(handle, data);
        await handle.datasync();
      } finally {
        await handle.close();
      }
      await rename(temporary, path);
    } catch (error) {
      // A full disk must not leave half-written files behind.
      await unlink(temporary).catch(() => undefined);
      throw error;
    }
  }
}

/** The digest a file at <algorithm>/<prefix>/<name> holds, when that is where the store puts it. */
function storedDigest(algorithm: string, prefix: string, name: string): Digest | undefined {
  try {
    const digest = parseDigest(`${algorithm}:${name}`);
    return digest.hex.slice(0, 2) === prefix ? digest : undefined;
  } catch {
    return undefined;
  }
}

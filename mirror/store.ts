// The content store on a filesystem volume. Content is addressed by digest and written to a
// temporary file that is renamed into place only after its digest checked out, so a crash or
// kill -9 can leave a stray temporary file but never a partial blob that is later served.
// Several processes may share one store (replicas on a ReadWriteMany volume, the old and the new
// pod of a rolling update): each writes its temporary files under tmp/<instance>/ and touches a
// heartbeat file there, and a process removes another's directory only once that one is provably
// dead (same host and PID namespace, no such process) or its heartbeat is stale. Tag records say which digest a tag pointed at and when we last asked; a
// repository's links file lists the digests its upstream is known to have (repository-links.ts).
import { readlinkSync } from 'node:fs';
import { appendFile, chmod, mkdir, open, readFile, readdir, rename, rm, stat, unlink, utimes, writeFile, type FileHandle } from 'node:fs/promises';
import { randomUUID } from 'node:crypto';
import { hostname } from 'node:os';
import { dirname, join } from 'node:path';
import { processExists } from '../common/process-exists.ts';
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
/**
 * Modes of what the store makes: no access for other users of the machine. Layers fetched with
 * upstream credentials are private content, and the volume may be a hostPath or a local volume on
 * a node. Group access stays (a pod's fsGroup, a backup job in the same group).
 */
const FILE_MODE = 0o640;
const DIR_MODE = 0o750;
/** In each process's temporary directory: who owns it (JSON), and by its mtime when the owner was last known to live. */
export const HEARTBEAT_FILE = '.heartbeat';
/** How often a process touches its heartbeat (and looks at the others'). */
export const HEARTBEAT_MS = 30_000;
/**
 * A temporary directory whose heartbeat is older than this belongs to a process that is gone (or
 * frozen that long, when its downloads have timed out upstream anyway): four missed heartbeats,
 * which leaves room for clocks between nodes a minute apart. Temporary files directly under tmp/
 * (written by versions before instance directories) go when unchanged for this long: a live
 * download writes at least every upstreamTimeouts.idle.
 */
const STALE_MS = 120_000;

/** What a process writes into its heartbeat file. */
interface Owner {
  hostname: string;
  pid: number;
  /** The PID namespace (Linux: /proc/self/ns/pid), so `pid` is only looked up where it means this process. */
  pidNamespace: string | undefined;
  startedAt: string;
}

/** Another process's temporary directory, removed by a sweep, and why. */
export interface RemovedInstance {
  instance: string;
  files: number;
  why: 'exited' | 'stale';
  /** Since the heartbeat was last touched. */
  idleMs: number;
}

function pidNamespace(): string | undefined {
  try {
    return readlinkSync('/proc/self/ns/pid');
  } catch {
    return undefined;
  }
}

/** Temporary files under a directory, however deep (not its heartbeat). */
async function countTemporaryFiles(dir: string): Promise<number> {
  const entries = await readdir(dir, { recursive: true, withFileTypes: true }).catch(() => []);
  return entries.filter((entry) => !entry.isDirectory() && entry.name !== HEARTBEAT_FILE).length;
}

/**
 * Opens a new temporary file for writing. Its directory is made again when it is gone: another
 * process removed it, having judged this one gone (frozen for STALE_MS), or it was removed by hand.
 */
export async function openTemporary(path: string): Promise<FileHandle> {
  try {
    return await open(path, 'w+', FILE_MODE);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
    await mkdir(dirname(path), { recursive: true, mode: DIR_MODE });
    return open(path, 'w+', FILE_MODE);
  }
}

export class ContentStore {
  readonly root: string;
  /** This process's name under tmp/: host, PID and a random part (two stores in one process, a PID reused). */
  readonly instance: string;
  /** Where this process writes its temporary files. */
  readonly temporaryDirectory: string;
  private readonly owner: Owner;

  constructor(root: string) {
    this.root = root;
    this.owner = { hostname: hostname(), pid: process.pid, pidNamespace: pidNamespace(), startedAt: new Date().toISOString() };
    this.instance = `${this.owner.hostname}.${this.owner.pid}.${randomUUID().slice(0, 8)}`;
    this.temporaryDirectory = join(root, TMP, this.instance);
  }

  /**
   * Creates the layout and this process's temporary directory, and removes the temporary files of
   * processes that are gone (sweepTemporary); those of live ones (another replica, the other pod
   * of a rolling update) are left alone.
   */
  async init(): Promise<{ removed: RemovedInstance[]; removedLoose: number; liveInstances: number }> {
    for (const dir of [BLOBS, MANIFESTS, TAGS, TMP]) {
      await mkdir(join(this.root, dir), { recursive: true, mode: DIR_MODE });
      // A store made by a version before DIR_MODE: closing the top directories closes what is under
      // them. The setgid bit stays (a pod's fsGroup: what is made below keeps the volume's group).
      const { mode } = await stat(join(this.root, dir));
      await chmod(join(this.root, dir), DIR_MODE | (mode & 0o2000)).catch((error: NodeJS.ErrnoException) => {
        if (error.code !== 'EPERM') throw error; // made by another user: left as it is
      });
    }
    await this.heartbeat();
    return this.sweepTemporary();
  }

  /**
   * Touches this process's heartbeat. Resolves with true when the directory had to be made again
   * (another process removed it, having seen no heartbeat for STALE_MS).
   */
  async heartbeat(): Promise<boolean> {
    const file = join(this.temporaryDirectory, HEARTBEAT_FILE);
    const now = new Date();
    try {
      await utimes(file, now, now);
      return false;
    } catch {
      await mkdir(this.temporaryDirectory, { recursive: true, mode: DIR_MODE });
      await writeFile(file, JSON.stringify(this.owner), { mode: FILE_MODE });
      return true;
    }
  }

  /**
   * Removes the temporary directories of other processes that are gone: at once when the owner
   * provably is (its heartbeat names this host and PID namespace, and no process has its PID),
   * else once its heartbeat is older than STALE_MS; and temporary files directly under tmp/ (an
   * older version's) unchanged for STALE_MS. Resolves with what went and how many other
   * processes live on this store.
   */
  async sweepTemporary(): Promise<{ removed: RemovedInstance[]; removedLoose: number; liveInstances: number }> {
    const tmp = join(this.root, TMP);
    const removed: RemovedInstance[] = [];
    let removedLoose = 0;
    let liveInstances = 0;
    for (const entry of await readdir(tmp, { withFileTypes: true }).catch(() => [])) {
      if (entry.name === this.instance) continue;
      const path = join(tmp, entry.name);
      if (!entry.isDirectory()) {
        const info = await stat(path).catch(() => undefined);
        if (info && Date.now() - info.mtimeMs > STALE_MS) {
          await rm(path, { force: true });
          removedLoose++;
        }
        continue;
      }
      const state = await this.instanceState(path);
      if (state.why === 'live') {
        liveInstances++;
        continue;
      }
      const files = await countTemporaryFiles(path);
      await rm(path, { recursive: true, force: true });
      removed.push({ instance: entry.name, files, why: state.why, idleMs: state.idleMs });
    }
    return { removed, removedLoose, liveInstances };
  }

  /** Whether another process's temporary directory is in use. */
  private async instanceState(dir: string): Promise<{ why: 'live' | RemovedInstance['why']; idleMs: number }> {
    const heartbeat = join(dir, HEARTBEAT_FILE);
    // no heartbeat file yet: a process that is making its directory now (or died doing so), by the directory's time
    const info = (await stat(heartbeat).catch(() => undefined)) ?? (await stat(dir).catch(() => undefined));
    if (!info) return { why: 'live', idleMs: 0 };
    const idleMs = Math.max(0, Date.now() - info.mtimeMs);
    if (idleMs > STALE_MS) return { why: 'stale', idleMs };
    const owner = await readFile(heartbeat, 'utf8').then((text) => JSON.parse(text) as Owner, () => undefined);
    // Its PID means this process only on this host and in this PID namespace; this process's own
    // PID is another store in this process (tests), or one that died with this PID: left to the heartbeat.
    const here = owner?.hostname === this.owner.hostname && owner.pidNamespace !== undefined && owner.pidNamespace === this.owner.pidNamespace;
    if (here && owner.pid !== process.pid && !processExists(owner.pid)) return { why: 'exited', idleMs };
    return { why: 'live', idleMs };
  }

  /** Removes this process's temporary directory (at shutdown, once no download writes there). */
  async removeTemporaryDirectory(): Promise<void> {
    await rm(this.temporaryDirectory, { recursive: true, force: true });
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

  /** A new temporary file path on the same filesystem as the store, for write-then-rename (open it with openTemporary). */
  temporaryPath(): string {
    return join(this.temporaryDirectory, randomUUID());
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
    await mkdir(join(target, '..'), { recursive: true, mode: DIR_MODE });
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
    await mkdir(join(path, '..'), { recursive: true, mode: DIR_MODE });
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
    await mkdir(join(path, '..'), { recursive: true, mode: DIR_MODE });
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
    await mkdir(dir, { recursive: true, mode: DIR_MODE });
    // one write with O_APPEND: lines from concurrent appends do not interleave
    await appendFile(join(dir, LINKS_FILE), `\n${digests.join('\n')}\n`, { mode: FILE_MODE });
  }

  /** Replaces the repository's links file with these digests (atomically: a crash leaves the old file or the new one). */
  async writeLinks(registry: string, name: string, digests: readonly string[]): Promise<void> {
    const dir = join(this.root, TAGS, registry, name);
    await mkdir(dir, { recursive: true, mode: DIR_MODE });
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
   * Walks every stored blob and manifest (at start, to rebuild the eviction index; again while
   * other processes share the store, keepLoneMediaTypes then, as theirs may be half-written). A file whose
   * name is not a digest of its directory's algorithm, in its prefix directory (an unfinished copy
   * such as `ab0123.partial`, an NFS `.nfsXXXX` file) was not written by the mirror: it is passed to
   * `onForeign` and otherwise left alone, never counted or removed.
   */
  async *items(onForeign: (path: string) => void = () => undefined, options: { keepLoneMediaTypes?: boolean } = {}): AsyncGenerator<StoredItem> {
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
              if (!options.keepLoneMediaTypes) await unlink(path).catch(() => undefined);
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
      const handle = await openTemporary(temporary);
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

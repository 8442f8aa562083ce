// Which repository each stored manifest and blob was seen in. The store keeps content once, by
// digest, whichever repository (or upstream) it came from; a client may only be served it under a
// repository whose upstream has it. Otherwise content cached from ghcr.io/anyone/x would answer
// docker.io/myorg/app@sha256:... without that upstream ever having it, getting round any policy
// that trusts the repository name (distribution's proxy keeps per-repository links for the same
// reason). A repository learns a digest when its upstream serves it, names it in a manifest it
// served (the manifest's config, layers and child manifests), or confirms it with a HEAD.
//
// Links go when their content does: once eviction has removed content, a repository's links are
// cut down (at most once a minute) to what is stored or being fetched, and its file rewritten once
// it holds many lines more than that; a file is cut down the same way when it is loaded. Without
// this the files and the sets in memory would grow with every digest ever seen. A link dropped
// for content fetched again later costs one HEAD, and a manifest served again links its
// references again.
import type { Logger } from '../common/logger.ts';
import { digestOf, isDigest, parseDigest } from './reference.ts';
import type { ContentStore } from './store.ts';

/** A repository's links as loaded: the digests, and how many lines its file holds (duplicates and stale ones included). */
interface Known {
  registry: string;
  name: string;
  digests: Set<string>;
  fileLines: number;
}

/** How long after content was removed the links are pruned: removals in that time are pruned together. */
const PRUNE_DELAY_MS = 60_000;

export interface LinksOptions {
  /**
   * Whether the mirror keeps a digest: stored, or being fetched. Undefined while that is not known
   * yet (the store's index is being built): nothing is pruned then.
   */
  isKept?: (digest: string) => boolean | undefined;
  pruneDelayMs?: number;
}

export class RepositoryLinks {
  private readonly store: ContentStore;
  private readonly logger: Logger;
  private readonly isKept: (digest: string) => boolean | undefined;
  private readonly pruneDelayMs: number;
  /**
   * Per repository (`registry/name`): the digests it is known to have, read from its links file
   * once. Only repositories with links stay here: a name that any client can make up (asking for
   * a stored digest under it) costs a look at the disk, not memory for as long as the mirror runs.
   */
  private readonly known = new Map<string, Known | Promise<Known>>();
  /** Manifests whose references were linked in this process, per repository: each is parsed once. */
  private readonly expanded = new Map<string, Set<string>>();
  /** Per repository, its file's appends and rewrites in order: a rewrite never loses a line appended meanwhile. */
  private readonly fileWork = new Map<string, Promise<void>>();
  private pruneTimer: NodeJS.Timeout | undefined;
  private pruning: Promise<void> | undefined;

  constructor(store: ContentStore, logger: Logger, options: LinksOptions = {}) {
    this.store = store;
    this.logger = logger;
    this.isKept = options.isKept ?? (() => undefined);
    this.pruneDelayMs = options.pruneDelayMs ?? PRUNE_DELAY_MS;
  }

  /** Repositories whose links are in memory. */
  get repositories(): number {
    return this.known.size;
  }

  /**
   * Whether `digest` is known to be in the repository; answered at once (no promise) once the
   * repository's links are loaded, as on the manifest-by-digest hot path.
   */
  has(registry: string, name: string, digest: string): boolean | Promise<boolean> {
    const known = this.load(registry, name);
    return 'digests' in known ? known.digests.has(digest) : known.then((loaded) => loaded.digests.has(digest));
  }

  /** Records digests as present in the repository (kept on disk; a failed write is logged and kept in memory only). */
  async add(registry: string, name: string, digests: readonly string[]): Promise<void> {
    const known = await this.load(registry, name);
    const fresh = [...new Set(digests)].filter((digest) => !known.digests.has(digest));
    if (fresh.length === 0) return;
    for (const digest of fresh) known.digests.add(digest);
    // a repository loaded without links was not kept: it has some now
    const key = `${registry}/${name}`;
    if (!this.known.has(key)) this.known.set(key, known);
    try {
      await this.inOrder(known, async () => {
        await this.store.appendLinks(registry, name, fresh);
        known.fileLines += fresh.length;
      });
    } catch (error) {
      this.logger.warn({ upstream: registry, repository: name, err: error }, 'could not record which content this repository has; it is asked upstream again after a restart');
    }
  }

  /**
   * Records a manifest served in the repository with everything it references (blobs, child
   * manifests): the upstream serves those in the same repository. Done once per manifest and
   * repository in a process (undefined, at once, when it was); the document is parsed only then.
   */
  addManifest(registry: string, name: string, digest: string, bytes: Buffer): Promise<void> | undefined {
    const key = `${registry}/${name}`;
    if (this.expanded.get(key)?.has(digest)) return undefined;
    return this.add(registry, name, [digest, ...referencedDigests(bytes)]).then(() => {
      let done = this.expanded.get(key);
      if (!done) this.expanded.set(key, (done = new Set()));
      done.add(digest);
    });
  }

  /** Content was removed from the store: the links are pruned a little later (removals meanwhile together). */
  contentRemoved(): void {
    if (this.pruneTimer) return;
    this.pruneTimer = setTimeout(() => {
      this.pruneTimer = undefined;
      this.pruning ??= this.prune().finally(() => (this.pruning = undefined));
    }, this.pruneDelayMs);
    this.pruneTimer.unref();
  }

  /**
   * Cuts every loaded repository's links down to the content the mirror keeps, rewriting the files
   * that hold many more lines than that. A repository that lost links parses its manifests again
   * when they are next served, so what they reference is linked again before a client asks for it.
   */
  async prune(): Promise<void> {
    let dropped = 0;
    const rewrites: Promise<void>[] = [];
    for (const [key, known] of this.known) {
      if (!('digests' in known)) continue;
      const gone = this.dropUnkept(key, known);
      if (gone === 0) continue;
      dropped += gone;
      this.expanded.delete(key);
      if (worthRewriting(known.fileLines, known.digests.size)) rewrites.push(this.rewrite(known));
    }
    await Promise.all(rewrites);
    if (dropped > 0) this.logger.debug({ links: dropped, rewrittenFiles: rewrites.length }, 'links of removed content pruned');
  }

  /** Drops the links to content the mirror no longer keeps (a repository left with none leaves memory); says how many went. */
  private dropUnkept(key: string, known: Known): number {
    const before = known.digests.size;
    for (const digest of known.digests) if (this.isKept(digest) === false) known.digests.delete(digest);
    if (known.digests.size === 0 && this.known.get(key) === known) this.known.delete(key);
    return before - known.digests.size;
  }

  /** The repository's file, written again with just its links in memory (after the appends queued before). */
  private rewrite(known: Known): Promise<void> {
    return this.inOrder(known, async () => {
      const digests = [...known.digests];
      await this.store.writeLinks(known.registry, known.name, digests);
      known.fileLines = digests.length;
    }).catch((error: unknown) => this.logger.warn({ upstream: known.registry, repository: known.name, err: error }, 'could not rewrite the repository links file; it is cut down again later'));
  }

  private inOrder(known: Known, work: () => Promise<void>): Promise<void> {
    const key = `${known.registry}/${known.name}`;
    const done = (this.fileWork.get(key) ?? Promise.resolve()).then(work);
    const settled = done.catch(() => undefined);
    this.fileWork.set(key, settled);
    void settled.then(() => {
      if (this.fileWork.get(key) === settled) this.fileWork.delete(key);
    });
    return done;
  }

  private load(registry: string, name: string): Known | Promise<Known> {
    const key = `${registry}/${name}`;
    let known = this.known.get(key);
    if (!known) {
      known = this.read(registry, name).then(async ({ digests, fileLines }) => {
        const loaded: Known = { registry, name, digests: new Set(digests), fileLines };
        this.known.set(key, loaded);
        this.dropUnkept(key, loaded);
        if (worthRewriting(fileLines, loaded.digests.size)) await this.rewrite(loaded);
        return loaded;
      });
      this.known.set(key, known);
    }
    return known;
  }

  /**
   * The repository's links file; for a repository without one (a store from before links were
   * kept), what its own tag records name, with their manifests' references, written down once:
   * its content pulled by digest is then served with the upstream down, as it was before.
   */
  private async read(registry: string, name: string): Promise<{ digests: string[]; fileLines: number }> {
    const linked = await this.store.readLinks(registry, name);
    if (linked) return { digests: linked, fileLines: linked.length };
    const found = new Set<string>();
    const expand = async (digest: string, depth: number) => {
      if (found.has(digest) || !isDigest(digest)) return;
      found.add(digest);
      const parsed = parseDigest(digest);
      const manifest = await this.store.readManifest(parsed);
      // a file that no longer hashes to its digest vouches for nothing
      if (!manifest || digestOf(manifest.bytes, parsed.algorithm) !== digest) return;
      for (const child of referencedDigests(manifest.bytes)) {
        if (depth === 0) await expand(child, 1);
        else found.add(child);
      }
    };
    for (const tag of await this.store.listTags(registry, name)) {
      const record = await this.store.readTag(registry, name, tag);
      if (record) await expand(record.digest, 0);
    }
    if (found.size > 0) {
      this.logger.info({ upstream: registry, repository: name, digests: found.size }, 'repository links taken from its stored tags (a store from before links were kept)');
      await this.store.appendLinks(registry, name, [...found]).catch((error: unknown) => this.logger.warn({ upstream: registry, repository: name, err: error }, 'could not record which content this repository has'));
    }
    return { digests: [...found], fileLines: found.size };
  }
}

/** A links file is rewritten once at least a quarter of its lines (and 16 or more) are no longer links. */
function worthRewriting(fileLines: number, links: number): boolean {
  const stale = fileLines - links;
  return stale >= 16 && stale >= fileLines / 4;
}

/** Digests a manifest or index refers to: config, layers, child manifests, subject, artifact blobs. */
export function referencedDigests(bytes: Buffer): string[] {
  let document: unknown;
  try {
    document = JSON.parse(bytes.toString('utf8'));
  } catch {
    return [];
  }
  if (typeof document !== 'object' || document === null) return [];
  const found: string[] = [];
  const take = (descriptor: unknown) => {
    const digest = (descriptor as { digest?: unknown } | null)?.digest;
    if (typeof digest === 'string' && isDigest(digest)) found.push(digest);
  };
  const doc = document as Record<string, unknown>;
  take(doc.config);
  take(doc.subject);
  for (const list of [doc.layers, doc.manifests, doc.blobs]) if (Array.isArray(list)) list.forEach(take);
  return found;
}

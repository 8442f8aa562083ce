// Which repository each stored manifest and blob was seen in. The store keeps content once, by
// digest, whichever repository (or upstream) it came from; a client may only be served it under a
// repository whose upstream has it. Otherwise content cached from ghcr.io/anyone/x would answer
// docker.io/myorg/app@sha256:... without that upstream ever having it, getting round any policy
// that trusts the repository name (distribution's proxy keeps per-repository links for the same
// reason). A repository learns a digest when its upstream serves it, names it in a manifest it
// served (the manifest's config, layers and child manifests), or confirms it with a HEAD.
import type { Logger } from '../common/logger.ts';
import { digestOf, isDigest, parseDigest } from './reference.ts';
import type { ContentStore } from './store.ts';

export class RepositoryLinks {
  private readonly store: ContentStore;
  private readonly logger: Logger;
  /** Per repository (`registry/name`): the digests it is known to have, read from its links file once. */
  private readonly known = new Map<string, Set<string> | Promise<Set<string>>>();
  /** Manifests whose references were linked in this process, per repository: each is parsed once. */
  private readonly expanded = new Map<string, Set<string>>();

  constructor(store: ContentStore, logger: Logger) {
    this.store = store;
    this.logger = logger;
  }

  /**
   * Whether `digest` is known to be in the repository; answered at once (no promise) once the
   * repository's links are loaded, as on the manifest-by-digest hot path.
   */
  has(registry: string, name: string, digest: string): boolean | Promise<boolean> {
    const known = this.digests(registry, name);
    return known instanceof Set ? known.has(digest) : known.then((set) => set.has(digest));
  }

  /** Records digests as present in the repository (kept on disk; a failed write is logged and kept in memory only). */
  async add(registry: string, name: string, digests: readonly string[]): Promise<void> {
    const known = await this.digests(registry, name);
    const fresh = [...new Set(digests)].filter((digest) => !known.has(digest));
    if (fresh.length === 0) return;
    for (const digest of fresh) known.add(digest);
    try {
      await this.store.appendLinks(registry, name, fresh);
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

  private digests(registry: string, name: string): Set<string> | Promise<Set<string>> {
    const key = `${registry}/${name}`;
    let known = this.known.get(key);
    if (!known) {
      known = this.load(registry, name).then((digests) => {
        const set = new Set(digests);
        this.known.set(key, set);
        return set;
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
  private async load(registry: string, name: string): Promise<string[]> {
    const linked = await this.store.readLinks(registry, name);
    if (linked) return linked;
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
    return [...found];
  }
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

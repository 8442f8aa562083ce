// Repository names, tags and digests as the OCI distribution spec defines them. Everything a
// client sends is checked here before it reaches the store, so no request can name a path
// outside it (no "..", no "/" in a tag, no unknown digest algorithm).
import { createHash } from 'node:crypto';
import { digestInvalid, nameInvalid, tagInvalid } from './errors.ts';

const COMPONENT = /^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*$/;
const TAG = /^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$/;
const DIGEST_GRAMMAR = /^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[A-Za-z0-9=_-]+$/;

export const MAX_NAME_LENGTH = 255;

/** Hex lengths of the digest algorithms this mirror can verify. */
export const DIGEST_ALGORITHMS = { sha256: 64, sha512: 128 } as const;
export type DigestAlgorithm = keyof typeof DIGEST_ALGORITHMS;

export interface Digest {
  algorithm: DigestAlgorithm;
  hex: string;
  /** "sha256:<hex>" */
  text: string;
}

export function validateName(name: string): string {
  if (name.length === 0) throw nameInvalid('empty name');
  if (name.length > MAX_NAME_LENGTH) throw nameInvalid(`longer than ${MAX_NAME_LENGTH} characters`);
  for (const component of name.split('/')) {
    if (!COMPONENT.test(component)) throw nameInvalid(`component "${component.slice(0, 64)}" is not lowercase letters, digits and separators`);
  }
  return name;
}

export function validateTag(tag: string): string {
  if (!TAG.test(tag)) throw tagInvalid(tag.slice(0, 200));
  return tag;
}

export function parseDigest(text: string): Digest {
  if (!DIGEST_GRAMMAR.test(text)) throw digestInvalid(`"${text.slice(0, 200)}" is not algorithm:hex`);
  const colon = text.indexOf(':');
  const algorithm = text.slice(0, colon);
  const hex = text.slice(colon + 1);
  if (!Object.hasOwn(DIGEST_ALGORITHMS, algorithm)) throw digestInvalid(`unsupported algorithm "${algorithm.slice(0, 32)}"`);
  const length = DIGEST_ALGORITHMS[algorithm as DigestAlgorithm];
  if (hex.length !== length || !/^[a-f0-9]+$/.test(hex)) throw digestInvalid(`${algorithm} needs ${length} lowercase hex characters`);
  return { algorithm: algorithm as DigestAlgorithm, hex, text };
}

/** The digest (`algorithm:hex`) of `bytes`. */
export function digestOf(bytes: Uint8Array, algorithm: DigestAlgorithm): string {
  return `${algorithm}:${createHash(algorithm).update(bytes).digest('hex')}`;
}

/** Whether `text` is a digest this mirror can verify (what parseDigest accepts). */
export function isDigest(text: string): boolean {
  try {
    parseDigest(text);
    return true;
  } catch {
    return false;
  }
}

export function isDigestReference(reference: string): boolean {
  return reference.includes(':');
}

/**
 * Docker Hub's short names: "nginx" means "library/nginx". Only Docker Hub does this; for any
 * other registry a one-segment name is taken as it is.
 */
export function normaliseName(registry: string, name: string): string {
  return registry === 'docker.io' && !name.includes('/') ? `library/${name}` : name;
}

export interface ImageReference {
  registry: string;
  name: string;
  /** A tag, or a digest. */
  reference: string;
}

/** Splits `[registry/]name[:tag|@digest]` the way Docker does: a first part with a dot or port is a registry. */
export function parseImageReference(text: string, defaultRegistry: string): ImageReference {
  const at = text.indexOf('@');
  let rest = at >= 0 ? text.slice(0, at) : text;
  let reference = at >= 0 ? text.slice(at + 1) : 'latest';
  if (at < 0) {
    const colon = rest.lastIndexOf(':');
    if (colon > rest.lastIndexOf('/')) {
      reference = rest.slice(colon + 1);
      rest = rest.slice(0, colon);
    }
  }
  const slash = rest.indexOf('/');
  const first = slash >= 0 ? rest.slice(0, slash) : '';
  const hasRegistry = slash >= 0 && (first.includes('.') || first.includes(':') || first === 'localhost');
  const registry = hasRegistry ? first : defaultRegistry;
  const name = normaliseName(registry, validateName(hasRegistry ? rest.slice(slash + 1) : rest));
  if (isDigestReference(reference)) parseDigest(reference);
  else validateTag(reference);
  return { registry, name, reference };
}

/**
 * The image a prefetch entry names, or why the mirror cannot prefetch it: not an image reference,
 * or on none of the configured registries (`listName` is how the caller's config names that list).
 * The mirror refuses such an entry at start, and the operator before it writes the mirror's config.
 */
export function prefetchTarget(text: string, defaultRegistry: string, registries: ReadonlySet<string>, listName: string): ImageReference | { problem: string; unknownRegistry: boolean } {
  let target: ImageReference;
  try {
    target = parseImageReference(text, defaultRegistry);
  } catch (error) {
    return { problem: `"${text}" is not an image reference: ${(error as Error).message}`, unknownRegistry: false };
  }
  return registries.has(target.registry) ? target : { problem: `"${text}" is on ${target.registry}, which is not one of ${listName}`, unknownRegistry: true };
}

// CRI-O (and Podman, Buildah, skopeo): a registries.conf drop-in with one [[registry]] per
// mirrored registry and the mirror as its [[registry.mirror]]. Pure: config in, file text out.
import { parse, stringify } from 'smol-toml';
import { registryPathComponent } from '../common/registry-path.ts';

/** The drop-in's name; drop-ins load in lexical order and a later [[registry]] for a prefix wins. */
export const CRIO_DROP_IN = '99-regmirror.conf';

export const CRIO_MARKER = '# Managed by regmirror node-agent: deleted when the mirror is taken away.';

export interface CrioDropInInput {
  registries: string[];
  /** http(s)://host[:port] */
  mirror: string;
  /** The registry the mirror serves for requests that do not name one (its `default:`). */
  defaultRegistry: string;
}

/**
 * containers/image sends no `?ns=` to a mirror, so every registry but the mirror's default is
 * mirrored under a path prefix (`mirror:5000/ghcr.io`), which the mirror reads as the registry; a
 * port is written after `__` (`mirror:5000/registry.example.com__5000`: a path allows no ':').
 */
export function crioDropIn(input: CrioDropInInput): string {
  const url = new URL(input.mirror);
  const registry = input.registries.map((name) => ({
    prefix: name,
    location: name,
    // insecure lets containers/image speak plain HTTP to the mirror (it tries HTTPS first).
    mirror: [{ location: name === input.defaultRegistry ? url.host : `${url.host}/${registryPathComponent(name)}`, insecure: url.protocol === 'http:' }],
  }));
  const body = registry.length > 0 ? stringify({ registry }) : '';
  return `${CRIO_MARKER}\n${body.endsWith('\n') || body === '' ? body : `${body}\n`}`;
}

export function isManagedCrioDropIn(text: string): boolean {
  return text.startsWith(CRIO_MARKER);
}

/**
 * The mirror hosts (host[:port]) a drop-in's `[[registry.mirror]]` entries send containers/image
 * to; none for text that is not TOML.
 */
export function crioDropInMirrorHosts(text: string): string[] {
  let registry: { mirror?: { location?: unknown }[] }[] | undefined;
  try {
    ({ registry } = parse(text) as { registry?: { mirror?: { location?: unknown }[] }[] });
  } catch {
    return [];
  }
  const hosts = (registry ?? []).flatMap((r) => (r.mirror ?? []).map((m) => (typeof m.location === 'string' ? m.location.split('/')[0]! : '')));
  return [...new Set(hosts.filter((h) => h !== ''))];
}

/**
 * Does this drop-in send containers/image to `mirror` (http(s)://host[:port])? Another
 * RegistryMirror's agent writes the same file name; removal takes away only this mirror's.
 */
export function crioDropInPointsAt(text: string, mirror: string): boolean {
  return crioDropInMirrorHosts(text).includes(new URL(mirror).host);
}

/**
 * Whether containers/image loads a file of the drop-in directory after ours: only `*.conf` files
 * are read, in byte order of their names, and a later file's `[[registry]]` replaces an earlier
 * one's for the same prefix.
 */
export function loadsAfterCrioDropIn(name: string): boolean {
  return name.endsWith('.conf') && Buffer.compare(Buffer.from(name), Buffer.from(CRIO_DROP_IN)) > 0;
}

/**
 * The `[[registry]]` prefixes a registries.conf file defines (a missing prefix is its location).
 * Throws on text that is not TOML.
 */
export function crioRegistryPrefixes(text: string): string[] {
  const { registry } = parse(text) as { registry?: unknown };
  if (!Array.isArray(registry)) return [];
  return registry.flatMap((r: { prefix?: unknown; location?: unknown }) => {
    const prefix = typeof r.prefix === 'string' && r.prefix !== '' ? r.prefix : r.location;
    return typeof prefix === 'string' && prefix !== '' ? [prefix] : [];
  });
}

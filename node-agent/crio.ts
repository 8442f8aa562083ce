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
 * Does this drop-in send containers/image to `mirror` (http(s)://host[:port])? Another
 * RegistryMirror's agent writes the same file name; removal takes away only this mirror's.
 */
export function crioDropInPointsAt(text: string, mirror: string): boolean {
  const host = new URL(mirror).host;
  try {
    const { registry } = parse(text) as { registry?: { mirror?: { location?: unknown }[] }[] };
    return (registry ?? []).some((r) => (r.mirror ?? []).some((m) => typeof m.location === 'string' && (m.location === host || m.location.startsWith(`${host}/`))));
  } catch {
    return false;
  }
}

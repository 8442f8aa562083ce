// CRI-O (and Podman, Buildah, skopeo): a registries.conf drop-in with one [[registry]] per
// mirrored registry and the mirror as its [[registry.mirror]]. Pure: config in, file text out.
import { stringify } from 'smol-toml';

/** The drop-in's name; drop-ins load in lexical order and a later [[registry]] for a prefix wins. */
export const CRIO_DROP_IN = '99-regmirror.conf';

export const CRIO_MARKER = '# Managed by regmirror node-agent: deleted when the mirror is taken away.';

export interface CrioDropInInput {
  registries: string[];
  /** http(s)://host[:port] */
  mirror: string;
  /**
   * The registry the mirror serves for requests that do not name one. containers/image sends no
   * `?ns=` to a mirror, so only this registry can go through it.
   */
  defaultRegistry: string;
}

export interface CrioDropIn {
  text: string;
  /** Registries left to go direct, because the mirror could not tell them from the default. */
  skipped: string[];
}

export function crioDropIn(input: CrioDropInInput): CrioDropIn {
  const url = new URL(input.mirror);
  const mirrored = input.registries.filter((r) => r === input.defaultRegistry);
  const skipped = input.registries.filter((r) => r !== input.defaultRegistry);
  const registry = mirrored.map((name) => ({
    prefix: name,
    location: name,
    // insecure lets containers/image speak plain HTTP to the mirror (it tries HTTPS first).
    mirror: [{ location: url.host, insecure: url.protocol === 'http:' }],
  }));
  const body = registry.length > 0 ? stringify({ registry }) : '';
  return { text: `${CRIO_MARKER}\n${body.endsWith('\n') || body === '' ? body : `${body}\n`}`, skipped };
}

export function isManagedCrioDropIn(text: string): boolean {
  return text.startsWith(CRIO_MARKER);
}

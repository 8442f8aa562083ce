// Docker: pure writers for daemon.json's `registry-mirrors`. daemon.json cannot carry a comment,
// so what the agent added is remembered in a small state file beside it (DockerState), together
// with the bytes that were there before, so removal can put them back exactly.
import { isDeepStrictEqual } from 'node:util';

export interface DockerState {
  /** The mirror URL the agent put into registry-mirrors. */
  mirror: string;
  /** base64 of daemon.json as it was before the agent touched it; null when there was none. */
  original: string | null;
}

export class DaemonJsonError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'DaemonJsonError';
  }
}

const KEY = 'registry-mirrors';

function parseDaemonJson(bytes: Buffer): Record<string, unknown> {
  const text = bytes.toString('utf8').replace(/^\uFEFF/, '');
  if (text.trim() === '') return {};
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (error) {
    throw new DaemonJsonError(`daemon.json is not valid JSON: ${(error as Error).message}`);
  }
  if (value === null || typeof value !== 'object' || Array.isArray(value)) throw new DaemonJsonError('daemon.json is not a JSON object');
  const mirrors = (value as Record<string, unknown>)[KEY];
  if (mirrors !== undefined && !(Array.isArray(mirrors) && mirrors.every((m) => typeof m === 'string'))) {
    throw new DaemonJsonError(`daemon.json: "${KEY}" is not a list of URLs`);
  }
  return value as Record<string, unknown>;
}

const sameMirror = (a: string, b: string): boolean => a.replace(/\/+$/, '') === b.replace(/\/+$/, '');

function mirrorsOf(doc: Record<string, unknown>): string[] {
  return (doc[KEY] as string[] | undefined) ?? [];
}

/** Keeps the file's own indentation (two spaces when it has none to copy). */
function serialize(doc: Record<string, unknown>, like: Buffer | null): string {
  const indent = like ? /\n([ \t]+)"/.exec(like.toString('utf8'))?.[1] ?? '  ' : '  ';
  return `${JSON.stringify(doc, null, indent)}\n`;
}

/** Adds `mirror` first in registry-mirrors (Docker tries them in order), replacing `previous`. */
function withMirror(doc: Record<string, unknown>, mirror: string, previous?: string): Record<string, unknown> {
  const others = mirrorsOf(doc).filter((m) => !sameMirror(m, mirror) && !(previous && sameMirror(m, previous)));
  const out: Record<string, unknown> = { ...doc };
  out[KEY] = [mirror, ...others];
  return out;
}

function withoutMirror(doc: Record<string, unknown>, mirror: string, keepEmptyKey: boolean): Record<string, unknown> {
  const out: Record<string, unknown> = { ...doc };
  const rest = mirrorsOf(doc).filter((m) => !sameMirror(m, mirror));
  if (rest.length === 0 && !keepEmptyKey) delete out[KEY];
  else out[KEY] = rest;
  return out;
}

export interface DockerApplyPlan {
  /** New daemon.json text, or null when the file already says what it should. */
  text: string | null;
  state: DockerState;
}

/**
 * Apply: our mirror goes first into registry-mirrors and every other key stays. When the file
 * does not carry our entry (first run, or someone rewrote it), its current bytes become the
 * original that removal restores.
 */
export function planDockerApply(current: Buffer | null, state: DockerState | null, mirror: string): DockerApplyPlan {
  const doc = current ? parseDaemonJson(current) : {};
  const ours = state !== null && mirrorsOf(doc).some((m) => sameMirror(m, state.mirror));
  if (ours) {
    const first = mirrorsOf(doc)[0];
    if (sameMirror(state.mirror, mirror) && first !== undefined && sameMirror(first, mirror)) {
      return { text: null, state };
    }
    return { text: serialize(withMirror(doc, mirror, state.mirror), current), state: { mirror, original: state.original } };
  }
  const original = current ? current.toString('base64') : null;
  return { text: serialize(withMirror(doc, mirror), current), state: { mirror, original } };
}

export type DockerRemovePlan =
  | { action: 'none' }
  | { action: 'write'; bytes: Buffer }
  | { action: 'delete' };

/**
 * Remove: only our entry comes out. When nothing else changed since the agent wrote the file,
 * the original bytes come back exactly (or the file goes, when there was none). That holds too
 * when a removal was cut short after its interim reload (our entry already out, the key kept,
 * the keys reformatted): the state file is still there, and the original comes back.
 */
export function planDockerRemove(current: Buffer | null, state: DockerState | null): DockerRemovePlan {
  if (state === null || current === null) return { action: 'none' };
  const doc = parseDaemonJson(current);
  const ours = mirrorsOf(doc).some((m) => sameMirror(m, state.mirror));
  const originalBytes = state.original === null ? null : Buffer.from(state.original, 'base64');
  if (!ours) {
    // Our entry is out: an interrupted removal when the rest is the original (restore it), else
    // someone else's file now (leave it).
    if (originalBytes !== null && current.equals(originalBytes)) return { action: 'none' };
    let original: Record<string, unknown>;
    try {
      original = originalBytes ? parseDaemonJson(originalBytes) : {};
    } catch {
      return { action: 'none' };
    }
    const rest = withoutMirror(doc, state.mirror, KEY in original);
    if (!isDeepStrictEqual(rest, original)) return { action: 'none' };
    return originalBytes === null ? { action: 'delete' } : { action: 'write', bytes: originalBytes };
  }
  let originalDoc: Record<string, unknown> | undefined;
  try {
    originalDoc = originalBytes ? parseDaemonJson(originalBytes) : {};
  } catch {
    originalDoc = undefined; // an original that was not JSON cannot be compared; keep the edit minimal
  }
  const stripped = withoutMirror(doc, state.mirror, originalDoc !== undefined && KEY in originalDoc);
  if (originalDoc !== undefined && isDeepStrictEqual(stripped, originalDoc)) {
    return originalBytes === null ? { action: 'delete' } : { action: 'write', bytes: originalBytes };
  }
  return { action: 'write', bytes: Buffer.from(serialize(stripped, current)) };
}

/**
 * daemon.json with `mirror` out of registry-mirrors but the key kept (possibly empty): dockerd's
 * SIGHUP reload leaves registry-mirrors as they were when the key is missing from the file.
 */
export function daemonJsonForReload(current: Buffer, mirror: string): string {
  return serialize(withoutMirror(parseDaemonJson(current), mirror, true), current);
}

/** The `pidfile` daemon.json names, if any: dockerd writes its pid there. */
export function daemonJsonPidFile(current: Buffer | null): string | undefined {
  if (!current) return undefined;
  try {
    const pidfile = parseDaemonJson(current).pidfile;
    return typeof pidfile === 'string' && pidfile !== '' ? pidfile : undefined;
  } catch {
    return undefined;
  }
}

/** The unix socket dockerd listens on according to daemon.json's `hosts`, if it names one. */
export function daemonJsonSocket(current: Buffer | null): string | undefined {
  if (!current) return undefined;
  try {
    const hosts = parseDaemonJson(current).hosts;
    if (!Array.isArray(hosts)) return undefined;
    const unix = hosts.find((h): h is string => typeof h === 'string' && h.startsWith('unix://'));
    return unix?.slice('unix://'.length);
  } catch {
    return undefined;
  }
}

/** registry-mirrors as dockerd reports them in GET /info (`RegistryConfig.Mirrors`). */
export function mirrorsInDockerInfo(info: unknown): string[] {
  const mirrors = (info as { RegistryConfig?: { Mirrors?: unknown } } | null)?.RegistryConfig?.Mirrors;
  return Array.isArray(mirrors) ? mirrors.filter((m): m is string => typeof m === 'string').map((m) => m.replace(/\/+$/, '')) : [];
}

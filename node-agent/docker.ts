// Docker: pure writers for daemon.json's `registry-mirrors`. daemon.json cannot carry a comment,
// so what the agent added is remembered in a small state file beside it (DockerState), together
// with the bytes that were there before, so removal can put them back exactly.
import { isDeepStrictEqual } from 'node:util';

export interface DockerState {
  /** The mirror URL the agent put into registry-mirrors. */
  mirror: string;
  /** base64 of daemon.json as it was before the agent touched it; null when there was none. */
  original: string | null;
  /**
   * Mirrors the agent put there before `mirror` (the mirror moved), written down before daemon.json
   * is rewritten: if the agent dies in between, the old entry is still known as the agent's.
   */
  replacing?: string[];
  /**
   * dockerd refused daemon.json with the mirror on reload, and the agent took its entry out again:
   * which dockerd (`pid@start time`) and the sha-256 of the file as the agent left it. The agent
   * does not try again while both are the same.
   */
  refused?: { dockerd: string; file: string };
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

/** Every mirror whose entry in registry-mirrors is the agent's: the current one and any it is replacing. */
export function ourMirrors(state: DockerState): string[] {
  return [state.mirror, ...(state.replacing ?? [])];
}

const isOurs = (m: string, state: DockerState): boolean => ourMirrors(state).some((ours) => sameMirror(m, ours));

const hasOurEntry = (doc: Record<string, unknown>, state: DockerState): boolean => mirrorsOf(doc).some((m) => isOurs(m, state));

/** Adds `mirror` first in registry-mirrors (Docker tries them in order), replacing `previous`. */
function withMirror(doc: Record<string, unknown>, mirror: string, previous: string[] = []): Record<string, unknown> {
  const others = mirrorsOf(doc).filter((m) => ![mirror, ...previous].some((p) => sameMirror(m, p)));
  const out: Record<string, unknown> = { ...doc };
  out[KEY] = [mirror, ...others];
  return out;
}

function withoutMirrors(doc: Record<string, unknown>, mirrors: string[], keepEmptyKey: boolean): Record<string, unknown> {
  const out: Record<string, unknown> = { ...doc };
  const rest = mirrorsOf(doc).filter((m) => !mirrors.some((ours) => sameMirror(m, ours)));
  if (rest.length === 0 && !keepEmptyKey) delete out[KEY];
  else out[KEY] = rest;
  return out;
}

/** The bytes before the agent, and their keys (undefined when they were not JSON the agent can compare). */
function originalOf(state: DockerState): { bytes: Buffer | null; doc: Record<string, unknown> | undefined } {
  const bytes = state.original === null ? null : Buffer.from(state.original, 'base64');
  try {
    return { bytes, doc: bytes ? parseDaemonJson(bytes) : {} };
  } catch {
    return { bytes, doc: undefined };
  }
}

/** `doc` with the agent's entries taken out, the key kept when the original had it. */
function strippedLikeOriginal(doc: Record<string, unknown>, state: DockerState, originalDoc: Record<string, unknown> | undefined): Record<string, unknown> {
  return withoutMirrors(doc, ourMirrors(state), originalDoc !== undefined && KEY in originalDoc);
}

/**
 * Is `doc`, without the agent's entries, the original? True for the agent's own intermediate
 * files too (a removal cut short after its reload step: our entry out, an empty key kept, the
 * keys reformatted), so none of them is ever taken for a file of the user's.
 */
function isOriginalWithoutOurs(doc: Record<string, unknown>, state: DockerState): boolean {
  const { doc: originalDoc } = originalOf(state);
  return originalDoc !== undefined && isDeepStrictEqual(strippedLikeOriginal(doc, state, originalDoc), originalDoc);
}

/** Did the agent leave daemon.json like this? A file that is gone is the original again only when there was none. */
function isAgentsFile(current: Buffer | null, doc: Record<string, unknown>, state: DockerState): boolean {
  if (current === null) return state.original === null;
  return hasOurEntry(doc, state) || isOriginalWithoutOurs(doc, state);
}

export interface DockerApplyPlan {
  /** New daemon.json text, or null when the file already says what it should. */
  text: string | null;
  /** The state file while `text` is written: it names every entry of the agent's the file may hold. */
  during: DockerState;
  /** The state file once `text` is in place. */
  state: DockerState;
}

/**
 * Apply: our mirror goes first into registry-mirrors and every other key stays. When the file
 * carries neither an entry of ours nor the original's keys (first run, or someone rewrote it),
 * its current bytes become the original that removal restores. A file of the agent's own making
 * never does: one with an entry of ours (also one it was replacing when a move was cut short), or
 * one that is the original without our entry (a removal cut short).
 */
export function planDockerApply(current: Buffer | null, state: DockerState | null, mirror: string): DockerApplyPlan {
  const doc = current ? parseDaemonJson(current) : {};
  if (state !== null && isAgentsFile(current, doc, state)) {
    const settled: DockerState = { mirror, original: state.original };
    const stale = mirrorsOf(doc).filter((m) => isOurs(m, state) && !sameMirror(m, mirror));
    const first = mirrorsOf(doc)[0];
    if (stale.length === 0 && first !== undefined && sameMirror(first, mirror)) return { text: null, during: settled, state: settled };
    const during = stale.length > 0 ? { ...settled, replacing: stale } : settled;
    return { text: serialize(withMirror(doc, mirror, ourMirrors(state)), current), during, state: settled };
  }
  const settled: DockerState = { mirror, original: current ? current.toString('base64') : null };
  return { text: serialize(withMirror(doc, mirror), current), during: settled, state: settled };
}

export type DockerRemovePlan =
  | { action: 'none' }
  | { action: 'write'; bytes: Buffer }
  | { action: 'delete' };

/**
 * Remove: only our entries come out. When nothing else changed since the agent wrote the file,
 * the original bytes come back exactly (or the file goes, when there was none). That holds too
 * when a removal was cut short after its interim reload (our entry already out, the key kept,
 * the keys reformatted): the state file is still there, and the original comes back.
 */
export function planDockerRemove(current: Buffer | null, state: DockerState | null): DockerRemovePlan {
  if (state === null || current === null) return { action: 'none' };
  const doc = parseDaemonJson(current);
  const { bytes: originalBytes, doc: originalDoc } = originalOf(state);
  const restore: DockerRemovePlan = originalBytes === null ? { action: 'delete' } : { action: 'write', bytes: originalBytes };
  const ours = hasOurEntry(doc, state);
  if (!ours && originalBytes !== null && current.equals(originalBytes)) return { action: 'none' };
  const stripped = strippedLikeOriginal(doc, state, originalDoc);
  // The rest is the original: restore its bytes (our entry still in, or out already as an
  // interrupted removal leaves it). An original that was not JSON cannot be compared.
  if (originalDoc !== undefined && isDeepStrictEqual(stripped, originalDoc)) return restore;
  // otherwise take only our entry out; without it, the file is someone else's now: left alone
  return ours ? { action: 'write', bytes: Buffer.from(serialize(stripped, current)) } : { action: 'none' };
}

/**
 * daemon.json with the agent's entries out of registry-mirrors but the key kept (possibly empty):
 * dockerd's SIGHUP reload leaves registry-mirrors as they were when the key is missing from the file.
 */
export function daemonJsonForReload(current: Buffer, state: DockerState): string {
  return serialize(withoutMirrors(parseDaemonJson(current), ourMirrors(state), true), current);
}

/** What dockerd's command line says that bears on daemon.json. */
export interface DockerdFlags {
  /** `--registry-mirror` values (trailing slash dropped): dockerd refuses registry-mirrors in daemon.json as well. */
  registryMirrors: string[];
  /** `--config-file`: the daemon.json dockerd reads, when not the default. */
  configFile: string | undefined;
}

/** Reads `--registry-mirror X`, `--registry-mirror=X` and `--config-file` from dockerd's arguments (argv[0] first). */
export function dockerdFlags(argv: string[]): DockerdFlags {
  const flags: DockerdFlags = { registryMirrors: [], configFile: undefined };
  for (let i = 1; i < argv.length && argv[i] !== '--'; i++) {
    const match = /^--(registry-mirror|config-file)(?:=(.*))?$/s.exec(argv[i]!);
    if (!match) continue;
    const value = match[2] ?? argv[++i] ?? '';
    if (match[1] === 'config-file') flags.configFile = value;
    else flags.registryMirrors.push(value.replace(/\/+$/, ''));
  }
  return flags;
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

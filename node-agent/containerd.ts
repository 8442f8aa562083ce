// containerd: pure writers for `<hostsDir>/<registry>/hosts.toml` and a reader for config.toml.
// Nothing here touches the disk; node-files.ts carries out the plans these functions return.
import { parse, stringify } from 'smol-toml';
import { registryApiUrl } from '../common/registry-path.ts';

/** First line of every hosts.toml the agent writes: how it tells its own file from someone else's. */
export const MANAGED_MARKER = '# Managed by regmirror node-agent: restored or removed when the mirror is taken away.';

/**
 * Second line, when the agent runs with --owner: which RegistryMirror's agent wrote the file
 * (`# regmirror-owner: <namespace>/<name>`), so that agent still knows it for its own after the
 * mirror's URL changed (a new ClusterIP, http turned https).
 */
const OWNER_PREFIX = '# regmirror-owner: ';

export interface HostsTomlInput {
  registry: string;
  /** http(s)://host[:port] */
  mirror: string;
  /** `Basic ...` when the mirror requires auth. */
  authorization?: string | undefined;
  /** Go duration; containerd 1.7+ honours it, 1.6 ignores unknown keys. */
  dialTimeout: string;
  /** The CA file's name in the hosts.toml's directory, for an https mirror with its own CA. */
  caFile?: string | undefined;
  /** --owner: written into the header. */
  owner?: string | undefined;
}

export function containerdHostsToml(input: HostsTomlInput): string {
  const host: Record<string, unknown> = {
    capabilities: ['pull', 'resolve'],
    dial_timeout: input.dialTimeout,
  };
  if (input.caFile) host.ca = input.caFile;
  if (input.authorization) host.header = { Authorization: input.authorization };
  // server: the registry's own endpoint, where containerd goes when the mirror fails
  const body = stringify({ server: registryApiUrl(input.registry), host: { [input.mirror]: host } });
  const header = input.owner ? `${MANAGED_MARKER}\n${OWNER_PREFIX}${input.owner}\n` : `${MANAGED_MARKER}\n`;
  return `${header}${body.endsWith('\n') ? body : `${body}\n`}`;
}

export function isManagedHostsToml(text: string): boolean {
  return text.startsWith(MANAGED_MARKER);
}

/** The owner in a managed hosts.toml's header; undefined for one written without --owner (or by an older agent). */
export function hostsTomlOwner(text: string): string | undefined {
  const second = text.split('\n', 2)[1]?.replace(/\r$/, '');
  return second?.startsWith(OWNER_PREFIX) ? second.slice(OWNER_PREFIX.length) : undefined;
}

/** Does this hosts.toml send containerd to `mirror`? */
function pointsAtMirror(text: string, mirror: string): boolean {
  try {
    const host = (parse(text) as { host?: unknown }).host;
    return host !== null && typeof host === 'object' && Object.hasOwn(host, mirror);
  } catch {
    return false;
  }
}

/**
 * Is this managed hosts.toml this agent's to take away? When both the file and the agent name an
 * owner, the owner decides, whatever mirror the file points at (this agent's, under an earlier URL);
 * otherwise (a file of an agent without --owner) the file is ours when it points at our mirror.
 * Another RegistryMirror's agent writes the same file names: its files are never ours.
 */
export function isOwnHostsToml(text: string, agent: { mirror: string; owner?: string | undefined }): boolean {
  const owner = hostsTomlOwner(text);
  if (owner !== undefined && agent.owner !== undefined) return owner === agent.owner;
  return pointsAtMirror(text, agent.mirror);
}

/** What to do with one registry's hosts.toml; the disk layer carries it out. */
export type HostsPlan =
  | { action: 'none' }
  /** Write `text`; when `backupCurrent`, first keep the file that is there as the backup. */
  | { action: 'write'; text: string; backupCurrent: boolean }
  /** Put the backup back in place of our file. */
  | { action: 'restore' }
  /** Remove our file (and the registry's directory when nothing else is in it). */
  | { action: 'delete' }
  /** Someone else's file is in place: leave it, and drop our stale backup. */
  | { action: 'drop-backup' };

/**
 * Apply: our text must be in place. A file that is not ours becomes the backup (the newest
 * foreign version wins: it is what its owner wants back once the mirror is gone).
 */
export function planHostsApply(current: string | null, desired: string): HostsPlan {
  if (current === desired) return { action: 'none' };
  if (current === null || isManagedHostsToml(current)) return { action: 'write', text: desired, backupCurrent: false };
  return { action: 'write', text: desired, backupCurrent: true };
}

/** Remove: our file goes; what was there before comes back. */
export function planHostsRemove(current: string | null, hasBackup: boolean): HostsPlan {
  if (current !== null && !isManagedHostsToml(current)) return hasBackup ? { action: 'drop-backup' } : { action: 'none' };
  if (hasBackup) return { action: 'restore' };
  return current === null ? { action: 'none' } : { action: 'delete' };
}

/** One file of containerd's configuration: config.toml or a file it imports, parsed. */
export interface ContainerdConfigFile {
  /** Where the agent read it (named in messages). */
  file: string;
  doc: Record<string, unknown>;
}

export interface ContainerdRegistrySetup {
  /** The version containerd reads the configuration as (the last file to set one wins; none is 1). */
  version: number;
  /** The file that set it; undefined when none did. */
  versionFile: string | undefined;
  /** The table containerd's CRI reads config_path from for that version, as written in TOML. */
  registryTable: string;
  /** config_path as containerd reads it; undefined when unset (hosts.toml files are then ignored). */
  configPath: string | undefined;
  /** The CRI plugin is disabled (Docker's bundled containerd): kubelet does not pull through it. */
  criDisabled: boolean;
  /** The legacy `registry.mirrors` table is set; containerd then refuses config_path. */
  legacyMirrors: boolean;
  /**
   * config_path lists several directories (`a:b`) and containerd 2.1+ pulls for the CRI through its
   * transfer service, which takes the list for one directory (containerd#12415): certain in a version
   * 3 config (a problem), possible in a version 1 or 2 one (containerd 1.x and 2.0 read the list).
   */
  listIgnoredByTransfer: boolean;
  /** What containerd 2.x reads otherwise than 1.x in a version 1 or 2 config, in words (the agent cannot tell which runs). */
  containerd2Differs: string[];
  /** Why a config_path in the files is not the one containerd reads, in words naming file and table. */
  misplaced: string[];
  /** The configuration is one containerd does not read at all (an unknown version). */
  unusable: string | undefined;
}

/**
 * The CRI plugin's key under [plugins] per config version: containerd 1.x reads version 1 by
 * plugin ID (`cri`) and version 2 by URI; containerd 2.x's version 3 moved the registry settings
 * to the images plugin. containerd 2.x migrates a version 2 config's CRI table to the images plugin
 * (keeping the images plugin's own table when the CRI one has no `registry`), but does not read a
 * version 1 config's `[plugins.cri]` (tested against containerd 2.1 and 2.2).
 */
const CRI_REGISTRY_PLUGIN: Record<number, string> = {
  1: 'cri',
  2: 'io.containerd.grpc.v1.cri',
  3: 'io.containerd.cri.v1.images',
};

/** `[plugins."<plugin>"]` as TOML names it (an ID such as `cri` needs no quotes). */
function pluginTable(plugin: string, sub = ''): string {
  return `[plugins.${plugin.includes('.') ? `"${plugin}"` : plugin}${sub}]`;
}

function table(value: unknown): Record<string, unknown> | undefined {
  return value !== null && typeof value === 'object' && !Array.isArray(value) ? (value as Record<string, unknown>) : undefined;
}

function registryOf(plugin: unknown): Record<string, unknown> | undefined {
  return table(table(plugin)?.registry);
}

/** The `imports` a file lists (paths or globs), as written. */
export function containerdImports(doc: Record<string, unknown>): string[] {
  return Array.isArray(doc.imports) ? doc.imports.filter((i): i is string => typeof i === 'string') : [];
}

/** The `version` one file sets, 0 when none (containerd's zero value, which does not override). */
export function containerdConfigVersion(doc: Record<string, unknown>): number {
  return typeof doc.version === 'number' || typeof doc.version === 'bigint' ? Number(doc.version) : 0;
}

/**
 * Whether containerd 2.1+ pulls for the CRI itself rather than through its transfer service: it
 * does with `use_local_image_pull`, and falls back to it for any setting the transfer service lacks
 * (containerd's CheckLocalImagePullConfigs). Only then does it read a config_path list.
 */
function localImagePull(images: Record<string, unknown> | undefined, registry: Record<string, unknown> | undefined): boolean {
  if (images === undefined) return false;
  const nonEmpty = (key: string): boolean => Object.keys(table(registry?.[key]) ?? {}).length > 0;
  return (
    images.use_local_image_pull === true ||
    images.disable_snapshot_annotations === false ||
    images.discard_unpacked_layers === true ||
    images.image_pull_with_sync_fs === true ||
    (images.max_concurrent_downloads !== undefined && Number(images.max_concurrent_downloads) !== 3) ||
    ['mirrors', 'configs', 'auths'].some(nonEmpty)
  );
}

/**
 * Reads where containerd's CRI plugin looks for hosts.toml, from config.toml and the files it
 * imports, in the order containerd loads them, merged as containerd 1.6 to 2.x merge them: the
 * last file that sets `version` decides it, and each [plugins."<name>"] table is replaced whole
 * by a later file that has it (not merged key by key). Only the registry table for the resulting
 * version counts.
 */
export function containerdRegistrySetup(files: ContainerdConfigFile[]): ContainerdRegistrySetup {
  let version = 0;
  let versionFile: string | undefined;
  const plugins = new Map<string, { value: unknown; file: string }>();
  /** Every file's registry table per plugin, for saying where a config_path that does not count is. */
  const setIn: { plugin: string; file: string }[] = [];
  const disabled: unknown[] = [];
  for (const { file, doc } of files) {
    if (containerdConfigVersion(doc) !== 0) {
      version = containerdConfigVersion(doc);
      versionFile = file;
    }
    for (const [name, value] of Object.entries(table(doc.plugins) ?? {})) {
      plugins.set(name, { value, file });
      const configPath = registryOf(value)?.config_path;
      if (typeof configPath === 'string' && configPath !== '') setIn.push({ plugin: name, file });
    }
    if (Array.isArray(doc.disabled_plugins)) disabled.push(...doc.disabled_plugins);
  }
  const effective = version === 0 ? 1 : version;
  const plugin = CRI_REGISTRY_PLUGIN[effective];
  const criDisabled = disabled.some((name) => name === 'cri' || name === 'io.containerd.grpc.v1.cri' || name === 'io.containerd.cri.v1.images');
  if (plugin === undefined) {
    return {
      version: effective, versionFile, registryTable: '', configPath: undefined, criDisabled, legacyMirrors: false, listIgnoredByTransfer: false, containerd2Differs: [], misplaced: [],
      unusable: `version = ${effective} is not a containerd config version (1 and 2: containerd 1.x, 3: containerd 2.x)`,
    };
  }
  const registryTable = pluginTable(plugin, '.registry');
  const winner = plugins.get(plugin);
  const registry = registryOf(winner?.value);
  // No default: containerd 2.0 and 2.1 have none, and 2.2's (/etc/containerd/certs.d:/etc/docker/certs.d)
  // is a list, which the transfer service 2.1+ pulls through by default does not read (below).
  const configPath = typeof registry?.config_path === 'string' && registry.config_path !== '' ? registry.config_path : undefined;
  const legacyMirrors = Object.keys(table(registry?.mirrors) ?? {}).length > 0;
  const isList = configPath !== undefined && configPath.split(':').filter(Boolean).length > 1;
  const listIgnoredByTransfer = isList && !localImagePull(table(winner?.value), registry);
  const containerd2Differs: string[] = [];
  if (effective === 1 && configPath !== undefined) {
    containerd2Differs.push(`${winner!.file} sets config_path under ${registryTable} in a version 1 config, which containerd 1.x reads but containerd 2.x does not (it leaves [plugins.cri] out when it migrates the config): on a containerd 2.x node hosts.toml is ignored; write it as a version 2 config under ${pluginTable(CRI_REGISTRY_PLUGIN[2]!, '.registry')}`);
  }
  if (effective === 2 && listIgnoredByTransfer) {
    containerd2Differs.push(`config_path "${configPath}" lists several directories: containerd 1.x and 2.0 read them all, but containerd 2.1 and later take the list for one directory when the CRI pulls through the transfer service, their default (containerd#12415), so on such a node hosts.toml is ignored; set a single directory`);
  }

  const misplaced: string[] = [];
  if (configPath === undefined) {
    for (const where of setIn) {
      if (where.plugin === plugin) {
        misplaced.push(`${where.file} sets it under ${registryTable}, but ${winner!.file} (loaded later) has a ${pluginTable(plugin)} table of its own, which replaces that one whole: containerd merges imported files plugin table by plugin table`);
      } else {
        const versions = Object.entries(CRI_REGISTRY_PLUGIN).filter(([, p]) => p === where.plugin).map(([v]) => v);
        let readFor = versions.length > 0 ? `a table containerd reads only in a version ${versions.join(' or ')} config` : 'a table containerd does not read';
        // containerd 2.x keeps the images plugin's table when it migrates a version 2 config; 1.x ignores it
        if (effective === 2 && where.plugin === CRI_REGISTRY_PLUGIN[3]) readFor = `a table containerd 2.x reads in a version 2 config too, but containerd 1.x does not (the agent cannot tell which runs); set it under ${registryTable}, which both read`;
        misplaced.push(`${where.file} sets it under ${pluginTable(where.plugin, '.registry')}, ${readFor}`);
      }
    }
  }
  return { version: effective, versionFile, registryTable, configPath, criDisabled, legacyMirrors, listIgnoredByTransfer, containerd2Differs, misplaced, unusable: undefined };
}

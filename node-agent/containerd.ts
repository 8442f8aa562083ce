// containerd: pure writers for `<hostsDir>/<registry>/hosts.toml` and a reader for config.toml.
// Nothing here touches the disk; node-files.ts carries out the plans these functions return.
import { parse, stringify } from 'smol-toml';
import { registryApiUrl } from '../common/registry-path.ts';

/** First line of every hosts.toml the agent writes: how it tells its own file from someone else's. */
export const MANAGED_MARKER = '# Managed by regmirror node-agent: restored or removed when the mirror is taken away.';

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
  return `${MANAGED_MARKER}\n${body.endsWith('\n') ? body : `${body}\n`}`;
}

export function isManagedHostsToml(text: string): boolean {
  return text.startsWith(MANAGED_MARKER);
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

export interface ContainerdRegistrySetup {
  /** config_path as containerd reads it; undefined when unset (hosts.toml files are then ignored). */
  configPath: string | undefined;
  /** The CRI plugin is disabled (Docker's bundled containerd): kubelet does not pull through it. */
  criDisabled: boolean;
  /** The legacy `registry.mirrors` table is set; containerd then refuses config_path. */
  legacyMirrors: boolean;
}

const CONTAINERD2_DEFAULT_CONFIG_PATH = '/etc/containerd/certs.d:/etc/docker/certs.d';

function table(value: unknown): Record<string, unknown> | undefined {
  return value !== null && typeof value === 'object' && !Array.isArray(value) ? (value as Record<string, unknown>) : undefined;
}

/**
 * Reads where containerd's CRI plugin looks for hosts.toml. Covers config version 1 (`cri`),
 * 2 (`io.containerd.grpc.v1.cri`) and 3 (`io.containerd.cri.v1.images`, containerd 2.x).
 * Throws smol-toml's TomlError on a file that is not TOML.
 */
export function readContainerdRegistrySetup(configToml: string): ContainerdRegistrySetup {
  const doc = parse(configToml) as Record<string, unknown>;
  const plugins = table(doc.plugins) ?? {};
  const registryTables = [
    table(table(plugins['io.containerd.cri.v1.images'])?.registry),
    table(table(plugins['io.containerd.grpc.v1.cri'])?.registry),
    table(table(plugins.cri)?.registry),
  ];
  let configPath: string | undefined;
  let legacyMirrors = false;
  for (const registry of registryTables) {
    if (!registry) continue;
    if (configPath === undefined && typeof registry.config_path === 'string' && registry.config_path !== '') {
      configPath = registry.config_path;
    }
    if (table(registry.mirrors) && Object.keys(table(registry.mirrors)!).length > 0) legacyMirrors = true;
  }
  // containerd 2.x (config version 3) looks in its default directories when config_path is unset.
  if (configPath === undefined && doc.version === 3) configPath = CONTAINERD2_DEFAULT_CONFIG_PATH;
  const disabled = Array.isArray(doc.disabled_plugins) ? doc.disabled_plugins : [];
  const criDisabled = disabled.some((name) => name === 'cri' || name === 'io.containerd.grpc.v1.cri');
  return { configPath, criDisabled, legacyMirrors };
}

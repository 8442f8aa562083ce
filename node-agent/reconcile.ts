// One reconcile pass per runtime: read what is on the node, ask the pure writers what should be
// there, change only what differs. Level-triggered and idempotent: running it twice changes nothing.
import { createHash } from 'node:crypto';
import http from 'node:http';
import path from 'node:path';
import { isDeepStrictEqual } from 'node:util';
import type { Logger } from '../common/logger.ts';
import type { AgentConfig, Runtime } from './config.ts';
import {
  containerdHostsToml, containerdRegistrySetup, hostsTomlOwner, isManagedHostsToml, isOwnHostsToml, planHostsApply, planHostsRemove, type ContainerdRegistrySetup, type HostsPlan,
} from './containerd.ts';
import { loadContainerdConfig } from './containerd-config.ts';
import { basicAuthorization, readCredentials } from './credentials.ts';
import {
  CRIO_DROP_IN, crioDropIn, crioDropInMirrorHosts, crioDropInPointsAt, crioRegistryPrefixes, isManagedCrioDropIn, loadsAfterCrioDropIn,
} from './crio.ts';
import {
  DaemonJsonError, daemonJsonForReload, daemonJsonPidFile, daemonJsonSocket, dockerdFlags, mirrorsInDockerInfo, ourMirrors, planDockerApply, planDockerRemove,
  type DockerdFlags, type DockerRemovePlan, type DockerState,
} from './docker.ts';
import {
  adoptUnmarkedDir, ensureDir, exists, isDirectory, listDir, moveFile, readFileOrNull, readTextOrNull, removeCreatedDirIfEmpty, removeFile, removeStaleTempFiles, subdirectories, writeFileAtomic,
} from './node-files.ts';
import { commandLine, findDaemon, pathSeenBy, processIdentity } from './processes.ts';
import { CA_FILE_NAME, certsDirCaFile, readMirrorCa, syncCaFile } from './mirror-ca.ts';
import { fileIdentity, isSymbolicLink, linkTarget } from './node-files.ts';

export interface RuntimeStatus {
  runtime: Runtime;
  /** The runtime's configuration location exists on this node. */
  present: boolean;
  /** apply: our configuration is in place and the runtime will use it; remove: it is gone. */
  done: boolean;
  /** Files written, restored or removed in this pass. */
  changed: string[];
  /** Why `done` is false, in words an operator can act on. */
  problems: string[];
  /**
   * The files are as the mode wants them (written, or taken away), even where the runtime will not
   * use them (containerd without config_path, a dockerd that did not reload): only `done` says that.
   */
  filesInPlace: boolean;
  /** Directories whose changes should trigger another pass. */
  watch: string[];
}

/** Logs each distinct notice once per process, so a periodic check does not repeat itself. */
export class Notices {
  readonly #seen = new Set<string>();
  readonly #log: Logger;
  constructor(log: Logger) {
    this.#log = log;
  }
  warn(key: string, msg: string, fields: Record<string, unknown> = {}): void {
    if (this.#seen.has(key)) return;
    this.#seen.add(key);
    this.#log.warn(fields, msg);
  }
  info(key: string, msg: string, fields: Record<string, unknown> = {}): void {
    if (this.#seen.has(key)) return;
    this.#seen.add(key);
    this.#log.info(fields, msg);
  }
}

export interface ReconcileContext {
  config: AgentConfig;
  log: Logger;
  notices: Notices;
}

function mirrorRequiresAuth(config: AgentConfig): boolean {
  return config.credentials !== undefined || config.credentialsFile !== undefined;
}

function status(runtime: Runtime, present: boolean): RuntimeStatus {
  return { runtime, present, done: true, changed: [], problems: [], watch: [], filesInPlace: true };
}

/** The runtime's files could not be put as the mode wants them. */
function fail(s: RuntimeStatus, problem: string): void {
  s.done = false;
  s.filesInPlace = false;
  s.problems.push(problem);
}

/** The files are in place, but the runtime will not use them (or did not take them yet). */
function notUsed(s: RuntimeStatus, problem: string): void {
  s.done = false;
  s.problems.push(problem);
}

// ---------------------------------------------------------------------------------------------
// containerd

const BACKUP_SUFFIX = '.regmirror-backup';

async function containerdPresent(config: AgentConfig): Promise<boolean> {
  return (await exists(config.containerdConfig)) || (await isDirectory(config.containerdHostsDir));
}

async function carryOutHostsPlan(plan: HostsPlan, dir: string, mode: number): Promise<boolean> {
  const file = path.join(dir, 'hosts.toml');
  const backup = file + BACKUP_SUFFIX;
  switch (plan.action) {
    case 'none':
      return false;
    case 'write':
      // rename keeps the foreign file's bytes, mode and owner exactly for the restore
      if (plan.backupCurrent) await moveFile(file, backup);
      await writeFileAtomic(file, plan.text, { mode, keepMode: false });
      return true;
    case 'restore':
      await moveFile(backup, file);
      return true;
    case 'delete':
      await removeFile(file);
      return true;
    case 'drop-backup':
      await removeFile(backup);
      return true;
  }
}

/** The registry directories under the hosts directory; one that is a symlink to a directory counts (the agent writes through it). */
async function registryDirs(hostsDir: string): Promise<string[]> {
  // a registry name never starts with a dot: those are temp directories (node-files.ts)
  return (await subdirectories(hostsDir)).filter((name) => !name.startsWith('.'));
}

/** The problem when containerd's CRI does not read config_path, in words naming the files and what to change. */
function noConfigPathProblem(configFile: string, setup: ContainerdRegistrySetup): string {
  const version = `a version ${setup.version} config${setup.versionFile ? ` (version set in ${setup.versionFile})` : ' (no version set)'}`;
  const misplaced = setup.misplaced.length > 0 ? ` config_path is set, but not where containerd reads it: ${setup.misplaced.join('; ')}.` : '';
  const noDefault = setup.version === 3 ? ' (containerd 2.0 and 2.1 have no default, and the default of 2.2 and later, /etc/containerd/certs.d:/etc/docker/certs.d, is a list their CRI pulls do not read, containerd#12415)' : '';
  return `containerd config ${configFile} does not set config_path under ${setup.registryTable}, the table containerd reads in ${version}, so containerd ignores hosts.toml${noDefault}.${misplaced} Set config_path = "/etc/containerd/certs.d" under ${setup.registryTable} and restart containerd (the agent does not rewrite config.toml)`;
}

/** Reports whether containerd will read the hosts directory at all. */
async function checkContainerdConfig(ctx: ReconcileContext, s: RuntimeStatus): Promise<void> {
  const { config, notices } = ctx;
  const loaded = await loadContainerdConfig(config.containerdConfig);
  if (loaded === null) {
    notices.warn('containerd-no-config', 'containerd config.toml not found: cannot check that config_path is set (containerd 1.x and 2.x ignore hosts.toml without it)', { file: config.containerdConfig });
    return;
  }
  if (loaded.problems.length > 0) {
    for (const problem of loaded.problems) notUsed(s, problem);
    return;
  }
  const setup = containerdRegistrySetup(loaded.files);
  if (setup.unusable !== undefined) {
    notUsed(s, `containerd config ${setup.versionFile ?? config.containerdConfig}: ${setup.unusable}`);
    return;
  }
  if (setup.criDisabled) {
    notices.info('containerd-cri-disabled', "containerd's CRI plugin is disabled (Docker's containerd): kubelet does not pull through it; hosts.toml written anyway", { file: config.containerdConfig });
    return;
  }
  if (setup.configPath === undefined) {
    notUsed(s, noConfigPathProblem(config.containerdConfig, setup));
    return;
  }
  if (setup.listIgnoredByTransfer && setup.version === 3) {
    notUsed(s, `containerd config ${config.containerdConfig} sets config_path = "${setup.configPath}" under ${setup.registryTable}, a list of directories: containerd 2.1 and later take it for one directory when the CRI pulls through the transfer service, their default (containerd#12415), so containerd ignores hosts.toml. Set config_path = "/etc/containerd/certs.d" (one directory) and restart containerd`);
    return;
  }
  for (const [i, differs] of setup.containerd2Differs.entries()) notices.warn(`containerd-2x-differs-${i}`, `containerd config: ${differs}`, { file: config.containerdConfig });
  if (setup.legacyMirrors) {
    notices.warn('containerd-legacy-mirrors', 'containerd config.toml sets both registry.mirrors and config_path; containerd refuses to start with both', { file: config.containerdConfig });
  }
  const dirs = setup.configPath.split(':');
  const hostsDir = path.resolve(config.containerdHostsDir);
  if (!dirs.some((d) => d !== '' && (hostsDir === path.resolve(d) || hostsDir.endsWith(path.resolve(d))))) {
    notices.warn('containerd-other-config-path', "containerd's config_path does not look like the directory the agent writes; fine only when that is the same directory mounted elsewhere", { configPath: setup.configPath, hostsDir: config.containerdHostsDir });
  }
}

/**
 * The mirror's CA when applying with --mirror-ca (read each pass, so a rotated Secret is picked
 * up; its directory is watched for that), else undefined. Unreadable: this runtime's pass fails
 * with the reason and changes nothing.
 */
async function mirrorCaFor(ctx: ReconcileContext, s: RuntimeStatus): Promise<Buffer | undefined> {
  const { config } = ctx;
  if (config.mode !== 'apply' || config.mirrorCa === undefined) return undefined;
  s.watch.push(path.dirname(config.mirrorCa));
  return readMirrorCa(config.mirrorCa);
}

export async function reconcileContainerd(ctx: ReconcileContext): Promise<RuntimeStatus> {
  const { config, log } = ctx;
  const s = status('containerd', await containerdPresent(config));
  if (!s.present) return s;
  const hostsDir = config.containerdHostsDir;
  s.watch.push(hostsDir);
  const apply = config.mode === 'apply';

  let authorization: string | undefined;
  if (apply && config.credentials) authorization = basicAuthorization(config.credentials);
  else if (apply && config.credentialsFile) authorization = basicAuthorization(await readCredentials(config.credentialsFile));
  // A file with a credential in it is for root's eyes only.
  const mode = authorization ? 0o600 : 0o644;
  const ca = await mirrorCaFor(ctx, s);

  const wanted = apply ? config.registries : [];
  for (const registry of wanted) {
    const dir = path.join(hostsDir, registry);
    const file = path.join(dir, 'hosts.toml');
    // a directory the agent makes is marked as its own, for removal to take (and no other)
    await ensureDir(dir);
    // the CA first: the hosts.toml that names it may be read as soon as it is in place
    const caFile = path.join(dir, CA_FILE_NAME);
    if (await syncCaFile(caFile, ca, false)) s.changed.push(caFile);
    const desired = containerdHostsToml({ registry, mirror: config.mirror, owner: config.owner, authorization, dialTimeout: config.dialTimeout, caFile: ca ? CA_FILE_NAME : undefined });
    const plan = planHostsApply(await readTextOrNull(file), desired);
    if (await carryOutHostsPlan(plan, dir, mode)) {
      s.changed.push(file);
      log.info({ registry, file, backedUp: plan.action === 'write' && plan.backupCurrent }, 'containerd hosts.toml written');
    }
    s.watch.push(dir);
  }
  // Everything else of this agent's goes: all of it on removal, and registries dropped from the
  // list when applying.
  for (const registry of await registryDirs(hostsDir)) {
    if (wanted.includes(registry)) continue;
    const dir = path.join(hostsDir, registry);
    const file = path.join(dir, 'hosts.toml');
    const current = await readTextOrNull(file);
    const hasBackup = await exists(file + BACKUP_SUFFIX);
    const managed = current !== null && isManagedHostsToml(current);
    const ours = managed && isOwnHostsToml(current, config);
    // Another RegistryMirror's agent wrote it (and keeps the backup for its owner): not ours to take.
    if (managed && !ours) continue;
    if (ours || (config.registries.includes(registry) && hasBackup)) {
      // Run with --owner (as the operator runs it), a hosts.toml of ours without an owner line was
      // written by an agent from before directory markers: a directory holding only its files is
      // one it made, taken away with them as it was then.
      if (ours && !hasBackup && config.owner !== undefined && hostsTomlOwner(current) === undefined) await adoptUnmarkedDir(dir, ['hosts.toml', CA_FILE_NAME]);
      // ours, or left for a listed registry: a backup whose file of ours is gone, or that someone else replaced
      const plan = planHostsRemove(current, hasBackup);
      if (await carryOutHostsPlan(plan, dir, mode)) {
        s.changed.push(file);
        log.info({ registry, file, action: plan.action }, 'containerd hosts.toml taken away');
      }
    } else if (current !== null) {
      continue; // someone else's hosts.toml
    }
    // our hosts.toml is gone (or was never there): the CA it named goes too, then the directory
    // when the agent made it and nothing else is in it
    const caFile = path.join(dir, CA_FILE_NAME);
    if (await syncCaFile(caFile, undefined, false)) s.changed.push(caFile);
    if (await removeCreatedDirIfEmpty(dir)) s.changed.push(dir);
  }
  if (apply) await checkContainerdConfig(ctx, s);
  return s;
}

// ---------------------------------------------------------------------------------------------
// Docker

function dockerStateFile(daemonJson: string): string {
  return `${daemonJson}.regmirror-state.json`;
}

async function readDockerState(file: string): Promise<DockerState | null> {
  const text = await readTextOrNull(file);
  if (text === null) return null;
  try {
    const value = JSON.parse(text) as Partial<DockerState>;
    if (typeof value.mirror === 'string' && (typeof value.original === 'string' || value.original === null)) {
      const replacing = Array.isArray(value.replacing) ? value.replacing.filter((m) => typeof m === 'string') : [];
      const refused = typeof value.refused?.dockerd === 'string' && typeof value.refused.file === 'string' ? { dockerd: value.refused.dockerd, file: value.refused.file } : undefined;
      return { mirror: value.mirror, original: value.original, ...(replacing.length > 0 ? { replacing } : {}), ...(refused ? { refused } : {}) };
    }
  } catch {
    // a damaged state file is treated as absent: the current file becomes the original
  }
  return null;
}

async function writeDockerState(file: string, state: DockerState): Promise<void> {
  await writeFileAtomic(file, `${JSON.stringify(state)}\n`, { mode: 0o600, keepMode: false });
}

/**
 * Whether a dockerd found in /proc is the node's and not one in a container (docker:dind in a CI
 * pod, started with flags of its own): the directory of its daemon.json as it sees it (its
 * --config-file's, else /etc/docker) is the directory the agent writes. When the agent cannot look
 * at its own directory, any dockerd counts.
 */
async function isNodesDockerd(pid: number, file: string): Promise<boolean> {
  const ours = await fileIdentity(path.dirname(file));
  if (ours === undefined) return true;
  const configFile = dockerdFlags((await commandLine(pid)) ?? []).configFile ?? '/etc/docker/daemon.json';
  return (await fileIdentity(path.dirname(pathSeenBy(pid, configFile)))) === ours;
}

/** The node's dockerd by the configured pidfile, else the one /proc shows (containers' left out). */
function scanForDockerd(config: AgentConfig) {
  return findDaemon('dockerd', [config.dockerPidFile], true, '/proc', (pid) => isNodesDockerd(pid, config.dockerDaemonJson));
}

/** daemon.json's own pidfile is authoritative (that dockerd wrote it); otherwise the configured one, then /proc. */
function lookUpDockerd(config: AgentConfig, daemonJson: Buffer | null) {
  const named = daemonJsonPidFile(daemonJson);
  return named ? findDaemon('dockerd', [named], false) : scanForDockerd(config);
}

/** The node's dockerd as the agent sees it (hostPID): what to signal, what it was started with, where it answers. */
interface Dockerd {
  pid: number;
  via: string;
  /** `pid@start time`; the pid alone when /proc no longer says. */
  identity: string;
  flags: DockerdFlags;
  socket: string;
}

async function findDockerd(ctx: ReconcileContext, daemonJson: Buffer | null): Promise<Dockerd | undefined> {
  const { config, notices } = ctx;
  const lookup = await lookUpDockerd(config, daemonJson);
  if (!lookup.found) {
    notices.warn(`dockerd-not-found:${lookup.reason}`, 'dockerd not found: not signalled (it reads daemon.json when it starts), and its command line not checked for --registry-mirror or --config-file', { reason: lookup.reason });
    return undefined;
  }
  return {
    pid: lookup.pid,
    via: lookup.via,
    identity: (await processIdentity(lookup.pid)) ?? String(lookup.pid),
    flags: dockerdFlags((await commandLine(lookup.pid)) ?? []),
    socket: daemonJsonSocket(daemonJson) ?? config.dockerSocket,
  };
}

/** GET /info on dockerd's socket; undefined when the socket does not answer. */
function dockerInfo(socketPath: string): Promise<unknown> {
  return new Promise((resolve) => {
    const req = http.get({ socketPath, path: '/info', agent: false, timeout: 3000 }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (b: Buffer) => chunks.push(b));
      res.on('end', () => {
        try {
          resolve(res.statusCode === 200 ? JSON.parse(Buffer.concat(chunks).toString()) : undefined);
        } catch {
          resolve(undefined);
        }
      });
      res.on('error', () => resolve(undefined));
    });
    req.on('timeout', () => req.destroy());
    req.on('error', () => resolve(undefined));
  });
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Brings the running dockerd in line with daemon.json: when GET /info does not show the mirrors as
 * `expect` says (all of them live, or none), or cannot be asked right after the file changed,
 * SIGHUP and wait, bounded, until it does. `refused`: dockerd answered all along but did not
 * take the file (its log says why); `cannot-tell`: its socket does not answer.
 */
async function syncDockerd(ctx: ReconcileContext, dockerd: Dockerd, mirrors: string[], expect: boolean, fileChanged: boolean): Promise<'in-line' | 'refused' | 'cannot-tell'> {
  const { log, notices } = ctx;
  const wanted = mirrors.map((m) => m.replace(/\/+$/, ''));
  const inLine = (info: unknown): boolean => {
    const live = mirrorsInDockerInfo(info);
    return expect ? wanted.every((m) => live.includes(m)) : !wanted.some((m) => live.includes(m));
  };
  const before = await dockerInfo(dockerd.socket);
  if (before !== undefined && inLine(before)) return 'in-line';
  if (before === undefined && !fileChanged) return 'cannot-tell'; // signalled when the file changed
  process.kill(dockerd.pid, 'SIGHUP');
  log.info({ pid: dockerd.pid, via: dockerd.via }, 'dockerd sent SIGHUP to reload registry-mirrors');
  for (let attempt = 0; attempt < 50; attempt++) {
    const info = await dockerInfo(dockerd.socket);
    if (info === undefined) {
      notices.warn(`docker-socket:${dockerd.socket}`, 'dockerd socket does not answer; cannot confirm the reload', { socket: dockerd.socket });
      await sleep(1000); // give the reload a moment before anything rewrites the file again
      return 'cannot-tell';
    }
    if (inLine(info)) return 'in-line';
    await sleep(100);
  }
  return 'refused';
}

/**
 * Is dockerd's --config-file the file the agent writes? Looked at as dockerd sees it
 * (/proc/<pid>/root): the same directory and name, or the same file. Where that view is closed to
 * the agent, by path: the same, or the agent's under a prefix (the pod mounts /etc/docker at /host/etc/docker).
 */
async function isDockerdConfigFile(dockerd: Dockerd, configFile: string, file: string): Promise<boolean> {
  const theirs = pathSeenBy(dockerd.pid, configFile);
  const [theirDir, ourDir] = await Promise.all([fileIdentity(path.dirname(theirs)), fileIdentity(path.dirname(file))]);
  if (theirDir !== undefined && ourDir !== undefined) {
    if (theirDir === ourDir && path.basename(configFile) === path.basename(file)) return true;
    const theirFile = await fileIdentity(theirs);
    return theirFile !== undefined && theirFile === (await fileIdentity(file));
  }
  const absolute = path.resolve('/', configFile);
  return path.resolve(file) === absolute || path.resolve(file).endsWith(absolute);
}

/**
 * What on dockerd's command line keeps it from taking registry-mirrors from the agent's
 * daemon.json: a --registry-mirror flag (dockerd then refuses to start, or reload, with the key
 * in the file as well) or a --config-file that is another file. `usesMirror`: the flag names the
 * mirror already, which is as good as the file.
 */
async function dockerdConflict(ctx: ReconcileContext, dockerd: Dockerd, file: string): Promise<{ usesMirror: boolean; problem?: string } | undefined> {
  const { config, notices } = ctx;
  const { registryMirrors, configFile } = dockerd.flags;
  if (registryMirrors.length > 0) {
    if (registryMirrors.includes(config.mirror)) {
      notices.info(`dockerd-flag-names-mirror:${dockerd.identity}`, "dockerd's --registry-mirror flag names the mirror: Docker uses it, and daemon.json is left without it (dockerd refuses registry-mirrors in both)", { pid: dockerd.pid, flags: registryMirrors, file });
      return { usesMirror: true };
    }
    return {
      usesMirror: false,
      problem: `dockerd (pid ${dockerd.pid}) runs with --registry-mirror ${registryMirrors.join(', ')} on its command line, and dockerd refuses to start (and to reload) when daemon.json sets registry-mirrors as well, so ${file} is left without the mirror. Put --registry-mirror ${config.mirror} first among dockerd's flags, or drop the flag so the agent can manage registry-mirrors in daemon.json; the flags are where dockerd is started (systemd: ExecStart in docker.service or a drop-in in /etc/systemd/system/docker.service.d/), and take effect when dockerd restarts`,
    };
  }
  if (configFile !== undefined && !(await isDockerdConfigFile(dockerd, configFile, file))) {
    return {
      usesMirror: false,
      problem: `dockerd (pid ${dockerd.pid}) reads its configuration from --config-file ${configFile}, not from ${file} that the agent writes (--docker-daemon-json); ${file} left untouched. Point --docker-daemon-json at ${configFile} as the agent's pod sees it (mount its directory), or start dockerd without --config-file`,
    };
  }
  return undefined;
}

interface DockerFiles {
  /** daemon.json as configured (a symbolic link, maybe). */
  file: string;
  /** What reads and writes of it go to: the link's target, else `file`. */
  target: string;
  stateFile: string;
}

const digest = (bytes: Buffer | null): string => (bytes === null ? 'absent' : createHash('sha256').update(bytes).digest('hex'));

/** daemon.json as a removal plan leaves it (null: no file). */
function afterRemoval(plan: DockerRemovePlan, current: Buffer | null): Buffer | null {
  if (plan.action === 'write') return plan.bytes;
  return plan.action === 'delete' ? null : current;
}

/**
 * Takes the agent's entries out of daemon.json as `plan` says. With `reload`, first a form with our
 * entries out and the key kept, for dockerd (when it is found) to reload: it keeps its old mirrors
 * on a reload of a file without registry-mirrors, so an original without the key would leave our
 * mirror live.
 */
async function carryOutDockerRemoval(ctx: ReconcileContext, s: RuntimeStatus, files: DockerFiles, state: DockerState, current: Buffer, plan: Exclude<DockerRemovePlan, { action: 'none' }>, reload: { dockerd: Dockerd | undefined } | undefined): Promise<void> {
  if (reload) {
    await writeFileAtomic(files.target, daemonJsonForReload(current, state), { keepMode: true });
    if (reload.dockerd && (await syncDockerd(ctx, reload.dockerd, ourMirrors(state), false, true)) === 'refused') {
      notUsed(s, `dockerd (pid ${reload.dockerd.pid}) did not drop registry mirror ${ourMirrors(state).join(', ')} after SIGHUP (its log says why); it does when it restarts`);
    }
  }
  if (plan.action === 'write') await writeFileAtomic(files.target, plan.bytes, { keepMode: true });
  else await removeFile(files.target);
  s.changed.push(files.file);
  const restored = plan.action === 'delete' || (state.original !== null && plan.bytes.equals(Buffer.from(state.original, 'base64')));
  ctx.log.info({ file: files.file, restoredOriginal: restored }, 'docker daemon.json: registry mirror taken out');
}

/** Removal: our entries out of daemon.json (the original back), their CA files and the state file gone. */
async function removeDockerEntries(ctx: ReconcileContext, s: RuntimeStatus, files: DockerFiles, state: DockerState, current: Buffer | null): Promise<void> {
  const plan = planDockerRemove(current, state);
  if (plan.action !== 'none' && current !== null) {
    const dockerd = await findDockerd(ctx, current);
    // beside a --registry-mirror flag, a file with the key (even empty) keeps dockerd from starting, and no reload works
    const flagged = dockerd !== undefined && dockerd.flags.registryMirrors.length > 0;
    await carryOutDockerRemoval(ctx, s, files, state, current, plan, flagged ? undefined : { dockerd });
  }
  for (const mirror of ourMirrors(state)) {
    const caFile = certsDirCaFile(ctx.config.dockerCertsDir, mirror);
    if (await syncCaFile(caFile, undefined, true)) s.changed.push(caFile);
  }
  await removeFile(files.stateFile);
}

/**
 * dockerd's command line rules registry-mirrors in daemon.json out: an entry of the agent's from
 * before (written before the flag came, or by an agent that did not look) would keep dockerd from
 * starting, so it goes and the file gets its original back. The state file then records the
 * refusal for the file as it is, so that no pass writes the entry while dockerd is out of sight
 * (restarting) and cannot be checked.
 */
async function leaveDockerdItsFile(ctx: ReconcileContext, s: RuntimeStatus, files: DockerFiles, dockerd: Dockerd, previous: DockerState | null, current: Buffer | null): Promise<void> {
  let left = current;
  const removal = planDockerRemove(current, previous);
  if (previous !== null && current !== null && removal.action !== 'none') {
    await carryOutDockerRemoval(ctx, s, files, previous, current, removal, undefined);
    left = afterRemoval(removal, current);
  }
  const record: DockerState = { mirror: ctx.config.mirror, original: left === null ? null : left.toString('base64'), refused: { dockerd: dockerd.identity, file: digest(left) } };
  if (!isDeepStrictEqual(record, previous)) await writeDockerState(files.stateFile, record);
}

/**
 * Why daemon.json is not to get the mirror now, when dockerd refused it before (the state file's
 * record, for the file as it still is): the same dockerd runs and does not have the mirror, or no
 * dockerd is in sight to check again. undefined when the agent may try.
 */
async function standingRefusal(dockerd: Dockerd | undefined, previous: DockerState | null, current: Buffer | null, mirror: string): Promise<string | undefined> {
  const refused = previous?.refused;
  if (!refused || refused.file !== digest(current)) return undefined;
  if (!dockerd) return `dockerd could not take it when last seen (${refused.dockerd}: a --registry-mirror flag, or a refused reload), and no dockerd is in sight now to check again`;
  if (refused.dockerd !== dockerd.identity || mirrorsInDockerInfo(await dockerInfo(dockerd.socket)).includes(mirror)) return undefined;
  return `dockerd (pid ${dockerd.pid}) refused it with the mirror on an earlier reload (its log says why: "unable to configure the Docker daemon with file ...")`;
}

async function applyDocker(ctx: ReconcileContext, s: RuntimeStatus, files: DockerFiles): Promise<void> {
  const { config, log, notices } = ctx;
  const { file, target, stateFile } = files;
  for (const registry of config.registries.filter((r) => r !== 'docker.io')) {
    notices.warn(`docker-hub-only:${registry}`, `Docker's registry-mirrors cover Docker Hub only: ${registry} pulls on Docker nodes go straight to ${registry}`, { registry });
  }
  const ca = await mirrorCaFor(ctx, s);
  const current = await readFileOrNull(target);
  const previous = await readDockerState(stateFile);
  let plan;
  try {
    plan = planDockerApply(current, previous, config.mirror);
  } catch (error) {
    if (!(error instanceof DaemonJsonError)) throw error;
    fail(s, `${file}: ${error.message}; left untouched`);
    return;
  }
  // The CA of an address the mirror moved from goes once daemon.json and the state file no longer
  // name it (called after both are written): a kill before that leaves dockerd's file naming the
  // old address with its CA.
  const dropOldCas = async (): Promise<void> => {
    for (const old of previous ? ourMirrors(previous).filter((m) => m !== config.mirror) : []) {
      const oldCaFile = certsDirCaFile(config.dockerCertsDir, old);
      if (await syncCaFile(oldCaFile, undefined, true)) s.changed.push(oldCaFile);
    }
  };
  const caFile = certsDirCaFile(config.dockerCertsDir, config.mirror);
  const dockerd = await findDockerd(ctx, current);
  const conflict = dockerd && (await dockerdConflict(ctx, dockerd, file));
  if (dockerd && conflict) {
    await leaveDockerdItsFile(ctx, s, files, dockerd, previous, current);
    // with the mirror in the flag, dockerd asks it, and reads certs.d per connection
    if (await syncCaFile(caFile, conflict.usesMirror ? ca : undefined, true)) s.changed.push(caFile);
    await dropOldCas();
    if (conflict.problem) fail(s, conflict.problem);
    return;
  }
  // dockerd reads certs.d per connection: the CA is in place before daemon.json names the mirror
  if (await syncCaFile(caFile, ca, true)) s.changed.push(caFile);
  const refusal = await standingRefusal(dockerd, previous, current, config.mirror);
  if (refusal) {
    fail(s, `${file} is left without registry mirror ${config.mirror}: ${refusal}; the agent tries again when ${file} changes or dockerd restarts`);
    return;
  }
  let written = current;
  if (plan.text !== null) {
    // State first, naming every entry of ours the file holds: if the agent dies between the two
    // writes, the next pass still knows the original and which entries are its own.
    await writeDockerState(stateFile, plan.during);
    await writeFileAtomic(target, plan.text, { mode: 0o644, keepMode: true });
    written = Buffer.from(plan.text);
    s.changed.push(file);
    log.info({ file, mirror: config.mirror }, 'docker daemon.json: registry mirror merged');
  }
  if (!isDeepStrictEqual(plan.state, plan.text !== null ? plan.during : previous)) await writeDockerState(stateFile, plan.state);
  await dropOldCas();
  if (!dockerd || written === null) return;
  if ((await syncDockerd(ctx, dockerd, [config.mirror], true, plan.text !== null)) !== 'refused') return;
  // dockerd answers but did not take the file. What it refuses on a reload it also refuses when it
  // starts, so the file does not stay like this: our entries go again (the state file first, so
  // that a kill in between still finds them ours), and the same file is not offered to the same
  // dockerd again.
  const removal = planDockerRemove(written, plan.state);
  await writeDockerState(stateFile, { ...plan.state, refused: { dockerd: dockerd.identity, file: digest(afterRemoval(removal, written)) } });
  if (removal.action !== 'none') await carryOutDockerRemoval(ctx, s, files, plan.state, written, removal, undefined);
  fail(s, `dockerd (pid ${dockerd.pid}) did not take up registry mirror ${config.mirror} within 5 s of SIGHUP: it refused ${file} (its log says why: "unable to configure the Docker daemon with file ..."). A file dockerd refuses on a reload also stops it at its next start, so the agent took its entry out again; it tries again when ${file} changes or dockerd restarts`);
}

async function dockerPresent(config: AgentConfig): Promise<boolean> {
  // a link to nothing counts: the pass says what is wrong with it
  if ((await exists(config.dockerDaemonJson)) || (await isSymbolicLink(config.dockerDaemonJson))) return true;
  return (await scanForDockerd(config)).found;
}

/** Why this node's Docker is left alone (Docker mirrors only Docker Hub, and sends no credentials). */
function dockerSkipReason(config: AgentConfig): string | undefined {
  if (!config.registries.includes('docker.io')) return 'docker.io is not among the mirrored registries and Docker mirrors cover Docker Hub only';
  if (config.defaultRegistry !== 'docker.io') return `the mirror's default registry is ${config.defaultRegistry}, but Docker asks a mirror for Docker Hub content without naming the registry`;
  if (mirrorRequiresAuth(config)) return 'the mirror requires auth and dockerd cannot send credentials to a registry mirror';
  return undefined;
}

export async function reconcileDocker(ctx: ReconcileContext): Promise<RuntimeStatus> {
  const { config, notices } = ctx;
  const s = status('docker', await dockerPresent(config));
  if (!s.present) return s;
  const file = config.dockerDaemonJson;
  s.watch.push(path.dirname(file));
  // A daemon.json that is a symbolic link (configuration management keeps the real file elsewhere)
  // is read and written through the link, which stays: later edits of its target still reach dockerd.
  const files: DockerFiles = { file, target: await linkTarget(file), stateFile: dockerStateFile(file) };
  if (files.target !== file) s.watch.push(path.dirname(files.target));

  const skip = config.mode === 'apply' ? dockerSkipReason(config) : undefined;
  if (config.mode === 'apply' && !skip) {
    await applyDocker(ctx, s, files);
    return s;
  }

  if (skip) notices.warn(`docker-skip:${skip}`, `Docker left alone: ${skip}`);
  // remove mode, or Docker is not to be configured: take our entry out if it is there. The state
  // file names the mirror whose entry it is; another RegistryMirror's is not ours to take out.
  // The CA of this mirror is the agent's own file (an agent whose flag named the mirror wrote it without a state file).
  const caFile = certsDirCaFile(config.dockerCertsDir, config.mirror);
  if (await syncCaFile(caFile, undefined, true)) s.changed.push(caFile);
  const state = await readDockerState(files.stateFile);
  if (state === null || state.mirror !== config.mirror) return s;
  try {
    await removeDockerEntries(ctx, s, files, state, await readFileOrNull(files.target));
  } catch (error) {
    if (!(error instanceof DaemonJsonError)) throw error;
    fail(s, `${file}: ${error.message}; cannot take the mirror out`);
  }
  return s;
}

// ---------------------------------------------------------------------------------------------
// CRI-O

async function reloadCrio(ctx: ReconcileContext): Promise<void> {
  // CRI-O caches registries.conf and reloads it on SIGHUP; Podman and skopeo read it per run.
  const lookup = await findDaemon('crio', ['/var/run/crio/crio.pid'], true);
  if (!lookup.found) {
    ctx.notices.info(`crio-not-found:${lookup.reason}`, 'crio not signalled: it reads registries.conf.d when it starts', { reason: lookup.reason });
    return;
  }
  process.kill(lookup.pid, 'SIGHUP');
  ctx.log.info({ pid: lookup.pid }, 'crio sent SIGHUP to reload registries.conf');
}

/**
 * A drop-in loaded after ours that defines one of our registries' prefixes replaces our entry
 * for it: containers/image then pulls those images without the mirror. Reported, not changed
 * (the file is the node's own).
 */
async function checkLaterCrioDropIns(ctx: ReconcileContext, s: RuntimeStatus): Promise<void> {
  const { config, notices } = ctx;
  for (const name of (await listDir(config.crioDir)).filter(loadsAfterCrioDropIn)) {
    const file = path.join(config.crioDir, name);
    const text = await readTextOrNull(file);
    if (text === null) continue;
    let prefixes: string[];
    try {
      prefixes = crioRegistryPrefixes(text);
    } catch (error) {
      notices.warn(`crio-unreadable:${file}`, 'a registries.conf drop-in is not TOML the agent can read; containers/image will refuse it too', { file, error: (error as Error).message.split('\n')[0] });
      continue;
    }
    const overridden = config.registries.filter((r) => prefixes.includes(r));
    if (overridden.length > 0) {
      notUsed(s, `${file} is loaded after ${CRIO_DROP_IN} and defines [[registry]] prefix ${overridden.join(', ')}, which replaces the mirror's entry: CRI-O pulls ${overridden.join(', ')} without the mirror; rename it to sort before ${CRIO_DROP_IN} or take those entries out of it`);
    }
  }
}

export async function reconcileCrio(ctx: ReconcileContext): Promise<RuntimeStatus> {
  const { config, log, notices } = ctx;
  const s = status('crio', await isDirectory(config.crioDir));
  if (!s.present) return s;
  s.watch.push(config.crioDir);
  const file = path.join(config.crioDir, CRIO_DROP_IN);
  const current = await readTextOrNull(file);

  let desired: string | null = null;
  if (config.mode === 'apply') {
    if (mirrorRequiresAuth(config)) {
      notices.warn('crio-auth', 'CRI-O left alone: the mirror requires auth and the agent does not write containers auth.json');
    } else {
      desired = crioDropIn({ registries: config.registries, mirror: config.mirror, defaultRegistry: config.defaultRegistry });
    }
  }

  // containers/image reads certs.d per pull: the CA is in place before the drop-in names the mirror
  const caFile = certsDirCaFile(config.crioCertsDir, config.mirror);
  if (await syncCaFile(caFile, desired !== null ? await mirrorCaFor(ctx, s) : undefined, true)) s.changed.push(caFile);

  if (desired !== null) {
    await checkLaterCrioDropIns(ctx, s);
    if (current === desired) return s;
    await writeFileAtomic(file, desired, { mode: 0o644, keepMode: false });
    s.changed.push(file);
    log.info({ file }, 'registries.conf drop-in written');
    // The mirror moved (a new Service address, http to https): the CA put for where the replaced
    // drop-in pointed is no longer read by anything.
    if (current !== null && isManagedCrioDropIn(current)) {
      const ours = new URL(config.mirror).host;
      for (const host of crioDropInMirrorHosts(current).filter((h) => h !== ours)) {
        const oldCaFile = path.join(config.crioCertsDir, host, CA_FILE_NAME);
        if (await syncCaFile(oldCaFile, undefined, true)) s.changed.push(oldCaFile);
      }
    }
  } else {
    // only this mirror's drop-in: another RegistryMirror's agent writes the same file name
    if (current === null || !isManagedCrioDropIn(current) || !crioDropInPointsAt(current, config.mirror)) return s;
    await removeFile(file);
    s.changed.push(file);
    log.info({ file }, 'registries.conf drop-in removed');
  }
  await reloadCrio(ctx);
  return s;
}

// ---------------------------------------------------------------------------------------------

export interface NodeStatus {
  mode: AgentConfig['mode'];
  /** apply: every present runtime uses the mirror; remove: nothing of ours is left. */
  ready: boolean;
  /** Every runtime's files are as the mode wants them (and, in apply mode, some runtime was found): what `--once` exits 0 on. */
  applied: boolean;
  runtimes: RuntimeStatus[];
  problems: string[];
}

const RECONCILERS: Record<Runtime, (ctx: ReconcileContext) => Promise<RuntimeStatus>> = {
  containerd: reconcileContainerd,
  docker: reconcileDocker,
  crio: reconcileCrio,
};

/** The directories a runtime's pass writes in, the ones it makes among them. */
async function writtenDirs(runtime: Runtime, config: AgentConfig): Promise<string[]> {
  const withSubdirs = async (dir: string): Promise<string[]> => [dir, ...(await subdirectories(dir)).map((name) => path.join(dir, name))];
  switch (runtime) {
    case 'containerd':
      return withSubdirs(config.containerdHostsDir);
    case 'docker': {
      // a linked daemon.json is written beside the file it points to
      const target = await linkTarget(config.dockerDaemonJson).catch(() => config.dockerDaemonJson);
      const dirs = new Set([path.dirname(config.dockerDaemonJson), path.dirname(target)]);
      return [...dirs, ...(await withSubdirs(config.dockerCertsDir))];
    }
    case 'crio':
      return [config.crioDir, ...(await withSubdirs(config.crioCertsDir))];
  }
}

/**
 * Takes away the temp files a killed write of an agent left in a runtime's directories (a
 * hosts.toml's with the node's credentials in it, among others), before the pass, so that removal
 * finds the directories the agent made empty. Passes never overlap: none of this process's writes
 * is under way.
 */
async function removeInterruptedWrites(runtime: Runtime, ctx: ReconcileContext): Promise<string[]> {
  const removed: string[] = [];
  for (const dir of await writtenDirs(runtime, ctx.config)) {
    for (const file of await removeStaleTempFiles(dir)) {
      ctx.log.info({ runtime, file }, 'temp file of an interrupted write removed');
      removed.push(file);
    }
  }
  return removed;
}

export async function reconcileNode(ctx: ReconcileContext): Promise<NodeStatus> {
  const runtimes: RuntimeStatus[] = [];
  // Runtimes dropped from the list are cleaned as on removal, whatever the mode.
  const removing = { ...ctx, config: { ...ctx.config, mode: 'remove' as const } };
  const passes = [...ctx.config.runtimes.map((r) => [r, ctx] as const), ...ctx.config.removeRuntimes.map((r) => [r, removing] as const)];
  for (const [runtime, runtimeCtx] of passes) {
    try {
      const swept = await removeInterruptedWrites(runtime, runtimeCtx);
      const result = await RECONCILERS[runtime](runtimeCtx);
      result.changed.unshift(...swept);
      runtimes.push(result);
    } catch (error) {
      const s = status(runtime, true);
      fail(s, `${runtime}: ${(error as Error).message}`);
      runtimes.push(s);
    }
  }
  const problems = runtimes.flatMap((r) => r.problems);
  const noRuntime = ctx.config.mode === 'apply' && !runtimes.some((r) => r.present && ctx.config.runtimes.includes(r.runtime));
  if (noRuntime) {
    problems.push(`no container runtime found: none of ${ctx.config.runtimes.join(', ')} has its configuration location on this node (containerd ${ctx.config.containerdHostsDir} or ${ctx.config.containerdConfig}, docker ${ctx.config.dockerDaemonJson}, crio ${ctx.config.crioDir})`);
  }
  return { mode: ctx.config.mode, ready: problems.length === 0, applied: !noRuntime && runtimes.every((r) => r.filesInPlace), runtimes, problems };
}

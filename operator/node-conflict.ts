// Two RegistryMirrors must not configure the same file on the same node: their node agents would
// rewrite it in turn, every second, for as long as both run. Files are per registry for containerd
// (hosts.toml), one per node for Docker (daemon.json, Docker Hub only) and for CRI-O (the drop-in).
// The mirror that was there first keeps its nodes; a later one that would share a file with it
// gets no node configuration, and says why in its status.
import type { RegistryMirror } from './api/registry-mirror.ts';
import { FINALIZER } from './desired/inputs.ts';
import { INPUT_PROBLEM_REASONS } from './status.ts';

/**
 * Could both selectors pick one node? Only a label both require, with different values, rules it
 * out; an empty selector picks every node.
 */
export function selectorsOverlap(a: Record<string, string> | undefined, b: Record<string, string> | undefined): boolean {
  for (const [key, value] of Object.entries(a ?? {})) {
    const other = b?.[key];
    if (other !== undefined && other !== value) return false;
  }
  return true;
}

/** What the two would both write on a node they share, in words; undefined when nothing. */
export function sharedNodeFiles(a: RegistryMirror, b: RegistryMirror): string | undefined {
  const keysB = new Set(fileKeys(b));
  const both = fileKeys(a).filter((key) => keysB.has(key));
  const registries = both.filter((key) => key.startsWith(CONTAINERD_KEY)).map((key) => key.slice(CONTAINERD_KEY.length));
  const shared: string[] = [];
  if (registries.length > 0) shared.push(`containerd's hosts.toml for ${registries.join(', ')}`);
  if (both.includes(DOCKER_KEY)) shared.push("Docker's daemon.json");
  if (both.includes(CRIO_KEY)) shared.push("CRI-O's registries.conf drop-in");
  return shared.length > 0 ? shared.join(', ') : undefined;
}

const CONTAINERD_KEY = 'containerd ';
const DOCKER_KEY = 'docker';
const CRIO_KEY = 'crio';

/**
 * The node files a mirror writes, one key a file: containerd's hosts.toml per registry, Docker's
 * daemon.json (Docker Hub only), CRI-O's one drop-in whatever the registries. Two mirrors on the
 * same node conflict exactly when they share a key.
 */
function fileKeys(m: RegistryMirror): string[] {
  const { runtimes } = m.spec.nodeConfig;
  const keys: string[] = [];
  if (runtimes.includes('containerd')) for (const upstream of m.spec.upstreams) keys.push(`${CONTAINERD_KEY}${upstream.registry}`);
  if (runtimes.includes('docker') && m.spec.upstreams.some((u) => u.registry === 'docker.io')) keys.push(DOCKER_KEY);
  if (runtimes.includes('crio')) keys.push(CRIO_KEY);
  return keys;
}

const createdOrder = (m: RegistryMirror) => `${m.metadata.creationTimestamp ?? ''}\u0000${m.metadata.namespace}/${m.metadata.name}`;

/** The mode of a mirror's node agent DaemonSet, undefined when it has none. */
export type NodeAgentModeOf = (m: RegistryMirror) => 'apply' | 'remove' | undefined;

/**
 * A mirror being deleted holds its nodes until its finalizer let go: its agents are taking their
 * configuration away meanwhile, and another mirror's agents writing the same files at the same
 * time would have them taken away too.
 */
const cleaningNodes = (m: RegistryMirror) => Boolean(m.metadata.deletionTimestamp) && (m.metadata.finalizers ?? []).includes(FINALIZER);
const leftNodes = (m: RegistryMirror) => Boolean(m.metadata.deletionTimestamp) && !cleaningNodes(m);

/**
 * Ready reasons of a mirror whose spec stopped the operator before it applied anything: it has no
 * node agent unless one is left from before the problem (what runs is kept).
 */
const STOPPED_BEFORE_APPLYING: readonly string[] = INPUT_PROBLEM_REASONS;

/** Whether the mirror's status says it was stopped before applying anything (see STOPPED_BEFORE_APPLYING). */
export function stoppedBeforeApplying(m: RegistryMirror): boolean {
  const ready = m.status?.conditions?.find((c) => c.type === 'Ready');
  return ready?.status === 'False' && STOPPED_BEFORE_APPLYING.includes(ready.reason ?? '');
}

/**
 * Whether `m` holds the nodes it selects: it configures them or may be about to. Not once its
 * deletion's node cleanup let go, and not while its own spec stops it before it applied anything
 * and no agent of its configures nodes (a brand-new mirror not reconciled yet does hold: it may be
 * creating its agents right now).
 */
function holdsNodes(m: RegistryMirror, modeOf: NodeAgentModeOf): boolean {
  if (leftNodes(m)) return false;
  return modeOf(m) === 'apply' || !stoppedBeforeApplying(m);
}

/** Whose agents are on the nodes now: configuring them, or taking that configuration away on deletion. */
const onNodes = (m: RegistryMirror, modeOf: NodeAgentModeOf) => cleaningNodes(m) || modeOf(m) === 'apply';

/**
 * The RegistryMirror that holds nodes `mirror` would also configure, the files they would share,
 * and why it goes first. Of the mirrors with node configuration on that hold their nodes (above)
 * and whose node selector may pick the same nodes, one whose agents are on the nodes now goes
 * first (a mirror fixed or created later does not take nodes from one that configures them), then
 * the earliest created. Undefined when `mirror` may configure its nodes.
 */
export function nodeConfigHolder(mirror: RegistryMirror, all: readonly RegistryMirror[], modeOf: NodeAgentModeOf): { holder: RegistryMirror; files: string; why: string } | undefined {
  if (!mirror.spec.nodeConfig.enabled) return undefined;
  const rank = (m: RegistryMirror) => `${onNodes(m, modeOf) ? 0 : 1}\u0000${createdOrder(m)}`;
  const mine = rank(mirror);
  const before = all
    .filter((other) => !(other.metadata.namespace === mirror.metadata.namespace && other.metadata.name === mirror.metadata.name))
    .filter((other) => other.spec?.nodeConfig?.enabled && holdsNodes(other, modeOf) && rank(other) < mine)
    .map((other) => ({ other, rank: rank(other) }))
    .sort((x, y) => (x.rank < y.rank ? -1 : 1));
  // The mirrors that hold their nodes, decided in rank order, by the files they write: one kept off
  // its nodes by an earlier one, with no agents of its own on them, holds nothing, so it never
  // keeps a later mirror off nodes that nobody configures. One pass, no recursion: cheap with
  // thousands of mirrors.
  const holders = new Map<string, { other: RegistryMirror; rank: string }[]>();
  const firstHolder = (m: RegistryMirror) => {
    let found: { other: RegistryMirror; rank: string } | undefined;
    for (const key of fileKeys(m)) {
      const holder = holders.get(key)?.find(({ other }) => selectorsOverlap(m.spec.nodeConfig.nodeSelector, other.spec.nodeConfig.nodeSelector));
      if (holder && (!found || holder.rank < found.rank)) found = holder;
    }
    return found?.other;
  };
  for (const entry of before) {
    if (!onNodes(entry.other, modeOf) && firstHolder(entry.other)) continue;
    for (const key of fileKeys(entry.other)) {
      const list = holders.get(key);
      if (list) list.push(entry);
      else holders.set(key, [entry]);
    }
  }
  const holder = firstHolder(mirror);
  if (!holder) return undefined;
  return { holder, files: sharedNodeFiles(mirror, holder)!, why: onNodes(holder, modeOf) && !onNodes(mirror, modeOf) ? 'its agents are on them' : 'created earlier' };
}


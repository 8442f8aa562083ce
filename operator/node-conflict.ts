// Two RegistryMirrors must not configure the same file on the same node: their node agents would
// rewrite it in turn, every second, for as long as both run. Files are per registry for containerd
// (hosts.toml), one per node for Docker (daemon.json, Docker Hub only) and for CRI-O (the drop-in).
// The mirror that was there first keeps its nodes; a later one that would share a file with it
// gets no node configuration, and says why in its status.
import type { RegistryMirror } from './api/registry-mirror.ts';
import { FINALIZER } from './desired/inputs.ts';

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
  const runtimesA = a.spec.nodeConfig.runtimes;
  const runtimesB = b.spec.nodeConfig.runtimes;
  const registriesB = new Set(b.spec.upstreams.map((u) => u.registry));
  const shared: string[] = [];
  if (runtimesA.includes('containerd') && runtimesB.includes('containerd')) {
    const both = a.spec.upstreams.map((u) => u.registry).filter((r) => registriesB.has(r));
    if (both.length > 0) shared.push(`containerd's hosts.toml for ${both.join(', ')}`);
  }
  if (runtimesA.includes('docker') && runtimesB.includes('docker') && registriesB.has('docker.io') && a.spec.upstreams.some((u) => u.registry === 'docker.io')) {
    shared.push("Docker's daemon.json");
  }
  if (runtimesA.includes('crio') && runtimesB.includes('crio')) shared.push("CRI-O's registries.conf drop-in");
  return shared.length > 0 ? shared.join(', ') : undefined;
}

const createdOrder = (m: RegistryMirror) => `${m.metadata.creationTimestamp ?? ''}\u0000${m.metadata.namespace}/${m.metadata.name}`;

/**
 * A mirror being deleted holds its nodes until its finalizer let go: its agents are taking their
 * configuration away meanwhile, and another mirror's agents writing the same files at the same
 * time would have them taken away too.
 */
const holdsNodes = (m: RegistryMirror) => !m.metadata.deletionTimestamp || (m.metadata.finalizers ?? []).includes(FINALIZER);

/**
 * The RegistryMirror that holds nodes `mirror` would also configure, and the files they would
 * share: the earliest created of those with node configuration on, not deleted past their node
 * cleanup, whose node selector may pick the same nodes. Undefined when `mirror` may configure its nodes.
 */
export function nodeConfigHolder(mirror: RegistryMirror, all: readonly RegistryMirror[]): { holder: RegistryMirror; files: string } | undefined {
  if (!mirror.spec.nodeConfig.enabled) return undefined;
  const mine = createdOrder(mirror);
  const candidates = all
    .filter((other) => !(other.metadata.namespace === mirror.metadata.namespace && other.metadata.name === mirror.metadata.name))
    .filter((other) => other.spec?.nodeConfig?.enabled && holdsNodes(other) && createdOrder(other) < mine)
    .sort((x, y) => (createdOrder(x) < createdOrder(y) ? -1 : 1));
  for (const other of candidates) {
    if (!selectorsOverlap(mirror.spec.nodeConfig.nodeSelector, other.spec.nodeConfig.nodeSelector)) continue;
    const files = sharedNodeFiles(mirror, other);
    if (files) return { holder: other, files };
  }
  return undefined;
}

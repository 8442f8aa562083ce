// Where the node agents run (nodeConfig.nodeSelector and tolerations), and the nodes a narrower
// placement leaves behind. The DaemonSet controller stops the agents on nodes a new template no
// longer selects, and an agent that is stopped leaves its node configured (so that a rollout or
// an eviction never takes a working mirror away); those nodes are cleaned by a DaemonSet of their
// own, in remove mode, that selects them and no other: "an old placement AND NOT the current one".
// Node affinity says that exactly for labels (terms are ORed, the expressions of a term ANDed,
// NotIn matches a node without the label). Taints it cannot say: the nodes a narrowed toleration
// list leaves behind are found by reading the Nodes when it changes (leftByTaint), recorded by
// name, and selected by name (matchFields on metadata.name: byName).
import type { RegistryMirror } from './api/registry-mirror.ts';

export type Toleration = NonNullable<RegistryMirror['spec']['nodeConfig']['tolerations']>[number];

export interface Placement {
  nodeSelector: Record<string, string>;
  tolerations: Toleration[];
}

export interface NodeSelectorRequirement {
  key: string;
  operator: 'In' | 'NotIn';
  values: string[];
}

/** Labels (matchExpressions) or, for nodes named one by one, the field metadata.name (matchFields). */
export interface NodeSelectorTerm {
  matchExpressions?: NodeSelectorRequirement[];
  matchFields?: NodeSelectorRequirement[];
}

export interface Taint {
  key: string;
  value?: string;
  effect: 'NoSchedule' | 'PreferNoSchedule' | 'NoExecute';
}

/** What placement needs to know of a Node. */
export interface NodeFacts {
  name: string;
  labels: Record<string, string>;
  taints: Taint[];
}

/** Where a DaemonSet's pods go: a nodeSelector, or (for more than one placement at once) node affinity terms. */
export interface PodPlacement {
  nodeSelector?: Record<string, string>;
  affinity?: { nodeAffinity: { requiredDuringSchedulingIgnoredDuringExecution: { nodeSelectorTerms: NodeSelectorTerm[] } } };
  tolerations?: Toleration[];
}

/**
 * On the RegistryMirror: the placements its node agents had that no longer select every node they
 * configured, and since when they are being cleaned (JSON, DroppedPlacements). Written before the
 * node agent DaemonSet changes, so an operator restarted at any point carries on.
 */
export const DROPPED_PLACEMENTS_ANNOTATION = 'regmirror.dev/dropped-placements';

export interface DroppedPlacements {
  since: string;
  placements: Placement[];
  /**
   * Nodes one of the placements selected whose agent left because the tolerations no longer
   * tolerate a taint of theirs, by name: found when the tolerations changed (taints may change
   * later), at most MAX_DROPPED_NODE_NAMES.
   */
  nodes?: string[];
}

export function specPlacement(mirror: RegistryMirror): Placement {
  const { nodeSelector, tolerations } = mirror.spec.nodeConfig;
  return { nodeSelector: { ...nodeSelector }, tolerations: [...(tolerations ?? [])] };
}

/**
 * The placement of a running node agent DaemonSet, as its template says it; undefined for one
 * placed by node affinity (only a removal covering several placements is, see anyOf).
 */
export function daemonSetPlacement(daemonSet: { spec?: unknown } | undefined): Placement | undefined {
  const pod = (daemonSet?.spec as { template?: { spec?: { nodeSelector?: Record<string, string>; tolerations?: Toleration[]; affinity?: unknown } } } | undefined)?.template?.spec;
  if (!pod || pod.affinity) return undefined;
  return { nodeSelector: { ...pod.nodeSelector }, tolerations: [...(pod.tolerations ?? [])] };
}

/** The pod spec fields for a placement (an empty selector and no tolerations are left out). */
export function podPlacement(placement: Placement | undefined, terms?: NodeSelectorTerm[]): PodPlacement {
  return {
    ...(placement && Object.keys(placement.nodeSelector).length > 0 ? { nodeSelector: placement.nodeSelector } : {}),
    ...(terms && terms.length > 0 ? { affinity: { nodeAffinity: { requiredDuringSchedulingIgnoredDuringExecution: { nodeSelectorTerms: terms } } } } : {}),
    ...(placement?.tolerations.length ? { tolerations: placement.tolerations } : {}),
  };
}

const canonical = (value: object): string => JSON.stringify(Object.entries(value).sort(([a], [b]) => a.localeCompare(b)));

function unique<T extends object>(items: T[]): T[] {
  const seen = new Set<string>();
  return items.filter((item) => {
    const key = canonical(item);
    if (seen.has(key)) return false;
    seen.add(key);
    return true;
  });
}

function samePlacement(a: Placement, b: Placement): boolean {
  return canonical(a.nodeSelector) === canonical(b.nodeSelector)
    && JSON.stringify(a.tolerations.map(canonical).sort()) === JSON.stringify(b.tolerations.map(canonical).sort());
}

/** Whether `to` selects every node `from` selects, as far as labels tell (taints: leftByTaint). */
export function selectsAllOf(to: Placement, from: Placement): boolean {
  return Object.entries(to.nodeSelector).every(([key, value]) => from.nodeSelector[key] === value);
}

/** Whether one toleration tolerates every taint another does. */
function covers(wide: Toleration, narrow: Toleration): boolean {
  if (canonical(wide) === canonical(narrow)) return true;
  if (wide.operator !== 'Exists' || (wide.effect && wide.effect !== narrow.effect)) return false;
  return !wide.key || wide.key === narrow.key;
}

/**
 * Tolerations of `from` that `to` has no match for: nodes with such a taint may lose their agent.
 * Empty when every taint `from` tolerates `to` tolerates too (the Nodes need not be read).
 */
export function droppedTolerations(from: Placement, to: Placement): Toleration[] {
  return from.tolerations.filter((t) => !to.tolerations.some((u) => covers(u, t)));
}

/** Kubernetes' rule (ToleratesTaint): an empty effect matches every effect, an empty key (with Exists) every key; operator defaults to Equal. */
export function tolerates(toleration: Toleration, taint: Taint): boolean {
  if (toleration.effect && toleration.effect !== taint.effect) return false;
  if (toleration.key && toleration.key !== taint.key) return false;
  if (toleration.operator === 'Exists') return true;
  return (toleration.value ?? '') === (taint.value ?? '');
}

/** What the DaemonSet controller adds to every DaemonSet pod (no hostNetwork: not network-unavailable). */
export const DAEMON_SET_TOLERATIONS: Toleration[] = [
  { key: 'node.kubernetes.io/not-ready', operator: 'Exists', effect: 'NoExecute' },
  { key: 'node.kubernetes.io/unreachable', operator: 'Exists', effect: 'NoExecute' },
  ...['disk-pressure', 'memory-pressure', 'pid-pressure', 'unschedulable'].map((condition): Toleration => ({ key: `node.kubernetes.io/${condition}`, operator: 'Exists', effect: 'NoSchedule' })),
];

/** A Node object's name, labels and taints. */
export function nodeOf(node: { metadata?: { name?: string; labels?: Record<string, string> }; spec?: unknown }): NodeFacts {
  const taints = (node.spec as { taints?: Taint[] } | undefined)?.taints ?? [];
  return { name: node.metadata?.name ?? '', labels: node.metadata?.labels ?? {}, taints };
}

const hasLabels = (placement: Placement, node: NodeFacts) => Object.entries(placement.nodeSelector).every(([key, value]) => node.labels[key] === value);

/** Whether a DaemonSet pod with these tolerations is kept off the node by this taint (NoSchedule or NoExecute, not tolerated). */
function keptOffBy(tolerations: Toleration[], taint: Taint): boolean {
  return taint.effect !== 'PreferNoSchedule' && ![...tolerations, ...DAEMON_SET_TOLERATIONS].some((t) => tolerates(t, taint));
}

/** Whether a taint of the node keeps pods with the tolerations `to` off that `from` let on. */
function taintLeavesBehind(from: Toleration[], to: Toleration[], node: NodeFacts): boolean {
  return node.taints.some((taint) => !keptOffBy(from, taint) && keptOffBy(to, taint));
}

/**
 * Nodes with `from`'s labels and `to`'s that a taint `from` tolerated and `to` does not keeps the
 * agents off, sorted: node affinity cannot say "tainted so". Not those a NoExecute taint `from`
 * did not tolerate kept its agents off too (it evicts them). A NoSchedule taint `from` did not
 * tolerate does not keep a node out: it stops no agent that runs, and may have come after it
 * started (node.kubernetes.io/not-ready, while a node's kubelet is not reporting); the cleanup
 * goes there when it goes, as the agents would. Nodes `to`'s selector leaves out are not named:
 * leftBehind's terms select them, and any added later.
 */
export function leftByTaint(from: Placement, to: Placement, nodes: NodeFacts[]): string[] {
  const hadAgent = (node: NodeFacts) => hasLabels(from, node) && !node.taints.some((taint) => taint.effect === 'NoExecute' && keptOffBy(from.tolerations, taint));
  return nodes.filter((node) => hadAgent(node) && hasLabels(to, node) && taintLeavesBehind(from.tolerations, to.tolerations, node)).map((node) => node.name).sort();
}

/**
 * The named nodes the current placement does not take back: it selects a node again once the
 * taint is gone or tolerated again (then its agent configures the node, and the cleanup must not
 * run beside it). `nodes` is a listing with the current selector's labels: a name not in it (the
 * node gone, or its labels no longer the current selector's) stays.
 */
export function stillLeft(names: string[], placements: Placement[], current: Placement, nodes: NodeFacts[]): string[] {
  const listed = new Map(nodes.map((node) => [node.name, node]));
  const tolerated = allTolerations(placements);
  return names.filter((name) => {
    const node = listed.get(name);
    return !node || !hasLabels(current, node) || taintLeavesBehind(tolerated, current.tolerations, node);
  });
}

/**
 * At most this many nodes are recorded and selected by name: the record is an annotation (256 KiB
 * with the others), and each name is a term of the cleanup's node affinity.
 */
export const MAX_DROPPED_NODE_NAMES = 500;

/** `recorded` with `found` added, each once, the first MAX_DROPPED_NODE_NAMES kept; and how many did not fit. */
export function withNodes(recorded: string[], found: string[]): { nodes: string[]; over: number } {
  const all = [...new Set([...recorded, ...found])];
  return { nodes: all.slice(0, MAX_DROPPED_NODE_NAMES), over: Math.max(0, all.length - MAX_DROPPED_NODE_NAMES) };
}

/**
 * Terms that select these nodes by name: one each, as the API server takes a single value for a
 * field requirement with In (terms are ORed).
 */
export function byName(names: string[]): NodeSelectorTerm[] {
  return names.map((name) => ({ matchFields: [{ key: 'metadata.name', operator: 'In', values: [name] }] }));
}

const selected = (nodeSelector: Record<string, string>): NodeSelectorRequirement[] =>
  Object.entries(nodeSelector).sort(([a], [b]) => a.localeCompare(b)).map(([key, value]) => ({ key, operator: 'In', values: [value] }));

/**
 * Nodes some of `placements` select and `current` does not: for each placement, one term per
 * label of the current selector the placement does not already require (a node lacks it or has
 * another value). Empty when the current placement selects every such node again (an empty
 * current selector selects all).
 */
export function leftBehind(placements: Placement[], current: Placement): NodeSelectorTerm[] {
  const terms = placements.flatMap((placement) => Object.entries(current.nodeSelector)
    .filter(([key, value]) => placement.nodeSelector[key] !== value)
    .map(([key, value]) => ({ matchExpressions: [...selected(placement.nodeSelector), { key, operator: 'NotIn' as const, values: [value] }] })));
  return unique(terms);
}

/** Nodes any of `placements` selects, as affinity terms; undefined where one of them selects every node. */
export function anyOf(placements: Placement[]): NodeSelectorTerm[] | undefined {
  if (placements.some((p) => Object.keys(p.nodeSelector).length === 0)) return undefined;
  return unique(placements.map((p) => ({ matchExpressions: selected(p.nodeSelector) })));
}

/** Every toleration of any of `placements`: a cleanup must reach each node one of them reached. */
export function allTolerations(placements: Placement[]): Toleration[] {
  return unique(placements.flatMap((p) => p.tolerations));
}

/** The placements one more adds to (none twice). */
export function withPlacement(placements: Placement[], placement: Placement): Placement[] {
  return placements.some((p) => samePlacement(p, placement)) ? placements : [...placements, placement];
}

/** The annotation's record, or undefined when there is none (or it is not one: it is the operator's own). */
export function readDroppedPlacements(annotations: Record<string, string> | undefined): DroppedPlacements | undefined {
  const text = annotations?.[DROPPED_PLACEMENTS_ANNOTATION];
  if (!text) return undefined;
  try {
    const record = JSON.parse(text) as DroppedPlacements;
    if (typeof record?.since !== 'string' || !Array.isArray(record.placements)) return undefined;
    const placements = record.placements.filter((p) => p && typeof p.nodeSelector === 'object' && Array.isArray(p.tolerations));
    const nodes = Array.isArray(record.nodes) ? record.nodes.filter((n) => typeof n === 'string' && n !== '') : [];
    if (placements.length === 0) return undefined;
    return { since: record.since, placements, ...(nodes.length > 0 ? { nodes } : {}) };
  } catch {
    return undefined;
  }
}

/**
 * Where a removal runs for earlier placements: on `terms` (every node when undefined), with every
 * toleration any of them had, so it reaches each such node.
 */
export function cleanupPlacement(placements: Placement[], terms: NodeSelectorTerm[] | undefined): PodPlacement {
  return podPlacement({ nodeSelector: {}, tolerations: allTolerations(placements) }, terms);
}

// Where the node agents run (nodeConfig.nodeSelector and tolerations), and the nodes a narrower
// placement leaves behind. The DaemonSet controller stops the agents on nodes a new template no
// longer selects, and an agent that is stopped leaves its node configured (so that a rollout or
// an eviction never takes a working mirror away); those nodes are cleaned by a DaemonSet of their
// own, in remove mode, that selects them and no other: "an old placement AND NOT the current one".
// Node affinity says that exactly for labels (terms are ORed, the expressions of a term ANDed,
// NotIn matches a node without the label). Taints it cannot say: see droppedTolerations.
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

export interface NodeSelectorTerm {
  matchExpressions: NodeSelectorRequirement[];
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

/** Whether `to` selects every node `from` selects, as far as labels tell (taints: droppedTolerations). */
export function selectsAllOf(to: Placement, from: Placement): boolean {
  return Object.entries(to.nodeSelector).every(([key, value]) => from.nodeSelector[key] === value);
}

/** Whether one toleration tolerates every taint another does. */
function covers(wide: Toleration, narrow: Toleration): boolean {
  if (canonical(wide) === canonical(narrow)) return true;
  if (wide.operator !== 'Exists' || (wide.effect && wide.effect !== narrow.effect)) return false;
  return !wide.key || wide.key === narrow.key;
}

/** Tolerations of `from` that `to` has no match for: nodes with such a taint lose their agent. */
export function droppedTolerations(from: Placement, to: Placement): Toleration[] {
  return from.tolerations.filter((t) => !to.tolerations.some((u) => covers(u, t)));
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
    return placements.length > 0 ? { since: record.since, placements } : undefined;
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

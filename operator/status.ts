// The RegistryMirror's status as a pure function of what the reconciler observed: the Ready
// condition with the first reason that keeps it from being ready, the endpoint, and node counts
// from the node agent's DaemonSet.
import type { Condition, RegistryMirror, RegistryMirrorStatus } from './api/registry-mirror.ts';
import type { NodeAgentMode } from './desired/inputs.ts';

export const READY = 'Ready';

/**
 * Why the spec stops the reconciler before it applies anything (what runs is kept): it names
 * something the mirror would refuse, or a Secret or ConfigMap that is missing or holds what it
 * cannot use.
 */
export const INPUT_PROBLEM_REASONS = ['InvalidSpec', 'SecretNotFound', 'InvalidCredentials', 'ConfigMapNotFound', 'InvalidConfigMap'] as const;

/** Why a mirror is not ready, in the order they are reported (the first that applies wins). */
export type NotReadyReason =
  | (typeof INPUT_PROBLEM_REASONS)[number]
  | 'ApplyFailed'
  | 'Terminating'
  | 'ScaledToZero'
  | 'NodeConfigConflict'
  | 'NodeCleanup'
  | 'VolumePending'
  | 'Progressing'
  | 'NodesPending';

export interface Problem {
  /** ApplyFailed: the API server refused an owned object built from the spec (its message says which field). */
  /** InvalidSpec: the spec names something the mirror would refuse at start (the message names the field). */
  reason: (typeof INPUT_PROBLEM_REASONS)[number] | 'ApplyFailed';
  message: string;
}

export interface WorkloadStatus {
  generation?: number;
  observedGeneration?: number;
  replicas?: number;
  updatedReplicas?: number;
  availableReplicas?: number;
}

export interface DaemonSetStatus {
  generation?: number;
  observedGeneration?: number;
  desiredNumberScheduled?: number;
  updatedNumberScheduled?: number;
  numberReady?: number;
}

/** The cleanup of nodes a narrowed nodeConfig placement left behind (operator/placement.ts). */
export interface DroppedNodes {
  daemonSet: string;
  desired: number;
  done: number;
}

export interface Observed {
  problem?: Problem;
  serviceIP?: string;
  endpoint?: string;
  pvcPhase?: string;
  deployment?: WorkloadStatus;
  wantedReplicas: number;
  daemonSet?: DaemonSetStatus;
  nodeAgentMode?: NodeAgentMode;
  nodeConfigEnabled: boolean;
  /** Another RegistryMirror configures these nodes: why this one does not. */
  nodeConflict?: string;
  /** Nodes nodeConfig no longer selects whose configuration is still being taken away. */
  droppedNodes?: DroppedNodes;
  deleting: boolean;
}

export function deploymentAvailable(d: WorkloadStatus | undefined, wanted: number): boolean {
  if (!d) return false;
  if ((d.observedGeneration ?? 0) < (d.generation ?? 0)) return false;
  return (d.updatedReplicas ?? 0) >= wanted && (d.availableReplicas ?? 0) >= wanted;
}

/**
 * Nodes whose agent runs the current template and is ready. A DaemonSet that has not seen its
 * latest generation yet counts none: its numbers describe the previous template.
 */
export function nodesDone(ds: DaemonSetStatus | undefined): { desired: number; done: number; complete: boolean } {
  if (!ds) return { desired: 0, done: 0, complete: false };
  const desired = ds.desiredNumberScheduled ?? 0;
  const current = (ds.observedGeneration ?? 0) >= (ds.generation ?? 0);
  const done = current ? Math.min(ds.updatedNumberScheduled ?? 0, ds.numberReady ?? 0) : 0;
  return { desired, done, complete: current && done >= desired };
}

function readyCondition(observed: Observed): Pick<Condition, 'status' | 'reason' | 'message'> {
  const notReady = (reason: NotReadyReason, message: string) => ({ status: 'False' as const, reason, message });
  if (observed.deleting) {
    return observed.daemonSet && observed.nodeAgentMode === 'remove'
      ? notReady('NodeCleanup', 'taking the mirror configuration off the nodes before deletion')
      : notReady('Terminating', 'the RegistryMirror is being deleted');
  }
  if (observed.problem) return notReady(observed.problem.reason, observed.problem.message);
  if (observed.nodeConflict) return notReady('NodeConfigConflict', `nodes not configured: ${observed.nodeConflict}`);
  if (observed.wantedReplicas === 0) return notReady('ScaledToZero', 'spec.replicas is 0: no mirror pod is serving');
  if (!deploymentAvailable(observed.deployment, observed.wantedReplicas)) {
    if (observed.pvcPhase !== 'Bound') {
      return notReady('VolumePending', `the cache volume is ${observed.pvcPhase ? observed.pvcPhase.toLowerCase() : 'not created yet'}`);
    }
    const d = observed.deployment;
    return notReady('Progressing', `mirror pods: ${d?.availableReplicas ?? 0} of ${observed.wantedReplicas} available, ${d?.updatedReplicas ?? 0} updated`);
  }
  const dropped = observed.droppedNodes;
  const cleaning = dropped
    ? `${dropped.done} of ${dropped.desired} nodes nodeConfig no longer selects cleaned (DaemonSet ${dropped.daemonSet} takes the mirror configuration off them)`
    : undefined;
  if (observed.nodeConfigEnabled) {
    const nodes = nodesDone(observed.daemonSet);
    if (!nodes.complete) return notReady('NodesPending', `${nodes.done} of ${nodes.desired} nodes configured${cleaning ? `; ${cleaning}` : ''}`);
  }
  if (cleaning) return notReady('NodesPending', cleaning);
  return { status: 'True', reason: 'Available', message: observed.nodeConfigEnabled ? 'the mirror is serving and every node uses it' : 'the mirror is serving' };
}

/** Sets a condition, keeping lastTransitionTime unless its status changed. */
export function setCondition(conditions: Condition[] | undefined, next: Omit<Condition, 'lastTransitionTime'>, now: Date): Condition[] {
  const others = (conditions ?? []).filter((c) => c.type !== next.type);
  const previous = conditions?.find((c) => c.type === next.type);
  const lastTransitionTime = previous && previous.status === next.status ? previous.lastTransitionTime : now.toISOString().replace(/\.\d+Z$/, 'Z');
  return [...others, { ...next, lastTransitionTime }];
}

export function desiredStatus(mirror: RegistryMirror, observed: Observed, now: Date): RegistryMirrorStatus {
  const generation = mirror.metadata.generation ?? 0;
  const ready = readyCondition(observed);
  const status: RegistryMirrorStatus = {
    observedGeneration: generation,
    conditions: setCondition(mirror.status?.conditions, { type: READY, ...ready, observedGeneration: generation }, now),
  };
  const endpoint = observed.endpoint ?? mirror.status?.endpoint;
  if (endpoint) status.endpoint = endpoint;
  if (observed.daemonSet) {
    const nodes = nodesDone(observed.daemonSet);
    const configured = observed.nodeAgentMode === 'remove' ? Math.max(0, nodes.desired - nodes.done) : nodes.done;
    status.nodes = { desired: nodes.desired, configured };
  } else if (observed.nodeConfigEnabled && !observed.nodeConflict && mirror.status?.nodes) {
    // The agents' DaemonSet went (deleted by hand, or by a namespace being deleted), but agents
    // leave their nodes configured when they stop: the count stands, and tells deletion that nodes
    // need cleaning.
    status.nodes = mirror.status.nodes;
  } else {
    status.nodes = { desired: 0, configured: 0 };
  }
  return status;
}

// The node agent in remove mode on the nodes a narrowed nodeConfig placement left behind
// (operator/placement.ts): the DaemonSet controller stopped their agents, which leave a node
// configured when they stop. It runs beside the node agent DaemonSet, on no node of that one's,
// until each of its pods reports the node clean; the RegistryMirror owns it.
import { desiredDaemonSet, relabelled } from './daemon-set.ts';
import { labels, names, selector, type DesiredInputs } from './inputs.ts';
import { cleanupPlacement, type NodeSelectorTerm, type Placement } from '../placement.ts';

/**
 * `terms`: the nodes to clean (leftBehind), undefined for every node (no node agent runs on any);
 * `placements`: the earlier placements, whose tolerations it takes so it reaches each such node.
 */
export function desiredDroppedNodesDaemonSet(inputs: DesiredInputs, terms: NodeSelectorTerm[] | undefined, placements: Placement[]) {
  const { mirror } = inputs;
  // removal reads neither the nodes' credentials nor the CA (node-agent/reconcile.ts)
  const daemonSet = desiredDaemonSet({ ...inputs, nodeAgentMode: 'remove', nodeCredentials: undefined, tlsCaKey: undefined, placement: cleanupPlacement(placements, terms) });
  return relabelled(daemonSet, names(mirror).droppedNodesDaemonSet, labels(mirror, 'node-dropped'), selector(mirror, 'node-dropped'));
}

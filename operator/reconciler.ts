// Reconcile one RegistryMirror: level-triggered and idempotent. It reads the mirror (from the cache)
// and the Secrets and ConfigMaps it references (by name, from the server), builds the desired
// objects with the pure builders, applies them with server-side apply, and writes status from what
// the server returned. Deletion runs the node-cleanup finalizer.
import { createHash } from 'node:crypto';
import { HtpasswdLineError, parseHtpasswd } from '../common/htpasswd.ts';
import { caBundleProblem } from '../common/pem.ts';
import type { Logger } from '../common/logger.ts';
import { API_VERSION, KIND, type RegistryMirror, type RegistryMirrorStatus, type Runtime } from './api/registry-mirror.ts';
import { InvalidCredentialsError, normaliseCredentials, type Credentials, type SecretLike } from './credentials.ts';
import { desiredConfigMap, prefetchProblem } from './desired/config-map.ts';
import {
  desiredCleanupDaemonSet, desiredDaemonSet, desiredRelocatedCleanupDaemonSet, MIRROR_UID_ANNOTATION, modeOf, nodeAgentArg, relocatedCleanupName, runtimesIn, runtimesInDaemonSet,
} from './desired/daemon-set.ts';
import { desiredDeployment } from './desired/deployment.ts';
import { desiredDroppedNodesDaemonSet } from './desired/dropped-nodes.ts';
import {
  FINALIZER, endpointAt, names, upstreamCaRef, withDefaults, type DesiredInputs, type NodeAgentMode, type UpstreamCaRef,
} from './desired/inputs.ts';
import { claimSize, desiredPersistentVolumeClaim } from './desired/persistent-volume-claim.ts';
import { desiredSecret } from './desired/secret.ts';
import { desiredService } from './desired/service.ts';
import type { EventRecorder } from './events.ts';
import { isForbidden, isNotFound, isRefused, isStale, type KubeApi, type KubeObject } from './kube/api.ts';
import { checksumKey } from './checksum-key.ts';
import { nodeCredentials } from './node-credentials.ts';
import { nodeConfigHolder } from './node-conflict.ts';
import {
  DROPPED_PLACEMENTS_ANNOTATION, MAX_DROPPED_NODE_NAMES, anyOf, byName, cleanupPlacement, daemonSetPlacement, droppedTolerations, leftBehind, leftByTaint, nodeOf,
  readDroppedPlacements, selectsAllOf, specPlacement, stillLeft, withNodes, withPlacement,
  type DroppedPlacements, type NodeFacts, type Placement, type PodPlacement,
} from './placement.ts';
import {
  INPUT_PROBLEM_REASONS, READY, desiredStatus, nodesDone, type DaemonSetStatus, type DroppedNodes, type Observed, type Problem, type WorkloadStatus,
} from './status.ts';

export interface ReconcileResult {
  /** Look again after this long even if no watch event arrives (waiting on something unwatched). */
  requeueAfterMs?: number;
}

/**
 * Where the reconciler reads watched objects (the informers' caches). Secrets are not in it: the
 * operator watches their metadata only, and reads the ones a mirror references when it reconciles.
 */
export interface ObjectCache {
  mirror(namespace: string, name: string): RegistryMirror | undefined;
  /** Every RegistryMirror the operator watches: node configuration must not overlap between them. */
  mirrors(): RegistryMirror[];
  /** The mode of the mirror's node agent DaemonSet; undefined when it has none. */
  nodeAgentMode(mirror: RegistryMirror): 'apply' | 'remove' | undefined;
}

export interface ReconcilerOptions {
  api: KubeApi;
  cache: ObjectCache;
  events: EventRecorder;
  logger: Logger;
  mirrorImage: string;
  /** How long the finalizer waits for nodes to drop the mirror before letting the objects go. */
  nodeCleanupTimeoutMs: number;
  /** Where a cleanup DaemonSet runs when the mirror's own namespace is being deleted (the operator's namespace). */
  cleanupNamespace: string;
  now?: () => Date;
}

type Applied = KubeObject & { status?: Record<string, unknown>; spec?: Record<string, unknown> };

const NODE_CLEANUP_POLL_MS = 5_000;
/** The node agent pods' grace period (Kubernetes' default, 30 s) and a poll more: see finalize. */
const RELOCATED_CLEANUP_SETTLE_MS = 35_000;

export class Reconciler {
  private readonly options: ReconcilerOptions;
  private readonly now: () => Date;

  constructor(options: ReconcilerOptions) {
    this.options = options;
    this.now = options.now ?? (() => new Date());
  }

  async reconcile(key: string): Promise<ReconcileResult> {
    try {
      return await this.reconcileKey(key);
    } catch (error) {
      // the controller logs what is thrown
      throw withheldIfLocal(error);
    }
  }

  private async reconcileKey(key: string): Promise<ReconcileResult> {
    const [namespace, name] = key.split('/') as [string, string];
    const cached = this.options.cache.mirror(namespace, name);
    // Gone: owner references let the garbage collector take the owned objects.
    if (!cached) return {};
    const mirror: RegistryMirror = { ...cached, spec: withDefaults(cached.spec) };
    if (mirror.metadata.deletionTimestamp) return this.finalize(mirror);

    if (!mirror.metadata.finalizers?.includes(FINALIZER)) await this.addFinalizer(mirror);

    const gathered = await this.gatherInputs(mirror, 'apply');
    if (gathered.problem) {
      // Keep what runs now: a config without its credentials would only break pulls that work.
      await this.writeProblem(mirror, gathered.problem);
      return {};
    }
    const conflict = nodeConfigHolder(mirror, this.options.cache.mirrors().map((m) => ({ ...m, spec: withDefaults(m.spec) })), (m) => this.options.cache.nodeAgentMode(m));
    let applied;
    try {
      applied = await this.applyAll(gathered.inputs, conflict !== undefined);
    } catch (error) {
      // Said on the object too, where `kubectl describe` shows it; repeats only bump the count.
      const shown = withheldIfLocal(error);
      await this.options.events.record(mirror, 'Warning', 'ApplyFailed', shown.message.slice(0, 1024));
      throw shown;
    }
    const { pvc, service, deployment, daemonSet, dropped, refusals } = applied;
    // Refusals are said in Ready, so the status no longer speaks for a spec that was not all applied.
    const problem: Problem | undefined = refusals.length > 0 ? { reason: 'ApplyFailed', message: refusals.join('\n') } : undefined;
    if (problem) await this.options.events.record(mirror, 'Warning', 'ApplyFailed', problem.message.slice(0, 4096));
    const keptSize = pvc ? sizeKept(mirror, pvc) : undefined;
    if (keptSize) {
      await this.options.events.record(mirror, 'Warning', 'StorageNotShrunk',
        `spec.storage.size ${mirror.spec.storage.size} is smaller than the cache volume's claim, ${keptSize}; a PersistentVolumeClaim cannot shrink, so the claim keeps ${keptSize} (to start smaller, delete the RegistryMirror, which deletes its cache, and create it again)`);
    }

    await this.writeStatus(mirror, {
      problem,
      endpoint: servedEndpoint(service),
      pvcPhase: pvc?.status?.phase as string | undefined,
      deployment: deployment ? workloadStatus(deployment) : undefined,
      ...nodeFacts(mirror, daemonSet),
      droppedNodes: dropped?.nodes,
      ...(conflict
        ? {
            nodeConflict: `its nodes are configured by RegistryMirror ${conflict.holder.metadata.namespace}/${conflict.holder.metadata.name} (${conflict.why}), and both would write ${conflict.files}; give the two disjoint nodeConfig.nodeSelector labels, or set nodeConfig.enabled: false on one. The mirror itself serves.`,
          }
        : {}),
      deleting: false,
    });
    // Retried with backoff: a refusal may come from something outside the spec (a quota, a webhook).
    if (problem) throw new Error(problem.message);
    return dropped ? { requeueAfterMs: dropped.requeueAfterMs } : {};
  }

  /** Ready=False for `problem`, with what is known of the objects that run now. */
  private async writeProblem(mirror: RegistryMirror, problem: Problem): Promise<void> {
    const { api } = this.options;
    const { namespace } = mirror.metadata;
    const n = names(mirror);
    const service = await api.find<Applied>('v1', 'Service', namespace, n.service);
    const daemonSet = await api.find<Applied>('apps/v1', 'DaemonSet', namespace, n.daemonSet);
    await this.writeStatus(mirror, {
      problem,
      endpoint: servedEndpoint(service),
      ...nodeFacts(mirror, daemonSet),
      deleting: false,
    });
  }

  /**
   * Applies every owned object the API server takes, in dependency order (the Service's ClusterIP
   * feeds the DaemonSet), and collects the refusals instead of stopping at the first: a claim that
   * cannot grow must not keep a new image from the Deployment. Where an apply is refused, what runs
   * now is returned in its place. Errors other than refusals (the server unreachable) are thrown.
   */
  private async applyAll(inputs: DesiredInputs, nodeConflict: boolean) {
    const { api } = this.options;
    const { mirror } = inputs;
    const { namespace } = mirror.metadata;
    const n = names(mirror);
    const refusals: string[] = [];
    const applyOrKeep = async (object: Parameters<KubeApi['apply']>[0], current: () => Promise<Applied | undefined>, hint = '') => {
      try {
        return await api.apply<Applied>(object);
      } catch (error) {
        if (!isRefused(error)) throw error;
        refusals.push(`${object.kind} ${object.metadata.name} not applied: ${(error as Error).message.slice(0, 1024)}${hint}`);
        return current();
      }
    };
    const find = (apiVersion: string, kind: string, name: string) => () => api.find<Applied>(apiVersion, kind, namespace, name);

    const configMap = await applyOrKeep(desiredConfigMap(inputs), find('v1', 'ConfigMap', n.configMap));
    const configMapApplied = refusals.length === 0;
    const secret = await applyOrKeep(desiredSecret(inputs), find('v1', 'Secret', n.secret));
    const secretApplied = refusals.length === (configMapApplied ? 0 : 1);
    const claim = await api.find<Applied>('v1', 'PersistentVolumeClaim', namespace, n.pvc);
    const claimInputs = { ...inputs, claimSize: claimRequest(claim) };
    const pvc = await applyOrKeep(desiredPersistentVolumeClaim(claimInputs), async () => claim, resizeHint(mirror, claim));
    const service = await applyOrKeep(desiredService(inputs), find('v1', 'Service', n.service));
    const clusterIP = service?.spec?.clusterIP as string | undefined;
    // The pods' checksums cover the config and the Secret: rolled while either was refused, they
    // would carry the new checksum over the old files and not roll again once those are applied.
    const deployment = configMapApplied && secretApplied && configMap && secret
      ? await applyOrKeep(desiredDeployment(inputs), find('apps/v1', 'Deployment', n.deployment))
      : await find('apps/v1', 'Deployment', n.deployment)();
    let daemonSet = await find('apps/v1', 'DaemonSet', n.daemonSet)();
    let dropped: { nodes: DroppedNodes; requeueAfterMs: number } | undefined;
    if (clusterIP && clusterIP !== 'None' && secretApplied) {
      const existing = daemonSet;
      const withIP = { ...inputs, serviceIP: clusterIP, cleanupRuntimes: pendingRuntimeCleanup(existing, mirror.spec.nodeConfig.runtimes) };
      // Before the agents move: the nodes they leave stay configured when they stop.
      const record = await this.recordDroppedPlacement(mirror, existing);
      if (mirror.spec.nodeConfig.enabled && !nodeConflict) {
        daemonSet = await applyOrKeep(desiredDaemonSet(withIP), async () => existing);
      } else if (existing) {
        // Turned off, or another RegistryMirror holds these nodes: an existing agent takes the
        // configuration away and stays to keep it away.
        daemonSet = await applyOrKeep(desiredDaemonSet({ ...withIP, nodeAgentMode: 'remove' }), async () => existing);
      }
      dropped = await this.cleanDroppedNodes(withIP, existing, daemonSet, record, applyOrKeep);
    }
    return { pvc, service, deployment, daemonSet, dropped, refusals };
  }

  /**
   * The record of placements whose nodes are still to be cleaned (DROPPED_PLACEMENTS_ANNOTATION),
   * with the running node agents' placement added first when the spec no longer selects all of
   * its nodes. Read from the server: a cache that has not seen the last write would lose nodes.
   */
  private async recordDroppedPlacement(mirror: RegistryMirror, running: Applied | undefined): Promise<DroppedPlacements | undefined> {
    const { events } = this.options;
    const record = await this.droppedPlacements(mirror);
    const before = daemonSetPlacement(running);
    if (!before) return record;
    const after = specPlacement(mirror);
    const tainted = await this.nodesLeftByTaint(mirror, before, after);
    const labelled = !selectsAllOf(after, before);
    if (!labelled && tainted.length === 0) return record;
    const placements = withPlacement(record?.placements ?? [], before);
    const { nodes, over } = withNodes(record?.nodes ?? [], tainted);
    if (over > 0) {
      await events.record(mirror, 'Warning', 'NodeCleanupIncomplete',
        `nodeConfig.tolerations no longer tolerates a taint of ${over} more node(s) the agents configured than the ${MAX_DROPPED_NODE_NAMES} a cleanup names: those stay pointing at the mirror; see "Manual node cleanup" in the README`);
    }
    if (record && placements.length === record.placements.length && nodes.length === (record.nodes?.length ?? 0)) return record;
    const next: DroppedPlacements = { since: this.now().toISOString(), placements, ...(nodes.length > 0 ? { nodes } : {}) };
    await this.writeMirrorMetadata(mirror, next);
    const why = [
      ...(labelled ? [`nodeConfig.nodeSelector no longer selects every node the agents configured (it was ${JSON.stringify(before.nodeSelector)})`] : []),
      ...(tainted.length > 0 ? [`nodeConfig.tolerations no longer tolerates a taint of ${tainted.length} node(s) the agents configured (${shortList(tainted)})`] : []),
    ];
    await events.record(mirror, 'Normal', 'NodeCleanup', `${why.join('; ')}; DaemonSet ${names(mirror).droppedNodesDaemonSet} takes the configuration off the nodes left out`);
    return next;
  }

  /**
   * The nodes `before` placed an agent on that `after` keeps off by a taint alone (leftByTaint),
   * read from the Nodes when a toleration went. Where the operator may not list Nodes (the RBAC
   * of an earlier version), a Warning names the tolerations whose nodes are not cleaned, and what is missing.
   */
  private async nodesLeftByTaint(mirror: RegistryMirror, before: Placement, after: Placement): Promise<string[]> {
    const lost = droppedTolerations(before, after);
    if (lost.length === 0) return [];
    const nodes = await this.listNodes(before.nodeSelector);
    if (!nodes) {
      await this.options.events.record(mirror, 'Warning', 'NodeCleanupIncomplete',
        `nodeConfig.tolerations no longer tolerates ${lost.map((t) => `${t.key || '*'}${t.value ? `=${t.value}` : ''}:${t.effect ?? '*'}`).join(', ')}: the node agents on nodes with such a taint stop and leave them pointing at the mirror, and the operator may not list nodes to find them (its RBAC lacks get and list on nodes, cluster-wide: apply this version's RBAC); see "Manual node cleanup" in the README`);
      return [];
    }
    return leftByTaint(before, after, nodes);
  }

  /** The Nodes with these labels; undefined when the operator may not list them. Read a page at a time, keeping only what placement needs of each. */
  private async listNodes(labels: Record<string, string>): Promise<NodeFacts[] | undefined> {
    const selector = Object.entries(labels).map(([key, value]) => `${key}=${value}`).join(',');
    try {
      const facts: NodeFacts[] = [];
      for await (const page of this.options.api.listPages<KubeObject>('v1', 'Node', undefined, selector || undefined)) facts.push(...page.map(nodeOf));
      return facts;
    } catch (error) {
      if (isForbidden(error)) return undefined;
      throw error;
    }
  }

  /**
   * The recorded nodes the running agents do not take back now (stillLeft), from the Nodes read
   * again each time; as recorded where the operator may not list Nodes.
   */
  private async nodesStillLeft(record: DroppedPlacements, current: Placement): Promise<string[]> {
    if (!record.nodes?.length) return [];
    const nodes = await this.listNodes(current.nodeSelector);
    return nodes ? stillLeft(record.nodes, record.placements, current, nodes) : record.nodes;
  }

  /**
   * The DaemonSet that cleans the nodes of `record` the node agents no longer run on (placement.ts),
   * deleted, with the record, once every pod of it reports its node clean or --node-cleanup-timeout
   * passed since the placement changed. Undefined when there is nothing (left) to clean.
   */
  private async cleanDroppedNodes(
    inputs: DesiredInputs, before: Applied | undefined, agent: Applied | undefined, record: DroppedPlacements | undefined,
    applyOrKeep: (object: Parameters<KubeApi['apply']>[0], current: () => Promise<Applied | undefined>) => Promise<Applied | undefined>,
  ): Promise<{ nodes: DroppedNodes; requeueAfterMs: number } | undefined> {
    const { api, events } = this.options;
    const { mirror } = inputs;
    const { namespace } = mirror.metadata;
    const name = names(mirror).droppedNodesDaemonSet;
    const existing = await api.find<Applied>('apps/v1', 'DaemonSet', namespace, name);
    const finish = async () => {
      if (existing) await api.delete('apps/v1', 'DaemonSet', namespace, name);
      if (record) await this.writeMirrorMetadata(mirror, undefined);
      return undefined;
    };
    if (!record) return finish();
    const current = agent ? daemonSetPlacement(agent) : undefined;
    // placed otherwise only by the finalizer's removal, which covers the record's nodes itself
    if (agent && !current) return undefined;
    // No agent runs: every node of the record is to be cleaned (the named ones have its labels).
    const terms = current ? [...leftBehind(record.placements, current), ...byName(await this.nodesStillLeft(record, current))] : anyOf(record.placements);
    // The agents select every such node again (and configure it).
    if (terms?.length === 0) return finish();
    const runtimes = [...new Set([...runtimesInDaemonSet(before), ...runtimesInDaemonSet(existing)])].filter((r) => !mirror.spec.nodeConfig.runtimes.includes(r));
    // the address those nodes were given
    const url = nodeAgentArg(existing, '--mirror') ?? nodeAgentArg(before, '--mirror');
    const desired = desiredDroppedNodesDaemonSet({ ...inputs, cleanupRuntimes: runtimes, ...(url ? { mirrorUrl: url } : {}) }, terms, record.placements);
    const daemonSet = await applyOrKeep(desired, async () => existing);
    if (!daemonSet) return undefined;
    const nodes = nodesDone(daemonSetStatus(daemonSet));
    const waitedMs = this.now().getTime() - Date.parse(record.since);
    const timeoutMs = this.options.nodeCleanupTimeoutMs;
    // The agents stopped on those nodes may write their files again for their grace period: see finalize.
    const settleMs = Math.min(RELOCATED_CLEANUP_SETTLE_MS, timeoutMs / 2);
    if (nodes.complete && waitedMs >= settleMs) {
      await events.record(mirror, 'Normal', 'NodesCleaned', `mirror configuration removed from ${nodes.desired} node(s) nodeConfig no longer selects`);
      return finish();
    }
    if (waitedMs >= timeoutMs) {
      await events.record(mirror, 'Warning', 'NodeCleanupTimedOut',
        `${nodes.done} of ${nodes.desired} nodes nodeConfig no longer selects confirmed removal within ${Math.round(timeoutMs / 1000)}s; they may still point their runtimes at the mirror (see "Manual node cleanup" in the README)`);
      return finish();
    }
    const next = (nodes.complete ? settleMs : timeoutMs) - waitedMs + 100;
    return { nodes: { daemonSet: name, desired: nodes.desired, done: nodes.done }, requeueAfterMs: Math.min(NODE_CLEANUP_POLL_MS, next) };
  }

  /** The record of dropped placements as the server has it (see recordDroppedPlacement). */
  private async droppedPlacements(mirror: RegistryMirror): Promise<DroppedPlacements | undefined> {
    const fresh = await this.options.api.find<KubeObject>(API_VERSION, KIND, mirror.metadata.namespace, mirror.metadata.name);
    return readDroppedPlacements(fresh?.metadata?.annotations);
  }

  /** The operator's metadata on the RegistryMirror: its finalizer, and the record of dropped placements when there is one. */
  private async writeMirrorMetadata(mirror: RegistryMirror, dropped: DroppedPlacements | undefined): Promise<void> {
    const { name, namespace } = mirror.metadata;
    await this.options.api.apply({
      apiVersion: API_VERSION, kind: KIND,
      metadata: { name, namespace, finalizers: [FINALIZER], ...(dropped ? { annotations: { [DROPPED_PLACEMENTS_ANNOTATION]: JSON.stringify(dropped) } } : {}) },
    });
  }

  /**
   * Reads the referenced Secrets (and upstream CA ConfigMaps) into builder inputs, or names the first
   * problem with them. They are read from the server, each when it is needed: one that does not exist
   * is SecretNotFound (ConfigMapNotFound), and any other failure to read it (forbidden, the server
   * unreachable) is thrown, to be retried.
   */
  private async gatherInputs(mirror: RegistryMirror, mode: NodeAgentMode): Promise<{ inputs: DesiredInputs; problem?: undefined } | { problem: Problem; inputs?: undefined }> {
    const { api } = this.options;
    const { namespace } = mirror.metadata;
    const secret = (name: string) => api.find<SecretLike & KubeObject>('v1', 'Secret', namespace, name);
    const { spec } = mirror;
    const missing = (secretName: string, what: string): { problem: Problem } => ({
      problem: { reason: 'SecretNotFound', message: `Secret ${secretName} (${what}) not found in namespace ${namespace}` },
    });
    const invalid = (message: string): { problem: Problem } => ({ problem: { reason: 'InvalidCredentials', message } });
    // The CRD cannot parse image references: what the mirror would refuse at start is caught here.
    const badPrefetch = mode === 'apply' ? prefetchProblem(spec) : undefined;
    if (badPrefetch) return { problem: { reason: 'InvalidSpec', message: badPrefetch } };

    const upstreamCredentials = new Map<string, Credentials>();
    for (const upstream of spec.upstreams) {
      const ref = upstream.credentialsSecretRef;
      if (!ref) continue;
      const credentials = await secret(ref.name);
      if (!credentials) return missing(ref.name, `credentials for ${upstream.registry}`);
      try {
        upstreamCredentials.set(upstream.registry, normaliseCredentials(credentials, upstream.registry, ref.name));
      } catch (error) {
        if (error instanceof InvalidCredentialsError) return invalid(error.message);
        throw error;
      }
    }

    // What the operator made before and keeps (the checksum key, the nodes' password) is read from
    // the server, as every Secret is: from a cache, a reconcile just after the one that made it
    // could make it again, and roll the mirror and the agents twice.
    const owned = await this.ownedSecret(mirror);
    const inputs: DesiredInputs = {
      mirror,
      image: spec.image ?? this.options.mirrorImage,
      // never spec.image: see DesiredInputs.nodeAgentImage
      nodeAgentImage: this.options.mirrorImage,
      checksumKey: checksumKey(owned?.data),
      upstreamCredentials,
      nodeAgentMode: mode,
    };

    for (const [index, upstream] of spec.upstreams.entries()) {
      const ref = upstreamCaRef(upstream);
      if (!ref) continue;
      const ca = await readUpstreamCa(api, namespace, ref, `CA for ${upstream.registry}, spec.upstreams[${index}].${ref.field}`);
      if ('problem' in ca) return ca;
      (inputs.upstreamCas ??= new Map()).set(upstream.registry, ca.digest);
    }

    const htpasswdRef = spec.auth?.htpasswdSecretRef;
    if (htpasswdRef) {
      const htpasswd = await secret(htpasswdRef.name);
      if (!htpasswd) return missing(htpasswdRef.name, 'htpasswd for spec.auth');
      const text = htpasswd.data?.htpasswd;
      if (!text) return invalid(`Secret ${htpasswdRef.name} (spec.auth) has no key "htpasswd"`);
      inputs.htpasswd = Buffer.from(text, 'base64').toString('utf8');
      try {
        // the mirror's own rule: a file it refuses would crash-loop the pods rolled onto it
        parseHtpasswd(inputs.htpasswd);
      } catch (error) {
        if (error instanceof HtpasswdLineError) return invalid(`Secret ${htpasswdRef.name} (spec.auth), key "htpasswd": ${error.message}`);
        throw error;
      }
      inputs.nodeCredentials = await nodeCredentials(owned?.data);
    }

    if (spec.tls) {
      const tls = await secret(spec.tls.secretName);
      if (!tls) return missing(spec.tls.secretName, 'spec.tls');
      if (!tls.data?.['tls.crt'] || !tls.data?.['tls.key']) {
        return invalid(`Secret ${spec.tls.secretName} (spec.tls) needs keys "tls.crt" and "tls.key"`);
      }
      inputs.tlsDigest = createHash('sha256').update(tls.data['tls.crt']).update(tls.data['tls.key']).digest('hex');
      // cert-manager and most issuers put the CA in ca.crt; a self-signed certificate is its own
      inputs.tlsCaKey = tls.data['ca.crt'] ? 'ca.crt' : 'tls.crt';
    }
    return { inputs };
  }

  /**
   * The finalizer: switch the node agent to remove mode, wait (bounded) for it, then let go. When
   * the agent's DaemonSet is already being deleted or gone (a foreground cascade, the namespace
   * going), a cleanup DaemonSet does the removal, in the operator's namespace when the mirror's is
   * being deleted; where that cannot run either, a Warning says the nodes were not cleaned.
   */
  private async finalize(mirror: RegistryMirror): Promise<ReconcileResult> {
    if (!mirror.metadata.finalizers?.includes(FINALIZER)) return {};
    const { api, events } = this.options;
    const { namespace } = mirror.metadata;
    const n = names(mirror);
    const current = await this.findWhileDeleting<Applied>('apps/v1', 'DaemonSet', namespace, n.daemonSet);
    const cleanup = await this.findCleanupDaemonSet(mirror);
    const waitedMs = this.now().getTime() - Date.parse(mirror.metadata.deletionTimestamp!);
    const timedOut = waitedMs >= this.options.nodeCleanupTimeoutMs;
    // Nodes a narrowed placement left behind are still to be cleaned: the removal below reaches
    // them too, and theirs goes first, so that two agents never take the same files away at once.
    const dropped = await absentIfRefused(this.droppedPlacements(mirror));
    if (await this.findWhileDeleting<Applied>('apps/v1', 'DaemonSet', namespace, n.droppedNodesDaemonSet)) {
      await absentIfRefused(api.delete('apps/v1', 'DaemonSet', namespace, n.droppedNodesDaemonSet));
    }
    let daemonSet: Applied | undefined;
    if (current && !current.metadata?.deletionTimestamp && !cleanup) {
      daemonSet = modeOf(current) === 'remove' && !dropped ? current : await this.switchToRemove(mirror, current, dropped);
    } else if (cleanup && !cleanup.metadata?.deletionTimestamp) {
      daemonSet = cleanup;
    } else if (nodesMayUseMirror(mirror, current) || dropped) {
      // The DaemonSet controller rolls nothing out for a DaemonSet being deleted, and its pods go with it.
      const why = cleanup
        ? 'the cleanup DaemonSet was deleted before the nodes confirmed removal'
        : timedOut
          ? `the node agent DaemonSet was deleted before the nodes were cleaned, and --node-cleanup-timeout (${Math.round(this.options.nodeCleanupTimeoutMs / 1000)}s) has passed`
          : undefined;
      daemonSet = why ? undefined : await this.startCleanupDaemonSet(mirror, current, dropped);
      if (!daemonSet) {
        if (why) await this.nodesNotCleaned(mirror, why);
        await this.removeFinalizer(mirror);
        return {};
      }
    } else {
      // Never configured any node (nodeConfig off, another mirror held them, or no node selected).
      await this.removeFinalizer(mirror);
      return {};
    }
    const nodes = nodesDone(daemonSetStatus(daemonSet));
    // A cleanup in the operator's namespace runs because the mirror's namespace is going, where
    // the node agent's pods may outlive their DaemonSet for their grace period, applying again
    // what the cleanup took away; its agents redo their removal when the files change, so the
    // finalizer gives them that long before it takes them away
    // (never more than half of --node-cleanup-timeout, which bounds the whole wait).
    const settleMs = Math.min(RELOCATED_CLEANUP_SETTLE_MS, this.options.nodeCleanupTimeoutMs / 2);
    const settled = daemonSet.metadata?.namespace === namespace || waitedMs >= settleMs;
    const done = modeOf(daemonSet) === 'remove' && nodes.complete && settled;
    if (done || timedOut) {
      if (done) {
        await events.record(mirror, 'Normal', 'NodesCleaned', `mirror configuration removed from ${nodes.desired} node(s)`);
      } else {
        await events.record(mirror, 'Warning', 'NodeCleanupTimedOut',
          `${nodes.done} of ${nodes.desired} nodes confirmed removal within ${Math.round(this.options.nodeCleanupTimeoutMs / 1000)}s; deleting anyway (runtimes fall back to the upstream registry)`);
      }
      if (isCleanupDaemonSet(daemonSet)) await api.delete('apps/v1', 'DaemonSet', daemonSet.metadata!.namespace!, daemonSet.metadata!.name!);
      await this.removeFinalizer(mirror);
      return {};
    }
    await this.writeStatus(mirror, {
      ...nodeFacts(mirror, daemonSet),
      deleting: true,
    });
    return { requeueAfterMs: Math.min(NODE_CLEANUP_POLL_MS, this.options.nodeCleanupTimeoutMs - waitedMs + 100) };
  }

  /** Inputs for a node agent in remove mode; Secrets may already be gone, and removal needs none of them. */
  private async removalInputs(mirror: RegistryMirror, url: string, agent: Applied | undefined, dropped: DroppedPlacements | undefined): Promise<DesiredInputs> {
    // Secrets the operator may no longer read (see findWhileDeleting): removal needs none of them
    const gathered = await absentIfRefused(this.gatherInputs(mirror, 'remove'));
    const inputs: DesiredInputs = gathered?.inputs ?? {
      mirror,
      image: mirror.spec.image ?? this.options.mirrorImage,
      nodeAgentImage: this.options.mirrorImage,
      checksumKey: checksumKey((await absentIfRefused(this.ownedSecret(mirror)))?.data),
      upstreamCredentials: new Map(),
      nodeAgentMode: 'remove',
    };
    const cleanupRuntimes = runtimesInDaemonSet(agent).filter((r) => !mirror.spec.nodeConfig.runtimes.includes(r));
    return { ...inputs, mirrorUrl: url, nodeAgentMode: 'remove', cleanupRuntimes, ...(dropped ? { placement: removalPlacement(mirror, dropped) } : {}) };
  }

  /** The Secret the operator owns for `mirror`, as the server has it now. */
  private ownedSecret(mirror: RegistryMirror): Promise<(SecretLike & KubeObject) | undefined> {
    return this.options.api.find<SecretLike & KubeObject>('v1', 'Secret', mirror.metadata.namespace, names(mirror).secret);
  }

  /**
   * The address the nodes were given, which is what a removal must name (the agent takes away only
   * what points at it): the running agent's --mirror, else what the Service serves, else the status.
   */
  private async mirrorAddress(mirror: RegistryMirror, agent: Applied | undefined): Promise<string | undefined> {
    const given = nodeAgentArg(agent, '--mirror');
    if (hostOf(given)) return given;
    const service = await this.findWhileDeleting<Applied>('v1', 'Service', mirror.metadata.namespace, names(mirror).service);
    return servedEndpoint(service) ?? (hostOf(mirror.status?.endpoint) ? mirror.status?.endpoint : undefined);
  }

  private async switchToRemove(mirror: RegistryMirror, current: Applied, dropped: DroppedPlacements | undefined): Promise<Applied> {
    const { api, events, logger } = this.options;
    const url = await this.mirrorAddress(mirror, current);
    if (!url) {
      logger.warn({ mirror: `${mirror.metadata.namespace}/${mirror.metadata.name}` }, 'no mirror address left to remove from nodes');
      return current;
    }
    const desired = desiredDaemonSet(await this.removalInputs(mirror, url, current, dropped));
    // already removing, and from every node it should
    if (modeOf(current) === 'remove' && samePodPlacement(current, desired)) return current;
    const daemonSet = await api.apply<Applied>(desired);
    await events.record(mirror, 'Normal', 'NodeCleanup', 'switched the node agent to remove mode; waiting for every node');
    return daemonSet;
  }

  /** Creates the cleanup DaemonSet, or says why the nodes cannot be cleaned (undefined). */
  private async startCleanupDaemonSet(mirror: RegistryMirror, agent: Applied | undefined, dropped: DroppedPlacements | undefined): Promise<Applied | undefined> {
    const { api, events } = this.options;
    // A reconcile from a cache that has not yet seen the finalizer go would start one for nobody to delete.
    const fresh = await api.find<KubeObject>(API_VERSION, KIND, mirror.metadata.namespace, mirror.metadata.name);
    if (fresh?.metadata?.uid !== mirror.metadata.uid || !fresh.metadata.finalizers?.includes(FINALIZER)) return undefined;
    const url = await this.mirrorAddress(mirror, agent);
    if (!url) {
      await this.nodesNotCleaned(mirror, 'the node agent DaemonSet was deleted before the nodes were cleaned, and no mirror address is left to remove');
      return undefined;
    }
    const inputs = await this.removalInputs(mirror, url, agent, dropped);
    try {
      const daemonSet = await api.apply<Applied>(desiredCleanupDaemonSet(inputs));
      await events.record(mirror, 'Normal', 'NodeCleanup',
        `the node agent DaemonSet was deleted before the nodes were cleaned (a foreground deletion?); DaemonSet ${names(mirror).cleanupDaemonSet} takes the configuration off them`);
      return daemonSet;
    } catch (error) {
      if (!isRefused(error)) throw error;
      // A namespace being deleted takes no new objects, and a namespaced install may have lost its
      // RoleBinding there already (findWhileDeleting): the operator's own namespace takes it instead.
      if (this.options.cleanupNamespace !== mirror.metadata.namespace) return this.startRelocatedCleanup(mirror, inputs, error as Error);
      await this.nodesNotCleaned(mirror, `the node agent DaemonSet was deleted before the nodes were cleaned, and a cleanup DaemonSet was refused: ${(error as Error).message.slice(0, 512)}`);
      return undefined;
    }
  }

  /**
   * The cleanup DaemonSet in the operator's namespace, for a mirror whose own namespace refused it:
   * one being deleted takes no new objects (and may have taken the operator's RoleBinding with it).
   */
  private async startRelocatedCleanup(mirror: RegistryMirror, inputs: DesiredInputs, refusal: Error): Promise<Applied | undefined> {
    const { api, events, logger, cleanupNamespace } = this.options;
    const { namespace } = mirror.metadata;
    try {
      const daemonSet = await api.apply<Applied>(desiredRelocatedCleanupDaemonSet(inputs, cleanupNamespace));
      const message = `the node agent DaemonSet was deleted before the nodes were cleaned, and namespace ${namespace} refused a cleanup DaemonSet (${refusal.message.slice(0, 256)}); DaemonSet ${relocatedCleanupName(mirror)} in namespace ${cleanupNamespace} takes the configuration off them`;
      // Said in the log too: the namespace being deleted refuses the Event.
      logger.info({ mirror: `${namespace}/${mirror.metadata.name}` }, message);
      await events.record(mirror, 'Normal', 'NodeCleanup', message);
      return daemonSet;
    } catch (error) {
      if (!isRefused(error)) throw error;
      await this.nodesNotCleaned(mirror, `the node agent DaemonSet was deleted before the nodes were cleaned, namespace ${namespace} refused a cleanup DaemonSet (${refusal.message.slice(0, 256)}), and so did the operator's namespace ${cleanupNamespace}: ${(error as Error).message.slice(0, 512)}`);
      return undefined;
    }
  }

  /**
   * The mirror's cleanup DaemonSet, in its own namespace or in the operator's. One the operator may
   * not read (findWhileDeleting; in the operator's namespace, RBAC of an older install) is taken as
   * absent: creating it is then refused, and the nodesNotCleaned warning says why, instead of a
   * finalize that fails for ever. One made for another RegistryMirror of this name is deleted.
   */
  private async findCleanupDaemonSet(mirror: RegistryMirror): Promise<Applied | undefined> {
    const places: [string, string][] = [[mirror.metadata.namespace, names(mirror).cleanupDaemonSet], [this.options.cleanupNamespace, relocatedCleanupName(mirror)]];
    for (const [namespace, name] of places) {
      const found = await this.findWhileDeleting<Applied>('apps/v1', 'DaemonSet', namespace, name);
      if (!found) continue;
      if (found.metadata?.annotations?.[MIRROR_UID_ANNOTATION] === mirror.metadata.uid) return found;
      // Left by an earlier RegistryMirror of this name: not this one's cleanup.
      this.options.logger.info({ mirror: `${mirror.metadata.namespace}/${mirror.metadata.name}`, daemonSet: `${namespace}/${name}` }, 'deleting a cleanup DaemonSet left by an earlier RegistryMirror of this name');
      await this.options.api.delete('apps/v1', 'DaemonSet', namespace, name);
    }
    return undefined;
  }

  /**
   * A read made while a RegistryMirror is being deleted, where a refusal counts as absent. A
   * namespaced install (the chart's watchNamespaces) is granted the objects of a namespace by a
   * RoleBinding in it, which the namespace controller deletes with everything else when the
   * namespace goes; its rights on RegistryMirrors themselves are bound cluster-wide (operator/rbac.ts),
   * so the finalizer carries on from the RegistryMirror and its status.
   */
  private findWhileDeleting<T extends KubeObject>(apiVersion: string, kind: string, namespace: string, name: string): Promise<T | undefined> {
    return absentIfRefused(this.options.api.find<T>(apiVersion, kind, namespace, name));
  }

  private async nodesNotCleaned(mirror: RegistryMirror, why: string): Promise<void> {
    const { events, logger } = this.options;
    const nodes = mirror.status?.nodes?.desired;
    const message = `nodes not cleaned: ${why}. ${nodes ? `${nodes} node(s)` : 'Nodes'} may still point their runtimes at ${mirror.status?.endpoint ?? 'the mirror'} (they fall back to the upstream registries while it is gone); see "Manual node cleanup" in the README to remove it`;
    logger.warn({ mirror: `${mirror.metadata.namespace}/${mirror.metadata.name}` }, message);
    await events.record(mirror, 'Warning', 'NodeCleanupSkipped', message);
  }

  /** Adds the operator's finalizer with server-side apply (the field manager owns only it, and the record of dropped placements). */
  private async addFinalizer(mirror: RegistryMirror): Promise<void> {
    await this.writeMirrorMetadata(mirror, readDroppedPlacements(mirror.metadata.annotations));
  }

  /**
   * Takes the operator's finalizer off, whoever put it in the list. Server-side apply only drops
   * what no other manager owns, and a manifest exported with the finalizer and created again owns
   * it too; so the entry is removed by its index, with a test that it is still there (a list that
   * changed meanwhile is read again), and the answer is checked.
   */
  private async removeFinalizer(mirror: RegistryMirror): Promise<void> {
    const { api } = this.options;
    const { name, namespace, uid } = mirror.metadata;
    for (let attempt = 0; attempt < 5; attempt++) {
      const current = await api.find<KubeObject>(API_VERSION, KIND, namespace, name);
      if (!current || current.metadata?.uid !== uid) return;
      const index = current.metadata?.finalizers?.indexOf(FINALIZER) ?? -1;
      if (index < 0) return;
      try {
        const after = await api.jsonPatch<KubeObject>(API_VERSION, KIND, namespace, name, [
          { op: 'test', path: `/metadata/finalizers/${index}`, value: FINALIZER },
          { op: 'remove', path: `/metadata/finalizers/${index}` },
        ]);
        if (!after?.metadata?.finalizers?.includes(FINALIZER)) return;
      } catch (error) {
        if (isNotFound(error)) return;
        if (!isStale(error)) throw error;
      }
    }
    throw new Error(`the finalizer ${FINALIZER} is still on ${namespace}/${name} after 5 attempts to remove it`);
  }

  private async writeStatus(mirror: RegistryMirror, observed: Observed): Promise<void> {
    const { api, events, logger } = this.options;
    const status = desiredStatus(mirror, observed, this.now());
    const before = mirror.status;
    if (sameStatus(before, status)) return;
    const { name, namespace } = mirror.metadata;
    try {
      await api.apply({ apiVersion: API_VERSION, kind: KIND, metadata: { name, namespace }, status }, 'status');
    } catch (error) {
      if (isNotFound(error)) return;
      throw error;
    }
    const previous = before?.conditions?.find((c) => c.type === READY);
    const ready = status.conditions!.find((c) => c.type === READY)!;
    if (previous?.reason !== ready.reason) {
      const warning = [...INPUT_PROBLEM_REASONS, 'ApplyFailed', 'NodeConfigConflict'].includes(ready.reason);
      await events.record(mirror, warning ? 'Warning' : 'Normal', ready.reason, ready.message);
      logger.info({ mirror: `${namespace}/${name}`, ready: ready.status, reason: ready.reason }, ready.message);
    }
  }
}

/** Per kind of upstream CA source: the Ready reasons of its problems, and the bytes of a key. */
const CA_SOURCES: Record<UpstreamCaRef['kind'], { notFound: Problem['reason']; invalid: Problem['reason']; bytes: (object: CaSourceObject, key: string) => Buffer | undefined }> = {
  Secret: { notFound: 'SecretNotFound', invalid: 'InvalidCredentials', bytes: (secret, key) => fromBase64(secret.data?.[key]) },
  // A key is in data (text, where trust-manager and OpenShift put PEM bundles) or in binaryData (base64).
  ConfigMap: {
    notFound: 'ConfigMapNotFound',
    invalid: 'InvalidConfigMap',
    bytes: (configMap, key) => (configMap.data?.[key] !== undefined ? Buffer.from(configMap.data[key], 'utf8') : fromBase64(configMap.binaryData?.[key])),
  },
};

type CaSourceObject = KubeObject & { data?: Record<string, string>; binaryData?: Record<string, string> };

const fromBase64 = (text: string | undefined) => (text === undefined ? undefined : Buffer.from(text, 'base64'));

/**
 * An upstream's CA bundle from the Secret or ConfigMap its spec names, read by name and checked by
 * the mirror's own rule (a bundle it refuses would crash-loop the pods rolled onto it), as the digest
 * that rolls the mirror when it changes; or the problem with it, naming the object, `what` it is for
 * and the key.
 */
async function readUpstreamCa(api: KubeApi, namespace: string, ref: UpstreamCaRef, what: string): Promise<{ digest: string } | { problem: Problem }> {
  const source = CA_SOURCES[ref.kind];
  const named = `${ref.kind} ${ref.name} (${what})`;
  const found = await api.find<CaSourceObject>('v1', ref.kind, namespace, ref.name);
  if (!found) return { problem: { reason: source.notFound, message: `${named} not found in namespace ${namespace}` } };
  const bytes = source.bytes(found, ref.key);
  if (!bytes?.length) return { problem: { reason: source.invalid, message: `${named} has no key "${ref.key}"` } };
  const problem = caBundleProblem(bytes.toString('utf8'));
  if (problem) return { problem: { reason: source.invalid, message: `${named}, key "${ref.key}", ${problem}` } };
  // Over the base64 of the bytes, as a Secret's data holds them: a Secret's digest is what it was
  // before ConfigMaps could be named, so no mirror rolls for the upgrade.
  return { digest: createHash('sha256').update(bytes.toString('base64')).digest('hex') };
}

/**
 * An error whose message may be shown (an Event, the log). The builders work on Secret data, and an
 * error of the language's own (a TypeError naming the value it got, a SyntaxError quoting the text)
 * may quote it: such a message is withheld, its kind said. The API server's and the network's
 * errors, and the reconciler's own, are shown as they are.
 */
function withheldIfLocal(error: unknown): Error {
  if (error instanceof TypeError || error instanceof RangeError || error instanceof SyntaxError) {
    return new Error(`building the owned objects failed with a ${error.name}; its message is withheld, as it may quote Secret data`);
  }
  return error as Error;
}

/** The storage the existing claim asks for, as the API server wrote it. */
function claimRequest(claim: Applied | undefined): string | undefined {
  const resources = claim?.spec?.resources as { requests?: { storage?: string } } | undefined;
  return resources?.requests?.storage;
}

/** The claim's size when it is larger than spec.storage.size asks (it was grown, and cannot shrink). */
function sizeKept(mirror: RegistryMirror, claim: Applied): string | undefined {
  const request = claimRequest(claim);
  return request && request !== mirror.spec.storage.size && claimSize({ size: mirror.spec.storage.size, claimSize: request }) === request ? request : undefined;
}

/** What to do about a refused claim that was asked to grow. */
function resizeHint(mirror: RegistryMirror, claim: Applied | undefined): string {
  const request = claimRequest(claim);
  if (!request || claimSize({ size: mirror.spec.storage.size, claimSize: request }) === request) return '';
  return ` (spec.storage.size ${mirror.spec.storage.size} asks more than the claim's ${request}: its StorageClass must allow volume expansion and the claim be bound; or set storage.size back to ${request})`;
}

function sameStatus(a: RegistryMirrorStatus | undefined, b: RegistryMirrorStatus): boolean {
  return JSON.stringify(normalise(a)) === JSON.stringify(normalise(b));
}

function normalise(status: RegistryMirrorStatus | undefined) {
  if (!status) return undefined;
  return {
    observedGeneration: status.observedGeneration,
    endpoint: status.endpoint,
    nodes: status.nodes ? { desired: status.nodes.desired, configured: status.nodes.configured } : undefined,
    conditions: [...(status.conditions ?? [])]
      .sort((x, y) => x.type.localeCompare(y.type))
      .map((c) => ({ type: c.type, status: c.status, reason: c.reason, message: c.message, lastTransitionTime: c.lastTransitionTime, observedGeneration: c.observedGeneration })),
  };
}

function workloadStatus(object: Applied): WorkloadStatus {
  const status = (object.status ?? {}) as WorkloadStatus;
  return { ...status, generation: object.metadata?.generation };
}

function daemonSetStatus(object: Applied): DaemonSetStatus {
  const status = (object.status ?? {}) as DaemonSetStatus;
  return { ...status, generation: object.metadata?.generation };
}

/**
 * Runtimes the node agent DaemonSet was given that nodeConfig.runtimes no longer lists: the agents
 * take their configuration away (--remove-runtimes) until a template that does so runs, ready, on
 * every node; then they are dropped, with their host mounts.
 */
export function pendingRuntimeCleanup(existing: Applied | undefined, runtimes: readonly Runtime[]): Runtime[] {
  if (!existing) return [];
  const dropped = runtimesInDaemonSet(existing).filter((r) => !runtimes.includes(r));
  if (dropped.length === 0) return [];
  const removing = modeOf(existing) === 'remove' ? runtimesInDaemonSet(existing) : runtimesIn(existing, '--remove-runtimes');
  const cleaned = dropped.every((r) => removing.includes(r)) && nodesDone(daemonSetStatus(existing)).complete;
  return cleaned ? [] : dropped;
}

/** What `read` gives, or undefined where the server refused it (findWhileDeleting). */
async function absentIfRefused<T>(read: Promise<T>): Promise<T | undefined> {
  try {
    return await read;
  } catch (error) {
    if (isRefused(error)) return undefined;
    throw error;
  }
}

/** The first few names, and how many more. */
function shortList(names: string[], shown = 5): string {
  return names.length > shown ? `${names.slice(0, shown).join(', ')} and ${names.length - shown} more` : names.join(', ');
}

/** A cleanup DaemonSet (in the mirror's namespace or the operator's), not the node agent DaemonSet. */
function isCleanupDaemonSet(daemonSet: Applied): boolean {
  return daemonSet.metadata?.labels?.['app.kubernetes.io/component'] === 'node-cleanup';
}


/** Where a removal runs while nodes a narrowed placement left behind are still to be cleaned: the current placement's nodes and theirs. */
function removalPlacement(mirror: RegistryMirror, dropped: DroppedPlacements): PodPlacement {
  const placements = withPlacement(dropped.placements, specPlacement(mirror));
  return cleanupPlacement(placements, anyOf(placements));
}

/** Whether a running DaemonSet's pods go where `desired`'s would. */
function samePodPlacement(running: Applied, desired: { spec: { template: { spec: PodPlacement } } }): boolean {
  const of = (pod: PodPlacement | undefined) => stableJson({ nodeSelector: pod?.nodeSelector, affinity: pod?.affinity, tolerations: pod?.tolerations });
  return of((running.spec?.template as { spec?: PodPlacement } | undefined)?.spec) === of(desired.spec.template.spec);
}

function stableJson(value: unknown): string {
  return JSON.stringify(value, (_key, v: unknown) => (v && typeof v === 'object' && !Array.isArray(v) ? Object.fromEntries(Object.entries(v).sort(([a], [b]) => a.localeCompare(b))) : v));
}

/**
 * The address the Service serves at: its ClusterIP, with the scheme its port is named for (the
 * mirror's, applied together with it), not the spec's: a spec.tls whose Secret is missing changes
 * nothing that runs.
 */
function servedEndpoint(service: Applied | undefined): string | undefined {
  const ip = service?.spec?.clusterIP as string | undefined;
  if (!ip || ip === 'None') return undefined;
  const port = (service?.spec?.ports as { name?: string }[] | undefined)?.[0];
  return endpointAt(port?.name === 'https' ? 'https' : 'http', ip);
}

function hostOf(url: string | undefined): string | undefined {
  if (!url) return undefined;
  try {
    return new URL(url).hostname.replace(/^\[|\]$/g, '');
  } catch {
    return undefined;
  }
}

/**
 * Whether nodes may still point at the mirror although its node agent DaemonSet is gone or going:
 * its last status (or the DaemonSet's) counted nodes that were, or were to be, configured.
 */
function nodesMayUseMirror(mirror: RegistryMirror, agent: Applied | undefined): boolean {
  const scheduled = (agent?.status?.desiredNumberScheduled as number | undefined) ?? 0;
  const nodes = mirror.status?.nodes;
  return scheduled > 0 || (nodes?.configured ?? 0) > 0 || (mirror.spec.nodeConfig.enabled && (nodes?.desired ?? 0) > 0);
}

/** What the status needs to know of the mirror's replicas and its node agent, wherever it is written from. */
function nodeFacts(mirror: RegistryMirror, daemonSet: Applied | undefined): Pick<Observed, 'wantedReplicas' | 'daemonSet' | 'nodeAgentMode' | 'nodeConfigEnabled'> {
  return {
    wantedReplicas: mirror.spec.replicas,
    daemonSet: daemonSet ? daemonSetStatus(daemonSet) : undefined,
    nodeAgentMode: daemonSet ? modeOf(daemonSet) : undefined,
    nodeConfigEnabled: mirror.spec.nodeConfig.enabled,
  };
}

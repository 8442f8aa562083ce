// The node agent's DaemonSet (DESIGN.md's node agent contract): it points each node's runtime at
// the mirror's ClusterIP, or, in remove mode, takes that configuration away again. The finalizer
// switches the mode and waits for every pod to report ready in it before the objects go.
import { createHash } from 'node:crypto';
import {
  FIELD_MANAGER, NODE_AGENT_READY_PORT, PATHS, RUNTIME_MOUNTS, defaultRegistry, endpoint, keyedChecksum, labels, metadata, names, selector, type DesiredInputs,
} from './inputs.ts';
import { NODE_PASSWORD_KEY, NODE_USERNAME_KEY } from './secret.ts';
import type { RegistryMirror, Runtime } from '../api/registry-mirror.ts';
import { podPlacement, specPlacement } from '../placement.ts';

export const MODE_ANNOTATION = 'regmirror.dev/node-agent-mode';

/** The mode a node agent DaemonSet runs its agents in, from its annotation. */
export function modeOf(daemonSet: { metadata?: { annotations?: Record<string, string> } }): 'apply' | 'remove' {
  return daemonSet.metadata?.annotations?.[MODE_ANNOTATION] === 'remove' ? 'remove' : 'apply';
}
/** On the pod template: a keyed hash of the nodes' pull credentials, so new ones roll the agents (they read them from env at start). */
export const CREDENTIALS_CHECKSUM_ANNOTATION = 'regmirror.dev/credentials-checksum';

export function nodeCredentialsChecksum(credentials: NonNullable<DesiredInputs['nodeCredentials']>, key: string): string {
  return keyedChecksum(key, JSON.stringify([credentials.username, credentials.password]));
}

/** Runtimes the agent touches: the configured ones, and those dropped whose configuration is still being taken away. */
function touchedRuntimes(inputs: DesiredInputs): Runtime[] {
  const { runtimes } = inputs.mirror.spec.nodeConfig;
  return [...runtimes, ...(inputs.cleanupRuntimes ?? []).filter((r) => !runtimes.includes(r))];
}

export function nodeAgentArgs(inputs: DesiredInputs): string[] {
  const { mirror } = inputs;
  const mirrorUrl = inputs.mirrorUrl ?? (inputs.serviceIP ? endpoint(mirror, inputs.serviceIP) : undefined);
  if (!mirrorUrl) throw new Error('the node agent needs the Service ClusterIP');
  const { runtimes } = mirror.spec.nodeConfig;
  const touched = touchedRuntimes(inputs);
  const dropped = touched.filter((r) => !runtimes.includes(r));
  // In remove mode every runtime's configuration goes; in apply mode the dropped ones' only.
  const [apply, remove] = inputs.nodeAgentMode === 'remove' ? [touched, []] : [runtimes, dropped];
  return [
    'node-agent',
    '--mirror', mirrorUrl,
    '--registries', mirror.spec.upstreams.map((u) => u.registry).join(','),
    '--default-registry', defaultRegistry(mirror.spec),
    // whose files the agent writes: they stay its own when --mirror changes (a new ClusterIP, spec.tls)
    '--owner', `${mirror.metadata.namespace}/${mirror.metadata.name}`,
    '--mode', inputs.nodeAgentMode,
    '--runtimes', apply.join(','),
    ...(remove.length > 0 ? ['--remove-runtimes', remove.join(',')] : []),
    // kubelet probes the pod's IP, not its loopback.
    '--ready-listen', `0.0.0.0:${NODE_AGENT_READY_PORT}`,
    ...touched.flatMap((runtime) => RUNTIME_MOUNTS[runtime].flags),
    ...(inputs.tlsCaKey ? ['--mirror-ca', `${PATHS.nodeAgentCaDir}/ca.crt`] : []),
  ];
}

/** The value a running node agent DaemonSet gives one of the agent's flags (nodeAgentArgs), if any. */
export function nodeAgentArg(daemonSet: { spec?: unknown } | undefined, flag: string): string | undefined {
  const spec = daemonSet?.spec as { template?: { spec?: { containers?: { args?: string[] }[] } } } | undefined;
  const args = spec?.template?.spec?.containers?.[0]?.args ?? [];
  const at = args.indexOf(flag);
  return at >= 0 ? args[at + 1] : undefined;
}

/** Runtimes listed in one of the agent's flags of a running DaemonSet. */
export function runtimesIn(daemonSet: { spec?: unknown } | undefined, flag: '--runtimes' | '--remove-runtimes'): Runtime[] {
  return (nodeAgentArg(daemonSet, flag) ?? '').split(',').filter((r): r is Runtime => r in RUNTIME_MOUNTS);
}

/** The runtimes a running node agent DaemonSet was given, to apply or to take away. */
export function runtimesInDaemonSet(daemonSet: { spec?: unknown } | undefined): Runtime[] {
  return [...new Set([...runtimesIn(daemonSet, '--runtimes'), ...runtimesIn(daemonSet, '--remove-runtimes')])];
}

export function desiredDaemonSet(inputs: DesiredInputs) {
  const { mirror } = inputs;
  const n = names(mirror);
  const runtimes = touchedRuntimes(inputs);
  const mounts = runtimes.flatMap((runtime) => RUNTIME_MOUNTS[runtime].mounts);
  // dockerd and crio re-read their registry configuration on SIGHUP, which the agent can only
  // send from the host's PID namespace (containerd reads hosts.toml on every pull)
  const signalsDaemon = runtimes.includes('docker') || runtimes.includes('crio');
  const env: Record<string, unknown>[] = [
    { name: 'NODE_NAME', valueFrom: { fieldRef: { fieldPath: 'spec.nodeName' } } },
  ];
  if (inputs.nodeCredentials) {
    // Pull credentials for a mirror with auth on; the agent writes them into the runtime's config.
    env.push(
      { name: 'REGMIRROR_MIRROR_USERNAME', valueFrom: { secretKeyRef: { name: n.secret, key: NODE_USERNAME_KEY } } },
      { name: 'REGMIRROR_MIRROR_PASSWORD', valueFrom: { secretKeyRef: { name: n.secret, key: NODE_PASSWORD_KEY } } },
    );
  }
  return {
    apiVersion: 'apps/v1',
    kind: 'DaemonSet',
    metadata: {
      ...metadata(mirror, n.daemonSet, 'node-agent'),
      annotations: { [MODE_ANNOTATION]: inputs.nodeAgentMode },
    },
    spec: {
      selector: { matchLabels: selector(mirror, 'node-agent') },
      // Runtimes fall back to the real registry, so switching every node at once is safe, and the
      // finalizer's removal finishes sooner.
      updateStrategy: { type: 'RollingUpdate', rollingUpdate: { maxUnavailable: '100%' } },
      template: {
        metadata: {
          labels: labels(mirror, 'node-agent'),
          annotations: {
            [MODE_ANNOTATION]: inputs.nodeAgentMode,
            ...(inputs.nodeCredentials ? { [CREDENTIALS_CHECKSUM_ANNOTATION]: nodeCredentialsChecksum(inputs.nodeCredentials, inputs.checksumKey) } : {}),
          },
        },
        spec: {
          automountServiceAccountToken: false,
          enableServiceLinks: false,
          hostPID: signalsDaemon,
          ...(inputs.placement ?? podPlacement(specPlacement(mirror))),
          securityContext: { seccompProfile: { type: 'RuntimeDefault' } },
          containers: [
            {
              name: 'node-agent',
              image: inputs.nodeAgentImage,
              command: ['regmirror'],
              args: nodeAgentArgs(inputs),
              env,
              ports: [{ name: 'ready', containerPort: NODE_AGENT_READY_PORT, protocol: 'TCP' }],
              // Ready means this node's runtimes use the mirror (apply) or no longer do (remove):
              // the finalizer waits on exactly this.
              readinessProbe: { httpGet: { path: '/readyz', port: 'ready' }, periodSeconds: 5, failureThreshold: 2 },
              livenessProbe: { httpGet: { path: '/healthz', port: 'ready' }, initialDelaySeconds: 10, periodSeconds: 20, failureThreshold: 3 },
              resources: { requests: { cpu: '10m', memory: '32Mi' }, limits: { memory: '128Mi' } },
              securityContext: {
                // Host runtime configuration is root's; the agent needs nothing else of root.
                runAsUser: 0,
                runAsNonRoot: false,
                allowPrivilegeEscalation: false,
                readOnlyRootFilesystem: true,
                capabilities: { drop: ['ALL'], add: ['CHOWN', 'DAC_OVERRIDE', 'FOWNER', ...(signalsDaemon ? ['KILL'] : [])] },
              },
              volumeMounts: [
                { name: 'tmp', mountPath: '/tmp' },
                ...mounts.map((m) => ({ name: m.name, mountPath: m.path, ...(m.readOnly ? { readOnly: true } : {}) })),
                ...(inputs.tlsCaKey ? [{ name: 'mirror-ca', mountPath: PATHS.nodeAgentCaDir, readOnly: true }] : []),
              ],
            },
          ],
          volumes: [
            { name: 'tmp', emptyDir: { sizeLimit: '16Mi' } },
            // Only the CA from the TLS Secret, never its key; kubelet updates it on rotation (no subPath).
            ...(inputs.tlsCaKey && mirror.spec.tls
              ? [{ name: 'mirror-ca', secret: { secretName: mirror.spec.tls.secretName, items: [{ key: inputs.tlsCaKey, path: 'ca.crt' }], defaultMode: 0o444, optional: true } }]
              : []),
            ...mounts.map((m) => ({ name: m.name, hostPath: { path: m.host, type: m.readOnly && m.host === '/var/run' ? 'Directory' : 'DirectoryOrCreate' } })),
          ],
        },
      },
    },
  };
}

/**
 * The node agent in remove mode under a DaemonSet of its own, for when the RegistryMirror's
 * DaemonSet was deleted before its nodes were clean: a foreground cascade (kubectl
 * --cascade=foreground, Argo CD) has the garbage collector delete dependents before the owner, and
 * the DaemonSet controller rolls nothing out for a DaemonSet being deleted. It has no owner
 * reference, so the garbage collector leaves it alone; the operator deletes it once the nodes are
 * clean. Its own selector keeps it apart from the pods of the DaemonSet being deleted.
 */
export function desiredCleanupDaemonSet(inputs: DesiredInputs) {
  const { mirror } = inputs;
  return asCleanup(desiredDaemonSet({ ...inputs, nodeAgentMode: 'remove' }), {
    name: names(mirror).cleanupDaemonSet,
    namespace: mirror.metadata.namespace,
    uid: mirror.metadata.uid,
    labels: labels(mirror, 'node-cleanup'),
    selector: selector(mirror, 'node-cleanup'),
  });
}

/** On a cleanup DaemonSet in the operator's namespace: the RegistryMirror it cleans the nodes of. */
export const MIRROR_NAMESPACE_LABEL = 'regmirror.dev/mirror-namespace';
export const MIRROR_NAME_LABEL = 'regmirror.dev/mirror-name';

/**
 * The name of a mirror's cleanup DaemonSet in the operator's namespace: mirrors of every namespace
 * meet there, so it is keyed by a hash of namespace/name (names alone collide; both together can be
 * 63 + 40 characters, past what a DaemonSet's name should be), and the labels say whose it is.
 */
export function relocatedCleanupName(mirror: RegistryMirror): string {
  const key = createHash('sha256').update(`${mirror.metadata.namespace}/${mirror.metadata.name}`).digest('hex').slice(0, 16);
  return `regmirror-node-cleanup-${key}`;
}

/**
 * The cleanup DaemonSet for a RegistryMirror whose namespace is being deleted, which takes no new
 * objects: it runs in the operator's namespace instead. A pod there cannot reference the mirror
 * namespace's Secrets, and remove mode needs none of them (node-agent/reconcile.ts: credentials
 * and --mirror-ca are read only when applying; the files apply wrote, CA files included, are found
 * by the mirror's address), so the nodes' pull credentials and the CA volume are left out. An owner
 * reference cannot point into another namespace either: the operator deletes it when done.
 */
export function desiredRelocatedCleanupDaemonSet(inputs: DesiredInputs, namespace: string) {
  const { mirror } = inputs;
  const whose = { [MIRROR_NAMESPACE_LABEL]: mirror.metadata.namespace, [MIRROR_NAME_LABEL]: mirror.metadata.name };
  // No app.kubernetes.io/instance: a mirror of the same name in this namespace would select these pods.
  const selected = { 'app.kubernetes.io/name': 'regmirror', 'app.kubernetes.io/component': 'node-cleanup', ...whose };
  return asCleanup(desiredDaemonSet({ ...inputs, nodeAgentMode: 'remove', nodeCredentials: undefined, tlsCaKey: undefined }), {
    name: relocatedCleanupName(mirror),
    namespace,
    uid: mirror.metadata.uid,
    labels: { ...selected, 'app.kubernetes.io/managed-by': FIELD_MANAGER },
    selector: selected,
  });
}

/**
 * On a cleanup DaemonSet: the uid of the RegistryMirror it cleans for. Found by name alone, one left
 * behind (its mirror's finalizer taken off by hand, the operator gone mid-cleanup) would pass for the
 * cleanup of a later mirror of the same name; the finalizer deletes one whose uid is not its mirror's.
 */
export const MIRROR_UID_ANNOTATION = 'regmirror.dev/mirror-uid';

/** A remove-mode node agent DaemonSet made into a cleanup one: its own name, place, labels and selector, and no owner. */
/** A node agent DaemonSet under another name, with its own labels and selector (a cleanup one beside the agents). */
export function relabelled(daemonSet: ReturnType<typeof desiredDaemonSet>, name: string, labels: Record<string, string>, selector: Record<string, string>) {
  return {
    ...daemonSet,
    metadata: { ...daemonSet.metadata, name, labels },
    spec: {
      ...daemonSet.spec,
      selector: { matchLabels: selector },
      template: { ...daemonSet.spec.template, metadata: { ...daemonSet.spec.template.metadata, labels } },
    },
  };
}

function asCleanup(daemonSet: ReturnType<typeof desiredDaemonSet>, where: { name: string; namespace: string; uid: string; labels: Record<string, string>; selector: Record<string, string> }) {
  const cleanup = relabelled(daemonSet, where.name, where.labels, where.selector);
  const { ownerReferences: _owned, ...meta } = cleanup.metadata;
  return { ...cleanup, metadata: { ...meta, namespace: where.namespace, annotations: { ...meta.annotations, [MIRROR_UID_ANNOTATION]: where.uid } } };
}

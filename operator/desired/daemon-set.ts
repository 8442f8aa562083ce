// The node agent's DaemonSet (DESIGN.md's node agent contract): it points each node's runtime at
// the mirror's ClusterIP, or, in remove mode, takes that configuration away again. The finalizer
// switches the mode and waits for every pod to report ready in it before the objects go.
import { HOST_PATHS, endpoint, labels, metadata, names, selector, type DesiredInputs } from './inputs.ts';
import { NODE_PASSWORD_KEY, NODE_USERNAME_KEY } from './secret.ts';

export const MODE_ANNOTATION = 'regmirror.dev/node-agent-mode';

export function nodeAgentArgs(inputs: DesiredInputs): string[] {
  const { mirror } = inputs;
  if (!inputs.serviceIP) throw new Error('the node agent needs the Service ClusterIP');
  const args = [
    'node-agent',
    '--mirror', endpoint(mirror, inputs.serviceIP),
    '--registries', mirror.spec.upstreams.map((u) => u.registry).join(','),
    '--mode', inputs.nodeAgentMode,
  ];
  for (const runtime of mirror.spec.nodeConfig.runtimes) {
    const path = HOST_PATHS[runtime];
    args.push(path.flag, path.value);
  }
  return args;
}

export function desiredDaemonSet(inputs: DesiredInputs) {
  const { mirror } = inputs;
  const { nodeConfig } = mirror.spec;
  const n = names(mirror);
  const runtimes = nodeConfig.runtimes;
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
        metadata: { labels: labels(mirror, 'node-agent'), annotations: { [MODE_ANNOTATION]: inputs.nodeAgentMode } },
        spec: {
          automountServiceAccountToken: false,
          enableServiceLinks: false,
          // dockerd re-reads daemon.json on SIGHUP, which the agent can only send from the host's PID namespace.
          hostPID: runtimes.includes('docker'),
          ...(nodeConfig.nodeSelector && Object.keys(nodeConfig.nodeSelector).length > 0 ? { nodeSelector: nodeConfig.nodeSelector } : {}),
          ...(nodeConfig.tolerations?.length ? { tolerations: nodeConfig.tolerations } : {}),
          securityContext: { seccompProfile: { type: 'RuntimeDefault' } },
          containers: [
            {
              name: 'node-agent',
              image: inputs.nodeAgentImage,
              command: ['regmirror'],
              args: nodeAgentArgs(inputs),
              env,
              resources: { requests: { cpu: '10m', memory: '32Mi' }, limits: { memory: '128Mi' } },
              securityContext: {
                // Host runtime configuration is root's; the agent needs nothing else of root.
                runAsUser: 0,
                runAsNonRoot: false,
                allowPrivilegeEscalation: false,
                readOnlyRootFilesystem: true,
                capabilities: { drop: ['ALL'], add: ['CHOWN', 'DAC_OVERRIDE', 'FOWNER', ...(runtimes.includes('docker') ? ['KILL'] : [])] },
              },
              volumeMounts: runtimes.map((runtime) => ({ name: runtime, mountPath: HOST_PATHS[runtime].mount })),
            },
          ],
          volumes: runtimes.map((runtime) => ({
            name: runtime,
            hostPath: { path: HOST_PATHS[runtime].host, type: 'DirectoryOrCreate' },
          })),
        },
      },
    },
  };
}

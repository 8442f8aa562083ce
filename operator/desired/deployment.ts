// The mirror's Deployment. The pod template carries a keyed checksum of everything the mirror reads
// at start (config, credentials, certificate, upstream CAs), so changing any of them rolls the pods.
import { parseQuantity } from '../../common/quantity.ts';
import { desiredConfigMap } from './config-map.ts';
import { desiredSecret } from './secret.ts';
import {
  CHECKSUM_ANNOTATION, MIRROR_PORT, PATHS, keyedChecksum, labels, metadata, names, selector, upstreamCaFileName, upstreamCaRef, type DesiredInputs,
} from './inputs.ts';

const DEFAULT_RESOURCES = {
  requests: { cpu: '100m', memory: '128Mi' },
  limits: { memory: '1Gi' },
};

/**
 * After SIGTERM the mirror serves on this long with /readyz failing, so the Service drops the pod
 * before it refuses connections (Kubernetes takes a pod out of the endpoints while it is told to
 * stop, not before), then responses in flight get up to SHUTDOWN_GRACE. The pod's grace period
 * covers both, with room to exit.
 */
const SHUTDOWN_DELAY_SECONDS = 5;
const SHUTDOWN_GRACE_SECONDS = 25;
const TERMINATION_GRACE_SECONDS = SHUTDOWN_DELAY_SECONDS + SHUTDOWN_GRACE_SECONDS + 5;

/** Non-root user and group the mirror runs as; the volume is group-writable for it (fsGroup). */
export const MIRROR_UID = 65532;

/**
 * The user's resources over the defaults. A memory request above the default limit, with no limit
 * given, raises the limit to the request: Kubernetes refuses a request above its limit, and the
 * user asked for that much.
 */
export function mirrorResources(resources: { requests?: Record<string, string>; limits?: Record<string, string> } | undefined) {
  const requests = { ...DEFAULT_RESOURCES.requests, ...resources?.requests };
  const limits: Record<string, string> = { ...DEFAULT_RESOURCES.limits, ...resources?.limits };
  if (resources?.limits?.memory === undefined && (parseQuantity(requests.memory) ?? 0) > (parseQuantity(limits.memory!) ?? 0)) {
    limits.memory = requests.memory;
  }
  return { requests, limits };
}

export function configChecksum(inputs: DesiredInputs): string {
  return keyedChecksum(
    inputs.checksumKey,
    JSON.stringify(desiredConfigMap(inputs).data),
    JSON.stringify(desiredSecret(inputs).data),
    inputs.tlsDigest ?? '',
    // nothing at all without upstream CAs: the checksum of a mirror without them stays what it was
    inputs.upstreamCas?.size ? JSON.stringify([...inputs.upstreamCas].sort()) : '',
  );
}

/**
 * The user's Secrets and ConfigMaps of spec.upstreams[].caSecretRef and caConfigMapRef in one
 * read-only volume, each key at the path the config names (upstreamCaFileName): a projected volume
 * takes both kinds, and only the named key of each is mounted. A CA is public: readable by all,
 * unlike the owned Secret.
 */
function upstreamCaVolume(inputs: DesiredInputs): Record<string, unknown> | undefined {
  const sources = inputs.mirror.spec.upstreams.flatMap((upstream, index) => {
    const ref = upstreamCaRef(upstream);
    if (!ref || !inputs.upstreamCas?.has(upstream.registry)) return [];
    return [{ [ref.kind === 'Secret' ? 'secret' : 'configMap']: { name: ref.name, items: [{ key: ref.key, path: upstreamCaFileName(index) }] } }];
  });
  return sources.length > 0 ? { name: 'upstream-ca', projected: { sources, defaultMode: 0o444 } } : undefined;
}

export function desiredDeployment(inputs: DesiredInputs) {
  const { mirror } = inputs;
  const { spec } = mirror;
  const n = names(mirror);
  const scheme = spec.tls ? 'HTTPS' : 'HTTP';
  const probe = (path: string, periodSeconds: number, failureThreshold: number) => ({
    httpGet: { path, port: 'registry', scheme },
    periodSeconds,
    timeoutSeconds: 3,
    failureThreshold,
  });
  const volumes: Record<string, unknown>[] = [
    { name: 'config', configMap: { name: n.configMap } },
    { name: 'secrets', secret: { secretName: n.secret, defaultMode: 0o440 } },
    { name: 'storage', persistentVolumeClaim: { claimName: n.pvc } },
    { name: 'tmp', emptyDir: { sizeLimit: '64Mi' } },
  ];
  const volumeMounts: Record<string, unknown>[] = [
    { name: 'config', mountPath: PATHS.configDir, readOnly: true },
    { name: 'secrets', mountPath: PATHS.secretsDir, readOnly: true },
    { name: 'storage', mountPath: PATHS.storage },
    { name: 'tmp', mountPath: '/tmp' },
  ];
  const upstreamCa = upstreamCaVolume(inputs);
  if (upstreamCa) {
    volumes.push(upstreamCa);
    volumeMounts.push({ name: 'upstream-ca', mountPath: PATHS.upstreamCaDir, readOnly: true });
  }
  if (spec.tls) {
    volumes.push({ name: 'tls', secret: { secretName: spec.tls.secretName, defaultMode: 0o440 } });
    volumeMounts.push({ name: 'tls', mountPath: PATHS.tlsDir, readOnly: true });
  }
  return {
    apiVersion: 'apps/v1',
    kind: 'Deployment',
    metadata: metadata(mirror, n.deployment, 'mirror'),
    spec: {
      replicas: spec.replicas,
      selector: { matchLabels: selector(mirror, 'mirror') },
      // One ReadWriteOnce volume cannot be attached to the old and the new pod on two nodes at once.
      strategy: spec.storage.accessMode === 'ReadWriteOnce' ? { type: 'Recreate' } : { type: 'RollingUpdate' },
      template: {
        metadata: {
          labels: labels(mirror, 'mirror'),
          annotations: { [CHECKSUM_ANNOTATION]: configChecksum(inputs) },
        },
        spec: {
          automountServiceAccountToken: false,
          enableServiceLinks: false,
          terminationGracePeriodSeconds: TERMINATION_GRACE_SECONDS,
          securityContext: {
            runAsNonRoot: true,
            runAsUser: MIRROR_UID,
            runAsGroup: MIRROR_UID,
            fsGroup: MIRROR_UID,
            seccompProfile: { type: 'RuntimeDefault' },
          },
          containers: [
            {
              name: 'mirror',
              image: inputs.image,
              command: ['regmirror'],
              args: ['mirror', '--config', PATHS.configFile, '--shutdown-delay', `${SHUTDOWN_DELAY_SECONDS}s`, '--shutdown-grace', `${SHUTDOWN_GRACE_SECONDS}s`],
              ports: [{ name: 'registry', containerPort: MIRROR_PORT, protocol: 'TCP' }],
              readinessProbe: probe('/readyz', 5, 3),
              livenessProbe: { ...probe('/healthz', 10, 6), initialDelaySeconds: 10 },
              resources: mirrorResources(spec.resources),
              securityContext: {
                allowPrivilegeEscalation: false,
                readOnlyRootFilesystem: true,
                capabilities: { drop: ['ALL'] },
              },
              volumeMounts,
            },
          ],
          volumes,
        },
      },
    },
  };
}

// What every desired-state builder reads: the RegistryMirror (defaults applied) and the facts the
// reconciler gathered for it. Builders are pure functions of this; the reconciler does the I/O.
import { createHmac } from 'node:crypto';
import { Value } from '@sinclair/typebox/value';
import { registryApiUrl } from '../../common/registry-path.ts';
import {
  API_VERSION, CA_REF_KINDS, DEFAULT_CA_KEY, KIND, RegistryMirrorSpecSchema,
  type CaRefField, type RegistryMirror, type RegistryMirrorSpec, type Runtime, type Upstream,
} from '../api/registry-mirror.ts';
import type { Credentials } from '../credentials.ts';
import type { PodPlacement } from '../placement.ts';

export const MIRROR_PORT = 5000;
export const FIELD_MANAGER = 'regmirror-operator';
export const FINALIZER = 'regmirror.dev/node-cleanup';
export const CHECKSUM_ANNOTATION = 'regmirror.dev/config-checksum';

/** Paths inside the mirror container. */
export const PATHS = {
  configDir: '/etc/regmirror',
  configFile: '/etc/regmirror/config.yaml',
  secretsDir: '/run/secrets/regmirror',
  tlsDir: '/run/secrets/regmirror-tls',
  /** The CA bundles of spec.upstreams[].caSecretRef or caConfigMapRef, one file an upstream (upstreamCaFileName). */
  upstreamCaDir: '/run/secrets/regmirror-upstream-ca',
  storage: '/var/lib/regmirror',
  /** In the node agent: the CA of an https mirror's certificate, from the TLS Secret. */
  nodeAgentCaDir: '/run/secrets/regmirror-ca',
} as const;

/**
 * Host paths each runtime's configuration lives in, where the node agent sees them, and the agent
 * flags that point it there. Paths the agent only reads are mounted read-only.
 */
export interface HostMount {
  name: string;
  host: string;
  path: string;
  readOnly: boolean;
}

export const RUNTIME_MOUNTS: Record<Runtime, { mounts: HostMount[]; flags: string[] }> = {
  containerd: {
    mounts: [
      { name: 'containerd-config', host: '/etc/containerd', path: '/host/etc/containerd', readOnly: true },
      { name: 'containerd-hosts', host: '/etc/containerd/certs.d', path: '/host/etc/containerd/certs.d', readOnly: false },
    ],
    flags: ['--containerd-hosts-dir', '/host/etc/containerd/certs.d', '--containerd-config', '/host/etc/containerd/config.toml'],
  },
  docker: {
    mounts: [
      { name: 'docker-config', host: '/etc/docker', path: '/host/etc/docker', readOnly: false },
      { name: 'docker-run', host: '/var/run', path: '/host/var/run', readOnly: true },
    ],
    flags: [
      '--docker-daemon-json', '/host/etc/docker/daemon.json', '--docker-pidfile', '/host/var/run/docker.pid', '--docker-socket', '/host/var/run/docker.sock',
      '--docker-certs-dir', '/host/etc/docker/certs.d',
    ],
  },
  crio: {
    mounts: [
      { name: 'crio-registries', host: '/etc/containers/registries.conf.d', path: '/host/etc/containers/registries.conf.d', readOnly: false },
      // an https mirror's CA goes to certs.d/<host:port>/ (and comes out again when TLS is turned off)
      { name: 'crio-certs', host: '/etc/containers/certs.d', path: '/host/etc/containers/certs.d', readOnly: false },
    ],
    flags: ['--crio-dir', '/host/etc/containers/registries.conf.d', '--crio-certs-dir', '/host/etc/containers/certs.d'],
  },
};

/** The node agent's /readyz and /healthz port (its readiness says the node is configured or clean). */
export const NODE_AGENT_READY_PORT = 9101;

export type NodeAgentMode = 'apply' | 'remove';

export interface NodeCredentials {
  username: string;
  password: string;
  /** The bcrypt htpasswd line for username/password, kept stable so pods do not roll for nothing. */
  htpasswdLine: string;
}

export interface DesiredInputs {
  mirror: RegistryMirror;
  /** The mirror image (spec.image, else the operator's --mirror-image). */
  image: string;
  /**
   * The node agent image: always the operator's --mirror-image, never spec.image. The agent runs as
   * root with host mounts on every selected node, and who may create a RegistryMirror must not
   * choose what runs there.
   */
  nodeAgentImage: string;
  /** The key of the pod templates' checksums (keyedChecksum), kept in the owned Secret. */
  checksumKey: string;
  /** Upstream credentials by registry, already normalised from the referenced Secrets. */
  upstreamCredentials: Map<string, Credentials>;
  /**
   * A digest of each upstream's CA bundle (upstreamCaRef), by registry, once read and checked: the
   * mirror mounts these Secrets and ConfigMaps, and a new CA in one rolls it. Absent: none is referenced.
   */
  upstreamCas?: Map<string, string>;
  /** Content of the user's htpasswd Secret, when spec.auth.htpasswdSecretRef is set. */
  htpasswd?: string;
  nodeCredentials?: NodeCredentials;
  /** A digest of the TLS Secret's data, so a new certificate rolls the mirror. */
  tlsDigest?: string;
  /** The TLS Secret's key the nodes trust the mirror by: ca.crt when it has one, else tls.crt (self-signed). */
  tlsCaKey?: 'ca.crt' | 'tls.crt';
  /**
   * Runtimes dropped from nodeConfig.runtimes whose configuration the node agents are still taking
   * away (their mounts stay until then); see pendingRuntimeCleanup in the reconciler.
   */
  cleanupRuntimes?: Runtime[];
  /** What the existing cache volume's claim asks for: it cannot shrink below that. */
  claimSize?: string;
  /**
   * Where the node agent's pods go, when not where nodeConfig says: a removal that must also reach
   * nodes an earlier placement selected (operator/placement.ts).
   */
  placement?: PodPlacement;
  /** The Service's ClusterIP once known; the node agent needs it (or mirrorUrl). */
  serviceIP?: string;
  /**
   * The address the node agents are given, when not the Service's as the spec says: a removal
   * names the address the nodes were given (the agent takes away only what points at it).
   */
  mirrorUrl?: string;
  nodeAgentMode: NodeAgentMode;
}

/**
 * A pod template annotation's checksum: HMAC-SHA256 under the mirror's own key. What it covers holds
 * passwords, and anyone who may read pods reads the annotation: unkeyed, a weak password could be
 * guessed from it offline.
 */
export function keyedChecksum(key: string, ...parts: string[]): string {
  const hmac = createHmac('sha256', key);
  for (const part of parts) hmac.update(part);
  return hmac.digest('hex');
}

/** The spec with every schema default filled in, as the API server would have stored it. */
export function withDefaults(spec: RegistryMirrorSpec): RegistryMirrorSpec {
  return Value.Default(RegistryMirrorSpecSchema, structuredClone(spec)) as RegistryMirrorSpec;
}

export function names(mirror: RegistryMirror) {
  const base = `regmirror-${mirror.metadata.name}`;
  return {
    configMap: base,
    secret: base,
    pvc: base,
    deployment: base,
    service: base,
    daemonSet: `${base}-node`,
    /** Takes the configuration off the nodes when the node agent DaemonSet went before it could (see the reconciler's finalize). */
    cleanupDaemonSet: `${base}-node-cleanup`,
    /** Takes the configuration off nodes a narrowed nodeConfig placement no longer selects (operator/placement.ts). */
    droppedNodesDaemonSet: `${base}-node-dropped`,
  };
}

export type Component = 'mirror' | 'node-agent' | 'node-cleanup' | 'node-dropped';

export function labels(mirror: RegistryMirror, component: Component): Record<string, string> {
  return {
    'app.kubernetes.io/name': 'regmirror',
    'app.kubernetes.io/instance': mirror.metadata.name,
    'app.kubernetes.io/component': component,
    'app.kubernetes.io/managed-by': FIELD_MANAGER,
  };
}

/** The subset of labels a selector uses; selectors are immutable, so they never grow. */
export function selector(mirror: RegistryMirror, component: Component): Record<string, string> {
  return {
    'app.kubernetes.io/name': 'regmirror',
    'app.kubernetes.io/instance': mirror.metadata.name,
    'app.kubernetes.io/component': component,
  };
}

export function ownerReference(mirror: RegistryMirror) {
  return {
    apiVersion: API_VERSION,
    kind: KIND,
    name: mirror.metadata.name,
    uid: mirror.metadata.uid,
    controller: true,
    blockOwnerDeletion: true,
  };
}

export function metadata(mirror: RegistryMirror, name: string, component: 'mirror' | 'node-agent') {
  return {
    name,
    namespace: mirror.metadata.namespace,
    labels: labels(mirror, component),
    ownerReferences: [ownerReference(mirror)],
  };
}

export function upstreamUrl(upstream: Upstream): string {
  return upstream.url ?? registryApiUrl(upstream.registry);
}

export function defaultRegistry(spec: RegistryMirrorSpec): string {
  if (spec.default) return spec.default;
  return spec.upstreams.some((u) => u.registry === 'docker.io') ? 'docker.io' : spec.upstreams[0]!.registry;
}

/** The address the spec asks the mirror to serve at (what a DaemonSet applied from it gives the agents). */
export function endpoint(mirror: RegistryMirror, serviceIP: string): string {
  return endpointAt(mirror.spec.tls ? 'https' : 'http', serviceIP);
}

export function endpointAt(scheme: 'http' | 'https', serviceIP: string): string {
  const host = serviceIP.includes(':') ? `[${serviceIP}]` : serviceIP;
  return `${scheme}://${host}:${MIRROR_PORT}`;
}

/** Secret keys for one upstream's credentials; registry names may hold ':' which keys may not. */
export function upstreamSecretKeys(index: number) {
  return { username: `upstream-${index}-username`, password: `upstream-${index}-password` };
}

/** The file, in PATHS.upstreamCaDir, of the CA bundle of the upstream at `index` (upstreamCaRef). */
export function upstreamCaFileName(index: number): string {
  return `upstream-${index}-ca.crt`;
}

/** The key of a Secret or ConfigMap an upstream's CA bundle is read from, as its spec names it. */
export interface UpstreamCaRef {
  kind: (typeof CA_REF_KINDS)[CaRefField];
  /** The field of spec.upstreams[] that names it, for messages. */
  field: CaRefField;
  name: string;
  key: string;
}

/**
 * Where an upstream's CA bundle is, when it has one. The CRD lets an upstream name one of
 * caSecretRef and caConfigMapRef only; the rest of the operator handles both through this.
 */
export function upstreamCaRef(upstream: Upstream): UpstreamCaRef | undefined {
  for (const field of Object.keys(CA_REF_KINDS) as CaRefField[]) {
    const ref = upstream[field];
    if (ref) return { kind: CA_REF_KINDS[field], field, name: ref.name, key: ref.key ?? DEFAULT_CA_KEY };
  }
  return undefined;
}

/**
 * The names of the user's objects of a kind the spec references, whose changes concern the mirror:
 * the Secrets of upstream credentials, upstream CAs, htpasswd and TLS; the ConfigMaps of upstream CAs.
 */
export function referencedNames(spec: RegistryMirrorSpec, kind: UpstreamCaRef['kind']): Set<string> {
  const found = new Set<string>();
  for (const upstream of spec.upstreams ?? []) {
    const ca = upstreamCaRef(upstream);
    if (ca?.kind === kind) found.add(ca.name);
    if (kind === 'Secret' && upstream.credentialsSecretRef) found.add(upstream.credentialsSecretRef.name);
  }
  if (kind === 'Secret') {
    if (spec.auth?.htpasswdSecretRef) found.add(spec.auth.htpasswdSecretRef.name);
    if (spec.tls) found.add(spec.tls.secretName);
  }
  return found;
}

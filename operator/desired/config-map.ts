// The mirror's configuration file (DESIGN.md's mirror contract) in a ConfigMap. Credentials are
// referenced by file path into the owned Secret's mount, never written here; upstream CA bundles by
// path into the mount of the user's Secret or ConfigMap.
import { stringify } from 'yaml';
import { formatQuantity, parseQuantity } from '../../common/quantity.ts';
import { prefetchTarget } from '../../mirror/reference.ts';
import type { RegistryMirror } from '../api/registry-mirror.ts';
import {
  MIRROR_PORT, PATHS, defaultRegistry, metadata, names, upstreamCaFileName, upstreamCaRef, upstreamSecretKeys, upstreamUrl, type DesiredInputs,
} from './inputs.ts';

export const CONFIG_KEY = 'config.yaml';

/**
 * Without spec.storage.maxSize the mirror still evicts before its volume is full: at this share of
 * the volume's size. Not all of a volume is usable (filesystem metadata; ext4 keeps 5% for root and
 * the mirror runs as 65532), and eviction trims to 90% of maxSize while fills keep adding.
 */
export const DEFAULT_MAX_SIZE_SHARE = 0.85;

/** spec.storage.maxSize, else DEFAULT_MAX_SIZE_SHARE of the volume, in whole MiB. */
export function effectiveMaxSize(storage: { size: string; maxSize?: string | undefined }): string | undefined {
  if (storage.maxSize) return storage.maxSize;
  const size = parseQuantity(storage.size);
  if (size === undefined) return undefined;
  return formatQuantity(Math.floor((size * DEFAULT_MAX_SIZE_SHARE) / 2 ** 20) * 2 ** 20);
}

/** The mirror config file as data (the same shape mirror/config.ts reads). */
export function mirrorConfig(inputs: DesiredInputs): Record<string, unknown> {
  const { spec } = inputs.mirror;
  const storage: Record<string, unknown> = { path: PATHS.storage };
  const maxSize = effectiveMaxSize(spec.storage);
  if (maxSize) storage.maxSize = maxSize;
  if (spec.storage.ttl) storage.ttl = spec.storage.ttl;
  const config: Record<string, unknown> = {
    listen: `:${MIRROR_PORT}`,
    storage,
    upstreams: spec.upstreams.map((upstream, index) => {
      const out: Record<string, unknown> = { registry: upstream.registry, url: upstreamUrl(upstream) };
      if (upstream.tagTTL) out.tagTTL = upstream.tagTTL;
      const credentials = inputs.upstreamCredentials.get(upstream.registry);
      if (upstream.credentialsSecretRef && credentials) {
        // Both come from the mounted Secret: no part of a credential goes into a ConfigMap.
        const keys = upstreamSecretKeys(index);
        out.credentials = { usernameFile: `${PATHS.secretsDir}/${keys.username}`, passwordFile: `${PATHS.secretsDir}/${keys.password}` };
      }
      // The path into the Secret's or ConfigMap's mount (desiredDeployment), never the bundle itself.
      if (upstreamCaRef(upstream) && inputs.upstreamCas?.has(upstream.registry)) out.caFile = `${PATHS.upstreamCaDir}/${upstreamCaFileName(index)}`;
      return out;
    }),
    default: defaultRegistry(spec),
  };
  const auth: Record<string, unknown> = {};
  if (spec.auth?.htpasswdSecretRef) auth.htpasswd = `${PATHS.secretsDir}/htpasswd`;
  if (spec.auth?.allowAnonymousWithCredentials) auth.allowAnonymousWithCredentials = true;
  if (Object.keys(auth).length > 0) config.auth = auth;
  if (spec.prefetch?.length) config.prefetch = spec.prefetch;
  if (spec.tls) config.tls = { cert: `${PATHS.tlsDir}/tls.crt`, key: `${PATHS.tlsDir}/tls.key` };
  config.log = { level: 'info' };
  return config;
}

/**
 * What the mirror would refuse at start in spec.prefetch (it exits and the pod crash-loops): an
 * entry that is not an image reference, or names a registry that is not one of spec.upstreams.
 * Undefined when every entry is fine.
 */
export function prefetchProblem(spec: RegistryMirror['spec']): string | undefined {
  const registries = new Set(spec.upstreams.map((u) => u.registry));
  const listName = `spec.upstreams (${[...registries].join(', ')})`;
  for (const [index, text] of (spec.prefetch ?? []).entries()) {
    const target = prefetchTarget(text, defaultRegistry(spec), registries, listName);
    if ('problem' in target) return `spec.prefetch[${index}] ${target.problem}${target.unknownRegistry ? ': add it there, or name the image on one of them' : ''}`;
  }
  return undefined;
}

export function desiredConfigMap(inputs: DesiredInputs) {
  const mirror: RegistryMirror = inputs.mirror;
  return {
    apiVersion: 'v1',
    kind: 'ConfigMap',
    metadata: metadata(mirror, names(mirror).configMap, 'mirror'),
    data: { [CONFIG_KEY]: stringify(mirrorConfig(inputs)) },
  };
}

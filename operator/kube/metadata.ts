// Watching a kind by its metadata only. Asked in Accept, the API server answers a list with a
// PartialObjectMetadataList and a watch with PartialObjectMetadata events: each object's metadata,
// none of its data. The controller watches Secrets and ConfigMaps this way, which only tell it
// which RegistryMirror to reconcile; it reads the few it needs by name when it reconciles. A server
// that does not know the media type answers plain JSON (the second entry in Accept), and
// routingMetadata still keeps only the little that routing needs, so nothing large stays in memory
// either way.
import { Watch, type KubeConfig, type RequestContext } from '@kubernetes/client-node';
import type { KubeObject } from './api.ts';

export const METADATA_LIST_ACCEPT = 'application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json';
export const METADATA_WATCH_ACCEPT = 'application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1,application/json';

/**
 * What is kept of an object watched by its metadata: who it is, its version (the informer compares
 * them, and resumes watches from them) and its owners. Labels and annotations go too: an annotation
 * such as kubectl's last-applied-configuration holds a whole Secret, data included.
 */
export function routingMetadata(object: KubeObject): KubeObject {
  const { name, namespace, uid, resourceVersion, ownerReferences, deletionTimestamp } = object.metadata ?? {};
  const metadata: KubeObject['metadata'] = { name, namespace, uid, resourceVersion };
  if (ownerReferences) metadata.ownerReferences = ownerReferences.map(({ apiVersion, kind, name, uid, controller }) => ({ apiVersion, kind, name, uid, controller }));
  if (deletionTimestamp) metadata.deletionTimestamp = deletionTimestamp;
  return { apiVersion: object.apiVersion, kind: object.kind, metadata };
}

type WatchCallback = Parameters<Watch['watch']>[2];
type DoneCallback = Parameters<Watch['watch']>[3];

/**
 * client-node's Watch, asking for metadata only and handing on routingMetadata of each object. The
 * library's Watch takes its request headers from the KubeConfig's authentication, so the Accept
 * header is set there; an ERROR event's Status (410 Gone) is passed on as it came.
 */
export class MetadataWatch extends Watch {
  constructor(config: KubeConfig) {
    super(withAccept(config, METADATA_WATCH_ACCEPT));
  }

  override watch(path: string, queryParams: Record<string, string | number | boolean | undefined>, callback: WatchCallback, done: DoneCallback): Promise<AbortController> {
    return super.watch(path, queryParams, (phase, object, event) => {
      if (phase === 'ERROR') return callback(phase, object, event);
      const kept = routingMetadata(object as KubeObject);
      return callback(phase, kept, { ...(event as object), object: kept });
    }, done);
  }
}

/** The same KubeConfig, whose authentication of a request also sets its Accept header. */
export function withAccept(config: KubeConfig, accept: string): KubeConfig {
  const accepting = Object.create(config) as KubeConfig;
  accepting.applySecurityAuthentication = async (context: RequestContext) => {
    await config.applySecurityAuthentication(context);
    context.setHeaderParam('Accept', accept);
  };
  return accepting;
}

// The cache volume. Its spec is immutable after creation except for a larger size, which the CRD's
// rules enforce, so applying it again only ever grows it.
import { metadata, names, type DesiredInputs } from './inputs.ts';

export function desiredPersistentVolumeClaim(inputs: DesiredInputs) {
  const { mirror } = inputs;
  const { storage } = mirror.spec;
  const spec: Record<string, unknown> = {
    accessModes: [storage.accessMode],
    resources: { requests: { storage: storage.size } },
  };
  if (storage.storageClassName !== undefined) spec.storageClassName = storage.storageClassName;
  return {
    apiVersion: 'v1',
    kind: 'PersistentVolumeClaim',
    metadata: metadata(mirror, names(mirror).pvc, 'mirror'),
    spec,
  };
}

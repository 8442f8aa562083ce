// The cache volume. Its spec is immutable after creation except for a larger size, and a claim
// cannot shrink: it asks for spec.storage.size, or what it already asks when that is more, so a
// size set back after a refused (or finished) resize is taken without a refusal.
import { parseQuantity } from '../../common/quantity.ts';
import { metadata, names, type DesiredInputs } from './inputs.ts';

/** The larger of the size asked for and the existing claim's request. */
export function claimSize({ size, claimSize: current }: { size: string; claimSize?: string }): string {
  if (!current) return size;
  return (parseQuantity(current) ?? 0) > (parseQuantity(size) ?? 0) ? current : size;
}

export function desiredPersistentVolumeClaim(inputs: DesiredInputs) {
  const { mirror } = inputs;
  const { storage } = mirror.spec;
  const spec: Record<string, unknown> = {
    accessModes: [storage.accessMode],
    resources: { requests: { storage: claimSize({ size: storage.size, claimSize: inputs.claimSize }) } },
  };
  if (storage.storageClassName !== undefined) spec.storageClassName = storage.storageClassName;
  return {
    apiVersion: 'v1',
    kind: 'PersistentVolumeClaim',
    metadata: metadata(mirror, names(mirror).pvc, 'mirror'),
    spec,
  };
}

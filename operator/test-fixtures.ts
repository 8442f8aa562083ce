// RegistryMirrors and inputs for unit tests, shaped as the API server returns them.
import { API_VERSION, KIND, type RegistryMirror, type RegistryMirrorSpec } from './api/registry-mirror.ts';
import { withDefaults, type DesiredInputs } from './desired/inputs.ts';

export function mirrorFixture(spec: Partial<RegistryMirrorSpec> = {}, name = 'hub'): RegistryMirror {
  return {
    apiVersion: API_VERSION,
    kind: KIND,
    metadata: { name, namespace: 'registry-cache', uid: '6c1f3a52-0d4e-4a8e-9a55-1b2c3d4e5f60', generation: 1 },
    spec: withDefaults({ upstreams: [{ registry: 'docker.io' }, { registry: 'ghcr.io' }], ...spec } as RegistryMirrorSpec),
  };
}

export function inputsFixture(overrides: Partial<DesiredInputs> = {}, spec: Partial<RegistryMirrorSpec> = {}): DesiredInputs {
  return {
    mirror: mirrorFixture(spec),
    image: 'ghcr.io/regmirror/regmirror:0.1.0',
    nodeAgentImage: 'ghcr.io/regmirror/regmirror:0.1.0',
    checksumKey: 'fixture-checksum-key-0123456789abcdefghijklmnopq',
    upstreamCredentials: new Map(),
    serviceIP: '10.96.0.42',
    nodeAgentMode: 'apply',
    ...overrides,
  };
}

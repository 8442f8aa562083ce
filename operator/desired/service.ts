// The address nodes reach: the Service's ClusterIP, stable for the mirror's life.
import { MIRROR_PORT, metadata, names, selector, type DesiredInputs } from './inputs.ts';

export function desiredService(inputs: DesiredInputs) {
  const { mirror } = inputs;
  return {
    apiVersion: 'v1',
    kind: 'Service',
    metadata: metadata(mirror, names(mirror).service, 'mirror'),
    spec: {
      type: 'ClusterIP',
      selector: selector(mirror, 'mirror'),
      ports: [{ name: mirror.spec.tls ? 'https' : 'http', port: MIRROR_PORT, targetPort: 'registry', protocol: 'TCP' }],
    },
  };
}

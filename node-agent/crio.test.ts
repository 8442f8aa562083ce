import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parse as parseToml } from 'smol-toml';

// smol-toml builds null-prototype tables; compare them as plain data
const parse = (text: string): Record<string, unknown> => JSON.parse(JSON.stringify(parseToml(text)));
import { CRIO_MARKER, crioDropIn, crioRegistryPrefixes, isManagedCrioDropIn, loadsAfterCrioDropIn } from './crio.ts';

test('the drop-in names the registry and the mirror, insecure only for plain HTTP', () => {
  const dropIn = crioDropIn({ registries: ['docker.io'], mirror: 'http://10.96.0.42:5000', defaultRegistry: 'docker.io' });
  assert.equal(dropIn, `${CRIO_MARKER}
[[registry]]
prefix = "docker.io"
location = "docker.io"

[[registry.mirror]]
location = "10.96.0.42:5000"
insecure = true
`);
  assert.ok(isManagedCrioDropIn(dropIn));
  const tls = parse(crioDropIn({ registries: ['docker.io'], mirror: 'https://mirror.internal', defaultRegistry: 'docker.io' }));
  assert.deepEqual(tls, { registry: [{ prefix: 'docker.io', location: 'docker.io', mirror: [{ location: 'mirror.internal', insecure: false }] }] });
});

test('registries other than the mirror default are mirrored under a path prefix naming them, because containers/image sends no ?ns=', () => {
  const dropIn = crioDropIn({ registries: ['docker.io', 'ghcr.io'], mirror: 'http://m:5000', defaultRegistry: 'docker.io' });
  assert.deepEqual(parse(dropIn).registry, [
    { prefix: 'docker.io', location: 'docker.io', mirror: [{ location: 'm:5000', insecure: true }] },
    { prefix: 'ghcr.io', location: 'ghcr.io', mirror: [{ location: 'm:5000/ghcr.io', insecure: true }] },
  ]);
});

test('a registry with a port is named in the mirror path with its port after __, since a path allows no colon', () => {
  const dropIn = crioDropIn({ registries: ['docker.io', 'registry.example.com:5000'], mirror: 'http://m:5000', defaultRegistry: 'docker.io' });
  assert.deepEqual(parse(dropIn).registry, [
    { prefix: 'docker.io', location: 'docker.io', mirror: [{ location: 'm:5000', insecure: true }] },
    { prefix: 'registry.example.com:5000', location: 'registry.example.com:5000', mirror: [{ location: 'm:5000/registry.example.com__5000', insecure: true }] },
  ]);
});

test('containers/image loads only *.conf drop-ins, in byte order of their names: which ones come after ours', () => {
  const after = ['docker.io.conf', '50-site.conf', 'zz.conf', '99-z.conf', 'A.conf'].filter(loadsAfterCrioDropIn);
  assert.deepEqual(after, ['docker.io.conf', 'zz.conf', '99-z.conf', 'A.conf']);
  assert.deepEqual(['00-mirrors.conf', '99-regmirror.conf', 'docker.io.conf.bak', 'registries.toml'].filter(loadsAfterCrioDropIn), []);
  assert.deepEqual(crioRegistryPrefixes('[[registry]]\nlocation = "quay.io"\n[[registry]]\nprefix = "docker.io"\nlocation = "mirror.example"\n'), ['quay.io', 'docker.io']);
  assert.throws(() => crioRegistryPrefixes('[[registry'));
});

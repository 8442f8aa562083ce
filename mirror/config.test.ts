import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { ConfigError } from '../common/config-error.ts';
import { DEFAULT_CONFIG_FILE, loadConfigFile, resolveConfig } from './config.ts';
import { parseRange } from './routes.ts';
import { parseChallenge } from './upstream.ts';
import { parseImageReference } from './reference.ts';
import { runCommand } from '../test/harness/process.ts';
import { makeCertificate } from '../test/harness/tls.ts';

const dir = mkdtempSync(path.join(tmpdir(), 'regmirror-config-'));
const file = (name: string, text: string) => {
  const p = path.join(dir, name);
  writeFileSync(p, text);
  return p;
};

test('the default configuration is a Docker Hub mirror on :5000 storing under ./data', () => {
  const config = resolveConfig(DEFAULT_CONFIG_FILE, 'default');
  assert.deepEqual(config.listen, { host: undefined, port: 5000 }, 'every interface, IPv6 and IPv4');
  assert.equal(config.storage.path, './data');
  assert.equal(config.defaultRegistry, 'docker.io');
  assert.equal(config.upstreams[0]!.url.href, 'https://registry-1.docker.io/');
  assert.equal(config.upstreams[0]!.tagTTLMs, 0);
  assert.deepEqual(config.upstreamTimeouts, { connectMs: 5_000, headersMs: 30_000, bodyIdleMs: 30_000, revalidateMs: 5_000 });
});

test('the DESIGN.md example file loads with every key resolved', () => {
  const password = file('password', 'hunter2\n');
  const htpasswd = file('htpasswd', 'alice:$2y$05$abcdefghijklmnopqrstuuJ1vWQ9bN1x5GZ5rJmB1B2wPq3s9Vd1e\n');
  const config = loadConfigFile(
    file(
      'full.yaml',
      `listen: 127.0.0.1:5000
storage: {path: ./data, maxSize: 20Gi, ttl: 168h}
upstreams:
  - registry: docker.io
    url: https://registry-1.docker.io
    tagTTL: 1m
    credentials: {username: alice, passwordFile: ${password}}
  - registry: ghcr.io
    url: https://ghcr.io
default: docker.io
auth: {htpasswd: ${htpasswd}}
prefetch: [docker.io/library/nginx:1.27]
prefetchInterval: 6h
upstreamTimeouts: {connect: 2s, response: 1m, idle: 45s, revalidate: 1500ms}
log: {level: debug}
`,
    ),
  );
  assert.equal(config.storage.maxSizeBytes, 20 * 2 ** 30);
  assert.equal(config.storage.ttlMs, 168 * 3_600_000);
  assert.equal(config.upstreams[0]!.tagTTLMs, 60_000);
  assert.deepEqual(config.upstreams[0]!.credentials, { username: 'alice', password: 'hunter2' });
  assert.equal(config.prefetchIntervalMs, 6 * 3_600_000);
  assert.equal(config.logLevel, 'debug');
  assert.deepEqual(config.upstreamTimeouts, { connectMs: 2_000, headersMs: 60_000, bodyIdleMs: 45_000, revalidateMs: 1_500 });
});

test('every mistake names the file and the key', () => {
  const cases: [string, RegExp][] = [
    ['storage: {path: x}\nupstrams: []\n', /bad\.yaml: upstrams: unknown key/],
    ['upstreams: []\n', /bad\.yaml: storage: /],
    ['storage: {path: x, maxSize: 20GB}\n', /bad\.yaml: storage\.maxSize: "20GB" is not a size/],
    ['storage: {path: x, ttl: 7 days}\n', /bad\.yaml: storage\.ttl: "7 days" is not a duration/],
    ['storage: {path: x}\nupstreams: [{registry: docker.io, url: "ftp://x"}]\n', /bad\.yaml: upstreams\[0\]\.url: must be an http/],
    ['storage: {path: x}\nupstreams: [{registry: "Docker.IO", url: "https://x"}]\n', /bad\.yaml: upstreams\[0\]\.registry: /],
    ['storage: {path: x}\nupstreams: [{registry: a.io, url: "https://x"}, {registry: a.io, url: "https://y"}]\n', /bad\.yaml: upstreams\[1\]\.registry: "a\.io" is listed twice/],
    ['storage: {path: x}\ndefault: quay.io\n', /bad\.yaml: default: "quay\.io" is not one of/],
    ['storage: {path: x}\nlisten: "5000"\n', /bad\.yaml: listen: /],
    ['storage: {path: x}\nlog: {level: loud}\n', /bad\.yaml: log\.level: /],
    ['storage: {path: x}\nupstreams: [{registry: docker.io, url: "https://x", credentials: {username: a, password: b}}]\n', /bad\.yaml: auth\.htpasswd: an upstream has credentials/],
    ['storage: {path: x}\nupstreams: [{registry: docker.io, url: "https://x", credentials: {username: a, passwordFile: /nonexistent}}]\nauth: {allowAnonymousWithCredentials: true}\n', /bad\.yaml: upstreams\[0\]\.credentials\.passwordFile: cannot read/],
    ['storage: [oops\n', /bad\.yaml: \(file\): not valid YAML/],
    ['storage: {path: x}\nupstreamTimeouts: {idle: 0s}\n', /bad\.yaml: upstreamTimeouts\.idle: must be longer than 0s/],
    ['storage: {path: x}\nupstreamTimeouts: {stall: 5s}\n', /bad\.yaml: upstreamTimeouts\.stall: unknown key/],
    // a timer of 0 or past 2^31-1 ms fires at once: prefetch would run back to back
    ['storage: {path: x}\nprefetchInterval: 0s\n', /bad\.yaml: prefetchInterval: "0s" must be between 1m and 596h/],
    ['storage: {path: x}\nprefetchInterval: 720h\n', /bad\.yaml: prefetchInterval: "720h" must be between 1m and 596h/],
    // bare YAML numbers: bytes for a size; for a duration only 0 has a meaning without a unit
    ['storage: {path: x, maxSize: 0}\n', /bad\.yaml: storage\.maxSize: expected a size such as 500Mi or 20Gi, or a whole number of bytes/],
    ['storage: {path: x, maxSize: 1.5}\n', /bad\.yaml: storage\.maxSize: expected a size/],
    ['storage: {path: x}\nupstreams: [{registry: docker.io, tagTTL: 30}]\n', /bad\.yaml: upstreams\[0\]\.tagTTL: expected a duration such as 30s/],
  ];
  for (const [text, message] of cases) {
    assert.throws(() => loadConfigFile(file('bad.yaml', text)), (error: Error) => error instanceof ConfigError && message.test(error.message), text);
  }
  assert.throws(() => loadConfigFile(path.join(dir, 'missing.yaml')), /missing\.yaml: \(file\): cannot read: ENOENT/);
});

test('sizes and durations written as bare YAML numbers: a number of bytes, and 0', () => {
  const config = loadConfigFile(file('numbers.yaml', 'storage: {path: x, maxSize: 1073741824}\nupstreams: [{registry: docker.io, tagTTL: 0}]\n'));
  assert.equal(config.storage.maxSizeBytes, 1073741824);
  assert.equal(config.upstreams[0]!.tagTTLMs, 0);
});

test('a storage.path that cannot hold the store stops the start with exit 2 naming storage.path', async () => {
  const notADirectory = file('a-file', 'x');
  const config = file('store-on-file.yaml', `listen: "127.0.0.1:0"\nstorage: {path: ${notADirectory}}\n`);
  const root = path.resolve(import.meta.dirname, '..');
  const result = await runCommand(process.execPath, [path.join(root, 'bin/regmirror.ts'), 'mirror', '--config', config], { cwd: root, timeoutMs: 30_000 });
  assert.equal(result.code, 2, result.stderr);
  assert.match(result.stderr, /store-on-file\.yaml: storage\.path: \S+a-file cannot hold the store: ENOTDIR/);
});

test('upstream credentials can both come from files (mounted Secret keys)', () => {
  const username = file('username', 'alice\n');
  const password = file('password2', 'hunter2');
  const config = loadConfigFile(file('files.yaml', `storage: {path: x}\nupstreams: [{registry: docker.io, url: "https://x", credentials: {usernameFile: ${username}, passwordFile: ${password}}}]\nauth: {allowAnonymousWithCredentials: true}\n`));
  assert.deepEqual(config.upstreams[0]!.credentials, { username: 'alice', password: 'hunter2' });
  assert.throws(() => loadConfigFile(file('both.yaml', `storage: {path: x}\nupstreams: [{registry: docker.io, url: "https://x", credentials: {username: a, usernameFile: ${username}, password: b}}]\nauth: {allowAnonymousWithCredentials: true}\n`)), /upstreams\[0\]\.credentials: set username or usernameFile, not both/);
});

test('upstreams[].caFile: the PEM certificates of the bundle are kept for that upstream; a file that cannot be read, holds no certificate or a broken one, or an http:// upstream is a ConfigError naming the key and the file', async () => {
  const [ca, other] = await Promise.all([makeCertificate({ commonName: 'config test CA' }), makeCertificate({ commonName: 'config test other' })]);
  const bundle = file('bundle.crt', `# comment\n${ca.certPem}\nsome text\n${other.certPem}`);
  const config = loadConfigFile(file('ca.yaml', `storage: {path: x}\nupstreams: [{registry: docker.io}, {registry: harbor.internal, url: "https://harbor.internal", caFile: ${bundle}}]\n`));
  assert.equal(config.upstreams[0]!.ca, undefined);
  assert.deepEqual(config.upstreams[1]!.ca, { file: bundle, certificates: [ca.certPem.trim(), other.certPem.trim()] });

  const notPem = file('not.pem', 'hello\n');
  const broken = file('broken.pem', `${ca.certPem}-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n`);
  const cases: [string, string, RegExp][] = [
    ['https://h', path.join(dir, 'missing.crt'), /ca-bad\.yaml: upstreams\[1\]\.caFile: cannot read \S+missing\.crt: ENOENT/],
    ['https://h', dir, /ca-bad\.yaml: upstreams\[1\]\.caFile: cannot read \S+: EISDIR/],
    ['https://h', notPem, /ca-bad\.yaml: upstreams\[1\]\.caFile: \S+not\.pem holds no PEM certificate/],
    ['https://h', broken, /ca-bad\.yaml: upstreams\[1\]\.caFile: \S+broken\.pem holds a certificate block that is not a valid X\.509 certificate \(block 2 of 2/],
    ['http://h', ca.caFile, /ca-bad\.yaml: upstreams\[1\]\.caFile: \S+ is for an https:\/\/ upstream, and this url is http:\/\/ \(no certificate to check\)/],
  ];
  for (const [url, caFile, message] of cases) {
    const text = `storage: {path: x}\nupstreams: [{registry: docker.io}, {registry: h, url: "${url}", caFile: "${caFile}"}]\n`;
    assert.throws(() => loadConfigFile(file('ca-bad.yaml', text)), (error: Error) => error instanceof ConfigError && message.test(error.message), `${url} ${caFile}: ${text}`);
  }
});

test('a password never appears in a configuration error', () => {
  const text = 'storage: {path: x}\nupstreams: [{registry: docker.io, url: "https://x", credentials: {username: a, password: topsecret, passwordFile: /x}}]\nauth: {allowAnonymousWithCredentials: true}\n';
  assert.throws(() => loadConfigFile(file('secret.yaml', text)), (error: Error) => !error.message.includes('topsecret') && /password or passwordFile, not both/.test(error.message));
  // nor one written into an upstream URL, which is refused (it would be logged with the URL)
  for (const url of ['https://alice:topsecret@registry.example', 'https://alice:topsecret@bad host']) {
    assert.throws(() => loadConfigFile(file('userinfo.yaml', `storage: {path: x}\nupstreams: [{registry: docker.io, url: "${url}"}]\n`)),
      (error: Error) => !error.message.includes('topsecret') && /upstreams\[0\]\.url: "https:\/\/\*\*\*@/.test(error.message), url);
  }
});

test('an upstream without url is reached where the registry\'s API lives: Docker Hub\'s at registry-1.docker.io', () => {
  const config = loadConfigFile(file('urls.yaml', 'storage: {path: x}\nupstreams: [{registry: docker.io}, {registry: ghcr.io}, {registry: "registry.example.com:5000"}]\n'));
  assert.deepEqual(config.upstreams.map((u) => u.url.href), ['https://registry-1.docker.io/', 'https://ghcr.io/', 'https://registry.example.com:5000/']);
});

test('Range headers: one bytes range is honoured, other forms are ignored, impossible ones are refused', () => {
  assert.deepEqual(parseRange('bytes=0-99', 1000), { start: 0, end: 99 });
  assert.deepEqual(parseRange('bytes=900-', 1000), { start: 900, end: 999 });
  assert.deepEqual(parseRange('bytes=-100', 1000), { start: 900, end: 999 });
  assert.deepEqual(parseRange('bytes=990-5000', 1000), { start: 990, end: 999 });
  assert.equal(parseRange('bytes=1000-', 1000), 'unsatisfiable');
  assert.equal(parseRange('bytes=-0', 1000), 'unsatisfiable');
  assert.equal(parseRange('bytes=0-1,5-9', 1000), undefined);
  assert.equal(parseRange('items=0-1', 1000), undefined);
  assert.equal(parseRange('bytes=9-1', 1000), undefined);
  assert.equal(parseRange(undefined, 1000), undefined);
});

test('WWW-Authenticate challenges are read as Docker Hub and distribution send them', () => {
  assert.deepEqual(parseChallenge('Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/nginx:pull"'), {
    scheme: 'bearer',
    params: { realm: 'https://auth.docker.io/token', service: 'registry.docker.io', scope: 'repository:library/nginx:pull' },
  });
  assert.deepEqual(parseChallenge('Basic realm="Registry Realm"'), { scheme: 'basic', params: { realm: 'Registry Realm' } });
  assert.equal(parseChallenge('Negotiate abc'), undefined);
  assert.equal(parseChallenge(undefined), undefined);
});

test('image references read like Docker reads them', () => {
  assert.deepEqual(parseImageReference('nginx', 'docker.io'), { registry: 'docker.io', name: 'library/nginx', reference: 'latest' });
  assert.deepEqual(parseImageReference('nginx:1.27', 'docker.io'), { registry: 'docker.io', name: 'library/nginx', reference: '1.27' });
  assert.deepEqual(parseImageReference('ghcr.io/org/app:v1', 'docker.io'), { registry: 'ghcr.io', name: 'org/app', reference: 'v1' });
  assert.deepEqual(parseImageReference('registry.local:5000/app', 'docker.io'), { registry: 'registry.local:5000', name: 'app', reference: 'latest' });
  const digest = `sha256:${'a'.repeat(64)}`;
  assert.deepEqual(parseImageReference(`team/app@${digest}`, 'docker.io'), { registry: 'docker.io', name: 'team/app', reference: digest });
  assert.throws(() => parseImageReference('Bad/Name', 'docker.io'), /invalid repository name/);
});

// TLS: the mirror serves https from tls.cert/tls.key and picks up a new certificate when the files
// change, the way Kubernetes rotates a Secret volume (a `..data` symlink swapped to a new
// timestamped directory), without dropping the connections it already has.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { X509Certificate } from 'node:crypto';
import { mkdir, rename, rm, symlink, writeFile } from 'node:fs/promises';
import https from 'node:https';
import path from 'node:path';
import tls from 'node:tls';
import { startContainerd } from '../test/harness/containerd.ts';
import { startMirrorProcess, startTestMirror, type TestMirror } from '../test/harness/mirror.ts';
import { pushImage, skopeo, writeOciImage, type TestImage } from '../test/harness/oci-image.ts';
import { cleanupAll, httpRequest, makeTempDir, runCommand, sleep, waitFor } from '../test/harness/process.ts';
import { startRegistry, type RegistryServer } from '../test/harness/registry.ts';
import { makeCertificate, type TestCertificate } from '../test/harness/tls.ts';
const ROOT = path.resolve(import.meta.dirname, '..');

const fingerprint = (pem: string) => new X509Certificate(pem).fingerprint256;

/** The certificate a new TLS connection to the port is given. */
function servedFingerprint(port: number, ca: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = tls.connect({ host: '127.0.0.1', port, ca, servername: 'localhost' }, () => {
      const peer = socket.getPeerCertificate();
      socket.end();
      resolve(peer.fingerprint256);
    });
    socket.setTimeout(5_000, () => socket.destroy(new Error('TLS handshake timed out')));
    socket.on('error', reject);
  });
}

/** A Secret volume as kubelet lays it out: tls.crt -> ..data/tls.crt, ..data -> ..<timestamp>. */
class SecretVolume {
  readonly dir: string;
  private current = '';
  private version = 0;
  constructor(dir: string) {
    this.dir = dir;
  }
  get certFile() {
    return path.join(this.dir, 'tls.crt');
  }
  get keyFile() {
    return path.join(this.dir, 'tls.key');
  }
  async write(cert: TestCertificate): Promise<void> {
    const name = `..2026_11_28_01_00_0${this.version++}.${process.pid}`;
    await mkdir(path.join(this.dir, name));
    await writeFile(path.join(this.dir, name, 'tls.crt'), cert.certPem);
    await writeFile(path.join(this.dir, name, 'tls.key'), cert.keyPem);
    if (!this.current) {
      await symlink(name, path.join(this.dir, '..data'));
      await symlink('..data/tls.crt', this.certFile);
      await symlink('..data/tls.key', this.keyFile);
    } else {
      // kubelet's atomic writer: a new symlink renamed over ..data, then the old directory removed
      await symlink(name, path.join(this.dir, '..data_tmp'));
      await rename(path.join(this.dir, '..data_tmp'), path.join(this.dir, '..data'));
      await rm(path.join(this.dir, this.current), { recursive: true });
    }
    this.current = name;
  }
}

describe('TLS', () => {
  let hub: RegistryServer;
  let image: TestImage;
  let first: TestCertificate;
  let second: TestCertificate;
  let third: TestCertificate;

  before(async () => {
    hub = await startRegistry();
    image = await writeOciImage(await makeTempDir('tls-image'), { tag: 'v1', seed: 'mirror-tls', layerSizes: [100_000] });
    await pushImage(image, hub.ref('library/app', 'v1'));
    [first, second, third] = await Promise.all([makeCertificate({ commonName: 'first' }), makeCertificate({ commonName: 'second' }), makeCertificate({ commonName: 'third' })]);
  });
  after(cleanupAll);

  const startWithSecret = async (): Promise<{ mirror: TestMirror; volume: SecretVolume }> => {
    const volume = new SecretVolume(await makeTempDir('tls-secret'));
    await volume.write(first);
    const mirror = await startTestMirror({ upstreams: [{ registry: 'docker.io', url: hub.url }], extra: { tls: { cert: volume.certFile, key: volume.keyFile } } });
    return { mirror, volume };
  };

  test('the mirror serves https with tls.cert and tls.key, and containerd trusting the CA pulls through it', async () => {
    const { mirror } = await startWithSecret();
    const node = await startContainerd();
    try {
      assert.match(mirror.url, /^https:\/\/127\.0\.0\.1:\d+$/);
      assert.equal((await httpRequest(`${mirror.url}/v2/`, { ca: first.certPem })).status, 200);
      await assert.rejects(httpRequest(`${mirror.url}/v2/`), /self-signed|certificate/i, 'an untrusted client is refused by the TLS handshake');
      await node.writeHostsToml('docker.io', { server: 'http://127.0.0.1:9', mirrors: [{ url: mirror.url, ca: first.caFile }] });
      await node.pull('docker.io/library/app:v1');
      assert.ok((await node.images()).includes('docker.io/library/app:v1'));
    } finally {
      await node.stop();
      await mirror.stop();
    }
  });

  test('a Secret rotation (..data symlink swap) is served to new connections without a restart', async () => {
    const { mirror, volume } = await startWithSecret();
    const ca = [first.certPem, second.certPem, third.certPem];
    try {
      assert.equal(await servedFingerprint(mirror.port, ca), fingerprint(first.certPem));
      await volume.write(second);
      await waitFor(async () => (await servedFingerprint(mirror.port, ca)) === fingerprint(second.certPem), { timeoutMs: 10_000, what: 'the second certificate to be served' });
      assert.equal((await httpRequest(`${mirror.url}/v2/`, { ca: second.certPem })).status, 200);
      // and again: the watch survives the directory it first saw being removed
      await volume.write(third);
      await waitFor(async () => (await servedFingerprint(mirror.port, ca)) === fingerprint(third.certPem), { timeoutMs: 10_000, what: 'the third certificate to be served' });
    } finally {
      await mirror.stop();
    }
  });

  test('a keep-alive connection opened before a rotation keeps working after it', async () => {
    const { mirror, volume } = await startWithSecret();
    const agent = new https.Agent({ keepAlive: true, maxSockets: 1, ca: [first.certPem, second.certPem] });
    const get = (url: string) =>
      new Promise<{ status: number; reused: boolean; localPort: number; peer: string; body: Buffer }>((resolve, reject) => {
        const req = https.get(`${mirror.url}${url}`, { agent, timeout: 10_000 }, (res) => {
          // the agent takes the socket back at 'end': read what we need now
          const socket = res.socket as tls.TLSSocket;
          const seen = { reused: req.reusedSocket, localPort: socket.localPort ?? 0, peer: socket.getPeerCertificate().fingerprint256 };
          const chunks: Buffer[] = [];
          res.on('data', (b: Buffer) => chunks.push(b));
          res.on('end', () => resolve({ status: res.statusCode ?? 0, ...seen, body: Buffer.concat(chunks) }));
          res.on('error', reject);
        });
        req.on('timeout', () => req.destroy(new Error('timed out')));
        req.on('error', reject);
      });
    try {
      const before = await get('/v2/library/app/manifests/v1');
      assert.equal(before.status, 200);
      assert.equal(before.peer, fingerprint(first.certPem));
      await volume.write(second);
      await waitFor(async () => (await servedFingerprint(mirror.port, [second.certPem])) === fingerprint(second.certPem), { timeoutMs: 10_000, what: 'the rotation' });
      await sleep(200);
      const afterRotation = await get(`/v2/library/app/blobs/${image.layers[0]!.digest}`);
      assert.equal(afterRotation.status, 200);
      assert.equal(afterRotation.reused, true, 'the request went over the connection opened before the rotation');
      assert.equal(afterRotation.localPort, before.localPort);
      assert.equal(afterRotation.peer, fingerprint(first.certPem), 'that connection keeps the session it had');
      assert.equal(afterRotation.body.length, image.layers[0]!.size);
    } finally {
      agent.destroy();
      await mirror.stop();
    }
  });

  test('a certificate symlinked from another directory is reloaded when its target changes', async () => {
    // tls.cert points into a directory the mirror's directory watch does not cover (a projected
    // volume, a host path, a hand-made link): only checking the files themselves sees the rotation
    const config = await makeTempDir('tls-links');
    const elsewhere = new SecretVolume(await makeTempDir('tls-elsewhere'));
    await elsewhere.write(first);
    await symlink(elsewhere.certFile, path.join(config, 'tls.crt'));
    await symlink(elsewhere.keyFile, path.join(config, 'tls.key'));
    const mirror = await startTestMirror({ upstreams: [{ registry: 'docker.io', url: hub.url }], extra: { tls: { cert: path.join(config, 'tls.crt'), key: path.join(config, 'tls.key') } } });
    const ca = [first.certPem, second.certPem];
    try {
      assert.equal(await servedFingerprint(mirror.port, ca), fingerprint(first.certPem));
      await elsewhere.write(second);
      await waitFor(async () => (await servedFingerprint(mirror.port, ca)) === fingerprint(second.certPem), { timeoutMs: 30_000, intervalMs: 250, what: 'the rotated certificate to be served' });
    } finally {
      await mirror.stop();
    }
  });

  test('a half-written rotation (certificate without its key) keeps the previous certificate until the key arrives', async () => {
    // plain files replaced one at a time, as cert-manager's csi driver or a hand copy would
    const dir = await makeTempDir('tls-plain');
    const certFile = path.join(dir, 'tls.crt');
    const keyFile = path.join(dir, 'tls.key');
    await writeFile(certFile, first.certPem);
    await writeFile(keyFile, first.keyPem);
    const mirror = await startTestMirror({ upstreams: [{ registry: 'docker.io', url: hub.url }], extra: { tls: { cert: certFile, key: keyFile } } });
    const ca = [first.certPem, second.certPem];
    try {
      await writeFile(`${certFile}.tmp`, second.certPem);
      await rename(`${certFile}.tmp`, certFile);
      await sleep(1_000); // well past the reload's debounce: the mismatched pair was seen and refused
      assert.equal(await servedFingerprint(mirror.port, ca), fingerprint(first.certPem), 'the old pair is still served');
      assert.equal((await httpRequest(`${mirror.url}/v2/`, { ca: first.certPem })).status, 200);
      await writeFile(`${keyFile}.tmp`, second.keyPem);
      await rename(`${keyFile}.tmp`, keyFile);
      await waitFor(async () => (await servedFingerprint(mirror.port, ca)) === fingerprint(second.certPem), { timeoutMs: 10_000, what: 'the completed pair to be served' });
    } finally {
      await mirror.stop();
    }
  });

  test('a certificate that is not PEM, or does not match its key, stops the start with exit 2 naming tls.cert and tls.key', async () => {
    const dir = await makeTempDir('tls-bad');
    const notPem = path.join(dir, 'not.pem');
    await writeFile(notPem, 'this is not a certificate\n');
    for (const [cert, key] of [[notPem, first.keyFile], [first.certFile, second.keyFile]]) {
      const config = path.join(dir, 'config.yaml');
      await writeFile(config, `listen: "127.0.0.1:0"\nstorage: {path: ${path.join(dir, 'data')}}\ntls: {cert: ${cert}, key: ${key}}\n`);
      const result = await runCommand(process.execPath, [path.join(ROOT, 'bin/regmirror.ts'), 'mirror', '--config', config], { cwd: ROOT, timeoutMs: 30_000 });
      assert.equal(result.code, 2, result.stderr);
      assert.match(result.stderr, /config\.yaml: tls\.cert, tls\.key: .* are not a PEM certificate and its key/);
      assert.doesNotMatch(result.stderr, /^\s+at /m, 'a message, not a stack trace');
    }
  });
});

describe('an https upstream whose certificate a private CA signed, or is self-signed (upstreams[].caFile)', () => {
  let image: TestImage;
  let ca: TestCertificate;
  let internal: RegistryServer;
  let selfSigned: TestCertificate;
  let selfSignedRegistry: RegistryServer;
  let bundle: string;

  /** The message of the 502 a manifest request through `mirror` gets. */
  const refusal = async (mirror: TestMirror, ns?: string) => {
    const res = await httpRequest(`${mirror.url}/v2/library/app/manifests/v1${ns ? `?ns=${ns}` : ''}`);
    assert.equal(res.status, 502, res.body.toString());
    return (JSON.parse(res.body.toString()) as { errors: { message: string }[] }).errors[0]!.message;
  };
  const pull = async (mirror: { host: string }) =>
    skopeo(['copy', '--src-tls-verify=false', '--retry-times=0', `docker://${mirror.host}/library/app:v1`, `dir:${await makeTempDir('ca-pulled')}`]);

  before(async () => {
    const plain = await startRegistry();
    image = await writeOciImage(await makeTempDir('ca-image'), { tag: 'v1', seed: 'upstream-ca', layerSizes: [50_000] });
    await pushImage(image, plain.ref('library/app', 'v1'));
    await plain.stop();
    ca = await makeCertificate({ commonName: 'regmirror test private CA' });
    // the same bytes served over https, with a certificate the private CA signed (an internal Harbor)
    internal = await startRegistry({ tls: await makeCertificate({ commonName: 'registry.internal', issuer: ca }), storageDir: plain.storageDir });
    selfSigned = await makeCertificate({ commonName: 'self-signed registry' });
    selfSignedRegistry = await startRegistry({ tls: selfSigned, storageDir: plain.storageDir });
    // a bundle as a trust store is written: another CA, text between the blocks, then ours
    const other = await makeCertificate({ commonName: 'some other CA' });
    bundle = path.join(await makeTempDir('ca-bundle'), 'ca.crt');
    await writeFile(bundle, `# the other CA\n${other.certPem}\n# ours\n${ca.certPem}`);
  });
  after(cleanupAll);

  test('with caFile the mirror pulls from it (skopeo through the mirror; blobs too); without, the 502 names the untrusted certificate and caFile', async () => {
    const trusting = await startTestMirror({ upstreams: [{ registry: 'registry.internal', url: internal.url, caFile: bundle }] });
    try {
      const pulled = await pull(trusting);
      assert.equal(pulled.code, 0, pulled.stderr);
      const blob = await httpRequest(`${trusting.url}/v2/library/app/blobs/${image.layers[0]!.digest}`);
      assert.equal(blob.status, 200);
      assert.equal(blob.body.length, image.layers[0]!.size);
    } finally {
      await trusting.stop();
    }

    const untrusting = await startTestMirror({ upstreams: [{ registry: 'registry.internal', url: internal.url }] });
    try {
      assert.equal(
        await refusal(untrusting),
        `upstream registry.internal unavailable: the certificate of ${internal.host} is not trusted (UNABLE_TO_VERIFY_LEAF_SIGNATURE): if a private CA signed it (or it is self-signed), set this upstream's caFile to that CA's PEM bundle (a RegistryMirror: spec.upstreams[].caSecretRef or caConfigMapRef)`,
      );
      assert.notEqual((await pull(untrusting)).code, 0);
    } finally {
      await untrusting.stop();
    }
  });

  test('a self-signed upstream is trusted by its own certificate as caFile; a caFile of another CA says the certificate is not signed by it', async () => {
    const mirror = await startTestMirror({
      upstreams: [
        { registry: 'self.internal', url: selfSignedRegistry.url, caFile: selfSigned.caFile },
        // the CA of the other upstream: trust is per upstream, not pooled
        { registry: 'registry.internal', url: internal.url, caFile: selfSigned.caFile },
      ],
      default: 'self.internal',
    });
    try {
      const res = await httpRequest(`${mirror.url}/v2/library/app/manifests/v1?ns=self.internal`);
      assert.equal(res.status, 200);
      assert.equal(res.headers['docker-content-digest'], image.manifestDigest);
      // with a caFile each of its certificates is an anchor (allowPartialTrustChain), and OpenSSL names the miss so
      assert.equal(
        await refusal(mirror, 'registry.internal'),
        `upstream registry.internal unavailable: the certificate of ${internal.host} is not trusted (UNABLE_TO_GET_ISSUER_CERT_LOCALLY): it is not signed by a CA in this upstream's caFile ${selfSigned.caFile}, nor by one of the default roots`,
      );
    } finally {
      await mirror.stop();
    }
    const untrusting = await startTestMirror({ upstreams: [{ registry: 'self.internal', url: selfSignedRegistry.url }] });
    try {
      assert.match(await refusal(untrusting), /^upstream self\.internal unavailable: the certificate of \S+ is not trusted \(DEPTH_ZERO_SELF_SIGNED_CERT\)/);
    } finally {
      await untrusting.stop();
    }
  });

  test('a caFile holding only the issuing (intermediate) CA is enough, as for containerd and skopeo: the server sends the intermediate, the root is nowhere', async () => {
    const root = await makeCertificate({ commonName: 'regmirror test root CA' });
    const issuing = await makeCertificate({ commonName: 'regmirror test issuing CA', issuer: root, ca: true });
    const leaf = await makeCertificate({ commonName: 'harbor.internal', issuer: issuing });
    const chainFile = path.join(await makeTempDir('ca-chain'), 'chain.crt');
    await writeFile(chainFile, `${leaf.certPem}${issuing.certPem}`);
    // the harness checks the registry is up trusting the root, as a client with the whole chain would
    const harbor = await startRegistry({ tls: { ...leaf, certFile: chainFile, caFile: root.certFile, caPem: root.certPem }, storageDir: internal.storageDir });
    const mirror = await startTestMirror({ upstreams: [{ registry: 'harbor.internal', url: harbor.url, caFile: issuing.certFile }] });
    try {
      const res = await httpRequest(`${mirror.url}/v2/library/app/manifests/v1`);
      assert.equal(res.status, 200, res.body.toString());
      assert.equal(res.headers['docker-content-digest'], image.manifestDigest);
    } finally {
      await mirror.stop();
      await harbor.stop();
    }
  });

  test('caFile adds to the default roots (NODE_EXTRA_CA_CERTS included), it does not replace them', async () => {
    // the upstream's CA is among the process's defaults only; caFile names an unrelated CA
    const mirror = await startMirrorProcess({
      upstreams: [{ registry: 'registry.internal', url: internal.url, caFile: selfSigned.caFile }],
      env: { NODE_EXTRA_CA_CERTS: ca.certFile },
    });
    try {
      const res = await httpRequest(`${mirror.url}/v2/library/app/manifests/v1`);
      assert.equal(res.status, 200, res.body.toString());
      assert.equal(res.headers['docker-content-digest'], image.manifestDigest);
    } finally {
      await mirror.process.stop();
    }
  });

  test('a caFile that cannot be read, holds no certificate, or is set on an http:// upstream stops the start with exit 2 naming upstreams[N].caFile and the file', async () => {
    const dir = await makeTempDir('ca-bad');
    const notPem = path.join(dir, 'not.pem');
    await writeFile(notPem, 'this is not a certificate\n');
    const cases: [string, string, RegExp][] = [
      [internal.url, path.join(dir, 'missing.crt'), /config\.yaml: upstreams\[1\]\.caFile: cannot read \S+missing\.crt: ENOENT/],
      [internal.url, notPem, /config\.yaml: upstreams\[1\]\.caFile: \S+not\.pem holds no PEM certificate/],
      ['http://127.0.0.1:9', ca.caFile, /config\.yaml: upstreams\[1\]\.caFile: \S+ is for an https:\/\/ upstream, and this url is http:\/\//],
    ];
    for (const [url, caFile, message] of cases) {
      const config = path.join(dir, 'config.yaml');
      await writeFile(config, `listen: "127.0.0.1:0"\nstorage: {path: ${path.join(dir, 'data')}}\nupstreams: [{registry: docker.io}, {registry: registry.internal, url: "${url}", caFile: ${caFile}}]\n`);
      const result = await runCommand(process.execPath, [path.join(ROOT, 'bin/regmirror.ts'), 'mirror', '--config', config], { cwd: ROOT, timeoutMs: 30_000 });
      assert.equal(result.code, 2, result.stderr);
      assert.match(result.stderr, message);
      assert.doesNotMatch(result.stderr, /^\s+at /m, 'a message, not a stack trace');
    }
  });
});

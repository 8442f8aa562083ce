// What a careless or hostile client sends gets the registry's error JSON and touches nothing
// outside the store.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { readdir } from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { cleanupAll, httpRequest, makeTempDir } from '../test/harness/process.ts';
import { startRegistry, type RegistryServer } from '../test/harness/registry.ts';
import { startTestMirror, type TestMirror } from '../test/harness/mirror.ts';

/** Sends a request line exactly as written (no client-side normalisation of "..") and reads the answer. */
function rawRequest(port: number, request: string): Promise<{ status: number; headers: string; body: string }> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, '127.0.0.1', () => socket.write(request));
    const chunks: Buffer[] = [];
    socket.on('data', (b: Buffer) => chunks.push(b));
    socket.on('error', reject);
    socket.on('close', () => {
      const text = Buffer.concat(chunks).toString();
      const [head = '', body = ''] = text.split('\r\n\r\n');
      resolve({ status: Number(head.split(' ')[1]), headers: head, body });
    });
  });
}

describe('bad input', () => {
  let upstream: RegistryServer;
  let mirror: TestMirror;
  let root: string;

  before(async () => {
    upstream = await startRegistry();
    root = await makeTempDir('bad-input');
    mirror = await startTestMirror({ upstreams: [{ registry: 'docker.io', url: upstream.url }], storagePath: path.join(root, 'store') });
  });
  after(async () => {
    await mirror.stop();
    await cleanupAll();
  });

  const cases: [string, string, number, string][] = [
    ['".." in a name', '/v2/library/../../etc/manifests/latest', 400, 'NAME_INVALID'],
    ['an encoded ".." in a name', '/v2/library/%2e%2e/x/manifests/latest', 400, 'NAME_INVALID'],
    ['upper case in a name', '/v2/Library/App/manifests/latest', 400, 'NAME_INVALID'],
    ['a name over 255 characters', `/v2/${'a'.repeat(256)}/manifests/latest`, 400, 'NAME_INVALID'],
    ['a tag with invalid characters', '/v2/library/app/manifests/bad~tag', 400, 'TAG_INVALID'],
    ['a malformed digest', '/v2/library/app/blobs/sha256:xyz', 400, 'DIGEST_INVALID'],
    ['a short sha256 digest', '/v2/library/app/manifests/sha256:abc', 400, 'DIGEST_INVALID'],
    ['an unknown digest algorithm', `/v2/library/app/blobs/md5:${'a'.repeat(32)}`, 400, 'DIGEST_INVALID'],
    ['a digest that the upstream does not have', `/v2/library/app/blobs/sha256:${'a'.repeat(64)}`, 404, 'BLOB_UNKNOWN'],
    ['a tag that the upstream does not have', '/v2/library/app/manifests/nope', 404, 'MANIFEST_UNKNOWN'],
    ['a referrers request with a malformed digest', '/v2/library/app/referrers/x', 400, 'DIGEST_INVALID'],
    // not NAME_UNKNOWN, which clients take for "no such repository"
    ['an endpoint that is not part of the API', '/v2/library/app/catalog/x', 404, 'UNSUPPORTED'],
    // refused by fastify before any route runs: the registry's JSON all the same
    ['a malformed percent-encoding in a name', '/v2/library/%zz/manifests/latest', 400, 'UNSUPPORTED'],
    ['a malformed percent-encoding outside /v2/', '/%zz', 400, 'UNSUPPORTED'],
  ];
  for (const [what, url, status, code] of cases) {
    test(`${what} gets ${status} ${code}`, async () => {
      const res = await rawRequest(mirror.port, `GET ${url} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`);
      assert.equal(res.status, status, res.headers);
      assert.equal(JSON.parse(res.body).errors[0].code, code);
      assert.match(res.headers, /^docker-distribution-api-version: registry\/2\.0$/im);
    });
  }

  test('a URL refused before any route runs (a percent-encoding that does not decode) is counted like any other request', async () => {
    const counted = async () => Number(/^regmirror_http_requests_total\{route="blob",method="GET",status="400"\} (\d+)$/m.exec((await httpRequest(`${mirror.url}/metrics`)).body.toString())?.[1] ?? 0);
    const before = await counted();
    const res = await rawRequest(mirror.port, 'GET /v2/library/%zz/blobs/sha256:x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
    assert.equal(res.status, 400);
    assert.equal((await counted()) - before, 1);
  });

  test('/v2 without its slash is sent on to /v2/ (301), as distribution does', async () => {
    const res = await httpRequest(`${mirror.url}/v2`);
    assert.equal(res.status, 301);
    assert.equal(res.headers.location, '/v2/');
    assert.equal((await httpRequest(`${mirror.url}/v2/`)).status, 200);
  });

  test('push, delete and uploads are refused with 405 UNSUPPORTED', async () => {
    for (const [method, url] of [
      ['PUT', '/v2/library/app/manifests/v1'],
      ['DELETE', `/v2/library/app/blobs/sha256:${'a'.repeat(64)}`],
      ['POST', '/v2/library/app/blobs/uploads/'],
      ['PATCH', '/v2/library/app/blobs/uploads/1234'],
      ['GET', '/v2/library/app/blobs/uploads/1234'],
    ] as const) {
      const body = method === 'GET' ? undefined : '{"x":1}';
      const res = await httpRequest(`${mirror.url}${url}`, { method, body, headers: { 'content-type': 'application/vnd.oci.image.manifest.v1+json', ...(body ? { 'content-length': String(body.length) } : {}) } });
      assert.equal(res.status, 405, `${method} ${url}`);
      assert.equal(JSON.parse(res.body.toString()).errors[0].code, 'UNSUPPORTED');
    }
  });

  test('huge header values get an error JSON and the mirror keeps serving', async () => {
    const res = await rawRequest(mirror.port, `GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Big: ${'a'.repeat(64 * 1024)}\r\nConnection: close\r\n\r\n`);
    assert.equal(res.status, 431);
    assert.equal(JSON.parse(res.body).errors[0].code, 'UNSUPPORTED');
    assert.equal((await httpRequest(`${mirror.url}/v2/`)).status, 200);
  });

  test('after all of that, nothing was written outside the store', async () => {
    assert.deepEqual(await readdir(root), ['store']);
    assert.deepEqual((await readdir(path.join(root, 'store'))).sort(), ['blobs', 'manifests', 'tags', 'tmp']);
  });
});

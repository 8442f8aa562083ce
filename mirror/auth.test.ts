// Client authentication: with auth.htpasswd set, /v2/ answers as a registry with Basic auth does
// (401 UNAUTHORIZED and a Basic challenge), and the real clients log in the way their users do:
// `docker login`, skopeo --src-creds, a containerd hosts.toml Authorization header.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, rename, rm, symlink, writeFile } from 'node:fs/promises';
import http from 'node:http';
import path from 'node:path';
import bcrypt from 'bcryptjs';
import { HtpasswdAuth, MAX_COMPARING_PER_CLIENT, MAX_REMEMBERED, unknownUserHash } from './auth.ts';
import { stringify } from 'yaml';
import { startContainerd } from '../test/harness/containerd.ts';
import { startDockerd } from '../test/harness/dockerd.ts';
import { startMirrorProcess, startTestMirror, type TestMirror } from '../test/harness/mirror.ts';
import { pushImage, skopeo, writeOciImage, type TestImage } from '../test/harness/oci-image.ts';
import { cleanupAll, httpRequest, makeTempDir, runCommand } from '../test/harness/process.ts';
import { startRegistry, type RegistryServer } from '../test/harness/registry.ts';

const ROOT = path.resolve(import.meta.dirname, '..');
const basic = (user: string, password: string) => `Basic ${Buffer.from(`${user}:${password}`).toString('base64')}`;
const errorCode = (body: Buffer) => (JSON.parse(body.toString()) as { errors: { code: string }[] }).errors[0]!.code;
/** A new htpasswd file holding `text`. */
async function newHtpasswdFile(dirName: string, text: string): Promise<string> {
  const file = path.join(await makeTempDir(dirName), 'htpasswd');
  await writeFile(file, text);
  return file;
}
/** An htpasswd line as `htpasswd -B -n user` writes it (bcrypt, the $2y$ prefix Apache uses). */
const htpasswdLine = (user: string, password: string) => `${user}:${bcrypt.hashSync(password, 5).replace(/^\$2b\$/, '$2y$')}`;

describe('client auth with htpasswd', () => {
  let hub: RegistryServer;
  let image: TestImage;
  let htpasswdFile: string;
  let mirror: TestMirror;
  let clock = Date.now();

  before(async () => {
    hub = await startRegistry();
    image = await writeOciImage(await makeTempDir('auth-image'), { tag: 'v1', seed: 'client-auth', layerSizes: [100_000] });
    await pushImage(image, hub.ref('library/app', 'v1'));
    await hub.resetRequests();
    const dir = await makeTempDir('htpasswd');
    htpasswdFile = path.join(dir, 'htpasswd');
    await writeFile(htpasswdFile, `# users of the mirror\n${htpasswdLine('alice', 'wonderland')}\n${htpasswdLine('bob', 'builder')}\n`);
    mirror = await startTestMirror({
      upstreams: [{ registry: 'docker.io', url: hub.url }],
      extra: { auth: { htpasswd: htpasswdFile } },
      now: () => clock,
    });
  });
  after(async () => {
    await mirror.stop();
    await cleanupAll();
  });

  test('a request without credentials gets 401 UNAUTHORIZED with a Basic challenge', async () => {
    for (const url of ['/v2/', '/v2/library/app/manifests/v1', `/v2/library/app/blobs/${image.layers[0]!.digest}`]) {
      const res = await httpRequest(`${mirror.url}${url}`);
      assert.equal(res.status, 401, url);
      assert.equal(res.headers['www-authenticate'], 'Basic realm="regmirror"');
      assert.equal(res.headers['docker-distribution-api-version'], 'registry/2.0');
      assert.match(String(res.headers['content-type']), /^application\/json/);
      assert.equal(errorCode(res.body), 'UNAUTHORIZED');
    }
    const head = await httpRequest(`${mirror.url}/v2/library/app/manifests/v1`, { method: 'HEAD' });
    assert.equal(head.status, 401);
    assert.equal(head.headers['www-authenticate'], 'Basic realm="regmirror"');
    assert.equal(await hub.countRequests({ path: /\/v2\/library\/app\// }), 0, 'nothing was fetched for an unauthenticated client');
  });

  test('a wrong password, an unknown user or a malformed header gets 401 UNAUTHORIZED with the challenge', async () => {
    for (const authorization of [basic('alice', 'wrong'), basic('mallory', 'wonderland'), basic('alice', ''), 'Basic !!!not-base64', 'Bearer abc', basic('', 'wonderland')]) {
      const res = await httpRequest(`${mirror.url}/v2/library/app/manifests/v1`, { headers: { authorization } });
      assert.equal(res.status, 401, authorization);
      assert.equal(res.headers['www-authenticate'], 'Basic realm="regmirror"');
      assert.equal(errorCode(res.body), 'UNAUTHORIZED');
    }
  });

  test('valid credentials pull manifests and blobs, and the scheme name is case-insensitive', async () => {
    const authorization = basic('alice', 'wonderland');
    assert.equal((await httpRequest(`${mirror.url}/v2/`, { headers: { authorization } })).status, 200);
    const manifest = await httpRequest(`${mirror.url}/v2/library/app/manifests/v1`, { headers: { authorization } });
    assert.equal(manifest.status, 200);
    assert.equal(manifest.headers['docker-content-digest'], image.manifestDigest);
    const blob = await httpRequest(`${mirror.url}/v2/library/app/blobs/${image.configDigest}`, { headers: { authorization: authorization.replace('Basic', 'basic') } });
    assert.equal(blob.status, 200);
  });

  test('/healthz, /readyz and /metrics stay open without credentials', async () => {
    for (const url of ['/healthz', '/readyz', '/metrics']) assert.equal((await httpRequest(`${mirror.url}${url}`)).status, 200, url);
  });

  test('skopeo with --src-creds copies through the mirror; without them it is refused', async () => {
    const refused = await skopeo(['inspect', '--tls-verify=false', '--no-creds', `docker://${mirror.host}/library/app:v1`]);
    assert.notEqual(refused.code, 0);
    assert.match(refused.stderr, /unauthorized|authentication required/i);
    const dest = await makeTempDir('auth-copy');
    const copied = await skopeo(['copy', '--src-tls-verify=false', '--src-creds=bob:builder', `docker://${mirror.host}/library/app:v1`, `oci:${dest}:v1`]);
    assert.equal(copied.code, 0, copied.stderr);
  });

  test('containerd with an Authorization header in hosts.toml pulls through the mirror; without it the pull fails', async () => {
    const node = await startContainerd();
    try {
      // server refuses connections: only the mirror can serve these pulls
      const hostsToml = (header?: string) =>
        ['server = "http://127.0.0.1:9"', '', `[host."${mirror.url}"]`, '  capabilities = ["pull", "resolve"]', ...(header ? [`  [host."${mirror.url}".header]`, `    Authorization = "${header}"`] : []), ''].join('\n');
      await mkdir(path.join(node.hostsDir, 'docker.io'), { recursive: true });
      await writeFile(path.join(node.hostsDir, 'docker.io', 'hosts.toml'), hostsToml());
      await assert.rejects(node.pull('docker.io/library/app:v1'), /401|unauthorized|failed/i);
      await writeFile(path.join(node.hostsDir, 'docker.io', 'hosts.toml'), hostsToml(basic('alice', 'wonderland')));
      await node.pull('docker.io/library/app:v1');
      assert.ok((await node.images()).includes('docker.io/library/app:v1'));
    } finally {
      await node.stop();
    }
  });

  test('docker login stores credentials that docker pull then uses against the mirror', async () => {
    const docker = await startDockerd();
    try {
      const anonymous = await docker.docker(['pull', `${mirror.host}/library/app:v1`]);
      assert.notEqual(anonymous.code, 0);
      assert.match(anonymous.stderr, /unauthorized|no basic auth credentials|authentication required/i);
      const wrong = await runCommand('docker', ['login', '--username', 'alice', '--password-stdin', mirror.host], { input: 'nope\n', env: dockerEnv(docker) });
      assert.notEqual(wrong.code, 0, 'a wrong password does not log in');
      const login = await runCommand('docker', ['login', '--username', 'alice', '--password-stdin', mirror.host], { input: 'wonderland\n', env: dockerEnv(docker) });
      assert.equal(login.code, 0, login.stderr);
      assert.match(login.stdout, /Login Succeeded/);
      await docker.pull(`${mirror.host}/library/app:v1`);
      const id = await docker.docker(['image', 'inspect', '--format', '{{.Id}}', `${mirror.host}/library/app:v1`]);
      assert.equal(id.stdout.trim(), image.configDigest);
    } finally {
      await docker.stop();
    }
  });

  test('an edited htpasswd file takes effect without a restart: new users get in, removed users are refused', async () => {
    const carol = basic('carol', 'singer');
    assert.equal((await httpRequest(`${mirror.url}/v2/`, { headers: { authorization: carol } })).status, 401);
    assert.equal((await httpRequest(`${mirror.url}/v2/`, { headers: { authorization: basic('bob', 'builder') } })).status, 200);
    // written whole and renamed into place, as editors and config tools do
    await writeFile(`${htpasswdFile}.new`, `${htpasswdLine('alice', 'wonderland')}\n${htpasswdLine('carol', 'singer')}\n`);
    await rename(`${htpasswdFile}.new`, htpasswdFile);
    clock += 10_000; // past the file re-check interval
    assert.equal((await httpRequest(`${mirror.url}/v2/`, { headers: { authorization: carol } })).status, 200);
    assert.equal((await httpRequest(`${mirror.url}/v2/`, { headers: { authorization: basic('bob', 'builder') } })).status, 401, 'bob was remembered before; removal ends that');
    assert.equal((await httpRequest(`${mirror.url}/v2/`, { headers: { authorization: basic('alice', 'wonderland') } })).status, 200);
  });
});

test('a flood of made-up credentials is refused at once with 429 past a few bcrypt checks at a time, and a real user still gets in', async () => {
  const hub = await startRegistry();
  const dir = await makeTempDir('htpasswd-flood');
  const file = path.join(dir, 'htpasswd');
  // cost 10, as the operator writes for its nodes: a comparison takes tens of milliseconds of the mirror's thread
  await writeFile(file, `alice:${bcrypt.hashSync('wonderland', 10)}\n`);
  const mirror = await startTestMirror({ upstreams: [{ registry: 'docker.io', url: hub.url }], extra: { auth: { htpasswd: file } } });
  try {
    const basic = (credentials: string) => `Basic ${Buffer.from(credentials).toString('base64')}`;
    const flood = await Promise.all(Array.from({ length: 40 }, (_, i) => httpRequest(`${mirror.url}/v2/`, { headers: { authorization: basic(`mallory${i}:guess${i}`) } })));
    const statuses = flood.map((res) => res.status);
    assert.ok(statuses.every((status) => status === 401 || status === 429), statuses.join(' '));
    const refused = flood.filter((res) => res.status === 429);
    assert.ok(refused.length >= 40 - 2 - 16, `${refused.length} refused at once`);
    assert.equal(errorCode(refused[0]!.body), 'TOOMANYREQUESTS');
    assert.equal(refused[0]!.headers['retry-after'], '1');
    assert.equal((await httpRequest(`${mirror.url}/v2/`, { headers: { authorization: basic('alice:wonderland') } })).status, 200);
  } finally {
    await mirror.stop();
  }
});

test('a flood of made-up credentials from one address takes its share of the bcrypt checks, not all: a node logging in from another address gets in', async () => {
  const hub = await startRegistry();
  const file = await newHtpasswdFile('htpasswd-share', `alice:${bcrypt.hashSync('wonderland', 10)}\n`);
  const mirror = await startTestMirror({ upstreams: [{ registry: 'docker.io', url: hub.url }], extra: { auth: { htpasswd: file } } });
  try {
    const { port } = new URL(mirror.url);
    // another client address on loopback: the server listens on 127.0.0.1, the client binds 127.0.0.2
    const fromOtherAddress = (authorization: string) => new Promise<number>((resolve, reject) => {
      const req = http.get({ host: '127.0.0.1', port, path: '/v2/', localAddress: '127.0.0.2', agent: false, headers: { authorization }, timeout: 20_000 }, (res) => {
        res.resume();
        res.on('end', () => resolve(res.statusCode!));
      });
      req.on('error', reject);
      req.on('timeout', () => req.destroy(new Error('timed out')));
    });
    const flood = Array.from({ length: 60 }, (_, i) => httpRequest(`${mirror.url}/v2/`, { headers: { authorization: basic(`mallory${i}`, `guess${i}`) }, timeoutMs: 20_000 }));
    // the flood is refused past its share at once: by then its checks hold the slots they can
    await Promise.race(flood.map(async (pending) => { if ((await pending).status !== 429) await new Promise(() => {}); }));
    assert.equal(await fromOtherAddress(basic('alice', 'wonderland')), 200, 'checked, though the flood was still being refused');
    const statuses = (await Promise.all(flood)).map((res) => res.status);
    assert.ok(statuses.filter((status) => status === 429).length >= 60 - MAX_COMPARING_PER_CLIENT, statuses.join(' '));
    assert.ok(statuses.every((status) => status === 401 || status === 429), statuses.join(' '));
  } finally {
    await mirror.stop();
    await hub.stop();
  }
});

test('credentials in use stay remembered past a minute: a node pulling every 50 s needs no bcrypt check while made-up credentials fill them all; a node\'s first requests at once share one check', async () => {
  const file = await newHtpasswdFile('htpasswd-renew', `${htpasswdLine('alice', 'wonderland')}\n`);
  let clock = 0;
  const auth = new HtpasswdAuth(file, { configSource: 'test', now: () => clock });
  const alice = basic('alice', 'wonderland');
  assert.equal(await auth.check(alice, '10.0.0.1'), 'alice');
  clock += 50_000;
  assert.equal(await auth.check(alice, '10.0.0.1'), 'alice');
  clock += 50_000; // 100 s after its check, 50 s after its last use
  // every comparison slot and waiting place taken, by many addresses
  const flood = Array.from({ length: 40 }, (_, i) => auth.check(basic(`mallory${i}`, 'guess'), `10.1.0.${i}`).then(() => 200, (error: { status?: number }) => error.status));
  assert.equal(await auth.check(alice, '10.0.0.1'), 'alice', 'remembered: no comparison needed');
  const statuses = await Promise.all(flood);
  assert.ok(statuses.includes(429), `the comparisons were full: ${statuses.join(' ')}`);
  clock += 61_000; // unused for over a minute: checked again, and a node's requests at once share one check
  const atOnce = await Promise.all(Array.from({ length: 3 * MAX_COMPARING_PER_CLIENT }, () => auth.check(alice, '10.0.0.1')));
  assert.deepEqual(new Set(atOnce), new Set(['alice']));
  assert.equal(await auth.check(alice, '10.0.0.1'), 'alice');
  assert.equal(auth.rememberedCredentials, 1);
});

describe('remembered credentials: one entry a credential however it is spelled, none once expired, never more than MAX_REMEMBERED', () => {
  let mirror: TestMirror;
  let clock = Date.now();
  const longPassword = 'p'.repeat(72); // bcrypt reads no further: any tail checks out
  const remembered = () => mirror.mirror.auth!.rememberedCredentials;
  const status = async (authorization: string) => (await httpRequest(`${mirror.url}/v2/`, { headers: { authorization } })).status;

  before(async () => {
    const hub = await startRegistry();
    const dir = await makeTempDir('htpasswd-remembered');
    const file = path.join(dir, 'htpasswd');
    await writeFile(file, `${htpasswdLine('alice', 'wonderland')}\n${htpasswdLine('bob', 'builder')}\n${htpasswdLine('long', longPassword)}\n`);
    mirror = await startTestMirror({ upstreams: [{ registry: 'docker.io', url: hub.url }], extra: { auth: { htpasswd: file } }, now: () => clock });
  });
  after(async () => {
    await mirror.stop();
    await cleanupAll();
  });

  test('alice:wonderland in 32 spellings (padded or not, any spare bits in the last character) gets in, and is remembered once', async () => {
    const encoded = Buffer.from('alice:wonderland').toString('base64');
    assert.equal(encoded, 'YWxpY2U6d29uZGVybGFuZA==');
    // 16 bytes: the last character carries 2 bits of data and 4 spare ones, which decoders ignore
    const spellings = Array.from({ length: 16 }, (_, spare) => encoded.slice(0, -3) + 'ABCDEFGHIJKLMNOP'[spare]!).flatMap((text) => [text, `${text}==`]);
    for (const text of spellings) {
      assert.equal(Buffer.from(text, 'base64').toString(), 'alice:wonderland', text);
      assert.equal(await status(`Basic ${text}`), 200, text);
    }
    assert.equal(remembered(), 1);
  });

  test('base64 with characters outside its alphabet or stray padding is refused with 401, as a registry does, and remembers nothing', async () => {
    // each reads as alice:wonderland to Node's lenient decoder
    for (const text of ['YWxp.Y2U6d29uZGVybGFuZA==', 'YWxpY2U6d29u!ZGVybGFuZA==', 'YWxpY2U6d29uZGVy*bGFuZA==', 'YWxpY2U6d29uZGVybGFuZA===']) {
      assert.equal(Buffer.from(text, 'base64').toString(), 'alice:wonderland', text);
      const res = await httpRequest(`${mirror.url}/v2/`, { headers: { authorization: `Basic ${text}` } });
      assert.equal(res.status, 401, text);
      assert.equal(res.headers['www-authenticate'], 'Basic realm="regmirror"');
      assert.equal(errorCode(res.body), 'UNAUTHORIZED');
    }
    assert.equal(remembered(), 1, 'still only alice:wonderland');
  });

  test('an hour later nothing is remembered: a refused request sweeps the expired entries, and the user gets in again', async () => {
    const held = remembered();
    assert.equal(await status(basic('bob', 'builder')), 200);
    assert.equal(remembered(), held + 1);
    clock += 3_600_000;
    assert.equal(await status(basic('bob', 'wrong')), 401);
    assert.equal(remembered(), 0, 'every entry had expired');
    assert.equal(await status(basic('alice', 'wonderland')), 200);
    assert.equal(remembered(), 1);
  });

  test('a password past bcrypt\'s 72 bytes checks out with any tail: MAX_REMEMBERED of those at most are kept', async () => {
    const tails = MAX_REMEMBERED + 50;
    // as many at once as one client address may have checked (each tail is another password)
    const batch = MAX_COMPARING_PER_CLIENT;
    for (let start = 0; start < tails; start += batch) {
      await Promise.all(
        Array.from({ length: Math.min(batch, tails - start) }, async (_, i) => {
          assert.equal(await status(basic('long', `${longPassword}${start + i}`)), 200);
        }),
      );
    }
    assert.equal(remembered(), MAX_REMEMBERED);
    assert.equal(await status(basic('alice', 'wonderland')), 200, 'alice, among the oldest entries dropped, still gets in');
    assert.equal(remembered(), MAX_REMEMBERED);
  });
});

test('a Kubernetes Secret rotation of the htpasswd file (..data symlink swap) is picked up', async () => {
  const hub = await startRegistry();
  // the layout kubelet writes for a Secret volume: htpasswd -> ..data/htpasswd, ..data -> ..<timestamp>
  const volume = await makeTempDir('htpasswd-secret');
  const writeVersion = async (name: string, text: string) => {
    await mkdir(path.join(volume, name));
    await writeFile(path.join(volume, name, 'htpasswd'), text);
  };
  await writeVersion('..2026_11_28_01_00_00.1', `${htpasswdLine('alice', 'first')}\n`);
  await symlink('..2026_11_28_01_00_00.1', path.join(volume, '..data'));
  await symlink('..data/htpasswd', path.join(volume, 'htpasswd'));
  let clock = Date.now();
  const mirror = await startTestMirror({ upstreams: [{ registry: 'docker.io', url: hub.url }], extra: { auth: { htpasswd: path.join(volume, 'htpasswd') } }, now: () => clock });
  try {
    assert.equal((await httpRequest(`${mirror.url}/v2/`, { headers: { authorization: basic('alice', 'first') } })).status, 200);
    await writeVersion('..2026_11_28_02_00_00.2', `${htpasswdLine('alice', 'second')}\n`);
    await symlink('..2026_11_28_02_00_00.2', path.join(volume, '..data_tmp'));
    await rename(path.join(volume, '..data_tmp'), path.join(volume, '..data'));
    await rm(path.join(volume, '..2026_11_28_01_00_00.1'), { recursive: true });
    clock += 10_000;
    assert.equal((await httpRequest(`${mirror.url}/v2/`, { headers: { authorization: basic('alice', 'second') } })).status, 200);
    assert.equal((await httpRequest(`${mirror.url}/v2/`, { headers: { authorization: basic('alice', 'first') } })).status, 401);
  } finally {
    await mirror.stop();
    await hub.stop();
  }
});

test('a broken or empty htpasswd update keeps the previous users, and both the failure and the next good reload are logged', async () => {
  const file = await newHtpasswdFile('htpasswd-broken', `${htpasswdLine('alice', 'wonderland')}\n`);
  let clock = 0;
  const logged: { level: string; message: string }[] = [];
  const logger = { info: (_fields: object, message: string) => logged.push({ level: 'info', message }), error: (_fields: object, message: string) => logged.push({ level: 'error', message }) };
  const auth = new HtpasswdAuth(file, { configSource: 'test', now: () => clock, logger });
  const alice = basic('alice', 'wonderland');
  assert.equal(await auth.check(alice), 'alice');

  for (const broken of ['alice:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n', '', '# nobody\n']) {
    await writeFile(`${file}.new`, broken);
    await rename(`${file}.new`, file);
    clock += 10_000;
    assert.equal(await auth.check(alice), 'alice', `still alice after ${JSON.stringify(broken)}`);
    assert.equal(logged.at(-1)?.level, 'error');
    assert.match(logged.at(-1)!.message, /keeping the previous users/);
  }
  await writeFile(`${file}.new`, `${htpasswdLine('bob', 'builder')}\n`);
  await rename(`${file}.new`, file);
  clock += 10_000;
  assert.equal(await auth.check(basic('bob', 'builder')), 'bob');
  await assert.rejects(auth.check(alice), (error: Error & { status?: number }) => error.status === 401);
  assert.deepEqual(logged.at(-1), { level: 'info', message: 'htpasswd file reloaded' });
});

describe('regmirror mirror --config: auth checks at start (an upstream with credentials)', () => {
  let hub: RegistryServer;
  let configDir: string;
  before(async () => {
    hub = await startRegistry();
    configDir = await makeTempDir('auth-config');
  });
  after(cleanupAll);

  const configFile = async (name: string, auth: Record<string, unknown> | undefined) => {
    const file = path.join(configDir, name);
    await writeFile(
      file,
      stringify({
        listen: '127.0.0.1:0',
        storage: { path: path.join(configDir, `${name}-data`) },
        upstreams: [{ registry: 'docker.io', url: hub.url, credentials: { username: 'alice', password: 's3cret' } }],
        ...(auth ? { auth } : {}),
      }),
    );
    return file;
  };

  test('without auth.htpasswd the mirror refuses to start, exits non-zero and names auth.htpasswd', async () => {
    const file = await configFile('open.yaml', undefined);
    const result = await runCommand(process.execPath, [path.join(ROOT, 'bin/regmirror.ts'), 'mirror', '--config', file], { cwd: ROOT, timeoutMs: 30_000 });
    assert.notEqual(result.code, 0);
    assert.match(result.stderr, /auth\.htpasswd/);
    assert.match(result.stderr, /allowAnonymousWithCredentials/);
    assert.doesNotMatch(result.stderr + result.stdout, /s3cret/, 'the password is never printed');
  });

  test('an htpasswd file with a non-bcrypt entry stops the start with a message naming auth.htpasswd and the line', async () => {
    const htpasswd = path.join(configDir, 'htpasswd-md5');
    // what `htpasswd` writes without -B (Apache MD5): refused, since only bcrypt is checked
    await writeFile(htpasswd, `${htpasswdLine('alice', 'wonderland')}\nbob:$apr1$x6Ywqh3a$0T6pCNahvQRq8v2LqlF8x.\n`);
    const file = await configFile('md5.yaml', { htpasswd });
    const result = await runCommand(process.execPath, [path.join(ROOT, 'bin/regmirror.ts'), 'mirror', '--config', file], { cwd: ROOT, timeoutMs: 30_000 });
    assert.equal(result.code, 2);
    assert.match(result.stderr, /auth\.htpasswd: .*line 2 .*bcrypt/);
  });

  test('with allowAnonymousWithCredentials: true it starts and serves without client auth', async () => {
    const mirror = await startMirrorProcess({
      upstreams: [{ registry: 'docker.io', url: hub.url, credentials: { username: 'alice', password: 's3cret' } }],
      extra: { auth: { allowAnonymousWithCredentials: true } },
    });
    try {
      assert.equal((await httpRequest(`${mirror.url}/v2/`)).status, 200);
    } finally {
      await mirror.process.stop();
    }
    assert.doesNotMatch(mirror.process.output(), /s3cret/);
  });
});

function dockerEnv(docker: { host: string; daemonJson: string }): NodeJS.ProcessEnv {
  // the harness's docker() sets these; docker login needs stdin, which runCommand gives only directly
  return { ...process.env, DOCKER_HOST: docker.host, DOCKER_CONFIG: path.join(path.dirname(docker.daemonJson), 'client') };
}

test('an unknown user is compared against a hash as costly as the file\'s entries, so timing does not tell who exists', async () => {
  // htpasswd -B writes cost 5; a decoy of another cost would answer unknown users faster or slower
  for (const cost of [5, 7]) {
    const users = new Map([['alice', await bcrypt.hash('wonderland', cost)], ['bob', await bcrypt.hash('builder', 4)]]);
    const decoy = unknownUserHash(users);
    assert.equal(bcrypt.getRounds(decoy), cost);
    assert.equal(await bcrypt.compare('wonderland', decoy), false);
    assert.equal(unknownUserHash(users), decoy, 'made once per cost');
  }
});

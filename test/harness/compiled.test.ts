// The tree the image and the benchmark run: compiled JavaScript started by bin/regmirror.sh.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { pushRandomBlob } from '../../bench/blobs.ts';
import { buildCompiled, launcherEnv } from './compiled.ts';
import { startMirrorProcess, type MirrorProcess } from './mirror.ts';
import { httpRequest, runCommand } from './process.ts';
import { startRegistry, type RegistryServer } from './registry.ts';

let upstream: RegistryServer;
let launcher: string;
let mirror: MirrorProcess;

before(async () => {
  [upstream, launcher] = await Promise.all([startRegistry(), buildCompiled()]);
  mirror = await startMirrorProcess({ launcher, upstreams: [{ registry: 'docker.io', url: upstream.url }] });
});
after(async () => {
  await mirror?.process.stop();
  await upstream?.stop();
});

test('the compiled tree holds JavaScript only, and its launcher runs every program', async () => {
  const root = path.dirname(path.dirname(launcher));
  const found = await runCommand('find', [root, '-name', '*.ts', '-not', '-path', '*/node_modules/*']);
  assert.equal(found.stdout.trim(), '', 'no TypeScript left to strip at start');
  for (const program of ['mirror', 'operator', 'node-agent']) {
    const help = await runCommand('sh', [launcher, program, '--help'], { env: launcherEnv() });
    assert.equal(help.code, 0, `${program} --help: ${help.stderr}`);
    assert.match(help.stdout, /usage: regmirror/);
  }
});

test('the compiled mirror pulls a blob through from the upstream, with the launcher\'s node flags', async () => {
  const digest = await pushRandomBlob(upstream.url, 'library/compiled', 3 << 20, 'compiled');
  const response = await httpRequest(`${mirror.url}/v2/library/compiled/blobs/${digest}`);
  assert.equal(response.status, 200);
  assert.equal(`sha256:${createHash('sha256').update(response.body).digest('hex')}`, digest);
  // sh execs node: the mirror's own process carries the flags the launcher documents
  const cmdline = (await readFile(`/proc/${mirror.process.pid}/cmdline`, 'utf8')).split('\0');
  for (const flag of ['--max-semi-space-size=1', '--heap-growing-percent=100', '--no-allocation-site-pretenuring']) assert.ok(cmdline.includes(flag), cmdline.join(' '));
  assert.ok(cmdline.some((arg) => arg.endsWith('/bin/regmirror.js')), cmdline.join(' '));
});

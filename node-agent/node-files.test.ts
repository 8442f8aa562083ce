// The disk layer's bookkeeping: which directories are the agent's to remove, and which temp files
// a killed write left behind.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdir, readdir, rm, symlink, utimes, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { makeTempDir } from '../test/harness/process.ts';
import { CREATED_DIR_MARKER, ensureDir, removeCreatedDirIfEmpty, removeStaleTempFiles, writeFileAtomic } from './node-files.ts';

test('a directory the agent made is marked and removed once empty; one that was there, or a symlink, never is', async () => {
  const root = await makeTempDir('node-files');
  const made = path.join(root, 'certs.d/ghcr.io');
  assert.equal(await ensureDir(made), true);
  assert.equal(await ensureDir(made), false);
  assert.deepEqual(await readdir(made), [CREATED_DIR_MARKER]);
  assert.deepEqual(await readdir(path.join(root, 'certs.d')), ['ghcr.io'], 'no temp directory left beside it');
  await writeFileAtomic(path.join(made, 'hosts.toml'), 'x');
  assert.equal(await removeCreatedDirIfEmpty(made), false, 'not while something is in it');
  await rm(path.join(made, 'hosts.toml'));
  assert.equal(await removeCreatedDirIfEmpty(made), true);
  assert.deepEqual(await readdir(path.join(root, 'certs.d')), []);

  const theirs = path.join(root, 'certs.d/docker.io');
  await mkdir(theirs);
  assert.equal(await ensureDir(theirs), false);
  assert.equal(await removeCreatedDirIfEmpty(theirs), false, 'an empty directory that was there stays');
  const target = path.join(root, 'shared');
  await ensureDir(target);
  await symlink(target, path.join(root, 'certs.d/quay.io'));
  assert.equal(await removeCreatedDirIfEmpty(path.join(root, 'certs.d/quay.io')), false, 'a symlink is never removed as a directory');
  assert.deepEqual((await readdir(path.join(root, 'certs.d'))).sort(), ['docker.io', 'quay.io']);
});

test('a temp file is removed when its writer is gone: a pid no process has, this process\'s own (between passes), or any older than a write takes', async () => {
  const dir = await makeTempDir('node-files-temp');
  const dead = spawnSync('true').pid!;
  const alive = process.ppid;
  const names = {
    dead: `.hosts.toml.regmirror-${dead}-0a1b2c3d`,
    own: `.daemon.json.regmirror-${process.pid}-0a1b2c3d`,
    liveFresh: `.99-regmirror.conf.regmirror-${alive}-0a1b2c3d`,
    liveOld: `.regmirror-ca.crt.regmirror-${alive}-deadbeef`,
    notOurs: '.hosts.toml.other-123-0a1b2c3d',
    user: 'hosts.toml.regmirror-backup',
  };
  for (const name of Object.values(names)) await writeFile(path.join(dir, name), 'Authorization = "Basic x"\n', { mode: 0o600 });
  const old = new Date(Date.now() - 120_000);
  await utimes(path.join(dir, names.liveOld), old, old);
  // ensureDir's temp directory: only its marker in it
  const tempDir = `.ghcr.io.regmirror-${dead}-0a1b2c3d`;
  await mkdir(path.join(dir, tempDir));
  await writeFile(path.join(dir, tempDir, CREATED_DIR_MARKER), '');
  const strange = `.quay.io.regmirror-${dead}-0a1b2c3d`;
  await mkdir(path.join(dir, strange));
  await writeFile(path.join(dir, strange, 'hosts.toml'), '');

  const removed = (await removeStaleTempFiles(dir)).map((file) => path.basename(file)).sort();
  assert.deepEqual(removed, [names.dead, names.own, names.liveOld, tempDir].sort());
  assert.deepEqual((await readdir(dir)).sort(), [names.liveFresh, names.notOurs, names.user, strange].sort());
  assert.deepEqual(await removeStaleTempFiles(path.join(dir, 'absent')), []);
});

// The disk layer's bookkeeping: which directories are the agent's to remove.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, readdir, rm, symlink } from 'node:fs/promises';
import path from 'node:path';
import { makeTempDir } from '../test/harness/process.ts';
import { CREATED_DIR_MARKER, ensureDir, removeCreatedDirIfEmpty, writeFileAtomic } from './node-files.ts';

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

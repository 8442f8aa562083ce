// Reading containerd's config.toml with the files it imports, in containerd's order: what the
// readiness check merges (containerd-runtime.test.ts checks the same layouts against containerd).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { makeTempDir } from '../test/harness/process.ts';
import { loadContainerdConfig, pathAsMounted } from './containerd-config.ts';

async function tree(files: Record<string, string>): Promise<string> {
  const root = await makeTempDir('containerd-config');
  for (const [name, text] of Object.entries(files)) {
    await mkdir(path.dirname(path.join(root, name)), { recursive: true });
    await writeFile(path.join(root, name), text);
  }
  return root;
}

async function load(root: string, config = 'etc/containerd/config.toml') {
  const loaded = await loadContainerdConfig(path.join(root, config));
  assert.ok(loaded, 'config.toml is there');
  return { files: loaded.files.map((f) => path.relative(root, f.file)), problems: loaded.problems };
}

test('imports are followed breadth first, each file once: globs in sorted order, a relative path from the importing file\'s directory', async () => {
  const root = await tree({
    'etc/containerd/config.toml': '',
    'etc/containerd/conf.d/20-b.toml': 'imports = ["../extra/nested.toml"]\n',
    'etc/containerd/conf.d/10-a.toml': 'imports = ["../config.toml"]\n',
    'etc/containerd/conf.d/README': '',
    'etc/containerd/extra/nested.toml': '',
    'etc/containerd/x1.toml': '',
    'etc/containerd/xa.toml': '',
  });
  await writeFile(path.join(root, 'etc/containerd/config.toml'), `version = 2\nimports = ["${root}/etc/containerd/conf.d/*.toml", "x?.toml", "${root}/etc/containerd/x[0-9a]*.toml"]\n`);
  assert.deepEqual(await load(root), {
    files: [
      'etc/containerd/config.toml',
      'etc/containerd/conf.d/10-a.toml',
      'etc/containerd/conf.d/20-b.toml',
      'etc/containerd/x1.toml',
      'etc/containerd/xa.toml',
      'etc/containerd/extra/nested.toml',
    ],
    // no "*": not a glob for containerd but a file name, which is not there
    problems: [`containerd config ${root}/etc/containerd/x?.toml (imported by ${root}/etc/containerd/config.toml) is not there: containerd does not start with an import it cannot open, and the agent cannot tell whether its CRI reads hosts.toml (an import below config.toml's directory is read at ${root}/etc/containerd; one elsewhere on the host is out of the agent's sight)`],
  });
});

test('an absolute import below the host\'s config directory is read where the pod mounts that directory', async () => {
  assert.equal(pathAsMounted('/etc/containerd/conf.d/*.toml', '/host/etc/containerd/config.toml'), '/host/etc/containerd/conf.d/*.toml');
  assert.equal(pathAsMounted('/etc/containerd/config.toml', '/host/etc/containerd/config.toml'), '/host/etc/containerd/config.toml');
  assert.equal(pathAsMounted('/opt/containerd.d/x.toml', '/host/etc/containerd/config.toml'), '/opt/containerd.d/x.toml');
  assert.equal(pathAsMounted('/tmp/n/etc/containerd/conf.d/a.toml', '/tmp/n/etc/containerd/config.toml'), '/tmp/n/etc/containerd/conf.d/a.toml');

  const root = await tree({
    'host/etc/containerd/config.toml': 'version = 2\nimports = ["/etc/containerd/conf.d/*.toml"]\n',
    'host/etc/containerd/conf.d/registry.toml': 'version = 2\n',
  });
  assert.deepEqual(await load(root, 'host/etc/containerd/config.toml'), {
    files: ['host/etc/containerd/config.toml', 'host/etc/containerd/conf.d/registry.toml'],
    problems: [],
  });
});

test('what keeps the agent from reading the configuration as containerd does is a problem naming the file', async () => {
  const root = await tree({
    'etc/containerd/config.toml': 'version = 2\nimports = ["conf.d/*.toml", "/etc/containerd/missing.toml", "/etc/containerd/[.toml*"]\n',
    'etc/containerd/conf.d/a.toml': '',
  });
  const { files, problems } = await load(root);
  assert.deepEqual(files, ['etc/containerd/config.toml']);
  assert.equal(problems.length, 3, problems.join('\n'));
  assert.match(problems[0]!, /imports "conf\.d\/\*\.toml", a relative glob: containerd 1\.x matches it against its working directory, 2\.x against .*etc\/containerd.*write it as an absolute path/);
  assert.match(problems[2]!, /missing\.toml \(imported by .*config\.toml\) is not there/);
  assert.match(problems[1]!, /imports "\/etc\/containerd\/\[\.toml\*", which is not a pattern containerd can match/);

  // containerd 2.x (version 3) globs a relative pattern from the config's directory
  await writeFile(path.join(root, 'etc/containerd/config.toml'), 'version = 3\nimports = ["conf.d/*.toml"]\n');
  assert.deepEqual(await load(root), { files: ['etc/containerd/config.toml', 'etc/containerd/conf.d/a.toml'], problems: [] });

  await writeFile(path.join(root, 'etc/containerd/conf.d/a.toml'), 'not = = toml');
  assert.match((await load(root)).problems.join('\n'), /conf\.d\/a\.toml \(imported by .*config\.toml\) is not TOML the agent can read/);
  assert.equal(await loadContainerdConfig(path.join(root, 'nothing/config.toml')), null, 'no config.toml at all');
});

test("a glob import from a directory out of the agent's sight is reported, not taken as matching nothing; a missing directory below config.toml's matches nothing", async () => {
  const root = await tree({ 'etc/containerd/config.toml': '' });
  await writeFile(path.join(root, 'etc/containerd/config.toml'), `version = 2\nimports = ["${root}/opt/nvidia/*.toml", "${root}/etc/containerd/conf.d/*.toml"]\n`);
  const { files, problems } = await load(root);
  assert.deepEqual(files, ['etc/containerd/config.toml']);
  assert.equal(problems.length, 1, problems.join('\n'));
  assert.match(problems[0]!, new RegExp(`imports "${root}/opt/nvidia/\\*\\.toml", from ${root}/opt/nvidia, which is out of the agent's sight`));
});

// The regmirror container image for the whole-system test, built by the real Docker engine from
// the repository's Dockerfile. No base image can be pulled on these machines, so the Node 24 base
// is made here: a minimal Debian from debootstrap, the Node 24 binary the `node` npm package
// installed, and the npm that runs this machine's `npm`. Its root filesystem tarball is cached
// per machine, keyed by its inputs, so only the first run pays for debootstrap (about 2 minutes).
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, realpathSync, renameSync, rmSync, statSync } from 'node:fs';
import { homedir } from 'node:os';
import path from 'node:path';
import type { Dockerd } from '../harness/dockerd.ts';
import { makeTempDir, runCommand } from '../harness/process.ts';

export const REPO_ROOT = path.resolve(import.meta.dirname, '..', '..');
export const BASE_IMAGE = 'regmirror-base:test';

const DEBIAN_SUITE = 'bookworm';
const DEBIAN_MIRROR = process.env.REGMIRROR_DEBIAN_MIRROR ?? 'http://deb.debian.org/debian';
/** Bumped when the recipe below changes in a way the other inputs do not show. */
const RECIPE_VERSION = '2';
const DEBOOTSTRAP_TIMEOUT_MS = 15 * 60_000;
const BUILD_TIMEOUT_MS = 15 * 60_000;

function say(message: string): void {
  process.stderr.write(`e2e image: ${message}\n`);
}

/** The real Node 24 binary (node_modules/.bin/node is a symlink into the `node` package). */
export function nodeBinary(): string {
  return realpathSync(path.join(REPO_ROOT, 'node_modules', '.bin', 'node'));
}

/** The npm package directory behind this machine's `npm` command (npm is plain JavaScript). */
async function npmDirectory(): Promise<string> {
  const which = await runCommand('sh', ['-c', 'command -v npm']);
  if (which.code !== 0) throw new Error('npm is not on PATH; the base image takes its npm from the machine');
  const cli = realpathSync(which.stdout.trim()); // .../node_modules/npm/bin/npm-cli.js
  const dir = path.resolve(path.dirname(cli), '..');
  if (!existsSync(path.join(dir, 'package.json'))) throw new Error(`cannot find npm's package directory from ${cli}`);
  return dir;
}

function cacheRoot(): string {
  return process.env.REGMIRROR_E2E_CACHE ?? path.join(process.env.XDG_CACHE_HOME ?? path.join(homedir(), '.cache'), 'regmirror', 'e2e');
}

/**
 * The machine's CA bundle. The base takes it, so that `npm ci` in the image build trusts what this
 * machine trusts (a TLS-intercepting egress proxy here); Node's own CA list is used besides it.
 */
export function machineCaBundle(): string | undefined {
  const file = process.env.SSL_CERT_FILE ?? '/etc/ssl/certs/ca-certificates.crt';
  return existsSync(file) ? file : undefined;
}

async function baseInputs(): Promise<{ key: string; node: string; npm: string; npmVersion: string; ca?: string }> {
  const node = nodeBinary();
  const npm = await npmDirectory();
  const npmVersion = (JSON.parse(readFileSync(path.join(npm, 'package.json'), 'utf8')) as { version: string }).version;
  const nodeStat = statSync(node);
  const nodeVersion = (await runCommand(node, ['--version'])).stdout.trim();
  const ca = machineCaBundle();
  const key = createHash('sha256')
    .update(JSON.stringify([RECIPE_VERSION, DEBIAN_SUITE, DEBIAN_MIRROR, nodeVersion, nodeStat.size, npmVersion, process.arch]))
    .update(ca ? readFileSync(ca) : '')
    .digest('hex')
    .slice(0, 16);
  return { key, node, npm, npmVersion, ca };
}

async function run(cmd: string, args: string[], timeoutMs = 300_000): Promise<string> {
  const result = await runCommand(cmd, args, { timeoutMs });
  if (result.code !== 0) throw new Error(`${cmd} ${args.join(' ')} failed (${result.code}):\n${result.stderr.slice(-3000)}${result.stdout.slice(-2000)}`);
  return result.stdout;
}

/** The cached root filesystem tarball of the base image, made first if missing. */
export async function baseRootfsTarball(): Promise<string> {
  const inputs = await baseInputs();
  const dir = path.join(cacheRoot(), `base-${inputs.key}`);
  const tarball = path.join(dir, 'rootfs.tar');
  if (existsSync(tarball)) return tarball;

  const started = Date.now();
  say(`making the Node 24 base (debootstrap ${DEBIAN_SUITE} minbase + node + npm ${inputs.npmVersion}); later runs reuse ${tarball}`);
  const work = await makeTempDir('e2e-base');
  const root = path.join(work, 'root');
  await run('debootstrap', ['--variant=minbase', DEBIAN_SUITE, root, DEBIAN_MIRROR], DEBOOTSTRAP_TIMEOUT_MS);
  // What an image needs no more of: docs, manuals, locales, apt's downloaded lists and packages.
  for (const sub of ['usr/share/doc', 'usr/share/man', 'usr/share/info', 'usr/share/locale', 'var/cache/apt', 'var/lib/apt/lists']) {
    rmSync(path.join(root, sub), { recursive: true, force: true });
  }
  // The official node image's layout: node in /usr/local/bin, npm in /usr/local/lib/node_modules.
  await run('install', ['-D', '-m', '0755', inputs.node, path.join(root, 'usr/local/bin/node')]);
  mkdirSync(path.join(root, 'usr/local/lib/node_modules'), { recursive: true });
  await run('cp', ['-a', inputs.npm, path.join(root, 'usr/local/lib/node_modules/npm')]);
  await run('ln', ['-s', '../lib/node_modules/npm/bin/npm-cli.js', path.join(root, 'usr/local/bin/npm')]);
  // The machine's npm may carry a distribution's built-in npmrc (nodedir, cafile paths); the image's npm has none.
  rmSync(path.join(root, 'usr/local/lib/node_modules/npm/npmrc'), { force: true });
  if (inputs.ca) await run('install', ['-D', '-m', '0644', inputs.ca, path.join(root, 'etc/ssl/certs/ca-certificates.crt')]);
  mkdirSync(dir, { recursive: true });
  const partial = `${tarball}.partial-${process.pid}`;
  await run('tar', ['--numeric-owner', '-C', root, '-cf', partial, '.']);
  renameSync(partial, tarball);
  rmSync(work, { recursive: true, force: true });
  say(`base made in ${Math.round((Date.now() - started) / 1000)}s (${Math.round(statSync(tarball).size / 2 ** 20)} MiB)`);
  return tarball;
}

/**
 * overlay2 when this machine can mount overlayfs, else vfs. With vfs every build step copies the
 * whole root filesystem (minutes for this image); with overlay2 the build takes about a minute.
 */
export async function dockerStorageDriver(): Promise<'overlay2' | 'vfs'> {
  const dir = await makeTempDir('overlay-probe');
  for (const sub of ['lower', 'upper', 'work', 'merged']) mkdirSync(path.join(dir, sub));
  const merged = path.join(dir, 'merged');
  const mount = await runCommand('mount', ['-t', 'overlay', 'overlay', '-o', `lowerdir=${dir}/lower,upperdir=${dir}/upper,workdir=${dir}/work`, merged]);
  if (mount.code !== 0) return 'vfs';
  await runCommand('umount', [merged]);
  rmSync(dir, { recursive: true, force: true });
  return 'overlay2';
}

export interface BuiltImage {
  tag: string;
  /** Bytes the image takes, as `docker image inspect` reports its Size. */
  size: number;
  buildSeconds: number;
  baseSeconds: number;
}

/**
 * Imports the cached base into `dockerd` as regmirror-base:test and builds the repository's
 * Dockerfile on it (classic builder; RUN steps use the host network so `npm ci` reaches the registry).
 */
export async function buildImage(dockerd: Dockerd, tag: string): Promise<BuiltImage> {
  const docker = async (args: string[]): Promise<string> => {
    // The CLI's default builder is BuildKit (buildx); dockerd 20.10 here builds with the classic one.
    const result = await dockerd.docker(args, { env: { DOCKER_BUILDKIT: '0' } });
    if (result.code !== 0) throw new Error(`docker ${args.join(' ')} failed (${result.code}):\n${result.stderr.slice(-4000)}${result.stdout.slice(-4000)}`);
    return result.stdout;
  };
  const baseStarted = Date.now();
  const tarball = await baseRootfsTarball();
  await docker([
    'import',
    '--change', 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin',
    '--change', 'CMD ["node"]',
    ...(machineCaBundle() ? ['--change', 'ENV NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt'] : []),
    tarball, BASE_IMAGE,
  ]);
  const baseSeconds = (Date.now() - baseStarted) / 1000;
  const started = Date.now();
  // Its own time limit: with vfs (no overlayfs on the machine) every step copies the whole root
  // filesystem, and the build can take several minutes.
  const build = await runCommand('docker', ['build', '--network', 'host', '--build-arg', `BASE_IMAGE=${BASE_IMAGE}`, '--tag', tag, REPO_ROOT], {
    env: { ...process.env, DOCKER_HOST: dockerd.host, DOCKER_BUILDKIT: '0' },
    timeoutMs: BUILD_TIMEOUT_MS,
  });
  if (build.code !== 0) throw new Error(`docker build failed (${build.code}):\n${build.stderr.slice(-4000)}${build.stdout.slice(-4000)}`);
  const buildSeconds = (Date.now() - started) / 1000;
  const size = Number((await docker(['image', 'inspect', '--format', '{{.Size}}', tag])).trim());
  return { tag, size, buildSeconds, baseSeconds };
}

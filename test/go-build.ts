// What the test binaries built from Go modules share (test/kube, test/containerd2): finding Go, and
// one `go build` with progress every 30 seconds into a fresh directory that is renamed into place
// only when the build succeeded, so an interrupted build never leaves a half-filled cache.
import { spawn, spawnSync } from 'node:child_process';
import { accessSync, constants, mkdirSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { homedir } from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';

const PROGRESS_INTERVAL_MS = 30_000;

/** `$XDG_CACHE_HOME/regmirror/<name>` (default `~/.cache/regmirror/<name>`): outside the repository. */
export function regmirrorCacheDir(name: string): string {
  return path.join(process.env.XDG_CACHE_HOME ?? path.join(homedir(), '.cache'), 'regmirror', name);
}

export function isExecutable(file: string): boolean {
  try {
    accessSync(file, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

/** `go1.26.8` when Go is on PATH, else undefined. */
export function goCommand(): string | undefined {
  const found = spawnSync('go', ['version'], { encoding: 'utf8' });
  if (found.status === 0) return /go\d[\w.]*/.exec(found.stdout)?.[0] ?? found.stdout.trim();
  return undefined;
}

export function minutes(ms: number): string {
  const s = Math.round(ms / 1000);
  return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, '0')}s`;
}

function countPackages(cwd: string, goPackages: string[], tags: string[]): number | undefined {
  const listed = spawnSync('go', ['list', '-deps', ...(tags.length ? [`-tags=${tags.join(',')}`] : []), ...goPackages], { cwd, encoding: 'utf8', maxBuffer: 64 << 20 });
  if (listed.status !== 0) return undefined;
  return listed.stdout.split('\n').filter(Boolean).length;
}

export interface GoBuild {
  /** The Go module's directory (named in errors relative to the repository). */
  cwd: string;
  packages: string[];
  ldflags: string;
  tags?: string[];
  /** The cache entry; built into `<dir>.partial-<pid>` and renamed into place. */
  dir: string;
  /** Written to `<dir>/build-info.json` with `buildSeconds` added. */
  info: Record<string, unknown>;
  say(line: string): void;
}

/** Builds with CGO off; returns the seconds it took; throws with the last lines of Go's errors. */
export async function goBuild(build: GoBuild): Promise<number> {
  const { cwd, packages, dir, say } = build;
  const tags = build.tags ?? [];
  const partial = `${dir}.partial-${process.pid}`;
  rmSync(partial, { recursive: true, force: true });
  mkdirSync(partial, { recursive: true });
  const started = Date.now();
  const total = countPackages(cwd, packages, tags);
  const args = ['build', '-v', '-trimpath', ...(tags.length ? [`-tags=${tags.join(',')}`] : []), `-ldflags=${build.ldflags}`, '-o', `${partial}/`, ...packages];
  const child = spawn('go', args, { cwd, env: { ...process.env, CGO_ENABLED: '0' }, stdio: ['ignore', 'inherit', 'pipe'] });
  let compiled = 0;
  let last = '';
  const errors: string[] = [];
  createInterface({ input: child.stderr }).on('line', (line) => {
    if (/^[\w.-]+(\/[\w.~+-]+)*$/.test(line)) {
      compiled += 1;
      last = line;
    } else if (line.startsWith('go: downloading')) {
      process.stdout.write(`${line}\n`);
    } else {
      errors.push(line);
      process.stderr.write(`${line}\n`);
    }
  });
  const progress = setInterval(() => {
    const of = total ? ` of at most ${total}` : '';
    say(`still building after ${minutes(Date.now() - started)}: ${compiled}${of} packages compiled (last ${last})`);
  }, PROGRESS_INTERVAL_MS);
  const code = await new Promise<number>((resolve) => {
    child.on('error', () => resolve(-1));
    child.on('close', (status) => resolve(status ?? -1));
  });
  clearInterval(progress);
  if (code !== 0) {
    rmSync(partial, { recursive: true, force: true });
    throw new Error(`go build failed (exit ${code}) in ${path.relative(path.resolve(import.meta.dirname, '..'), cwd)}${errors.length ? `:\n${errors.slice(-20).join('\n')}` : ''}`);
  }
  const buildSeconds = Math.round((Date.now() - started) / 1000);
  writeFileSync(path.join(partial, 'build-info.json'), `${JSON.stringify({ ...build.info, builtAt: new Date().toISOString(), buildSeconds }, null, 2)}\n`);
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(path.dirname(dir), { recursive: true });
  renameSync(partial, dir);
  say(`built in ${minutes(buildSeconds * 1000)} into ${dir}`);
  return buildSeconds;
}

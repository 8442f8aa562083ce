// containerd 2.x (and its ctr) for the node agent's tests, built from the Go module proxy by the Go
// modules in test/containerd2/go/v2.<minor> and cached per machine, outside the repository, keyed by
// the release. No Debian package ships containerd 2.x (Debian 12 has 1.6), and most new clusters run
// it (kind since v0.27, recent k3s, EKS AL2023). See ../harness/README.md.
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { goBuild, goCommand, isExecutable, regmirrorCacheDir } from '../go-build.ts';

/** The minor releases built: 2.1 has no default config_path, 2.2 brought one. */
export const CONTAINERD2_RELEASES = ['2.1', '2.2'] as const;
export type Containerd2Release = (typeof CONTAINERD2_RELEASES)[number];

export const CONTAINERD2_BUILD_COMMAND = 'npm run containerd2:build';

const MODULE = 'github.com/containerd/containerd/v2';
/** Plugins that need cgo or kernel features a test machine lacks; leaving them out needs no C toolchain. */
const BUILD_TAGS = ['no_btrfs', 'no_devmapper', 'no_zfs'];

function moduleDir(release: Containerd2Release): string {
  return path.join(import.meta.dirname, 'go', `v${release}`);
}

/** The patch release test/containerd2/go/v<release>/go.mod pins, e.g. v2.1.9. */
export function containerd2Version(release: Containerd2Release): string {
  const goMod = readFileSync(path.join(moduleDir(release), 'go.mod'), 'utf8');
  const version = new RegExp(`^\\s*${MODULE.replaceAll('.', '\\.')}\\s+(v\\S+)`, 'm').exec(goMod)?.[1];
  if (!version) throw new Error(`test/containerd2/go/v${release}/go.mod does not require ${MODULE}`);
  return version;
}

function inputsHash(release: Containerd2Release): string {
  const hash = createHash('sha256').update(BUILD_TAGS.join(','));
  for (const file of ['go.mod', 'go.sum']) hash.update(file).update('\0').update(readFileSync(path.join(moduleDir(release), file)));
  return hash.digest('hex').slice(0, 16);
}

/** `$REGMIRROR_CONTAINERD2_CACHE/<version>`, by default `~/.cache/regmirror/containerd/<version>`. */
function binaryDir(release: Containerd2Release): string {
  return path.join(process.env.REGMIRROR_CONTAINERD2_CACHE ?? regmirrorCacheDir('containerd'), containerd2Version(release));
}

export interface Containerd2Binaries {
  release: Containerd2Release;
  version: string;
  containerd: string;
  ctr: string;
}

/** The cached binaries when they exist and were built from the current go.mod; else why not. */
export function containerd2Binaries(release: Containerd2Release): { ok: true; binaries: Containerd2Binaries } | { ok: false; reason: string } {
  const dir = binaryDir(release);
  const binaries = { release, version: containerd2Version(release), containerd: path.join(dir, 'containerd'), ctr: path.join(dir, 'ctr') };
  if (!isExecutable(binaries.containerd) || !isExecutable(binaries.ctr)) return { ok: false, reason: `containerd ${binaries.version} not built in ${dir}` };
  let inputs: unknown;
  try {
    inputs = (JSON.parse(readFileSync(path.join(dir, 'build-info.json'), 'utf8')) as { inputs?: unknown }).inputs;
  } catch {
    return { ok: false, reason: `${dir}/build-info.json is missing or unreadable` };
  }
  if (inputs !== inputsHash(release)) return { ok: false, reason: `containerd in ${dir} was built from an older test/containerd2/go/v${release}` };
  return { ok: true, binaries };
}

function say(line: string): void {
  process.stdout.write(`containerd 2.x test binaries: ${line}\n`);
}

/**
 * Builds what is missing or stale (about 2 minutes each on 2 cores from an empty Go build cache).
 * In CI (`CI=true`), or with `strict`, no Go or a failed build throws; elsewhere one loud line says
 * the containerd 2.x tests are skipped and names the command (`REGMIRROR_SKIP_CONTAINERD2_BUILD=1`
 * skips the build on purpose).
 */
export async function ensureContainerd2Binaries(opts: { force?: boolean; strict?: boolean } = {}): Promise<void> {
  const strict = opts.strict === true || process.env.CI === 'true';
  const skip = (why: string): void => {
    const message = `containerd 2.x tests ${strict ? 'cannot run' : 'will be SKIPPED'}: ${why}. Build the binaries with \`${CONTAINERD2_BUILD_COMMAND}\``;
    if (strict) throw new Error(message);
    process.stderr.write(`\n*** ${message} ***\n\n`);
  };
  for (const release of CONTAINERD2_RELEASES) {
    const status = containerd2Binaries(release);
    if (status.ok && !opts.force) {
      say(`using containerd ${status.binaries.version} from ${path.dirname(status.binaries.containerd)}`);
      continue;
    }
    const why = status.ok ? 'a rebuild was asked' : status.reason;
    if (!opts.force && !strict && process.env.REGMIRROR_SKIP_CONTAINERD2_BUILD === '1') {
      skip(`REGMIRROR_SKIP_CONTAINERD2_BUILD=1 and ${why}`);
      continue;
    }
    const go = goCommand();
    if (!go) {
      skip(`no Go toolchain on PATH (Go 1.26 or newer builds them), and ${why}`);
      continue;
    }
    const version = containerd2Version(release);
    say(`${why}: building containerd and ctr ${version} with ${go} (CGO off, tags ${BUILD_TAGS.join(' ')}); later runs reuse them`);
    try {
      await goBuild({
        cwd: moduleDir(release),
        packages: [`${MODULE}/cmd/containerd`, `${MODULE}/cmd/ctr`],
        tags: BUILD_TAGS,
        ldflags: `-s -w -X ${MODULE}/version.Version=${version}`,
        dir: binaryDir(release),
        info: { version, inputs: inputsHash(release), go, tags: BUILD_TAGS },
        say,
      });
    } catch (err) {
      skip((err as Error).message);
    }
  }
}

// The real Kubernetes control plane for tests (kube-apiserver, kube-controller-manager, etcd) is
// built from Go modules by test/kube/go and cached per machine, outside the repository, keyed by the
// Kubernetes version. This module finds those binaries and builds them when they are missing.
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { goBuild, goCommand, isExecutable, regmirrorCacheDir } from '../go-build.ts';

export const KUBE_BINARIES = ['etcd', 'kube-apiserver', 'kube-controller-manager'] as const;
export type KubeBinary = (typeof KUBE_BINARIES)[number];

/** The command that builds the binaries; every message that tells someone to build them names it. */
export const KUBE_BUILD_COMMAND = 'npm run kube:build';

const GO_MODULE_DIR = path.join(import.meta.dirname, 'go');
const BUILD_INFO = 'build-info.json';

/** Files whose content decides what gets built; a change to any of them means a rebuild. */
const BUILD_INPUTS = ['go.mod', 'go.sum', 'cmd/etcd/main.go'];

const GO_PACKAGES: Record<KubeBinary, string> = {
  etcd: './cmd/etcd',
  'kube-apiserver': 'k8s.io/kubernetes/cmd/kube-apiserver',
  'kube-controller-manager': 'k8s.io/kubernetes/cmd/kube-controller-manager',
};

interface BuildInfo {
  kubernetes: string;
  etcd: string;
  inputs: string;
  go: string;
  builtAt: string;
  buildSeconds: number;
}

function requiredVersion(goMod: string, module: string): string {
  const match = new RegExp(`^\\s*(?:require\\s+)?${module.replaceAll('.', '\\.')}\\s+(v\\S+)`, 'm').exec(goMod);
  if (!match?.[1]) throw new Error(`test/kube/go/go.mod does not require ${module}`);
  return match[1];
}

function readGoMod(): string {
  return readFileSync(path.join(GO_MODULE_DIR, 'go.mod'), 'utf8');
}

/** Kubernetes and etcd versions pinned by test/kube/go/go.mod. */
export function kubeVersions(): { kubernetes: string; etcd: string } {
  const goMod = readGoMod();
  return {
    kubernetes: requiredVersion(goMod, 'k8s.io/kubernetes'),
    etcd: requiredVersion(goMod, 'go.etcd.io/etcd/server/v3'),
  };
}

function inputsHash(): string {
  const hash = createHash('sha256');
  for (const file of BUILD_INPUTS) hash.update(file).update('\0').update(readFileSync(path.join(GO_MODULE_DIR, file)));
  return hash.digest('hex').slice(0, 16);
}

/** `$REGMIRROR_KUBE_CACHE/<k8s-version>`, by default `~/.cache/regmirror/kube/<k8s-version>`. */
export function kubeBinaryDir(): string {
  const root = process.env.REGMIRROR_KUBE_CACHE ?? regmirrorCacheDir('kube');
  return path.join(root, kubeVersions().kubernetes);
}

export function kubeBinaryPath(binary: KubeBinary): string {
  return path.join(kubeBinaryDir(), binary);
}

/** Whether the cached binaries exist and were built from the current test/kube/go. */
export function kubeBinariesStatus(): { ok: true; dir: string } | { ok: false; dir: string; reason: string } {
  const dir = kubeBinaryDir();
  const missing = KUBE_BINARIES.filter((binary) => !isExecutable(path.join(dir, binary)));
  if (missing.length > 0) return { ok: false, dir, reason: `${missing.join(', ')} not built in ${dir}` };
  let info: BuildInfo;
  try {
    info = JSON.parse(readFileSync(path.join(dir, BUILD_INFO), 'utf8')) as BuildInfo;
  } catch {
    return { ok: false, dir, reason: `${dir}/${BUILD_INFO} is missing or unreadable` };
  }
  if (info.inputs !== inputsHash()) return { ok: false, dir, reason: `binaries in ${dir} were built from an older test/kube/go` };
  return { ok: true, dir };
}

function say(line: string): void {
  process.stdout.write(`kube test binaries: ${line}\n`);
}

function loud(line: string): void {
  process.stderr.write(`\n*** ${line} ***\n\n`);
}

/** `-X` flags that give the binaries their release version, as Kubernetes' own build does (hack/lib/version.sh). */
function versionLdflags(kubernetes: string): string[] {
  const [, major = '', minor = ''] = /^v(\d+)\.(\d+)\./.exec(kubernetes) ?? [];
  const buildDate = new Date().toISOString().replace(/\.\d+Z$/, 'Z');
  const flags: string[] = [];
  for (const pkg of ['k8s.io/component-base/version', 'k8s.io/client-go/pkg/version']) {
    flags.push(
      `-X ${pkg}.gitVersion=${kubernetes}`,
      `-X ${pkg}.gitMajor=${major}`,
      `-X ${pkg}.gitMinor=${minor}`,
      `-X ${pkg}.gitTreeState=clean`,
      `-X ${pkg}.buildDate=${buildDate}`,
    );
  }
  return flags;
}

/** Builds the three binaries into the cache (go-build.ts: progress every 30 s, renamed into place when done). */
async function buildKubeBinaries(goVersion: string): Promise<void> {
  const { kubernetes, etcd } = kubeVersions();
  const dir = kubeBinaryDir();
  say(`building kube-apiserver and kube-controller-manager ${kubernetes} and etcd ${etcd} with ${goVersion}`);
  say(`into ${dir}; a first build takes about 17 CPU-minutes (15-30 minutes on 2 cores), later runs reuse it`);
  say('resolving Go modules (a fresh machine downloads about 700 MB into the Go module cache)');
  await goBuild({
    cwd: GO_MODULE_DIR,
    packages: KUBE_BINARIES.map((binary) => GO_PACKAGES[binary]),
    ldflags: `-s -w ${versionLdflags(kubernetes).join(' ')}`,
    dir,
    info: { kubernetes, etcd, inputs: inputsHash(), go: goVersion },
    say,
  });
}

/**
 * Makes sure the cached binaries exist, building them when they are missing or stale.
 * In CI (`CI=true`) a missing Go toolchain or a failed build throws; elsewhere it prints one loud
 * line naming the command that builds them, and the tests that need Kubernetes are skipped.
 * `REGMIRROR_SKIP_KUBE_BUILD=1` skips the build on purpose (outside CI). `strict` fails as in CI;
 * `force` rebuilds a current cache.
 */
export async function ensureKubeBinaries(opts: { force?: boolean; strict?: boolean } = {}): Promise<void> {
  const strict = opts.strict === true || process.env.CI === 'true';
  const status = kubeBinariesStatus();
  if (status.ok && !opts.force) {
    say(`using ${kubeVersions().kubernetes} from ${status.dir}`);
    return;
  }
  const skip = (why: string): void => {
    const fix = `Build the binaries with \`${KUBE_BUILD_COMMAND}\``;
    if (strict) throw new Error(`Kubernetes API tests cannot run: ${why}. ${fix}`);
    loud(`Kubernetes API tests will be SKIPPED: ${why}. ${fix}`);
  };
  if (!opts.force && process.env.REGMIRROR_SKIP_KUBE_BUILD === '1' && !strict) {
    skip(`REGMIRROR_SKIP_KUBE_BUILD=1 and ${status.ok ? 'a rebuild was asked' : status.reason}`);
    return;
  }
  const goVersion = goCommand();
  if (!goVersion) {
    skip(`no Go toolchain on PATH (Go ${goDirective()} or newer builds them), and ${status.ok ? 'a rebuild was asked' : status.reason}`);
    return;
  }
  if (!status.ok) say(status.reason);
  try {
    await buildKubeBinaries(goVersion);
  } catch (err) {
    skip((err as Error).message);
  }
}

function goDirective(): string {
  return /^go\s+(\S+)/m.exec(readGoMod())?.[1] ?? 'recent';
}


// `npm test` runs this first (pretest): it makes a fresh machine ready for the suite, so CI needs
// nothing beyond `npm ci && npm test`. Each step says what it does; none is silent for long.
import { execFileSync, spawnSync } from 'node:child_process';
import { ensureContainerd2Binaries } from './containerd2/binaries.ts';
import { ensureKubeBinaries } from './kube/binaries.ts';

/** Debian packages that provide the real components the tests drive, keyed by the command used. */
const DEBIAN_PACKAGES: Record<string, string> = {
  'docker-registry': 'docker-registry', // distribution 2.8: upstream registries and the anchor proxy
  skopeo: 'skopeo', // containers/image: pushes fixtures, plays CRI-O/Podman as a client
  containerd: 'containerd', // a node's runtime (kind, k3s, EKS, GKE)
  ctr: 'containerd',
  dockerd: 'docker.io', // a node running Docker Engine
  nginx: 'nginx-light', // the benchmark's "serve stored bytes" limit
  hey: 'hey', // load generator for the benchmark
  debootstrap: 'debootstrap', // the whole-system test's Node 24 base image (test/e2e/image.ts)
};

function has(command: string): boolean {
  return spawnSync('sh', ['-c', `command -v ${command}`], { stdio: 'ignore' }).status === 0;
}

export function ensureDebianPackages(): void {
  const missing = [...new Set(Object.entries(DEBIAN_PACKAGES).filter(([cmd]) => !has(cmd)).map(([, pkg]) => pkg))];
  if (missing.length === 0) return;
  const command = `apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ${missing.join(' ')}`;
  if (process.getuid?.() !== 0) {
    process.stderr.write(`test setup: missing Debian packages ${missing.join(', ')}. Install them as root:\n  ${command}\n`);
    process.exit(1);
  }
  process.stdout.write(`test setup: installing Debian packages: ${missing.join(' ')}\n`);
  execFileSync('sh', ['-c', command], { stdio: 'inherit' });
}

ensureDebianPackages();
await ensureKubeBinaries(); // kube-apiserver, kube-controller-manager and etcd from test/kube/go
await ensureContainerd2Binaries(); // containerd 2.1 and 2.2 (Debian has 1.6) from test/containerd2/go

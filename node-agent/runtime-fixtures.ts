// What the real-runtime tests share: two upstream registries standing in for Docker Hub and
// ghcr.io with a test image each, a regmirror mirror in front of both, and a count of the
// requests the mirror answered (its /metrics), so a test can tell a pull went through it.
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import bcrypt from 'bcryptjs';
import { runCommand, httpRequest, makeTempDir, type CommandResult } from '../test/harness/process.ts';
import { pushImage, writeOciImage } from '../test/harness/oci-image.ts';
import { startRegistry, type RegistryServer } from '../test/harness/registry.ts';
import { startTestMirror, type TestMirror } from '../test/harness/mirror.ts';

export interface MirroredRegistries {
  hub: RegistryServer;
  ghcr: RegistryServer;
  mirror: TestMirror;
  /** Pushes a fresh image to the stand-in registry as `repo:tag`. */
  push(registry: RegistryServer, repo: string, tag: string): Promise<void>;
  stop(): Promise<void>;
}

/** `auth`: the mirror requires these credentials (an htpasswd file with one bcrypt entry). */
export async function startMirroredRegistries(opts: { auth?: { username: string; password: string }; tls?: { certFile: string; keyFile: string } } = {}): Promise<MirroredRegistries> {
  let htpasswd: string | undefined;
  if (opts.auth) {
    htpasswd = path.join(await makeTempDir('mirror-auth'), 'htpasswd');
    await writeFile(htpasswd, `${opts.auth.username}:${await bcrypt.hash(opts.auth.password, 4)}\n`);
  }
  const hub = await startRegistry();
  const ghcr = await startRegistry();
  const mirror = await startTestMirror({
    upstreams: [
      { registry: 'docker.io', url: hub.url },
      { registry: 'ghcr.io', url: ghcr.url },
      // a registry with a port, served by the same upstream as ghcr.io
      { registry: 'registry.example.com:5000', url: ghcr.url },
    ],
    default: 'docker.io',
    extra: {
      ...(htpasswd ? { auth: { htpasswd, allowAnonymousWithCredentials: false } } : {}),
      ...(opts.tls ? { tls: { cert: opts.tls.certFile, key: opts.tls.keyFile } } : {}),
    },
  });
  return {
    hub,
    ghcr,
    mirror,
    async push(registry, repo, tag) {
      const dir = await makeTempDir('image');
      const image = await writeOciImage(path.join(dir, 'layout'), { tag, layerSizes: [8 * 1024] });
      await pushImage(image, `${registry.host}/${repo}:${tag}`);
    },
    async stop() {
      await mirror.stop();
      await hub.stop();
      await ghcr.stop();
    },
  };
}

/** Manifest requests the mirror has answered so far, from its Prometheus counter. */
export async function mirrorManifestRequests(mirror: { url: string }, ca?: string): Promise<number> {
  const text = (await httpRequest(`${mirror.url}/metrics`, ca ? { ca } : {})).body.toString();
  let total = 0;
  for (const line of text.split('\n')) {
    if (line.startsWith('regmirror_http_requests_total{') && line.includes('route="manifest"')) {
      total += Number(line.slice(line.lastIndexOf(' ') + 1));
    }
  }
  return total;
}

const REPO = path.resolve(import.meta.dirname, '..');

/** `regmirror node-agent ...args` as the DaemonSet runs it; throws with its output unless it exits 0. */
export async function runNodeAgent(args: string[], env: NodeJS.ProcessEnv = {}): Promise<CommandResult> {
  const result = await runCommand(process.execPath, ['bin/regmirror.ts', 'node-agent', ...args], {
    cwd: REPO,
    env: { ...process.env, ...env },
    timeoutMs: 60_000,
  });
  if (result.code !== 0) throw new Error(`regmirror node-agent ${args.join(' ')} exited ${result.code}:\n${result.stderr}${result.stdout}`);
  return result;
}

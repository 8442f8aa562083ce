// A node's containerd (1.6, Debian's package, or 2.x built by test/containerd2) running as root
// with every path under a temp dir, so several can run at once and none touches /var/lib/containerd
// or /run/containerd.
import { mkdir, writeFile } from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import type { Containerd2Binaries } from '../containerd2/binaries.ts';
import { makeTempDir, registerExitCleanup, runCommand, spawnServer, unmountUnder, type CommandResult, type ServerProcess } from './process.ts';

export interface HostsTomlMirror {
  /** http://127.0.0.1:PORT (plain HTTP is fine: the scheme is taken from here) */
  url: string;
  capabilities?: ('pull' | 'resolve' | 'push')[];
  /** Skip TLS verification for an https:// mirror. */
  skipVerify?: boolean;
  /** CA file to trust for an https:// mirror. */
  ca?: string;
}

export interface Containerd {
  socket: string;
  hostsDir: string;
  root: string;
  state: string;
  configFile: string;
  /** Runs `ctr -a socket ...args` (namespace `default` unless args say otherwise). */
  ctr(args: string[]): Promise<CommandResult>;
  /** `ctr images pull --hosts-dir hostsDir ref`; throws with ctr's output on failure. */
  pull(ref: string, opts?: { platform?: string; allPlatforms?: boolean; namespace?: string }): Promise<void>;
  /** Image names known to containerd (namespace `default`). */
  images(namespace?: string): Promise<string[]>;
  /** Writes `<hostsDir>/<registry>/hosts.toml`: server plus one [host] table per mirror, in order. */
  writeHostsToml(registry: string, opts: { server?: string; ca?: string; mirrors?: HostsTomlMirror[] }): Promise<string>;
  output(): string;
  stop(): Promise<void>;
  kill9(): Promise<void>;
  /** Starts again after stop() or kill9() with the same config, root and state. */
  start(): Promise<void>;
}

export interface StartContainerdOptions {
  /** Where hosts.toml files live (default: <tempdir>/certs.d, created empty). */
  hostsDir?: string;
  /**
   * containerd 2.x (and its ctr) to run instead of Debian's 1.6 (test/containerd2/binaries.ts);
   * the config is then version 3 unless `version` says otherwise (2.x migrates 1 and 2 in memory).
   */
  binaries?: Containerd2Binaries;
  /** Write `config_path = hostsDir` for the CRI plugin (default true), or what this returns; false is a node that lacks it. */
  configPath?: boolean | ((hostsDir: string) => string);
  /** The config's version (default 2, 3 with `binaries`); version 1 writes no `version` line and names plugins by ID (`[plugins.cri]`). */
  version?: 1 | 2 | 3;
  /** TOML appended to config.toml (tables of its own, such as the images plugin's `use_local_image_pull`). */
  extraToml?: string;
  /** The [plugins] table config_path goes under (default the CRI plugin's for the version): another one is a node whose setting containerd does not read. */
  registryPlugin?: string;
  /** config.toml's `imports`: absolute, or relative to the temp directory config.toml is in (written absolute). */
  imports?: string[];
  /** Files to write before containerd starts, path relative to config.toml's directory → TOML text, given the hosts directory. */
  files?: (hostsDir: string) => Record<string, string>;
}

function tomlString(value: string): string {
  return JSON.stringify(value); // TOML basic strings escape like JSON for the paths used here
}

async function socketAnswers(socket: string): Promise<boolean> {
  return new Promise((resolve) => {
    const conn = net.connect(socket, () => {
      conn.destroy();
      resolve(true);
    });
    conn.on('error', () => resolve(false));
  });
}

export async function startContainerd(opts: StartContainerdOptions = {}): Promise<Containerd> {
  const dir = await makeTempDir('containerd');
  const root = path.join(dir, 'root');
  const state = path.join(dir, 'state');
  const socket = path.join(dir, 'containerd.sock');
  const hostsDir = opts.hostsDir ?? path.join(dir, 'certs.d');
  const configFile = path.join(dir, 'config.toml');
  await mkdir(hostsDir, { recursive: true });
  // version 1 names plugins by ID, version 2 and 3 by URI
  const version = opts.version ?? (opts.binaries ? 3 : 2);
  const v1 = version === 1;
  const snapshotters = ['aufs', 'btrfs', 'zfs', 'devmapper'].map((id) => (v1 ? id : `io.containerd.snapshotter.v1.${id}`));
  // containerd 2.x also starts NRI, on a socket shared by every containerd (/var/run/nri/nri.sock)
  const disabled = opts.binaries ? [...snapshotters, v1 ? 'nri' : 'io.containerd.nri.v1.nri'] : snapshotters;
  const registryPlugin = opts.registryPlugin ?? (v1 ? 'cri' : version === 3 ? '"io.containerd.cri.v1.images"' : '"io.containerd.grpc.v1.cri"');
  const containerdCommand = opts.binaries?.containerd ?? 'containerd';
  const ctrCommand = opts.binaries?.ctr ?? 'ctr';
  const lines = [
    ...(v1 ? [] : [`version = ${version}`]),
    ...(opts.imports ? [`imports = ${JSON.stringify(opts.imports.map((i) => path.resolve(dir, i)))}`] : []),
    `root = ${tomlString(root)}`,
    `state = ${tomlString(state)}`,
    // snapshotters that cannot work here only add warnings and start-up time
    `disabled_plugins = ${JSON.stringify(disabled)}`,
    '[grpc]',
    `  address = ${tomlString(socket)}`,
    // the ttrpc socket and the opt dir default to shared paths (/run/containerd, /opt/containerd)
    '[ttrpc]',
    `  address = ${tomlString(`${socket}.ttrpc`)}`,
    v1 ? '[plugins.opt]' : '[plugins."io.containerd.internal.v1.opt"]',
    `  path = ${tomlString(path.join(dir, 'opt'))}`,
  ];
  const configPath = opts.configPath ?? true;
  if (configPath !== false) {
    lines.push(`[plugins.${registryPlugin}.registry]`, `  config_path = ${tomlString(configPath === true ? hostsDir : configPath(hostsDir))}`);
  }
  if (opts.extraToml) lines.push(opts.extraToml);
  await writeFile(configFile, lines.join('\n') + '\n');
  for (const [name, text] of Object.entries(opts.files?.(hostsDir) ?? {})) {
    await mkdir(path.dirname(path.join(dir, name)), { recursive: true });
    await writeFile(path.join(dir, name), text);
  }

  let server: ServerProcess | undefined;
  let earlierOutput = '';
  // a containerd killed while unpacking can leave a snapshot's temporary mount under root
  registerExitCleanup(() => unmountUnder(dir));
  const start = async (): Promise<void> => {
    if (server && !server.exitStatus()) return;
    if (server) earlierOutput += server.output();
    server = await spawnServer(containerdCommand, ['--config', configFile], {
      logFile: path.join(dir, 'containerd.log'),
      ready: async () => (await socketAnswers(socket)) && (await runCommand(ctrCommand, ['-a', socket, 'version'], { timeoutMs: 5_000 })).code === 0,
    });
  };
  await start();

  const ctr = (args: string[]): Promise<CommandResult> => runCommand(ctrCommand, ['-a', socket, ...args], { timeoutMs: 300_000 });

  return {
    socket,
    hostsDir,
    root,
    state,
    configFile,
    ctr,
    async pull(ref, pullOpts = {}) {
      const args = [...(pullOpts.namespace ? ['-n', pullOpts.namespace] : []), 'images', 'pull', '--hosts-dir', hostsDir];
      if (pullOpts.allPlatforms) args.push('--all-platforms');
      else if (pullOpts.platform) args.push('--platform', pullOpts.platform);
      args.push(ref);
      const result = await ctr(args);
      if (result.code !== 0) throw new Error(`ctr ${args.join(' ')} failed (${result.code}):\n${result.stderr}${result.stdout.slice(-2000)}`);
    },
    async images(namespace = 'default') {
      const result = await ctr(['-n', namespace, 'images', 'ls', '-q']);
      if (result.code !== 0) throw new Error(`ctr images ls failed: ${result.stderr}`);
      return result.stdout.split('\n').filter(Boolean);
    },
    async writeHostsToml(registry, hosts) {
      const text = [
        ...(hosts.server ? [`server = ${tomlString(hosts.server)}`] : []),
        ...(hosts.ca ? [`ca = ${tomlString(hosts.ca)}`] : []),
        '',
        ...(hosts.mirrors ?? []).flatMap((m) => [
          `[host.${tomlString(m.url)}]`,
          `  capabilities = ${JSON.stringify(m.capabilities ?? ['pull', 'resolve'])}`,
          ...(m.skipVerify ? ['  skip_verify = true'] : []),
          ...(m.ca ? [`  ca = ${tomlString(m.ca)}`] : []),
          '',
        ]),
      ].join('\n');
      const file = path.join(hostsDir, registry, 'hosts.toml');
      await mkdir(path.dirname(file), { recursive: true });
      await writeFile(file, text);
      return file;
    },
    output: () => earlierOutput + (server?.output() ?? ''),
    stop: async () => {
      await server?.stop();
      unmountUnder(dir);
    },
    kill9: async () => {
      await server?.kill9();
      unmountUnder(dir);
    },
    start,
  };
}

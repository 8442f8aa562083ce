// The node agent's configuration: flags first, then environment variables (the DaemonSet's way),
// then defaults. Everything is validated here, once, so nothing unchecked reaches a file path.
import { parseArgs } from 'node:util';
import { ConfigError } from '../common/config-error.ts';
import { parseDuration } from '../common/duration.ts';
import { LOG_LEVELS } from '../common/logger.ts';
import type { LevelWithSilent } from 'pino';

export const RUNTIMES = ['containerd', 'docker', 'crio'] as const;
export type Runtime = (typeof RUNTIMES)[number];
export type Mode = 'apply' | 'remove';

export interface AgentConfig {
  /** Normalised origin of the mirror, e.g. `http://10.96.0.42:5000` (no path, no trailing slash). */
  mirror: string;
  /**
   * Who this agent is, `<namespace>/<name>` of its RegistryMirror: written into the header of its
   * hosts.toml files, so it knows them for its own whatever mirror URL they point at.
   */
  owner: string | undefined;
  registries: string[];
  /** The registry the mirror serves for requests that name none (Docker, CRI-O send no ?ns=). */
  defaultRegistry: string;
  mode: Mode;
  once: boolean;
  runtimes: Runtime[];
  /** Runtimes dropped from the list whose configuration for this mirror is taken away while the others are applied. */
  removeRuntimes: Runtime[];
  containerdHostsDir: string;
  containerdConfig: string;
  dockerDaemonJson: string;
  dockerPidFile: string;
  dockerSocket: string;
  crioDir: string;
  /** PEM CA for an https mirror's certificate, written where each runtime looks for it. */
  mirrorCa: string | undefined;
  dockerCertsDir: string;
  crioCertsDir: string;
  /** A file `username:password`, or a directory with `username` and `password` files (a mounted basic-auth Secret). */
  credentialsFile: string | undefined;
  /** Node credentials given inline (REGMIRROR_MIRROR_USERNAME / REGMIRROR_MIRROR_PASSWORD, from a Secret). */
  credentials: { username: string; password: string } | undefined;
  /** Reconcile at least this often, whatever fs.watch reports. */
  resyncIntervalMs: number;
  dialTimeout: string;
  /** `host:port` for /readyz; empty string turns the endpoint off. */
  readyListen: string;
  readyFile: string | undefined;
  logLevel: LevelWithSilent;
}

interface OptionSpec {
  flag: string;
  env: string;
  type: 'string' | 'boolean';
  default?: string;
  help: string;
}

/** Every option, its flag, its environment variable and its default: the README's table is this. */
export const OPTIONS = {
  mirror: { flag: 'mirror', env: 'REGMIRROR_MIRROR', type: 'string', help: 'mirror URL the runtimes should ask first, http(s)://host[:port]' },
  owner: { flag: 'owner', env: 'REGMIRROR_OWNER', type: 'string', help: "who the agent's files belong to, <namespace>/<name> of the RegistryMirror: its own files stay its own when the mirror URL changes" },
  registries: { flag: 'registries', env: 'REGMIRROR_REGISTRIES', type: 'string', help: 'comma-separated registries to mirror, e.g. docker.io,ghcr.io' },
  defaultRegistry: { flag: 'default-registry', env: 'REGMIRROR_DEFAULT_REGISTRY', type: 'string', help: "the mirror's `default:` upstream (docker.io when listed, else the first registry)" },
  mode: { flag: 'mode', env: 'REGMIRROR_MODE', type: 'string', default: 'apply', help: 'apply: configure the runtimes; remove: take the configuration away' },
  once: { flag: 'once', env: 'REGMIRROR_ONCE', type: 'boolean', help: 'apply (or remove) once and exit: 0 once the files are in place (a runtime that will not use them is logged as an error), 1 when they could not be or no runtime was found, 2 on a configuration error' },
  runtimes: { flag: 'runtimes', env: 'REGMIRROR_RUNTIMES', type: 'string', default: RUNTIMES.join(','), help: 'runtimes to configure when present on the node' },
  removeRuntimes: { flag: 'remove-runtimes', env: 'REGMIRROR_REMOVE_RUNTIMES', type: 'string', default: '', help: 'runtimes whose configuration for this mirror is taken away (dropped from --runtimes)' },
  containerdHostsDir: { flag: 'containerd-hosts-dir', env: 'REGMIRROR_CONTAINERD_HOSTS_DIR', type: 'string', default: '/etc/containerd/certs.d', help: "containerd's config_path (hosts.toml directories)" },
  containerdConfig: { flag: 'containerd-config', env: 'REGMIRROR_CONTAINERD_CONFIG', type: 'string', default: '/etc/containerd/config.toml', help: "containerd's config.toml, read (never written) to check config_path" },
  dockerDaemonJson: { flag: 'docker-daemon-json', env: 'REGMIRROR_DOCKER_DAEMON_JSON', type: 'string', default: '/etc/docker/daemon.json', help: "Docker's daemon.json" },
  dockerPidFile: { flag: 'docker-pidfile', env: 'REGMIRROR_DOCKER_PIDFILE', type: 'string', default: '/var/run/docker.pid', help: "dockerd's pidfile, when daemon.json names none" },
  dockerSocket: { flag: 'docker-socket', env: 'REGMIRROR_DOCKER_SOCKET', type: 'string', default: '/var/run/docker.sock', help: "dockerd's API socket, when daemon.json names none: confirms a reload took the mirror" },
  crioDir: { flag: 'crio-dir', env: 'REGMIRROR_CRIO_DIR', type: 'string', default: '/etc/containers/registries.conf.d', help: 'registries.conf drop-in directory (CRI-O, Podman)' },
  mirrorCa: { flag: 'mirror-ca', env: 'REGMIRROR_MIRROR_CA', type: 'string', help: "PEM file: the CA of an https mirror's certificate (or the certificate itself), put where each runtime looks; re-read every pass" },
  dockerCertsDir: { flag: 'docker-certs-dir', env: 'REGMIRROR_DOCKER_CERTS_DIR', type: 'string', default: '/etc/docker/certs.d', help: "Docker's per-registry certificate directory (for --mirror-ca)" },
  crioCertsDir: { flag: 'crio-certs-dir', env: 'REGMIRROR_CRIO_CERTS_DIR', type: 'string', default: '/etc/containers/certs.d', help: "containers/image's per-registry certificate directory (CRI-O, Podman; for --mirror-ca)" },
  credentialsFile: { flag: 'credentials-file', env: 'REGMIRROR_CREDENTIALS_FILE', type: 'string', help: 'node credentials for a mirror that requires auth' },
  resyncInterval: { flag: 'resync-interval', env: 'REGMIRROR_RESYNC_INTERVAL', type: 'string', default: '1m', help: 'periodic check besides fs.watch' },
  dialTimeout: { flag: 'dial-timeout', env: 'REGMIRROR_DIAL_TIMEOUT', type: 'string', default: '2s', help: 'containerd dial timeout for the mirror (containerd 1.7+)' },
  readyListen: { flag: 'ready-listen', env: 'REGMIRROR_READY_LISTEN', type: 'string', default: '127.0.0.1:9101', help: 'host:port of /readyz and /healthz; empty turns it off' },
  readyFile: { flag: 'ready-file', env: 'REGMIRROR_READY_FILE', type: 'string', help: 'file created once configuration is in place, removed when it is not' },
  logLevel: { flag: 'log-level', env: 'REGMIRROR_LOG_LEVEL', type: 'string', default: 'info', help: LOG_LEVELS.join(' | ') },
} as const satisfies Record<string, OptionSpec>;

type OptionName = keyof typeof OPTIONS;

export function usage(): string {
  const rows = Object.values(OPTIONS as Record<string, OptionSpec>).map((o) => {
    const flag = o.type === 'boolean' ? `--${o.flag}` : `--${o.flag} VALUE`;
    const def = o.default !== undefined ? ` (default ${o.default === '' ? 'empty' : o.default})` : '';
    return `  ${flag.padEnd(30)} ${o.env.padEnd(32)} ${o.help}${def}`;
  });
  return `usage: regmirror node-agent --mirror URL --registries docker.io,ghcr.io [flags]\n\nflag / environment variable:\n${rows.join('\n')}\n`;
}

/** Where a value came from, for error messages that say what to edit. */
function sourceOf(name: OptionName, fromFlag: boolean): string {
  const o = OPTIONS[name];
  return fromFlag ? `flag --${o.flag}` : `environment ${o.env}`;
}

// A registry is a host name with an optional port: lower-case labels of letters, digits and
// hyphens. Anything else (a `/`, `..`, a scheme) could escape the hosts directory, so it is refused.
const REGISTRY = /^(?=.{1,253}(?::\d{1,5})?$)[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*(?::\d{1,5})?$/;

// --owner goes into a comment line of the files the agent writes: one line of name characters.
const OWNER = /^[A-Za-z0-9][A-Za-z0-9._-]*(?:\/[A-Za-z0-9][A-Za-z0-9._-]*)?$/;

export function isRegistryName(name: string): boolean {
  return REGISTRY.test(name);
}

export function parseMirrorUrl(text: string, source: string, key: string): string {
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    throw new ConfigError(source, key, `"${text}" is not a URL; expected http://host:port or https://host[:port]`);
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') {
    throw new ConfigError(source, key, `"${text}" must use http or https`);
  }
  if (url.username || url.password) {
    throw new ConfigError(source, key, 'must not carry credentials; use --credentials-file (REGMIRROR_CREDENTIALS_FILE)');
  }
  if ((url.pathname !== '/' && url.pathname !== '') || url.search || url.hash) {
    throw new ConfigError(source, key, `"${text}" must be scheme://host[:port] without a path, query or fragment`);
  }
  // url.host drops a default port, which is what every runtime would do too.
  return `${url.protocol}//${url.host}`;
}

export function parseAgentConfig(argv: string[], env: NodeJS.ProcessEnv): AgentConfig {
  const options: Record<string, { type: 'string' | 'boolean' }> = {};
  for (const o of Object.values(OPTIONS as Record<string, OptionSpec>)) options[o.flag] = { type: o.type };
  let parsed: ReturnType<typeof parseArgs>;
  try {
    parsed = parseArgs({ args: argv, options, allowPositionals: false, strict: true });
  } catch (error) {
    throw new ConfigError('command line', 'flags', `${(error as Error).message}\n${usage()}`);
  }
  const flags = parsed.values as Record<string, string | boolean | undefined>;

  const read = (name: OptionName): { value: string | undefined; source: string } => {
    const o: OptionSpec = OPTIONS[name];
    const flagValue = flags[o.flag];
    if (flagValue !== undefined) return { value: String(flagValue), source: sourceOf(name, true) };
    const envValue = env[o.env];
    if (envValue !== undefined) return { value: envValue, source: sourceOf(name, false) };
    return { value: o.default, source: `default of --${o.flag}` };
  };
  const required = (name: OptionName): { value: string; source: string } => {
    const r = read(name);
    if (r.value === undefined || r.value.trim() === '') {
      const o = OPTIONS[name];
      throw new ConfigError(`flag --${o.flag} or environment ${o.env}`, o.flag, 'is required');
    }
    return { value: r.value.trim(), source: r.source };
  };
  const path = (name: OptionName): string => {
    const r = required(name);
    if (!r.value.startsWith('/')) throw new ConfigError(r.source, OPTIONS[name].flag, `"${r.value}" must be an absolute path`);
    return r.value;
  };

  const mirrorIn = required('mirror');
  const mirror = parseMirrorUrl(mirrorIn.value, mirrorIn.source, OPTIONS.mirror.flag);

  const ownerIn = read('owner');
  const owner = ownerIn.value?.trim() || undefined;
  if (owner !== undefined && (owner.length > 317 || !OWNER.test(owner))) {
    throw new ConfigError(ownerIn.source, OPTIONS.owner.flag, `${JSON.stringify(owner)} must be <namespace>/<name> (letters, digits, ".", "-", "_")`);
  }

  const registriesIn = required('registries');
  const registries: string[] = [];
  for (const raw of registriesIn.value.split(',')) {
    const name = raw.trim().toLowerCase();
    if (name === '') continue;
    if (!isRegistryName(name)) {
      throw new ConfigError(registriesIn.source, OPTIONS.registries.flag, `"${raw.trim()}" is not a registry host name (host[:port], no "/", no "..")`);
    }
    if (!registries.includes(name)) registries.push(name);
  }
  if (registries.length === 0) throw new ConfigError(registriesIn.source, OPTIONS.registries.flag, 'names no registry');

  const defaultIn = read('defaultRegistry');
  const defaultRegistry = defaultIn.value?.trim().toLowerCase() || (registries.includes('docker.io') ? 'docker.io' : registries[0]!);
  if (!registries.includes(defaultRegistry)) {
    throw new ConfigError(defaultIn.source, OPTIONS.defaultRegistry.flag, `"${defaultRegistry}" is not one of the registries (${registries.join(', ')})`);
  }

  const modeIn = required('mode');
  if (modeIn.value !== 'apply' && modeIn.value !== 'remove') {
    throw new ConfigError(modeIn.source, OPTIONS.mode.flag, `"${modeIn.value}" must be apply or remove`);
  }

  const onceIn = read('once');
  const onceText = (onceIn.value ?? 'false').toLowerCase();
  if (!['true', 'false', '1', '0', ''].includes(onceText)) {
    throw new ConfigError(onceIn.source, OPTIONS.once.flag, `"${onceIn.value}" must be true or false`);
  }

  const runtimeList = (name: 'runtimes' | 'removeRuntimes', text: string, source: string): Runtime[] => {
    const list: Runtime[] = [];
    for (const raw of text.split(',')) {
      const runtime = raw.trim();
      if (runtime === '') continue;
      if (!(RUNTIMES as readonly string[]).includes(runtime)) {
        throw new ConfigError(source, OPTIONS[name].flag, `"${runtime}" is not one of ${RUNTIMES.join(', ')}`);
      }
      if (!list.includes(runtime as Runtime)) list.push(runtime as Runtime);
    }
    return list;
  };
  const runtimesIn = required('runtimes');
  const runtimes = runtimeList('runtimes', runtimesIn.value, runtimesIn.source);
  const removeIn = read('removeRuntimes');
  const removeRuntimes = runtimeList('removeRuntimes', removeIn.value ?? '', removeIn.source);
  const both = removeRuntimes.filter((r) => runtimes.includes(r));
  if (both.length > 0) throw new ConfigError(removeIn.source, OPTIONS.removeRuntimes.flag, `${both.join(', ')} also in --runtimes`);

  const resyncIn = required('resyncInterval');
  const resyncIntervalMs = parseDuration(resyncIn.value);
  if (resyncIntervalMs === undefined || resyncIntervalMs < 1000) {
    throw new ConfigError(resyncIn.source, OPTIONS.resyncInterval.flag, `"${resyncIn.value}" must be a duration of at least 1s`);
  }
  const dialIn = required('dialTimeout');
  const dialMs = parseDuration(dialIn.value);
  if (dialMs === undefined || dialMs <= 0) {
    throw new ConfigError(dialIn.source, OPTIONS.dialTimeout.flag, `"${dialIn.value}" must be a positive duration such as 2s`);
  }

  const readyListen = (read('readyListen').value ?? '').trim();
  if (readyListen !== '') {
    const r = read('readyListen');
    const match = /^(.*):(\d{1,5})$/.exec(readyListen);
    if (!match || Number(match[2]) > 65535) {
      throw new ConfigError(r.source, OPTIONS.readyListen.flag, `"${readyListen}" must be host:port (port 0 picks a free one)`);
    }
  }
  const readyFileIn = read('readyFile');
  const readyFile = readyFileIn.value?.trim() || undefined;
  if (readyFile !== undefined && !readyFile.startsWith('/')) {
    throw new ConfigError(readyFileIn.source, OPTIONS.readyFile.flag, `"${readyFile}" must be an absolute path`);
  }
  const caIn = read('mirrorCa');
  const mirrorCa = caIn.value?.trim() || undefined;
  if (mirrorCa !== undefined) {
    if (!mirrorCa.startsWith('/')) throw new ConfigError(caIn.source, OPTIONS.mirrorCa.flag, `"${mirrorCa}" must be an absolute path`);
    if (!mirror.startsWith('https:')) throw new ConfigError(caIn.source, OPTIONS.mirrorCa.flag, `is for an https:// mirror; --mirror is ${mirror}`);
  }
  const credentialsIn = read('credentialsFile');
  const credentialsFile = credentialsIn.value?.trim() || undefined;
  if (credentialsFile !== undefined && !credentialsFile.startsWith('/')) {
    throw new ConfigError(credentialsIn.source, OPTIONS.credentialsFile.flag, `"${credentialsFile}" must be an absolute path`);
  }

  // Inline credentials come only from the environment: a password in a flag shows in `ps`.
  const username = env.REGMIRROR_MIRROR_USERNAME;
  const password = env.REGMIRROR_MIRROR_PASSWORD;
  let credentials: AgentConfig['credentials'];
  if (username !== undefined || password !== undefined) {
    if (!username || password === undefined || password === '') {
      throw new ConfigError('environment REGMIRROR_MIRROR_USERNAME / REGMIRROR_MIRROR_PASSWORD', 'credentials', 'both must be set (or neither)');
    }
    if (username.includes(':')) {
      throw new ConfigError('environment REGMIRROR_MIRROR_USERNAME', 'credentials', 'a username must not contain ":"');
    }
    if (credentialsFile !== undefined) {
      throw new ConfigError('environment REGMIRROR_MIRROR_USERNAME', 'credentials', 'set either these or --credentials-file (REGMIRROR_CREDENTIALS_FILE), not both');
    }
    credentials = { username, password };
  }

  const levelIn = required('logLevel');
  if (!(LOG_LEVELS as readonly string[]).includes(levelIn.value)) {
    throw new ConfigError(levelIn.source, OPTIONS.logLevel.flag, `"${levelIn.value}" must be one of ${LOG_LEVELS.join(', ')}`);
  }

  return {
    mirror,
    owner,
    registries,
    defaultRegistry,
    mode: modeIn.value,
    once: onceText === 'true' || onceText === '1',
    runtimes,
    removeRuntimes,
    containerdHostsDir: path('containerdHostsDir'),
    containerdConfig: path('containerdConfig'),
    dockerDaemonJson: path('dockerDaemonJson'),
    dockerPidFile: path('dockerPidFile'),
    dockerSocket: path('dockerSocket'),
    crioDir: path('crioDir'),
    mirrorCa,
    dockerCertsDir: path('dockerCertsDir'),
    crioCertsDir: path('crioCertsDir'),
    credentialsFile,
    credentials,
    resyncIntervalMs,
    dialTimeout: dialIn.value,
    readyListen,
    readyFile,
    logLevel: levelIn.value as LevelWithSilent,
  };
}

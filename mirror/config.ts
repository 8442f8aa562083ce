// The mirror's configuration file (contract in shared/DESIGN.md): read once at start, validated
// against one schema, and turned into resolved values (bytes, milliseconds, URLs, passwords).
// Every mistake becomes a ConfigError that names the file and the key.
import { readFileSync } from 'node:fs';
import { Type, type Static } from '@sinclair/typebox';
import { Value } from '@sinclair/typebox/value';
import { parse as parseYaml } from 'yaml';
import { ConfigError } from '../common/config-error.ts';
import { parseDuration } from '../common/duration.ts';
import { parseQuantity } from '../common/quantity.ts';
import { registryApiUrl } from '../common/registry-path.ts';
import { LOG_LEVELS } from '../common/logger.ts';
import { caBundleProblem, pemCertificates } from '../common/pem.ts';
import type { LevelWithSilent } from 'pino';
import { DEFAULT_TIMEOUTS, type UpstreamTimeouts } from './upstream.ts';

const Str = Type.String({ minLength: 1 });
/** A Kubernetes quantity, written as YAML gives it: `500Mi`, or a bare number of bytes. */
const Size = Type.Union([Str, Type.Integer({ minimum: 1 })], { description: 'size' });
/** A Go duration (`30s`, `168h`); a bare 0 is 0s, as Go reads "0". */
const Duration = Type.Union([Str, Type.Literal(0)], { description: 'duration' });
const UNION_MESSAGES: Record<string, string> = {
  size: 'expected a size such as 500Mi or 20Gi, or a whole number of bytes',
  duration: 'expected a duration such as 30s, 5m or 168h (a bare number other than 0 has no unit)',
};

const CredentialsSchema = Type.Object(
  { username: Type.Optional(Str), usernameFile: Type.Optional(Str), password: Type.Optional(Str), passwordFile: Type.Optional(Str) },
  { additionalProperties: false },
);

const UpstreamSchema = Type.Object(
  { registry: Str, url: Type.Optional(Str), tagTTL: Type.Optional(Duration), credentials: Type.Optional(CredentialsSchema), caFile: Type.Optional(Str) },
  { additionalProperties: false },
);

export const MirrorConfigFileSchema = Type.Object(
    {
      listen: Type.Optional(Str),
      storage: Type.Object(
        { path: Str, maxSize: Type.Optional(Size), ttl: Type.Optional(Duration) },
        { additionalProperties: false },
      ),
      upstreams: Type.Optional(Type.Array(UpstreamSchema, { minItems: 1 })),
      default: Type.Optional(Str),
      auth: Type.Optional(
        Type.Object(
          { htpasswd: Type.Optional(Str), allowAnonymousWithCredentials: Type.Optional(Type.Boolean()) },
          { additionalProperties: false },
        ),
      ),
      prefetch: Type.Optional(Type.Array(Str)),
      prefetchInterval: Type.Optional(Duration),
      prefetchPlatforms: Type.Optional(Type.Array(Str)),
      upstreamTimeouts: Type.Optional(
        Type.Object(
          { connect: Type.Optional(Duration), response: Type.Optional(Duration), idle: Type.Optional(Duration), revalidate: Type.Optional(Duration) },
          { additionalProperties: false },
        ),
      ),
      tls: Type.Optional(Type.Object({ cert: Str, key: Str }, { additionalProperties: false })),
      log: Type.Optional(Type.Object({ level: Type.Optional(Str) }, { additionalProperties: false })),
    },
    { additionalProperties: false },
);
export type MirrorConfigFile = Static<typeof MirrorConfigFileSchema>;

export interface UpstreamConfig {
  /** The name clients use (containerd's ?ns=), e.g. "docker.io". */
  registry: string;
  url: URL;
  /** How long a tag's digest is trusted before asking the upstream again. */
  tagTTLMs: number;
  credentials?: { username: string; password: string };
  /**
   * upstreams[].caFile: the certificates (PEM blocks) trusted for this upstream besides the
   * default roots; they also verify its token service and the storage it redirects to.
   */
  ca?: { file: string; certificates: string[] };
}

export interface MirrorConfig {
  /** Where this configuration came from, for messages. */
  source: string;
  /** host undefined: every interface, IPv6 and IPv4 (`:port`). */
  listen: { host: string | undefined; port: number };
  storage: { path: string; maxSizeBytes?: number; ttlMs?: number };
  upstreams: UpstreamConfig[];
  defaultRegistry: string;
  auth: { htpasswd?: string; allowAnonymousWithCredentials: boolean };
  prefetch: string[];
  prefetchIntervalMs: number;
  /** os/architecture[/variant] whose layers prefetch brings in from a multi-platform index. */
  prefetchPlatforms: string[];
  tls?: { cert: string; key: string };
  upstreamTimeouts: UpstreamTimeouts;
  logLevel: LevelWithSilent;
}

/** What `npm start` runs with no file: a Docker Hub mirror on :5000 storing under ./data. */
export const DEFAULT_CONFIG_FILE: MirrorConfigFile = {
  listen: ':5000',
  storage: { path: './data' },
  upstreams: [{ registry: 'docker.io', url: 'https://registry-1.docker.io' }],
  default: 'docker.io',
};

const REGISTRY_NAME = /^(?:[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*(?::\d{1,5})?$/;

export function loadConfigFile(file: string): MirrorConfig {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (error) {
    throw new ConfigError(file, '(file)', `cannot read: ${(error as NodeJS.ErrnoException).code ?? (error as Error).message}`);
  }
  let data: unknown;
  try {
    data = parseYaml(text);
  } catch (error) {
    throw new ConfigError(file, '(file)', `not valid YAML: ${(error as Error).message.split('\n')[0]}`);
  }
  return resolveConfig(data ?? {}, file);
}

/** The longest delay a Node timer takes (2^31-1 ms, about 596h); a longer one fires at once. */
const MAX_TIMER_MS = 2 ** 31 - 1;

/** Dotted key for a JSON pointer: /upstreams/0/url -> upstreams[0].url */
function keyOf(pointer: string): string {
  return pointer
    .split('/')
    .slice(1)
    .map((part) => (/^\d+$/.test(part) ? `[${part}]` : `.${part}`))
    .join('')
    .replace(/^\./, '') || '(top level)';
}

export function resolveConfig(data: unknown, source: string): MirrorConfig {
  const first = Value.Errors(MirrorConfigFileSchema, data).First();
  if (first) {
    const message = first.message.toLowerCase();
    const union = UNION_MESSAGES[(first.schema as { description?: string }).description ?? ''];
    throw new ConfigError(source, keyOf(first.path), message === 'unexpected property' ? 'unknown key (see the configuration reference in README.md)' : (union ?? message));
  }
  const file = data as MirrorConfigFile;

  const duration = (key: string, value: string | number | undefined, fallback: number): number => {
    if (value === undefined) return fallback;
    const text = String(value);
    const ms = parseDuration(text);
    if (ms === undefined) throw new ConfigError(source, key, `"${text}" is not a duration (e.g. 30s, 5m, 168h)`);
    return ms;
  };
  const quantity = (key: string, value: string | number | undefined): number | undefined => {
    if (value === undefined) return undefined;
    const text = String(value);
    const bytes = parseQuantity(text);
    if (bytes === undefined || bytes <= 0) throw new ConfigError(source, key, `"${text}" is not a size (e.g. 500Mi, 20Gi)`);
    return bytes;
  };

  const upstreams = (file.upstreams ?? DEFAULT_CONFIG_FILE.upstreams!).map((upstream, index): UpstreamConfig => {
    const at = `upstreams[${index}]`;
    if (!REGISTRY_NAME.test(upstream.registry)) throw new ConfigError(source, `${at}.registry`, `"${upstream.registry}" is not a registry host name (e.g. docker.io, ghcr.io, registry.example.com:5000)`);
    const text = upstream.url ?? registryApiUrl(upstream.registry);
    // a password written into the URL must not reach an error message (or, later, a log line)
    const shown = text.replace(/\/\/[^/@]*@/, '//***@');
    let url: URL;
    try {
      url = new URL(text);
    } catch {
      throw new ConfigError(source, `${at}.url`, `"${shown}" is not a URL`);
    }
    if (url.protocol !== 'https:' && url.protocol !== 'http:') throw new ConfigError(source, `${at}.url`, 'must be an http:// or https:// URL');
    if (url.username || url.password) throw new ConfigError(source, `${at}.url`, `"${shown}" carries credentials; put them in ${at}.credentials (never logged)`);
    return {
      registry: upstream.registry,
      url,
      tagTTLMs: duration(`${at}.tagTTL`, upstream.tagTTL, 0),
      ...(upstream.credentials ? { credentials: resolveCredentials(source, `${at}.credentials`, upstream.credentials) } : {}),
      ...(upstream.caFile !== undefined ? { ca: resolveCaFile(source, `${at}.caFile`, upstream.caFile, url) } : {}),
    };
  });
  const seen = new Set<string>();
  upstreams.forEach((upstream, index) => {
    if (seen.has(upstream.registry)) throw new ConfigError(source, `upstreams[${index}].registry`, `"${upstream.registry}" is listed twice`);
    seen.add(upstream.registry);
  });

  const defaultRegistry = file.default ?? (seen.has('docker.io') ? 'docker.io' : upstreams[0]!.registry);
  if (!seen.has(defaultRegistry)) throw new ConfigError(source, 'default', `"${defaultRegistry}" is not one of upstreams[].registry (${[...seen].join(', ')})`);

  const level = (file.log?.level ?? 'info') as LevelWithSilent;
  if (!LOG_LEVELS.includes(level)) throw new ConfigError(source, 'log.level', `"${level}" is not one of ${LOG_LEVELS.join(', ')}`);

  const auth = { allowAnonymousWithCredentials: file.auth?.allowAnonymousWithCredentials ?? false, ...(file.auth?.htpasswd ? { htpasswd: file.auth.htpasswd } : {}) };
  if (upstreams.some((u) => u.credentials) && !auth.htpasswd && !auth.allowAnonymousWithCredentials) {
    throw new ConfigError(
      source,
      'auth.htpasswd',
      'an upstream has credentials, so anyone who can reach this mirror could pull private images through it: set auth.htpasswd, or set auth.allowAnonymousWithCredentials: true to accept that',
    );
  }

  const positive = (key: string, text: string | number | undefined, fallback: number): number => {
    const ms = duration(key, text, fallback);
    if (ms <= 0) throw new ConfigError(source, key, 'must be longer than 0s');
    return ms;
  };
  const prefetchInterval = (): number => {
    const ms = duration('prefetchInterval', file.prefetchInterval, 6 * 3_600_000);
    // a timer fires at once for 0 and for anything past 2^31-1 ms: prefetch would run back to back
    if (ms < 60_000 || ms > MAX_TIMER_MS) throw new ConfigError(source, 'prefetchInterval', `"${file.prefetchInterval}" must be between 1m and 596h`);
    return ms;
  };
  const maxSizeBytes = quantity('storage.maxSize', file.storage.maxSize);
  const ttlMs = file.storage.ttl === undefined ? undefined : duration('storage.ttl', file.storage.ttl, 0);
  if (ttlMs === 0) throw new ConfigError(source, 'storage.ttl', 'must be longer than 0s (leave it out to keep content until storage.maxSize needs room)');

  return {
    source,
    listen: parseListen(source, file.listen ?? ':5000'),
    storage: { path: file.storage.path, ...(maxSizeBytes ? { maxSizeBytes } : {}), ...(ttlMs ? { ttlMs } : {}) },
    upstreams,
    defaultRegistry,
    auth,
    prefetch: file.prefetch ?? [],
    prefetchIntervalMs: prefetchInterval(),
    prefetchPlatforms: (file.prefetchPlatforms ?? [defaultPlatform()]).map((platform, index) => {
      if (!/^[a-z0-9]+\/[a-z0-9_]+(?:\/[a-z0-9]+)?$/.test(platform)) throw new ConfigError(source, `prefetchPlatforms[${index}]`, `"${platform}" is not os/architecture[/variant] (e.g. linux/amd64)`);
      return platform;
    }),
    ...(file.tls ? { tls: file.tls } : {}),
    upstreamTimeouts: {
      connectMs: positive('upstreamTimeouts.connect', file.upstreamTimeouts?.connect, DEFAULT_TIMEOUTS.connectMs),
      headersMs: positive('upstreamTimeouts.response', file.upstreamTimeouts?.response, DEFAULT_TIMEOUTS.headersMs),
      bodyIdleMs: positive('upstreamTimeouts.idle', file.upstreamTimeouts?.idle, DEFAULT_TIMEOUTS.bodyIdleMs),
      revalidateMs: positive('upstreamTimeouts.revalidate', file.upstreamTimeouts?.revalidate, DEFAULT_TIMEOUTS.revalidateMs),
    },
    logLevel: level,
  };
}

/** This machine's platform in OCI's words (Node says x64 where OCI says amd64). */
function defaultPlatform(): string {
  const arch = ({ x64: 'amd64', ia32: '386', arm64: 'arm64', arm: 'arm', ppc64: 'ppc64le', s390x: 's390x', riscv64: 'riscv64' } as Record<string, string>)[process.arch] ?? process.arch;
  return `linux/${arch}`;
}

function resolveCredentials(source: string, key: string, credentials: NonNullable<NonNullable<MirrorConfigFile['upstreams']>[number]['credentials']>) {
  const fromFileOrInline = (field: 'username' | 'password'): string => {
    const inline = credentials[field];
    const file = credentials[`${field}File`];
    if (inline !== undefined && file !== undefined) throw new ConfigError(source, key, `set ${field} or ${field}File, not both`);
    if (file === undefined) {
      if (inline === undefined) throw new ConfigError(source, key, `needs ${field} or ${field}File`);
      return inline;
    }
    let value: string;
    try {
      value = readFileSync(file, 'utf8').replace(/\r?\n$/, '');
    } catch (error) {
      throw new ConfigError(source, `${key}.${field}File`, `cannot read ${file}: ${(error as NodeJS.ErrnoException).code ?? 'error'}`);
    }
    if (!value) throw new ConfigError(source, `${key}.${field}File`, `${file} is empty`);
    return value;
  };
  return { username: fromFileOrInline('username'), password: fromFileOrInline('password') };
}

/** upstreams[].caFile: a readable PEM bundle, for an https upstream only. */
function resolveCaFile(source: string, key: string, file: string, url: URL): NonNullable<UpstreamConfig['ca']> {
  if (url.protocol !== 'https:') throw new ConfigError(source, key, `${file} is for an https:// upstream, and this url is ${url.protocol}// (no certificate to check): drop caFile, or use https://`);
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (error) {
    throw new ConfigError(source, key, `cannot read ${file}: ${(error as NodeJS.ErrnoException).code ?? 'error'}`);
  }
  const problem = caBundleProblem(text);
  if (problem) throw new ConfigError(source, key, `${file} ${problem}`);
  return { file, certificates: pemCertificates(text) };
}

function parseListen(source: string, listen: string): { host: string | undefined; port: number } {
  const match = /^(?:\[([0-9a-fA-F:]+)\]|([^:]*)):(\d{1,5})$/.exec(listen);
  const port = match ? Number(match[3]) : NaN;
  if (!match || port > 65535) throw new ConfigError(source, 'listen', `"${listen}" is not host:port or :port`);
  return { host: match[1] ?? (match[2] || undefined), port };
}

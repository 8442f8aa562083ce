// Test images without internet: an OCI image layout on disk (gzip tar layers of seeded random bytes
// that containerd and dockerd really unpack, a config with the right diff_ids, a manifest, and an
// index for multi-arch), pushed to a registry with skopeo.
import { createCipheriv, createHash, randomUUID } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { mkdir, readFile, rename, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { Readable, Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createGzip } from 'node:zlib';
import { httpRequest, runCommand, type CommandResult, type HttpResponse } from './process.ts';

export const MEDIA_TYPES = {
  oci: {
    index: 'application/vnd.oci.image.index.v1+json',
    manifest: 'application/vnd.oci.image.manifest.v1+json',
    config: 'application/vnd.oci.image.config.v1+json',
    layer: 'application/vnd.oci.image.layer.v1.tar+gzip',
  },
  docker: {
    index: 'application/vnd.docker.distribution.manifest.list.v2+json',
    manifest: 'application/vnd.docker.distribution.manifest.v2+json',
    config: 'application/vnd.docker.container.image.v1+json',
    layer: 'application/vnd.docker.image.rootfs.diff.tar.gzip',
  },
} as const;

export interface Platform {
  os: string;
  architecture: string;
  variant?: string;
}

export interface TestLayer {
  digest: string;
  /** Compressed size: what the registry stores and serves. */
  size: number;
  /** sha256 of the uncompressed tar, as listed in the config's rootfs.diff_ids. */
  diffId: string;
  mediaType: string;
}

export interface PlatformImage {
  platform: Platform;
  manifestDigest: string;
  manifestSize: number;
  configDigest: string;
  configSize: number;
  layers: TestLayer[];
}

export interface TestImage {
  layoutDir: string;
  tag: string;
  /** What the tag points to: the index digest for multi-arch images, else the manifest digest. */
  digest: string;
  mediaType: string;
  /** The single manifest, or for multi-arch the one for this machine's platform (else the first). */
  manifestDigest: string;
  manifestMediaType: string;
  manifestSize: number;
  indexDigest?: string;
  indexMediaType?: string;
  indexSize?: number;
  layers: TestLayer[];
  configDigest: string;
  configSize: number;
  platforms?: PlatformImage[];
  /** Total bytes of every blob and manifest under the tag. */
  totalSize: number;
}

export interface WriteOciImageOptions {
  tag?: string;
  /** Random bytes in each layer's one file, in order (default [16 KiB, 64 KiB]). */
  layerSizes?: number[];
  /** Same seed, same bytes, same digests; random by default. */
  seed?: string;
  platforms?: Platform[];
  dockerMediaTypes?: boolean;
}

/** Deterministic, fast pseudo-random bytes: AES-256-CTR over zeros, keyed by the seed. */
function seededBytes(seed: string, size: number): Readable {
  const key = createHash('sha256').update(seed).digest();
  const cipher = createCipheriv('aes-256-ctr', key, Buffer.alloc(16));
  const chunk = Buffer.alloc(1024 * 1024);
  let left = size;
  return new Readable({
    read() {
      if (left === 0) {
        this.push(null);
        return;
      }
      const n = Math.min(left, chunk.length);
      left -= n;
      this.push(cipher.update(chunk.subarray(0, n)));
    },
  });
}

/** A ustar header block; only what a layer needs (regular files and directories). */
function tarHeader(name: string, size: number, type: 'file' | 'dir'): Buffer {
  const block = Buffer.alloc(512);
  const field = (offset: number, length: number, value: string): void => {
    block.write(value, offset, length, 'utf8');
  };
  const octal = (offset: number, length: number, value: number): void => {
    field(offset, length, value.toString(8).padStart(length - 1, '0') + '\0');
  };
  if (Buffer.byteLength(name) > 100) throw new Error(`tar entry name too long: ${name}`);
  field(0, 100, name);
  octal(100, 8, type === 'dir' ? 0o755 : 0o644);
  octal(108, 8, 0);
  octal(116, 8, 0);
  octal(124, 12, type === 'dir' ? 0 : size);
  octal(136, 12, 1_700_000_000); // fixed mtime: same seed, same digest
  field(148, 8, '        ');
  field(156, 1, type === 'dir' ? '5' : '0');
  field(257, 6, 'ustar\0');
  field(263, 2, '00');
  field(265, 32, 'root');
  field(297, 32, 'root');
  let sum = 0;
  for (const byte of block) sum += byte;
  field(148, 8, sum.toString(8).padStart(6, '0') + '\0 ');
  return block;
}

async function* tarStream(dirName: string, fileName: string, content: Readable, size: number): AsyncGenerator<Buffer> {
  yield tarHeader(`${dirName}/`, 0, 'dir');
  yield tarHeader(`${dirName}/${fileName}`, size, 'file');
  for await (const chunk of content) yield chunk as Buffer;
  const pad = (512 - (size % 512)) % 512;
  yield Buffer.alloc(pad + 1024); // padding, then the two zero blocks that end an archive
}

/** Passes bytes through, feeding them to `hash` and counting them. */
function hashingTap(hash: ReturnType<typeof createHash>): { tap: Transform; bytes(): number } {
  let bytes = 0;
  const tap = new Transform({
    transform(chunk: Buffer, _enc, done) {
      hash.update(chunk);
      bytes += chunk.length;
      done(null, chunk);
    },
  });
  return { tap, bytes: () => bytes };
}

function blobPath(layoutDir: string, digest: string): string {
  const [algorithm, hex] = digest.split(':');
  return path.join(layoutDir, 'blobs', algorithm!, hex!);
}

async function writeBlob(layoutDir: string, content: Buffer | string): Promise<{ digest: string; size: number }> {
  const bytes = typeof content === 'string' ? Buffer.from(content) : content;
  const digest = `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
  await writeFile(blobPath(layoutDir, digest), bytes);
  return { digest, size: bytes.length };
}

async function writeLayer(layoutDir: string, seed: string, index: number, size: number, mediaType: string): Promise<TestLayer> {
  const tmp = path.join(layoutDir, 'blobs', 'sha256', `.tmp-${randomUUID()}`);
  const diff = createHash('sha256');
  const compressed = createHash('sha256');
  const compressedTap = hashingTap(compressed);
  const diffTap = hashingTap(diff);
  await pipeline(
    Readable.from(tarStream(`layer${index}`, 'data.bin', seededBytes(`${seed}/layer${index}`, size), size)),
    diffTap.tap,
    // random bytes do not compress: level 0 (stored blocks) is still gzip and ten times faster
    createGzip({ level: 0 }),
    compressedTap.tap,
    createWriteStream(tmp),
  );
  const digest = `sha256:${compressed.digest('hex')}`;
  await rename(tmp, blobPath(layoutDir, digest));
  return { digest, size: compressedTap.bytes(), diffId: `sha256:${diff.digest('hex')}`, mediaType };
}

async function writePlatformImage(
  layoutDir: string,
  seed: string,
  layerSizes: number[],
  platform: Platform,
  types: (typeof MEDIA_TYPES)['oci' | 'docker'],
): Promise<PlatformImage> {
  const layers: TestLayer[] = [];
  for (const [i, size] of layerSizes.entries()) layers.push(await writeLayer(layoutDir, seed, i, size, types.layer));
  const config = {
    created: '2024-01-01T00:00:00Z',
    architecture: platform.architecture,
    os: platform.os,
    ...(platform.variant ? { variant: platform.variant } : {}),
    config: { Env: ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'], Cmd: ['/layer0/data.bin'], Labels: { 'dev.regmirror.test.seed': seed } },
    rootfs: { type: 'layers', diff_ids: layers.map((l) => l.diffId) },
    history: layers.map((_, i) => ({ created: '2024-01-01T00:00:00Z', created_by: `regmirror test layer ${i}` })),
  };
  const configBlob = await writeBlob(layoutDir, JSON.stringify(config));
  const manifest = {
    schemaVersion: 2,
    mediaType: types.manifest,
    config: { mediaType: types.config, digest: configBlob.digest, size: configBlob.size },
    layers: layers.map((l) => ({ mediaType: l.mediaType, digest: l.digest, size: l.size })),
  };
  const manifestBlob = await writeBlob(layoutDir, JSON.stringify(manifest));
  return { platform, manifestDigest: manifestBlob.digest, manifestSize: manifestBlob.size, configDigest: configBlob.digest, configSize: configBlob.size, layers };
}

function hostPlatform(): Platform {
  const arch: Record<string, string> = { x64: 'amd64', arm64: 'arm64', arm: 'arm', ppc64: 'ppc64le', s390x: 's390x' };
  return { os: 'linux', architecture: arch[process.arch] ?? process.arch };
}

interface LayoutIndex {
  schemaVersion: number;
  mediaType?: string;
  manifests: { mediaType: string; digest: string; size: number; annotations?: Record<string, string> }[];
}

/**
 * Writes an image into the OCI layout at `dir` (created if needed; other tags already there are
 * kept, so one layout can hold several images) and returns its digests and sizes.
 */
export async function writeOciImage(dir: string, opts: WriteOciImageOptions = {}): Promise<TestImage> {
  const tag = opts.tag ?? 'v1';
  const seed = opts.seed ?? randomUUID();
  const layerSizes = opts.layerSizes ?? [16 * 1024, 64 * 1024];
  const types = opts.dockerMediaTypes ? MEDIA_TYPES.docker : MEDIA_TYPES.oci;
  await mkdir(path.join(dir, 'blobs', 'sha256'), { recursive: true });
  await writeFile(path.join(dir, 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }));

  let image: TestImage;
  if (opts.platforms && opts.platforms.length > 0) {
    const platforms: PlatformImage[] = [];
    for (const platform of opts.platforms) {
      const key = [platform.os, platform.architecture, platform.variant].filter(Boolean).join('/');
      platforms.push(await writePlatformImage(dir, `${seed}/${key}`, layerSizes, platform, types));
    }
    const index = {
      schemaVersion: 2,
      mediaType: types.index,
      manifests: platforms.map((p) => ({ mediaType: types.manifest, digest: p.manifestDigest, size: p.manifestSize, platform: p.platform })),
    };
    const indexBlob = await writeBlob(dir, JSON.stringify(index));
    const host = hostPlatform();
    const main = platforms.find((p) => p.platform.os === host.os && p.platform.architecture === host.architecture) ?? platforms[0]!;
    image = {
      layoutDir: dir,
      tag,
      digest: indexBlob.digest,
      mediaType: types.index,
      manifestDigest: main.manifestDigest,
      manifestMediaType: types.manifest,
      manifestSize: main.manifestSize,
      indexDigest: indexBlob.digest,
      indexMediaType: types.index,
      indexSize: indexBlob.size,
      layers: main.layers,
      configDigest: main.configDigest,
      configSize: main.configSize,
      platforms,
      totalSize: indexBlob.size + platforms.reduce((sum, p) => sum + platformSize(p), 0),
    };
  } else {
    const single = await writePlatformImage(dir, seed, layerSizes, hostPlatform(), types);
    image = {
      layoutDir: dir,
      tag,
      digest: single.manifestDigest,
      mediaType: types.manifest,
      manifestDigest: single.manifestDigest,
      manifestMediaType: types.manifest,
      manifestSize: single.manifestSize,
      layers: single.layers,
      configDigest: single.configDigest,
      configSize: single.configSize,
      totalSize: platformSize(single),
    };
  }

  await tagInLayout(dir, tag, image);
  return image;
}

// index.json is read, changed and written back: images written at once into one layout take turns
const layoutQueues = new Map<string, Promise<void>>();

async function tagInLayout(dir: string, tag: string, image: TestImage): Promise<void> {
  const previous = layoutQueues.get(dir) ?? Promise.resolve();
  const turn = previous.then(async () => {
    const indexFile = path.join(dir, 'index.json');
    let layoutIndex: LayoutIndex = { schemaVersion: 2, mediaType: MEDIA_TYPES.oci.index, manifests: [] };
    try {
      layoutIndex = JSON.parse(await readFile(indexFile, 'utf8')) as LayoutIndex;
    } catch {
      // a new layout
    }
    const refName = 'org.opencontainers.image.ref.name';
    layoutIndex.manifests = layoutIndex.manifests.filter((m) => m.annotations?.[refName] !== tag);
    layoutIndex.manifests.push({
      mediaType: image.mediaType,
      digest: image.digest,
      size: image.indexSize ?? image.manifestSize,
      annotations: { [refName]: tag },
    });
    await writeFile(indexFile, JSON.stringify(layoutIndex, null, 2));
  });
  const settled = turn.catch(() => undefined);
  layoutQueues.set(dir, settled);
  await turn;
  if (layoutQueues.get(dir) === settled) layoutQueues.delete(dir);
}

function platformSize(p: PlatformImage): number {
  return p.manifestSize + p.configSize + p.layers.reduce((sum, l) => sum + l.size, 0);
}

/** The bytes of a blob or manifest of the image, as stored in its layout. */
export async function readBlob(image: TestImage, digest: string): Promise<Buffer> {
  return readFile(blobPath(image.layoutDir, digest));
}

/** Runs skopeo with exactly these arguments. */
export async function skopeo(args: string[], opts: { env?: NodeJS.ProcessEnv; timeoutMs?: number } = {}): Promise<CommandResult> {
  return runCommand('skopeo', args, { env: opts.env, timeoutMs: opts.timeoutMs ?? 300_000 });
}

/**
 * Pushes the image to `ref` (`127.0.0.1:PORT/library/name:tag`, no scheme) over plain HTTP; every
 * platform of a multi-arch image goes too. creds is `user:password`. Throws with skopeo's stderr.
 *
 * Images with Docker media types are pushed by pushImageHttp instead: skopeo's oci: transport
 * ignores index.json entries whose media type is not OCI ("no descriptor found for reference").
 */
export async function pushImage(image: TestImage, ref: string, opts: { creds?: string; format?: 'oci' | 'v2s2'; env?: NodeJS.ProcessEnv } = {}): Promise<void> {
  if (image.mediaType.startsWith('application/vnd.docker.') && !opts.format) {
    await pushImageHttp(image, ref, { creds: opts.creds });
    return;
  }
  const args = ['copy', '--dest-tls-verify=false', '--retry-times=0'];
  // keep the image's own bytes and digests unless a format is asked for
  if (opts.format) args.push(`--format=${opts.format}`);
  else args.push('--preserve-digests');
  if (image.indexDigest) args.push('--all');
  if (opts.creds) args.push(`--dest-creds=${opts.creds}`);
  else args.push('--dest-no-creds');
  args.push(`oci:${image.layoutDir}:${image.tag}`, `docker://${ref}`);
  const result = await skopeo(args, { env: opts.env });
  if (result.code !== 0) throw new Error(`skopeo ${args.join(' ').replace(/--dest-creds=\S+/, '--dest-creds=***')} failed (${result.code}):\n${result.stderr}`);
}

function parseRef(ref: string): { host: string; name: string; reference: string } {
  const slash = ref.indexOf('/');
  if (slash < 0) throw new Error(`image reference needs a registry host: ${ref}`);
  const host = ref.slice(0, slash);
  const rest = ref.slice(slash + 1);
  const at = rest.indexOf('@');
  if (at >= 0) return { host, name: rest.slice(0, at), reference: rest.slice(at + 1) };
  const colon = rest.lastIndexOf(':');
  if (colon < 0) return { host, name: rest, reference: 'latest' };
  return { host, name: rest.slice(0, colon), reference: rest.slice(colon + 1) };
}

/**
 * Pushes the image with the registry HTTP API itself (monolithic blob uploads, then manifests by
 * digest, then the tag), answering a Bearer challenge through the token realm with `creds`.
 * The bytes pushed are exactly the layout's, whatever their media types.
 */
export async function pushImageHttp(image: TestImage, ref: string, opts: { creds?: string } = {}): Promise<void> {
  const { host, name, reference } = parseRef(ref);
  const base = `http://${host}`;
  let authorization: string | undefined;

  // body is a factory: a request answered 401 is sent again with a token, and a stream reads once
  const send = async (method: string, pathOrUrl: string, body?: () => Promise<{ data: Buffer | Readable; size: number }>, headers: Record<string, string> = {}): Promise<HttpResponse> => {
    const target = pathOrUrl.startsWith('http') ? pathOrUrl : `${base}${pathOrUrl}`;
    for (let attempt = 0; attempt < 2; attempt++) {
      const payload = body ? await body() : undefined;
      const res = await httpRequest(target, {
        method,
        body: payload?.data,
        timeoutMs: 60_000,
        headers: { ...headers, ...(authorization ? { authorization } : {}), ...(payload ? { 'content-length': String(payload.size) } : {}) },
      });
      if (payload?.data instanceof Readable) payload.data.destroy();
      const challenge = res.headers['www-authenticate'];
      if (res.status !== 401 || attempt > 0 || !challenge) return res;
      authorization = await answerChallenge(challenge, opts.creds);
    }
    throw new Error('unreachable');
  };

  const blobs = new Map<string, true>();
  for (const p of image.platforms ?? [{ configDigest: image.configDigest, layers: image.layers }]) {
    blobs.set(p.configDigest, true);
    for (const layer of p.layers) blobs.set(layer.digest, true);
  }
  for (const digest of blobs.keys()) {
    const head = await send('HEAD', `/v2/${name}/blobs/${digest}`);
    if (head.status === 200) continue;
    const started = await send('POST', `/v2/${name}/blobs/uploads/`);
    const location = started.headers.location;
    if (started.status !== 202 || !location) throw new Error(`push ${ref}: starting an upload answered ${started.status}: ${started.body}`);
    const uploadUrl = new URL(location, base);
    uploadUrl.searchParams.set('digest', digest);
    const file = blobPath(image.layoutDir, digest);
    const put = await send('PUT', uploadUrl.toString(), async () => ({ data: createReadStream(file), size: (await stat(file)).size }), {
      'content-type': 'application/octet-stream',
    });
    if (put.status !== 201) throw new Error(`push ${ref}: blob ${digest} answered ${put.status}: ${put.body}`);
  }
  const putManifest = async (target: string, digest: string, mediaType: string): Promise<void> => {
    const bytes = await readBlob(image, digest);
    const res = await send('PUT', `/v2/${name}/manifests/${target}`, async () => ({ data: bytes, size: bytes.length }), { 'content-type': mediaType });
    if (res.status !== 201) throw new Error(`push ${ref}: manifest ${target} answered ${res.status}: ${res.body}`);
  };
  for (const p of image.platforms ?? []) await putManifest(p.manifestDigest, p.manifestDigest, image.manifestMediaType);
  await putManifest(reference, image.digest, image.mediaType);
}

/** Fetches a Bearer token for a `WWW-Authenticate: Bearer realm=...,service=...,scope=...` challenge. */
async function answerChallenge(challenge: string | string[], creds: string | undefined): Promise<string> {
  const text = Array.isArray(challenge) ? challenge.join(', ') : challenge;
  const basic = creds ? `Basic ${Buffer.from(creds).toString('base64')}` : undefined;
  if (/^basic/i.test(text)) {
    if (!basic) throw new Error('registry asks for Basic credentials and none were given');
    return basic;
  }
  const params = Object.fromEntries([...text.matchAll(/(\w+)="([^"]*)"/g)].map((m) => [m[1]!, m[2]!]));
  if (!params.realm) throw new Error(`unexpected challenge: ${text}`);
  const tokenUrl = new URL(params.realm);
  if (params.service) tokenUrl.searchParams.set('service', params.service);
  if (params.scope) for (const scope of params.scope.split(' ')) tokenUrl.searchParams.append('scope', scope);
  const res = await httpRequest(tokenUrl.toString(), { headers: basic ? { authorization: basic } : {} });
  if (res.status !== 200) throw new Error(`token request to ${params.realm} answered ${res.status}: ${res.body}`);
  const body = JSON.parse(res.body.toString()) as { token?: string; access_token?: string };
  return `Bearer ${body.token ?? body.access_token}`;
}

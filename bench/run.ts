// `npm run bench`: regmirror against distribution's own pull-through cache and nginx, side by side
// on this machine in one run, each against the same upstream. Prints one table and writes it to
// bench/results.md (with how each number is measured). It reports; it never fails on a missed target.
import { access, mkdir, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { buildCompiled } from '../test/harness/compiled.ts';
import { hey } from '../test/harness/load.ts';
import { startMirrorProcess } from '../test/harness/mirror.ts';
import { startNginx } from '../test/harness/nginx.ts';
import { writeOciImage, pushImage, MEDIA_TYPES } from '../test/harness/oci-image.ts';
import { cleanupAll, httpRequest, makeTempDir, waitFor } from '../test/harness/process.ts';
import { startRegistry } from '../test/harness/registry.ts';
import { startContainerd } from '../test/harness/containerd.ts';
import { blobGets, distributionBlobPath, dropStoredFiles, pushRandomBlob, regmirrorBlobPath } from './blobs.ts';
import { download, downloadInParallel, firstByte } from './client.ts';
import { startDistributionProxy } from './distribution-proxy.ts';
import { describeMachine, renderTable, type Row } from './report.ts';
import { readMemory, RssSampler } from './rss.ts';
import { summarize } from './stats.ts';

const MB = 1e6;
const BLOB_SIZE = 200 * MB;
// Run counts: on this 2-core machine two runs of the same blob phase differ by up to 30% (other
// work, page-cache state), so the blob phases take enough runs for a median that moves less than
// the gaps it is compared against; the whole run stays near 2.5 minutes.
const WARM_RUNS = Number(process.env.BENCH_WARM_RUNS ?? 9);
const COLD_RUNS = Number(process.env.BENCH_COLD_RUNS ?? 7);
const MANIFEST_RUNS = Number(process.env.BENCH_MANIFEST_RUNS ?? 3);
const MANIFEST_SECONDS = Number(process.env.BENCH_MANIFEST_SECONDS ?? 2);
const PULL_RUNS = Number(process.env.BENCH_PULL_RUNS ?? 5);
const PULL_LAYERS = [16 * MB, 8 * MB, 1 * MB];
/** Everything must be done by then; past it the run stops, cleans up and exits 1. */
const DEADLINE_MS = 290_000;
/**
 * Seconds from the start after which a phase takes no further runs (each phase has at least one):
 * on a busy machine the run stays under five minutes with fewer runs, and the table says how many.
 */
const PHASE_CUTOFF_SEC = { warm: 75, cold: 140, firstByte: 175, manifests: 205, pulls: 245 };

const started = performance.now();
const elapsed = () => ((performance.now() - started) / 1000).toFixed(1).padStart(6);
/** Whether to start run `run` (0-based) of a phase: always the first, the rest while within the cutoff. */
const another = (run: number, runs: number, phase: keyof typeof PHASE_CUTOFF_SEC): boolean => run < runs && (run === 0 || (performance.now() - started) / 1000 < PHASE_CUTOFF_SEC[phase]);
function progress(message: string): void {
  process.stdout.write(`[${elapsed()}s] ${message}\n`);
}

const watchdog = setTimeout(() => {
  process.stderr.write(`bench: not finished after ${DEADLINE_MS / 1000}s; stopping\n`);
  process.exit(1); // the harness's exit hook kills every server and removes every temp dir
}, DEADLINE_MS);
watchdog.unref();

type Mirror = 'distribution' | 'regmirror';

async function main(): Promise<void> {
  const loadAtStart = os.loadavg();
  progress(`machine: ${describeMachine().slice(0, 2).map((l) => l.slice(2)).join(', ')}`);

  // ---------------------------------------------------------------- servers
  const upstream = await startRegistry();
  progress(`upstream (distribution registry) at ${upstream.url}`);
  const distribution = await startDistributionProxy(upstream.url);
  progress(`distribution's proxy at ${distribution.url}`);
  // regmirror as its image runs it: compiled JavaScript through bin/regmirror.sh (its node flags)
  const launcher = await buildCompiled();
  const regmirror = await startMirrorProcess({
    launcher,
    upstreams: [
      { registry: 'docker.io', url: upstream.url, tagTTL: '30s' },
      // the same upstream under a second name, for manifests by tag with tagTTL 0 (?ns=ttl0.bench)
      { registry: 'ttl0.bench', url: upstream.url, tagTTL: '0s' },
    ],
    default: 'docker.io',
    logLevel: 'warn',
  });
  progress(`regmirror (pid ${regmirror.process.pid}) at ${regmirror.url}`);
  // nginx serves regmirror's own store directory: the same stored file, through sendfile
  const nginx = await startNginx({ root: regmirror.storagePath });
  progress(`nginx over regmirror's store at ${nginx.url}`);
  const containerd = await startContainerd();
  progress('containerd started');

  const sampler = new RssSampler({ distribution: distribution.process.pid, regmirror: regmirror.process.pid }, { intervalMs: 100, maxSamples: 4_000 });
  sampler.start();

  const mirrors: Record<Mirror, { url: string; stored: (digest: string) => string }> = {
    distribution: { url: distribution.url, stored: (d) => distributionBlobPath(distribution.storageDir, d) },
    regmirror: { url: regmirror.url, stored: (d) => regmirrorBlobPath(regmirror.storagePath, d) },
  };
  const order = (run: number): Mirror[] => (run % 2 === 0 ? ['distribution', 'regmirror'] : ['regmirror', 'distribution']);
  const blobUrl = (base: string, repository: string, digest: string) => `${base}/v2/${repository}/blobs/${digest}`;
  /** A cold blob's files in the upstream and both mirrors, deleted once its run is measured (dropStoredFiles says why). */
  const dropCold = (digest: string) => dropStoredFiles([distributionBlobPath(upstream.storageDir, digest), ...Object.values(mirrors).map((m) => m.stored(digest))]);
  const waitStored = (mirror: Mirror, digest: string) =>
    waitFor(async () => access(mirrors[mirror].stored(digest)).then(() => true, () => false), { timeoutMs: 60_000, intervalMs: 20, what: `${mirror} to store ${digest}` });

  const rows: Row[] = [];
  /** VmHWM of each mirror after each phase: shows which phase set the peak. */
  const phasePeaks: { phase: string; distribution: number; regmirror: number }[] = [];
  const notePeak = async (phase: string) => {
    const [d, r] = await Promise.all([readMemory(distribution.process.pid), readMemory(regmirror.process.pid)]);
    phasePeaks.push({ phase, distribution: d.hwm, regmirror: r.hwm });
    progress(`peak RSS so far: distribution ${(d.hwm / MB).toFixed(0)} MB, regmirror ${(r.hwm / MB).toFixed(0)} MB (now ${(d.rss / MB).toFixed(0)} / ${(r.rss / MB).toFixed(0)} MB)`);
  };
  await notePeak('started, idle');

  // ---------------------------------------------------------------- warm blob throughput
  progress(`pushing a ${BLOB_SIZE / MB} MB blob to the upstream`);
  const warmDigest = await pushRandomBlob(upstream.url, 'library/warm', BLOB_SIZE, 'warm');
  for (const mirror of ['distribution', 'regmirror'] as const) {
    await download(blobUrl(mirrors[mirror].url, 'library/warm', warmDigest), { expectBytes: BLOB_SIZE });
    await waitStored(mirror, warmDigest);
  }
  const warmUrls = {
    distribution: blobUrl(distribution.url, 'library/warm', warmDigest),
    regmirror: blobUrl(regmirror.url, 'library/warm', warmDigest),
    nginx: `${nginx.url}/${path.relative(regmirror.storagePath, regmirrorBlobPath(regmirror.storagePath, warmDigest))}`,
  };
  await download(warmUrls.nginx, { expectBytes: BLOB_SIZE });
  // warm means served from the server's own store: the timed runs must not reach the upstream
  const warmGetsBefore = await blobGets(upstream, warmDigest);
  const warm1: Record<keyof typeof warmUrls, number[]> = { distribution: [], regmirror: [], nginx: [] };
  const warm8: Record<keyof typeof warmUrls, number[]> = { distribution: [], regmirror: [], nginx: [] };
  for (let run = 0; another(run, WARM_RUNS, 'warm'); run++) {
    for (const server of ['distribution', 'regmirror', 'nginx'] as const) {
      const one = await download(warmUrls[server], { expectBytes: BLOB_SIZE });
      warm1[server].push(BLOB_SIZE / (one.totalMs / 1000));
      const eight = await downloadInParallel(warmUrls[server], 8, { expectBytes: BLOB_SIZE });
      warm8[server].push(eight.bytesPerSecond);
    }
    progress(`warm blob run ${run + 1}/${WARM_RUNS}: 1 client MB/s ${fmtRun(warm1, run)}; 8 clients MB/s ${fmtRun(warm8, run)}`);
  }
  const warmGetsDuring = (await blobGets(upstream, warmDigest)) - warmGetsBefore;
  if (warmGetsDuring !== 0) throw new Error(`the warm blob runs made ${warmGetsDuring} upstream GETs: a server did not serve it from its store`);
  for (const [clients, values] of [[1, warm1], [8, warm8]] as const) {
    const d = summarize(values.distribution);
    const r = summarize(values.regmirror);
    const n = summarize(values.nginx);
    const vsD = r.median / d.median;
    const vsN = r.median / n.median;
    rows.push({
      metric: `warm ${BLOB_SIZE / MB} MB blob, ${clients} client${clients > 1 ? 's' : ''}`,
      unit: 'MB/s',
      scale: MB,
      distribution: d,
      regmirror: r,
      reference: { label: 'nginx', summary: n },
      target: { text: `>= 1.2x distribution, >= 0.8x nginx (is ${vsN.toFixed(2)}x)`, holds: vsD >= 1.2 && vsN >= 0.8 },
    });
  }

  await notePeak('warm blobs');

  // ---------------------------------------------------------------- cold blob, 8 clients at once
  const coldWall: Record<Mirror, number[]> = { distribution: [], regmirror: [] };
  const coldGets: Record<Mirror, number[]> = { distribution: [], regmirror: [] };
  for (let run = 0; another(run, COLD_RUNS, 'cold'); run++) {
    const digest = await pushRandomBlob(upstream.url, 'library/cold', BLOB_SIZE, `cold-8-${run}`);
    for (const mirror of order(run)) {
      const before = await blobGets(upstream, digest);
      const result = await downloadInParallel(blobUrl(mirrors[mirror].url, 'library/cold', digest), 8, { expectBytes: BLOB_SIZE });
      await waitStored(mirror, digest);
      coldWall[mirror].push(result.wallMs);
      coldGets[mirror].push((await blobGets(upstream, digest)) - before);
    }
    progress(`cold blob, 8 clients, run ${run + 1}/${COLD_RUNS}: wall ms ${fmtRun(coldWall, run, 1)}; upstream GETs ${fmtRun(coldGets, run, 1)}`);
    await dropCold(digest);
  }
  {
    const d = summarize(coldWall.distribution);
    const r = summarize(coldWall.regmirror);
    rows.push({ metric: `cold ${BLOB_SIZE / MB} MB blob, 8 clients at once: wall time`, unit: 'ms', distribution: d, regmirror: r, target: { text: '<= 0.6x distribution', holds: r.median / d.median <= 0.6 } });
    const gd = summarize(coldGets.distribution);
    const gr = summarize(coldGets.regmirror);
    rows.push({ metric: `cold ${BLOB_SIZE / MB} MB blob, 8 clients at once: upstream GETs`, unit: 'requests', distribution: gd, regmirror: gr, target: { text: '1 upstream GET', holds: gr.max === 1 } });
  }

  await notePeak('cold blobs, 8 clients');

  // ---------------------------------------------------------------- time to first byte, cold
  const ttfb: Record<Mirror | 'upstream', number[]> = { distribution: [], regmirror: [], upstream: [] };
  for (let run = 0; another(run, COLD_RUNS, 'firstByte'); run++) {
    const digest = await pushRandomBlob(upstream.url, 'library/first-byte', BLOB_SIZE, `ttfb-${run}`);
    ttfb.upstream.push((await firstByte(blobUrl(upstream.url, 'library/first-byte', digest), { expectBytes: BLOB_SIZE })).firstByteMs);
    for (const mirror of order(run)) {
      ttfb[mirror].push((await firstByte(blobUrl(mirrors[mirror].url, 'library/first-byte', digest), { expectBytes: BLOB_SIZE })).firstByteMs);
      await waitStored(mirror, digest);
    }
    progress(`time to first byte of a cold blob, run ${run + 1}/${COLD_RUNS}: ms ${fmtRun(ttfb, run, 1, 1)}`);
    await dropCold(digest);
  }
  {
    const u = summarize(ttfb.upstream);
    const r = summarize(ttfb.regmirror);
    rows.push({
      metric: `time to first byte, cold ${BLOB_SIZE / MB} MB blob`,
      unit: 'ms',
      distribution: summarize(ttfb.distribution),
      regmirror: r,
      reference: { label: 'upstream itself', summary: u },
      target: { text: `within 50 ms of the upstream's (is ${signed(r.median - u.median)} ms)`, holds: r.median - u.median <= 50 },
    });
  }

  await notePeak('first byte runs');

  // ---------------------------------------------------------------- manifests, 32 clients
  progress('pushing a small image for the manifest and pull runs');
  const manifestImage = await writeOciImage(await makeTempDir('bench-manifest-image'), { layerSizes: [64 * 1024], seed: 'manifests', tag: 'v1' });
  await pushImage(manifestImage, upstream.ref('library/manifests', 'v1'));
  const accept = { accept: [MEDIA_TYPES.oci.manifest, MEDIA_TYPES.oci.index, MEDIA_TYPES.docker.manifest, MEDIA_TYPES.docker.index].join(', ') };
  const manifestUrls = {
    digest: { distribution: `${distribution.url}/v2/library/manifests/manifests/${manifestImage.manifestDigest}`, regmirror: `${regmirror.url}/v2/library/manifests/manifests/${manifestImage.manifestDigest}` },
    tag: { distribution: `${distribution.url}/v2/library/manifests/manifests/v1`, regmirror: `${regmirror.url}/v2/library/manifests/manifests/v1` },
    tag0: { regmirror: `${regmirror.url}/v2/library/manifests/manifests/v1?ns=ttl0.bench` },
  };
  for (const url of [...Object.values(manifestUrls.digest), ...Object.values(manifestUrls.tag), manifestUrls.tag0.regmirror]) {
    const warmUp = await httpRequest(url, { headers: accept });
    if (warmUp.status !== 200) throw new Error(`warming ${url}: ${warmUp.status} ${warmUp.body.toString().slice(0, 200)}`);
  }
  const rps = { digest: { distribution: [] as number[], regmirror: [] as number[] }, tag: { distribution: [] as number[], regmirror: [] as number[] }, tag0: { regmirror: [] as number[] } };
  const measure = async (url: string): Promise<number> => {
    const result = await hey(url, { concurrency: 32, durationSec: MANIFEST_SECONDS, headers: accept, timeoutSec: 10 });
    const ok = result.statusCodes['200'] ?? 0;
    if (ok !== result.requests || result.errors > 0) throw new Error(`manifest load on ${url}: ${JSON.stringify(result.statusCodes)}, ${result.errors} errors`);
    return result.requestsPerSecond;
  };
  const upstreamBefore = (await upstream.requests()).length;
  for (let run = 0; another(run, MANIFEST_RUNS, 'manifests'); run++) {
    for (const mirror of order(run)) {
      rps.digest[mirror].push(await measure(manifestUrls.digest[mirror]));
      rps.tag[mirror].push(await measure(manifestUrls.tag[mirror]));
    }
    rps.tag0.regmirror.push(await measure(manifestUrls.tag0.regmirror));
    progress(`manifests, 32 clients, run ${run + 1}/${MANIFEST_RUNS}: req/s by digest ${fmtRun(rps.digest, run, 1)}; by tag ${fmtRun(rps.tag, run, 1)}; regmirror by tag, tagTTL 0 ${Math.round(rps.tag0.regmirror[run]!)}`);
  }
  const upstreamDuringManifests = (await upstream.requests()).length - upstreamBefore;
  {
    const d = summarize(rps.digest.distribution);
    const r = summarize(rps.digest.regmirror);
    rows.push({ metric: 'manifest by digest, 32 clients (hey)', unit: 'req/s', distribution: d, regmirror: r, target: { text: '>= 2x distribution', holds: r.median / d.median >= 2 } });
    const dt = summarize(rps.tag.distribution);
    const r0 = summarize(rps.tag0.regmirror);
    rows.push({ metric: 'manifest by tag, 32 clients, regmirror tagTTL 0', unit: 'req/s', distribution: dt, regmirror: r0 });
    const r30 = summarize(rps.tag.regmirror);
    rows.push({ metric: 'manifest by tag, 32 clients, regmirror tagTTL 30s', unit: 'req/s', distribution: dt, regmirror: r30, target: { text: '>= 3x distribution', holds: r30.median / dt.median >= 3 } });
  }

  await notePeak('manifests');

  // ---------------------------------------------------------------- full image pull by containerd
  const hostsDirs = {} as Record<Mirror, string>;
  for (const mirror of ['distribution', 'regmirror'] as const) {
    const dir = await makeTempDir(`bench-hosts-${mirror}`);
    await mkdir(path.join(dir, 'docker.io'));
    await writeFile(path.join(dir, 'docker.io', 'hosts.toml'), `server = "https://registry-1.docker.io"\n\n[host."${mirrors[mirror].url}"]\n  capabilities = ["pull", "resolve"]\n`);
    hostsDirs[mirror] = dir;
  }
  const pullMs: Record<'cold' | 'warm', Record<Mirror, number[]>> = { cold: { distribution: [], regmirror: [] }, warm: { distribution: [], regmirror: [] } };
  const pull = async (mirror: Mirror, ref: string, namespace: string): Promise<number> => {
    const t = performance.now();
    const result = await containerd.ctr(['-n', namespace, 'images', 'pull', '--hosts-dir', hostsDirs[mirror], ref]);
    const ms = performance.now() - t;
    if (result.code !== 0) throw new Error(`ctr pull ${ref} through ${mirror} failed:\n${result.stderr}${result.stdout.slice(-2000)}`);
    // forget the image and its content again, so the next pull fetches every byte
    const removed = await containerd.ctr(['-n', namespace, 'images', 'rm', '--sync', ref]);
    if (removed.code !== 0) throw new Error(`ctr images rm ${ref}: ${removed.stderr}`);
    const left = await containerd.ctr(['-n', namespace, 'content', 'ls', '-q']);
    if (left.stdout.trim() !== '') throw new Error(`containerd kept content after removing ${ref}: ${left.stdout}`);
    return ms;
  };
  for (let run = 0; another(run, PULL_RUNS, 'pulls'); run++) {
    const image = await writeOciImage(await makeTempDir('bench-pull-image'), { layerSizes: PULL_LAYERS, seed: `pull-${run}`, tag: 'v1' });
    await pushImage(image, upstream.ref(`library/pull${run}`, 'v1'));
    const ref = `docker.io/library/pull${run}:v1`;
    const layerGets = () => upstream.countRequests({ method: 'GET', path: new RegExp(`^/v2/library/pull${run}/blobs/`) });
    for (const mirror of order(run)) {
      pullMs.cold[mirror].push(await pull(mirror, ref, `${mirror}-cold-${run}`));
      const before = await layerGets();
      pullMs.warm[mirror].push(await pull(mirror, ref, `${mirror}-warm-${run}`));
      const during = (await layerGets()) - before;
      if (during !== 0) throw new Error(`the warm pull through ${mirror} made ${during} upstream blob GETs`);
    }
    progress(`containerd pull, run ${run + 1}/${PULL_RUNS}: cold ms ${fmtRun(pullMs.cold, run, 1)}; warm ms ${fmtRun(pullMs.warm, run, 1)}`);
  }
  const pullSize = (PULL_LAYERS.reduce((a, b) => a + b, 0) / MB).toFixed(0);
  for (const kind of ['cold', 'warm'] as const) {
    rows.push({ metric: `containerd pull of a ${PULL_LAYERS.length}-layer image (~${pullSize} MB), ${kind} mirror`, unit: 'ms', distribution: summarize(pullMs[kind].distribution), regmirror: summarize(pullMs[kind].regmirror) });
  }

  await notePeak('containerd pulls');

  // ---------------------------------------------------------------- memory
  const peaks = await sampler.stop();
  {
    const d = summarize([peaks.distribution!]);
    const r = summarize([peaks.regmirror!]);
    rows.push({ metric: 'peak RSS of the mirror process over the whole run (VmHWM)', unit: 'MB', scale: MB, distribution: d, regmirror: r, target: { text: '<= 1.5x distribution', holds: r.median / d.median <= 1.5 } });
  }

  // ---------------------------------------------------------------- report
  const table = renderTable(rows);
  const holding = rows.filter((row) => row.target);
  const summaryLine = `${holding.filter((row) => row.target!.holds).length} of ${holding.length} targets hold.`;
  const document = results({ table, summaryLine, upstreamDuringManifests, phasePeaks, load: { start: loadAtStart, end: os.loadavg() } });
  await writeFile(path.join(import.meta.dirname, 'results.md'), document);
  process.stdout.write(`\n${table}\n\n${summaryLine}\nwritten to bench/results.md in ${elapsed().trim()}s\n`);

  await Promise.all([containerd.stop(), nginx.stop(), regmirror.process.stop(), distribution.stop()]);
  await upstream.stop();
}

function signed(value: number): string {
  return `${value >= 0 ? '+' : '−'}${Math.abs(value).toFixed(1)}`;
}

/** `distribution 123 / regmirror 456` for one run's numbers. */
function fmtRun(values: Record<string, number[]>, run: number, scale = MB, digits = 0): string {
  return Object.entries(values)
    .map(([name, list]) => `${name} ${((list[run] ?? NaN) / scale).toFixed(digits)}`)
    .join(' / ');
}

function results(input: { table: string; summaryLine: string; upstreamDuringManifests: number; phasePeaks: { phase: string; distribution: number; regmirror: number }[]; load: { start: number[]; end: number[] } }): string {
  const peaks = input.phasePeaks.map((p) => `| ${p.phase} | ${(p.distribution / MB).toFixed(0)} | ${(p.regmirror / MB).toFixed(0)} |`).join('\n');
  return `# regmirror benchmark

Produced by \`npm run bench\` (bench/run.ts) on ${new Date().toISOString()}. Every number below was
measured in that one run, on this machine, with every server side by side against the same
upstream. Cells are median (min–max) over the runs; the ratio is of medians.

## Machine

${describeMachine(input.load).join('\n')}

## Results

${input.table}

${input.summaryLine}

## What was measured, and how

- **Servers.** The upstream is a distribution 2.8 registry on 127.0.0.1 (its access log is how
  upstream GETs are counted). distribution's own pull-through cache (\`docker-registry\` with a
  \`proxy:\` section, \`remoteurl\` = the upstream) and regmirror (\`regmirror mirror\` as a child
  process, run as its image runs it: compiled with tsconfig.build.json and started by
  \`bin/regmirror.sh\` with its node flags) both store on the same filesystem, both log warnings only (no access log: regmirror writes
  no per-request line either). nginx (${'`worker_processes auto`'}, sendfile) serves regmirror's own
  stored blob file: the limit for serving stored bytes from this disk over loopback.
- **Clients.** Blobs: one \`curl\` process per client, body to /dev/null, the same for every server;
  1 client = blob size / curl's total time; 8 clients = all bytes / wall time from starting the
  first curl to the last one finishing. Time to first byte is measured by an in-process Node client
  on a new connection: from sending the request to the first byte of the body (curl's
  \`time_starttransfer\` would stop at the status line, which a server may send before any content).
  Manifests: \`hey -c 32 -z ${MANIFEST_SECONDS}s\` with the Accept header a runtime sends.
- **Warm** means the blob was already stored by that server (its file present in the store) before
  the timed runs; the run stops if the upstream's log shows a GET for it during them (and likewise
  for blob GETs during a warm containerd pull). **Cold** means a new blob (new random bytes, so a new digest) per run, present only
  upstream; both mirrors fetch the same new blob, in alternating order. Once a cold run is measured,
  that blob's files are deleted from the upstream's and both mirrors' storage, so each run writes
  into memory the kernel has used before, as on a machine that has been up a while (on this VM,
  page cache growing into memory not used since boot is slow, and slows whoever waits for its own
  write: regmirror's clients, not distribution's; bench/profiling.md).
- **Upstream GETs** are GET requests for that blob's digest in the upstream's access log, counted
  after the mirror had stored it (distribution's background store fetches it a second time).
- **Manifests by tag.** distribution's proxy has no tag TTL: its tag service
  (\`registry/proxy/proxytagservice.go\`) asks the upstream for the tag on every request (a HEAD for
  the digest), and serves its stored tag only when the upstream cannot be reached; the manifest itself
  then comes from its store (\`proxymanifeststore.go\`: local first, then remote). So both "by tag"
  rows compare against the same distribution numbers. regmirror with tagTTL 0 also asks upstream on
  every request, but concurrent requests for one tag share one HEAD; with tagTTL 30s it answers from
  memory. Here the upstream is on loopback, which flatters every "ask upstream" design: over the
  internet each of those HEADs costs a round trip to Docker Hub. Upstream requests during the
  manifest runs: ${input.upstreamDuringManifests}.
- **containerd pulls** use \`ctr images pull --hosts-dir\` with a hosts.toml that names only the mirror
  under test; each pull is in a new namespace, and the image and its content are removed (\`images rm
  --sync\`, content checked empty) before the next, so every pull transfers every blob. Cold = a new
  image per run; warm = the same image pulled again (the mirror holds it). The time includes unpacking.
- **Peak RSS** is the larger of the process's VmHWM and the highest VmRSS sampled every 100 ms from
  /proc/<pid>/status over the whole run.

Peak RSS (VmHWM, MB) after each phase, to see which phase set it:

| after | distribution proxy | regmirror |
| --- | --- | --- |
${peaks}
`;
}

main()
  .catch((error: unknown) => {
    process.stderr.write(`bench failed: ${(error as Error).stack ?? String(error)}\n`);
    process.exitCode = 1;
  })
  .finally(async () => {
    clearTimeout(watchdog);
    await cleanupAll();
  });

// The benchmark's blob clients, the same for every server: one curl process per client, body to
// /dev/null, timings from curl itself, run in parallel for N clients; and, for time to first byte,
// an in-process client that notes when the first body byte arrives (curl's time_starttransfer is
// the first byte of the response, which a server can send long before any content).
import http from 'node:http';
import { performance } from 'node:perf_hooks';
import { runCommand } from '../test/harness/process.ts';

export interface Download {
  status: number;
  bytes: number;
  /** From the start of the request until the first byte of the response (curl's time_starttransfer): status line, not content. */
  headersMs: number;
  totalMs: number;
}

/** Parses curl's `-w '%{http_code} %{size_download} %{time_starttransfer} %{time_total}'` line. */
export function parseCurlTimings(text: string): Download {
  const match = /^(\d{3}) (\d+) ([\d.]+) ([\d.]+)\s*$/.exec(text.trim());
  if (!match) throw new Error(`curl printed no timings: ${JSON.stringify(text.slice(0, 200))}`);
  return { status: Number(match[1]), bytes: Number(match[2]), headersMs: Number(match[3]) * 1000, totalMs: Number(match[4]) * 1000 };
}

/** GETs url with one curl process and throws unless the answer is a 200 of `expectBytes` bytes. */
export async function download(url: string, opts: { expectBytes?: number; headers?: Record<string, string>; timeoutSec?: number } = {}): Promise<Download> {
  const args = ['-sS', '-o', '/dev/null', '--max-time', String(opts.timeoutSec ?? 120), '-w', '%{http_code} %{size_download} %{time_starttransfer} %{time_total}'];
  for (const [name, value] of Object.entries(opts.headers ?? {})) args.push('-H', `${name}: ${value}`);
  args.push(url);
  const result = await runCommand('curl', args, { timeoutMs: ((opts.timeoutSec ?? 120) + 10) * 1000 });
  if (result.code !== 0) throw new Error(`curl ${url} failed (${result.code}): ${result.stderr.trim()}`);
  const timings = parseCurlTimings(result.stdout);
  if (timings.status !== 200) throw new Error(`GET ${url} answered ${timings.status}`);
  if (opts.expectBytes !== undefined && timings.bytes !== opts.expectBytes) throw new Error(`GET ${url} gave ${timings.bytes} bytes, expected ${opts.expectBytes}`);
  return timings;
}

export interface ParallelDownloads {
  /** From starting the first client until the last one finished. */
  wallMs: number;
  downloads: Download[];
  /** Bytes of every client over the wall time, bytes per second. */
  bytesPerSecond: number;
}

/** `clients` downloads of url started at once. */
export async function downloadInParallel(url: string, clients: number, opts: { expectBytes?: number; timeoutSec?: number } = {}): Promise<ParallelDownloads> {
  const started = performance.now();
  const downloads = await Promise.all(Array.from({ length: clients }, () => download(url, opts)));
  const wallMs = performance.now() - started;
  const bytes = downloads.reduce((sum, d) => sum + d.bytes, 0);
  return { wallMs, downloads, bytesPerSecond: bytes / (wallMs / 1000) };
}

export interface FirstByte {
  /** Request sent -> response headers received. */
  headersMs: number;
  /** Request sent -> first byte of the body received. */
  firstByteMs: number;
  totalMs: number;
  bytes: number;
}

/** GETs url on a new connection and times the first body byte; reads the rest and checks its length. */
export function firstByte(url: string, opts: { expectBytes?: number; timeoutMs?: number } = {}): Promise<FirstByte> {
  return new Promise((resolve, reject) => {
    const started = performance.now();
    let headersMs = 0;
    let firstByteMs = 0;
    let bytes = 0;
    const request = http.get(url, { agent: false, timeout: opts.timeoutMs ?? 120_000 }, (response) => {
      headersMs = performance.now() - started;
      if (response.statusCode !== 200) {
        response.resume();
        reject(new Error(`GET ${url} answered ${response.statusCode}`));
        return;
      }
      response.on('data', (chunk: Buffer) => {
        if (bytes === 0) firstByteMs = performance.now() - started;
        bytes += chunk.length;
      });
      response.on('end', () => {
        if (opts.expectBytes !== undefined && bytes !== opts.expectBytes) reject(new Error(`GET ${url} gave ${bytes} bytes, expected ${opts.expectBytes}`));
        else resolve({ headersMs, firstByteMs, totalMs: performance.now() - started, bytes });
      });
      response.on('error', reject);
    });
    request.on('timeout', () => request.destroy(new Error(`GET ${url}: timed out`)));
    request.on('error', reject);
  });
}

// Many clients at once with `hey`, its summary parsed into numbers the benchmark can report.
import { runCommand } from './process.ts';

export interface LoadResult {
  requests: number;
  totalSeconds: number;
  requestsPerSecond: number;
  /** Response body bytes received, and their rate. */
  totalBytes: number;
  bytesPerSecond: number;
  latencyMs: { fastest: number; average: number; slowest: number; p50: number; p90: number; p95: number; p99: number };
  /** Status code -> responses. */
  statusCodes: Record<string, number>;
  /** Requests that got no response at all (refused, reset, timed out). */
  errors: number;
  raw: string;
}

export interface LoadOptions {
  /** Total requests (hey -n); ignored when durationSec is set. */
  requests?: number;
  /** Concurrent workers (hey -c). */
  concurrency?: number;
  durationSec?: number;
  method?: string;
  headers?: Record<string, string>;
  timeoutSec?: number;
  disableKeepAlive?: boolean;
}

function secondsField(text: string, name: string): number {
  const m = new RegExp(`${name}:\\s+([\\d.]+) secs`).exec(text);
  return m ? Number(m[1]) : NaN;
}

/** Runs hey against `url` and parses its summary. Throws when hey itself fails. */
export async function hey(url: string, opts: LoadOptions = {}): Promise<LoadResult> {
  const concurrency = opts.concurrency ?? 10;
  const args = ['-c', String(concurrency), '-t', String(opts.timeoutSec ?? 20)];
  if (opts.durationSec) args.push('-z', `${opts.durationSec}s`);
  else args.push('-n', String(Math.max(opts.requests ?? 200, concurrency)));
  if (opts.method) args.push('-m', opts.method);
  for (const [name, value] of Object.entries(opts.headers ?? {})) args.push('-H', `${name}: ${value}`);
  if (opts.disableKeepAlive) args.push('-disable-keepalive');
  args.push(url);
  const limitMs = ((opts.durationSec ?? 0) + (opts.timeoutSec ?? 20)) * 1000 + 600_000;
  const result = await runCommand('hey', args, { timeoutMs: limitMs });
  if (result.code !== 0) throw new Error(`hey ${args.join(' ')} failed (${result.code}):\n${result.stderr}${result.stdout}`);
  const text = result.stdout;

  const statusCodes: Record<string, number> = {};
  for (const m of text.matchAll(/^\s+\[(\d{3})\]\s+(\d+) responses/gm)) statusCodes[m[1]!] = Number(m[2]);
  let errors = 0;
  const errorSection = text.split('Error distribution:')[1] ?? '';
  for (const m of errorSection.matchAll(/^\s+\[(\d+)\]\s/gm)) errors += Number(m[1]);
  const percentile = (p: number): number => {
    const m = new RegExp(`^\\s+${p}% in ([\\d.]+) secs`, 'm').exec(text);
    return m ? Number(m[1]) * 1000 : NaN;
  };
  const totalSeconds = secondsField(text, 'Total');
  const totalBytes = Number(/Total data:\s+(\d+) bytes/.exec(text)?.[1] ?? 0);
  const requests = Object.values(statusCodes).reduce((a, b) => a + b, 0) + errors;
  return {
    requests,
    totalSeconds,
    requestsPerSecond: Number(/Requests\/sec:\s+([\d.]+)/.exec(text)?.[1] ?? NaN),
    totalBytes,
    bytesPerSecond: totalSeconds > 0 ? totalBytes / totalSeconds : 0,
    latencyMs: {
      fastest: secondsField(text, 'Fastest') * 1000,
      average: secondsField(text, 'Average') * 1000,
      slowest: secondsField(text, 'Slowest') * 1000,
      p50: percentile(50),
      p90: percentile(90),
      p95: percentile(95),
      p99: percentile(99),
    },
    statusCodes,
    errors,
    raw: text,
  };
}

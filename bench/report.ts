// The benchmark's table: one row per measurement, each server's median (min–max), the ratio
// regmirror / distribution, and the target with whether it holds. Plain data in, markdown out.
import { execFileSync } from 'node:child_process';
import os from 'node:os';
import { formatRatio, formatSummary, ratio, type Summary } from './stats.ts';

export interface Row {
  metric: string;
  /** Unit the cells are shown in, and the divisor from the raw values (bytes -> MB/s: 1e6). */
  unit: string;
  scale?: number;
  distribution?: Summary;
  regmirror?: Summary;
  /** A third column: nginx for stored bytes, the upstream itself for time to first byte. */
  reference?: { label: string; summary: Summary };
  target?: Target;
}

export interface Target {
  text: string;
  holds: boolean;
}

export function regmirrorRatio(row: Row): number | undefined {
  return row.regmirror && row.distribution ? ratio(row.regmirror, row.distribution) : undefined;
}

export function renderTable(rows: readonly Row[]): string {
  const lines = [
    '| measurement | unit | runs | distribution proxy | regmirror | reference | regmirror / distribution | target | holds |',
    '| --- | --- | --- | --- | --- | --- | --- | --- | --- |',
  ];
  for (const row of rows) {
    const cell = (summary: Summary | undefined) => (summary ? formatSummary(summary, row.scale ?? 1) : '–');
    const reference = row.reference ? `${row.reference.label}: ${cell(row.reference.summary)}` : '–';
    const holds = row.target ? (row.target.holds ? 'yes' : '**no**') : '–';
    const runs = Math.max(row.distribution?.runs ?? 0, row.regmirror?.runs ?? 0);
    lines.push(`| ${row.metric} | ${row.unit} | ${runs} | ${cell(row.distribution)} | ${cell(row.regmirror)} | ${reference} | ${formatRatio(regmirrorRatio(row))} | ${row.target?.text ?? '–'} | ${holds} |`);
  }
  return lines.join('\n');
}

function firstLine(command: string, args: string[]): string {
  try {
    const out = execFileSync(command, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: 5_000 });
    return out.split('\n').find((line) => line.trim() !== '')?.trim() ?? 'unknown';
  } catch (error) {
    // nginx -v prints to stderr
    const stderr = (error as { stderr?: string }).stderr ?? '';
    return stderr.split('\n').find((line) => line.trim() !== '')?.trim() ?? 'unknown';
  }
}

function nginxVersion(): string {
  try {
    const result = execFileSync('sh', ['-c', 'nginx -v 2>&1'], { encoding: 'utf8', timeout: 5_000 });
    return result.trim();
  } catch {
    return 'unknown';
  }
}

/** Cores, memory, CPU model, kernel, load and the version of every program in the run. */
export function describeMachine(load?: { start: number[]; end: number[] }): string[] {
  const cpus = os.cpus();
  const loads = (values: number[]) => values.map((v) => v.toFixed(1)).join(' ');
  return [
    ...(load ? [`- load average (1, 5, 15 min) at start: ${loads(load.start)}; at end: ${loads(load.end)} (other work on the machine shares its cores)`] : []),
    `- CPU: ${cpus.length} cores, ${cpus[0]?.model ?? 'unknown model'}`,
    `- memory: ${(os.totalmem() / 2 ** 30).toFixed(1)} GiB`,
    `- kernel: ${os.type()} ${os.release()}`,
    `- Node.js ${process.version} (regmirror)`,
    `- distribution: ${firstLine('docker-registry', ['--version'])}`,
    `- nginx: ${nginxVersion()}`,
    `- containerd: ${firstLine('containerd', ['--version'])}`,
    `- curl: ${firstLine('curl', ['--version'])}`,
    `- hey: ${firstLine('sh', ['-c', 'dpkg-query -W -f "\\${Version}" hey 2>/dev/null || echo unknown'])} (Debian package version)`,
  ];
}

// Peak memory of a server process, read from /proc/<pid>/status: VmHWM is the kernel's own
// high-water mark of resident memory (exact, whenever we read it); VmRSS is sampled as a check.

import { readFile } from 'node:fs/promises';

export interface MemoryReading {
  /** Resident set size now, bytes. */
  rss: number;
  /** Highest resident set size since the process started, bytes. */
  hwm: number;
}

/** Parses the `VmRSS:` and `VmHWM:` lines (kB) of a /proc/<pid>/status text. */
export function parseStatus(text: string): MemoryReading {
  const field = (name: string): number => {
    const match = new RegExp(`^${name}:\\s+(\\d+) kB$`, 'm').exec(text);
    if (!match) throw new Error(`/proc status has no ${name} line (a kernel thread or a zombie?)`);
    return Number(match[1]) * 1024;
  };
  return { rss: field('VmRSS'), hwm: field('VmHWM') };
}

export async function readMemory(pid: number): Promise<MemoryReading> {
  return parseStatus(await readFile(`/proc/${pid}/status`, 'utf8'));
}

/**
 * Samples processes every intervalMs until stop() (and at most maxSamples times, so a forgotten
 * sampler ends by itself). The peak is the larger of the highest VmRSS seen and the last VmHWM.
 */
export class RssSampler {
  private readonly pids: Map<string, number>;
  private readonly peaks = new Map<string, number>();
  private readonly samples = new Map<string, number>();
  private readonly options: { intervalMs?: number; maxSamples?: number };
  private timer: NodeJS.Timeout | undefined;

  constructor(pids: Record<string, number>, options: { intervalMs?: number; maxSamples?: number } = {}) {
    this.pids = new Map(Object.entries(pids));
    this.options = options;
  }

  start(): void {
    const intervalMs = this.options.intervalMs ?? 100;
    let left = this.options.maxSamples ?? 10_000;
    this.timer = setInterval(() => {
      if (--left <= 0) this.stopTimer();
      void this.sample();
    }, intervalMs);
    this.timer.unref();
    void this.sample();
  }

  /** Takes one more reading of each process and returns the peaks in bytes. */
  async stop(): Promise<Record<string, number>> {
    this.stopTimer();
    await this.sample();
    return Object.fromEntries(this.peaks);
  }

  /** How many readings were taken of one process (for tests). */
  sampleCount(name: string): number {
    return this.samples.get(name) ?? 0;
  }

  private stopTimer(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
  }

  private async sample(): Promise<void> {
    await Promise.all(
      [...this.pids].map(async ([name, pid]) => {
        try {
          const reading = await readMemory(pid);
          this.peaks.set(name, Math.max(this.peaks.get(name) ?? 0, reading.rss, reading.hwm));
          this.samples.set(name, (this.samples.get(name) ?? 0) + 1);
        } catch {
          // the process has exited: its last peak stands
        }
      }),
    );
  }
}

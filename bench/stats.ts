// The numbers each table cell shows: median, min and max over repeated runs, and the ratio of two
// medians. Kept apart from the runner so their arithmetic can be tested on its own.

export interface Summary {
  median: number;
  min: number;
  max: number;
  runs: number;
}

/** Median (mean of the middle two for an even count), min and max. Throws on no values or NaN. */
export function summarize(values: readonly number[]): Summary {
  if (values.length === 0) throw new Error('summarize: no values');
  if (values.some((v) => !Number.isFinite(v))) throw new Error(`summarize: not a finite number in [${values.join(', ')}]`);
  const sorted = [...values].sort((a, b) => a - b);
  const middle = Math.floor(sorted.length / 2);
  const median = sorted.length % 2 === 1 ? sorted[middle]! : (sorted[middle - 1]! + sorted[middle]!) / 2;
  return { median, min: sorted[0]!, max: sorted[sorted.length - 1]!, runs: sorted.length };
}

/** a / b of the medians; undefined when b is 0 (nothing to compare against). */
export function ratio(a: Summary | number, b: Summary | number): number | undefined {
  const x = typeof a === 'number' ? a : a.median;
  const y = typeof b === 'number' ? b : b.median;
  if (y === 0) return undefined;
  return x / y;
}

/** Integers as they are; otherwise three significant digits, without exponent notation. */
export function formatNumber(value: number): string {
  if (Number.isInteger(value)) return String(value);
  const magnitude = Math.floor(Math.log10(Math.abs(value)));
  const decimals = Math.max(0, 2 - magnitude);
  return value.toFixed(decimals);
}

/** `median (min–max)`, or just the value when every run gave the same number. */
export function formatSummary(summary: Summary, scale = 1): string {
  const [median, min, max] = [summary.median, summary.min, summary.max].map((v) => formatNumber(v / scale));
  return min === max ? median! : `${median} (${min}–${max})`;
}

export function formatRatio(value: number | undefined): string {
  return value === undefined ? 'n/a' : `${value.toFixed(2)}x`;
}

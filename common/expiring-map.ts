// A Map whose entries carry a deadline and whose size has a cap: for what is remembered to save a
// round trip or a slow check (upstream tokens, verified passwords), where forgetting an entry only
// costs doing that work once more. Keys can come from clients (repository names, header text), so
// neither time nor size may let the map grow without end.

interface Entry<V> {
  value: V;
  expiresAt: number;
}

/** How often at most expired entries are looked for among all of them. */
const SWEEP_EVERY_MS = 60_000;

export class ExpiringMap<V> {
  private readonly entries = new Map<string, Entry<V>>();
  private readonly maxEntries: number;
  private readonly now: () => number;
  private sweptAt = -Infinity;

  constructor(options: { maxEntries: number; now?: () => number }) {
    this.maxEntries = options.maxEntries;
    this.now = options.now ?? Date.now;
  }

  /** Entries held, expired ones not yet swept included. */
  get size(): number {
    return this.entries.size;
  }

  /** The value, unless it is missing or its deadline has passed (then it is dropped). */
  get(key: string): V | undefined {
    const now = this.now();
    this.sweepIfDue(now);
    const entry = this.entries.get(key);
    if (!entry) return undefined;
    if (entry.expiresAt > now) return entry.value;
    this.entries.delete(key);
    return undefined;
  }

  /**
   * Keeps `value` until `expiresAt`. The entry goes to the back (it was set last), and the front
   * ones, set longest ago, go when the map is over its cap.
   */
  set(key: string, value: V, expiresAt: number): void {
    this.sweepIfDue(this.now());
    this.entries.delete(key);
    this.entries.set(key, { value, expiresAt });
    for (const oldest of this.entries.keys()) {
      if (this.entries.size <= this.maxEntries) break;
      this.entries.delete(oldest);
    }
  }

  clear(): void {
    this.entries.clear();
  }

  /**
   * Drops every expired entry, at most once a minute: a pass over at most maxEntries entries then,
   * rather than a look on every call. Deadlines need not follow the order entries were set in
   * (lifetimes differ), so the pass cannot stop at the first live one.
   */
  private sweepIfDue(now: number): void {
    if (now - this.sweptAt < SWEEP_EVERY_MS) return;
    this.sweptAt = now;
    for (const [key, entry] of this.entries) if (entry.expiresAt <= now) this.entries.delete(key);
  }
}

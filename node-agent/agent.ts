// The long-running agent: a reconcile pass at start, again whenever fs.watch sees one of its
// directories change (debounced), and at least every resync interval. Passes never overlap.
import { watch, type FSWatcher } from 'node:fs';
import { stat } from 'node:fs/promises';
import type { Logger } from '../common/logger.ts';
import type { AgentConfig } from './config.ts';
import { startReadiness, type ReadinessReporter } from './readiness.ts';
import { Notices, reconcileNode, type NodeStatus } from './reconcile.ts';

/** Waits this long after a change before a pass, so a burst of events makes one pass. */
const DEBOUNCE_MS = 200;
/** At most one pass per this long, however often something else rewrites the files. */
const MIN_PASS_GAP_MS = 1000;

export interface RunningAgent {
  /** Address of /readyz (host:port), when enabled. */
  readinessAddress(): string | undefined;
  /** The last pass's result. */
  status(): NodeStatus | undefined;
  /** Resolves after the next pass that starts from now has finished. */
  nextPass(): Promise<NodeStatus>;
  stop(): Promise<void>;
}

/** One pass, as `--once` runs it. */
export async function reconcileOnce(config: AgentConfig, log: Logger): Promise<NodeStatus> {
  const result = await reconcileNode({ config, log, notices: new Notices(log) });
  logResult(log, result);
  return result;
}

function logResult(log: Logger, result: NodeStatus): void {
  const changed = result.runtimes.flatMap((r) => r.changed);
  const fields = {
    mode: result.mode,
    ready: result.ready,
    runtimes: result.runtimes.filter((r) => r.present).map((r) => r.runtime),
    changed,
  };
  if (result.problems.length > 0) log.error({ ...fields, problems: result.problems }, 'node not configured');
  else if (changed.length > 0) log.info(fields, result.mode === 'apply' ? 'node configured' : 'node cleaned up');
  else log.debug(fields, 'node unchanged');
}

export async function startAgent(config: AgentConfig, log: Logger): Promise<RunningAgent> {
  const notices = new Notices(log);
  const readiness: ReadinessReporter = await startReadiness({
    listen: config.readyListen,
    readyFile: config.readyFile,
    aliveWithinMs: config.resyncIntervalMs * 3 + 60_000,
  });
  const watchers = new Map<string, { watcher: FSWatcher; ino: number }>();
  let last: NodeStatus | undefined;
  let stopped = false;
  let running: Promise<void> | undefined;
  let again = false;
  let lastPassAt = 0;
  let debounce: NodeJS.Timeout | undefined;
  let started = 0;
  let waiters: { after: number; wake: (s: NodeStatus) => void }[] = [];

  // A directory deleted and made again is a new inode that the old watcher does not see, so each
  // watcher remembers the inode it watches and is replaced when that changes.
  const rewatch = async (dirs: string[]): Promise<void> => {
    const wanted = new Set(dirs);
    for (const [dir, w] of watchers) {
      const ino = await stat(dir).then((st) => st.ino, () => undefined);
      if (!wanted.has(dir) || ino !== w.ino) {
        w.watcher.close();
        watchers.delete(dir);
      }
    }
    for (const dir of wanted) {
      if (watchers.has(dir)) continue;
      try {
        const ino = (await stat(dir)).ino;
        const watcher = watch(dir, { persistent: false }, () => schedule());
        watcher.on('error', () => {
          watcher.close();
          watchers.delete(dir);
          schedule();
        });
        watchers.set(dir, { watcher, ino });
      } catch {
        // not there (yet): the periodic check covers it
      }
    }
  };

  const pass = async (): Promise<void> => {
    const seq = ++started;
    lastPassAt = Date.now();
    let result: NodeStatus;
    try {
      result = await reconcileNode({ config, log, notices });
    } catch (error) {
      result = { mode: config.mode, ready: false, applied: false, runtimes: [], problems: [(error as Error).message] };
    }
    last = result;
    logResult(log, result);
    await readiness.update(result).catch((error: Error) => log.error({ err: error }, 'ready file not updated'));
    if (!stopped) await rewatch(result.runtimes.flatMap((r) => r.watch));
    const toWake = waiters.filter((w) => w.after < seq);
    waiters = waiters.filter((w) => w.after >= seq);
    for (const w of toWake) w.wake(result);
  };

  const run = (): void => {
    if (stopped) return;
    if (running) {
      again = true;
      return;
    }
    running = (async () => {
      do {
        again = false;
        const wait = lastPassAt + MIN_PASS_GAP_MS - Date.now();
        if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait));
        if (stopped) break;
        await pass();
      } while (again && !stopped);
    })().finally(() => {
      running = undefined;
      if (again && !stopped) run();
    });
  };

  function schedule(): void {
    if (stopped) return;
    clearTimeout(debounce);
    debounce = setTimeout(run, DEBOUNCE_MS);
  }

  const resync = setInterval(run, config.resyncIntervalMs);

  // the first pass goes through run() too, so a resync tick cannot start a second one beside it
  run();
  await running;
  log.info({ mode: config.mode, mirror: config.mirror, registries: config.registries, readyz: readiness.address(), ready: last?.ready }, 'node agent running');

  return {
    readinessAddress: () => readiness.address(),
    status: () => last,
    nextPass: () => {
      const promise = new Promise<NodeStatus>((resolve) => waiters.push({ after: started, wake: resolve }));
      if (running) again = true;
      else run();
      return promise;
    },
    async stop() {
      stopped = true;
      clearInterval(resync);
      clearTimeout(debounce);
      await running;
      for (const w of watchers.values()) w.watcher.close();
      watchers.clear();
      await readiness.close();
      for (const w of waiters) w.wake(last!);
      waiters = [];
    },
  };
}

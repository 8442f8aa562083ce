// `regmirror mirror [--config FILE]`: runs the pull-through cache until SIGTERM or SIGINT.
import { parseArgs } from 'node:util';
import { ConfigError } from '../common/config-error.ts';
import { parseDuration } from '../common/duration.ts';
import { createLogger } from '../common/logger.ts';
import { createMirror } from './app.ts';
import { DEFAULT_CONFIG_FILE, loadConfigFile, resolveConfig } from './config.ts';

const USAGE = `usage: regmirror mirror [--config FILE] [--shutdown-delay DURATION] [--shutdown-grace DURATION]

Without --config: a Docker Hub mirror listening on :5000 that stores under ./data.
The configuration file is described in README.md ("Mirror configuration").

  --shutdown-delay  how long the mirror goes on serving after SIGTERM, with /readyz failing,
                    before it stops accepting connections (default 0s). In Kubernetes a
                    few seconds let the Service drop the pod first, so no node is refused
                    (the operator sets 5s)
  --shutdown-grace  how long responses in flight may run on after that before their
                    connections are cut (default 25s; keep delay + grace under the pod's
                    terminationGracePeriodSeconds, 30s by default)
`;

/** How long in-flight responses may run on after SIGTERM (Kubernetes gives 30s by default). */
const SHUTDOWN_GRACE_MS = 25_000;

export async function main(argv: string[]): Promise<void> {
  let values: { config?: string | undefined; help?: boolean | undefined; 'shutdown-grace'?: string | undefined; 'shutdown-delay'?: string | undefined };
  try {
    ({ values } = parseArgs({ args: argv, options: { config: { type: 'string', short: 'c' }, 'shutdown-grace': { type: 'string' }, 'shutdown-delay': { type: 'string' }, help: { type: 'boolean', short: 'h' } } }));
  } catch (error) {
    throw new ConfigError('command line', 'flags', (error as Error).message);
  }
  if (values.help) {
    process.stdout.write(USAGE);
    return;
  }
  const graceMs = durationFlag(values, 'shutdown-grace', SHUTDOWN_GRACE_MS);
  const delayMs = durationFlag(values, 'shutdown-delay', 0);
  const config = values.config ? loadConfigFile(values.config) : resolveConfig(DEFAULT_CONFIG_FILE, 'built-in default configuration');
  const logger = createLogger('regmirror-mirror', config.logLevel);
  const mirror = await createMirror(config, { logger });

  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) return;
    stopping = true;
    mirror.drain();
    if (delayMs > 0) logger.info({ signal, delayMs }, 'shutting down: /readyz fails from now on; still serving until the delay is over');
    const close = () => {
      logger.info({ signal, graceMs }, 'shutting down: no new connections, finishing responses in flight');
      return mirror.close(graceMs);
    };
    (delayMs > 0 ? new Promise((resolve) => setTimeout(resolve, delayMs)).then(close) : close()).then(
      () => {
        logger.info('stopped');
        process.exit(0);
      },
      (error: unknown) => {
        logger.error({ err: error }, 'shutdown failed');
        process.exit(1);
      },
    );
  };
  // Installed before listening: once /healthz answers, SIGTERM must drain, never kill.
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
  await mirror.listen();
}

function durationFlag(values: Record<string, unknown>, flag: 'shutdown-grace' | 'shutdown-delay', fallback: number): number {
  const text = values[flag] as string | undefined;
  if (text === undefined) return fallback;
  const ms = parseDuration(text);
  if (ms === undefined) throw new ConfigError('command line', `--${flag}`, `"${text}" is not a duration (e.g. 25s, 1m)`);
  return ms;
}

// `regmirror mirror [--config FILE]`: runs the pull-through cache until SIGTERM or SIGINT.
import { parseArgs } from 'node:util';
import { ConfigError } from '../common/config-error.ts';
import { parseDuration } from '../common/duration.ts';
import { createLogger } from '../common/logger.ts';
import { createMirror } from './app.ts';
import { DEFAULT_CONFIG_FILE, loadConfigFile, resolveConfig } from './config.ts';

const USAGE = `usage: regmirror mirror [--config FILE] [--shutdown-grace DURATION]

Without --config: a Docker Hub mirror listening on :5000 that stores under ./data.
The configuration file is described in README.md ("Mirror configuration").

  --shutdown-grace  how long responses in flight may run on after SIGTERM before their
                    connections are cut (default 25s; keep it under the pod's
                    terminationGracePeriodSeconds, 30s by default)
`;

/** How long in-flight responses may run on after SIGTERM (Kubernetes gives 30s by default). */
const SHUTDOWN_GRACE_MS = 25_000;

export async function main(argv: string[]): Promise<void> {
  let values: { config?: string | undefined; help?: boolean | undefined; 'shutdown-grace'?: string | undefined };
  try {
    ({ values } = parseArgs({ args: argv, options: { config: { type: 'string', short: 'c' }, 'shutdown-grace': { type: 'string' }, help: { type: 'boolean', short: 'h' } } }));
  } catch (error) {
    throw new ConfigError('command line', 'flags', (error as Error).message);
  }
  if (values.help) {
    process.stdout.write(USAGE);
    return;
  }
  const graceMs = values['shutdown-grace'] === undefined ? SHUTDOWN_GRACE_MS : parseDuration(values['shutdown-grace']);
  if (graceMs === undefined) throw new ConfigError('command line', '--shutdown-grace', `"${values['shutdown-grace']}" is not a duration (e.g. 25s, 1m)`);
  const config = values.config ? loadConfigFile(values.config) : resolveConfig(DEFAULT_CONFIG_FILE, 'built-in default configuration');
  const logger = createLogger('regmirror-mirror', config.logLevel);
  const mirror = await createMirror(config, { logger });

  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) return;
    stopping = true;
    logger.info({ signal, graceMs }, 'shutting down: no new connections, finishing responses in flight');
    mirror.close(graceMs).then(
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

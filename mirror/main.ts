// `regmirror mirror [--config FILE]`: runs the pull-through cache until SIGTERM or SIGINT.
import { parseArgs } from 'node:util';
import { ConfigError } from '../common/config-error.ts';
import { createLogger } from '../common/logger.ts';
import { createMirror } from './app.ts';
import { DEFAULT_CONFIG_FILE, loadConfigFile, resolveConfig } from './config.ts';

const USAGE = `usage: regmirror mirror [--config FILE]

Without --config: a Docker Hub mirror listening on :5000 that stores under ./data.
The configuration file is described in README.md ("Mirror configuration").
`;

/** How long in-flight responses may run on after SIGTERM (Kubernetes gives 30s by default). */
const SHUTDOWN_GRACE_MS = 25_000;

export async function main(argv: string[]): Promise<void> {
  let values: { config?: string | undefined; help?: boolean | undefined };
  try {
    ({ values } = parseArgs({ args: argv, options: { config: { type: 'string', short: 'c' }, help: { type: 'boolean', short: 'h' } } }));
  } catch (error) {
    throw new ConfigError('command line', 'flags', (error as Error).message);
  }
  if (values.help) {
    process.stdout.write(USAGE);
    return;
  }
  const config = values.config ? loadConfigFile(values.config) : resolveConfig(DEFAULT_CONFIG_FILE, 'built-in default configuration');
  const logger = createLogger('regmirror-mirror', config.logLevel);
  const mirror = await createMirror(config, { logger });
  await mirror.listen();

  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) return;
    stopping = true;
    logger.info({ signal, graceMs: SHUTDOWN_GRACE_MS }, 'shutting down: no new connections, finishing responses in flight');
    mirror.close(SHUTDOWN_GRACE_MS).then(
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
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
}

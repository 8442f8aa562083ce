import { pino, type Logger, type LevelWithSilent } from 'pino';

export type { Logger };

export const LOG_LEVELS: readonly LevelWithSilent[] = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'];

/**
 * One logger per program: JSON lines on stdout with levels. Credentials can reach a log only
 * through headers or config objects, so those paths are redacted here, once, for every program.
 */
export function createLogger(program: string, level: LevelWithSilent = 'info'): Logger {
  return pino({
    name: program,
    level,
    redact: {
      paths: [
        'req.headers.authorization',
        'headers.authorization',
        '*.password',
        '*.token',
        'credentials',
        '*.credentials',
      ],
      censor: '[redacted]',
    },
  });
}

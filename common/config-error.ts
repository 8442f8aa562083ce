/**
 * A configuration mistake a user can fix: it names where the value came from (a file, a flag,
 * an environment variable) and the key, so the message alone says what to edit.
 */
export class ConfigError extends Error {
  readonly source: string;
  readonly key: string;

  constructor(source: string, key: string, message: string) {
    super(`${source}: ${key}: ${message}`);
    this.name = 'ConfigError';
    this.source = source;
    this.key = key;
  }
}

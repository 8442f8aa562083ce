// Upstream credentials come in the two Secret types users already have (kubectl create secret
// generic --type=kubernetes.io/basic-auth, kubectl create secret docker-registry); both normalise
// to one username and password for one registry. Messages name keys and types, never values.

export interface SecretLike {
  type?: string;
  data?: Record<string, string>; // base64, as the API returns it
}

export interface Credentials {
  username: string;
  password: string;
}

/** A Secret that exists but cannot give credentials for the registry; the message is safe to show. */
export class InvalidCredentialsError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'InvalidCredentialsError';
  }
}

const decode = (value: string | undefined): string | undefined =>
  value === undefined ? undefined : Buffer.from(value, 'base64').toString('utf8');

const isObject = (value: unknown): value is Record<string, unknown> => typeof value === 'object' && value !== null && !Array.isArray(value);

// Docker Hub is written many ways in docker config files; they all mean docker.io.
const DOCKER_HUB_ALIASES = new Set(['docker.io', 'index.docker.io', 'registry-1.docker.io', 'registry.hub.docker.com']);

/** The registry a docker config "auths" key names: scheme and path dropped, Docker Hub folded. */
export function registryOfAuthKey(key: string): string {
  const host = key.replace(/^[a-z]+:\/\//i, '').split('/')[0]!.toLowerCase();
  return DOCKER_HUB_ALIASES.has(host) ? 'docker.io' : host;
}

export function normaliseCredentials(secret: SecretLike, registry: string, secretName: string): Credentials {
  const type = secret.type ?? 'Opaque';
  if (type === 'kubernetes.io/basic-auth') {
    const username = decode(secret.data?.username);
    const password = decode(secret.data?.password);
    if (!username || !password) {
      throw new InvalidCredentialsError(`Secret ${secretName} (kubernetes.io/basic-auth) needs both keys "username" and "password"`);
    }
    return { username, password };
  }
  if (type === 'kubernetes.io/dockerconfigjson') {
    const text = decode(secret.data?.['.dockerconfigjson']);
    if (!text) throw new InvalidCredentialsError(`Secret ${secretName} (kubernetes.io/dockerconfigjson) has no key ".dockerconfigjson"`);
    let config: unknown;
    try {
      config = JSON.parse(text);
    } catch {
      throw new InvalidCredentialsError(`Secret ${secretName}: ".dockerconfigjson" is not JSON`);
    }
    // A document of another shape (null, a number where a string belongs) would otherwise fail
    // further on with an error that quotes the value.
    if (!isObject(config)) throw new InvalidCredentialsError(`Secret ${secretName}: ".dockerconfigjson" is not a JSON object`);
    const { auths } = config;
    if (auths !== undefined && !isObject(auths)) throw new InvalidCredentialsError(`Secret ${secretName}: "auths" in ".dockerconfigjson" is not an object`);
    const wanted = DOCKER_HUB_ALIASES.has(registry) ? 'docker.io' : registry;
    const found = Object.entries(auths ?? {}).find(([key]) => registryOfAuthKey(key) === wanted);
    if (!found) throw new InvalidCredentialsError(`Secret ${secretName}: ".dockerconfigjson" has no entry for ${registry}`);
    const [authKey, entry] = found;
    if (!isObject(entry)) throw new InvalidCredentialsError(`Secret ${secretName}: auths["${authKey}"] in ".dockerconfigjson" is not an object`);
    for (const field of ['username', 'password', 'auth'] as const) {
      if (entry[field] !== undefined && entry[field] !== null && typeof entry[field] !== 'string') {
        throw new InvalidCredentialsError(`Secret ${secretName}: auths["${authKey}"].${field} in ".dockerconfigjson" is a ${Array.isArray(entry[field]) ? 'list' : typeof entry[field]}, not a string`);
      }
    }
    const { username, password, auth } = entry as { username?: string | null; password?: string | null; auth?: string | null };
    if (username && password) return { username, password };
    const pair = decode(auth ?? undefined) ?? '';
    const colon = pair.indexOf(':');
    if (colon > 0 && colon < pair.length - 1) return { username: pair.slice(0, colon), password: pair.slice(colon + 1) };
    throw new InvalidCredentialsError(`Secret ${secretName}: the entry for ${registry} has neither username/password nor a valid "auth"`);
  }
  throw new InvalidCredentialsError(
    `Secret ${secretName} has type ${type}; upstream credentials need kubernetes.io/basic-auth or kubernetes.io/dockerconfigjson`,
  );
}

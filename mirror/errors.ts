// Every failure a client can see, in one place: the registry error code, the HTTP status, and a
// message. Routes throw these; the error handler turns them into the registry's error JSON
// ({"errors":[{"code","message","detail"}]}) that Docker, containerd and skopeo understand.

export type RegistryErrorCode =
  | 'BLOB_UNKNOWN'
  | 'MANIFEST_UNKNOWN'
  | 'MANIFEST_INVALID'
  | 'NAME_UNKNOWN'
  | 'NAME_INVALID'
  | 'TAG_INVALID'
  | 'DIGEST_INVALID'
  | 'SIZE_INVALID'
  | 'RANGE_INVALID'
  | 'UNAUTHORIZED'
  | 'DENIED'
  | 'UNSUPPORTED'
  | 'TOOMANYREQUESTS'
  | 'UNAVAILABLE'
  | 'UNKNOWN';

export class RegistryError extends Error {
  readonly code: RegistryErrorCode;
  readonly status: number;
  readonly detail: unknown;
  /** Extra response headers (e.g. Retry-After, WWW-Authenticate, Content-Range). */
  readonly headers: Record<string, string>;
  /**
   * The upstream refused the mirror (its 401/403, its 429): the client sees a 4xx, but it is the
   * mirror's credentials or rate limit at stake, so it is logged as the upstream's 5xx are.
   */
  upstreamRefusal = false;

  constructor(code: RegistryErrorCode, status: number, message: string, detail?: unknown, headers: Record<string, string> = {}) {
    super(message);
    this.name = 'RegistryError';
    this.code = code;
    this.status = status;
    this.detail = detail;
    this.headers = headers;
  }

  toJSON(): { errors: { code: string; message: string; detail?: unknown }[] } {
    return { errors: [{ code: this.code, message: this.message, ...(this.detail === undefined ? {} : { detail: this.detail }) }] };
  }
}

export const blobUnknown = (digest: string) => new RegistryError('BLOB_UNKNOWN', 404, 'blob unknown to registry', { digest });
export const manifestUnknown = (reference: string) => new RegistryError('MANIFEST_UNKNOWN', 404, 'manifest unknown', { reference });
export const nameUnknown = (name: string, why = 'repository name not known to registry') => new RegistryError('NAME_UNKNOWN', 404, why, { name });
export const nameInvalid = (why: string) => new RegistryError('NAME_INVALID', 400, `invalid repository name: ${why}`);
export const tagInvalid = (tag: string) => new RegistryError('TAG_INVALID', 400, 'invalid tag', { tag });
export const digestInvalid = (why: string) => new RegistryError('DIGEST_INVALID', 400, `invalid digest: ${why}`);
export const manifestInvalid = (why: string) => new RegistryError('MANIFEST_INVALID', 400, `manifest invalid: ${why}`);
export const unsupported = (what: string) => new RegistryError('UNSUPPORTED', 405, `${what} is not supported: this registry is a read-only mirror`);
export const rangeInvalid = (size: number) =>
  new RegistryError('RANGE_INVALID', 416, 'requested range not satisfiable', { size }, { 'content-range': `bytes */${size}` });
/** The upstream (or its token service) refused the mirror access. */
export const upstreamDenied = (message: string) => refusal(new RegistryError('DENIED', 403, message));
export const tooManyRequests = (registry: string, retryAfter?: string) =>
  refusal(new RegistryError('TOOMANYREQUESTS', 429, `upstream ${registry} is rate limiting this mirror`, undefined, retryAfter ? { 'retry-after': retryAfter } : {}));

function refusal(error: RegistryError): RegistryError {
  error.upstreamRefusal = true;
  return error;
}
/** The upstream could not be reached or answered in a way we cannot use, and nothing is stored. */
export const upstreamUnavailable = (registry: string, why: string) =>
  new RegistryError('UNAVAILABLE', 502, `upstream ${registry} unavailable: ${why}`);
/** The store could not take what was fetched for another reason (a read-only volume, a failing disk, no descriptors left). */
export const storeUnwritable = (code: string) =>
  new RegistryError('UNAVAILABLE', 503, `the mirror's store could not be written (${code}): nothing was stored, try again; the mirror's log says more`);
/** A write to the store failed for lack of room (not a broken disk): the volume's problem, not an internal error. */
export function isVolumeFull(error: unknown): boolean {
  const code = (error as NodeJS.ErrnoException | undefined)?.code;
  return code === 'ENOSPC' || code === 'EDQUOT';
}

/** The store's volume has no room (ENOSPC, EDQUOT): nothing was stored, and what was asked for cannot be served from it. */
export const storeFull = (code: string) =>
  new RegistryError('UNAVAILABLE', 503, `the mirror's store is full (${code}): nothing was stored; give the volume more room or set storage.maxSize below its size`);

// A small typed door to the Kubernetes API: the few verbs the operator uses (get, list, server-side
// apply, status apply, create, update), on the few kinds it knows, with the KubeConfig's
// authentication. Paths come from a fixed table, so no discovery round trips are needed.
import { fetch } from 'undici';
import { HttpMethod, RequestContext, type KubeConfig } from '@kubernetes/client-node';
import { API_VERSION, KIND, PLURAL } from '../api/registry-mirror.ts';
import { FIELD_MANAGER } from '../desired/inputs.ts';
import { METADATA_LIST_ACCEPT } from './metadata.ts';

export interface KubeObject {
  apiVersion?: string;
  kind?: string;
  metadata?: {
    name?: string;
    namespace?: string;
    uid?: string;
    generation?: number;
    resourceVersion?: string;
    labels?: Record<string, string>;
    annotations?: Record<string, string>;
    ownerReferences?: { apiVersion: string; kind: string; name: string; uid: string; controller?: boolean }[];
    deletionTimestamp?: string;
    finalizers?: string[];
    [key: string]: unknown;
  };
  [key: string]: unknown;
}

export type JsonPatchOperation =
  | { op: 'test' | 'add' | 'replace'; path: string; value: unknown }
  | { op: 'remove'; path: string };

/** Objects a page of listPages asks for: client-go's informers ask for as many. */
export const LIST_PAGE_SIZE = 500;

export interface KubeList<T> {
  metadata?: { resourceVersion?: string; continue?: string };
  items: T[];
}

interface Resource {
  prefix: string;
  plural: string;
  namespaced: boolean;
}

/** The kinds the operator reads or writes, keyed by "apiVersion/Kind". */
export const RESOURCES: Record<string, Resource> = {
  [`${API_VERSION}/${KIND}`]: { prefix: `/apis/${API_VERSION}`, plural: PLURAL, namespaced: true },
  'v1/ConfigMap': { prefix: '/api/v1', plural: 'configmaps', namespaced: true },
  'v1/Secret': { prefix: '/api/v1', plural: 'secrets', namespaced: true },
  'v1/Service': { prefix: '/api/v1', plural: 'services', namespaced: true },
  'v1/PersistentVolumeClaim': { prefix: '/api/v1', plural: 'persistentvolumeclaims', namespaced: true },
  'v1/Event': { prefix: '/api/v1', plural: 'events', namespaced: true },
  'v1/Node': { prefix: '/api/v1', plural: 'nodes', namespaced: false },
  'apps/v1/Deployment': { prefix: '/apis/apps/v1', plural: 'deployments', namespaced: true },
  'apps/v1/DaemonSet': { prefix: '/apis/apps/v1', plural: 'daemonsets', namespaced: true },
  'coordination.k8s.io/v1/Lease': { prefix: '/apis/coordination.k8s.io/v1', plural: 'leases', namespaced: true },
};

/** A refusal or failure from the API server, with its HTTP status and Status reason. */
export class ApiError extends Error {
  readonly status: number;
  readonly reason: string;

  constructor(status: number, reason: string, message: string) {
    super(message);
    this.name = 'ApiError';
    this.status = status;
    this.reason = reason;
  }
}

export const isNotFound = (error: unknown): boolean => error instanceof ApiError && error.status === 404;
export const isConflict = (error: unknown): boolean => error instanceof ApiError && error.status === 409;
/** A JSON patch whose `test` failed (the object changed since it was read), or an update that lost a race. */
export const isStale = (error: unknown): boolean => error instanceof ApiError && (error.status === 409 || error.status === 422);
/** Not allowed (RBAC): the request may succeed once the rights are granted, not by trying it again as such. */
export const isForbidden = (error: unknown): boolean => error instanceof ApiError && error.status === 403;
/** The server said no to the object itself (invalid, bad request, forbidden): trying again as it is will not help. */
export const isRefused = (error: unknown): boolean => error instanceof ApiError && [400, 403, 422].includes(error.status);

function resourceOf(apiVersion: string, kind: string): Resource {
  const resource = RESOURCES[`${apiVersion}/${kind}`];
  if (!resource) throw new Error(`unknown kind ${apiVersion}/${kind}`);
  return resource;
}

/** The collection path for a kind, in one namespace or (namespace undefined) all of them. */
export function collectionPath(apiVersion: string, kind: string, namespace?: string): string {
  const resource = resourceOf(apiVersion, kind);
  return namespace && resource.namespaced
    ? `${resource.prefix}/namespaces/${encodeURIComponent(namespace)}/${resource.plural}`
    : `${resource.prefix}/${resource.plural}`;
}

export function objectPath(apiVersion: string, kind: string, namespace: string, name: string): string {
  return `${collectionPath(apiVersion, kind, namespace)}/${encodeURIComponent(name)}`;
}

export class KubeApi {
  readonly config: KubeConfig;
  readonly fieldManager: string;

  constructor(config: KubeConfig, fieldManager = FIELD_MANAGER) {
    this.config = config;
    this.fieldManager = fieldManager;
  }

  async request<T>(method: 'GET' | 'POST' | 'PUT' | 'PATCH' | 'DELETE', path: string, options: { body?: unknown; contentType?: string; accept?: string; query?: Record<string, string> } = {}): Promise<T> {
    const cluster = this.config.getCurrentCluster();
    if (!cluster) throw new Error('the kubeconfig has no current cluster');
    const url = new URL(cluster.server.replace(/\/$/, '') + path);
    for (const [key, value] of Object.entries(options.query ?? {})) url.searchParams.set(key, value);
    const context = new RequestContext(url.toString(), HttpMethod[method]);
    await this.config.applySecurityAuthentication(context);
    const headers: Record<string, string> = { ...context.getHeaders(), accept: options.accept ?? 'application/json' };
    let body: string | undefined;
    if (options.body !== undefined) {
      body = JSON.stringify(options.body);
      headers['content-type'] = options.contentType ?? 'application/json';
    }
    let response;
    try {
      response = await fetch(url, {
        method,
        headers,
        body,
        dispatcher: context.getDispatcher() as never,
        signal: AbortSignal.timeout(30_000),
      });
    } catch (error) {
      // undici says "fetch failed"; the cause says why (ECONNREFUSED, a certificate problem...).
      const cause = (error as { cause?: { code?: string; message?: string } }).cause;
      throw new Error(`${method} ${url.origin}${path}: ${cause?.code ?? cause?.message ?? (error as Error).message}`);
    }
    const text = await response.text();
    if (!response.ok) {
      let reason = response.statusText;
      let message = text;
      try {
        const status = JSON.parse(text) as { reason?: string; message?: string };
        reason = status.reason ?? reason;
        message = status.message ?? message;
      } catch { /* not a Status object */ }
      throw new ApiError(response.status, reason, `${method} ${path}: ${response.status} ${message}`);
    }
    return (text ? JSON.parse(text) : undefined) as T;
  }

  get<T extends KubeObject>(apiVersion: string, kind: string, namespace: string, name: string): Promise<T> {
    return this.request<T>('GET', objectPath(apiVersion, kind, namespace, name));
  }

  /** Reads an object, or undefined when it does not exist. */
  async find<T extends KubeObject>(apiVersion: string, kind: string, namespace: string, name: string): Promise<T | undefined> {
    try {
      return await this.get<T>(apiVersion, kind, namespace, name);
    } catch (error) {
      if (isNotFound(error)) return undefined;
      throw error;
    }
  }

  /**
   * Lists a kind; with metadataOnly, the server sends each object's metadata only (metadata.ts). An
   * empty PartialObjectMetadataList comes with `items: null`; it is returned as [].
   */
  async list<T extends KubeObject>(apiVersion: string, kind: string, namespace?: string, labelSelector?: string, options: { metadataOnly?: boolean } = {}): Promise<KubeList<T>> {
    const list = await this.request<KubeList<T>>('GET', collectionPath(apiVersion, kind, namespace), {
      query: labelSelector ? { labelSelector } : {},
      ...(options.metadataOnly ? { accept: METADATA_LIST_ACCEPT } : {}),
    });
    return { ...list, items: list.items ?? [] };
  }

  /**
   * A list read page by page (`limit`, then each `continue` token the server gives), so a kind whose
   * objects are large and many (Nodes, each with the images it holds) is never held whole. A token
   * that expired meanwhile (410, about 5 minutes after the first page) fails the read, to be
   * retried from the start.
   */
  async *listPages<T extends KubeObject>(apiVersion: string, kind: string, namespace?: string, labelSelector?: string, pageSize = LIST_PAGE_SIZE): AsyncGenerator<T[]> {
    let token: string | undefined;
    do {
      const page = await this.request<KubeList<T>>('GET', collectionPath(apiVersion, kind, namespace), {
        query: { ...(labelSelector ? { labelSelector } : {}), limit: String(pageSize), ...(token ? { continue: token } : {}) },
      });
      yield page.items ?? [];
      token = page.metadata?.continue || undefined;
    } while (token);
  }

  /**
   * Server-side apply with the operator's one field manager. force takes fields over from other
   * managers (someone's kubectl edit), which is what "the operator owns this object" means.
   */
  apply<T extends KubeObject>(object: KubeObject & { apiVersion: string; kind: string; metadata: { name: string; namespace: string } }, subresource?: 'status'): Promise<T> {
    const path = objectPath(object.apiVersion, object.kind, object.metadata.namespace, object.metadata.name) + (subresource ? `/${subresource}` : '');
    return this.request<T>('PATCH', path, {
      body: object,
      contentType: 'application/apply-patch+yaml',
      query: { fieldManager: this.fieldManager, force: 'true' },
    });
  }

  create<T extends KubeObject>(object: KubeObject & { apiVersion: string; kind: string; metadata: { namespace: string } }): Promise<T> {
    return this.request<T>('POST', collectionPath(object.apiVersion, object.kind, object.metadata.namespace), {
      body: object,
      query: { fieldManager: this.fieldManager },
    });
  }

  update<T extends KubeObject>(object: KubeObject & { apiVersion: string; kind: string; metadata: { name: string; namespace: string } }): Promise<T> {
    return this.request<T>('PUT', objectPath(object.apiVersion, object.kind, object.metadata.namespace, object.metadata.name), {
      body: object,
      query: { fieldManager: this.fieldManager },
    });
  }

  /** Deletes an object and, in the background, what it owns; one already gone is fine. */
  async delete(apiVersion: string, kind: string, namespace: string, name: string): Promise<void> {
    try {
      await this.request('DELETE', objectPath(apiVersion, kind, namespace, name), { query: { propagationPolicy: 'Background' } });
    } catch (error) {
      if (!isNotFound(error)) throw error;
    }
  }

  /** RFC 6902 JSON patch: its `test` operations make it refuse (422) when the object moved on. */
  jsonPatch<T extends KubeObject>(apiVersion: string, kind: string, namespace: string, name: string, operations: JsonPatchOperation[]): Promise<T> {
    return this.request<T>('PATCH', objectPath(apiVersion, kind, namespace, name), {
      body: operations,
      contentType: 'application/json-patch+json',
      query: { fieldManager: this.fieldManager },
    });
  }

  mergePatch<T extends KubeObject>(apiVersion: string, kind: string, namespace: string, name: string, patch: unknown): Promise<T> {
    return this.request<T>('PATCH', objectPath(apiVersion, kind, namespace, name), {
      body: patch,
      contentType: 'application/merge-patch+json',
      query: { fieldManager: this.fieldManager },
    });
  }
}

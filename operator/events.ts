// Kubernetes Events on RegistryMirrors (what `kubectl describe` shows). A repeat of the same event
// bumps the count of the one already written instead of writing another, as kubelet's recorder does.
import type { Logger } from '../common/logger.ts';
import { API_VERSION, KIND, type RegistryMirror } from './api/registry-mirror.ts';
import type { KubeApi, KubeObject } from './kube/api.ts';

export type EventType = 'Normal' | 'Warning';

const COMPONENT = 'regmirror-operator';
const REPEAT_WINDOW_MS = 10 * 60_000;

export class EventRecorder {
  private readonly api: KubeApi;
  private readonly logger: Logger;
  private readonly instance: string;
  private readonly recent = new Map<string, { name: string; count: number; at: number }>();

  constructor(api: KubeApi, logger: Logger, instance: string) {
    this.api = api;
    this.logger = logger;
    this.instance = instance;
  }

  /** Records an event; failures are logged, never thrown: an event is not worth a failed reconcile. */
  async record(mirror: RegistryMirror, type: EventType, reason: string, message: string): Promise<void> {
    const { namespace, name, uid } = mirror.metadata;
    const key = `${uid}\0${type}\0${reason}\0${message}`;
    const now = new Date();
    const timestamp = now.toISOString().replace(/\.\d+Z$/, 'Z');
    try {
      const seen = this.recent.get(key);
      if (seen && now.getTime() - seen.at < REPEAT_WINDOW_MS) {
        seen.count += 1;
        seen.at = now.getTime();
        await this.api.mergePatch('v1', 'Event', namespace, seen.name, { count: seen.count, lastTimestamp: timestamp });
        return;
      }
      const event = await this.api.create<KubeObject>({
        apiVersion: 'v1',
        kind: 'Event',
        metadata: { generateName: `${name}.`, namespace },
        involvedObject: { apiVersion: API_VERSION, kind: KIND, name, namespace, uid, resourceVersion: mirror.metadata.resourceVersion },
        type,
        reason,
        message,
        count: 1,
        firstTimestamp: timestamp,
        lastTimestamp: timestamp,
        source: { component: COMPONENT },
        reportingComponent: COMPONENT,
        reportingInstance: this.instance,
      });
      this.recent.set(key, { name: event.metadata!.name!, count: 1, at: now.getTime() });
      if (this.recent.size > 1000) this.recent.delete(this.recent.keys().next().value!);
    } catch (error) {
      this.recent.delete(key);
      this.logger.warn({ err: (error as Error).message, reason, mirror: `${namespace}/${name}` }, 'could not record event');
    }
  }
}

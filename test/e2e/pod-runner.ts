// TEST FAKE. The pod runner plays the parts of a cluster that this machine does not have: one
// kubelet (node `nodeName`), the scheduler (every unscheduled pod is bound to that node), a local
// volume provisioner (each pending PersistentVolumeClaim gets a hostPath PersistentVolume), and
// kube-proxy in its old userspace mode (a TCP proxy per Service port, forwarding to a ready pod
// the Service selects). Pods run with `docker run` on the real Docker engine, with host networking.
//
// What it does faithfully: image, command and args, env (value, fieldRef, secretKeyRef,
// configMapKeyRef), ConfigMap / Secret / PVC / hostPath / emptyDir volumes as host directories
// (hostPath under `hostRoot`, the fake node's root), projected volumes (the ServiceAccount token
// from a real TokenRequest, the kube-root-ca.crt ConfigMap, the namespace), runAsUser/runAsGroup/fsGroup, read-only root
// filesystem, capabilities, no-new-privileges, hostPID, readiness probes (httpGet) written into
// the pod's status, restarts of exited containers, and graceful deletion (SIGTERM with the pod's
// grace period, then the final delete kubelet makes).
//
// What it translates, because every pod shares the host's network namespace here (no pod IPs)
// and ClusterIPs are not routable (no kube-proxy):
//   - a listen address on a containerPort (`:8080`, `0.0.0.0:9101` in env or args, `listen: :5000`
//     in a ConfigMap file) becomes 127.0.0.1:<free host port>; probes use that port;
//   - `http(s)://<ClusterIP>:<port>` in args or env becomes `http(s)://127.0.0.1:<proxy port>`, the
//     runner's proxy for that Service port (stable for the Service's life, like a ClusterIP);
//   - the API server is 127.0.0.1:<its port> instead of the `kubernetes` Service's ClusterIP.
// Every translation is recorded in `translations` so the test can show it. Not done: resource
// limits, liveness probes, init containers, more than one container per pod.
import { chmod, chown, mkdir, writeFile } from 'node:fs/promises';
import net from 'node:net';
import { request as httpsRequest } from 'node:https';
import { request as httpRequest } from 'node:http';
import path from 'node:path';
import type { Dockerd } from '../harness/dockerd.ts';
import { freePort } from '../harness/process.ts';
import { ApiError, type ApiClient, type Json } from './api-client.ts';

export interface PodRunnerOptions {
  api: ApiClient;
  dockerd: Dockerd;
  nodeName: string;
  /** The fake node's root: hostPath `/etc/x` is `<hostRoot>/etc/x`. */
  hostRoot: string;
  /** Where volumes and PersistentVolumes are materialised. */
  workDir: string;
  /** Port of kube-apiserver on 127.0.0.1 (KUBERNETES_SERVICE_PORT for in-cluster clients). */
  apiServerPort: number;
  /** Pod namespaces this runner plays kubelet for (others are left alone). */
  namespaces: string[];
  log?: (line: string) => void;
}

/** Why a pod cannot start yet (a volume not bound, a Service without a ready pod); retried. */
class NotYet extends Error {}

interface RunningPod {
  uid: string;
  namespace: string;
  name: string;
  labels: Record<string, string>;
  containerName: string;
  containerId: string;
  image: string;
  /** containerPort (number and name) -> host port on 127.0.0.1. */
  ports: Map<string | number, number>;
  probe?: { path: string; port: number; scheme: string; periodMs: number; failureThreshold: number };
  ready: boolean;
  failures: number;
  nextProbe: number;
  restarts: number;
  startedAt: string;
  readySince?: string;
  dockerArgs: string[];
}

export interface Terminated {
  namespace: string;
  name: string;
  exitCode: number;
  stopSeconds: number;
  logs: string;
}

const TICK_MS = 400;
/** Probes run at the pod's period, but at least this often, to keep the test short. */
const MAX_PROBE_PERIOD_MS = 2_000;
const MAX_GRACE_SECONDS = 30;
const RETRY_MS = 1_000;

const now = () => new Date().toISOString().replace(/\.\d+Z$/, 'Z');

export class PodRunner {
  readonly translations: string[] = [];
  readonly terminated: Terminated[] = [];
  readonly errors: string[] = [];
  /** Every container started: the pod and the arguments it ran with (after translation). */
  readonly started: { namespace: string; name: string; args: string[] }[] = [];
  private readonly options: PodRunnerOptions;
  private readonly pods = new Map<string, RunningPod>();
  private readonly retryAt = new Map<string, number>();
  private readonly runId = `e2e-${process.pid}-${Date.now().toString(36)}`;
  private loop?: Promise<void>;
  private stopping = false;
  private leaseTimer?: NodeJS.Timeout;
  /** kube-proxy stand-in: one TCP proxy per Service ClusterIP:port. */
  private readonly serviceProxies = new Map<string, { server: net.Server; port: number }>();

  constructor(options: PodRunnerOptions) {
    this.options = options;
  }

  private say(line: string): void {
    this.options.log?.(`pod-runner: ${line}`);
  }

  /** Registers the node (Node + Lease heartbeats) and starts reconciling pods. */
  async start(): Promise<void> {
    const { api, nodeName } = this.options;
    await api.post('/api/v1/nodes', {
      apiVersion: 'v1',
      kind: 'Node',
      metadata: { name: nodeName, labels: { 'kubernetes.io/hostname': nodeName, 'kubernetes.io/os': 'linux', 'kubernetes.io/arch': process.arch === 'arm64' ? 'arm64' : 'amd64' } },
    });
    const stamp = now();
    await api.mergePatch(`/api/v1/nodes/${nodeName}/status`, {
      status: {
        conditions: [{ type: 'Ready', status: 'True', reason: 'KubeletReady', message: 'pod-runner (test fake) is posting ready status', lastHeartbeatTime: stamp, lastTransitionTime: stamp }],
        addresses: [{ type: 'InternalIP', address: '127.0.0.1' }, { type: 'Hostname', address: nodeName }],
        capacity: { cpu: '4', memory: '8Gi', pods: '110' },
        allocatable: { cpu: '4', memory: '8Gi', pods: '110' },
      },
    });
    await this.renewLease();
    this.leaseTimer = setInterval(() => void this.renewLease().catch((e: Error) => this.errors.push(`lease: ${e.message}`)), 10_000);
    this.loop = this.run();
  }

  private async renewLease(): Promise<void> {
    const { api, nodeName } = this.options;
    const renewTime = new Date().toISOString().replace('Z', '000Z');
    const path_ = `/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/${nodeName}`;
    if (await api.find(path_)) await api.mergePatch(path_, { spec: { renewTime } });
    else await api.post('/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases', { apiVersion: 'coordination.k8s.io/v1', kind: 'Lease', metadata: { name: nodeName }, spec: { holderIdentity: nodeName, leaseDurationSeconds: 40, renewTime } });
  }

  private async run(): Promise<void> {
    while (!this.stopping) {
      try {
        await this.tick();
      } catch (error) {
        this.errors.push(`tick: ${(error as Error).message}`);
      }
      await new Promise((r) => setTimeout(r, TICK_MS));
    }
  }

  private async tick(): Promise<void> {
    const { api, nodeName, namespaces } = this.options;
    await this.provisionVolumes();
    const listed = new Set<string>();
    for (const namespace of namespaces) {
      const pods = (await api.get(`/api/v1/namespaces/${namespace}/pods`)).items as Json[];
      for (const pod of pods) {
        if (this.stopping) return;
        const uid = pod.metadata.uid as string;
        listed.add(uid);
        if (pod.spec.nodeName && pod.spec.nodeName !== nodeName) continue;
        if (pod.metadata.deletionTimestamp) {
          await this.terminate(pod);
          continue;
        }
        if (['Succeeded', 'Failed'].includes(pod.status?.phase)) continue;
        if (!pod.spec.nodeName) {
          await this.bind(pod);
          continue;
        }
        const running = this.pods.get(uid);
        if (!running) {
          if ((this.retryAt.get(uid) ?? 0) > Date.now()) continue;
          try {
            await this.startPod(pod);
            this.retryAt.delete(uid);
          } catch (error) {
            this.retryAt.set(uid, Date.now() + RETRY_MS);
            if (!(error instanceof NotYet)) this.errors.push(`${pod.metadata.namespace}/${pod.metadata.name}: ${(error as Error).message}`);
          }
        } else {
          await this.syncPod(running);
        }
      }
    }
    // Pods deleted outright (grace period 0) have no deletionTimestamp phase to see.
    for (const [uid, running] of this.pods) if (!listed.has(uid)) await this.stopContainer(running, 0);
  }

  /** The scheduler's one decision here: this node. */
  private async bind(pod: Json): Promise<void> {
    const { namespace, name, uid } = pod.metadata;
    try {
      await this.options.api.post(`/api/v1/namespaces/${namespace}/pods/${name}/binding`, {
        apiVersion: 'v1', kind: 'Binding', metadata: { name, uid }, target: { apiVersion: 'v1', kind: 'Node', name: this.options.nodeName },
      });
      this.say(`bound ${namespace}/${name} to ${this.options.nodeName}`);
    } catch (error) {
      if (!(error instanceof ApiError && error.status === 409)) throw error;
    }
  }

  /** A hostPath PersistentVolume, pre-bound, for each pending claim: the local provisioner's job. */
  private async provisionVolumes(): Promise<void> {
    const { api, namespaces, workDir } = this.options;
    for (const namespace of namespaces) {
      for (const pvc of (await api.get(`/api/v1/namespaces/${namespace}/persistentvolumeclaims`)).items as Json[]) {
        if (pvc.spec.volumeName || pvc.metadata.deletionTimestamp) continue;
        const name = `pv-${pvc.metadata.uid}`;
        if (await api.find(`/api/v1/persistentvolumes/${name}`)) continue;
        const dir = path.join(workDir, name);
        await mkdir(dir, { recursive: true });
        await chmod(dir, 0o777); // as local-path provisioners do: any pod user may write
        await api.post('/api/v1/persistentvolumes', {
          apiVersion: 'v1',
          kind: 'PersistentVolume',
          metadata: { name },
          spec: {
            capacity: { storage: pvc.spec.resources.requests.storage },
            accessModes: pvc.spec.accessModes,
            persistentVolumeReclaimPolicy: 'Retain',
            storageClassName: pvc.spec.storageClassName ?? '',
            hostPath: { path: dir, type: 'Directory' },
            claimRef: { apiVersion: 'v1', kind: 'PersistentVolumeClaim', namespace, name: pvc.metadata.name, uid: pvc.metadata.uid },
          },
        });
        this.say(`provisioned ${name} (${dir}) for ${namespace}/${pvc.metadata.name}`);
      }
    }
  }

  private async startPod(pod: Json): Promise<void> {
    const { api, dockerd } = this.options;
    const { namespace, name, uid } = pod.metadata as { namespace: string; name: string; uid: string };
    const spec = pod.spec as Json;
    if (spec.initContainers?.length) throw new Error('init containers are not supported by the pod runner');
    if (spec.containers.length !== 1) throw new Error('the pod runner runs pods of exactly one container');
    const container = spec.containers[0] as Json;
    const podDir = path.join(this.options.workDir, 'pods', uid);
    const podSecurity = (spec.securityContext ?? {}) as Json;
    const security = (container.securityContext ?? {}) as Json;

    // Ports: each containerPort gets a host port of its own (pods share the host network here).
    const ports = new Map<string | number, number>();
    for (const port of (container.ports ?? []) as Json[]) {
      const hostPort = await freePort();
      ports.set(port.containerPort, hostPort);
      if (port.name) ports.set(port.name, hostPort);
    }
    const translateListen = (value: string, where: string): string => {
      const match = /^(?:0\.0\.0\.0|\[::\])?:(\d+)$/.exec(value);
      const hostPort = match ? ports.get(Number(match[1])) : undefined;
      if (!hostPort) return value;
      const out = `127.0.0.1:${hostPort}`;
      this.translations.push(`${namespace}/${name} ${where}: listen ${value} -> ${out}`);
      return out;
    };
    const translateServices = async (value: string, where: string): Promise<string> => {
      const match = /^(https?:\/\/)(\d+\.\d+\.\d+\.\d+):(\d+)(.*)$/.exec(value);
      if (!match) return value;
      const out = `${match[1]}${await this.serviceAddress(namespace, match[2]!, Number(match[3]))}${match[4]}`;
      this.translations.push(`${namespace}/${name} ${where}: Service ${match[2]}:${match[3]} -> ${out}`);
      return out;
    };

    // Volumes.
    const fsGroup = podSecurity.fsGroup as number | undefined;
    const volumeDirs = new Map<string, string>();
    for (const volume of (spec.volumes ?? []) as Json[]) {
      const dir = path.join(podDir, 'volumes', volume.name);
      if (volume.configMap) {
        const configMap = await api.find(`/api/v1/namespaces/${namespace}/configmaps/${volume.configMap.name}`);
        if (!configMap) throw new NotYet(`ConfigMap ${volume.configMap.name} not found`);
        await mkdir(dir, { recursive: true });
        for (const [key, text] of Object.entries((configMap.data ?? {}) as Record<string, string>)) {
          // regmirror's mirror config: `listen: :5000` is the pod's own port.
          const translated = text.replace(/^listen: ?["']?((?:0\.0\.0\.0)?:\d+)["']?$/m, (_line, address: string) => `listen: ${translateListen(address, `ConfigMap ${volume.configMap.name} ${key}`)}`);
          await writeFile(path.join(dir, key), translated, { mode: volume.configMap.defaultMode ?? 0o644 });
        }
      } else if (volume.secret) {
        const secret = await api.find(`/api/v1/namespaces/${namespace}/secrets/${volume.secret.secretName}`);
        if (!secret) throw new NotYet(`Secret ${volume.secret.secretName} not found`);
        await mkdir(dir, { recursive: true });
        for (const [key, data] of Object.entries((secret.data ?? {}) as Record<string, string>)) {
          const file = path.join(dir, key);
          await writeFile(file, Buffer.from(data, 'base64'), { mode: volume.secret.defaultMode ?? 0o644 });
          if (fsGroup !== undefined) await chown(file, 0, fsGroup); // kubelet gives Secret files to the fsGroup
        }
      } else if (volume.persistentVolumeClaim) {
        const claim = await api.find(`/api/v1/namespaces/${namespace}/persistentvolumeclaims/${volume.persistentVolumeClaim.claimName}`);
        if (claim?.status?.phase !== 'Bound') throw new NotYet(`PersistentVolumeClaim ${volume.persistentVolumeClaim.claimName} not bound`);
        const pv = await api.get(`/api/v1/persistentvolumes/${claim.spec.volumeName}`);
        if (!pv.spec.hostPath) throw new Error(`PersistentVolume ${claim.spec.volumeName} is not a hostPath volume`);
        volumeDirs.set(volume.name, pv.spec.hostPath.path as string);
        continue;
      } else if (volume.hostPath) {
        const hostDir = path.join(this.options.hostRoot, volume.hostPath.path);
        if (volume.hostPath.type === 'DirectoryOrCreate') await mkdir(hostDir, { recursive: true });
        volumeDirs.set(volume.name, hostDir);
        continue;
      } else if (volume.projected) {
        await this.project(pod, volume.projected, dir);
      } else if (volume.emptyDir) {
        await mkdir(dir, { recursive: true });
        await chmod(dir, 0o777);
      } else {
        throw new Error(`volume ${volume.name}: only configMap, secret, projected, persistentVolumeClaim, hostPath and emptyDir are supported`);
      }
      volumeDirs.set(volume.name, dir);
    }
    const mounts: string[] = [];
    for (const mount of (container.volumeMounts ?? []) as Json[]) {
      const source = volumeDirs.get(mount.name);
      if (!source) throw new Error(`volumeMount ${mount.name} has no volume`);
      mounts.push('--volume', `${source}:${mount.mountPath}${mount.readOnly ? ':ro' : ''}`);
    }

    // In-cluster clients find the API server through these; the token comes in the projected volume.
    const env = new Map<string, string>();
    if ((spec.volumes ?? []).some((v: Json) => v.projected?.sources?.some((source: Json) => source.serviceAccountToken))) {
      env.set('KUBERNETES_SERVICE_HOST', '127.0.0.1');
      env.set('KUBERNETES_SERVICE_PORT', String(this.options.apiServerPort));
      this.translations.push(`${namespace}/${name}: API server at 127.0.0.1:${this.options.apiServerPort} (no kubernetes Service ClusterIP)`);
    }
    if (container.envFrom?.length) throw new Error('envFrom is not supported by the pod runner');
    for (const item of (container.env ?? []) as Json[]) {
      let value: string;
      if (item.valueFrom?.fieldRef) value = this.fieldRef(pod, item.valueFrom.fieldRef.fieldPath as string);
      else if (item.valueFrom?.secretKeyRef) value = await this.keyRef(namespace, 'secrets', item.valueFrom.secretKeyRef, true);
      else if (item.valueFrom?.configMapKeyRef) value = await this.keyRef(namespace, 'configmaps', item.valueFrom.configMapKeyRef, false);
      else if (item.valueFrom) throw new Error(`env ${item.name}: only fieldRef, secretKeyRef and configMapKeyRef are supported`);
      else value = (item.value as string | undefined) ?? '';
      value = await translateServices(translateListen(value, `env ${item.name}`), `env ${item.name}`);
      env.set(item.name, value);
    }
    const args: string[] = [];
    for (const arg of [...((container.command ?? []) as string[]).slice(1), ...((container.args ?? []) as string[])]) {
      args.push(await translateServices(translateListen(arg, 'args'), 'args'));
    }

    // Identity and confinement.
    const user = security.runAsUser ?? podSecurity.runAsUser;
    const group = security.runAsGroup ?? podSecurity.runAsGroup;
    if ((security.runAsNonRoot ?? podSecurity.runAsNonRoot) === true && !user) throw new Error('runAsNonRoot without a non-zero runAsUser (the runner does not read the image user)');
    const image = container.image as string;
    const inspect = await dockerd.docker(['image', 'inspect', '--format', '{{.Id}}', image]);
    if (inspect.code !== 0) throw new Error(`image ${image} is not present on the node (imagePullPolicy ${container.imagePullPolicy}; the runner pulls nothing)`);

    const containerName = `k8s_${container.name}_${name}_${namespace}_${uid.slice(0, 8)}`;
    const dockerArgs = [
      'run', '--detach', '--name', containerName, '--network', 'host',
      '--label', `regmirror.e2e/run=${this.runId}`, '--label', `regmirror.e2e/pod=${namespace}/${name}`,
      ...(user !== undefined ? ['--user', group !== undefined ? `${user}:${group}` : String(user)] : []),
      ...(fsGroup !== undefined ? ['--group-add', String(fsGroup)] : []),
      ...(security.readOnlyRootFilesystem ? ['--read-only'] : []),
      ...(security.allowPrivilegeEscalation === false ? ['--security-opt', 'no-new-privileges'] : []),
      ...((security.capabilities?.drop ?? []) as string[]).flatMap((c) => ['--cap-drop', c]),
      ...((security.capabilities?.add ?? []) as string[]).flatMap((c) => ['--cap-add', c]),
      ...(spec.hostPID ? ['--pid', 'host'] : []),
      ...[...env].flatMap(([k, v]) => ['--env', `${k}=${v}`]),
      ...mounts,
      ...(container.command?.length ? ['--entrypoint', container.command[0] as string] : []),
      image,
      ...args,
    ];
    const result = await dockerd.docker(dockerArgs);
    if (result.code !== 0) throw new Error(`docker run for ${namespace}/${name} failed: ${result.stderr}`);
    const containerId = result.stdout.trim();
    this.started.push({ namespace, name, args });

    const probe = container.readinessProbe?.httpGet as Json | undefined;
    const running: RunningPod = {
      uid, namespace, name, labels: (pod.metadata.labels ?? {}) as Record<string, string>, containerName, containerId, image, ports, ready: false, failures: 0, nextProbe: 0, restarts: 0, startedAt: now(), dockerArgs,
      probe: probe
        ? {
            path: probe.path ?? '/',
            port: ports.get(probe.port) ?? (() => { throw new Error(`readiness probe port ${probe.port} is not a containerPort`); })(),
            scheme: (probe.scheme ?? 'HTTP').toLowerCase(),
            periodMs: Math.min((container.readinessProbe.periodSeconds ?? 10) * 1000, MAX_PROBE_PERIOD_MS),
            failureThreshold: container.readinessProbe.failureThreshold ?? 3,
          }
        : undefined,
    };
    if (!running.probe) {
      running.ready = true;
      running.readySince = now();
    }
    this.pods.set(uid, running);
    this.say(`started ${namespace}/${name} (${containerId.slice(0, 12)})`);
    await this.patchStatus(running);
  }

  /**
   * A projected volume, as the ServiceAccount admission plugin adds it (kube-api-access-*): a bound
   * token from the TokenRequest API, the cluster CA from the kube-root-ca.crt ConfigMap, the namespace.
   */
  private async project(pod: Json, projected: Json, dir: string): Promise<void> {
    const { api } = this.options;
    const { namespace, name, uid } = pod.metadata;
    const mode = (projected.defaultMode as number | undefined) ?? 0o644;
    await mkdir(dir, { recursive: true });
    const write = async (file: string, data: string | Buffer) => {
      await mkdir(path.dirname(path.join(dir, file)), { recursive: true });
      await writeFile(path.join(dir, file), data, { mode });
    };
    for (const source of (projected.sources ?? []) as Json[]) {
      if (source.serviceAccountToken) {
        const request = await api.post(`/api/v1/namespaces/${namespace}/serviceaccounts/${pod.spec.serviceAccountName}/token`, {
          apiVersion: 'authentication.k8s.io/v1',
          kind: 'TokenRequest',
          spec: {
            ...(source.serviceAccountToken.audience ? { audiences: [source.serviceAccountToken.audience] } : {}),
            expirationSeconds: source.serviceAccountToken.expirationSeconds ?? 3600,
            boundObjectRef: { apiVersion: 'v1', kind: 'Pod', name, uid },
          },
        });
        await write(source.serviceAccountToken.path, request.status.token as string);
      } else if (source.configMap || source.secret) {
        const ref = (source.configMap ?? source.secret) as Json;
        const resource = source.configMap ? 'configmaps' : 'secrets';
        const object = await api.find(`/api/v1/namespaces/${namespace}/${resource}/${ref.name}`);
        if (!object) {
          if (ref.optional) continue;
          throw new NotYet(`${resource} ${ref.name} not found`);
        }
        const data = (object.data ?? {}) as Record<string, string>;
        const items = (ref.items as Json[] | undefined) ?? Object.keys(data).map((key) => ({ key, path: key }));
        for (const item of items) {
          const raw = data[item.key];
          if (raw === undefined) throw new NotYet(`${resource} ${ref.name} has no key ${item.key}`);
          await write(item.path, source.secret ? Buffer.from(raw, 'base64') : raw);
        }
      } else if (source.downwardAPI) {
        for (const item of (source.downwardAPI.items ?? []) as Json[]) {
          if (!item.fieldRef) throw new Error('downwardAPI: only fieldRef items are supported');
          await write(item.path, this.fieldRef(pod, item.fieldRef.fieldPath));
        }
      } else {
        throw new Error(`projected volume source ${Object.keys(source).join(',')} is not supported`);
      }
    }
  }

  private fieldRef(pod: Json, fieldPath: string): string {
    const values: Record<string, string | undefined> = {
      'metadata.name': pod.metadata.name,
      'metadata.namespace': pod.metadata.namespace,
      'metadata.uid': pod.metadata.uid,
      'spec.nodeName': pod.spec.nodeName,
      'spec.serviceAccountName': pod.spec.serviceAccountName,
      'status.hostIP': '127.0.0.1',
      'status.podIP': '127.0.0.1',
    };
    const value = values[fieldPath];
    if (value === undefined) throw new Error(`fieldRef ${fieldPath} is not supported by the pod runner`);
    return value;
  }

  private async keyRef(namespace: string, resource: 'secrets' | 'configmaps', ref: Json, base64: boolean): Promise<string> {
    const object = await this.options.api.find(`/api/v1/namespaces/${namespace}/${resource}/${ref.name}`);
    const raw = object?.data?.[ref.key] as string | undefined;
    if (raw === undefined) {
      if (ref.optional) return '';
      throw new NotYet(`${resource} ${ref.name} key ${ref.key} not found`);
    }
    return base64 ? Buffer.from(raw, 'base64').toString('utf8') : raw;
  }

  /**
   * kube-proxy's part: a TCP proxy on 127.0.0.1 for the Service port with this ClusterIP, which
   * sends each connection to a ready pod the Service selects (and refuses it while there is none).
   */
  private async serviceAddress(namespace: string, clusterIP: string, port: number): Promise<string> {
    const key = `${clusterIP}:${port}`;
    const existing = this.serviceProxies.get(key);
    if (existing) return `127.0.0.1:${existing.port}`;
    const services = (await this.options.api.get(`/api/v1/namespaces/${namespace}/services`)).items as Json[];
    const service = services.find((s) => s.spec.clusterIP === clusterIP);
    if (!service) throw new NotYet(`no Service has ClusterIP ${clusterIP}`);
    const servicePort = (service.spec.ports as Json[]).find((p) => p.port === port);
    if (!servicePort) throw new Error(`Service ${service.metadata.name} has no port ${port}`);
    const selector = Object.entries(service.spec.selector as Record<string, string>);
    const targetPort = (servicePort.targetPort ?? port) as string | number;
    const endpoint = (): number | undefined => {
      for (const pod of this.pods.values()) {
        if (pod.namespace !== namespace || !pod.ready || !selector.every(([k, v]) => pod.labels[k] === v)) continue;
        const hostPort = pod.ports.get(targetPort);
        if (hostPort) return hostPort;
      }
      return undefined;
    };
    const server = net.createServer((client) => {
      const hostPort = endpoint();
      if (!hostPort) return client.destroy();
      const upstream = net.connect(hostPort, '127.0.0.1');
      client.pipe(upstream).pipe(client);
      client.on('error', () => upstream.destroy());
      upstream.on('error', () => client.destroy());
      client.on('close', () => upstream.destroy());
      upstream.on('close', () => client.destroy());
    });
    const proxyPort = await new Promise<number>((resolve, reject) => {
      server.once('error', reject);
      server.listen(0, '127.0.0.1', () => resolve((server.address() as net.AddressInfo).port));
    });
    server.unref();
    this.serviceProxies.set(key, { server, port: proxyPort });
    this.say(`Service ${namespace}/${service.metadata.name} ${key} proxied on 127.0.0.1:${proxyPort}`);
    return `127.0.0.1:${proxyPort}`;
  }

  private async syncPod(running: RunningPod): Promise<void> {
    const { dockerd } = this.options;
    const state = await dockerd.docker(['inspect', '--format', '{{.State.Running}} {{.State.ExitCode}}', running.containerId]);
    const [isRunning, exitCode] = state.stdout.trim().split(' ');
    if (isRunning !== 'true') {
      const logs = await dockerd.docker(['logs', '--tail', '30', running.containerId]);
      this.errors.push(`${running.namespace}/${running.name} exited (${exitCode}); restarting. Last output:\n${logs.stdout}${logs.stderr}`);
      running.restarts += 1;
      running.ready = !running.probe;
      await dockerd.docker(['start', running.containerId]);
      await this.patchStatus(running);
      return;
    }
    if (!running.probe || Date.now() < running.nextProbe) return;
    running.nextProbe = Date.now() + running.probe.periodMs;
    const ok = await probe(running.probe.scheme, running.probe.port, running.probe.path);
    running.failures = ok ? 0 : running.failures + 1;
    const ready = ok ? true : running.ready && running.failures < running.probe.failureThreshold;
    if (ready !== running.ready) {
      running.ready = ready;
      running.readySince = now();
      this.say(`${running.namespace}/${running.name} ${ready ? 'ready' : 'not ready'}`);
      await this.patchStatus(running);
    }
  }

  private async patchStatus(running: RunningPod): Promise<void> {
    const ready = running.ready ? 'True' : 'False';
    const since = running.readySince ?? running.startedAt;
    try {
      await this.options.api.mergePatch(`/api/v1/namespaces/${running.namespace}/pods/${running.name}/status`, {
        status: {
          phase: 'Running',
          hostIP: '127.0.0.1',
          podIP: '127.0.0.1',
          podIPs: [{ ip: '127.0.0.1' }],
          startTime: running.startedAt,
          conditions: [
            { type: 'PodScheduled', status: 'True', lastTransitionTime: running.startedAt },
            { type: 'Initialized', status: 'True', lastTransitionTime: running.startedAt },
            { type: 'ContainersReady', status: ready, lastTransitionTime: since },
            { type: 'Ready', status: ready, lastTransitionTime: since },
          ],
          containerStatuses: [{
            name: running.containerName.split('_')[1],
            image: running.image,
            imageID: `docker://${running.image}`,
            containerID: `docker://${running.containerId}`,
            ready: running.ready,
            started: true,
            restartCount: running.restarts,
            state: { running: { startedAt: running.startedAt } },
          }],
        },
      });
    } catch (error) {
      if (!(error instanceof ApiError && error.status === 404)) throw error;
    }
  }

  /** Graceful deletion: SIGTERM, the pod's grace period, SIGKILL; then kubelet's final delete. */
  private async terminate(pod: Json): Promise<void> {
    const running = this.pods.get(pod.metadata.uid);
    if (running) await this.stopContainer(running, Math.min(pod.metadata.deletionGracePeriodSeconds ?? 30, MAX_GRACE_SECONDS));
    try {
      await this.options.api.delete(`/api/v1/namespaces/${pod.metadata.namespace}/pods/${pod.metadata.name}`, {
        apiVersion: 'v1', kind: 'DeleteOptions', gracePeriodSeconds: 0, preconditions: { uid: pod.metadata.uid },
      });
    } catch (error) {
      if (!(error instanceof ApiError && (error.status === 404 || error.status === 409))) throw error;
    }
  }

  private async stopContainer(running: RunningPod, graceSeconds: number): Promise<void> {
    const { dockerd } = this.options;
    this.pods.delete(running.uid);
    const started = Date.now();
    await dockerd.docker(['stop', '--time', String(graceSeconds), running.containerId]);
    const stopSeconds = (Date.now() - started) / 1000;
    const exit = await dockerd.docker(['inspect', '--format', '{{.State.ExitCode}}', running.containerId]);
    const logs = await dockerd.docker(['logs', '--tail', '200', running.containerId]);
    await dockerd.docker(['rm', '--force', '--volumes', running.containerId]);
    this.terminated.push({ namespace: running.namespace, name: running.name, exitCode: Number(exit.stdout.trim()), stopSeconds, logs: logs.stdout + logs.stderr });
    this.say(`stopped ${running.namespace}/${running.name} in ${stopSeconds.toFixed(1)}s (exit ${exit.stdout.trim()})`);
  }

  /** The pods this runner runs now, by namespace/name. */
  running(): { namespace: string; name: string; ready: boolean; ports: Map<string | number, number>; containerId: string; dockerArgs: string[] }[] {
    return [...this.pods.values()];
  }

  /** Output of a running pod's container. */
  async logs(namespace: string, name: string): Promise<string> {
    const running = [...this.pods.values()].find((p) => p.namespace === namespace && p.name === name);
    if (!running) return '';
    const out = await this.options.dockerd.docker(['logs', '--tail', '200', running.containerId]);
    return out.stdout + out.stderr;
  }

  /** Stops the loop and every container it started (gracefully, like a drained node). */
  async stop(): Promise<void> {
    this.stopping = true;
    if (this.leaseTimer) clearInterval(this.leaseTimer);
    await this.loop;
    for (const running of [...this.pods.values()]) await this.stopContainer(running, 10);
    const left = await this.options.dockerd.docker(['ps', '--all', '--quiet', '--filter', `label=regmirror.e2e/run=${this.runId}`]);
    const ids = left.stdout.split('\n').filter(Boolean);
    if (ids.length > 0) await this.options.dockerd.docker(['rm', '--force', ...ids]);
    for (const { server } of this.serviceProxies.values()) server.close();
  }
}

function probe(scheme: string, port: number, path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const send = scheme === 'https' ? httpsRequest : httpRequest;
    const req = send({ host: '127.0.0.1', port, path, method: 'GET', timeout: 2_000, agent: false, rejectUnauthorized: false }, (res) => {
      res.resume();
      const status = res.statusCode ?? 0;
      resolve(status >= 200 && status < 400);
    });
    req.on('timeout', () => req.destroy());
    req.on('error', () => resolve(false));
    req.end();
  });
}

// distribution's own pull-through cache (`docker-registry` with a `proxy:` section), configured for
// the benchmark as regmirror is: filesystem storage, no per-request logging (regmirror logs no
// line per request either), warnings only. The harness's startRegistry keeps the access log on,
// which is right for an upstream whose requests are counted but would tax the proxy here.
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { freePort, httpRequest, makeTempDir, spawnServer, type ServerProcess } from '../test/harness/process.ts';

export interface DistributionProxy {
  url: string;
  host: string;
  storageDir: string;
  process: ServerProcess;
  stop(): Promise<void>;
}

/** Starts the proxy in front of `remoteurl` (which must already be up: distribution panics otherwise). */
export async function startDistributionProxy(remoteurl: string): Promise<DistributionProxy> {
  const dir = await makeTempDir('distribution-proxy');
  const port = await freePort();
  const storageDir = path.join(dir, 'storage');
  const configFile = path.join(dir, 'config.yml');
  const config = {
    version: 0.1,
    log: { level: 'warn', formatter: 'text', accesslog: { disabled: true } },
    storage: { filesystem: { rootdirectory: storageDir }, maintenance: { uploadpurging: { enabled: false } } },
    http: { addr: `127.0.0.1:${port}`, secret: 'regmirror-bench' },
    proxy: { remoteurl },
  };
  await writeFile(configFile, JSON.stringify(config, null, 2));
  const url = `http://127.0.0.1:${port}`;
  const server = await spawnServer('docker-registry', ['serve', configFile], {
    logFile: path.join(dir, 'registry.log'),
    ready: async () => (await httpRequest(`${url}/v2/`)).status === 200,
  });
  return { url, host: `127.0.0.1:${port}`, storageDir, process: server, stop: () => server.stop() };
}

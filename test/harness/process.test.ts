import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, readFileSync, statSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { freePort, httpRequest, makeTempDir, runCommand, spawnServer, sweepOrphanedTempDirs, waitFor } from './process.ts';

const HERE = path.dirname(new URL(import.meta.url).pathname);

/** A tiny HTTP server that also starts a grandchild sleeping in the same process group. */
function serverScript(port: number, grandchildPidFile: string): string {
  return `
    const { spawn } = require('node:child_process');
    const fs = require('node:fs');
    const g = spawn('sleep', ['300'], { stdio: 'ignore' });
    fs.writeFileSync(${JSON.stringify(grandchildPidFile)}, String(g.pid));
    require('node:http').createServer((q, r) => r.end('ok')).listen(${port}, '127.0.0.1', () => console.log('listening ${port}'));
  `;
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

test('freePort returns a port that can be bound on 127.0.0.1', async () => {
  const port = await freePort();
  assert.ok(port > 0 && port < 65536);
  await new Promise<void>((resolve, reject) => {
    const server = net.createServer().once('error', reject).listen(port, '127.0.0.1', () => server.close(() => resolve()));
  });
});

test('makeTempDir makes a fresh directory under os.tmpdir()', async () => {
  const a = await makeTempDir('proc');
  const b = await makeTempDir('proc');
  assert.notEqual(a, b);
  assert.ok(a.startsWith(os.tmpdir()));
  assert.ok(statSync(a).isDirectory());
});

test('spawnServer waits for ready, captures output and logFile, and stop() ends the whole process group', async () => {
  const dir = await makeTempDir('proc');
  const port = await freePort();
  const logFile = path.join(dir, 'server.log');
  const server = await spawnServer(process.execPath, ['-e', serverScript(port, path.join(dir, 'g.pid'))], {
    ready: async () => (await httpRequest(`http://127.0.0.1:${port}/`)).status === 200,
    logFile,
  });
  const grandchild = Number(readFileSync(path.join(dir, 'g.pid'), 'utf8'));
  assert.ok(alive(server.pid) && alive(grandchild));
  await waitFor(() => server.output().includes(`listening ${port}`), { what: 'output' });
  await server.stop();
  assert.equal(alive(server.pid), false);
  await waitFor(() => !alive(grandchild), { what: 'grandchild to die' });
  assert.match(readFileSync(logFile, 'utf8'), new RegExp(`listening ${port}`));
  assert.deepEqual(server.exitStatus(), { code: null, signal: 'SIGTERM' });
});

test('onLine sees every complete line of output', async () => {
  const port = await freePort();
  const lines: string[] = [];
  const server = await spawnServer(
    process.execPath,
    ['-e', `console.log('one'); console.error('two'); require('node:http').createServer((q, r) => r.end()).listen(${port}, '127.0.0.1')`],
    { ready: async () => (await httpRequest(`http://127.0.0.1:${port}/`)).status === 200, onLine: (line, stream) => lines.push(`${stream}:${line}`) },
  );
  await waitFor(() => lines.length === 2, { what: 'two lines' });
  await server.stop();
  assert.deepEqual(lines.sort(), ['stderr:two', 'stdout:one']);
});

test('kill9() kills the server like a crash would', async () => {
  const dir = await makeTempDir('proc');
  const port = await freePort();
  const server = await spawnServer(process.execPath, ['-e', serverScript(port, path.join(dir, 'g.pid'))], {
    ready: async () => (await httpRequest(`http://127.0.0.1:${port}/`)).status === 200,
  });
  await server.kill9();
  assert.equal(server.exitStatus()?.signal, 'SIGKILL');
  await assert.rejects(httpRequest(`http://127.0.0.1:${port}/`));
});

test('spawnServer rejects with the output when the program exits before it is ready', async () => {
  await assert.rejects(
    spawnServer(process.execPath, ['-e', 'console.error("bad config"); process.exit(3)'], { ready: async () => false }),
    /exited \(3\) before it was ready:[\s\S]*bad config/,
  );
});

test('spawnServer rejects after timeoutMs and kills a server that never becomes ready', async () => {
  const started = Date.now();
  await assert.rejects(
    spawnServer('sleep', ['300'], { ready: async () => false, timeoutMs: 300 }),
    /not ready after 300ms/,
  );
  assert.ok(Date.now() - started < 5_000);
});

for (const ending of ['a failed assertion', 'SIGKILL'] as const) {
  test(`servers die with the test process when it ends by ${ending}`, async () => {
    const dir = await makeTempDir('proc');
    const port = await freePort();
    const pidFile = path.join(dir, 'server.pid');
    const script = `
      import { spawnServer, httpRequest } from ${JSON.stringify(path.join(HERE, 'process.ts'))};
      import { writeFileSync } from 'node:fs';
      const s = await spawnServer(process.execPath, ['-e', ${JSON.stringify(serverScript(port, path.join(dir, 'g.pid')))}],
        { ready: async () => (await httpRequest('http://127.0.0.1:${port}/')).status === 200 });
      writeFileSync(${JSON.stringify(pidFile)}, String(s.pid));
      ${ending === 'SIGKILL' ? 'process.kill(process.pid, "SIGKILL");' : 'throw new Error("assertion failed");'}
    `;
    const child = spawn(process.execPath, ['--input-type=module', '-e', script], { stdio: 'ignore' });
    await new Promise((resolve) => child.once('exit', resolve));
    assert.ok(existsSync(pidFile), 'the child started its server');
    const serverPid = Number(readFileSync(pidFile, 'utf8'));
    await waitFor(() => !alive(serverPid), { what: `server ${serverPid} to die`, timeoutMs: 5_000 });
    const grandchild = Number(readFileSync(path.join(dir, 'g.pid'), 'utf8'));
    if (ending === 'SIGKILL') {
      // the kernel's parent-death signal reaches the server only; its own children are orphaned
      process.kill(grandchild, 'SIGKILL');
    } else {
      await waitFor(() => !alive(grandchild), { what: 'grandchild to die', timeoutMs: 5_000 });
    }
    await assert.rejects(httpRequest(`http://127.0.0.1:${port}/`));
  });
}

test('temp dirs of a test process that was SIGKILLed are swept by the next one', async () => {
  const dir = await makeTempDir('proc');
  const record = path.join(dir, 'orphan');
  const script = `
    import { makeTempDir } from ${JSON.stringify(path.join(HERE, 'process.ts'))};
    import { writeFileSync } from 'node:fs';
    const orphan = await makeTempDir('orphan');
    writeFileSync(${JSON.stringify(record)}, orphan);
    process.kill(process.pid, 'SIGKILL');
  `;
  const child = spawn(process.execPath, ['--input-type=module', '-e', script], { stdio: 'ignore' });
  await new Promise((resolve) => child.once('exit', resolve));
  const orphan = readFileSync(record, 'utf8');
  assert.ok(existsSync(orphan), 'SIGKILL left the dir behind');
  sweepOrphanedTempDirs();
  assert.equal(existsSync(orphan), false);
  assert.ok(existsSync(dir), 'a live process keeps its dirs');
});

test('runCommand returns stdout, stderr and the exit code', async () => {
  const result = await runCommand('sh', ['-c', 'echo out; echo err >&2; exit 4']);
  assert.deepEqual(result, { stdout: 'out\n', stderr: 'err\n', code: 4 });
});

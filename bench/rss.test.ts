import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { test } from 'node:test';
import { parseStatus, readMemory, RssSampler } from './rss.ts';

/** A real process that touches `bytes` of memory and then waits to be killed. */
async function holdMemory(bytes: number) {
  const child = spawn(process.execPath, ['-e', `globalThis.held = Buffer.alloc(${bytes}, 1); console.log('ready'); setInterval(() => {}, 1000);`], { stdio: ['ignore', 'pipe', 'inherit'] });
  await once(child.stdout, 'data');
  return child;
}

test('parseStatus reads VmRSS and VmHWM in bytes', () => {
  const text = 'Name:\tnode\nVmPeak:\t  999 kB\nVmHWM:\t    2048 kB\nVmRSS:\t    1024 kB\nThreads:\t7\n';
  assert.deepEqual(parseStatus(text), { rss: 1024 * 1024, hwm: 2048 * 1024 });
  assert.throws(() => parseStatus('Name:\tkthreadd\n'), /no VmRSS/);
});

test('the sampler reports the peak of a real process that holds 200 MB, and less for one that holds 20 MB', async () => {
  const big = await holdMemory(200e6);
  const small = await holdMemory(20e6);
  try {
    const now = await readMemory(big.pid!);
    assert.ok(now.rss >= 200e6 && now.hwm >= now.rss, `rss ${now.rss}, hwm ${now.hwm}`);
    const sampler = new RssSampler({ big: big.pid!, small: small.pid! }, { intervalMs: 20 });
    sampler.start();
    await new Promise((resolve) => setTimeout(resolve, 150));
    const peaks = await sampler.stop();
    assert.ok(sampler.sampleCount('big') >= 3, `only ${sampler.sampleCount('big')} samples`);
    assert.ok(peaks.big! >= 200e6 && peaks.big! < 400e6, `big peak ${peaks.big}`);
    assert.ok(peaks.small! >= 20e6 && peaks.small! < peaks.big! - 150e6, `small peak ${peaks.small}`);
  } finally {
    big.kill('SIGKILL');
    small.kill('SIGKILL');
  }
});

test('the sampler stops by itself after maxSamples, and keeps the last peak of a process that exited', async () => {
  const child = await holdMemory(30e6);
  const sampler = new RssSampler({ child: child.pid! }, { intervalMs: 10, maxSamples: 3 });
  sampler.start();
  await new Promise((resolve) => setTimeout(resolve, 150));
  const counted = sampler.sampleCount('child');
  assert.ok(counted >= 2 && counted <= 4, `${counted} samples`);
  child.kill('SIGKILL');
  await once(child, 'exit');
  const peaks = await sampler.stop();
  assert.ok(peaks.child! >= 30e6);
});

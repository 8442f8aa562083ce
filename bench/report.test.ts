import assert from 'node:assert/strict';
import { test } from 'node:test';
import { describeMachine, regmirrorRatio, renderTable } from './report.ts';
import { summarize } from './stats.ts';

test('each row shows both servers, the reference, the ratio of medians and whether the target holds', () => {
  const table = renderTable([
    {
      metric: 'warm blob',
      unit: 'MB/s',
      scale: 1e6,
      distribution: summarize([400e6, 500e6, 600e6]),
      regmirror: summarize([900e6, 1000e6, 1100e6]),
      reference: { label: 'nginx', summary: summarize([2000e6]) },
      target: { text: '>= 1.2x distribution', holds: true },
    },
    { metric: 'peak RSS', unit: 'MB', scale: 1e6, distribution: summarize([100e6]), regmirror: summarize([300e6]), target: { text: '<= 1.5x', holds: false } },
    { metric: 'pull', unit: 'ms', regmirror: summarize([10, 20]) },
  ]);
  const lines = table.split('\n');
  assert.equal(lines.length, 5);
  assert.equal(lines[2], '| warm blob | MB/s | 3 | 500 (400–600) | 1000 (900–1100) | nginx: 2000 | 2.00x | >= 1.2x distribution | yes |');
  assert.equal(lines[3], '| peak RSS | MB | 1 | 100 | 300 | – | 3.00x | <= 1.5x | **no** |');
  assert.equal(lines[4], '| pull | ms | 2 | – | 15 (10–20) | – | n/a | – | – |');
  assert.equal(regmirrorRatio({ metric: 'x', unit: 'ms', distribution: summarize([4]), regmirror: summarize([1]) }), 0.25);
});

test('the machine description names cores, memory, CPU and the programs compared', () => {
  const text = describeMachine({ start: [1, 2, 3], end: [0.5, 0.5, 0.5] }).join('\n');
  assert.match(text, /CPU: \d+ cores, /);
  assert.match(text, /memory: [\d.]+ GiB/);
  assert.match(text, /at start: 1\.0 2\.0 3\.0/);
  assert.match(text, /distribution: docker-registry .*2\.8/);
  assert.match(text, /nginx: nginx version: nginx\//);
  assert.match(text, /containerd: containerd/);
});

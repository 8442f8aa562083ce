import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseDuration, formatDuration } from './duration.ts';
import { parseQuantity, formatQuantity } from './quantity.ts';

test('durations read the way Go and Kubernetes users write them', () => {
  assert.equal(parseDuration('168h'), 168 * 3_600_000);
  assert.equal(parseDuration('1m30s'), 90_000);
  assert.equal(parseDuration('250ms'), 250);
  assert.equal(parseDuration('0s'), 0);
  assert.equal(parseDuration('0'), 0);
  assert.equal(parseDuration('1.5h'), 5_400_000);
  for (const bad of ['', 'h', '10', '5 m', '-1s', '1x', '1h-2m']) assert.equal(parseDuration(bad), undefined, bad);
  assert.equal(formatDuration(5_400_000), '1h30m');
  assert.equal(parseDuration(formatDuration(93_784_005)), 93_784_005);
});

test('quantities read as Kubernetes storage sizes', () => {
  assert.equal(parseQuantity('50Gi'), 50 * 2 ** 30);
  assert.equal(parseQuantity('500M'), 500e6);
  assert.equal(parseQuantity('1024'), 1024);
  assert.equal(parseQuantity('1.5Ki'), 1536);
  for (const bad of ['', 'Gi', '5 Gi', '-1Gi', '10GB', '1e3']) assert.equal(parseQuantity(bad), undefined, bad);
  assert.equal(formatQuantity(45 * 2 ** 30), '45Gi');
  assert.equal(formatQuantity(1000), '1000');
});

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { formatNumber, formatRatio, formatSummary, ratio, summarize } from './stats.ts';

test('summarize gives the middle value of an odd count, and min and max, whatever the order', () => {
  assert.deepEqual(summarize([5, 1, 3]), { median: 3, min: 1, max: 5, runs: 3 });
  assert.deepEqual(summarize([7]), { median: 7, min: 7, max: 7, runs: 1 });
});

test('summarize gives the mean of the middle two of an even count', () => {
  assert.deepEqual(summarize([4, 1, 10, 2]), { median: 3, min: 1, max: 10, runs: 4 });
});

test('summarize refuses no values and values that are not numbers', () => {
  assert.throws(() => summarize([]), /no values/);
  assert.throws(() => summarize([1, Number.NaN]), /not a finite number/);
});

test('ratio divides medians, and has no answer against zero', () => {
  assert.equal(ratio(summarize([2, 4, 6]), summarize([1, 2, 30])), 2);
  assert.equal(ratio(3, 4), 0.75);
  assert.equal(ratio(summarize([1]), 0), undefined);
});

test('cells show the median and the range in the requested unit', () => {
  assert.equal(formatSummary(summarize([1_234e6, 1_000e6, 1_500e6]), 1e6), '1234 (1000–1500)');
  assert.equal(formatSummary(summarize([2, 2])), '2');
  assert.equal(formatSummary(summarize([9, 9, 10])), '9 (9–10)');
  assert.equal(formatNumber(1.5), '1.50');
  assert.equal(formatNumber(0.01234), '0.0123');
  assert.equal(formatNumber(12.345), '12.3');
  assert.equal(formatRatio(1.234), '1.23x');
  assert.equal(formatRatio(undefined), 'n/a');
});

// The Grafana dashboard queries only metrics the mirror exports (mirror/metrics.ts), so a renamed
// metric cannot leave a panel silently empty.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { MirrorMetrics } from '../mirror/metrics.ts';
import { CHART_DIR } from './generate.ts';

interface Target { expr: string; refId: string }
interface Panel { id: number; type: string; title: string; targets?: Target[]; datasource?: unknown }
interface Dashboard {
  uid: string;
  title: string;
  panels: Panel[];
  templating: { list: { name: string; query?: string | { query: string }; definition?: string }[] };
}

const dashboard = JSON.parse(readFileSync(path.join(CHART_DIR, 'dashboards', 'regmirror-mirror.json'), 'utf8')) as Dashboard;

/** Every series name the mirror exports, with the _bucket/_sum/_count series of its histograms. */
async function exportedSeries(): Promise<Set<string>> {
  const names = new Set<string>();
  for (const metric of await new MirrorMetrics().registry.getMetricsAsJSON()) {
    names.add(metric.name);
    if (String(metric.type) === 'histogram') for (const suffix of ['_bucket', '_sum', '_count']) names.add(metric.name + suffix);
  }
  return names;
}

function queries(): { where: string; text: string }[] {
  const out = dashboard.panels.flatMap((panel) => (panel.targets ?? []).map((t) => ({ where: `panel "${panel.title}" ${t.refId}`, text: t.expr })));
  for (const variable of dashboard.templating.list) {
    const query = typeof variable.query === 'string' ? variable.query : variable.query?.query;
    if (query && variable.name !== 'datasource') out.push({ where: `variable $${variable.name}`, text: query });
  }
  return out;
}

test('every metric the Grafana dashboard queries is one mirror/metrics.ts exports', async () => {
  const exported = await exportedSeries();
  const used = new Set<string>();
  for (const { where, text } of queries()) {
    const names = text.match(/\bregmirror_[a-z0-9_]+\b/g) ?? [];
    assert.ok(names.length > 0, `${where} queries no regmirror metric: ${text}`);
    for (const name of names) {
      assert.ok(exported.has(name), `${where} queries ${name}, which mirror/metrics.ts does not export`);
      used.add(name.replace(/_(bucket|sum|count)$/, ''));
    }
  }
  // The dashboard covers the mirror's own metrics, not just a few of them.
  const own = [...exported].filter((n) => !n.startsWith('regmirror_process_') && !/_(bucket|sum|count)$/.test(n));
  const unused = own.filter((n) => !used.has(n));
  assert.deepEqual(unused, [], `metrics without a panel: ${unused.join(', ')}`);
});

test('the dashboard is importable: a uid, unique panel ids, every query panel on the datasource variable', () => {
  assert.equal(dashboard.uid, 'regmirror-mirror');
  const ids = dashboard.panels.map((p) => p.id);
  assert.equal(new Set(ids).size, ids.length);
  for (const panel of dashboard.panels.filter((p) => p.type !== 'row')) {
    assert.ok(panel.targets && panel.targets.length > 0, `${panel.title} has no query`);
    assert.deepEqual(panel.datasource, { type: 'prometheus', uid: '${datasource}' }, panel.title);
  }
});

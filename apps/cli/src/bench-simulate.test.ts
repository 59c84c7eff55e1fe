import { describe, expect, it } from 'vitest';
import { run, runJson } from './__fixtures__/run.js';
import { formatSimulateBench, type SimulateBenchResult } from './bench-simulate.js';

// Each run is a real child process (from the sources through tsx here, about a second each).
describe('dirtytrack bench simulate', () => {
  it('runs each preset in its own process and reports the run’s wall time, its own peak RSS and its result', async () => {
    const [out, inProcess] = await Promise.all([
      run('bench', 'simulate', '--presets', 'small', '--reps', '2', '--json'),
      runJson('simulate', '--preset', 'small'),
    ]);
    expect(out.stderr).toBe('');
    expect(out.code).toBe(0);
    const r = JSON.parse(out.stdout) as SimulateBenchResult;
    expect([r.bench, r.reps, r.cases.length]).toEqual(['simulate', 2, 1]);
    const c = r.cases[0] as SimulateBenchResult['cases'][number];
    expect(c.preset).toBe('small');
    // The child's result is the in-process one: same status and virtual time.
    expect([c.status, c['total-time']]).toEqual([inProcess.result.status, inProcess.result['total-time']]);
    expect(c.runs).toHaveLength(2);
    for (const x of c.runs) {
      expect(x['wall-s']).toBeGreaterThan(0);
      expect(x['cpu-s']).toBeGreaterThan(0);
      // A Node process holds tens of MiB at least; far less than this parent holds would mean
      // the parent's own RSS was read.
      expect(x['peak-rss-mib']).toBeGreaterThan(20);
      expect(x['peak-rss-mib']).toBeLessThan(2048);
    }
    const sorted = c.runs.map((x) => x['wall-s']).sort((a, b) => a - b);
    expect(c['wall-s']).toBe(sorted[1]);
    expect(c.budget).toBeUndefined();
    expect(c['within-budget']).toBeUndefined();
  });

  it('prints a Markdown table, one row per preset', async () => {
    const out = await run('bench', 'simulate', '--presets', 'small');
    expect(out.code).toBe(0);
    const lines = out.stdout.trimEnd().split('\n');
    expect(lines[2]).toBe(
      '| preset | status | virtual time | wall s | CPU s | peak RSS MiB | budget | within |',
    );
    expect(lines[4]).toMatch(/^\| small \| completed \| 4\.1 s \| [\d.]+ \| [\d.]+ \| \d+ \| – \| – \|$/);
  });

  it('marks a preset over its budget', () => {
    const table = formatSimulateBench({
      bench: 'simulate',
      node: 'v20',
      reps: 1,
      cases: [
        {
          preset: 'seed-3tb',
          'wall-s': 12.5,
          'peak-rss-mib': 700,
          'cpu-s': 11.9,
          runs: [{ 'wall-s': 12.5, 'peak-rss-mib': 700, 'cpu-s': 11.9 }],
          status: 'completed',
          'total-time': 660_000,
          budget: { 'wall-s': 10, 'peak-rss-mib': 2048 },
          'within-budget': false,
        },
      ],
    });
    expect(table.split('\n')[4]).toBe(
      '| seed-3tb | completed | 660.0 s | 12.5 | 11.9 | 700 | 10 s, 2048 MiB | **no** |',
    );
  });

  it.each([
    [
      ['--presets', 'small,nope'],
      /^dirtytrack: --presets: unknown preset "nope" \(accepted: [^\n]*seed-3tb, seed-8tb\)\n$/,
    ],
    [['--reps', '0'], /^dirtytrack: --reps: "0" is not an integer in \[1, 100\]\n$/],
  ])('exits 2 on %j with one line naming the flag', async (args, line) => {
    const out = await run('bench', 'simulate', ...args);
    expect(out.code).toBe(2);
    expect(out.stdout).toBe('');
    expect(out.stderr).toMatch(line);
  });
});

import { describe, expect, it } from 'vitest';
import { run } from './__fixtures__/run.js';
import type { TrackerBenchRow as Row, TrackersBenchResult } from './bench-trackers.js';

describe('dirtytrack bench trackers', () => {
  it('runs every tracker in the live engine side by side and prints one row each', async () => {
    const out = await run(
      'bench',
      'trackers',
      '--memory',
      '16M',
      '--vcpus',
      '2',
      '--warmup-ms',
      '100',
      '--window-ms',
      '300',
      '--harvest-ms',
      '20',
      '--reps',
      '1',
      '--json',
    );
    expect(out.stderr).toBe('');
    expect(out.code).toBe(0);
    const r = JSON.parse(out.stdout) as TrackersBenchResult;
    expect([r.memory, r.vcpus, r.reps, r['window-ms']]).toEqual(['16M', 2, 1, 300]);
    expect(r.rows.map((x) => [x.tracker, x['trap-kind']])).toEqual([
      ['off', 'none'],
      ['wp', 'write-fault'],
      ['pml', 'pml-full-exit'],
      ['uffd-wp-sync', 'uffd-blocking-fault'],
      ['uffd-wp-async', 'uffd-async-fault'],
    ]);
    const [off, wp, pml, sync, async] = r.rows as [Row, Row, Row, Row, Row];
    for (const row of r.rows) expect(row['writes-per-s']).toBeGreaterThan(0);
    expect([off['traps-per-1000-writes'], off.harvests, off['overhead-vs-off']]).toEqual([0, 0, 1]);
    // Write-protect traps once per re-dirtied page, PML once per 512 of them.
    expect(wp['traps-per-1000-writes']).toBeGreaterThan(0);
    expect(pml['traps-per-1000-writes']).toBeLessThan(wp['traps-per-1000-writes'] / 50);
    expect(wp.harvests).toBeGreaterThan(0);
    expect(wp['pages-reported']).toBeGreaterThan(0);
    expect(pml['pages-reported']).toBeGreaterThan(0);
    for (const uffd of [sync, async]) {
      expect(uffd['traps-per-1000-writes']).toBeGreaterThan(0);
      expect(uffd['pages-reported']).toBeGreaterThan(0);
    }
  });

  it.each([
    [['--vcpus', '0'], '--vcpus'],
    [['--window-ms', 'x'], '--window-ms'],
    [['--harvest-ms', '0'], '--harvest-ms'],
    [['--memory', '1T'], '--memory'],
  ])('rejects %j with one line naming %s (exit 2)', async (args, flag) => {
    const out = await run('bench', 'trackers', ...args);
    expect(out.code).toBe(2);
    expect(out.stderr.trim().split('\n')).toHaveLength(1);
    expect(out.stderr).toContain(flag);
  });
});

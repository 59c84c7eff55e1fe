import { describe, expect, it } from 'vitest';
import { run } from './__fixtures__/run.js';
import type { MmuBenchResult } from './bench-mmu.js';

describe('dirtytrack bench mmu', () => {
  it('times eager and lazy enable side by side and reports the tables each allocated', async () => {
    const out = await run('bench', 'mmu', '--memory', '4G', '--reps', '1', '--json');
    expect(out.stderr).toBe('');
    expect(out.code).toBe(0);
    const r = JSON.parse(out.stdout) as MmuBenchResult;
    expect([r.memory, r.backing, r.reps]).toEqual(['4G', '1G', 1]);
    // Eager: 4 tables of 2M leaves and 4 × 512 tables of 4K leaves, 2 KiB each. Lazy: none.
    expect(r['eager-table-bytes']).toBe((4 + 4 * 512) * 2048);
    expect(r['lazy-table-bytes']).toBe(0);
    for (const k of [
      'eager-enable-ms',
      'lazy-enable-ms',
      'write-protect-enable-ms',
      'lazy-first-clear-ms',
    ] as const) {
      expect(r[k]).toBeGreaterThan(0);
    }
    const exact = r['eager-enable-ms'] / r['lazy-enable-ms'];
    expect(Math.abs(r.ratio - exact) / exact).toBeLessThan(5e-4); // Four significant digits.
    expect(r['rss-mib']).toBeGreaterThan(0);
  });

  it('prints the Markdown table without --json', async () => {
    const out = await run('bench', 'mmu', '--memory', '64M', '--backing', '2M', '--reps', '1');
    expect(out.code).toBe(0);
    expect(out.stdout).toContain(
      '# MMU: enabling dirty logging on a 64M guest backed by 2M pages, medians of 1',
    );
    expect(out.stdout).toContain('| lazy (initially-set: nothing at enable) |');
  });

  it.each([
    [['--backing', '3M'], '--backing'],
    [['--memory', '3G', '--backing', '2G'], '--backing'],
    [['--memory', '1536M'], '--memory'],
    [['--memory', '32T'], '--memory'],
  ])('rejects %j with one line naming %s (exit 2)', async (args, flag) => {
    const out = await run('bench', 'mmu', ...args);
    expect(out.code).toBe(2);
    expect(out.stderr.trim().split('\n')).toHaveLength(1);
    expect(out.stderr).toContain(flag);
  });
});

import { describe, expect, it } from 'vitest';
import { run } from './__fixtures__/run.js';
import type { BitmapBenchResult } from './bench-bitmap.js';
import type { ReportersBenchResult } from './bench-reporters.js';

/** Ratios are printed to four significant digits: compare relatively, whatever their size. */
function expectRatio(printed: number, exact: number): void {
  expect(Math.abs(printed - exact) / exact).toBeLessThan(5e-4);
}

describe('dirtytrack bench reporters', () => {
  it('harvests the same dirty sets through bitmap and ring and prints one row per fraction', async () => {
    const out = await run(
      'bench',
      'reporters',
      '--memory',
      '64M',
      '--reps',
      '1',
      '--fractions',
      '0.01,0.5,1',
      '--json',
    );
    expect(out.stderr).toBe('');
    expect(out.code).toBe(0);
    const r = JSON.parse(out.stdout) as ReportersBenchResult;
    expect(r.memory).toBe('64M');
    expect(r.pages).toBe(16384);
    expect(r['bitmap-bytes']).toBe(2048);
    expect(r.rows.map((x) => [x['dirty-fraction'], x['dirty-pages'], x.rings])).toEqual([
      [0.01, 164, 1],
      [0.5, 8192, 1],
      [1, 16384, 1],
    ]);
    for (const row of r.rows) {
      for (const k of ['bitmap-ms', 'bitmap-locked-ms', 'ring-ms'] as const)
        expect(row[k]).toBeGreaterThan(0);
      expectRatio(row['ring-vs-bitmap'], row['ring-ms'] / row['bitmap-ms']);
    }
  });

  it('prints a Markdown table without --json', async () => {
    const out = await run('bench', 'reporters', '--memory', '16M', '--reps', '1', '--fractions', '0.1');
    expect(out.code).toBe(0);
    expect(out.stdout).toContain(
      '| dirty | pages | bitmap ms | bitmap locked ms | ring ms | ring/bitmap | atomic/locked |',
    );
    expect(out.stdout).toContain('| 10% | 410 |');
  });

  it.each([
    [['--memory', 'abc'], '--memory'],
    [['--memory', '100K'], '--memory'],
    [['--reps', '0'], '--reps'],
    [['--fractions', '0.5,2'], '--fractions'],
    [['--seed', '-1'], '--seed'],
  ])('rejects %j naming %s', async (args, field) => {
    const out = await run('bench', 'reporters', ...args);
    expect(out.code).toBe(2);
    expect(out.stdout).toBe('');
    expect(out.stderr).toMatch(/^dirtytrack: [^\n]+\n$/);
    expect(out.stderr).toContain(field);
  });
});

describe('simulate with the dirty ring', () => {
  it('migrates through per-vCPU rings, exiting at the soft limit, and agrees with the bitmap on bytes', async () => {
    const common = ['--set', 'memory=256M', '--set', 'workload.working-set=256M', '--set', 'vcpus=2'];
    const json = (stdout: string) =>
      JSON.parse(stdout) as {
        status: string;
        dirtytrack: { pipeline: { reporter: string }; vcpu: { writes: number; 'ring-full-exits': number } };
      };
    const ring = await run(
      'simulate',
      ...common,
      '--set',
      'reporter=ring',
      '--set',
      'ring-size=256',
      '--json',
    );
    const bitmap = await run('simulate', ...common, '--json');
    expect(ring.stderr).toBe('');
    expect(ring.code).toBe(0);
    const r = json(ring.stdout);
    const b = json(bitmap.stdout);
    expect(r.status).toBe('completed');
    expect(r.dirtytrack.pipeline.reporter).toBe('ring');
    expect(r.dirtytrack.vcpu['ring-full-exits']).toBeGreaterThan(0);
    expect(b.dirtytrack.vcpu['ring-full-exits']).toBe(0);
    // Same workload, same seed: the vCPUs make the same writes whichever reporter logs them.
    expect(r.dirtytrack.vcpu.writes).toBe(b.dirtytrack.vcpu.writes);
  });

  it('rejects a ring size that is not a power of two in KVM bounds', async () => {
    const out = await run('simulate', '--set', 'reporter=ring', '--set', 'ring-size=1000', '--json');
    expect(out.code).toBe(2);
    expect(out.stderr).toContain('ring-size');
    expect(out.stderr).toContain('power of two');
  });
});

describe('dirtytrack bench bitmap', () => {
  it('measures memcpy, xchg and the three sync strategies side by side, with the issue’s field names', async () => {
    const out = await run('bench', 'bitmap', '--memory', '64M', '--reps', '1', '--json');
    expect(out.stderr).toBe('');
    expect(out.code).toBe(0);
    const r = JSON.parse(out.stdout) as BitmapBenchResult;
    expect(r.memory).toBe('64M');
    expect(r['bitmap-bytes']).toBe(2048);
    expect(Object.keys(r.strategies).sort()).toEqual([
      'fused',
      'fused-1pct',
      'fused-full-bmap',
      'rwlock-memcpy',
      'xchg',
    ]);
    for (const s of Object.values(r.strategies)) expect(s.ms).toBeGreaterThan(0);
    expectRatio(r['xchg-vs-memcpy'], r['xchg-ms'] / r['memcpy-ms']);
    expectRatio(r['fused-1pct-vs-fused'], r.strategies['fused-1pct'].ms / r.strategies.fused.ms);
    expect(r['l1-xchg-vs-memcpy']).toBeGreaterThan(0);
    expect(r['l1-kind']).toBe('wasm-simd');
    expect(r['l1-js-xchg-vs-set']).toBeGreaterThan(0);
  });

  it('rejects a bad --memory naming it', async () => {
    const out = await run('bench', 'bitmap', '--memory', 'lots');
    expect(out.code).toBe(2);
    expect(out.stderr).toMatch(/^dirtytrack: --memory: [^\n]+\n$/);
  });
});

describe('simulate through QEMU’s three layers', () => {
  const base = ['--set', 'memory=256M', '--set', 'workload.working-set=256M', '--set', 'vcpus=2', '--json'];
  const json = (stdout: string) =>
    JSON.parse(stdout) as {
      status: string;
      ram: { total: number; remaining: number; 'dirty-sync-count': number };
    };

  it.each([['xchg'], ['rwlock-memcpy'], ['fused']])(
    'layers=%s completes with nothing remaining',
    async (layers) => {
      const r = await run('simulate', ...base, '--set', `layers=${layers}`);
      expect(r.stderr).toBe('');
      const j = json(r.stdout);
      expect(j.status).toBe('completed');
      expect(j.ram.remaining).toBe(0);
      expect(j.ram.total).toBe(256 * 2 ** 20);
    },
  );

  it('manual protect with a lazy clear_bmap completes, and is refused where it cannot work', async () => {
    const ok = await run(
      'simulate',
      ...base,
      '--set',
      'layers=xchg',
      '--set',
      'manual-protect=true',
      '--set',
      'clear-bitmap-shift=10',
    );
    expect(ok.stderr).toBe('');
    expect(json(ok.stdout).status).toBe('completed');
    const bad = await run('simulate', ...base, '--set', 'manual-protect=true');
    expect(bad.code).toBe(2);
    expect(bad.stderr).toContain('manual-protect');
    const ring = await run(
      'simulate',
      ...base,
      '--set',
      'layers=fused',
      '--set',
      'reporter=ring',
      '--set',
      'manual-protect=true',
    );
    expect(ring.code).toBe(2);
    expect(ring.stderr).toContain('reporter: bitmap');
  });
});

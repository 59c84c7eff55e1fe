import type { Bitmap, LoggingControl, MemslotInfo } from '@dirtytrack/core';
import { createQemuLayers, createSwapDirtyLog } from '@dirtytrack/qemu-layers';
import { describe, expect, it } from 'vitest';
import { run } from './__fixtures__/run.js';
import {
  clusteredOnePct,
  LARGER_RUN_PAGES,
  RUN_PAGES,
  spreadOnePct,
  type BitmapBenchResult,
} from './bench-bitmap.js';
import type { ReportersBenchResult } from './bench-reporters.js';

/** Indices of the 32-bit words where `a` and `b` differ (the first 10). */
function differingWords(a: Bitmap, b: Bitmap): number[] {
  const out: number[] = [];
  for (let i = 0; i < Math.max(a.words.length, b.words.length) && out.length < 10; i++)
    if (a.words[i] !== b.words[i]) out.push(i);
  return out;
}

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
    expect(typeof r['memcpy-ms']).toBe('number');
    expect(typeof r['xchg-ms']).toBe('number');
    expect(Object.keys(r.strategies).sort()).toEqual([
      'fused',
      'fused-1pct',
      'fused-1pct-spread',
      'fused-full-bmap',
      'fused-merge',
      'fused-merge-1pct',
      'fused-merge-1pct-spread',
      'fused-merge-wasm',
      'fused-merge-wasm-1pct',
      'fused-merge-wasm-1pct-spread',
      'rwlock-memcpy',
      'xchg',
    ]);
    for (const s of Object.values(r.strategies)) expect(s.ms).toBeGreaterThan(0);
    expectRatio(r['xchg-vs-memcpy'], r['xchg-ms'] / r['memcpy-ms']);
    for (const [ratio, part, whole] of [
      ['fused-1pct-vs-fused', 'fused-1pct', 'fused'],
      ['fused-1pct-spread-vs-fused', 'fused-1pct-spread', 'fused'],
      ['fused-merge-1pct-vs-fused-merge', 'fused-merge-1pct', 'fused-merge'],
      ['fused-merge-1pct-spread-vs-fused-merge', 'fused-merge-1pct-spread', 'fused-merge'],
      ['fused-merge-wasm-1pct-vs-fused-merge-wasm', 'fused-merge-wasm-1pct', 'fused-merge-wasm'],
      [
        'fused-merge-wasm-1pct-spread-vs-fused-merge-wasm',
        'fused-merge-wasm-1pct-spread',
        'fused-merge-wasm',
      ],
    ] as const)
      expectRatio(r[ratio], r.strategies[part].ms / r.strategies[whole].ms);
    // The kernel rows ran in WebAssembly (the bench also checked each sync merged in the kernel).
    expect(r['fused-merge-wasm-allocator']).toBe('wasm');
    for (const k of ['touch-1pct-floor', 'touch-1pct-loads', 'touch-1pct-spread-floor'] as const) {
      expect(r[k].ms).toBeGreaterThan(0);
      expect(r[k]['memcpy-ms']).toBeGreaterThan(0);
      expectRatio(r[k]['vs-memcpy'], r[k].ms / r[k]['memcpy-ms']);
    }
    // 16384 pages: one 2 MiB run (the minimum), 3 64-bit words of the 256 for the spread pattern.
    expect(r['1pct-dirty-pages']).toEqual({ clustered: 512, spread: 192 });
    // Only the 16 MiB runs fit a 64 MiB guest.
    expect(r['fused-merge-1pct-larger-runs'].map((x) => x['run-pages'])).toEqual([4096]);
    for (const x of r['fused-merge-1pct-larger-runs']) {
      expect(x.ms).toBeGreaterThan(0);
      expectRatio(x['vs-fused-merge'], x.ms / r.strategies['fused-merge'].ms);
    }
    // The fused cases on the huge-page allocator where the machine allows it, and again on plain buffers.
    expect(['huge-pages', 'default']).toContain(r.allocator.kind);
    const small = r['small-pages'];
    for (const k of [
      'fused-merge',
      'fused-merge-1pct',
      'fused-merge-1pct-spread',
      'touch-1pct-loads',
    ] as const) {
      expect(small[k].ms).toBeGreaterThan(0);
      expectRatio(small[k]['vs-memcpy'], small[k].ms / small[k]['memcpy-ms']);
    }
    expectRatio(
      small['fused-merge-1pct-vs-fused-merge'],
      small['fused-merge-1pct'].ms / small['fused-merge'].ms,
    );
    expectRatio(
      small['fused-merge-1pct-spread-vs-fused-merge'],
      small['fused-merge-1pct-spread'].ms / small['fused-merge'].ms,
    );
    // One repetition: the interleaved ratio is that repetition's, each sync time rounded apart.
    const xOverW = r.strategies.xchg.ms / r.strategies['rwlock-memcpy'].ms;
    expect(Math.abs(r['rwlock-memcpy-vs-xchg'] / xOverW - 1)).toBeLessThan(2e-3);
    expect(r['l1-xchg-vs-memcpy']).toBeGreaterThan(0);
    expect(r['l1-kind']).toBe('wasm-simd');
    expect(r['l1-js-xchg-vs-set']).toBeGreaterThan(0);
  });

  it('prints both 1% patterns in the Markdown table', async () => {
    const out = await run('bench', 'bitmap', '--memory', '64M', '--reps', '1');
    expect(out.code).toBe(0);
    expect(out.stdout).toContain('| sync, fused, 1% dirty clustered (2M runs) (adopts) |');
    expect(out.stdout).toContain('| sync, fused merging, 1% dirty clustered (2M runs) |');
    expect(out.stdout).toContain('| sync, fused merging, 1% dirty clustered (16M runs) |');
    expect(out.stdout).toContain('| sync, fused, 1% dirty spread (every 100th 64-bit word) (adopts) |');
    expect(out.stdout).toContain('| sync, fused merging, 1% dirty spread (every 100th 64-bit word) |');
    expect(out.stdout).toContain('| floor of the clustered 1%: touching its runs only |');
    expect(out.stdout).toContain('| floor of the spread 1%: touching its words only |');
    expect(out.stdout).toContain('| below it: one load per run in each bitmap, no writes |');
    expect(out.stdout).toContain('| the same loads, 4 KiB pages |');
    expect(out.stdout).toContain('| sync, fused merging, 1% dirty clustered (2M runs), 4 KiB pages |');
    expect(out.stdout).toMatch(/fused bitmaps: (huge-pages|default) allocator/);
    expect(out.stdout).toContain('| sync, fused merging in WebAssembly, 1% dirty clustered (2M runs) |');
    expect(out.stdout).toMatch(
      /Merging in WebAssembly \(wasm allocator\): fused at 1% takes [\d.]+× its 100% time/,
    );
  });

  // 5,120,000 pages (~19.5 GiB): 1% is exactly 51,200 pages, 100 runs of 512.
  const PAGES = 5_120_000;

  it('clusteredOnePct dirties exactly 1% of the pages in whole, aligned, distinct 2 MiB runs', () => {
    const p = clusteredOnePct(PAGES, 7);
    expect(p.runPages).toBe(RUN_PAGES);
    expect(p.runStarts.length).toBe(100);
    expect(p.bitmap.popcount()).toBe(51_200);
    let prev = -1;
    for (const start of p.runStarts) {
      expect(start % 512).toBe(0);
      expect(start).toBeGreaterThan(prev);
      prev = start;
      // One run = 16 full 32-bit words = 64 bytes of bitmap.
      expect(Array.from(p.bitmap.words.subarray(start / 32, start / 32 + 16))).toEqual(
        new Array<number>(16).fill(0xffff_ffff),
      );
    }
    // 100 full runs and 51,200 pages set: nothing outside the runs.
  });

  it('clusteredOnePct is deterministic for a seed and differs across seeds', () => {
    const a = clusteredOnePct(PAGES, 7);
    const b = clusteredOnePct(PAGES, 7);
    const c = clusteredOnePct(PAGES, 8);
    expect(differingWords(a.bitmap, b.bitmap)).toEqual([]);
    expect(Array.from(a.runStarts)).toEqual(Array.from(b.runStarts));
    expect(Array.from(a.runStarts)).not.toEqual(Array.from(c.runStarts));
  });

  it.each([
    [16_384, 512, 1], // 0.32 runs: at least one
    [76_800, 512, 2], // 1.5 runs: rounded half up
    [PAGES, 4096, 13], // 12.5 runs of 16 MiB
    [PAGES, LARGER_RUN_PAGES[2], 1], // 1 GiB runs: 0.195, at least one
    [1024, 512, 1], // two slots, one run
  ])('clusteredOnePct(%i pages, %i-page runs) places %i runs', (pages, runPages, runs) => {
    const p = clusteredOnePct(pages, 1, runPages);
    expect(p.runStarts.length).toBe(runs);
    expect(p.bitmap.popcount()).toBe(runs * runPages);
    for (const start of p.runStarts) expect(start % runPages).toBe(0);
  });

  it('clusteredOnePct rejects runs that are not whole 64-bit words', () => {
    expect(() => clusteredOnePct(PAGES, 1, 100)).toThrow(/runPages: 100/);
  });

  it('spreadOnePct dirties every 100th 64-bit word, exactly 1% here', () => {
    const b = spreadOnePct(PAGES);
    expect(b.popcount()).toBe(51_200);
    const set: number[] = [];
    for (let k = 0; k < b.words.length / 2; k++)
      if ((b.words[2 * k] as number) !== 0 || (b.words[2 * k + 1] as number) !== 0) set.push(k);
    expect(set.length).toBe(800);
    expect(set.every((k, i) => k === i * 100)).toBe(true);
  });

  it.each([false, true])(
    'the fused sync leaves exactly the clustered pages in bmap, sync after sync (migration buffer: %s)',
    (migrationBuffer) => {
      const slot: MemslotInfo = { id: 0, asId: 0, baseGfn: 0, pages: PAGES };
      const logging: LoggingControl = { enableLogging: (s) => s.pages, disableLogging: () => {} };
      const source = createSwapDirtyLog({ slots: [slot], migrationBuffer });
      const layers = createQemuLayers({ kvm: { source, logging, slot }, strategy: 'fused' });
      layers.setup();
      for (const seed of [1, 2, 3]) {
        // The round sent every page, then the guest dirtied the pattern.
        const w = layers.bmap.words;
        for (let i = 0; i < w.length; i++) if ((w[i] as number) !== 0) layers.clearSent(i, w[i] as number);
        expect(layers.dirtyPages).toBe(0);
        const p = clusteredOnePct(PAGES, seed);
        source.markDirtyBitmap(slot.id, p.bitmap);
        expect(layers.sync().newDirty).toBe(51_200);
        expect(differingWords(layers.bmap, p.bitmap)).toEqual([]);
        expect(layers.dirtyPages).toBe(51_200);
        expect(layers.bmap.popcount()).toBe(51_200);
      }
      expect(layers.stats().adoptions).toBe(migrationBuffer ? 3 : 0);
    },
  );

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

import { rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { encodeTrace } from '@dirtytrack/guest';
import { pagesDirtyRate } from '@dirtytrack/qemu-layers';
import { describe, expect, it, onTestFinished } from 'vitest';
import { run } from './__fixtures__/run.js';
import {
  expectedDistinctPages,
  liveContent,
  planDirtyrate,
  sweepDistinctPages,
  traceDistinctPages,
  type DirtyrateOutput,
} from './dirtyrate.js';

// `dirtytrack dirtyrate`: QEMU's calc-dirty-rate on a live guest whose rate is known — 2 vCPUs
// at 2000 uniform page writes/s each over 64 MiB (16,384 pages) — in each of QEMU's modes.

const PAGES = 16_384;
const GIB = 2 ** 30;

/**
 * A trace file (removed after the test): 2 vCPUs, each 10 records of `per` pages in a 100 ms
 * period (10 × `per` distinct pages each), to be looped: with 128, ~25,600 writes/s over 2,560 pages.
 */
function loopingTrace(per = 128): string {
  const lines = ['dirtytrack-trace 1 pages=16384 vcpus=2 period=100000000'];
  for (let t = 0; t < 10; t++)
    for (let v = 0; v < 2; v++)
      lines.push(
        `${t * 10_000_000 + v} ${v} ${Array.from({ length: per }, (_, i) => v * 8192 + t * per + i).join(',')}`,
      );
  const file = join(
    tmpdir(),
    `dirtytrack-dirtyrate-${process.pid}-${Math.random().toString(36).slice(2)}.trace`,
  );
  writeFileSync(file, lines.join('\n') + '\n');
  onTestFinished(() => rmSync(file, { force: true }));
  return file;
}

async function measure(...args: string[]): Promise<DirtyrateOutput> {
  const r = await run('dirtyrate', '--memory', '64M', ...args, '--json');
  expect(r.stderr).toBe('');
  expect(r.code).toBe(0);
  return JSON.parse(r.stdout) as DirtyrateOutput;
}

describe('dirtytrack dirtyrate: helpers', () => {
  it('expectedDistinctPages: pages × (1 − (1 − 1/pages)^writes)', () => {
    expect(expectedDistinctPages(4, 2)).toBeCloseTo(1.75, 12); // 4 × (1 − 9/16)
    expect(expectedDistinctPages(PAGES, 0)).toBe(0);
    expect(expectedDistinctPages(PAGES, 1)).toBeCloseTo(1, 9);
  });

  it('sweepDistinctPages: each vCPU its writes up to its share, the last vCPU also the rest', () => {
    expect(sweepDistinctPages(10, [3, 20])).toBe(3 + 5);
    expect(sweepDistinctPages(10, [3, 4, 5])).toBe(3 + 3 + 4); // shares 3, 3 and 4
    expect(sweepDistinctPages(PAGES, [0, 0])).toBe(0);
  });

  it('traceDistinctPages: the distinct pages of what each vCPU replayed between two snapshots, partial batches and loops included', () => {
    // 16 pages, 2 vCPUs, a 100 ns period: vCPU 0 writes [0,1,2] at 0, [3,4] at 20, [0,5] at 50;
    // vCPU 1 writes [8,9] at 10 and [8,10] at 60.
    const trace = encodeTrace({
      pages: 16,
      vcpus: 2,
      periodNs: 100,
      records: [
        { timeNs: 0, vcpu: 0, pages: [0, 1, 2] },
        { timeNs: 10, vcpu: 1, pages: [8, 9] },
        { timeNs: 20, vcpu: 0, pages: [3, 4] },
        { timeNs: 50, vcpu: 0, pages: [0, 5] },
        { timeNs: 60, vcpu: 1, pages: [8, 10] },
      ],
    });
    const at = (traceBeforeNs: number, traceAfterNs: number, traceWritten: number) => ({
      rng: [0, 0, 0, 0],
      sweep: 0,
      traceBeforeNs,
      traceAfterNs,
      traceWritten,
    });
    const start = [at(0, 0, 0), at(0, 0, 0)];
    // vCPU 0: [0,1,2], then 1 of its batch [3,4]; vCPU 1: 1 of its batch [8,9].
    expect(traceDistinctPages({ kind: 'trace', trace }, 16, start, [at(20, 30, 1), at(0, 30, 1)])).toBe(5);
    // Nothing replayed between equal snapshots; the written part of a batch is not counted again.
    expect(traceDistinctPages({ kind: 'trace', trace }, 16, start, start)).toBe(0);
    expect(
      traceDistinctPages(
        { kind: 'trace', trace },
        16,
        [at(20, 30, 1), at(0, 0, 0)],
        [at(20, 30, 2), at(0, 0, 0)],
      ),
    ).toBe(1); // page 4
    // Looping: from page 5 of the batch at 50 through the second period's [0,1,2] and page 3.
    expect(
      traceDistinctPages(
        { kind: 'trace', trace, loop: true },
        16,
        [at(40, 60, 1), at(0, 0, 0)],
        [at(120, 130, 1), at(0, 0, 0)],
      ),
    ).toBe(5);
    // Without the loop the trace ends at 100: only page 5.
    expect(
      traceDistinctPages(
        { kind: 'trace', trace },
        16,
        [at(40, 60, 1), at(0, 0, 0)],
        [at(120, 130, 0), at(0, 0, 0)],
      ),
    ).toBe(1);
  });

  it('liveContent hashes a page’s words: equal pages hash alike, one changed word changes it', () => {
    const memory = new SharedArrayBuffer(3 * 4096);
    const content = liveContent(memory);
    expect(content.hashPage(0)).toBe(content.hashPage(1));
    new Int32Array(memory)[1024 + 1023] = 7; // the last word of page 1
    expect(content.hashPage(1)).not.toBe(content.hashPage(0));
    expect(content.hashPage(2)).toBe(content.hashPage(0));
  });

  it('plans: QEMU’s defaults, and a dirty ring of 4096 entries per vCPU for dirty-ring mode', () => {
    const raw = {
      memory: '64M',
      vcpus: '2',
      workload: 'uniform',
      rate: '2000',
      fill: 'half',
      seed: '1',
      mode: 'page-sampling',
      calcTime: '1',
      calcTimeUnit: 'second',
    } as const;
    expect(planDirtyrate(raw, 8 * GIB)).toEqual({
      memory: 64 * 2 ** 20,
      vcpus: 2,
      workload: 'uniform',
      program: { kind: 'uniform' },
      rate: 2000,
      fill: 'half',
      seed: 1,
      mode: 'page-sampling',
      calcTime: 1,
      calcTimeUnit: 'second',
    });
    expect(planDirtyrate({ ...raw, mode: 'dirty-ring' }, 8 * GIB).dirtyRing).toBe(4096);
    expect(planDirtyrate({ ...raw, mode: 'dirty-ring', dirtyRingSize: '1024' }, 8 * GIB).dirtyRing).toBe(
      1024,
    );
  });
});

describe('dirtytrack dirtyrate on a live guest of known rate', { timeout: 60_000 }, () => {
  it('dirty-bitmap: the pages dirty after calc-time are the distinct pages written, within 10%', async () => {
    const r = await measure('--mode', 'dirty-bitmap');
    expect(r).toMatchObject({
      status: 'measured',
      mode: 'dirty-bitmap',
      'calc-time': 1,
      'calc-time-unit': 'second',
    });
    const c = r.dirtytrack.counters;
    if (c.mode !== 'dirty-bitmap') throw new Error(c.mode);
    // QEMU's formula (u64: pages × 4 KiB >> 20, × 1000 / ms) over the pages the bitmap held.
    expect(r['dirty-rate']).toBe(pagesDirtyRate(c.endPages - c.startPages, c.ms));
    const expected = expectedDistinctPages(PAGES, r.dirtytrack['guest-writes']);
    expect(Math.abs(c.endPages - c.startPages - expected) / expected).toBeLessThan(0.1);
    // The vCPUs wrote meanwhile (at most 2 × 2000 in 1 s; fewer when the machine is busy).
    expect(r.dirtytrack['guest-writes']).toBeGreaterThan(0);
    expect(r.dirtytrack['guest-writes']).toBeLessThanOrEqual(4000 * 1.1);
  });

  it('dirty-bitmap over a sweep: every write a new page, so the pages dirty are the writes, within 5%', async () => {
    // 2000 writes/s per vCPU for 1 s is far below each vCPU's share (8,192 pages): no page twice.
    const r = await measure('--mode', 'dirty-bitmap', '--workload', 'sweep');
    const c = r.dirtytrack.counters;
    if (c.mode !== 'dirty-bitmap') throw new Error(c.mode);
    const writes = r.dirtytrack['guest-writes'];
    expect(writes).toBeGreaterThan(0);
    expect(writes).toBeLessThan(8192);
    expect(Math.abs(c.endPages - c.startPages - writes) / writes).toBeLessThan(0.05);
    // The expected rate is the writes' own (MiB/s, one decimal), as the JSON says.
    expect(r.dirtytrack['expected-dirty-rate']).toBe(r.dirtytrack['guest-write-rate']);
  });

  it('dirty-bitmap over a looping trace: each page rewritten every 100 ms, so the bitmap reads the trace’s distinct pages, a tenth of the writes, within 10%', async () => {
    const file = loopingTrace();
    const r = await measure('--mode', 'dirty-bitmap', '--workload', 'trace', '--trace', file, '--trace-loop');
    const c = r.dirtytrack.counters;
    if (c.mode !== 'dirty-bitmap') throw new Error(c.mode);
    // Over a whole period (calc-time 1 s) each vCPU replayed every record: exactly 2,560 pages.
    const seconds = c.ms / 1000;
    expect(r.dirtytrack['expected-dirty-rate']).toBe(
      Math.round(((2560 * 4096) / 2 ** 20 / seconds) * 10) / 10,
    );
    expect(Math.abs(c.endPages - c.startPages - 2560) / 2560).toBeLessThan(0.1);
    // The writes were many times the pages: a rate of writes would overstate it.
    expect(r.dirtytrack['guest-writes']).toBeGreaterThan(5 * 2560);
  });

  it('dirty-ring: per-vCPU entries; counts re-dirtying after a reap, so between the distinct pages and the writes', async () => {
    const r = await measure('--mode', 'dirty-ring');
    const c = r.dirtytrack.counters;
    if (c.mode !== 'dirty-ring') throw new Error(c.mode);
    expect(r['vcpu-dirty-rate']?.map((v) => v.id)).toEqual([0, 1]);
    const pages = c.vcpuPages.reduce((a, b) => a + b, 0);
    const writes = r.dirtytrack['guest-writes'];
    expect(pages).toBeGreaterThanOrEqual(0.9 * expectedDistinctPages(PAGES, writes));
    expect(pages).toBeLessThanOrEqual(1.1 * writes);
  });

  it('dirty-ring over a looping trace: a page rewritten before a reap re-arms it pushes nothing, so the ring reads near the distinct pages, not the writes', async () => {
    // QEMU reaps a ring when it is full or once a second (its reaper thread). Each vCPU here
    // dirties 2,560 distinct pages, ten times a second: more than half its ring's 4,032-entry soft
    // limit, less than all of it. So in the 1 s window at most one reap re-arms them, and each
    // vCPU pushes at most twice its pages, where it writes ten times them. (Reaping at half full,
    // as the live plane did, re-armed them every ~80 ms and counted nearly every rewrite.)
    const r = await measure(
      '--mode',
      'dirty-ring',
      '--workload',
      'trace',
      '--trace',
      loopingTrace(256),
      '--trace-loop',
    );
    const c = r.dirtytrack.counters;
    if (c.mode !== 'dirty-ring') throw new Error(c.mode);
    expect(c.vcpuPages).toHaveLength(2);
    for (const pages of c.vcpuPages) {
      expect(pages).toBeGreaterThanOrEqual(0.9 * 2560);
      expect(pages).toBeLessThanOrEqual(2 * 2560);
    }
    expect(r.dirtytrack['guest-writes']).toBeGreaterThan(5 * 5120);
  });

  it('page-sampling: hashes of sampled pages; within 30% at 1024 samples (~5 standard errors)', async () => {
    // 16384 sample pages per GiB over 64 MiB = 1024 samples. A sampled page is dirty with
    // p ≈ 0.22 (3,560 distinct of 16,384 pages): the standard error of p is √(p(1−p)/1024) ≈
    // 0.013, 6% of p; 30% is 5 of them (about one run in a million) — the default 512/GiB (32 samples here)
    // would be ~±45%.
    const r = await measure('--mode', 'page-sampling', '--sample-pages', '16384');
    const c = r.dirtytrack.counters;
    if (c.mode !== 'page-sampling') throw new Error(c.mode);
    expect(c.samples).toBe(1024);
    const expected = expectedDistinctPages(PAGES, r.dirtytrack['guest-writes']) / PAGES;
    expect(Math.abs(c.dirtySamples / c.samples - expected) / expected).toBeLessThan(0.3);
  });
});

describe('dirtytrack dirtyrate: bad input, exit 2 naming the flag', { timeout: 60_000 }, () => {
  it.each([
    [['--mode', 'fast'], '--mode'],
    [['--mode', 'dirty-bitmap', '--dirty-ring-size', '4096'], '--mode'],
    [['--mode', 'dirty-bitmap', '--sample-pages', '512'], '--sample-pages'],
    [['--dirty-ring-size', '1000'], '--dirty-ring-size'],
    [['--calc-time', '0'], '--calc-time'],
    [['--memory', '3'], '--memory'],
    // QEMU's own ranges, with its messages, before a guest boots: calc-time in [50 ms, 60 s],
    // sample-pages in [128, 16384].
    [['--calc-time', '10', '--calc-time-unit', 'millisecond'], '--calc-time'],
    [['--sample-pages', '64'], '--sample-pages'],
    [['--calc-time', '61'], '--calc-time'],
    [['--sample-pages', '16385'], '--sample-pages'],
    [['--workload', 'trace'], '--workload'],
    [['--trace', 'x.trace'], '--trace'],
    [['--workload', 'trace', '--trace', '/nonexistent.trace'], '--trace'],
  ])('%j names %s', async (args, flag) => {
    const r = await run('dirtyrate', '--memory', '16M', ...args);
    expect(r.code).toBe(2);
    expect(r.stdout).toBe('');
    const lines = r.stderr.trimEnd().split('\n');
    expect(lines).toHaveLength(1);
    expect(lines[0]?.startsWith(`dirtytrack: ${flag}: `)).toBe(true);
  });
});

import { type LoggingControl, type MemslotInfo } from '@dirtytrack/core';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  anonHugePagesKiB,
  createHugePageAllocator,
  defaultBitmapAllocator,
  type BitmapAllocator,
} from '../huge-pages.js';
import { createQemuLayers } from '../qemu-layers.js';
import { createSwapDirtyLog } from '../swap-dirty-log.js';
import { supportsWasmSimd } from './bitmap-kernels.js';
import {
  createWasmBitmapAllocator,
  mergeKernelFor,
  PARALLEL_MERGE_DEFAULT,
  splitMerge,
} from './wasm-allocator.js';
import { assertProperty } from '@dirtytrack/testkit';

/** The first index where `a` and `b` differ (or where one ends), -1 when they are equal. */
function firstDifference(a: Uint32Array, b: Uint32Array): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return i;
  return a.length === b.length ? -1 : n;
}

const noLogging: LoggingControl = { enableLogging: (s) => s.pages, disableLogging: () => undefined };

/** The kernel and its JS twin (the layers' mergeTaken), which both merge through the line list. */
const BOTH_MERGES = [
  ['wasm', createWasmBitmapAllocator],
  ['JS', () => defaultBitmapAllocator],
] as const;

/** `'fused'` layers over a swap log with a migration buffer (bmap in the log's slot memory). */
function world(pages: number, allocator: BitmapAllocator) {
  const slot: MemslotInfo = { id: 0, asId: 0, baseGfn: 0, pages };
  const log = createSwapDirtyLog({ slots: [slot], migrationBuffer: true, allocator });
  const layers = createQemuLayers({
    kvm: { source: log, logging: noLogging, slot },
    strategy: 'fused',
    allocator,
  });
  layers.setup();
  return { log, layers };
}

type Op =
  | { t: 'pages'; pages: number[] }
  | { t: 'range'; start: number; length: number }
  | { t: 'stride'; start: number; step: number }
  | { t: 'send'; picks: number[] }
  | { t: 'sendRange'; start: number; length: number }
  | { t: 'sendAll' }
  | { t: 'sync' };

// 299,800 pages: 4685 64-bit words, so the last 64-byte line is partial (5 words; the kernel
// merges it word by word — a whole-line merge would reach into the summary that follows), and 147
// summary words, 588 bytes (not a multiple of 16: the kernel's scalar tail). Runs of whole
// 16-byte summary chunks (8192 pages) exist, and a merge gathers more than one batch of 48 lines.
const PAGES = 299_800;

/** Random steps over a slot of `pages` pages. */
function opsOver(pages: number): fc.Arbitrary<Op> {
  const pageArb = fc.nat(pages - 1);
  return fc.oneof(
    fc.record({ t: fc.constant('pages' as const), pages: fc.array(pageArb, { maxLength: 300 }) }),
    // Ranges up to 2.4 summary chunks: whole 8192-page chunks (the kernel's run copy), partial ones,
    // runs across their edges.
    fc.record({
      t: fc.constant('range' as const),
      start: pageArb,
      length: fc.integer({ min: 1, max: 20_000 }),
    }),
    // Every step-th page: dirty lines in every summary chunk, so one merge gathers more than a batch
    // (fc.array alone rarely writes that many pages at once). Step 64 dirties every word: all-ones
    // summary chunks over words that are not all ones, some over a bmap that is not clean.
    fc.record({
      t: fc.constant('stride' as const),
      start: fc.nat(63),
      step: fc.oneof(fc.constant(64), fc.integer({ min: 64, max: 1000 })),
    }),
    fc.record({ t: fc.constant('send' as const), picks: fc.array(fc.nat(), { maxLength: 200 }) }),
    fc.record({
      t: fc.constant('sendRange' as const),
      start: pageArb,
      length: fc.integer({ min: 1, max: 6200 }),
    }),
    fc.constant({ t: 'sendAll' as const }),
    fc.constant({ t: 'sync' as const }),
  );
}

describe.skipIf(!supportsWasmSimd())('fused merge in WebAssembly (createWasmBitmapAllocator)', () => {
  it('allocates each buffer as a shared WebAssembly memory with its kernel; others have none', () => {
    const alloc = createWasmBitmapAllocator();
    expect(alloc.kind).toBe('wasm');
    const a = alloc.allocate(100_000, { shared: true });
    expect(a.byteOffset).toBe(0);
    expect(a.buffer).toBeInstanceOf(SharedArrayBuffer);
    // Two 64 KiB pages: the bytes asked plus the kernel's scratch, rounded up.
    expect(a.buffer.byteLength).toBe(2 * 65536);
    expect(new Uint8Array(a.buffer).every((b) => b === 0)).toBe(true);
    expect(mergeKernelFor(a.buffer)).toBeDefined();
    expect(mergeKernelFor(defaultBitmapAllocator.allocate(64).buffer)).toBeUndefined();
  });

  it.skipIf(anonHugePagesKiB() === undefined || createHugePageAllocator().kind === 'default')(
    'on this machine: a touched 64 MiB buffer is backed by huge pages',
    () => {
      const before = anonHugePagesKiB() as number;
      const a = createWasmBitmapAllocator().allocate(64 * 2 ** 20);
      new Uint8Array(a.buffer).fill(1);
      // Not all of it need be huge (the unaligned head and tail, compaction), but some must.
      expect((anonHugePagesKiB() as number) - before).toBeGreaterThanOrEqual(2048);
    },
  );

  it('a sync into a non-empty bmap merges in the kernel: exact bits, count and cost', () => {
    const { log, layers } = world(PAGES, createWasmBitmapAllocator());
    // Round 1's bitmap is all set; send everything but page 5 and pages [4096, 6144).
    for (let p = 0; p < PAGES; p++)
      if (p !== 5 && (p < 4096 || p >= 6144)) layers.clearSent(p >>> 5, 1 << (p & 31));
    const dirty = [5, 6, 64, 2047, ...Array.from({ length: 2048 }, (_, i) => 4096 + i), 8192, 69_999];
    log.markDirty(0, Uint32Array.from(dirty), dirty.length, 0);
    const before = layers.stats();
    const r = layers.sync();
    // Pages 5 and [4096, 6144) were still dirty in bmap: 2049 of the 2054 written were already set.
    expect(r.newDirty).toBe(dirty.length - 2049);
    expect(layers.dirtyPages).toBe(2049 + 5);
    expect([...layers.bmap.setBits()]).toEqual([...new Set([5, ...dirty])].sort((a, b) => a - b));
    const after = layers.stats();
    expect(after.kernelMerges - before.kernelMerges).toBe(1);
    expect(after.adoptions).toBe(before.adoptions);
    // Visited: T's line list instead of its summary (8 lines: 0, 3, 8-11, 16, 136 = 4 64-bit
    // words; the summary would be 74) + one 64-bit word per set summary bit: words 0, 1, 31
    // (pages 5-6, 64, 2047), 64-95 (the 2048-page range), 128, 1093.
    expect(after.copiedWords - before.copiedWords).toBe(4 + 3 + 32 + 1 + 1);
  });

  it('a run of all-ones summary chunks is copied only as far as bmap is clean', () => {
    const { log, layers } = world(PAGES, createWasmBitmapAllocator());
    // bmap keeps page 10,000 (in the second 8192-page summary chunk) only.
    for (let p = 0; p < PAGES; p++) if (p !== 10_000) layers.clearSent(p >>> 5, 1 << (p & 31));
    // One page in every 64-bit word: every summary chunk of T is all ones.
    const stride = Uint32Array.from({ length: Math.ceil((PAGES - 1) / 64) }, (_, i) => 1 + 64 * i);
    log.markDirty(0, stride, stride.length, 0);
    const before = layers.stats();
    const r = layers.sync();
    expect(r.newDirty).toBe(4685);
    expect(layers.dirtyPages).toBe(4686);
    expect([...layers.bmap.setBits()]).toEqual([...stride.slice(0, 157), 10_000, ...stride.slice(157)]);
    expect(layers.stats().kernelMerges - before.kernelMerges).toBe(1);
    // T's summary (74 64-bit words: its line list overflowed, 137 lines past the cap of 19) +
    // every word.
    expect(layers.stats().copiedWords - before.copiedWords).toBe(74 + 4685);
  });

  it.each(BOTH_MERGES)(
    'merges through the producers’ line list, which starts empty each time a buffer goes back to them (%s)',
    (kind, allocator) => {
      const { log, layers } = world(PAGES, allocator());
      // bmap keeps page 0 only, so every sync below merges (none adopts).
      for (let p = 1; p < PAGES; p++) layers.clearSent(p >>> 5, 1 << (p & 31));
      log.markDirty(0, Uint32Array.of(5000, 5001, 70_000), 3, 0);
      expect(log.active(0).counts[1]).toBe(2); // two lines: 5000-5001 share one
      expect([...(log.active(0).lines ?? new Uint32Array(0)).subarray(0, 2)]).toEqual([
        (5000 >>> 6) >>> 3,
        (70_000 >>> 6) >>> 3,
      ]);
      expect(layers.sync().newDirty).toBe(3);
      // The round sends them: the spare (that harvested buffer) is left with no page but its list.
      for (const p of [5000, 5001, 70_000]) layers.clearSent(p >>> 5, 1 << (p & 31));
      expect(layers.sync().newDirty).toBe(0); // it goes back to the producers unzeroed (nothing set)
      expect(log.active(0).counts[1]).toBe(0);
      // The same lines again: listed once each, so nothing is counted twice.
      log.markDirty(0, Uint32Array.of(5000, 70_000), 2, 0);
      expect(layers.sync().newDirty).toBe(2);
      expect(layers.dirtyPages).toBe(3);
      expect([...layers.bmap.setBits()]).toEqual([0, 5000, 70_000]);
      expect(layers.stats().kernelMerges).toBe(kind === 'wasm' ? 3 : 0);
    },
  );

  it.each(BOTH_MERGES)(
    'a merge through the line list leaves the harvested buffer all zero, so the next sync clears nothing (%s)',
    (_kind, allocator) => {
      const { log, layers } = world(PAGES, allocator());
      // bmap keeps page 0 only, so the sync merges. The round sends none of the pages written
      // below: before, they stayed in the harvested buffer until the next sync scanned its summary.
      for (let p = 1; p < PAGES; p++) layers.clearSent(p >>> 5, 1 << (p & 31));
      // Lone words, a whole-line run, and the last, partial line (merged word by word).
      const dirty = [5, 6, 64, 2047, ...Array.from({ length: 2048 }, (_, i) => 4096 + i), 69_999, PAGES - 1];
      const taken = log.active(0);
      log.markDirty(0, Uint32Array.from(dirty), dirty.length, 0);
      expect(taken.counts[1]).toBeLessThanOrEqual(taken.lines?.length ?? 0); // the list is complete
      expect(layers.sync().newDirty).toBe(dirty.length);
      expect([...layers.bmap.setBits()]).toEqual([0, ...dirty]);
      expect(taken.counts[0]).toBe(0);
      expect(firstDifference(taken.bitmap.words, new Uint32Array(taken.bitmap.words.length))).toBe(-1);
      expect(firstDifference(taken.summary, new Uint32Array(taken.summary.length))).toBe(-1);
      // The next sync installs it for the producers as it is; with nothing listed it visits nothing.
      const before = layers.stats().copiedWords;
      expect(layers.sync().newDirty).toBe(0);
      expect(log.active(0)).toBe(taken);
      expect(layers.stats().copiedWords - before).toBe(0);
    },
  );

  it.each(BOTH_MERGES)(
    'falls back to the summary when the line list overflows: exact at its length and one past it (%s)',
    (_kind, allocator) => {
      for (const extra of [0, 1]) {
        const { log, layers } = world(PAGES, allocator());
        for (let p = 1; p < PAGES; p++) layers.clearSent(p >>> 5, 1 << (p & 31));
        const cap = log.active(0).lines?.length ?? 0;
        expect(cap).toBe(19); // 147 summary words: 588 bytes / 32
        const pages = Uint32Array.from({ length: cap + extra }, (_, i) => 1 + 512 * i); // one per line
        log.markDirty(0, pages, pages.length, 0);
        expect(log.active(0).counts[1]).toBe(cap + extra);
        expect(layers.sync().newDirty).toBe(cap + extra);
        expect([...layers.bmap.setBits()]).toEqual([0, ...pages]);
      }
    },
  );

  // 299,800 pages (above), and 2,500: 40 words, 5 whole lines, a summary of 8 bytes — all of it the
  // kernel's scalar tail, one batch.
  it.each([
    [PAGES, 60],
    [2_500, 40],
  ])(
    'gives the JS merge’s bmap, summary, dirtyPages and sync results on every step, in one thread or split with the helper, %i pages (property)',
    async (slotPages, runs) => {
      let kernelMerges = 0;
      let parallelMerges = 0;
      await assertProperty(
        fc.property(fc.array(opsOver(slotPages), { minLength: 1, maxLength: 30 }), (ops) => {
          const js = world(slotPages, defaultBitmapAllocator);
          const wasm = world(slotPages, createWasmBitmapAllocator({ parallel: false }));
          // Every merge of 2 lines or more, or of a summary of 8 words or more, split: the helper
          // thread merges all the pieces but the caller's first, or all of them.
          const split = (callerPieces: number) =>
            world(
              slotPages,
              createWasmBitmapAllocator({ parallel: { minLines: 2, minSummaryWords: 8, callerPieces } }),
            );
          const helped = [split(1), split(0)];
          const kernels = [wasm, ...helped];
          const both = [js, ...kernels];
          for (const op of ops) {
            if (op.t === 'pages') {
              for (const w of both) w.log.markDirty(0, Uint32Array.from(op.pages), op.pages.length, 0);
            } else if (op.t === 'range') {
              const n = Math.min(op.length, slotPages - op.start);
              const pages = Uint32Array.from({ length: n }, (_, i) => op.start + i);
              for (const w of both) w.log.markDirty(0, pages, n, 0);
            } else if (op.t === 'stride') {
              const pages = Uint32Array.from(
                { length: Math.ceil((slotPages - op.start) / op.step) },
                (_, i) => op.start + i * op.step,
              );
              for (const w of both) w.log.markDirty(0, pages, pages.length, 0);
            } else if (op.t === 'sync') {
              const [a, ...b] = both.map((w) => w.layers.sync());
              for (const r of b) expect(r).toEqual(a);
            } else {
              const dirty = [...js.layers.bmap.setBits()];
              const sent =
                op.t === 'sendAll'
                  ? dirty
                  : op.t === 'sendRange'
                    ? dirty.filter((p) => p >= op.start && p < op.start + op.length)
                    : [...new Set(op.picks.map((k) => dirty[k % Math.max(1, dirty.length)]))].filter(
                        (p): p is number => p !== undefined,
                      );
              for (const p of sent) for (const w of both) w.layers.clearSent(p >>> 5, 1 << (p & 31));
            }
            for (const w of kernels) {
              expect(firstDifference(w.layers.bmap.words, js.layers.bmap.words)).toBe(-1);
              expect(firstDifference(w.layers.summary as Uint32Array, js.layers.summary as Uint32Array)).toBe(
                -1,
              );
              expect(w.layers.dirtyPages).toBe(js.layers.dirtyPages);
              expect(w.layers.dirtyPages).toBe(w.layers.bmap.popcount());
              // The buffer the producers write now (after a sync: the spare the kernel zeroed).
              const [ja, wa] = [js.log.active(0), w.log.active(0)];
              expect(firstDifference(wa.bitmap.words, ja.bitmap.words)).toBe(-1);
              expect(firstDifference(wa.summary, ja.summary)).toBe(-1);
              expect(wa.counts[0]).toBe(ja.counts[0]);
            }
          }
          const [sa, ...sk] = both.map((w) => w.layers.stats());
          for (const sb of sk) {
            expect(sb.copiedWords).toBe(sa?.copiedWords);
            expect(sb.adoptions).toBe(sa?.adoptions);
            expect(sb.kernelMerges).toBe(sk[0]?.kernelMerges);
          }
          expect(sa?.kernelMerges).toBe(0);
          expect(sk[0]?.parallelMerges).toBe(0);
          kernelMerges += sk[0]?.kernelMerges ?? 0;
          // With no piece left to the caller, every split merge is the helper's.
          parallelMerges += helped[1]?.layers.stats().parallelMerges ?? 0;
        }),
        runs,
      );
      // The kernel ran (a sync into a bmap not empty), not only adoptions: 19-44 times in 40-60
      // runs when measured, so at least one run in six.
      expect(kernelMerges).toBeGreaterThan(runs / 6);
      // And the helper merged split ones (a merge of one line, most of them at 2,500 pages, is
      // not split): 5-30 in the runs measured.
      expect(parallelMerges).toBeGreaterThan(0);
    },
  );
});

describe('splitMerge: the pieces of a merge split between two threads', () => {
  const p = { minLines: 8, minSummaryWords: 8, callerPieces: Infinity };

  it('a line list of at least minLines: runs of it, at most 16, at least minLines / 4 lines each', () => {
    expect(splitMerge([0, 100_000, 200_000, 300_000, 40, 1276, 1000, 10], p)).toEqual(
      [1000, 1008, 1016, 1024, 1032].map((at) => [0, 100_000, 200_000, 300_000, 40, 1276, at, 2]),
    );
    expect(splitMerge([0, 100_000, 200_000, 300_000, 40, 1276, 1000, 7], p)).toBeUndefined();
    const many = splitMerge([0, 1, 2, 3, 4, 5, 0, 100_000], p) ?? [];
    expect(many).toHaveLength(16);
    expect(many.reduce((n, a) => n + a[7], 0)).toBe(100_000);
    expect(many[15]?.[6]).toBe(4 * 93_750);
  });

  it('a summary scan: runs of whole 16-byte chunks of full lines, the last piece keeping the rest', () => {
    // 40 summary words (160 bytes, 10 chunks) over 1276 64-bit words (159 full lines and a
    // partial one): 9 chunks of full lines, so 9 pieces, the last taking 32 summary bytes.
    const pieces = splitMerge([0, 100_000, 200_000, 300_000, 40, 1276, 0, -1], p) ?? [];
    expect(pieces).toHaveLength(9);
    for (let i = 0; i < 8; i++) {
      expect(pieces[i]).toEqual([
        16 * i * 64,
        100_000 + 16 * i,
        200_000 + 16 * i * 64,
        300_000 + 16 * i,
        4,
        128,
        0,
        -1,
      ]);
    }
    expect(pieces[8]).toEqual([128 * 64, 100_128, 200_000 + 128 * 64, 300_128, 8, 1276 - 1024, 0, -1]);
    expect(pieces.reduce((n, a) => n + a[4], 0)).toBe(40);
    expect(pieces.reduce((n, a) => n + a[5], 0)).toBe(1276);
    expect(splitMerge([0, 100_000, 200_000, 300_000, 7, 1276, 0, -1], p)).toBeUndefined();
  });

  it('by default only line lists of 8,192 lines or more are split, never a summary scan', () => {
    expect(splitMerge([0, 1, 2, 3, 4, 5, 0, 8191], PARALLEL_MERGE_DEFAULT)).toBeUndefined();
    expect(splitMerge([0, 1, 2, 3, 4, 5, 0, 8192], PARALLEL_MERGE_DEFAULT)).toHaveLength(4);
    expect(splitMerge([0, 1, 2, 3, 2 ** 20, 2 ** 25, 0, -1], PARALLEL_MERGE_DEFAULT)).toBeUndefined();
  });
});

/**
 * The WebAssembly SIMD bitmap kernels against the JS paths, on the slides' bitmap sizes: a 3 TiB
 * guest (96 MiB bitmap) and an 8 TiB one (256 MiB). Each size: a plain copy (TypedArray.set, the
 * memcpy floor), core's OR-and-zero collect with plain loads/stores and with an atomic exchange per
 * word, and the WASM orAndZero / orAndZeroSummary kernels at 100% and 1% dirty words. Medians of
 * BENCH_REPS (5) after a warm-up; ratios against memcpy go into the JSON.
 *
 *   pnpm --filter @dirtytrack/qemu-layers bench        (BENCH_SIZES=3T,8T  BENCH_REPS=5)
 */
import { Bitmap, formatSize, PAGE_SIZE, parseSize } from '@dirtytrack/core';
import { createBitmapKernels } from '@dirtytrack/qemu-layers';
import { measure, round, writeReport, type BenchRow } from '../../../scripts/bench-report.js';

const sizes = (process.env['BENCH_SIZES'] ?? '3T,8T').split(',').map((s) => parseSize(s.trim()));
const reps = Number(process.env['BENCH_REPS'] ?? 5);
const DENSE = 0x5555_5555; // every word dirty, half its pages
const SPARSE_STRIDE = 100; // 1% of words dirty

const rows: BenchRow[] = [];
const ratios: Record<string, Record<string, number>> = {};
const bitmapBytes: Record<string, number> = {};

for (const memory of sizes) {
  const label = formatSize(memory);
  const pages = memory / PAGE_SIZE;
  const bytes = Bitmap.byteLength(pages);
  bitmapBytes[label] = bytes;
  const own: BenchRow[] = [];
  const run = (name: string, fn: () => void, prepare: () => void, note?: string): void => {
    const row = measure(`${label}: ${name}`, reps, fn, prepare, note);
    own.push(row);
    rows.push(row);
  };

  {
    const src = Bitmap.create(pages, { shared: true });
    const dst = Bitmap.create(pages, { shared: true });
    const dense = (): void => void src.words.fill(DENSE);
    run('memcpy (TypedArray.set)', () => dst.copyFrom(src), dense);
    run('JS collect plain (OR into dst, zero src)', () => void src.collectInto(dst, 'plain'), dense);
    run('JS collect xchg (Atomics.exchange per word)', () => void src.collectInto(dst, 'xchg'), dense);
  }

  const k = createBitmapKernels({ maxBytes: 2 * bytes + Bitmap.byteLength(bytes / 8) + 64 });
  if (k.kind !== 'wasm-simd') throw new Error('this engine has no WASM SIMD; the bench needs it');
  const src = k.alloc(pages);
  const dst = k.alloc(pages);
  const summary = k.alloc(bytes / 8);
  const dense = (): void => void src.words.fill(DENSE);
  const sparse = (): void => {
    src.words.fill(0);
    for (let i = 0; i < src.words.length; i += SPARSE_STRIDE) src.words[i] = DENSE;
  };
  run('WASM orAndZero, 100% dirty', () => void k.orAndZero(src, dst), dense);
  run('WASM orAndZeroSummary, 100% dirty', () => void k.orAndZeroSummary(src, dst, summary), dense);
  run('WASM orAndZero, 1% dirty words', () => void k.orAndZero(src, dst), sparse);
  run('WASM orAndZeroSummary, 1% dirty words', () => void k.orAndZeroSummary(src, dst, summary), sparse);

  const memcpy = own[0]?.medianMs ?? NaN;
  ratios[label] = Object.fromEntries(
    own.slice(1).map((r) => [r.name.slice(label.length + 2), round(r.medianMs / memcpy)]),
  );
}

writeReport(
  import.meta.dirname + '/..',
  'kernels',
  `Bitmap kernels: WASM SIMD vs JS, ${sizes.map((s) => formatSize(s)).join(' and ')} guests`,
  rows,
  { 'bitmap-bytes': bitmapBytes, 'vs-memcpy': ratios },
);

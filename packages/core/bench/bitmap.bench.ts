/**
 * Bitmap primitives on the slides' sizes, side by side in one run: a plain copy (memcpy), the
 * word-wise OR-and-zero collect with plain loads/stores, the same with an atomic exchange per
 * word (what QEMU and KVM do), popcount and a find-next-set scan. The slides measured xchg 3–3.5×
 * slower than memcpy over a bitmap larger than L3, and 8× when cache-resident.
 *
 *   pnpm --filter @dirtytrack/core bench            (BENCH_MEMORY=8T for the 256 MiB bitmap)
 */
import { Bitmap, formatSize, PAGE_SIZE, parseSize } from '@dirtytrack/core';
import { measure, round, writeReport, type BenchRow } from '../../../scripts/bench-report.js';

const memory = parseSize(process.env['BENCH_MEMORY'] ?? '3T');
const reps = Number(process.env['BENCH_REPS'] ?? 5);
const pages = memory / PAGE_SIZE;
const src = Bitmap.create(pages, { shared: true });
const dst = Bitmap.create(pages, { shared: true });
const fill = (): void => void src.words.fill(0x5555_5555); // every word dirty, half its pages

const rows: BenchRow[] = [
  measure('memcpy (TypedArray.set)', reps, () => dst.copyFrom(src), fill),
  measure('collect plain (OR into dst, zero src)', reps, () => src.collectInto(dst, 'plain'), fill),
  measure('collect xchg (Atomics.exchange per word)', reps, () => src.collectInto(dst, 'xchg'), fill),
  measure('popcount', reps, () => void src.popcount(), fill),
  measure(
    'findNextSet over an empty bitmap',
    reps,
    () => void src.findNextSet(0),
    () => src.clearAll(),
  ),
];

// Cache-resident: a 4 KiB bitmap copied / exchanged many times (the slides' L1 case).
const small = Bitmap.create(4096 * 8, { shared: true });
const smallDst = Bitmap.create(4096 * 8, { shared: true });
const loops = Math.max(1, Math.floor(src.words.length / small.words.length));
rows.push(
  measure(
    'L1: memcpy 4 KiB × n',
    reps,
    () => {
      for (let i = 0; i < loops; i++) smallDst.copyFrom(small);
    },
    () => small.words.fill(0x5555_5555),
  ),
  measure('L1: collect xchg 4 KiB × n', reps, () => {
    for (let i = 0; i < loops; i++) {
      small.words.fill(0x5555_5555);
      small.collectInto(smallDst, 'xchg');
    }
  }),
  measure('L1: collect plain 4 KiB × n', reps, () => {
    for (let i = 0; i < loops; i++) {
      small.words.fill(0x5555_5555);
      small.collectInto(smallDst, 'plain');
    }
  }),
);

const median = (name: string): number => rows.find((r) => r.name.startsWith(name))?.medianMs ?? NaN;
writeReport(import.meta.dirname + '/..', 'bitmap', `Bitmap primitives, ${formatSize(memory)} guest`, rows, {
  memory: formatSize(memory),
  'bitmap-bytes': src.byteLength,
  'xchg-vs-memcpy': round(median('collect xchg') / median('memcpy')),
  'plain-vs-memcpy': round(median('collect plain') / median('memcpy')),
  'xchg-vs-plain': round(median('collect xchg') / median('collect plain')),
  'l1-xchg-vs-plain': round(median('L1: collect xchg') / median('L1: collect plain')),
});

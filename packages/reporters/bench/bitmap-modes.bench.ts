/**
 * The bitmap reporter's two update modes side by side (seeds/kvm-dirty-tracking-slides.txt,
 * "Bitmap Copy - KVM Side" / "Summary"): `'atomic'` is today's kernel (set_bit, xchg per dirty
 * word in GET_DIRTY_LOG, fetch_andnot in CLEAR_DIRTY_LOG); `'locked'` is the slides' proposal
 * (setters under the mmu_lock read lock with atomic OR, collectors under the write lock with
 * plain loads and stores). Measured, for a 64 GiB guest (2 MiB bitmap) and a 3 TiB guest
 * (96 MiB bitmap):
 *
 * - classic `getDirtyLog` with 1% and 100% of the 64-bit words dirty (half of each dirty word's
 *   pages set), both modes; the re-arm is a no-op so only the bitmap work is timed;
 * - manual-protect `clearDirtyLog` of the whole slot at the same densities, both modes;
 * - `markDirty` throughput: 4M uniformly random pages in batches of 64 and 4096 (the locked mode
 *   takes the read lock once per batch), both modes;
 * - for reference, the manual-protect `getDirtyLog` (a plain copy, the same in both modes).
 *
 * Uncontended: one thread, so the lock costs only its own atomics. Medians of BENCH_REPS (5).
 *
 *   pnpm --filter @dirtytrack/reporters bench      (BENCH_SIZES=64G,3T  BENCH_REPS=5)
 */
import {
  Bitmap,
  createRng,
  createRWLock,
  formatSize,
  PAGE_SIZE,
  parseSize,
  type MemslotInfo,
  type Rearmer,
} from '@dirtytrack/core';
import { createBitmapReporter, type BitmapUpdates } from '@dirtytrack/reporters';
import { measure, round, writeReport, type BenchRow } from '../../../scripts/bench-report.js';

const sizes = (process.env['BENCH_SIZES'] ?? '64G,3T').split(',').map((s) => parseSize(s.trim()));
const reps = Number(process.env['BENCH_REPS'] ?? 5);
const MODES: readonly BitmapUpdates[] = ['atomic', 'locked'];
const DENSITIES = [0.01, 1] as const;
const MARKS = 4 * 2 ** 20;
const BATCHES = [64, 4096] as const;
const noRearm: Rearmer = { rearm: () => 0 };

const rows: BenchRow[] = [];
const ratios: Record<string, number> = {};
const bitmapBytes: Record<string, number> = {};

/** Dirties `density` of the 64-bit words of `b` (evenly spread), half the pages of each. */
function fill(b: Bitmap, density: number): void {
  const w = b.words;
  if (density >= 1) {
    w.fill(0x5555_5555);
  } else {
    w.fill(0);
    const step = Math.round(1 / density) * 2;
    for (let i = 0; i < w.length; i += step) {
      w[i] = 0x5555_5555;
      w[i + 1] = 0x5555_5555;
    }
  }
  // Padding bits stay 0, as KVM's do.
  for (let p = b.bits; p < w.length * 32; p++) w[p >>> 5] = (w[p >>> 5] as number) & ~(1 << (p & 31));
}

function options(updates: BitmapUpdates): { updates: BitmapUpdates; lock?: ReturnType<typeof createRWLock> } {
  return updates === 'locked' ? { updates, lock: createRWLock() } : { updates };
}

function row(name: string, fn: () => void, prepare?: () => void, note?: string): BenchRow {
  const r = measure(name, reps, fn, prepare, note);
  rows.push(r);
  process.stderr.write(`${name}: ${r.medianMs} ms\n`);
  return r;
}

for (const memory of sizes) {
  const size = formatSize(memory);
  const pages = memory / PAGE_SIZE;
  const slot: MemslotInfo = { id: 0, asId: 0, baseGfn: 0, pages };
  bitmapBytes[size] = Bitmap.byteLength(pages);
  const out = Bitmap.create(pages);

  for (const density of DENSITIES) {
    const pct = `${density * 100}%`;
    const get: Record<string, number> = {};
    const clear: Record<string, number> = {};
    for (const updates of MODES) {
      const classic = createBitmapReporter({ rearmer: noRearm, slots: [slot], ...options(updates) });
      const live = classic.liveBitmap(0);
      fill(live, density);
      const want = live.popcount();
      get[updates] = row(
        `${size} getDirtyLog ${updates}, ${pct} words dirty`,
        () => void classic.getDirtyLog(0, out),
        () => fill(live, density),
      ).medianMs;
      fill(live, density);
      if (classic.getDirtyLog(0, out) !== want) throw new Error(`${size} ${updates}: GET lost pages`);

      const manual = createBitmapReporter({
        rearmer: noRearm,
        slots: [slot],
        manualProtect: true,
        ...options(updates),
      });
      const mlive = manual.liveBitmap(0);
      const mask = Bitmap.create(pages);
      mask.setAll();
      clear[updates] = row(
        `${size} clearDirtyLog (whole slot) ${updates}, ${pct} words dirty`,
        () => void manual.clearDirtyLog(0, 0, pages, mask),
        () => fill(mlive, density),
      ).medianMs;
      fill(mlive, density);
      if (manual.clearDirtyLog(0, 0, pages, mask) !== want)
        throw new Error(`${size} ${updates}: CLEAR lost pages`);
      if (updates === 'atomic') {
        fill(mlive, density);
        row(
          `${size} manual getDirtyLog (plain copy, either mode), ${pct} words dirty`,
          () => void manual.getDirtyLog(0, out),
        );
      }
    }
    ratios[`${size} getDirtyLog ${pct}`] = round((get['atomic'] as number) / (get['locked'] as number));
    ratios[`${size} clearDirtyLog ${pct}`] = round((clear['atomic'] as number) / (clear['locked'] as number));
  }

  const rng = createRng(0xb17);
  const offsets = new Uint32Array(MARKS);
  for (let i = 0; i < MARKS; i++) offsets[i] = rng.nextInt(pages);
  for (const batch of BATCHES) {
    const mark: Record<string, number> = {};
    for (const updates of MODES) {
      const r = createBitmapReporter({ rearmer: noRearm, slots: [slot], ...options(updates) });
      const live = r.liveBitmap(0);
      const ms = row(
        `${size} markDirty ${updates}, batches of ${batch}`,
        () => {
          for (let i = 0; i < MARKS; i += batch) r.markDirty(0, offsets.subarray(i, i + batch), batch, 0);
        },
        () => live.clearAll(),
      ).medianMs;
      mark[updates] = ms;
      rows[rows.length - 1] = {
        ...(rows[rows.length - 1] as BenchRow),
        note: `${round(MARKS / ms / 1e3)} Mpages/s`,
      };
    }
    ratios[`${size} markDirty batch ${batch}`] = round(
      (mark['atomic'] as number) / (mark['locked'] as number),
    );
  }
}

writeReport(
  import.meta.dirname + '/..',
  'bitmap-modes',
  "Bitmap reporter: 'atomic' (today's kernel) vs 'locked' (the slides' rwlock proposal)",
  rows,
  {
    sizes: sizes.map((m) => formatSize(m)),
    'bitmap-bytes': bitmapBytes,
    reps,
    'marks-per-markDirty-case': MARKS,
    'atomic-vs-locked': ratios,
  },
);

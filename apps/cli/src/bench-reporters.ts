import { Bitmap, createRng, createRWLock, formatSize, PAGE_SIZE, type MemslotInfo } from '@dirtytrack/core';
import { createBitmapReporter, createRingReporter } from '@dirtytrack/reporters';
import { createWriteProtectTracker } from '@dirtytrack/trackers';
import { fourDigits, medianMs } from './bench-timing.js';

/** Three untimed warm-up repetitions: let the JIT settle before timing. */
const JIT = { warmups: 3 };

/**
 * `dirtytrack bench reporters`: the slides' sync-vs-async trade-off made measurable. The same
 * dirty set of a guest is harvested through KVM's dirty bitmap (`GET_DIRTY_LOG`: scan every word,
 * exchange the dirty ones, re-arm) and through the dirty ring (harvest each entry, reset,
 * re-arm), at dirty fractions from 0.01% to 100%. The bitmap costs O(memory) whatever is dirty;
 * the ring costs O(dirty pages): the ring wins while few pages are dirty, and the crossover is
 * where it stops winning. The bitmap's atomic and locked update modes run side by side.
 */
export interface ReportersBenchOptions {
  /** Guest memory in bytes (default 64 GiB). */
  memory: number;
  /** Dirty fractions to measure, each in (0, 1]. */
  fractions: readonly number[];
  /** Repetitions per case; the median is reported. */
  reps: number;
  seed: number;
  /** Called before each fraction (progress). */
  onFraction?: (index: number, fraction: number) => void;
}

export const DEFAULT_FRACTIONS = [0.0001, 0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1] as const;

/** Ring size used for the ring path: KVM's largest, 65536 entries (soft limit 65472 on AMD). */
const RING_ENTRIES = 65536;

export interface ReportersBenchRow {
  'dirty-fraction': number;
  'dirty-pages': number;
  /** GET_DIRTY_LOG with atomic exchange (today's kernel), median ms. */
  'bitmap-ms': number;
  /** GET_DIRTY_LOG under the mmu write lock with plain loads/stores (the slides' proposal), median ms. */
  'bitmap-locked-ms': number;
  /** Harvest + reset (with re-arm) of every ring entry holding the same pages, median ms. */
  'ring-ms': number;
  /** ring-ms / bitmap-ms: below 1 the ring wins. */
  'ring-vs-bitmap': number;
  /** bitmap-ms / bitmap-locked-ms. */
  'atomic-vs-locked': number;
  /** Rings (vCPUs) needed to hold the dirty set below their soft limit. */
  rings: number;
}

export interface ReportersBenchResult {
  memory: string;
  pages: number;
  'bitmap-bytes': number;
  reps: number;
  rows: ReportersBenchRow[];
  /** The smallest measured fraction at which the ring is no longer faster, or null. */
  crossover: number | null;
}

export function benchReporters(options: ReportersBenchOptions): ReportersBenchResult {
  const pages = options.memory / PAGE_SIZE;
  const slot: MemslotInfo = { id: 0, asId: 0, baseGfn: 0, pages };
  const rng = createRng(options.seed);
  const out = Bitmap.create(pages);
  const rows: ReportersBenchRow[] = [];

  options.fractions.forEach((fraction, index) => {
    options.onFraction?.(index, fraction);
    const dirty = dirtySet(pages, fraction, rng);
    const list = new Uint32Array(dirty.popcount());
    dirty.collectSetBits(0, list);

    // Re-arming is part of both harvests: a write-protect tracker takes it.
    const tracker = (): ReturnType<typeof createWriteProtectTracker> => {
      const t = createWriteProtectTracker();
      t.enableLogging(slot);
      return t;
    };

    const atomic = createBitmapReporter({ rearmer: tracker(), slots: [slot] });
    const bitmapMs = medianMs(
      options.reps,
      () => atomic.markDirty(0, list, list.length, 0),
      () => {
        atomic.getDirtyLog(0, out);
      },
      JIT,
    );
    check(out, dirty, 'bitmap');

    const lock = createRWLock();
    const locked = createBitmapReporter({ rearmer: tracker(), slots: [slot], updates: 'locked', lock });
    const lockedMs = medianMs(
      options.reps,
      () => locked.markDirty(0, list, list.length, 0),
      () => {
        locked.getDirtyLog(0, out);
      },
      JIT,
    );
    check(out, dirty, 'bitmap-locked');

    const ring = createRingReporter({ vcpus: 1, entries: RING_ENTRIES, rearmer: tracker(), slots: [slot] });
    const rings = Math.max(1, Math.ceil(list.length / ring.softLimit));
    const rr =
      rings === 1
        ? ring
        : createRingReporter({ vcpus: rings, entries: RING_ENTRIES, rearmer: tracker(), slots: [slot] });
    const perRing = rr.softLimit;
    // Timed: what the ring costs per harvest — every entry harvested and reset, pages re-armed
    // (QEMU's reap). Untimed after: the reaped pages read back as a bitmap for the check.
    const ringMs = medianMs(
      options.reps,
      () => {
        for (let v = 0; v * perRing < list.length; v++) {
          const chunk = list.subarray(v * perRing, Math.min(list.length, (v + 1) * perRing));
          rr.markDirty(0, chunk, chunk.length, v);
        }
      },
      () => {
        rr.reap();
      },
      {
        ...JIT,
        after: () => {
          rr.getDirtyLog(0, out);
        },
      },
    );
    check(out, dirty, 'ring');

    rows.push({
      'dirty-fraction': fraction,
      'dirty-pages': list.length,
      'bitmap-ms': bitmapMs,
      'bitmap-locked-ms': lockedMs,
      'ring-ms': ringMs,
      'ring-vs-bitmap': fourDigits(ringMs / bitmapMs),
      'atomic-vs-locked': fourDigits(bitmapMs / lockedMs),
      rings,
    });
  });

  const crossover = rows.find((r) => r['ring-ms'] >= r['bitmap-ms'])?.['dirty-fraction'] ?? null;
  return {
    memory: formatSize(options.memory),
    pages,
    'bitmap-bytes': Bitmap.byteLength(pages),
    reps: options.reps,
    rows,
    crossover,
  };
}

/** A Markdown table of the result, for the terminal and the README. */
export function formatReportersBench(r: ReportersBenchResult): string {
  const lines = [
    `# Reporters: dirty bitmap vs dirty ring, ${r.memory} guest (${r['bitmap-bytes']} B bitmap), medians of ${r.reps}`,
    '',
    '| dirty | pages | bitmap ms | bitmap locked ms | ring ms | ring/bitmap | atomic/locked |',
    '|---:|---:|---:|---:|---:|---:|---:|',
    ...r.rows.map(
      (x) =>
        `| ${(x['dirty-fraction'] * 100).toString()}% | ${x['dirty-pages']} | ${x['bitmap-ms']} | ${x['bitmap-locked-ms']} | ${x['ring-ms']} | ${x['ring-vs-bitmap']} | ${x['atomic-vs-locked']} |`,
    ),
    '',
    r.crossover === null
      ? 'The ring was faster at every measured fraction.'
      : `The ring stops winning at ${(r.crossover * 100).toString()}% dirty.`,
    '',
  ];
  return lines.join('\n');
}

/** `fraction` of `pages`, drawn uniformly without repetition. */
function dirtySet(pages: number, fraction: number, rng: ReturnType<typeof createRng>): Bitmap {
  const want = Math.max(1, Math.round(pages * fraction));
  const set = Bitmap.create(pages);
  const complement = want > pages / 2;
  if (complement) set.setAll();
  const flips = complement ? pages - want : want;
  for (let n = 0; n < flips;) {
    const p = rng.nextInt(pages);
    if (set.test(p) === complement) {
      if (complement) set.clear(p);
      else set.set(p);
      n++;
    }
  }
  return set;
}

function check(out: Bitmap, want: Bitmap, path: string): void {
  const a = out.words;
  const b = want.words;
  for (let i = 0; i < a.length; i++) {
    if (a[i] !== b[i])
      throw new Error(`bench reporters: the ${path} harvest differs from the dirty set at word ${i}`);
  }
}

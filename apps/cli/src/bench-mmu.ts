import { Bitmap, formatSize, PAGE_SIZE } from '@dirtytrack/core';
import { createMmu, type BackingPageSize, type LoggingMode, type Mmu } from '@dirtytrack/mmu';
import { fourDigits, pairedMedians } from './bench-timing.js';

/**
 * `dirtytrack bench mmu`: what turning dirty logging on costs the MMU, eager against lazy, on
 * one guest (default 128 GiB backed by 1 GiB pages, as in the kernel patch that reported
 * ~460 ms → ~10 ms). Each repetition builds two populated guests untimed, then times
 * `enableLogging` on one with KVM's default eager path (split every huge page to 4 KiB and
 * write-protect every page) and right after on the other with the lazy initially-set path.
 * Memory is the page-table bytes each path allocated by the end of enable.
 */
export interface MmuBenchOptions {
  memory: number;
  backing: BackingPageSize;
  reps: number;
}

export interface MmuBenchResult {
  memory: string;
  backing: BackingPageSize;
  reps: number;
  'eager-enable-ms': number;
  'lazy-enable-ms': number;
  /** eager / lazy (the acceptance wants ≥ 20). */
  ratio: number;
  /** Page-table bytes after each enable: eager grows with the guest, lazy stays at 0. */
  'eager-table-bytes': number;
  'lazy-table-bytes': number;
  /** `eager_page_split=0` (write-protect huge leaves whole) on the same guest, for reference. */
  'write-protect-enable-ms': number;
  /** The lazy path's deferred work: one 64-page CLEAR (split 1G → 2M → 4K, protect 64 pages). */
  'lazy-first-clear-ms': number;
  /** Resident set of the process after the run, MiB. */
  'rss-mib': number;
}

export function benchMmu(options: MmuBenchOptions): MmuBenchResult {
  const pages = options.memory / PAGE_SIZE;
  const info = { id: 0, asId: 0, baseGfn: 0, pages };
  const build = (logging: LoggingMode): Mmu => {
    const mmu = createMmu({ vcpus: 1, logging });
    mmu.setUserMemoryRegion({
      slot: 0,
      guestPhysAddr: 0,
      memorySize: options.memory,
      userspaceAddr: 0,
      backing: options.backing,
    });
    mmu.populate(0);
    return mmu;
  };
  let eager = build('eager-split');
  let lazy = build('lazy');
  const enable = pairedMedians(
    options.reps,
    () => {
      eager = build('eager-split');
      lazy = build('lazy');
    },
    () => {
      eager.enableLogging(info);
    },
    () => {
      lazy.enableLogging(info);
    },
  );
  const eagerBytes = eager.stats().tableBytes;
  const lazyBytes = lazy.stats().tableBytes;

  let wp = build('write-protect');
  const mask = Bitmap.create(pages);
  mask.setRange(0, 64);
  let clear = build('lazy');
  const deferred = pairedMedians(
    options.reps,
    () => {
      wp = build('write-protect');
      clear = build('lazy');
      clear.enableLogging(info);
    },
    () => {
      wp.enableLogging(info);
    },
    () => {
      clear.rearm(0, mask, { words: Uint32Array.of(0, 1), count: 2 }); // As KVM_CLEAR_DIRTY_LOG passes it.
    },
  );
  return {
    memory: formatSize(options.memory),
    backing: options.backing,
    reps: options.reps,
    'eager-enable-ms': enable.a,
    'lazy-enable-ms': enable.b,
    ratio: fourDigits(enable.a / Math.max(enable.b, 1e-6)),
    'eager-table-bytes': eagerBytes,
    'lazy-table-bytes': lazyBytes,
    'write-protect-enable-ms': deferred.a,
    'lazy-first-clear-ms': deferred.b,
    'rss-mib': Math.round(process.memoryUsage().rss / 2 ** 20),
  };
}

export function formatMmuBench(r: MmuBenchResult): string {
  return [
    `# MMU: enabling dirty logging on a ${r.memory} guest backed by ${r.backing} pages, medians of ${r.reps}`,
    '',
    '| path | ms | page-table bytes |',
    '|---|---:|---:|',
    `| eager (split to 4K + write-protect, KVM default) | ${r['eager-enable-ms']} | ${r['eager-table-bytes']} |`,
    `| lazy (initially-set: nothing at enable) | ${r['lazy-enable-ms']} | ${r['lazy-table-bytes']} |`,
    `| write-protect huge leaves whole (eager_page_split=0) | ${r['write-protect-enable-ms']} | |`,
    `| lazy: first 64-page CLEAR (its deferred work) | ${r['lazy-first-clear-ms']} | |`,
    '',
    `eager / lazy = ${r.ratio}×; RSS ${r['rss-mib']} MiB`,
    '',
  ].join('\n');
}

import { DirtytrackError } from './errors.js';

/**
 * What each mechanism costs, in nanoseconds of the thread that pays it. The model plane charges
 * these to vCPUs and to the migration thread; the live plane measures instead of charging.
 *
 * Defaults come from the slides (`seeds/kvm-dirty-tracking-slides.txt`) where they give a number,
 * and are marked as estimates where neither the slides nor the references do; `dirtytrack
 * calibrate` (a later issue) will replace estimates with this host's measurements.
 */
export interface CostModel {
  /**
   * One atomic exchange of a 64-bit bitmap word over a bitmap larger than the L3 cache.
   * Slides: xchg over a 256 MiB bitmap (8 TiB guest) took 240 ms on an i7-8665U:
   * 240 ms / 33,554,432 words = 7.15 ns.
   */
  readonly bitmapXchgNsPerWord: number;
  /**
   * Copying one 64-bit bitmap word (memcpy, L3-missing). Slides: 80 ms for 256 MiB on the same
   * CPU: 80 ms / 33,554,432 words = 2.38 ns. Also charged for a read-only scan of a word.
   */
  readonly bitmapCopyNsPerWord: number;
  /**
   * Re-arming (write-protecting again) one dirty page during GET/CLEAR_DIRTY_LOG or ring reset:
   * a TDP MMU walk to the leaf SPTE and clearing W. Estimate: 40 ns (a cached 4-level walk plus
   * a locked cmpxchg).
   */
  readonly rearmNsPerPage: number;
  /**
   * Write-protecting one page when dirty logging is enabled eagerly (the whole slot walked at
   * once). Estimate: 2 ns per 4 KiB page, i.e. ~1.6 s for a 3 TiB guest mapped with 4 KiB
   * pages — the cost Keqian's lazy write-protect with initially-set removes.
   */
  readonly enableLoggingNsPerPage: number;
  /** A remote TLB flush of all vCPUs after a re-protect (IPIs and their acknowledgement). Estimate: 20 µs. */
  readonly tlbFlushNs: number;
  /**
   * A write-protect fault paid by the vCPU: VM exit, `fast_page_fault` (lockless cmpxchg of the
   * SPTE, `mark_page_dirty_in_slot`) and re-entry. Estimate: 1.5 µs.
   */
  readonly writeFaultNs: number;
  /**
   * A write fault that takes the slow path: the `mmu_lock` for read, a full walk, and a cmpxchg
   * that maps the page or restores W on a page that is not MMU-writable (or huge, in a logging
   * slot). Estimate: 3 µs (twice the fast path: the lock's cache line and a longer walk).
   */
  readonly slowFaultNs: number;
  /**
   * Splitting one huge SPTE into a table of 512 smaller ones (allocate a 4 KiB page table, fill
   * it, publish it with cmpxchg): on enable with eager splitting, or in a fault. Estimate: 2 µs.
   */
  readonly hugePageSplitNs: number;
  /**
   * Harvesting one dirty-ring entry and resetting it: an acquire load of its flags, two reads, a
   * release store of RESET, and at reset a re-arm batched per 64-page window. Estimate: 10 ns
   * (a few cache-line touches, sequential in the ring).
   */
  readonly ringEntryNs: number;
  /**
   * Sending one 4 KiB page through a socket with a plain `sendmsg`: the user-to-kernel copy of
   * the page plus the TCP stack's per-byte work, paid by the sending thread (the migration
   * thread, or a multifd sender thread). Estimate: 2 µs, i.e. one thread tops out near 2 GB/s
   * (≈16 Gbit/s) — the slides' "data copy bottleneck" that multifd and MSG_ZEROCOPY address.
   */
  readonly pageSendCopyNs: number;
  /**
   * Sending one 4 KiB page with `MSG_ZEROCOPY` (multifd `zero-copy-send`): no user-space copy,
   * only pinning the page and reaping its completion from the socket's error queue. Estimate:
   * 0.5 µs.
   */
  readonly pageSendZeroCopyNs: number;
}

/** The defaults documented on {@link CostModel}. */
export const DEFAULT_COST_MODEL: CostModel = Object.freeze({
  bitmapXchgNsPerWord: 240e6 / ((256 * 2 ** 20) / 8),
  bitmapCopyNsPerWord: 80e6 / ((256 * 2 ** 20) / 8),
  rearmNsPerPage: 40,
  enableLoggingNsPerPage: 2,
  tlbFlushNs: 20_000,
  writeFaultNs: 1_500,
  slowFaultNs: 3_000,
  hugePageSplitNs: 2_000,
  ringEntryNs: 10,
  pageSendCopyNs: 2_000,
  pageSendZeroCopyNs: 500,
});

/** A cost model with `overrides` applied over the defaults; every cost must be finite and ≥ 0. */
export function createCostModel(
  overrides: { readonly [K in keyof CostModel]?: number | undefined } = {},
): CostModel {
  const given = Object.fromEntries(Object.entries(overrides).filter(([, v]) => v !== undefined));
  const model: CostModel = { ...DEFAULT_COST_MODEL, ...given };
  for (const [key, value] of Object.entries(model)) {
    if (typeof value !== 'number' || !Number.isFinite(value) || value < 0) {
      throw new DirtytrackError(
        'invalid-argument',
        `${key}: cost ${String(value)} must be a finite number >= 0`,
        {
          component: 'cost-model',
          field: key,
        },
      );
    }
    if (!(key in DEFAULT_COST_MODEL)) {
      throw new DirtytrackError(
        'invalid-argument',
        `${key}: unknown cost (accepted: ${Object.keys(DEFAULT_COST_MODEL).join(', ')})`,
        {
          component: 'cost-model',
          field: key,
        },
      );
    }
  }
  return Object.freeze(model);
}

import { DirtytrackError, type RWLock } from '@dirtytrack/core';
import { checkCount } from './vhost-log.js';

const COMPONENT = 'vfio-tracker';
/** VFIO device DMA logging accepts at most this many IOVA ranges (32-bit, 64-bit, PCI hole64). */
export const VFIO_MAX_RANGES = 3;

export interface VfioRange {
  /** First RAM page of the range. */
  readonly start: number;
  readonly pages: number;
}

export type VfioTrackerOptions =
  { kind: 'device'; ranges: readonly VfioRange[]; lock?: RWLock } | { kind: 'none' };

/** One range's DMA log: bit i = page `start + i`; 32-bit words of shared memory. */
export interface VfioRangeLog extends VfioRange {
  readonly words: Uint32Array;
}

/**
 * VFIO dirty tracking (reference/qemu.md §1.1).
 *
 * - `'device'`: per-device DMA logging over at most {@link VFIO_MAX_RANGES} ranges; the device
 *   sets bits with `markDirty` (atomically, under `lock` for read when one is given).
 * - `'none'`: neither a container nor a device tracker. QEMU then marks the **whole** range dirty
 *   on every sync, so a migration with such a device never converges on its own (every sync
 *   reports every page; only the downtime limit or a forced switch-over ends it).
 */
export type VfioTracker =
  | {
      readonly kind: 'device';
      readonly ranges: readonly VfioRangeLog[];
      readonly lock: RWLock | undefined;
      markDirty(offsets: Uint32Array, count: number): void;
      test(page: number): boolean;
    }
  | { readonly kind: 'none' };

export function createVfioTracker(options: VfioTrackerOptions): VfioTracker {
  if (options.kind === 'none') return { kind: 'none' };
  if (options.kind !== 'device') {
    throw new DirtytrackError('invalid-argument', `kind must be 'device' or 'none'`, {
      component: COMPONENT,
      field: 'kind',
    });
  }
  const { ranges: given, lock } = options;
  if (given.length > VFIO_MAX_RANGES) {
    throw new DirtytrackError(
      'invalid-argument',
      `device DMA logging takes at most ${VFIO_MAX_RANGES} ranges, got ${given.length}`,
      { component: COMPONENT, field: 'ranges' },
    );
  }
  const ranges: VfioRangeLog[] = given.map((r, i) => {
    if (!(Number.isSafeInteger(r.start) && r.start >= 0 && Number.isSafeInteger(r.pages) && r.pages > 0)) {
      throw new DirtytrackError('invalid-argument', `range ${i}: bad start ${r.start} / pages ${r.pages}`, {
        component: COMPONENT,
        field: 'ranges',
      });
    }
    return {
      start: r.start,
      pages: r.pages,
      words: new Uint32Array(new SharedArrayBuffer(Math.ceil(r.pages / 64) * 8)),
    };
  });
  const find = (p: number): VfioRangeLog | undefined => {
    for (const r of ranges) if (p >= r.start && p - r.start < r.pages) return r;
    return undefined;
  };
  return {
    kind: 'device',
    ranges,
    lock,
    markDirty(offsets, count) {
      checkCount(offsets, count, COMPONENT);
      if (lock !== undefined) lock.readLock();
      try {
        for (let i = 0; i < count; i++) {
          const p = offsets[i] as number;
          const r = find(p);
          if (r === undefined) {
            throw new DirtytrackError('out-of-range', `markDirty: page ${p} is outside every logged range`, {
              component: COMPONENT,
              field: 'offsets',
            });
          }
          const o = p - r.start;
          Atomics.or(r.words, o >>> 5, 1 << (o & 31));
        }
      } finally {
        if (lock !== undefined) lock.readUnlock();
      }
    },
    test(page) {
      const r = find(page);
      if (r === undefined) return false;
      const o = page - r.start;
      return ((r.words[o >>> 5] as number) & (1 << (o & 31))) !== 0;
    },
  };
}

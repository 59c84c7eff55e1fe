import {
  Bitmap,
  DirtytrackError,
  type HarvestCost,
  type MemslotInfo,
  type Rearmer,
  type Reporter,
} from '@dirtytrack/core';

export interface BitmapReporterOptions {
  /** Re-arms harvested pages (the tracker). */
  rearmer: Rearmer;
  /** Slots to log from the start; more can be added with `addSlot`. */
  slots?: readonly MemslotInfo[];
  /** Back the bitmaps with `SharedArrayBuffer`s so other threads can set bits. Default false. */
  shared?: boolean;
}

/**
 * KVM's dirty log: one bitmap per slot (KVM layout, reference/kvm.md §1.2), set by the fault
 * path, harvested by `KVM_GET_DIRTY_LOG` in classic mode: every non-zero word is taken with an
 * atomic exchange, copied out, and exactly the reported pages are re-armed, followed by one TLB
 * flush (§1.4). Manual protect (`KVM_CLEAR_DIRTY_LOG`) and initially-set come with the reporters
 * issue.
 */
export function createBitmapReporter(options: BitmapReporterOptions): Reporter & {
  /** The live bitmap of a slot (read-only use: tests and diagnostics). */
  liveBitmap(slot: number): Bitmap;
} {
  const { rearmer } = options;
  const bitmaps = new Map<number, Bitmap>();
  let last: HarvestCost = { xchgWords: 0, copyWords: 0, rearmedPages: 0, tlbFlushes: 0, ringEntries: 0 };

  const live = (slot: number, op: string): Bitmap => {
    const b = bitmaps.get(slot);
    if (b === undefined) {
      // KVM answers ENOENT for a slot that does not exist or does not log.
      throw new DirtytrackError('invalid-state', `${op}: slot ${slot} has no dirty log (ENOENT)`, {
        component: 'bitmap-reporter',
      });
    }
    return b;
  };

  const reporter = {
    kind: 'bitmap',
    addSlot(slot: MemslotInfo) {
      if (bitmaps.has(slot.id)) {
        throw new DirtytrackError('invalid-state', `addSlot: slot ${slot.id} already has a dirty log`, {
          component: 'bitmap-reporter',
        });
      }
      bitmaps.set(slot.id, Bitmap.create(slot.pages, { shared: options.shared ?? false }));
    },
    markDirty(slot: number, offsets: Uint32Array, count: number) {
      const b = live(slot, 'markDirty');
      const words = b.words;
      for (let i = 0; i < count; i++) {
        const p = offsets[i] as number;
        if (!(p < b.bits)) {
          throw new DirtytrackError(
            'out-of-range',
            `markDirty: page ${p} is outside slot ${slot} (${b.bits} pages)`,
            {
              component: 'bitmap-reporter',
            },
          );
        }
        words[p >>> 5] = (words[p >>> 5] as number) | (1 << (p & 31));
      }
    },
    getDirtyLog(slot: number, out: Bitmap) {
      const b = live(slot, 'getDirtyLog');
      if (out.bits !== b.bits) {
        throw new DirtytrackError(
          'invalid-argument',
          `getDirtyLog: buffer covers ${out.bits} pages, slot ${slot} has ${b.bits}`,
          {
            component: 'bitmap-reporter',
          },
        );
      }
      const src = b.words;
      const dst = out.words;
      let xchgWords = 0;
      for (let i = 0; i < src.length; i += 2) {
        // KVM walks unsigned longs: one 64-bit word = two of our 32-bit words.
        if (src[i] === 0 && src[i + 1] === 0) {
          dst[i] = 0;
          dst[i + 1] = 0;
          continue;
        }
        xchgWords++;
        const lo = Atomics.exchange(src, i, 0);
        const hi = Atomics.exchange(src, i + 1, 0);
        dst[i] = lo;
        dst[i + 1] = hi;
      }
      const reported = out.popcount();
      const rearmedPages = reported > 0 ? rearmer.rearm(slot, out) : 0;
      last = {
        xchgWords,
        copyWords: src.length / 2,
        rearmedPages,
        tlbFlushes: reported > 0 ? 1 : 0,
        ringEntries: 0,
      };
      return reported;
    },
    lastHarvestCost() {
      return last;
    },
    liveBitmap(slot: number) {
      return live(slot, 'liveBitmap');
    },
  };
  for (const slot of options.slots ?? []) reporter.addSlot(slot);
  return reporter;
}

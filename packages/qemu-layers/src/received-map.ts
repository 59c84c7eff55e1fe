import { Bitmap, DirtytrackError, popcount32 } from '@dirtytrack/core';

const COMPONENT = 'receivedmap';

export interface ReceivedMapOptions {
  /** Back it with a `SharedArrayBuffer` so receive threads (multifd channels) can set bits. */
  shared?: boolean;
}

/**
 * The destination's per-RAMBlock `receivedmap` (reference/qemu.md §1.3, §2.2, §3): one bit per
 * target page, set when a page has been placed. Precopy's load loop sets it for each page,
 * postcopy sets the range after placing a host page and asks the source only for pages not yet
 * received, and a discard clears bits again.
 *
 * Sets are `Atomics.or` (QEMU's `set_bit_atomic`), so several receive threads may share one map;
 * the map is never cleared behind a concurrent setter except by {@link ReceivedMap.clearRange},
 * which QEMU runs with the range quiesced (discard before the pages are placed again).
 */
export interface ReceivedMap {
  readonly pages: number;
  readonly bitmap: Bitmap;
  /**
   * `ramblock_recv_bitmap_set_range`: marks pages `[page, page + count)` placed. Returns how
   * many were not already marked (a page placed twice is a protocol error the caller may check).
   */
  setReceived(page: number, count?: number): number;
  /** `ramblock_recv_bitmap_test`: whether `page` has been placed. */
  isReceived(page: number): boolean;
  /** `ramblock_recv_bitmap_clear` over a range (a discarded range will be received again). */
  clearRange(page: number, count: number): void;
  /** The first page at or after `from` not yet received, or -1 (what postcopy still needs). */
  findNextMissing(from?: number): number;
  /** Pages received (a popcount). */
  receivedPages(): number;
}

export function createReceivedMap(pages: number, options: ReceivedMapOptions = {}): ReceivedMap {
  if (!(Number.isSafeInteger(pages) && pages >= 0 && pages <= 2 ** 32)) {
    throw new DirtytrackError('invalid-argument', `pages ${pages} is not an integer in [0, 2^32]`, {
      component: COMPONENT,
      field: 'pages',
    });
  }
  const bitmap = Bitmap.create(pages, options.shared === true ? { shared: true } : {});
  const words = bitmap.words;
  const checkRange = (op: string, page: number, count: number): void => {
    if (!(Number.isSafeInteger(page) && Number.isSafeInteger(count) && page >= 0 && count >= 0)) {
      throw new DirtytrackError(
        'invalid-argument',
        `${op}: page ${page} and count ${count} must be integers >= 0`,
        {
          component: COMPONENT,
          field: 'page',
        },
      );
    }
    if (page + count > pages) {
      throw new DirtytrackError(
        'out-of-range',
        `${op}: pages [${page}, ${page + count}) exceed the RAMBlock's ${pages}`,
        { component: COMPONENT, field: 'page' },
      );
    }
  };
  /** Calls `each(word, mask)` for the 32-bit words covering `[page, page + count)`. */
  const forWords = (page: number, count: number, each: (i: number, mask: number) => void): void => {
    let p = page;
    const end = page + count;
    while (p < end) {
      const i = p >>> 5;
      const lo = p & 31;
      const n = Math.min(32 - lo, end - p);
      each(i, n === 32 ? 0xffffffff : ((2 ** n - 1) << lo) >>> 0);
      p += n;
    }
  };

  return {
    pages,
    bitmap,
    setReceived(page, count = 1) {
      checkRange('setReceived', page, count);
      let fresh = 0;
      forWords(page, count, (i, mask) => {
        fresh += popcount32(mask & ~Atomics.or(words, i, mask));
      });
      return fresh;
    },
    isReceived(page) {
      checkRange('isReceived', page, 1);
      return ((Atomics.load(words, page >>> 5) >>> (page & 31)) & 1) === 1;
    },
    clearRange(page, count) {
      checkRange('clearRange', page, count);
      forWords(page, count, (i, mask) => void Atomics.and(words, i, ~mask));
    },
    findNextMissing(from = 0) {
      if (!(Number.isSafeInteger(from) && from >= 0)) {
        throw new DirtytrackError(
          'invalid-argument',
          `findNextMissing: from ${from} must be an integer >= 0`,
          {
            component: COMPONENT,
            field: 'from',
          },
        );
      }
      if (from >= pages) return -1;
      let i = from >>> 5;
      let w = ~(words[i] as number) & (0xffffffff << (from & 31));
      for (;;) {
        if (w !== 0) {
          const p = i * 32 + (31 - Math.clz32(w & -w));
          return p < pages ? p : -1;
        }
        i++;
        if (i * 32 >= pages) return -1;
        w = ~(words[i] as number);
      }
    },
    receivedPages() {
      return bitmap.popcount();
    },
  };
}

import {
  attachRWLock,
  Bitmap,
  DirtytrackError,
  popcount32,
  type AttachSpec,
  type DirtySink,
  type DirtytrackErrorCode,
  type HarvestCost,
  type MemslotInfo,
  type Rearmer,
  type SharedReporter,
  type RWLock,
} from '@dirtytrack/core';

/**
 * How the bitmap's bits are updated and collected (seeds/kvm-dirty-tracking-slides.txt, "Bitmap
 * Copy - KVM Side" and "Bitmap Copy - Summary"):
 *
 * - `'atomic'` — today's kernel. Setters use `set_bit_le` (`Atomics.or`) with no lock; the classic
 *   `KVM_GET_DIRTY_LOG` takes each non-zero word with `xchg` (`Atomics.exchange`) and
 *   `KVM_CLEAR_DIRTY_LOG` uses `atomic_long_fetch_andnot` (`Atomics.and`, returning the old
 *   word), so a racing set lands either in the snapshot or in the live word — never lost.
 * - `'locked'` — the slides' proposal. Setters take `mmu_lock` for **read** once per batch and
 *   still set bits with `Atomics.or` (several readers hold the lock at once and race each other
 *   on the same word: patch (a) keeps `set_bit_le`); collectors take it for **write** and use
 *   plain loads and stores (patches (b) and (c): `mask = bitmap[i]; bitmap[i] = 0` and
 *   `tmp = bitmap[i]; bitmap[i] &= ~mask`). That is correct only because no setter can run while
 *   the write lock is held — every reporter attached to the same bitmaps must therefore use the
 *   same mode and the same lock.
 */
export type BitmapUpdates = 'atomic' | 'locked';

export interface BitmapReporterOptions {
  /** Re-arms harvested pages (the tracker). In either mode it is called with the write lock held, if there is a lock. */
  rearmer: Rearmer;
  /** Slots to log from the start; more can be added with `addSlot`. */
  slots?: readonly MemslotInfo[];
  /**
   * Back the bitmaps with `SharedArrayBuffer`s so other threads can set bits. Default false, or
   * true when `buffers` is given (which requires it).
   */
  shared?: boolean;
  /**
   * `KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2` with `ENABLE` (reference/kvm.md §1.5). Default false, as
   * in KVM. With it `getDirtyLog` only copies the live bitmap, and `clearDirtyLog` clears and
   * re-arms; without it the reporter has no `clearDirtyLog` at all (contracts.ts: absent on
   * sources without manual protect), so callers test for the method as QEMU tests
   * `manual_dirty_log_protect`.
   */
  manualProtect?: boolean;
  /**
   * `KVM_DIRTY_LOG_INITIALLY_SET`: a new slot's bitmap starts with every page set (padding bits
   * stay 0) and nothing is re-armed; pages are protected lazily by `clearDirtyLog` (§1.5, §5).
   * Default false. Valid only with `manualProtect` (KVM rejects it alone with EINVAL).
   */
  initiallySet?: boolean;
  /** See {@link BitmapUpdates}. Default `'atomic'`. */
  updates?: BitmapUpdates;
  /**
   * KVM's `mmu_lock` (§4). Required for `'locked'`. In `'atomic'` mode it is optional: when given,
   * the classic `getDirtyLog` and `clearDirtyLog` hold it for write while they clear and re-arm,
   * as KVM does (`KVM_MMU_LOCK`); setters never take it.
   */
  lock?: RWLock;
  /**
   * Existing slot bitmaps to attach to instead of allocating (a worker attaching to the main
   * thread's reporter, which hands them out with `bitmapBuffers()`), keyed by slot id. The
   * bitmap of slot `id` lives at offset 0 of `buffers.get(id)`. Attaching never initialises the
   * bits (`initiallySet` applies only to bitmaps this reporter allocates). Requires shared memory.
   */
  buffers?: ReadonlyMap<number, SharedArrayBuffer>;
}

/** The bitmap reporter: a {@link Reporter} over KVM-layout slot bitmaps. */
export interface BitmapReporter extends SharedReporter {
  readonly kind: 'bitmap';
  readonly manualProtect: boolean;
  readonly initiallySet: boolean;
  readonly updates: BitmapUpdates;
  /** The live bitmap of a slot (tests, diagnostics and benchmarks; do not clear it behind the reporter's back). */
  liveBitmap(slot: number): Bitmap;
  /** The shared memory holding a slot's bitmap, to post to a worker (`options.buffers` there). */
  bitmapBuffer(slot: number): SharedArrayBuffer;
  /** Every slot's shared bitmap memory, keyed by slot id: pass it to workers as `options.buffers`. */
  bitmapBuffers(): Map<number, SharedArrayBuffer>;
  /**
   * `SharedReporter.share()` (live plane): `{ module: '@dirtytrack/reporters', factory:
   * 'attachBitmapReporter', data }`, what a worker vCPU passes to {@link attachBitmapReporter} to
   * set bits in this reporter's shared bitmaps. Needs `shared: true`.
   */
  share(): AttachSpec;
}

/** What {@link BitmapReporter.share} hands a worker: the slots, their bitmaps, the mode and lock. */
export interface BitmapReporterShareData {
  readonly slots: readonly MemslotInfo[];
  readonly buffers: readonly SharedArrayBuffer[];
  readonly updates: BitmapUpdates;
  readonly lock?: { readonly buffer: SharedArrayBuffer; readonly byteOffset: number };
}

/** A bitmap reporter with manual protect: `clearDirtyLog` is always there. */
export interface ManualProtectBitmapReporter extends BitmapReporter {
  readonly manualProtect: true;
  clearDirtyLog(slot: number, firstPage: number, numPages: number, mask: Bitmap): number;
}

const COMPONENT = 'bitmap-reporter';

/** 32-bit words per chunk of the `seen` summary: 1024 words = 4 KiB of bitmap, one memory page. */
const SEEN_WORDS = 1024;
/** log2 of the pages one `seen` chunk covers (1024 words × 32 pages). */
const SEEN_PAGE_SHIFT = 15;

/**
 * KVM's dirty log: one bitmap per slot in KVM's layout (reference/kvm.md §1.2), set by the fault
 * path (`markDirty` = `mark_page_dirty_in_slot`, §1.3) and harvested like the ioctls:
 *
 * - `getDirtyLog` (`KVM_GET_DIRTY_LOG`, §1.4). Classic: every non-zero 64-bit word is taken and
 *   zeroed (atomic exchange, or a plain load and store under the write lock), copied out, exactly
 *   the reported pages are re-armed, then one TLB flush if anything was reported. With manual
 *   protect: a plain copy of the live bitmap — no clear, no re-arm, no flush, and no lock in
 *   either mode, as in KVM (the slides: "with CLEAR_LOG, we do copy_to_user(bitmap) without
 *   xchg()"): nothing is cleared, so a racing set is either in the copy or still in the live
 *   bitmap for the next call.
 * - `clearDirtyLog` (`KVM_CLEAR_DIRTY_LOG`, §1.6, manual protect only) with KVM's checks in KVM's
 *   order; per 64-bit word `m &= fetch_andnot(live[i], m)`, then the surviving pages are re-armed
 *   and one TLB flush issued.
 *
 * `lastHarvestCost()` describes the last `getDirtyLog` or `clearDirtyLog`: `xchgWords` counts
 * 64-bit words exchanged / fetch-and-not'ed atomically, `copyWords` the 64-bit words scanned or
 * copied plainly (the whole slot for a GET; the mask's words for a CLEAR).
 */
export function createBitmapReporter(
  options: BitmapReporterOptions & { manualProtect: true },
): ManualProtectBitmapReporter;
export function createBitmapReporter(options: BitmapReporterOptions): BitmapReporter;
export function createBitmapReporter(options: BitmapReporterOptions): BitmapReporter {
  const { rearmer, lock, buffers } = options;
  const manualProtect = options.manualProtect ?? false;
  const initiallySet = options.initiallySet ?? false;
  const updates = options.updates ?? 'atomic';
  const shared = options.shared ?? buffers !== undefined;

  if (initiallySet && !manualProtect) {
    // KVM_ENABLE_CAP(MANUAL_DIRTY_LOG_PROTECT2) accepts INITIALLY_SET only together with ENABLE.
    throw fail(
      'invalid-argument',
      'initiallySet requires manualProtect (KVM: EINVAL)',
      'EINVAL',
      'initiallySet',
    );
  }
  if (updates !== 'atomic' && updates !== 'locked') {
    throw fail(
      'invalid-argument',
      `updates must be 'atomic' or 'locked', got ${String(updates)}`,
      undefined,
      'updates',
    );
  }
  if (updates === 'locked' && lock === undefined) {
    throw fail(
      'invalid-argument',
      "updates 'locked' needs the mmu_lock: pass options.lock",
      undefined,
      'lock',
    );
  }
  if (buffers !== undefined) {
    if (!shared) {
      throw fail(
        'invalid-argument',
        'buffers are shared memory: they cannot be used with shared: false',
        undefined,
        'buffers',
      );
    }
    for (const [id, buffer] of buffers) {
      if (!isSharedArrayBuffer(buffer)) {
        throw fail(
          'invalid-argument',
          `buffers: slot ${id}'s bitmap is not a SharedArrayBuffer`,
          undefined,
          'buffers',
        );
      }
    }
  }
  if (shared && typeof SharedArrayBuffer === 'undefined') {
    throw fail('unsupported', 'shared bitmaps need SharedArrayBuffer', undefined, 'shared');
  }
  const locked = updates === 'locked';

  interface Slot {
    readonly live: Bitmap;
    /** Whether `live` is in shared memory another thread may set bits in (decided once, at addSlot). */
    readonly liveShared: boolean;
    /**
     * Unshared bitmaps only: one byte per {@link SEEN_WORDS}-word chunk of `live`, 1 = the chunk
     * may hold set bits (markDirty set one since the last GET took the chunk). A GET skips the
     * other chunks without reading them — on a TB slot most of the bitmap is never written, and
     * merely reading fresh memory costs a page fault per 4 KiB. Dropped (undefined: scan every
     * word) for shared bitmaps and once `liveBitmap` has handed the words out, since then bits
     * can be set behind markDirty's back.
     */
    seen: Uint8Array | undefined;
    /** KVM's second bitmap (`kvm_second_dirty_bitmap`): the re-arm mask of a CLEAR, all-zero between calls. */
    scratch: Bitmap | undefined;
    /** Indices of the 32-bit words a re-arm mask may hold bits in (grown on demand, reused). */
    touched: Uint32Array;
  }
  const slots = new Map<number, Slot>();
  const slotInfos = new Map<number, MemslotInfo>();
  /** Appends 32-bit words `i` and `i + 1` to the slot's touched list at `n`; returns the new count. */
  const touch = (s: Slot, n: number, i: number): number => {
    if (n + 2 > s.touched.length) {
      const grown = new Uint32Array(Math.min(s.live.words.length, s.touched.length * 2) + 2);
      grown.set(s.touched.subarray(0, n));
      s.touched = grown;
    }
    s.touched[n] = i;
    s.touched[n + 1] = i + 1;
    return n + 2;
  };
  let last: HarvestCost = cost(0, 0, 0, 0);

  const slotOf = (slot: number, op: string): Slot => {
    const s = slots.get(slot);
    if (s === undefined) {
      // KVM answers ENOENT for a slot that does not exist or does not log.
      throw fail('invalid-state', `${op}: slot ${slot} has no dirty log (ENOENT)`, 'ENOENT', 'slot');
    }
    return s;
  };

  const writeLocked = <T>(run: () => T): T => {
    if (lock === undefined) return run();
    lock.writeLock();
    try {
      return run();
    } finally {
      lock.writeUnlock();
    }
  };

  /** The CLEAR loop, with the write lock (if any) held. */
  const clear = (slot: number, s: Slot, firstPage: number, numPages: number, mask: Bitmap): number => {
    const live = s.live.words;
    const user = mask.words;
    const scratch = (s.scratch ??= Bitmap.create(s.live.bits));
    const marks = scratch.words;
    const base = firstPage / 32; // first 32-bit word of the window (firstPage is 64-aligned)
    const n32 = Math.ceil(numPages / 64) * 2;
    // Plain loads and stores under the write lock ('locked'), or when no other thread can see the
    // bitmap: then an atomic read-modify-write has exactly the plain one's effect. Decided once.
    const plain = locked || !s.liveShared;
    // The span of scratch words this call sets, zeroed again before returning (a memset over at
    // most the window, which the loop walks anyway): the scratch stays all-zero between calls.
    let firstTouched = -1;
    let lastTouched = -1;
    let xchgWords = 0;
    let pages = 0;
    let nTouched = 0;
    try {
      for (let j = 0; j < n32; j += 2) {
        let lo = user[j] as number;
        let hi = user[j + 1] as number;
        if (lo === 0 && hi === 0) continue;
        const i = base + j;
        if (!locked) xchgWords++;
        if (plain) {
          // Patch (c): tmp = bitmap[i]; bitmap[i] &= ~mask; mask &= tmp — under the write lock
          // (or on an unshared bitmap, where it is what fetch_andnot does).
          const tlo = live[i] as number;
          const thi = live[i + 1] as number;
          live[i] = tlo & ~lo;
          live[i + 1] = thi & ~hi;
          lo &= tlo;
          hi &= thi;
        } else {
          // m &= atomic_long_fetch_andnot(m, &live[i]): only bits that really were set survive.
          if (lo !== 0) lo &= Atomics.and(live, i, ~lo);
          if (hi !== 0) hi &= Atomics.and(live, i + 1, ~hi);
        }
        if (lo === 0 && hi === 0) continue;
        marks[i] = lo;
        marks[i + 1] = hi;
        if (firstTouched < 0) firstTouched = i;
        lastTouched = i;
        nTouched = touch(s, nTouched, i);
        pages += popcount32(lo) + popcount32(hi);
      }
      // The touched hint keeps the re-arm O(window), not O(slot).
      const rearmedPages =
        pages > 0 ? rearmer.rearm(slot, scratch, { words: s.touched, count: nTouched }) : 0;
      last = cost(xchgWords, n32 / 2, rearmedPages, pages > 0 ? 1 : 0);
      return pages;
    } finally {
      if (firstTouched >= 0) marks.fill(0, firstTouched, lastTouched + 2);
    }
  };

  const reporter: BitmapReporter & {
    clearDirtyLog?: (slot: number, firstPage: number, numPages: number, mask: Bitmap) => number;
  } = {
    kind: 'bitmap',
    manualProtect,
    initiallySet,
    updates,

    addSlot(slot: MemslotInfo) {
      if (slots.has(slot.id)) {
        throw fail('invalid-state', `addSlot: slot ${slot.id} already has a dirty log`, 'EEXIST', 'slot');
      }
      const buffer = buffers?.get(slot.id);
      let live: Bitmap;
      if (buffer !== undefined) {
        const need = Bitmap.byteLength(slot.pages);
        if (buffer.byteLength < need) {
          throw fail(
            'invalid-argument',
            `addSlot: the buffer for slot ${slot.id} has ${buffer.byteLength} bytes, its ${slot.pages} pages need ${need}`,
            'EINVAL',
            'buffers',
          );
        }
        live = Bitmap.wrap(buffer, slot.pages);
      } else {
        live = Bitmap.create(slot.pages, { shared });
        if (initiallySet) live.setAll();
      }
      slots.set(slot.id, {
        live,
        liveShared: isSharedArrayBuffer(live.buffer),
        seen: seenFor(live, buffer === undefined && initiallySet),
        scratch: undefined,
        touched: new Uint32Array(64),
      });
      slotInfos.set(slot.id, slot);
    },

    markDirty(slot: number, offsets: Uint32Array, count: number) {
      const { live, liveShared, seen } = slotOf(slot, 'markDirty');
      if (!(Number.isInteger(count) && count >= 0 && count <= offsets.length)) {
        throw fail(
          'invalid-argument',
          `markDirty: count ${count} is outside [0, ${offsets.length}]`,
          undefined,
          'count',
        );
      }
      if (count === 0) return;
      // Patch (a) of the slides: set_bit_le under mmu_lock held for read, once per batch.
      if (locked) (lock as RWLock).readLock();
      try {
        const words = live.words;
        const bits = live.bits;
        if (liveShared) {
          for (let i = 0; i < count; i++) {
            const p = offsets[i] as number;
            if (!(p < bits)) throw outside(slot, p, bits);
            Atomics.or(words, p >>> 5, 1 << (p & 31));
          }
        } else {
          // No other thread can see this bitmap: a plain OR is set_bit_le's exact effect, and
          // several times cheaper than a locked instruction per page (the model plane's hot loop).
          if (seen === undefined) {
            for (let i = 0; i < count; i++) {
              const p = offsets[i] as number;
              if (!(p < bits)) throw outside(slot, p, bits);
              words[p >>> 5] = (words[p >>> 5] as number) | (1 << (p & 31));
            }
          } else {
            for (let i = 0; i < count; i++) {
              const p = offsets[i] as number;
              if (!(p < bits)) throw outside(slot, p, bits);
              words[p >>> 5] = (words[p >>> 5] as number) | (1 << (p & 31));
              seen[p >>> SEEN_PAGE_SHIFT] = 1;
            }
          }
        }
      } finally {
        if (locked) (lock as RWLock).readUnlock();
      }
    },

    getDirtyLog(slot: number, out: Bitmap) {
      const s = slotOf(slot, 'getDirtyLog');
      rearmer.syncDirtyLog?.(slot); // Kick vCPUs: CPU-buffered dirty state (PML) reaches the bitmap.
      const { live } = s;
      if (out.bits !== live.bits) {
        throw fail(
          'invalid-argument',
          `getDirtyLog: buffer covers ${out.bits} pages, slot ${slot} has ${live.bits}`,
          'EINVAL',
          'out',
        );
      }
      const src = live.words;
      const dst = out.words;
      const words64 = src.length / 2;
      if (manualProtect) {
        dst.set(src);
        last = cost(0, words64, 0, 0);
        return out.popcount();
      }
      return writeLocked(() => {
        let reported = 0;
        let nTouched = 0;
        if (locked || !s.liveShared) {
          // Patch (b): plain load and store; no setter runs while we hold the write lock (or can
          // run at all: nobody else sees an unshared bitmap, so an exchange would read the same).
          const n = src.length;
          const seen = s.seen;
          const chunk = seen === undefined ? n : SEEN_WORDS;
          let clean = 0; // dst[clean, start) is still to be zeroed: chunks known to be all-zero
          for (let c = 0, start = 0; start < n; c++, start += chunk) {
            if (seen !== undefined) {
              if (seen[c] === 0) continue;
              seen[c] = 0;
            }
            if (clean < start) dst.fill(0, clean, start);
            const end = Math.min(n, start + chunk);
            for (let i = start; i < end; i += 2) {
              // KVM walks unsigned longs: one 64-bit word = two of our 32-bit words.
              const lo = src[i] as number;
              const hi = src[i + 1] as number;
              if (lo !== 0 || hi !== 0) {
                src[i] = 0;
                src[i + 1] = 0;
                reported += popcount32(lo) + popcount32(hi);
                nTouched = touch(s, nTouched, i);
              }
              dst[i] = lo;
              dst[i + 1] = hi;
            }
            clean = end;
          }
          if (clean < n) dst.fill(0, clean, n);
        } else {
          for (let i = 0; i < src.length; i += 2) {
            let lo = src[i] as number;
            let hi = src[i + 1] as number;
            if (lo !== 0 || hi !== 0) {
              // A half read as 0 is left alone: a set racing with that read stays for the next call.
              if (lo !== 0) lo = Atomics.exchange(src, i, 0);
              if (hi !== 0) hi = Atomics.exchange(src, i + 1, 0);
              reported += popcount32(lo) + popcount32(hi);
              nTouched = touch(s, nTouched, i);
            }
            dst[i] = lo;
            dst[i + 1] = hi;
          }
        }
        // 'atomic' mode exchanges every non-zero 64-bit word (and prices it so, shared or not).
        const xchgWords = locked ? 0 : nTouched / 2;
        // The touched hint: the re-arm visits only the words just taken, not the whole slot again.
        const rearmedPages =
          reported > 0 ? rearmer.rearm(slot, out, { words: s.touched, count: nTouched }) : 0;
        last = cost(xchgWords, words64, rearmedPages, reported > 0 ? 1 : 0);
        return reported;
      });
    },

    lastHarvestCost() {
      return last;
    },

    liveBitmap(slot: number) {
      const s = slotOf(slot, 'liveBitmap');
      s.seen = undefined; // The caller may set bits directly: GETs scan every word from now on.
      return s.live;
    },

    bitmapBuffer(slot: number) {
      const { live } = slotOf(slot, 'bitmapBuffer');
      if (!isSharedArrayBuffer(live.buffer)) {
        throw fail(
          'invalid-state',
          `bitmapBuffer: slot ${slot}'s bitmap is not shared (create the reporter with shared: true)`,
          undefined,
          'shared',
        );
      }
      return live.buffer;
    },

    bitmapBuffers() {
      return new Map([...slots.keys()].map((id) => [id, reporter.bitmapBuffer(id)] as const));
    },

    share() {
      const data: BitmapReporterShareData = {
        slots: [...slotInfos.values()],
        buffers: [...slotInfos.keys()].map((id) => reporter.bitmapBuffer(id)),
        updates,
        ...(lock === undefined ? {} : { lock: { buffer: lock.buffer, byteOffset: lock.byteOffset } }),
      };
      return { module: '@dirtytrack/reporters', factory: 'attachBitmapReporter', data };
    },
  };

  if (manualProtect) {
    reporter.clearDirtyLog = (slot, firstPage, numPages, mask) => {
      // The checks of kvm_clear_dirty_log_protect, in its order (reference/kvm.md §1.6). The
      // ioctl's fields are u64/u32, so a negative or fractional value is EINVAL here first.
      if (!isU64(firstPage) || !isU64(numPages)) {
        throw fail(
          'invalid-argument',
          `clearDirtyLog: first_page ${firstPage} and num_pages ${numPages} must be integers >= 0 (EINVAL)`,
          'EINVAL',
          isU64(firstPage) ? 'numPages' : 'firstPage',
        );
      }
      if (firstPage % 64 !== 0) {
        throw fail(
          'invalid-argument',
          `clearDirtyLog: first_page ${firstPage} is not a multiple of 64 (EINVAL)`,
          'EINVAL',
          'firstPage',
        );
      }
      const s = slotOf(slot, 'clearDirtyLog');
      const npages = s.live.bits;
      if (firstPage > npages) {
        throw fail(
          'out-of-range',
          `clearDirtyLog: first_page ${firstPage} is beyond slot ${slot}'s ${npages} pages (EINVAL)`,
          'EINVAL',
          'firstPage',
        );
      }
      if (numPages > npages - firstPage) {
        throw fail(
          'out-of-range',
          `clearDirtyLog: num_pages ${numPages} from first_page ${firstPage} exceeds slot ${slot}'s ${npages} pages (EINVAL)`,
          'EINVAL',
          'numPages',
        );
      }
      if (numPages % 64 !== 0 && firstPage + numPages < npages) {
        throw fail(
          'invalid-argument',
          `clearDirtyLog: num_pages ${numPages} is not a multiple of 64 and [${firstPage}, ${firstPage + numPages}) stops short of the slot's end ${npages} (EINVAL)`,
          'EINVAL',
          'numPages',
        );
      }
      if (numPages === 0) {
        last = cost(0, 0, 0, 0);
        return 0;
      }
      if (mask.bits < numPages) {
        // KVM copies ALIGN(num_pages, 64) / 8 bytes from the user's bitmap: too short = EFAULT.
        throw fail(
          'invalid-argument',
          `clearDirtyLog: the mask covers ${mask.bits} pages, num_pages is ${numPages} (EFAULT)`,
          'EFAULT',
          'mask',
        );
      }
      return writeLocked(() => clear(slot, s, firstPage, numPages, mask));
    };
  }

  for (const slot of options.slots ?? []) reporter.addSlot(slot);
  return reporter;
}

/**
 * The worker side of a shared bitmap reporter (the factory {@link BitmapReporter.share} names):
 * a {@link DirtySink} whose `markDirty` sets bits in the owner's shared slot bitmaps
 * (`set_bit_le` with `Atomics.or`, under the shared `mmu_lock` for read in `'locked'` mode). It
 * never harvests: harvests stay on the thread that owns the reporter.
 */
export function attachBitmapReporter(data: BitmapReporterShareData): DirtySink {
  if (data.slots.length !== data.buffers.length) {
    throw fail(
      'invalid-argument',
      `attachBitmapReporter: ${data.slots.length} slots but ${data.buffers.length} buffers`,
      undefined,
      'buffers',
    );
  }
  const reporter = createBitmapReporter({
    rearmer: { rearm: noHarvest },
    slots: data.slots,
    buffers: new Map(data.slots.map((s, i) => [s.id, data.buffers[i] as SharedArrayBuffer])),
    updates: data.updates,
    ...(data.lock === undefined ? {} : { lock: attachRWLock(data.lock.buffer, data.lock.byteOffset) }),
  });
  return { markDirty: (slot, offsets, count, vcpu) => reporter.markDirty(slot, offsets, count, vcpu) };
}

function noHarvest(): number {
  throw fail(
    'invalid-state',
    'an attached bitmap reporter only marks pages; harvest on the thread that owns it',
    undefined,
    'rearmer',
  );
}

function cost(xchgWords: number, copyWords: number, rearmedPages: number, tlbFlushes: number): HarvestCost {
  return { xchgWords, copyWords, rearmedPages, tlbFlushes, ringEntries: 0 };
}

function fail(
  code: DirtytrackErrorCode,
  message: string,
  errno: string | undefined,
  field: string,
): DirtytrackError {
  return new DirtytrackError(code, message, {
    component: COMPONENT,
    field,
    ...(errno === undefined ? {} : { errno }),
  });
}

/** The `seen` summary of a freshly allocated, unshared bitmap: all chunks clean, or all set. */
function seenFor(live: Bitmap, allSet: boolean): Uint8Array | undefined {
  if (isSharedArrayBuffer(live.buffer)) return undefined;
  const seen = new Uint8Array(Math.ceil(live.words.length / SEEN_WORDS));
  if (allSet) seen.fill(1);
  return seen;
}

function outside(slot: number, page: number, bits: number): DirtytrackError {
  return fail(
    'out-of-range',
    `markDirty: page ${page} is outside slot ${slot} (${bits} pages)`,
    undefined,
    'offsets',
  );
}

function isU64(x: number): boolean {
  return Number.isSafeInteger(x) && x >= 0;
}

function isSharedArrayBuffer(buffer: unknown): buffer is SharedArrayBuffer {
  return typeof SharedArrayBuffer !== 'undefined' && buffer instanceof SharedArrayBuffer;
}

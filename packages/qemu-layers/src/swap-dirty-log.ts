import {
  attachRWLock,
  Bitmap,
  DirtytrackError,
  popcount32,
  type AttachSpec,
  type DirtyLogSource,
  type DirtySink,
  type HarvestCost,
  type MemslotInfo,
  type Rearmer,
  type Reporter,
  type RWLock,
} from '@dirtytrack/core';

import { CACHE_LINE, defaultBitmapAllocator, type BitmapAllocator } from './huge-pages.js';
import { mergeKernelFor } from './kernels/wasm-allocator.js';

const COMPONENT = 'swap-dirty-log';
/**
 * A slot memory's header: the active index (Int32 0), where the buffers start (Int32 1) and how
 * many buffers there are (Int32 2: 2, or 3 with `migrationBuffer`).
 */
const HEADER_BYTES = 16;
/** What a slot's buffer stride is rounded up to (see slotLayout). */
const STRIDE_ALIGN = 4096;

/**
 * One buffer of a double-buffered dirty log: the bits, a summary with one bit per 64-bit (KVM)
 * word, and the number of pages set.
 *
 * Summary rule, kept by every writer: a non-zero 64-bit word always has its summary bit set.
 * Producers only set bits, so in a buffer they filled the summary is exact (bit set ⇔ word
 * non-zero); the collector keeps it exact when it clears bits.
 */
export interface DirtyLogBuffer {
  readonly bitmap: Bitmap;
  /** Bit k ⇔ 64-bit word k of `bitmap` is non-zero. */
  readonly summary: Uint32Array;
  /**
   * `counts[0]`: pages set in `bitmap`. A typed array so a shared buffer can carry it. In a swap
   * log's buffers, `counts[1]` is how many lines the producers appended to `lines`.
   */
  readonly counts: Uint32Array;
  /**
   * A swap log's buffers only: the 64-byte lines of `bitmap` (a byte of `summary` each) whose
   * summary byte went from zero to non-zero while the buffer was active, each once, in the order
   * the producers dirtied them — the first `counts[1]` entries, unless `counts[1]` exceeds the
   * list's length (too many lines: then the list is incomplete and the summary is the index). A
   * merge then visits only these lines, with no scan of the summary.
   */
  readonly lines?: Uint32Array;
}

/** A zeroed {@link DirtyLogBuffer} for `pages` pages (`shared` backs it with shared memory). */
export function createDirtyLogBuffer(pages: number, options: { shared?: boolean } = {}): DirtyLogBuffer {
  const bitmap = Bitmap.create(pages, options);
  const n = Math.ceil(bitmap.words.length / 2 / 32);
  const mk = (len: number): Uint32Array =>
    new Uint32Array(options.shared ? new SharedArrayBuffer(len * 4) : new ArrayBuffer(len * 4));
  return { bitmap, summary: mk(n), counts: mk(1) };
}

/**
 * What the `'fused'` strategy looks for on a dirty-log source: hand over the slot's whole
 * producer buffer in O(1) (a pointer swap) instead of copying it out, so a sync never pays
 * for clean words.
 */
export interface SwappableDirtyLog {
  /**
   * An inactive buffer of the slot, zeroed: what the caller passes to its first `swapDirtyLog`.
   * (A shared log's buffers are all visible to producers in other threads.)
   */
  spareBuffer(slot: number): DirtyLogBuffer;
  /**
   * Installs `spare` (one of the slot's inactive buffers, all zero: summary zero, count 0) as the
   * slot's active buffer and returns the buffer that was active, with every page written before
   * the call. The caller owns the returned buffer from then on (no producer writes it again) and
   * hands it back, zeroed, as a later call's `spare`; the source re-arms exactly its pages, as a
   * classic `KVM_GET_DIRTY_LOG` would.
   */
  swapDirtyLog(slot: number, spare: DirtyLogBuffer): DirtyLogBuffer;
  /**
   * Optional: the slot's third buffer, zeroed, for the collector to keep its migration bitmap in
   * (a log created with `migrationBuffer: true`; undefined otherwise). The collector then owns
   * two buffers besides the active one and may rotate all three: when its bitmap is empty at a
   * sync, the returned buffer can *become* the bitmap and the emptied bitmap the next spare —
   * a sync that touches no dirty word at all. Call it, like {@link spareBuffer}, before the first
   * swap.
   */
  migrationBuffer?(slot: number): DirtyLogBuffer | undefined;
}

/** True when `source` offers {@link SwappableDirtyLog}. */
export function isSwappableDirtyLog(source: DirtyLogSource): source is DirtyLogSource & SwappableDirtyLog {
  return typeof (source as Partial<SwappableDirtyLog>).swapDirtyLog === 'function';
}

export interface SwapDirtyLogOptions {
  /**
   * Re-arms harvested pages (a write-protect tracker), called with the reported buffer. Omit it
   * for producers that set a bit on every write and need nothing restored (a reaped dirty ring
   * filling QEMU's slot bitmap, a device log).
   */
  rearmer?: Rearmer;
  slots?: readonly MemslotInfo[];
  /**
   * When producers run on other threads: they set bits under this lock held for read, and the
   * swap takes it for write. Without it, producers and collector must run on one thread.
   */
  lock?: RWLock;
  /** Back the buffers with shared memory. Default: true when `lock` or `buffers` is given. */
  shared?: boolean;
  /**
   * Attach to another log's slots (a producer worker): `log.slotBuffer(id)` of the creating
   * thread, keyed by slot id. Requires the same `lock`.
   */
  buffers?: ReadonlyMap<number, SharedArrayBuffer>;
  /**
   * Where each slot's memory (all its buffers) comes from; e.g. `createHugePageAllocator()` to
   * back big logs with 2 MiB pages. Default: plain buffers.
   */
  allocator?: BitmapAllocator;
  /**
   * Keep a third buffer per slot for the collector's migration bitmap
   * ({@link SwappableDirtyLog.migrationBuffer}): `'fused'` layers then keep `bmap` in it and, at
   * a sync after a finished round, adopt the harvested buffer as `bmap` instead of copying it.
   * It costs one bitmap per slot, which the layers no longer allocate. Default false. (A producer
   * worker attached with `buffers` reads the count from the slot memory.)
   */
  migrationBuffer?: boolean;
}

/** What {@link SwapDirtyLog.share} hands a producer worker. */
export interface SwapDirtyLogShareData {
  readonly slots: readonly MemslotInfo[];
  /** Each slot's memory (`slotBuffer`), in the order of `slots`. */
  readonly buffers: readonly SharedArrayBuffer[];
  readonly lock: { readonly buffer: SharedArrayBuffer; readonly byteOffset: number };
}

/**
 * The producer side of a swap log on another thread (the factory {@link SwapDirtyLog.share}
 * names): a {@link DirtySink} whose `markDirty` sets bits, summary, count and line list in the
 * slot's active buffer under the shared lock for read. It never harvests: swaps stay on the
 * thread that owns the log.
 */
export function attachSwapDirtyLog(data: SwapDirtyLogShareData): DirtySink {
  if (data.slots.length !== data.buffers.length) {
    throw new DirtytrackError(
      'invalid-argument',
      `attachSwapDirtyLog: ${data.slots.length} slots but ${data.buffers.length} buffers`,
      { component: COMPONENT, field: 'buffers' },
    );
  }
  const log = createSwapDirtyLog({
    slots: data.slots,
    lock: attachRWLock(data.lock.buffer, data.lock.byteOffset),
    buffers: new Map(data.slots.map((s, i) => [s.id, data.buffers[i] as SharedArrayBuffer])),
  });
  return { markDirty: (slot, offsets, count, vcpu) => void log.markDirty(slot, offsets, count, vcpu) };
}

/** A dirty log (classic, no manual protect) with a summary and an O(1) double-buffered harvest. */
export interface SwapDirtyLog extends Reporter, SwappableDirtyLog {
  readonly kind: 'swap';
  /** The buffer producers write now (tests and diagnostics; do not clear it behind the log's back). */
  active(slot: number): DirtyLogBuffer;
  /** Always present here: undefined unless the log was created with `migrationBuffer: true`. */
  migrationBuffer(slot: number): DirtyLogBuffer | undefined;
  /** The memory holding a slot's buffers and its active index: post it to producer workers. */
  slotBuffer(slot: number): ArrayBufferLike;
  /**
   * What a producer worker passes to `import(module)[factory](data)` to get a {@link DirtySink}
   * over this log's slots (`SharedReporter.share()`, the live plane's vCPU workers): the slots,
   * their memories and the lock. Needs a log created with a `lock` (producers on other threads
   * set bits under it for read, and the swap takes it for write).
   */
  share(): AttachSpec;
  /**
   * ORs `src` (a whole-slot bitmap) into the active buffer word-wise, keeping summary and count:
   * the bulk producer path (`set_dirty_lebitmap` of a reaped ring into the slot bitmap). Returns
   * the pages newly set.
   */
  markDirtyBitmap(slot: number, src: Bitmap): number;
}

/**
 * A slot dirty log that keeps, per buffer, a one-bit-per-64-bit-word summary and a count of the
 * pages set, and harvests by swapping buffers instead of copying them
 * (`../../shared/reference/qemu.md` §1.1, layer A; the `'fused'` strategy of §5 of the
 * architecture).
 *
 * **Why the swap is safe under concurrency — who may write a buffer while it is swapped:**
 * exactly one buffer per slot is *active*. A producer reads which buffer is active *inside* its
 * read-locked section and sets bits only there ({@link markDirty}: `Atomics.or` of the bit, then
 * of the summary bit when its 32-bit word was zero, then `Atomics.add` of the count — producers
 * race only each other, on the same buffer). {@link swapDirtyLog} takes the same lock for write,
 * installs the caller's zeroed spare as active and returns the old buffer. When the write lock is
 * released no producer is inside a read section that looked up the old buffer, and every later
 * producer finds the spare — so from that instant **nobody but the collector can write the
 * returned buffer**, and the collector may read, merge and zero it with plain loads and stores.
 * A write that raced the swap is in exactly one of the two buffers: the old one (harvested now)
 * if its read section ended before the swap, the new one (next harvest) otherwise. Without a
 * lock there is no other thread, and the same argument holds trivially.
 *
 * Each slot has two buffers (three with `migrationBuffer`) and an active index in one memory
 * ({@link SwapDirtyLog.slotBuffer}), so producer workers attach with `buffers` and find the active
 * buffer by index.
 *
 * `getDirtyLog` is the same swap followed by a copy into `out` and a zeroing of the old buffer
 * (the inactive one is zero between GETs), so the `'xchg'` and `'rwlock-memcpy'` strategies read
 * it like any source. A slot is harvested either with `getDirtyLog` or with `spareBuffer` +
 * `swapDirtyLog`, never both: the swap collector keeps the inactive buffer as its spare. `lastHarvestCost()` counts the 64-bit words visited through the summary as
 * copied words, and nothing as exchanged: the swap replaces the per-word `xchg`.
 */
export function createSwapDirtyLog(options: SwapDirtyLogOptions = {}): SwapDirtyLog {
  const { rearmer, lock, buffers } = options;
  const allocator = options.allocator ?? defaultBitmapAllocator;
  const shared = options.shared ?? (lock !== undefined || buffers !== undefined);
  if (buffers !== undefined && !shared) {
    throw new DirtytrackError(
      'invalid-argument',
      'buffers are shared memory: they cannot be used with shared: false',
      {
        component: COMPONENT,
        field: 'buffers',
      },
    );
  }
  interface Slot {
    readonly info: MemslotInfo;
    readonly memory: ArrayBufferLike;
    /** `index[0]`: which of `bufs` is active (read and written with Atomics). */
    readonly index: Int32Array;
    /** Two buffers, or three with `migrationBuffer`. */
    readonly bufs: readonly DirtyLogBuffer[];
    /** Who harvests this slot: one collector style per slot (see getDirtyLog). */
    harvester: 'get' | 'swap' | undefined;
    /** Swaps so far: with three buffers the collector's two are handed out only before the first. */
    swaps: number;
    touched: Uint32Array;
  }
  const slots = new Map<number, Slot>();
  let last: HarvestCost = { xchgWords: 0, copyWords: 0, rearmedPages: 0, tlbFlushes: 0, ringEntries: 0 };

  const slotOf = (slot: number, op: string): Slot => {
    const s = slots.get(slot);
    if (s === undefined) {
      throw new DirtytrackError('invalid-state', `${op}: slot ${slot} has no dirty log (ENOENT)`, {
        component: COMPONENT,
        field: 'slot',
        errno: 'ENOENT',
      });
    }
    return s;
  };
  const activeOf = (s: Slot): DirtyLogBuffer => s.bufs[Atomics.load(s.index, 0)] as DirtyLogBuffer;
  const readLocked = <T>(run: () => T): T => {
    if (lock === undefined) return run();
    lock.readLock();
    try {
      return run();
    } finally {
      lock.readUnlock();
    }
  };
  const beforeFirstSwap = (s: Slot, op: string): void => {
    // Once swaps began, the collector's spare and migration bitmap rotate through all three
    // buffers: handing one out (zeroed) again could zero the bitmap the collector is sending from.
    if (s.bufs.length === 3 && s.swaps > 0) {
      throw new DirtytrackError(
        'invalid-state',
        `${op}: slot ${s.info.id} has been swapped already; its collector owns its other buffers`,
        { component: COMPONENT, field: 'slot' },
      );
    }
  };
  const harvester = (s: Slot, style: 'get' | 'swap'): void => {
    s.harvester ??= style;
    if (s.harvester !== style) {
      // The swap collector keeps the inactive buffer (non-zero) as its spare between syncs; a GET
      // in between would hand it to producers.
      throw new DirtytrackError(
        'invalid-state',
        `slot ${s.info.id} is harvested with ${s.harvester === 'get' ? 'getDirtyLog' : 'swapDirtyLog'}; do not mix the two`,
        { component: COMPONENT, field: 'slot' },
      );
    }
  };

  /** The O(1) part of every harvest: under the write lock, buffer `next` becomes active. */
  const swap = (s: Slot, next: number): DirtyLogBuffer => {
    if (lock !== undefined) lock.writeLock();
    try {
      const i = Atomics.load(s.index, 0);
      Atomics.store(s.index, 0, next);
      return s.bufs[i] as DirtyLogBuffer;
    } finally {
      if (lock !== undefined) lock.writeUnlock();
    }
  };

  /** Re-arms the pages of a harvested buffer; returns the pages re-armed. */
  const rearm = (s: Slot, taken: DirtyLogBuffer): number => {
    if (rearmer === undefined || (taken.counts[0] as number) === 0) return 0;
    // The touched hint (O(dirty words)) pays off only while the buffer is sparse; past 1/8 of
    // the words a whole-slot pass costs no more than writing the list.
    const words32 = taken.bitmap.words.length;
    const sum = taken.summary;
    let n = 0;
    const cap = Math.max(64, Math.ceil(words32 / 8));
    for (let j = 0; j < sum.length && n <= cap; j++) {
      let bits = sum[j] as number;
      while (bits !== 0) {
        const low = bits & -bits;
        bits ^= low;
        const i = (j * 32 + (31 - Math.clz32(low))) * 2;
        if (n + 2 > s.touched.length) {
          const grown = new Uint32Array(Math.min(cap + 2, s.touched.length * 2 + 2));
          grown.set(s.touched.subarray(0, n));
          s.touched = grown;
        }
        s.touched[n++] = i;
        s.touched[n++] = i + 1;
        if (n > cap) break;
      }
    }
    return n > cap
      ? rearmer.rearm(s.info.id, taken.bitmap)
      : rearmer.rearm(s.info.id, taken.bitmap, { words: s.touched, count: n });
  };

  const log: SwapDirtyLog = {
    kind: 'swap',
    addSlot(info) {
      if (slots.has(info.id)) {
        throw new DirtytrackError(
          'invalid-state',
          `addSlot: slot ${info.id} already has a dirty log (EEXIST)`,
          {
            component: COMPONENT,
            field: 'slot',
            errno: 'EEXIST',
          },
        );
      }
      const given = buffers?.get(info.id);
      if (buffers !== undefined && given === undefined) {
        throw new DirtytrackError('invalid-argument', `addSlot: no buffer for slot ${info.id} in buffers`, {
          component: COMPONENT,
          field: 'buffers',
        });
      }
      let memory: ArrayBufferLike;
      let base: number;
      let l: SlotLayout;
      if (given !== undefined) {
        // The creating log wrote where its buffers start and how many there are (header words 1, 2).
        const header = given.byteLength >= HEADER_BYTES ? new Int32Array(given, 0, 3) : undefined;
        base = header?.[1] ?? 0;
        const count = header?.[2] ?? 0;
        if (count !== 2 && count !== 3) {
          throw new DirtytrackError(
            'invalid-argument',
            `addSlot: the buffer for slot ${info.id} is not a slot buffer (its header names ${count} buffers; pass slotBuffer(${info.id}) of the creating log)`,
            { component: COMPONENT, field: 'buffers' },
          );
        }
        l = slotLayout(info.pages, count);
        const need = (base >= HEADER_BYTES ? base : CACHE_LINE) + l.bytes;
        if (given.byteLength < need) {
          throw new DirtytrackError(
            'invalid-argument',
            `addSlot: the buffer for slot ${info.id} has ${given.byteLength} bytes, its ${info.pages} pages need ${need}`,
            { component: COMPONENT, field: 'buffers' },
          );
        }
        if (base < HEADER_BYTES || base % 8 !== 0) {
          throw new DirtytrackError(
            'invalid-argument',
            `addSlot: the buffer for slot ${info.id} is not a slot buffer (its header names no layout; pass slotBuffer(${info.id}) of the creating log)`,
            { component: COMPONENT, field: 'buffers' },
          );
        }
        memory = given;
      } else {
        // The header (active index, base, count) at 0, the buffers from the region's start or,
        // when the header is in the way, one 4 KiB stride into it: so they start on a page of
        // memory when the allocator knows addresses (see slotLayout for why).
        l = slotLayout(info.pages, options.migrationBuffer === true ? 3 : 2);
        const a = allocator.allocate(STRIDE_ALIGN + l.bytes, { shared });
        memory = a.buffer;
        base = a.byteOffset >= HEADER_BYTES ? a.byteOffset : a.byteOffset + STRIDE_ALIGN;
        const header = new Int32Array(memory, 0, 3);
        header[1] = base;
        header[2] = l.count;
      }
      const buf = (b: number): DirtyLogBuffer => ({
        bitmap: Bitmap.wrap(memory, info.pages, base + b * l.stride),
        summary: new Uint32Array(memory, base + b * l.stride + l.summary, l.summaryWords),
        counts: new Uint32Array(memory, base + b * l.stride + l.counts, 2),
        lines: new Uint32Array(memory, base + b * l.stride + l.lines, l.linesCap),
      });
      slots.set(info.id, {
        info,
        memory,
        index: new Int32Array(memory, 0, 1),
        bufs: Array.from({ length: l.count }, (_, b) => buf(b)),
        harvester: undefined,
        swaps: 0,
        touched: new Uint32Array(64),
      });
    },
    markDirty(slot, offsets, count) {
      const s = slotOf(slot, 'markDirty');
      if (!(Number.isInteger(count) && count >= 0 && count <= offsets.length)) {
        throw new DirtytrackError(
          'invalid-argument',
          `markDirty: count ${count} is outside [0, ${offsets.length}]`,
          {
            component: COMPONENT,
            field: 'count',
          },
        );
      }
      if (count === 0) return;
      readLocked(() => {
        // Looked up inside the read section: see the concurrency note above.
        const { bitmap, summary, counts, lines } = activeOf(s) as Required<DirtyLogBuffer>;
        const words = bitmap.words;
        const bits = bitmap.bits;
        let fresh = 0;
        for (let i = 0; i < count; i++) {
          const p = offsets[i] as number;
          if (!(p < bits)) {
            throw new DirtytrackError(
              'out-of-range',
              `markDirty: page ${p} is outside slot ${slot} (${bits} pages)`,
              {
                component: COMPONENT,
                field: 'offsets',
              },
            );
          }
          const bit = 1 << (p & 31);
          const old = Atomics.or(words, p >>> 5, bit);
          if ((old & bit) !== 0) continue;
          fresh++;
          if (old === 0) {
            const k = p >>> 6;
            markSummary(summary, counts, lines, k);
          }
        }
        if (fresh > 0) Atomics.add(counts, 0, fresh);
      });
    },
    markDirtyBitmap(slot, src) {
      const s = slotOf(slot, 'markDirtyBitmap');
      if (src.bits !== s.info.pages) {
        throw new DirtytrackError(
          'invalid-argument',
          `markDirtyBitmap: bitmap covers ${src.bits} pages, slot ${slot} has ${s.info.pages}`,
          { component: COMPONENT, field: 'src' },
        );
      }
      return readLocked(() => {
        const { bitmap, summary, counts, lines } = activeOf(s) as Required<DirtyLogBuffer>;
        const dst = bitmap.words;
        const w = src.words;
        let fresh = 0;
        for (let i = 0; i < w.length; i += 2) {
          const lo = w[i] as number;
          const hi = w[i + 1] as number;
          if (lo === 0 && hi === 0) continue;
          const olo = lo === 0 ? (dst[i] as number) : Atomics.or(dst, i, lo);
          const ohi = hi === 0 ? (dst[i + 1] as number) : Atomics.or(dst, i + 1, hi);
          fresh += popcount32(lo & ~olo) + popcount32(hi & ~ohi);
          const k = i >>> 1;
          markSummary(summary, counts, lines, k);
        }
        if (fresh > 0) Atomics.add(counts, 0, fresh);
        return fresh;
      });
    },
    active(slot) {
      return activeOf(slotOf(slot, 'active'));
    },
    slotBuffer(slot) {
      return slotOf(slot, 'slotBuffer').memory;
    },
    share() {
      if (lock === undefined || !shared) {
        throw new DirtytrackError(
          'invalid-state',
          'share: producers on other threads need a log created with a lock (and shared memory)',
          { component: COMPONENT, field: 'lock' },
        );
      }
      const all = [...slots.values()];
      const data: SwapDirtyLogShareData = {
        slots: all.map((s) => s.info),
        buffers: all.map((s) => s.memory as SharedArrayBuffer),
        lock: { buffer: lock.buffer, byteOffset: lock.byteOffset },
      };
      return { module: '@dirtytrack/qemu-layers', factory: 'attachSwapDirtyLog', data };
    },
    spareBuffer(slot) {
      const s = slotOf(slot, 'spareBuffer');
      harvester(s, 'swap');
      beforeFirstSwap(s, 'spareBuffer');
      const spare = s.bufs[(Atomics.load(s.index, 0) + 1) % s.bufs.length] as DirtyLogBuffer;
      zeroBuffer(spare);
      return spare;
    },
    migrationBuffer(slot) {
      const s = slotOf(slot, 'migrationBuffer');
      if (s.bufs.length < 3) return undefined;
      harvester(s, 'swap');
      beforeFirstSwap(s, 'migrationBuffer');
      const b = s.bufs[(Atomics.load(s.index, 0) + 2) % 3] as DirtyLogBuffer;
      zeroBuffer(b);
      return b;
    },
    swapDirtyLog(slot, spare) {
      const s = slotOf(slot, 'swapDirtyLog');
      harvester(s, 'swap');
      const next = spareIndex(spare, s.info, s.bufs, Atomics.load(s.index, 0));
      // Its line list starts empty: a stale entry could name a line twice.
      Atomics.store((s.bufs[next] as DirtyLogBuffer).counts, 1, 0);
      rearmer?.syncDirtyLog?.(slot); // Kick vCPUs first (outside the lock): PML buffers drain in.
      const taken = swap(s, next);
      s.swaps++;
      const rearmedPages = rearm(s, taken);
      const reported = taken.counts[0] as number;
      last = {
        xchgWords: 0,
        copyWords: taken.summary.length / 2,
        rearmedPages,
        tlbFlushes: reported > 0 && rearmer !== undefined ? 1 : 0,
        ringEntries: 0,
      };
      return taken;
    },
    getDirtyLog(slot, out) {
      const s = slotOf(slot, 'getDirtyLog');
      if (out.bits !== s.info.pages) {
        throw new DirtytrackError(
          'invalid-argument',
          `getDirtyLog: buffer covers ${out.bits} pages, slot ${slot} has ${s.info.pages}`,
          { component: COMPONENT, field: 'out', errno: 'EINVAL' },
        );
      }
      harvester(s, 'get');
      rearmer?.syncDirtyLog?.(slot); // as KVM_GET_DIRTY_LOG: CPU-buffered state (PML) first
      // GETs alternate buffers 0 and 1 (a third, if any, stays unused).
      const taken = swap(s, Atomics.load(s.index, 0) === 0 ? 1 : 0);
      const rearmedPages = rearm(s, taken);
      const reported = taken.counts[0] as number;
      out.words.set(taken.bitmap.words);
      zeroBuffer(taken); // the inactive buffer is zero between GETs
      last = {
        xchgWords: 0,
        copyWords: out.words.length / 2,
        rearmedPages,
        tlbFlushes: reported > 0 && rearmer !== undefined ? 1 : 0,
        ringEntries: 0,
      };
      return reported;
    },
    lastHarvestCost() {
      return last;
    },
  };
  for (const slot of options.slots ?? []) log.addSlot(slot);
  return log;
}

/**
 * A producer's summary bit for 64-bit word `k` (its word just went non-zero). The producer whose
 * bit turns the line's summary byte from zero to non-zero — only one can — appends the line to
 * the buffer's list while there is room; `counts[1]` keeps counting past it, which marks the list
 * incomplete.
 */
function markSummary(summary: Uint32Array, counts: Uint32Array, lines: Uint32Array, k: number): void {
  const sum = Atomics.or(summary, k >>> 5, 1 << (k & 31));
  if (((sum >>> (k & 24)) & 0xff) === 0) {
    const n = Atomics.add(counts, 1, 1);
    if (n < lines.length) lines[n] = k >>> 3;
  }
}

/**
 * Zeroes a buffer the caller owns, visiting only the words its summary names; runs of full
 * summary words are cleared with one `fill` (a memset). A buffer in the memory of
 * `createWasmBitmapAllocator` is zeroed the same way by the `zero_summary` kernel.
 */
export function zeroBuffer(buf: DirtyLogBuffer): void {
  const w = buf.bitmap.words;
  const sum = buf.summary;
  const kernel = mergeKernelFor(w.buffer);
  if (kernel !== undefined && sum.buffer === w.buffer) {
    kernel.zero(w, sum);
    buf.counts[0] = 0;
    return;
  }
  for (let j = 0; j < sum.length; j++) {
    let bits = sum[j] as number;
    if (bits === 0) continue;
    if (bits === 0xffffffff) {
      let e = j + 1;
      while (e < sum.length && (sum[e] as number) === 0xffffffff) e++;
      w.fill(0, j * 64, Math.min(w.length, e * 64));
      sum.fill(0, j, e);
      j = e - 1;
      continue;
    }
    sum[j] = 0;
    while (bits !== 0) {
      const low = bits & -bits;
      bits ^= low;
      const i = (j * 32 + (31 - Math.clz32(low))) * 2;
      w[i] = 0;
      w[i + 1] = 0;
    }
  }
  buf.counts[0] = 0;
}

/** Which of the slot's buffers `spare` is, checked: not the active one, and zeroed. */
function spareIndex(
  spare: DirtyLogBuffer,
  info: MemslotInfo,
  bufs: readonly DirtyLogBuffer[],
  activeIndex: number,
): number {
  if (spare === bufs[activeIndex]) {
    throw new DirtytrackError(
      'invalid-argument',
      `swapDirtyLog: the spare is slot ${info.id}'s active buffer`,
      {
        component: COMPONENT,
        field: 'spare',
      },
    );
  }
  const index = bufs.indexOf(spare);
  if (index < 0) {
    throw new DirtytrackError(
      'invalid-argument',
      `swapDirtyLog: the spare is not one of slot ${info.id}'s buffers (get it from spareBuffer, then pass back what each swap returned)`,
      { component: COMPONENT, field: 'spare' },
    );
  }
  if ((spare.counts[0] as number) !== 0) {
    throw new DirtytrackError(
      'invalid-argument',
      `swapDirtyLog: the spare still holds ${spare.counts[0]} pages; hand over a zeroed buffer`,
      { component: COMPONENT, field: 'spare' },
    );
  }
  return index;
}

/** Where a slot's buffers lie, from where they start (the slot memory's header says where). */
interface SlotLayout {
  /** Buffers: 2, or 3 with `migrationBuffer`. */
  readonly count: number;
  readonly bytes: number;
  /** Bytes from one buffer to the next; buffer b's bitmap starts at `b * stride`. */
  readonly stride: number;
  readonly summaryWords: number;
  /** Entries of each buffer's line list. */
  readonly linesCap: number;
  /** Offsets of the summary, the counts and the line list within a buffer. */
  readonly summary: number;
  readonly counts: number;
  readonly lines: number;
}

/**
 * Each buffer is its bitmap, summary and count, padded to a whole cache line so every bitmap
 * starts on one.
 */
function slotLayout(pages: number, count: number): SlotLayout {
  const bitmapBytes = Bitmap.byteLength(pages);
  const summaryWords = Math.ceil(bitmapBytes / 8 / 32);
  const summaryBytes = Math.ceil((summaryWords * 4) / 8) * 8;
  // Up to one line in 32 (a list an eighth of the summary's size). Past that a merge visits so
  // many lines that the summary scan (16 lines per SIMD step) is a small share of it.
  const linesCap = Math.max(16, Math.ceil((summaryWords * 4) / 32));
  // A whole number of 4 KiB pages, so the buffers are congruent modulo 4096: a copy between two
  // of them (the merge's run of full summary words) would otherwise have its loads falsely wait
  // on its own earlier stores one line below in address bits 0-11 ("4K aliasing") — a 256 MiB
  // copy between buffers 64 bytes apart modulo 4096 took 84 ms against 26 ms congruent.
  const stride = Math.ceil((bitmapBytes + summaryBytes + 8 + linesCap * 4) / STRIDE_ALIGN) * STRIDE_ALIGN;
  return {
    count,
    bytes: count * stride,
    stride,
    summaryWords,
    linesCap,
    summary: bitmapBytes,
    counts: bitmapBytes + summaryBytes,
    lines: bitmapBytes + summaryBytes + 8,
  };
}

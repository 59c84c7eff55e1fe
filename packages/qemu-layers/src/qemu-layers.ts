import {
  Bitmap,
  createRWLock,
  DEFAULT_COST_MODEL,
  DirtytrackError,
  popcount32,
  type CostModel,
  type DirtyLogSource,
  type HarvestCost,
  type LoggingControl,
  type MemslotInfo,
  type MigrationBitmap,
  type RWLock,
  type SyncResult,
} from '@dirtytrack/core';
import { defaultBitmapAllocator, type BitmapAllocator } from './huge-pages.js';
import { createRamListDirtyMemory, DIRTY_MEMORY_MIGRATION, type RamListDirtyMemory } from './dirty-memory.js';
import { mergeKernelFor } from './kernels/wasm-allocator.js';
import {
  isSwappableDirtyLog,
  zeroBuffer,
  type DirtyLogBuffer,
  type SwappableDirtyLog,
} from './swap-dirty-log.js';
import type { VfioTracker } from './vfio-tracker.js';
import type { VhostLog } from './vhost-log.js';

/**
 * How dirty bits travel from the producers (layer A) to the migration bitmap (layer C):
 *
 * - `'xchg'` — QEMU today (reference/qemu.md §1.2–1.4): slot bitmap → `ram_list.dirty_memory`
 *   MIGRATION client by atomic OR (`set_dirty_lebitmap`), vhost/VFIO logs taken with `xchg` per
 *   64-bit word and ORed into the same client, then client → `bmap` with one `xchg` per non-zero
 *   word (`bits = xchg(w, 0); new = bits & ~bmap; bmap |= bits`).
 * - `'rwlock-memcpy'` — the slides' proposal ("Bitmap Copy - Summary"): the same three layers,
 *   but collected under an {@link RWLock} held for write with plain loads, stores and zeroing (no
 *   atomics). Correct only because every producer that shares memory with another thread (vhost,
 *   VFIO device logs) sets bits under the same lock held for read.
 * - `'fused'` — one hop: layer-A words (and vhost/VFIO words) straight into `bmap`, skipping zero
 *   64-bit words, with a one-bit-per-64-bit-word summary of which `bmap` words hold bits so the
 *   search for dirty pages skips clean words. Layer B is not touched. When the KVM source is a
 *   {@link SwappableDirtyLog} (a double-buffered producer with its own summary and page count,
 *   `createSwapDirtyLog`), the harvest is an O(1) buffer swap and the hop visits only the words
 *   the producer's summary names: see {@link createQemuLayers}.
 *
 * All three leave identical `bmap` contents and `migration_dirty_pages` for the same writes.
 */
export type SyncStrategy = 'xchg' | 'rwlock-memcpy' | 'fused';

export const SYNC_STRATEGIES: readonly SyncStrategy[] = ['xchg', 'rwlock-memcpy', 'fused'];

/** `x-clear-bitmap-shift` default and QEMU's clamp range. */
export const CLEAR_BITMAP_SHIFT_DEFAULT = 18;
export const CLEAR_BITMAP_SHIFT_MIN = 6;
export const CLEAR_BITMAP_SHIFT_MAX = 31;

export interface QemuLayersOptions {
  /** The KVM producer: its dirty log, logging switch, and the slot mapping the one RAMBlock. */
  kvm: { source: DirtyLogSource; logging: LoggingControl; slot: MemslotInfo };
  /** Default `'xchg'`. */
  strategy?: SyncStrategy;
  /** `x-clear-bitmap-shift`: log2 of pages per clear_bmap chunk. Default 18, clamped to 6..31. */
  clearBitmapShift?: number;
  vhost?: VhostLog;
  vfio?: VfioTracker;
  /** Default {@link DEFAULT_COST_MODEL}. */
  costModel?: CostModel;
  /**
   * The lock of `'rwlock-memcpy'`. Default: the vhost/VFIO log's lock if they have one, else a new
   * one. Every shared producer must use this same lock.
   */
  lock?: RWLock;
  /**
   * Where `bmap` gets its memory; e.g. `createHugePageAllocator()` to back it with 2 MiB
   * pages (give the swap log the same one). Default: a plain `ArrayBuffer`.
   */
  allocator?: BitmapAllocator;
}

export interface QemuLayersStats {
  readonly syncs: number;
  /** 64-bit words exchanged or atomically ORed by the hops (not the harvest below). */
  readonly xchgWords: number;
  /** 64-bit words copied or scanned plainly by the hops. */
  readonly copiedWords: number;
  /** Chunks whose producer bits were cleared lazily (one `clearDirtyLog` each). */
  readonly lazyClears: number;
  /** Pages those clears re-armed. */
  readonly clearedPages: number;
  /** What the lazy clears cost the sending thread (ns), priced from their HarvestCost. */
  readonly clearCostNs: number;
  /**
   * `'fused'` over a swap log with a migration buffer: syncs that found `bmap` empty and adopted
   * the harvested buffer as `bmap` (no word copied).
   */
  readonly adoptions: number;
  /**
   * `'fused'` syncs that merged a harvested buffer into bmap with the WebAssembly kernel (both in
   * one memory of `createWasmBitmapAllocator`); the others merged in JS or adopted.
   */
  readonly kernelMerges: number;
  /** Of those, the merges split between two threads (`createWasmBitmapAllocator`'s `parallel`). */
  readonly parallelMerges: number;
}

export interface QemuLayers extends MigrationBitmap {
  readonly strategy: SyncStrategy;
  /** Layer B. */
  readonly dirtyMemory: RamListDirtyMemory;
  /** 1 bit per 2^clearBitmapShift pages: the chunk's producer bits still need clearing. */
  readonly clearBmap: Bitmap;
  /** The shift after QEMU's clamp. */
  readonly clearBitmapShift: number;
  /** The `'rwlock-memcpy'` lock (undefined for the other strategies). */
  readonly lock: RWLock | undefined;
  /**
   * `'fused'` only: bit k set iff 64-bit word k of `bmap` is non-zero. Like `bmap`, a different
   * array after a sync that adopted a buffer.
   */
  readonly summary: Uint32Array | undefined;
  /** First dirty page at or after `from`, or -1 (uses the summary under `'fused'`). */
  findNextDirty(from?: number): number;
  stats(): QemuLayersStats;
}

const COMPONENT = 'qemu-layers';

/** A producer log other than KVM's: bits `[0, pages)` of `words` = RAM pages `start + i`. */
interface DeviceLog {
  readonly words: Uint32Array;
  readonly start: number;
  readonly pages: number;
  /** Scratch for the xchg strategy's hop into layer B. */
  readonly taken: Uint32Array;
}

/**
 * QEMU's three dirty-bitmap layers (reference/qemu.md §1) for one RAMBlock mapped by one KVM slot,
 * as a {@link MigrationBitmap}. The RAMBlock sits at ram_addr page 0 of layer B; the code keeps
 * the ram_addr offset explicit so more blocks can be added later.
 *
 * Lazy clear (§1.3): with a manual-protect source (one with `clearDirtyLog`) every sync sets all
 * of `clearBmap` (`clear_bmap_set` after the sync into layer C — so after `setup()` alone it is
 * still all zero, as in QEMU where the first sync sets it), and `clearSent` clears a chunk's
 * producer bits — only the pages the last sync reported — just before the first page of that
 * chunk is sent. Without manual protect `getDirtyLog` already cleared them and `clearBmap` stays 0.
 *
 * `sync().costNs` = the harvest's own HarvestCost, priced, + the hops: xchg/atomic-OR 64-bit words
 * × `bitmapXchgNsPerWord` + scanned/copied 64-bit words × `bitmapCopyNsPerWord`:
 * - xchg: slot words scanned + non-zero slot words ORed; per device log its words scanned +
 *   non-zero words exchanged + the same words ORed into layer B; the RAMBlock's layer-B words
 *   scanned + non-zero ones exchanged.
 * - rwlock-memcpy: the same words scanned, nothing atomic (copy and zero are part of the scan).
 * - fused: slot words scanned; device-log words scanned + non-zero ones exchanged (the device
 *   sets them concurrently); no layer-B pass. VFIO 'none' costs one scan of the RAM's words
 *   (fused, rwlock) or of its words ORed atomically (xchg). With a swappable source: the
 *   summaries scanned (one 64-bit word per 64 summary bits) + the words they name.
 *
 * **`'fused'` over a {@link SwappableDirtyLog}** — the sync never copies the slot bitmap:
 * 1. The collector keeps one zeroed spare buffer. It swaps it for the producer's active buffer
 *    (`swapDirtyLog`, O(1) under the producer's write lock); from then on no producer can write
 *    the returned buffer T (see `createSwapDirtyLog` for why), so it is read with plain loads.
 * 2. T is merged into `bmap` through T's summary: where `bmap`'s own summary says a region of
 *    32 64-bit words is empty and T's says all 32 are dirty, the region is copied with one
 *    `TypedArray.set` (a memcpy); elsewhere word by word, `bmap |= T`. `migration_dirty_pages`
 *    grows by T's page count (the producer counts the bits it newly set) minus the pages already
 *    set in `bmap` — counted only in words where `bmap` was non-zero — so nothing is popcounted
 *    in the common case of a sync after a finished round.
 * 3. T is not zeroed: it becomes the next spare. It is a subset of `bmap` (bmap |= T), and
 *    `clearSent` clears a sent page in both, so when the round has sent everything the spare is
 *    already zero; otherwise the next sync zeroes only the words its summary still names,
 *    which are a subset of `bmap`'s unsent words. A 100%-dirty sync after a finished round thus
 *    costs one memcpy of the bitmap, and any sync O(summary + dirty words).
 * 4. **Adoption** — when the log keeps a third buffer (`createSwapDirtyLog({ migrationBuffer:
 *    true })`), `bmap` lives in it, and a sync that finds `bmap` empty (`migration_dirty_pages`
 *    = 0: the round sent everything, QEMU's usual sync point) does no step 2 at all: T *becomes*
 *    `bmap` (its summary and count are exact, the producers kept them), and the emptied `bmap`
 *    becomes the spare. The sync is then O(1) whatever the share dirty — it touches no dirty
 *    word; the sender reads T's words where it would have read their copy. `bmap` (and
 *    `summary`) are therefore a different object after such a sync: read them anew after every
 *    `sync()`. A sync into a non-empty `bmap` merges as in step 2.
 * Producer bits are never cleared before they reach `bmap`: the producer never clears, and T
 * leaves the producer only to be ORed into `bmap` (or to become it) in the same sync.
 */
export function createQemuLayers(options: QemuLayersOptions): QemuLayers {
  const { source, logging, slot } = options.kvm;
  const strategy = options.strategy ?? 'xchg';
  if (!SYNC_STRATEGIES.includes(strategy)) {
    throw new DirtytrackError(
      'invalid-argument',
      `strategy must be one of ${SYNC_STRATEGIES.join(', ')}, got ${String(strategy)}`,
      { component: COMPONENT, field: 'strategy' },
    );
  }
  const shiftGiven = options.clearBitmapShift ?? CLEAR_BITMAP_SHIFT_DEFAULT;
  if (!Number.isInteger(shiftGiven)) {
    throw new DirtytrackError('invalid-argument', `clearBitmapShift ${shiftGiven} is not an integer`, {
      component: COMPONENT,
      field: 'clearBitmapShift',
    });
  }
  const shift = Math.min(CLEAR_BITMAP_SHIFT_MAX, Math.max(CLEAR_BITMAP_SHIFT_MIN, shiftGiven));
  const chunkPages = 2 ** shift;
  const costs = options.costModel ?? DEFAULT_COST_MODEL;
  const { vhost, vfio } = options;
  const pages = slot.pages;
  const manualProtect = typeof source.clearDirtyLog === 'function';
  const swapSource: SwappableDirtyLog | undefined =
    strategy === 'fused' && isSwappableDirtyLog(source) ? source : undefined;
  /**
   * Where `bmap` lives when the swap log keeps it (`migrationBuffer: true`): one of the log's
   * buffers, so a sync that finds `bmap` empty can adopt the harvested buffer instead.
   */
  let bmapBuf: DirtyLogBuffer | undefined = swapSource?.migrationBuffer?.(slot.id);

  const lock =
    strategy === 'rwlock-memcpy'
      ? (options.lock ?? vhost?.lock ?? (vfio?.kind === 'device' ? vfio.lock : undefined) ?? createRWLock())
      : undefined;

  const deviceLogs: DeviceLog[] = [];
  const addLog = (
    words: Uint32Array,
    start: number,
    n: number,
    what: string,
    producerLock: RWLock | undefined,
  ) => {
    if (start + n > pages) {
      throw new DirtytrackError(
        'out-of-range',
        `${what}: pages [${start}, ${start + n}) exceed the RAM's ${pages}`,
        {
          component: COMPONENT,
          field: what,
        },
      );
    }
    if (lock !== undefined && producerLock !== lock) {
      throw new DirtytrackError(
        'invalid-argument',
        `${what}: 'rwlock-memcpy' collects with plain copies, so the producer must set bits under the layers' lock (create it with { lock })`,
        { component: COMPONENT, field: 'lock' },
      );
    }
    deviceLogs.push({ words, start, pages: n, taken: new Uint32Array(words.length) });
  };
  if (vhost !== undefined) addLog(vhost.words, 0, vhost.pages, 'vhost', vhost.lock);
  if (vfio?.kind === 'device')
    for (const r of vfio.ranges) addLog(r.words, r.start, r.pages, 'vfio', vfio.lock);
  const vfioNone = vfio?.kind === 'none';

  // The RAMBlock (one for now) and its layer-C state.
  const ramOffset = 0; // ram_addr page of the block; 64-aligned by construction
  const dirtyMemory = createRamListDirtyMemory(ramOffset + pages);
  const ownBmap = (): Bitmap => {
    const at = (options.allocator ?? defaultBitmapAllocator).allocate(Bitmap.byteLength(pages));
    return Bitmap.wrap(at.buffer, pages, at.byteOffset);
  };
  /** Changes only when a sync adopts a harvested buffer (see bmapBuf). */
  let bmap = bmapBuf?.bitmap ?? ownBmap();
  /** The slot's `dirty_bmap`: what the last getDirtyLog reported, minus what has been cleared. */
  const slotBmap = Bitmap.create(pages);
  const clearBmap = Bitmap.create(pages === 0 ? 0 : Math.ceil(pages / chunkPages));
  const clearMask = Bitmap.create(Math.min(chunkPages, pages));
  const words64 = bmap.words.length / 2;
  let summary =
    strategy === 'fused' ? (bmapBuf?.summary ?? new Uint32Array(Math.ceil(words64 / 32))) : undefined;
  /** The swap path's spare: a subset of bmap between syncs (clearSent clears both). */
  let spare: DirtyLogBuffer | undefined = swapSource?.spareBuffer(slot.id);
  const allOnes = vfioNone ? Bitmap.create(pages) : undefined;
  allOnes?.setAll();
  const n32 = Math.ceil(pages / 32);
  const tail = pages % 32 === 0 ? 0xffffffff : (1 << (pages % 32)) - 1;

  /** The swap path's buffer taken from the producer during the current sync. */
  let taken: DirtyLogBuffer | undefined;
  let dirtyPages = 0;
  let active = false;
  let syncs = 0;
  let xchgTotal = 0;
  let copyTotal = 0;
  let lazyClears = 0;
  let clearedPages = 0;
  let clearCostNs = 0;
  let adoptions = 0;
  let kernelMerges = 0;
  let parallelMerges = 0;
  // Per-sync counters.
  let xchg = 0;
  let copy = 0;

  const price = (h: HarvestCost): number =>
    h.xchgWords * costs.bitmapXchgNsPerWord +
    h.copyWords * costs.bitmapCopyNsPerWord +
    h.rearmedPages * costs.rearmNsPerPage +
    h.tlbFlushes * costs.tlbFlushNs +
    h.ringEntries * costs.ringEntryNs;

  const fail = (message: string): DirtytrackError =>
    new DirtytrackError('invalid-state', message, { component: COMPONENT });

  // ---- layer C helpers ----------------------------------------------------------------------

  /** `bmap[t] |= bits`; returns the 0→1 transitions and keeps the summary. */
  const orBmap = (t: number, bits: number): number => {
    const b = bmap.words;
    const old = b[t] as number;
    const fresh = bits & ~old;
    if (fresh === 0) return 0;
    b[t] = old | bits;
    if (summary !== undefined) {
      const k = t >>> 1;
      summary[k >>> 5] = (summary[k >>> 5] as number) | (1 << (k & 31));
    }
    return popcount32(fresh);
  };
  /** ORs a 32-bit word whose bit 0 is RAM page `page0` (any alignment) into bmap. */
  const orBmapAt = (page0: number, bits: number): number => {
    const s = page0 & 31;
    const t = page0 >>> 5;
    if (s === 0) return orBmap(t, bits);
    let n = orBmap(t, bits << s);
    const hi = bits >>> (32 - s);
    if (hi !== 0) n += orBmap(t + 1, hi);
    return n;
  };

  // ---- layer B helpers (MIGRATION client) -------------------------------------------------------
  const BLOCK_SHIFT = 16;
  const BLOCK_MASK = (1 << BLOCK_SHIFT) - 1;

  /** Plain OR of a 32-bit word whose bit 0 is ram_addr page `page0` into the MIGRATION client. */
  const orLayerBPlain = (blocks: readonly Uint32Array[], page0: number, bits: number): void => {
    const s = page0 & 31;
    const g = page0 >>> 5;
    const lo = s === 0 ? bits : bits << s;
    if (lo !== 0) {
      const blk = blocks[g >>> BLOCK_SHIFT] as Uint32Array;
      blk[g & BLOCK_MASK] = (blk[g & BLOCK_MASK] as number) | lo;
    }
    if (s !== 0) {
      const hi = bits >>> (32 - s);
      if (hi !== 0) {
        const blk = blocks[(g + 1) >>> BLOCK_SHIFT] as Uint32Array;
        blk[(g + 1) & BLOCK_MASK] = (blk[(g + 1) & BLOCK_MASK] as number) | hi;
      }
    }
  };

  /**
   * MIGRATION client → bmap for the RAMBlock: xchg (atomic) or plain copy + zero. Walks layer B
   * one block at a time (a tight loop over one typed array, no per-word block lookup).
   */
  const layerBToBmap = (atomic: boolean): number => {
    const blocks = dirtyMemory.blocks(DIRTY_MEMORY_MIGRATION);
    const base = ramOffset >>> 5; // even: the block starts on a 64-bit word
    const b = bmap.words;
    let fresh = 0;
    for (let i = 0; i < n32;) {
      const g = base + i;
      const blk = blocks[g >>> BLOCK_SHIFT] as Uint32Array;
      const j0 = g & BLOCK_MASK;
      const n = Math.min(n32 - i, BLOCK_MASK + 1 - j0);
      for (let k = 0; k < n; k += 2) {
        copy++;
        const j = j0 + k;
        const has1 = k + 1 < n;
        const lo0 = blk[j] as number;
        const hi0 = has1 ? (blk[j + 1] as number) : 0;
        if (lo0 === 0 && hi0 === 0) continue;
        const t = i + k;
        const loMask = t === n32 - 1 ? tail : 0xffffffff;
        const hiMask = t + 1 === n32 - 1 ? tail : 0xffffffff;
        let lo: number;
        let hi: number;
        if (atomic) {
          xchg++;
          lo =
            lo0 === 0
              ? 0
              : (loMask === 0xffffffff ? Atomics.exchange(blk, j, 0) : Atomics.and(blk, j, ~loMask)) & loMask;
          hi =
            hi0 === 0
              ? 0
              : (hiMask === 0xffffffff ? Atomics.exchange(blk, j + 1, 0) : Atomics.and(blk, j + 1, ~hiMask)) &
                hiMask;
        } else {
          lo = lo0 & loMask;
          hi = hi0 & hiMask;
          blk[j] = lo0 & ~loMask;
          if (has1) blk[j + 1] = hi0 & ~hiMask;
        }
        if (summary === undefined) {
          // No summary to keep (xchg, rwlock-memcpy): OR and count inline.
          if (lo !== 0) {
            const old = b[t] as number;
            fresh += popcount32(lo & ~old);
            b[t] = old | lo;
          }
          if (hi !== 0) {
            const old = b[t + 1] as number;
            fresh += popcount32(hi & ~old);
            b[t + 1] = old | hi;
          }
        } else {
          if (lo !== 0) fresh += orBmap(t, lo);
          if (hi !== 0) fresh += orBmap(t + 1, hi);
        }
      }
      i += n;
    }
    return fresh;
  };

  // ---- the strategies -------------------------------------------------------------------------

  /** Takes a device log's non-zero 64-bit words: `Atomics.exchange` or a plain read + zero. */
  const takeLog = (
    log: DeviceLog,
    atomic: boolean,
    each: (i: number, lo: number, hi: number) => void,
  ): number => {
    const w = log.words;
    let reported = 0;
    for (let i = 0; i < w.length; i += 2) {
      copy++;
      let lo = w[i] as number;
      let hi = w[i + 1] as number;
      if (lo === 0 && hi === 0) continue;
      if (atomic) {
        xchg++;
        if (lo !== 0) lo = Atomics.exchange(w, i, 0);
        if (hi !== 0) hi = Atomics.exchange(w, i + 1, 0);
      } else {
        w[i] = 0;
        w[i + 1] = 0;
      }
      reported += popcount32(lo) + popcount32(hi);
      each(i, lo, hi);
    }
    return reported;
  };

  const syncXchg = (): { fresh: number; reported: number } => {
    const words = slotBmap.words;
    copy += words.length / 2;
    xchg += dirtyMemory.setDirtyLebitmap(words, ramOffset, pages, [DIRTY_MEMORY_MIGRATION]);
    let reported = 0;
    for (const log of deviceLogs) {
      const taken = log.taken;
      reported += takeLog(log, true, (i, lo, hi) => {
        taken[i] = lo;
        taken[i + 1] = hi;
      });
      xchg += dirtyMemory.setDirtyLebitmap(taken, ramOffset + log.start, log.pages, [DIRTY_MEMORY_MIGRATION]);
      taken.fill(0);
    }
    if (allOnes !== undefined) {
      reported += pages;
      copy += words64;
      xchg += dirtyMemory.setDirtyLebitmap(allOnes.words, ramOffset, pages, [DIRTY_MEMORY_MIGRATION]);
    }
    return { fresh: layerBToBmap(true), reported };
  };

  const syncRwlock = (): { fresh: number; reported: number } => {
    const l = lock as RWLock;
    l.writeLock();
    try {
      const blocks = dirtyMemory.blocks(DIRTY_MEMORY_MIGRATION);
      const words = slotBmap.words;
      // Slot → layer B, plain OR, one layer-B block at a time (the slot starts 64-aligned).
      const base = ramOffset >>> 5;
      for (let i = 0; i < words.length;) {
        const g = base + i;
        const blk = blocks[g >>> BLOCK_SHIFT] as Uint32Array;
        const j0 = g & BLOCK_MASK;
        const n = Math.min(words.length - i, BLOCK_MASK + 1 - j0);
        copy += Math.ceil(n / 2);
        for (let k = 0; k < n; k++) {
          const w = words[i + k] as number;
          if (w !== 0) blk[j0 + k] = (blk[j0 + k] as number) | w;
        }
        i += n;
      }
      let reported = 0;
      for (const log of deviceLogs) {
        const base = ramOffset + log.start;
        reported += takeLog(log, false, (i, lo, hi) => {
          if (lo !== 0) orLayerBPlain(blocks, base + i * 32, lo);
          if (hi !== 0) orLayerBPlain(blocks, base + (i + 1) * 32, hi);
        });
      }
      if (allOnes !== undefined) {
        reported += pages;
        const ones = allOnes.words;
        for (let i = 0; i < ones.length; i += 2) {
          copy++;
          orLayerBPlain(blocks, ramOffset + i * 32, ones[i] as number);
          orLayerBPlain(blocks, ramOffset + (i + 1) * 32, ones[i + 1] as number);
        }
      }
      return { fresh: layerBToBmap(false), reported };
    } finally {
      l.writeUnlock();
    }
  };

  /** How many 64-byte groups mergeTaken gathers before {@link mergeLines} merges them. */
  const LINE_BATCH = 128;
  /**
   * Whether a 64-byte group of T and bmap sits on one cache line: known when the allocator
   * knows addresses (give the swap log the same allocator). Only what the first pass touches
   * depends on it, never the bits.
   */
  const linesAligned = (options.allocator ?? defaultBitmapAllocator).kind !== 'default';
  /** Per gathered group: the 32-bit index of its first word in T and bmap. */
  const lineAt = new Uint32Array(LINE_BATCH);
  /** Per gathered group: T's 8 summary bits, and bmap's (before the merge) shifted left by 8. */
  const lineBits = new Uint32Array(LINE_BATCH);
  /** Where the touch loads of mergeLines go, so the JIT cannot drop them. */
  const touchSink = new Int32Array(1);

  /**
   * `bmap |= T` over `n` gathered groups; returns the pages that were already set in bmap.
   * `zero`: zero each group in T once merged (a merge through T's line list leaves T all zero).
   *
   * Why two passes: at 1% dirty the groups lie far apart, each a cache miss (and on 4 KiB pages
   * a TLB miss) in both bitmaps. Merged one after another, the CPU waits for each group's misses
   * in turn — its reorder window spans only a couple of groups' work. The first pass only loads
   * one word of each line of the group in T and bmap: a few instructions per group,
   * loads that depend on nothing, so dozens of misses are in flight together. The second pass
   * then finds the groups in cache. The bits are those of the one-pass merge.
   */
  const mergeLines = (tw: Uint32Array, bw: Uint32Array, n: number, zero: boolean): number => {
    let sink = 0;
    if (linesAligned) {
      for (let q = 0; q < n; q++) {
        const i = lineAt[q] as number;
        sink = (sink + (tw[i] as number) + (bw[i] as number)) | 0;
      }
    } else {
      // A group may straddle two lines: touch its first and last dirty word.
      for (let q = 0; q < n; q++) {
        const i = lineAt[q] as number;
        const last = i + 2 * (31 - Math.clz32((lineBits[q] as number) & 0xff)) + 1;
        sink =
          (sink + (tw[i] as number) + (bw[i] as number) + (tw[last] as number) + (bw[last] as number)) | 0;
      }
    }
    touchSink[0] = sink;
    let overlap = 0;
    for (let q = 0; q < n; q++) {
      const i0 = lineAt[q] as number;
      const m = lineBits[q] as number;
      const old = m >>> 8;
      if (m === 0xff) {
        // All 8 words dirty in T over 8 zero words of bmap: a straight copy of 16 32-bit words.
        const e = Math.min(i0 + 16, bw.length);
        // Two loops rather than a test per word. (Zeroing in a second loop after the copy was no
        // faster, in three alternating pairs.)
        if (zero) {
          for (let i = i0; i < e; i++) {
            bw[i] = tw[i] as number;
            tw[i] = 0;
          }
        } else {
          for (let i = i0; i < e; i++) bw[i] = tw[i] as number;
        }
        continue;
      }
      let bits = m & 0xff;
      while (bits !== 0) {
        const low = bits & -bits;
        bits ^= low;
        const i = i0 + 2 * (31 - Math.clz32(low));
        const lo = tw[i] as number;
        const hi = tw[i + 1] as number;
        if (zero) {
          tw[i] = 0;
          tw[i + 1] = 0;
        }
        if ((old & low) === 0) {
          // bmap's word is zero (its summary bit is clear): a copy, nothing to count.
          bw[i] = lo;
          bw[i + 1] = hi;
          continue;
        }
        const blo = bw[i] as number;
        const bhi = bw[i + 1] as number;
        overlap += popcount32(lo & blo) + popcount32(hi & bhi);
        bw[i] = blo | lo;
        bw[i + 1] = bhi | hi;
      }
    }
    return overlap;
  };

  /**
   * `bmap |= T` through T's summary (the swap path), or only through the lines T's producers
   * listed when that list is complete; returns the 0→1 transitions, from T's page count minus the
   * overlap counted where `bmap` was non-zero.
   *
   * Through the list, T is also zeroed as it is merged (words, summary bytes, count), so it goes
   * back to the producers as the next spare with nothing left to clear. Each of its lines is in
   * cache right then; zeroing it at the next sync instead meant scanning its whole summary for
   * what the round had not sent (4 MiB at 8T: ~0.45 ms of a ~3.3 ms 1% sync, measured). Without
   * the list (a dense T) it is left as before: sending the round clears it.
   */
  const mergeTaken = (t: DirtyLogBuffer): number => {
    const tw = t.bitmap.words;
    const ts = t.summary;
    const bw = bmap.words;
    const bs = summary as Uint32Array;
    // T's line list, when the producers kept it complete: the lines to visit, no summary scan.
    const listed = t.counts[1];
    const list =
      t.lines !== undefined && listed !== undefined && listed <= t.lines.length
        ? t.lines.subarray(0, listed)
        : undefined;
    // What is read to find the dirty lines (in 64-bit words): the list, or the whole summary.
    copy += Math.ceil((list === undefined ? ts.length : list.length) / 2);
    // Through the list, T leaves zeroed (both merges below do it).
    const zero = list !== undefined;
    const kernel = mergeKernelFor(tw.buffer);
    if (kernel !== undefined && bw.buffer === tw.buffer && bs.buffer === tw.buffer) {
      // T, bmap and its summary in one WebAssembly memory: the same merge as below, in the kernel.
      const r = kernel.merge(tw, ts, bw, bs, list);
      copy += r.words;
      kernelMerges++;
      if (r.threads === 2) parallelMerges++;
      const fresh = (t.counts[0] as number) - r.overlap;
      if (zero) t.counts[0] = 0;
      return fresh;
    }
    let overlap = 0;
    let n = 0;
    /** T's 64-byte group m/8 of summary word j: its summary byte `t8` (non-zero), bmap's `b8`. */
    const group = (j: number, m: number, t8: number, b8: number): void => {
      if ((t8 & (t8 - 1)) === 0) {
        // One dirty word in the group: merged at once. Lone words are what evenly spread
        // writes leave, a stride the hardware prefetcher follows; batching them only adds work.
        const i = (j * 32 + m + 31 - Math.clz32(t8)) * 2;
        const lo = tw[i] as number;
        const hi = tw[i + 1] as number;
        if (zero) {
          tw[i] = 0;
          tw[i + 1] = 0;
        }
        if ((b8 & t8) === 0) {
          bw[i] = lo;
          bw[i + 1] = hi;
        } else {
          const blo = bw[i] as number;
          const bhi = bw[i + 1] as number;
          overlap += popcount32(lo & blo) + popcount32(hi & bhi);
          bw[i] = blo | lo;
          bw[i + 1] = bhi | hi;
        }
        return;
      }
      lineAt[n] = (j * 32 + m) * 2;
      lineBits[n] = t8 | (b8 << 8);
      if (++n === LINE_BATCH) {
        overlap += mergeLines(tw, bw, n, zero);
        n = 0;
      }
    };
    if (list !== undefined) {
      for (let q = 0; q < list.length; q++) {
        const line = list[q] as number;
        const j = line >>> 2;
        const m = (line & 3) * 8;
        const t8 = ((ts[j] ?? 0) >>> m) & 0xff;
        if (t8 === 0) continue;
        const bsj = bs[j] as number;
        bs[j] = bsj | (t8 << m);
        ts[j] = (ts[j] as number) & ~(0xff << m);
        copy += popcount32(t8);
        group(j, m, t8, (bsj >>> m) & 0xff);
      }
    } else {
      for (let j = 0; j < ts.length; j++) {
        const tb = ts[j] as number;
        if (tb === 0) continue;
        if (tb === 0xffffffff && (bs[j] as number) === 0) {
          // 32 dirty 64-bit words over 32 clean ones: copy the whole run in one memcpy.
          let e = j + 1;
          while (e < ts.length && (ts[e] as number) === 0xffffffff && (bs[e] as number) === 0) e++;
          const end = Math.min(tw.length, e * 64);
          bw.set(tw.subarray(j * 64, end), j * 64);
          bs.fill(0xffffffff, j, e);
          copy += (end - j * 64) / 2;
          j = e - 1;
          continue;
        }
        if (tb === 0xffffffff && (bs[j] as number) === 0xffffffff) {
          // 32 dirty words over 32 non-empty ones (a sync into a still-full bmap): OR the run in
          // one tight loop.
          let e = j + 1;
          while (e < ts.length && (ts[e] as number) === 0xffffffff && (bs[e] as number) === 0xffffffff) e++;
          const end = Math.min(tw.length, e * 64);
          for (let i = j * 64; i < end; i++) {
            const w = tw[i] as number;
            if (w === 0) continue;
            const old = bw[i] as number;
            overlap += popcount32(w & old);
            bw[i] = old | w;
          }
          copy += (end - j * 64) / 2;
          j = e - 1;
          continue;
        }
        const bsj = bs[j] as number;
        bs[j] = bsj | tb;
        copy += popcount32(tb);
        for (let m = 0; m < 32; m += 8) {
          const t8 = (tb >>> m) & 0xff;
          if (t8 !== 0) group(j, m, t8, (bsj >>> m) & 0xff);
        }
      }
    }
    if (n > 0) overlap += mergeLines(tw, bw, n, zero);
    const fresh = (t.counts[0] as number) - overlap;
    if (zero) t.counts[0] = 0;
    return fresh;
  };

  /** `adopted`: the pages of a harvested buffer just adopted as bmap (nothing left to move). */
  const syncFused = (adopted: number | undefined): { fresh: number; reported: number } => {
    let fresh = 0;
    if (adopted !== undefined) fresh += adopted;
    else if (taken !== undefined) fresh += mergeTaken(taken);
    else {
      const words = slotBmap.words;
      for (let i = 0; i < words.length; i += 2) {
        copy++;
        const lo = words[i] as number;
        const hi = words[i + 1] as number;
        if (lo === 0 && hi === 0) continue;
        if (lo !== 0) fresh += orBmap(i, lo);
        if (hi !== 0) fresh += orBmap(i + 1, hi);
      }
    }
    let reported = 0;
    for (const log of deviceLogs) {
      const start = log.start;
      reported += takeLog(log, true, (i, lo, hi) => {
        if (lo !== 0) fresh += orBmapAt(start + i * 32, lo);
        if (hi !== 0) fresh += orBmapAt(start + (i + 1) * 32, hi);
      });
    }
    if (allOnes !== undefined) {
      reported += pages;
      const ones = allOnes.words;
      for (let i = 0; i < ones.length; i += 2) {
        copy++;
        fresh += orBmap(i, ones[i] as number) + orBmap(i + 1, ones[i + 1] as number);
      }
    }
    return { fresh, reported };
  };

  /**
   * The adoption (swap path with a migration buffer, `bmap` empty): the harvested buffer T
   * becomes `bmap` — its summary is exact and its count is its popcount, as the producers keep
   * them — and the emptied `bmap` (all zero, summary zero: `clearSent` keeps both exact) becomes
   * the next spare. Returns T's pages, all new.
   */
  const adopt = (t: DirtyLogBuffer): number => {
    const old = bmapBuf as DirtyLogBuffer;
    old.counts[0] = 0;
    bmapBuf = t;
    bmap = t.bitmap;
    summary = t.summary;
    spare = old;
    adoptions++;
    return t.counts[0] as number;
  };

  const layers: QemuLayers = {
    pages,
    get bmap() {
      return bmap;
    },
    strategy,
    dirtyMemory,
    clearBmap,
    clearBitmapShift: shift,
    lock,
    get summary() {
      return summary;
    },
    get dirtyPages() {
      return dirtyPages;
    },
    setup() {
      if (active) throw fail('setup: migration bitmap already set up');
      const armed = logging.enableLogging(slot);
      active = true;
      bmap.setAll();
      dirtyPages = pages;
      if (summary !== undefined) {
        summary.fill(0);
        for (let k = 0; k < words64; k++) summary[k >>> 5] = (summary[k >>> 5] as number) | (1 << (k & 31));
      }
      return armed * costs.enableLoggingNsPerPage;
    },
    sync(): SyncResult {
      if (!active) throw fail('sync: call setup() first');
      xchg = 0;
      copy = 0;
      let reported: number;
      let adopted: number | undefined;
      if (swapSource !== undefined) {
        // Layer A by swap: the spare must be zero; it is a subset of bmap's unsent words.
        const s = spare as DirtyLogBuffer;
        if ((s.counts[0] as number) !== 0) {
          copy += Math.ceil(s.summary.length / 2);
          zeroBuffer(s);
        }
        taken = swapSource.swapDirtyLog(slot.id, s);
        reported = taken.counts[0] as number;
        if (bmapBuf !== undefined && dirtyPages === 0) {
          adopted = adopt(taken);
          taken = undefined;
        }
      } else {
        // Layer A: KVM_GET_DIRTY_LOG into the slot's dirty_bmap.
        reported = source.getDirtyLog(slot.id, slotBmap);
      }
      const harvest = source.lastHarvestCost();
      const moved =
        strategy === 'xchg' ? syncXchg() : strategy === 'fused' ? syncFused(adopted) : syncRwlock();
      if (taken !== undefined) {
        spare = taken;
        taken = undefined;
      }
      reported += moved.reported;
      dirtyPages += moved.fresh;
      // clear_bmap_set over the block: the producer bits just synced still need clearing.
      if (manualProtect) clearBmap.setAll();
      syncs++;
      xchgTotal += xchg;
      copyTotal += copy;
      const costNs = price(harvest) + xchg * costs.bitmapXchgNsPerWord + copy * costs.bitmapCopyNsPerWord;
      return { newDirty: moved.fresh, reported, costNs };
    },
    clearSent(word, mask) {
      const w = bmap.words[word];
      if (w === undefined || (w & mask) >>> 0 !== mask >>> 0) {
        throw new DirtytrackError(
          'internal',
          `clearSent: word ${word} does not hold all of mask 0x${(mask >>> 0).toString(16)}`,
          { component: COMPONENT },
        );
      }
      if (mask === 0) return;
      // migration_clear_memory_region_dirty_bitmap: must precede reading any page of the chunk.
      const chunk = Math.floor((word * 32) / chunkPages);
      if (manualProtect && clearBmap.testAndClear(chunk)) clearChunk(chunk);
      const nw = w & ~mask;
      bmap.words[word] = nw;
      dirtyPages -= popcount32(mask);
      if (summary !== undefined) {
        const other = bmap.words[word ^ 1] ?? 0;
        if (nw === 0 && other === 0) {
          const k = word >>> 1;
          summary[k >>> 5] = (summary[k >>> 5] as number) & ~(1 << (k & 31));
        }
      }
      if (spare !== undefined) {
        // Keep the spare a subset of bmap: a sent page leaves both.
        const sw = spare.bitmap.words;
        const old = sw[word] as number;
        const hit = old & mask;
        if (hit !== 0) {
          const left = old & ~hit;
          sw[word] = left;
          spare.counts[0] = (spare.counts[0] as number) - popcount32(hit);
          if (left === 0 && (sw[word ^ 1] as number) === 0) {
            const k = word >>> 1;
            spare.summary[k >>> 5] = (spare.summary[k >>> 5] as number) & ~(1 << (k & 31));
          }
        }
      }
    },
    cleanup() {
      if (active) logging.disableLogging(slot.id);
      active = false;
    },
    findNextDirty(from = 0) {
      if (summary === undefined) return bmap.findNextSet(from);
      if (!(from >= 0) || from >= pages) return -1;
      let k = Math.floor(from / 64);
      // Finish the partial 64-bit word first, then jump through the summary.
      for (;;) {
        const sw = k >>> 5;
        if (sw >= summary.length) return -1;
        const bits = (summary[sw] as number) & (0xffffffff << (k & 31));
        if (bits === 0) {
          k = (sw + 1) * 32;
          continue;
        }
        k = sw * 32 + (31 - Math.clz32(bits & -bits));
        const p = bmap.findNextSet(Math.max(from, k * 64));
        if (p >= 0 && p < (k + 1) * 64) return p;
        k++;
      }
    },
    stats() {
      return {
        syncs,
        xchgWords: xchgTotal,
        copiedWords: copyTotal,
        lazyClears,
        clearedPages,
        clearCostNs,
        adoptions,
        kernelMerges,
        parallelMerges,
      };
    },
  };

  /**
   * `migration_clear_memory_region_dirty_bitmap` → `kvm_log_clear_one_slot`: clear, in the
   * producer, only the pages the last sync reported in this chunk (64-aligned; the last chunk
   * stops at the slot end), then drop them from the slot's dirty_bmap.
   */
  const clearChunk = (chunk: number): void => {
    const clear = source.clearDirtyLog;
    if (clear === undefined) return;
    const first = chunk * chunkPages;
    const n = Math.min(chunkPages, pages - first);
    const src = slotBmap.words;
    const dst = clearMask.words;
    const w0 = first / 32;
    const nw = Math.ceil(n / 64) * 2;
    for (let j = 0; j < nw; j++) dst[j] = src[w0 + j] as number;
    const rearmed = clear.call(source, slot.id, first, n, clearMask);
    src.fill(0, w0, w0 + nw);
    dst.fill(0, 0, nw);
    const h = source.lastHarvestCost();
    lazyClears++;
    clearedPages += rearmed;
    clearCostNs += price(h);
  };

  return layers;
}

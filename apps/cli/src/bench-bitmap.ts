import {
  Bitmap,
  createRng,
  DirtytrackError,
  formatSize,
  PAGE_SIZE,
  type DirtyLogSource,
  type HarvestCost,
  type LoggingControl,
  type MemslotInfo,
} from '@dirtytrack/core';
import {
  anonHugePagesKiB,
  createBitmapKernels,
  createHugePageAllocator,
  createQemuLayers,
  createSwapDirtyLog,
  createWasmBitmapAllocator,
  defaultBitmapAllocator,
  type BitmapAllocator,
  type QemuLayers,
  type SyncStrategy,
} from '@dirtytrack/qemu-layers';
import { fourDigits, medianMs, medianOf, pairedMedians } from './bench-timing.js';

/**
 * `dirtytrack bench bitmap`: the slides' bitmap-sync cost for huge VMs, measured side by side in
 * one run on this machine. One plain memcpy of the bitmap; one pass of per-word atomic exchange;
 * a full `migration_bitmap_sync` through QEMU's layers with each strategy (`xchg` = QEMU today,
 * `rwlock-memcpy` = the slides' proposal, `fused` = one hop with a summary) at 100% dirty and,
 * for `fused`, at 1% dirty in two patterns; the WebAssembly SIMD OR-and-zero kernel; and the
 * slides' cache-resident case (a 4 KiB bitmap, xchg vs copy). Medians of `reps` after warm-up.
 *
 * The two 1% patterns, each with the same share of pages dirty:
 * - `fused-1pct` (**clustered**, {@link clusteredOnePct}): 1% of the pages as randomly placed,
 *   non-overlapping, 2 MiB-aligned runs of 512 pages (seeded), as a guest with spatial locality
 *   dirties them (hot sets, THP-backed heaps). A run is 64 bytes of bitmap, one cache line, so
 *   the sync touches 1% of the bitmap's cache lines.
 * - `fused-1pct-spread` ({@link spreadOnePct}): every 100th 64-bit word wholly dirty, evenly
 *   spread. That touches one cache line in 12.5 of both bitmaps, so its floor is a large share
 *   of a memcpy whatever the sync does.
 * Each has a floor row (`touch-1pct-floor`, `touch-1pct-spread-floor`): only copying the dirty
 * words from the pattern into another bitmap, no summary, no bookkeeping — in memory from the
 * `fused` cases' allocator, so a floor and the syncs above it pay the same TLB misses.
 *
 * Every sync is timed whole (`layers.sync()`: harvest, hops, bookkeeping) from the state QEMU
 * syncs in: the round has sent every page (bmap empty), then the guest dirtied the share under
 * test. `xchg` and `rwlock-memcpy` harvest with `KVM_GET_DIRTY_LOG`'s whole-bitmap copy; `fused`
 * harvests a double-buffered producer (`createSwapDirtyLog`) by swapping buffers:
 * - `fused`, `fused-1pct`, `fused-1pct-spread`: the log keeps bmap in its third buffer
 *   (`migrationBuffer: true`), so a sync after a finished round adopts the harvested buffer as
 *   bmap — O(1), no dirty word touched, whatever the share dirty.
 * - `fused-merge`, `fused-merge-1pct`, `fused-merge-1pct-spread` (and the larger runs and the
 *   4 KiB-page rows): a log without it, so the harvested buffer is merged into bmap through its
 *   summary — O(summary + dirty words), the cost of any sync into a bmap that is not empty.
 * - `fused-merge-wasm`, `fused-merge-wasm-1pct`, `fused-merge-wasm-1pct-spread`: the same merge
 *   in the WebAssembly kernel (`merge_summary`), the log in a `WebAssembly.Memory`
 *   (`createWasmBitmapAllocator`) with its migration buffer, and one page of the pattern left
 *   unsent so that bmap is not empty and the sync merges.
 * Sending the round and the guest's writes are set up untimed; KVM's re-protection of the pages
 * is not counted for any strategy (the bench's producers need none). `fused-full-bmap` is the
 * worst case for `fused`: a 100%-dirty sync into a bmap still full (nothing sent since the last
 * sync), which merges. After each sync case the bench checks, untimed, that bmap holds exactly
 * the pages dirtied.
 */
export interface BitmapBenchOptions {
  memory: number;
  reps: number;
  /** Seed of the clustered 1% pattern's run placement. Default {@link DEFAULT_PATTERN_SEED}. */
  seed?: number;
  /**
   * The allocator of the `fused` cases' bitmaps (bmap and the swap log). Default
   * `createHugePageAllocator()`: 2 MiB pages where the machine allows, plain buffers elsewhere.
   * The floor rows use it too. The `small-pages` rows always use plain buffers, side by side.
   */
  allocator?: BitmapAllocator;
  onStep?: (step: string) => void;
}

export interface BitmapBenchResult {
  memory: string;
  'bitmap-bytes': number;
  reps: number;
  /** Seed of the clustered 1% pattern. */
  seed: number;
  /** Pages dirty in each 1% pattern (clustered: whole runs of 512; spread: whole 64-bit words). */
  '1pct-dirty-pages': { clustered: number; spread: number };
  'memcpy-ms': number;
  'xchg-ms': number;
  'xchg-vs-memcpy': number;
  /**
   * Each sync case, with a memcpy of the bitmap timed just before every repetition
   * (`memcpy-ms`, its median), so `vs-memcpy` compares the two under the same machine load.
   */
  strategies: Record<
    | SyncStrategy
    | 'fused-1pct'
    | 'fused-1pct-spread'
    | 'fused-full-bmap'
    | 'fused-merge'
    | 'fused-merge-1pct'
    | 'fused-merge-1pct-spread'
    | 'fused-merge-wasm'
    | 'fused-merge-wasm-1pct'
    | 'fused-merge-wasm-1pct-spread',
    SideBySideRow
  >;
  /** `fused` at 1% clustered over `fused` at 100% (the acceptance wants < 0.1), both adopting. */
  'fused-1pct-vs-fused': number;
  /** `fused` at 1% evenly spread over `fused` at 100%. */
  'fused-1pct-spread-vs-fused': number;
  /** The same two ratios when the harvested buffer is merged (no migration buffer). */
  'fused-merge-1pct-vs-fused-merge': number;
  'fused-merge-1pct-spread-vs-fused-merge': number;
  /**
   * The same two when the merge runs in the WebAssembly kernel (`createWasmBitmapAllocator`: the
   * swap log, with a migration buffer, in a `WebAssembly.Memory`; one page left unsent so the
   * sync merges instead of adopting).
   */
  'fused-merge-wasm-1pct-vs-fused-merge-wasm': number;
  'fused-merge-wasm-1pct-spread-vs-fused-merge-wasm': number;
  /** The kind the WebAssembly rows' allocator got (`default`, JS merging, where the engine lacks it). */
  'fused-merge-wasm-allocator': BitmapAllocator['kind'];
  /**
   * The share of the WebAssembly merge's syncs (warm-ups included) that the allocator split between
   * the calling thread and its helper (`createWasmBitmapAllocator`'s `parallel`: line lists of
   * 8,192 lines or more).
   */
  'fused-merge-wasm-split': { '100pct': number; '1pct': number; '1pct-spread': number };
  /**
   * How the `fused` cases' bitmaps were allocated (`huge-pages`: advised `MADV_HUGEPAGE`), and
   * the growth of the process's `AnonHugePages` (KiB) over the `fused` 100% case — its bmap and
   * swap log (null off Linux).
   */
  allocator: { kind: BitmapAllocator['kind']; 'anon-huge-pages-kib': number | null };
  /** The merging `fused` 100% and 1% cases again on plain buffers (4 KiB pages), for comparison. */
  'small-pages': {
    'fused-merge': SideBySideRow;
    'fused-merge-1pct': SideBySideRow;
    'fused-merge-1pct-spread': SideBySideRow;
    'fused-merge-1pct-vs-fused-merge': number;
    'fused-merge-1pct-spread-vs-fused-merge': number;
    /** `touch-1pct-loads` on plain buffers: what the random lines cost without huge pages. */
    'touch-1pct-loads': SideBySideRow;
  };
  /**
   * The merging `fused` at 1% clustered in the {@link LARGER_RUN_PAGES} runs that fit the guest,
   * same seed: each beside its memcpy, and over the merging `fused` at 100%.
   */
  'fused-merge-1pct-larger-runs': (SideBySideRow & { 'run-pages': number; 'vs-fused-merge': number })[];
  /**
   * The floor under a clustered 1% sync that writes the bits into bmap: only touching those words
   * (read the pattern's, write another bitmap's, 16 32-bit words per run — 1% of the cache lines
   * of each), no summary, no bookkeeping, beside a memcpy; in fused's two passes (a load per run
   * in both bitmaps for 128 runs, then their copy). Both bitmaps come from the `fused` cases'
   * allocator (huge pages by default), as do the other floor rows.
   */
  'touch-1pct-floor': SideBySideRow;
  /**
   * Below that floor: one load of each clustered run's line in the pattern's bitmap and in
   * another, nothing written — the cache and TLB misses alone.
   */
  'touch-1pct-loads': SideBySideRow;
  /** The same floor for the spread pattern: every 100th 64-bit word, 1 cache line in 12.5 of each. */
  'touch-1pct-spread-floor': SideBySideRow;
  /** The WebAssembly SIMD OR-and-zero kernel over the same bitmap (or the JS twin where SIMD is missing). */
  'wasm-or-and-zero': { ms: number; 'vs-memcpy': number; kind: string };
  'rwlock-memcpy-vs-xchg': number;
  /** In L1 (4 KiB), per-word xchg over a copy, both inside the kernel of `l1-kind`. */
  'l1-xchg-vs-memcpy': number;
  'l1-kind': string;
  /** The same in plain JS (`Atomics.exchange` per 32-bit word vs `TypedArray.set`): call overhead, not the CPU. */
  'l1-js-xchg-vs-set': number;
}

/** A case timed beside a memcpy of the bitmap: both medians and their ratio. */
export interface SideBySideRow {
  ms: number;
  'memcpy-ms': number;
  'vs-memcpy': number;
}

/** The clustered pattern's default seed: any fixed value, so runs are comparable. */
export const DEFAULT_PATTERN_SEED = 0x5eed;

/** Pages in a clustered run: a 2 MiB huge page of 4 KiB pages, 64 bytes (one cache line) of bitmap. */
export const RUN_PAGES = 512;

/**
 * The larger runs the bench also measures at 1% (16 MiB, 128 MiB, 1 GiB of guest memory: 512 B,
 * 4 KiB and 32 KiB of bitmap per run), to show how the 1% sync's cost falls with spatial locality.
 */
export const LARGER_RUN_PAGES = [4096, 32768, 262144] as const;

export interface ClusteredPattern {
  bitmap: Bitmap;
  /** Pages per run. */
  runPages: number;
  /** First page of each run, ascending; each a multiple of `runPages`. */
  runStarts: Uint32Array;
}

/**
 * 1% of `pages` dirty as randomly placed, non-overlapping, aligned runs of `runPages` pages
 * (default {@link RUN_PAGES}, 2 MiB): `max(1, round(pages / 100 / runPages))` runs, never more
 * than fit, chosen uniformly among the `floor(pages / runPages)` aligned slots with Floyd's
 * sampling from `createRng(seed)`, so the same seed gives the same bits.
 */
export function clusteredOnePct(pages: number, seed: number, runPages: number = RUN_PAGES): ClusteredPattern {
  if (!Number.isInteger(runPages) || runPages <= 0 || runPages % 64 !== 0) {
    throw new DirtytrackError('invalid-argument', `runPages: ${runPages} is not a positive multiple of 64`, {
      component: 'bench-bitmap',
      field: 'runPages',
    });
  }
  const bitmap = Bitmap.create(pages);
  const slots = Math.floor(pages / runPages);
  const runs = Math.min(slots, Math.max(1, Math.round(pages / 100 / runPages)));
  const rng = createRng(seed);
  const w = bitmap.words;
  const wordsPerRun = runPages / 32;
  // Floyd: each step adds exactly one new slot in [0, j]; j itself cannot be taken yet.
  for (let j = slots - runs; j < slots; j++) {
    const t = rng.nextInt(j + 1);
    const pick = (w[t * wordsPerRun] as number) !== 0 ? j : t;
    bitmap.setRange(pick * runPages, runPages);
  }
  const runStarts = new Uint32Array(runs);
  let n = 0;
  for (let k = 0; k < slots; k++) if ((w[k * wordsPerRun] as number) !== 0) runStarts[n++] = k * runPages;
  return { bitmap, runPages, runStarts };
}

/**
 * 1% of the 64-bit words wholly dirty, evenly spread: 64-bit words 0, 100, 200, … — one cache
 * line in 12.5 of the bitmap.
 */
export function spreadOnePct(pages: number): Bitmap {
  const bitmap = Bitmap.create(pages);
  const w = bitmap.words;
  for (let i = 0; i < w.length; i += 200) {
    w[i] = 0xffff_ffff;
    w[i + 1] = 0xffff_ffff;
  }
  return bitmap;
}

export function benchBitmap(options: BitmapBenchOptions): BitmapBenchResult {
  const pages = options.memory / PAGE_SIZE;
  const reps = options.reps;
  const seed = options.seed ?? DEFAULT_PATTERN_SEED;
  const slot: MemslotInfo = { id: 0, asId: 0, baseGfn: 0, pages };
  const full = Bitmap.create(pages);
  full.setAll();
  const clustered = clusteredOnePct(pages, seed);
  const spread = spreadOnePct(pages);
  const step = (s: string): void => options.onStep?.(s);

  step('memcpy');
  const dst = Bitmap.create(pages);
  const memcpyMs = medianMs(
    reps,
    () => {},
    () => dst.copyFrom(full),
  );

  step('xchg pass');
  const src = Bitmap.create(pages);
  const xchgMs = medianMs(
    reps,
    () => src.copyFrom(full),
    () => void src.collectInto(dst, 'xchg'),
  );

  const logging: LoggingControl = { enableLogging: (s) => s.pages, disableLogging: () => {} };
  const vs2 = (r: SideBySide): SideBySideRow => ({
    ms: r.ms,
    'memcpy-ms': r.memcpyMs,
    'vs-memcpy': fourDigits(r.ms / r.memcpyMs),
  });
  const copyBitmap = (): void => dst.copyFrom(full);
  /**
   * `xchg` and `rwlock-memcpy` syncs of `dirty`, interleaved: every repetition sends a round and
   * syncs both, each right after a memcpy, the two in alternating order. Their ratio is the median
   * of the per-repetition ratios — two syncs a second apart rather than two medians taken minutes
   * apart, which a busy spell on this shared machine had pushed from 4.5 to 2.4 in one run.
   */
  const strategiesMs = (dirty: Bitmap): { xchg: SideBySide; rwlock: SideBySide; ratio: number } => {
    step('sync xchg and rwlock-memcpy, interleaved');
    const both = (['xchg', 'rwlock-memcpy'] as const).map((strategy) => {
      const layers = createQemuLayers({ kvm: { source: scriptedSource(dirty), logging, slot }, strategy });
      layers.setup();
      return { strategy, layers, ms: [] as number[], memcpyMs: [] as number[] };
    });
    const ratios: number[] = [];
    for (let i = 0; i < 2 + reps; i++) {
      const order = i % 2 === 0 ? both : [...both].reverse();
      const times = order.map((c) => {
        sendRound(c.layers);
        const t0 = process.hrtime.bigint();
        copyBitmap();
        const t1 = process.hrtime.bigint();
        c.layers.sync();
        const t2 = process.hrtime.bigint();
        return { c, memcpyMs: Number(t1 - t0) / 1e6, ms: Number(t2 - t1) / 1e6 };
      });
      if (i < 2) continue; // warm-ups
      for (const t of times) {
        t.c.ms.push(t.ms);
        t.c.memcpyMs.push(t.memcpyMs);
      }
      const [x, w] = both.map((c) => times.find((t) => t.c === c)?.ms as number);
      ratios.push((x as number) / (w as number));
    }
    for (const c of both) expectBmap(c.layers, dirty, c.strategy);
    const [x, w] = both.map((c) => ({ ms: medianOf(c.ms), memcpyMs: medianOf(c.memcpyMs) }));
    return { xchg: x as SideBySide, rwlock: w as SideBySide, ratio: medianOf(ratios) };
  };
  const allocator = options.allocator ?? createHugePageAllocator();
  /** `adopt`: the log keeps bmap (a migration buffer), so a sync into an empty bmap adopts. */
  /**
   * `keep`: the round left one page of the pattern unsent, so bmap is not empty and the sync
   * merges even with a migration buffer (the WebAssembly merge needs bmap in the log's memory).
   */
  const fusedMs = (
    dirty: Bitmap,
    drain: boolean,
    name: string,
    adopt: boolean,
    alloc = allocator,
    keep = false,
  ): SideBySide & { split: number } => {
    step(`sync ${name}`);
    const source = createSwapDirtyLog({ slots: [slot], allocator: alloc, migrationBuffer: adopt });
    const layers = createQemuLayers({ kvm: { source, logging, slot }, strategy: 'fused', allocator: alloc });
    layers.setup();
    const kept = keep ? dirty.findNextSet(0) : -1;
    const r = sideBySide(
      reps,
      () => {
        if (drain) sendRound(layers, kept);
        source.markDirtyBitmap(slot.id, dirty);
      },
      copyBitmap,
      () => void layers.sync(),
    );
    expectBmap(layers, dirty, name);
    const { adoptions, syncs, kernelMerges, parallelMerges } = layers.stats();
    const adopts = adopt && drain && !keep;
    if (adoptions !== (adopts ? syncs : 0)) {
      throw new DirtytrackError('internal', `${name}: ${adoptions} of ${syncs} syncs adopted`, {
        component: 'bench-bitmap',
      });
    }
    if (kernelMerges !== (alloc.kind === 'wasm' && !adopts ? syncs : 0)) {
      throw new DirtytrackError(
        'internal',
        `${name}: ${kernelMerges} of ${syncs} syncs merged in the kernel`,
        {
          component: 'bench-bitmap',
        },
      );
    }
    return { ...r, split: fourDigits(parallelMerges / syncs) };
  };
  /** A zeroed bitmap from the `fused` cases' allocator (huge pages by default). */
  const allocated = (): Bitmap => {
    const a = allocator.allocate(Bitmap.byteLength(pages));
    return Bitmap.wrap(a.buffer, pages, a.byteOffset);
  };
  const floorSrc = allocated();
  floorSrc.copyFrom(clustered.bitmap);
  const floorDst = allocated();
  const spreadSrc = allocated();
  spreadSrc.copyFrom(spread);
  const floorSink = new Int32Array(1);
  /** One load of each clustered run's line in `a` and `b`: the least any sync that moves the bits can do. */
  const loadRuns = (a: Uint32Array, b: Uint32Array): void => {
    const starts = clustered.runStarts;
    let sink = 0;
    for (let r = 0; r < starts.length; r++) {
      const i = (starts[r] as number) >>> 5;
      sink = (sink + (a[i] as number) + (b[i] as number)) | 0;
    }
    floorSink[0] = sink;
  };
  step('1% floor (clustered)');
  const floor = sideBySide(
    reps,
    () => {},
    copyBitmap,
    () => {
      // As fused merges groups: 128 runs at a time, a load of each run's line in both bitmaps
      // first (independent, so the misses overlap), then the copy.
      const a = floorSrc.words;
      const b = floorDst.words;
      const starts = clustered.runStarts;
      const words = clustered.runPages / 32;
      let sink = 0;
      for (let r0 = 0; r0 < starts.length; r0 += 128) {
        const r1 = Math.min(starts.length, r0 + 128);
        for (let r = r0; r < r1; r++) {
          const i = (starts[r] as number) >>> 5;
          sink = (sink + (a[i] as number) + (b[i] as number)) | 0;
        }
        for (let r = r0; r < r1; r++) {
          const i = (starts[r] as number) >>> 5;
          for (let k = i; k < i + words; k++) b[k] = a[k] as number;
        }
      }
      floorSink[0] = sink;
    },
  );
  step('1% loads only (clustered)');
  const loadsFloor = sideBySide(
    reps,
    () => {},
    copyBitmap,
    () => loadRuns(floorSrc.words, floorDst.words),
  );
  step('1% loads only (clustered), 4 KiB pages');
  const smallLoadsDst = Bitmap.create(pages);
  const smallLoadsFloor = sideBySide(
    reps,
    () => {},
    copyBitmap,
    () => loadRuns(clustered.bitmap.words, smallLoadsDst.words),
  );
  step('1% floor (spread)');
  const spreadFloor = sideBySide(
    reps,
    () => {},
    copyBitmap,
    () => {
      const a = spreadSrc.words;
      const b = floorDst.words;
      for (let i = 0; i < a.length; i += 200) {
        b[i] = a[i] as number;
        b[i + 1] = a[i + 1] as number;
      }
    },
  );
  const { xchg: xchgSync, rwlock: rwlockSync, ratio: rwlockVsXchg } = strategiesMs(full);
  const hugeBefore = anonHugePagesKiB();
  const fusedSync = fusedMs(full, true, 'fused', true);
  const hugeAfter = anonHugePagesKiB();
  const fused1 = fusedMs(clustered.bitmap, true, 'fused 1% clustered', true);
  const fused1Spread = fusedMs(spread, true, 'fused 1% spread', true);
  const fusedFull = fusedMs(full, false, 'fused (bmap full)', true);
  const mergeSync = fusedMs(full, true, 'fused, merging', false);
  const merge1 = fusedMs(clustered.bitmap, true, 'fused 1% clustered, merging', false);
  const merge1Spread = fusedMs(spread, true, 'fused 1% spread, merging', false);
  const wasmAlloc = createWasmBitmapAllocator();
  const kernelSync = fusedMs(full, true, 'fused, merging in WebAssembly', true, wasmAlloc, true);
  const kernel1 = fusedMs(
    clustered.bitmap,
    true,
    'fused 1% clustered, merging in WebAssembly',
    true,
    wasmAlloc,
    true,
  );
  const kernel1Spread = fusedMs(
    spread,
    true,
    'fused 1% spread, merging in WebAssembly',
    true,
    wasmAlloc,
    true,
  );
  const largerRuns = LARGER_RUN_PAGES.filter((run) => run <= pages).map((run) => {
    const r = fusedMs(
      clusteredOnePct(pages, seed, run).bitmap,
      true,
      `fused 1% clustered, ${run}-page runs, merging`,
      false,
    );
    return { 'run-pages': run, ...vs2(r), 'vs-fused-merge': fourDigits(r.ms / mergeSync.ms) };
  });
  const small = defaultBitmapAllocator;
  const smallSync = fusedMs(full, true, 'fused, merging, 4 KiB pages', false, small);
  const small1 = fusedMs(clustered.bitmap, true, 'fused 1% clustered, merging, 4 KiB pages', false, small);
  const small1Spread = fusedMs(spread, true, 'fused 1% spread, merging, 4 KiB pages', false, small);

  step('wasm');
  // The two bitmaps 1 MiB + 4 KiB further apart than back to back: at 8T back to back is 256 MiB
  // exactly, and a power-of-two distance makes every pair of lines the kernel reads and writes
  // collide (measured: 240 ms against 52-60 ms with this gap, a memcpy 26-30 ms).
  const gapBytes = 2 ** 20 + 4096;
  const kernels = createBitmapKernels({ maxBytes: 2 * Bitmap.byteLength(pages) + gapBytes + 128 });
  const ksrc = kernels.alloc(pages);
  kernels.alloc(gapBytes * 8);
  const kdst = kernels.alloc(pages);
  const wasmMs = medianMs(
    reps,
    () => ksrc.copyFrom(full),
    () => void kernels.orAndZero(ksrc, kdst),
  );

  step('L1');
  // The slides' cache-resident case: a 4 KiB bitmap, per-word xchg against a copy, both looping
  // inside the WebAssembly kernel (i64.atomic.rmw.xchg vs memory.copy) so no JS call is timed;
  // repeated to cover as many words as the big bitmap.
  const l1Bits = 4096 * 8;
  const lk = createBitmapKernels({ maxBytes: 2 * Bitmap.byteLength(l1Bits) + 64 });
  const l1 = lk.alloc(l1Bits);
  const l1dst = lk.alloc(l1Bits);
  const loops = Math.max(1, Math.floor(full.words.length / l1.words.length));
  l1.setAll();
  const l1Copy = medianMs(
    reps,
    () => {},
    () => lk.copyRepeat(l1, l1dst, loops),
  );
  const l1Xchg = medianMs(
    reps,
    () => l1.setAll(),
    () => lk.xchgInto(l1, l1dst, loops),
  );
  // The same in plain JS: a 4 KiB TypedArray.set against one Atomics.exchange call per 32-bit word.
  const l1JsCopy = medianMs(
    reps,
    () => {},
    () => {
      for (let i = 0; i < loops; i++) l1dst.copyFrom(l1);
    },
  );
  const l1JsXchg = medianMs(
    reps,
    () => {},
    () => {
      const w = l1.words;
      for (let i = 0; i < loops; i++) for (let j = 0; j < w.length; j++) Atomics.exchange(w, j, 0xffff_ffff);
    },
  );

  const vs = (ms: number) => ({ ms, 'vs-memcpy': fourDigits(ms / memcpyMs) });
  return {
    memory: formatSize(options.memory),
    'bitmap-bytes': full.byteLength,
    reps,
    seed,
    '1pct-dirty-pages': { clustered: clustered.runStarts.length * RUN_PAGES, spread: spread.popcount() },
    'memcpy-ms': memcpyMs,
    'xchg-ms': xchgMs,
    'xchg-vs-memcpy': fourDigits(xchgMs / memcpyMs),
    strategies: {
      xchg: vs2(xchgSync),
      'rwlock-memcpy': vs2(rwlockSync),
      fused: vs2(fusedSync),
      'fused-1pct': vs2(fused1),
      'fused-1pct-spread': vs2(fused1Spread),
      'fused-full-bmap': vs2(fusedFull),
      'fused-merge': vs2(mergeSync),
      'fused-merge-1pct': vs2(merge1),
      'fused-merge-1pct-spread': vs2(merge1Spread),
      'fused-merge-wasm': vs2(kernelSync),
      'fused-merge-wasm-1pct': vs2(kernel1),
      'fused-merge-wasm-1pct-spread': vs2(kernel1Spread),
    },
    'fused-1pct-vs-fused': fourDigits(fused1.ms / fusedSync.ms),
    'fused-1pct-spread-vs-fused': fourDigits(fused1Spread.ms / fusedSync.ms),
    'fused-merge-1pct-vs-fused-merge': fourDigits(merge1.ms / mergeSync.ms),
    'fused-merge-1pct-spread-vs-fused-merge': fourDigits(merge1Spread.ms / mergeSync.ms),
    'fused-merge-wasm-1pct-vs-fused-merge-wasm': fourDigits(kernel1.ms / kernelSync.ms),
    'fused-merge-wasm-1pct-spread-vs-fused-merge-wasm': fourDigits(kernel1Spread.ms / kernelSync.ms),
    'fused-merge-wasm-allocator': wasmAlloc.kind,
    'fused-merge-wasm-split': {
      '100pct': kernelSync.split,
      '1pct': kernel1.split,
      '1pct-spread': kernel1Spread.split,
    },
    allocator: {
      kind: allocator.kind,
      'anon-huge-pages-kib':
        hugeBefore === undefined || hugeAfter === undefined ? null : hugeAfter - hugeBefore,
    },
    'small-pages': {
      'fused-merge': vs2(smallSync),
      'fused-merge-1pct': vs2(small1),
      'fused-merge-1pct-spread': vs2(small1Spread),
      'fused-merge-1pct-vs-fused-merge': fourDigits(small1.ms / smallSync.ms),
      'fused-merge-1pct-spread-vs-fused-merge': fourDigits(small1Spread.ms / smallSync.ms),
      'touch-1pct-loads': vs2(smallLoadsFloor),
    },
    'fused-merge-1pct-larger-runs': largerRuns,
    'touch-1pct-floor': vs2(floor),
    'touch-1pct-loads': vs2(loadsFloor),
    'touch-1pct-spread-floor': vs2(spreadFloor),
    'wasm-or-and-zero': { ...vs(wasmMs), kind: kernels.kind },
    'rwlock-memcpy-vs-xchg': rwlockVsXchg,
    'l1-xchg-vs-memcpy': fourDigits(l1Xchg / l1Copy),
    'l1-kind': lk.kind,
    'l1-js-xchg-vs-set': fourDigits(l1JsXchg / l1JsCopy),
  };
}

export function formatBitmapBench(r: BitmapBenchResult): string {
  const s = r.strategies;
  const small = r['small-pages'];
  return [
    `# Bitmap sync, ${r.memory} guest (${r['bitmap-bytes']} B bitmap), medians of ${r.reps}`,
    '',
    `1% dirty: clustered = ${r['1pct-dirty-pages'].clustered} pages in random 2 MiB-aligned runs of 512 (seed ${r.seed}); spread = ${r['1pct-dirty-pages'].spread} pages, every 100th 64-bit word.`,
    '',
    '| case | ms | × memcpy |',
    '|---|---:|---:|',
    `| memcpy of the bitmap | ${r['memcpy-ms']} | 1 |`,
    `| one xchg pass | ${r['xchg-ms']} | ${r['xchg-vs-memcpy']} |`,
    `| sync, three-layer xchg (QEMU today), 100% dirty | ${s.xchg.ms} | ${s.xchg['vs-memcpy']} |`,
    `| sync, rwlock-memcpy (the slides), 100% dirty | ${s['rwlock-memcpy'].ms} | ${s['rwlock-memcpy']['vs-memcpy']} |`,
    `| sync, fused, 100% dirty (adopts the harvested buffer) | ${s.fused.ms} | ${s.fused['vs-memcpy']} |`,
    `| sync, fused, 1% dirty clustered (2M runs) (adopts) | ${s['fused-1pct'].ms} | ${s['fused-1pct']['vs-memcpy']} |`,
    `| sync, fused, 1% dirty spread (every 100th 64-bit word) (adopts) | ${s['fused-1pct-spread'].ms} | ${s['fused-1pct-spread']['vs-memcpy']} |`,
    `| sync, fused, 100% dirty into a full bmap (merges) | ${s['fused-full-bmap'].ms} | ${s['fused-full-bmap']['vs-memcpy']} |`,
    `| sync, fused merging, 100% dirty | ${s['fused-merge'].ms} | ${s['fused-merge']['vs-memcpy']} |`,
    `| sync, fused merging, 1% dirty clustered (2M runs) | ${s['fused-merge-1pct'].ms} | ${s['fused-merge-1pct']['vs-memcpy']} |`,
    `| sync, fused merging in WebAssembly, 100% dirty | ${s['fused-merge-wasm'].ms} | ${s['fused-merge-wasm']['vs-memcpy']} |`,
    `| sync, fused merging in WebAssembly, 1% dirty clustered (2M runs) | ${s['fused-merge-wasm-1pct'].ms} | ${s['fused-merge-wasm-1pct']['vs-memcpy']} |`,
    `| sync, fused merging in WebAssembly, 1% dirty spread | ${s['fused-merge-wasm-1pct-spread'].ms} | ${s['fused-merge-wasm-1pct-spread']['vs-memcpy']} |`,
    `| floor of the clustered 1%: touching its runs only | ${r['touch-1pct-floor'].ms} | ${r['touch-1pct-floor']['vs-memcpy']} |`,
    `| below it: one load per run in each bitmap, no writes | ${r['touch-1pct-loads'].ms} | ${r['touch-1pct-loads']['vs-memcpy']} |`,
    `| the same loads, 4 KiB pages | ${small['touch-1pct-loads'].ms} | ${small['touch-1pct-loads']['vs-memcpy']} |`,
    ...r['fused-merge-1pct-larger-runs'].map(
      (x) =>
        `| sync, fused merging, 1% dirty clustered (${formatSize(x['run-pages'] * PAGE_SIZE)} runs) | ${x.ms} | ${x['vs-memcpy']} |`,
    ),
    `| sync, fused merging, 1% dirty spread (every 100th 64-bit word) | ${s['fused-merge-1pct-spread'].ms} | ${s['fused-merge-1pct-spread']['vs-memcpy']} |`,
    `| floor of the spread 1%: touching its words only | ${r['touch-1pct-spread-floor'].ms} | ${r['touch-1pct-spread-floor']['vs-memcpy']} |`,
    `| sync, fused merging, 100% dirty, 4 KiB pages | ${small['fused-merge'].ms} | ${small['fused-merge']['vs-memcpy']} |`,
    `| sync, fused merging, 1% dirty clustered (2M runs), 4 KiB pages | ${small['fused-merge-1pct'].ms} | ${small['fused-merge-1pct']['vs-memcpy']} |`,
    `| sync, fused merging, 1% dirty spread, 4 KiB pages | ${small['fused-merge-1pct-spread'].ms} | ${small['fused-merge-1pct-spread']['vs-memcpy']} |`,
    `| ${r['wasm-or-and-zero'].kind} OR-and-zero kernel | ${r['wasm-or-and-zero'].ms} | ${r['wasm-or-and-zero']['vs-memcpy']} |`,
    '',
    `rwlock-memcpy is ${r['rwlock-memcpy-vs-xchg']}× faster than the three-layer xchg sync; fused at 1% takes ${r['fused-1pct-vs-fused']}× its 100% time clustered in 2M runs, ${r['fused-1pct-spread-vs-fused']}× spread (both adopt: O(1)).`,
    `Merging instead: fused at 1% takes ${r['fused-merge-1pct-vs-fused-merge']}× its 100% time clustered in 2M runs (${r['fused-merge-1pct-larger-runs'].map((x) => `${formatSize(x['run-pages'] * PAGE_SIZE)} runs: ${x['vs-fused-merge']}×`).join(', ')}), ${r['fused-merge-1pct-spread-vs-fused-merge']}× spread.`,
    `Merging in WebAssembly (${r['fused-merge-wasm-allocator']} allocator): fused at 1% takes ${r['fused-merge-wasm-1pct-vs-fused-merge-wasm']}× its 100% time clustered in 2M runs, ${r['fused-merge-wasm-1pct-spread-vs-fused-merge-wasm']}× spread (share of syncs split between two threads: 100% ${r['fused-merge-wasm-split']['100pct']}, 1% ${r['fused-merge-wasm-split']['1pct']}, spread ${r['fused-merge-wasm-split']['1pct-spread']}).`,
    `fused bitmaps: ${r.allocator.kind} allocator (AnonHugePages +${r.allocator['anon-huge-pages-kib'] ?? 'n/a'} KiB over the fused case); on 4 KiB pages the merging fused at 1% takes ${small['fused-merge-1pct-vs-fused-merge']}× its 100% time clustered, ${small['fused-merge-1pct-spread-vs-fused-merge']}× spread.`,
    `In L1 (4 KiB, ${r['l1-kind']}), per-word xchg is ${r['l1-xchg-vs-memcpy']}× a copy (plain JS Atomics.exchange vs TypedArray.set: ${r['l1-js-xchg-vs-set']}×).`,
    '',
  ].join('\n');
}

/**
 * The migration thread sent every dirty page — all but page `keep`, when given: clears bmap
 * (untimed set-up).
 */
function sendRound(layers: QemuLayers, keep = -1): void {
  const w = layers.bmap.words;
  for (let i = 0; i < w.length; i++) {
    const m = i === keep >>> 5 && keep >= 0 ? (w[i] as number) & ~(1 << (keep & 31)) : (w[i] as number);
    if (m !== 0) layers.clearSent(i, m);
  }
}

/** After a sync case (untimed): bmap must hold exactly the pages dirtied, and the count agree. */
function expectBmap(layers: QemuLayers, dirty: Bitmap, name: string): void {
  const a = layers.bmap.words;
  const b = dirty.words;
  let same = a.length === b.length;
  for (let i = 0; same && i < a.length; i++) same = a[i] === b[i];
  const want = dirty.popcount();
  if (!same || layers.dirtyPages !== want) {
    throw new DirtytrackError(
      'internal',
      `${name}: after the sync bmap holds ${layers.bmap.popcount()} pages (count ${layers.dirtyPages}), not the ${want} dirtied`,
      { component: 'bench-bitmap' },
    );
  }
}

/** KVM's side as QEMU sees it: GET_DIRTY_LOG copies the slot's dirty words out (copy_to_user). */
function scriptedSource(dirty: Bitmap): DirtyLogSource {
  const cost: HarvestCost = {
    xchgWords: 0,
    copyWords: dirty.words.length / 2,
    rearmedPages: 0,
    tlbFlushes: 0,
    ringEntries: 0,
  };
  const reported = dirty.popcount();
  return {
    kind: 'bench',
    getDirtyLog(_slot, out) {
      out.copyFrom(dirty);
      return reported;
    },
    lastHarvestCost: () => cost,
  };
}

interface SideBySide {
  ms: number;
  memcpyMs: number;
}

/** Medians of `run` and of `reference` (the memcpy), timed one after the other in every repetition. */
function sideBySide(reps: number, prepare: () => void, reference: () => void, run: () => void): SideBySide {
  const { a, b } = pairedMedians(reps, prepare, reference, run);
  return { ms: b, memcpyMs: a };
}

import {
  Bitmap,
  formatSize,
  PAGE_SIZE,
  type DirtyLogSource,
  type HarvestCost,
  type LoggingControl,
  type MemslotInfo,
} from '@dirtytrack/core';
import {
  createBitmapKernels,
  createQemuLayers,
  createSwapDirtyLog,
  type QemuLayers,
  type SyncStrategy,
} from '@dirtytrack/qemu-layers';
import { fourDigits, medianMs, pairedMedians } from './bench-timing.js';

/**
 * `dirtytrack bench bitmap`: the slides' bitmap-sync cost for huge VMs, measured side by side in
 * one run on this machine. One plain memcpy of the bitmap; one pass of per-word atomic exchange;
 * a full `migration_bitmap_sync` through QEMU's layers with each strategy (`xchg` = QEMU today,
 * `rwlock-memcpy` = the slides' proposal, `fused` = one hop with a summary) at 100% and, for
 * `fused`, 1% of words dirty; the WebAssembly SIMD OR-and-zero kernel; and the slides'
 * cache-resident case (a 4 KiB bitmap, xchg vs copy). Medians of `reps` after warm-up.
 *
 * Every sync is timed whole (`layers.sync()`: harvest, hops, bookkeeping) from the state QEMU
 * syncs in: the round has sent every page (bmap empty), then the guest dirtied the share under
 * test. `xchg` and `rwlock-memcpy` harvest with `KVM_GET_DIRTY_LOG`'s whole-bitmap copy; `fused`
 * harvests a double-buffered producer (`createSwapDirtyLog`) by swapping buffers. Sending the
 * round and the guest's writes are set up untimed; KVM's re-protection of the pages is not
 * counted for any strategy (the bench's producers need none). `fused-full-bmap` is the worst
 * case for `fused`: a 100%-dirty sync into a bmap still full (nothing sent since the last sync).
 */
export interface BitmapBenchOptions {
  memory: number;
  reps: number;
  onStep?: (step: string) => void;
}

export interface BitmapBenchResult {
  memory: string;
  'bitmap-bytes': number;
  reps: number;
  'memcpy-ms': number;
  'xchg-ms': number;
  'xchg-vs-memcpy': number;
  /**
   * Each sync case, with a memcpy of the bitmap timed just before every repetition
   * (`memcpy-ms`, its median), so `vs-memcpy` compares the two under the same machine load.
   */
  strategies: Record<
    SyncStrategy | 'fused-1pct' | 'fused-full-bmap',
    { ms: number; 'memcpy-ms': number; 'vs-memcpy': number }
  >;
  /** `fused` at 1% over `fused` at 100% (the acceptance wants < 0.1). */
  'fused-1pct-vs-fused': number;
  /**
   * The floor under any 1% sync that writes the bits into bmap: only touching those words (read
   * the producer's, write bmap's, every 100th 64-bit word — 1 cache line in 12.5 of each), no
   * summary, no bookkeeping, beside a memcpy.
   */
  'touch-1pct-floor': { ms: number; 'memcpy-ms': number; 'vs-memcpy': number };
  /** The WebAssembly SIMD OR-and-zero kernel over the same bitmap (or the JS twin where SIMD is missing). */
  'wasm-or-and-zero': { ms: number; 'vs-memcpy': number; kind: string };
  'rwlock-memcpy-vs-xchg': number;
  /** In L1 (4 KiB), per-word xchg over a copy, both inside the kernel of `l1-kind`. */
  'l1-xchg-vs-memcpy': number;
  'l1-kind': string;
  /** The same in plain JS (`Atomics.exchange` per 32-bit word vs `TypedArray.set`): call overhead, not the CPU. */
  'l1-js-xchg-vs-set': number;
}

export function benchBitmap(options: BitmapBenchOptions): BitmapBenchResult {
  const pages = options.memory / PAGE_SIZE;
  const reps = options.reps;
  const slot: MemslotInfo = { id: 0, asId: 0, baseGfn: 0, pages };
  const full = Bitmap.create(pages);
  full.setAll();
  const onePct = Bitmap.create(pages);
  // 1% of the 64-bit words dirty, every page of those words.
  for (let w = 0; w < onePct.words.length; w += 200) {
    onePct.words[w] = 0xffff_ffff;
    onePct.words[w + 1] = 0xffff_ffff;
  }
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
  const copyBitmap = (): void => dst.copyFrom(full);
  const strategyMs = (strategy: Exclude<SyncStrategy, 'fused'>, dirty: Bitmap): SideBySide => {
    step(`sync ${strategy}`);
    const source = scriptedSource(dirty);
    const layers = createQemuLayers({ kvm: { source, logging, slot }, strategy });
    layers.setup();
    return sideBySide(
      reps,
      () => sendRound(layers),
      copyBitmap,
      () => void layers.sync(),
    );
  };
  const fusedMs = (dirty: Bitmap, drain: boolean): SideBySide => {
    step(`sync fused${drain ? '' : ' (bmap full)'}`);
    const source = createSwapDirtyLog({ slots: [slot] });
    const layers = createQemuLayers({ kvm: { source, logging, slot }, strategy: 'fused' });
    layers.setup();
    return sideBySide(
      reps,
      () => {
        if (drain) sendRound(layers);
        source.markDirtyBitmap(slot.id, dirty);
      },
      copyBitmap,
      () => void layers.sync(),
    );
  };
  step('1% floor');
  const floorDst = Bitmap.create(pages);
  const floor = sideBySide(
    reps,
    () => {},
    copyBitmap,
    () => {
      const a = onePct.words;
      const b = floorDst.words;
      for (let i = 0; i < a.length; i += 200) {
        b[i] = a[i] as number;
        b[i + 1] = a[i + 1] as number;
      }
    },
  );
  const xchgSync = strategyMs('xchg', full);
  const rwlockSync = strategyMs('rwlock-memcpy', full);
  const fusedSync = fusedMs(full, true);
  const fused1 = fusedMs(onePct, true);
  const fusedFull = fusedMs(full, false);

  step('wasm');
  const kernels = createBitmapKernels({ maxBytes: 2 * Bitmap.byteLength(pages) + 64 });
  const ksrc = kernels.alloc(pages);
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
  const vs2 = (r: SideBySide) => ({
    ms: r.ms,
    'memcpy-ms': r.memcpyMs,
    'vs-memcpy': fourDigits(r.ms / r.memcpyMs),
  });
  return {
    memory: formatSize(options.memory),
    'bitmap-bytes': full.byteLength,
    reps,
    'memcpy-ms': memcpyMs,
    'xchg-ms': xchgMs,
    'xchg-vs-memcpy': fourDigits(xchgMs / memcpyMs),
    strategies: {
      xchg: vs2(xchgSync),
      'rwlock-memcpy': vs2(rwlockSync),
      fused: vs2(fusedSync),
      'fused-1pct': vs2(fused1),
      'fused-full-bmap': vs2(fusedFull),
    },
    'fused-1pct-vs-fused': fourDigits(fused1.ms / fusedSync.ms),
    'touch-1pct-floor': vs2(floor),
    'wasm-or-and-zero': { ...vs(wasmMs), kind: kernels.kind },
    'rwlock-memcpy-vs-xchg': fourDigits(xchgSync.ms / rwlockSync.ms),
    'l1-xchg-vs-memcpy': fourDigits(l1Xchg / l1Copy),
    'l1-kind': lk.kind,
    'l1-js-xchg-vs-set': fourDigits(l1JsXchg / l1JsCopy),
  };
}

export function formatBitmapBench(r: BitmapBenchResult): string {
  const s = r.strategies;
  return [
    `# Bitmap sync, ${r.memory} guest (${r['bitmap-bytes']} B bitmap), medians of ${r.reps}`,
    '',
    '| case | ms | × memcpy |',
    '|---|---:|---:|',
    `| memcpy of the bitmap | ${r['memcpy-ms']} | 1 |`,
    `| one xchg pass | ${r['xchg-ms']} | ${r['xchg-vs-memcpy']} |`,
    `| sync, three-layer xchg (QEMU today), 100% dirty | ${s.xchg.ms} | ${s.xchg['vs-memcpy']} |`,
    `| sync, rwlock-memcpy (the slides), 100% dirty | ${s['rwlock-memcpy'].ms} | ${s['rwlock-memcpy']['vs-memcpy']} |`,
    `| sync, fused, 100% dirty | ${s.fused.ms} | ${s.fused['vs-memcpy']} |`,
    `| sync, fused, 1% dirty | ${s['fused-1pct'].ms} | ${s['fused-1pct']['vs-memcpy']} |`,
    `| sync, fused, 100% dirty into a full bmap | ${s['fused-full-bmap'].ms} | ${s['fused-full-bmap']['vs-memcpy']} |`,
    `| floor of a 1% sync: touching the dirty words only | ${r['touch-1pct-floor'].ms} | ${r['touch-1pct-floor']['vs-memcpy']} |`,
    `| ${r['wasm-or-and-zero'].kind} OR-and-zero kernel | ${r['wasm-or-and-zero'].ms} | ${r['wasm-or-and-zero']['vs-memcpy']} |`,
    '',
    `rwlock-memcpy is ${r['rwlock-memcpy-vs-xchg']}× faster than the three-layer xchg sync; fused at 1% takes ${r['fused-1pct-vs-fused']}× its 100% time.`,
    `In L1 (4 KiB, ${r['l1-kind']}), per-word xchg is ${r['l1-xchg-vs-memcpy']}× a copy (plain JS Atomics.exchange vs TypedArray.set: ${r['l1-js-xchg-vs-set']}×).`,
    '',
  ].join('\n');
}

/** The migration thread sent every dirty page: clears all of bmap (untimed set-up). */
function sendRound(layers: QemuLayers): void {
  const w = layers.bmap.words;
  for (let i = 0; i < w.length; i++) {
    const m = w[i] as number;
    if (m !== 0) layers.clearSent(i, m);
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

import {
  Bitmap,
  formatSize,
  PAGE_SIZE,
  type DirtyLogSource,
  type HarvestCost,
  type LoggingControl,
  type MemslotInfo,
} from '@dirtytrack/core';
import { createBitmapKernels, createQemuLayers, type SyncStrategy } from '@dirtytrack/qemu-layers';

/**
 * `dirtytrack bench bitmap`: the slides' bitmap-sync cost for huge VMs, measured side by side in
 * one run on this machine. One plain memcpy of the bitmap; one pass of per-word atomic exchange;
 * a full `migration_bitmap_sync` through QEMU's layers with each strategy (`xchg` = QEMU today,
 * `rwlock-memcpy` = the slides' proposal, `fused` = one hop with a summary) at 100% and, for
 * `fused`, 1% of words dirty; the WebAssembly SIMD OR-and-zero kernel; and the slides'
 * cache-resident case (a 4 KiB bitmap, xchg vs copy). Medians of `reps` after warm-up.
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
  strategies: Record<SyncStrategy | 'fused-1pct', { ms: number; 'vs-memcpy': number }>;
  /** The WebAssembly SIMD OR-and-zero kernel over the same bitmap (or the JS twin where SIMD is missing). */
  'wasm-or-and-zero': { ms: number; 'vs-memcpy': number; kind: string };
  'rwlock-memcpy-vs-xchg': number;
  'l1-xchg-vs-memcpy': number;
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
  const memcpyMs = median(
    reps,
    () => {},
    () => dst.copyFrom(full),
  );

  step('xchg pass');
  const src = Bitmap.create(pages);
  const xchgMs = median(
    reps,
    () => src.copyFrom(full),
    () => void src.collectInto(dst, 'xchg'),
  );

  const strategyMs = (strategy: SyncStrategy, dirty: Bitmap): number => {
    step(`sync ${strategy}`);
    const source = scriptedSource(dirty);
    const logging: LoggingControl = { enableLogging: (s) => s.pages, disableLogging: () => {} };
    const layers = createQemuLayers({ kvm: { source, logging, slot }, strategy });
    layers.setup();
    return median(
      reps,
      () => {},
      () => void layers.sync(),
    );
  };
  const xchgSync = strategyMs('xchg', full);
  const rwlockSync = strategyMs('rwlock-memcpy', full);
  const fusedSync = strategyMs('fused', full);
  const fused1 = strategyMs('fused', onePct);

  step('wasm');
  const kernels = createBitmapKernels({ maxBytes: 2 * Bitmap.byteLength(pages) + 64 });
  const ksrc = kernels.alloc(pages);
  const kdst = kernels.alloc(pages);
  const wasmMs = median(
    reps,
    () => ksrc.copyFrom(full),
    () => void kernels.orAndZero(ksrc, kdst),
  );

  step('L1');
  const l1 = Bitmap.create(4096 * 8);
  const l1dst = Bitmap.create(4096 * 8);
  const loops = Math.max(1, Math.floor(full.words.length / l1.words.length));
  l1.setAll();
  const l1Copy = median(
    reps,
    () => {},
    () => {
      for (let i = 0; i < loops; i++) l1dst.copyFrom(l1);
    },
  );
  const l1Xchg = median(
    reps,
    () => {},
    () => {
      const w = l1.words;
      for (let i = 0; i < loops; i++) for (let j = 0; j < w.length; j++) Atomics.exchange(w, j, 0xffff_ffff);
    },
  );

  const vs = (ms: number) => ({ ms, 'vs-memcpy': round(ms / memcpyMs) });
  return {
    memory: formatSize(options.memory),
    'bitmap-bytes': full.byteLength,
    reps,
    'memcpy-ms': memcpyMs,
    'xchg-ms': xchgMs,
    'xchg-vs-memcpy': round(xchgMs / memcpyMs),
    strategies: {
      xchg: vs(xchgSync),
      'rwlock-memcpy': vs(rwlockSync),
      fused: vs(fusedSync),
      'fused-1pct': vs(fused1),
    },
    'wasm-or-and-zero': { ...vs(wasmMs), kind: kernels.kind },
    'rwlock-memcpy-vs-xchg': round(xchgSync / rwlockSync),
    'l1-xchg-vs-memcpy': round(l1Xchg / l1Copy),
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
    `| ${r['wasm-or-and-zero'].kind} OR-and-zero kernel | ${r['wasm-or-and-zero'].ms} | ${r['wasm-or-and-zero']['vs-memcpy']} |`,
    '',
    `rwlock-memcpy is ${r['rwlock-memcpy-vs-xchg']}× faster than the three-layer xchg sync; in L1, xchg is ${r['l1-xchg-vs-memcpy']}× a copy.`,
    '',
  ].join('\n');
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

function median(reps: number, prepare: () => void, run: () => void): number {
  const times: number[] = [];
  const warmups = 2;
  for (let i = 0; i < warmups + reps; i++) {
    prepare();
    const t0 = process.hrtime.bigint();
    run();
    if (i >= warmups) times.push(Number(process.hrtime.bigint() - t0) / 1e6);
  }
  times.sort((a, b) => a - b);
  return round(times[Math.floor(times.length / 2)] as number);
}

/** Four significant digits: keeps sub-microsecond medians of small benches non-zero. */
function round(x: number): number {
  return Number(x.toPrecision(4));
}

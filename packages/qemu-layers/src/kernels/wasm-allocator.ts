/**
 * Bitmaps in WebAssembly memory, so the `'fused'` strategy's merge can run as a WebAssembly SIMD
 * kernel (`merge_summary` in `bitmap-kernels.wat`) instead of a JS loop.
 *
 * A kernel sees one linear memory, and the merge reads the harvested buffer T and writes `bmap`
 * and its summary: all three must live in one memory. A swap log created with
 * `migrationBuffer: true` keeps exactly those (its buffers and the collector's bmap) in one slot
 * memory; give it this allocator and that memory is a `WebAssembly.Memory`. The layers then merge
 * through the kernel whenever T and bmap share such a memory, and through the JS twin otherwise —
 * the same bits, the same `migration_dirty_pages`, the same cost counts (a property test runs both).
 */
import { MessageChannel, Worker, type MessagePort } from 'node:worker_threads';

import { DirtytrackError } from '@dirtytrack/core';

import { adviseHugePages, defaultBitmapAllocator, type BitmapAllocator } from '../huge-pages.js';
import {
  kernelsModule,
  supportsWasmSimd,
  wasmApi,
  type KernelMemory,
  type WasmApi,
} from './bitmap-kernels.js';

const WASM_PAGE = 65536;
/** The kernel's working bytes: two f64 results, 64 batch entries of 4 bytes, a sum. */
export const SCRATCH_BYTES = 16 + 64 * 4 + 16;
/** At the end of each memory: the calling thread's scratch, then the merge helper's. */
const RESERVED_BYTES = 2 * SCRATCH_BYTES;
/** A wasm32 memory's largest size (65536 pages). */
const MAX_MEMORY = 2 ** 32;

/** The kernel module's exports the merge uses (and `bench/merge-floor.bench.ts`). */
export interface MergeExports {
  merge_summary(
    tw: number,
    ts: number,
    bw: number,
    bs: number,
    n: number,
    words: number,
    lines: number,
    nlines: number,
    scratch: number,
  ): void;
  zero_summary(w: number, s: number, n: number): void;
}

/** What {@link mergeKernelFor} returns: the summary kernels over one memory. */
export interface MergeKernel {
  /**
   * `bmap |= T` through T's summary, for views that all lie in this kernel's memory (`tw`, `bw`
   * words; `ts`, `bs` summaries of equal length). Returns the pages of T already set in bmap and
   * the 64-bit words visited (one per set summary bit), as the JS twin counts them. `lines`: T's
   * first `lines.length` line-list entries (`DirtyLogBuffer.lines`), complete — then only those
   * lines are visited, the summary is not scanned, and T's words and summary are left all zero
   * (the caller zeroes its count).
   */
  merge(
    tw: Uint32Array,
    ts: Uint32Array,
    bw: Uint32Array,
    bs: Uint32Array,
    lines?: Uint32Array,
  ): { overlap: number; words: number; threads: 1 | 2 };
  /**
   * Zeroes the 64-bit words of `w` that its summary `s` names, and `s` (`zeroBuffer`'s loop: the
   * collector's spare, before it goes back to the producers).
   */
  zero(w: Uint32Array, s: Uint32Array): void;
}

/** Each memory this allocator handed out, with its kernel instance (made on first use). */
const kernels = new WeakMap<
  ArrayBufferLike,
  { memory: KernelMemory; parallel: Readonly<Required<ParallelMerge>> | undefined; kernel?: MergeKernel }
>();

/**
 * When a merge is split between the calling thread and a helper thread (one per process, started
 * on the first such merge): a merge through T's line list of at least `minLines` lines, or a scan
 * of at least `minSummaryWords` summary words. The merge is cut into up to 16 disjoint pieces
 * that both threads take from a shared counter, so the bits and counts are those of one thread.
 */
export interface ParallelMerge {
  minLines?: number;
  minSummaryWords?: number;
  /**
   * For tests: the most pieces the calling thread merges itself (default all it can take); with
   * 0 it waits for the helper to merge every piece.
   */
  callerPieces?: number;
}

/**
 * Split a line-list merge of 8,192 lines or more (16 GiB of guest dirty in 2 MiB runs); never a
 * summary scan. A sparse merge waits on cache misses, and a second thread doubles the misses in
 * flight (8T, 1% dirty: 0.76-0.78× the time); a dense one streams at the memory's bandwidth,
 * which one thread already takes (8T, 100%: 1.08× the time with two).
 */
export const PARALLEL_MERGE_DEFAULT: Readonly<Required<ParallelMerge>> = Object.freeze({
  minLines: 8192,
  minSummaryWords: Number.POSITIVE_INFINITY,
  callerPieces: Number.POSITIVE_INFINITY,
});

export interface WasmBitmapAllocatorOptions {
  /**
   * Large merges in two threads ({@link ParallelMerge}; default {@link PARALLEL_MERGE_DEFAULT}),
   * or `false`: always in the calling thread.
   */
  parallel?: ParallelMerge | false;
}

/**
 * An allocator whose every buffer is the memory of a shared `WebAssembly.Memory` of its own
 * (`kind: 'wasm'`), sized to the bytes asked rounded up to 64 KiB pages, plus a few hundred bytes
 * the merge kernel works in at its end; advised `MADV_HUGEPAGE` before first touch where the
 * machine allows it (as {@link createHugePageAllocator} does), and never grown. Regions start at
 * offset 0, on a page boundary, so 64-byte groups of bitmap words sit on one cache line.
 *
 * Where the engine lacks WebAssembly SIMD or shared memories, or a buffer would pass 4 GiB (a wasm32
 * memory's limit: a slot of three bitmaps up to ~1.3 GiB each, a ~40 TiB guest), it hands out
 * plain buffers — the merge then runs in JS. `kind` says `'wasm'` only when the engine can run
 * the kernel; a single oversized buffer falls back silently (its bits never depend on it).
 */
export function createWasmBitmapAllocator(options: WasmBitmapAllocatorOptions = {}): BitmapAllocator {
  const parallel =
    options.parallel === false ? undefined : { ...PARALLEL_MERGE_DEFAULT, ...options.parallel };
  const wasm = supportsWasmSimd() ? wasmApi() : undefined;
  if (wasm === undefined) return { ...defaultBitmapAllocator };
  return {
    kind: 'wasm',
    allocate(bytes, o = {}) {
      if (!(Number.isSafeInteger(bytes) && bytes >= 0)) {
        throw new DirtytrackError(
          'invalid-argument',
          `allocate: ${bytes} bytes is not a non-negative integer`,
          {
            component: 'wasm-allocator',
            field: 'bytes',
          },
        );
      }
      const pages = Math.ceil((bytes + RESERVED_BYTES) / WASM_PAGE);
      if (pages * WASM_PAGE > MAX_MEMORY) return defaultBitmapAllocator.allocate(bytes, o);
      const memory = new wasm.Memory({ initial: pages, maximum: pages, shared: true });
      const buffer = memory.buffer;
      adviseHugePages(buffer);
      kernels.set(buffer, { memory, parallel });
      return { buffer, byteOffset: 0 };
    },
  };
}

/**
 * The merge kernel over `buffer`, when `buffer` came from {@link createWasmBitmapAllocator};
 * undefined otherwise. One instance per memory, made on first use.
 */
export function mergeKernelFor(buffer: ArrayBufferLike): MergeKernel | undefined {
  const entry = kernels.get(buffer);
  if (entry === undefined) return undefined;
  if (entry.kernel !== undefined) return entry.kernel;
  const wasm = wasmApi() as WasmApi;
  const k = new wasm.Instance(kernelsModule(wasm), { env: { memory: entry.memory } }).exports as MergeExports;
  const scratch = buffer.byteLength - RESERVED_BYTES;
  const helperScratch = buffer.byteLength - SCRATCH_BYTES;
  const out = new Float64Array(buffer, scratch, 2);
  const parallel = entry.parallel;
  const memory = entry.memory;
  const inside = (op: string, views: Uint32Array[]): void => {
    for (const v of views) {
      if (v.buffer !== buffer || v.byteOffset + v.byteLength > scratch) {
        throw new DirtytrackError('internal', `${op}: a bitmap outside the kernel memory`, {
          component: 'wasm-allocator',
        });
      }
    }
  };
  /** merge_summary over the given arguments, here: its two results. */
  const here = (a: MergeArgs): { overlap: number; words: number } => {
    k.merge_summary(a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], scratch);
    return { overlap: out[0] as number, words: out[1] as number };
  };
  entry.kernel = {
    zero(w, s) {
      inside('zero', [w, s]);
      if (s.length * 64 < w.length) {
        throw new DirtytrackError(
          'internal',
          `zero: ${s.length} summary words cannot name ${w.length} words`,
          {
            component: 'wasm-allocator',
          },
        );
      }
      k.zero_summary(w.byteOffset, s.byteOffset, s.length);
    },
    merge(tw, ts, bw, bs, lines) {
      inside('merge', lines === undefined ? [tw, ts, bw, bs] : [tw, ts, bw, bs, lines]);
      if (ts.length !== bs.length || tw.length !== bw.length || ts.length * 64 < tw.length) {
        throw new DirtytrackError(
          'internal',
          `merge: words ${tw.length}/${bw.length} and summaries ${ts.length}/${bs.length} do not match`,
          { component: 'wasm-allocator' },
        );
      }
      const whole: MergeArgs = [
        tw.byteOffset,
        ts.byteOffset,
        bw.byteOffset,
        bs.byteOffset,
        ts.length,
        tw.length >>> 1,
        lines === undefined ? 0 : lines.byteOffset,
        lines === undefined ? -1 : lines.length,
      ];
      const pieces = parallel === undefined ? undefined : splitMerge(whole, parallel);
      const helper = pieces === undefined ? undefined : mergeHelper();
      if (pieces === undefined || helper === undefined) return { ...here(whole), threads: 1 };
      return helper.run(memory, pieces, helperScratch, here, parallel?.callerPieces ?? Infinity);
    },
  };
  return entry.kernel;
}

/** merge_summary's arguments but the scratch: tw, ts, bw, bs, n, words, lines, nlines. */
type MergeArgs = [number, number, number, number, number, number, number, number];

/** At most this many pieces per split merge; each at least a quarter of the split threshold. */
const MAX_PIECES = 16;

/**
 * `whole` in disjoint pieces when it is large enough to split (undefined otherwise): runs of the
 * line list, or runs of the bitmaps cut at summary bytes that are multiples of 16 (the scan's
 * chunk), each with its own words, summary and length (the last keeps the partial line).
 */
export function splitMerge(whole: MergeArgs, p: Readonly<Required<ParallelMerge>>): MergeArgs[] | undefined {
  const [tw, ts, bw, bs, n, words, lines, nlines] = whole;
  if (nlines >= 0) {
    if (nlines < Math.max(2, p.minLines)) return undefined;
    const count = Math.max(2, Math.min(MAX_PIECES, Math.floor(nlines / Math.max(1, p.minLines / 4))));
    const out: MergeArgs[] = [];
    for (let i = 0; i < count; i++) {
      const a = Math.floor((nlines * i) / count);
      const b = Math.floor((nlines * (i + 1)) / count);
      out.push([tw, ts, bw, bs, n, words, lines + 4 * a, b - a]);
    }
    return out;
  }
  // Only full lines before the last piece, cut at the scan's 16-byte chunks.
  const chunks = Math.min(Math.floor((n * 4) / 16), Math.floor(words / 8 / 16));
  if (n < Math.max(8, p.minSummaryWords) || chunks < 2) return undefined;
  const count = Math.max(2, Math.min(MAX_PIECES, chunks, Math.floor(n / Math.max(4, p.minSummaryWords / 4))));
  const out: MergeArgs[] = [];
  for (let i = 0; i < count; i++) {
    const a = Math.floor((chunks * i) / count) * 16;
    const b = i === count - 1 ? n * 4 : Math.floor((chunks * (i + 1)) / count) * 16;
    const w = i === count - 1 ? words - a * 8 : (b - a) * 8;
    out.push([tw + a * 64, ts + a, bw + a * 64, bs + a, (b - a) / 4, w, 0, -1]);
  }
  return out;
}

/** The control block's states (Int32 0): the helper waits for POSTED. */
const IDLE = 0;
const POSTED = 1;
const TAKEN = 2;
const DONE = 3;
const FAILED = 4;
/** Control Int32s: state, generation, pieces, next piece, scratch; the pieces' arguments from C_ARGS. */
const C_GEN = 1;
const C_COUNT = 2;
const C_NEXT = 3;
const C_SCRATCH = 4;
const C_ARGS = 8;
/** The helper's sums (overlap, words, pieces) as Float64s from this byte. */
const C_SUMS_BYTE = (C_ARGS + MAX_PIECES * 8) * 4;
/** Seconds the calling thread waits for a piece the helper has taken, before calling it lost. */
const HELPER_TIMEOUT_S = 60;

/**
 * The helper thread, plain JavaScript (no module to resolve, in the sources or the build). It
 * waits on the control block; when a merge is posted it joins it (POSTED -> TAKEN) unless the
 * caller has already finished it alone, instantiates the kernel on the memory the caller sent for
 * that generation (it keeps only the latest), takes pieces from the shared counter until none
 * are left, and reports its sums with DONE (or FAILED). The caller takes pieces from the same
 * counter, so a helper that is slow to wake or is descheduled costs at most one piece's wait.
 */
const HELPER_SOURCE = `
const { workerData, receiveMessageOnPort } = require('node:worker_threads');
const { control, module, port } = workerData;
const c = new Int32Array(control);
const sums = new Float64Array(control, ${C_SUMS_BYTE}, 3);
let gen = -1;
let k;
let buffer;
for (;;) {
  let s;
  while ((s = Atomics.load(c, 0)) !== ${POSTED}) Atomics.wait(c, 0, s);
  if (Atomics.compareExchange(c, 0, ${POSTED}, ${TAKEN}) !== ${POSTED}) continue;
  Atomics.notify(c, 0);
  try {
    while (gen !== c[${C_GEN}]) {
      const m = receiveMessageOnPort(port);
      if (m === undefined) throw new Error('no memory for generation ' + c[${C_GEN}]);
      gen = m.message.gen;
      buffer = m.message.memory.buffer;
      k = new WebAssembly.Instance(module, { env: { memory: m.message.memory } }).exports;
    }
    const out = new Float64Array(buffer, c[${C_SCRATCH}], 2);
    let overlap = 0;
    let words = 0;
    let pieces = 0;
    for (;;) {
      const i = Atomics.add(c, ${C_NEXT}, 1);
      if (i >= c[${C_COUNT}]) break;
      const a = ${C_ARGS} + i * 8;
      k.merge_summary(c[a], c[a + 1], c[a + 2], c[a + 3], c[a + 4], c[a + 5], c[a + 6], c[a + 7], c[${C_SCRATCH}]);
      overlap += out[0];
      words += out[1];
      pieces++;
    }
    sums[0] = overlap;
    sums[1] = words;
    sums[2] = pieces;
    Atomics.store(c, 0, ${DONE});
  } catch {
    Atomics.store(c, 0, ${FAILED});
  }
  Atomics.notify(c, 0);
}
`;

interface MergeHelper {
  /**
   * Merges `pieces` on `memory` with the helper: both threads take pieces from a shared counter
   * (the helper's results at `scratch`; `here` merges one piece in the calling thread). Returns
   * the sums, and 2 threads when the helper merged at least one piece.
   */
  run(
    memory: KernelMemory,
    pieces: MergeArgs[],
    scratch: number,
    here: (a: MergeArgs) => { overlap: number; words: number },
    callerPieces: number,
  ): { overlap: number; words: number; threads: 1 | 2 };
}

let helper: MergeHelper | null | undefined;

/** The process's merge helper, started on first use; undefined where no worker can start. */
function mergeHelper(): MergeHelper | undefined {
  if (helper !== undefined) return helper ?? undefined;
  try {
    const module = kernelsModule(wasmApi() as WasmApi);
    const control = new SharedArrayBuffer(C_SUMS_BYTE + 3 * 8);
    const c = new Int32Array(control);
    const sums = new Float64Array(control, C_SUMS_BYTE, 3);
    const { port1, port2 } = new MessageChannel();
    const worker = new Worker(HELPER_SOURCE, {
      eval: true,
      workerData: { control, module, port: port2 },
      transferList: [port2 as MessagePort],
    });
    worker.unref();
    port1.unref();
    // A helper that could not start, or stopped, is not used again (a merge posted to it then is
    // finished by the caller: it takes every piece the helper has not).
    const gone = (): void => {
      if (helper === live) helper = null;
    };
    worker.on('error', gone);
    worker.on('exit', gone);
    let sent: KernelMemory | undefined;
    let gen = 0;
    const live: MergeHelper = {
      run(memory, pieces, scratch, here, callerPieces) {
        if (memory !== sent) {
          sent = memory;
          gen++;
          port1.postMessage({ gen, memory });
        }
        c[C_GEN] = gen;
        c[C_COUNT] = pieces.length;
        c[C_NEXT] = 0;
        c[C_SCRATCH] = scratch;
        pieces.forEach((a, i) => c.set(a, C_ARGS + i * 8));
        Atomics.store(c, 0, POSTED);
        Atomics.notify(c, 0);
        let overlap = 0;
        let words = 0;
        for (let mine = 0; mine < callerPieces; mine++) {
          const i = Atomics.add(c, C_NEXT, 1);
          if (i >= pieces.length) break;
          const r = here(pieces[i] as MergeArgs);
          overlap += r.overlap;
          words += r.words;
        }
        // Every piece is taken: a helper that has not joined yet has nothing left to do. (With
        // pieces left to it, wait for it to join instead.)
        const left = Atomics.load(c, C_NEXT) < pieces.length;
        if (!left && Atomics.compareExchange(c, 0, POSTED, IDLE) === POSTED) {
          return { overlap, words, threads: 1 };
        }
        let s = Atomics.load(c, 0);
        for (let waited = 0; (s === TAKEN || s === POSTED) && waited < HELPER_TIMEOUT_S; waited++) {
          Atomics.wait(c, 0, s, 1000);
          s = Atomics.load(c, 0);
        }
        const helped = sums[2] as number;
        overlap += sums[0] as number;
        words += sums[1] as number;
        Atomics.store(c, 0, IDLE);
        Atomics.notify(c, 0);
        if (s !== DONE) {
          helper = null; // a helper that failed or hung is not used again
          void worker.terminate();
          throw new DirtytrackError(
            'internal',
            s === FAILED ? 'merge: the helper thread failed' : 'merge: the helper thread did not finish',
            { component: 'wasm-allocator' },
          );
        }
        return { overlap, words, threads: helped > 0 ? 2 : 1 };
      },
    };
    helper = live;
    return live;
  } catch {
    helper = null;
    return undefined;
  }
}

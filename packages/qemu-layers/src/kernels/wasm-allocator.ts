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
import { DirtytrackError } from '@dirtytrack/core';

import { adviseHugePages, defaultBitmapAllocator, type BitmapAllocator } from '../huge-pages.js';
import { BITMAP_KERNELS_WASM_BASE64 } from './bitmap-kernels.wasm.js';
import {
  decodeBase64,
  supportsWasmSimd,
  wasmApi,
  type KernelMemory,
  type WasmApi,
} from './bitmap-kernels.js';

const WASM_PAGE = 65536;
/** The kernel's working bytes at the end of each memory: two f64 results, 64 batch entries of 4 bytes, a sum. */
export const SCRATCH_BYTES = 16 + 64 * 4 + 16;
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
  ): { overlap: number; words: number };
  /**
   * Zeroes the 64-bit words of `w` that its summary `s` names, and `s` (`zeroBuffer`'s loop: the
   * collector's spare, before it goes back to the producers).
   */
  zero(w: Uint32Array, s: Uint32Array): void;
}

/** Each memory this allocator handed out, with its kernel instance (made on first use). */
const kernels = new WeakMap<ArrayBufferLike, { memory: KernelMemory; kernel?: MergeKernel }>();
let compiled: object | undefined;

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
export function createWasmBitmapAllocator(): BitmapAllocator {
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
      const pages = Math.ceil((bytes + SCRATCH_BYTES) / WASM_PAGE);
      if (pages * WASM_PAGE > MAX_MEMORY) return defaultBitmapAllocator.allocate(bytes, o);
      const memory = new wasm.Memory({ initial: pages, maximum: pages, shared: true });
      const buffer = memory.buffer;
      adviseHugePages(buffer);
      kernels.set(buffer, { memory });
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
  compiled ??= new wasm.Module(decodeBase64(BITMAP_KERNELS_WASM_BASE64));
  const k = new wasm.Instance(compiled, { env: { memory: entry.memory } }).exports as MergeExports;
  const scratch = buffer.byteLength - SCRATCH_BYTES;
  const out = new Float64Array(buffer, scratch, 2);
  const inside = (op: string, views: Uint32Array[]): void => {
    for (const v of views) {
      if (v.buffer !== buffer || v.byteOffset + v.byteLength > scratch) {
        throw new DirtytrackError('internal', `${op}: a bitmap outside the kernel memory`, {
          component: 'wasm-allocator',
        });
      }
    }
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
      k.merge_summary(
        tw.byteOffset,
        ts.byteOffset,
        bw.byteOffset,
        bs.byteOffset,
        ts.length,
        tw.length >>> 1,
        lines === undefined ? 0 : lines.byteOffset,
        lines === undefined ? -1 : lines.length,
        scratch,
      );
      return { overlap: out[0] as number, words: out[1] as number };
    },
  };
  return entry.kernel;
}

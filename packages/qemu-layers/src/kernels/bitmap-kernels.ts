/**
 * Hot bitmap kernels — OR-and-zero collect (with and without a 64-bit-word summary), popcount,
 * find-next-set and copy — in WebAssembly SIMD128 over a shared `WebAssembly.Memory`, with a
 * plain-JS twin ({@link createJsBitmapKernels}) that gives identical bits on every input (a
 * property test checks both against core's `Bitmap` methods).
 *
 * The WASM kernels only see their own linear memory, so the bitmaps they work on must live in it:
 * get them from {@link BitmapKernels.alloc}, a bump allocator over the kernels' memory. The
 * memory is allocated at its full size (`maxBytes`, rounded up to 64 KiB pages) up front and is
 * never grown: growing a shared memory would not move it, but every allocated `Bitmap` view is
 * fixed-length, so growth could never reach them anyway — the cap is the design.
 *
 * Source: `bitmap-kernels.wat`, compiled by `scripts/build-kernels.mjs` (wabt) into the generated
 * `bitmap-kernels.wasm.ts`.
 */
import { Bitmap, DirtytrackError, popcount32 } from '@dirtytrack/core';
import { BITMAP_KERNELS_WASM_BASE64 } from './bitmap-kernels.wasm.js';

/** The subset of `WebAssembly.Memory` the kernels expose (structurally the real thing). */
export interface KernelMemory {
  /** A `SharedArrayBuffer` of the full size; never detached, since the memory never grows. */
  readonly buffer: ArrayBufferLike;
  grow(deltaPages: number): number;
}

export interface BitmapKernelsOptions {
  /**
   * Bytes the kernels' memory holds for bitmaps; reserved at creation (rounded up to 64 KiB
   * pages) and never grown. An integer in [1, 4 GiB].
   */
  maxBytes: number;
}

export interface BitmapKernels {
  /** `'wasm-simd'` for the WebAssembly kernels, `'js'` for the plain-JS twin. */
  readonly kind: 'wasm-simd' | 'js';
  /** The shared memory every allocated bitmap lives in (`buffer` is a `SharedArrayBuffer`). */
  readonly memory: KernelMemory;
  /** Bytes handed out so far (including alignment padding). */
  readonly usedBytes: number;
  /**
   * A zeroed `Bitmap` of `bits` pages in the kernels' memory, 16-byte aligned (so 8-byte aligned,
   * as `Bitmap.wrap` requires). Bump allocation, never freed; throws `out-of-range` once the
   * bitmap would reach past `maxBytes`.
   */
  alloc(bits: number): Bitmap;
  /**
   * `dst |= src; src = 0` with plain loads and stores (like `collectInto(dst, 'plain')`: only
   * while no other thread sets bits in `src`). Returns how many bits went 0→1 in `dst`.
   */
  orAndZero(src: Bitmap, dst: Bitmap): number;
  /**
   * {@link orAndZero}, plus: sets bit k of `summary` for every 64-bit word k of `dst` whose
   * source word was non-zero (every dst word that received bits). `summary` needs at least
   * `dst.byteLength / 8` bits; its other bits are left alone.
   */
  orAndZeroSummary(src: Bitmap, dst: Bitmap, summary: Bitmap): number;
  /** Set bits in `b`. */
  popcount(b: Bitmap): number;
  /** The first set page of `b` at or after `from`, or -1 (as `Bitmap.findNextSet`). */
  findNextSet(b: Bitmap, from?: number): number;
  /** `dst = src`. */
  copy(src: Bitmap, dst: Bitmap): void;
  /** `reps` times `dst = src`, looping inside the kernel (for timing small, cache-resident copies). */
  copyRepeat(src: Bitmap, dst: Bitmap, reps: number): void;
  /**
   * `reps` times, per 64-bit word: `dst[i] = xchg(src[i], 0)`, every word, zero or not — KVM's
   * `KVM_GET_DIRTY_LOG` loop as an atomic exchange (WASM `i64.atomic.rmw.xchg`; the JS twin
   * uses two `Atomics.exchange` per 64-bit word). `src` ends zero; `dst` holds `src` after one
   * pass, zero after more.
   */
  xchgInto(src: Bitmap, dst: Bitmap, reps?: number): void;
}

const COMPONENT = 'bitmap-kernels';
const PAGE = 65536;
const MAX_BYTES = 2 ** 32;
const ALIGN = 16;

interface WasmExports {
  or_and_zero(src: number, dst: number, words: number): number;
  or_and_zero_summary(src: number, dst: number, words: number, summary: number): number;
  popcount(ptr: number, words: number): number;
  find_next_set(ptr: number, words: number, from: number): number;
  copy(src: number, dst: number, words: number): void;
  copy_repeat(src: number, dst: number, words: number, reps: number): void;
  xchg_into(src: number, dst: number, words: number, reps: number): void;
}

/** The slice of the `WebAssembly` global used here (the project's lib has no DOM/wasm types). */
export interface WasmApi {
  Memory: new (descriptor: { initial: number; maximum: number; shared: boolean }) => KernelMemory;
  Module: new (bytes: Uint8Array) => object;
  Instance: new (module: object, imports: object) => { exports: unknown };
  validate(bytes: Uint8Array): boolean;
}

export function wasmApi(): WasmApi | undefined {
  return (globalThis as { WebAssembly?: WasmApi }).WebAssembly;
}

let compiledKernels: object | undefined;

/**
 * The bitmap-kernels module, decoded and compiled once per realm (an engine with WebAssembly):
 * every instance — each kernel set, each allocator memory, the merge helper's — shares it.
 */
export function kernelsModule(wasm: WasmApi): object {
  return (compiledKernels ??= new wasm.Module(decodeBase64(BITMAP_KERNELS_WASM_BASE64)));
}

// (module (import "e" "m" (memory 1 1 shared))
//   (func (result i32) (i32x4.extract_lane 0 (i8x16.popcnt (v128.load (i32.const 0))))))
const PROBE = new Uint8Array([
  0, 97, 115, 109, 1, 0, 0, 0, 1, 5, 1, 96, 0, 1, 127, 2, 9, 1, 1, 101, 1, 109, 2, 3, 1, 1, 3, 2, 1, 0, 10,
  15, 1, 13, 0, 65, 0, 253, 0, 4, 0, 253, 98, 253, 27, 0, 11,
]);

/**
 * Whether this engine runs the WASM kernels: it validates a tiny module that uses SIMD128
 * (`i8x16.popcnt`) and imports a shared memory (threads), the two features the kernels need.
 */
export function supportsWasmSimd(): boolean {
  const wasm = wasmApi();
  if (wasm === undefined || typeof SharedArrayBuffer === 'undefined') return false;
  try {
    return wasm.validate(PROBE);
  } catch {
    return false;
  }
}

/**
 * The WebAssembly SIMD kernels, or the plain-JS twin where {@link supportsWasmSimd} says the
 * engine lacks SIMD128 or shared memories. Check `kind` to see which you got.
 */
export function createBitmapKernels(options: BitmapKernelsOptions): BitmapKernels {
  if (!supportsWasmSimd()) return createJsBitmapKernels(options);
  const wasm = wasmApi() as WasmApi;
  const region = createRegion(options);
  const instance = new wasm.Instance(kernelsModule(wasm), { env: { memory: region.memory } });
  const k = instance.exports as WasmExports;
  return {
    kind: 'wasm-simd',
    memory: region.memory,
    get usedBytes() {
      return region.used();
    },
    alloc: region.alloc,
    orAndZero(src, dst) {
      region.pair(src, dst, 'orAndZero');
      return k.or_and_zero(src.words.byteOffset, dst.words.byteOffset, dst.words.length) >>> 0;
    },
    orAndZeroSummary(src, dst, summary) {
      region.pair(src, dst, 'orAndZeroSummary');
      region.summary(summary, src, dst);
      return (
        k.or_and_zero_summary(
          src.words.byteOffset,
          dst.words.byteOffset,
          dst.words.length,
          summary.words.byteOffset,
        ) >>> 0
      );
    },
    popcount(b) {
      region.own(b, 'popcount');
      return k.popcount(b.words.byteOffset, b.words.length) >>> 0;
    },
    findNextSet(b, from = 0) {
      region.own(b, 'findNextSet');
      checkFrom(b, from);
      if (from >= b.bits) return -1;
      const r = k.find_next_set(b.words.byteOffset, b.words.length, from);
      // -1 is also bit 2^32 - 1 as an i32: only a 2^32-page bitmap can hold that bit.
      if (r === -1) return b.bits === MAX_BYTES && b.test(MAX_BYTES - 1) ? MAX_BYTES - 1 : -1;
      const page = r >>> 0;
      return page < b.bits ? page : -1;
    },
    copy(src, dst) {
      region.own(src, 'copy');
      region.own(dst, 'copy');
      sameSize(src, dst, 'copy');
      k.copy(src.words.byteOffset, dst.words.byteOffset, dst.words.length);
    },
    copyRepeat(src, dst, reps) {
      region.pair(src, dst, 'copyRepeat');
      checkReps(reps);
      k.copy_repeat(src.words.byteOffset, dst.words.byteOffset, dst.words.length, reps);
    },
    xchgInto(src, dst, reps = 1) {
      region.pair(src, dst, 'xchgInto');
      checkReps(reps);
      k.xchg_into(src.words.byteOffset, dst.words.byteOffset, dst.words.length, reps);
    },
  };
}

function checkReps(reps: number): void {
  if (!(Number.isSafeInteger(reps) && reps >= 0 && reps < 2 ** 31)) {
    throw new DirtytrackError('invalid-argument', `reps ${reps} is not an integer in [0, 2^31)`, {
      component: COMPONENT,
      field: 'reps',
    });
  }
}

/**
 * The plain-JS twin: the same API and the same bits, built on `Bitmap`'s word-wise methods, over
 * the same kind of shared memory (so bitmaps move between the two freely in tests).
 */
export function createJsBitmapKernels(options: BitmapKernelsOptions): BitmapKernels {
  const region = createRegion(options);
  return {
    kind: 'js',
    memory: region.memory,
    get usedBytes() {
      return region.used();
    },
    alloc: region.alloc,
    orAndZero(src, dst) {
      region.pair(src, dst, 'orAndZero');
      return src.collectInto(dst, 'plain');
    },
    orAndZeroSummary(src, dst, summary) {
      region.pair(src, dst, 'orAndZeroSummary');
      region.summary(summary, src, dst);
      const s = src.words;
      const d = dst.words;
      const sum = summary.words;
      let fresh = 0;
      for (let i = 0; i < s.length; i += 2) {
        const lo = s[i] as number;
        const hi = s[i + 1] as number;
        if ((lo | hi) === 0) continue;
        const dlo = d[i] as number;
        const dhi = d[i + 1] as number;
        fresh += popcount32(lo & ~dlo) + popcount32(hi & ~dhi);
        d[i] = dlo | lo;
        d[i + 1] = dhi | hi;
        s[i] = 0;
        s[i + 1] = 0;
        const k = i >>> 1;
        sum[k >>> 5] = (sum[k >>> 5] as number) | (1 << (k & 31));
      }
      return fresh;
    },
    popcount(b) {
      region.own(b, 'popcount');
      return b.popcount();
    },
    findNextSet(b, from = 0) {
      region.own(b, 'findNextSet');
      return b.findNextSet(from);
    },
    copy(src, dst) {
      region.own(src, 'copy');
      region.own(dst, 'copy');
      dst.copyFrom(src);
    },
    copyRepeat(src, dst, reps) {
      region.pair(src, dst, 'copyRepeat');
      checkReps(reps);
      for (let r = 0; r < reps; r++) dst.copyFrom(src);
    },
    xchgInto(src, dst, reps = 1) {
      region.pair(src, dst, 'xchgInto');
      checkReps(reps);
      const s = src.words;
      const d = dst.words;
      for (let r = 0; r < reps; r++) for (let i = 0; i < s.length; i++) d[i] = Atomics.exchange(s, i, 0);
    },
  };
}

interface Region {
  memory: KernelMemory;
  used(): number;
  alloc(bits: number): Bitmap;
  own(b: Bitmap, op: string): void;
  pair(src: Bitmap, dst: Bitmap, op: string): void;
  summary(summary: Bitmap, src: Bitmap, dst: Bitmap): void;
}

function createRegion(options: BitmapKernelsOptions): Region {
  const { maxBytes } = options;
  if (!(Number.isSafeInteger(maxBytes) && maxBytes >= 1 && maxBytes <= MAX_BYTES)) {
    throw new DirtytrackError('invalid-argument', `maxBytes ${maxBytes} is not an integer in [1, 4 GiB]`, {
      component: COMPONENT,
      field: 'maxBytes',
    });
  }
  const wasm = wasmApi();
  if (wasm === undefined || typeof SharedArrayBuffer === 'undefined') {
    throw new DirtytrackError('unsupported', 'bitmap kernels need WebAssembly and SharedArrayBuffer', {
      component: COMPONENT,
    });
  }
  const pages = Math.ceil(maxBytes / PAGE);
  // maximum = initial: the memory never grows (growth would not reach existing Bitmap views).
  const memory = new wasm.Memory({ initial: pages, maximum: pages, shared: true });
  // Read once: a shared memory's `buffer` getter may hand out a fresh wrapper object each time.
  const buffer = memory.buffer;
  let next = 0;

  const own = (b: Bitmap, op: string): void => {
    if (b.buffer !== buffer) {
      throw new DirtytrackError(
        'invalid-argument',
        `${op}: the bitmap does not live in the kernels' memory (get it from alloc)`,
        { component: COMPONENT },
      );
    }
  };
  const overlap = (a: Bitmap, b: Bitmap): boolean =>
    a.words.byteOffset < b.words.byteOffset + b.byteLength &&
    b.words.byteOffset < a.words.byteOffset + a.byteLength;
  const distinct = (a: Bitmap, b: Bitmap, op: string): void => {
    if (overlap(a, b)) {
      throw new DirtytrackError(
        'invalid-argument',
        `${op}: source, destination and summary must not overlap`,
        {
          component: COMPONENT,
        },
      );
    }
  };

  return {
    memory,
    used: () => next,
    alloc(bits) {
      const bytes = Bitmap.byteLength(bits);
      const offset = Math.ceil(next / ALIGN) * ALIGN;
      if (offset + bytes > maxBytes) {
        throw new DirtytrackError(
          'out-of-range',
          `alloc: ${bytes} bytes at offset ${offset} do not fit the kernels' ${maxBytes}-byte memory`,
          { component: COMPONENT },
        );
      }
      next = offset + bytes;
      return Bitmap.wrap(buffer, bits, offset);
    },
    own,
    pair(src, dst, op) {
      own(src, op);
      own(dst, op);
      sameSize(src, dst, op);
      distinct(src, dst, op);
    },
    summary(summary, src, dst) {
      own(summary, 'orAndZeroSummary');
      const needed = dst.byteLength / 8;
      if (summary.bits < needed) {
        throw new DirtytrackError(
          'invalid-argument',
          `orAndZeroSummary: the summary covers ${summary.bits} 64-bit words, the bitmap has ${needed}`,
          { component: COMPONENT },
        );
      }
      distinct(summary, src, 'orAndZeroSummary');
      distinct(summary, dst, 'orAndZeroSummary');
    },
  };
}

function sameSize(a: Bitmap, b: Bitmap, op: string): void {
  if (a.bits !== b.bits) {
    throw new DirtytrackError('invalid-argument', `${op}: bitmaps cover ${a.bits} and ${b.bits} pages`, {
      component: COMPONENT,
    });
  }
}

function checkFrom(b: Bitmap, from: number): void {
  if (!(Number.isInteger(from) && from >= 0)) {
    throw new DirtytrackError('out-of-range', `page ${from} is outside [0, ${b.bits})`, {
      component: 'bitmap',
    });
  }
}

export function decodeBase64(text: string): Uint8Array {
  const binary = atob(text);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes;
}

import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { DirtytrackError } from '@dirtytrack/core';
import type * as Koffi from 'koffi';

const COMPONENT = 'huge-pages';

/** `MADV_HUGEPAGE` (`<asm-generic/mman-common.h>`). */
const MADV_HUGEPAGE = 14;
const PAGE = 4096;
const HUGE_PAGE = 2 * 1024 * 1024;
/** A cache line (64-byte groups of bitmap words sit on one where regions are aligned). */
export const CACHE_LINE = 64;

/** A region of `bytes` bytes at `byteOffset` in `buffer`. */
export interface BitmapAllocation {
  readonly buffer: ArrayBufferLike;
  /**
   * Where the region starts: on a 4 KiB page boundary of memory when the allocator knows the
   * buffer's address (`kind: 'huge-pages'`), 0 otherwise (`'wasm'`: 0, also a page boundary).
   * Always a multiple of 8, below 4096.
   */
  readonly byteOffset: number;
}

/**
 * Where the big bitmaps (bmap, the swap log's producer buffers) get their memory. Every
 * allocator returns zeroed memory of exactly the bytes asked, so the bits never depend on it;
 * only how the memory is backed does.
 */
export interface BitmapAllocator {
  /**
   * `'huge-pages'`: buffers of at least `minBytes` were advised `MADV_HUGEPAGE` before their
   * first touch; `'wasm'`: each buffer is the memory of a shared `WebAssembly.Memory` of its own
   * (`createWasmBitmapAllocator`), so WebAssembly kernels can work on it; `'default'`: plain
   * `ArrayBuffer` / `SharedArrayBuffer`.
   */
  readonly kind: 'huge-pages' | 'wasm' | 'default';
  /**
   * `bytes` zeroed bytes in a buffer of their own (a `SharedArrayBuffer` when `shared`) that
   * starts at 0: the region is `[byteOffset, byteOffset + bytes)`, and the buffer holds nothing
   * else. Aligning the region to a cache line keeps a 64-byte group of bitmap words on one line
   * (on a 16-byte-aligned heap buffer it straddles two, doubling a random group's misses).
   */
  allocate(bytes: number, options?: { shared?: boolean }): BitmapAllocation;
}

/** Plain `ArrayBuffer` / `SharedArrayBuffer`: what every factory uses unless given an allocator. */
export const defaultBitmapAllocator: BitmapAllocator = {
  kind: 'default',
  allocate(bytes, options = {}) {
    return { buffer: plainBuffer(bytes, options.shared === true), byteOffset: 0 };
  },
};

export interface HugePageAllocatorOptions {
  /**
   * Buffers smaller than this are left alone (they cannot cover a 2 MiB page, and a few small
   * ones may share a heap page with other data). Default 4 MiB.
   */
  minBytes?: number;
}

/**
 * An allocator that backs big bitmaps with transparent huge pages: it allocates the buffer as
 * usual, then — before anything touches it — `madvise(MADV_HUGEPAGE)` over its page-aligned
 * interior (through `koffi`), so the kernel faults 2 MiB pages into the 2 MiB-aligned part.
 * Knowing the address, it also starts every region on a 4 KiB page boundary: then two bitmaps
 * are congruent modulo 4096, and a copy between them cannot stall on 4K aliasing (its loads
 * falsely waiting on its own stores to the same address bits 0-11: a 256 MiB copy between regions
 * 64 bytes apart modulo 4096 took 84 ms against 26 ms congruent, here) — and on a cache line.
 *
 * Why: a sync that touches 1% of a 96 MiB bitmap at random lines pays a TLB miss per line on
 * 4 KiB pages — a two-dimensional page walk in a VM — on top of the DRAM miss; on 2 MiB pages
 * the whole bitmap needs 48 TLB entries. Linux puts THP under `madvise` by default on many
 * distributions, and V8 never advises an `ArrayBuffer`.
 *
 * Where that cannot work — not Linux, THP `never`, `koffi` missing or failing to load — it
 * returns the {@link defaultBitmapAllocator}'s behaviour with `kind: 'default'`, so callers pass
 * it unconditionally. A `madvise` that fails on one buffer leaves that buffer on small pages.
 * Large `ArrayBuffer`s come from glibc's `mmap` (zeroed by the kernel, so `calloc` does not
 * touch them); a smaller buffer already touched simply stays as it is.
 */
export function createHugePageAllocator(options: HugePageAllocatorOptions = {}): BitmapAllocator {
  return hugePageAllocatorWith(loadMadvise(), options);
}

/** {@link createHugePageAllocator} over a given `madvise(address, length, advice)` (or none: the fallback). */
export function hugePageAllocatorWith(
  madvise: ((address: bigint, length: number, advice: number) => number) | undefined,
  options: HugePageAllocatorOptions & { addressOf?: (bytes: Uint8Array) => bigint } = {},
): BitmapAllocator {
  const minBytes = options.minBytes ?? 2 * HUGE_PAGE;
  if (!(Number.isSafeInteger(minBytes) && minBytes >= 0)) {
    throw new DirtytrackError('invalid-argument', `minBytes ${minBytes} is not a non-negative integer`, {
      component: COMPONENT,
      field: 'minBytes',
    });
  }
  const addressOf = options.addressOf ?? ffi?.addressOf;
  if (madvise === undefined || addressOf === undefined) return { ...defaultBitmapAllocator };
  return {
    kind: 'huge-pages',
    allocate(bytes, o = {}) {
      checkBytes(bytes);
      const buffer = plainBuffer(bytes + PAGE, o.shared === true);
      const at = addressOf(new Uint8Array(buffer, 0, 1));
      const byteOffset = Number(-at & BigInt(PAGE - 1));
      if (bytes >= minBytes) adviseInterior(madvise, at, buffer.byteLength);
      return { buffer, byteOffset };
    },
  };
}

/** Guest RAM from {@link allocateGuestRam}. */
export interface GuestRam {
  /**
   * Exactly the bytes asked, zeroed. Large buffers come from a fresh `mmap` (nothing has touched
   * them, so the advice applies from the first fault); a small one may reuse heap pages already
   * touched, which stay on 4 KiB pages until khugepaged collapses them.
   */
  readonly memory: SharedArrayBuffer;
  /** `madvise(MADV_HUGEPAGE)` was applied to it (its 2 MiB-aligned part faults in as huge pages). */
  readonly hugePages: boolean;
}

/**
 * Guest RAM as QEMU backs it: a `SharedArrayBuffer` of exactly `bytes` (a whole number of 4 KiB
 * pages, so `memory.byteLength` is the RAM size), advised `MADV_HUGEPAGE` over its page-aligned
 * interior before anything touches it — QEMU's `ram_block_add` does
 * `qemu_madvise(host, max_length, QEMU_MADV_HUGEPAGE)` on every RAM block.
 *
 * Why it matters here: on this VM a 4 KiB first touch costs ~17 µs (1 GiB: 4.7 s) and a 2 MiB
 * one ~5 ms (1 GiB: 2.6 s); and a copy into 1 GiB of RAM touched a while ago ran at 298 ms on
 * 4 KiB pages against 95 ms on huge pages (TLB misses through two-dimensional page walks).
 *
 * `hugePages: false` asks for plain memory; where THP cannot be advised (not Linux, THP `never`,
 * koffi missing) the memory is plain too and `hugePages` says so. The bytes never depend on it.
 */
export function allocateGuestRam(bytes: number, options: { hugePages?: boolean } = {}): GuestRam {
  return guestRamWith(options.hugePages === false ? undefined : loadMadvise(), bytes);
}

/** {@link allocateGuestRam} over a given `madvise` (or none) and `addressOf`, for tests. */
export function guestRamWith(
  madvise: ((address: bigint, length: number, advice: number) => number) | undefined,
  bytes: number,
  addressOf: ((bytes: Uint8Array) => bigint) | undefined = ffi?.addressOf,
): GuestRam {
  if (!(Number.isSafeInteger(bytes) && bytes > 0 && bytes % PAGE === 0)) {
    throw new DirtytrackError(
      'invalid-argument',
      `guest RAM: ${bytes} bytes is not a positive multiple of ${PAGE}`,
      {
        component: COMPONENT,
        field: 'bytes',
      },
    );
  }
  const memory = new SharedArrayBuffer(bytes);
  if (madvise === undefined || addressOf === undefined || bytes < HUGE_PAGE)
    return { memory, hugePages: false };
  return { memory, hugePages: adviseInterior(madvise, addressOf(new Uint8Array(memory, 0, 1)), bytes) };
}

/** `madvise(MADV_HUGEPAGE)` over the whole pages of `[at, at + bytes)`; true when it succeeded. */
function adviseInterior(
  madvise: (address: bigint, length: number, advice: number) => number,
  at: bigint,
  bytes: number,
): boolean {
  const start = (at + BigInt(PAGE - 1)) & ~BigInt(PAGE - 1);
  const end = (at + BigInt(bytes)) & ~BigInt(PAGE - 1);
  return end > start && madvise(start, Number(end - start), MADV_HUGEPAGE) === 0;
}

/**
 * `madvise(MADV_HUGEPAGE)` over the page-aligned interior of `buffer` (untouched memory: the
 * advice applies from the first fault). False where THP cannot be advised here or the call fails.
 */
export function adviseHugePages(buffer: ArrayBufferLike): boolean {
  const madvise = loadMadvise();
  const addressOf = ffi?.addressOf;
  if (madvise === undefined || addressOf === undefined || buffer.byteLength < HUGE_PAGE) return false;
  return adviseInterior(madvise, addressOf(new Uint8Array(buffer, 0, 1)), buffer.byteLength);
}

/** `AnonHugePages` of this process in KiB (`/proc/self/smaps_rollup`), or undefined off Linux. */
export function anonHugePagesKiB(): number | undefined {
  try {
    const m = /AnonHugePages:\s+(\d+)/.exec(readFileSync('/proc/self/smaps_rollup', 'utf8'));
    return m === null ? undefined : Number(m[1]);
  } catch {
    return undefined;
  }
}

interface Ffi {
  madvise(address: bigint, length: number, advice: number): number;
  addressOf(bytes: Uint8Array): bigint;
}

let ffi: Ffi | undefined;
let loaded = false;

/** libc's `madvise` through koffi, once per process; undefined where THP cannot be advised. */
function loadMadvise(): Ffi['madvise'] | undefined {
  if (!loaded) {
    loaded = true;
    ffi = loadFfi();
  }
  return ffi?.madvise;
}

function loadFfi(): Ffi | undefined {
  if (process.platform !== 'linux') return undefined;
  try {
    // `[never]` turns madvise(MADV_HUGEPAGE) into a no-op: report the fallback honestly.
    const mode = readFileSync('/sys/kernel/mm/transparent_hugepage/enabled', 'utf8');
    if (mode.includes('[never]')) return undefined;
    const koffi = createRequire(import.meta.url)('koffi') as typeof Koffi;
    const libc = koffi.load('libc.so.6');
    const madvise = libc.func('int madvise(uintptr_t addr, size_t length, int advice)') as (
      a: bigint,
      l: number,
      adv: number,
    ) => number;
    // memmove(p, p, 0) returns p: koffi passes a typed array's memory itself, so this is its address.
    const memmove = libc.func('uintptr_t memmove(void *dst, void *src, size_t n)') as (
      d: Uint8Array,
      s: Uint8Array,
      n: number,
    ) => number | bigint;
    return { madvise, addressOf: (bytes) => BigInt(memmove(bytes, bytes, 0)) };
  } catch {
    return undefined;
  }
}

function plainBuffer(bytes: number, shared: boolean): ArrayBufferLike {
  checkBytes(bytes);
  return shared ? new SharedArrayBuffer(bytes) : new ArrayBuffer(bytes);
}

function checkBytes(bytes: number): void {
  if (!(Number.isSafeInteger(bytes) && bytes >= 0)) {
    throw new DirtytrackError('invalid-argument', `allocate: ${bytes} bytes is not a non-negative integer`, {
      component: COMPONENT,
      field: 'bytes',
    });
  }
}

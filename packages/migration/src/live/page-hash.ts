/**
 * The verification page hash (WIRE.md, Verification) in WebAssembly SIMD128: page-hash.wat,
 * compiled into page-hash.wasm.ts. wire.ts's `pageHashes` hands it runs of 8 pages and hashes
 * the rest (and everything, where this engine has no WebAssembly SIMD) in JS — the same hashes
 * bit for bit.
 *
 * The module sees only its own memory, so pages are copied in, 64 at a time (256 KiB: they stay
 * in L2 while eight of them are hashed in parallel lanes); hashes come out after them. On 1 GiB
 * of pages here, the copy takes ~140 ms and the hash ~85 ms, against ~550–650 ms for the JS.
 * One instance per thread, made on first use.
 */
import { PAGE_SIZE } from '@dirtytrack/core';
import { PAGE_HASH_WASM_BASE64 } from './page-hash.wasm.js';

/** Pages copied into the module's memory per call (its scratch). */
const CHUNK_PAGES = 64;
/** Pages the kernel hashes at once: it takes multiples of this. */
const GROUP = 8;
const OUT_AT = CHUNK_PAGES * PAGE_SIZE;

interface Kernel {
  readonly pages: Uint8Array;
  readonly hashes: Uint32Array;
  readonly hash: (ptr: number, count: number, out: number) => void;
}

/** The slice of the `WebAssembly` global used here (the project's lib has no wasm types). */
interface WasmApi {
  Module: new (bytes: Uint8Array) => object;
  Instance: new (
    module: object,
    imports: object,
  ) => { exports: { memory: { buffer: ArrayBuffer }; hash_pages: Kernel['hash'] } };
}

let kernel: Kernel | null | undefined;

function load(): Kernel | null {
  const wasm = (globalThis as { WebAssembly?: WasmApi }).WebAssembly;
  if (wasm === undefined) return null;
  try {
    const bytes = Uint8Array.from(Buffer.from(PAGE_HASH_WASM_BASE64, 'base64'));
    const { memory, hash_pages: hash } = new wasm.Instance(new wasm.Module(bytes), {}).exports;
    return {
      pages: new Uint8Array(memory.buffer, 0, OUT_AT),
      hashes: new Uint32Array(memory.buffer, OUT_AT, 2 * CHUNK_PAGES),
      hash,
    };
  } catch {
    return null; // no WebAssembly SIMD here: wire.ts hashes in JS
  }
}

/** Which implementation `pageHashes` uses for runs of 8 pages on this thread. */
export function pageHashKernel(): 'wasm-simd' | 'js' {
  kernel ??= load();
  return kernel === null ? 'js' : 'wasm-simd';
}

/**
 * Hashes the first `count − count % 8` pages from `firstPage` into `out` (hi, lo per page from
 * page `outAt`), as `pageHashes` does; returns how many pages it hashed (0 without WebAssembly
 * SIMD). The range is the caller's to check.
 */
export function hashPagesWasm(
  memory: ArrayBufferLike,
  firstPage: number,
  count: number,
  out: Uint32Array,
  outAt: number,
): number {
  kernel ??= load();
  if (kernel === null) return 0;
  const { pages, hashes, hash } = kernel;
  const total = count - (count % GROUP);
  for (let done = 0; done < total;) {
    const n = Math.min(CHUNK_PAGES, total - done);
    pages.set(new Uint8Array(memory, (firstPage + done) * PAGE_SIZE, n * PAGE_SIZE));
    hash(0, n, OUT_AT);
    out.set(n === CHUNK_PAGES ? hashes : hashes.subarray(0, 2 * n), 2 * (outAt + done));
    done += n;
  }
  return total;
}

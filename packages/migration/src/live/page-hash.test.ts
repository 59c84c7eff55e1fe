import { readFileSync } from 'node:fs';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { buildPageHash, OUT_PATH } from '../../scripts/build-page-hash.mjs';
import { pageHashKernel } from './page-hash.js';
import { PAGE_HASH_WASM_BASE64 } from './page-hash.wasm.js';
import { pageHashes, pageHashesJs } from './wire.js';

const PAGE = 4096;

describe('page hash kernel (WebAssembly SIMD)', () => {
  it('the committed wasm module equals a fresh build of page-hash.wat', async () => {
    const fresh = await buildPageHash();
    expect(PAGE_HASH_WASM_BASE64).toBe(fresh.base64);
    expect(readFileSync(OUT_PATH, 'utf8')).toBe(fresh.text);
  });

  it('this engine has WebAssembly SIMD, so runs of 8 pages go through the kernel', () => {
    expect(pageHashKernel()).toBe('wasm-simd');
  });

  it('equals the JS hash on random pages, for any run, start and output offset (chunks of 64, groups of 8, tails)', () => {
    const pages = 200;
    const memory = new SharedArrayBuffer(pages * PAGE);
    const words = new Uint32Array(memory);
    fc.assert(
      fc.property(
        fc.integer({ min: 0, max: 2 ** 32 - 1 }),
        fc.integer({ min: 0, max: pages - 1 }),
        fc.integer({ min: 0, max: pages }),
        fc.integer({ min: 0, max: 9 }),
        (seed, first, want, outAt) => {
          const count = Math.min(want, pages - first);
          // Random words, with every fifth page zero and some pages differing in one word only.
          for (let i = 0; i < words.length; i++) words[i] = Math.imul(seed ^ i, 2654435761) >>> 0;
          for (let p = 0; p < pages; p += 5) words.fill(0, p * 1024, (p + 1) * 1024);
          for (let p = 1; p + 1 < pages; p += 7) {
            words.copyWithin((p + 1) * 1024, p * 1024, (p + 1) * 1024);
            const at = (p + 1) * 1024 + (seed % 1024);
            words[at] = (words[at] as number) ^ 1;
          }
          const kernel = new Uint32Array(2 * (outAt + count)).fill(7);
          const js = new Uint32Array(2 * (outAt + count)).fill(7);
          pageHashes(memory, first, count, kernel, outAt);
          pageHashesJs(memory, first, count, js, outAt);
          expect(Array.from(kernel)).toEqual(Array.from(js));
        },
      ),
      { numRuns: 60 },
    );
  });

  it('checks the range before hashing, as the JS does', () => {
    const memory = new SharedArrayBuffer(8 * PAGE);
    expect(() => pageHashes(memory, 1, 8, new Uint32Array(16))).toThrow(/pages 1\+8 outside memory/);
    expect(() => pageHashes(memory, 0, 8, new Uint32Array(15))).toThrow(/out holds 7.5 pages, need 8/);
    expect(() => pageHashesJs(memory, 1, 8, new Uint32Array(16))).toThrow(/pages 1\+8 outside memory/);
  });
});

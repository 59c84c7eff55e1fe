import { readFileSync } from 'node:fs';
import { Bitmap, DirtytrackError } from '@dirtytrack/core';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { buildKernels, OUT_PATH } from '../../scripts/build-kernels.mjs';
import {
  createBitmapKernels,
  createJsBitmapKernels,
  decodeBase64,
  supportsWasmSimd,
  wasmApi,
  type BitmapKernels,
  type WasmApi,
} from './bitmap-kernels.js';
import { BITMAP_KERNELS_WASM_BASE64 } from './bitmap-kernels.wasm.js';

const expectCode = (fn: () => unknown, code: string): void => {
  let caught: unknown;
  try {
    fn();
  } catch (e) {
    caught = e;
  }
  expect(caught).toBeInstanceOf(DirtytrackError);
  expect((caught as DirtytrackError).code).toBe(code);
};

/** A bitmap of `bits` pages in `k`'s memory with the given words (padding bits masked off). */
function load(k: BitmapKernels, bits: number, words: readonly number[]): Bitmap {
  const b = k.alloc(bits);
  fill(b, words);
  return b;
}

function fill(b: Bitmap, words: readonly number[]): void {
  for (let i = 0; i < b.words.length; i++) b.words[i] = words[i] ?? 0;
  const tail = b.bits & 31;
  const last = b.bits >>> 5;
  if (tail !== 0) b.words[last] = (b.words[last] as number) & (2 ** tail - 1);
  b.words.fill(0, tail === 0 ? last : last + 1);
}

const plain = (bits: number, words: readonly number[]): Bitmap => {
  const b = Bitmap.create(bits);
  fill(b, words);
  return b;
};

const summaryBits = (bits: number): number => Bitmap.byteLength(bits) / 8;

describe('bitmap kernels: build', () => {
  it('the committed wasm module equals a fresh build of bitmap-kernels.wat', async () => {
    const fresh = await buildKernels();
    expect(BITMAP_KERNELS_WASM_BASE64).toBe(fresh.base64);
    expect(readFileSync(OUT_PATH, 'utf8')).toBe(fresh.text);
  });

  it('this engine has WASM SIMD and the factory picks the WASM kernels', () => {
    expect(supportsWasmSimd()).toBe(true);
    const k = createBitmapKernels({ maxBytes: 1024 });
    expect(k.kind).toBe('wasm-simd');
    expect(k.memory.buffer).toBeInstanceOf(SharedArrayBuffer);
    expect(k.memory.buffer.byteLength).toBe(65536);
    expect(createJsBitmapKernels({ maxBytes: 1024 }).kind).toBe('js');
  });
});

describe('touch_lines (the merge floor bench: loads only)', () => {
  /** A one-page memory: T at 0, its summary at 1024, bmap at 2048, its summary at 3072, lines at 4096. */
  const setUp = () => {
    const wasm = wasmApi() as WasmApi;
    const memory = new wasm.Memory({ initial: 1, maximum: 1, shared: true });
    const module = new wasm.Module(decodeBase64(BITMAP_KERNELS_WASM_BASE64));
    const k = new wasm.Instance(module, { env: { memory } }).exports as {
      touch_lines(
        tw: number,
        ts: number,
        bw: number,
        bs: number,
        l: number,
        n: number,
        what: number,
        s: number,
      ): void;
    };
    const u8 = new Uint8Array(memory.buffer);
    const u32 = new Uint32Array(memory.buffer);
    // Line 3 of T starts with 7, line 9 with 100; bmap's line 3 with 5, line 9 with 1000. Summary
    // bytes: T's 0x81 and 0x01, bmap's 0x10 and 0x02. Lines listed: 3, 9.
    u32[(3 * 64) / 4] = 7;
    u32[(9 * 64) / 4] = 100;
    u32[(2048 + 3 * 64) / 4] = 5;
    u32[(2048 + 9 * 64) / 4] = 1000;
    u8[1024 + 3] = 0x81;
    u8[1024 + 9] = 0x01;
    u8[3072 + 3] = 0x10;
    u8[3072 + 9] = 0x02;
    u32[4096 / 4] = 3;
    u32[4096 / 4 + 1] = 9;
    const before = u8.slice(0, 8192);
    const touch = (n: number, what: number): number => {
      k.touch_lines(0, 1024, 2048, 3072, 4096, n, what, 8192);
      expect(u8.slice(0, 8192)).toEqual(before); // nothing written but the sum
      return u32[(8192 + 272) / 4] as number;
    };
    return touch;
  };

  it('sums the first word of each listed line in T and bmap (1), their summary bytes (2), or both (3)', () => {
    const touch = setUp();
    expect(touch(2, 1)).toBe(7 + 5 + 100 + 1000);
    expect(touch(2, 2)).toBe(0x81 + 0x10 + 0x01 + 0x02);
    expect(touch(2, 3)).toBe(1112 + 0x94);
    expect(touch(1, 3)).toBe(7 + 5 + 0x81 + 0x10);
    expect(touch(0, 3)).toBe(0);
  });
});

describe.each([
  ['wasm', createBitmapKernels],
  ['js', createJsBitmapKernels],
] as const)('bitmap kernels (%s): exact cases', (_name, create) => {
  it('orAndZero: hand-computed words and count, tail of 2 words', () => {
    const k = create({ maxBytes: 4096 });
    const src = load(k, 192, [0b1010, 0, 0xffff_ffff, 0, 1, 0]);
    const dst = load(k, 192, [0b0110, 0, 0xf000_0000, 0, 0, 0]);
    // 1 (bit 3) + 28 (0x0fff_ffff) + 1 (word 4 bit 0)
    expect(k.orAndZero(src, dst)).toBe(30);
    expect([...dst.words]).toEqual([0b1110, 0, 0xffff_ffff, 0, 1, 0]);
    expect([...src.words]).toEqual([0, 0, 0, 0, 0, 0]);
    expect(k.orAndZero(src, dst)).toBe(0);
  });

  it('orAndZeroSummary: summary bits for words that received bits, even already set ones', () => {
    const k = create({ maxBytes: 4096 });
    const src = load(k, 256, [1, 0, 0, 0, 0, 0x8000_0000, 0, 0]);
    const dst = load(k, 256, [1, 0, 0, 0, 0, 0, 0, 0]);
    const summary = load(k, 4, [0b1000]);
    expect(k.orAndZeroSummary(src, dst, summary)).toBe(1);
    expect([...dst.words]).toEqual([1, 0, 0, 0, 0, 0x8000_0000, 0, 0]);
    expect([...summary.words]).toEqual([0b1101, 0]);
    expect([...src.words]).toEqual(new Array(8).fill(0));
  });

  it('orAndZeroSummary: summary words across the 32-word flush boundary', () => {
    const k = create({ maxBytes: 8192 });
    const bits = 64 * 70;
    const src = k.alloc(bits);
    const dst = k.alloc(bits);
    for (const w of [0, 31, 32, 33, 63, 64, 69]) src.set(w * 64 + 63);
    const summary = k.alloc(70);
    expect(k.orAndZeroSummary(src, dst, summary)).toBe(7);
    expect([...summary.words]).toEqual([(1 | (2 ** 31)) >>> 0, (1 | 2 | (2 ** 31)) >>> 0, 1 | (1 << 5), 0]);
  });

  it('popcount, findNextSet and copy', () => {
    const k = create({ maxBytes: 4096 });
    const b = load(k, 300, [0, 0, 0, 0, 0, 0, 0, 0, 0x10, 0x8000_0001]);
    expect(k.popcount(b)).toBe(2); // bit 319 of 0x8000_0001 is padding, masked off
    expect(k.findNextSet(b)).toBe(260);
    expect(k.findNextSet(b, 261)).toBe(288);
    expect(k.findNextSet(b, 289)).toBe(-1);
    expect(k.findNextSet(b, 299)).toBe(-1);
    expect(k.findNextSet(b, 300)).toBe(-1);
    expect(k.findNextSet(b, 1e6)).toBe(-1);
    expectCode(() => k.findNextSet(b, -1), 'out-of-range');
    const c = k.alloc(300);
    k.copy(b, c);
    expect([...c.words]).toEqual([...b.words]);
    expectCode(() => k.copyRepeat(b, c, -1), 'invalid-argument');
    expectCode(() => k.xchgInto(b, c, 1.5), 'invalid-argument');
  });

  it('rejects foreign, mismatched and overlapping bitmaps, and allocation past maxBytes', () => {
    const k = create({ maxBytes: 1024 });
    const a = k.alloc(1024);
    const b = k.alloc(1024);
    const foreign = Bitmap.create(1024, { shared: true });
    const other = create({ maxBytes: 1024 }).alloc(1024);
    for (const f of [foreign, other]) {
      expectCode(() => k.orAndZero(f, b), 'invalid-argument');
      expectCode(() => k.orAndZero(a, f), 'invalid-argument');
      expectCode(() => k.orAndZeroSummary(a, b, f), 'invalid-argument');
      expectCode(() => k.popcount(f), 'invalid-argument');
      expectCode(() => k.findNextSet(f, 0), 'invalid-argument');
      expectCode(() => k.copy(f, a), 'invalid-argument');
    }
    expectCode(() => k.orAndZero(a, a), 'invalid-argument');
    const small = k.alloc(64);
    expectCode(() => k.orAndZero(a, small), 'invalid-argument');
    const tiny = k.alloc(8); // a summary for a 1024-page bitmap needs 16 bits
    expectCode(() => k.orAndZeroSummary(a, b, tiny), 'invalid-argument');
    expectCode(() => k.orAndZeroSummary(a, b, a), 'invalid-argument');
    // a, b: 128 bytes each; small: 8 at 256; tiny: 8 at 272 (16-byte alignment)
    expect(k.usedBytes).toBe(280);
    k.alloc((1024 - 288) * 8); // exactly fills maxBytes
    expect(k.usedBytes).toBe(1024);
    expectCode(() => k.alloc(1), 'out-of-range');
    expectCode(() => create({ maxBytes: 0 }), 'invalid-argument');
    expectCode(() => create({ maxBytes: 2 ** 32 + 1 }), 'invalid-argument');
  });
});

const wordArb = {
  dense: fc.oneof(fc.constant(0xffff_ffff), fc.integer({ min: 0, max: 0xffff_ffff })),
  sparse: fc.oneof(
    { weight: 6, arbitrary: fc.constant(0) },
    { weight: 1, arbitrary: fc.integer({ min: 0, max: 31 }).map((b) => 2 ** b) },
  ),
  mixed: fc.oneof(
    fc.constant(0),
    fc.constant(0xffff_ffff),
    fc.integer({ min: 0, max: 0xffff_ffff }),
    fc.integer({ min: 0, max: 31 }).map((b) => 2 ** b),
  ),
};
const wordsArb = (n: number): fc.Arbitrary<number[]> =>
  fc.oneof(
    fc.constant(new Array<number>(n).fill(0)),
    ...Object.values(wordArb).map((w) => fc.array(w, { minLength: n, maxLength: n })),
  );

const caseArb = fc.integer({ min: 1, max: 5000 }).chain((bits) => {
  const n = Bitmap.byteLength(bits) / 4;
  return fc.record({
    bits: fc.constant(bits),
    src: wordsArb(n),
    dst: wordsArb(n),
    summary: wordsArb(Math.ceil(n / 64) * 2),
    from: fc.integer({ min: 0, max: bits + 70 }),
  });
});

describe('bitmap kernels: WASM = JS twin = core Bitmap (property)', () => {
  it('every kernel gives the same words and return values', () => {
    fc.assert(
      fc.property(caseArb, ({ bits, src, dst, summary, from }) => {
        const wasm = createBitmapKernels({ maxBytes: 16 * 1024 });
        const js = createJsBitmapKernels({ maxBytes: 16 * 1024 });
        expect(wasm.kind).toBe('wasm-simd');
        const sBits = summaryBits(bits);

        // core reference
        const cSrc = plain(bits, src);
        const cDst = plain(bits, dst);
        const cFreshPopBefore = [cSrc.popcount(), cDst.popcount()];
        const cFind = [cSrc.findNextSet(Math.min(from, bits)), cDst.findNextSet(Math.min(from, bits))];
        const cSummary = plain(sBits, summary);
        for (let k = 0; k < sBits; k++) {
          // 64-bit word k of src (padding masked off) is non-zero: dst word k receives bits
          if ((cSrc.words[2 * k] as number) !== 0 || (cSrc.words[2 * k + 1] as number) !== 0) cSummary.set(k);
        }
        const cFresh = cSrc.collectInto(cDst, 'plain');

        for (const k of [wasm, js]) {
          const s = load(k, bits, src);
          const d = load(k, bits, dst);
          expect([k.popcount(s), k.popcount(d)]).toEqual(cFreshPopBefore);
          expect([k.findNextSet(s, Math.min(from, bits)), k.findNextSet(d, Math.min(from, bits))]).toEqual(
            cFind,
          );
          expect(k.findNextSet(s, from)).toBe(from >= bits ? -1 : cFind[0]);
          const c = k.alloc(bits);
          k.copy(s, c);
          expect(c.words).toEqual(s.words);
          const c2 = k.alloc(bits);
          k.copyRepeat(s, c2, 3);
          expect(c2.words).toEqual(s.words);
          // xchgInto: one pass moves src into dst and zeroes src; a second pass moves the zeros.
          const x = load(k, bits, src);
          const xd = load(k, bits, dst);
          k.xchgInto(x, xd);
          expect([...xd.words]).toEqual([...plain(bits, src).words]);
          expect(x.words.every((w) => w === 0)).toBe(true);
          k.xchgInto(load(k, bits, src), xd, 2);
          expect(xd.words.every((w) => w === 0)).toBe(true);

          // plain orAndZero
          expect(k.orAndZero(s, d)).toBe(cFresh);
          expect([...d.words]).toEqual([...cDst.words]);
          expect(s.words.every((w) => w === 0)).toBe(true);
          expect(k.popcount(d)).toBe(cDst.popcount());

          // orAndZeroSummary on fresh copies
          const s2 = load(k, bits, src);
          const d2 = load(k, bits, dst);
          const sum = load(k, sBits, summary);
          expect(k.orAndZeroSummary(s2, d2, sum)).toBe(cFresh);
          expect([...d2.words]).toEqual([...cDst.words]);
          expect(s2.words.every((w) => w === 0)).toBe(true);
          expect([...sum.words]).toEqual([...cSummary.words]);

          // walking every set page
          const pages: number[] = [];
          for (let p = k.findNextSet(d2, 0); p >= 0 && pages.length < 64; p = k.findNextSet(d2, p + 1))
            pages.push(p);
          const cPages: number[] = [];
          for (const p of cDst.setBits()) {
            if (cPages.length >= 64) break;
            cPages.push(p);
          }
          expect(pages).toEqual(cPages);
        }
      }),
      { numRuns: 300 },
    );
  });
});

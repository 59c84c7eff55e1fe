import fc from 'fast-check';
import { expectError as expectDirtytrackError } from './__fixtures__/expect-error.js';
import { describe, expect, it } from 'vitest';
import type { DirtytrackError } from './errors.js';
import { type DirtytrackErrorCode } from './errors.js';
import { createRng, type Rng } from './rng.js';
import { assertProperty } from './__fixtures__/property.js';

/** A mixed draw sequence touching every generator method. */
function drawMixed(rng: Rng): number[] {
  const out: number[] = [];
  const ints = new Uint32Array(8);
  for (let i = 0; i < 20; i++) {
    out.push(rng.nextU32(), rng.nextFloat(), rng.nextInt(1_000), rng.nextInt(2 ** 40));
    rng.fillInts(ints, 8, 97);
    out.push(...ints);
  }
  return out;
}

/** Pearson's chi-square statistic of `counts` against a uniform expectation. */
function chiSquareUniform(counts: readonly number[]): number {
  const total = counts.reduce((a, b) => a + b, 0);
  const expected = total / counts.length;
  return counts.reduce((sum, observed) => sum + (observed - expected) ** 2 / expected, 0);
}

/** The 0.999 quantile of chi-square with 9 degrees of freedom. */
const CHI2_9DF_P999 = 27.877;

describe('createRng', () => {
  it('matches the recorded first outputs for seed 42 (golden: sfc32 seeded by splitmix32)', () => {
    const rng = createRng(42);
    expect([rng.nextU32(), rng.nextU32(), rng.nextU32()]).toEqual([0x3d53_5a87, 0x95fe_eaf0, 0x17de_31b0]);
    expect(rng.seed).toBe(42);
  });

  it('gives identical sequences for the same seed', () => {
    for (const seed of [0, 1, 42, 0xffff_ffff]) {
      expect(drawMixed(createRng(seed))).toEqual(drawMixed(createRng(seed)));
    }
  });

  it('gives different sequences for different seeds, even adjacent ones', () => {
    const firsts = new Set<string>();
    for (let seed = 0; seed < 256; seed++) {
      const rng = createRng(seed);
      firsts.add(`${rng.nextU32()},${rng.nextU32()}`);
    }
    expect(firsts.size).toBe(256);
    expect(drawMixed(createRng(7))).not.toEqual(drawMixed(createRng(8)));
  });

  it('rejects seeds that are not integers in [0, 2^32)', () => {
    for (const seed of [-1, 1.5, 2 ** 32, NaN, Infinity]) {
      const error = expectError(() => createRng(seed), 'invalid-argument');
      expect(error.field).toBe('seed');
    }
    expect(expectError(() => createRng(-1), 'invalid-argument').message).toBe(
      '[dirtytrack] [rng] seed: -1 is not an integer in [0, 2^32)',
    );
    expect(createRng(2 ** 32 - 1).seed).toBe(2 ** 32 - 1);
  });

  it('nextU32 is an unsigned 32-bit integer and nextFloat is in [0, 1)', () => {
    const rng = createRng(3);
    let maxU32 = 0;
    for (let i = 0; i < 10_000; i++) {
      const u = rng.nextU32();
      expect(Number.isInteger(u) && u >= 0 && u <= 0xffff_ffff).toBe(true);
      maxU32 = Math.max(maxU32, u);
      const f = rng.nextFloat();
      expect(f >= 0 && f < 1).toBe(true);
    }
    expect(maxU32).toBeGreaterThan(2 ** 31); // the top bit is used, not sign-folded
  });

  it('nextInt(n) stays in [0, n) for n = 1, 2, 2^32, 2^40, 2^53 and covers the range', () => {
    const rng = createRng(11);
    for (let i = 0; i < 100; i++) expect(rng.nextInt(1)).toBe(0);
    const seen2 = new Set<number>();
    for (let i = 0; i < 100; i++) seen2.add(rng.nextInt(2));
    expect([...seen2].sort((a, b) => a - b)).toEqual([0, 1]);
    for (const n of [2 ** 32, 2 ** 40, 2 ** 53, 2 ** 32 + 1, 3 * 2 ** 31 - 1]) {
      let max = 0;
      for (let i = 0; i < 2_000; i++) {
        const x = rng.nextInt(n);
        expect(Number.isInteger(x) && x >= 0 && x < n).toBe(true);
        max = Math.max(max, x);
      }
      expect(max).toBeGreaterThan(n / 2); // draws reach the upper half, not just 32 bits of it
    }
  });

  it('nextInt(n) is in [0, n) for any n in [1, 2^53] (property)', async () => {
    await assertProperty(
      fc.property(
        fc.integer({ min: 0, max: 0xffff_ffff }),
        fc.oneof(
          fc.integer({ min: 1, max: 2 ** 32 + 5 }),
          fc.integer({ min: 1, max: Number.MAX_SAFE_INTEGER }),
        ),
        (seed, n) => {
          const rng = createRng(seed);
          for (let i = 0; i < 50; i++) {
            const x = rng.nextInt(n);
            if (!(Number.isInteger(x) && x >= 0 && x < n)) throw new Error(`nextInt(${n}) gave ${x}`);
          }
        },
      ),
      300,
    );
  });

  it('nextInt rejects bounds that are not integers in [1, 2^53]', () => {
    const rng = createRng(1);
    for (const n of [0, -1, 1.5, NaN, Infinity, 2 ** 53 + 2])
      expectError(() => rng.nextInt(n), 'invalid-argument');
  });

  it('fillInts draws exactly what nextInt would, in bounds', () => {
    for (const n of [1, 2, 10, 97, 2 ** 31 + 3, 2 ** 32]) {
      const a = createRng(5);
      const b = createRng(5);
      const out = new Uint32Array(300).fill(0xdead_beef);
      a.fillInts(out, 256, n);
      const expected = Array.from({ length: 256 }, () => b.nextInt(n));
      expect(Array.from(out.subarray(0, 256))).toEqual(expected);
      expect(out.subarray(256).every((x) => x === 0xdead_beef)).toBe(true); // only count written
      expect(out.subarray(0, 256).every((x) => x < n)).toBe(true);
      expect(a.nextU32()).toBe(b.nextU32()); // and the states stay in step
    }
  });

  it('fillInts rejects a count beyond the buffer and bounds outside [1, 2^32]', () => {
    const rng = createRng(1);
    expectError(() => rng.fillInts(new Uint32Array(4), 5, 10), 'out-of-range');
    for (const n of [0, 1.5, 2 ** 32 + 1, NaN]) {
      expectError(() => rng.fillInts(new Uint32Array(4), 4, n), 'invalid-argument');
    }
    rng.fillInts(new Uint32Array(0), 0, 10); // nothing to do is fine
  });

  it('fork(k) is deterministic, keeps the root seed, and different streams differ', () => {
    const draw = (rng: Rng): number[] => Array.from({ length: 16 }, () => rng.nextU32());
    const f1 = createRng(42).fork(1);
    const f1Again = createRng(42).fork(1);
    expect(f1.seed).toBe(42);
    expect(draw(f1)).toEqual(draw(f1Again));

    const streams = [0, 1, 2, 3, 1_000, 0xffff_ffff].map((k) => draw(createRng(42).fork(k)).join(','));
    expect(new Set(streams).size).toBe(streams.length);
    expect(draw(createRng(42).fork(1))).not.toEqual(draw(createRng(43).fork(1)));
    // A fork is not a copy of its parent's continuing stream.
    const parent = createRng(42);
    const child = parent.fork(0);
    expect(draw(child)).not.toEqual(draw(parent));
  });

  it('nextInt(10) passes a chi-square uniformity check over 100k draws (fixed seed)', () => {
    const rng = createRng(2024);
    const counts = new Array<number>(10).fill(0);
    for (let i = 0; i < 100_000; i++) {
      const x = rng.nextInt(10);
      counts[x] = (counts[x] ?? 0) + 1;
    }
    expect(counts.reduce((a, b) => a + b, 0)).toBe(100_000);
    expect(chiSquareUniform(counts)).toBeLessThan(CHI2_9DF_P999);

    // The check has teeth: a mildly skewed generator (floor(10 * u^1.05)) fails it.
    const skewed = createRng(2024);
    const skewedCounts = new Array<number>(10).fill(0);
    for (let i = 0; i < 100_000; i++) {
      const x = Math.floor(10 * skewed.nextFloat() ** 1.05);
      skewedCounts[x] = (skewedCounts[x] ?? 0) + 1;
    }
    expect(chiSquareUniform(skewedCounts)).toBeGreaterThan(CHI2_9DF_P999);
  });

  it('state/restore: another generator continues the sequence exactly; a bad state is refused', () => {
    const a = createRng(42).fork(3);
    for (let i = 0; i < 100; i++) a.nextU32();
    const saved = a.state();
    const want = Array.from({ length: 50 }, () => a.nextInt(1000));
    const b = createRng(7);
    b.restore(saved);
    expect(Array.from({ length: 50 }, () => b.nextInt(1000))).toEqual(want);
    expect(b.state()).toEqual(a.state());
    expectError(() => b.restore([1, 2, 3]), 'invalid-argument');
  });
});

function expectError(fn: () => unknown, code: DirtytrackErrorCode): DirtytrackError {
  return expectDirtytrackError(fn, code, 'rng');
}

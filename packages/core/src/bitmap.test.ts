import { expectError as expectDirtytrackError } from './__fixtures__/expect-error.js';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { Bitmap, ctz32, popcount32 } from './bitmap.js';
import type { DirtytrackError } from './errors.js';
import { type DirtytrackErrorCode } from './errors.js';
import { createRng } from './rng.js';
import { SETTER_CONTROL, type SetterData } from './__fixtures__/layouts.js';
import { assertProperty } from './__fixtures__/property.js';
import { exited, startWorker, terminateAll, waitUntil } from './__fixtures__/workers.js';

/** The exact words a bitmap of `bits` pages holding `pages` must have (padding words/bits 0). */
function wordsOf(bits: number, pages: Iterable<number>): number[] {
  const words = new Uint32Array(Bitmap.byteLength(bits) / 4);
  for (const p of pages) words[p >>> 5] = (words[p >>> 5] as number) | (1 << (p & 31));
  return Array.from(words);
}

function bitmapOf(bits: number, pages: Iterable<number>, shared = false): Bitmap {
  const bitmap = Bitmap.create(bits, { shared });
  for (const p of pages) bitmap.set(p);
  return bitmap;
}

function sorted(set: Iterable<number>): number[] {
  return [...set].sort((a, b) => a - b);
}

describe('Bitmap layout (KVM)', () => {
  it('byteLength is ALIGN(bits, 64) / 8', () => {
    expect(Bitmap.byteLength(0)).toBe(0);
    expect(Bitmap.byteLength(1)).toBe(8);
    expect(Bitmap.byteLength(63)).toBe(8);
    expect(Bitmap.byteLength(64)).toBe(8);
    expect(Bitmap.byteLength(65)).toBe(16);
    expect(Bitmap.byteLength(100)).toBe(16);
    expect(Bitmap.byteLength(128)).toBe(16);
    expect(Bitmap.byteLength(129)).toBe(24);
    expect(Bitmap.byteLength(2 ** 32)).toBe(2 ** 29);
    expect(Bitmap.create(100).byteLength).toBe(16);
    expect(Bitmap.create(100).words.length).toBe(4);
    expect(Bitmap.create(0).words.length).toBe(0);
  });

  it('rejects sizes that are not integers in [0, 2^32]', () => {
    for (const bits of [-1, 1.5, NaN, Infinity, 2 ** 32 + 1]) {
      expectError(() => Bitmap.byteLength(bits), 'invalid-argument');
      expectError(() => Bitmap.create(bits), 'invalid-argument');
    }
  });

  it('stores page n as bit n%8 of byte n/8 (little-endian), in 64-bit KVM words', () => {
    const bitmap = Bitmap.create(100);
    for (const p of [0, 1, 31, 32, 63, 64]) bitmap.set(p);
    expect(Array.from(new Uint8Array(bitmap.buffer))).toEqual([
      0x03, 0x00, 0x00, 0x80, 0x01, 0x00, 0x00, 0x80, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    ]);
    expect(Array.from(bitmap.words)).toEqual([0x8000_0003, 0x8000_0001, 0x0000_0001, 0x0000_0000]);
    expect(Array.from(new BigUint64Array(bitmap.buffer))).toEqual([0x8000_0001_8000_0003n, 0x1n]);
    expect(bitmap.popcount()).toBe(6);
    expect([...bitmap.setBits()]).toEqual([0, 1, 31, 32, 63, 64]);
  });

  it('keeps padding bits 0 after setAll and after setRange up to the end', () => {
    const all = Bitmap.create(100);
    all.setAll();
    expect(Array.from(all.words)).toEqual([0xffff_ffff, 0xffff_ffff, 0xffff_ffff, 0x0000_000f]);
    expect(all.popcount()).toBe(100);
    expect(all.findNextSet(99)).toBe(99);
    expect(all.findNextSet(100)).toBe(-1);

    const tail = Bitmap.create(100);
    tail.setRange(90, 10);
    expect(Array.from(tail.words)).toEqual([0, 0, 0xfc00_0000, 0x0000_000f]);
    expect(tail.popcount()).toBe(10);

    const inside = Bitmap.create(100);
    inside.setRange(3, 2);
    expect(Array.from(inside.words)).toEqual([0x0000_0018, 0, 0, 0]);
    inside.setRange(30, 36); // 30..65: the end of word 0, all of word 1, the start of word 2
    expect(Array.from(inside.words)).toEqual([0xc000_0018, 0xffff_ffff, 0x0000_0003, 0]);
    inside.clearRange(31, 2);
    expect(Array.from(inside.words)).toEqual([0x4000_0018, 0xffff_fffe, 0x0000_0003, 0]);

    for (const bits of [1, 31, 32, 33, 63, 64, 65, 127, 128, 129, 1000]) {
      const bitmap = Bitmap.create(bits);
      bitmap.setAll();
      expect(Array.from(bitmap.words)).toEqual(
        wordsOf(
          bits,
          Array.from({ length: bits }, (_, i) => i),
        ),
      );
      expect(bitmap.popcount()).toBe(bits);
      bitmap.clearAll();
      bitmap.setRange(bits - 1, 1);
      expect(Array.from(bitmap.words)).toEqual(wordsOf(bits, [bits - 1]));
    }

    const empty = Bitmap.create(0);
    empty.setAll();
    empty.setRange(0, 0);
    expect(empty.popcount()).toBe(0);
    expect(empty.findNextSet(0)).toBe(-1);
  });

  it('wraps a SharedArrayBuffer at an 8-aligned offset and sees the same bits', () => {
    const sab = new SharedArrayBuffer(64);
    const bitmap = Bitmap.wrap(sab, 100, 24);
    expect(bitmap.shared).toBe(true);
    expect(bitmap.buffer).toBe(sab);
    expect(bitmap.byteLength).toBe(16);
    for (const p of [0, 9, 63, 64, 99]) bitmap.set(p);

    const bytes = new Uint8Array(sab);
    expect(Array.from(bytes.subarray(24, 40))).toEqual([
      0x01, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x80, 0x01, 0x00, 0x00, 0x00, 0x08, 0x00, 0x00, 0x00,
    ]);
    expect(bytes.subarray(0, 24).every((b) => b === 0)).toBe(true);
    expect(bytes.subarray(40).every((b) => b === 0)).toBe(true);

    const again = Bitmap.wrap(sab, 100, 24);
    expect([...again.setBits()]).toEqual([0, 9, 63, 64, 99]);
    bytes[24 + 5] = 0x10; // page 44, written through raw memory
    expect(bitmap.test(44)).toBe(true);
    expect(again.test(44)).toBe(true);
    again.clear(0);
    expect(bitmap.test(0)).toBe(false);

    // A whole-buffer wrap of exactly byteLength(bits) bytes works too.
    expect(Bitmap.wrap(new ArrayBuffer(16), 128).words.length).toBe(4);
    expect(Bitmap.wrap(new ArrayBuffer(16), 128).shared).toBe(false);
  });

  it('rejects misaligned or too-small wrap regions with out-of-range', () => {
    const sab = new SharedArrayBuffer(32);
    expectError(() => Bitmap.wrap(sab, 64, 4), 'out-of-range');
    expectError(() => Bitmap.wrap(sab, 64, 12), 'out-of-range');
    expectError(() => Bitmap.wrap(sab, 64, -8), 'out-of-range');
    expectError(() => Bitmap.wrap(sab, 64, 1.5), 'out-of-range');
    expectError(() => Bitmap.wrap(sab, 257, 0), 'out-of-range'); // needs 40 bytes
    expectError(() => Bitmap.wrap(sab, 65, 24), 'out-of-range'); // 16 bytes at 24 overrun 32
    expectError(() => Bitmap.wrap(new ArrayBuffer(0), 1), 'out-of-range');
    expect(Bitmap.wrap(sab, 64, 24).byteLength).toBe(8); // the last slot that fits
    expectError(() => Bitmap.wrap(sab, -1), 'invalid-argument');
  });

  it('rejects out-of-range pages and ranges with out-of-range', () => {
    const bitmap = Bitmap.create(100);
    for (const page of [-1, 100, 128, 1.5, NaN, Infinity]) {
      expectError(() => bitmap.test(page), 'out-of-range');
      expectError(() => bitmap.set(page), 'out-of-range');
      expectError(() => bitmap.clear(page), 'out-of-range');
      expectError(() => bitmap.setAtomic(page), 'out-of-range');
      expectError(() => bitmap.testAndSet(page), 'out-of-range');
      expectError(() => bitmap.testAndClear(page), 'out-of-range');
    }
    expect(expectError(() => bitmap.test(100), 'out-of-range').message).toBe(
      '[dirtytrack] [bitmap] page 100 is outside [0, 100)',
    );
    expectError(() => bitmap.setRange(95, 6), 'out-of-range');
    expectError(() => bitmap.setRange(-1, 2), 'out-of-range');
    expectError(() => bitmap.clearRange(0, 101), 'out-of-range');
    expectError(() => bitmap.clearRange(0, -1), 'out-of-range');
    expectError(() => bitmap.setRange(0.5, 1), 'out-of-range');
    expectError(() => bitmap.findNextSet(-1), 'out-of-range');
    expectError(() => bitmap.findNextSet(0.5), 'out-of-range');
    expectError(() => bitmap.collectSetBits(-3, new Uint32Array(4)), 'out-of-range');
    expect(bitmap.popcount()).toBe(0); // nothing was half-applied
  });

  it('rejects a size mismatch in or/andNot/copyFrom/collectInto with invalid-argument', () => {
    const a = Bitmap.create(100);
    const b = Bitmap.create(101); // same byte length, different page count
    expect(a.byteLength).toBe(b.byteLength);
    expectError(() => a.or(b), 'invalid-argument');
    expectError(() => a.andNot(b), 'invalid-argument');
    expectError(() => a.copyFrom(b), 'invalid-argument');
    expectError(() => a.collectInto(b), 'invalid-argument');
    expectError(() => a.collectInto(b, 'plain'), 'invalid-argument');
    expect(expectError(() => a.or(Bitmap.create(7)), 'invalid-argument').message).toBe(
      '[dirtytrack] [bitmap] or: bitmaps cover 100 and 7 pages',
    );
  });

  it('single-bit operations return and store exact values', () => {
    const bitmap = Bitmap.create(70);
    expect(bitmap.testAndSet(31)).toBe(false);
    expect(bitmap.testAndSet(31)).toBe(true);
    expect(bitmap.testAndSet(69)).toBe(false);
    bitmap.setAtomic(0);
    bitmap.setAtomic(0);
    expect(Array.from(bitmap.words)).toEqual([0x8000_0001, 0, 0x20, 0]);
    expect(bitmap.testAndClear(31)).toBe(true);
    expect(bitmap.testAndClear(31)).toBe(false);
    bitmap.clear(69);
    bitmap.clear(68);
    expect(Array.from(bitmap.words)).toEqual([0x1, 0, 0, 0]);
    expect(bitmap.test(0)).toBe(true);
    expect(bitmap.test(1)).toBe(false);
  });

  it('clone copies bits into an independent bitmap of the same kind unless told otherwise', () => {
    const original = bitmapOf(100, [3, 64], true);
    const copy = original.clone();
    expect(copy.shared).toBe(true);
    expect(Array.from(copy.words)).toEqual(Array.from(original.words));
    copy.set(4);
    expect(original.test(4)).toBe(false);
    const plain = original.clone({ shared: false });
    expect(plain.shared).toBe(false);
    expect([...plain.setBits()]).toEqual([3, 64]);
    expect(Bitmap.create(10).shared).toBe(false);
    expect(Bitmap.create(10, { shared: true }).buffer).toBeInstanceOf(SharedArrayBuffer);
  });

  it('popcount32 and ctz32 return exact values', () => {
    expect(popcount32(0)).toBe(0);
    expect(popcount32(1)).toBe(1);
    expect(popcount32(0xffff_ffff)).toBe(32);
    expect(popcount32(0x8000_0000)).toBe(1);
    expect(popcount32(0x5555_5555)).toBe(16);
    expect(popcount32(0xf0f0_0001)).toBe(9);
    expect(popcount32(-1)).toBe(32);
    expect(ctz32(1)).toBe(0);
    expect(ctz32(12)).toBe(2);
    expect(ctz32(0x0001_0000)).toBe(16);
    expect(ctz32(0x8000_0000)).toBe(31);
    expect(ctz32(-0x8000_0000)).toBe(31);
    expect(ctz32(0xffff_ffff)).toBe(0);
  });

  it('collectSetBits fills at most out.length pages and continues from last + 1', () => {
    const bitmap = bitmapOf(200, [0, 5, 31, 32, 33, 63, 64, 127, 128, 199]);
    const out = new Uint32Array(3);
    expect(bitmap.collectSetBits(0, out)).toBe(3);
    expect(Array.from(out)).toEqual([0, 5, 31]);
    expect(bitmap.collectSetBits(32, out)).toBe(3);
    expect(Array.from(out)).toEqual([32, 33, 63]);
    expect(bitmap.collectSetBits(64, out)).toBe(3);
    expect(Array.from(out)).toEqual([64, 127, 128]);
    expect(bitmap.collectSetBits(129, out)).toBe(1);
    expect(out[0]).toBe(199);
    expect(bitmap.collectSetBits(200, out)).toBe(0);
    expect(bitmap.collectSetBits(1000, out)).toBe(0);
    expect(bitmap.collectSetBits(0, new Uint32Array(0))).toBe(0);
  });
});

type PageOp = { kind: 'set' | 'clear' | 'setAtomic' | 'testAndSet' | 'testAndClear'; page: number };
type RangeOp = { kind: 'setRange' | 'clearRange'; start: number; count: number };
type Op = PageOp | RangeOp | { kind: 'setAll' | 'clearAll' };

function pageArb(bits: number): fc.Arbitrary<number> {
  // Uniform pages plus pages next to 32-bit word boundaries, where masks go wrong.
  const boundary = fc
    .tuple(fc.nat(Math.floor((bits - 1) / 32)), fc.constantFrom(0, 1, 30, 31))
    .map(([word, bit]) => Math.min(bits - 1, word * 32 + bit));
  return fc.oneof(fc.integer({ min: 0, max: bits - 1 }), boundary);
}

function rangeArb(bits: number): fc.Arbitrary<{ start: number; count: number }> {
  const edge = fc.oneof(fc.integer({ min: 0, max: bits }), pageArb(bits), fc.constant(bits));
  return fc.tuple(edge, edge).map(([a, b]) => ({ start: Math.min(a, b), count: Math.abs(a - b) }));
}

function opArb(bits: number): fc.Arbitrary<Op> {
  const pageOp: fc.Arbitrary<Op> = fc.record({
    kind: fc.constantFrom('set', 'clear', 'setAtomic', 'testAndSet', 'testAndClear'),
    page: pageArb(bits),
  });
  const rangeOp: fc.Arbitrary<Op> = fc
    .tuple(fc.constantFrom('setRange', 'clearRange'), rangeArb(bits))
    .map(([kind, range]) => ({ kind, ...range }));
  const wholeOp: fc.Arbitrary<Op> = fc.constantFrom({ kind: 'setAll' }, { kind: 'clearAll' });
  return fc.oneof(
    { weight: 6, arbitrary: pageOp },
    { weight: 3, arbitrary: rangeOp },
    { weight: 1, arbitrary: wholeOp },
  );
}

/** Applies `op` to the bitmap and the reference set; checks the return values of test-and-*. */
function apply(bitmap: Bitmap, ref: Set<number>, op: Op): void {
  switch (op.kind) {
    case 'set':
    case 'setAtomic':
      bitmap[op.kind](op.page);
      ref.add(op.page);
      return;
    case 'clear':
      bitmap.clear(op.page);
      ref.delete(op.page);
      return;
    case 'testAndSet':
      expect(bitmap.testAndSet(op.page)).toBe(ref.has(op.page));
      ref.add(op.page);
      return;
    case 'testAndClear':
      expect(bitmap.testAndClear(op.page)).toBe(ref.has(op.page));
      ref.delete(op.page);
      return;
    case 'setRange':
      bitmap.setRange(op.start, op.count);
      for (let p = op.start; p < op.start + op.count; p++) ref.add(p);
      return;
    case 'clearRange':
      bitmap.clearRange(op.start, op.count);
      for (let p = op.start; p < op.start + op.count; p++) ref.delete(p);
      return;
    case 'setAll':
      bitmap.setAll();
      for (let p = 0; p < bitmap.bits; p++) ref.add(p);
      return;
    case 'clearAll':
      bitmap.clearAll();
      ref.clear();
      return;
  }
}

/** Compares every read-side operation of `bitmap` against the reference set. */
function expectMatches(bitmap: Bitmap, ref: Set<number>, froms: readonly number[], batch: number): void {
  const bits = bitmap.bits;
  const expected = sorted(ref);
  expect(Array.from(bitmap.words)).toEqual(wordsOf(bits, expected));
  expect(bitmap.popcount()).toBe(ref.size);
  expect([...bitmap.setBits()]).toEqual(expected);
  const tested: boolean[] = [];
  const wanted: boolean[] = [];
  for (let p = 0; p < bits; p++) {
    tested.push(bitmap.test(p));
    wanted.push(ref.has(p));
  }
  expect(tested).toEqual(wanted);

  const out = new Uint32Array(batch);
  for (const from of [0, 1, bits - 1, bits, bits + 1, bits + 64, ...froms]) {
    const tail = expected.filter((p) => p >= from);
    expect(bitmap.findNextSet(from)).toBe(tail[0] ?? -1);
    expect([...bitmap.setBits(from)]).toEqual(tail);
    // Batches of out.length, continuing at last + 1, must give exactly the tail, in order.
    const collected: number[] = [];
    let next = from;
    for (let calls = 0; ; calls++) {
      expect(calls).toBeLessThanOrEqual(tail.length + 1);
      const n = bitmap.collectSetBits(next, out);
      if (n === 0) break;
      // Only the last non-empty batch may be short.
      if (n < out.length) expect(collected.length + n).toBe(tail.length);
      collected.push(...out.subarray(0, n));
      next = (out[n - 1] as number) + 1;
    }
    expect(collected).toEqual(tail);
  }
}

describe('Bitmap vs a Set<number> reference (property)', () => {
  it('random op sequences leave the same set, seen through every read operation', async () => {
    const scenario = fc.integer({ min: 1, max: 2000 }).chain((bits) =>
      fc.record({
        bits: fc.constant(bits),
        shared: fc.boolean(),
        ops: fc.array(opArb(bits), { maxLength: 60 }),
        froms: fc.array(fc.integer({ min: 0, max: bits + 70 }), { maxLength: 6 }),
        batch: fc.integer({ min: 1, max: 9 }),
      }),
    );
    await assertProperty(
      fc.property(scenario, ({ bits, shared, ops, froms, batch }) => {
        const bitmap = Bitmap.create(bits, { shared });
        const ref = new Set<number>();
        for (const op of ops) apply(bitmap, ref, op);
        expectMatches(bitmap, ref, froms, batch);
      }),
      150,
    );
  });

  it('or, andNot, copyFrom and collectInto (xchg and plain) act word-wise like set algebra', async () => {
    const scenario = fc.integer({ min: 1, max: 2000 }).chain((bits) =>
      fc.record({
        bits: fc.constant(bits),
        a: fc.array(pageArb(bits), { maxLength: 300 }),
        b: fc.array(pageArb(bits), { maxLength: 300 }),
        sharedA: fc.boolean(),
        sharedB: fc.boolean(),
        fillA: fc.boolean(),
      }),
    );
    await assertProperty(
      fc.property(scenario, ({ bits, a, b, sharedA, sharedB, fillA }) => {
        const A = new Set(
          fillA ? Array.from({ length: bits }, (_, i) => i).filter((p) => !b.includes(p)) : a,
        );
        const B = new Set(b);
        const union = sorted(new Set([...A, ...B]));
        const aMinusB = sorted([...A].filter((p) => !B.has(p)));
        const make = (): [Bitmap, Bitmap] => [bitmapOf(bits, A, sharedA), bitmapOf(bits, B, sharedB)];

        let [x, y] = make();
        x.or(y);
        expect(Array.from(x.words)).toEqual(wordsOf(bits, union));
        expect(Array.from(y.words)).toEqual(wordsOf(bits, B));

        [x, y] = make();
        x.andNot(y);
        expect(Array.from(x.words)).toEqual(wordsOf(bits, aMinusB));
        expect(Array.from(y.words)).toEqual(wordsOf(bits, B));

        [x, y] = make();
        x.copyFrom(y);
        expect(Array.from(x.words)).toEqual(wordsOf(bits, B));
        y.setAll();
        expect(x.popcount()).toBe(B.size); // a copy, not a view

        for (const mode of ['xchg', 'plain'] as const) {
          const [src, dst] = make();
          const fresh = src.collectInto(dst, mode);
          expect(fresh).toBe(aMinusB.length);
          expect(Array.from(dst.words)).toEqual(wordsOf(bits, union));
          expect(Array.from(src.words)).toEqual(wordsOf(bits, []));
          expect(src.collectInto(dst, mode)).toBe(0);
        }
      }),
      150,
    );
  });
});

describe('collectInto xchg against concurrent setAtomic (worker_threads)', () => {
  it('loses no page and counts none twice', async () => {
    // 4 setters, 500 epochs; in each epoch every setter sets 1,000 pages, the four slices
    // disjoint and in random order, so every word is shared by several setters. A small bitmap
    // keeps collection passes short, so sets often race the collector: with a non-atomic
    // read-then-zero collection (mode 'plain') this test loses tens to hundreds of pages a run.
    const WORKERS = 4;
    const EPOCHS = 500;
    const PER_EPOCH = 1_000;
    const BITS = 4_500;
    const OFFSET = 64; // the bitmap lives at an 8-aligned offset of a larger shared buffer

    const rng = createRng(0x5eed);
    const lists = Array.from({ length: WORKERS }, () => new Uint32Array(EPOCHS * PER_EPOCH));
    const unions: number[][] = [];
    const perm = Uint32Array.from({ length: BITS }, (_, i) => i);
    for (let epoch = 0; epoch < EPOCHS; epoch++) {
      for (let i = BITS - 1; i > 0; i--) {
        const j = rng.nextInt(i + 1);
        const t = perm[i] as number;
        perm[i] = perm[j] as number;
        perm[j] = t;
      }
      lists.forEach((list, w) =>
        list.set(perm.subarray(w * PER_EPOCH, (w + 1) * PER_EPOCH), epoch * PER_EPOCH),
      );
      unions.push(wordsOf(BITS, perm.subarray(0, WORKERS * PER_EPOCH)));
    }

    const buffer = new SharedArrayBuffer(OFFSET + Bitmap.byteLength(BITS) + 64);
    const src = Bitmap.wrap(buffer, BITS, OFFSET);
    const acc = Bitmap.create(BITS);
    const control = new Int32Array(new SharedArrayBuffer(SETTER_CONTROL.LENGTH * 4));
    const entry = new URL('./__fixtures__/bitmap-setter.worker.ts', import.meta.url);
    const workers = lists.map((pages) => {
      const data: SetterData = {
        buffer,
        byteOffset: OFFSET,
        bits: BITS,
        pages,
        epochs: EPOCHS,
        perEpoch: PER_EPOCH,
        again: PER_EPOCH / 2,
        control: control.buffer as SharedArrayBuffer,
      };
      return startWorker(entry, data);
    });
    const exits = workers.map((w) => exited(w));
    try {
      await waitUntil(
        () => Atomics.load(control, SETTER_CONTROL.READY) === WORKERS,
        15_000,
        'setters to attach',
      );
      const deadline = performance.now() + 15_000;
      let passes = 0;
      for (let epoch = 1; epoch <= EPOCHS; epoch++) {
        Atomics.store(control, SETTER_CONTROL.EPOCH, epoch);
        Atomics.notify(control, SETTER_CONTROL.EPOCH);
        let fresh = 0;
        while (Atomics.load(control, SETTER_CONTROL.FINISHED) < epoch * WORKERS) {
          fresh += src.collectInto(acc, 'xchg');
          if (
            ++passes % 64 === 0 &&
            (performance.now() > deadline || Atomics.load(control, SETTER_CONTROL.FAILED))
          ) {
            break;
          }
        }
        expect(Atomics.load(control, SETTER_CONTROL.FAILED)).toBe(0);
        expect(Atomics.load(control, SETTER_CONTROL.FINISHED), `setters finished epoch ${epoch}`).toBe(
          epoch * WORKERS,
        );
        fresh += src.collectInto(acc, 'xchg'); // what the setters left after the last pass

        expect(src.popcount()).toBe(0);
        expect(Array.from(acc.words), `epoch ${epoch}: collected = union`).toEqual(unions[epoch - 1]);
        expect(fresh, `epoch ${epoch}: sum of collectInto results`).toBe(WORKERS * PER_EPOCH);
        acc.clearAll();
      }
      expect(await Promise.all(exits)).toEqual([0, 0, 0, 0]);
      expect(passes).toBeGreaterThanOrEqual(EPOCHS);
    } finally {
      await terminateAll(workers);
    }
  });
});

function expectError(fn: () => unknown, code: DirtytrackErrorCode, component = 'bitmap'): DirtytrackError {
  return expectDirtytrackError(fn, code, component);
}

describe('collectInto stats', () => {
  it('counts each non-zero 64-bit word once, whichever half holds bits', () => {
    const src = Bitmap.create(256); // four 64-bit words
    const dst = Bitmap.create(256);
    src.set(0); // word 0, low half
    src.set(40); // word 0, high half: same 64-bit word
    src.set(100); // word 1, high half only
    src.set(200); // word 3, low half
    const stats = { words64: 5 };
    expect(src.collectInto(dst, 'plain', stats)).toBe(4);
    expect(stats.words64).toBe(5 + 3);
    expect(src.popcount()).toBe(0);
    expect([...dst.setBits()]).toEqual([0, 40, 100, 200]);
  });
});

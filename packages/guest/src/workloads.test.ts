import { createRng, NS_PER_MS, NS_PER_S, type WriteBatch } from '@dirtytrack/core';
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { createHotSetWorkload, createSweepWorkload, createUniformWorkload, fillBelow } from './workloads.js';
import { assertProperty } from './__fixtures__/property.js';

const PROPERTY_SEED = Number(process.env['DIRTYTRACK_PROPERTY_SEED'] ?? 20261125);
const HOT_COUNT_SEED_3 = 36_014;

function collect(w: ReturnType<typeof createSweepWorkload>, from: number, to: number, speed = 1) {
  const out: { vcpu: number; slot: number; offsets: number[] }[] = [];
  w.generate(from, to, speed, (b: WriteBatch) =>
    out.push({ vcpu: b.vcpu, slot: b.slot, offsets: [...b.offsets.subarray(0, b.count)] }),
  );
  return out;
}

describe('sweep workload', () => {
  it('writes each vCPU share in ascending order and wraps', () => {
    // 2 vCPUs × 4096 B/s = 1 page per second each; 5 pages of working set from page 10.
    const w = createSweepWorkload({ vcpus: 2, pages: 32, bytesPerSecond: 4096, offset: 10, workingSet: 5 });
    expect(collect(w, 0, 3 * NS_PER_S)).toEqual([
      { vcpu: 0, slot: 0, offsets: [10, 11, 10] },
      { vcpu: 1, slot: 0, offsets: [12, 13, 14] },
    ]);
    expect(collect(w, 3 * NS_PER_S, 4 * NS_PER_S)).toEqual([
      { vcpu: 0, slot: 0, offsets: [11] },
      { vcpu: 1, slot: 0, offsets: [12] },
    ]);
  });

  it('carries fractional writes so the long-run rate is exact', () => {
    const w = createSweepWorkload({ vcpus: 1, pages: 1000, bytesPerSecond: 4096 * 10 }); // 10 pages/s
    let total = 0;
    for (let t = 0; t < 1000; t++) {
      w.generate(t * 7 * NS_PER_MS, (t + 1) * 7 * NS_PER_MS, 1, (b) => (total += b.count));
    }
    expect(total).toBe(70); // 7 s at 10 pages/s, in 7 ms quanta that each hold 0.07 writes
  });

  it('speed scales the rate and 0 stops writes', () => {
    const w = createSweepWorkload({ vcpus: 1, pages: 100, bytesPerSecond: 4096 * 100 });
    expect(collect(w, 0, NS_PER_S, 0)).toEqual([]);
    expect(collect(w, NS_PER_S, 2 * NS_PER_S, 0.25)[0]?.offsets.length).toBe(25);
  });

  it('rejects bad shapes with the field named', () => {
    expect(() => createSweepWorkload({ vcpus: 0, pages: 10, bytesPerSecond: 1 })).toThrow(/workload\.vcpus/);
    expect(() =>
      createSweepWorkload({ vcpus: 1, pages: 10, bytesPerSecond: 1, offset: 8, workingSet: 4 }),
    ).toThrow(/workload\.working-set/);
    expect(() => createSweepWorkload({ vcpus: 8, pages: 10, bytesPerSecond: 1, workingSet: 4 })).toThrow(
      /cannot be shared/,
    );
    expect(() => createSweepWorkload({ vcpus: 1, pages: 10, bytesPerSecond: -1 })).toThrow(/workload\.rate/);
  });
});

describe('uniform workload', () => {
  it('draws within the working set, reproducibly per seed', () => {
    const make = (seed: number) =>
      createUniformWorkload({
        vcpus: 3,
        pages: 1 << 20,
        bytesPerSecond: 4096 * 1000,
        offset: 4096,
        workingSet: 512,
        rng: createRng(seed),
      });
    const a = collect(make(7), 0, NS_PER_S);
    const b = collect(make(7), 0, NS_PER_S);
    const c = collect(make(8), 0, NS_PER_S);
    expect(a).toEqual(b);
    expect(a).not.toEqual(c);
    expect(a.map((x) => x.offsets.length)).toEqual([1000, 1000, 1000]);
    for (const batch of a) for (const p of batch.offsets) expect(p >= 4096 && p < 4096 + 512).toBe(true);
  });
});

describe('per-vCPU speeds', () => {
  it('scale each vCPU on top of the global speed, and the carry keeps the rate exact', () => {
    const w = createSweepWorkload({ vcpus: 3, pages: 300, bytesPerSecond: 4096 * 100 });
    const speeds = Float64Array.of(1, 0.5, 0);
    const counts = [0, 0, 0];
    for (let t = 0; t < 10; t++) {
      w.generate(
        t * 100 * NS_PER_MS,
        (t + 1) * 100 * NS_PER_MS,
        0.5,
        (b) => (counts[b.vcpu] = (counts[b.vcpu] as number) + b.count),
        speeds,
      );
    }
    // 1 s at 100 pages/s × 0.5 global: 50, 25 and 0 writes.
    expect(counts).toEqual([50, 25, 0]);
    expect(() => w.generate(0, 1, 1, () => {}, Float64Array.of(1))).toThrow(/3 vCPUs/);
  });
});

/** lists, seed 3: cold writes on a listed page; each vCPU's pages drawn once and twice. */
const LISTS_COLD_ON_LIST_SEED_3 = 397;
const LISTS_ONCE_TWICE_SEED_3 = [
  [903, 44],
  [907, 45],
];

describe('hot-set workload', () => {
  const make = (
    seed: number,
    extra: { hotFraction?: number; hotWriteFraction?: number; hotLayout?: 'first' | 'spread' | 'lists' } = {},
  ) =>
    createHotSetWorkload({
      vcpus: 2,
      pages: 1 << 16,
      bytesPerSecond: 4096 * 20_000,
      offset: 1000,
      workingSet: 10_000,
      rng: createRng(seed),
      ...extra,
    });

  it('sends the hot write fraction to the first hot-fraction pages of the working set', () => {
    // Defaults: 10 % hot (pages 1000..1999), 90 % of writes there.
    const batches = collect(make(3), 0, NS_PER_S);
    expect(batches.map((b) => b.offsets.length)).toEqual([20_000, 20_000]);
    let hot = 0;
    let total = 0;
    for (const b of batches) {
      for (const p of b.offsets) {
        expect(p >= 1000 && p < 11_000).toBe(true);
        if (p < 2000) hot++;
        total++;
      }
    }
    // Binomial(40000, 0.9): mean 36000, sd 60; the seeded draw gives exactly this count.
    expect(hot).toBe(HOT_COUNT_SEED_3);
    expect(Math.abs(hot - 36_000)).toBeLessThan(300);
    expect(total).toBe(40_000);
  });

  it('spread: the same draws, the hot pages one every stride pages, the cold ones between and after', () => {
    // 1000 hot pages of 10,000: stride 10, hot pages 1000, 1010, ..., 10,990.
    const batches = collect(make(3, { hotLayout: 'spread' }), 0, NS_PER_S);
    let hot = 0;
    for (const b of batches) {
      for (const p of b.offsets) {
        expect(p >= 1000 && p < 11_000).toBe(true);
        if ((p - 1000) % 10 === 0) hot++;
      }
    }
    // The coins are the first layout's: as many hot writes, exactly.
    expect(hot).toBe(HOT_COUNT_SEED_3);
    // 7 pages, 2 hot: stride 3, hot pages 0 and 3; cold pages 1, 2, 4, 5 and the tail's 6.
    const tiny = (hotWriteFraction: number): number[] => {
      const w = createHotSetWorkload({
        vcpus: 1,
        pages: 100,
        bytesPerSecond: 4096 * 1000,
        offset: 50,
        workingSet: 7,
        hotFraction: 2 / 7,
        hotWriteFraction,
        hotLayout: 'spread',
        rng: createRng(9),
      });
      const seen = new Set<number>();
      w.generate(0, NS_PER_S, 1, (b) => {
        for (let i = 0; i < b.count; i++) seen.add(b.offsets[i] as number);
      });
      return [...seen].sort((a, b) => a - b);
    };
    expect(tiny(1)).toEqual([50, 53]);
    expect(tiny(0)).toEqual([51, 52, 54, 55, 56]);
    expect(() => make(1, { hotLayout: 'middle' as 'first' })).toThrow(/workload\.hot-layout: middle/);
  });

  it("lists: each vCPU's hot writes on its own list, drawn with repeats as a live vCPU draws it; a page drawn twice gets twice the writes", () => {
    // 10 % of the 10,000-page working set: lists of 1,000 draws, createRng(3).fork(v)'s first ones.
    const lists = [0, 1].map((v) => {
      const l = new Uint32Array(1000);
      createRng(3).fork(v).fillInts(l, 1000, 10_000);
      return l;
    });
    const writes = [new Uint32Array(10_000), new Uint32Array(10_000)];
    let hot = 0;
    for (const b of collect(make(3, { hotLayout: 'lists' }), 0, NS_PER_S)) {
      const list = lists[b.vcpu] as Uint32Array;
      for (const p of b.offsets) {
        expect(p >= 1000 && p < 11_000).toBe(true);
        const counts = writes[b.vcpu] as Uint32Array;
        counts[p - 1000] = (counts[p - 1000] as number) + 1;
        if (list.includes(p - 1000)) hot++;
      }
    }
    // The first layout's hot coins (the same generator), and the cold writes that land on a list.
    expect(hot).toBe(HOT_COUNT_SEED_3 + LISTS_COLD_ON_LIST_SEED_3);
    for (const v of [0, 1]) {
      const list = [...(lists[v] as Uint32Array)];
      const drawn = new Uint8Array(10_000);
      for (const p of list) drawn[p] = (drawn[p] as number) + 1;
      const w = writes[v] as Uint32Array;
      // Mean writes per draw of the pages drawn once, and of those drawn twice.
      const perDraw = (k: number): number => {
        let sum = 0;
        let n = 0;
        for (let p = 0; p < 10_000; p++) {
          if (drawn[p] !== k) continue;
          sum += (w[p] as number) / k;
          n++;
        }
        return sum / n;
      };
      expect([drawn.filter((k) => k === 1).length, drawn.filter((k) => k === 2).length]).toEqual(
        LISTS_ONCE_TWICE_SEED_3[v],
      );
      expect(perDraw(2) / perDraw(1)).toBeGreaterThan(0.9);
      expect(perDraw(2) / perDraw(1)).toBeLessThan(1.1);
    }
  });

  it('is reproducible per seed and differs across seeds', () => {
    expect(collect(make(5), 0, NS_PER_S)).toEqual(collect(make(5), 0, NS_PER_S));
    expect(collect(make(5), 0, NS_PER_S)).not.toEqual(collect(make(6), 0, NS_PER_S));
  });

  it('all-hot and never-hot extremes stay in their sets', () => {
    const allHot = collect(make(1, { hotFraction: 1 }), 0, NS_PER_MS * 10);
    for (const b of allHot) for (const p of b.offsets) expect(p >= 1000 && p < 11_000).toBe(true);
    const cold = collect(make(1, { hotWriteFraction: 0 }), 0, NS_PER_MS * 10);
    for (const b of cold) for (const p of b.offsets) expect(p >= 2000 && p < 11_000).toBe(true);
    const hotOnly = collect(make(1, { hotWriteFraction: 1, hotFraction: 0.0001 }), 0, NS_PER_MS * 10);
    for (const b of hotOnly) for (const p of b.offsets) expect(p).toBe(1000);
  });

  it('rejects fractions outside their ranges, naming the field', () => {
    expect(() => make(1, { hotFraction: 0 })).toThrow(/workload\.hot-fraction/);
    expect(() => make(1, { hotWriteFraction: 1.5 })).toThrow(/workload\.hot-write-fraction/);
  });

  it('property: every write lands in the working set, hot writes in the hot set, cold ones outside it (but for lists), every layout (seed printed on failure)', async () => {
    await assertProperty(
      fc.property(
        fc.record({
          seed: fc.nat(),
          ws: fc.integer({ min: 1, max: 5000 }),
          hf: fc.double({ min: 0.001, max: 1, noNaN: true }),
          hw: fc.double({ min: 0, max: 1, noNaN: true }),
          layout: fc.constantFrom('first' as const, 'spread' as const, 'lists' as const),
        }),
        (c) => {
          const w = createHotSetWorkload({
            vcpus: 1,
            pages: 10_000,
            bytesPerSecond: 4096 * 500,
            offset: 7,
            workingSet: c.ws,
            hotFraction: c.hf,
            hotWriteFraction: c.hw,
            hotLayout: c.layout,
            rng: createRng(c.seed),
          });
          const hotPages = Math.min(c.ws, Math.max(1, Math.round(c.ws * c.hf)));
          const stride = c.layout === 'spread' ? Math.floor(c.ws / hotPages) : 1;
          const list = new Uint32Array(hotPages);
          createRng(c.seed).fork(0).fillInts(list, hotPages, c.ws);
          // lists: the vCPU's list; cold writes may land on it too.
          const isHot = (p: number): boolean =>
            c.layout === 'lists'
              ? list.includes(p - 7)
              : (p - 7) % stride === 0 && (p - 7) / stride < hotPages;
          let n = 0;
          w.generate(0, NS_PER_S, 1, (b) => {
            for (let i = 0; i < b.count; i++) {
              const p = b.offsets[i] as number;
              if (!(p >= 7 && p < 7 + c.ws)) throw new Error(`page ${p} outside the working set`);
              if (c.hw === 1 && !isHot(p)) throw new Error(`page ${p} outside the hot set`);
              if (c.hw === 0 && hotPages < c.ws && c.layout !== 'lists' && isHot(p))
                throw new Error(`cold page ${p} in the hot set`);
              n++;
            }
          });
          expect(n).toBe(500);
        },
      ),
      60,
      { seed: PROPERTY_SEED },
    );
  });
});

describe('fillBelow', () => {
  it('draws exactly what Rng.fillInts draws, bound by bound, leaving the generator in the same state', () => {
    const bounds = [
      1,
      2,
      3,
      1000,
      13_421_773,
      2 ** 31 - 1,
      2 ** 31,
      2 ** 31 + 1,
      3 * 2 ** 30 + 7,
      2 ** 32 - 1,
      2 ** 32,
    ];
    const a = createRng(7);
    const b = createRng(7);
    const x = new Uint32Array(4096);
    const y = new Uint32Array(4096);
    for (const n of bounds) {
      a.fillInts(x, 4096, n);
      fillBelow(b, y, 4096, n);
      expect(y).toEqual(x);
    }
    expect(b.nextU32()).toBe(a.nextU32());
  });

  it('rejects what fillInts rejects, with its message', () => {
    const out = new Uint32Array(4);
    expect(() => fillBelow(createRng(1), out, 5, 10)).toThrow(/count 5 exceeds buffer length 4/);
    expect(() => fillBelow(createRng(1), out, 4, 0)).toThrow(/bound 0 is not an integer/);
  });
});

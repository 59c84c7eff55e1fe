import { createRng, NS_PER_MS, NS_PER_S, type WriteBatch } from '@dirtytrack/core';
import { describe, expect, it } from 'vitest';
import { createSweepWorkload, createUniformWorkload } from './workloads.js';

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

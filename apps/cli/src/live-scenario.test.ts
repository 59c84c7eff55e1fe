import { createRng, NS_PER_S } from '@dirtytrack/core';
import { createHotSetWorkload } from '@dirtytrack/guest';
import { describe, expect, it } from 'vitest';
import { liveScenario, type LiveRunShape } from './live-scenario.js';
import { liveWorkload } from './live.js';
import { scenarioSchema } from './scenario.js';

const shape: LiveRunShape = {
  name: 'x',
  seed: 3,
  memory: 32 * 2 ** 20,
  vcpus: 2,
  writesPerVcpu: 1000,
  linkBytesPerSecond: 1.25e9,
  maxBandwidth: 25e6,
  downtimeLimit: 200,
  channels: 0,
  autoConverge: false,
  zeroCopySend: false,
  timeLimit: 60,
};

describe('liveScenario', () => {
  it("writes uniformly at the live rate unless the live guest runs a hot set: then each vCPU its own list, as the live vCPUs' are", () => {
    expect(liveScenario(shape).workload).toEqual({ kind: 'uniform', rate: 4_096_000 });
    const hot = liveScenario({ ...shape, hotSet: { pages: 2, share: 128 }, memory: 4 * 4096, vcpus: 1 });
    // Lists of 2 of the 4 pages; half of each vCPU's writes go to its list.
    expect(hot.workload).toEqual({
      kind: 'hotset',
      rate: 4_096_000,
      'hot-fraction': 0.5,
      'hot-write-fraction': 0.5,
      'hot-layout': 'lists',
    });
  });

  it('a sweep at the live rate, a trace as its file, each as far along as the live guest was', () => {
    expect(liveScenario({ ...shape, sweep: true, runBefore: 0.25 }).workload).toEqual({
      kind: 'sweep',
      rate: 4_096_000,
      'run-before': 0.25,
    });
    expect(
      liveScenario({ ...shape, trace: { file: '/t/guest.trace', loop: true }, runBefore: 0.3 }).workload,
    ).toEqual({ kind: 'trace', file: '/t/guest.trace', loop: true, 'run-before': 0.3 });
  });

  it("the dirty log bitmap, or a dirty ring of the live run's size", () => {
    expect(liveScenario(shape).reporter).toBeUndefined(); // the scenario's default: bitmap
    const ring = liveScenario({ ...shape, dirtyRing: 256 });
    expect([ring.reporter, ring['ring-size']]).toEqual(['ring', 256]);
    expect(scenarioSchema.parse(ring).reporter).toBe('ring');
  });

  it("dirty-limit with the live run's quota and period (off without it)", () => {
    expect(
      liveScenario({ ...shape, dirtyRing: 4096 }).migration?.capabilities?.['dirty-limit'],
    ).toBeUndefined();
    const limited = liveScenario({ ...shape, dirtyRing: 4096, dirtyLimit: { quota: 3, periodMs: 500 } });
    expect(limited.migration?.capabilities?.['dirty-limit']).toBe(true);
    expect(limited.migration?.parameters).toMatchObject({
      'vcpu-dirty-limit': 3,
      'x-vcpu-dirty-limit-period': 500,
    });
    const parsed = scenarioSchema.parse(limited).migration;
    expect([
      parsed.capabilities['dirty-limit'],
      parsed.parameters['vcpu-dirty-limit'],
      parsed.parameters['x-vcpu-dirty-limit-period'],
    ]).toEqual([true, 3, 500]);
  });

  it("the model's vCPUs write to exactly the live vCPUs' hot pages (the same seed's draws)", () => {
    const pages = 8192;
    const live = liveWorkload('hot-set', pages);
    if (live.kind !== 'hot-set') throw new Error('not a hot set');
    const w = scenarioSchema.parse(
      liveScenario({ ...shape, seed: 7, memory: pages * 4096, hotSet: live }),
    ).workload;
    const model = createHotSetWorkload({
      vcpus: 2,
      pages,
      bytesPerSecond: 4096 * 100_000,
      hotFraction: w['hot-fraction'],
      hotWriteFraction: 1,
      hotLayout: w['hot-layout'],
      rng: createRng(7),
    });
    const written = [new Set<number>(), new Set<number>()];
    model.generate(0, NS_PER_S, 1, (b) => {
      for (let i = 0; i < b.count; i++) written[b.vcpu]?.add(b.offsets[i] as number);
    });
    for (const v of [0, 1]) {
      // As live-vcpu.ts draws a vCPU's hot pages: its generator's first draws, with repeats.
      const drawn = new Uint32Array(live.pages);
      createRng(7).fork(v).fillInts(drawn, drawn.length, pages);
      const distinct = new Set(drawn);
      // 512 draws of 8,192 pages: 502 and 495 distinct, every one written (100,000 writes each).
      expect(distinct.size).toBe(v === 0 ? 502 : 495);
      expect([...(written[v] as Set<number>)].sort((a, b) => a - b)).toEqual(
        [...distinct].sort((a, b) => a - b),
      );
    }
  });
});

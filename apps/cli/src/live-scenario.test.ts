import { createRng } from '@dirtytrack/core';
import { describe, expect, it } from 'vitest';
import { liveScenario, modelHotSet, type LiveRunShape } from './live-scenario.js';
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
  it('writes uniformly at the live rate unless the live guest runs a hot set, spread as the live draws are', () => {
    expect(liveScenario(shape).workload).toEqual({ kind: 'uniform', rate: 4_096_000 });
    const hot = liveScenario({ ...shape, hotSet: { pages: 2, share: 128 }, memory: 4 * 4096, vcpus: 1 });
    // 1 − (3/4)² of RAM hot; half the writes go there, and of the other half 0.4375 land there too.
    expect(hot.workload).toEqual({
      kind: 'hotset',
      rate: 4_096_000,
      'hot-fraction': 0.4375,
      'hot-write-fraction': 0.71875,
      'hot-layout': 'spread',
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

  it("modelHotSet's hot fraction is the share of RAM the live vCPUs' own draws cover", () => {
    // As live-vcpu.ts draws them: each vCPU's generator (the seed's fork) picks its hot pages with repeats.
    const pages = 8192;
    const hot = liveWorkload('hot-set', pages);
    if (hot.kind !== 'hot-set') throw new Error('not a hot set');
    const { 'hot-fraction': fraction } = modelHotSet(hot, pages, 2);
    expect(fraction).toBeCloseTo(0.1175, 4);
    let covered = 0;
    const seeds = 20;
    for (let seed = 1; seed <= seeds; seed++) {
      const seen = new Uint8Array(pages);
      for (let v = 0; v < 2; v++) {
        const draw = new Uint32Array(hot.pages);
        createRng(seed).fork(v).fillInts(draw, draw.length, pages);
        for (const p of draw) seen[p] = 1;
      }
      covered += seen.reduce((a, b) => a + b, 0);
    }
    // About 963 pages expected per seed; the mean of these 20 seeds is 0.9993 of it.
    expect(covered / seeds / pages / fraction).toBeGreaterThan(0.99);
    expect(covered / seeds / pages / fraction).toBeLessThan(1.01);
  });
});

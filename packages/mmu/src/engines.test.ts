import { createVirtualClock, DEFAULT_COST_MODEL, NS_PER_S } from '@dirtytrack/core';
import { createModelEngine, createModelMemory, createSweepWorkload } from '@dirtytrack/guest';
import { describe, expect, it } from 'vitest';
import { createMmu } from './index.js';

// The tracker conformance suites for the MMU run in conformance.test.ts.

describe('the model engine drives the MMU', () => {
  it('charges fast faults, slow faults and fault-time splits from the cost model', () => {
    const clock = createVirtualClock();
    const mmu = createMmu({ vcpus: 1, logging: 'write-protect' });
    mmu.setUserMemoryRegion({
      slot: 0,
      guestPhysAddr: 0,
      memorySize: 2 ** 30,
      userspaceAddr: 0,
      backing: '1G',
    });
    mmu.populate(0);
    const pages: number[] = [];
    mmu.attach({ markDirty: (_s, offsets, count) => pages.push(...offsets.subarray(0, count)) });
    mmu.enableLogging({ id: 0, asId: 0, baseGfn: 0, pages: 262_144 });
    const engine = createModelEngine({
      clock,
      workload: createSweepWorkload({ vcpus: 1, pages: 262_144, bytesPerSecond: 4096 * 4 }),
      tracker: mmu,
      memory: createModelMemory(262_144),
    });
    engine.runGuestUntil(NS_PER_S);
    expect(pages).toEqual([0, 1, 2, 3]);
    // Page 0: slow fault splitting the write-protected 1G page twice (1G → 2M → 4K). Pages 1–3:
    // their 4K SPTEs inherited MMU-writable, so they take the fast path.
    expect(mmu.stats()).toMatchObject({ faults: 4, slowFaults: 1, fastFaults: 3, splits: 2 });
    const c = DEFAULT_COST_MODEL;
    expect(engine.stats().faultTimeNs).toBe(c.slowFaultNs + 2 * c.hugePageSplitNs + 3 * c.writeFaultNs);
    expect(engine.stats().faultTimeNs).toBe(11_500);
  });
});

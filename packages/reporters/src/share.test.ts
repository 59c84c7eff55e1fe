import { Bitmap, createRWLock, type DirtySink, type MemslotInfo, type Rearmer } from '@dirtytrack/core';
import { expectDirtytrackError } from '@dirtytrack/testkit';
import { describe, expect, it } from 'vitest';
import { createBitmapReporter, createRingReporter, type RingReporter } from './index.js';

// SharedReporter.share(): the AttachSpec a worker vCPU uses to rebuild the producer side of a
// reporter. The spec goes through structuredClone (what postMessage does) and is resolved the
// way the live engine's workers resolve it: import(module)[factory](data).

const slot: MemslotInfo = { id: 3, asId: 1, baseGfn: 1000, pages: 200 };
const rearmed: number[] = [];
const rearmer: Rearmer = {
  rearm(_slot, mask) {
    for (let p = mask.findNextSet(0); p >= 0; p = mask.findNextSet(p + 1)) rearmed.push(p);
    return mask.popcount();
  },
};

async function attach<T>(spec: { module: string; factory: string; data: unknown }): Promise<T> {
  const cloned = structuredClone(spec);
  const mod = (await import(cloned.module)) as Record<string, (data: unknown) => T>;
  const factory = mod[cloned.factory];
  if (factory === undefined) throw new Error(`${cloned.module} has no export ${cloned.factory}`);
  return factory(cloned.data);
}

describe('bitmap reporter share()', () => {
  it('names attachBitmapReporter, whose sink sets bits the owner harvests', async () => {
    rearmed.length = 0;
    const owner = createBitmapReporter({ rearmer, slots: [slot], shared: true });
    const spec = owner.share();
    expect(spec.module).toBe('@dirtytrack/reporters');
    expect(spec.factory).toBe('attachBitmapReporter');
    const sink = await attach<DirtySink>(spec);
    sink.markDirty(3, Uint32Array.of(0, 63, 64, 199, 63), 5, 0);
    const out = Bitmap.create(200);
    expect(owner.getDirtyLog(3, out)).toBe(4);
    expect([0, 63, 64, 199].every((p) => out.test(p))).toBe(true);
    expect(rearmed).toEqual([0, 63, 64, 199]);
    expectDirtytrackError(
      () => sink.markDirty(3, Uint32Array.of(200), 1, 0),
      'bitmap-reporter',
      'out-of-range',
    );
  });

  it("carries the mmu_lock in 'locked' mode", () => {
    const lock = createRWLock();
    const owner = createBitmapReporter({ rearmer, slots: [slot], updates: 'locked', lock, shared: true });
    const data = structuredClone(owner.share().data) as { updates: string; lock: { byteOffset: number } };
    expect(data.updates).toBe('locked');
    expect(data.lock.byteOffset).toBe(0);
  });

  it('refuses to share an unshared bitmap', () => {
    const owner = createBitmapReporter({ rearmer, slots: [slot] });
    expectDirtytrackError(() => owner.share(), 'bitmap-reporter', 'invalid-state');
  });
});

describe('ring reporter share()', () => {
  it('names attachRingReporter, whose rings the owner harvests in push order', async () => {
    rearmed.length = 0;
    const owner = createRingReporter({ vcpus: 2, entries: 256, rearmer, slots: [slot] });
    const spec = owner.share();
    expect(spec.factory).toBe('attachRingReporter');
    const producer = await attach<RingReporter>(spec);
    producer.markDirty(3, Uint32Array.of(5, 9, 5), 3, 1);
    expect(producer.room(1)).toBe(owner.softLimit - 3);
    const seen: [number, number][] = [];
    expect(owner.harvest(1, (s, o) => seen.push([s, o]))).toBe(3);
    const packed = (1 << 16) | 3;
    expect(seen).toEqual([
      [packed, 5],
      [packed, 9],
      [packed, 5],
    ]);
    expect(owner.reset()).toBe(3);
    expect(rearmed).toEqual([5, 9]);
  });
});

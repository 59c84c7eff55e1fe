import { Bitmap, createVirtualClock, type MemslotInfo } from '@dirtytrack/core';
import { createRingReporter } from '@dirtytrack/reporters';
import { expectDirtytrackError } from '@dirtytrack/testkit';
import { describe, expect, it } from 'vitest';
import { logging } from './__fixtures__/scripted.js';
import { createQemuLayers } from './qemu-layers.js';
import { createRingReaper, RING_REAPER_INTERVAL_MS_DEFAULT } from './ring-reaper.js';

const MS = 1e6;

describe('createRingReaper (kvm-reaper, virtual time)', () => {
  it('reaps every 1 s from its start, at exactly start + k·1000 ms', () => {
    const clock = createVirtualClock(250 * MS);
    const pending = [3, 0, 5, 7];
    const calls: number[] = [];
    const reaper = createRingReaper({
      clock,
      rings: { reap: () => pending.shift() ?? 0 },
      onReap: (n, now) => calls.push(now / MS, n),
    });
    expect(RING_REAPER_INTERVAL_MS_DEFAULT).toBe(1000);
    expect(reaper.state).toBe('wait');
    expect(reaper.nextWakeAt).toBe(1250 * MS);
    clock.advanceTo(1249.999 * MS);
    expect(calls).toEqual([]);
    clock.advanceTo(4250 * MS);
    expect(calls).toEqual([1250, 3, 2250, 0, 3250, 5, 4250, 7]);
    expect(reaper.stats()).toEqual({ iterations: 4, skipped: 0, entries: 15 });
    reaper.stop();
    expect(reaper.state).toBe('stopped');
    expect(reaper.nextWakeAt).toBe(Infinity);
    clock.advanceTo(9000 * MS);
    expect(reaper.stats().iterations).toBe(4);
  });

  it('keeps sleeping while dirty-limit is in service, and honours another interval', () => {
    const clock = createVirtualClock();
    let inService = false;
    const at: number[] = [];
    const reaper = createRingReaper({
      clock,
      intervalMs: 250,
      rings: { reap: () => 1 },
      dirtyLimitInService: () => inService,
      onReap: (_n, now) => at.push(now / MS),
    });
    clock.advanceTo(600 * MS);
    inService = true;
    clock.advanceTo(1100 * MS);
    inService = false;
    clock.advanceTo(1500 * MS);
    expect(at).toEqual([250, 500, 1250, 1500]);
    expect(reaper.stats()).toEqual({ iterations: 4, skipped: 2, entries: 4 });
    expectDirtytrackError(
      () => createRingReaper({ clock, intervalMs: 0, rings: { reap: () => 0 } }),
      'ring-reaper',
      'invalid-argument',
      /intervalMs 0/,
    );
  });

  it('with a real dirty ring: entries move to the slot bitmap at the tick, the migration sync still sees them once', () => {
    const slot: MemslotInfo = { id: 0, asId: 0, baseGfn: 0, pages: 4096 };
    const rearmed: number[] = [];
    const ring = createRingReporter({
      vcpus: 2,
      entries: 4096,
      slots: [slot],
      rearmer: {
        rearm: (_s, mask) => {
          rearmed.push(...mask.setBits());
          return mask.popcount();
        },
      },
    });
    const clock = createVirtualClock();
    const reaper = createRingReaper({ clock, rings: ring });
    ring.markDirty(0, Uint32Array.of(10, 11, 4000), 3, 0);
    ring.markDirty(0, Uint32Array.of(11, 12), 2, 1);
    clock.advanceTo(999 * MS);
    expect([ring.used(0), ring.used(1)]).toEqual([3, 2]);
    clock.advanceTo(1000 * MS);
    // Reaped and reset: the rings are empty, the pages re-armed, nothing is in a bitmap twice.
    expect([ring.used(0), ring.used(1)]).toEqual([0, 0]);
    expect(rearmed.sort((a, b) => a - b)).toEqual([10, 11, 12, 4000]);
    expect(reaper.stats()).toEqual({ iterations: 1, skipped: 0, entries: 5 });
    // A later write goes to the ring; the migration sync (kvm_log_sync_global) reaps it and
    // collects both.
    ring.markDirty(0, Uint32Array.of(99), 1, 1);
    const layers = createQemuLayers({ kvm: { source: ring, logging: logging(), slot }, strategy: 'fused' });
    layers.setup();
    for (let w = 0; w < layers.bmap.words.length; w++) layers.clearSent(w, layers.bmap.words[w] as number);
    const r = layers.sync();
    expect(r.newDirty).toBe(5);
    expect([...layers.bmap.setBits()]).toEqual([10, 11, 12, 99, 4000]);
    const again = Bitmap.create(4096);
    expect(ring.getDirtyLog(0, again)).toBe(0);
    reaper.stop();
  });
});

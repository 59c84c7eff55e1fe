import { Bitmap, type Bitmap as BitmapType, type Rearmer } from '@dirtytrack/core';
import { describe, expect, it } from 'vitest';
import { describeReporter } from '@dirtytrack/testkit';
import { createBitmapReporter } from './bitmap-reporter.js';

const slot = { id: 1, asId: 0, baseGfn: 0, pages: 130 };

function rearmLog(): Rearmer & { masks: number[][] } {
  const masks: number[][] = [];
  return { masks, rearm: (_s: number, m: BitmapType) => (masks.push([...m.setBits()]), m.popcount()) };
}

describe('bitmap reporter', () => {
  it('keeps KVM layout: the live bitmap equals hand-computed little-endian words', () => {
    const r = createBitmapReporter({ rearmer: rearmLog(), slots: [slot] });
    r.markDirty(1, Uint32Array.of(0, 33, 64, 129), 4, 0);
    const live = r.liveBitmap(1);
    expect(live.byteLength).toBe(24); // ALIGN(130, 64) / 8
    expect([...live.words]).toEqual([0x1, 0x2, 0x1, 0x0, 0x2, 0x0]);
    expect([...new Uint8Array(live.buffer)]).toEqual([
      1, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0,
    ]);
  });

  it('GET_DIRTY_LOG copies, clears and re-arms exactly the reported pages, then flushes once', () => {
    const rearmer = rearmLog();
    const r = createBitmapReporter({ rearmer, slots: [slot] });
    r.markDirty(1, Uint32Array.of(5, 70, 71), 3, 2);
    const out = Bitmap.create(130);
    out.set(100); // stale content must be overwritten
    expect(r.getDirtyLog(1, out)).toBe(3);
    expect([...out.setBits()]).toEqual([5, 70, 71]);
    expect(rearmer.masks).toEqual([[5, 70, 71]]);
    expect(r.liveBitmap(1).popcount()).toBe(0);
    expect(r.lastHarvestCost()).toEqual({
      xchgWords: 2,
      copyWords: 3,
      rearmedPages: 3,
      tlbFlushes: 1,
      ringEntries: 0,
    });
    // Nothing dirty: nothing re-armed, no flush.
    expect(r.getDirtyLog(1, out)).toBe(0);
    expect(out.popcount()).toBe(0);
    expect(r.lastHarvestCost()).toEqual({
      xchgWords: 0,
      copyWords: 3,
      rearmedPages: 0,
      tlbFlushes: 0,
      ringEntries: 0,
    });
    expect(rearmer.masks.length).toBe(1);
  });

  it('answers ENOENT-like errors for slots without a log and rejects bad pages', () => {
    const r = createBitmapReporter({ rearmer: rearmLog(), slots: [slot] });
    expect(() => r.getDirtyLog(2, Bitmap.create(130))).toThrow(/slot 2 has no dirty log/);
    expect(() => r.getDirtyLog(1, Bitmap.create(64))).toThrow(/buffer covers 64 pages/);
    expect(() => r.markDirty(1, Uint32Array.of(130), 1, 0)).toThrow(/outside slot 1/);
    expect(() => r.addSlot(slot)).toThrow(/already has a dirty log/);
  });
});

describeReporter('bitmap', (rearmer, slot) => createBitmapReporter({ rearmer, slots: [slot] }));

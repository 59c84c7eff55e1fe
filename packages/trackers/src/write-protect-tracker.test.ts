import { Bitmap, isDirtytrackError, type DirtySink } from '@dirtytrack/core';
import { describe, expect, it } from 'vitest';
import { describeTracker } from '@dirtytrack/testkit';
import { createWriteProtectTracker } from './write-protect-tracker.js';

const slot = { id: 3, asId: 0, baseGfn: 0x100000, pages: 100 };

function sinkLog(): DirtySink & { calls: { slot: number; pages: number[]; vcpu: number }[] } {
  const calls: { slot: number; pages: number[]; vcpu: number }[] = [];
  return {
    calls,
    markDirty: (s, offsets, count, vcpu) =>
      calls.push({ slot: s, pages: [...offsets.subarray(0, count)], vcpu }),
  };
}

describe('write-protect tracker', () => {
  it('faults exactly once per page until re-armed, and reports in write order', () => {
    const t = createWriteProtectTracker();
    const sink = sinkLog();
    t.attach(sink);
    expect(t.enableLogging(slot)).toBe(100);
    expect(t.write(1, 3, Uint32Array.of(7, 5, 7, 99, 5), 5)).toBe(3);
    expect(sink.calls).toEqual([{ slot: 3, pages: [7, 5, 99], vcpu: 1 }]);
    expect(t.write(0, 3, Uint32Array.of(5, 7, 99), 3)).toBe(0);
    const mask = Bitmap.create(100);
    mask.set(7);
    expect(t.rearm(3, mask)).toBe(1);
    expect(t.write(2, 3, Uint32Array.of(5, 7), 2)).toBe(1);
    expect(sink.calls[1]).toEqual({ slot: 3, pages: [7], vcpu: 2 });
    expect(t.stats()).toEqual({ writes: 10, faults: 4, reported: 4, rearmed: 1 });
  });

  it('does not trap writes to slots that do not log', () => {
    const t = createWriteProtectTracker();
    const sink = sinkLog();
    t.attach(sink);
    expect(t.write(0, 3, Uint32Array.of(1, 2), 2)).toBe(0);
    t.enableLogging(slot);
    t.disableLogging(3);
    expect(t.write(0, 3, Uint32Array.of(1, 2), 2)).toBe(0);
    expect(sink.calls).toEqual([]);
  });

  it('rejects misuse with typed errors', () => {
    const t = createWriteProtectTracker();
    t.enableLogging(slot);
    expect(() => t.write(0, 3, Uint32Array.of(1), 1)).toThrow(/no sink attached/);
    t.attach(sinkLog());
    try {
      t.write(0, 3, Uint32Array.of(100), 1);
      expect.unreachable();
    } catch (e) {
      expect(isDirtytrackError(e, 'out-of-range')).toBe(true);
    }
    expect(() => t.enableLogging(slot)).toThrow(/already logging/);
    expect(() => t.rearm(4, Bitmap.create(100))).toThrow(/slot 4 is not logging/);
    expect(() => t.rearm(3, Bitmap.create(64))).toThrow(/mask covers 64 pages/);
  });
});

describeTracker('write-protect', createWriteProtectTracker);

describe('write-protect tracker: sparse re-arm', () => {
  it('re-arms only the listed words when given a touched-word hint', () => {
    const t = createWriteProtectTracker();
    const sink = sinkLog();
    t.attach(sink);
    t.enableLogging(slot);
    t.write(0, 3, Uint32Array.of(1, 40, 70), 3); // all three now writable
    const mask = Bitmap.create(100);
    mask.set(40);
    mask.set(70);
    expect(t.rearm(3, mask, { words: Uint32Array.of(1, 2), count: 2 })).toBe(2);
    expect(t.write(0, 3, Uint32Array.of(1, 40, 70), 3)).toBe(2); // 40 and 70 trap again, 1 does not
    expect(sink.calls[1]?.pages).toEqual([40, 70]);
  });
});

import type { DirtytrackError } from '@dirtytrack/core';
import {
  Bitmap,
  createRWLock,
  popcount32,
  type Bitmap as BitmapType,
  type MemslotInfo,
  type Rearmer,
  type RWLock,
} from '@dirtytrack/core';
import { describe, expect, it } from 'vitest';
import { createBitmapReporter, type BitmapUpdates } from './bitmap-reporter.js';
import { PRODUCER, epochPages, type ProducerData } from './__fixtures__/bitmap-layouts.js';
import {
  blockUntil,
  describeDirtyLogSource,
  describeReporter,
  expectDirtytrackError,
  exitCodes,
  sleepSync,
  startWorker,
  terminateAll,
  waitUntil,
} from '@dirtytrack/testkit';

const slot = { id: 1, asId: 0, baseGfn: 0, pages: 130 };
const MODES: readonly BitmapUpdates[] = ['atomic', 'locked'];
const PRODUCER_WORKER = new URL('./__fixtures__/bitmap-producer.worker.ts', import.meta.url);

function rearmLog(): Rearmer & { masks: number[][] } {
  const masks: number[][] = [];
  return { masks, rearm: (_s: number, m: BitmapType) => (masks.push([...m.setBits()]), m.popcount()) };
}

/** The error `fn` throws, checked to be a DirtytrackError of the bitmap reporter. */
function caught(fn: () => unknown): DirtytrackError {
  return expectDirtytrackError(fn, 'bitmap-reporter');
}

/** A mask of `bits` pages with `pages` set. */
function maskOf(bits: number, pages: readonly number[]): Bitmap {
  const m = Bitmap.create(bits);
  for (const p of pages) m.set(p);
  return m;
}

/** An RWLock that records every call it forwards to a real one. */
function spyLock(inner: RWLock = createRWLock()): RWLock & { calls: string[] } {
  const calls: string[] = [];
  return {
    calls,
    buffer: inner.buffer,
    byteOffset: inner.byteOffset,
    tryReadLock: () => (calls.push('tryReadLock'), inner.tryReadLock()),
    readLock: (t?: number) => (calls.push('readLock'), inner.readLock(t)),
    readUnlock: () => (calls.push('readUnlock'), inner.readUnlock()),
    tryWriteLock: () => (calls.push('tryWriteLock'), inner.tryWriteLock()),
    writeLock: (t?: number) => (calls.push('writeLock'), inner.writeLock(t)),
    writeUnlock: () => (calls.push('writeUnlock'), inner.writeUnlock()),
    inspect: () => inner.inspect(),
  };
}

function bump(counts: Uint32Array, i: number): void {
  counts[i] = (counts[i] as number) + 1;
}

/** Options selecting an update mode (with a fresh lock for 'locked'). */
function modeOptions(updates: BitmapUpdates): { updates: BitmapUpdates; lock?: RWLock } {
  return updates === 'locked' ? { updates, lock: createRWLock() } : { updates };
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

  it('GET_DIRTY_LOG on a large unshared slot skips never-written chunks yet zeroes them in the copy', () => {
    // 200 000 pages = 7 chunks of 32 768 pages in the reporter's summary of written chunks.
    const big = { id: 3, asId: 0, baseGfn: 0, pages: 200_000 };
    for (const updates of ['atomic', 'locked'] as const) {
      const rearmer = rearmLog();
      const r = createBitmapReporter({ rearmer, slots: [big], ...modeOptions(updates) });
      const out = Bitmap.create(big.pages);
      out.setAll(); // stale content everywhere must be overwritten
      r.markDirty(3, Uint32Array.of(5, 70_000, 70_001, 199_999), 4, 0);
      expect(r.getDirtyLog(3, out)).toBe(4);
      expect([...out.setBits()]).toEqual([5, 70_000, 70_001, 199_999]);
      expect(r.lastHarvestCost()).toEqual({
        xchgWords: updates === 'atomic' ? 3 : 0,
        copyWords: 3125,
        rearmedPages: 4,
        tlbFlushes: 1,
        ringEntries: 0,
      });
      // Taken chunks are clean again; a page in a chunk taken before is found again.
      r.markDirty(3, Uint32Array.of(6, 131_072), 2, 0);
      expect(r.getDirtyLog(3, out)).toBe(2);
      expect([...out.setBits()]).toEqual([6, 131_072]);
      expect(r.getDirtyLog(3, out)).toBe(0);
      expect(out.popcount()).toBe(0);
      // Bits set straight into the live bitmap (tests, benchmarks) are found from then on.
      r.liveBitmap(3).set(100_000);
      expect(r.getDirtyLog(3, out)).toBe(1);
      expect([...out.setBits()]).toEqual([100_000]);
      expect(rearmer.masks).toEqual([[5, 70_000, 70_001, 199_999], [6, 131_072], [100_000]]);
    }
  });

  it('GET_DIRTY_LOG copies, clears and re-arms exactly the reported pages, then flushes once', () => {
    const rearmer = rearmLog();
    const r = createBitmapReporter({ rearmer, slots: [slot] });
    expect([r.kind, r.manualProtect, r.initiallySet, r.updates]).toEqual(['bitmap', false, false, 'atomic']);
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

  it('locked GET_DIRTY_LOG does the same with plain loads and stores: no word exchanged', () => {
    const rearmer = rearmLog();
    const r = createBitmapReporter({ rearmer, slots: [slot], updates: 'locked', lock: createRWLock() });
    r.markDirty(1, Uint32Array.of(5, 70, 71), 3, 2);
    const out = Bitmap.create(130);
    out.set(100);
    expect(r.getDirtyLog(1, out)).toBe(3);
    expect([...out.setBits()]).toEqual([5, 70, 71]);
    expect(rearmer.masks).toEqual([[5, 70, 71]]);
    expect([...r.liveBitmap(1).words]).toEqual([0, 0, 0, 0, 0, 0]);
    expect(r.lastHarvestCost()).toEqual({
      xchgWords: 0,
      copyWords: 3,
      rearmedPages: 3,
      tlbFlushes: 1,
      ringEntries: 0,
    });
  });

  it('answers ENOENT for slots without a log and rejects bad pages, buffers and counts', () => {
    const r = createBitmapReporter({ rearmer: rearmLog(), slots: [slot] });
    const noent = caught(() => r.getDirtyLog(2, Bitmap.create(130)));
    expect([noent.code, noent.errno, noent.field]).toEqual(['invalid-state', 'ENOENT', 'slot']);
    expect(noent.message).toBe(
      '[dirtytrack] [bitmap-reporter] getDirtyLog: slot 2 has no dirty log (ENOENT)',
    );
    expect(caught(() => r.getDirtyLog(1, Bitmap.create(64))).message).toMatch(/buffer covers 64 pages/);
    expect(caught(() => r.markDirty(1, Uint32Array.of(130), 1, 0)).message).toMatch(/outside slot 1/);
    expect(caught(() => r.markDirty(1, Uint32Array.of(1), 2, 0)).code).toBe('invalid-argument');
    expect(caught(() => r.addSlot(slot)).message).toMatch(/already has a dirty log/);
  });
});

describe('manual protect (KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2)', () => {
  describe.each(MODES)("updates '%s'", (updates) => {
    it('GET copies without clearing or re-arming; CLEAR re-arms exactly mask ∩ dirty, with one flush', () => {
      const rearmer = rearmLog();
      const r = createBitmapReporter({
        rearmer,
        slots: [slot],
        manualProtect: true,
        ...modeOptions(updates),
      });
      r.markDirty(1, Uint32Array.of(5, 6, 40, 41, 70, 129), 6, 0);
      const before = [...r.liveBitmap(1).words];
      const out = Bitmap.create(130);
      for (let round = 0; round < 2; round++) {
        out.setAll();
        expect(r.getDirtyLog(1, out)).toBe(6);
        expect([...out.setBits()]).toEqual([5, 6, 40, 41, 70, 129]);
        expect([...r.liveBitmap(1).words]).toEqual(before); // still set
        expect(rearmer.masks).toEqual([]); // still unarmed
        expect(r.lastHarvestCost()).toEqual({
          xchgWords: 0,
          copyWords: 3,
          rearmedPages: 0,
          tlbFlushes: 0,
          ringEntries: 0,
        });
      }
      // 5, 6 and 40 are dirty; 7 and 50 are in the mask but clean and must not be re-armed.
      expect(r.clearDirtyLog(1, 0, 64, maskOf(64, [5, 6, 7, 40, 50]))).toBe(3);
      expect(rearmer.masks).toEqual([[5, 6, 40]]);
      expect([...r.liveBitmap(1).setBits()]).toEqual([41, 70, 129]);
      expect(r.lastHarvestCost()).toEqual({
        xchgWords: updates === 'atomic' ? 1 : 0,
        copyWords: 1,
        rearmedPages: 3,
        tlbFlushes: 1,
        ringEntries: 0,
      });
      // Clearing them again finds nothing: no re-arm, no flush.
      expect(r.clearDirtyLog(1, 0, 64, maskOf(64, [5, 6, 7, 40, 50]))).toBe(0);
      expect(rearmer.masks.length).toBe(1);
      expect(r.lastHarvestCost().tlbFlushes).toBe(0);
      expect(r.getDirtyLog(1, out)).toBe(3);
      expect([...out.setBits()]).toEqual([41, 70, 129]);
    });

    it('CLEAR reuses one scratch mask per slot and leaves it clean for the next call', () => {
      const masks: BitmapType[] = [];
      const rearmer = rearmLog();
      const spy: Rearmer = { rearm: (s, m) => (masks.push(m), rearmer.rearm(s, m)) };
      const r = createBitmapReporter({
        rearmer: spy,
        slots: [slot],
        manualProtect: true,
        ...modeOptions(updates),
      });
      r.markDirty(1, Uint32Array.of(1, 65, 100, 128, 129), 5, 0);
      expect(r.clearDirtyLog(1, 64, 66, maskOf(66, [1, 36, 64, 65]))).toBe(4); // 65, 100, 128, 129
      expect(r.clearDirtyLog(1, 0, 64, maskOf(64, [1]))).toBe(1);
      expect(rearmer.masks).toEqual([[65, 100, 128, 129], [1]]);
      expect(masks.length).toBe(2);
      expect(masks[0]).toBe(masks[1]); // one scratch bitmap…
      expect(masks[1]?.popcount()).toBe(0); // …cleared after use
      expect(r.liveBitmap(1).popcount()).toBe(0);
    });
  });

  it('checks CLEAR_DIRTY_LOG arguments in KVM order, each error with its errno', () => {
    const rearmer = rearmLog();
    const r = createBitmapReporter({ rearmer, slots: [slot], manualProtect: true });
    r.markDirty(1, Uint32Array.of(0, 64, 100, 129), 4, 0);
    const m = (bits: number): Bitmap => {
      const b = Bitmap.create(bits);
      b.setAll();
      return b;
    };
    const expectFail = (
      fn: () => unknown,
      want: { code: string; errno: string; field: string; message: string },
    ): void => {
      const e = caught(fn);
      expect({ code: e.code, errno: e.errno, field: e.field, message: e.message }).toEqual({
        ...want,
        message: `[dirtytrack] [bitmap-reporter] clearDirtyLog: ${want.message}`,
      });
    };
    // 1. first_page & 63 — checked before the slot, so an unknown slot still answers EINVAL.
    expectFail(() => r.clearDirtyLog(1, 1, 64, m(64)), {
      code: 'invalid-argument',
      errno: 'EINVAL',
      field: 'firstPage',
      message: 'first_page 1 is not a multiple of 64 (EINVAL)',
    });
    expectFail(() => r.clearDirtyLog(9, 1, 64, m(64)), {
      code: 'invalid-argument',
      errno: 'EINVAL',
      field: 'firstPage',
      message: 'first_page 1 is not a multiple of 64 (EINVAL)',
    });
    // 2. no such slot.
    expectFail(() => r.clearDirtyLog(9, 0, 64, m(64)), {
      code: 'invalid-state',
      errno: 'ENOENT',
      field: 'slot',
      message: 'slot 9 has no dirty log (ENOENT)',
    });
    // 3. the range rules.
    expectFail(() => r.clearDirtyLog(1, 192, 0, m(64)), {
      code: 'out-of-range',
      errno: 'EINVAL',
      field: 'firstPage',
      message: "first_page 192 is beyond slot 1's 130 pages (EINVAL)",
    });
    expectFail(() => r.clearDirtyLog(1, 64, 100, m(100)), {
      code: 'out-of-range',
      errno: 'EINVAL',
      field: 'numPages',
      message: "num_pages 100 from first_page 64 exceeds slot 1's 130 pages (EINVAL)",
    });
    expectFail(() => r.clearDirtyLog(1, 0, 65, m(65)), {
      code: 'invalid-argument',
      errno: 'EINVAL',
      field: 'numPages',
      message: "num_pages 65 is not a multiple of 64 and [0, 65) stops short of the slot's end 130 (EINVAL)",
    });
    expectFail(() => r.clearDirtyLog(1, -64, 64, m(64)), {
      code: 'invalid-argument',
      errno: 'EINVAL',
      field: 'firstPage',
      message: 'first_page -64 and num_pages 64 must be integers >= 0 (EINVAL)',
    });
    // A mask shorter than num_pages: KVM's copy_from_user would fault.
    expectFail(() => r.clearDirtyLog(1, 64, 66, m(64)), {
      code: 'invalid-argument',
      errno: 'EFAULT',
      field: 'mask',
      message: 'the mask covers 64 pages, num_pages is 66 (EFAULT)',
    });
    // Nothing was touched by the rejected calls.
    expect(rearmer.masks).toEqual([]);
    expect([...r.liveBitmap(1).setBits()]).toEqual([0, 64, 100, 129]);
    // num_pages 0 is a no-op, even at first_page == npages rounded down to 64.
    expect(r.clearDirtyLog(1, 0, 0, m(0))).toBe(0);
    expect(r.clearDirtyLog(1, 128, 0, m(0))).toBe(0);
    expect(r.lastHarvestCost()).toEqual({
      xchgWords: 0,
      copyWords: 0,
      rearmedPages: 0,
      tlbFlushes: 0,
      ringEntries: 0,
    });
    // first 64, num 66 reaches the end exactly: accepted although 66 is not a multiple of 64.
    expect(r.clearDirtyLog(1, 64, 66, m(66))).toBe(3);
    expect(rearmer.masks).toEqual([[64, 100, 129]]);
    expect([...r.liveBitmap(1).setBits()]).toEqual([0]);
  });

  it('has no clearDirtyLog without manual protect (contracts.ts: absent), and rejects INITIALLY_SET alone', () => {
    const r = createBitmapReporter({ rearmer: rearmLog(), slots: [slot] });
    expect(r.clearDirtyLog).toBeUndefined();
    expect('clearDirtyLog' in r).toBe(false);
    // @ts-expect-error -- the method may be absent: callers must test for it first.
    expect(() => r.clearDirtyLog(1, 0, 64, Bitmap.create(64))).toThrow(TypeError);
    const manual = createBitmapReporter({ rearmer: rearmLog(), manualProtect: Boolean(1) });
    expect(typeof manual.clearDirtyLog).toBe('function');

    const e = caught(() => createBitmapReporter({ rearmer: rearmLog(), initiallySet: true }));
    expect([e.code, e.errno, e.field]).toEqual(['invalid-argument', 'EINVAL', 'initiallySet']);
    expect(e.message).toBe(
      '[dirtytrack] [bitmap-reporter] initiallySet requires manualProtect (KVM: EINVAL)',
    );
    const e2 = caught(() =>
      createBitmapReporter({ rearmer: rearmLog(), initiallySet: true, manualProtect: false }),
    );
    expect(e2.errno).toBe('EINVAL');
  });

  it('INITIALLY_SET: a new slot starts all-ones (padding 0) and nothing is re-armed', () => {
    const rearmer = rearmLog();
    const r = createBitmapReporter({ rearmer, slots: [slot], manualProtect: true, initiallySet: true });
    expect([...r.liveBitmap(1).words]).toEqual([0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff, 0x3, 0x0]);
    expect(rearmer.masks).toEqual([]);
    const out = Bitmap.create(130);
    expect(r.getDirtyLog(1, out)).toBe(130);
    expect(rearmer.masks).toEqual([]);
    // Protection is applied lazily, one cleared window at a time.
    const all = Bitmap.create(64);
    all.setAll();
    expect(r.clearDirtyLog(1, 64, 64, all)).toBe(64);
    expect(rearmer.masks).toEqual([Array.from({ length: 64 }, (_, i) => 64 + i)]);
    expect([...r.liveBitmap(1).words]).toEqual([0xffffffff, 0xffffffff, 0, 0, 0x3, 0x0]);
    // A slot added later starts all-ones too.
    r.addSlot({ id: 2, asId: 0, baseGfn: 0x100, pages: 3 });
    expect([...r.liveBitmap(2).words]).toEqual([0x7, 0]);
  });
});

describe('update modes and the mmu_lock', () => {
  it("'locked' needs a lock; bad modes are rejected", () => {
    const e = caught(() => createBitmapReporter({ rearmer: rearmLog(), updates: 'locked' }));
    expect([e.code, e.field]).toEqual(['invalid-argument', 'lock']);
    const e2 = caught(() => createBitmapReporter({ rearmer: rearmLog(), updates: 'xchg' as BitmapUpdates }));
    expect([e2.code, e2.field]).toEqual(['invalid-argument', 'updates']);
  });

  it("'locked': setters read-lock once per batch, collectors write-lock (and re-arm under it), manual GET takes no lock", () => {
    const lock = spyLock();
    const rearmer: Rearmer = {
      rearm: (_s, m) => {
        expect(lock.inspect()).toEqual({ readers: 0, waitingWriters: 0, writer: true });
        return m.popcount();
      },
    };
    const r = createBitmapReporter({ rearmer, slots: [slot], updates: 'locked', lock, manualProtect: true });
    r.markDirty(1, Uint32Array.of(1, 2, 3, 70), 4, 0);
    r.markDirty(1, Uint32Array.of(), 0, 0); // an empty batch takes no lock
    expect(lock.calls.splice(0)).toEqual(['readLock', 'readUnlock']);
    expect(() => r.markDirty(1, Uint32Array.of(4, 999), 2, 0)).toThrow(/outside slot 1/);
    expect(lock.calls.splice(0)).toEqual(['readLock', 'readUnlock']); // released on error
    expect(r.liveBitmap(1).test(4)).toBe(true);
    r.getDirtyLog(1, Bitmap.create(130));
    expect(lock.calls.splice(0)).toEqual([]);
    expect(r.clearDirtyLog(1, 0, 130, maskOf(130, [1, 70]))).toBe(2);
    expect(lock.calls.splice(0)).toEqual(['writeLock', 'writeUnlock']);
    expect(r.clearDirtyLog(1, 0, 0, maskOf(0, []))).toBe(0); // a no-op takes no lock
    expect(lock.calls).toEqual([]);
    expect(lock.inspect()).toEqual({ readers: 0, waitingWriters: 0, writer: false });

    const classic = createBitmapReporter({ rearmer, slots: [slot], updates: 'locked', lock });
    classic.markDirty(1, Uint32Array.of(7), 1, 0);
    expect(classic.getDirtyLog(1, Bitmap.create(130))).toBe(1);
    expect(lock.calls.splice(0)).toEqual(['readLock', 'readUnlock', 'writeLock', 'writeUnlock']);
  });

  it("'atomic' with a lock: setters never take it, GET and CLEAR hold it for write like KVM_MMU_LOCK", () => {
    const lock = spyLock();
    const r = createBitmapReporter({ rearmer: rearmLog(), slots: [slot], lock });
    r.markDirty(1, Uint32Array.of(1, 2), 2, 0);
    expect(lock.calls.splice(0)).toEqual([]);
    r.getDirtyLog(1, Bitmap.create(130));
    expect(lock.calls.splice(0)).toEqual(['writeLock', 'writeUnlock']);
    const m = createBitmapReporter({ rearmer: rearmLog(), slots: [slot], lock, manualProtect: true });
    m.markDirty(1, Uint32Array.of(1, 2), 2, 0);
    m.getDirtyLog(1, Bitmap.create(130));
    expect(lock.calls.splice(0)).toEqual([]);
    m.clearDirtyLog(1, 0, 64, maskOf(64, [1]));
    expect(lock.calls.splice(0)).toEqual(['writeLock', 'writeUnlock']);
  });
});

describe('shared memory', () => {
  it('hands out its slot buffers and attaches to them from another reporter, without re-initialising', () => {
    const main = createBitmapReporter({
      rearmer: rearmLog(),
      slots: [slot],
      shared: true,
      manualProtect: true,
      initiallySet: true,
    });
    const buffer = main.bitmapBuffer(1);
    expect(buffer).toBeInstanceOf(SharedArrayBuffer);
    expect(buffer.byteLength).toBe(24);
    expect(main.bitmapBuffers()).toEqual(new Map([[1, buffer]]));
    expect(
      main.clearDirtyLog(
        1,
        0,
        130,
        maskOf(
          130,
          Array.from({ length: 130 }, (_, i) => i),
        ),
      ),
    ).toBe(130);

    const other = createBitmapReporter({
      rearmer: rearmLog(),
      slots: [slot, { id: 2, asId: 0, baseGfn: 0x400, pages: 10 }],
      buffers: main.bitmapBuffers(),
      manualProtect: true,
      initiallySet: true,
    });
    expect(other.liveBitmap(1).popcount()).toBe(0); // attached: not set again
    expect(other.liveBitmap(2).popcount()).toBe(10); // allocated here: initially set
    expect(other.bitmapBuffer(2)).toBeInstanceOf(SharedArrayBuffer);
    other.markDirty(1, Uint32Array.of(3, 129), 2, 0);
    expect([...main.liveBitmap(1).setBits()]).toEqual([3, 129]);
  });

  it('rejects unshared, undersized or non-shared buffers', () => {
    const plain = createBitmapReporter({ rearmer: rearmLog(), slots: [slot] });
    expect(caught(() => plain.bitmapBuffer(1)).code).toBe('invalid-state');
    const buffers = new Map([[1, new SharedArrayBuffer(16)]]);
    const small = caught(() => createBitmapReporter({ rearmer: rearmLog(), slots: [slot], buffers }));
    expect([small.errno, small.field]).toEqual(['EINVAL', 'buffers']);
    expect(small.message).toMatch(/has 16 bytes, its 130 pages need 24/);
    const unshared = caught(() =>
      createBitmapReporter({
        rearmer: rearmLog(),
        buffers: new Map([[1, new SharedArrayBuffer(24)]]),
        shared: false,
      }),
    );
    expect(unshared.field).toBe('buffers');
    const notSab = caught(() =>
      createBitmapReporter({
        rearmer: rearmLog(),
        buffers: new Map([[1, new ArrayBuffer(24) as unknown as SharedArrayBuffer]]),
      }),
    );
    expect(notSab.message).toMatch(/not a SharedArrayBuffer/);
  });
});

for (const updates of MODES) {
  describeReporter(`bitmap, updates '${updates}'`, (rearmer, s) =>
    createBitmapReporter({ rearmer, slots: [s], ...modeOptions(updates) }),
  );
  describeDirtyLogSource(`bitmap, updates '${updates}'`, (rearmer, s) =>
    createBitmapReporter({ rearmer, slots: [s], manualProtect: true, ...modeOptions(updates) }),
  );
  describeDirtyLogSource(
    `bitmap, updates '${updates}'`,
    (rearmer, s) =>
      createBitmapReporter({
        rearmer,
        slots: [s],
        manualProtect: true,
        initiallySet: true,
        ...modeOptions(updates),
      }),
    { initiallySet: true },
  );
}

// ---------------------------------------------------------------------------------------------
// Producers on worker threads, harvester on this thread.

const STRESS_SLOT: MemslotInfo = { id: 7, asId: 0, baseGfn: 0x10_0000, pages: 4 * 32_768 };

interface StressResult {
  epochs: number;
  harvests: number;
  /** Harvests that returned pages while producers were still marking (proof of overlap). */
  concurrent: number;
  /** Marks made (duplicates included), the sum of the epochs' page sets, pages reported over all harvests. */
  marks: number;
  epochPages: number;
  reported: number;
  /** Pages marked in an epoch that no harvest of that epoch reported. */
  lost: number;
  /** Pages reported in an epoch in which nobody marked them. */
  extra: number;
  /** Pages reported fewer times than the epochs they were marked in, or more often than marked. */
  countViolations: number;
  ms: number;
}

/**
 * Four producers mark their epoch sets (disjoint, interleaved in every word; with duplicates and
 * re-marks of harvested pages) through reporters attached to the shared bitmap while this thread
 * harvests in a loop with the classic `getDirtyLog`. After each epoch one final harvest; the
 * union of the epoch's harvests must be exactly the epoch's set. `harvesterLock` 'none' gives
 * this thread's reporter a lock that does nothing (the negative control: a collector without the
 * write lock); `stopAtFirstLoss` ends the run at the first epoch that lost a page.
 */
async function runStress(
  updates: BitmapUpdates,
  options: { epochs: number; harvesterLock: 'real' | 'none'; stopAtFirstLoss?: boolean; batch?: number },
): Promise<StressResult> {
  const producers = 4;
  const { pages, id } = STRESS_SLOT;
  const lock = createRWLock();
  const noLock: RWLock = {
    buffer: lock.buffer,
    byteOffset: lock.byteOffset,
    tryReadLock: () => true,
    readLock: () => true,
    readUnlock: () => {},
    tryWriteLock: () => true,
    writeLock: () => true,
    writeUnlock: () => {},
    inspect: () => lock.inspect(),
  };
  let rearmed = 0;
  const reporter = createBitmapReporter({
    rearmer: { rearm: (_s, m) => (rearmed += m.popcount()) },
    slots: [STRESS_SLOT],
    shared: true,
    updates,
    ...(updates === 'locked' ? { lock: options.harvesterLock === 'real' ? lock : noLock } : {}),
  });
  const control = new Int32Array(new SharedArrayBuffer(PRODUCER.LENGTH * 4));
  const workers = Array.from({ length: producers }, (_, producer) => {
    const data: ProducerData = {
      mode: 'stress',
      updates,
      buffers: reporter.bitmapBuffers(),
      slot: STRESS_SLOT,
      ...(updates === 'locked' ? { lock: { buffer: lock.buffer, byteOffset: lock.byteOffset } } : {}),
      control: control.buffer as SharedArrayBuffer,
      producer,
      producers,
      epochs: options.epochs,
      batch: options.batch ?? 32,
      stepPages: [],
    };
    return startWorker(PRODUCER_WORKER, data);
  });
  const exits = exitCodes(workers);
  exits.catch(() => undefined); // awaited below unless the run stops early
  try {
    await waitUntil(() => Atomics.load(control, PRODUCER.READY) === producers, 20_000, 'producers to attach');
    const out = Bitmap.create(pages);
    const seen = Bitmap.create(pages);
    const expected = Bitmap.create(pages);
    const counts = new Uint32Array(pages);
    const epochsMarked = new Uint32Array(pages);
    const marked = new Uint32Array(pages);
    const list = new Uint32Array(pages);
    const r: StressResult = {
      epochs: 0,
      harvests: 0,
      concurrent: 0,
      marks: 0,
      epochPages: 0,
      reported: 0,
      lost: 0,
      extra: 0,
      countViolations: 0,
      ms: 0,
    };
    const harvest = (): number => {
      const n = reporter.getDirtyLog(id, out);
      r.harvests++;
      r.reported += n;
      if (n > 0) {
        seen.or(out);
        const got = out.collectSetBits(0, list);
        for (let i = 0; i < got; i++) bump(counts, list[i] as number);
      }
      return n;
    };
    const t0 = performance.now();
    for (let epoch = 1; epoch <= options.epochs; epoch++) {
      expected.clearAll();
      for (let k = 0; k < producers; k++) {
        for (const p of epochPages(k, producers, pages, epoch)) {
          expected.set(p);
          bump(marked, p);
          r.marks++;
        }
      }
      for (const p of expected.setBits()) bump(epochsMarked, p);
      r.epochPages += expected.popcount();
      Atomics.store(control, PRODUCER.EPOCH, epoch);
      Atomics.notify(control, PRODUCER.EPOCH);
      const deadline = performance.now() + 20_000;
      while (Atomics.load(control, PRODUCER.FINISHED) < producers * epoch) {
        if (Atomics.load(control, PRODUCER.FAILED) !== 0) throw new Error('a producer failed');
        if (performance.now() > deadline) throw new Error(`epoch ${epoch} did not finish within 20 s`);
        if (harvest() > 0) r.concurrent++;
      }
      harvest(); // the producers are done: this one collects whatever is left
      r.epochs = epoch;
      let lostNow = 0;
      for (let i = 0; i < seen.words.length; i++) {
        const e = expected.words[i] as number;
        const s = seen.words[i] as number;
        lostNow += popcount32(e & ~s);
        r.extra += popcount32(s & ~e);
      }
      r.lost += lostNow;
      seen.clearAll();
      if (lostNow > 0 && options.stopAtFirstLoss) break; // the workers are terminated below
    }
    r.ms = Math.round(performance.now() - t0);
    if (r.epochs === options.epochs) {
      expect(await exits).toEqual(Array.from({ length: producers }, () => 0));
      expect(Atomics.load(control, PRODUCER.FAILED)).toBe(0);
    }
    for (let p = 0; p < pages; p++) {
      const c = counts[p] as number;
      if (c < (epochsMarked[p] as number) || c > (marked[p] as number)) r.countViolations++;
    }
    expect(rearmed).toBe(r.reported); // classic GET re-arms exactly what it reports
    expect(lock.inspect()).toEqual({ readers: 0, waitingWriters: 0, writer: false });
    return r;
  } finally {
    await terminateAll(workers);
  }
}

describe('worker threads: producers mark while this thread harvests (classic GET)', () => {
  it.each(MODES)(
    "updates '%s': 4 producers, 24 epochs; each epoch's harvests report exactly the pages marked, none lost",
    async (updates) => {
      const r = await runStress(updates, { epochs: 24, harvesterLock: 'real' });
      console.info(`stress ${updates}: ${JSON.stringify(r)}`);
      expect(r.epochs).toBe(24);
      expect(r.lost).toBe(0);
      expect(r.extra).toBe(0);
      expect(r.countViolations).toBe(0);
      expect(r.concurrent).toBeGreaterThan(0); // harvests really overlapped the marking
      expect(r.reported).toBeGreaterThanOrEqual(r.epochPages); // every page at least once per epoch
      expect(r.reported).toBeLessThanOrEqual(r.marks);
    },
  );

  it("negative control: 'locked' plain-load/store collection WITHOUT the write lock loses pages", async () => {
    const r = await runStress('locked', {
      epochs: 200,
      harvesterLock: 'none',
      stopAtFirstLoss: true,
      batch: 1024,
    });
    console.info(`stress locked without the write lock: ${JSON.stringify(r)}`);
    expect(r.lost).toBeGreaterThan(0);
  });

  it('the race, constructed deterministically: a set between the load and the store is lost without the write lock, kept with it', async () => {
    const lock = createRWLock();
    const rearmer = rearmLog();
    const reporter = createBitmapReporter({ rearmer, slots: [slot], shared: true, updates: 'locked', lock });
    const control = new Int32Array(new SharedArrayBuffer(PRODUCER.LENGTH * 4));
    const data: ProducerData = {
      mode: 'step',
      updates: 'locked',
      buffers: reporter.bitmapBuffers(),
      slot,
      lock: { buffer: lock.buffer, byteOffset: lock.byteOffset },
      control: control.buffer as SharedArrayBuffer,
      producer: 0,
      producers: 1,
      epochs: 2,
      batch: 1,
      stepPages: [5, 6],
    };
    const workers = [startWorker(PRODUCER_WORKER, data)];
    const exits = exitCodes(workers);
    const live = reporter.liveBitmap(1).words;
    const out = Bitmap.create(130);
    const step = (s: number): void => {
      Atomics.store(control, PRODUCER.EPOCH, s);
      Atomics.notify(control, PRODUCER.EPOCH);
    };
    try {
      await waitUntil(() => Atomics.load(control, PRODUCER.READY) === 1, 20_000, 'the producer to attach');

      // Without the write lock: load word 0 (page 3), let the producer set page 5, store 0.
      reporter.markDirty(1, Uint32Array.of(3), 1, 0);
      const w1 = live[0] as number;
      step(1);
      blockUntil(control, PRODUCER.DONE, 1, PRODUCER.FAILED, 10_000, 'the producer to mark page 5');
      expect(live[0]).toBe((1 << 3) | (1 << 5)); // the set landed between our load and our store
      live[0] = 0;
      expect(w1).toBe(1 << 3); // our snapshot lacks page 5, and the live word no longer has it:
      expect(reporter.getDirtyLog(1, out)).toBe(0); // page 5 is lost for good
      expect(rearmer.masks).toEqual([]);

      // With the write lock (the reporter's rule): the producer's markDirty waits in readLock.
      reporter.markDirty(1, Uint32Array.of(3), 1, 0);
      expect(lock.writeLock(10_000)).toBe(true);
      const w2 = live[0] as number;
      step(2);
      blockUntil(control, PRODUCER.TRYING, 2, PRODUCER.FAILED, 10_000, 'the producer to try page 6');
      sleepSync(100); // it is now blocked in readLock; give it every chance to set the bit anyway
      expect(Atomics.load(control, PRODUCER.DONE)).toBe(1);
      expect(live[0]).toBe(1 << 3);
      live[0] = 0;
      lock.writeUnlock();
      expect(w2).toBe(1 << 3);
      blockUntil(control, PRODUCER.DONE, 2, PRODUCER.FAILED, 10_000, 'the producer to mark page 6');
      expect(reporter.getDirtyLog(1, out)).toBe(1); // page 6 waited for the lock and is reported
      expect([...out.setBits()]).toEqual([6]);
      expect(await exits).toEqual([0]);
    } finally {
      await terminateAll(workers);
    }
  });
});

describe('bitmap reporter: re-arm hint', () => {
  it('hands the rearmer a touched-word list that covers every word of the mask, for GET and CLEAR', () => {
    const pages = 4096;
    const hints: { covered: boolean; count: number }[] = [];
    const rearmer: Rearmer = {
      rearm(_slot, mask, touched) {
        const listed = new Set(touched ? [...touched.words.subarray(0, touched.count)] : []);
        const covered = mask.words.every((w, i) => w === 0 || listed.has(i));
        hints.push({ covered, count: touched?.count ?? -1 });
        return mask.popcount();
      },
    };
    const big = { id: 0, asId: 0, baseGfn: 0, pages };
    const classic = createBitmapReporter({ rearmer, slots: [big] });
    classic.markDirty(0, Uint32Array.of(1, 40, 70, 3000, 4095), 5, 0);
    expect(classic.getDirtyLog(0, Bitmap.create(pages))).toBe(5);
    const manual = createBitmapReporter({ rearmer, slots: [big], manualProtect: true });
    manual.markDirty(0, Uint32Array.of(1, 40, 70, 3000, 4095), 5, 0);
    const mask = Bitmap.create(pages);
    mask.setAll();
    expect(manual.clearDirtyLog(0, 0, pages, mask)).toBe(5);
    // Four dirty 64-bit words (pages 1+40, 70, 3000, 4095): 8 listed 32-bit words each time.
    expect(hints).toEqual([
      { covered: true, count: 8 },
      { covered: true, count: 8 },
    ]);
  });
});

import type { Bitmap } from '@dirtytrack/core';
import { createCostModel, createRWLock, isDirtytrackError, type MemslotInfo } from '@dirtytrack/core';
import { createBitmapReporter } from '@dirtytrack/reporters';
import { describe, expect, it } from 'vitest';
import { logging, scripted } from './__fixtures__/scripted.js';
import { DIRTY_MEMORY_MIGRATION } from './dirty-memory.js';
import { createQemuLayers, SYNC_STRATEGIES, type SyncStrategy } from './qemu-layers.js';
import { createVfioTracker } from './vfio-tracker.js';
import { createVhostLog } from './vhost-log.js';

const slot: MemslotInfo = { id: 0, asId: 0, baseGfn: 0, pages: 256 };

const costModel = createCostModel({
  bitmapXchgNsPerWord: 10,
  bitmapCopyNsPerWord: 1,
  rearmNsPerPage: 100,
  tlbFlushNs: 1000,
  enableLoggingNsPerPage: 2,
});

const rearmer = { rearm: (_slot: number, mask: Bitmap) => mask.popcount() };

describe('QEMU layers: exact values', () => {
  // Harvest: 3 xchg·10 + 4 copy·1 + 4 rearm·100 + 1 flush·1000 = 1434.
  // Slot pages 3, 64, 65, 200 → 64-bit words 0, 1, 3 non-zero; vhost pages 5, 130 → words 0, 2.
  // xchg: scans 4 (slot) + 4 (vhost) + 4 (layer B) = 12 copy; atomics 3 (slot OR into B) +
  //       2 (vhost xchg) + 2 (vhost OR into B) + 4 (B words 0..3 exchanged) = 11 → 1434 + 110 + 12.
  // rwlock-memcpy: 12 plain words, no atomics → 1434 + 12.
  // fused: 4 (slot) + 4 (vhost) scanned, 2 vhost words exchanged → 1434 + 8 + 20.
  const expected: Record<SyncStrategy, { costNs: number; xchgWords: number; copiedWords: number }> = {
    xchg: { costNs: 1556, xchgWords: 11, copiedWords: 12 },
    'rwlock-memcpy': { costNs: 1446, xchgWords: 0, copiedWords: 12 },
    fused: { costNs: 1462, xchgWords: 2, copiedWords: 8 },
  };

  for (const strategy of SYNC_STRATEGIES) {
    it(`${strategy}: setup sets every bit; a sync counts only 0→1 transitions and prices the work`, () => {
      const source = scripted();
      const ctl = logging();
      const lock = createRWLock();
      const vhost = createVhostLog(256, { lock });
      const m = createQemuLayers({ kvm: { source, logging: ctl, slot }, strategy, vhost, costModel, lock });
      expect(m.strategy).toBe(strategy);
      expect(() => m.sync()).toThrow(/setup\(\) first/);
      expect(m.setup()).toBe(512);
      expect(ctl.on).toEqual([0]);
      expect(m.dirtyPages).toBe(256);
      expect(m.bmap.popcount()).toBe(256);
      expect([...m.bmap.words]).toEqual(new Array(8).fill(0xffffffff));
      m.clearSent(0, 0xffffffff); // pages 0..31
      m.clearSent(2, 1); // page 64
      expect(m.dirtyPages).toBe(223);
      source.next = [3, 64, 65, 200];
      source.cost = { xchgWords: 3, copyWords: 4, rearmedPages: 4, tlbFlushes: 1, ringEntries: 0 };
      vhost.markDirty(Uint32Array.of(5, 130), 2);
      const r = m.sync();
      // New: 3, 64, 5. Already dirty: 65, 200, 130.
      expect(r).toEqual({ newDirty: 3, reported: 6, costNs: expected[strategy].costNs });
      expect(m.dirtyPages).toBe(226);
      expect(m.bmap.popcount()).toBe(226);
      expect(m.bmap.words[0]).toBe(0b101000);
      expect(vhost.test(5)).toBe(false); // the vhost log was drained
      expect(m.dirtyMemory.test(DIRTY_MEMORY_MIGRATION, 3)).toBe(false); // layer B drained (or never used)
      expect(m.stats()).toEqual({
        syncs: 1,
        xchgWords: expected[strategy].xchgWords,
        copiedWords: expected[strategy].copiedWords,
        lazyClears: 0,
        clearedPages: 0,
        clearCostNs: 0,
        adoptions: 0,
        kernelMerges: 0,
        parallelMerges: 0,
      });
      expect(m.clearBmap.popcount()).toBe(0); // no manual protect: nothing to clear lazily
      m.cleanup();
      expect(ctl.on).toEqual([]);
    });
  }

  it('refuses to clear bits that are not set, and a second setup', () => {
    const m = createQemuLayers({ kvm: { source: scripted(), logging: logging(), slot } });
    m.setup();
    m.clearSent(1, 0b1);
    try {
      m.clearSent(1, 0b11);
      expect.unreachable();
    } catch (e) {
      expect(isDirtytrackError(e, 'internal')).toBe(true);
      expect((e as Error).message).toMatch(/does not hold all of mask 0x3/);
    }
    expect(() => m.setup()).toThrow(/already set up/);
  });

  it('clamps x-clear-bitmap-shift to 6..31 and validates options', () => {
    const kvm = { source: scripted(), logging: logging(), slot };
    expect(createQemuLayers({ kvm }).clearBitmapShift).toBe(18);
    expect(createQemuLayers({ kvm, clearBitmapShift: 2 }).clearBitmapShift).toBe(6);
    expect(createQemuLayers({ kvm, clearBitmapShift: 40 }).clearBitmapShift).toBe(31);
    expect(createQemuLayers({ kvm, clearBitmapShift: 6 }).clearBmap.bits).toBe(4);
    expect(() => createQemuLayers({ kvm, clearBitmapShift: 1.5 })).toThrow(/not an integer/);
    expect(() => createQemuLayers({ kvm, strategy: 'memcpy' as SyncStrategy })).toThrow(/strategy must be/);
    // rwlock-memcpy reads the vhost log with plain loads: the device must set bits under its lock.
    expect(() =>
      createQemuLayers({ kvm, strategy: 'rwlock-memcpy', vhost: createVhostLog(256), lock: createRWLock() }),
    ).toThrow(/under the layers' lock/);
    expect(() => createQemuLayers({ kvm, vhost: createVhostLog(300) })).toThrow(/exceed/);
  });

  it('fused keeps a one-bit-per-64-bit-word summary that finds dirty pages past clean words', () => {
    const source = scripted();
    const m = createQemuLayers({ kvm: { source, logging: logging(), slot }, strategy: 'fused' });
    m.setup();
    expect(m.summary?.[0]).toBe(0b1111);
    for (let w = 0; w < 8; w++) m.clearSent(w, 0xffffffff);
    expect(m.summary?.[0]).toBe(0);
    expect(m.findNextDirty(0)).toBe(-1);
    source.next = [200];
    m.sync();
    expect(m.summary?.[0]).toBe(0b1000);
    expect(m.findNextDirty(0)).toBe(200);
    expect(m.findNextDirty(201)).toBe(-1);
    m.clearSent(6, 1 << 8);
    expect(m.summary?.[0]).toBe(0);
  });
});

describe('QEMU layers: lazy clear (clear_bmap) with a manual-protect bitmap reporter', () => {
  const setupLazy = (pages: number) => {
    const s: MemslotInfo = { id: 0, asId: 0, baseGfn: 0, pages };
    const reporter = createBitmapReporter({ rearmer, slots: [s], manualProtect: true });
    const calls: { firstPage: number; numPages: number; mask: number[] }[] = [];
    const clear = reporter.clearDirtyLog.bind(reporter);
    reporter.clearDirtyLog = (id, firstPage, numPages, mask) => {
      calls.push({ firstPage, numPages, mask: [...mask.setBits()] });
      return clear(id, firstPage, numPages, mask);
    };
    const m = createQemuLayers({
      kvm: { source: reporter, logging: logging(), slot: s },
      clearBitmapShift: 6,
      costModel,
    });
    const mark = (...p: number[]) => reporter.markDirty(0, Uint32Array.from(p), p.length, 0);
    const send = (p: number) => m.clearSent(p >>> 5, 1 << (p & 31));
    return { reporter, calls, m, mark, send };
  };

  it('the first send in a chunk clears exactly the synced pages of that chunk, once', () => {
    const { reporter, calls, m, mark, send } = setupLazy(256);
    m.setup();
    expect(m.clearBmap.popcount()).toBe(0); // QEMU sets clear_bmap as the first sync happens
    mark(1, 2, 70);
    expect(m.sync()).toMatchObject({ newDirty: 0, reported: 3 });
    expect(m.clearBmap.popcount()).toBe(4);
    mark(40); // dirtied after the sync, before the chunk's clear
    send(40);
    expect(calls).toEqual([{ firstPage: 0, numPages: 64, mask: [1, 2] }]);
    const live = reporter.liveBitmap(0);
    expect([1, 2, 40].map((p) => live.test(p))).toEqual([false, false, true]); // 40 is not lost
    send(0);
    send(1);
    expect(calls).toHaveLength(1); // the chunk is clean now
    send(64);
    expect(calls[1]).toEqual({ firstPage: 64, numPages: 64, mask: [6] }); // page 70
    expect(m.clearBmap.popcount()).toBe(2);
    expect(m.stats()).toMatchObject({ lazyClears: 2, clearedPages: 3 });
    const r = m.sync();
    expect(r).toMatchObject({ newDirty: 1, reported: 1 }); // page 40 comes back
    expect(m.bmap.test(40)).toBe(true);
    expect(m.dirtyPages).toBe(m.bmap.popcount());
  });

  it('the last chunk stops at the slot end', () => {
    const { calls, m, mark, send } = setupLazy(200);
    m.setup();
    mark(195, 199);
    m.sync();
    send(199);
    expect(calls).toEqual([{ firstPage: 192, numPages: 8, mask: [3, 7] }]); // mask bit 0 = firstPage
  });
});

describe('VFIO trackers', () => {
  it("'none' makes every sync report the whole RAM dirty: it never converges alone", () => {
    for (const strategy of SYNC_STRATEGIES) {
      const m = createQemuLayers({
        kvm: { source: scripted(), logging: logging(), slot },
        strategy,
        vfio: createVfioTracker({ kind: 'none' }),
      });
      m.setup();
      for (let round = 0; round < 3; round++) {
        for (let w = 0; w < 8; w++) m.clearSent(w, 0xffffffff);
        expect(m.dirtyPages).toBe(0);
        expect(m.sync()).toMatchObject({ newDirty: 256, reported: 256 });
        expect(m.dirtyPages).toBe(256);
      }
    }
  });

  it('device logging takes at most 3 ranges and rejects pages outside them', () => {
    const ranges = [
      { start: 0, pages: 10 },
      { start: 20, pages: 10 },
      { start: 40, pages: 10 },
    ];
    try {
      createVfioTracker({ kind: 'device', ranges: [...ranges, { start: 60, pages: 1 }] });
      expect.unreachable();
    } catch (e) {
      expect(isDirtytrackError(e, 'invalid-argument')).toBe(true);
      expect((e as { field?: string }).field).toBe('ranges');
    }
    const vfio = createVfioTracker({ kind: 'device', ranges });
    if (vfio.kind !== 'device') throw new Error('unreachable');
    vfio.markDirty(Uint32Array.of(9, 45), 2);
    expect([9, 45, 10].map((p) => vfio.test(p))).toEqual([true, true, false]);
    expect(() => vfio.markDirty(Uint32Array.of(15), 1)).toThrow(/outside every logged range/);
    const m = createQemuLayers({ kvm: { source: scripted(), logging: logging(), slot }, vfio });
    m.setup();
    for (let w = 0; w < 8; w++) m.clearSent(w, 0xffffffff);
    expect(m.sync()).toMatchObject({ newDirty: 2, reported: 2 });
    expect([...m.bmap.setBits()]).toEqual([9, 45]);
  });
});

import { Bitmap, createRWLock, DEFAULT_COST_MODEL, type MemslotInfo } from '@dirtytrack/core';
import { createBitmapReporter } from '@dirtytrack/reporters';
import { createPmlTracker } from '@dirtytrack/trackers';
import { assertProperty, expectDirtytrackError } from '@dirtytrack/testkit';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { logging } from './__fixtures__/scripted.js';
import { createQemuLayers } from './qemu-layers.js';
import {
  attachSwapDirtyLog,
  createDirtyLogBuffer,
  createSwapDirtyLog,
  zeroBuffer,
  type SwapDirtyLogShareData,
} from './swap-dirty-log.js';

const slot: MemslotInfo = { id: 0, asId: 0, baseGfn: 0, pages: 200 };
const pagesOf = (b: Bitmap): number[] => [...b.setBits()];

describe('createSwapDirtyLog', () => {
  it('markDirty keeps the summary (bit per 64-bit word) and the count of pages newly set', () => {
    const log = createSwapDirtyLog({ slots: [slot] });
    log.markDirty(0, Uint32Array.of(3, 3, 64, 130, 199), 5, 0);
    const a = log.active(0);
    expect(pagesOf(a.bitmap)).toEqual([3, 64, 130, 199]);
    expect([...a.summary]).toEqual([0b1111]);
    expect(a.counts[0]).toBe(4);
    const src = Bitmap.create(200);
    src.setRange(60, 10); // 60..69: 64 is already set
    expect(log.markDirtyBitmap(0, src)).toBe(9);
    expect(a.counts[0]).toBe(13);
    expect([...a.summary]).toEqual([0b1111]);
  });

  it('swapDirtyLog installs the spare in O(1), returns the filled buffer and re-arms exactly its pages', () => {
    const rearmed: number[][] = [];
    const log = createSwapDirtyLog({
      slots: [slot],
      lock: createRWLock(),
      rearmer: {
        rearm: (_s, mask, touched) => {
          rearmed.push([...mask.setBits(), touched?.count ?? -1]);
          return mask.popcount();
        },
      },
    });
    log.markDirty(0, Uint32Array.of(5, 150), 2, 0);
    const spare = log.spareBuffer(0);
    expect(spare).not.toBe(log.active(0));
    const first = log.active(0);
    const taken = log.swapDirtyLog(0, spare);
    expect(taken).toBe(first);
    expect(log.active(0)).toBe(spare);
    expect(pagesOf(taken.bitmap)).toEqual([5, 150]);
    expect(taken.counts[0]).toBe(2);
    // The touched hint names the two 64-bit words (four 32-bit words).
    expect(rearmed).toEqual([[5, 150, 4]]);
    expect(log.lastHarvestCost()).toEqual({
      xchgWords: 0,
      copyWords: 0.5,
      rearmedPages: 2,
      tlbFlushes: 1,
      ringEntries: 0,
    });
    // Writes after the swap land in the new active buffer only.
    log.markDirty(0, Uint32Array.of(6), 1, 0);
    expect(pagesOf(taken.bitmap)).toEqual([5, 150]);
    expect(pagesOf(log.active(0).bitmap)).toEqual([6]);
  });

  it('rejects a spare that is the active buffer, not one of the slot’s buffers or not empty, and mixed harvests', () => {
    const log = createSwapDirtyLog({ slots: [slot] });
    const err = (
      fn: () => unknown,
      code: 'invalid-argument' | 'invalid-state' | 'out-of-range',
      re: RegExp,
    ) => expectDirtytrackError(fn, 'swap-dirty-log', code, re);
    err(() => log.swapDirtyLog(0, log.active(0)), 'invalid-argument', /active buffer/);
    err(
      () => log.swapDirtyLog(0, createDirtyLogBuffer(200)),
      'invalid-argument',
      /not one of slot 0's buffers/,
    );
    const spare = log.spareBuffer(0);
    spare.bitmap.set(1);
    spare.counts[0] = 1;
    err(() => log.swapDirtyLog(0, spare), 'invalid-argument', /still holds 1/);
    err(() => log.swapDirtyLog(7, spare), 'invalid-state', /ENOENT/);
    err(() => log.markDirty(0, Uint32Array.of(200), 1, 0), 'out-of-range', /page 200/);
    err(() => log.getDirtyLog(0, Bitmap.create(200)), 'invalid-state', /do not mix/);
    const other = createSwapDirtyLog({ slots: [slot] });
    other.getDirtyLog(0, Bitmap.create(200));
    err(() => other.spareBuffer(0), 'invalid-state', /do not mix/);
    err(
      () => createSwapDirtyLog({ slots: [slot], buffers: new Map([[0, new SharedArrayBuffer(8)]]) }),
      'invalid-argument',
      /not a slot buffer \(its header names 0 buffers/,
    );
    // With three buffers, the collector's two are handed out before the first swap only.
    const three = createSwapDirtyLog({ slots: [slot], migrationBuffer: true });
    const mine = three.migrationBuffer(0);
    expect(mine).toBeDefined();
    expect(log.migrationBuffer(0)).toBeUndefined(); // two buffers: none to spare
    three.swapDirtyLog(0, three.spareBuffer(0));
    err(() => three.spareBuffer(0), 'invalid-state', /spareBuffer: slot 0 has been swapped already/);
    err(() => three.migrationBuffer(0), 'invalid-state', /migrationBuffer: slot 0 has been swapped/);
    // A slot buffer's header on too little memory.
    const shared = createSwapDirtyLog({ slots: [slot], shared: true, migrationBuffer: true });
    const short = new SharedArrayBuffer(128);
    new Uint8Array(short).set(new Uint8Array(shared.slotBuffer(0), 0, 16));
    err(
      () => createSwapDirtyLog({ slots: [slot], buffers: new Map([[0, short]]) }),
      'invalid-argument',
      /has 128 bytes, its 200 pages need 16384/,
    );
  });

  it('share() names attachSwapDirtyLog: a sink over the same memory sets bits, summary, count and line list in the active buffer', () => {
    const lock = createRWLock();
    const log = createSwapDirtyLog({ slots: [slot], lock });
    const spec = log.share();
    expect({ module: spec.module, factory: spec.factory }).toEqual({
      module: '@dirtytrack/qemu-layers',
      factory: 'attachSwapDirtyLog',
    });
    const data = spec.data as SwapDirtyLogShareData;
    expect(data.slots).toEqual([slot]);
    expect(data.buffers).toEqual([log.slotBuffer(0)]);
    expect(data.lock).toEqual({ buffer: lock.buffer, byteOffset: lock.byteOffset });
    // (Here on this thread; swap-worker.test.ts attaches from producer workers.)
    const sink = attachSwapDirtyLog(data);
    sink.markDirty(0, Uint32Array.of(3, 3, 64, 130, 199), 5, 1);
    const a = log.active(0);
    expect(pagesOf(a.bitmap)).toEqual([3, 64, 130, 199]);
    expect([...a.summary]).toEqual([0b1111]);
    expect(a.counts[0]).toBe(4);
    // Lines (64 bytes = 512 pages): all five pages are in line 0.
    expect([a.counts[1], a.lines?.[0]]).toEqual([1, 0]);
    // After a swap the sink finds the new active buffer (by the shared index), not the old one.
    const taken = log.swapDirtyLog(0, log.spareBuffer(0));
    sink.markDirty(0, Uint32Array.of(7), 1, 1);
    expect(pagesOf(taken.bitmap)).toEqual([3, 64, 130, 199]);
    expect(pagesOf(log.active(0).bitmap)).toEqual([7]);
    expect(lock.inspect()).toEqual({ readers: 0, waitingWriters: 0, writer: false });
  });

  it('share() needs a lock; attachSwapDirtyLog checks its slots against its buffers', () => {
    expectDirtytrackError(
      () => createSwapDirtyLog({ slots: [slot] }).share(),
      'swap-dirty-log',
      'invalid-state',
      /lock/,
    );
    const data = createSwapDirtyLog({ slots: [slot], lock: createRWLock() }).share()
      .data as SwapDirtyLogShareData;
    expectDirtytrackError(
      () => attachSwapDirtyLog({ ...data, buffers: [] }),
      'swap-dirty-log',
      'invalid-argument',
      /1 slots but 0 buffers/,
    );
  });

  it('getDirtyLog is swap + copy + zero: the classic GET the other strategies read', () => {
    const log = createSwapDirtyLog({ slots: [slot] });
    log.markDirty(0, Uint32Array.of(0, 63, 199), 3, 0);
    const out = Bitmap.create(200);
    expect(log.getDirtyLog(0, out)).toBe(3);
    expect(pagesOf(out)).toEqual([0, 63, 199]);
    expect(log.getDirtyLog(0, out)).toBe(0);
    expect(pagesOf(out)).toEqual([]);
  });

  it('both harvests kick the vCPUs first, as KVM_GET_DIRTY_LOG: gfns still in PML buffers are in the buffer taken', () => {
    const slots: MemslotInfo[] = [{ id: 0, asId: 0, baseGfn: 0, pages: 4096 }];
    for (const style of ['swap', 'get'] as const) {
      const pml = createPmlTracker({ vcpus: 2, slots });
      const log = createSwapDirtyLog({ slots, rearmer: pml });
      pml.attach(log);
      pml.enableLogging(slots[0] as MemslotInfo);
      // 600 new pages on vCPU 0: one PML-full exit drains the first 512, 88 stay buffered; vCPU 1's
      // two writes stay buffered too.
      const pages = Uint32Array.from({ length: 600 }, (_, i) => i * 3);
      expect(pml.write(0, 0, pages, 600)).toBe(1);
      expect(pml.write(1, 0, Uint32Array.of(1, 4094), 2)).toBe(0);
      expect(log.active(0).counts[0]).toBe(512);
      const want = [...pages, 1, 4094].sort((a, b) => a - b);
      if (style === 'swap') {
        const taken = log.swapDirtyLog(0, log.spareBuffer(0));
        expect(pagesOf(taken.bitmap)).toEqual(want);
        expect(taken.counts[0]).toBe(602);
        expect(log.active(0).counts[0]).toBe(0);
      } else {
        const out = Bitmap.create(4096);
        expect(log.getDirtyLog(0, out)).toBe(602);
        expect(pagesOf(out)).toEqual(want);
      }
      // The harvest re-armed (cleared D of) all 602: writing them again logs each once more.
      expect(pml.stats().pmlLogged).toBe(602);
      expect(pml.write(1, 0, Uint32Array.of(1, 3), 2)).toBe(0);
      expect(pml.stats().pmlLogged).toBe(604);
    }
  });

  it('zeroBuffer clears the words its summary names, full runs with one fill', () => {
    const b = createDirtyLogBuffer(64 * 32 * 3 + 64);
    b.bitmap.setRange(64 * 32, 64 * 32 * 2 + 10); // two full summary words and one bit past them
    b.bitmap.set(5);
    b.summary.set([1, 0xffffffff, 0xffffffff, 1]);
    b.counts[0] = b.bitmap.popcount();
    zeroBuffer(b);
    expect(b.bitmap.popcount()).toBe(0);
    expect([...b.summary]).toEqual([0, 0, 0, 0]);
    expect(b.counts[0]).toBe(0);
  });
});

describe("'fused' over the swap log", () => {
  it('a sync after a finished round copies the dirty run and leaves the spare a subset of bmap', () => {
    const pages = 64 * 32 * 2; // two summary words: one all dirty, one with a single page
    const s: MemslotInfo = { id: 0, asId: 0, baseGfn: 0, pages };
    const log = createSwapDirtyLog({ slots: [s] });
    const layers = createQemuLayers({ kvm: { source: log, logging: logging(), slot: s }, strategy: 'fused' });
    layers.setup();
    // Send every page: the round finished.
    for (let w = 0; w < layers.bmap.words.length; w++) layers.clearSent(w, layers.bmap.words[w] as number);
    expect(layers.dirtyPages).toBe(0);
    const dense = Bitmap.create(pages);
    dense.setRange(0, 2048);
    dense.set(3000);
    log.markDirtyBitmap(0, dense);
    const r = layers.sync();
    expect(r.newDirty).toBe(2049);
    expect(r.reported).toBe(2049);
    expect(layers.dirtyPages).toBe(2049);
    expect([...(layers.summary ?? [])]).toEqual([0xffffffff, 1 << ((3000 >>> 6) % 32)]);
    // The line list instead of the summary (5 lines: 0-3 hold the run, 5 page 3000; 5 32-bit
    // entries = 3 64-bit words) + 32 words of the run + 1 word.
    expect(layers.stats().copiedWords).toBe(3 + 32 + 1);
    // Send page 3000 and half the run; the next sync zeroes the spare's remaining run words only.
    layers.clearSent(3000 >>> 5, 1 << (3000 & 31));
    for (let w = 0; w < 32; w++) layers.clearSent(w, 0xffffffff);
    log.markDirty(0, Uint32Array.of(0, 3000), 2, 0);
    const r2 = layers.sync();
    expect(r2.newDirty).toBe(2); // page 0 was sent, 3000 too
    expect(layers.dirtyPages).toBe(1024 + 2);
    expect(layers.bmap.test(0)).toBe(true);
    expect(layers.bmap.test(1)).toBe(false);
    expect(layers.bmap.test(3000)).toBe(true);
  });

  it('with a migration buffer, a sync into an empty bmap adopts the harvested buffer; a non-empty one merges', () => {
    const pages = 64 * 32 * 2;
    const s: MemslotInfo = { id: 0, asId: 0, baseGfn: 0, pages };
    const log = createSwapDirtyLog({ slots: [s], migrationBuffer: true });
    const layers = createQemuLayers({ kvm: { source: log, logging: logging(), slot: s }, strategy: 'fused' });
    layers.setup();
    const sendAll = (): void => {
      const w = layers.bmap.words;
      for (let i = 0; i < w.length; i++) if ((w[i] as number) !== 0) layers.clearSent(i, w[i] as number);
    };
    const firstBmap = layers.bmap;
    expect(firstBmap.popcount()).toBe(pages);
    sendAll();
    const dense = Bitmap.create(pages);
    dense.setRange(0, 2048);
    dense.set(3000);
    log.markDirtyBitmap(0, dense);
    const filled = log.active(0);
    const r = layers.sync();
    expect(r).toEqual({ newDirty: 2049, reported: 2049, costNs: DEFAULT_COST_MODEL.bitmapCopyNsPerWord });
    // The producer's buffer is bmap now, summary and all; nothing was copied.
    expect(layers.bmap).toBe(filled.bitmap);
    expect(layers.summary).toBe(filled.summary);
    expect(layers.stats()).toMatchObject({ adoptions: 1, copiedWords: 0 });
    expect(layers.dirtyPages).toBe(2049);
    expect(pagesOf(layers.bmap)).toEqual(pagesOf(dense));
    expect(layers.findNextDirty(2048)).toBe(3000);
    // Producers write the third buffer; the old bmap (all zero) waits as the spare.
    const third = log.active(0);
    expect(third).not.toBe(filled);
    expect(third.bitmap).not.toBe(firstBmap);
    // Page 3000 sent, then 5 and 3000 written: bmap is not empty, so the sync merges.
    layers.clearSent(3000 >>> 5, 1 << (3000 & 31));
    log.markDirty(0, Uint32Array.of(5, 3000), 2, 0);
    expect(layers.sync().newDirty).toBe(1); // 5 was still unsent
    expect(layers.bmap).toBe(filled.bitmap);
    expect(layers.dirtyPages).toBe(2049);
    // One page left unsent (a round stopped short) is not an empty bmap either: it survives.
    sendAll();
    log.markDirty(0, Uint32Array.of(7, 100), 2, 0);
    layers.sync(); // after a finished round: adopted
    expect(layers.stats().adoptions).toBe(2);
    layers.clearSent(100 >>> 5, 1 << (100 & 31));
    log.markDirty(0, Uint32Array.of(4000), 1, 0);
    expect(layers.sync().newDirty).toBe(1);
    expect(pagesOf(layers.bmap)).toEqual([7, 4000]);
    expect(layers.stats().adoptions).toBe(2);
    // A finished round again: the third buffer becomes bmap, holding just the new writes.
    sendAll();
    const next = log.active(0);
    log.markDirty(0, Uint32Array.of(1, 4095), 2, 0);
    expect(layers.sync()).toMatchObject({ newDirty: 2, reported: 2 });
    expect(layers.bmap).toBe(next.bitmap);
    expect(pagesOf(layers.bmap)).toEqual([1, 4095]);
    expect(layers.dirtyPages).toBe(2);
    expect(layers.stats().adoptions).toBe(3);
    expect([filled, next]).not.toContain(log.active(0));
  });

  it('dense writes: identical bmap and dirtyPages to xchg over the bitmap reporter, merging or adopting (property)', async () => {
    // 3 summary words and a tail: dense ranges make the memcpy-run path and the word path meet.
    const pages = 64 * 32 * 3 + 100;
    const s: MemslotInfo = { id: 0, asId: 0, baseGfn: 0, pages };
    const rearmer = { rearm: (_slot: number, mask: Bitmap) => mask.popcount() };
    const op = fc.oneof(
      fc.record({ t: fc.constant('write' as const), start: fc.nat(pages - 1), len: fc.nat(3000) }),
      fc.record({ t: fc.constant('send' as const), start: fc.nat(pages - 1), len: fc.nat(3000) }),
      fc.record({ t: fc.constant('send' as const), start: fc.constant(0), len: fc.constant(pages) }),
      fc.constant({ t: 'sync' as const }),
    );
    let adoptions = 0;
    await assertProperty(
      fc.property(fc.array(op, { maxLength: 30 }), (ops) => {
        const swap = createSwapDirtyLog({ rearmer, slots: [s] });
        const swap3 = createSwapDirtyLog({ rearmer, slots: [s], migrationBuffer: true });
        const ref = createBitmapReporter({ rearmer, slots: [s] });
        const a = createQemuLayers({ kvm: { source: swap, logging: logging(), slot: s }, strategy: 'fused' });
        const c = createQemuLayers({
          kvm: { source: swap3, logging: logging(), slot: s },
          strategy: 'fused',
        });
        const b = createQemuLayers({ kvm: { source: ref, logging: logging(), slot: s }, strategy: 'xchg' });
        a.setup();
        b.setup();
        c.setup();
        const scratch = Bitmap.create(pages);
        for (const o of ops) {
          if (o.t === 'write') {
            scratch.clearAll();
            scratch.setRange(o.start, Math.min(o.len, pages - o.start));
            swap.markDirtyBitmap(0, scratch);
            swap3.markDirtyBitmap(0, scratch);
            const offs = Uint32Array.from(scratch.setBits());
            ref.markDirty(0, offs, offs.length, 0);
          } else if (o.t === 'send') {
            const end = Math.min(pages, o.start + o.len);
            for (let p = o.start; p < end; p++) {
              if (!b.bmap.test(p)) continue;
              a.clearSent(p >>> 5, 1 << (p & 31));
              b.clearSent(p >>> 5, 1 << (p & 31));
              c.clearSent(p >>> 5, 1 << (p & 31));
            }
          } else {
            const ra = a.sync();
            const rb = b.sync();
            const rc = c.sync();
            expect(ra.newDirty).toBe(rb.newDirty);
            expect(ra.reported).toBe(rb.reported);
            expect(rc.newDirty).toBe(rb.newDirty);
            expect(rc.reported).toBe(rb.reported);
          }
          for (const x of [a, c]) {
            expect([...x.bmap.words]).toEqual([...b.bmap.words]);
            expect(x.dirtyPages).toBe(b.dirtyPages);
            expect(x.findNextDirty(0)).toBe(b.bmap.findNextSet(0));
          }
        }
        adoptions += c.stats().adoptions;
      }),
      100,
    );
    expect(adoptions).toBeGreaterThan(0);
  });
});

import { DEFAULT_COST_MODEL, type MemslotInfo } from '@dirtytrack/core';
import { expectDirtytrackError, assertProperty } from '@dirtytrack/testkit';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { createBackgroundSnapshot } from './background-snapshot.js';
import { createUffdWpTracker, type UffdWpTrackerOptions } from './uffd-wp-tracker.js';

const SEED = Number(process.env['DIRTYTRACK_PROPERTY_SEED'] ?? 20261125);
const PS = 64; // a small page keeps the exact tests readable; the live test uses 4 KiB pages

/** Index of the first differing byte, or -1 (cheaper than a deep toEqual in property runs). */
function firstDifference(a: Uint8Array, b: Uint8Array): number {
  if (a.length !== b.length) return Math.min(a.length, b.length);
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return i;
  return -1;
}

interface Store {
  readonly page: number;
  readonly offset: number;
  readonly value: number;
}

/**
 * The model-plane guest: a batch goes through the tracker (which may block a write in a sync
 * fault), and each store retires either when its blocked writer is woken (`onResume`) or, for
 * the writes that did not block, after `write` returns.
 */
function modelGuest(pages: number, trackerOptions: UffdWpTrackerOptions = {}) {
  const slot: MemslotInfo = { id: 0, asId: 0, baseGfn: 0x4000, pages };
  const memory = new Uint8Array(pages * PS);
  for (let i = 0; i < memory.length; i++) memory[i] = (i * 7 + 1) & 0xff; // distinct start content
  let batch: readonly Store[] = [];
  const store = (s: Store): void => {
    memory[s.page * PS + s.offset] = s.value;
  };
  const tracker = createUffdWpTracker({
    ...trackerOptions,
    onResume: (_vcpu, _slot, _page, index) => store(batch[index] as Store),
  });
  tracker.attach({ markDirty: () => undefined });
  tracker.register(slot);
  return {
    slot,
    memory,
    tracker,
    write(vcpu: number, stores: readonly Store[]): number {
      batch = stores;
      const n = tracker.write(
        vcpu,
        0,
        Uint32Array.from(stores, (s) => s.page),
        stores.length,
      );
      for (const s of stores) store(s);
      return n;
    },
  };
}

describe('background snapshot, sync mode (model plane)', () => {
  it('serves faults first, then sweeps in order; each page saved once with its start content', () => {
    const g = modelGuest(8);
    const snap = createBackgroundSnapshot({
      tracker: g.tracker,
      slot: g.slot,
      memory: g.memory,
      pageSize: PS,
    });
    const before = g.memory.slice();
    snap.start();
    expect(g.tracker.protection(0).popcount()).toBe(8);
    // vCPU 1 writes pages 5 and 2: both fault, are saved and unprotected before the stores.
    expect(
      g.write(1, [
        { page: 5, offset: 0, value: 0xee },
        { page: 2, offset: 3, value: 0xdd },
      ]),
    ).toBe(2);
    expect([...snap.saveCounts]).toEqual([0, 0, 1, 0, 0, 1, 0, 0]);
    expect(snap.stats()).toMatchObject({ savedByFault: 2, savedBySweep: 0, faultMessages: 2 });
    // The sweep saves 0, 1, 3 (skipping 2) and unprotects each right after.
    expect(snap.step(3)).toBe(3);
    expect(g.tracker.protection(0).popcount()).toBe(3); // 4, 6, 7
    expect(g.write(0, [{ page: 1, offset: 0, value: 9 }])).toBe(0); // already saved: no fault
    expect(g.write(0, [{ page: 7, offset: 1, value: 9 }])).toBe(1);
    expect(snap.done).toBe(false);
    expect(snap.step(10)).toBe(2); // 4 and 6
    expect(snap.done).toBe(true);
    expect(snap.image).toEqual(before);
    expect([...snap.saveCounts]).toEqual([1, 1, 1, 1, 1, 1, 1, 1]);
    expect(snap.stats()).toEqual({
      pages: 8,
      savedByFault: 3,
      savedBySweep: 5,
      faultMessages: 3,
      duplicateFaults: 0,
      scans: 0,
      recopied: 0,
    });
    expect(g.tracker.protection(0).popcount()).toBe(0);
    expect(g.memory[5 * PS]).toBe(0xee);
    // 8 pages protected at 2 ns, 8 copies at 2 µs, 3 messages at 10 ns.
    expect(snap.costNs(DEFAULT_COST_MODEL)).toBe(8 * 2 + 8 * 2_000 + 3 * 10);
  });

  it('a sweep run covers at most one 32-page word and stops at maxPages', () => {
    const g = modelGuest(70);
    const snap = createBackgroundSnapshot({
      tracker: g.tracker,
      slot: g.slot,
      memory: g.memory,
      pageSize: PS,
    });
    snap.start();
    expect(snap.step(40)).toBe(40);
    expect(g.tracker.protection(0).popcount()).toBe(30);
    expect(snap.run()).toMatchObject({ savedBySweep: 70, savedByFault: 0 });
    expect(snap.done).toBe(true);
  });

  it(`property (seed ${SEED}): under any interleaving of guest batches and sweep steps the image is memory at start, each page once`, async () => {
    await assertProperty(
      fc.property(
        fc.integer({ min: 1, max: 80 }),
        fc.array(
          fc.oneof(
            fc.record({
              op: fc.constant('write' as const),
              vcpu: fc.nat(3),
              stores: fc.array(fc.record({ page: fc.nat(), offset: fc.nat(PS - 1), value: fc.nat(255) }), {
                maxLength: 12,
              }),
            }),
            fc.record({ op: fc.constant('step' as const), pages: fc.integer({ min: 1, max: 20 }) }),
          ),
          { maxLength: 50 },
        ),
        (pages, ops) => {
          const g = modelGuest(pages);
          const snap = createBackgroundSnapshot({
            tracker: g.tracker,
            slot: g.slot,
            memory: g.memory,
            pageSize: PS,
          });
          const before = g.memory.slice();
          snap.start();
          for (const o of ops) {
            if (o.op === 'step') snap.step(o.pages);
            else
              g.write(
                o.vcpu,
                o.stores.map((s) => ({ ...s, page: s.page % pages })),
              );
          }
          snap.run();
          expect(firstDifference(snap.image, before)).toBe(-1);
          expect(snap.saveCounts.every((c) => c === 1)).toBe(true);
          expect(g.tracker.pendingFaults()).toBe(0);
        },
      ),
      300,
      { seed: SEED },
    );
  });

  it('negative control: a driver that unprotects before saving lets the new data into the image', () => {
    const g = modelGuest(4);
    const snap = createBackgroundSnapshot({
      tracker: g.tracker,
      slot: g.slot,
      memory: g.memory,
      pageSize: PS,
      unprotectBeforeSave: true,
    });
    const before = g.memory.slice();
    snap.start();
    g.write(0, [{ page: 2, offset: 5, value: 0 }]);
    snap.run();
    expect(snap.saveCounts.every((c) => c === 1)).toBe(true); // still once each …
    expect(snap.image).not.toEqual(before); // … but page 2 holds the guest's new byte
    expect(snap.image[2 * PS + 5]).toBe(0);
    expect(before[2 * PS + 5]).not.toBe(0);
  });

  it('negative control: writers that do not wait for the unprotect (skipFaultWait) corrupt the image', () => {
    const g = modelGuest(4, { skipFaultWait: true });
    const snap = createBackgroundSnapshot({
      tracker: g.tracker,
      slot: g.slot,
      memory: g.memory,
      pageSize: PS,
    });
    const before = g.memory.slice();
    snap.start();
    g.write(0, [{ page: 1, offset: 0, value: 0 }]);
    expect(g.tracker.pendingFaults()).toBe(1); // queued, not waited for
    snap.run();
    expect(snap.image).not.toEqual(before);
  });

  it(`the property fails for the unprotect-before-save driver (seed ${SEED}: fast-check finds a counterexample)`, () => {
    const result = fc.check(
      fc.property(
        fc.array(fc.record({ page: fc.nat(15), value: fc.nat(255) }), { minLength: 1, maxLength: 8 }),
        (ws) => {
          const g = modelGuest(16);
          const snap = createBackgroundSnapshot({
            tracker: g.tracker,
            slot: g.slot,
            memory: g.memory,
            pageSize: PS,
            unprotectBeforeSave: true,
          });
          const before = g.memory.slice();
          snap.start();
          g.write(
            0,
            ws.map((w) => ({ page: w.page, offset: 0, value: w.value })),
          );
          snap.run();
          expect(firstDifference(snap.image, before)).toBe(-1);
        },
      ),
      { numRuns: 200, seed: SEED },
    );
    expect(result.failed).toBe(true);
  });

  it('rejects misuse', () => {
    const g = modelGuest(4);
    expectDirtytrackError(
      () => createBackgroundSnapshot({ tracker: g.tracker, slot: g.slot, memory: new Uint8Array(10) }),
      'background-snapshot',
      'invalid-argument',
      /needs 4 × 4096/,
    );
    const snap = createBackgroundSnapshot({
      tracker: g.tracker,
      slot: g.slot,
      memory: g.memory,
      pageSize: PS,
    });
    expectDirtytrackError(() => snap.step(), 'background-snapshot', 'invalid-state', /start\(\) first/);
    snap.start();
    expectDirtytrackError(() => snap.start(), 'background-snapshot', 'invalid-state');
    expectDirtytrackError(
      () => snap.finish(),
      'background-snapshot',
      'invalid-state',
      /4 pages are not saved/,
    );
  });
});

describe('background snapshot, async mode (scans; model plane)', () => {
  it('copies every page, then re-copies what scans find WRITTEN; finish() with the guest paused equals memory', () => {
    const g = modelGuest(8, { mode: 'async' });
    const snap = createBackgroundSnapshot({
      tracker: g.tracker,
      slot: g.slot,
      memory: g.memory,
      pageSize: PS,
    });
    snap.start();
    expect(snap.step(4)).toBe(4); // pages 0..3
    g.write(0, [
      { page: 1, offset: 0, value: 1 },
      { page: 6, offset: 0, value: 2 },
    ]);
    expect(snap.step(10)).toBe(4); // pages 4..7 (6 already holds its new byte)
    expect(snap.step(10)).toBe(2); // a scan finds 1 and 6 WRITTEN and copies them again
    expect(snap.stats()).toMatchObject({ scans: 1, recopied: 2, savedBySweep: 8 });
    g.write(0, [{ page: 3, offset: 9, value: 3 }]);
    snap.finish();
    expect(snap.done).toBe(true);
    expect(snap.image).toEqual(g.memory);
    expect([...snap.saveCounts]).toEqual([1, 2, 1, 2, 1, 1, 2, 1]);
    // 8 protected, 11 copies, 2 scans of one 64-page word, 3 pages re-protected by them.
    const c = DEFAULT_COST_MODEL;
    expect(snap.costNs(c)).toBeCloseTo(8 * 2 + 11 * 2_000 + 2 * c.bitmapCopyNsPerWord + 3 * 40, 9);
    expect(g.tracker.protection(0).popcount()).toBe(0);
  });

  it(`property (seed ${SEED}): any interleaving, then pause and finish: the image equals memory at finish`, async () => {
    await assertProperty(
      fc.property(
        fc.integer({ min: 1, max: 80 }),
        fc.array(
          fc.oneof(
            fc.record({
              op: fc.constant('write' as const),
              stores: fc.array(fc.record({ page: fc.nat(), offset: fc.nat(PS - 1), value: fc.nat(255) }), {
                maxLength: 12,
              }),
            }),
            fc.record({ op: fc.constant('step' as const), pages: fc.integer({ min: 1, max: 20 }) }),
          ),
          { maxLength: 50 },
        ),
        (pages, ops) => {
          const g = modelGuest(pages, { mode: 'async' });
          const snap = createBackgroundSnapshot({
            tracker: g.tracker,
            slot: g.slot,
            memory: g.memory,
            pageSize: PS,
          });
          snap.start();
          for (const o of ops) {
            if (o.op === 'step') snap.step(o.pages);
            else
              g.write(
                0,
                o.stores.map((s) => ({ ...s, page: s.page % pages })),
              );
          }
          snap.finish();
          expect(firstDifference(snap.image, g.memory)).toBe(-1);
          expect(snap.saveCounts.every((c) => c >= 1)).toBe(true);
        },
      ),
      300,
      { seed: SEED },
    );
  });
});

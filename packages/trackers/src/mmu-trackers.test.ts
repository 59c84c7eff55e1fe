import { Bitmap, type MemslotInfo } from '@dirtytrack/core';
import { createBitmapReporter } from '@dirtytrack/reporters';
import { describeTracker, expectDirtytrackError } from '@dirtytrack/testkit';
import { describe, expect, it } from 'vitest';
import { createMmuTracker, createPmlTracker } from './index.js';

const slots: MemslotInfo[] = [
  { id: 0, asId: 0, baseGfn: 0, pages: 16_384 },
  { id: 1, asId: 0, baseGfn: 0x100000, pages: 4096 },
];

/** The suite enables logging on slot 0 with its own size: create the tracker then. */
function lazily(make: (slot: MemslotInfo) => ReturnType<typeof createMmuTracker>) {
  let inner: ReturnType<typeof createMmuTracker> | undefined;
  let sink: Parameters<ReturnType<typeof createMmuTracker>['attach']>[0] | undefined;
  const get = () => {
    if (inner === undefined) throw new Error('enableLogging first');
    return inner;
  };
  return {
    kind: 'mmu',
    attach(s: NonNullable<typeof sink>) {
      sink = s;
      inner?.attach(s);
    },
    enableLogging(slot: MemslotInfo) {
      inner ??= make(slot);
      if (sink !== undefined) inner.attach(sink);
      return inner.enableLogging(slot);
    },
    disableLogging: (id: number) => get().disableLogging(id),
    write: (v: number, s: number, o: Uint32Array, n: number) =>
      inner === undefined ? 0 : inner.write(v, s, o, n),
    rearm: (...a: Parameters<ReturnType<typeof createMmuTracker>['rearm']>) => get().rearm(...a),
    syncDirtyLog: () => inner?.syncDirtyLog(),
    stats: () => get().stats(),
  };
}

describeTracker('MMU tracker (write-protect, 2M backing)', () =>
  lazily((slot) => createMmuTracker({ vcpus: 8, slots: [slot], backing: '2M' })),
);
describeTracker('PML tracker', () => lazily((slot) => createPmlTracker({ vcpus: 8, slots: [slot] })));

describe('PML tracker', () => {
  it('exits about once per 512 writes to new pages, and a GET drains every buffer first', () => {
    const t = createPmlTracker({ vcpus: 2, slots, backing: '2M' });
    const reporter = createBitmapReporter({ rearmer: t, slots });
    t.attach(reporter);
    for (const s of slots) t.enableLogging(s);
    const pages = Uint32Array.from({ length: 10_000 }, (_, i) => i);
    expect(t.write(0, 0, pages, pages.length)).toBe(19); // Exits at writes 513, 1025, …, 9729.
    expect(t.write(1, 1, Uint32Array.of(5, 6, 5), 3)).toBe(0);
    expect(t.stats()).toMatchObject({ pmlFullExits: 19, pmlLogged: 10_002, faults: 0 });
    const log0 = Bitmap.create(16_384);
    const log1 = Bitmap.create(4096);
    expect(reporter.getDirtyLog(0, log0)).toBe(10_000);
    expect(reporter.getDirtyLog(1, log1)).toBe(2);
    expect([log1.test(5), log1.test(6), log1.test(7)]).toEqual([true, true, false]);
    // GET re-armed (cleared D of) exactly the reported pages; vCPU 1 writes page 5 again.
    expect(t.write(1, 1, Uint32Array.of(5), 1)).toBe(0);
    expect(reporter.getDirtyLog(1, log1)).toBe(1);
    expect(t.stats().dirtyCleared).toBe(16_384 + 4096 + 10_002 + 1);
  });

  it('shares itself with workers when created shared, and refuses otherwise', () => {
    const shared = createPmlTracker({ vcpus: 1, slots: [slots[1] as MemslotInfo], shared: true });
    const spec = shared.share();
    expect([spec.module, spec.factory]).toEqual(['@dirtytrack/mmu', 'attachMmu']);
    const local = createPmlTracker({ vcpus: 1, slots: [slots[1] as MemslotInfo] });
    expectDirtytrackError(() => local.share(), 'mmu', 'invalid-state', /sharedTables/);
  });

  it('rejects a memslot in an address space x86 does not have', () => {
    expectDirtytrackError(
      () => createMmuTracker({ vcpus: 1, slots: [{ id: 0, asId: 2, baseGfn: 0, pages: 8 }] }),
      'mmu-tracker',
      'invalid-argument',
      /address space 2/,
    );
  });
});

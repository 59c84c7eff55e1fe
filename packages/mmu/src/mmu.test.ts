import { Bitmap, type DirtySink } from '@dirtytrack/core';
import { createBitmapReporter } from '@dirtytrack/reporters';
import { expectDirtytrackError } from '@dirtytrack/testkit';
import { describe, expect, it } from 'vitest';
import {
  createMmu,
  describeSpte,
  KVM_MEM_LOG_DIRTY_PAGES,
  KVM_MEM_READONLY,
  LEVEL_1G,
  LEVEL_2M,
  LEVEL_4K,
  SPTE_HUGE,
  SPTE_MMU_WRITABLE,
  SPTE_WRITABLE,
  TABLE_BYTES,
  type MmuOptions,
} from './index.js';

const GiB = 2 ** 30;
const MiB = 2 ** 20;

function recordingSink(): DirtySink & { pages: number[]; calls: number } {
  const sink = {
    pages: [] as number[],
    calls: 0,
    markDirty(_slot: number, offsets: Uint32Array, count: number) {
      sink.calls++;
      for (let i = 0; i < count; i++) sink.pages.push(offsets[i] as number);
    },
  };
  return sink;
}

/** One slot 0 at `gpa` of `size` bytes with `backing`, populated like a running guest. */
function guest(options: Partial<MmuOptions>, size: number, backing: '4K' | '2M' | '1G', gpa = 0) {
  const mmu = createMmu({ vcpus: 2, ...options });
  const sink = recordingSink();
  mmu.attach(sink);
  mmu.setUserMemoryRegion({
    slot: 0,
    guestPhysAddr: gpa,
    memorySize: size,
    userspaceAddr: 0x7f00_0000_0000,
    backing,
  });
  mmu.populate(0);
  const info = { id: 0, asId: 0, baseGfn: gpa / 4096, pages: size / 4096 };
  const write = (vcpu: number, ...pages: number[]) =>
    mmu.write(vcpu, 0, Uint32Array.from(pages), pages.length);
  const mask = (...pages: number[]) => {
    const m = Bitmap.create(info.pages);
    for (const p of pages) m.set(p);
    return m;
  };
  return { mmu, sink, info, write, mask };
}

const range = (from: number, n: number) => Array.from({ length: n }, (_, i) => from + i);

describe('memslots (KVM_SET_USER_MEMORY_REGION)', () => {
  const region = { slot: 1, guestPhysAddr: 1 * GiB, memorySize: 64 * MiB, userspaceAddr: 0x1000_0000 };

  it('classifies create, flags-only, move, no-op and delete', () => {
    const mmu = createMmu({ vcpus: 1 });
    expect(mmu.setUserMemoryRegion(region)).toBe('create');
    expect(mmu.slot(1)).toEqual({
      id: 1,
      asId: 0,
      baseGfn: 262_144,
      pages: 16_384,
      userspaceAddr: 0x1000_0000,
      backing: '4K',
      flags: 0,
    });
    expect(mmu.setUserMemoryRegion(region)).toBe('none');
    expect(mmu.setUserMemoryRegion({ ...region, flags: KVM_MEM_LOG_DIRTY_PAGES })).toBe('flags-only');
    expect(mmu.slot(1)?.flags).toBe(KVM_MEM_LOG_DIRTY_PAGES);
    expect(mmu.setUserMemoryRegion({ ...region, guestPhysAddr: 2 * GiB })).toBe('move');
    expect(mmu.slot(1)?.baseGfn).toBe(524_288);
    expect(mmu.setUserMemoryRegion({ ...region, memorySize: 0 })).toBe('delete');
    expect(mmu.slot(1)).toBeUndefined();
    expect(mmu.setUserMemoryRegion({ ...region, memorySize: 0 })).toBe('none');
  });

  it('rejects what KVM rejects, with the errno and the field', () => {
    const mmu = createMmu({ vcpus: 1 });
    mmu.setUserMemoryRegion(region);
    const cases: [object, string, string][] = [
      [{ ...region, slot: 2, guestPhysAddr: 4097 }, 'EINVAL', 'guestPhysAddr'],
      [{ ...region, slot: 2, memorySize: 100 }, 'EINVAL', 'memorySize'],
      [{ ...region, slot: 2, userspaceAddr: 12 }, 'EINVAL', 'userspaceAddr'],
      [{ ...region, slot: 2, flags: 4 }, 'EINVAL', 'flags'],
      [{ ...region, slot: 0x10000 }, 'EINVAL', 'slot'],
      [{ ...region, memorySize: 128 * MiB }, 'EINVAL', 'memorySize'],
      [{ ...region, userspaceAddr: 0x2000_0000 }, 'EINVAL', 'userspaceAddr'],
      [{ ...region, flags: KVM_MEM_READONLY }, 'EINVAL', 'flags'],
      [{ ...region, backing: '2M' }, 'EINVAL', 'backing'],
      [{ ...region, slot: 2, guestPhysAddr: 1 * GiB + 32 * MiB }, 'EEXIST', 'guestPhysAddr'],
      [{ ...region, slot: 2, guestPhysAddr: 16 * 2 ** 40 }, 'EINVAL', 'memorySize'],
    ];
    for (const [r, errno, field] of cases) {
      const error = expectDirtytrackError(
        () => mmu.setUserMemoryRegion(r as typeof region),
        'mmu',
        'invalid-argument',
      );
      expect([error.errno, error.field]).toEqual([errno, field]);
    }
    // The same range in the other address space (SMM) does not overlap.
    expect(mmu.setUserMemoryRegion({ ...region, slot: 2, asId: 1 })).toBe('create');
  });

  it('deleting a slot zaps its SPTEs and frees its tables; writes to it are refused', () => {
    const { mmu, write } = guest({}, 4 * MiB, '4K');
    expect(mmu.stats().tables).toBe(3); // A 2M table under the root entry, and two 4K tables.
    mmu.setUserMemoryRegion({ slot: 0, guestPhysAddr: 0, memorySize: 0, userspaceAddr: 0x7f00_0000_0000 });
    expect(mmu.stats()).toMatchObject({ zaps: 1 + 2 + 1024, tables: 0, tlbFlushes: 1 });
    expectDirtytrackError(() => write(0, 1), 'mmu', 'invalid-argument', /no memslot 0/);
  });

  it('moving a slot zaps the old mappings; the next write maps the page again', () => {
    const { mmu, write, sink } = guest({}, 4 * MiB, '2M');
    expect(mmu.stats().tables).toBe(1);
    mmu.setUserMemoryRegion({
      slot: 0,
      guestPhysAddr: 1 * GiB,
      memorySize: 4 * MiB,
      userspaceAddr: 0x7f00_0000_0000,
    });
    expect(mmu.inspect(0, 0).spte).toBe(0);
    expect(write(0, 0)).toBe(1);
    expect(mmu.inspect(0, 0)).toEqual({ spte: mmu.inspect(0, 511).spte, level: LEVEL_2M });
    expect(sink.pages).toEqual([]); // Not logging: faults map, nothing is reported.
  });
});

describe('lazy write-protect with initially-set (Keqian Zhu)', () => {
  it('1 GiB slot on a 1G page: enable does nothing; clearing one 64-page window splits one huge page to 4K and protects exactly 64 pages', () => {
    const { mmu, sink, info, write, mask } = guest({ logging: 'lazy' }, GiB, '1G');
    expect(mmu.inspect(0, 0).level).toBe(LEVEL_1G);
    expect(mmu.enableLogging(info)).toBe(0);
    expect(mmu.stats()).toMatchObject({ splits: 0, wrprotected: 0, tables: 0, tableBytes: 0, tlbFlushes: 0 });

    expect(mmu.rearm(0, mask(...range(128, 64)))).toBe(64);
    // 1G → 2M (one table of 512 huge leaves), then the 2M covering pages 128..191 → 4K.
    expect(mmu.stats()).toMatchObject({ splits: 2, wrprotected: 64, tables: 2, tableBytes: 2 * TABLE_BYTES });
    expect(mmu.stats().tlbFlushes).toBe(1);
    expect(describeSpte(mmu.inspect(0, 128).spte)).toBe('P|MW|HW|D');
    expect(describeSpte(mmu.inspect(0, 127).spte)).toBe('P|W|MW|HW|D'); // Same 2M, outside the window.
    expect(mmu.inspect(0, 512)).toMatchObject({ level: LEVEL_2M }); // The other 511 2M pages stay huge.

    // A write to a protected page: exactly one (fast) fault and one reported gfn.
    expect(write(0, 130, 130, 127, 512, 100_000)).toBe(1);
    expect(sink.pages).toEqual([130]);
    expect(mmu.stats()).toMatchObject({ faults: 1, fastFaults: 1, slowFaults: 0, reported: 1 });
    expect(write(1, 130)).toBe(0); // Writable now, for every vCPU.
  });

  it('through the bitmap reporter: KVM_CLEAR_DIRTY_LOG re-arms via the MMU and the next GET sees the write', () => {
    const { mmu, info, write } = guest({ logging: 'lazy' }, GiB, '1G');
    const reporter = createBitmapReporter({
      rearmer: mmu,
      slots: [info],
      manualProtect: true,
      initiallySet: true,
    });
    mmu.attach(reporter);
    mmu.enableLogging(info);
    const log = Bitmap.create(info.pages);
    expect(reporter.getDirtyLog(0, log)).toBe(info.pages); // Everything starts dirty.
    const window = Bitmap.create(64);
    window.setAll();
    expect(reporter.clearDirtyLog?.(0, 64, 64, window)).toBe(64);
    expect(mmu.stats()).toMatchObject({ splits: 2, wrprotected: 64 });
    write(0, 70);
    expect(reporter.getDirtyLog(0, log)).toBe(info.pages - 63);
    expect(log.test(70) && !log.test(71)).toBe(true);
  });

  it('without split-on-clear, a window across two 2M regions write-protects both huge pages; the fault splits', () => {
    // Slot base 1 MiB into a 2M region: only [2 MiB, 4 MiB) of the 4 MiB slot can be huge.
    const { mmu, sink, info, write, mask } = guest(
      { logging: 'lazy', splitOnClear: false },
      4 * MiB,
      '2M',
      MiB,
    );
    expect([mmu.inspect(0, 0).level, mmu.inspect(0, 256).level, mmu.inspect(0, 768).level]).toEqual([
      LEVEL_4K,
      LEVEL_2M,
      LEVEL_4K,
    ]);
    mmu.enableLogging(info);
    // Pages 240..303 = gfns 496..559: 16 pages of the 4K region, then into the huge page.
    mmu.rearm(0, mask(...range(240, 64)));
    expect(mmu.stats()).toMatchObject({ splits: 0, wrprotected: 16 + 1 });
    const huge = mmu.inspect(0, 300).spte;
    expect(huge & (SPTE_WRITABLE | SPTE_MMU_WRITABLE)).toBe(0);
    expect(huge & SPTE_HUGE).toBe(SPTE_HUGE);
    expect(write(0, 400)).toBe(1); // Not MMU-writable: the slow path splits, then maps W.
    expect(mmu.stats()).toMatchObject({ splits: 1, slowFaults: 1, fastFaults: 0, reported: 1 });
    expect(sink.pages).toEqual([400]);
    expect(write(0, 401)).toBe(1); // Siblings inherited the protection: slow path again.
    expect(mmu.stats().slowFaults).toBe(2);
  });

  it('memory does not grow with the guest size until pages are written', () => {
    const footprint = (size: number) => {
      const { mmu, info } = guest({ logging: 'lazy' }, size, '1G');
      mmu.enableLogging(info);
      return mmu.stats().tableBytes;
    };
    expect([footprint(16 * GiB), footprint(128 * GiB)]).toEqual([0, 0]);
  });
});

describe('eager enable paths', () => {
  it('eager-split: a 2 GiB slot on 1G pages is split to 4 KiB and every page write-protected at enable', () => {
    const { mmu, info, write, sink } = guest({ logging: 'eager-split' }, 2 * GiB, '1G');
    expect(mmu.enableLogging(info)).toBe(2 * 262_144);
    expect(mmu.stats()).toMatchObject({
      splits: 2 + 1024,
      wrprotected: 524_288,
      tables: 2 + 1024,
      tlbFlushes: 1,
    });
    expect(mmu.inspect(0, 300_000)).toMatchObject({ level: LEVEL_4K });
    expect(write(1, 300_000, 300_000)).toBe(1);
    expect(mmu.stats()).toMatchObject({ fastFaults: 1, slowFaults: 0 });
    expect(sink.pages).toEqual([300_000]);
  });

  it('write-protect: huge leaves are protected whole; the first write splits 1G → 2M → 4K, siblings take the fast path', () => {
    const { mmu, info, write, sink } = guest({ logging: 'write-protect' }, GiB, '1G');
    expect(mmu.enableLogging(info)).toBe(1);
    expect(mmu.stats()).toMatchObject({ splits: 0, wrprotected: 1, tables: 0 });
    expect(write(0, 7)).toBe(1);
    expect(mmu.stats()).toMatchObject({ splits: 2, slowFaults: 1, reported: 1, tables: 2 });
    expect(write(0, 8)).toBe(1);
    expect(mmu.stats()).toMatchObject({ fastFaults: 1, slowFaults: 1, reported: 2 });
    expect(sink.pages).toEqual([7, 8]);
  });

  it('disabling logging recovers huge pages and frees every table', () => {
    const { mmu, info } = guest({ logging: 'eager-split' }, GiB, '1G');
    mmu.enableLogging(info);
    mmu.disableLogging(0);
    expect(mmu.stats()).toMatchObject({ recovered: 512 + 1, tables: 0 });
    expect(mmu.inspect(0, 12_345)).toMatchObject({ level: LEVEL_1G });
    expect(mmu.inspect(0, 12_345).spte & SPTE_WRITABLE).toBe(SPTE_WRITABLE);
  });
});

describe('faults, READONLY slots and the TLB protocol', () => {
  it('a write to an unmapped page of a logging slot maps it at 4 KiB and reports it', () => {
    const mmu = createMmu({ vcpus: 1 });
    const sink = recordingSink();
    mmu.attach(sink);
    mmu.setUserMemoryRegion({
      slot: 0,
      guestPhysAddr: 0,
      memorySize: 4 * MiB,
      userspaceAddr: 0,
      backing: '2M',
      flags: KVM_MEM_LOG_DIRTY_PAGES,
    });
    expect(mmu.write(0, 0, Uint32Array.of(3, 3, 4), 3)).toBe(2);
    expect(sink.pages).toEqual([3, 4]);
    expect(mmu.inspect(0, 3).level).toBe(LEVEL_4K);
    expect(mmu.stats()).toMatchObject({ slowFaults: 2, tlbHits: 1, writes: 3 });
  });

  it('READONLY slots exit to userspace on every write and never report', () => {
    const mmu = createMmu({ vcpus: 1 });
    const sink = recordingSink();
    mmu.attach(sink);
    mmu.setUserMemoryRegion({
      slot: 0,
      guestPhysAddr: 0,
      memorySize: MiB,
      userspaceAddr: 0,
      flags: KVM_MEM_READONLY,
    });
    mmu.populate(0);
    mmu.enableLogging({ id: 0, asId: 0, baseGfn: 0, pages: 256 });
    expect(mmu.write(0, 0, Uint32Array.of(1, 1), 2)).toBe(0);
    expect(mmu.stats()).toMatchObject({ readonlyExits: 2, reported: 0, faults: 0 });
    expect(sink.pages).toEqual([]);
  });

  it('a harvest re-arms and flushes, so a re-write is reported; skipping the flush loses it', () => {
    for (const skipTlbFlush of [false, true]) {
      const { mmu, info, write, mask, sink } = guest({ skipTlbFlush }, 4 * MiB, '4K');
      mmu.enableLogging(info);
      write(0, 9);
      mmu.rearm(0, mask(9)); // Userspace harvested page 9.
      write(0, 9); // vCPU 0 still caches page 9 as writable unless the flush reached it.
      write(1, 10);
      expect(sink.pages).toEqual(skipTlbFlush ? [9, 10] : [9, 9, 10]);
      expect(mmu.stats().tlbFlushes).toBe(2);
    }
  });

  it('a touched-word hint in any order, naming words twice, re-arms each page once', () => {
    const { mmu, info, write, mask } = guest({}, 4 * MiB, '4K');
    mmu.enableLogging(info);
    const pages = [1, 40, 63, 64, 200];
    write(0, ...pages);
    const before = mmu.stats().wrprotected;
    // 32-bit words 0, 1, 2, 6 hold the bits; the list repeats and shuffles them (a ring's order).
    const touched = { words: Uint32Array.of(6, 0, 2, 1, 0, 6, 2), count: 7 };
    expect(mmu.rearm(0, mask(...pages), touched)).toBe(5);
    expect(mmu.stats()).toMatchObject({ rearmed: 5, wrprotected: before + 5 });
  });

  it('refuses bad options and out-of-range writes with a typed error', () => {
    expectDirtytrackError(() => createMmu({ vcpus: 0 }), 'mmu', 'invalid-argument', /vcpus/);
    expectDirtytrackError(
      () => createMmu({ vcpus: 1, tlbEntries: 1000 }),
      'mmu',
      'invalid-argument',
      /tlbEntries/,
    );
    expectDirtytrackError(
      () => createMmu({ vcpus: 1, logging: 'eager' as 'lazy' }),
      'mmu',
      'invalid-argument',
      /logging/,
    );
    const { mmu, write } = guest({}, MiB, '4K');
    expectDirtytrackError(() => write(0, 256), 'mmu', 'out-of-range', /page 256/);
    expectDirtytrackError(() => write(5, 1), 'mmu', 'out-of-range', /vCPU 5/);
    expectDirtytrackError(() => mmu.descriptor(), 'mmu', 'invalid-state', /sharedTables/);
  });
});

describe('PML (Intel page-modification logging)', () => {
  it('re-arms by clearing D; writes log gfns without exiting; a harvest kick drains them in write order', () => {
    const { mmu, info, write, sink, mask } = guest({ pml: true }, 4 * MiB, '2M');
    expect(mmu.enableLogging(info)).toBe(1024);
    expect(mmu.stats()).toMatchObject({ splits: 2, dirtyCleared: 1024, wrprotected: 0, tlbFlushes: 1 });
    expect(describeSpte(mmu.inspect(0, 5).spte)).toBe('P|W|MW|HW');
    expect(write(0, 6, 5, 6, 700)).toBe(0); // No exits: the CPU logs.
    expect(sink.pages).toEqual([]);
    expect(mmu.stats()).toMatchObject({ pmlLogged: 3, faults: 0, pmlFullExits: 0 });
    mmu.syncDirtyLog();
    expect(sink.pages).toEqual([6, 5, 700]);
    expect(mmu.stats().reported).toBe(3);

    mmu.rearm(0, mask(5)); // D cleared again, TLBs flushed: the next write logs again.
    write(0, 5, 6);
    mmu.syncDirtyLog();
    expect(sink.pages).toEqual([6, 5, 700, 5]);
    expect(mmu.stats()).toMatchObject({ dirtyCleared: 1025, pmlLogged: 4 });
  });

  it('a full buffer exits before the 513th logged write; exits are writes-to-new-pages / 512', () => {
    const { mmu, info, write, sink } = guest({ pml: true }, 8 * MiB, '4K');
    mmu.enableLogging(info);
    expect(write(1, ...range(0, 512))).toBe(0);
    expect(mmu.stats().pmlFullExits).toBe(0);
    expect(write(1, 512)).toBe(1); // The PML-full exit drains 512 entries, then the write logs.
    expect(sink.pages).toEqual(range(0, 512));
    expect(write(1, ...range(513, 1535))).toBe(2);
    expect(mmu.stats()).toMatchObject({ pmlFullExits: 3, pmlLogged: 2048, reported: 1536 });
    mmu.syncDirtyLog();
    expect(sink.pages).toEqual(range(0, 2048));
  });

  it('huge pages are still write-protected under PML; a fault reports directly', () => {
    const { mmu, info, write, sink } = guest({ pml: true, logging: 'write-protect' }, GiB, '1G');
    expect(mmu.enableLogging(info)).toBe(1);
    expect(mmu.stats()).toMatchObject({ wrprotected: 1, dirtyCleared: 0 });
    expect(write(0, 3)).toBe(1);
    expect(sink.pages).toEqual([3]);
    expect(mmu.stats()).toMatchObject({ slowFaults: 1, splits: 2, pmlLogged: 0 });
  });

  it('a stale TLB entry skips the D-bit walk when the flush is skipped: the write is lost', () => {
    for (const skipTlbFlush of [false, true]) {
      const { mmu, info, write, sink, mask } = guest({ pml: true, skipTlbFlush }, 4 * MiB, '4K');
      mmu.enableLogging(info);
      write(0, 9);
      mmu.syncDirtyLog();
      mmu.rearm(0, mask(9));
      write(0, 9);
      mmu.syncDirtyLog();
      expect(sink.pages).toEqual(skipTlbFlush ? [9] : [9, 9]);
    }
  });
});

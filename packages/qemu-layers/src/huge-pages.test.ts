import type { LoggingControl, MemslotInfo } from '@dirtytrack/core';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  allocateGuestRam,
  anonHugePagesKiB,
  createHugePageAllocator,
  defaultBitmapAllocator,
  guestRamWith,
  hugePageAllocatorWith,
  type BitmapAllocator,
} from './huge-pages.js';
import { createQemuLayers } from './qemu-layers.js';
import { createSwapDirtyLog } from './swap-dirty-log.js';
import { assertProperty } from '@dirtytrack/testkit';

const MiB = 1024 * 1024;

describe('bitmap allocators', () => {
  it('default: a zeroed buffer of exactly the bytes, shared on request, region at 0', () => {
    const a = defaultBitmapAllocator.allocate(24);
    expect(a.buffer).toBeInstanceOf(ArrayBuffer);
    expect(a.buffer.byteLength).toBe(24);
    expect(a.byteOffset).toBe(0);
    expect([...new Uint8Array(a.buffer)]).toEqual(new Array(24).fill(0));
    expect(defaultBitmapAllocator.allocate(8, { shared: true }).buffer).toBeInstanceOf(SharedArrayBuffer);
    expect(() => defaultBitmapAllocator.allocate(-1)).toThrow(/\[huge-pages\].*-1 bytes/);
  });

  it('without madvise (no koffi, THP never, not Linux) it falls back to the default allocator', () => {
    const a = hugePageAllocatorWith(undefined);
    expect(a.kind).toBe('default');
    expect(a.allocate(16).byteOffset).toBe(0);
  });

  it('advises MADV_HUGEPAGE over the page-aligned interior of big buffers and starts the region on a page', () => {
    const calls: [bigint, number, number][] = [];
    // A buffer at 0x1010, as glibc's mmap'd chunks are (page + 16).
    const a = hugePageAllocatorWith((at, len, advice) => (calls.push([at, len, advice]), 0), {
      minBytes: 3 * 4096,
      addressOf: () => 0x1010n,
    });
    expect(a.kind).toBe('huge-pages');
    const big = a.allocate(5 * 4096, { shared: true });
    expect(big.buffer).toBeInstanceOf(SharedArrayBuffer);
    expect(big.buffer.byteLength).toBe(6 * 4096);
    expect(big.byteOffset).toBe(0xff0); // 0x1010 + 0xff0 = 0x2000
    // [0x1010, 0x1010 + 6·4096) holds the whole pages [0x2000, 0x7000).
    expect(calls).toEqual([[0x2000n, 0x5000, 14]]);
    a.allocate(2 * 4096); // below minBytes: aligned, not advised
    expect(calls).toHaveLength(1);
  });

  it.skipIf(anonHugePagesKiB() === undefined || createHugePageAllocator().kind === 'default')(
    'on this machine: a touched 64 MiB region is backed by huge pages',
    () => {
      const before = anonHugePagesKiB() as number;
      const a = createHugePageAllocator().allocate(64 * MiB);
      new Uint8Array(a.buffer).fill(1);
      const after = anonHugePagesKiB() as number;
      // Not all 64 MiB need be huge (the unaligned head and tail, compaction), but some must.
      expect(after - before).toBeGreaterThanOrEqual(2048);
      expect(a.byteOffset % 8).toBe(0);
    },
  );
});

describe('guest RAM (allocateGuestRam)', () => {
  it('exactly the bytes asked, advised over its page-aligned interior; no madvise or a failing one: plain', () => {
    const calls: [bigint, number, number][] = [];
    const ram = guestRamWith(
      (at, len, advice) => (calls.push([at, len, advice]), 0),
      4 * MiB,
      () => 0x7f00_0000_1010n,
    );
    expect(ram.memory).toBeInstanceOf(SharedArrayBuffer);
    expect(ram.memory.byteLength).toBe(4 * MiB);
    expect(ram.hugePages).toBe(true);
    // [0x…1010, 0x…1010 + 4 MiB) holds the whole pages [0x…2000, 0x…1000 + 4 MiB).
    expect(calls).toEqual([[0x7f00_0000_2000n, 4 * MiB - 4096, 14]]);
    expect(
      guestRamWith(
        () => -1,
        4 * MiB,
        () => 0x1010n,
      ).hugePages,
    ).toBe(false);
    expect(guestRamWith(undefined, 4 * MiB).hugePages).toBe(false);
    // Below one huge page there is nothing to advise.
    calls.length = 0;
    expect(
      guestRamWith(
        (at, len, a) => (calls.push([at, len, a]), 0),
        8192,
        () => 0x1010n,
      ).hugePages,
    ).toBe(false);
    expect(calls).toEqual([]);
  });

  it('a size that is not a positive multiple of 4 KiB is an invalid-argument error naming the bytes', () => {
    for (const bytes of [0, -4096, 4097, 1.5, Number.NaN]) {
      expect(() => allocateGuestRam(bytes)).toThrow(
        expect.objectContaining({ code: 'invalid-argument', component: 'huge-pages', field: 'bytes' }),
      );
    }
  });

  it('hugePages: false asks for plain memory', () => {
    const ram = allocateGuestRam(4 * MiB, { hugePages: false });
    expect(ram.hugePages).toBe(false);
    expect(ram.memory.byteLength).toBe(4 * MiB);
  });

  it.skipIf(anonHugePagesKiB() === undefined || createHugePageAllocator().kind === 'default')(
    'on this machine: 64 MiB of guest RAM, touched, is backed by huge pages and reads back zeroed before',
    () => {
      const before = anonHugePagesKiB() as number;
      const ram = allocateGuestRam(64 * MiB);
      expect(ram.hugePages).toBe(true);
      const bytes = new Uint8Array(ram.memory);
      let nonZero = 0;
      for (let i = 0; i < bytes.length; i += 4096) nonZero += bytes[i] as number;
      expect(nonZero).toBe(0);
      bytes.fill(1);
      expect((anonHugePagesKiB() as number) - before).toBeGreaterThanOrEqual(2048);
    },
  );
});

// 1000 pages: a partial last 64-byte group (16 64-bit words, 15.6 used), so the merge's straight
// copy of a group is clamped at the end.
const PAGES = 1000;
const slot: MemslotInfo = { id: 0, asId: 0, baseGfn: 0, pages: PAGES };
const noLogging: LoggingControl = { enableLogging: (s) => s.pages, disableLogging: () => undefined };

function fusedWorld(allocator: BitmapAllocator) {
  const source = createSwapDirtyLog({ slots: [slot], allocator });
  const layers = createQemuLayers({
    kvm: { source, logging: noLogging, slot },
    strategy: 'fused',
    allocator,
  });
  layers.setup();
  return { source, layers };
}

describe("'fused' over the swap log: the allocator never changes the bits (property)", () => {
  it('identical bmap, dirtyPages and sync results with default, fallback, fake-aligned and real huge-page allocators', async () => {
    const allocators: BitmapAllocator[] = [
      defaultBitmapAllocator,
      hugePageAllocatorWith(undefined),
      hugePageAllocatorWith(() => 0, { minBytes: 0, addressOf: () => 0x7f00_0000_1010n }),
      createHugePageAllocator({ minBytes: 0 }),
    ];
    // Runs of pages (a cluster of dirty words) or single pages, then a partial send.
    const opArb = fc.oneof(
      fc.record({
        t: fc.constant('write' as const),
        start: fc.nat(PAGES - 1),
        len: fc.integer({ min: 1, max: 600 }),
      }),
      fc.record({ t: fc.constant('write' as const), start: fc.nat(PAGES - 1), len: fc.constant(1) }),
      fc.record({ t: fc.constant('send' as const), every: fc.integer({ min: 1, max: 7 }) }),
      fc.constant({ t: 'sync' as const }),
    );
    await assertProperty(
      fc.property(fc.array(opArb, { maxLength: 30 }), (ops) => {
        const worlds = allocators.map(fusedWorld);
        const ref = worlds[0] as (typeof worlds)[number];
        for (const op of ops) {
          if (op.t === 'write') {
            const end = Math.min(PAGES, op.start + op.len);
            const offsets = Uint32Array.from({ length: end - op.start }, (_, i) => op.start + i);
            for (const w of worlds) w.source.markDirty(0, offsets, offsets.length, 0);
          } else if (op.t === 'send') {
            const pages = [...ref.layers.bmap.setBits()].filter((_, i) => i % op.every === 0);
            for (const w of worlds) for (const p of pages) w.layers.clearSent(p >>> 5, 1 << (p & 31));
          } else {
            const results = worlds.map((w) => w.layers.sync());
            for (const r of results) {
              expect(r.newDirty).toBe(results[0]?.newDirty);
              expect(r.reported).toBe(results[0]?.reported);
            }
          }
          for (const w of worlds) {
            expect([...w.layers.bmap.words]).toEqual([...ref.layers.bmap.words]);
            expect(w.layers.dirtyPages).toBe(ref.layers.bmap.popcount());
          }
        }
      }),
      100,
    );
  });
});

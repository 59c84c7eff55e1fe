import type { DirtytrackError } from '@dirtytrack/core';
import {
  Bitmap,
  type DirtytrackErrorCode,
  type MemslotInfo,
  type Rearmer,
  type TouchedWords,
} from '@dirtytrack/core';
import { describeReporter, expectDirtytrackError, assertProperty } from '@dirtytrack/testkit';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { runRingStress } from './__fixtures__/ring-stress.js';
import { createRingReporter, RING_LAYOUT, ringBufferBytes, type RingReporter } from './ring-reporter.js';

const A: MemslotInfo = { id: 3, asId: 1, baseGfn: 0x1000, pages: 1000 }; // packed slot 0x00010003
const B: MemslotInfo = { id: 0, asId: 0, baseGfn: 0, pages: 130 };

interface RearmCall {
  slot: number;
  pages: number[];
  touched: number[] | undefined;
}

function rearmLog(): Rearmer & { calls: RearmCall[] } {
  const calls: RearmCall[] = [];
  return {
    calls,
    rearm(slot: number, mask: Bitmap, touched?: TouchedWords) {
      calls.push({
        slot,
        pages: [...mask.setBits()],
        touched: touched && [...touched.words.subarray(0, touched.count)],
      });
      return mask.popcount();
    },
  };
}

function expectError(fn: () => unknown, code: DirtytrackErrorCode, pattern: RegExp): DirtytrackError {
  return expectDirtytrackError(fn, 'ring-reporter', code, pattern);
}

/** One `struct kvm_dirty_gfn`, little-endian, byte by byte. */
function gfn(flags: number, slot: number, offset: number): number[] {
  const le32 = (x: number) => [x & 0xff, (x >>> 8) & 0xff, (x >>> 16) & 0xff, (x >>> 24) & 0xff];
  return [...le32(flags), ...le32(slot), ...le32(offset % 2 ** 32), ...le32(Math.floor(offset / 2 ** 32))];
}

function harvestAll(r: RingReporter, vcpu: number): [number, number][] {
  const got: [number, number][] = [];
  r.harvest(vcpu, (slot, offset) => got.push([slot, offset]));
  return got;
}

const push = (r: RingReporter, slot: number, pages: number[], vcpu: number): void =>
  r.markDirty(slot, Uint32Array.from(pages), pages.length, vcpu);

describe('ring reporter: layout', () => {
  it('pushes struct kvm_dirty_gfn entries byte for byte, harvest sets RESET, reset clears and re-arms', () => {
    const rearmer = rearmLog();
    const r = createRingReporter({ vcpus: 2, entries: 256, rearmer, slots: [A, B] });
    expect(r.buffer.byteLength).toBe(2 * 256 * 16 + 64 + 2 * 128);
    push(r, 3, [7, 600], 0);
    push(r, 0, [0x55], 1);
    const bytes = new Uint8Array(r.buffer);
    const ring0 = bytes.subarray(0, 4096);
    const ring1 = bytes.subarray(4096, 8192);
    // Hand-built: flags 1, slot (1 << 16) | 3 = 0x00010003, offset u64, all little-endian.
    // prettier-ignore
    const hand = [
      1, 0, 0, 0, /* slot */ 3, 0, 1, 0, /* offset */ 7, 0, 0, 0, 0, 0, 0, 0,
      1, 0, 0, 0, /* slot */ 3, 0, 1, 0, /* offset 600 */ 0x58, 0x02, 0, 0, 0, 0, 0, 0,
    ];
    expect([...ring0.subarray(0, 32)]).toEqual(hand);
    expect([...ring1.subarray(0, 16)]).toEqual([1, 0, 0, 0, 0, 0, 0, 0, 0x55, 0, 0, 0, 0, 0, 0, 0]);
    expect([...ring0.subarray(0, 32)]).toEqual([...gfn(1, 0x10003, 7), ...gfn(1, 0x10003, 600)]);
    expect(ring0.subarray(32).every((b) => b === 0)).toBe(true);
    expect(ring1.subarray(16).every((b) => b === 0)).toBe(true);
    expect([r.used(0), r.used(1), r.room(0), r.room(1)]).toEqual([2, 1, 190, 191]);

    expect(harvestAll(r, 0)).toEqual([
      [0x10003, 7],
      [0x10003, 600],
    ]);
    expect(harvestAll(r, 1)).toEqual([[0, 0x55]]);
    expect(harvestAll(r, 0)).toEqual([]); // never re-reads a harvested entry
    expect([...ring0.subarray(0, 32)]).toEqual([...gfn(2, 0x10003, 7), ...gfn(2, 0x10003, 600)]);
    expect([...ring1.subarray(0, 16)]).toEqual(gfn(2, 0, 0x55));
    expect(r.used(0)).toBe(2); // harvested is not reset: the entries still occupy the ring
    expect(rearmer.calls).toEqual([]);

    expect(r.reset()).toBe(3);
    // Flags back to 0; KVM leaves slot/offset as they were.
    expect([...ring0.subarray(0, 32)]).toEqual([...gfn(0, 0x10003, 7), ...gfn(0, 0x10003, 600)]);
    expect([...ring1.subarray(0, 16)]).toEqual(gfn(0, 0, 0x55));
    expect(rearmer.calls).toEqual([
      { slot: 3, pages: [7, 600], touched: [0, 18] },
      { slot: 0, pages: [0x55], touched: [2] },
    ]);
    expect([r.used(0), r.used(1), r.room(0)]).toEqual([0, 0, 192]);
    expect(r.reset()).toBe(0);
    expect(rearmer.calls.length).toBe(2);
    expect(r.stats()).toEqual({
      pushed: 3,
      harvested: 3,
      reset: 3,
      coalescedBatches: 3,
      ignoredBatches: 0,
      rearmed: 3,
      tlbFlushes: 1,
      fullExits: 0,
      maxUsed: 2,
    });
  });

  it('harvestInto fills caller arrays in order, at most their length, and leaves the rest DIRTY', () => {
    const r = createRingReporter({ vcpus: 1, entries: 256, rearmer: rearmLog(), slots: [A, B] });
    push(r, 3, [1, 2, 3], 0);
    push(r, 0, [4, 5], 0);
    const slots = new Uint32Array(4);
    const offsets = new Float64Array(4);
    expect(r.harvestInto(0, slots, offsets)).toBe(4);
    expect([...slots]).toEqual([0x10003, 0x10003, 0x10003, 0]);
    expect([...offsets]).toEqual([1, 2, 3, 4]);
    expect(r.harvestInto(0, slots, offsets)).toBe(1);
    expect([slots[0], offsets[0]]).toEqual([0, 5]);
    expect(r.harvest(0, undefined, 10)).toBe(0);
    expect(r.reset()).toBe(5);
  });

  it('keeps counting across the u32 wrap of dirty_index / reset_index', () => {
    const rearmer = rearmLog();
    const first = createRingReporter({ vcpus: 1, entries: 256, rearmer, slots: [B] });
    const idx = r0Index(first);
    const start = 2 ** 32 - 3; // free-running u32, stored as Int32
    idx[RING_LAYOUT.DIRTY_INDEX] = start | 0;
    idx[RING_LAYOUT.RESET_INDEX] = start | 0;
    const r = createRingReporter({ vcpus: 1, entries: 256, rearmer, slots: [B], buffer: first.buffer });
    push(r, 0, [1, 2, 3, 4, 5, 6], 0);
    expect(r.used(0)).toBe(6);
    expect(idx[RING_LAYOUT.DIRTY_INDEX]).toBe(3); // wrapped
    expect(harvestAll(r, 0).map(([, o]) => o)).toEqual([1, 2, 3, 4, 5, 6]);
    expect(r.reset()).toBe(6);
    expect([r.used(0), r.room(0)]).toEqual([0, 192]);
    expect(rearmer.calls.map((c) => c.pages)).toEqual([[1, 2, 3, 4, 5, 6]]);
    // Entries sit at index & (entries - 1): 253, 254, 255, 0, 1, 2.
    const flagsAt = (i: number) => new Uint32Array(r.buffer, i * 16, 4);
    expect([...flagsAt(253)]).toEqual([0, 0, 1, 0]);
    expect([...flagsAt(2)]).toEqual([0, 0, 6, 0]);
  });
});

/** Ring 0's index block (after the rings and the 64-byte header) as Int32 words. */
function r0Index(r: RingReporter): Int32Array {
  const at = r.vcpus * r.entries * 16 + RING_LAYOUT.HEADER_BYTES;
  return new Int32Array(r.buffer, at, RING_LAYOUT.RING_BLOCK_BYTES / 4);
}

describe('ring reporter: limits', () => {
  it('256 entries: reserve 64, soft limit 192, room counts down to 0 and never goes negative', () => {
    const r = createRingReporter({ vcpus: 1, entries: 256, rearmer: rearmLog(), slots: [A] });
    expect([r.entries, r.reserved, r.softLimit, r.room(0), r.used(0)]).toEqual([256, 64, 192, 192, 0]);
    push(r, 3, [1], 0);
    expect(r.room(0)).toBe(191);
    push(
      r,
      3,
      Array.from({ length: 90 }, (_, i) => i),
      0,
    );
    expect([r.used(0), r.room(0)]).toEqual([91, 101]);
    push(
      r,
      3,
      Array.from({ length: 101 }, (_, i) => i),
      0,
    );
    expect([r.used(0), r.room(0)]).toEqual([192, 0]);
    // The reserve absorbs an overshoot (KVM checks only at guest entry): room stays 0.
    push(
      r,
      3,
      Array.from({ length: 64 }, (_, i) => i),
      0,
    );
    expect([r.used(0), r.room(0)]).toEqual([256, 0]);
    expect(r.stats().maxUsed).toBe(256);
  });

  it('pushing past `entries` un-reset throws invalid-state and writes nothing', () => {
    const r = createRingReporter({ vcpus: 2, entries: 256, rearmer: rearmLog(), slots: [A] });
    push(
      r,
      3,
      Array.from({ length: 250 }, (_, i) => i),
      0,
    );
    const before = new Uint8Array(r.buffer).slice();
    expectError(
      () => push(r, 3, [1, 2, 3, 4, 5, 6, 7], 0),
      'invalid-state',
      /250 of 256 used.*would overwrite/,
    );
    expect(new Uint8Array(r.buffer)).toEqual(before);
    expect([r.used(0), r.stats().pushed]).toEqual([250, 250]);
    push(r, 3, [1, 2, 3, 4, 5, 6], 0); // exactly full is the limit
    expect(r.used(0)).toBe(256);
    expectError(() => push(r, 3, [9], 0), 'invalid-state', /would overwrite un-reset entries/);
    // Harvest alone frees nothing; harvest + reset does.
    expect(r.harvest(0)).toBe(256);
    expectError(() => push(r, 3, [9], 0), 'invalid-state', /256 of 256 used/);
    expect(r.reset()).toBe(256);
    push(r, 3, [9], 0);
    expect(r.used(0)).toBe(1);
  });

  it('PML reserves 576 entries: 1024 is the smallest accepted ring', () => {
    const pml = createRingReporter({ vcpus: 1, entries: 1024, rearmer: rearmLog(), pml: true });
    expect([pml.reserved, pml.softLimit]).toEqual([576, 448]);
    const e = expectError(
      () => createRingReporter({ vcpus: 1, entries: 512, rearmer: rearmLog(), pml: true }),
      'invalid-argument',
      /8192 bytes is below the minimum of max\(4096, 576 reserved entries × 16 = 9216\)/,
    );
    expect([e.errno, e.field]).toEqual(['EINVAL', 'entries']);
    const big = createRingReporter({ vcpus: 1, entries: 65536, rearmer: rearmLog() });
    expect([big.reserved, big.softLimit]).toEqual([64, 65472]);
    const bigPml = createRingReporter({ vcpus: 1, entries: 65536, rearmer: rearmLog(), pml: true });
    expect(bigPml.softLimit).toBe(64960);
  });

  it('rejects ring sizes as KVM_ENABLE_CAP does: EINVAL, EINVAL, E2BIG', () => {
    const make = (entries: number) => () => createRingReporter({ vcpus: 1, entries, rearmer: rearmLog() });
    for (const entries of [0, 300, 255.5, -256, Number.NaN, 3 * 2 ** 31]) {
      const e = expectError(make(entries), 'invalid-argument', /must be a non-zero power of two \(EINVAL\)/);
      expect([e.errno, e.field]).toEqual(['EINVAL', 'entries']);
    }
    const small = expectError(make(128), 'invalid-argument', /2048 bytes is below the minimum/);
    expect(small.errno).toBe('EINVAL');
    const huge = expectError(make(131072), 'invalid-argument', /2097152 bytes exceeds .* \(E2BIG\)/);
    expect([huge.errno, huge.field]).toEqual(['E2BIG', 'entries']);
    expect(createRingReporter({ vcpus: 1, entries: 256, rearmer: rearmLog() }).softLimit).toBe(192);
    expect(
      expectError(
        () => createRingReporter({ vcpus: 0, entries: 256, rearmer: rearmLog() }),
        'invalid-argument',
        /vcpus 0/,
      ).field,
    ).toBe('vcpus');
  });

  it('typed errors for bad slots, pages, counts and vCPUs, before anything is written', () => {
    const r = createRingReporter({ vcpus: 2, entries: 256, rearmer: rearmLog(), slots: [A, B] });
    const before = new Uint8Array(r.buffer).slice();
    expect(
      expectError(() => push(r, 9, [1], 0), 'invalid-state', /slot 9 has no dirty log \(ENOENT\)/).errno,
    ).toBe('ENOENT');
    expectError(() => push(r, 0, [5, 130], 0), 'out-of-range', /page 130 is outside slot 0 \(130 pages\)/);
    expectError(() => push(r, 0, [5], 2), 'out-of-range', /vCPU 2 has no ring/);
    expectError(() => push(r, 0, [5], 0.5), 'out-of-range', /vCPU 0.5/);
    expectError(() => r.markDirty(0, Uint32Array.of(1), 2, 0), 'invalid-argument', /count 2/);
    expect(new Uint8Array(r.buffer)).toEqual(before);
    expectError(() => r.room(5), 'out-of-range', /room: vCPU 5/);
    expectError(() => r.harvest(-1), 'out-of-range', /harvest: vCPU -1/);
    expectError(() => r.addSlot(A), 'invalid-state', /slot 3 already has a dirty log/);
    expectError(() => r.addSlot({ id: 70000, asId: 0, baseGfn: 0, pages: 1 }), 'invalid-argument', /70000/);
    expectError(() => r.getDirtyLog(7, Bitmap.create(1)), 'invalid-state', /slot 7 has no dirty log/);
    expectError(() => r.getDirtyLog(0, Bitmap.create(64)), 'invalid-argument', /buffer covers 64 pages/);
    expectError(() => r.ringFullExit(0, -1), 'invalid-argument', /timeout -1/);
  });

  it('attaches to another reporter’s rings only with a matching header', () => {
    const rearmer = rearmLog();
    const main = createRingReporter({ vcpus: 2, entries: 256, rearmer, slots: [A] });
    const vcpu = createRingReporter({
      vcpus: 2,
      entries: 256,
      rearmer: rearmLog(),
      slots: [A],
      buffer: main.buffer,
    });
    push(vcpu, 3, [1, 2], 1);
    expect(main.used(1)).toBe(2);
    expect(harvestAll(main, 1)).toEqual([
      [0x10003, 1],
      [0x10003, 2],
    ]);
    expect(main.reset()).toBe(2);
    expect(vcpu.room(1)).toBe(192);
    expect(vcpu.stats().pushed).toBe(2);
    expect(ringBufferBytes(2, 256)).toBe(main.buffer.byteLength);
    const attach = (o: {
      vcpus?: number;
      entries?: number;
      pml?: boolean;
      withBitmap?: boolean;
      buffer?: unknown;
    }) =>
      createRingReporter({
        vcpus: o.vcpus ?? 2,
        entries: o.entries ?? 256,
        rearmer,
        pml: o.pml ?? false,
        withBitmap: o.withBitmap ?? false,
        buffer: (o.buffer ?? main.buffer) as SharedArrayBuffer,
      });
    expectError(() => attach({ vcpus: 1 }), 'invalid-argument', /expected the 4288-byte SharedArrayBuffer/);
    expectError(
      () => attach({ buffer: new SharedArrayBuffer(main.buffer.byteLength) }),
      'invalid-argument',
      /header/,
    );
    expectError(
      () => attach({ withBitmap: true }),
      'invalid-argument',
      /\[1262768711, 1, 2, 256, 64, 0\], expected/,
    );
    expectError(() => attach({ buffer: new ArrayBuffer(8448) }), 'invalid-argument', /SharedArrayBuffer/);
  });

  it('ringFullExit counts exits and waits for a reset (or the timeout)', () => {
    const r = createRingReporter({ vcpus: 1, entries: 256, rearmer: rearmLog(), slots: [A] });
    push(
      r,
      3,
      Array.from({ length: 192 }, (_, i) => i),
      0,
    );
    expect(r.ringFullExit(0)).toBe(0);
    const t0 = performance.now();
    expect(r.ringFullExit(0, 20)).toBe(0); // nobody resets: times out
    expect(performance.now() - t0).toBeGreaterThanOrEqual(15);
    expect(r.reap()).toBe(192);
    expect(r.ringFullExit(0, 1000)).toBe(192); // room already: returns at once
    expect(r.stats().fullExits).toBe(3);
  });
});

describe('ring reporter: reset coalescing (reference §2.6)', () => {
  function resetBatches(
    pushes: { slot: number; pages: number[]; vcpu?: number }[],
    vcpus = 1,
  ): { batches: [number, number, bigint][]; rearmed: number[][]; stats: ReturnType<RingReporter['stats']> } {
    const batches: [number, number, bigint][] = [];
    const rearmer = rearmLog();
    const r = createRingReporter({
      vcpus,
      entries: 256,
      rearmer,
      slots: [
        { id: 1, asId: 0, baseGfn: 0, pages: 256 },
        { id: 1 + 1, asId: 1, baseGfn: 0, pages: 256 },
      ],
      onResetBatch: (slot, base, mask) => batches.push([slot, base, mask]),
    });
    for (const p of pushes) push(r, p.slot, p.pages, p.vcpu ?? 0);
    for (let v = 0; v < vcpus; v++) r.harvest(v);
    r.reset();
    return { batches, rearmed: rearmer.calls.map((c) => c.pages), stats: r.stats() };
  }

  it('[10, 11, 70, 5, 200]: 5 cannot rebase (bit 60 would shift out), three batches', () => {
    // 10 starts (10, 1); 11: delta 1 → bit 1; 70: delta 60 → bit 60; 5: delta -5, but
    // mask << 5 loses bit 60 (60 + 5 ≥ 64) → flush (10, bits {0, 1, 60}), start (5, 1);
    // 200: delta 195 → flush (5, 1), start (200, 1); end → flush (200, 1).
    const { batches, rearmed, stats } = resetBatches([{ slot: 1, pages: [10, 11, 70, 5, 200] }]);
    expect(batches).toEqual([
      [1, 10, (1n << 60n) | 0b11n],
      [1, 5, 1n],
      [1, 200, 1n],
    ]);
    expect(stats.coalescedBatches).toBe(3);
    expect(rearmed).toEqual([[5, 10, 11, 70, 200]]); // one rearm call per slot per reset
  });

  it('[10, 11, 5, 200]: 5 rebases the batch (mask << 5 | 1), two batches', () => {
    // 10, 11 → (10, 0b11); 5: delta -5, highest bit 1 + 5 ≤ 63 → base 5, mask 0b11 << 5 | 1.
    const { batches, rearmed } = resetBatches([{ slot: 1, pages: [10, 11, 5, 200] }]);
    expect(batches).toEqual([
      [1, 5, 0b110_0001n],
      [1, 200, 1n],
    ]);
    expect(rearmed).toEqual([[5, 10, 11, 200]]);
  });

  it('rebases right up to bit 63 and no further; delta 63 joins, delta 64 starts a batch', () => {
    // 10, 68 → bits {0, 58}; 5: 58 + 5 = 63 fits → base 5, bits {0, 5, 63}.
    expect(resetBatches([{ slot: 1, pages: [10, 68, 5] }]).batches).toEqual([
      [1, 5, (1n << 63n) | (1n << 5n) | 1n],
    ]);
    // 10, 69 → bits {0, 59}; 5: 59 + 5 = 64 does not fit → two batches.
    expect(resetBatches([{ slot: 1, pages: [10, 69, 5] }]).batches).toEqual([
      [1, 10, (1n << 59n) | 1n],
      [1, 5, 1n],
    ]);
    expect(resetBatches([{ slot: 1, pages: [0, 63, 64] }]).batches).toEqual([
      [1, 0, (1n << 63n) | 1n],
      [1, 64, 1n],
    ]);
    // Duplicates and re-visits inside the window set bits already set.
    expect(resetBatches([{ slot: 1, pages: [40, 40, 41, 40] }]).batches).toEqual([[1, 40, 0b11n]]);
    // A base need not be 64-aligned: the mask straddles two 64-page words of the bitmap.
    const straddle = resetBatches([{ slot: 1, pages: [60, 61, 100, 123] }]);
    expect(straddle.batches).toEqual([[1, 60, (1n << 63n) | (1n << 40n) | 0b11n]]);
    expect(straddle.rearmed).toEqual([[60, 61, 100, 123]]);
  });

  it('never coalesces across slots (packed as_id | id) or across rings', () => {
    const slots = resetBatches([
      { slot: 1, pages: [10] },
      { slot: 2, pages: [11] },
      { slot: 1, pages: [12] },
    ]);
    expect(slots.batches).toEqual([
      [1, 10, 1n],
      [(1 << 16) | 2, 11, 1n],
      [1, 12, 1n],
    ]);
    expect(slots.rearmed).toEqual([[10, 12], [11]]);
    const rings = resetBatches(
      [
        { slot: 1, pages: [10], vcpu: 0 },
        { slot: 1, pages: [11], vcpu: 1 },
      ],
      2,
    );
    expect(rings.batches).toEqual([
      [1, 10, 1n],
      [1, 11, 1n],
    ]);
    expect(rings.rearmed).toEqual([[10, 11]]);
  });

  it('clears the scratch words it touched: the next reset re-arms only its own pages', () => {
    const rearmer = rearmLog();
    const r = createRingReporter({ vcpus: 1, entries: 256, rearmer, slots: [A] });
    push(r, 3, [1, 500, 999], 0);
    r.harvest(0);
    r.reset();
    push(r, 3, [2], 0);
    r.harvest(0);
    r.reset();
    expect(rearmer.calls).toEqual([
      { slot: 3, pages: [1, 500, 999], touched: [0, 15, 31] },
      { slot: 3, pages: [2], touched: [0] },
    ]);
  });

  it('a rearmer that throws still leaves the scratch bitmap clean for the next reset', () => {
    const rearmer = rearmLog();
    let failNext = true;
    const r = createRingReporter({
      vcpus: 1,
      entries: 256,
      slots: [A],
      rearmer: {
        rearm: (slot, mask, touched) => {
          if (failNext) {
            failNext = false;
            throw new Error('tracker bug');
          }
          return rearmer.rearm(slot, mask, touched);
        },
      },
    });
    push(r, 3, [1, 500], 0);
    r.harvest(0);
    expect(() => r.reset()).toThrow('tracker bug');
    push(r, 3, [2], 0);
    r.harvest(0);
    expect(r.reset()).toBe(1);
    expect(rearmer.calls).toEqual([{ slot: 3, pages: [2], touched: [0] }]);
  });

  it('resets only the contiguous RESET prefix: an unharvested entry stops it', () => {
    const rearmer = rearmLog();
    const r = createRingReporter({ vcpus: 1, entries: 256, rearmer, slots: [A] });
    push(r, 3, [1, 2, 3], 0);
    expect(r.harvest(0, undefined, 2)).toBe(2);
    expect(r.reset()).toBe(2);
    expect(r.used(0)).toBe(1);
    expect(rearmer.calls.map((c) => c.pages)).toEqual([[1, 2]]);
    // Entries KVM never pushed but marked RESET are re-armed if valid (§2.3), else ignored.
    const words = new Uint32Array(r.buffer);
    r.harvest(0); // entry 2 (page 3)
    words.set([2, 0x10003, 700, 0], 3 * 4); // a forged RESET entry after it
    words.set([2, 0x10003, 5000, 0], 4 * 4); // … and one past the slot's end
    expect(r.reset()).toBe(3);
    expect(rearmer.calls.map((c) => c.pages)).toEqual([
      [1, 2],
      [3, 700],
    ]);
    expect(r.stats().ignoredBatches).toBe(1);
  });
});

describe('ring reporter: getDirtyLog (QEMU layer A) and ring + bitmap', () => {
  it('reaps every ring, reports the slot’s pages once (duplicates included), costs per entry', () => {
    const rearmer = rearmLog();
    const r = createRingReporter({ vcpus: 2, entries: 256, rearmer, slots: [B] });
    push(r, 0, [5, 5, 70], 0);
    push(r, 0, [129], 1);
    const out = Bitmap.create(130);
    out.set(100); // stale content must be overwritten
    expect(r.getDirtyLog(0, out)).toBe(3);
    expect([...out.setBits()]).toEqual([5, 70, 129]);
    expect(rearmer.calls.map((c) => c.pages)).toEqual([[5, 70, 129]]);
    expect(r.lastHarvestCost()).toEqual({
      xchgWords: 0,
      copyWords: 3,
      rearmedPages: 3,
      tlbFlushes: 1,
      ringEntries: 4,
    });
    expect(r.getDirtyLog(0, out)).toBe(0);
    expect(out.popcount()).toBe(0);
    expect(r.lastHarvestCost()).toEqual({
      xchgWords: 0,
      copyWords: 3,
      rearmedPages: 0,
      tlbFlushes: 0,
      ringEntries: 0,
    });
    expect(rearmer.calls.length).toBe(1);
  });

  it('reaps one vCPU’s ring alone: its entries harvested and reset, the others left in their rings', () => {
    const rearmer = rearmLog();
    const r = createRingReporter({ vcpus: 2, entries: 256, rearmer, slots: [B] });
    push(r, 0, [5, 70], 0);
    push(r, 0, [129], 1);
    expect(r.reap(1)).toBe(1);
    expect(rearmer.calls.map((c) => c.pages)).toEqual([[129]]);
    expect([r.used(0), r.used(1)]).toEqual([2, 0]);
    expect(() => r.reap(2)).toThrow(/vCPU 2/);
    const out = Bitmap.create(130);
    expect(r.getDirtyLog(0, out)).toBe(3);
    expect([...out.setBits()]).toEqual([5, 70, 129]);
    expect([r.used(0), r.used(1)]).toEqual([0, 0]);
  });

  it('keeps other slots’ reaped pages pending for their own getDirtyLog', () => {
    const rearmer = rearmLog();
    const r = createRingReporter({ vcpus: 1, entries: 256, rearmer, slots: [A, B] });
    push(r, 3, [900], 0);
    push(r, 0, [1], 0);
    const outB = Bitmap.create(130);
    expect(r.getDirtyLog(0, outB)).toBe(1);
    expect(rearmer.calls.map((c) => [c.slot, c.pages])).toEqual([
      [3, [900]],
      [0, [1]],
    ]);
    const outA = Bitmap.create(1000);
    expect(r.getDirtyLog(3, outA)).toBe(1);
    expect([...outA.setBits()]).toEqual([900]);
    expect(r.lastHarvestCost()).toEqual({
      xchgWords: 0,
      copyWords: 16,
      rearmedPages: 0,
      tlbFlushes: 0,
      ringEntries: 0,
    });
  });

  it('withBitmap: vcpu -1 goes to the slot bitmap, collected last and re-armed like GET_DIRTY_LOG', () => {
    const rearmer = rearmLog();
    const r = createRingReporter({ vcpus: 1, entries: 256, rearmer, slots: [B], withBitmap: true });
    push(r, 0, [7, 64], -1);
    push(r, 0, [5, 7], 0);
    expect(r.used(0)).toBe(2); // vCPU-less writes never touch a ring
    const out = Bitmap.create(130);
    expect(r.getDirtyLog(0, out)).toBe(3);
    expect([...out.setBits()]).toEqual([5, 7, 64]);
    expect(rearmer.calls).toEqual([
      { slot: 0, pages: [5, 7], touched: [0] },
      { slot: 0, pages: [7, 64], touched: [0, 2] },
    ]);
    expect(r.lastHarvestCost()).toEqual({
      xchgWords: 2,
      copyWords: 6,
      rearmedPages: 4,
      tlbFlushes: 2,
      ringEntries: 2,
    });
    expect(r.getDirtyLog(0, out)).toBe(0);
    expect(r.lastHarvestCost()).toEqual({
      xchgWords: 0,
      copyWords: 6,
      rearmedPages: 0,
      tlbFlushes: 0,
      ringEntries: 0,
    });
  });

  it('without withBitmap (x86), a write without vCPU context is an error and is not recorded', () => {
    const rearmer = rearmLog();
    const r = createRingReporter({ vcpus: 1, entries: 256, rearmer, slots: [B] });
    const e = expectError(
      () => push(r, 0, [7], -1),
      'invalid-state',
      /without vCPU context .* ring-only VM would be lost .* must name it.*WITH_BITMAP/,
    );
    expect(e.field).toBe('vcpu');
    expect(r.used(0)).toBe(0);
    const out = Bitmap.create(130);
    expect(r.getDirtyLog(0, out)).toBe(0);
    expect(rearmer.calls).toEqual([]);
  });
});

describeReporter('ring', (rearmer, slot) =>
  createRingReporter({ vcpus: 1, entries: 65536, rearmer, slots: [slot] }),
);

describe('ring reporter: property', () => {
  type Op =
    | { kind: 'push'; vcpu: number; slot: 0 | 1; pages: number[] }
    | { kind: 'harvest'; vcpu: number; max: number; batch: boolean }
    | { kind: 'reset' };
  const op = (vcpus: number): fc.Arbitrary<Op> =>
    fc.oneof(
      {
        weight: 4,
        arbitrary: fc.record({
          kind: fc.constant('push' as const),
          vcpu: fc.nat({ max: vcpus - 1 }),
          slot: fc.constantFrom(0 as const, 1 as const),
          pages: fc.array(fc.nat({ max: 299 }), { maxLength: 120 }),
        }),
      },
      {
        weight: 2,
        arbitrary: fc.record({
          kind: fc.constant('harvest' as const),
          vcpu: fc.nat({ max: vcpus - 1 }),
          max: fc.integer({ min: 1, max: 300 }),
          batch: fc.boolean(),
        }),
      },
      { weight: 1, arbitrary: fc.constant({ kind: 'reset' as const }) },
    );

  it('harvests every push exactly once in per-ring order; used ≤ soft limit; reset re-arms exactly the harvested pages', async () => {
    const slotInfo: MemslotInfo[] = [
      { id: 1, asId: 0, baseGfn: 0, pages: 300 },
      { id: 4, asId: 1, baseGfn: 0x8000, pages: 300 },
    ];
    const fields = [1, (1 << 16) | 4];
    await assertProperty(
      fc.property(
        fc.integer({ min: 1, max: 3 }).chain((vcpus) =>
          fc.record({
            vcpus: fc.constant(vcpus),
            start: fc.constantFrom(0, 2 ** 32 - 7, 2 ** 31 - 2, 1000),
            ops: fc.array(op(vcpus), { maxLength: 60 }),
          }),
        ),
        ({ vcpus, start, ops }) => {
          const calls: RearmCall[] = [];
          const rearmer: Rearmer = {
            rearm: (slot, mask) => (
              calls.push({ slot, pages: [...mask.setBits()], touched: undefined }),
              mask.popcount()
            ),
          };
          const fresh = createRingReporter({ vcpus, entries: 256, rearmer, slots: slotInfo });
          const idx = new Int32Array(fresh.buffer, vcpus * 256 * 16 + RING_LAYOUT.HEADER_BYTES);
          for (let v = 0; v < vcpus; v++) {
            idx[v * 32 + RING_LAYOUT.DIRTY_INDEX] = start | 0;
            idx[v * 32 + RING_LAYOUT.RESET_INDEX] = start | 0;
          }
          const r = createRingReporter({
            vcpus,
            entries: 256,
            rearmer,
            slots: slotInfo,
            buffer: fresh.buffer,
          });
          // Model: per ring, everything pushed; how far harvest and reset have got.
          const pushed = Array.from({ length: vcpus }, () => [] as [number, number][]);
          const harvestedTo = new Array<number>(vcpus).fill(0);
          const resetTo = new Array<number>(vcpus).fill(0);
          const slotsOut = new Uint32Array(300);
          const offsetsOut = new Float64Array(300);
          const check = (): void => {
            for (let v = 0; v < vcpus; v++) {
              const used = (pushed[v] as unknown[]).length - (resetTo[v] as number);
              expect(r.used(v)).toBe(used);
              expect(used).toBeLessThanOrEqual(r.softLimit);
              expect(r.room(v)).toBe(r.softLimit - used);
            }
          };
          const doReset = (): void => {
            const want = [new Set<number>(), new Set<number>()];
            let n = 0;
            for (let v = 0; v < vcpus; v++) {
              for (const [field, page] of (pushed[v] as [number, number][]).slice(
                resetTo[v],
                harvestedTo[v],
              )) {
                want[fields.indexOf(field)]?.add(page);
                n++;
              }
              resetTo[v] = harvestedTo[v] as number;
            }
            calls.length = 0;
            expect(r.reset()).toBe(n);
            const expected = [0, 1]
              .filter((k) => (want[k] as Set<number>).size > 0)
              .map((k) => ({
                slot: (slotInfo[k] as MemslotInfo).id,
                pages: [...(want[k] as Set<number>)].sort((a, b) => a - b),
              }));
            expect(calls.map(({ slot, pages }) => ({ slot, pages })).sort((a, b) => a.slot - b.slot)).toEqual(
              expected,
            );
          };
          const doHarvest = (v: number, max: number, batch: boolean): void => {
            const got: [number, number][] = [];
            if (batch) {
              const n = r.harvestInto(v, slotsOut.subarray(0, max), offsetsOut.subarray(0, max));
              for (let i = 0; i < n; i++) got.push([slotsOut[i] as number, offsetsOut[i] as number]);
            } else {
              r.harvest(v, (slot, offset) => got.push([slot, offset]), max);
            }
            const from = harvestedTo[v] as number;
            const list = pushed[v] as [number, number][];
            expect(got).toEqual(list.slice(from, from + max));
            harvestedTo[v] = from + got.length;
          };
          for (const o of ops) {
            if (o.kind === 'push') {
              const take = o.pages.slice(0, r.room(o.vcpu));
              push(r, (slotInfo[o.slot] as MemslotInfo).id, take, o.vcpu);
              for (const p of take)
                (pushed[o.vcpu] as [number, number][]).push([fields[o.slot] as number, p]);
            } else if (o.kind === 'harvest') {
              doHarvest(o.vcpu, o.max, o.batch);
            } else {
              doReset();
            }
            check();
          }
          for (let v = 0; v < vcpus; v++) doHarvest(v, 300, false);
          doReset();
          check();
          const total = pushed.reduce((a, l) => a + l.length, 0);
          expect(harvestedTo.reduce((a, b) => a + b, 0)).toBe(total);
          expect(r.stats().harvested).toBe(total);
          expect(r.stats().reset).toBe(total);
          expect(r.stats().maxUsed).toBeLessThanOrEqual(r.softLimit);
        },
      ),
      300,
    );
  });
});

describe('ring reporter: worker-thread stress', () => {
  it('4 vCPU workers × 250,000 entries against one harvester: exactly once, in order, never past the soft limit', async () => {
    const result = await runRingStress({
      producers: 4,
      perVcpu: 250_000,
      entries: 4096,
      maxBatch: 256,
      mode: 'correct',
      timeoutMs: 45_000, // below vitest's 60 s, so a hang is reported by the harness with figures
    });
    console.log(
      `[ring stress] ${result.harvested} entries in ${result.runMs.toFixed(0)} ms (total ${result.totalMs.toFixed(0)} ms ` +
        `with worker start-up); ${result.resets} resets, ${result.batches} batches; full exits: ${result.fullExits} ` +
        `(${result.exitEpisodes} episodes); max used ${result.maxUsedReporter} / soft limit ${result.softLimit}`,
    );
    expect(result.violations).toEqual([]);
    expect([result.total, result.harvested, result.reset]).toEqual([1_000_000, 1_000_000, 1_000_000]);
    expect(result.maxUsedReporter).toBeLessThanOrEqual(result.softLimit);
    expect(result.maxUsedProducers).toBeLessThanOrEqual(result.softLimit);
    expect(result.fullExits).toBeGreaterThanOrEqual(result.exitEpisodes);
    expect(result.totalMs).toBeLessThan(45_000);
  });

  it('negative control: producers that ignore room() are caught passing the soft limit', async () => {
    const result = await runRingStress({
      producers: 4,
      perVcpu: 20_000,
      entries: 4096,
      maxBatch: 64,
      mode: 'ignore-room',
      timeoutMs: 30_000,
    });
    // The harvest is held until every producer pushed 4096 entries: used reaches exactly 4096.
    expect(result.maxUsedReporter).toBe(4096);
    expect(result.violations).toContain('used reached 4096 > soft limit 4032 (reporter)');
    expect(result.violations).toContain('used reached 4096 > soft limit 4032 (producers)');
  });

  it('negative control: a push that publishes DIRTY before slot/offset is caught as a wrong entry', async () => {
    const result = await runRingStress({
      producers: 4,
      perVcpu: 20_000,
      entries: 4096,
      maxBatch: 256,
      mode: 'flags-first',
      brokenAt: 5000,
      timeoutMs: 30_000,
    });
    // The harvester reads the stale entry of the previous lap: seq 5000 - 4096 = 904.
    expect(result.violations[0]).toMatch(
      /^ring 0: entry 5000 out of order or wrong: got vCPU 0 seq 904 slot 0x0, expected vCPU 0 seq 5000 slot 0x0$/,
    );
  });
});

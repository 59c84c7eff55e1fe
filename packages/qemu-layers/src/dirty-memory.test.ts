import { describe, expect, it } from 'vitest';
import {
  createRamListDirtyMemory,
  DIRTY_MEMORY_BLOCK_SIZE,
  DIRTY_MEMORY_CODE,
  DIRTY_MEMORY_MIGRATION,
  DIRTY_MEMORY_VGA,
} from './dirty-memory.js';

const B = DIRTY_MEMORY_BLOCK_SIZE;

describe('layer B: ram_list.dirty_memory', () => {
  it('has 2 blocks of 2^21 bits per client for 2^21 + 100 pages', () => {
    expect(B).toBe(2_097_152);
    const dm = createRamListDirtyMemory(B + 100);
    for (const c of [DIRTY_MEMORY_VGA, DIRTY_MEMORY_CODE, DIRTY_MEMORY_MIGRATION] as const) {
      expect(dm.blocks(c)).toHaveLength(2);
      expect(dm.blocks(c)[0]).toHaveLength(B / 32);
    }
    expect(createRamListDirtyMemory(B).blocks(DIRTY_MEMORY_MIGRATION)).toHaveLength(1);
  });

  it('fast path ORs word-wise across the block boundary, only into the named clients', () => {
    const dm = createRamListDirtyMemory(B + 100);
    const words = new Uint32Array(4);
    words[1] = 0x8000_0000; // page B-1
    words[2] = 0b101; // pages B and B+2
    expect(dm.setDirtyLebitmap(words, B - 64, 128, [DIRTY_MEMORY_MIGRATION])).toBe(2); // two 64-bit words
    expect(dm.test(DIRTY_MEMORY_MIGRATION, B - 1)).toBe(true);
    expect(dm.test(DIRTY_MEMORY_MIGRATION, B)).toBe(true);
    expect(dm.test(DIRTY_MEMORY_MIGRATION, B + 1)).toBe(false);
    expect(dm.test(DIRTY_MEMORY_MIGRATION, B + 2)).toBe(true);
    expect(dm.test(DIRTY_MEMORY_VGA, B)).toBe(false);
    const blocks = dm.blocks(DIRTY_MEMORY_MIGRATION);
    expect(blocks[0]?.[B / 32 - 1]).toBe(0x8000_0000);
    expect(blocks[1]?.[0]).toBe(0b101);
  });

  it('slow path (unaligned start) sets each set bit; bits past `pages` are ignored', () => {
    const dm = createRamListDirtyMemory(B + 100);
    expect(
      dm.setDirtyLebitmap(Uint32Array.of(0b1111), B - 2, 3, [DIRTY_MEMORY_VGA, DIRTY_MEMORY_MIGRATION]),
    ).toBe(1);
    for (const c of [DIRTY_MEMORY_VGA, DIRTY_MEMORY_MIGRATION] as const) {
      expect([B - 2, B - 1, B, B + 1].map((p) => dm.test(c, p))).toEqual([true, true, true, false]);
    }
    expect(dm.test(DIRTY_MEMORY_CODE, B)).toBe(false);
    // Aligned, with a tail: only 2 of the 3 set bits are inside `pages`.
    dm.setDirtyLebitmap(Uint32Array.of(0b111, 0), 0, 2, [DIRTY_MEMORY_CODE]);
    expect([0, 1, 2].map((p) => dm.test(DIRTY_MEMORY_CODE, p))).toEqual([true, true, false]);
  });

  it('grow publishes a new array that reuses the old blocks, and never shrinks', () => {
    const dm = createRamListDirtyMemory(B + 100);
    dm.setDirtyLebitmap(Uint32Array.of(1, 0), 0, 64, [DIRTY_MEMORY_MIGRATION]);
    const old = dm.blocks(DIRTY_MEMORY_MIGRATION);
    dm.grow(2 * B + 1);
    const now = dm.blocks(DIRTY_MEMORY_MIGRATION);
    expect(now).not.toBe(old);
    expect(old).toHaveLength(2); // a reader of the old array still sees it whole
    expect(now).toHaveLength(3);
    expect(now[0]).toBe(old[0]);
    expect(now[1]).toBe(old[1]);
    expect(dm.test(DIRTY_MEMORY_MIGRATION, 0)).toBe(true);
    expect(dm.pages).toBe(2 * B + 1);
    dm.grow(10);
    expect(dm.pages).toBe(2 * B + 1);
    expect(dm.blocks(DIRTY_MEMORY_MIGRATION)).toBe(now);
  });

  it('rejects ranges outside the RAM', () => {
    const dm = createRamListDirtyMemory(100);
    expect(() => dm.setDirtyLebitmap(new Uint32Array(4), 64, 64, [DIRTY_MEMORY_MIGRATION])).toThrow(/exceed/);
    expect(() => dm.test(DIRTY_MEMORY_MIGRATION, 100)).toThrow(/outside/);
  });
});

import { DirtytrackError } from '@dirtytrack/core';

/** `DIRTY_MEMORY_VGA`: the display client (framebuffer updates). */
export const DIRTY_MEMORY_VGA = 0;
/** `DIRTY_MEMORY_CODE`: TCG's translated-code invalidation client. */
export const DIRTY_MEMORY_CODE = 1;
/** `DIRTY_MEMORY_MIGRATION`: the client the migration layer (layer C) drains. */
export const DIRTY_MEMORY_MIGRATION = 2;
/** `DIRTY_MEMORY_NUM`. */
export const DIRTY_MEMORY_NUM = 3;
/** `DIRTY_MEMORY_BLOCK_SIZE`: bits (pages) per block, 256·1024·8. */
export const DIRTY_MEMORY_BLOCK_SIZE = 256 * 1024 * 8;

export type DirtyMemoryClient =
  typeof DIRTY_MEMORY_VGA | typeof DIRTY_MEMORY_CODE | typeof DIRTY_MEMORY_MIGRATION;

/** 32-bit words per block. */
const BLOCK_WORDS = DIRTY_MEMORY_BLOCK_SIZE / 32;
const BLOCK_WORD_SHIFT = 16; // log2(BLOCK_WORDS)
const COMPONENT = 'dirty-memory';

/**
 * Layer B, `ram_list.dirty_memory[]` (reference/qemu.md §1.2): per client, an array of fixed
 * blocks of {@link DIRTY_MEMORY_BLOCK_SIZE} bits indexed by ram_addr page across all RAMBlocks.
 * The block arrays are published whole (RCU in QEMU): `grow` builds a new array that reuses the
 * old blocks, and a reader holding the old array still sees valid blocks.
 */
export interface RamListDirtyMemory {
  /** Pages covered (the RAM's page count); only grows. */
  readonly pages: number;
  /** The currently published block array of `client` (each block a shared `Uint32Array`). */
  blocks(client: DirtyMemoryClient): readonly Uint32Array[];
  /** Hotplug: publishes new block arrays covering `newPages`, reusing every existing block. */
  grow(newPages: number): void;
  /**
   * `cpu_physical_memory_set_dirty_lebitmap`: ORs pages `[0, pages)` of the little-endian bitmap
   * `words` (bit 0 of word 0 = page `startPage`) into `clients`. Fast path (startPage a multiple
   * of 64): one `Atomics.or` per non-zero 32-bit word and client; otherwise per set bit.
   * Returns the non-zero 64-bit source words (what the fast path ORs once per client).
   */
  setDirtyLebitmap(
    words: Uint32Array,
    startPage: number,
    pages: number,
    clients: readonly DirtyMemoryClient[],
  ): number;
  /** Whether `page` is dirty for `client` (tests and diagnostics). */
  test(client: DirtyMemoryClient, page: number): boolean;
}

export function createRamListDirtyMemory(pages: number): RamListDirtyMemory {
  checkPages(pages, 'pages');
  let covered = pages;
  const clients: Uint32Array[][] = [];
  const blockCount = (p: number): number => Math.ceil(p / DIRTY_MEMORY_BLOCK_SIZE);
  for (let c = 0; c < DIRTY_MEMORY_NUM; c++) {
    const arr: Uint32Array[] = [];
    for (let b = 0; b < blockCount(pages); b++) arr.push(newBlock());
    clients.push(arr);
  }
  const clientBlocks = (client: number): Uint32Array[] => {
    const arr = clients[client];
    if (arr === undefined) {
      throw new DirtytrackError('invalid-argument', `unknown dirty-memory client ${client}`, {
        component: COMPONENT,
        field: 'client',
      });
    }
    return arr;
  };
  const orBit = (arr: Uint32Array[], page: number): void => {
    const w = page >>> 5;
    Atomics.or(arr[w >>> BLOCK_WORD_SHIFT] as Uint32Array, w & (BLOCK_WORDS - 1), 1 << (page & 31));
  };

  return {
    get pages() {
      return covered;
    },
    blocks(client) {
      return clientBlocks(client);
    },
    grow(newPages) {
      checkPages(newPages, 'newPages');
      if (newPages <= covered) return; // it only grows
      const want = blockCount(newPages);
      for (let c = 0; c < DIRTY_MEMORY_NUM; c++) {
        const old = clients[c] as Uint32Array[];
        const next = old.slice(); // a new array reusing the old blocks
        while (next.length < want) next.push(newBlock());
        clients[c] = next; // publish
      }
      covered = newPages;
    },
    setDirtyLebitmap(words, startPage, pages, names) {
      if (!(Number.isSafeInteger(startPage) && startPage >= 0 && Number.isSafeInteger(pages) && pages >= 0)) {
        throw new DirtytrackError('invalid-argument', `setDirtyLebitmap: bad range ${startPage}+${pages}`, {
          component: COMPONENT,
          field: 'startPage',
        });
      }
      if (startPage + pages > covered || Math.ceil(pages / 32) > words.length) {
        throw new DirtytrackError(
          'out-of-range',
          `setDirtyLebitmap: pages [${startPage}, ${startPage + pages}) exceed ${covered} pages or the ${words.length}-word bitmap`,
          { component: COMPONENT, field: 'pages' },
        );
      }
      const targets = names.map(clientBlocks);
      const n32 = Math.ceil(pages / 32);
      const tail = pages % 32 === 0 ? 0xffffffff : (1 << (pages % 32)) - 1;
      let nonZero64 = 0;
      if (startPage % 64 === 0) {
        const base = startPage >>> 5;
        for (let i = 0; i < n32; i += 2) {
          let lo = words[i] as number;
          if (i === n32 - 1) lo &= tail;
          let hi = i + 1 < n32 ? (words[i + 1] as number) : 0;
          if (i + 1 === n32 - 1) hi &= tail;
          if (lo === 0 && hi === 0) continue;
          nonZero64++;
          for (const arr of targets) {
            if (lo !== 0) {
              const g = base + i;
              Atomics.or(arr[g >>> BLOCK_WORD_SHIFT] as Uint32Array, g & (BLOCK_WORDS - 1), lo);
            }
            if (hi !== 0) {
              const g = base + i + 1;
              Atomics.or(arr[g >>> BLOCK_WORD_SHIFT] as Uint32Array, g & (BLOCK_WORDS - 1), hi);
            }
          }
        }
        return nonZero64;
      }
      // Slow path: walk the set bits of each non-zero word (never every page).
      for (let i = 0; i < n32; i += 2) {
        let lo = words[i] as number;
        if (i === n32 - 1) lo &= tail;
        let hi = i + 1 < n32 ? (words[i + 1] as number) : 0;
        if (i + 1 === n32 - 1) hi &= tail;
        if (lo === 0 && hi === 0) continue;
        nonZero64++;
        for (let half = 0; half < 2; half++) {
          let rest = half === 0 ? lo : hi;
          const first = startPage + (i + half) * 32;
          while (rest !== 0) {
            const bit = 31 - Math.clz32(rest & -rest);
            rest &= rest - 1;
            for (const arr of targets) orBit(arr, first + bit);
          }
        }
      }
      return nonZero64;
    },
    test(client, page) {
      if (!(Number.isSafeInteger(page) && page >= 0 && page < covered)) {
        throw new DirtytrackError('out-of-range', `test: page ${page} outside ${covered} pages`, {
          component: COMPONENT,
          field: 'page',
        });
      }
      const arr = clientBlocks(client);
      const w = page >>> 5;
      return (
        (((arr[w >>> BLOCK_WORD_SHIFT] as Uint32Array)[w & (BLOCK_WORDS - 1)] as number) &
          (1 << (page & 31))) !==
        0
      );
    },
  };
}

function newBlock(): Uint32Array {
  const bytes = DIRTY_MEMORY_BLOCK_SIZE / 8;
  return new Uint32Array(
    typeof SharedArrayBuffer === 'undefined' ? new ArrayBuffer(bytes) : new SharedArrayBuffer(bytes),
  );
}

function checkPages(pages: number, field: string): void {
  if (!(Number.isSafeInteger(pages) && pages >= 0 && pages <= 2 ** 32)) {
    throw new DirtytrackError('invalid-argument', `${field} ${pages} is not an integer in [0, 2^32]`, {
      component: COMPONENT,
      field,
    });
  }
}

/**
 * The SPTE word: one `Int32` per entry of a page table, changed only with `Atomics` so that page
 * faults (holding the `mmu_lock` for read) and the lock-free fast path can race safely
 * (reference/kvm.md §3–§4). Bit positions are this model's own; the meanings are KVM's.
 *
 * A leaf maps guest pages (identity: the model has no host frame numbers); a table entry points
 * to a child table of 512 entries by id (`value >>> SPTE_CHILD_SHIFT`).
 */

/** The entry maps something (a leaf or a child table). */
export const SPTE_PRESENT = 1 << 0;
/** Hardware W: the guest may write through this leaf without a fault. */
export const SPTE_WRITABLE = 1 << 1;
/**
 * KVM's MMU-writable software bit: only dirty logging blocks W, so a fault may set W again
 * without the `mmu_lock` (`fast_page_fault`). Cleared when KVM write-protects a huge page or a
 * gfn for other reasons, which forces the slow path.
 */
export const SPTE_MMU_WRITABLE = 1 << 2;
/** The host mapping allowed writes when the SPTE was built (false for READONLY slots). */
export const SPTE_HOST_WRITABLE = 1 << 3;
/** Hardware D bit (what PML logs; set on writable leaves as they are created). */
export const SPTE_DIRTY = 1 << 4;
/** A leaf above 4 KiB: 512 (2 MiB) or 262,144 (1 GiB) pages. */
export const SPTE_HUGE = 1 << 5;
/** A non-leaf entry; the child table id is in bits 8–30. */
export const SPTE_TABLE = 1 << 6;
/**
 * KVM's frozen SPTE (formerly REMOVED_SPTE): a non-present marker a read-lock holder installs
 * with cmpxchg before a multi-step change (splitting a huge page). Anyone who sees it retries.
 */
export const SPTE_FROZEN = 1 << 7;
export const SPTE_CHILD_SHIFT = 8;

/** Page-table levels, as KVM numbers them: PG_LEVEL_4K = 1, 2M = 2, 1G = 3. */
export const LEVEL_4K = 1;
export const LEVEL_2M = 2;
export const LEVEL_1G = 3;
export type PageLevel = typeof LEVEL_4K | typeof LEVEL_2M | typeof LEVEL_1G;

/** Entries per page table (one 4 KiB table of 8-byte entries on x86). */
export const TABLE_ENTRIES = 512;
/** 4 KiB pages one entry at `level` covers: 1, 512, 262,144. */
export function pagesAtLevel(level: PageLevel): number {
  return level === LEVEL_4K ? 1 : level === LEVEL_2M ? 512 : 262_144;
}

/** A writable leaf as a fault builds it (D set on creation, as KVM does with A/D bits on). */
export const LEAF_WRITABLE =
  SPTE_PRESENT | SPTE_WRITABLE | SPTE_MMU_WRITABLE | SPTE_HOST_WRITABLE | SPTE_DIRTY;
/** A leaf of a READONLY slot. */
export const LEAF_READONLY = SPTE_PRESENT;

/** Table entry pointing at child table `id`. */
export function tableEntry(id: number): number {
  return SPTE_PRESENT | SPTE_TABLE | (id << SPTE_CHILD_SHIFT);
}

/** A readable name list of the bits set in `spte`, for messages and test failures. */
export function describeSpte(spte: number): string {
  if (spte === 0) return 'none';
  if (spte === SPTE_FROZEN) return 'frozen';
  if ((spte & SPTE_TABLE) !== 0) return `table#${spte >>> SPTE_CHILD_SHIFT}`;
  const names: string[] = [];
  if ((spte & SPTE_PRESENT) !== 0) names.push('P');
  if ((spte & SPTE_WRITABLE) !== 0) names.push('W');
  if ((spte & SPTE_MMU_WRITABLE) !== 0) names.push('MW');
  if ((spte & SPTE_HOST_WRITABLE) !== 0) names.push('HW');
  if ((spte & SPTE_DIRTY) !== 0) names.push('D');
  if ((spte & SPTE_HUGE) !== 0) names.push('huge');
  return names.join('|');
}

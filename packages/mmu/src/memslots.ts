import { DirtytrackError, PAGE_SIZE } from '@dirtytrack/core';

/** `KVM_MEM_LOG_DIRTY_PAGES`: dirty logging on for the slot. */
export const KVM_MEM_LOG_DIRTY_PAGES = 1 << 0;
/** `KVM_MEM_READONLY`: guest writes exit to userspace (MMIO) instead of mapping writable. */
export const KVM_MEM_READONLY = 1 << 1;
const UAPI_FLAGS = KVM_MEM_LOG_DIRTY_PAGES | KVM_MEM_READONLY;

/** The end of the guest-physical space the model maps (gfn + 1 fits in 32 bits): 16 TiB − 4 KiB. */
export const MAX_GUEST_PHYS = 2 ** 44 - PAGE_SIZE;

/** Host page size backing a slot's memory (hugetlbfs page size): what the MMU may map huge. */
export type BackingPageSize = '4K' | '2M' | '1G';

/**
 * `struct kvm_userspace_memory_region` (reference/kvm.md §1.1), plus the one thing the model
 * cannot learn from a host address: the page size backing `userspaceAddr`.
 */
export interface MemoryRegion {
  /** Slot id (bits 0–15 of KVM's `slot`). */
  readonly slot: number;
  /** Address space id (bits 16–31; x86 uses 1 for SMM). Default 0. */
  readonly asId?: number;
  /** `KVM_MEM_LOG_DIRTY_PAGES` | `KVM_MEM_READONLY`. Default 0. */
  readonly flags?: number;
  /** Guest-physical base, bytes, 4 KiB aligned. */
  readonly guestPhysAddr: number;
  /** Bytes, 4 KiB aligned; 0 deletes the slot. */
  readonly memorySize: number;
  /** Host virtual address, 4 KiB aligned (kept for KVM's "hva may not change" rule). */
  readonly userspaceAddr: number;
  /** Backing page size; huge SPTEs are used only up to it. Default `'4K'`. Fixed at creation. */
  readonly backing?: BackingPageSize;
}

/** What a `KVM_SET_USER_MEMORY_REGION` call did (KVM's `enum kvm_mr_change`, plus no-op). */
export type MemslotChange = 'create' | 'delete' | 'move' | 'flags-only' | 'none';

/** A live memslot, as the MMU keeps it. */
export interface Memslot {
  readonly id: number;
  readonly asId: number;
  readonly baseGfn: number;
  readonly pages: number;
  readonly userspaceAddr: number;
  readonly backing: BackingPageSize;
  readonly flags: number;
}

const einval = (message: string, field: string) =>
  new DirtytrackError('invalid-argument', message, { component: 'mmu', errno: 'EINVAL', field });

/**
 * KVM's `__kvm_set_memory_region` checks and change classification: alignment, flag and
 * address-range validity (EINVAL), overlap with another slot of the same address space
 * (EEXIST), and which of CREATE / DELETE / MOVE / FLAGS_ONLY the call is. Changing the size, the
 * host address, READONLY or the backing of an existing slot is EINVAL.
 */
export function classifyRegionChange(
  region: MemoryRegion,
  existing: Memslot | undefined,
  others: Iterable<Memslot>,
): { change: MemslotChange; slot: Memslot | undefined } {
  const asId = region.asId ?? 0;
  const flags = region.flags ?? 0;
  const backing = region.backing ?? '4K';
  if (!Number.isInteger(region.slot) || region.slot < 0 || region.slot > 0xffff) {
    throw einval(`slot ${region.slot} is not a 16-bit slot id`, 'slot');
  }
  if (!Number.isInteger(asId) || asId < 0 || asId > 1) {
    throw einval(`address space ${asId} does not exist (x86 has 0 and 1)`, 'asId');
  }
  if (!Number.isInteger(flags) || (flags & ~UAPI_FLAGS) !== 0 || flags < 0) {
    throw einval(`flags 0x${flags.toString(16)} include unknown bits`, 'flags');
  }
  for (const [field, value] of [
    ['guestPhysAddr', region.guestPhysAddr],
    ['memorySize', region.memorySize],
    ['userspaceAddr', region.userspaceAddr],
  ] as const) {
    if (!Number.isSafeInteger(value) || value < 0 || value % PAGE_SIZE !== 0) {
      throw einval(`${field} ${value} is not a 4 KiB-aligned address`, field);
    }
  }
  if (region.memorySize === 0) {
    if (existing === undefined) return { change: 'none', slot: undefined }; // KVM: deleting nothing is 0.
    return { change: 'delete', slot: undefined };
  }
  if (region.guestPhysAddr + region.memorySize > MAX_GUEST_PHYS) {
    throw einval(
      `guest range ends at ${region.guestPhysAddr + region.memorySize}, past the model's 16 TiB limit`,
      'memorySize',
    );
  }
  const slot: Memslot = {
    id: region.slot,
    asId,
    baseGfn: region.guestPhysAddr / PAGE_SIZE,
    pages: region.memorySize / PAGE_SIZE,
    userspaceAddr: region.userspaceAddr,
    backing,
    flags,
  };
  let change: MemslotChange = 'create';
  if (existing !== undefined) {
    if (existing.pages !== slot.pages) throw einval('an existing slot cannot change size', 'memorySize');
    if (existing.userspaceAddr !== slot.userspaceAddr) {
      throw einval('an existing slot cannot change its host address', 'userspaceAddr');
    }
    if ((existing.flags ^ flags) & KVM_MEM_READONLY) {
      throw einval('KVM_MEM_READONLY cannot change on an existing slot', 'flags');
    }
    if (region.backing !== undefined && region.backing !== existing.backing) {
      throw einval('an existing slot cannot change its backing page size', 'backing');
    }
    const moved = existing.baseGfn !== slot.baseGfn;
    change = moved ? 'move' : existing.flags !== flags ? 'flags-only' : 'none';
    if (change === 'none') return { change, slot: existing };
    if (!moved) return { change, slot: { ...slot, backing: existing.backing } };
  }
  for (const other of others) {
    if (other.id === slot.id || other.asId !== asId) continue;
    if (slot.baseGfn < other.baseGfn + other.pages && other.baseGfn < slot.baseGfn + slot.pages) {
      throw new DirtytrackError(
        'invalid-argument',
        `guest range [0x${region.guestPhysAddr.toString(16)}, +${region.memorySize}) overlaps slot ${other.id}`,
        { component: 'mmu', errno: 'EEXIST', field: 'guestPhysAddr' },
      );
    }
  }
  return { change, slot: existing === undefined ? slot : { ...slot, backing: existing.backing } };
}

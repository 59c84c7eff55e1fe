export {
  createMmu,
  attachMmu,
  LOGGING_MODES,
  type Mmu,
  type MmuOptions,
  type MmuStats,
  type MmuDescriptor,
  type LoggingMode,
} from './mmu.js';
export {
  KVM_MEM_LOG_DIRTY_PAGES,
  KVM_MEM_READONLY,
  MAX_GUEST_PHYS,
  type BackingPageSize,
  type MemoryRegion,
  type Memslot,
  type MemslotChange,
} from './memslots.js';
export {
  SPTE_PRESENT,
  SPTE_WRITABLE,
  SPTE_MMU_WRITABLE,
  SPTE_HOST_WRITABLE,
  SPTE_DIRTY,
  SPTE_HUGE,
  SPTE_TABLE,
  SPTE_FROZEN,
  LEVEL_4K,
  LEVEL_2M,
  LEVEL_1G,
  TABLE_ENTRIES,
  pagesAtLevel,
  describeSpte,
  type PageLevel,
} from './spte.js';
export { TABLE_BYTES } from './arena.js';

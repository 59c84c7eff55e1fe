import { DirtytrackError, PAGE_SIZE, type MemslotInfo } from '@dirtytrack/core';
import {
  createMmu,
  TABLE_ENTRIES,
  type BackingPageSize,
  type LoggingMode,
  type Mmu,
  type MmuOptions,
} from '@dirtytrack/mmu';

/** Options of {@link createMmuTracker}. */
export interface MmuTrackerOptions {
  /** vCPUs that will write (TLBs, PML buffers and counters are per vCPU). */
  readonly vcpus: number;
  /** Memslots to create and populate now (mapped as a running guest has them), not yet logging. */
  readonly slots: readonly MemslotInfo[];
  /** Host page size backing every slot. Default `'4K'`. */
  readonly backing?: BackingPageSize;
  /** How enabling logging prepares a slot. Default `'eager-split'` (KVM's default). */
  readonly logging?: LoggingMode;
  /** Intel PML: re-arm clears D, the CPU logs writes into per-vCPU buffers. Default false. */
  readonly pml?: boolean;
  /**
   * Live plane: put the MMU in shared memory so worker vCPUs can attach (`share()`). Page-table
   * room is sized for splitting every slot to 4 KiB twice over.
   */
  readonly shared?: boolean;
  /** See {@link MmuOptions.tlbEntries}. */
  readonly tlbEntries?: number;
  /** DEBUG ONLY: see {@link MmuOptions.skipTlbFlush}. */
  readonly skipTlbFlush?: boolean;
  /** See {@link MmuOptions.splitOnClear}. */
  readonly splitOnClear?: boolean;
}

/**
 * A write-protect (or, with `pml`, PML) tracker that is a full software TDP MMU
 * (`@dirtytrack/mmu`): trapped writes go through SPTEs, the fast page fault, huge-page splits and
 * the TLB-flush protocol, exactly as KVM does. Each memslot is created and populated up front, so
 * workers can attach before logging starts. For TB-sized model runs where page tables would not
 * fit, {@link createWriteProtectTracker} keeps one protection bit per page instead.
 */
export function createMmuTracker(options: MmuTrackerOptions): Mmu {
  const backing = options.backing ?? '4K';
  const shared = options.shared ?? false;
  let tables = 0;
  for (const s of options.slots)
    tables += 2 * (Math.ceil(s.pages / TABLE_ENTRIES) + Math.ceil(s.pages / 262_144) + 2);
  const mmuOptions: MmuOptions = {
    vcpus: options.vcpus,
    logging: options.logging ?? 'eager-split',
    pml: options.pml ?? false,
    ...(options.tlbEntries === undefined ? {} : { tlbEntries: options.tlbEntries }),
    ...(options.skipTlbFlush === undefined ? {} : { skipTlbFlush: options.skipTlbFlush }),
    ...(options.splitOnClear === undefined ? {} : { splitOnClear: options.splitOnClear }),
    ...(shared ? { sharedTables: tables } : {}),
  };
  const mmu = createMmu(mmuOptions);
  for (const s of options.slots) {
    if (s.asId !== 0 && s.asId !== 1) {
      throw new DirtytrackError('invalid-argument', `slot ${s.id}: address space ${s.asId} does not exist`, {
        component: 'mmu-tracker',
        field: 'slots',
      });
    }
    mmu.setUserMemoryRegion({
      slot: s.id,
      asId: s.asId,
      guestPhysAddr: s.baseGfn * PAGE_SIZE,
      memorySize: s.pages * PAGE_SIZE,
      userspaceAddr: s.baseGfn * PAGE_SIZE,
      backing,
    });
    mmu.populate(s.id);
  }
  return mmu;
}

/** {@link createMmuTracker} with Intel PML on: the tracker KVM uses on Intel hosts. */
export function createPmlTracker(options: Omit<MmuTrackerOptions, 'pml'>): Mmu {
  return createMmuTracker({ ...options, pml: true });
}

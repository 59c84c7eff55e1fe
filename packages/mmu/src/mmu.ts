import type { Bitmap } from '@dirtytrack/core';
import {
  attachRWLock,
  DirtytrackError,
  RWLOCK_BYTES,
  type AttachSpec,
  type Clock,
  type CostModel,
  type DirtySink,
  type MemslotInfo,
  type TouchedWords,
  type SharedTracker,
  type TrackerStats,
} from '@dirtytrack/core';
import { Arena, CTL_EPOCH, CTL_WORDS, TABLE_BYTES } from './arena.js';
import {
  classifyRegionChange,
  KVM_MEM_LOG_DIRTY_PAGES,
  KVM_MEM_READONLY,
  type BackingPageSize,
  type MemoryRegion,
  type Memslot,
  type MemslotChange,
} from './memslots.js';
import {
  LEAF_READONLY,
  LEAF_WRITABLE,
  LEVEL_1G,
  LEVEL_2M,
  LEVEL_4K,
  SPTE_CHILD_SHIFT,
  SPTE_DIRTY,
  SPTE_FROZEN,
  SPTE_HUGE,
  SPTE_MMU_WRITABLE,
  SPTE_PRESENT,
  SPTE_TABLE,
  SPTE_WRITABLE,
  tableEntry,
  TABLE_ENTRIES,
  type PageLevel,
} from './spte.js';

/**
 * How turning dirty logging on prepares the slot (reference/kvm.md §5):
 * - `'eager-split'` — KVM's default (`kvm.eager_page_split=1`): split every huge SPTE to 4 KiB,
 *   then write-protect every 4 KiB leaf. O(pages) time and table memory at enable.
 * - `'write-protect'` — `eager_page_split=0`: clear W on every leaf at whatever level; the first
 *   write to a huge page faults and the fault splits it.
 * - `'lazy'` — manual protect with INITIALLY_SET (Keqian Zhu's scheme): enabling touches
 *   nothing (the dirty bitmap starts all set); each CLEAR of a 64-page window first handles the
 *   huge pages covering it (split, or write-protect at 2M and above), then write-protects the
 *   4 KiB pages of the mask.
 */
export type LoggingMode = 'eager-split' | 'write-protect' | 'lazy';
export const LOGGING_MODES: readonly LoggingMode[] = ['eager-split', 'write-protect', 'lazy'];

export interface MmuOptions {
  /** vCPUs that will write through this MMU (TLBs and counters are per vCPU). */
  readonly vcpus: number;
  /** Enable path, see {@link LoggingMode}. Default `'eager-split'`. */
  readonly logging?: LoggingMode;
  /**
   * `'lazy'` only: on CLEAR, split the huge pages covering the cleared window down to 4 KiB now
   * (`kvm.eager_page_split`, default true); when false they are write-protected at 2M/1G and the
   * next write's fault splits them.
   */
  readonly splitOnClear?: boolean;
  /**
   * Intel PML (reference/kvm.md §3): logging slots are re-armed by clearing the D bit of their
   * 4 KiB SPTEs instead of W; the first write to such a page sets D and logs its gfn into the
   * vCPU's 512-entry PML buffer (index counting down from 511) without an exit. A write that
   * finds the buffer full exits first (PML-full), and the buffer is drained into the sink on
   * every exit and when a harvest kicks the vCPUs (`syncDirtyLog`). Huge pages are still
   * write-protected. Default false (AMD: write-protect only).
   */
  readonly pml?: boolean;
  /** Entries of each vCPU's TLB (direct-mapped by gfn, power of two). Default 1024. */
  readonly tlbEntries?: number;
  /**
   * DEBUG ONLY: skip remote TLB flushes. vCPUs keep writing through stale writable translations
   * after a re-protect, so writes go unlogged — the conformance suite must then lose pages.
   */
  readonly skipTlbFlush?: boolean;
  /**
   * Live plane: put every structure in `SharedArrayBuffer`s with room for this many page tables
   * (2 KiB each), so worker vCPUs can {@link attachMmu}. Omit in the model plane: tables are then
   * allocated as needed.
   */
  readonly sharedTables?: number;
  /** Measures lock wait time (`lockWaitNs`). Default: none (waits are counted, not timed). */
  readonly clock?: Clock;
  /** Longest a lock or a TLB-flush acknowledgement may take before a `timeout` error. Default 10 s. */
  readonly timeoutMs?: number;
}

/** Counters a user can read; sums over every vCPU and the owner thread. */
export interface MmuStats extends TrackerStats {
  /** Guest writes checked. */
  readonly writes: number;
  /** Writes that hit a cached writable translation (no SPTE walk). */
  readonly tlbHits: number;
  /** Writes that trapped: fast + slow faults. */
  readonly faults: number;
  /** Faults fixed lock-free by `fast_page_fault` (cmpxchg W 0→1). */
  readonly fastFaults: number;
  /** Faults that took the `mmu_lock` for read (mapping, splitting, not MMU-writable). */
  readonly slowFaults: number;
  /** Writes to a READONLY slot (an MMIO exit to userspace; nothing mapped writable). */
  readonly readonlyExits: number;
  /** Pages reported dirty to the sink (one per W 0→1 transition in a logging slot). */
  readonly reported: number;
  /** Huge SPTEs replaced by a table of smaller ones (a 1G → 4K split counts 2). */
  readonly splits: number;
  /** Pages harvests asked to re-arm (`rearm` calls: the set bits of their masks). */
  readonly rearmed: number;
  /** Leaves whose W was cleared by enabling logging, re-arming or gfn write-protect. */
  readonly wrprotected: number;
  /** SPTEs zapped (slot delete or move). */
  readonly zaps: number;
  /** Tables collapsed back into huge SPTEs when logging was turned off. */
  readonly recovered: number;
  /** Leaves whose D bit was cleared (PML re-arm) by enabling logging or re-arming. */
  readonly dirtyCleared: number;
  /** gfns the CPU logged into PML buffers (D 0→1 on a writable 4 KiB page of a logging slot). */
  readonly pmlLogged: number;
  /** PML-full VM exits (a write found its vCPU's buffer full). */
  readonly pmlFullExits: number;
  /** Remote TLB flushes requested. */
  readonly tlbFlushes: number;
  /** Times a thread found the `mmu_lock` taken and had to wait. */
  readonly lockWaits: number;
  /** Nanoseconds spent waiting for the `mmu_lock` (needs `clock`). */
  readonly lockWaitNs: number;
  /** Page tables in use, and the bytes they take (whole-MMU stats only; 0 in `statsOf`). */
  readonly tables: number;
  readonly tableBytes: number;
}

/** What a worker thread needs to attach to an MMU (post it with `postMessage`). */
export interface MmuDescriptor {
  readonly options: Omit<MmuOptions, 'clock' | 'sharedTables'> & { readonly sharedTables: number };
  readonly ctl: SharedArrayBuffer;
  readonly lock: SharedArrayBuffer;
  readonly counters: SharedArrayBuffer;
  readonly chunks: readonly SharedArrayBuffer[];
  readonly freeRing: SharedArrayBuffer;
  readonly pml: SharedArrayBuffer;
  readonly slots: readonly {
    readonly slot: Memslot;
    readonly root: SharedArrayBuffer;
    readonly ctl: SharedArrayBuffer;
  }[];
}

/**
 * The software TDP MMU. See the package README for the model and its rules. It is a
 * {@link Tracker} in its own right — write-protect tracking as KVM does it, through SPTEs — so
 * engines and reporters plug into it directly.
 */
export interface Mmu extends SharedTracker {
  readonly kind: 'mmu';
  readonly vcpus: number;
  readonly logging: LoggingMode;
  /** `KVM_SET_USER_MEMORY_REGION`. Owner thread only. */
  setUserMemoryRegion(region: MemoryRegion): MemslotChange;
  /** The slot with id `id` (undefined if none). */
  slot(id: number): Memslot | undefined;
  slots(): Memslot[];
  /**
   * Maps every page of the slot as a running guest that has touched all its memory would have
   * it: huge leaves where backing and alignment allow (4 KiB, write-protected, in a logging
   * slot). Returns the SPTEs installed.
   */
  populate(slotId: number): number;
  /** Where W 0→1 transitions in logging slots are reported (`mark_page_dirty_in_slot`). */
  attach(sink: DirtySink): void;
  /**
   * vCPU time spent in the MMU so far, priced by `costs`: fast faults × `writeFaultNs`, slow
   * faults × `slowFaultNs`, splits made by faults × `hugePageSplitNs`, PML-full exits ×
   * `writeFaultNs` (an exit round trip, like a fast fault's), plus measured lock waits.
   */
  vcpuCostNs(costs: CostModel): number;
  /**
   * Guest writes by vCPU `vcpu` to pages `offsets[0..count)` of slot `slotId`, in order, each
   * through the vCPU's TLB, the SPTE walk, and the fault paths. Returns how many trapped.
   */
  write(vcpu: number, slotId: number, offsets: Uint32Array, count: number): number;
  /**
   * Live plane: vCPU `vcpu` enters guest mode (its thread will check for TLB flushes between
   * writes) / leaves it (flushes stop waiting for it). Model-plane vCPUs never need these.
   */
  enterGuest(vcpu: number): void;
  exitGuest(vcpu: number): void;
  /**
   * `kvm_flush_remote_tlbs`: bumps the flush epoch and waits until every vCPU in guest mode has
   * dropped its cached translations. Owner only. Returns false when `skipTlbFlush` skipped it.
   */
  flushRemoteTlbs(): boolean;
  /**
   * `kvm_arch_sync_dirty_log`: with PML, kicks every vCPU out of guest mode so its PML buffer is
   * drained into the sink before a harvest reads the log (waits for vCPUs in guest mode). No-op
   * without PML. Reporters call it at the start of `KVM_GET_DIRTY_LOG` and ring harvests.
   */
  syncDirtyLog(slot?: number): void;
  /** The SPTE mapping page `page` of the slot and its level, for tests and diagnostics. */
  inspect(slotId: number, page: number): { spte: number; level: PageLevel };
  stats(): MmuStats;
  /** The same counters for vCPU `vcpu` alone (or the owner thread's, for `-1`). */
  statsOf(vcpu: number): MmuStats;
  /** The shared state for {@link attachMmu} (live plane; needs `sharedTables`). */
  descriptor(): MmuDescriptor;
  /** `{ module: '@dirtytrack/mmu', factory: 'attachMmu', data: descriptor() }` for worker vCPUs. */
  share(): AttachSpec;
}

// Counter rows: one per vCPU plus one for the owner thread, so every row has a single writer.
const C_WRITES = 0;
const C_TLB_HITS = 1;
const C_FAST = 2;
const C_SLOW = 3;
const C_READONLY = 4;
const C_REPORTED = 5;
const C_SPLITS = 6;
const C_WRPROT = 7;
const C_ZAPS = 8;
const C_RECOVERED = 9;
const C_FLUSHES = 10;
const C_LOCK_WAITS = 11;
const C_LOCK_WAIT_NS = 12;
const C_REARMED = 13;
const C_DCLEAR = 14;
const C_PML_LOGGED = 15;
const C_PML_FULL = 16;
const COUNTERS = 17;

const VCPU_OUTSIDE = 0;
const VCPU_IN_GUEST = 1;
/**
 * Draining its PML buffer into the sink on an exit: a kick waits for the drain (the harvest after
 * it must find the gfns), a TLB flush does not (the vCPU writes nothing meanwhile, and acknowledges
 * the flush before its next write).
 */
const VCPU_DRAINING = 2;

const FAST_FAULT_RETRIES = 4;
const COMPONENT = 'mmu';

interface SlotState {
  info: Memslot;
  /** Level-3 (1 GiB) entries covering the slot; index = (gfn >>> 18) - rootBase. */
  root: Int32Array;
  rootBase: number;
  backingLevel: PageLevel;
  /** [0] = flags, shared so workers see logging turn on and off. */
  ctl: Int32Array;
  /** Owner-only scratch for `rearm`: one byte per 64-page word, all zero between calls. */
  rearmScratch?: Uint8Array;
}

/** Per-vCPU shared words: [state, observed TLB epoch, observed kick]. */
const VW = 3;
/** PML log per vCPU: [index, 512 gfns]. */
const PML_STRIDE = 513;
const PML_ENTRIES = 512;
/** A shared control word after the arena's: the kick counter `syncDirtyLog` bumps. */
const CTL_KICK = CTL_WORDS;
const CTL_ALL = CTL_WORDS + 1;

interface Shared {
  ctl: Int32Array;
  vcpuWords: Int32Array;
  pmlLog: Int32Array;
  lockBuffer: SharedArrayBuffer;
  counters: Float64Array;
  arena: Arena;
}

const backingLevelOf = (b: BackingPageSize): PageLevel =>
  b === '1G' ? LEVEL_1G : b === '2M' ? LEVEL_2M : LEVEL_4K;

/** Creates an MMU owned by the calling thread. */
export function createMmu(options: MmuOptions): Mmu {
  validateOptions(options);
  const sharedTables = options.sharedTables;
  const live = sharedTables !== undefined;
  const ctlWords = CTL_ALL + options.vcpus * VW;
  const pmlBytes = options.vcpus * PML_STRIDE * 4;
  const ctlAll = new Int32Array(live ? new SharedArrayBuffer(ctlWords * 4) : new ArrayBuffer(ctlWords * 4));
  const counters = new Float64Array(
    live
      ? new SharedArrayBuffer((options.vcpus + 1) * COUNTERS * 8)
      : new ArrayBuffer((options.vcpus + 1) * COUNTERS * 8),
  );
  const shared: Shared = {
    ctl: ctlAll,
    vcpuWords: ctlAll.subarray(CTL_ALL),
    pmlLog: new Int32Array(live ? new SharedArrayBuffer(pmlBytes) : new ArrayBuffer(pmlBytes)),
    lockBuffer: new SharedArrayBuffer(RWLOCK_BYTES),
    counters,
    arena: new Arena(ctlAll, live ? sharedTables : Infinity),
  };
  return buildMmu(options, shared, true, []);
}

/** Attaches to an MMU from a worker thread: the vCPU side (write, enter/exit guest, stats). */
export function attachMmu(descriptor: MmuDescriptor, clock?: Clock): Mmu {
  const ctl = new Int32Array(descriptor.ctl);
  const shared: Shared = {
    ctl,
    vcpuWords: ctl.subarray(CTL_ALL),
    pmlLog: new Int32Array(descriptor.pml),
    lockBuffer: descriptor.lock,
    counters: new Float64Array(descriptor.counters),
    arena: new Arena(
      ctl,
      descriptor.options.sharedTables,
      descriptor.chunks.map((b) => new Int32Array(b)),
      new Int32Array(descriptor.freeRing),
    ),
  };
  const slots = descriptor.slots.map((s) => ({
    info: s.slot,
    root: new Int32Array(s.root),
    rootBase: Math.floor(s.slot.baseGfn / 262_144),
    backingLevel: backingLevelOf(s.slot.backing),
    ctl: new Int32Array(s.ctl),
  }));
  return buildMmu(
    clock === undefined ? descriptor.options : { ...descriptor.options, clock },
    shared,
    false,
    slots,
  );
}

function validateOptions(o: MmuOptions): void {
  const bad = (field: string, why: string) =>
    new DirtytrackError('invalid-argument', `${field} ${why}`, { component: COMPONENT, field });
  if (!Number.isInteger(o.vcpus) || o.vcpus < 1 || o.vcpus > 4096) throw bad('vcpus', 'must be 1..4096');
  if (o.logging !== undefined && !LOGGING_MODES.includes(o.logging)) {
    throw bad('logging', `must be one of ${LOGGING_MODES.join(', ')}`);
  }
  const t = o.tlbEntries;
  if (t !== undefined && (!Number.isInteger(t) || t < 1 || (t & (t - 1)) !== 0 || t > 1 << 20)) {
    throw bad('tlbEntries', 'must be a power of two up to 2^20');
  }
  const s = o.sharedTables;
  if (s !== undefined && (!Number.isInteger(s) || s < 1 || s >= 1 << 23)) {
    throw bad('sharedTables', 'must be 1..2^23-1');
  }
}

function buildMmu(options: MmuOptions, shared: Shared, owner: boolean, attachedSlots: SlotState[]): Mmu {
  const vcpus = options.vcpus;
  const mode: LoggingMode = options.logging ?? 'eager-split';
  const splitOnClear = options.splitOnClear ?? true;
  const tlbEntries = options.tlbEntries ?? 1024;
  const tlbMask = tlbEntries - 1;
  const skipFlush = options.skipTlbFlush ?? false;
  const clock = options.clock;
  const timeoutMs = options.timeoutMs ?? 10_000;
  const live = options.sharedTables !== undefined;
  const { ctl, vcpuWords, counters, arena, pmlLog } = shared;
  const pml = options.pml ?? false;
  /** What a re-arm clears on 4 KiB leaves: D under PML, W otherwise. */
  const rearmBit = pml ? SPTE_DIRTY : SPTE_WRITABLE;
  if (owner) for (let v = 0; v < vcpus; v++) pmlLog[v * PML_STRIDE] = PML_ENTRIES - 1;
  const lock = attachRWLock(shared.lockBuffer, 0);
  const slots = new Map<number, SlotState>(attachedSlots.map((s) => [s.info.id, s]));
  let descriptorTaken = false;
  let sink: DirtySink | undefined;

  // Per-thread state: TLBs (only their own vCPU thread touches them) and the epoch each saw.
  const tlbs = Array.from({ length: vcpus }, () => new Uint32Array(tlbEntries));
  const seenEpoch = new Int32Array(vcpus);
  const seenKick = new Int32Array(vcpus);
  const drainBuf = new Uint32Array(PML_ENTRIES);
  const inGuest = new Uint8Array(vcpus);
  let report = new Uint32Array(1024);
  let reportCount = 0;
  const ownerRow = vcpus * COUNTERS;

  // Scratch of the last walk (no per-call objects on the hot path).
  let wArr: Int32Array = new Int32Array(0);
  let wIdx = 0;
  let wLevel: PageLevel = LEVEL_1G;

  const fail = (
    code: 'invalid-argument' | 'invalid-state' | 'out-of-range' | 'timeout',
    msg: string,
    errno?: string,
  ) =>
    new DirtytrackError(
      code,
      msg,
      errno === undefined ? { component: COMPONENT } : { component: COMPONENT, errno },
    );

  const requireOwner = (op: string) => {
    if (!owner) throw fail('invalid-state', `${op}: only the thread that created the MMU may do this`);
  };
  const slotOf = (id: number, op: string): SlotState => {
    const s = slots.get(id);
    if (s === undefined) throw fail('invalid-argument', `${op}: no memslot ${id}`, 'ENOENT');
    return s;
  };
  const logging = (s: SlotState) => (Atomics.load(s.ctl, 0) & KVM_MEM_LOG_DIRTY_PAGES) !== 0;

  // --- the walk -------------------------------------------------------------------------------

  /** Walks to the entry mapping `gfn` (stops at a leaf, a hole, or a frozen entry). */
  function walk(s: SlotState, gfn: number): number {
    let arr = s.root;
    let idx = (gfn >>> 18) - s.rootBase;
    let level: PageLevel = LEVEL_1G;
    for (;;) {
      const e = Atomics.load(arr, idx);
      if ((e & SPTE_TABLE) === 0) {
        wArr = arr;
        wIdx = idx;
        wLevel = level;
        return e;
      }
      const id = e >>> SPTE_CHILD_SHIFT;
      arr = arena.chunk(id);
      level = (level - 1) as PageLevel;
      idx = arena.base(id) + (level === LEVEL_2M ? (gfn >>> 9) & 511 : gfn & 511);
    }
  }

  /** The largest level a leaf for `gfn` may have: backing size and slot bounds allow it. */
  function maxLevel(s: SlotState, gfn: number): PageLevel {
    const first = s.info.baseGfn;
    const end = first + s.info.pages;
    if (s.backingLevel === LEVEL_1G) {
      const start = (gfn >>> 18) * 262_144;
      if (start >= first && start + 262_144 <= end) return LEVEL_1G;
    }
    if (s.backingLevel >= LEVEL_2M) {
      const start = (gfn >>> 9) * 512;
      if (start >= first && start + 512 <= end) return LEVEL_2M;
    }
    return LEVEL_4K;
  }

  /**
   * Replaces the huge leaf `e` at (`arr`, `idx`, `level`) with a table of 512 children that map
   * the same pages with the same permissions: freeze with cmpxchg, fill, publish. `childBits`
   * clears bits in the children (e.g. W, when splitting for logging). Returns false if the entry
   * changed under us (the caller re-walks) or no table was free.
   */
  function split(
    row: number,
    arr: Int32Array,
    idx: number,
    level: PageLevel,
    e: number,
    clearBits: number,
  ): boolean {
    if (Atomics.compareExchange(arr, idx, e, SPTE_FROZEN) !== e) return false;
    const id = arena.alloc();
    if (id < 0) {
      Atomics.store(arr, idx, e); // Unfreeze: allocation failure leaves the page huge (as KVM does).
      return false;
    }
    const childLevel = level - 1;
    let child = e & ~clearBits;
    if (childLevel === LEVEL_4K) child &= ~SPTE_HUGE;
    const base = arena.base(id);
    arena.chunk(id).fill(child, base, base + TABLE_ENTRIES);
    Atomics.store(arr, idx, tableEntry(id));
    counters[row + C_SPLITS] = (counters[row + C_SPLITS] as number) + 1;
    return true;
  }

  function noteReport(page: number): void {
    if (reportCount === report.length) {
      const grown = new Uint32Array(report.length * 2);
      grown.set(report);
      report = grown;
    }
    report[reportCount++] = page;
  }

  function flushReports(slotId: number, vcpu: number): void {
    if (reportCount === 0) return;
    if (sink === undefined) {
      reportCount = 0;
      throw fail(
        'invalid-state',
        'a logging slot was written with no sink attached (call attach(reporter) first)',
      );
    }
    const n = reportCount;
    reportCount = 0;
    // Handing the pages to the sink is host work after the exits that trapped them (KVM's
    // mark_page_dirty runs in the fault handler, outside guest mode), so a remote TLB flush does
    // not wait for this vCPU meanwhile. It must not: a sink that sets bits under a lock held for
    // read (the 'locked' bitmap reporter, the swap log) can wait here for a collector that holds
    // that lock for write while it re-arms — and re-arming flushes TLBs. Re-entering acknowledges
    // any flush requested meanwhile before the next write, as after a slow fault. (PML drains
    // are host work too, but a kick must wait for them, or a harvest could miss entries logged
    // before it: they run in VCPU_DRAINING, which kicks wait for and flushes do not.)
    const wasInGuest = inGuest[vcpu] === 1;
    if (wasInGuest) Atomics.store(vcpuWords, vcpu * VW, VCPU_OUTSIDE);
    try {
      sink.markDirty(slotId, report, n, vcpu);
    } finally {
      if (wasInGuest) {
        Atomics.store(vcpuWords, vcpu * VW, VCPU_IN_GUEST);
        observeFlush(vcpu);
      }
    }
  }

  // --- TLB and flush protocol -----------------------------------------------------------------

  /** Drains vCPU `vcpu`'s PML buffer into the sink, oldest entry first (what KVM does on exit). */
  function drainPml(vcpu: number): void {
    const at = vcpu * PML_STRIDE;
    const index = pmlLog[at] as number;
    const n = PML_ENTRIES - 1 - index;
    if (n <= 0) return;
    // The sink may take a lock that a collector holds for write while it flushes TLBs (the
    // 'locked' bitmap reporter, the swap log): a flush must not wait for this drain.
    const wasInGuest = inGuest[vcpu] === 1;
    if (wasInGuest) Atomics.store(vcpuWords, vcpu * VW, VCPU_DRAINING);
    try {
      drainPmlEntries(vcpu, at, index);
    } finally {
      if (wasInGuest) {
        Atomics.store(vcpuWords, vcpu * VW, VCPU_IN_GUEST);
        observeFlush(vcpu);
      }
    }
  }

  /** Hands `pmlLog` entries `(index, 511]` of the buffer at `at` to the sink and empties it. */
  function drainPmlEntries(vcpu: number, at: number, index: number): void {
    let run = 0;
    let runSlot: SlotState | undefined;
    const emit = () => {
      if (run === 0 || runSlot === undefined) return;
      if (logging(runSlot)) {
        if (sink === undefined) throw fail('invalid-state', 'PML drain with no sink attached');
        sink.markDirty(runSlot.info.id, drainBuf, run, vcpu);
        counters[vcpu * COUNTERS + C_REPORTED] = (counters[vcpu * COUNTERS + C_REPORTED] as number) + run;
      }
      run = 0;
    };
    for (let i = PML_ENTRIES - 1; i > index; i--) {
      const gfn = (pmlLog[at + 1 + i] as number) >>> 0;
      if (
        runSlot === undefined ||
        gfn < runSlot.info.baseGfn ||
        gfn >= runSlot.info.baseGfn + runSlot.info.pages
      ) {
        emit();
        runSlot = slotOfGfn(gfn);
        if (runSlot === undefined) continue; // The slot went away: its dirty state is gone.
      }
      if (run === drainBuf.length) emit();
      drainBuf[run++] = gfn - runSlot.info.baseGfn;
    }
    emit();
    pmlLog[at] = PML_ENTRIES - 1;
  }

  function slotOfGfn(gfn: number): SlotState | undefined {
    for (const s of slots.values()) {
      if (gfn >= s.info.baseGfn && gfn < s.info.baseGfn + s.info.pages) return s;
    }
    return undefined;
  }

  /** A kick (`syncDirtyLog`) reached this vCPU: it exits, which drains its PML buffer. */
  function observeKick(vcpu: number): void {
    const kick = Atomics.load(ctl, CTL_KICK);
    if (kick === seenKick[vcpu]) return;
    drainPml(vcpu);
    seenKick[vcpu] = kick;
    Atomics.store(vcpuWords, vcpu * VW + 2, kick);
    Atomics.notify(vcpuWords, vcpu * VW + 2);
  }

  function syncDirtyLog(): void {
    if (!pml) return;
    if (!live) {
      // Model plane: the vCPUs are not running concurrently; their exits drain them now.
      for (let v = 0; v < vcpus; v++) drainPml(v);
      return;
    }
    const kick = Atomics.add(ctl, CTL_KICK, 1) + 1;
    awaitAck(kick, 2, 'kick');
  }

  /**
   * Waits until every vCPU in guest mode has acknowledged `value` in its word `word`. A kick
   * (word 2) also waits for a vCPU draining its PML buffer; a flush (word 1) does not.
   */
  function awaitAck(value: number, word: number, what: string): void {
    const waitsFor = word === 2 ? VCPU_DRAINING : VCPU_IN_GUEST;
    for (let v = 0; v < vcpus; v++) {
      let waitedMs = 0;
      for (;;) {
        const state = Atomics.load(vcpuWords, v * VW);
        if (state !== VCPU_IN_GUEST && state !== waitsFor) break;
        const seen = Atomics.load(vcpuWords, v * VW + word);
        if (seen - value >= 0) break;
        if (waitedMs >= timeoutMs) {
          throw fail('timeout', `${what}: vCPU ${v} did not acknowledge ${value} within ${timeoutMs} ms`);
        }
        Atomics.wait(vcpuWords, v * VW + word, seen, 1);
        waitedMs += 1;
      }
    }
  }

  function observeFlush(vcpu: number): void {
    const epoch = Atomics.load(ctl, CTL_EPOCH);
    if (epoch === seenEpoch[vcpu]) return;
    (tlbs[vcpu] as Uint32Array).fill(0);
    seenEpoch[vcpu] = epoch;
    Atomics.store(vcpuWords, vcpu * VW + 1, epoch);
    Atomics.notify(vcpuWords, vcpu * VW + 1);
  }

  function flushRemoteTlbs(): boolean {
    counters[ownerRow + C_FLUSHES] = (counters[ownerRow + C_FLUSHES] as number) + 1;
    if (skipFlush) return false;
    const epoch = Atomics.add(ctl, CTL_EPOCH, 1) + 1;
    awaitAck(epoch, 1, 'TLB flush');
    return true;
  }

  // --- locking --------------------------------------------------------------------------------

  function lockFor(row: number, write: boolean): void {
    if (write ? lock.tryWriteLock() : lock.tryReadLock()) return;
    counters[row + C_LOCK_WAITS] = (counters[row + C_LOCK_WAITS] as number) + 1;
    const t0 = clock?.now() ?? 0;
    const ok = write ? lock.writeLock(timeoutMs) : lock.readLock(timeoutMs);
    if (clock !== undefined)
      counters[row + C_LOCK_WAIT_NS] = (counters[row + C_LOCK_WAIT_NS] as number) + clock.now() - t0;
    if (!ok)
      throw fail('timeout', `mmu_lock not acquired for ${write ? 'write' : 'read'} within ${timeoutMs} ms`);
  }

  // --- the fault paths ------------------------------------------------------------------------

  /** 0 = no trap (TLB miss only), 1 = trapped, 2 = READONLY exit. */
  function writeMiss(vcpu: number, row: number, s: SlotState, gfn: number, page: number): number {
    for (let attempt = 0; ; attempt++) {
      const e = walk(s, gfn);
      if (e === SPTE_FROZEN) continue; // A split is in flight: re-walk (KVM re-faults).
      if ((e & SPTE_PRESENT) === 0) break; // Not mapped: slow path.
      if ((e & SPTE_WRITABLE) !== 0) {
        let exited = 0;
        if ((e & SPTE_DIRTY) === 0) {
          // The CPU sets D; with PML on in a logging slot it logs the gfn first — or, when the
          // buffer is full, exits (PML-full), the exit drains the buffer, and the write retries.
          const log = pml && (e & SPTE_HUGE) === 0 && logging(s);
          const at = vcpu * PML_STRIDE;
          if (log && (pmlLog[at] as number) < 0) {
            counters[row + C_PML_FULL] = (counters[row + C_PML_FULL] as number) + 1;
            drainPml(vcpu);
            exited = 1;
          }
          if (Atomics.compareExchange(wArr, wIdx, e, e | SPTE_DIRTY) !== e) continue;
          if (log) {
            const index = pmlLog[at] as number;
            pmlLog[at + 1 + index] = gfn | 0;
            pmlLog[at] = index - 1;
            counters[row + C_PML_LOGGED] = (counters[row + C_PML_LOGGED] as number) + 1;
          }
        }
        (tlbs[vcpu] as Uint32Array)[gfn & tlbMask] = gfn + 1;
        return exited;
      }
      if ((e & SPTE_MMU_WRITABLE) === 0 || ((e & SPTE_HUGE) !== 0 && logging(s))) break;
      // fast_page_fault: only dirty logging blocked the write; fix it lock-free.
      if (Atomics.compareExchange(wArr, wIdx, e, e | SPTE_WRITABLE | SPTE_DIRTY) === e) {
        counters[row + C_FAST] = (counters[row + C_FAST] as number) + 1;
        if (logging(s)) {
          noteReport(page);
          counters[row + C_REPORTED] = (counters[row + C_REPORTED] as number) + 1;
        }
        (tlbs[vcpu] as Uint32Array)[gfn & tlbMask] = gfn + 1;
        return 1;
      }
      if (attempt >= FAST_FAULT_RETRIES) break;
    }
    if ((s.info.flags & KVM_MEM_READONLY) !== 0) {
      counters[row + C_READONLY] = (counters[row + C_READONLY] as number) + 1;
      return 2;
    }
    slowFault(vcpu, row, s, gfn, page);
    return 1;
  }

  /** The fault path under the `mmu_lock` (read): map, split, or restore W, with cmpxchg. */
  function slowFault(vcpu: number, row: number, s: SlotState, gfn: number, page: number): void {
    const wasInGuest = inGuest[vcpu] === 1;
    // A VM exit: KVM drains the PML buffer on every exit — before this vCPU stops counting as in
    // guest mode, so a harvest's kick that skips it still finds its entries in the sink.
    if (pml) drainPml(vcpu);
    if (wasInGuest) Atomics.store(vcpuWords, vcpu * VW, VCPU_OUTSIDE); // Flushes need not wait now.
    lockFor(row, false);
    try {
      counters[row + C_SLOW] = (counters[row + C_SLOW] as number) + 1;
      for (;;) {
        const e = walk(s, gfn);
        if (e === SPTE_FROZEN) continue;
        const arr = wArr;
        const idx = wIdx;
        const level = wLevel;
        const log = logging(s);
        if ((e & SPTE_PRESENT) === 0) {
          const target = log ? LEVEL_4K : maxLevel(s, gfn);
          if (level > target) {
            const id = arena.alloc();
            if (id < 0)
              throw fail('out-of-range', `no free page table (sharedTables is too small)`, 'ENOMEM');
            if (Atomics.compareExchange(arr, idx, 0, tableEntry(id)) !== 0) arena.unpublished(id);
            continue;
          }
          const leaf = LEAF_WRITABLE | (level > LEVEL_4K ? SPTE_HUGE : 0);
          if (Atomics.compareExchange(arr, idx, 0, leaf) !== 0) continue;
          if (log) reportFault(row, page);
          break;
        }
        if ((e & SPTE_WRITABLE) !== 0) break; // Another vCPU fixed it.
        if (level > LEVEL_4K && log) {
          split(row, arr, idx, level, e, 0); // Success or a lost race: walk again either way.
          continue;
        }
        const fixed = e | SPTE_WRITABLE | SPTE_MMU_WRITABLE | SPTE_DIRTY;
        if (Atomics.compareExchange(arr, idx, e, fixed) !== e) continue;
        if (log && level === LEVEL_4K) reportFault(row, page);
        break;
      }
      // Cache the translation before re-entering: observeFlush below acknowledges any flush
      // requested meanwhile and must drop this entry too (KVM handles KVM_REQ_TLB_FLUSH before
      // the guest re-executes the write). Installed after the ack, it would survive the flush
      // of a write-protect that hit this SPTE after this fault set W (enabling logging protects
      // under the read lock, alongside slow faults): later writes would go unlogged.
      (tlbs[vcpu] as Uint32Array)[gfn & tlbMask] = gfn + 1;
    } finally {
      lock.readUnlock();
      if (wasInGuest) {
        Atomics.store(vcpuWords, vcpu * VW, VCPU_IN_GUEST);
        observeFlush(vcpu);
      }
    }
  }

  function reportFault(row: number, page: number): void {
    noteReport(page);
    counters[row + C_REPORTED] = (counters[row + C_REPORTED] as number) + 1;
  }

  // --- owner operations -----------------------------------------------------------------------

  /** Clears `bits` on every leaf under `arr[from..to)` at `level` (atomic). Returns leaves whose W was set. */
  function protectLeaves(arr: Int32Array, from: number, to: number, bits: number): number {
    let n = 0;
    for (let i = from; i < to; i++) {
      for (;;) {
        const e = Atomics.load(arr, i);
        if ((e & SPTE_PRESENT) === 0 || (e & SPTE_TABLE) !== 0) break;
        if ((e & bits) === 0) break;
        if (Atomics.compareExchange(arr, i, e, e & ~bits) === e) {
          if ((e & bits & (SPTE_WRITABLE | SPTE_DIRTY)) !== 0) n++;
          break;
        }
      }
    }
    const c = ownerRow + ((bits & SPTE_WRITABLE) !== 0 ? C_WRPROT : C_DCLEAR);
    counters[c] = (counters[c] as number) + n;
    return n;
  }

  /** Visits every table entry of the slot, depth first; `visit` may split (then children are visited). */
  function enableEagerSplit(s: SlotState): number {
    let wp = 0;
    const root = s.root;
    for (let i = 0; i < root.length; i++) wp += eagerSplitEntry(root, i, LEVEL_1G);
    return wp;
  }

  function eagerSplitEntry(arr: Int32Array, idx: number, level: PageLevel): number {
    for (;;) {
      const e = Atomics.load(arr, idx);
      if (e === 0) return 0;
      if (e === SPTE_FROZEN) continue;
      if ((e & SPTE_TABLE) !== 0) {
        const id = e >>> SPTE_CHILD_SHIFT;
        const child = arena.chunk(id);
        const base = arena.base(id);
        if (level === LEVEL_2M) return protectLeaves(child, base, base + TABLE_ENTRIES, rearmBit);
        let wp = 0;
        for (let j = 0; j < TABLE_ENTRIES; j++) wp += eagerSplitEntry(child, base + j, LEVEL_2M);
        return wp;
      }
      if (level === LEVEL_4K) return protectLeaves(arr, idx, idx + 1, rearmBit);
      // A huge leaf: split it; 4 KiB children are built write-protected (no second pass).
      const armed = (e & rearmBit) !== 0;
      const clear = level === LEVEL_2M ? rearmBit : 0;
      if (!split(ownerRow, arr, idx, level, e, clear)) {
        if (Atomics.load(arr, idx) === e) {
          // No table free: leave it huge but write-protected; the fault path splits it later.
          return protectLeaves(arr, idx, idx + 1, SPTE_WRITABLE);
        }
        continue;
      }
      if (level === LEVEL_2M) {
        if (!armed) return 0;
        const c = ownerRow + (pml ? C_DCLEAR : C_WRPROT);
        counters[c] = (counters[c] as number) + TABLE_ENTRIES;
        return TABLE_ENTRIES;
      }
      // 1G split into 2M children: handle each child (split to 4 KiB).
    }
  }

  const pagesCovered = (level: PageLevel) => (level === LEVEL_1G ? 262_144 : level === LEVEL_2M ? 512 : 1);

  function enableWriteProtect(s: SlotState): number {
    let wp = 0;
    forEachLeafTable(s.root, 0, s.root.length, LEVEL_1G, (arr, from, to, level) => {
      wp += protectLeaves(arr, from, to, level === LEVEL_4K ? rearmBit : SPTE_WRITABLE);
    });
    return wp;
  }

  /** Calls `visit(arr, from, to)` for runs of entries that are leaves or holes, at every level. */
  function forEachLeafTable(
    arr: Int32Array,
    from: number,
    to: number,
    level: PageLevel,
    visit: (arr: Int32Array, from: number, to: number, level: PageLevel) => void,
  ): void {
    let runStart = from;
    for (let i = from; i < to; i++) {
      const e = Atomics.load(arr, i);
      if ((e & SPTE_TABLE) === 0 || level === LEVEL_4K) continue;
      if (i > runStart) visit(arr, runStart, i, level);
      runStart = i + 1;
      const id = e >>> SPTE_CHILD_SHIFT;
      const base = arena.base(id);
      forEachLeafTable(arena.chunk(id), base, base + TABLE_ENTRIES, (level - 1) as PageLevel, visit);
    }
    if (to > runStart) visit(arr, runStart, to, level);
  }

  /** Collapses tables whose 512 children are all present leaves back into huge SPTEs. */
  function recoverHugePages(s: SlotState): void {
    const root = s.root;
    for (let i = 0; i < root.length; i++) {
      const e = root[i] as number;
      if ((e & SPTE_TABLE) === 0) continue;
      const id = e >>> SPTE_CHILD_SHIFT;
      const t2 = arena.chunk(id);
      const b2 = arena.base(id);
      const gfn1g = (s.rootBase + i) * 262_144;
      for (let j = 0; j < TABLE_ENTRIES; j++) {
        const e2 = t2[b2 + j] as number;
        if ((e2 & SPTE_TABLE) === 0) continue;
        if (maxLevel(s, gfn1g + j * 512) < LEVEL_2M) continue;
        const id3 = e2 >>> SPTE_CHILD_SHIFT;
        if (!allPresentLeaves(arena.chunk(id3), arena.base(id3))) continue;
        Atomics.store(t2, b2 + j, LEAF_WRITABLE | SPTE_HUGE);
        arena.retire(id3);
        counters[ownerRow + C_RECOVERED] = (counters[ownerRow + C_RECOVERED] as number) + 1;
      }
      if (maxLevel(s, gfn1g) === LEVEL_1G && allPresentLeaves(t2, b2)) {
        Atomics.store(root, i, LEAF_WRITABLE | SPTE_HUGE);
        arena.retire(id);
        counters[ownerRow + C_RECOVERED] = (counters[ownerRow + C_RECOVERED] as number) + 1;
      }
    }
  }

  function allPresentLeaves(arr: Int32Array, base: number): boolean {
    for (let j = 0; j < TABLE_ENTRIES; j++) {
      const e = arr[base + j] as number;
      if ((e & SPTE_PRESENT) === 0 || (e & SPTE_TABLE) !== 0) return false;
    }
    return true;
  }

  function zapSlot(s: SlotState): void {
    let zapped = 0;
    const retire = (arr: Int32Array, from: number, to: number, level: PageLevel) => {
      for (let i = from; i < to; i++) {
        const e = arr[i] as number;
        if (e === 0) continue;
        zapped++;
        if ((e & SPTE_TABLE) !== 0 && level > LEVEL_4K) {
          const id = e >>> SPTE_CHILD_SHIFT;
          retire(arena.chunk(id), arena.base(id), arena.base(id) + TABLE_ENTRIES, (level - 1) as PageLevel);
          arena.retire(id);
        }
        Atomics.store(arr, i, 0);
      }
    };
    retire(s.root, 0, s.root.length, LEVEL_1G);
    counters[ownerRow + C_ZAPS] = (counters[ownerRow + C_ZAPS] as number) + zapped;
  }

  /** KVM's `kvm_mmu_slot_gfn_write_protect(gfn, PG_LEVEL_2M)`: W and MMU-W off at 2M and 1G. */
  function writeProtectHuge(s: SlotState, gfn: number): number {
    for (;;) {
      const e = walk(s, gfn);
      if (e === SPTE_FROZEN) continue;
      if ((e & SPTE_PRESENT) === 0 || wLevel === LEVEL_4K) return 0;
      return protectLeaves(wArr, wIdx, wIdx + 1, SPTE_WRITABLE | SPTE_MMU_WRITABLE);
    }
  }

  /** Splits every huge leaf covering gfns [first, last] down to 4 KiB, keeping permissions. */
  function splitRange(s: SlotState, first: number, last: number): void {
    for (let gfn = first; gfn <= last;) {
      const e = walk(s, gfn);
      if (e === SPTE_FROZEN) continue;
      if ((e & SPTE_PRESENT) === 0 || wLevel === LEVEL_4K) {
        gfn =
          wLevel === LEVEL_4K ? gfn + 1 : (Math.floor(gfn / pagesCovered(wLevel)) + 1) * pagesCovered(wLevel);
        continue;
      }
      split(ownerRow, wArr, wIdx, wLevel, e, 0); // Then walk again: the children may still be huge.
    }
  }

  function rearm(slotId: number, mask: Bitmap, touched?: TouchedWords): number {
    requireOwner('rearm');
    const s = slotOf(slotId, 'rearm');
    if (mask.bits !== s.info.pages) {
      throw fail(
        'invalid-argument',
        `rearm: mask covers ${mask.bits} pages, slot ${slotId} has ${s.info.pages}`,
      );
    }
    const words = mask.words;
    const base = s.info.baseGfn;
    let requested = 0;
    let wp = 0;
    lockFor(ownerRow, true);
    try {
      const word64 = (k: number) => {
        const lo = words[2 * k] ?? 0;
        const hi = words[2 * k + 1] ?? 0;
        if ((lo | hi) === 0) return;
        if (mode === 'lazy') {
          const first =
            base + 64 * k + (lo !== 0 ? Math.clz32(lo & -lo) ^ 31 : 32 + (Math.clz32(hi & -hi) ^ 31));
          const last = base + 64 * k + (hi !== 0 ? 63 - Math.clz32(hi) : 31 - Math.clz32(lo));
          if (splitOnClear) splitRange(s, first, last);
          wp += writeProtectHuge(s, first);
          if (first >>> 9 !== last >>> 9) wp += writeProtectHuge(s, last);
        }
        for (let half = 0; half < 2; half++) {
          let m = half === 0 ? lo : hi;
          while (m !== 0) {
            const bit = m & -m;
            m ^= bit;
            requested++;
            const gfn = base + 64 * k + 32 * half + (Math.clz32(bit) ^ 31);
            const e = walk(s, gfn);
            if (wLevel === LEVEL_4K && (e & SPTE_PRESENT) !== 0)
              wp += protectLeaves(wArr, wIdx, wIdx + 1, rearmBit);
          }
        }
      };
      if (touched === undefined) {
        for (let k = 0; k < words.length >>> 1; k++) word64(k);
        if ((words.length & 1) !== 0) word64(words.length >>> 1);
      } else {
        // Both halves of a 64-bit word are handled at once, and the list may name a word twice
        // (a ring's entries come in push order): mark what was done, then unmark.
        const done = (s.rearmScratch ??= new Uint8Array(Math.ceil(words.length / 2)));
        for (let t = 0; t < touched.count; t++) {
          const k = (touched.words[t] as number) >>> 1;
          if (done[k] === 1) continue;
          done[k] = 1;
          word64(k);
        }
        for (let t = 0; t < touched.count; t++) done[(touched.words[t] as number) >>> 1] = 0;
      }
      counters[ownerRow + C_REARMED] = (counters[ownerRow + C_REARMED] as number) + requested;
      if (wp > 0) flushRemoteTlbs();
    } finally {
      lock.writeUnlock();
    }
    return requested;
  }

  function setLogging(s: SlotState, on: boolean): number {
    const flags = Atomics.load(s.ctl, 0);
    if (((flags & KVM_MEM_LOG_DIRTY_PAGES) !== 0) === on) return 0;
    let wp = 0;
    if (on) {
      if ((flags & KVM_MEM_READONLY) !== 0) {
        Atomics.store(s.ctl, 0, flags | KVM_MEM_LOG_DIRTY_PAGES); // Nothing writable to protect.
        return 0;
      }
      // KVM publishes the new memslot, then waits out faults that saw the old one (SRCU) before
      // it protects anything: slow faults hold the read lock (the write lock waits for them),
      // lock-free fast faults end before their vCPU acknowledges a new epoch.
      lockFor(ownerRow, true);
      Atomics.store(s.ctl, 0, flags | KVM_MEM_LOG_DIRTY_PAGES);
      lock.writeUnlock();
      if (live) awaitAck(Atomics.add(ctl, CTL_EPOCH, 1) + 1, 1, 'memslot switch');
      // KVM: slot-wide write-protect / split runs under the read lock (TDP MMU), with atomics.
      lockFor(ownerRow, false);
      try {
        if (mode === 'eager-split') wp = enableEagerSplit(s);
        else if (mode === 'write-protect') wp = enableWriteProtect(s);
      } finally {
        lock.readUnlock();
      }
      if (wp > 0) flushRemoteTlbs();
    } else {
      // Recovery under the write lock (KVM's TDP MMU uses the read lock and cmpxchg; the shadow
      // MMU the write lock). Freed tables wait for the flush, which ends every lock-free walk.
      lockFor(ownerRow, true);
      try {
        Atomics.store(s.ctl, 0, flags & ~KVM_MEM_LOG_DIRTY_PAGES);
        recoverHugePages(s);
        flushRemoteTlbs();
      } finally {
        lock.writeUnlock();
      }
      arena.release();
    }
    s.info = { ...s.info, flags: Atomics.load(s.ctl, 0) };
    return wp;
  }

  function createSlotState(info: Memslot): SlotState {
    const rootBase = Math.floor(info.baseGfn / 262_144);
    const rootEnd = Math.floor((info.baseGfn + info.pages - 1) / 262_144);
    const n = rootEnd - rootBase + 1;
    return {
      info,
      root: new Int32Array(live ? new SharedArrayBuffer(n * 4) : new ArrayBuffer(n * 4)),
      rootBase,
      backingLevel: backingLevelOf(info.backing),
      ctl: new Int32Array(live ? new SharedArrayBuffer(16) : new ArrayBuffer(16)),
    };
  }

  function populate(slotId: number): number {
    requireOwner('populate');
    const s = slotOf(slotId, 'populate');
    const log = logging(s);
    const readonly = (s.info.flags & KVM_MEM_READONLY) !== 0;
    const leafBits = readonly ? LEAF_READONLY : log ? LEAF_WRITABLE & ~SPTE_WRITABLE : LEAF_WRITABLE;
    let installed = 0;
    lockFor(ownerRow, true);
    try {
      const end = s.info.baseGfn + s.info.pages;
      for (let gfn = s.info.baseGfn; gfn < end;) {
        const e = walk(s, gfn);
        const target = log ? LEVEL_4K : maxLevel(s, gfn);
        if (e !== 0) {
          gfn += wLevel === LEVEL_4K ? 1 : pagesCovered(wLevel) - (gfn % pagesCovered(wLevel));
          continue;
        }
        if (wLevel > target) {
          const id = arena.alloc();
          if (id < 0)
            throw fail('out-of-range', 'populate: no free page table (sharedTables is too small)', 'ENOMEM');
          Atomics.store(wArr, wIdx, tableEntry(id));
          continue;
        }
        if (wLevel === LEVEL_4K) {
          // Fill the rest of this 4 KiB table at once.
          const n = Math.min(TABLE_ENTRIES - (gfn & 511), end - gfn);
          wArr.fill(leafBits, wIdx, wIdx + n);
          installed += n;
          gfn += n;
        } else {
          Atomics.store(wArr, wIdx, leafBits | SPTE_HUGE);
          installed++;
          gfn += pagesCovered(wLevel);
        }
      }
    } finally {
      lock.writeUnlock();
    }
    return installed;
  }

  /** Counters summed over rows `first..last` (vCPU rows, then the owner's row `vcpus`). */
  function statsOver(first: number, last: number): MmuStats {
    const sum = (c: number) => {
      let total = 0;
      for (let r = first; r <= last; r++) total += counters[r * COUNTERS + c] as number;
      return total;
    };
    const whole = first === 0 && last === vcpus;
    const tables = whole ? arena.inUse() : 0;
    return {
      writes: sum(C_WRITES),
      tlbHits: sum(C_TLB_HITS),
      faults: sum(C_FAST) + sum(C_SLOW),
      fastFaults: sum(C_FAST),
      slowFaults: sum(C_SLOW),
      readonlyExits: sum(C_READONLY),
      reported: sum(C_REPORTED),
      rearmed: sum(C_REARMED),
      splits: sum(C_SPLITS),
      wrprotected: sum(C_WRPROT),
      dirtyCleared: sum(C_DCLEAR),
      pmlLogged: sum(C_PML_LOGGED),
      pmlFullExits: sum(C_PML_FULL),
      zaps: sum(C_ZAPS),
      recovered: sum(C_RECOVERED),
      tlbFlushes: sum(C_FLUSHES),
      lockWaits: sum(C_LOCK_WAITS),
      lockWaitNs: sum(C_LOCK_WAIT_NS),
      tables,
      tableBytes: tables * TABLE_BYTES,
    };
  }

  const mmu: Mmu = {
    kind: 'mmu',
    vcpus,
    logging: mode,
    setUserMemoryRegion(region) {
      requireOwner('setUserMemoryRegion');
      const existing = slots.get(region.slot);
      const { change, slot } = classifyRegionChange(
        region,
        existing?.info,
        [...slots.values()].map((s) => s.info),
      );
      if (descriptorTaken && (change === 'create' || change === 'delete' || change === 'move')) {
        throw fail(
          'invalid-state',
          `setUserMemoryRegion: ${change} after workers attached (live plane: create memslots first)`,
        );
      }
      if (change === 'none') return change;
      if (change === 'flags-only' && existing !== undefined && slot !== undefined) {
        setLogging(existing, (slot.flags & KVM_MEM_LOG_DIRTY_PAGES) !== 0);
        return change;
      }
      if (existing !== undefined) {
        // DELETE and MOVE: zap every mapping of the old slot; its dirty state is gone.
        lockFor(ownerRow, true);
        try {
          zapSlot(existing);
          flushRemoteTlbs();
        } finally {
          lock.writeUnlock();
        }
        arena.release();
        slots.delete(existing.info.id);
      }
      if (slot !== undefined) {
        const s = createSlotState({ ...slot, flags: slot.flags & ~KVM_MEM_LOG_DIRTY_PAGES });
        Atomics.store(s.ctl, 0, s.info.flags);
        slots.set(slot.id, s);
        // A slot created (or moved) with logging on has nothing mapped yet: nothing to protect.
        if ((slot.flags & KVM_MEM_LOG_DIRTY_PAGES) !== 0) setLogging(s, true);
      }
      return change;
    },
    slot: (id) => slots.get(id)?.info,
    slots: () => [...slots.values()].map((s) => s.info),
    populate,
    attach(target) {
      sink = target;
    },
    write(vcpu, slotId, offsets, count) {
      if (!(vcpu >= 0 && vcpu < vcpus))
        throw fail('out-of-range', `write: vCPU ${vcpu} does not exist (${vcpus} vCPUs)`);
      const s = slotOf(slotId, 'write');
      const pages = s.info.pages;
      const base = s.info.baseGfn;
      const tlb = tlbs[vcpu] as Uint32Array;
      const row = vcpu * COUNTERS;
      let trapped = 0;
      let hits = 0;
      try {
        for (let i = 0; i < count; i++) {
          const page = offsets[i] as number;
          if (!(page < pages)) {
            throw fail('out-of-range', `write: page ${page} is outside slot ${slotId} (${pages} pages)`);
          }
          if (Atomics.load(ctl, CTL_EPOCH) !== seenEpoch[vcpu]) observeFlush(vcpu);
          if (pml && Atomics.load(ctl, CTL_KICK) !== seenKick[vcpu]) observeKick(vcpu);
          const gfn = base + page;
          if (tlb[gfn & tlbMask] === gfn + 1) {
            hits++;
            continue;
          }
          if (writeMiss(vcpu, row, s, gfn, page) === 1) trapped++;
        }
      } finally {
        counters[row + C_WRITES] = (counters[row + C_WRITES] as number) + count;
        counters[row + C_TLB_HITS] = (counters[row + C_TLB_HITS] as number) + hits;
        flushReports(slotId, vcpu);
      }
      return trapped;
    },
    enterGuest(vcpu) {
      inGuest[vcpu] = 1;
      Atomics.store(vcpuWords, vcpu * VW, VCPU_IN_GUEST);
      observeFlush(vcpu);
      if (pml) observeKick(vcpu);
    },
    exitGuest(vcpu) {
      if (pml) drainPml(vcpu); // Every exit drains the PML buffer.
      inGuest[vcpu] = 0;
      Atomics.store(vcpuWords, vcpu * VW, VCPU_OUTSIDE);
      Atomics.notify(vcpuWords, vcpu * VW + 1);
    },
    flushRemoteTlbs() {
      requireOwner('flushRemoteTlbs');
      return flushRemoteTlbs();
    },
    enableLogging(info: MemslotInfo) {
      requireOwner('enableLogging');
      return setLogging(slotOf(info.id, 'enableLogging'), true);
    },
    disableLogging(id: number) {
      requireOwner('disableLogging');
      setLogging(slotOf(id, 'disableLogging'), false);
    },
    rearm,
    syncDirtyLog() {
      requireOwner('syncDirtyLog');
      syncDirtyLog();
    },
    inspect(slotId, page) {
      const s = slotOf(slotId, 'inspect');
      if (!(page >= 0 && page < s.info.pages))
        throw fail('out-of-range', `inspect: page ${page} is outside slot ${slotId}`);
      const spte = walk(s, s.info.baseGfn + page);
      return { spte, level: wLevel };
    },
    stats: () => statsOver(0, vcpus),
    statsOf(vcpu) {
      if (!(vcpu >= -1 && vcpu < vcpus)) throw fail('out-of-range', `statsOf: vCPU ${vcpu} does not exist`);
      return vcpu === -1 ? statsOver(vcpus, vcpus) : statsOver(vcpu, vcpu);
    },
    vcpuCostNs(costs) {
      let ns = 0;
      for (let v = 0; v < vcpus; v++) {
        const r = v * COUNTERS;
        ns +=
          (counters[r + C_FAST] as number) * costs.writeFaultNs +
          (counters[r + C_SLOW] as number) * costs.slowFaultNs +
          (counters[r + C_SPLITS] as number) * costs.hugePageSplitNs +
          (counters[r + C_PML_FULL] as number) * costs.writeFaultNs +
          (counters[r + C_LOCK_WAIT_NS] as number);
      }
      return ns;
    },
    share() {
      return { module: '@dirtytrack/mmu', factory: 'attachMmu', data: mmu.descriptor() };
    },
    descriptor() {
      requireOwner('descriptor');
      const parts = arena.sharedParts;
      if (!live || parts === undefined || options.sharedTables === undefined) {
        throw fail('invalid-state', 'descriptor: create the MMU with sharedTables to share it with workers');
      }
      descriptorTaken = true;
      const { clock: _clock, ...rest } = options;
      void _clock;
      return {
        options: { ...rest, sharedTables: options.sharedTables },
        ctl: ctl.buffer as SharedArrayBuffer,
        lock: shared.lockBuffer,
        counters: counters.buffer as SharedArrayBuffer,
        chunks: parts.chunks.map((c) => c.buffer as SharedArrayBuffer),
        freeRing: parts.freeRing.buffer as SharedArrayBuffer,
        pml: pmlLog.buffer as SharedArrayBuffer,
        slots: [...slots.values()].map((s) => ({
          slot: s.info,
          root: s.root.buffer as SharedArrayBuffer,
          ctl: s.ctl.buffer as SharedArrayBuffer,
        })),
      };
    },
  };
  return mmu;
}

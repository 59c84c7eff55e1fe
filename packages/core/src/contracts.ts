import type { Bitmap } from './bitmap.js';
import type { Clock } from './clock.js';
import type { CostModel } from './cost-model.js';

/**
 * The contracts between dirtytrack's components (ARCHITECTURE §2). A component talks to its
 * neighbour only through these interfaces, so any tracker works with any reporter and any
 * reporter feeds any layer stack. Every contract has a conformance suite in
 * `@dirtytrack/testkit`.
 *
 * All per-page data crosses these interfaces in batches (typed arrays), never one call per page.
 * Page numbers are offsets inside a memslot (KVM's `gfn - base_gfn`).
 *
 * Status: these are the first versions (foundation issue). The MMU, ring and live-plane issues
 * will refine them; each refinement is noted here when it lands.
 */

/** A memslot as trackers and reporters see it (`KVM_SET_USER_MEMORY_REGION`'s view). */
export interface MemslotInfo {
  /** Slot id (bits 0–15 of KVM's `slot` field). */
  readonly id: number;
  /** Address space (bits 16–31; x86 uses 1 for SMM). */
  readonly asId: number;
  /** First guest frame number. */
  readonly baseGfn: number;
  /** Pages in the slot (4 KiB each). */
  readonly pages: number;
}

/**
 * What trackers feed: "these pages of this slot were written". KVM's single funnel,
 * `mark_page_dirty_in_slot`, in batch form. Implemented by reporters (bitmap, ring).
 */
export interface DirtySink {
  /**
   * Records pages `offsets[0..count)` of slot `slot` as dirty, written by vCPU `vcpu`
   * (-1 for a write without vCPU context: device emulation, the hypervisor itself).
   */
  markDirty(slot: number, offsets: Uint32Array, count: number, vcpu: number): void;
}

/**
 * Something that can make pages trap again: KVM's `kvm_arch_mmu_enable_log_dirty_pt_masked`.
 * Reporters call it when a harvest hands pages to userspace. Implemented by trackers.
 */
export interface Rearmer {
  /**
   * Re-arms every page whose bit is set in `mask` (a bitmap covering the whole slot). Returns
   * the number of pages re-armed. The caller owns the TLB flush that makes it effective.
   *
   * `touched`, when given, lists the indices of the only 32-bit words of `mask` that may be
   * non-zero, so the work is O(dirty words) instead of O(slot) — what the dirty ring's reset
   * needs (KVM re-arms per 64-page batch). (Added with the reporters issue.)
   */
  rearm(slot: number, mask: Bitmap, touched?: TouchedWords): number;
  /**
   * `kvm_arch_sync_dirty_log`: makes dirty state buffered in the CPU reach the sink before a
   * harvest reads the log — with PML, kicks every vCPU so its buffer is drained. Reporters call
   * it at the start of `KVM_GET_DIRTY_LOG` and of a ring reap. Optional: trackers that report at
   * fault time have nothing buffered. (Added with the MMU issue.)
   */
  syncDirtyLog?(slot?: number): void;
}

/** Indices of the 32-bit words of a bitmap that may be non-zero: `words[0..count)`. */
export interface TouchedWords {
  readonly words: Uint32Array;
  readonly count: number;
}

/**
 * What reporters (and, later, the real KVM backend) offer the QEMU layers: the dirty log of
 * each slot, like `KVM_GET_DIRTY_LOG` / `KVM_CLEAR_DIRTY_LOG`.
 */
export interface DirtyLogSource {
  /** A short name for messages and results, e.g. `bitmap`. */
  readonly kind: string;
  /**
   * `KVM_GET_DIRTY_LOG`: writes the slot's dirty bits into `out` (same size as the slot).
   * Without manual protect this also clears them and re-arms exactly the reported pages, so a
   * page written after the call appears in the next one. Returns the number of pages reported.
   */
  getDirtyLog(slot: number, out: Bitmap): number;
  /**
   * `KVM_CLEAR_DIRTY_LOG` (manual protect only): clears and re-arms the pages of `mask` (bit 0
   * = `firstPage`) that are still dirty, with KVM's alignment rules. Returns the pages re-armed.
   * Absent on sources without manual protect.
   */
  clearDirtyLog?(slot: number, firstPage: number, numPages: number, mask: Bitmap): number;
  /** What the last `getDirtyLog` cost, for the model plane to charge. */
  lastHarvestCost(): HarvestCost;
}

/** Work done by one harvest, in units the {@link CostModel} prices. */
export interface HarvestCost {
  /** 64-bit words read with an atomic exchange. */
  readonly xchgWords: number;
  /** 64-bit words copied or scanned plainly. */
  readonly copyWords: number;
  /** Pages re-armed. */
  readonly rearmedPages: number;
  /** Remote TLB flushes issued. */
  readonly tlbFlushes: number;
  /** Dirty-ring entries harvested and reset (0 for bitmaps). */
  readonly ringEntries: number;
}

/**
 * A sink with bounded room per vCPU: the dirty ring. KVM exits a vCPU with
 * `KVM_EXIT_DIRTY_RING_FULL` once its ring reaches the soft limit, and a ring must never go
 * completely full (entries would be lost), so an engine never feeds a vCPU more writes than
 * `room(vcpu)` (each write dirties at most one page) before the ring has been harvested and reset.
 * (Added with the reporters issue.)
 */
export interface BoundedDirtySink extends DirtySink {
  /** Entries vCPU `vcpu` may still push before it reaches the soft limit and must exit. */
  room(vcpu: number): number;
}

/** True when `sink` bounds its room per vCPU (a dirty ring). */
export function isBoundedDirtySink(sink: DirtySink): sink is BoundedDirtySink {
  return typeof (sink as Partial<BoundedDirtySink>).room === 'function';
}

/** A reporter both receives dirty pages from trackers and reports them to the layers above. */
export interface Reporter extends DirtySink, DirtyLogSource {
  /** Starts keeping a dirty log for `slot` (allocates its bitmap or ring space). */
  addSlot(slot: MemslotInfo): void;
}

/**
 * Turning dirty logging on and off for a slot, as setting and clearing
 * `KVM_MEM_LOG_DIRTY_PAGES` with `KVM_SET_USER_MEMORY_REGION` does. Trackers implement it; the
 * QEMU layers call it when migration starts and ends (`memory_global_dirty_log_start/stop`).
 */
export interface LoggingControl {
  /** Starts dirty logging on a slot. Returns the pages write-protected (or otherwise armed) now. */
  enableLogging(slot: MemslotInfo): number;
  /** Stops dirty logging on a slot; its pages no longer trap. */
  disableLogging(slot: number): void;
}

/** The result of one `migration_bitmap_sync`. */
export interface SyncResult {
  /** Pages that went from clean to dirty in the migration bitmap. */
  readonly newDirty: number;
  /** Pages the producers reported (some may already have been dirty in the migration bitmap). */
  readonly reported: number;
  /** Migration-thread time the sync took, priced by the cost model (ns). */
  readonly costNs: number;
}

/**
 * QEMU's migration bitmap (layer C) and the layers under it, as the migration engine sees them:
 * which pages still need sending, and a sync that pulls fresh dirty bits up from the producers.
 */
export interface MigrationBitmap {
  /** Pages covered (target pages of the RAM being migrated). */
  readonly pages: number;
  /**
   * 1 = the page must be (re)sent. The migration engine clears bits as it sends pages. A sync
   * may replace it (a bitmap that adopts the producer's harvested buffer instead of copying it),
   * so read `bmap` — and its `words` — anew after every `sync()`.
   */
  readonly bmap: Bitmap;
  /** `migration_dirty_pages`: always equal to `bmap.popcount()`. */
  readonly dirtyPages: number;
  /**
   * Migration setup (`ram_init_bitmaps`): starts dirty logging below, sets every bmap bit.
   * Returns the time it took (ns).
   */
  setup(): number;
  /** `migration_bitmap_sync`: pulls dirty bits from every producer into `bmap`. */
  sync(): SyncResult;
  /**
   * Marks pages as sent: clears `mask` bits of 32-bit word `word` of `bmap` (they must be set)
   * and updates `dirtyPages`.
   */
  clearSent(word: number, mask: number): void;
  /** Migration end: stops dirty logging below. */
  cleanup(): void;
}

/** Counters every tracker keeps. */
export interface TrackerStats {
  /** Writes the tracker saw. */
  readonly writes: number;
  /** Writes that trapped (write-protect faults, PML exits, uffd faults). */
  readonly faults: number;
  /** Pages reported to the sink. */
  readonly reported: number;
  /** Pages re-armed by harvests. */
  readonly rearmed: number;
}

/**
 * Traps guest writes and reports the written pages to a {@link DirtySink}: write-protect, PML,
 * uffd-wp. A tracker also implements {@link Rearmer}, so reporters can make pages trap again.
 */
export interface Tracker extends Rearmer, LoggingControl {
  readonly kind: string;
  /** Where trapped writes are reported (usually a reporter). Must be set before writes arrive. */
  attach(sink: DirtySink): void;
  /**
   * Guest writes by vCPU `vcpu` to pages `offsets[0..count)` of slot `slot`, in order.
   * Returns how many of them trapped.
   */
  write(vcpu: number, slot: number, offsets: Uint32Array, count: number): number;
  stats(): TrackerStats;
  /**
   * vCPU time the tracker's work has cost so far, summed over vCPUs and priced by `costs` (ns):
   * fast and slow faults, huge-page splits, measured lock waits. Optional: engines charge
   * `faults × writeFaultNs` for trackers without a finer model. (Added with the MMU issue.)
   */
  vcpuCostNs?(costs: CostModel): number;
}

/**
 * How a worker thread rebuilds its view of a component that lives in shared memory (live
 * plane): it imports `module` (a package name such as `@dirtytrack/mmu`), calls the export named
 * `factory` with `data`, and gets the worker-side view. `data` must survive `postMessage`
 * (numbers, strings, plain objects, `SharedArrayBuffer`s). (Added with the trackers issue.)
 */
export interface AttachSpec {
  readonly module: string;
  readonly factory: string;
  readonly data: unknown;
}

/**
 * The vCPU side of a tracker, as a worker thread sees it: it reports trapped writes to the sink
 * it is attached to (a reporter's worker view). `write` returns only when the guest's store may
 * proceed — a synchronous uffd-wp fault blocks until the page's old content was saved — so the
 * caller performs the store right after it returns. (Added with the trackers issue.)
 */
export interface VcpuTracker {
  attach(sink: DirtySink): void;
  write(vcpu: number, slot: number, offsets: Uint32Array, count: number): number;
  /** The vCPU starts or stops running guest code (TLB-flush and kick acknowledgements). */
  enterGuest?(vcpu: number): void;
  exitGuest?(vcpu: number): void;
}

/** A tracker whose vCPU side can run in worker threads. (Added with the trackers issue.) */
export interface SharedTracker extends Tracker {
  /** What a worker passes to `module[factory](data)` to get a {@link VcpuTracker}. */
  share(): AttachSpec;
}

/** A reporter whose producer side (`markDirty`) can run in worker threads. */
export interface SharedReporter extends Reporter {
  /** What a worker passes to `module[factory](data)` to get a {@link DirtySink}. */
  share(): AttachSpec;
}

/** One vCPU's writes in one quantum. The arrays are reused: consume before returning. */
export interface WriteBatch {
  readonly vcpu: number;
  readonly slot: number;
  readonly offsets: Uint32Array;
  readonly count: number;
}

/** A guest workload: which pages the vCPUs write, and when. */
export interface Workload {
  readonly kind: string;
  readonly vcpus: number;
  /**
   * Emits the writes the guest makes in virtual time `[fromNs, toNs)`, one batch per vCPU that
   * wrote. `speed` in [0, 1] scales the write rate (1 = full speed; a throttled or paused guest
   * writes less). Deterministic for a given seed and sequence of calls.
   *
   * `vcpuSpeeds`, when given, scales each vCPU's rate further (`vcpuSpeeds[v]` in [0, 1]): the
   * per-vCPU throttle dirty-limit applies. (Added with the migration issue.)
   */
  generate(
    fromNs: number,
    toNs: number,
    speed: number,
    emit: (batch: WriteBatch) => void,
    vcpuSpeeds?: Float64Array,
  ): void;
}

/**
 * What auto-converge and dirty-limit act on (reference/qemu.md §2.3, §2.4): the guest's vCPU
 * speed, globally and per vCPU, and each vCPU's count of dirtied pages (QEMU's
 * `cpu->dirty_pages`, which the dirty ring feeds). The model engine implements it; in virtual
 * time a vCPU throttled by p % runs at (100 − p) % of its speed. (Added with the migration issue.)
 */
export interface VcpuThrottle {
  readonly vcpus: number;
  /** Fraction of full speed every vCPU runs at, in [0, 1] (auto-converge sets 1 − p/100). */
  speed: number;
  /** Sets vCPU `vcpu`'s own speed factor in [0, 1] (dirty-limit), applied on top of `speed`. */
  setVcpuSpeed(vcpu: number, speed: number): void;
  /** Pages vCPU `vcpu` has dirtied so far (writes that trapped into the tracker). */
  vcpuDirtyPages(vcpu: number): number;
}

/**
 * A link as the model plane sees it: bytes take time. (The live plane's byte-stream transport
 * over TCP arrives with the live-plane issue and will extend this contract.)
 */
export interface Transport {
  readonly kind: string;
  /** Bytes per second the link carries. */
  readonly bandwidth: number;
  /** One-way latency in ns. */
  readonly latencyNs: number;
  /**
   * Sends `bytes` starting no earlier than `atNs` (and not before the link is free). Returns
   * the time the last byte has left the sender; it arrives `latencyNs` later.
   */
  transmit(bytes: number, atNs: number): number;
  /** Total bytes carried so far. */
  readonly bytesSent: number;
  /**
   * Live plane: `bandwidth` is only an estimate, so precopy sizes a rate-limit window's batch at
   * this many times bandwidth × the window's time left. A batch that drains late only makes its
   * window longer (the window's real rate is measured either way); one that drains early leaves
   * the link idle for the rest of the window when nothing limits the rate. Absent = 1 (the
   * model's link, whose bandwidth is exact). (Added with the live plane's throughput work.)
   */
  readonly batchHeadroom?: number;
  /**
   * Live plane: `transmit` may return once its batch is queued behind one still draining, so the
   * migration thread prepares the next batch while the kernel drains this one (as QEMU's
   * migration thread fills its channels while they drain). `settle` blocks until every queued
   * byte has left and returns that time; precopy calls it before it stops the guest, so the
   * downtime never holds a batch queued before. Absent: `transmit` returns once its bytes have
   * left (the model's link). (Added with the live plane's throughput work.)
   */
  settle?(): number;
  /**
   * Live plane, with `settle`: bytes `transmit` has queued that have not left yet. Precopy's
   * per-window bandwidth counts what left in the window, as QEMU's counts what reached the
   * channel. Absent = 0.
   */
  readonly bytesInFlight?: number;
  /**
   * Model plane: when the link drops (ns). A transmission still in flight then fails with a
   * `DirtytrackError` whose errno is `EPIPE`. Absent = never. (Added with the migration issue.)
   */
  readonly downAtNs?: number;
  /**
   * Model plane: when the link first dropped can carry a new connection again (ns) — postcopy
   * recovery reconnects then. Absent = never (or it never drops).
   */
  readonly upAtNs?: number;
  /**
   * Model plane: the first outage a transmission from `fromNs` to `toNs` would hit
   * (`toNs > downAtNs && fromNs < upAtNs`; `upAtNs` is Infinity when it never comes back), or
   * undefined. With `fromNs === toNs` it says whether the link is down at that instant.
   */
  outageBetween?(fromNs: number, toNs: number): { downAtNs: number; upAtNs: number } | undefined;
}

/**
 * Who drives time and where writes come from. The planes differ only here: the model engine
 * advances a virtual clock and pulls write batches from a {@link Workload}; the live engine
 * (later issue) runs vCPUs as worker threads in real time.
 */
export interface Engine {
  readonly plane: 'model' | 'live';
  readonly clock: Clock;
  /** Runs the guest from now until `untilNs` on the engine's clock. */
  runGuestUntil(untilNs: number): void;
  /** Stops the vCPUs (no more writes) — the start of downtime. */
  pause(): void;
  resume(): void;
  readonly running: boolean;
}

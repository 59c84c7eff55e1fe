import {
  Bitmap,
  DirtytrackError,
  PAGE_SIZE,
  popcount32,
  type AttachSpec,
  type CostModel,
  type DirtySink,
  type MemslotInfo,
  type SharedTracker,
  type TrackerStats,
  type VcpuTracker,
} from '@dirtytrack/core';

// ---------------------------------------------------------------------------------------------
// Kernel constants (reference/kvm.md §7 and §9). The installed UAPI headers are 6.1, so WP_ASYNC,
// MOVE and PAGEMAP_SCAN are defined here as the kernel defines them.
// ---------------------------------------------------------------------------------------------

/** `UFFD_API`: the only API version `UFFDIO_API` accepts. */
export const UFFD_API = 0xaa;

/** `UFFD_FEATURE_*` bits negotiated with `UFFDIO_API`. */
export const UFFD_FEATURE = Object.freeze({
  PAGEFAULT_FLAG_WP: 1 << 0,
  EVENT_FORK: 1 << 1,
  EVENT_REMAP: 1 << 2,
  EVENT_REMOVE: 1 << 3,
  MISSING_HUGETLBFS: 1 << 4,
  MISSING_SHMEM: 1 << 5,
  EVENT_UNMAP: 1 << 6,
  SIGBUS: 1 << 7,
  THREAD_ID: 1 << 8,
  MINOR_HUGETLBFS: 1 << 9,
  MINOR_SHMEM: 1 << 10,
  EXACT_ADDRESS: 1 << 11,
  WP_HUGETLBFS_SHMEM: 1 << 12,
  WP_UNPOPULATED: 1 << 13,
  POISON: 1 << 14,
  WP_ASYNC: 1 << 15,
  MOVE: 1 << 16,
});

/** The ioctl numbers (`_IOC(dir, 0xAA, nr, size)`; PAGEMAP_SCAN is type 'f'). */
export const UFFDIO = Object.freeze({
  REGISTER: 0xc020aa00,
  UNREGISTER: 0x8010aa01,
  WAKE: 0x8010aa02,
  COPY: 0xc028aa03,
  ZEROPAGE: 0xc020aa04,
  MOVE: 0xc028aa05,
  WRITEPROTECT: 0xc018aa06,
  CONTINUE: 0xc020aa07,
  API: 0xc018aa3f,
});
export const PAGEMAP_SCAN = 0xc0606610;

/** `UFFDIO_REGISTER_MODE_*`. */
export const UFFDIO_REGISTER_MODE = Object.freeze({ MISSING: 1, WP: 2, MINOR: 4 });
/** `UFFDIO_WRITEPROTECT_MODE_*`: WP set protects; clear unprotects and wakes unless DONTWAKE. */
export const UFFDIO_WRITEPROTECT_MODE = Object.freeze({ WP: 1, DONTWAKE: 2 });
/** `struct uffd_msg.event` for a page fault. */
export const UFFD_EVENT_PAGEFAULT = 0x12;
/** `uffd_msg.arg.pagefault.flags`. */
export const UFFD_PAGEFAULT_FLAG = Object.freeze({ WRITE: 1, WP: 2, MINOR: 4 });
/** `sizeof(struct uffd_msg)`. */
export const UFFD_MSG_BYTES = 32;
/** PAGEMAP_SCAN categories (`PAGE_IS_*`). */
export const PAGE_IS = Object.freeze({
  WPALLOWED: 1 << 0,
  WRITTEN: 1 << 1,
  FILE: 1 << 2,
  PRESENT: 1 << 3,
  SWAPPED: 1 << 4,
  PFNZERO: 1 << 5,
  HUGE: 1 << 6,
  SOFT_DIRTY: 1 << 7,
});
/** `pm_scan_arg.flags`. */
export const PM_SCAN = Object.freeze({ WP_MATCHING: 1 << 0, CHECK_WPASYNC: 1 << 1 });

// ---------------------------------------------------------------------------------------------
// The tracker
// ---------------------------------------------------------------------------------------------

export interface UffdWpTrackerOptions {
  /**
   * `sync` (default): a write to a protected page queues a fault message and blocks the writer
   * until the page is unprotected (`UFFD_FEATURE_PAGEFAULT_FLAG_WP`, what QEMU's background
   * snapshot uses). `async` (`UFFD_FEATURE_WP_ASYNC`): the kernel resolves the fault itself by
   * clearing uffd-wp — the page becomes WRITTEN — with no message and no blocking; the dirty set
   * is read with {@link UffdWpTracker.pagemapScan}.
   */
  readonly mode?: 'sync' | 'async';
  /** Keep all state in `SharedArrayBuffer`s so worker vCPUs can attach ({@link attachUffdWpTracker}). Default false. */
  readonly shared?: boolean;
  /**
   * Memslots whose state is allocated up front, unregistered: workers that attach before logging
   * starts then see them (a slot first registered after `share()` is refused). Default none.
   */
  readonly slots?: readonly MemslotInfo[];
  /** Fault-queue entries (power of two). Each blocked vCPU holds at most one. Default 1024. */
  readonly queueEntries?: number;
  /** Highest vCPU id + 1 that may write (per-vCPU counters). Default 512. */
  readonly maxVcpus?: number;
  /**
   * A worker vCPU blocked in a sync fault gives up with a `timeout` error after this long
   * without being woken (the snapshot thread died). Counted in {@link waitSliceMs} sleeps, not
   * with a clock. Default 10 000 ms.
   */
  readonly waitTimeoutMs?: number;
  /** Length of one `Atomics.wait` of a blocked worker vCPU. Default 20 ms. */
  readonly waitSliceMs?: number;
  /**
   * Model plane: called when a vCPU blocked in a sync fault is woken with its page writable,
   * i.e. the moment its store retires (`index` is the write's position in the batch). The model
   * engine performs that store here, so a reader that unprotects before saving really loses the
   * page's old content, as it would with threads.
   */
  readonly onResume?: (vcpu: number, slot: number, page: number, index: number) => void;
  /**
   * Debug, for negative controls only: a sync fault queues its message but the writer does not
   * wait for the page to be unprotected (it proceeds as if woken). Snapshots then lose content.
   */
  readonly skipFaultWait?: boolean;
  /**
   * Sync mode, shared: who reads faults that worker vCPUs queue while no snapshot step runs.
   * `event-loop` (default): from the first `share()`, a reader on the owner thread's event loop
   * (`Atomics.waitAsync` on the queue) runs the installed fault handler, or the default reader
   * that just unprotects — QEMU's fault thread, for owners that `await` between harvests. It
   * never keeps the process alive. `none`: only `step`/`serviceFaults`/`syncDirtyLog` read.
   */
  readonly reader?: 'event-loop' | 'none';
}

/** Counters of the uffd-wp tracker. */
export interface UffdWpStats extends TrackerStats {
  /** Fault messages queued (sync mode; duplicates included). */
  readonly messages: number;
  /** Fault messages read by the uffd reader. */
  readonly messagesRead: number;
  /** PAGEMAP_SCAN calls. */
  readonly scans: number;
  /** `Atomics.wait` sleeps of blocked worker vCPUs (live plane). */
  readonly waits: number;
  /**
   * Live plane: remote TLB flushes after a re-protect (`protect`, `rearm`, a WP_MATCHING scan)
   * that had to wait for a worker vCPU in guest mode to finish its batch's stores.
   */
  readonly flushWaits: number;
}

/** One `PAGEMAP_SCAN` request (reference/kvm.md §7), page-granular within a slot. */
export interface PagemapScanRequest {
  readonly slot: number;
  /** First page (default 0) and end page, exclusive (default: the slot's end). */
  readonly start?: number;
  readonly end?: number;
  /** `PM_SCAN_WP_MATCHING`: re-protect every reported page atomically with the report. */
  readonly wpMatching?: boolean;
  /** `PM_SCAN_CHECK_WPASYNC`: fail with EPERM unless the tracker runs in async mode. */
  readonly checkWpAsync?: boolean;
  /** Receives the offsets of WRITTEN pages, ascending. */
  readonly out: Uint32Array;
  /** `max_pages`: stop after this many pages (default `out.length`). */
  readonly maxPages?: number;
}

export interface PagemapScanResult {
  /** Pages written into `out`. */
  readonly count: number;
  /** `walk_end`: where the walk stopped; equals `end` unless `out` or `maxPages` filled up. */
  readonly walkEnd: number;
}

/** The uffd reader, model plane: runs when a vCPU would block in a sync fault. */
export type UffdFaultHandler = (tracker: UffdWpTracker) => void;

/** What a worker thread needs to attach to a shared uffd-wp tracker (survives `postMessage`). */
export interface UffdWpDescriptor {
  readonly mode: 'sync' | 'async';
  readonly control: SharedArrayBuffer;
  readonly counters: SharedArrayBuffer;
  readonly queueEntries: number;
  readonly maxVcpus: number;
  readonly waitTimeoutMs: number;
  readonly waitSliceMs: number;
  readonly skipFaultWait: boolean;
  /** Per vCPU (index vcpu + 1): Int32 [in guest mode, last flush epoch seen]. */
  readonly guest: SharedArrayBuffer;
  readonly slots: readonly { readonly info: MemslotInfo; readonly state: SharedArrayBuffer }[];
}

/**
 * A software userfaultfd in write-protect mode, as a {@link SharedTracker}. Registering a slot
 * (`enableLogging`) is `UFFDIO_REGISTER_MODE_WP` followed by protecting all of it, as QEMU's
 * `ram_write_tracking_start` does.
 */
export interface UffdWpTracker extends SharedTracker {
  readonly kind: 'uffd-wp';
  readonly mode: 'sync' | 'async';
  /**
   * `UFFDIO_REGISTER` with `MODE_WP` alone: the slot's pages become protectable, none is
   * protected yet. `enableLogging` is `register` plus protecting the whole slot.
   */
  register(slot: MemslotInfo): void;
  /** True while `slot` is registered (between `register`/`enableLogging` and `disableLogging`). */
  registered(slot: number): boolean;
  /** `UFFDIO_WRITEPROTECT` with mode WP over pages `[first, first + count)`. Returns pages newly protected. */
  protect(slot: number, first: number, count: number): number;
  /**
   * `UFFDIO_WRITEPROTECT` with mode 0 (or `DONTWAKE`): removes protection and wakes writers
   * blocked on those pages unless `mode` has `DONTWAKE`. Returns pages unprotected.
   */
  unprotect(slot: number, first: number, count: number, mode?: number): number;
  /** `UFFDIO_WRITEPROTECT` with the raw mode bits. */
  writeProtect(slot: number, first: number, count: number, mode: number): number;
  /**
   * `UFFDIO_WAKE`: wakes writers blocked on the range. In the model plane a writer woken while
   * still protected re-faults (a new message), as in the kernel; a worker vCPU cannot tell its
   * wake from one for another page of the same 32-page word, so it just sleeps again.
   */
  wake(slot: number, first: number, count: number): void;
  isProtected(slot: number, page: number): boolean;
  /** A live view of the slot's uffd-wp bits (1 = protected; WRITTEN = registered and 0). */
  protection(slot: number): Bitmap;
  /**
   * `read(2)` on the uffd, non-blocking: fills `out` with records of 4 words
   * `[flags, slot, page, ptid]` (flags = WRITE|WP) and returns how many records it wrote
   * (0 = EAGAIN). Single reader.
   */
  readFaults(out: Uint32Array): number;
  /** `read(2)` returning `struct uffd_msg`s (32 B each, little-endian); returns bytes read. */
  read(buf: Uint8Array): number;
  /** Fault messages queued and not yet read. */
  pendingFaults(): number;
  /** `PAGEMAP_SCAN` with category_mask = return_mask = WRITTEN. */
  pagemapScan(request: PagemapScanRequest): PagemapScanResult;
  /** Installs the model-plane uffd reader (undefined: the default reader just unprotects). */
  setFaultHandler(handler: UffdFaultHandler | undefined): void;
  /** The slot's geometry, as registered. */
  slotInfo(slot: number): MemslotInfo;
  descriptor(): UffdWpDescriptor;
  /** `{ module: '@dirtytrack/trackers', factory: 'attachUffdWpTracker', data: descriptor() }`. */
  share(): AttachSpec;
  stats(): UffdWpStats;
}

const COMPONENT = 'uffd-wp';

/** `Atomics.waitAsync` (Node ≥ 16; typed in TypeScript's ES2024 lib, this package targets ES2023). */
type WaitAsync = (
  typedArray: Int32Array,
  index: number,
  value: number,
) => { async: false; value: 'not-equal' | 'timed-out' } | { async: true; value: Promise<'ok' | 'timed-out'> };

// Control words (Int32) of the shared control buffer: the fault queue. Entry e occupies 4 words
// at ENTRIES + 4e: [full flag, slot, page, ptid]. Producers (faulting vCPUs, any thread) reserve
// an index with fetch-add on TAIL and publish with a release store of the full flag; the single
// reader consumes at HEAD in index order, clears the flag, then advances HEAD (so a producer
// that waited for room never overwrites an unread entry).
const Q_HEAD = 0;
const Q_TAIL = 1;
const Q_READ = 2; // messages read (for stats)
const Q_PUB = 3; // messages published: the event-loop reader waits on it (no lost wake-ups)
const Q_EPOCH = 4; // remote TLB flushes begun: a worker vCPU acknowledges each (see flushRemote)
// Per-vCPU guest-mode words (Int32, index (vcpu + 1) × 2): [state, flush epoch acknowledged].
const G_WORDS = 2;
const G_OUT = 0;
const G_IN = 1;
const ENTRIES = 8;
/**
 * A blocked worker vCPU whose fault message was read, and whose page is still protected this long
 * after, faults again (see `waitUnprotected`).
 */
const REFAULT_AFTER_MS = 2000;
const ENTRY_WORDS = 4;
// Per-vCPU counters (Float64, written only by that vCPU's thread): [writes, faults, waits].
const COUNTERS = 3;
// Per-slot state buffer: Int32 [enabled, pages] then the uffd-wp bitmap (8-byte aligned).
const S_ENABLED = 0;
const S_HEADER_BYTES = 8;

interface SlotState {
  readonly info: MemslotInfo;
  readonly buffer: ArrayBufferLike;
  readonly ctl: Int32Array;
  /** uffd-wp bits as Int32 words: Atomics.wait needs an Int32Array. */
  readonly prot: Int32Array;
  readonly bitmap: Bitmap;
}

function fail(code: DirtytrackError['code'], message: string, errno?: string): DirtytrackError {
  return new DirtytrackError(
    code,
    message,
    errno === undefined ? { component: COMPONENT } : { component: COMPONENT, errno },
  );
}

function makeSlotState(info: MemslotInfo, buffer: ArrayBufferLike): SlotState {
  const bytes = Bitmap.byteLength(info.pages);
  return {
    info,
    buffer,
    ctl: new Int32Array(buffer, 0, 2),
    prot: new Int32Array(buffer, S_HEADER_BYTES, bytes / 4),
    bitmap: Bitmap.wrap(buffer, info.pages, S_HEADER_BYTES),
  };
}

function allocSlotState(info: MemslotInfo, shared: boolean): SlotState {
  const bytes = S_HEADER_BYTES + Bitmap.byteLength(info.pages);
  const s = makeSlotState(info, shared ? new SharedArrayBuffer(bytes) : new ArrayBuffer(bytes));
  s.ctl[1] = info.pages;
  return s;
}

/** Word-wise range walk: calls `fn(word, mask)` for each 32-bit word touched by `[first, first+count)`. */
function forEachWord(first: number, count: number, fn: (word: number, mask: number) => void): void {
  let p = first;
  const end = first + count;
  while (p < end) {
    const w = p >>> 5;
    const lo = p & 31;
    const hi = Math.min(32, lo + (end - p));
    const mask = hi - lo === 32 ? -1 : (((1 << (hi - lo)) - 1) << lo) | 0;
    fn(w, mask);
    p += hi - lo;
  }
}

/** The parts the owner and the worker view share: queue producer, counters, the write path. */
class Core {
  readonly mode: 'sync' | 'async';
  readonly ctl: Int32Array;
  readonly counters: Float64Array;
  readonly queueEntries: number;
  readonly maxVcpus: number;
  readonly waitSlices: number;
  /** {@link REFAULT_AFTER_MS} in wait slices. */
  readonly refaultSlices: number;
  readonly waitSliceMs: number;
  readonly skipFaultWait: boolean;
  readonly guest: Int32Array;
  readonly live: boolean;
  /** Set when this thread left guest mode inside `write` (it slept on the fault queue or a page). */
  parked = false;
  readonly slots = new Map<number, SlotState>();
  sink: DirtySink | undefined;
  faulted = new Uint32Array(64);
  /**
   * Resolves one sync fault of the calling thread: in a worker it blocks on the uffd-wp word;
   * the owner (model plane) runs the fault handler instead.
   */
  block: (vcpu: number, s: SlotState, page: number, index: number) => void;

  constructor(
    d: Omit<UffdWpDescriptor, 'slots' | 'control' | 'counters' | 'guest'>,
    control: ArrayBufferLike,
    counters: ArrayBufferLike,
    guest: ArrayBufferLike,
    /** A worker vCPU's side: its writes enter guest mode and acknowledge flushes. */
    live: boolean,
  ) {
    this.guest = new Int32Array(guest);
    this.live = live;
    this.mode = d.mode;
    this.ctl = new Int32Array(control);
    this.counters = new Float64Array(counters);
    this.queueEntries = d.queueEntries;
    this.maxVcpus = d.maxVcpus;
    this.waitSliceMs = d.waitSliceMs;
    this.waitSlices = Math.max(1, Math.ceil(d.waitTimeoutMs / d.waitSliceMs));
    this.refaultSlices = Math.max(1, Math.ceil(REFAULT_AFTER_MS / d.waitSliceMs));
    this.skipFaultWait = d.skipFaultWait;
    this.block = (vcpu, s, page) => this.waitUnprotected(vcpu, s, page);
  }

  slot(id: number, op: string): SlotState {
    const s = this.slots.get(id);
    if (s === undefined) throw fail('invalid-state', `${op}: slot ${id} is not registered`, 'EINVAL');
    return s;
  }

  counterBase(vcpu: number): number {
    if (!(Number.isInteger(vcpu) && vcpu >= -1 && vcpu + 1 < this.maxVcpus)) {
      throw fail('out-of-range', `write: vCPU ${vcpu} is outside [-1, ${this.maxVcpus - 1})`);
    }
    return (vcpu + 1) * COUNTERS;
  }

  /** A worker vCPU enters guest mode (`enterGuest`) and acknowledges the latest flush. */
  enterGuest(vcpu: number): void {
    const k = (vcpu + 1) * G_WORDS;
    if (this.guest[k] !== G_IN) Atomics.store(this.guest, k, G_IN);
    this.acknowledge(k);
  }

  /**
   * A vCPU in guest mode acknowledges the latest flush at the start of every `write`: the stores
   * of its previous batch are done by then, which is what a flush waits for.
   */
  acknowledge(k: number): void {
    const epoch = Atomics.load(this.ctl, Q_EPOCH);
    if (this.guest[k + 1] !== epoch) {
      Atomics.store(this.guest, k + 1, epoch);
      Atomics.notify(this.guest, k + 1);
    }
  }

  /** Out of guest mode (paused, sleeping, or blocked in a fault): flushes stop waiting for it. */
  exitGuest(vcpu: number): void {
    const k = (vcpu + 1) * G_WORDS;
    Atomics.store(this.guest, k, G_OUT);
    Atomics.notify(this.guest, k + 1);
  }

  /**
   * A worker vCPU in guest mode about to sleep inside `write`: out of guest mode meanwhile, and
   * its batch is checked again after.
   */
  park(vcpu: number): void {
    if (!this.live || this.parked || this.guest[(vcpu + 1) * G_WORDS] !== G_IN) return;
    this.exitGuest(vcpu);
    this.parked = true;
  }

  /** The write path, shared by the model plane and worker vCPUs. */
  write(vcpu: number, slot: number, offsets: Uint32Array, count: number): number {
    const c = this.counterBase(vcpu);
    const k = (vcpu + 1) * G_WORDS;
    if (this.live && this.guest[k] === G_IN) this.acknowledge(k);
    this.counters[c] = (this.counters[c] as number) + count;
    const s = this.slots.get(slot);
    if (s === undefined || Atomics.load(s.ctl, S_ENABLED) === 0) return 0; // Not registered: never traps.
    const sync = this.mode === 'sync';
    if (sync && this.sink === undefined) {
      throw fail('invalid-state', 'write: no sink attached (call attach(reporter) first)');
    }
    const prot = s.prot;
    const pages = s.info.pages;
    let n = 0;
    let faults = 0;
    for (let i = 0; i < count; i++) {
      const p = offsets[i] as number;
      if (!(p < pages))
        throw fail('out-of-range', `write: page ${p} is outside slot ${slot} (${pages} pages)`, 'EFAULT');
      const w = p >>> 5;
      const bit = 1 << (p & 31);
      if ((Atomics.load(prot, w) & bit) === 0) continue;
      if (!sync) {
        // WP_ASYNC: the kernel clears uffd-wp itself; the page is now WRITTEN. Only the thread
        // that cleared the bit counts the fault.
        if ((Atomics.and(prot, w, ~bit) & bit) !== 0) faults++;
        continue;
      }
      faults++;
      if (n === this.faulted.length) {
        const grown = new Uint32Array(n * 2);
        grown.set(this.faulted);
        this.faulted = grown;
      }
      this.faulted[n++] = p;
      this.enqueue(slot, p, vcpu);
      if (!this.skipFaultWait) this.block(vcpu, s, p, i);
      if (this.parked) {
        // It slept out of guest mode, where a re-protect does not wait for it: a page of this
        // batch let through before the sleep may be protected again, and its store has not
        // retired. Back in guest mode, check the batch again from its start (the kernel's
        // stores each take their fault at the time they retire).
        this.parked = false;
        this.enterGuest(vcpu);
        if (!this.skipFaultWait) i = -1;
      }
    }
    this.counters[c + 1] = (this.counters[c + 1] as number) + faults;
    // mark_page_dirty before any store of the batch retires (the caller stores after we return).
    if (n > 0) (this.sink as DirtySink).markDirty(slot, this.faulted, n, vcpu);
    return faults;
  }

  /** Queue index of this thread's last message (a blocked vCPU re-faults once it was read). */
  lastEnqueued = 0;

  enqueue(slot: number, page: number, vcpu: number): void {
    const ctl = this.ctl;
    const cap = this.queueEntries;
    const idx = Atomics.add(ctl, Q_TAIL, 1);
    this.lastEnqueued = idx;
    let slept = 0;
    for (;;) {
      const head = Atomics.load(ctl, Q_HEAD);
      if (((idx - head) | 0) < cap) break;
      this.park(vcpu);
      if (Atomics.wait(ctl, Q_HEAD, head, this.waitSliceMs) === 'timed-out' && ++slept > this.waitSlices) {
        throw fail('timeout', `fault queue full (${cap} entries) and nobody reads it`, 'ETIMEDOUT');
      }
    }
    const e = ENTRIES + (idx & (cap - 1)) * ENTRY_WORDS;
    ctl[e + 1] = slot;
    ctl[e + 2] = page;
    ctl[e + 3] = vcpu;
    Atomics.store(ctl, e, 1);
    Atomics.add(ctl, Q_PUB, 1);
    Atomics.notify(ctl, Q_PUB);
  }

  /**
   * Live plane: sleep until the page's uffd-wp bit is clear (`handle_userfault`).
   *
   * The reader may unprotect the page and a harvest re-protect it before this thread runs again
   * (two vCPUs faulted on the page, the reader answered both messages at once, and the other
   * vCPU's report was harvested and re-armed). In the kernel the woken thread retries the access
   * and faults anew; here, once the reader has taken this fault's message and the page is
   * protected again, the thread sends a new message, as the model plane's `block` does — or it
   * would wait for an answer that never comes.
   */
  waitUnprotected(vcpu: number, s: SlotState, page: number): void {
    const w = page >>> 5;
    const bit = 1 << (page & 31);
    const c = (vcpu + 1) * COUNTERS + 2;
    let timedOut = 0;
    // Whole wait slices (timed out, so counted like the timeout: in sleeps, not with a clock)
    // spent since this fault's message was seen taken. A reader unprotects right after reading
    // (a snapshot saves the page first), so only a page still protected {@link REFAULT_AFTER_MS}
    // after that was re-protected — answering it again then costs a duplicate message, never a
    // lost fault.
    let answeredSlices = 0;
    for (;;) {
      const v = Atomics.load(s.prot, w);
      // Unregistering wakes the faulter too: it then writes an unprotected page.
      if ((v & bit) === 0 || Atomics.load(s.ctl, S_ENABLED) === 0) return;
      const answered = ((Atomics.load(this.ctl, Q_HEAD) - this.lastEnqueued - 1) | 0) >= 0;
      if (answered && answeredSlices >= this.refaultSlices) {
        // Re-protected after the reader answered: fault again (a new message, a new fault).
        this.counters[c - 1] = (this.counters[c - 1] as number) + 1;
        this.enqueue(s.info.id, page, vcpu);
        answeredSlices = 0;
        continue;
      }
      // Out of guest mode before the sleep is counted: whoever sees `waits` rise sees it parked.
      this.park(vcpu);
      this.counters[c] = (this.counters[c] as number) + 1;
      if (Atomics.wait(s.prot, w, v, this.waitSliceMs) === 'timed-out') {
        if (answered) answeredSlices++;
        if (++timedOut > this.waitSlices) {
          throw fail(
            'timeout',
            `vCPU ${vcpu} blocked on page ${page} of slot ${s.info.id} for ${this.waitSlices * this.waitSliceMs} ms: nobody unprotected it`,
            'ETIMEDOUT',
          );
        }
      }
    }
  }

  sumCounter(k: number): number {
    let t = 0;
    for (let i = k; i < this.counters.length; i += COUNTERS) t += this.counters[i] as number;
    return t;
  }
}

/**
 * Creates a uffd-wp tracker (reference/kvm.md §7; invariant §10.12: a sync-WP writer never
 * proceeds before its page is unprotected; async-WP: a page is WRITTEN iff written since its
 * last (re)protect, and a scan with WP_MATCHING reports and re-protects atomically).
 *
 * WRITTEN is not a second bitmap: as in the kernel's pagemap walk, a registered page is WRITTEN
 * exactly when its uffd-wp bit is clear, so "written since the last (re)protect" holds by
 * construction and a scan's report-and-reprotect is one `Atomics.or` per 32-page word.
 *
 * As a {@link Tracker}: sync faults are reported to the sink by the faulting vCPU before its
 * store, and `syncDirtyLog` (which reporters call before every harvest) runs the uffd reader, so
 * worker vCPUs blocked on a fault are released by the next harvest when no snapshot serves them;
 * in async mode nothing is reported at write time and `syncDirtyLog` runs a WP_MATCHING scan
 * into the sink (what a harvest must call first, as with PML). `rearm` re-protects.
 *
 * Model plane: a sync fault cannot block the only thread, so the faulting `write` queues the
 * message and runs the uffd reader (the installed {@link UffdFaultHandler}, or a default that
 * just unprotects) before continuing; the vCPU's store retires when the reader wakes it
 * (`onResume`). A fault the reader leaves unresolved would block forever and throws.
 */
export function createUffdWpTracker(options: UffdWpTrackerOptions = {}): UffdWpTracker {
  const mode = options.mode ?? 'sync';
  if (mode !== 'sync' && mode !== 'async')
    throw fail('invalid-argument', `mode must be 'sync' or 'async', got ${String(mode)}`, 'EINVAL');
  const shared = options.shared ?? false;
  if (shared && typeof SharedArrayBuffer === 'undefined') {
    throw fail('unsupported', 'shared: SharedArrayBuffer is not available');
  }
  const queueEntries = options.queueEntries ?? 1024;
  if (!(
    Number.isInteger(queueEntries) &&
    queueEntries >= 1 &&
    (queueEntries & (queueEntries - 1)) === 0 &&
    queueEntries <= 1 << 20
  )) {
    throw fail('invalid-argument', `queueEntries must be a power of two in [1, 2^20], got ${queueEntries}`);
  }
  const maxVcpus = options.maxVcpus ?? 512;
  if (!(Number.isInteger(maxVcpus) && maxVcpus >= 1))
    throw fail('invalid-argument', `maxVcpus must be a positive integer, got ${maxVcpus}`);
  const waitTimeoutMs = options.waitTimeoutMs ?? 10_000;
  const waitSliceMs = options.waitSliceMs ?? 20;
  if (!(waitTimeoutMs > 0 && waitSliceMs > 0))
    throw fail('invalid-argument', 'waitTimeoutMs and waitSliceMs must be > 0');
  const alloc = (bytes: number): ArrayBufferLike =>
    shared ? new SharedArrayBuffer(bytes) : new ArrayBuffer(bytes);
  const control = alloc((ENTRIES + queueEntries * ENTRY_WORDS) * 4);
  const counters = alloc((maxVcpus + 1) * COUNTERS * 8);
  const guestBuffer = alloc((maxVcpus + 1) * G_WORDS * 4);
  const guest = new Int32Array(guestBuffer);
  const desc = {
    mode,
    queueEntries,
    maxVcpus,
    waitTimeoutMs,
    waitSliceMs,
    skipFaultWait: options.skipFaultWait ?? false,
  };
  const core = new Core(desc, control, counters, guestBuffer, false);
  const onResume = options.onResume;
  let shareTaken = false;
  let handler: UffdFaultHandler | undefined;
  let reported = 0;
  let rearmed = 0;
  let scans = 0;
  let flushWaits = 0;
  // The one vCPU blocked in a sync fault (model plane: a single thread).
  let bVcpu = -2;
  let bSlot = -1;
  let bPage = -1;
  let bIndex = -1;
  let bWoken = false;
  let scratch = new Uint32Array(256);

  const wakeBlocked = (slot: number, first: number, count: number): void => {
    if (bVcpu === -2 || bWoken || bSlot !== slot || bPage < first || bPage >= first + count) return;
    bWoken = true;
    const s = core.slots.get(slot) as SlotState;
    if ((Atomics.load(s.prot, bPage >>> 5) & (1 << (bPage & 31))) === 0)
      onResume?.(bVcpu, bSlot, bPage, bIndex);
  };

  const checkRange = (s: SlotState, first: number, count: number, op: string): void => {
    if (!(
      Number.isInteger(first) &&
      Number.isInteger(count) &&
      first >= 0 &&
      count >= 0 &&
      first + count <= s.info.pages
    )) {
      throw fail(
        'out-of-range',
        `${op}: pages [${first}, ${first + count}) are outside slot ${s.info.id} (${s.info.pages} pages)`,
        'EINVAL',
      );
    }
  };

  const defaultReader: UffdFaultHandler = (t) => {
    // A plain dirty-tracking reader: read each message, unprotect its page (which wakes the writer).
    for (;;) {
      const n = t.readFaults(scratch);
      if (n === 0) return;
      for (let k = 0; k < n; k++) t.unprotect(scratch[k * 4 + 1] as number, scratch[k * 4 + 2] as number, 1);
    }
  };

  // Model plane: run the reader until the blocked writer may proceed.
  core.block = (vcpu, s, page, index) => {
    bVcpu = vcpu;
    bSlot = s.info.id;
    bPage = page;
    bIndex = index;
    try {
      for (let attempt = 0; ; attempt++) {
        bWoken = false;
        (handler ?? defaultReader)(tracker);
        if (!bWoken) {
          throw fail(
            'invalid-state',
            `vCPU ${vcpu} faulted on page ${page} of slot ${s.info.id} and nobody woke it: in the model plane the uffd reader must unprotect (or wake) the page before it returns, or the writer would block forever`,
          );
        }
        if ((Atomics.load(s.prot, page >>> 5) & (1 << (page & 31))) === 0) return;
        if (attempt >= 16)
          throw fail(
            'internal',
            `vCPU ${vcpu} re-faulted 16 times on page ${page}: the reader wakes without unprotecting`,
          );
        core.enqueue(s.info.id, page, vcpu); // Woken while still protected: the write faults again.
      }
    } finally {
      bVcpu = -2;
    }
  };

  let readerRunning = false;
  /** The uffd reader on this thread's event loop: wakes on every published message. */
  const startEventLoopReader = (): void => {
    if (readerRunning) return;
    readerRunning = true;
    const waitAsync = (Atomics as unknown as { waitAsync: WaitAsync }).waitAsync;
    const loop = async (): Promise<void> => {
      for (;;) {
        const seen = Atomics.load(core.ctl, Q_PUB);
        (handler ?? defaultReader)(tracker);
        const r = waitAsync(core.ctl, Q_PUB, seen);
        if (r.async) await r.value;
      }
    };
    void loop();
  };

  /**
   * The remote TLB flush that follows a re-protect (`kvm_flush_remote_tlbs`, or the flush at the
   * end of `UFFDIO_WRITEPROTECT` and of a WP_MATCHING `PAGEMAP_SCAN`): returns once every worker
   * vCPU in guest mode has begun a new `write`, so no store let through before the re-protect is
   * still in flight. Without it, a page reported WRITTEN and copied right after its scan could
   * take a store that `write` had already let through, and no later scan would see it. vCPUs out
   * of guest mode (paused, sleeping, blocked in a fault) are not waited for, as in KVM.
   */
  const flushRemote = (): void => {
    if (!shared) return;
    const epoch = (Atomics.add(core.ctl, Q_EPOCH, 1) + 1) | 0;
    let waitedOnce = false;
    for (let k = 0; k < guest.length; k += G_WORDS) {
      let waitedMs = 0;
      for (;;) {
        if (Atomics.load(guest, k) !== G_IN) break;
        const seen = Atomics.load(guest, k + 1);
        if (((seen - epoch) | 0) >= 0) break;
        if (waitedMs >= waitTimeoutMs) {
          throw fail(
            'timeout',
            `TLB flush: vCPU ${k / G_WORDS - 1} stayed in guest mode for ${waitTimeoutMs} ms without starting another write (a vCPU thread that stops writing must call exitGuest)`,
            'ETIMEDOUT',
          );
        }
        waitedOnce = true;
        Atomics.wait(guest, k + 1, seen, 1);
        waitedMs += 1;
      }
    }
    if (waitedOnce) flushWaits++;
  };

  /** `PAGEMAP_SCAN`; `flush`: flush after re-protecting (a caller scanning in chunks flushes once). */
  const scan = (req: PagemapScanRequest, flush: boolean): PagemapScanResult => {
    if (req.checkWpAsync === true && mode !== 'async') {
      throw fail(
        'invalid-state',
        'pagemapScan: PM_SCAN_CHECK_WPASYNC on a range not registered with WP_ASYNC',
        'EPERM',
      );
    }
    const s = core.slot(req.slot, 'pagemapScan');
    const start = req.start ?? 0;
    const end = req.end ?? s.info.pages;
    checkRange(s, start, end - start, 'pagemapScan');
    const out = req.out;
    const max = Math.min(out.length, req.maxPages ?? out.length);
    if (!(max > 0)) throw fail('invalid-argument', 'pagemapScan: out (or maxPages) has no room', 'EINVAL');
    scans++;
    const prot = s.prot;
    const wp = req.wpMatching === true;
    let n = 0;
    let reprotected = 0;
    let walkEnd = end;
    let p = start;
    while (p < end) {
      const w = p >>> 5;
      const lo = p & 31;
      const hi = Math.min(32, lo + (end - p));
      const range = hi - lo === 32 ? -1 : (((1 << (hi - lo)) - 1) << lo) | 0;
      let written = ~Atomics.load(prot, w) & range;
      if (written !== 0) {
        // Only what fits in `out` is reported, so only that may be re-protected.
        let take = written;
        let room = max - n;
        let keep = 0;
        while (take !== 0 && room > 0) {
          const low = take & -take;
          keep |= low;
          take ^= low;
          room--;
        }
        if (wp) {
          written = keep & ~Atomics.or(prot, w, keep); // Report exactly what this OR re-protected.
          reprotected += popcount32(written);
        } else written = keep;
        while (written !== 0) {
          const low = written & -written;
          out[n++] = w * 32 + (31 - Math.clz32(low));
          written ^= low;
        }
        if (take !== 0) {
          walkEnd = w * 32 + (31 - Math.clz32(take & -take));
          break;
        }
      }
      p += hi - lo;
    }
    if (flush && reprotected > 0) flushRemote();
    return { count: n, walkEnd };
  };

  const changeProtection = (
    slot: number,
    first: number,
    count: number,
    protect: boolean,
    wake: boolean,
    op: string,
  ): number => {
    const s = core.slot(slot, op);
    checkRange(s, first, count, op);
    let changed = 0;
    const prot = s.prot;
    forEachWord(first, count, (w, mask) => {
      if (protect) {
        changed += popcount32(mask & ~Atomics.or(prot, w, mask));
      } else {
        const old = Atomics.and(prot, w, ~mask);
        changed += popcount32(old & mask);
        // Waiters sleep on the word; each re-checks its own bit.
        if (wake && shared) Atomics.notify(prot, w);
      }
    });
    if (!protect && wake) wakeBlocked(slot, first, count);
    return changed;
  };

  for (const info of options.slots ?? []) {
    if (!(Number.isInteger(info.pages) && info.pages > 0)) {
      throw fail('invalid-argument', `slots: slot ${info.id} has ${info.pages} pages`, 'EINVAL');
    }
    core.slots.set(info.id, allocSlotState(info, shared));
  }

  const tracker: UffdWpTracker = {
    kind: 'uffd-wp',
    mode,
    attach(sink) {
      core.sink = sink;
    },
    register(info) {
      const existing = core.slots.get(info.id);
      if (existing !== undefined && Atomics.load(existing.ctl, S_ENABLED) !== 0) {
        throw fail('invalid-state', `register: slot ${info.id} is already registered`, 'EBUSY');
      }
      if (!(Number.isInteger(info.pages) && info.pages > 0)) {
        throw fail('invalid-argument', `register: slot ${info.id} has ${info.pages} pages`, 'EINVAL');
      }
      let s = existing;
      if (s !== undefined && s.info.pages !== info.pages) {
        if (shareTaken)
          throw fail(
            'invalid-state',
            `register: slot ${info.id} changed size after share(); workers hold the old state`,
          );
        s = undefined;
      }
      if (s === undefined) {
        if (shareTaken) {
          throw fail(
            'invalid-state',
            `register: slot ${info.id} registered after share(): attached workers would not trap it`,
          );
        }
        s = allocSlotState(info, shared);
        core.slots.set(info.id, s);
      }
      s.bitmap.clearAll(); // Registering protects nothing yet (UFFDIO_WRITEPROTECT does).
      Atomics.store(s.ctl, S_ENABLED, 1);
    },
    registered(slot) {
      const s = core.slots.get(slot);
      return s !== undefined && Atomics.load(s.ctl, S_ENABLED) !== 0;
    },
    enableLogging(info) {
      // UFFDIO_REGISTER_MODE_WP, then protect the whole slot (ram_write_tracking_start).
      tracker.register(info);
      return tracker.protect(info.id, 0, info.pages);
    },
    disableLogging(id) {
      const s = core.slots.get(id);
      if (s === undefined) return;
      // UFFDIO_UNREGISTER drops uffd-wp and wakes every blocked faulter.
      Atomics.store(s.ctl, S_ENABLED, 0);
      changeProtection(id, 0, s.info.pages, false, true, 'disableLogging');
    },
    write(vcpu, slot, offsets, count) {
      return core.write(vcpu, slot, offsets, count);
    },
    rearm(slot, mask, touched) {
      const s = core.slot(slot, 'rearm');
      if (mask.bits !== s.info.pages)
        throw fail(
          'invalid-argument',
          `rearm: mask covers ${mask.bits} pages, slot ${slot} has ${s.info.pages}`,
        );
      const m = mask.words;
      let n = 0;
      const one = (i: number): void => {
        const w = m[i] as number;
        if (w !== 0) n += popcount32(w & ~Atomics.or(s.prot, i, w | 0));
      };
      if (touched === undefined) for (let i = 0; i < m.length; i++) one(i);
      else for (let k = 0; k < touched.count; k++) one(touched.words[k] as number);
      rearmed += n;
      if (n > 0) flushRemote();
      return n;
    },
    syncDirtyLog(slot) {
      if (mode === 'sync') {
        // Sync faults were reported at fault time; a harvest only runs the reader, so vCPUs of
        // the live plane blocked on a fault are released at the latest by the next harvest.
        (handler ?? defaultReader)(tracker);
        return;
      }
      const ids = slot === undefined ? [...core.slots.keys()] : [slot];
      for (const id of ids) {
        const s = core.slots.get(id);
        if (s === undefined || Atomics.load(s.ctl, S_ENABLED) === 0) continue;
        if (scratch.length < 4096) scratch = new Uint32Array(4096);
        let start = 0;
        let found = 0;
        while (start < s.info.pages) {
          // One flush for the whole slot, after its last chunk and before the caller reads pages.
          const r = scan({ slot: id, start, wpMatching: true, out: scratch }, false);
          if (r.count > 0) {
            if (core.sink === undefined) throw fail('invalid-state', 'syncDirtyLog: no sink attached');
            core.sink.markDirty(id, scratch, r.count, -1);
            reported += r.count;
            found += r.count;
          }
          start = r.walkEnd;
        }
        if (found > 0) flushRemote();
      }
    },
    protect(slot, first, count) {
      const n = changeProtection(slot, first, count, true, false, 'protect');
      if (n > 0) flushRemote();
      return n;
    },
    unprotect(slot, first, count, m = 0) {
      return changeProtection(
        slot,
        first,
        count,
        false,
        (m & UFFDIO_WRITEPROTECT_MODE.DONTWAKE) === 0,
        'unprotect',
      );
    },
    writeProtect(slot, first, count, m) {
      if ((m & ~3) !== 0 || m === 3)
        throw fail(
          'invalid-argument',
          `writeProtect: mode ${m} (WP and DONTWAKE together are invalid)`,
          'EINVAL',
        );
      return (m & UFFDIO_WRITEPROTECT_MODE.WP) !== 0
        ? tracker.protect(slot, first, count)
        : tracker.unprotect(slot, first, count, m);
    },
    wake(slot, first, count) {
      const s = core.slot(slot, 'wake');
      checkRange(s, first, count, 'wake');
      if (shared) forEachWord(first, count, (w) => Atomics.notify(s.prot, w));
      wakeBlocked(slot, first, count);
    },
    isProtected(slot, page) {
      const s = core.slot(slot, 'isProtected');
      checkRange(s, page, 1, 'isProtected');
      return (Atomics.load(s.prot, page >>> 5) & (1 << (page & 31))) !== 0;
    },
    protection(slot) {
      return core.slot(slot, 'protection').bitmap;
    },
    readFaults(out) {
      const ctl = core.ctl;
      const cap = queueEntries;
      const max = out.length >>> 2;
      let n = 0;
      while (n < max) {
        const head = Atomics.load(ctl, Q_HEAD);
        const e = ENTRIES + (head & (cap - 1)) * ENTRY_WORDS;
        if (Atomics.load(ctl, e) === 0) break; // Reserved but not yet published, or empty.
        out[n * 4] = UFFD_PAGEFAULT_FLAG.WRITE | UFFD_PAGEFAULT_FLAG.WP;
        out[n * 4 + 1] = ctl[e + 1] as number;
        out[n * 4 + 2] = ctl[e + 2] as number;
        out[n * 4 + 3] = ctl[e + 3] as number;
        Atomics.store(ctl, e, 0);
        Atomics.add(ctl, Q_HEAD, 1);
        if (shared) Atomics.notify(ctl, Q_HEAD);
        n++;
      }
      if (n > 0) Atomics.add(ctl, Q_READ, n);
      return n;
    },
    read(buf) {
      const max = Math.floor(buf.byteLength / UFFD_MSG_BYTES);
      if (scratch.length < max * 4) scratch = new Uint32Array(max * 4);
      const n = tracker.readFaults(scratch.subarray(0, max * 4));
      const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
      for (let k = 0; k < n; k++) {
        const o = k * UFFD_MSG_BYTES;
        const s = core.slots.get(scratch[k * 4 + 1] as number);
        const gfn = (s?.info.baseGfn ?? 0) + (scratch[k * 4 + 2] as number);
        buf.fill(0, o, o + UFFD_MSG_BYTES);
        view.setUint8(o, UFFD_EVENT_PAGEFAULT);
        view.setBigUint64(o + 8, BigInt(scratch[k * 4] as number), true);
        view.setBigUint64(o + 16, BigInt(gfn) * BigInt(PAGE_SIZE), true);
        view.setUint32(o + 24, scratch[k * 4 + 3] as number, true);
      }
      return n * UFFD_MSG_BYTES;
    },
    pendingFaults() {
      return (Atomics.load(core.ctl, Q_TAIL) - Atomics.load(core.ctl, Q_HEAD)) | 0;
    },
    pagemapScan(req) {
      return scan(req, true);
    },
    setFaultHandler(h) {
      handler = h;
    },
    slotInfo(slot) {
      return core.slot(slot, 'slotInfo').info;
    },
    descriptor() {
      if (!shared)
        throw fail(
          'invalid-state',
          'descriptor: create the tracker with shared: true to share it with workers',
        );
      shareTaken = true;
      return {
        ...desc,
        control: control as SharedArrayBuffer,
        counters: counters as SharedArrayBuffer,
        guest: guestBuffer as SharedArrayBuffer,
        slots: [...core.slots.values()].map((s) => ({ info: s.info, state: s.buffer as SharedArrayBuffer })),
      };
    },
    share() {
      const data = tracker.descriptor();
      if (mode === 'sync' && (options.reader ?? 'event-loop') === 'event-loop') startEventLoopReader();
      return { module: '@dirtytrack/trackers', factory: 'attachUffdWpTracker', data };
    },
    stats() {
      return {
        writes: core.sumCounter(0),
        faults: core.sumCounter(1),
        reported: reported + (mode === 'sync' ? core.sumCounter(1) : 0),
        rearmed,
        messages: Atomics.load(core.ctl, Q_TAIL),
        messagesRead: Atomics.load(core.ctl, Q_READ),
        scans,
        waits: core.sumCounter(2),
        flushWaits,
      };
    },
    vcpuCostNs(costs: CostModel) {
      // Sync: an exit to the uffd reader and back (slow path) plus the page copy the vCPU waits
      // for. Async: the kernel clears uffd-wp in the fault handler, a fast fault.
      const f = core.sumCounter(1);
      return mode === 'sync' ? f * (costs.slowFaultNs + costs.pageSendCopyNs) : f * costs.writeFaultNs;
    },
  };
  return tracker;
}

/**
 * The worker side of a shared uffd-wp tracker — the AttachSpec factory
 * (`{ module: '@dirtytrack/trackers', factory: 'attachUffdWpTracker' }`). Its `write` returns
 * only when every store of the batch may proceed: a sync fault queues its message, reports the
 * page to the sink and sleeps on the page's uffd-wp word until the reader unprotects it.
 */
export function attachUffdWpTracker(data: unknown): VcpuTracker {
  const d = data as UffdWpDescriptor;
  if (
    typeof d !== 'object' ||
    d === null ||
    !(d.control instanceof SharedArrayBuffer) ||
    !(d.guest instanceof SharedArrayBuffer) ||
    !Array.isArray(d.slots)
  ) {
    throw fail(
      'invalid-argument',
      'attachUffdWpTracker: data is not a uffd-wp descriptor (use tracker.share().data)',
    );
  }
  const core = new Core(d, d.control, d.counters, d.guest, true);
  for (const s of d.slots) core.slots.set(s.info.id, makeSlotState(s.info, s.state));
  return {
    attach(sink) {
      core.sink = sink;
    },
    write(vcpu, slot, offsets, count) {
      return core.write(vcpu, slot, offsets, count);
    },
    enterGuest(vcpu) {
      core.counterBase(vcpu);
      core.enterGuest(vcpu);
    },
    exitGuest(vcpu) {
      core.counterBase(vcpu);
      core.exitGuest(vcpu);
    },
  };
}

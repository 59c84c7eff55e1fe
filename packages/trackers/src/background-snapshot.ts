import { Bitmap, DirtytrackError, PAGE_SIZE, type CostModel, type MemslotInfo } from '@dirtytrack/core';
import type { UffdWpTracker } from './uffd-wp-tracker.js';

export interface BackgroundSnapshotOptions {
  /** The uffd-wp tracker guarding the guest's RAM (its mode picks the algorithm). */
  readonly tracker: UffdWpTracker;
  /** The RAM being snapshotted (one memslot / RAMBlock). Registered by `start` if it is not yet. */
  readonly slot: MemslotInfo;
  /** The slot's guest memory: `slot.pages × pageSize` bytes (a `SharedArrayBuffer` view in the live plane). */
  readonly memory: Uint8Array;
  /** Where the image goes (same size as `memory`). Default: a new buffer. */
  readonly image?: Uint8Array;
  /** Bytes per page. Default 4096. */
  readonly pageSize?: number;
  /** Keep the saved-page bitmap in a `SharedArrayBuffer` (worker vCPUs can check it). Default false. */
  readonly shared?: boolean;
  /**
   * Debug, for negative controls only: unprotect a faulted page (waking its writer) *before*
   * saving it — the ordering bug that lets the guest's new data into the snapshot.
   */
  readonly unprotectBeforeSave?: boolean;
}

export interface BackgroundSnapshotStats {
  readonly pages: number;
  /** Pages saved because a vCPU faulted on them (sync) — `poll_fault_page`. */
  readonly savedByFault: number;
  /** Pages saved by the linear sweep (sync), or copies made by sweeps (async). */
  readonly savedBySweep: number;
  /** Fault messages read. */
  readonly faultMessages: number;
  /** Fault messages for pages already saved (a second vCPU, or a fault raced the sweep). */
  readonly duplicateFaults: number;
  /** Async: PAGEMAP_SCAN rounds after the first full copy. */
  readonly scans: number;
  /** Async: pages copied again because a scan found them WRITTEN. */
  readonly recopied: number;
}

/**
 * QEMU's background snapshot (reference/qemu.md §5) over a {@link UffdWpTracker}.
 *
 * Sync mode (what QEMU does): `start` protects all RAM (the VM is stopped meanwhile); each
 * `step` first serves pending write faults — save the faulted page's content, *then* unprotect
 * it, which wakes the vCPU — and otherwise sweeps pages in order, unprotecting each run of pages
 * right after saving it. A page is saved only while protected, so the image holds every page
 * exactly once with its content at `start`, while the guest keeps running.
 *
 * Async mode (WP_ASYNC cannot keep old content: the kernel lets the store through): the same
 * driver makes a *converging* image instead — copy every page once, then repeatedly
 * `PAGEMAP_SCAN` with WP_MATCHING (re-protect before reading, kvm.md §10.3) and copy what was
 * WRITTEN; `finish()`, called with the guest paused, does the last scan and copy, so the image
 * equals memory at `finish`, as precopy's stop-and-copy does. Pages may be copied several times.
 */
export interface BackgroundSnapshot {
  readonly mode: 'sync' | 'async';
  /** The snapshot image (`slot.pages × pageSize` bytes). */
  readonly image: Uint8Array;
  /** Pages saved so far (1 = in the image). Sync: the worker-visible "saved" flags. */
  readonly saved: Bitmap;
  /** How many times each page was saved (sync: exactly 1 each when done). */
  readonly saveCounts: Uint8Array;
  /** Sync: every page saved. Async: `finish` ran. */
  readonly done: boolean;
  /** `ram_write_tracking_start`: protect all of the slot and start serving faults. */
  start(): void;
  /** Serves every queued fault message (sync). Returns pages saved. */
  serviceFaults(): number;
  /** Faults first, then up to `maxPages` pages of the sweep. Returns pages saved. */
  step(maxPages?: number): number;
  /** Sync: steps until every page is saved. Async: copies until a scan finds nothing written (or `maxRounds`). */
  run(maxRounds?: number): BackgroundSnapshotStats;
  /** Async, guest paused: the final scan and copy. Sync: drains stale messages and stops. */
  finish(): BackgroundSnapshotStats;
  stats(): BackgroundSnapshotStats;
  /**
   * Migration-thread time the snapshot has cost so far, priced by `costs` (ns), for the model
   * plane: protecting the slot at start (`enableLoggingNsPerPage` per page), one page copy per
   * save or re-copy (`pageSendCopyNs`), reading a fault message (`ringEntryNs`), and per scan a
   * read of every 64-page word (`bitmapCopyNsPerWord`) plus re-protecting what it reported
   * (`rearmNsPerPage`). Estimates built from the cost model's documented entries.
   */
  costNs(costs: CostModel): number;
}

const COMPONENT = 'background-snapshot';

export function createBackgroundSnapshot(options: BackgroundSnapshotOptions): BackgroundSnapshot {
  const { tracker, slot, memory } = options;
  const pageSize = options.pageSize ?? PAGE_SIZE;
  const pages = slot.pages;
  const bytes = pages * pageSize;
  if (!(Number.isInteger(pageSize) && pageSize > 0)) {
    throw new DirtytrackError('invalid-argument', `pageSize must be a positive integer, got ${pageSize}`, {
      component: COMPONENT,
    });
  }
  if (memory.byteLength !== bytes) {
    throw new DirtytrackError(
      'invalid-argument',
      `memory has ${memory.byteLength} bytes, slot ${slot.id} needs ${pages} × ${pageSize} = ${bytes}`,
      { component: COMPONENT },
    );
  }
  const image = options.image ?? new Uint8Array(bytes);
  if (image.byteLength !== bytes) {
    throw new DirtytrackError('invalid-argument', `image has ${image.byteLength} bytes, needs ${bytes}`, {
      component: COMPONENT,
    });
  }
  const mode = tracker.mode;
  const saved = Bitmap.create(pages, { shared: options.shared ?? false });
  const savedWords = new Int32Array(saved.buffer, 0, saved.words.length);
  const saveCounts = new Uint8Array(pages);
  // Async: pages still to copy this round (1 = copy).
  const pending = Bitmap.create(pages);
  const unprotectFirst = options.unprotectBeforeSave ?? false;
  const msgs = new Uint32Array(64 * 4);
  let scanOut = new Uint32Array(0);
  let started = false;
  let done = false;
  let cursor = 0; // sweep position (page)
  let savedCount = 0;
  let savedByFault = 0;
  let savedBySweep = 0;
  let faultMessages = 0;
  let duplicateFaults = 0;
  let scans = 0;
  let recopied = 0;

  const copy = (first: number, count: number): void => {
    image.set(memory.subarray(first * pageSize, (first + count) * pageSize), first * pageSize);
    for (let p = first; p < first + count; p++) saveCounts[p] = Math.min(255, (saveCounts[p] as number) + 1);
  };

  /** Sync: save pages [first, first+count) (all protected, none saved yet), then unprotect them. */
  const saveThenUnprotect = (first: number, count: number): void => {
    if (unprotectFirst) tracker.unprotect(slot.id, first, count);
    copy(first, count);
    // Publish "saved" before the unprotect that lets a writer through (both seq-cst).
    for (let p = first; p < first + count; p++) Atomics.or(savedWords, p >>> 5, 1 << (p & 31));
    savedCount += count;
    if (!unprotectFirst) tracker.unprotect(slot.id, first, count);
  };

  const requireStarted = (op: string): void => {
    if (!started) {
      throw new DirtytrackError('invalid-state', `${op}: call start() first`, { component: COMPONENT });
    }
  };

  const serviceFaults = (): number => {
    if (mode !== 'sync' || !started) return 0;
    let n = 0;
    for (;;) {
      const got = tracker.readFaults(msgs);
      if (got === 0) return n;
      faultMessages += got;
      for (let k = 0; k < got; k++) {
        if ((msgs[k * 4 + 1] as number) !== slot.id) continue; // Another block's fault: not ours to serve.
        const p = msgs[k * 4 + 2] as number;
        if ((Atomics.load(savedWords, p >>> 5) & (1 << (p & 31))) !== 0) {
          // Already saved (and unprotected right after); the wake is harmless.
          duplicateFaults++;
          tracker.unprotect(slot.id, p, 1);
          continue;
        }
        saveThenUnprotect(p, 1);
        savedByFault++;
        n++;
      }
    }
  };

  /** Sync sweep: save up to `max` unsaved pages in order, one run per 32-page word at a time. */
  const sweep = (max: number): number => {
    let n = 0;
    while (n < max && cursor < pages) {
      const w = cursor >>> 5;
      const lo = cursor & 31;
      const hi = Math.min(32, pages - w * 32);
      const inWord = ((hi === 32 ? -1 : (1 << hi) - 1) & ~((1 << lo) - 1)) | 0;
      const unsaved = ~Atomics.load(savedWords, w) & inWord;
      if (unsaved === 0) {
        cursor = w * 32 + hi;
        continue;
      }
      // The first run of consecutive unsaved pages in this word, capped by what is left of max.
      const start = 31 - Math.clz32(unsaved & -unsaved);
      let end = start;
      while (end < hi && (unsaved & (1 << end)) !== 0 && n + (end - start) < max) end++;
      saveThenUnprotect(w * 32 + start, end - start);
      savedBySweep += end - start;
      n += end - start;
      cursor = w * 32 + end;
    }
    return n;
  };

  /** Async: copy up to `max` pages of `pending` (each was re-protected before this copy). */
  const copyPending = (max: number): number => {
    let n = 0;
    while (n < max) {
      const p = pending.findNextSet(cursor);
      if (p < 0) {
        cursor = pages;
        break;
      }
      pending.clear(p);
      copy(p, 1);
      if ((Atomics.or(savedWords, p >>> 5, 1 << (p & 31)) & (1 << (p & 31))) === 0) {
        savedCount++;
        savedBySweep++;
      } else {
        recopied++;
      }
      cursor = p + 1;
      n++;
    }
    return n;
  };

  /** Async: PAGEMAP_SCAN with WP_MATCHING over the slot into `pending`. Returns pages found. */
  const scan = (): number => {
    if (scanOut.length === 0) scanOut = new Uint32Array(Math.min(pages, 65536));
    let found = 0;
    let start = 0;
    scans++;
    while (start < pages) {
      const r = tracker.pagemapScan({ slot: slot.id, start, wpMatching: true, out: scanOut });
      for (let i = 0; i < r.count; i++) pending.set(scanOut[i] as number);
      found += r.count;
      start = r.walkEnd;
    }
    cursor = 0;
    return found;
  };

  const stats = (): BackgroundSnapshotStats => ({
    pages,
    savedByFault,
    savedBySweep,
    faultMessages,
    duplicateFaults,
    scans,
    recopied,
  });

  const snap: BackgroundSnapshot = {
    mode,
    image,
    saved,
    saveCounts,
    get done() {
      return done;
    },
    start() {
      if (started) {
        throw new DirtytrackError('invalid-state', 'start: the snapshot already started', {
          component: COMPONENT,
        });
      }
      started = true;
      if (!tracker.registered(slot.id)) tracker.register(slot);
      if (mode === 'sync') tracker.setFaultHandler(() => void serviceFaults());
      tracker.protect(slot.id, 0, pages);
      if (mode === 'async') pending.setAll();
    },
    serviceFaults() {
      requireStarted('serviceFaults');
      return serviceFaults();
    },
    step(maxPages = 256) {
      requireStarted('step');
      if (done) return 0;
      if (mode === 'sync') {
        let n = serviceFaults(); // poll_fault_page first, then the linear search
        n += sweep(maxPages);
        if (savedCount === pages) snap.finish();
        return n;
      }
      if (cursor >= pages) scan();
      return copyPending(maxPages);
    },
    run(maxRounds = 16) {
      requireStarted('run');
      if (mode === 'sync') {
        while (!done) snap.step(1024);
        return stats();
      }
      for (let round = 0; round < maxRounds; round++) {
        while (copyPending(4096) > 0);
        if (scan() === 0) break;
      }
      return stats();
    },
    finish() {
      requireStarted('finish');
      if (mode === 'sync') {
        if (savedCount !== pages) {
          throw new DirtytrackError(
            'invalid-state',
            `finish: ${pages - savedCount} pages are not saved yet`,
            {
              component: COMPONENT,
            },
          );
        }
        serviceFaults(); // Stale messages of writers the sweep already released.
        tracker.setFaultHandler(undefined);
      } else if (!done) {
        // The guest is paused: nothing writes between this scan and the copy.
        while (copyPending(4096) > 0);
        scan();
        while (copyPending(4096) > 0);
        tracker.unprotect(slot.id, 0, pages);
      }
      done = true;
      return stats();
    },
    stats,
    costNs(costs) {
      const copies = savedByFault + savedBySweep + recopied;
      return (
        (started ? pages * costs.enableLoggingNsPerPage : 0) +
        copies * costs.pageSendCopyNs +
        faultMessages * costs.ringEntryNs +
        scans * Math.ceil(pages / 64) * costs.bitmapCopyNsPerWord +
        recopied * costs.rearmNsPerPage
      );
    },
  };
  return snap;
}

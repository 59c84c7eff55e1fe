import {
  DirtytrackError,
  popcount32,
  type AttachSpec,
  type DirtySink,
  type VcpuTracker,
} from '@dirtytrack/core';
import { pageHashes } from './wire.js';

/**
 * The destination's side of live postcopy — QEMU's userfaultfd MISSING faults, in software.
 *
 * Once POSTCOPY_RUN arrives the guest runs on the destination while its memory is still coming
 * in. Its vCPUs write through {@link createPostcopyFaults}' tracker: a write to a page the
 * destination has not received yet blocks that vCPU (a missing-page fault), asks for the page
 * once (the first vCPU to fault on it puts it in the request ring; the destination's main thread
 * sends REQ_PAGES on the return path) and waits until the page is placed — its bytes written,
 * then its bit set in `received` and the waiters notified, as UFFDIO_COPY places a page
 * atomically. A write to a received page goes straight through.
 *
 * It also keeps what verification needs: the pages the destination's guest wrote after the switch
 * and, for each, the first word as it was before the first such write (the live vCPUs store only
 * into a page's first word), so the destination can compare every byte of every page with the
 * source's frozen copy (see {@link pageHashBefore}).
 *
 * Blocktime is QEMU's (`postcopy-blocktime`, `postcopy-vcpu-blocktime`): per vCPU the time spent
 * waiting for pages, and overall the time during which every vCPU was waiting.
 */

const COMPONENT = 'postcopy';

/** Control words (Int32): ring head, abort flag, vCPUs blocked now. */
const CTL = { HEAD: 0, ABORT: 1, BLOCKED: 2, WORDS: 4 } as const;
/** Request ring slots: page + 1 (0 = empty). More than the vCPUs could ever have outstanding. */
export const REQUEST_RING_SLOTS = 4096;
/** Longest a faulting vCPU sleeps before it looks at the abort flag again (ms). */
const WAIT_SLICE_MS = 50;

/** What the vCPU workers and the destination share (every field survives `postMessage`). */
export interface PostcopyFaultData {
  readonly pages: number;
  readonly vcpus: number;
  /** Int32 words, bit p = page p is in place. */
  readonly received: SharedArrayBuffer;
  /** Int32 words, bit p = page p was requested. */
  readonly requested: SharedArrayBuffer;
  /** Int32 words, bit p = a vCPU claimed page p's first write (it saves the first word). */
  readonly claimed: SharedArrayBuffer;
  /** Int32 words, bit p = page p was written by the destination's guest (`before[p]` is set). */
  readonly written: SharedArrayBuffer;
  /** Int32 per page: its first word before the destination's guest first wrote it. */
  readonly before: SharedArrayBuffer;
  /** {@link CTL} words, then {@link REQUEST_RING_SLOTS} ring slots. */
  readonly control: SharedArrayBuffer;
  /**
   * Float64 per vCPU: ms blocked; then 2 more: ms all were blocked, when that began (ms). Sized
   * for `vcpus` (see {@link PostcopyFaults.setVcpus}).
   */
  readonly blocktime: SharedArrayBuffer;
  readonly memory: SharedArrayBuffer;
}

export interface PostcopyFaults {
  readonly data: PostcopyFaultData;
  /** The tracker the destination's live guest writes through (only `share` is used). */
  readonly tracker: { share(): AttachSpec };
  /** A sink that drops everything: the destination does not log dirty pages. */
  readonly sink: { share(): AttachSpec };
  /** Bit p of word p >>> 5: page p is in place (the destination sets these). */
  readonly received: Int32Array;
  /** Page `page` is in place: its bit is set and any vCPU waiting for it runs on. */
  place(page: number): void;
  /** Requests the vCPUs made since the last call, in order (each page at most once). */
  takeRequests(into: (page: number) => void): number;
  /** Pages requested and not yet received (to ask again after a recovery). */
  outstanding(into: (page: number) => void): void;
  /** Wakes every waiting vCPU with an error: the migration failed, the guest is lost. */
  abort(): void;
  /**
   * Re-sizes the blocktime counters for a guest of `vcpus` vCPUs (`data.vcpus` becomes it): the
   * destination learns the source's count from VCPU_STATE, after the HELLO made these. Only
   * before any vCPU attached (before POSTCOPY_RUN); throws after.
   */
  setVcpus(vcpus: number): void;
  /** Resolves when a request is waiting in the ring (or at once if one is). */
  whenRequested(): Promise<void>;
  /** Pages written by the destination's guest since the switch. */
  writtenPages(): number;
  /** QEMU's `postcopy-blocktime` (ms all vCPUs were blocked) and `postcopy-vcpu-blocktime`. */
  blocktime(): { 'postcopy-blocktime': number; 'postcopy-vcpu-blocktime': number[] };
  /**
   * Page `page`'s hash as the source must have it (into `out[at]`, `out[at+1]`), reading its first
   * word from `before` if the destination's guest wrote the page.
   */
  hashAsSent(page: number, out: Uint32Array, at: number): void;
}

/**
 * The shared state of a destination's postcopy over the first `ramBytes` of `memory` (all of it
 * by default; a record RAM's buffer goes on past its RAM), for a guest of `vcpus` vCPUs.
 */
export function createPostcopyFaults(
  memory: SharedArrayBuffer,
  vcpusAtFirst: number,
  ramBytes = memory.byteLength,
): PostcopyFaults {
  let vcpus = vcpusAtFirst;
  const pages = ramBytes / 4096;
  if (!Number.isInteger(pages) || pages === 0 || ramBytes > memory.byteLength) {
    throw new DirtytrackError(
      'invalid-argument',
      `memory: ${ramBytes} bytes is not whole pages of the buffer`,
      {
        component: COMPONENT,
        field: 'memory',
      },
    );
  }
  checkVcpus(vcpus);
  const words = Math.ceil(pages / 32);
  const bits = () => new SharedArrayBuffer(words * 4);
  const data: { -readonly [K in keyof PostcopyFaultData]: PostcopyFaultData[K] } = {
    pages,
    vcpus,
    received: bits(),
    requested: bits(),
    claimed: bits(),
    written: bits(),
    before: new SharedArrayBuffer(pages * 4),
    control: new SharedArrayBuffer((CTL.WORDS + REQUEST_RING_SLOTS) * 4),
    blocktime: new SharedArrayBuffer((vcpus + 2) * 8),
    memory,
  };
  const received = new Int32Array(data.received);
  const requested = new Int32Array(data.requested);
  const written = new Int32Array(data.written);
  const before = new Int32Array(data.before);
  const control = new Int32Array(data.control);
  let times = new Float64Array(data.blocktime);
  let tail = 0;
  let shared = false;
  const scratch = new Uint32Array(1024);

  return {
    data,
    tracker: {
      share: () => {
        shared = true; // a vCPU attaches with these counters: their size is fixed from here
        return { module: '@dirtytrack/migration', factory: 'attachPostcopyFaults', data };
      },
    },
    sink: { share: () => ({ module: '@dirtytrack/migration', factory: 'attachDiscardSink', data: null }) },
    received,
    place(page) {
      const w = page >>> 5;
      Atomics.or(received, w, 1 << (page & 31));
      Atomics.notify(received, w);
    },
    takeRequests(into) {
      let n = 0;
      for (;;) {
        const at = CTL.WORDS + (tail % REQUEST_RING_SLOTS);
        const v = Atomics.load(control, at);
        if (v === 0) return n;
        Atomics.store(control, at, 0);
        tail++;
        n++;
        into(v - 1);
      }
    },
    outstanding(into) {
      for (let w = 0; w < words; w++) {
        let rest = (Atomics.load(requested, w) & ~Atomics.load(received, w)) >>> 0;
        while (rest !== 0) {
          const bit = rest & -rest;
          rest = (rest ^ bit) >>> 0;
          into(w * 32 + 31 - Math.clz32(bit));
        }
      }
    },
    setVcpus(n) {
      checkVcpus(n);
      if (shared) {
        throw new DirtytrackError('invalid-state', `setVcpus(${n}): vCPUs already attached with ${vcpus}`, {
          component: COMPONENT,
          field: 'vcpus',
        });
      }
      vcpus = n;
      data.vcpus = n;
      data.blocktime = new SharedArrayBuffer((n + 2) * 8);
      times = new Float64Array(data.blocktime);
    },
    abort() {
      Atomics.store(control, CTL.ABORT, 1);
      for (let w = 0; w < words; w++) Atomics.notify(received, w);
    },
    async whenRequested() {
      for (;;) {
        if (Atomics.load(control, CTL.WORDS + (tail % REQUEST_RING_SLOTS)) !== 0) return;
        const head = Atomics.load(control, CTL.HEAD);
        if (Atomics.load(control, CTL.WORDS + (tail % REQUEST_RING_SLOTS)) !== 0) return;
        // A bounded wait: a waitAsync left pending forever keeps its thread from ever exiting.
        await waitAsync(control, CTL.HEAD, head, 100).value;
      }
    },
    writtenPages() {
      let n = 0;
      for (let w = 0; w < words; w++) n += popcount32(Atomics.load(written, w));
      return n;
    },
    blocktime() {
      const per: number[] = [];
      for (let v = 0; v < vcpus; v++) per.push(round3(times[v] as number));
      return { 'postcopy-blocktime': round3(times[vcpus] as number), 'postcopy-vcpu-blocktime': per };
    },
    hashAsSent(page, out, at) {
      const w = page >>> 5;
      const bit = 1 << (page & 31);
      if ((Atomics.load(written, w) & bit) === 0) {
        pageHashes(memory, page, 1, out, at / 2);
        // Written meanwhile? Its first word may have changed under the hash: use the saved one.
        if ((Atomics.load(written, w) & bit) === 0) return;
      }
      scratch.set(new Uint32Array(memory, page * 4096, 1024));
      scratch[0] = before[page] as number;
      pageHashes(scratch.buffer, 0, 1, out, at / 2);
    },
  };
}

function checkVcpus(vcpus: number): void {
  if (!(Number.isInteger(vcpus) && vcpus >= 1 && vcpus < REQUEST_RING_SLOTS)) {
    throw new DirtytrackError('invalid-argument', `vcpus: ${vcpus} must be 1..${REQUEST_RING_SLOTS - 1}`, {
      component: COMPONENT,
      field: 'vcpus',
    });
  }
}

/**
 * The vCPU side (an {@link AttachSpec} factory, imported by the live guest's workers): a write
 * to a missing page faults — request once, wait until placed — and the first write to each page
 * saves its first word.
 */
export function attachPostcopyFaults(data: PostcopyFaultData): VcpuTracker {
  const received = new Int32Array(data.received);
  const requested = new Int32Array(data.requested);
  const claimed = new Int32Array(data.claimed);
  const written = new Int32Array(data.written);
  const before = new Int32Array(data.before);
  const control = new Int32Array(data.control);
  const times = new Float64Array(data.blocktime);
  const memory = new Int32Array(data.memory);
  // One time base for every vCPU thread (a per-thread clock has its own origin): the overlap of
  // their waits is computed across threads.
  const nowMs = () => Number(process.hrtime.bigint()) / 1e6;
  const all = data.vcpus;

  const fault = (vcpu: number, page: number, w: number, bit: number): void => {
    const t0 = nowMs();
    if (Atomics.add(control, CTL.BLOCKED, 1) + 1 === all) times[all + 1] = t0;
    try {
      if ((Atomics.or(requested, w, bit) & bit) === 0) {
        const slot = Atomics.add(control, CTL.HEAD, 1) % REQUEST_RING_SLOTS;
        Atomics.store(control, CTL.WORDS + slot, page + 1);
        Atomics.notify(control, CTL.HEAD);
      }
      for (;;) {
        const cur = Atomics.load(received, w);
        if ((cur & bit) !== 0) break;
        if (Atomics.load(control, CTL.ABORT) !== 0) {
          throw new DirtytrackError(
            'invalid-state',
            `vCPU ${vcpu}: page ${page} never arrived (the postcopy migration failed)`,
            { component: COMPONENT },
          );
        }
        Atomics.wait(received, w, cur, WAIT_SLICE_MS);
      }
    } finally {
      const t1 = nowMs();
      times[vcpu] = (times[vcpu] as number) + (t1 - t0);
      // Every vCPU was blocked from `times[all + 1]` until the first of them ran on.
      if (Atomics.sub(control, CTL.BLOCKED, 1) === all)
        times[all] = (times[all] as number) + (t1 - (times[all + 1] as number));
    }
  };

  return {
    attach() {},
    write(vcpu, _slot, offsets, count) {
      for (let k = 0; k < count; k++) {
        const page = offsets[k] as number;
        const w = page >>> 5;
        const bit = 1 << (page & 31);
        if ((Atomics.load(received, w) & bit) === 0) fault(vcpu, page, w, bit);
        if ((Atomics.load(written, w) & bit) !== 0) continue;
        if ((Atomics.or(claimed, w, bit) & bit) === 0) {
          before[page] = Atomics.load(memory, page * 1024);
          Atomics.or(written, w, bit);
        } else {
          // Another vCPU is saving the first word: the store must wait until it has.
          while ((Atomics.load(written, w) & bit) === 0)
            Atomics.wait(written, w, Atomics.load(written, w), 1);
        }
      }
      return 0;
    },
  };
}

/** A {@link DirtySink} that drops every write (the destination keeps no dirty log). */
export function attachDiscardSink(): DirtySink {
  return { markDirty() {} };
}

/** `Atomics.waitAsync` (Node ≥ 16; typed from lib es2024, above this project's target). */
const waitAsync = (
  Atomics as unknown as {
    waitAsync(
      a: Int32Array,
      i: number,
      v: number,
      timeoutMs: number,
    ): { async: boolean; value: Promise<string> | string };
  }
).waitAsync;

const round3 = (x: number): number => Math.round(x * 1000) / 1000;

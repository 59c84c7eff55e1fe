import type { MmuDescriptor } from '../mmu.js';

/** Words of the control array the stress test shares with its vCPU workers. */
export const CONTROL = {
  /** Workers attached and waiting for GO. */
  READY: 0,
  /** Set to 1 by the main thread: enter guest mode and start writing. */
  GO: 1,
  /** Set to 1 by the main thread: finish the current write and leave guest mode. */
  STOP: 2,
  /** Workers that left guest mode and published their counts. */
  DONE: 3,
  /** Non-zero once a worker threw. */
  FAILED: 4,
  /** Per vCPU, from here: [writes, pages reported to the sink] (each fits 31 bits). */
  PER_VCPU: 8,
  PER_VCPU_WORDS: 2,
} as const;

export const controlWords = (vcpus: number): number => CONTROL.PER_VCPU + vcpus * CONTROL.PER_VCPU_WORDS;

export interface VcpuWorkerData {
  readonly descriptor: MmuDescriptor;
  readonly vcpu: number;
  readonly seed: number;
  /** Guest memory: `pages × wordsPerPage` Int32 words. */
  readonly memory: SharedArrayBuffer;
  readonly wordsPerPage: number;
  /** The shared dirty bitmap (one bit per page of slot 0) the worker's sink sets atomically. */
  readonly dirty: SharedArrayBuffer;
  readonly control: SharedArrayBuffer;
  /** Pages of this vCPU's hot set, and the share of writes (out of 256) that go to it. */
  readonly hotPages: number;
  readonly hotShare: number;
  /** Upper bounds, whatever the main thread does: writes, and wall time after GO. */
  readonly maxWrites: number;
  readonly maxMs: number;
  /**
   * Every this many writes the vCPU halts: it leaves guest mode (flushes stop waiting for it),
   * sleeps `haltMs`, and re-enters (which drops its TLB if a flush happened meanwhile). Keeps 4
   * spinning vCPUs from starving the harvesting thread on a 2-core machine.
   */
  readonly haltEvery: number;
  readonly haltMs: number;
  /**
   * A lock (an RWLock's memory) the sink takes for read around each batch it is handed, as the
   * 'locked' bitmap reporter and the swap log do; the main thread harvests and re-arms holding it
   * for write. Absent: the sink sets bits with atomics alone.
   */
  readonly sinkLock?: SharedArrayBuffer;
}

/** The value a vCPU stores with its `seq`-th write: the vCPU in the top bits, never 0. */
export const storedValue = (vcpu: number, seq: number): number => ((vcpu + 1) << 24) | (seq & 0xff_ffff);

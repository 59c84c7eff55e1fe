import type { AttachSpec } from '@dirtytrack/core';

/** Words of the control array the uffd-wp live test shares with its vCPU workers. */
export const CONTROL = {
  /** Workers attached and waiting for GO. */
  READY: 0,
  /** Set to 1 by the main thread: start writing. */
  GO: 1,
  /** Non-zero: finish the current batch and stop. */
  STOP: 2,
  /** Workers that stopped and published their counts. */
  DONE: 3,
  /** Non-zero once a worker threw. */
  FAILED: 4,
  /** Non-zero: the main thread asks the vCPUs to pause (the VM is stopped). */
  PAUSE: 5,
  /** vCPUs currently paused. */
  PAUSED: 6,
  /** Non-zero while the sync snapshot runs: every store must find its page saved. */
  CHECK: 7,
  /** Stores that found their page not yet saved (sync invariant broken). */
  VIOLATIONS: 8,
  /** Per vCPU, from here: [writes, writes that trapped, pages reported to the sink]. */
  PER_VCPU: 16,
  PER_VCPU_WORDS: 3,
} as const;

export const controlWords = (vcpus: number): number => CONTROL.PER_VCPU + vcpus * CONTROL.PER_VCPU_WORDS;

export interface UffdVcpuData {
  /** The tracker's `share()`: the worker imports `spec.module` and calls `spec.factory`. */
  readonly spec: AttachSpec;
  readonly vcpu: number;
  readonly seed: number;
  readonly pages: number;
  /** Guest memory: `pages × 1024` Int32 words (4 KiB pages). */
  readonly memory: SharedArrayBuffer;
  /** The snapshot's saved-page bitmap (1 bit per page). */
  readonly saved: SharedArrayBuffer;
  readonly control: SharedArrayBuffer;
  /** Writes per `write` call. */
  readonly batch: number;
  /** Wall-time bound after GO, whatever the main thread does. */
  readonly maxMs: number;
}

export const WORDS_PER_PAGE = 1024;

/** The value a vCPU stores with its `seq`-th write: the vCPU in the top bits, never 0. */
export const storedValue = (vcpu: number, seq: number): number => ((vcpu + 1) << 24) | (seq & 0xff_ffff);

import type { AttachSpec } from '@dirtytrack/core';

/**
 * The words the live guest's owner and its worker vCPUs share (an `Int32Array` over one
 * `SharedArrayBuffer`). Internal to the live engine: `live-guest.ts` writes the commands,
 * `live-vcpu.ts` (the worker entry) obeys them.
 */
export const CTL = {
  /** What the vCPUs must do: {@link STATE}. */
  STATE: 0,
  /** The value each store writes into the first 8 bytes of its page (dirty_log_test's `iteration`). */
  VALUE: 1,
  /** Workers that attached and are waiting for RUN. */
  READY: 2,
  /** Bumped by every pause; a paused vCPU stores the generation it saw in its ack word. */
  PAUSE_GEN: 3,
  /** 1 + the index of the first vCPU that failed, 0 while none did. */
  FAILED: 4,
  /** Per-vCPU ack words start here: vCPU v acknowledges pause generation g at `ACK + v`. */
  ACK: 8,
} as const;

export const STATE = { INIT: 0, RUN: 1, PAUSE: 2, STOP: 3 } as const;

/** Float64 counters per vCPU (single writer each): writes, ring-full exits. */
export const COUNTER = { WRITES: 0, RING_FULL: 1, WORDS: 2 } as const;

export const controlWords = (vcpus: number): number => CTL.ACK + vcpus;

/** Which pages a live vCPU writes. */
export type LiveWorkload =
  /** Uniform over the slot (dirty_log_test's guest: `random % guest_num_pages`). */
  | { readonly kind: 'uniform' }
  /**
   * `share` out of 256 writes go to a per-vCPU hot set of `pages` pages drawn at start, the
   * rest uniform over the slot.
   */
  | { readonly kind: 'hot-set'; readonly pages: number; readonly share: number };

/** What each vCPU worker gets as `workerData`. */
export interface LiveVcpuData {
  readonly vcpu: number;
  readonly tracker: AttachSpec;
  readonly sink: AttachSpec;
  readonly memory: SharedArrayBuffer;
  readonly control: SharedArrayBuffer;
  readonly counters: SharedArrayBuffer;
  readonly slot: number;
  readonly pages: number;
  readonly seed: number;
  readonly workload: LiveWorkload;
  /** File URLs to resolve the AttachSpec modules from when the worker cannot import them itself. */
  readonly resolveFrom: readonly string[];
  readonly timeoutMs: number;
}

/** What a failing worker posts before it exits. */
export interface LiveVcpuFailure {
  readonly kind: 'failed';
  readonly vcpu: number;
  readonly name: string;
  readonly message: string;
  readonly code?: string;
  readonly stack?: string;
}

/** Int32 words of guest memory per 4 KiB page. */
export const WORDS_PER_PAGE = 1024;

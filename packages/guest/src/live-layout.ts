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
  /**
   * Bytes of the first failure's report in the failure buffer (0 until written), so an owner
   * blocked in synchronous code reads the error without waiting for the worker's message.
   */
  FAILURE_BYTES: 5,
  /** Every vCPU's speed (auto-converge), fixed point: {@link SPEED_ONE} = full speed. */
  SPEED: 6,
  /**
   * Bumped by every command (state, pause, speed). A vCPU reads it before the state and sleeps
   * on it, so a command issued between its look and its sleep still wakes it (no lost wake-up).
   */
  SEQ: 7,
  /** Per-vCPU ack words start here: vCPU v acknowledges pause generation g at `ACK + v`. */
  ACK: 8,
} as const;

/** Fixed-point 1.0 of the speed words (speed × 2^16 in an Int32). */
export const SPEED_ONE = 0x1_0000;

/** vCPU v's own speed word (dirty-limit), after the ack words. */
export const speedWord = (vcpus: number, vcpu: number): number => CTL.ACK + vcpus + vcpu;

/**
 * QEMU's CPU_THROTTLE_TIMESLICE_NS (reference/qemu.md §2.3): a throttled vCPU runs this long,
 * then sleeps `pct / (1 − pct)` times as long.
 */
export const THROTTLE_TIMESLICE_MS = 10;

/** Bytes of the failure buffer (a UTF-8 JSON {@link LiveVcpuFailure}, cut to fit). */
export const FAILURE_BUFFER_BYTES = 16 * 1024;

export const STATE = { INIT: 0, RUN: 1, PAUSE: 2, STOP: 3 } as const;

/**
 * Float64 counters per vCPU (single writer each): writes, ring-full exits, dirtied pages (writes
 * that trapped: the sum of the tracker's `write` results, QEMU's `cpu->dirty_pages`), and ms
 * spent asleep by the throttle (time at speed 0 included).
 */
export const COUNTER = { WRITES: 0, RING_FULL: 1, DIRTY: 2, THROTTLED_MS: 3, WORDS: 4 } as const;

export const controlWords = (vcpus: number): number => CTL.ACK + 2 * vcpus;

/** Which pages a live vCPU writes. */
export type LiveWorkload =
  /** Uniform over the slot (dirty_log_test's guest: `random % guest_num_pages`). */
  | { readonly kind: 'uniform' }
  /**
   * `share` out of 256 writes go to a per-vCPU hot set of `pages` pages drawn at start, the
   * rest uniform over the slot.
   */
  | { readonly kind: 'hot-set'; readonly pages: number; readonly share: number }
  /**
   * Each vCPU sweeps its share of the slot in ascending order and wraps around (QEMU's
   * migration-test guest; the model's `createSweepWorkload`): vCPU v owns pages
   * `[v·share, (v+1)·share)` with `share = floor(pages / vcpus)`, the last vCPU also the rest.
   */
  | { readonly kind: 'sweep' }
  /**
   * Replays a trace file (binary or text, `parseTrace`): each vCPU writes its records' pages at
   * their recorded times on its own replay clock — the time it has run, so a throttled or paused
   * vCPU replays later, as in the model's `createTraceWorkload`. Without `loop` a vCPU idles once
   * its part of the trace ends; `scale` maps a trace of another guest size onto this one.
   */
  | {
      readonly kind: 'trace';
      readonly trace: Uint8Array;
      readonly loop?: boolean;
      readonly scale?: boolean;
    };

/** What each vCPU worker gets as `workerData`. */
export interface LiveVcpuData {
  readonly vcpu: number;
  /** vCPUs of the guest (where the per-vCPU words sit). */
  readonly vcpus: number;
  readonly tracker: AttachSpec;
  readonly sink: AttachSpec;
  readonly memory: SharedArrayBuffer;
  readonly control: SharedArrayBuffer;
  readonly counters: SharedArrayBuffer;
  /** Where the first failing vCPU writes its report ({@link CTL.FAILURE_BYTES}). */
  readonly failure: SharedArrayBuffer;
  /** Writes per second this vCPU paces itself to; 0 = unlimited. */
  readonly rate: number;
  readonly slot: number;
  readonly pages: number;
  readonly seed: number;
  readonly workload: LiveWorkload;
  /** File URLs to resolve the AttachSpec modules from when the worker cannot import them itself. */
  readonly resolveFrom: readonly string[];
  readonly timeoutMs: number;
  /** Float64 rows of {@link PROGRESS.WORDS}: where each vCPU publishes its progress. */
  readonly progress: SharedArrayBuffer;
  /** Where this vCPU's workload resumes (a migrated guest), or a fresh start. */
  readonly resume?: LiveVcpuProgress;
}

/**
 * `workerData` of a vCPU worker booted ahead of its guest ({@link createVcpuStandby}): it imports
 * its own modules and `preload`, posts {@link LiveVcpuStandingBy}, then waits for its
 * {@link LiveVcpuData} in a {@link LiveVcpuConfigure} message.
 */
export interface LiveVcpuStandbyData {
  readonly standby: true;
  /** Modules (AttachSpec module names) imported ahead, so that the guest's attach finds them loaded. */
  readonly preload: readonly string[];
  readonly resolveFrom: readonly string[];
}

/** A standby vCPU worker's first message: booted, its modules loaded. */
export interface LiveVcpuStandingBy {
  readonly kind: 'standing-by';
}

/** The message that turns a standby worker into vCPU `data.vcpu` of a guest. */
export interface LiveVcpuConfigure {
  readonly kind: 'configure';
  readonly data: LiveVcpuData;
}

/**
 * Where a vCPU's workload stands — the part of its state a migration carries so that the guest
 * goes on where it was (QEMU carries the vCPU's registers): its random stream (uniform and
 * hot-set draws), its sweep cursor, and its trace replay — the replay clock before and after the
 * last batch of due records it took, and how many of that batch's pages it has written.
 */
export interface LiveVcpuProgress {
  /** The four 32-bit words of its `Rng` state (`Rng.state()`). */
  readonly rng: readonly number[];
  /** Next page of its sweep share, from the share's start. */
  readonly sweep: number;
  readonly traceBeforeNs: number;
  readonly traceAfterNs: number;
  readonly traceWritten: number;
}

/** Layout of a vCPU's progress row (Float64 words): published at every pause and at exit. */
export const PROGRESS = {
  RNG: 0,
  SWEEP: 4,
  TRACE_BEFORE: 5,
  TRACE_AFTER: 6,
  TRACE_WRITTEN: 7,
  WORDS: 8,
} as const;

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

/**
 * Encodes a failure report for the failure buffer: UTF-8 JSON of at most `max` bytes (the stack,
 * then the tail of the message, are dropped to fit).
 */
export function encodeFailure(failure: LiveVcpuFailure, max: number): Uint8Array {
  const encoder = new TextEncoder();
  let bytes = encoder.encode(JSON.stringify(failure));
  if (bytes.length <= max) return bytes;
  const { stack: _stack, ...rest } = failure;
  bytes = encoder.encode(JSON.stringify(rest));
  if (bytes.length <= max) return bytes;
  return encoder.encode(JSON.stringify({ ...rest, message: `${rest.message.slice(0, max / 8)}…` }));
}

/** The failure report in `buffer[0, bytes)`, or undefined if it does not parse. */
export function decodeFailure(buffer: SharedArrayBuffer, bytes: number): LiveVcpuFailure | undefined {
  try {
    // slice: TextDecoder does not read views of shared memory.
    const f = JSON.parse(new TextDecoder().decode(new Uint8Array(buffer, 0, bytes).slice())) as unknown;
    if (typeof f !== 'object' || f === null || (f as { kind?: unknown }).kind !== 'failed') return undefined;
    return f as LiveVcpuFailure;
  } catch {
    return undefined;
  }
}

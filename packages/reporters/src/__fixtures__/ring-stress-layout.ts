import type { MemslotInfo } from '@dirtytrack/core';

/** Int32 slots of the ring stress test's control buffer (shared by the harvester and producers). */
export const STRESS = {
  /** +1 by each producer once it has attached to the rings. */
  READY: 0,
  /** Set to 1 (and notified) by the harvester to start every producer at once. */
  GO: 1,
  /** Set to 1 by the harvester when it stops early (a violation or a timeout): producers quit. */
  ABORT: 2,
  /** +1 by each producer that threw (it also posts the message). */
  FAILED: 3,
  /** +1 by each producer when it stops, successfully or not. */
  FINISHED: 4,
  /** Bumped and notified by producers when they exit full or finish: wakes an idle harvester. */
  KICK: 5,
  /** Mode 'flags-first': vcpu + 1 of the producer holding a published-but-unwritten entry. */
  PAUSED: 6,
  /** Mode 'flags-first': set by the harvester once it has harvested after seeing PAUSED. */
  RELEASE: 7,
  /** Mode 'ignore-room': pushes the reporter refused because the ring was hard-full. */
  HARD_FULL: 8,
  /** Per-vCPU words start here: PER_VCPU + STRIDE * v + (PROGRESS | MAX_USED | EXITS). */
  PER_VCPU: 16,
  STRIDE: 4,
  /** Entries this producer has pushed so far. */
  PROGRESS: 0,
  /** The largest used(v) the producer saw right after one of its pushes. */
  MAX_USED: 1,
  /** Times the producer found room(v) === 0 and exited with DIRTY_RING_FULL (one per episode). */
  EXITS: 2,
} as const;

/** Int32 words a control buffer for `vcpus` producers needs. */
export function controlWords(vcpus: number): number {
  return STRESS.PER_VCPU + STRESS.STRIDE * vcpus;
}

/**
 * How a producer behaves. 'correct' respects room() and waits with ringFullExit at the soft limit;
 * it alternates fast stretches of 8192 entries (random batches: the ring fills, the vCPU exits
 * full) with slow ones (one entry at a time: the harvester chases the ring's head).
 * 'ignore-room' pushes 64-entry batches without looking at room() (a vCPU that never exits).
 * 'flags-first' is correct except that vCPU 0, for its entry `brokenAt`, publishes flags = DIRTY before
 * writing slot/offset (and holds the window open until the harvester has looked).
 */
export type ProducerMode = 'correct' | 'ignore-room' | 'flags-first';

export interface ProducerData {
  ring: SharedArrayBuffer;
  control: SharedArrayBuffer;
  vcpus: number;
  entries: number;
  slots: MemslotInfo[];
  vcpu: number;
  /** Entries this producer pushes; entry `seq` has offset `vcpu * perVcpu + seq`. */
  perVcpu: number;
  /** Largest push batch (batches are random in [1, maxBatch], seeded by vCPU). */
  maxBatch: number;
  mode: ProducerMode;
  brokenAt: number;
  timeoutMs: number;
}

/**
 * The entry a producer pushes as its `seq`-th: runs of 64 consecutive pages alternate between
 * the two slots (a guest scanning memory), offset `vcpu * perVcpu + seq` in that slot.
 */
export function stressSlot(seq: number): 0 | 1 {
  return (Math.floor(seq / 64) & 1) as 0 | 1;
}

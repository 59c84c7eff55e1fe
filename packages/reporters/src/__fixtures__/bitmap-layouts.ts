/** Shared-memory layouts and page sets the bitmap worker fixtures and the tests agree on. */

/** Int32 slots of a producer's control buffer. */
export const PRODUCER = {
  /** +1 by each worker once it has attached its reporter to the shared bitmap. */
  READY: 0,
  /** The epoch (stress) or step (step mode) the main thread has started; 1-based, 0 = none yet. */
  EPOCH: 1,
  /** +1 by each worker each time it finishes an epoch. */
  FINISHED: 2,
  /** +1 by each worker that threw. */
  FAILED: 3,
  /** Step mode: the step the worker is about to mark in (set just before `markDirty`). */
  TRYING: 4,
  /** Step mode: the last step whose `markDirty` returned. */
  DONE: 5,
  LENGTH: 6,
} as const;

export interface ProducerData {
  /** `stress`: mark `epochPages(...)` in each epoch. `step`: mark `stepPages[s - 1]` at step s. */
  mode: 'stress' | 'step';
  updates: 'atomic' | 'locked';
  /** The main reporter's `bitmapBuffers()`. */
  buffers: Map<number, SharedArrayBuffer>;
  slot: { id: number; asId: number; baseGfn: number; pages: number };
  /** The mmu_lock's memory (`RWLock.buffer` / `byteOffset`); absent in atomic mode. */
  lock?: { buffer: SharedArrayBuffer; byteOffset: number };
  control: SharedArrayBuffer;
  producer: number;
  producers: number;
  /** Epochs (stress) or steps (step mode). */
  epochs: number;
  /** Pages per `markDirty` call (stress). */
  batch: number;
  stepPages: number[];
}

/**
 * The pages producer `k` of `producers` marks in epoch `e` (1-based), in marking order. It owns
 * pages p ≡ k (mod producers), so every bitmap word is written by all producers at once. Odd
 * epoch 2r−1: about half of its pages (chosen by a hash of page and round), then the first eighth
 * of those again (duplicates). Even epoch 2r: about half of epoch 2r−1's pages again — pages
 * that were harvested and re-armed in between (re-marking).
 */
export function epochPages(k: number, producers: number, pages: number, epoch: number): Uint32Array {
  const round = (epoch + 1) >>> 1;
  const picked: number[] = [];
  for (let p = k; p < pages; p += producers) {
    const h = mix32(Math.imul(p, 0x9e37_79b1) ^ Math.imul(round, 0x85eb_ca6b));
    if ((h & 1) === 0) continue;
    if (epoch % 2 === 0 && (h & 2) === 0) continue;
    picked.push(p);
  }
  if (epoch % 2 === 1) picked.push(...picked.slice(0, picked.length >>> 3));
  return Uint32Array.from(picked);
}

function mix32(x: number): number {
  x = Math.imul(x ^ (x >>> 16), 0x45d9_f3b);
  x = Math.imul(x ^ (x >>> 16), 0x45d9_f3b);
  return (x ^ (x >>> 16)) >>> 0;
}

import { DirtytrackError } from '@dirtytrack/core';
import { TABLE_ENTRIES } from './spte.js';

/** Tables per chunk of the arena: 256 tables × 512 entries × 4 bytes = 512 KiB. */
export const TABLES_PER_CHUNK = 256;
/** Bytes one page table takes (512 Int32 entries). */
export const TABLE_BYTES = TABLE_ENTRIES * 4;

/** Control words shared by every thread that attaches to one MMU. */
export const CTL_EPOCH = 0;
export const CTL_BUMP = 1;
export const CTL_FREE_HEAD = 2;
export const CTL_FREE_TAIL = 3;
export const CTL_WORDS = 4;

/**
 * Where page tables live: chunks of 256 tables, addressed by a table id (`id >>> 8` picks the
 * chunk, `(id & 255) << 9` the first entry), so a table entry can point at a child with a number
 * and the whole structure can sit in `SharedArrayBuffer`s that workers attach to.
 *
 * - Model plane (`capacity` = Infinity): chunks are allocated as tables are needed, so memory
 *   grows only with what has been split or mapped at 4 KiB — never with the guest's size.
 * - Live plane (`capacity` finite): every chunk exists up front (a `SharedArrayBuffer`), because
 *   workers cannot receive new shared memory mid-run; allocation is an atomic bump plus a ring of
 *   freed tables that workers pop with compare-and-swap. Only the owner pushes to the ring.
 *
 * Freed tables are not reused at once: a lock-free walker (the fast page fault) may still be
 * reading them, like KVM frees page tables after an RCU grace period. The owner calls
 * {@link Arena.release} only after a TLB flush that every running vCPU has observed — each vCPU
 * passes through a flush check between writes, which is this model's quiescent state.
 */
export class Arena {
  readonly chunks: Int32Array[];
  private readonly freeRing: Int32Array | undefined;
  private readonly freeStack: number[] = [];
  private readonly pending: number[] = [];

  constructor(
    private readonly ctl: Int32Array,
    readonly capacity: number,
    chunks?: Int32Array[],
    freeRing?: Int32Array,
  ) {
    if (Number.isFinite(capacity)) {
      this.chunks =
        chunks ??
        Array.from(
          { length: Math.ceil(capacity / TABLES_PER_CHUNK) },
          () => new Int32Array(new SharedArrayBuffer(TABLES_PER_CHUNK * TABLE_BYTES)),
        );
      this.freeRing = freeRing ?? new Int32Array(new SharedArrayBuffer(Math.max(1, capacity) * 4));
    } else {
      this.chunks = [];
      this.freeRing = undefined;
    }
  }

  /** The shared memory a worker needs to attach (live plane only). */
  get sharedParts(): { chunks: Int32Array[]; freeRing: Int32Array } | undefined {
    return this.freeRing === undefined ? undefined : { chunks: this.chunks, freeRing: this.freeRing };
  }

  /** A zeroed table (all entries non-present), or -1 when a fixed-capacity arena is exhausted. */
  alloc(): number {
    const ring = this.freeRing;
    if (ring === undefined) {
      const reused = this.freeStack.pop();
      if (reused !== undefined) return reused;
      const id = this.ctl[CTL_BUMP] as number;
      this.ctl[CTL_BUMP] = id + 1;
      if (id >>> 8 >= this.chunks.length) {
        this.chunks.push(new Int32Array(TABLES_PER_CHUNK * TABLE_ENTRIES));
      }
      return id;
    }
    for (;;) {
      const head = Atomics.load(this.ctl, CTL_FREE_HEAD);
      if (head >= Atomics.load(this.ctl, CTL_FREE_TAIL)) break;
      const id = Atomics.load(ring, head % ring.length);
      if (Atomics.compareExchange(this.ctl, CTL_FREE_HEAD, head, head + 1) === head) return id;
    }
    const id = Atomics.add(this.ctl, CTL_BUMP, 1);
    if (id < this.capacity) return id;
    Atomics.sub(this.ctl, CTL_BUMP, 1);
    return -1;
  }

  /** Gives back a table that was never published (a lost install race): reusable at once. */
  unpublished(id: number): void {
    this.chunk(id).fill(0, this.base(id), this.base(id) + TABLE_ENTRIES);
    if (this.freeRing === undefined) this.freeStack.push(id);
    else this.pending.push(id);
  }

  /** Queues a table that was unlinked; it becomes reusable at the next {@link release}. */
  retire(id: number): void {
    this.pending.push(id);
  }

  /** Makes retired tables reusable. Owner only, after a completed TLB flush (the grace period). */
  release(): void {
    for (const id of this.pending) {
      this.chunk(id).fill(0, this.base(id), this.base(id) + TABLE_ENTRIES);
      const ring = this.freeRing;
      if (ring === undefined) {
        this.freeStack.push(id);
      } else {
        const tail = Atomics.load(this.ctl, CTL_FREE_TAIL);
        Atomics.store(ring, tail % ring.length, id);
        Atomics.store(this.ctl, CTL_FREE_TAIL, tail + 1);
      }
    }
    this.pending.length = 0;
  }

  /** Tables allocated and not free (including retired ones awaiting their grace period). */
  inUse(): number {
    const allocated = Math.min(Atomics.load(this.ctl, CTL_BUMP), this.capacity);
    const free =
      this.freeRing === undefined
        ? this.freeStack.length
        : Atomics.load(this.ctl, CTL_FREE_TAIL) - Atomics.load(this.ctl, CTL_FREE_HEAD);
    return allocated - free;
  }

  /** Bytes of table memory allocated so far (the arena's footprint). */
  bytes(): number {
    return this.chunks.length * TABLES_PER_CHUNK * TABLE_BYTES;
  }

  chunk(id: number): Int32Array {
    const c = this.chunks[id >>> 8];
    if (c === undefined) {
      throw new DirtytrackError('internal', `page table ${id} does not exist`, { component: 'mmu' });
    }
    return c;
  }

  base(id: number): number {
    return (id & (TABLES_PER_CHUNK - 1)) * TABLE_ENTRIES;
  }
}

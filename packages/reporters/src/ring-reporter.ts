import {
  Bitmap,
  DirtytrackError,
  popcount32,
  type AttachSpec,
  type BoundedDirtySink,
  type DirtytrackErrorCode,
  type HarvestCost,
  type MemslotInfo,
  type Rearmer,
  type SharedReporter,
} from '@dirtytrack/core';

/** `struct kvm_dirty_gfn` flags (reference/kvm.md §2.2): bit 0 DIRTY, bit 1 RESET. */
export const KVM_DIRTY_GFN_F_DIRTY = 1;
export const KVM_DIRTY_GFN_F_RESET = 2;
/** Bytes per `struct kvm_dirty_gfn { u32 flags; u32 slot; u64 offset; }`. */
export const KVM_DIRTY_GFN_BYTES = 16;
/** `KVM_DIRTY_RING_RSVD_ENTRIES`: the reserve every ring keeps below its size. */
export const KVM_DIRTY_RING_RSVD_ENTRIES = 64;
/** `kvm_cpu_dirty_log_size()` on Intel with PML (`PML_LOG_NR_ENTRIES`); 0 elsewhere. */
export const KVM_PML_ENTRIES = 512;
/** Largest ring KVM accepts: 65536 entries (1 MiB). Larger → `E2BIG`. */
export const KVM_DIRTY_RING_MAX_ENTRIES = 65536;
/** Smallest ring in bytes KVM accepts (one page). */
export const KVM_DIRTY_RING_MIN_BYTES = 4096;
/** Most vCPUs (rings) one reporter models: x86's `KVM_MAX_VCPUS` on this host. */
export const RING_MAX_VCPUS = 1024;

/**
 * Where things live in a ring reporter's `SharedArrayBuffer`. Rings first (vCPU v's ring at byte
 * `v * entries * 16`), then the index area: a 64-byte header, then per ring a 128-byte block
 * whose first cache line the producer (vCPU) writes and whose second line the harvester writes,
 * so the two sides never share a cache line. All index words are Int32 (free-running u32 values
 * read with `>>> 0`).
 */
export const RING_LAYOUT = {
  /** Header (Int32 words from the start of the index area). */
  HEADER_BYTES: 64,
  MAGIC: 0,
  VERSION: 1,
  VCPUS: 2,
  ENTRIES: 3,
  RESERVED: 4,
  WITH_BITMAP: 5,
  /** Per-ring block, after the header. */
  RING_BLOCK_BYTES: 128,
  /** Producer line: `dirty_index` (KVM-private in KVM, shared here). */
  DIRTY_INDEX: 0,
  /** Producer line: entries ever pushed (u32, wraps). */
  PUSHED: 1,
  /** Producer line: the largest `used` a push left behind. */
  MAX_USED: 2,
  /** Producer line: `KVM_EXIT_DIRTY_RING_FULL` exits taken ({@link RingReporter.ringFullExit}). */
  FULL_EXITS: 3,
  /** Harvester line: `reset_index`; producers `Atomics.wait` on it for room. */
  RESET_INDEX: 16,
} as const;

const MAGIC = 0x4b_44_52_47; // 'KDRG'
const VERSION = 1;
const COMPONENT = 'ring-reporter';
const LITTLE_ENDIAN = new Uint8Array(Uint32Array.of(1).buffer)[0] === 1;

/** Bytes of the shared buffer a reporter with `vcpus` rings of `entries` entries uses. */
export function ringBufferBytes(vcpus: number, entries: number): number {
  return (
    vcpus * entries * KVM_DIRTY_GFN_BYTES + RING_LAYOUT.HEADER_BYTES + vcpus * RING_LAYOUT.RING_BLOCK_BYTES
  );
}

export interface RingReporterOptions {
  /** One ring per vCPU. */
  vcpus: number;
  /**
   * Ring size in entries: a power of two, with `entries * 16 >= 4096` and `>= reserved * 16`
   * (else `EINVAL`) and `<= 65536 * 16` (else `E2BIG`), as `KVM_ENABLE_CAP(DIRTY_LOG_RING)` checks.
   */
  entries: number;
  /** Re-arms reset pages (the tracker). */
  rearmer: Rearmer;
  /** Slots to log from the start; more can be added with `addSlot`. */
  slots?: readonly MemslotInfo[];
  /** Intel PML: the reserve grows by 512 entries (`kvm_cpu_dirty_log_size`). Default false (AMD: 64). */
  pml?: boolean;
  /**
   * `KVM_CAP_DIRTY_LOG_RING_WITH_BITMAP` (arm64): writes without vCPU context (`vcpu === -1`) go
   * to a per-slot bitmap, collected last by `getDirtyLog`. Default false: on x86 every KVM write
   * happens on a vCPU thread and must name it, and a vCPU-less write on a ring-only VM would be
   * lost, so it is an error here.
   */
  withBitmap?: boolean;
  /**
   * Attach to the rings of another reporter (`other.buffer`, e.g. posted to a worker) instead of
   * allocating. `vcpus`, `entries`, `pml` and `withBitmap` must match.
   */
  buffer?: SharedArrayBuffer;
  /**
   * Observes every coalesced reset batch as KVM would hand it to
   * `kvm_arch_mmu_enable_log_dirty_pt_masked`: packed slot, base offset, 64-bit mask (bit 0 =
   * base). For tests and tracing; costs a BigInt per batch when set.
   */
  onResetBatch?: (slot: number, base: number, mask: bigint) => void;
}

export interface RingReporterStats {
  /** Entries pushed into all rings, by any thread (u32 per ring, wraps). Shared. */
  readonly pushed: number;
  /** Entries this reporter harvested (flags DIRTY → RESET). */
  readonly harvested: number;
  /** Entries this reporter reset (`KVM_RESET_DIRTY_RINGS`, RESET → 0). */
  readonly reset: number;
  /** (slot, base, mask) batches the resets formed (§2.6), valid or not. */
  readonly coalescedBatches: number;
  /** Batches KVM would ignore: unknown slot, or a page beyond the slot's end. */
  readonly ignoredBatches: number;
  /** Pages the rearmer re-armed. */
  readonly rearmed: number;
  /** TLB flushes: one per reset that reset anything, one per side-bitmap harvest that re-armed. */
  readonly tlbFlushes: number;
  /** `KVM_EXIT_DIRTY_RING_FULL` exits producers took via `ringFullExit`, all rings. Shared. */
  readonly fullExits: number;
  /** The largest `used` any push left behind, over all rings. Shared. */
  readonly maxUsed: number;
}

/**
 * The KVM dirty ring (reference/kvm.md §2), as a reporter. Rings, flags and indices live in one
 * `SharedArrayBuffer`, so vCPU threads (workers) push while the harvesting thread harvests and
 * resets. Exactly one thread may push into a given ring at a time (its vCPU), and exactly one
 * reporter instance harvests and resets (it owns the private harvest cursors, the pending
 * bitmaps and the rearmer); attached instances in workers only push.
 */
export interface RingReporter extends SharedReporter, BoundedDirtySink {
  readonly kind: 'ring';
  readonly vcpus: number;
  readonly entries: number;
  /** `entries - reserved`: at `used >= softLimit` the vCPU exits with `KVM_EXIT_DIRTY_RING_FULL`. */
  readonly softLimit: number;
  /** `KVM_DIRTY_RING_RSVD_ENTRIES` (64) plus 512 with PML. */
  readonly reserved: number;
  readonly withBitmap: boolean;
  /** The rings and their indices ({@link RING_LAYOUT}); post it to workers and attach there. */
  readonly buffer: SharedArrayBuffer;
  /** `softLimit - used(vcpu)`, never negative: entries the vCPU may push before it must exit. */
  room(vcpu: number): number;
  /** `dirty_index - reset_index` (mod 2^32). */
  used(vcpu: number): number;
  /**
   * Userspace harvest of vCPU `vcpu`'s ring (QEMU's `kvm_dirty_ring_reap_one`): from the private
   * cursor, while the entry's flags have DIRTY (load-acquire), reads slot and offset, hands them
   * to `onEntry` (packed slot `(as_id << 16) | id`, page offset), then stores flags = RESET
   * (store-release). Strictly in order; stops at the first entry that is not DIRTY or after
   * `max` entries. Returns the entries harvested.
   */
  harvest(vcpu: number, onEntry?: (slot: number, offset: number) => void, max?: number): number;
  /**
   * {@link RingReporter.harvest} into caller arrays, no callback per entry: entry i's packed slot
   * goes to `slots[i]`, its offset (a u64, exact below 2^53) to `offsets[i]`. Harvests at most
   * `min(slots.length, offsets.length)` entries; the rest stay DIRTY for the next call.
   */
  harvestInto(vcpu: number, slots: Uint32Array, offsets: Float64Array): number;
  /**
   * `KVM_RESET_DIRTY_RINGS`: per ring, while the entry at `reset_index` has RESET, stores
   * flags = 0 and advances `reset_index`, coalescing the pages into (slot, base, 64-bit mask)
   * batches (§2.6); then re-arms each slot with one `rearm` call over a scratch bitmap (with the
   * touched-word hint) and counts one TLB flush if anything was reset. Producers waiting in
   * `ringFullExit` are woken. Returns the entries reset.
   */
  reset(): number;
  /**
   * QEMU's `kvm_dirty_ring_reap`: harvests every ring into the per-slot pending bitmaps (QEMU's
   * slot `dirty_bmap`), then resets. What QEMU does on `KVM_EXIT_DIRTY_RING_FULL` and in
   * `kvm_log_sync_global`. With `vcpu`, only that vCPU's ring (`kvm_dirty_ring_reap(s, cpu)`:
   * QEMU's vCPU thread on its own ring-full exit while dirty-limit is in service), and no kick of
   * the other vCPUs first. Returns the entries harvested.
   */
  reap(vcpu?: number): number;
  /**
   * The vCPU exits with `KVM_EXIT_DIRTY_RING_FULL`: counts the exit (shared, see
   * `stats().fullExits`), then, if `timeoutMs > 0`, blocks (`Atomics.wait` on the ring's
   * `reset_index`) until a reset gives the ring room, or until `timeoutMs` passes without a
   * reset. Returns `room(vcpu)`. Call it from the vCPU (producer) thread.
   */
  ringFullExit(vcpu: number, timeoutMs?: number): number;
  /**
   * QEMU's layer-A view (`kvm_log_sync_global` + the slot's `dirty_bmap`), not the ioctl: KVM
   * refuses `KVM_GET_DIRTY_LOG` on ring-only VMs with `ENXIO`. Reaps every ring, then moves the
   * slot's pending bits (and, with `withBitmap`, its side bitmap, collected last and re-armed
   * like a classic `KVM_GET_DIRTY_LOG`) into `out`, which is fully overwritten. Returns the pages.
   */
  getDirtyLog(slot: number, out: Bitmap): number;
  stats(): RingReporterStats;
  /**
   * `SharedReporter.share()` (live plane): `{ module: '@dirtytrack/reporters', factory:
   * 'attachRingReporter', data }`, what a worker vCPU passes to {@link attachRingReporter} to push
   * into these rings.
   */
  share(): AttachSpec;
}

/** What {@link RingReporter.share} hands a worker: the ring geometry, the buffer and the slots. */
export interface RingReporterShareData {
  readonly vcpus: number;
  readonly entries: number;
  readonly pml: boolean;
  readonly withBitmap: boolean;
  readonly buffer: SharedArrayBuffer;
  readonly slots: readonly MemslotInfo[];
}

/**
 * The worker side of a ring reporter (the factory {@link RingReporter.share} names): a reporter
 * attached to the owner's rings, used only as a producer — `markDirty`, `room`, `ringFullExit`.
 * Harvest and reset stay with the owner (its cursors, pending bitmaps and rearmer).
 */
export function attachRingReporter(data: RingReporterShareData): RingReporter {
  return createRingReporter({
    vcpus: data.vcpus,
    entries: data.entries,
    pml: data.pml,
    withBitmap: data.withBitmap,
    buffer: data.buffer,
    slots: data.slots,
    rearmer: {
      rearm() {
        throw fail(
          'invalid-state',
          'an attached ring reporter only pushes entries; harvest and reset on the thread that owns it',
          { field: 'rearmer' },
        );
      },
    },
  });
}

interface SlotState {
  readonly info: MemslotInfo;
  /** `(as_id << 16) | id`, as in `kvm_dirty_gfn.slot`. */
  readonly field: number;
  readonly pages: number;
  /** QEMU's `dirty_bmap`: pages reaped, not yet returned by `getDirtyLog`. Harvester side. */
  pending: Bitmap | undefined;
  /** Reset batches land here until the one `rearm` call of a reset. */
  scratch: Bitmap | undefined;
  touched: Uint32Array;
  nTouched: number;
  /** `withBitmap`: vCPU-less writes. */
  side: Bitmap | undefined;
}

function fail(
  code: DirtytrackErrorCode,
  message: string,
  extra: { field?: string; errno?: string } = {},
): DirtytrackError {
  return new DirtytrackError(code, message, { component: COMPONENT, ...extra });
}

/** Reserve and soft limit for a ring size, with KVM's checks (`kvm_vm_ioctl_enable_dirty_log_ring`). */
function checkRingSize(entries: number, pml: boolean): { reserved: number; softLimit: number } {
  const reserved = KVM_DIRTY_RING_RSVD_ENTRIES + (pml ? KVM_PML_ENTRIES : 0);
  if (!(Number.isSafeInteger(entries) && entries > 0 && Number.isInteger(Math.log2(entries)))) {
    throw fail(
      'invalid-argument',
      `entries ${entries}: the ring size must be a non-zero power of two (EINVAL)`,
      {
        field: 'entries',
        errno: 'EINVAL',
      },
    );
  }
  const bytes = entries * KVM_DIRTY_GFN_BYTES;
  if (bytes < KVM_DIRTY_RING_MIN_BYTES || bytes < reserved * KVM_DIRTY_GFN_BYTES) {
    throw fail(
      'invalid-argument',
      `entries ${entries}: ${bytes} bytes is below the minimum of max(4096, ${reserved} reserved entries × 16 = ${reserved * KVM_DIRTY_GFN_BYTES}) bytes (EINVAL)`,
      { field: 'entries', errno: 'EINVAL' },
    );
  }
  if (entries > KVM_DIRTY_RING_MAX_ENTRIES) {
    throw fail(
      'invalid-argument',
      `entries ${entries}: ${bytes} bytes exceeds KVM's maximum of 65536 × 16 = 1048576 bytes (E2BIG)`,
      { field: 'entries', errno: 'E2BIG' },
    );
  }
  return { reserved, softLimit: entries - reserved };
}

/** Creates a dirty-ring reporter, or attaches to one's rings with `options.buffer`. */
export function createRingReporter(options: RingReporterOptions): RingReporter {
  if (typeof SharedArrayBuffer === 'undefined') {
    throw fail('unsupported', 'the dirty ring needs SharedArrayBuffer');
  }
  if (!LITTLE_ENDIAN) {
    throw fail('unsupported', 'struct kvm_dirty_gfn is little-endian; this host is not');
  }
  const { vcpus, entries, rearmer } = options;
  const pml = options.pml ?? false;
  const withBitmap = options.withBitmap ?? false;
  const onResetBatch = options.onResetBatch;
  if (!(Number.isSafeInteger(vcpus) && vcpus >= 1 && vcpus <= RING_MAX_VCPUS)) {
    throw fail('invalid-argument', `vcpus ${vcpus} is not an integer in [1, ${RING_MAX_VCPUS}] (EINVAL)`, {
      field: 'vcpus',
      errno: 'EINVAL',
    });
  }
  const { reserved, softLimit } = checkRingSize(entries, pml);
  const mask = entries - 1;
  const ringBytes = vcpus * entries * KVM_DIRTY_GFN_BYTES;
  const bytes = ringBufferBytes(vcpus, entries);

  let buffer: SharedArrayBuffer;
  if (options.buffer === undefined) {
    buffer = new SharedArrayBuffer(bytes);
    const header = new Int32Array(buffer, ringBytes, RING_LAYOUT.HEADER_BYTES / 4);
    header[RING_LAYOUT.MAGIC] = MAGIC;
    header[RING_LAYOUT.VERSION] = VERSION;
    header[RING_LAYOUT.VCPUS] = vcpus;
    header[RING_LAYOUT.ENTRIES] = entries;
    header[RING_LAYOUT.RESERVED] = reserved;
    header[RING_LAYOUT.WITH_BITMAP] = withBitmap ? 1 : 0;
  } else {
    buffer = options.buffer;
    if (!(buffer instanceof SharedArrayBuffer) || buffer.byteLength !== bytes) {
      throw fail(
        'invalid-argument',
        `buffer: expected the ${bytes}-byte SharedArrayBuffer of a reporter with ${vcpus} rings of ${entries} entries`,
        { field: 'buffer' },
      );
    }
    const header = new Int32Array(buffer, ringBytes, RING_LAYOUT.HEADER_BYTES / 4);
    const want = [MAGIC, VERSION, vcpus, entries, reserved, withBitmap ? 1 : 0];
    const have = [
      RING_LAYOUT.MAGIC,
      RING_LAYOUT.VERSION,
      RING_LAYOUT.VCPUS,
      RING_LAYOUT.ENTRIES,
      RING_LAYOUT.RESERVED,
      RING_LAYOUT.WITH_BITMAP,
    ].map((i) => Atomics.load(header, i));
    if (want.some((v, i) => have[i] !== v)) {
      throw fail(
        'invalid-argument',
        `buffer: its header [magic, version, vcpus, entries, reserved, withBitmap] is [${have.join(', ')}], expected [${want.join(', ')}]`,
        { field: 'buffer' },
      );
    }
  }

  /** The rings as u32 words: entry e at words 4e (flags), 4e+1 (slot), 4e+2/4e+3 (offset lo/hi). */
  const gfn = new Uint32Array(buffer, 0, ringBytes / 4);
  const idx = new Int32Array(
    buffer,
    ringBytes + RING_LAYOUT.HEADER_BYTES,
    (vcpus * RING_LAYOUT.RING_BLOCK_BYTES) / 4,
  );
  const STRIDE = RING_LAYOUT.RING_BLOCK_BYTES / 4;
  const DIRTY = RING_LAYOUT.DIRTY_INDEX;
  const RESET = RING_LAYOUT.RESET_INDEX;

  const slotsById = new Map<number, SlotState>();
  const slotsByField = new Map<number, SlotState>();
  /** Private harvest cursors (QEMU's `fetch_index`), harvester side. */
  const cursor = new Array<number>(vcpus).fill(0);
  for (let v = 0; v < vcpus; v++) {
    // Attaching to live rings: skip entries already harvested but not yet reset.
    let c = Atomics.load(idx, v * STRIDE + RESET);
    for (let n = 0; n < entries; n++) {
      const f = Atomics.load(gfn, (v * entries + (c & mask)) * 4);
      if ((f & KVM_DIRTY_GFN_F_RESET) === 0 || (f & KVM_DIRTY_GFN_F_DIRTY) !== 0) break;
      c = (c + 1) | 0;
    }
    cursor[v] = c;
  }
  /** Slots whose scratch bitmap the current reset touched. */
  const dirtySlots: SlotState[] = [];

  let harvested = 0;
  let resetCount = 0;
  let coalescedBatches = 0;
  let ignoredBatches = 0;
  let rearmed = 0;
  let tlbFlushes = 0;
  let last: HarvestCost = { xchgWords: 0, copyWords: 0, rearmedPages: 0, tlbFlushes: 0, ringEntries: 0 };
  /** What the last reset did, for getDirtyLog's cost. */
  let lastReset = { reset: 0, rearmed: 0 };

  const slotOf = (id: number, op: string): SlotState => {
    const s = slotsById.get(id);
    if (s === undefined) {
      // KVM answers ENOENT for a slot that does not exist or does not log.
      throw fail('invalid-state', `${op}: slot ${id} has no dirty log (ENOENT)`, { errno: 'ENOENT' });
    }
    return s;
  };

  const checkVcpu = (vcpu: number, op: string): void => {
    if (!(Number.isInteger(vcpu) && vcpu >= 0 && vcpu < vcpus)) {
      throw fail('out-of-range', `${op}: vCPU ${vcpu} has no ring (rings: 0..${vcpus - 1})`, {
        field: 'vcpu',
      });
    }
  };

  const usedOf = (v: number): number =>
    (Atomics.load(idx, v * STRIDE + DIRTY) - Atomics.load(idx, v * STRIDE + RESET)) >>> 0;

  /** ORs the 32 bits `x` into `s.scratch` at page `bit`, recording words that become non-zero. */
  const orBits = (s: SlotState, bit: number, x: number): void => {
    if (x === 0) return;
    const words = (s.scratch as Bitmap).words;
    const w = Math.floor(bit / 32);
    const sh = bit % 32;
    orWord(s, words, w, x << sh);
    if (sh !== 0) orWord(s, words, w + 1, x >>> (32 - sh));
  };
  const orWord = (s: SlotState, words: Uint32Array, w: number, x: number): void => {
    if (x === 0) return;
    const old = words[w] as number;
    if (old === 0) {
      if (s.nTouched === s.touched.length) {
        const grown = new Uint32Array(Math.min(s.touched.length * 2, words.length));
        grown.set(s.touched);
        s.touched = grown;
      }
      s.touched[s.nTouched++] = w;
    }
    words[w] = old | x;
  };

  /** `kvm_reset_dirty_gfn`: validates one batch and adds it to its slot's re-arm mask. */
  const flushBatch = (field: number, base: number, lo: number, hi: number): void => {
    coalescedBatches++;
    if (onResetBatch !== undefined) {
      onResetBatch(field, base, (BigInt(hi >>> 0) << 32n) | BigInt(lo >>> 0));
    }
    const s = slotsByField.get(field);
    const fls = hi !== 0 ? 63 - Math.clz32(hi) : 31 - Math.clz32(lo);
    if (s === undefined || !(base + fls < s.pages)) {
      ignoredBatches++;
      return;
    }
    if (s.scratch === undefined) s.scratch = Bitmap.create(s.pages);
    if (s.nTouched === 0) dirtySlots.push(s);
    orBits(s, base, lo);
    orBits(s, base + 32, hi);
  };

  /** One `rearm` call for everything a reset (or a side-bitmap harvest) put into `s.scratch`. */
  const rearmSlot = (s: SlotState): number =>
    rearmer.rearm(s.info.id, s.scratch as Bitmap, { words: s.touched, count: s.nTouched });

  /** Zeroes exactly the scratch words that were touched: O(dirty words), not O(slot). */
  const clearScratch = (s: SlotState): void => {
    const words = (s.scratch as Bitmap).words;
    for (let k = 0; k < s.nTouched; k++) words[s.touched[k] as number] = 0;
    s.nTouched = 0;
  };

  const resetRing = (v: number): number => {
    const base = v * entries;
    let r = Atomics.load(idx, v * STRIDE + RESET);
    let n = 0;
    let curSlot = 0;
    let curOffset = 0;
    let lo = 0;
    let hi = 0;
    let first = true;
    for (; n < entries; n++) {
      const w = (base + (r & mask)) * 4;
      if ((Atomics.load(gfn, w) & KVM_DIRTY_GFN_F_RESET) === 0) break;
      const slot = gfn[w + 1] as number;
      const offset = (gfn[w + 2] as number) + (gfn[w + 3] as number) * 2 ** 32;
      Atomics.store(gfn, w, 0);
      r = (r + 1) | 0;
      if (!first && slot === curSlot) {
        const delta = offset - curOffset;
        if (delta >= 0 && delta < 64) {
          if (delta < 32) lo |= 1 << delta;
          else hi |= 1 << (delta - 32);
          continue;
        }
        if (delta > -64 && delta < 0) {
          // Backwards visit: rebase only if shifting loses no set bit (mask << s >> s == mask).
          const s = -delta;
          const fls = hi !== 0 ? 63 - Math.clz32(hi) : 31 - Math.clz32(lo);
          if (fls + s <= 63) {
            if (s >= 32) {
              hi = lo << (s - 32);
              lo = 0;
            } else {
              hi = (hi << s) | (lo >>> (32 - s));
              lo = lo << s;
            }
            lo |= 1;
            curOffset = offset;
            continue;
          }
        }
      }
      if (!first) flushBatch(curSlot, curOffset, lo, hi);
      curSlot = slot;
      curOffset = offset;
      lo = 1;
      hi = 0;
      first = false;
    }
    if (!first) flushBatch(curSlot, curOffset, lo, hi);
    if (n > 0) {
      // Every freed entry's flags are 0 before the producer can see the room.
      Atomics.store(idx, v * STRIDE + RESET, r);
      Atomics.notify(idx, v * STRIDE + RESET);
    }
    return n;
  };

  /** The harvest loop shared by `harvest`, `harvestInto` and `reap`. */
  const harvestRing = (
    v: number,
    max: number,
    emit: (slot: number, offset: number, i: number) => void,
  ): number => {
    const base = v * entries;
    let c = cursor[v] as number;
    const r = Atomics.load(idx, v * STRIDE + RESET);
    if (((r - c) | 0) > 0) c = r; // a reset ran past the cursor (RESET flags it never set)
    let n = 0;
    while (n < max && n < entries) {
      const w = (base + (c & mask)) * 4;
      if ((Atomics.load(gfn, w) & KVM_DIRTY_GFN_F_DIRTY) === 0) break;
      emit(gfn[w + 1] as number, (gfn[w + 2] as number) + (gfn[w + 3] as number) * 2 ** 32, n);
      Atomics.store(gfn, w, KVM_DIRTY_GFN_F_RESET);
      c = (c + 1) | 0;
      n++;
    }
    cursor[v] = c;
    harvested += n;
    return n;
  };

  const recordPending = (slot: number, offset: number): void => {
    const s = slotsByField.get(slot);
    // QEMU's kvm_dirty_ring_mark_page ignores entries naming no slot or a page past its end.
    if (s === undefined || !(offset < s.pages)) return;
    if (s.pending === undefined) s.pending = Bitmap.create(s.pages);
    const words = s.pending.words;
    words[offset >>> 5] = (words[offset >>> 5] as number) | (1 << (offset & 31));
  };

  const reporter: RingReporter = {
    kind: 'ring',
    vcpus,
    entries,
    softLimit,
    reserved,
    withBitmap,
    buffer,
    addSlot(slot: MemslotInfo) {
      const { id, asId, pages } = slot;
      if (!(
        Number.isInteger(id) &&
        id >= 0 &&
        id <= 0xffff &&
        Number.isInteger(asId) &&
        asId >= 0 &&
        asId <= 0xffff
      )) {
        throw fail(
          'invalid-argument',
          `addSlot: slot id ${id} / as_id ${asId} must be integers in [0, 65535] (EINVAL)`,
          {
            field: 'slot',
            errno: 'EINVAL',
          },
        );
      }
      if (!(Number.isSafeInteger(pages) && pages >= 0 && pages <= 2 ** 32)) {
        throw fail(
          'invalid-argument',
          `addSlot: slot ${id} has ${pages} pages, not an integer in [0, 2^32]`,
          {
            field: 'pages',
            errno: 'EINVAL',
          },
        );
      }
      if (slotsById.has(id)) {
        throw fail('invalid-state', `addSlot: slot ${id} already has a dirty log`);
      }
      const state: SlotState = {
        info: slot,
        field: ((asId << 16) | id) >>> 0,
        pages,
        pending: undefined,
        scratch: undefined,
        touched: new Uint32Array(Math.max(1, Math.min(64, Math.ceil(pages / 32)))),
        nTouched: 0,
        side: withBitmap ? Bitmap.create(pages) : undefined,
      };
      slotsById.set(id, state);
      slotsByField.set(state.field, state);
    },
    markDirty(slot: number, offsets: Uint32Array, count: number, vcpu: number) {
      const s = slotOf(slot, 'markDirty');
      if (!(Number.isInteger(count) && count >= 0 && count <= offsets.length)) {
        throw fail(
          'invalid-argument',
          `markDirty: count ${count} is not an integer in [0, ${offsets.length}]`,
          {
            field: 'count',
          },
        );
      }
      const pages = s.pages;
      for (let i = 0; i < count; i++) {
        const p = offsets[i] as number;
        if (!(p < pages)) {
          throw fail('out-of-range', `markDirty: page ${p} is outside slot ${slot} (${pages} pages)`, {
            field: 'offsets',
          });
        }
      }
      if (vcpu === -1) {
        if (s.side === undefined) {
          throw fail(
            'invalid-state',
            `markDirty: a write without vCPU context (vcpu -1) to slot ${slot} on a ring-only VM would be lost ` +
              '(KVM: WARN, dropped); x86 KVM writes happen on a vCPU thread and must name it, and only ' +
              'DIRTY_LOG_RING_WITH_BITMAP (arm64) sends vCPU-less writes to a bitmap (withBitmap)',
            { field: 'vcpu' },
          );
        }
        const words = s.side.words;
        for (let i = 0; i < count; i++) {
          const p = offsets[i] as number;
          Atomics.or(words, p >>> 5, 1 << (p & 31));
        }
        return;
      }
      checkVcpu(vcpu, 'markDirty');
      if (count === 0) return;
      const ix = vcpu * STRIDE;
      let d = Atomics.load(idx, ix + DIRTY);
      const used = (d - Atomics.load(idx, ix + RESET)) >>> 0;
      if (used + count > entries) {
        throw fail(
          'invalid-state',
          `markDirty: pushing ${count} entries onto vCPU ${vcpu}'s ring (${used} of ${entries} used, soft limit ` +
            `${softLimit}) would overwrite un-reset entries — KVM would WARN and lose dirty pages; a vCPU must ` +
            'exit with DIRTY_RING_FULL when room() is 0 and push no more than room() entries',
          { field: 'vcpu' },
        );
      }
      const base = vcpu * entries;
      const field = s.field;
      for (let i = 0; i < count; i++) {
        const w = (base + (d & mask)) * 4;
        gfn[w + 1] = field;
        gfn[w + 2] = offsets[i] as number;
        gfn[w + 3] = 0;
        Atomics.store(gfn, w, KVM_DIRTY_GFN_F_DIRTY); // publish: data before flags
        d = (d + 1) | 0;
        Atomics.store(idx, ix + DIRTY, d);
      }
      Atomics.add(idx, ix + RING_LAYOUT.PUSHED, count);
      const after = used + count;
      for (let seen = Atomics.load(idx, ix + RING_LAYOUT.MAX_USED); after > seen;) {
        const prev = Atomics.compareExchange(idx, ix + RING_LAYOUT.MAX_USED, seen, after);
        if (prev === seen) break;
        seen = prev;
      }
    },
    room(vcpu: number) {
      checkVcpu(vcpu, 'room');
      return Math.max(0, softLimit - usedOf(vcpu));
    },
    used(vcpu: number) {
      checkVcpu(vcpu, 'used');
      return usedOf(vcpu);
    },
    harvest(vcpu: number, onEntry?: (slot: number, offset: number) => void, max = Infinity) {
      checkVcpu(vcpu, 'harvest');
      return harvestRing(
        vcpu,
        max,
        onEntry === undefined ? () => undefined : (slot, offset) => onEntry(slot, offset),
      );
    },
    harvestInto(vcpu: number, slots: Uint32Array, offsets: Float64Array) {
      checkVcpu(vcpu, 'harvestInto');
      return harvestRing(vcpu, Math.min(slots.length, offsets.length), (slot, offset, i) => {
        slots[i] = slot;
        offsets[i] = offset;
      });
    },
    reset() {
      let n = 0;
      for (let v = 0; v < vcpus; v++) n += resetRing(v);
      let pages = 0;
      try {
        for (const s of dirtySlots) pages += rearmSlot(s);
      } finally {
        // Even if a rearm threw: the scratch bitmaps must be clean for the next reset.
        for (const s of dirtySlots) clearScratch(s);
        dirtySlots.length = 0;
      }
      if (n > 0) tlbFlushes++;
      resetCount += n;
      rearmed += pages;
      lastReset = { reset: n, rearmed: pages };
      return n;
    },
    reap(vcpu?: number) {
      let n = 0;
      if (vcpu === undefined) {
        rearmer.syncDirtyLog?.(); // QEMU kicks every vCPU first: PML buffers drain into the rings.
        for (let v = 0; v < vcpus; v++) n += harvestRing(v, Infinity, recordPending);
      } else {
        checkVcpu(vcpu, 'reap');
        n = harvestRing(vcpu, Infinity, recordPending);
      }
      reporter.reset();
      return n;
    },
    ringFullExit(vcpu: number, timeoutMs = 0) {
      checkVcpu(vcpu, 'ringFullExit');
      if (!(timeoutMs >= 0)) {
        throw fail('invalid-argument', `ringFullExit: timeout ${timeoutMs} ms is not >= 0`, {
          field: 'timeoutMs',
        });
      }
      const ix = vcpu * STRIDE;
      Atomics.add(idx, ix + RING_LAYOUT.FULL_EXITS, 1);
      for (;;) {
        const r = Atomics.load(idx, ix + RESET);
        const room = Math.max(0, softLimit - ((Atomics.load(idx, ix + DIRTY) - r) >>> 0));
        if (room > 0 || timeoutMs === 0) return room;
        if (Atomics.wait(idx, ix + RESET, r, timeoutMs) === 'timed-out') return reporter.room(vcpu);
      }
    },
    getDirtyLog(slot: number, out: Bitmap) {
      const s = slotOf(slot, 'getDirtyLog');
      if (out.bits !== s.pages) {
        throw fail(
          'invalid-argument',
          `getDirtyLog: buffer covers ${out.bits} pages, slot ${slot} has ${s.pages}`,
          {
            field: 'out',
          },
        );
      }
      reporter.reap();
      const { reset: ringEntries, rearmed: ringRearmed } = lastReset;
      const dst = out.words;
      if (s.pending === undefined) dst.fill(0);
      else {
        dst.set(s.pending.words);
        s.pending.words.fill(0);
      }
      let copyWords = dst.length / 2;
      let xchgWords = 0;
      let sideRearmed = 0;
      let flushes = ringEntries > 0 ? 1 : 0;
      if (s.side !== undefined) {
        // Collected last (§2.7), as a classic KVM_GET_DIRTY_LOG of the slot bitmap: xchg the
        // non-zero words, re-arm exactly those pages, flush.
        const src = s.side.words;
        const scratch = s.scratch ?? (s.scratch = Bitmap.create(s.pages));
        const sw = scratch.words;
        let sidePages = 0;
        for (let i = 0; i < src.length; i += 2) {
          if (src[i] === 0 && src[i + 1] === 0) continue;
          xchgWords++;
          const lo = Atomics.exchange(src, i, 0);
          const hi = Atomics.exchange(src, i + 1, 0);
          if (lo !== 0) orWord(s, sw, i, lo);
          if (hi !== 0) orWord(s, sw, i + 1, hi);
          sidePages += popcount32(lo) + popcount32(hi);
          dst[i] = (dst[i] as number) | lo;
          dst[i + 1] = (dst[i + 1] as number) | hi;
        }
        copyWords += src.length / 2;
        if (sidePages > 0) {
          try {
            sideRearmed = rearmSlot(s);
          } finally {
            clearScratch(s);
          }
          rearmed += sideRearmed;
          tlbFlushes++;
          flushes++;
        }
      }
      last = {
        xchgWords,
        copyWords,
        rearmedPages: ringRearmed + sideRearmed,
        tlbFlushes: flushes,
        ringEntries,
      };
      return out.popcount();
    },
    lastHarvestCost() {
      return last;
    },
    share() {
      const data: RingReporterShareData = {
        vcpus,
        entries,
        pml,
        withBitmap,
        buffer,
        slots: [...slotsById.values()].map((s) => s.info),
      };
      return { module: '@dirtytrack/reporters', factory: 'attachRingReporter', data };
    },
    stats() {
      let pushed = 0;
      let fullExits = 0;
      let maxUsed = 0;
      for (let v = 0; v < vcpus; v++) {
        pushed += Atomics.load(idx, v * STRIDE + RING_LAYOUT.PUSHED) >>> 0;
        fullExits += Atomics.load(idx, v * STRIDE + RING_LAYOUT.FULL_EXITS) >>> 0;
        maxUsed = Math.max(maxUsed, Atomics.load(idx, v * STRIDE + RING_LAYOUT.MAX_USED) >>> 0);
      }
      return {
        pushed,
        harvested,
        reset: resetCount,
        coalescedBatches,
        ignoredBatches,
        rearmed,
        tlbFlushes,
        fullExits,
        maxUsed,
      };
    },
  };
  for (const slot of options.slots ?? []) reporter.addSlot(slot);
  return reporter;
}

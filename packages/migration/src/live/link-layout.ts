/**
 * What the live link's two threads share. The migration thread (the caller of `runPrecopy`,
 * blocked in synchronous code while it runs) hands batches of sink operations to the sender
 * worker, which owns the sockets, with `postMessage`; the worker acknowledges each batch, or a
 * failure, in these `Int32Array` words, which the migration thread waits on with `Atomics.wait`.
 */
export const LINK = {
  /** The sequence number of the last batch the sender has handed to the kernel. */
  DONE: 0,
  /** 0 while the link is healthy; 1 once it failed (the reason is in the message area). */
  FAILED: 1,
  /** 1 once every connection is open and authenticated. */
  READY: 2,
  /** Bytes of the failure message (UTF-8, at {@link LINK_MESSAGE_AT}). */
  MESSAGE_LENGTH: 3,
  /** Postcopy page requests the sender has put in the request ring so far. */
  REQ_HEAD: 4,
  /** Requests the migration thread has taken out of the ring so far. */
  REQ_TAIL: 5,
  WORDS: 16,
} as const;

/** Where the failure message starts (bytes) and how long it may be. */
export const LINK_MESSAGE_AT = LINK.WORDS * 4;
export const LINK_MESSAGE_MAX = 1024;
export const LINK_CONTROL_BYTES = LINK_MESSAGE_AT + LINK_MESSAGE_MAX;

/** Float64 counters the sender keeps (single writer). */
export const COUNTER = {
  /** Bytes written on the main connection after its handshake. */
  MAIN_BYTES: 0,
  /** Bytes written on the multifd connections after their handshakes. */
  MULTIFD_BYTES: 1,
  /** Multifd packets sent (SYNC packets included). */
  PACKETS: 2,
  /** Bytes of page data read straight from guest memory into the sockets. */
  ZERO_COPY_BYTES: 3,
  /** Bytes the kernel has taken so far on every connection (updated while a batch drains). */
  DRAINED: 4,
  /** Bytes written on the postcopy-preempt connection after its handshake. */
  PREEMPT_BYTES: 5,
  /** Bytes of page data copied from guest memory into the sender's staging buffers. */
  STAGED_BYTES: 6,
  /** Staging buffers the sender allocated (the ones made before connecting included). */
  STAGING_BUFFERS: 7,
  /** ns the sender spent on batches, from taking each until the kernel had all of it. */
  BUSY_NS: 8,
  /** Bytes of the batches the sender has finished (what BUSY_NS was spent on). */
  DONE_BYTES: 9,
  /** `writev` calls on a descriptor (page records from guest memory through koffi, fd-writer.ts). */
  WRITEV_CALLS: 10,
  /** Zero-copy-send: page bytes the multifd channels handed the kernel by reference (`vmsplice`). */
  SPLICED_BYTES: 11,
  WORDS: 12,
} as const;

/**
 * Sink operations, four Int32 words each: op, word, mask, data. Postcopy adds DISCARD (word =
 * first page, mask = pages), POSTCOPY_RUN (LISTEN and RUN: the guest runs on the destination;
 * every later page goes as a record on the main connection) and URGENT (requested pages: on the
 * preempt channel when there is one).
 */
export const OP = {
  PAGES: 1,
  SYNC: 2,
  COMPLETE: 3,
  DISCARD: 4,
  POSTCOPY_RUN: 5,
  URGENT: 6,
  VCPU_STATE: 7,
} as const;

/** The VCPU_STATE command item, encoded, waits here for its op (word = its length in bytes). */
export const VCPU_STATE_ITEM_BYTES = 5 + 18 + 40 * 1024;
export const OP_WORDS = 4;

/** What the sender worker gets as `workerData`. */
export interface SenderData {
  readonly memory: SharedArrayBuffer;
  readonly control: SharedArrayBuffer;
  readonly counters: SharedArrayBuffer;
  readonly host: string;
  readonly port: number;
  readonly token: string | undefined;
  readonly migrationId: Uint8Array;
  readonly ramBytes: number;
  /** Multifd connections (0 = multifd off). */
  readonly channels: number;
  /** HELLO flags (postcopy, preempt, resume). */
  readonly flags: number;
  readonly timeoutMs: number;
  /**
   * Postcopy's page requests from the return path: {@link REQUEST_SLOTS} Int32 pages, then as
   * many Float64 arrival times (ns, the real clock), a ring indexed by REQ_HEAD / REQ_TAIL.
   */
  readonly requests: SharedArrayBuffer;
  /** Recovery: the destination's received bitmap lands here (64-bit little-endian words). */
  readonly bitmap: SharedArrayBuffer;
  /** Where page bytes are written from (see {@link SendFrom}). */
  readonly sendFrom: SendFrom;
  /** False: never write through koffi's `writev`, even where it loads (OpenLiveLinkOptions.fdWrites). */
  readonly fdWrites: boolean;
  /** QEMU's `zero-copy-send`: multifd pages by reference through a pipe per channel (fd-writer.ts). */
  readonly zeroCopySend: boolean;
  /** {@link VCPU_STATE_ITEM_BYTES}: the VCPU_STATE item an {@link OP.VCPU_STATE} op sends. */
  readonly vcpuState: SharedArrayBuffer;
  /** GUEST_TRACE items, sent in the setup section (the guest replays this trace). */
  readonly guestTrace?: readonly Uint8Array[];
}

/**
 * Where the sender's sockets read page data from.
 * - `staging`: the pages (and their record headers) are copied into a few reused 1 MiB buffers,
 *   written as a handful of large chunks through Node's stream. One user-space copy (~60 ms per
 *   GiB here), and the kernel then reads the same few hot buffers again and again.
 * - `guest-memory`: each page goes to the kernel as a view of guest memory, as QEMU's
 *   `qemu_put_buffer_async` hands it to `writev`. Every connection is written with `writev` on the
 *   socket's own descriptor through koffi (fd-writer.ts): a slice's page records (header and page
 *   as two iovecs) or multifd packets (header, then runs of consecutive pages, which the
 *   destination reads in place) as one list of iovecs, 1024 a call, with no object per page.
 *   Where koffi cannot load (not Linux) they go through Node's stream as chunks: two a page for
 *   records, which costs more than the copy.
 * - `auto` (the default): `guest-memory` where koffi loads; elsewhere page records are staged and
 *   multifd packets still go from guest memory through Node's stream. Measured here over 1 GiB
 *   idle precopy, side by side in each repetition of `bench migrate`: records through `writev`
 *   1.09–1.63× as fast as staged in all 14 repetitions of four runs (median 1.18×). Multifd
 *   packets through `writev` against Node's stream, alternating runs: 0.94–1.31× (median 1.10×)
 *   over 8 pairs with 2 channels, 0.97–1.17× (1.10×) over 4 with 4; from guest memory against
 *   staged, 2 channels: 14.6–16.4 against 12.5–13.6 Gbit/s.
 */
export type SendFrom = (typeof SEND_FROM)[number];

/** Every {@link SendFrom}. */
export const SEND_FROM = ['staging', 'guest-memory', 'auto'] as const;

/** Slots of the request ring: far more than a destination's vCPUs can have outstanding. */
export const REQUEST_SLOTS = 65536;
export const REQUESTS_BYTES = REQUEST_SLOTS * 12;

/** Migration thread → sender. */
export type SenderRequest =
  /** `PageSink.begin`: who sends zero pages (records on main, multifd packets, nobody). */
  | { readonly kind: 'config'; readonly zeroPages: 'record' | 'packet' | 'none' }
  | { readonly kind: 'batch'; readonly seq: number; readonly ops: Int32Array; readonly count: number }
  | { readonly kind: 'verify' }
  | { readonly kind: 'finish' }
  | { readonly kind: 'abort' };

/** Sender → migration thread (read once the migration thread is back in its event loop). */
export type SenderReply =
  | {
      readonly kind: 'verified';
      readonly pages: number;
      readonly mismatched: number;
      readonly firstMismatch: number;
    }
  | { readonly kind: 'finished' }
  | { readonly kind: 'failed'; readonly message: string };

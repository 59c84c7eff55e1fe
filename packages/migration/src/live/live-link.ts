import { randomBytes } from 'node:crypto';
import { Worker } from 'node:worker_threads';
import { createRealClock, DirtytrackError, NS_PER_S, type Clock, type Transport } from '@dirtytrack/core';
import {
  encodeGuestTrace,
  encodeVcpuState,
  HELLO_FLAG,
  type GuestTraceWire,
  type VcpuStateMessage,
} from './wire.js';
import { fdWritesAvailable } from './fd-writer.js';
import type { PageSink } from '../precopy.js';
import {
  COUNTER,
  LINK,
  LINK_CONTROL_BYTES,
  LINK_MESSAGE_AT,
  OP,
  OP_WORDS,
  REQUEST_SLOTS,
  REQUESTS_BYTES,
  SEND_FROM,
  VCPU_STATE_ITEM_BYTES,
  type SenderData,
  type SendFrom,
  type SenderReply,
  type SenderRequest,
} from './link-layout.js';

const COMPONENT = 'live-link';
const PAGE = 4096;

export interface LiveLinkOptions {
  /** The destination (`dirtytrack serve`). */
  host: string;
  port: number;
  /** Shared secret for the handshake's HMAC; required by a destination off loopback. */
  token?: string;
  /** Guest RAM: what is migrated (its pages are read straight into the sockets). */
  memory: SharedArrayBuffer;
  /** Multifd connections to open (0 = multifd off). Must match the run's capabilities. */
  channels: number;
  /** HELLO flags (postcopy, preempt, resume). Default 0. */
  flags?: number;
  /**
   * The first bandwidth estimate (B/s) before anything was measured; afterwards the link reports
   * the fastest rate it measured over its last {@link RATE_HISTORY} batches. Default 100 MB/s.
   */
  bandwidth?: number;
  /** A batch that makes no progress for this long fails the link (a cut cable). Default 30 s. */
  timeoutMs?: number;
  /**
   * Precopy sizes a window's batch at this many times the measured bandwidth (the transport's
   * `batchHeadroom`). Default {@link DEFAULT_BATCH_HEADROOM}.
   */
  batchHeadroom?: number;
  /** What `transmit` times and returns on: the caller's clock (the live engine's). Default a real clock. */
  clock?: Clock;
  /**
   * Work of the threads QEMU runs beside the migration thread that only this (blocked) thread can
   * do here, e.g. the dirty ring's reaper: called every {@link WHILE_WAITING_MS} ms while
   * `transmit` waits for the kernel to take a batch.
   */
  whileWaiting?: () => void;
  /**
   * Where page data is written from: a copy in reused staging buffers, guest memory itself, or
   * `auto` — guest memory where koffi loads (page records through `writev`), else records staged
   * and multifd packets from guest memory. Default `auto`.
   */
  sendFrom?: SendFrom;
  /**
   * Whether the sender may write through `writev` (koffi) where it loads. Default true; false
   * takes the path of a machine where koffi cannot load — page records and multifd packets as
   * views of guest memory through Node's stream, or records staged with `auto` — to test or
   * compare it on Linux.
   */
  fdWrites?: boolean;
  /**
   * QEMU's `zero-copy-send` (multifd only): each multifd channel's pages go to the kernel by
   * reference — `vmsplice` into a pipe, `splice` into the socket — instead of being copied into
   * the socket's buffers (fd-writer.ts). Needs `channels` > 0 and `writev`'s koffi (Linux), and
   * not `sendFrom: 'staging'` or `fdWrites: false`. Default false.
   */
  zeroCopySend?: boolean;
  /**
   * `transmit` returns once the batch is queued behind the one still draining (the migration
   * thread prepares the next batch meanwhile); `settle` waits for both. Batches that stop or
   * switch the guest (COMPLETE, postcopy) always wait until they have left. Default true.
   */
  pipelined?: boolean;
  /**
   * The stopped guest's vCPU state (`LiveGuest.progress()`), sent as a VCPU_STATE command before
   * COMPLETE and before the postcopy switch, so the destination's vCPUs go on where these stood.
   * Called then, on the migration thread; undefined sends none.
   */
  vcpuState?: () => VcpuStateMessage | undefined;
  /**
   * The trace file the guest's trace program replays: sent as GUEST_TRACE commands in the setup
   * section (once; a recovery does not send it again), so the destination can replay it too.
   */
  guestTrace?: GuestTraceWire;
}

/**
 * The live link's batch headroom: a window's batch is twice what the last batches' rate would
 * carry in the window's time left. A batch's measured rate is pulled down by its fixed cost (the
 * hand-over to the sender and the last slice's drain), so at 1× every window ended with the link
 * idle and batches grew only slowly from the first guess — on loopback a 1 GiB precopy idled for
 * 25–70 ms of every 100 ms window. At 2× a window runs until its batch has drained (up to twice
 * as long), the link is never idle while precopy has pages to send, and `max-bandwidth` still caps
 * each window's bytes.
 */
export const DEFAULT_BATCH_HEADROOM = 2;

/** How often `whileWaiting` runs while a batch drains. */
export const WHILE_WAITING_MS = 2;

/**
 * Batches whose rates the link's bandwidth is the fastest of. `runPrecopy` sizes a window's batch
 * as bandwidth × the window's time left: a batch that drains early leaves the link idle for the
 * rest of the window (throughput lost for good), one that drains late only makes that window
 * longer (precopy measures the window's real rate either way). A single batch's rate is pulled
 * down by the hand-over and by the other processes on the cores, so the link reports the fastest
 * of its last few rather than an average.
 */
const RATE_HISTORY = 4;

export interface LiveLinkStats {
  /** Bytes written on the main connection, after its handshake. */
  'main-bytes': number;
  /** Bytes written on the multifd connections, after their handshakes. */
  'multifd-bytes': number;
  /** Multifd packets, SYNC packets included. */
  'multifd-packets': number;
  /** Page bytes that went from guest memory into the sockets without an intermediate copy (`sendFrom: 'guest-memory'`, and `auto` where koffi loads). */
  'zero-copy-bytes': number;
  /** Page bytes copied into the sender's staging buffers before the sockets took them (`sendFrom: 'staging'`, and `auto`'s page records where koffi cannot load). */
  'staged-bytes': number;
  /**
   * Staging buffers (1 MiB each) the sender allocated: the 8 made and touched before connecting,
   * and any more a run needed (more connections, slower draining).
   */
  'staging-buffers': number;
  /**
   * `writev` calls the sender made on its connections' descriptors (through koffi), writing page
   * records and multifd packets straight from guest memory — one per up to 1024 iovecs, plus one
   * per retry after the socket's buffer was full. 0 when Node's stream wrote them (staged, or
   * where koffi cannot load).
   */
  'writev-calls': number;
  /**
   * Zero-copy-send: page bytes the multifd channels handed the kernel by reference (`vmsplice`
   * into a pipe, `splice` into the socket), so no copy on this side at all. 0 without it.
   */
  'spliced-bytes': number;
  /** Bytes written on the postcopy-preempt connection(s), after their handshakes. */
  'preempt-bytes': number;
}

export interface VerifyResult {
  pages: number;
  mismatched: number;
  firstMismatch: number;
}

/**
 * The live plane's link: a {@link Transport} plus the {@link PageSink} that `runPrecopy` feeds.
 * The migration thread (the caller of `runPrecopy`, synchronous) queues the sink's operations and,
 * at each `transmit`, hands them to a sender worker that owns the TCP connections, then blocks
 * with `Atomics.wait` until the kernel has taken the batch before (pipelined; `settle` waits for
 * every byte, and batches that stop or switch the guest always wait for their own) — so the
 * times `transmit` returns are real, and the bandwidth precopy measures is the real one.
 */
export interface LiveLink {
  readonly link: Transport;
  readonly sink: PageSink;
  /** Which pages of `mask` (word `word`) hold data now: read from guest memory (QEMU's `buffer_is_zero`). */
  dataOf(word: number, mask: number): number;
  /** After a completed run: every page's hash to the destination, which compares its copy. */
  verify(): Promise<VerifyResult>;
  /**
   * Sends EOF and closes every connection (after `verify`), or drops them: after a failure, or
   * with `abort` — a migration that did not complete (cancelled, stopped at its time limit) must
   * not send the EOF that tells the destination it has the whole guest (QEMU only sends
   * `QEMU_VM_EOF` at completion, and shuts the socket down on a cancel: `failed` there).
   */
  close(options?: { abort?: boolean }): Promise<void>;
  stats(): LiveLinkStats;
  /** Why the link failed, if it did. */
  readonly failure: string | undefined;
  /**
   * Postcopy: the pages the destination asked for on the return path since the last call, in
   * order, each with when its request arrived (ns on `clock`).
   */
  takeRequests(into: (page: number, atNs: number) => void): number;
  /**
   * Postcopy recovery (`migrate resume=true`), synchronous like `runPrecopy`: drops the old
   * connections, connects again with the resume flag (and the preempt channel, if any), and
   * returns the destination's received bitmap as 32-bit words (bit p = it has page p) after its
   * RESUME_ACK. Throws an `EPIPE` error if it cannot, within `timeoutMs`.
   */
  reconnect(): Uint32Array;
}

/** Connects to the destination (main connection, then each multifd channel) and authenticates. */
export async function openLiveLink(options: LiveLinkOptions): Promise<LiveLink> {
  const { memory, channels } = options;
  const bad = (field: string, why: string) =>
    new DirtytrackError('invalid-argument', `${field} ${why}`, { component: COMPONENT, field });
  if (!(memory instanceof SharedArrayBuffer) || memory.byteLength === 0 || memory.byteLength % PAGE !== 0)
    throw bad('memory', 'must be a non-empty SharedArrayBuffer of whole 4096-byte pages');
  if (!(Number.isInteger(channels) && channels >= 0 && channels <= 255))
    throw bad('channels', 'must be 0..255');
  if (options.sendFrom !== undefined && !SEND_FROM.includes(options.sendFrom))
    throw bad('sendFrom', "must be 'staging', 'guest-memory' or 'auto'");
  if (!(Number.isInteger(options.port) && options.port > 0 && options.port < 65536))
    throw bad('port', 'must be 1..65535');
  if (options.zeroCopySend === true) {
    // QEMU: "Zero copy only available for non-compressed non-TLS multifd migration".
    if (channels === 0) throw bad('zeroCopySend', 'needs multifd channels (channels > 0)');
    if (options.sendFrom === 'staging' || options.fdWrites === false)
      throw bad(
        'zeroCopySend',
        "sends pages from guest memory: not with sendFrom 'staging' or fdWrites false",
      );
    if (!fdWritesAvailable()) {
      throw new DirtytrackError(
        'unsupported',
        'zeroCopySend: needs vmsplice and splice through koffi (Linux, koffi installed)',
        { component: COMPONENT, field: 'zeroCopySend' },
      );
    }
  }
  const timeoutMs = options.timeoutMs ?? 30_000;
  const batchHeadroom = options.batchHeadroom ?? DEFAULT_BATCH_HEADROOM;
  if (!(Number.isFinite(batchHeadroom) && batchHeadroom >= 1 && batchHeadroom <= 16))
    throw bad('batchHeadroom', 'must be in [1, 16]');
  const clock = options.clock ?? createRealClock();
  let control = new Int32Array(new SharedArrayBuffer(LINK_CONTROL_BYTES));
  const counters = new Float64Array(new SharedArrayBuffer(COUNTER.WORDS * 8));
  const requests = new SharedArrayBuffer(REQUESTS_BYTES);
  const requestPages = new Int32Array(requests, 0, REQUEST_SLOTS);
  const requestTimes = new Float64Array(requests, REQUEST_SLOTS * 4, REQUEST_SLOTS);
  const bitmap = new SharedArrayBuffer(Math.ceil(memory.byteLength / PAGE / 64) * 8);
  let senderData: SenderData = {
    memory,
    control: control.buffer as SharedArrayBuffer,
    counters: counters.buffer as SharedArrayBuffer,
    host: options.host,
    port: options.port,
    token: options.token,
    migrationId: new Uint8Array(randomBytes(16)),
    ramBytes: memory.byteLength,
    channels,
    flags: options.flags ?? 0,
    timeoutMs,
    requests,
    bitmap,
    sendFrom: options.sendFrom ?? 'auto',
    fdWrites: options.fdWrites !== false,
    zeroCopySend: options.zeroCopySend === true,
    vcpuState: new SharedArrayBuffer(VCPU_STATE_ITEM_BYTES),
    ...(options.guestTrace === undefined ? {} : { guestTrace: encodeGuestTrace(options.guestTrace) }),
  };
  /** Queues the VCPU_STATE item (in the shared buffer, then its op), if there is a state. */
  const sendVcpuState = (): void => {
    const state = options.vcpuState?.();
    if (state === undefined) return;
    const item = encodeVcpuState(state);
    new Uint8Array(senderData.vcpuState).set(item);
    push(OP.VCPU_STATE, item.length, 0, 0);
  };
  let replies: SenderReply[] = [];
  let waiter: ((r: SenderReply) => void) | undefined;
  let workerError: string | undefined;
  const boot = (): Worker => {
    const w = startSender(senderData);
    const mine = control;
    w.on('message', (r: SenderReply) => {
      if (w !== worker) return; // a sender dropped by a recovery
      if (waiter !== undefined) {
        const f = waiter;
        waiter = undefined;
        f(r);
      } else replies.push(r);
    });
    w.on('error', (error) => {
      if (w !== worker) return;
      workerError = `sender thread failed: ${error.message}`;
      Atomics.store(mine, LINK.FAILED, 1);
      Atomics.notify(mine, LINK.DONE);
      waiter?.({ kind: 'failed', message: workerError });
    });
    return w;
  };
  let worker = boot();
  const next = (): Promise<SenderReply> => {
    const r = replies.shift();
    if (r !== undefined) return Promise.resolve(r);
    return new Promise((resolve) => {
      waiter = resolve;
    });
  };
  /** Set when a batch made no progress for `timeoutMs`: the link is cut, whatever TCP thinks. */
  let stalled: string | undefined;
  const failure = (): string | undefined => {
    if (stalled !== undefined) return stalled;
    if (Atomics.load(control, LINK.FAILED) === 0) return undefined;
    if (workerError !== undefined) return workerError;
    const n = Atomics.load(control, LINK.MESSAGE_LENGTH);
    return new TextDecoder().decode(new Uint8Array(control.buffer, LINK_MESSAGE_AT, n).slice());
  };

  // Wait for the connections without blocking this thread's event loop.
  const deadline = clock.now() + timeoutMs * 1e6;
  while (Atomics.load(control, LINK.READY) === 0 && failure() === undefined) {
    if (clock.now() > deadline) {
      await worker.terminate();
      throw new DirtytrackError(
        'timeout',
        `connect to ${options.host}:${options.port}: no answer within ${timeoutMs} ms`,
        {
          component: COMPONENT,
          errno: 'ETIMEDOUT',
        },
      );
    }
    await new Promise((resolve) => setTimeout(resolve, 2));
  }
  const why = failure();
  if (why !== undefined) {
    await worker.terminate();
    throw new DirtytrackError('invalid-state', `connect to ${options.host}:${options.port}: ${why}`, {
      component: COMPONENT,
      errno: 'ECONNREFUSED',
    });
  }

  let ops = new Int32Array(OP_WORDS * 1024);
  let count = 0;
  let seq = 0;
  let bytesSent = 0;
  // A low first guess: the first window's batch then drains quickly and measures the real rate.
  let bandwidth = options.bandwidth ?? 1e8;
  const rates: number[] = [];
  let pipelined = options.pipelined ?? true;
  // Batches posted and not yet seen done: [seq, bytes as the caller counted them], oldest first.
  const queued: [number, number][] = [];
  // What the sender had finished at the last rate sample: its busy time and those batches' bytes.
  let sampledBusyNs = 0;
  let sampledBytes = 0;
  const push = (op: number, word: number, mask: number, data: number): void => {
    if ((count + 1) * OP_WORDS > ops.length) {
      const bigger = new Int32Array(ops.length * 2);
      bigger.set(ops);
      ops = bigger;
    }
    const at = count * OP_WORDS;
    ops[at] = op;
    ops[at + 1] = word;
    ops[at + 2] = mask;
    ops[at + 3] = data;
    count++;
  };
  const linkFailure = (message: string) =>
    new DirtytrackError('invalid-state', `Unable to write to socket: ${message}`, {
      component: COMPONENT,
      errno: 'EPIPE',
    });
  /**
   * Hands the queued operations to the sender, then blocks until the kernel has taken every batch
   * but the last `behind` (0: all of them; 1: this one may still drain while the caller goes on).
   */
  const flush = (behind: 0 | 1): void => {
    const why0 = failure();
    if (why0 !== undefined) throw linkFailure(why0);
    if (count > 0) {
      seq++;
      const request: SenderRequest = { kind: 'batch', seq, ops, count };
      worker.postMessage(request, [ops.buffer]);
      ops = new Int32Array(OP_WORDS * 1024);
      count = 0;
    }
    const target = seq - behind;
    // A slow link is fine; one that takes nothing for `timeoutMs` is dead (a cut cable).
    let giveUp = clock.now() + timeoutMs * 1e6;
    let drained = counters[COUNTER.DRAINED] as number;
    for (;;) {
      const done = Atomics.load(control, LINK.DONE);
      if (done >= target) return;
      const why = failure();
      if (why !== undefined) throw linkFailure(why);
      const now = clock.now();
      const d = counters[COUNTER.DRAINED] as number;
      if (d !== drained) {
        drained = d;
        giveUp = now + timeoutMs * 1e6;
      } else if (now > giveUp) {
        // Dead, not slow: nothing may wait on this link again (close drops it, no EOF).
        stalled = `no progress for ${timeoutMs} ms (link down?)`;
        throw linkFailure(stalled);
      }
      if (options.whileWaiting === undefined) Atomics.wait(control, LINK.DONE, done, 50);
      else {
        Atomics.wait(control, LINK.DONE, done, WHILE_WAITING_MS);
        options.whileWaiting();
      }
    }
  };
  /** Only PAGES and SYNC queued: nothing that stops or switches the guest. */
  const onlyPages = (): boolean => {
    for (let i = 0; i < count; i++) {
      const op = ops[i * OP_WORDS];
      if (op !== OP.PAGES && op !== OP.SYNC) return false;
    }
    return true;
  };
  /**
   * The rate of the batches finished since the last sample, from the sender's own busy time (it
   * starts on a batch as soon as the previous one has drained): bytes per second, or 0 when they
   * were too few bytes to mean something.
   */
  const sampleRate = (): number => {
    const busy = counters[COUNTER.BUSY_NS] as number;
    const bytes = counters[COUNTER.DONE_BYTES] as number;
    if (bytes - sampledBytes < 1 << 20 || busy <= sampledBusyNs) return 0;
    const rate = ((bytes - sampledBytes) * NS_PER_S) / (busy - sampledBusyNs);
    sampledBusyNs = busy;
    sampledBytes = bytes;
    return rate;
  };
  /** What the link really carried, from batches long enough to mean something: the estimate. */
  const measure = (): void => {
    const rate = sampleRate();
    if (rate === 0) return;
    if (rates.push(rate) > RATE_HISTORY) rates.shift();
    bandwidth = Math.max(...rates);
  };

  const words = new Int32Array(memory);
  const dataOf = (word: number, mask: number): number => {
    let data = 0;
    for (let rest = mask >>> 0; rest !== 0; rest = (rest & (rest - 1)) >>> 0) {
      const bit = rest & -rest;
      const page = word * 32 + 31 - Math.clz32(bit);
      const base = page * (PAGE / 4);
      for (let i = base, end = base + PAGE / 4; i < end; i++) {
        if (words[i] !== 0) {
          data |= bit;
          break;
        }
      }
    }
    return data;
  };

  const link: Transport = {
    kind: 'tcp',
    get bandwidth() {
      return bandwidth;
    },
    batchHeadroom,
    latencyNs: 0,
    get bytesSent() {
      return bytesSent;
    },
    get bytesInFlight() {
      const done = Atomics.load(control, LINK.DONE);
      while (queued.length > 0 && (queued[0] as [number, number])[0] <= done) queued.shift();
      let n = 0;
      for (const [, b] of queued) n += b;
      return n;
    },
    transmit(bytes) {
      // Postcopy's first batch (LISTEN, RUN) ends the pipelining: from then on the guest runs on
      // the destination, which waits for what each batch carries.
      const pipelineThis = pipelined && onlyPages();
      if (!pipelineThis) pipelined = false;
      if (count > 0) queued.push([seq + 1, bytes]);
      flush(pipelineThis ? 1 : 0);
      // Timed on this link's clock alone: a caller's `atNs` on another clock must not skew it.
      const t1 = clock.now();
      bytesSent += bytes;
      measure();
      return t1;
    },
    settle() {
      flush(0);
      measure();
      return clock.now();
    },
  };

  const sink: PageSink = {
    begin(config) {
      const request: SenderRequest = { kind: 'config', zeroPages: config.zeroPages };
      if ((config.multifd ? config.channels : 0) !== channels) {
        throw new DirtytrackError(
          'invalid-argument',
          `the link has ${channels} multifd connections, the run wants ${config.multifd ? config.channels : 0}`,
          { component: COMPONENT, field: 'multifd-channels' },
        );
      }
      worker.postMessage(request);
    },
    pages(word, mask, data, urgent) {
      push(urgent === true ? OP.URGENT : OP.PAGES, word, mask, data);
    },
    discard(firstPage, pages) {
      push(OP.DISCARD, firstPage, pages, 0);
    },
    postcopyRun() {
      sendVcpuState();
      push(OP.POSTCOPY_RUN, 0, 0, 0);
    },
    multifdSync() {
      push(OP.SYNC, 0, 0, 0);
    },
    complete() {
      sendVcpuState();
      push(OP.COMPLETE, 0, 0, 0);
    },
  };

  let reqTail = 0;
  const takeRequests = (into: (page: number, atNs: number) => void): number => {
    const head = Atomics.load(control, LINK.REQ_HEAD);
    if (head === reqTail) return 0;
    // The sender stamped each arrival with process.hrtime: map it onto this link's clock.
    const now = clock.now();
    const hr = Number(process.hrtime.bigint());
    const n = head - reqTail;
    for (; reqTail < head; reqTail++) {
      const slot = reqTail % REQUEST_SLOTS;
      into(requestPages[slot] as number, now - (hr - (requestTimes[slot] as number)));
    }
    Atomics.store(control, LINK.REQ_TAIL, reqTail);
    return n;
  };

  const reconnect = (): Uint32Array => {
    // The old sender and its sockets are dropped; a new one connects with the resume flag.
    const old = worker;
    old.postMessage({ kind: 'abort' } satisfies SenderRequest);
    void old.terminate();
    control = new Int32Array(new SharedArrayBuffer(LINK_CONTROL_BYTES));
    // Every batch so far went to the old sender (recovery re-sends from the received bitmap): the
    // new one starts as if they were done, or a wait for them would never end.
    Atomics.store(control, LINK.DONE, seq);
    stalled = undefined;
    workerError = undefined;
    replies = [];
    waiter = undefined;
    reqTail = 0;
    count = 0;
    queued.length = 0; // what the old sender had is gone with it
    senderData = {
      ...senderData,
      control: control.buffer as SharedArrayBuffer,
      flags: senderData.flags | HELLO_FLAG.RESUME,
    };
    worker = boot();
    const giveUp = clock.now() + timeoutMs * 1e6;
    for (;;) {
      if (Atomics.load(control, LINK.READY) === 1) break;
      const why = failure();
      if (why !== undefined) throw linkFailure(`resume: ${why}`);
      if (clock.now() > giveUp) {
        stalled = `resume: no answer within ${timeoutMs} ms`;
        throw linkFailure(stalled);
      }
      Atomics.wait(control, LINK.READY, 0, 50);
    }
    return new Uint32Array(bitmap.slice(0));
  };

  let closed = false;
  return {
    link,
    sink,
    dataOf,
    takeRequests,
    reconnect,
    get failure() {
      return failure();
    },
    async verify() {
      flush(0);
      worker.postMessage({ kind: 'verify' } satisfies SenderRequest);
      const r = await next();
      if (r.kind !== 'verified') {
        throw new DirtytrackError(
          'invalid-state',
          `verify: ${r.kind === 'failed' ? r.message : 'no answer'}`,
          {
            component: COMPONENT,
          },
        );
      }
      return { pages: r.pages, mismatched: r.mismatched, firstMismatch: r.firstMismatch };
    },
    async close(closeOptions) {
      if (closed) return;
      closed = true;
      if (failure() === undefined && closeOptions?.abort !== true) {
        worker.postMessage({ kind: 'finish' } satisfies SenderRequest);
        const r = await next();
        if (r.kind === 'failed') {
          await worker.terminate();
          throw new DirtytrackError('invalid-state', `close: ${r.message}`, { component: COMPONENT });
        }
      } else worker.postMessage({ kind: 'abort' } satisfies SenderRequest);
      await worker.terminate();
    },
    stats() {
      return {
        'main-bytes': counters[COUNTER.MAIN_BYTES] as number,
        'multifd-bytes': counters[COUNTER.MULTIFD_BYTES] as number,
        'multifd-packets': counters[COUNTER.PACKETS] as number,
        'zero-copy-bytes': counters[COUNTER.ZERO_COPY_BYTES] as number,
        'staged-bytes': counters[COUNTER.STAGED_BYTES] as number,
        'staging-buffers': counters[COUNTER.STAGING_BUFFERS] as number,
        'writev-calls': counters[COUNTER.WRITEV_CALLS] as number,
        'spliced-bytes': counters[COUNTER.SPLICED_BYTES] as number,
        'preempt-bytes': counters[COUNTER.PREEMPT_BYTES] as number,
      };
    },
  };
}

/**
 * Boots the sender: `dist/live/sender-worker.js` from the built package; from the sources (tests,
 * `tsx`) `src/live/sender-worker.ts` through tsx with the `@dirtytrack/source` condition.
 */
function startSender(workerData: SenderData): Worker {
  const here = import.meta.url;
  if (!new URL(here).pathname.endsWith('.ts'))
    return new Worker(new URL('./live/sender-worker.js', here), { workerData });
  const entry = new URL('./sender-worker.ts', here);
  const boot = `import('tsx/esm/api').then((api) => api.tsImport(process.argv.at(-1), ${JSON.stringify(entry.href)}))`;
  return new Worker(boot, {
    eval: true,
    argv: [entry.href],
    workerData,
    execArgv: [...process.execArgv, '--conditions=@dirtytrack/source'],
  });
}

/**
 * The live link's sender thread (a `worker_thread`): it owns the migration's TCP connections and
 * turns the migration thread's sink operations into the wire format of WIRE.md — page records on
 * the main connection, or multifd packets over the channels — reading the pages straight out of
 * guest memory (a `SharedArrayBuffer`) into the sockets: no intermediate copy of page data.
 *
 * QEMU splits the same work between its migration thread and its multifd send threads; here one
 * event loop drives every socket, because the migration thread (`runPrecopy`) is synchronous and
 * blocks while a batch drains — as QEMU's blocks in `qemu_fflush` on a full socket.
 */
import { randomBytes } from 'node:crypto';
import * as net from 'node:net';
import { parentPort, workerData } from 'node:worker_threads';
import { popcount32 } from '@dirtytrack/core';
import { MULTIFD_PACKET_HEADER, MULTIFD_PACKET_PAGES } from '../multifd.js';
import { createFdWriter, fdWritesAvailable, type FdWriter, type Gather } from './fd-writer.js';
import { clientHandshake } from './handshake.js';
import {
  COUNTER,
  LINK,
  LINK_MESSAGE_AT,
  LINK_MESSAGE_MAX,
  OP,
  OP_WORDS,
  REQUEST_SLOTS,
  type SenderData,
  type SenderReply,
  type SenderRequest,
} from './link-layout.js';
import {
  BLOCK_ID_BYTES,
  CHANNEL_KIND,
  createReturnDecoder,
  encodeCommand,
  encodeDiscard,
  encodeMemSize,
  encodeSection,
  encodeVerifyEnd,
  encodeVerifyHashes,
  HELLO_FLAG,
  MIG_CMD,
  MULTIFD_FLAG_SYNC,
  pageHashes,
  RAM_FLAG,
  RAM_HEADER_BYTES,
  VM_ITEM,
  WIRE_VERSION,
  writeBlockId,
  writeMultifdHeader,
  writeRamHeader,
  ZERO_RECORD_BYTES,
} from './wire.js';

const PAGE = 4096;
const VERIFY_CHUNK = 4096;
/**
 * Pages encoded per slice of a batch (2 MiB): small enough that a slow link still shows progress
 * every second or so (a slice's bytes count once its write completes), large enough that the
 * per-slice cost is small: ~20 µs of JavaScript (mostly not yet optimized: ~500 slices per GiB)
 * against ~0.7 ms of `writev` on loopback here.
 */
const SLICE_PAGES = 512;

const data = workerData as SenderData;
const port = parentPort as NonNullable<typeof parentPort>;
const control = new Int32Array(data.control);
const counters = new Float64Array(data.counters);
const memory = new Uint8Array(data.memory);
const pages = data.ramBytes / PAGE;

let failed = false;
let finishing = false;
let main: net.Socket | undefined;
/** `writev` on each connection's descriptor, where it can be called (see {@link Out}). */
let mainDirect: FdWriter | undefined;
let preemptDirect: FdWriter | undefined;
const channelDirect: (FdWriter | undefined)[] = [];

/**
 * The `writev` writer for a connection, when pages go that way and it has a descriptor; with
 * `splice` (zero-copy-send, multifd channels) its pages go by reference through a pipe.
 */
function directWriter(socket: net.Socket, splice = false): FdWriter | undefined {
  if (!directWrites) return undefined;
  const onWritev = () => {
    counters[COUNTER.WRITEV_CALLS] = (counters[COUNTER.WRITEV_CALLS] as number) + 1;
  };
  return createFdWriter(socket as never, memory, () => !failed && !socket.destroyed, { onWritev, splice });
}

/** An {@link Out} for page records on `socket`: through `direct` when there is one, else staged per {@link stageRecords}. */
function recordOut(socket: net.Socket, direct: FdWriter | undefined): Out {
  return direct === undefined ? new Out(socket, stageRecords) : new Out(socket, false, direct);
}
const channels: net.Socket[] = [];
let zeroPages: 'record' | 'packet' | 'none' = 'record';
let completed = false;
/** After POSTCOPY_RUN: every page goes as a record on the main connection (urgent ones on preempt). */
let postcopyMode = (data.flags & HELLO_FLAG.RESUME) !== 0;
/** The postcopy-preempt connection, once made. */
let preempt: net.Socket | undefined;
const requestPages = new Int32Array(data.requests, 0, REQUEST_SLOTS);
const requestTimes = new Float64Array(data.requests, REQUEST_SLOTS * 4, REQUEST_SLOTS);

/**
 * REQ_PAGES from the return path into the request ring, each page with its arrival time
 * (`process.hrtime`, ns: the migration thread maps it onto its own clock).
 */
function requested(startBytes: number, lengthBytes: number): void {
  if (!postcopyMode) {
    fail('the destination requested pages, but this run is not in postcopy');
    return;
  }
  const at = Number(process.hrtime.bigint());
  for (let page = startBytes / PAGE, end = (startBytes + lengthBytes) / PAGE; page < end; page++) {
    const head = Atomics.load(control, LINK.REQ_HEAD);
    if (head - Atomics.load(control, LINK.REQ_TAIL) >= REQUEST_SLOTS) {
      fail(`the destination has more than ${REQUEST_SLOTS} page requests outstanding`);
      return;
    }
    requestPages[head % REQUEST_SLOTS] = page;
    requestTimes[head % REQUEST_SLOTS] = at;
    Atomics.store(control, LINK.REQ_HEAD, head + 1);
  }
  Atomics.notify(control, LINK.DONE);
}
let onVerified: ((r: Extract<SenderReply, { kind: 'verified' }>) => void) | undefined;

const reply = (r: SenderReply): void => port.postMessage(r);

/** The link failed: say why in the shared words, wake the migration thread, drop every socket. */
function fail(message: string): void {
  if (failed) return;
  failed = true;
  const bytes = new TextEncoder().encode(message).subarray(0, LINK_MESSAGE_MAX);
  new Uint8Array(data.control, LINK_MESSAGE_AT, LINK_MESSAGE_MAX).set(bytes);
  Atomics.store(control, LINK.MESSAGE_LENGTH, bytes.length);
  Atomics.store(control, LINK.FAILED, 1);
  Atomics.notify(control, LINK.FAILED);
  Atomics.notify(control, LINK.DONE);
  Atomics.notify(control, LINK.READY);
  main?.destroy();
  preempt?.destroy();
  for (const c of channels) c.destroy();
  reply({ kind: 'failed', message });
}

function describe(error: unknown): string {
  const e = error as { code?: string; message?: string };
  return e.message ?? String(error);
}

function connect(kind: number, channel: number): Promise<net.Socket> {
  return new Promise<net.Socket>((resolve, reject) => {
    const socket = net.connect({ host: data.host, port: data.port });
    const early = (error: Error) => reject(error);
    socket.once('error', early);
    socket.once('connect', () => {
      socket.setNoDelay(true);
      clientHandshake(
        socket,
        {
          version: WIRE_VERSION,
          kind,
          channel,
          migrationId: data.migrationId,
          ramBytes: data.ramBytes,
          pageSize: PAGE,
          channels: data.channels,
          flags: data.flags,
          nonce: new Uint8Array(randomBytes(16)),
        },
        { ...(data.token === undefined ? {} : { token: data.token }), timeoutMs: data.timeoutMs },
      ).then(() => {
        socket.off('error', early);
        socket.on('error', (error: Error) => fail(describe(error)));
        socket.on('close', () => {
          if (!finishing && socket !== preemptDone) fail('the destination closed the connection');
        });
        resolve(socket);
      }, reject);
    });
  });
}

/**
 * What the page loop compares and writes, as plain constants: a property of an imported object
 * read for the first time in optimized code (say, the section marker of the first section opened
 * after the loop was optimized) deoptimizes it for want of type feedback.
 */
const URGENT_OP: number = OP.URGENT;
/**
 * 1 at the page ops (PAGES, URGENT): one load and one comparison that every op makes, where
 * `op !== PAGES && op !== URGENT` left its second comparison without feedback until the first
 * op that was not PAGES, which then deoptimized the page loop.
 */
const PAGE_OPS = new Uint8Array(Math.max(...Object.values(OP)) + 1);
PAGE_OPS[OP.PAGES] = PAGE_OPS[OP.URGENT] = 1;
const SECTION_PART: number = VM_ITEM.SECTION_PART;
const SECTION_END: number = VM_ITEM.SECTION_END;
const DATA_RECORD: number = RAM_FLAG.PAGE | RAM_FLAG.CONTINUE;
const ZERO_RECORD: number = RAM_FLAG.ZERO | RAM_FLAG.CONTINUE;

/** Bytes of one staging buffer (a slice of 512 pages fills about two). */
const STAGING_BYTES = 2 ** 20;
/** Staging buffers no flush holds, for reuse: the kernel keeps reading the same few hot buffers. */
const spare: Uint8Array[] = [];
/**
 * Staging buffers allocated and touched before the connections are up (outside the migration's
 * timed run): two slices in flight hold about six, and a fresh buffer's first touch costs 256 page
 * faults (~4 ms per MiB on this VM), which the first batch paid (~26 ms of its ~70 ms).
 */
const STAGING_PREALLOCATED = 8;
/** A new staging buffer, counted. */
function stagingBuffer(): Uint8Array {
  counters[COUNTER.STAGING_BUFFERS] = (counters[COUNTER.STAGING_BUFFERS] as number) + 1;
  return new Uint8Array(STAGING_BYTES);
}
/**
 * Pages go from guest memory through `writev` on each socket's descriptor — page records on the
 * main connection and the preempt channel, multifd packets on theirs — unless staging is asked
 * for or koffi cannot load here; then `auto` stages page records and writes multifd packets as
 * views of guest memory through Node's stream ({@link SendFrom}).
 */
const directWrites = data.sendFrom !== 'staging' && data.fdWrites && fdWritesAvailable();
const stageRecords = data.sendFrom === 'staging' || (data.sendFrom === 'auto' && !directWrites);
const stagePackets = data.sendFrom === 'staging';
if (stageRecords || stagePackets) {
  for (let i = 0; i < STAGING_PREALLOCATED; i++) {
    const b = stagingBuffer();
    for (let o = 0; o < STAGING_BYTES; o += 4096) b[o] = 0;
    spare.push(b);
  }
}
/** Guest memory as a `Buffer`, for `copy` with source offsets (no view object per page). */
const memoryBuffer = Buffer.from(data.memory);

/**
 * The chunks one batch writes on one socket, then one write each with `cork`/`uncork`. With
 * staging, every push is copied into the current staging buffer (records and pages interleaved,
 * as on the wire) and the socket gets a few large chunks; with `guest-memory`, pages go as views of
 * guest memory and headers as their own small chunks.
 */
class Out {
  readonly chunks: Uint8Array[] = [];
  bytes = 0;
  /** A RAM section is open on this connection (closed by an EOS record). */
  section = false;
  private stage: Uint8Array | undefined;
  /** With `direct`: this flush's iovec list. */
  private list: Gather | undefined;
  private from = 0; // where the current staging buffer's unflushed bytes begin
  private at = 0; // its fill level
  /** Staging buffers referenced by `chunks`, back to `spare` once the kernel took them. */
  private held: Uint8Array[] = [];
  constructor(
    readonly socket: net.Socket,
    readonly staging = false,
    /** Writes through `writev` on the socket's descriptor instead of Node's stream (not staged). */
    readonly direct?: FdWriter,
  ) {}
  push(chunk: Uint8Array): void {
    this.bytes += chunk.byteLength;
    if (this.direct !== undefined) {
      (this.list ??= this.direct.gather()).copy(chunk);
      return;
    }
    if (!this.staging) {
      this.chunks.push(chunk);
      return;
    }
    for (let done = 0; done < chunk.byteLength;) {
      const room = this.room();
      const n = Math.min(room, chunk.byteLength - done);
      (this.stage as Uint8Array).set(
        n === chunk.byteLength ? chunk : chunk.subarray(done, done + n),
        this.at,
      );
      this.at += n;
      done += n;
    }
  }
  /** Pages `first .. first + n - 1` of guest memory, as bytes on this connection. */
  pages(first: number, n: number): void {
    if (this.direct !== undefined) {
      this.bytes += n * PAGE;
      (this.list ??= this.direct.gather()).memory(first * PAGE, n * PAGE);
      counters[COUNTER.ZERO_COPY_BYTES] = (counters[COUNTER.ZERO_COPY_BYTES] as number) + n * PAGE;
      return;
    }
    if (!this.staging) {
      this.push(memory.subarray(first * PAGE, (first + n) * PAGE));
      counters[COUNTER.ZERO_COPY_BYTES] = (counters[COUNTER.ZERO_COPY_BYTES] as number) + n * PAGE;
      return;
    }
    this.bytes += n * PAGE;
    for (let at = first * PAGE, end = (first + n) * PAGE; at < end;) {
      const k = Math.min(this.room(), end - at);
      memoryBuffer.copy(this.stage as Uint8Array, this.at, at, at + k);
      this.at += k;
      at += k;
    }
    counters[COUNTER.STAGED_BYTES] = (counters[COUNTER.STAGED_BYTES] as number) + n * PAGE;
  }
  /** Data page records of pages `first .. first + n - 1`, in one call of the `direct` writer's list. */
  records(first: number, n: number): void {
    (this.list ??= (this.direct as FdWriter).gather()).records(first, n, DATA_RECORD);
    this.bytes += n * (RAM_HEADER_BYTES + PAGE);
    counters[COUNTER.ZERO_COPY_BYTES] = (counters[COUNTER.ZERO_COPY_BYTES] as number) + n * PAGE;
  }
  /** A RAM record's header (and a zero page's fill byte), written straight into the staging buffer. */
  ramHeader(offset: number, flags: number, fill: boolean): void {
    const n = fill ? ZERO_RECORD_BYTES : RAM_HEADER_BYTES;
    if (this.direct !== undefined) {
      (this.list ??= this.direct.gather()).header(offset, flags, fill);
      this.bytes += n;
      return;
    }
    this.room(n);
    const stage = this.stage as Uint8Array;
    this.at = writeRamHeader(stage, this.at, offset, flags);
    if (fill) stage[this.at++] = 0;
    this.bytes += n;
  }
  /** Free bytes in the current staging buffer, taking a fresh one when fewer than `atLeast` are left. */
  private room(atLeast = 1): number {
    if (this.stage === undefined || this.stage.byteLength - this.at < atLeast) {
      this.seal();
      this.stage = spare.pop() ?? stagingBuffer();
      this.held.push(this.stage);
      this.from = this.at = 0;
    }
    return this.stage.byteLength - this.at;
  }
  /** The staged bytes not yet in `chunks` become a chunk. */
  private seal(): void {
    if (this.stage !== undefined && this.at > this.from)
      this.chunks.push(this.stage.subarray(this.from, this.at));
    this.from = this.at;
  }
  /** Writes everything; resolves once the kernel has taken the last byte. */
  flush(): Promise<void> | undefined {
    this.seal();
    // The next push starts a fresh buffer: this one is the kernel's until the write completes.
    this.stage = undefined;
    if (this.list !== undefined) {
      const list = this.list;
      this.list = undefined;
      this.bytes = 0;
      return (this.direct as FdWriter).write(list);
    }
    if (this.chunks.length === 0) return undefined;
    const s = this.socket;
    const held = this.held;
    this.held = [];
    s.cork();
    for (const c of this.chunks) s.write(c);
    const done = new Promise<void>((resolve) =>
      s.write(new Uint8Array(0), () => {
        // On an error the socket is destroyed and the buffers are simply dropped.
        if (!s.destroyed) spare.push(...held);
        resolve();
      }),
    );
    s.uncork();
    this.chunks.length = 0;
    this.bytes = 0;
    return done;
  }
}

// Multifd: the packet being filled, round-robin over the channels, one packet_num sequence.
const normal = new Uint32Array(MULTIFD_PACKET_PAGES);
const zero = new Uint32Array(MULTIFD_PACKET_PAGES);
let normalCount = 0;
let zeroCount = 0;
let packetNum = 0;
let nextChannel = 0;

function emitPacket(outs: Out[], flags: number, on: number): void {
  const out = outs[on] as Out;
  const header = new Uint8Array(MULTIFD_PACKET_HEADER);
  writeMultifdHeader(header, 0, { flags, packetNum: packetNum++, normal, normalCount, zero, zeroCount });
  out.push(header);
  // The payload: runs of consecutive pages go as one view of guest memory.
  for (let i = 0; i < normalCount;) {
    const first = normal[i] as number;
    let n = 1;
    while (i + n < normalCount && normal[i + n] === first + n) n++;
    out.pages(first, n);
    i += n;
  }
  counters[COUNTER.PACKETS] = (counters[COUNTER.PACKETS] as number) + 1;
  normalCount = 0;
  zeroCount = 0;
}

function sendPacket(outs: Out[]): void {
  emitPacket(outs, 0, nextChannel);
  nextChannel = (nextChannel + 1) % outs.length;
}

/** Encodes one batch of sink operations and writes it; resolves when every socket drained it, with its bytes. */
async function sendBatch(ops: Int32Array, count: number): Promise<number> {
  const mainOut = recordOut(main as net.Socket, mainDirect);
  const outs = channels.map((c, i) => {
    const direct = channelDirect[i];
    return direct === undefined ? new Out(c, stagePackets) : new Out(c, false, direct);
  });
  let preemptOut = preempt === undefined ? undefined : recordOut(preempt, preemptDirect);
  // Pushed one by one: spreading a possibly empty array here deoptimized this function ("wrong
  // map") early in every migration.
  const all: Out[] = [mainOut];
  for (const o of outs) all.push(o);
  if (preemptOut !== undefined) all.push(preemptOut);
  const base = counters[COUNTER.DRAINED] as number;
  let written = 0;
  // Progress while the batch drains, so the migration thread can tell a slow link from a dead one.
  const tick = setInterval(() => {
    let left = 0;
    for (const o of all) left += o.socket.writableLength + (o.direct?.pending ?? 0);
    counters[COUNTER.DRAINED] = base + Math.max(0, written - left);
  }, 20);
  // The batch goes out in slices: one slice drains while the next is encoded, and no more than
  // two slices of page views are queued at once.
  let inflight: Promise<unknown> = Promise.resolve();
  let slicePages = 0;
  // Run ~500 times per GiB, too few for V8 to optimize before the migration ends: indexed loops,
  // and no Promise.all (an array and a promise per slice) for the one connection of precopy.
  const flushSlice = async (): Promise<void> => {
    const prev = inflight;
    for (let i = 0; i < all.length; i++) written += (all[i] as Out).bytes;
    recordBytes();
    if (all.length === 1) inflight = mainOut.flush() ?? prev;
    else inflight = Promise.all(all.map((o) => o.flush()));
    slicePages = 0;
    await prev;
  };
  const recordBytes = (): void => {
    counters[COUNTER.MAIN_BYTES] = (counters[COUNTER.MAIN_BYTES] as number) + mainOut.bytes;
    let multifdBytes = 0;
    for (let i = 0; i < outs.length; i++) multifdBytes += (outs[i] as Out).bytes;
    counters[COUNTER.MULTIFD_BYTES] = (counters[COUNTER.MULTIFD_BYTES] as number) + multifdBytes;
    if (preemptOut !== undefined)
      counters[COUNTER.PREEMPT_BYTES] = (counters[COUNTER.PREEMPT_BYTES] as number) + preemptOut.bytes;
  };
  // Headers of records written through Node's stream as chunks of their own (neither staged nor
  // through `writev`) live in one buffer, made at the first such record: at most 9 bytes per page
  // plus a few.
  let headers: Uint8Array | undefined;
  let h = 0;
  const headerBuffer = (): Uint8Array => {
    if (headers !== undefined) return headers;
    let maxRecords = 4;
    for (let k = 0; k < count; k++) maxRecords += popcount32(ops[k * OP_WORDS + 2] as number) + 2;
    return (headers = new Uint8Array(maxRecords * 9 + 16));
  };
  const openSection = (out: Out): void => {
    if (out.section) return;
    out.push(encodeSection(completed ? SECTION_END : SECTION_PART));
    out.section = true;
  };
  const record = (out: Out, offset: number, flags: number, fill: boolean): void => {
    if (out.staging || out.direct !== undefined) return out.ramHeader(offset, flags, fill);
    const buffer = headerBuffer();
    const start = h;
    h = writeRamHeader(buffer, h, offset, flags);
    if (fill) buffer[h++] = 0;
    out.push(buffer.subarray(start, h));
  };
  const closeSection = (out: Out): void => {
    if (!out.section) return;
    record(out, 0, RAM_FLAG.EOS, false);
    out.section = false;
  };
  /** A page as a record on `out` (the main connection, or postcopy's preempt channel). */
  const pageRecord = (out: Out, page: number, isData: boolean): void => {
    openSection(out);
    if (isData) {
      record(out, page * PAGE, DATA_RECORD, false);
      out.pages(page, 1);
    } else {
      record(out, page * PAGE, ZERO_RECORD, true);
    }
  };
  /** Discard ranges gathered from consecutive DISCARD ops, sent as commands (≤ 12 ranges each). */
  const discards: [number, number][] = [];
  const sendDiscards = (): void => {
    if (discards.length === 0) return;
    closeSection(mainOut);
    for (const c of encodeDiscard(discards)) mainOut.push(c);
    discards.length = 0;
  };
  /**
   * The pages of one op's word as records on `out`: each run of consecutive data pages in one
   * {@link Out.records} call, each zero page as its own record.
   */
  const recordsOf = (out: Out, word: number, mask: number, dataMask: number): void => {
    if (mask === 0) return;
    openSection(out);
    const data = zeroPages === 'none' ? mask : mask & dataMask;
    for (let rest = mask >>> 0; rest !== 0;) {
      const shift = 31 - Math.clz32(rest & -rest);
      const page = word * 32 + shift;
      if (((data >>> shift) & 1) === 0) {
        record(out, page * PAGE, ZERO_RECORD, true);
        rest = (rest & (rest - 1)) >>> 0;
        continue;
      }
      // The run: the data bits from `shift` up to the first bit that is not one.
      const ones = ~(data >>> shift);
      const n = ones === 0 ? 32 - shift : 31 - Math.clz32(ones & -ones);
      if (out.direct !== undefined) out.records(page, n);
      else for (let p = page; p < page + n; p++) pageRecord(out, p, true);
      rest = shift + n === 32 ? 0 : (rest & ~(2 ** (shift + n) - 1)) >>> 0;
    }
  };
  /** The pages of the page op at `at` (PAGES or URGENT), as records or into multifd packets. */
  const encodePageOp = (at: number): void => {
    const word = ops[at + 1] as number;
    const mask = ops[at + 2] as number;
    const dataMask = ops[at + 3] as number;
    const urgentOut = ops[at] === URGENT_OP && preemptOut !== undefined ? preemptOut : mainOut;
    if (outs.length === 0 || postcopyMode) return recordsOf(urgentOut, word, mask, dataMask);
    for (let rest = mask >>> 0; rest !== 0; rest = (rest & (rest - 1)) >>> 0) {
      const bit = rest & -rest;
      const page = word * 32 + 31 - Math.clz32(bit);
      const isData = (dataMask & bit) !== 0 || zeroPages === 'none';
      if (isData) normal[normalCount++] = page;
      else if (zeroPages === 'packet') zero[zeroCount++] = page;
      else {
        pageRecord(mainOut, page, false);
        continue;
      }
      if (normalCount + zeroCount === MULTIFD_PACKET_PAGES) sendPacket(outs);
    }
  };
  /**
   * The hot loop, on its own: the page ops from `k` on, up to the first other op, the end of the
   * batch, or a page op that fills the slice (whose slice must drain first). Returns where it
   * stopped. Kept apart from the rare ops below so that meeting one of them late in a migration
   * (VCPU_STATE, COMPLETE) does not throw away the optimized page loop: when the loop lived in
   * this async function, each such first meeting deoptimized all of it, and V8 compiled it three
   * times per migration (~120 ms of compiling per GiB on the two cores the migration runs on).
   */
  const encodePages = (k: number): number => {
    for (; k < count; k++) {
      const at = k * OP_WORDS;
      const op = ops[at] as number;
      if (PAGE_OPS[op] !== 1) return k;
      const n = popcount32(ops[at + 2] as number);
      if (slicePages + n >= SLICE_PAGES) return k;
      slicePages += n;
      encodePageOp(at);
    }
    return k;
  };
  for (let k = 0; k < count; k++) {
    // Discard ranges gathered so far go out before any other op, page ops included.
    if (discards.length !== 0 && ops[k * OP_WORDS] !== OP.DISCARD) sendDiscards();
    k = encodePages(k);
    if (k >= count) break;
    const at = k * OP_WORDS;
    const op = ops[at] as number;
    if (PAGE_OPS[op] === 1) {
      // This op fills the slice: the slice so far goes out, then the op's pages start the next.
      await flushSlice();
      encodePageOp(at);
      continue;
    }
    if (op === OP.DISCARD) {
      discards.push([(ops[at + 1] as number) * PAGE, (ops[at + 2] as number) * PAGE]);
      continue;
    }
    sendDiscards();
    if (op === OP.COMPLETE) {
      closeSection(mainOut);
      completed = true;
      continue;
    }
    if (op === OP.SYNC) {
      if (normalCount + zeroCount > 0) sendPacket(outs);
      for (let c = 0; c < outs.length; c++) emitPacket(outs, MULTIFD_FLAG_SYNC, c);
      openSection(mainOut);
      record(mainOut, 0, RAM_FLAG.MULTIFD_FLUSH, false);
      continue;
    }
    if (op === OP.VCPU_STATE) {
      // The guest's vCPU state, after the RAM it goes with and before COMPLETE or the switch.
      closeSection(mainOut);
      mainOut.push(new Uint8Array(data.vcpuState, 0, ops[at + 1] as number).slice());
      continue;
    }
    if (op === OP.POSTCOPY_RUN) {
      // postcopy_start: LISTEN, then RUN — the guest runs on the destination from here; the
      // preempt channel, if any, is made now (QEMU connects it at the switch).
      closeSection(mainOut);
      mainOut.push(encodeCommand(MIG_CMD.POSTCOPY_LISTEN, new Uint8Array(0)));
      mainOut.push(encodeCommand(MIG_CMD.POSTCOPY_RUN, new Uint8Array(0)));
      postcopyMode = true;
      if ((data.flags & HELLO_FLAG.PREEMPT) !== 0 && preempt === undefined) {
        preempt = await connect(CHANNEL_KIND.PREEMPT, 0);
        preemptDirect = directWriter(preempt);
        preemptOut = recordOut(preempt, preemptDirect);
        all.push(preemptOut);
      }
      continue;
    }
  }
  sendDiscards();
  closeSection(mainOut);
  if (preemptOut !== undefined) closeSection(preemptOut);
  try {
    await flushSlice();
    await inflight;
  } finally {
    clearInterval(tick);
    let spliced = 0;
    for (const d of channelDirect) spliced += d?.splicedBytes ?? 0;
    counters[COUNTER.SPLICED_BYTES] = spliced;
  }
  counters[COUNTER.DRAINED] = base + written;
  return written;
}

/** After the stop-and-copy: every page's hash to the destination, which compares and answers. */
/** The preempt connection ended before verification (its close is expected). */
let preemptDone: net.Socket | undefined;

async function verify(): Promise<void> {
  const s = main as net.Socket;
  const p = preempt;
  if (p !== undefined && !p.destroyed) {
    // Requested pages travel beside the main stream: end the preempt connection and wait until
    // the destination has read all of it (it ends its side then), so no hash on main can overtake
    // a page still on its way there.
    preemptDone = p;
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new Error(`verify: the preempt channel did not close within ${data.timeoutMs} ms`)),
        data.timeoutMs,
      );
      p.once('close', () => {
        clearTimeout(timer);
        resolve();
      });
      p.end();
    });
  }
  const hashes = new Uint32Array(2 * VERIFY_CHUNK);
  const result = new Promise<Extract<SenderReply, { kind: 'verified' }>>((resolve) => {
    onVerified = resolve;
  });
  const out = new Out(s);
  for (let first = 0; first < pages; first += VERIFY_CHUNK) {
    const n = Math.min(VERIFY_CHUNK, pages - first);
    pageHashes(data.memory, first, n, hashes, 0);
    out.push(encodeVerifyHashes(first, hashes, 0, n));
    if (out.chunks.length >= 16) await out.flush();
  }
  out.push(encodeVerifyEnd(pages));
  await out.flush();
  reply(await result);
}

async function finish(): Promise<void> {
  finishing = true;
  const s = main as net.Socket;
  const all = [s, ...channels, ...(preempt === undefined ? [] : [preempt])];
  await Promise.all(
    all.map(
      (c) =>
        new Promise<void>((resolve) => {
          if (c.destroyed) return resolve();
          c.once('close', () => resolve());
          if (c === s) c.end(new Uint8Array([VM_ITEM.EOF]));
          else c.end();
        }),
    ),
  );
  reply({ kind: 'finished' });
}

let queue: Promise<void> = Promise.resolve();

port.on('message', (request: SenderRequest) => {
  if (request.kind === 'abort') {
    finishing = true;
    main?.destroy();
    preempt?.destroy();
    for (const c of channels) c.destroy();
    reply({ kind: 'finished' });
    return;
  }
  queue = queue.then(async () => {
    if (failed) return;
    try {
      if (request.kind === 'config') zeroPages = request.zeroPages;
      else if (request.kind === 'batch') {
        const t0 = process.hrtime.bigint();
        const bytes = await sendBatch(request.ops, request.count);
        // Before DONE: whoever sees DONE sees the batch's time and bytes too.
        counters[COUNTER.BUSY_NS] =
          (counters[COUNTER.BUSY_NS] as number) + Number(process.hrtime.bigint() - t0);
        counters[COUNTER.DONE_BYTES] = (counters[COUNTER.DONE_BYTES] as number) + bytes;
        Atomics.store(control, LINK.DONE, request.seq);
        Atomics.notify(control, LINK.DONE);
      } else if (request.kind === 'verify') await verify();
      else await finish();
    } catch (error) {
      fail(describe(error));
    }
  });
});

async function open(): Promise<void> {
  const resume = (data.flags & HELLO_FLAG.RESUME) !== 0;
  let recvBitmap: ((bitmap: Uint8Array) => void) | undefined;
  let resumeAck: (() => void) | undefined;
  try {
    main = await connect(CHANNEL_KIND.MAIN, 0);
    mainDirect = directWriter(main);
    if (!resume)
      for (let c = 0; c < data.channels; c++) {
        const channel = await connect(CHANNEL_KIND.MULTIFD, c);
        channels.push(channel);
        channelDirect.push(directWriter(channel, data.zeroCopySend));
      }
    const decoder = createReturnDecoder({
      ramBytes: data.ramBytes,
      onShut: (status) => {
        if (status !== 0) fail(`the destination failed (SHUT status ${status})`);
      },
      onPong: () => {},
      onReqPages: requested,
      onRecvBitmap: (bitmap) => {
        if (recvBitmap === undefined) fail('unexpected RECV_BITMAP on the return path');
        else recvBitmap(bitmap);
      },
      onResumeAck: () => {
        if (resumeAck === undefined) fail('unexpected RESUME_ACK on the return path');
        else resumeAck();
      },
      onVerifyResult: (r) =>
        onVerified?.({
          kind: 'verified',
          pages: r.pages,
          mismatched: r.mismatched,
          firstMismatch: r.firstMismatch,
        }),
    });
    main.on('data', (chunk: Buffer) => {
      try {
        decoder.push(chunk);
      } catch (error) {
        fail(`return path: ${describe(error)}`);
      }
    });
    if (resume) {
      // Postcopy recovery (`migrate resume=true`): ask for the destination's received bitmap,
      // hand it to the migration thread, then POSTCOPY_RESUME until RESUME_ACK.
      const out = new Out(main);
      const name = new Uint8Array(BLOCK_ID_BYTES);
      writeBlockId(name, 0);
      const bitmap = new Promise<Uint8Array>((resolve) => (recvBitmap = resolve));
      const acked = new Promise<void>((resolve) => (resumeAck = resolve));
      out.push(encodeCommand(MIG_CMD.RECV_BITMAP, name));
      await out.flush();
      new Uint8Array(data.bitmap).set(await bitmap);
      out.push(encodeCommand(MIG_CMD.POSTCOPY_RESUME, new Uint8Array(0)));
      await out.flush();
      await acked;
      counters[COUNTER.MAIN_BYTES] = (counters[COUNTER.MAIN_BYTES] as number) + 12 + 5;
      if ((data.flags & HELLO_FLAG.PREEMPT) !== 0) {
        preempt = await connect(CHANNEL_KIND.PREEMPT, 0);
        preemptDirect = directWriter(preempt);
      }
      Atomics.store(control, LINK.READY, 1);
      Atomics.notify(control, LINK.READY);
      return;
    }
    // The setup section: RAM's size and block, as ram_save_setup sends them.
    const out = new Out(main);
    out.push(encodeSection(VM_ITEM.SECTION_START));
    out.push(encodeMemSize(data.ramBytes));
    const eos = new Uint8Array(8);
    writeRamHeader(eos, 0, 0, RAM_FLAG.EOS);
    out.push(eos);
    if ((data.flags & HELLO_FLAG.POSTCOPY) !== 0) {
      // POSTCOPY_ADVISE: host and target page sizes (both 4 KiB here).
      const advise = new Uint8Array(16);
      advise[6] = 0x10;
      advise[14] = 0x10;
      out.push(encodeCommand(MIG_CMD.POSTCOPY_ADVISE, advise));
    }
    // The trace the guest replays, for the destination to replay after the switch.
    for (const item of data.guestTrace ?? []) out.push(item);
    counters[COUNTER.MAIN_BYTES] = (counters[COUNTER.MAIN_BYTES] as number) + out.bytes;
    await out.flush();
    Atomics.store(control, LINK.READY, 1);
    Atomics.notify(control, LINK.READY);
  } catch (error) {
    fail(describe(error));
  }
}

void open();

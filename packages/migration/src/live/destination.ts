import { createServer, type Server, type Socket } from 'node:net';
import { createRealClock, DirtytrackError, isDirtytrackError, PAGE_SIZE, type Clock } from '@dirtytrack/core';
import { isLoopback, serverHandshake } from './handshake.js';
import { loadLibc } from './libc.js';
import {
  MAIN_READ_BATCH_BYTES,
  MAIN_READ_BUFFER_BYTES,
  READ_BUFFER_BYTES,
  stagePage,
  withReadBuffer,
  type BufferedSocket,
  type InPlaceReads,
} from './read-buffer.js';
import { ramBytesOf, recordRamOf, recordsIn } from './record-ram.js';
import { createPostcopyFaults, type PostcopyFaults } from './postcopy-faults.js';
import {
  be32,
  CHANNEL_KIND,
  createMainDecoder,
  createMultifdDecoder,
  decodeGuestTrace,
  GUEST_TRACE_FLAG,
  decodeVcpuState,
  encodeRecvBitmap,
  encodeReqPages,
  encodeReturnU32,
  encodeVerifyResult,
  HELLO_FLAG,
  MIG_CMD,
  PAGE_RECORD_BYTES,
  pageHashes,
  RAM_FLAG,
  RAM_HEADER_BYTES,
  RESULT_CODE,
  RP_MSG,
  type Hello,
  type MainDecoder,
  type MultifdDecoder,
  type GuestTraceWire,
  type VcpuStateMessage,
  TRUNCATED_ERRNO,
} from './wire.js';

/**
 * The live plane's migration destination (WIRE.md; QEMU's `-incoming tcp:…`): listens, runs the
 * handshake on every connection, decodes the main stream and the multifd channels into its
 * memory, answers PING and the verification, and reports one result per migration. It never
 * throws out of a socket event: every failure — a protocol error, a reset, an idle peer — ends
 * that migration's sockets (SHUT with status 1 on the return path when it still can) and
 * resolves its result as `failed` with the typed error.
 */

export interface DestinationOptions {
  /** Address to listen on (default `127.0.0.1`). Any non-loopback address needs a `token`. */
  host?: string;
  /** TCP port (default 0: an ephemeral port, read it from `Destination.port`). */
  port?: number;
  /** Shared secret for the HMAC handshake; when set, every connection must present it. */
  token?: string;
  /**
   * Receive into this memory (its size must equal the source's RAM); else one is allocated per
   * migration (by `allocate`). A record RAM's buffer (`createRecordRam`) counts its RAM only, and
   * the main connection then reads into its read buffer, the pages placed by WebAssembly.
   */
  memory?: SharedArrayBuffer;
  /** Largest RAM to allocate when `memory` is not given (default 64 GiB). */
  maxMemory?: number;
  /**
   * How RAM is allocated when `memory` is not given: zeroed, exactly `bytes` long (default a plain
   * `SharedArrayBuffer`; the CLI passes `allocateGuestRam` from `@dirtytrack/qemu-layers`, which
   * advises transparent huge pages as QEMU does).
   */
  allocate?: (bytes: number) => SharedArrayBuffer;
  /** Idle timeout in ms: a migration with no bytes for this long fails (default 30 000). */
  timeoutMs?: number;
  /** Close after the first migration ends (default true); false keeps accepting migrations one at a time. */
  once?: boolean;
  /** Progress, at most every 100 ms and once at the end of each migration. */
  onProgress?: (p: { bytes: number; pages: number }) => void;
  /** Time source for `total-time` and progress pacing (default the real clock). */
  clock?: Clock;
  /**
   * Every migration's result (`result` holds only the first). When it returns a promise, the
   * destination refuses the next migration until it settles (its source fails at the handshake:
   * "the previous migration is still being handled here") — so a guest run on the received
   * memory, or a report of it, never overlaps a new migration writing that memory.
   */
  onResult?: (r: DestinationResult) => unknown;
  /**
   * A migration was accepted (its HELLO checked, its RAM ready), before any of its bytes: the
   * memory it receives into, its RAM's size, its multifd channels (0: precopy's page records on
   * the main connection) and whether postcopy may follow. Must not throw.
   */
  onMigrationStart?: (start: {
    memory: SharedArrayBuffer;
    ramBytes: number;
    channels: number;
    postcopy: boolean;
  }) => void;
  /**
   * Postcopy: POSTCOPY_RUN arrived, the guest runs here from now on — start its vCPUs over
   * `memory` writing through `faults.tracker` (and `faults.sink`), so that a write to a page not
   * received yet faults and is requested. Without it nobody runs the guest during postcopy and
   * the pages simply arrive in the background. A throw or rejection fails the migration.
   */
  onPostcopyRun?: (run: {
    memory: SharedArrayBuffer;
    faults: PostcopyFaults;
    /** The source's vCPU state, when it sent one before the switch. */
    vcpuState?: VcpuStateMessage;
    /** The trace file the source's trace program replays (GUEST_TRACE), when it sent one. */
    guestTrace?: GuestTraceWire;
  }) => void | Promise<void>;
  /**
   * vCPUs of the guest `onPostcopyRun` starts (sizes the blocktime counters; `faults.data.vcpus`
   * holds the count chosen). Default: the source's, from its VCPU_STATE, when it sent one before
   * the switch with 1..{@link GUEST_VCPUS_FROM_SOURCE_MAX} vCPUs; else 2.
   */
  guestVcpus?: number;
  /**
   * How long a postcopy migration whose connection dropped stays `postcopy-paused`, waiting for
   * the source to resume it over a new connection, before it fails (ms). Default 120 000.
   */
  recoverTimeoutMs?: number;
}

/** One migration as the destination saw it, in `query-migrate` names where one exists. */
export interface DestinationResult {
  status: 'completed' | 'failed';
  error?: { code: string; message: string };
  'ram-bytes': number;
  /** The memory received into: its first `ram-bytes` are the guest's RAM (a record RAM's go on). */
  memory?: SharedArrayBuffer;
  /** Pages received with data (main PAGE records and multifd normal pages). */
  normal: number;
  /** Zero pages (ZERO records and multifd zero slots), QEMU's `ram.duplicate`. */
  duplicate: number;
  'multifd-packets': number;
  /** Every byte read from the migration's connections, handshakes included. */
  'bytes-received': number;
  /** Main-stream bytes after the handshake. */
  'main-bytes': number;
  /**
   * Multifd page bytes read straight into guest memory (a packet's run of consecutive pages), not
   * through the read buffer: QEMU's multifd receive reads pages in place.
   */
  'in-place-bytes': number;
  /**
   * Received into a record RAM (record-ram.ts) only: the pages of `normal` it placed from the
   * main connection's read buffer (`record-ram-copy` says how); the rest (records cut by a read,
   * or any page once postcopy tracks them) went through the JS decoder.
   */
  'record-ram-pages'?: number;
  /**
   * Received into a record RAM only: what placed those pages — `'non-temporal'`, its machine code
   * (Linux on x86-64, koffi), or `'webassembly'` (`RecordRam.copy`).
   */
  'record-ram-copy'?: 'non-temporal' | 'webassembly';
  /**
   * Reads of the main connection (from its reused read buffer; every connection it had, after a
   * recovery), each a callback into JavaScript.
   */
  'main-reads': number;
  /**
   * The batch the main connection's reads waited for while precopy's page records came on it alone
   * (`SO_RCVLOWAT`, {@link MAIN_READ_BATCH_BYTES}); 0 where they were not batched (multifd, no
   * koffi, not Linux, a connection that could not read into a reused buffer).
   */
  'main-read-batch': number;
  /** Multifd channel bytes after their handshakes. */
  'multifd-bytes': number;
  /** True only when VERIFY_END came, every page of RAM was compared and none mismatched. */
  verified: boolean;
  'verify-mismatches': number;
  /** From the main connection's acceptance to the end, in ms. */
  'total-time': number;
  /**
   * The source guest's vCPU state (VCPU_STATE, sent before completion or the postcopy switch):
   * where each vCPU's workload stood, so the guest run here goes on from it. Absent if none came.
   */
  'vcpu-state'?: VcpuStateMessage;
  /**
   * The trace file the source's guest replays (GUEST_TRACE, sent at setup when it runs a trace
   * program): its size and how it replays. Absent if none came.
   */
  'guest-trace'?: { bytes: number; loop: boolean; scale: boolean };
  /** That trace itself, so the guest run here can replay it too (not for printing: its bytes). */
  guestTrace?: GuestTraceWire;
  /** Postcopy only: how it went on this side (QEMU reports blocktime on the destination). */
  postcopy?: {
    /** REQ_PAGES sent (a page asked again after a recovery counts again). */
    'postcopy-requests': number;
    /** ms during which every vCPU was blocked on a missing page. */
    'postcopy-blocktime': number;
    'postcopy-vcpu-blocktime': number[];
    /** Times the connection dropped and the migration paused. */
    'postcopy-pauses': number;
    /** Pages placed during postcopy (on the main or the preempt connection). */
    'postcopy-placed': number;
    /** Page records for a page already in place, ignored (never overwritten). */
    'postcopy-duplicates': number;
    /** Page bytes that came on the preempt connection. */
    'postcopy-preempt-bytes': number;
    /** Pages the guest wrote here after the switch (verified against their content before). */
    'guest-written-pages': number;
  };
}

export interface Destination {
  readonly host: string;
  readonly port: number;
  /** The first migration's result (with `once: false`, see `onResult` for the others). */
  readonly result: Promise<DestinationResult>;
  /** Stops listening and ends every connection; a running migration fails. */
  close(): Promise<void>;
}

export const DEFAULT_MAX_MEMORY = 64 * 2 ** 30;
export const DEFAULT_DESTINATION_TIMEOUT_MS = 30_000;
/** Checks of the idle timeout per `timeoutMs` (see `idleTimer`). */
const IDLE_CHECKS = 4;
const PROGRESS_INTERVAL_MS = 100;

/**
 * Zero pages are written by copying this page: `TypedArray.prototype.fill` over a range costs
 * ~2 µs per 4 KiB here (Node 20), 6× a 4 KiB `set`.
 */
const ZERO_PAGE = new Uint8Array(PAGE_SIZE);

/**
 * Marks received the page of each record in `chunk[at, end)`: whole page records that a record
 * RAM placed (so each header's high word is 0 and its low word `offset | flags`, big-endian).
 */
function markReceived(received: Int32Array, chunk: Uint8Array, at: number, end: number): void {
  for (let p = at; p < end; p += PAGE_RECORD_BYTES) {
    const page = Math.floor(be32(chunk, p + 4) / PAGE_SIZE);
    received[page >>> 5] = (received[page >>> 5] as number) | (1 << (page & 31));
  }
}

/**
 * Whether the 8 bytes before `at` in `chunk` are the header `offset | PAGE | CONTINUE` (big-endian,
 * high word 0): the page at `at` is then a whole record a record RAM can place.
 */
function isPageRecord(chunk: Uint8Array, at: number, offset: number): boolean {
  if (at < RAM_HEADER_BYTES || offset >= 2 ** 32) return false;
  const h = at - RAM_HEADER_BYTES;
  return be32(chunk, h) === 0 && be32(chunk, h + 4) === offset + RAM_FLAG.PAGE + RAM_FLAG.CONTINUE;
}

/**
 * Pages `[first, end)` discarded in postcopy: each one `received` marks is zeroed and marked
 * missing; a word of 32 pages none of which arrived is passed over whole.
 */
function discardReceived(mem: Uint8Array, received: Int32Array, first: number, end: number): void {
  for (let p = first; p < end;) {
    const w = p >>> 5;
    if (received[w] === 0) {
      p = (w + 1) * 32;
      continue;
    }
    const bit = 1 << (p & 31);
    if (((received[w] as number) & bit) !== 0) {
      mem.set(ZERO_PAGE, p * PAGE_SIZE);
      received[w] = (received[w] as number) & ~bit;
    }
    p++;
  }
}

/** Zeroes `[start, start + length)` of `mem` a page at a time with {@link ZERO_PAGE}. */
function zeroRange(mem: Uint8Array, start: number, length: number): void {
  let o = start;
  for (const end = start + length - PAGE_SIZE; o <= end; o += PAGE_SIZE) mem.set(ZERO_PAGE, o);
  if (o < start + length) mem.set(ZERO_PAGE.subarray(0, start + length - o), o);
}
const HANDSHAKE_BYTES = 64 + 32;

/**
 * A page on its way into guest memory stops here first. V8 copies into a `SharedArrayBuffer`
 * (guest memory is one) with relaxed 8-byte loads and stores, not `memmove`: measured here
 * (Node 20), 4 KiB from L1 into a shared buffer takes ~230 ns against ~55 ns into a plain one.
 * Straight from the 1 MiB read buffer, which the kernel has just filled, that copy took
 * 355–500 ms per GiB received (a third to a half of the destination thread's time); through this
 * page — a real `memmove` into L1, then the relaxed copy out of L1 — 165–270 ms, and a 1 GiB
 * migration ran 9–35% faster (four alternating pairs). The main connection's whole page records
 * now stop in their read buffer's own scratch page instead (`stagePage`, no view per page); this
 * one serves the rest: a record split between two reads, a multifd page not read in place, a
 * connection read without a reused buffer.
 */
const BOUNCE = new Uint8Array(PAGE_SIZE);

/**
 * Copies one page's bytes (or less) to `offset` of guest memory, through {@link BOUNCE} — unless
 * `hot`: a page {@link stagePage} has just copied into its read buffer's scratch page is in L1
 * already.
 */
function copyIn(mem: Uint8Array, data: Uint8Array, offset: number, hot = false): void {
  if (
    hot ||
    data === ZERO_PAGE ||
    data.byteLength !== PAGE_SIZE ||
    data.buffer instanceof SharedArrayBuffer
  ) {
    mem.set(data, offset);
    return;
  }
  BOUNCE.set(data);
  mem.set(BOUNCE, offset);
}

/**
 * Most vCPUs a destination gives its postcopy guest from the source's VCPU_STATE when
 * `guestVcpus` is not set (each is a worker thread; `dirtytrack`'s `--vcpus` stops at 64 too).
 */
export const GUEST_VCPUS_FROM_SOURCE_MAX = 64;

/** Starts a destination listening on `host:port`; resolves once it listens. */
export async function createDestination(options: DestinationOptions = {}): Promise<Destination> {
  const host = options.host ?? '127.0.0.1';
  const token = options.token;
  const maxMemory = options.maxMemory ?? DEFAULT_MAX_MEMORY;
  const allocate = options.allocate ?? ((bytes: number) => new SharedArrayBuffer(bytes));
  const timeoutMs = options.timeoutMs ?? DEFAULT_DESTINATION_TIMEOUT_MS;
  const once = options.once ?? true;
  const fixedMemory = options.memory;
  const fixedRamBytes = fixedMemory === undefined ? 0 : ramBytesOf(fixedMemory);
  const clock = options.clock ?? createRealClock();
  const guestVcpus = options.guestVcpus ?? 2;
  const vcpusFromSource = options.guestVcpus === undefined;
  const recoverTimeoutMs = options.recoverTimeoutMs ?? 120_000;
  if (!isLoopback(host) && (token === undefined || token === '')) {
    throw new DirtytrackError(
      'invalid-argument',
      `token: required to listen on ${host}, which is not a loopback address (authentication is mandatory off loopback)`,
      { component: 'destination', field: 'token' },
    );
  }
  if (fixedMemory !== undefined && (fixedRamBytes === 0 || fixedRamBytes % PAGE_SIZE !== 0)) {
    throw new DirtytrackError(
      'invalid-argument',
      `memory: ${fixedRamBytes} bytes is not a non-zero multiple of ${PAGE_SIZE}`,
      {
        component: 'destination',
        field: 'memory',
      },
    );
  }
  for (const [field, value] of [
    ['maxMemory', maxMemory],
    ['timeoutMs', timeoutMs],
    ['guestVcpus', guestVcpus],
    ['recoverTimeoutMs', recoverTimeoutMs],
  ] as const) {
    if (!Number.isFinite(value) || value <= 0) {
      throw new DirtytrackError('invalid-argument', `${field}: must be a positive number, got ${value}`, {
        component: 'destination',
        field,
      });
    }
  }

  // koffi loads now, before this listens, not at the first main connection's batched reads: a
  // thread killed while koffi initializes takes the whole process with it (libc.ts), and the
  // first read of a migration is no place for a dlopen either.
  loadLibc();

  const sockets = new Set<Socket>();
  let current: Migration | null = null;
  let finishedOne = false;
  /** An `onResult` promise has not settled yet: no new migration starts. */
  let handling = false;
  let closing = false;
  let settleFirst!: (r: DestinationResult) => void;
  const result = new Promise<DestinationResult>((resolve) => (settleFirst = resolve));
  let firstSettled = false;

  // Half-open allowed: a source may end its side after EOF and still read SHUT and VERIFY_RESULT.
  const server: Server = createServer({ noDelay: true, allowHalfOpen: true });
  /** Connections moved onto a reused read buffer, until attached. */
  const readers = new WeakMap<Socket, BufferedSocket>();
  /** Kept until closed (so `close()` can end it); its errors are reported through the handshake or the migration. */
  const track = (socket: Socket): void => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', () => {});
  };
  server.on('connection', (socket) => {
    track(socket);
    if (closing) {
      socket.destroy();
      return;
    }
    let migration: Migration | null = null;
    serverHandshake(socket, {
      ...(token === undefined ? {} : { token }),
      timeoutMs: Math.min(timeoutMs, 10_000),
      accept(hello) {
        const verdict = accept(hello);
        if (typeof verdict === 'object' && 'code' in verdict) return verdict;
        migration = verdict;
        return undefined;
      },
    }).then(
      (hello) => {
        const m = migration as Migration | null;
        if (m === null || m.done) {
          socket.destroy();
          return;
        }
        // From here the connection reads into one reused buffer (read-buffer.ts), when it can: a
        // main connection into its record RAM's (record-ram.ts), unless another one holds it.
        const main = hello.kind === CHANNEL_KIND.MAIN;
        const ram = main ? recordRamOf(m.memory) : undefined;
        const into = ram !== undefined && !ram.readerTaken() ? ram.readBuffer : undefined;
        const buffered = withReadBuffer(socket, main ? MAIN_READ_BUFFER_BYTES : READ_BUFFER_BYTES, into);
        if (buffered !== undefined && into !== undefined) ram?.takeReader(buffered.socket);
        if (buffered !== undefined) {
          sockets.delete(socket);
          track(buffered.socket);
          readers.set(buffered.socket, buffered);
        }
        const s = buffered?.socket ?? socket;
        try {
          if (hello.kind === CHANNEL_KIND.MAIN) attachMain(m, s);
          else if (hello.kind === CHANNEL_KIND.PREEMPT) attachPreempt(m, s);
          else attachChannel(m, s, hello.channel);
        } catch (error) {
          finish(m, error);
        }
      },
      () => {
        // A refused handshake ends only that connection (the migration, if any, goes on).
      },
    );
  });

  function accept(hello: Hello): Migration | { code: number; message: string } {
    if (closing) return { code: RESULT_CODE.IDENTITY, message: 'the destination is closing' };
    if (hello.kind === CHANNEL_KIND.MAIN && (hello.flags & HELLO_FLAG.RESUME) !== 0) {
      // `migrate resume=true`: a new main connection for the paused postcopy migration.
      const m = current;
      if (m === null || m.done || !sameId(m.id, hello.migrationId) || !m.running || m.eof)
        return { code: RESULT_CODE.IDENTITY, message: 'no paused migration with this id to resume here' };
      // A cut cable errors nowhere: the source may notice first (its link timeout) and come back
      // while this side still waits on the old connection. Its resume says that one is dead.
      if (!m.paused) lost(m, protocolFailure('the source reconnected to resume: the old connection is dead'));
      if (m.resuming) return { code: RESULT_CODE.IDENTITY, message: 'this migration is already resuming' };
      m.resuming = true;
      return m;
    }
    if (hello.kind === CHANNEL_KIND.PREEMPT) {
      const m = current;
      if (m === null || m.done || m.faults === null || !sameId(m.id, hello.migrationId))
        return { code: RESULT_CODE.IDENTITY, message: 'a preempt channel for no running postcopy migration' };
      if (m.preempt !== null && !m.preempt.ended && m.preempt.socket?.destroyed === false)
        return { code: RESULT_CODE.IDENTITY, message: 'the preempt channel is already connected' };
      return m;
    }
    if (hello.kind === CHANNEL_KIND.MAIN) {
      if (current !== null)
        return { code: RESULT_CODE.IDENTITY, message: 'a migration is already running here' };
      if (handling)
        return { code: RESULT_CODE.IDENTITY, message: 'the previous migration is still being handled here' };
      if (once && finishedOne)
        return { code: RESULT_CODE.IDENTITY, message: 'this destination has already received its migration' };
      let memory: SharedArrayBuffer;
      if (fixedMemory !== undefined) {
        if (fixedRamBytes !== hello.ramBytes) {
          return {
            code: RESULT_CODE.RAM_SIZE,
            message: `the source's RAM is ${hello.ramBytes} bytes, this destination's memory is ${fixedRamBytes}`,
          };
        }
        memory = fixedMemory;
      } else {
        if (hello.ramBytes > maxMemory) {
          return {
            code: RESULT_CODE.RAM_SIZE,
            message: `the source's RAM is ${hello.ramBytes} bytes, more than this destination's maxMemory ${maxMemory}`,
          };
        }
        try {
          memory = allocate(hello.ramBytes);
          if (ramBytesOf(memory) !== hello.ramBytes)
            throw new Error(`allocate gave ${ramBytesOf(memory)} bytes for ${hello.ramBytes}`);
        } catch (error) {
          return {
            code: RESULT_CODE.RAM_SIZE,
            message: `cannot allocate ${hello.ramBytes} bytes of RAM: ${error instanceof Error ? error.message : String(error)}`,
          };
        }
      }
      current = createMigration(hello, memory);
      options.onMigrationStart?.({
        memory,
        ramBytes: hello.ramBytes,
        channels: hello.channels,
        postcopy: (hello.flags & HELLO_FLAG.POSTCOPY) !== 0,
      });
      return current;
    }
    if (hello.kind === CHANNEL_KIND.MULTIFD) {
      const m = current;
      if (m === null || m.done || !sameId(m.id, hello.migrationId)) {
        return { code: RESULT_CODE.IDENTITY, message: 'unknown migration id: no running migration has it' };
      }
      if (hello.channel >= m.channels.length) {
        return {
          code: RESULT_CODE.IDENTITY,
          message: `multifd channel id ${hello.channel} is not below the migration's ${m.channels.length} channels`,
        };
      }
      const ch = m.channels[hello.channel] as Channel;
      if (ch.claimed)
        return { code: RESULT_CODE.IDENTITY, message: `multifd channel ${hello.channel} connected twice` };
      if (hello.ramBytes !== m.ramBytes) {
        return {
          code: RESULT_CODE.RAM_SIZE,
          message: `channel says RAM is ${hello.ramBytes} bytes, the main connection ${m.ramBytes}`,
        };
      }
      ch.claimed = true;
      return m;
    }
    return { code: RESULT_CODE.IDENTITY, message: `unknown channel kind ${hello.kind}` };
  }

  function createMigration(hello: Hello, memory: SharedArrayBuffer): Migration {
    const ramBytes = hello.ramBytes;
    // A Buffer, like the socket chunks the pages arrive in: a page copies Buffer → Buffer ~2× faster
    // than into a plain Uint8Array view (measured here). Untouched memory costs far more: each first
    // write faults a page in (~17 µs on this VM), which is why `serve --memory` preallocates.
    const mem = Buffer.from(memory, 0, ramBytes);
    const postcopy = (hello.flags & HELLO_FLAG.POSTCOPY) !== 0;
    const m: Migration = {
      id: hello.migrationId,
      ramBytes,
      pages: ramBytes / PAGE_SIZE,
      memory,
      mem,
      main: null,
      mainDecoder: null as unknown as MainDecoder,
      mainConn: null as unknown as Conn,
      channels: [],
      flushSeen: 0,
      released: 0,
      mainWaiting: false,
      eof: false,
      traceChunks: [],
      traceHave: 0,
      traceTotal: 0,
      traceFlags: 0,
      done: false,
      normal: 0,
      duplicate: 0,
      packets: 0,
      bytes: 0,
      inPlaceBytes: 0,
      recordRamPages: 0,
      mainReader: undefined,
      mainReadsBefore: 0,
      mainReadBatch: 0,
      compared: null,
      comparedCount: 0,
      mismatches: 0,
      verifyEnded: false,
      startedAt: clock.now(),
      lastProgress: 0,
      reads: 0,
      readsSeen: 0,
      quietChecks: 0,
      timer: idleTimer(() => m),
      faults: postcopy ? createPostcopyFaults(memory, guestVcpus, ramBytes) : null,
      running: false,
      paused: false,
      resuming: false,
      pauses: 0,
      requests: 0,
      placed: 0,
      duplicates: 0,
      preemptBytes: 0,
      preempt: null,
      recoverTimer: null,
      newMainDecoder: () => null as unknown as MainDecoder,
      preemptDecoder: () => null as unknown as MainDecoder,
      ended: null as unknown as Promise<void>,
      settleEnded: () => {},
    };
    m.ended = new Promise<void>((resolve) => (m.settleEnded = resolve));
    const received = m.faults?.received;
    /** Page `offset`'s bytes are in `mem`: before the switch a plain bit, after it a placement. */
    const landed = (offset: number): boolean => {
      if (received === undefined) return true;
      const page = offset / PAGE_SIZE;
      const w = page >>> 5;
      const bit = 1 << (page & 31);
      if (!m.running) {
        received[w] = (received[w] as number) | bit;
        return true;
      }
      // UFFDIO_COPY never overwrites a page in place (EEXIST): the guest may have written it.
      if ((Atomics.load(received, w) & bit) !== 0) {
        m.duplicates++;
        return false;
      }
      return true;
    };
    /** Writes a page's bytes (once placed in postcopy: never over a page already in place). */
    const put = (offset: number, data: Uint8Array, hot = false): boolean => {
      if (offset + PAGE_SIZE > ramBytes)
        throw new DirtytrackError('internal', `page at ${offset} outside RAM`, { component: 'destination' });
      if (!m.running) {
        copyIn(mem, data, offset, hot);
        landed(offset);
        return true;
      }
      if (!landed(offset)) return false;
      copyIn(mem, data, offset, hot);
      placedHere(offset);
      return true;
    };
    /** After the switch: page `offset` is in place now (vCPUs waiting for it wake up). */
    const placedHere = (offset: number): void => {
      m.faults?.place(offset / PAGE_SIZE);
      m.placed++;
    };
    const onPage = (offset: number, data: Uint8Array): void => {
      if (put(offset, data)) m.normal++;
    };
    // A record RAM takes whole runs of page records from its read buffer (record-ram.ts): below.
    const ram = recordRamOf(memory);
    /** A whole page record in a read: staged out of the read buffer without a view of it. */
    const onPageAt = (offset: number, chunk: Uint8Array, at: number): void => {
      // After the switch, a page record in a record RAM's read buffer (an 8-byte header right
      // before the page, naming it) goes to its page by WebAssembly too, once `landed` allows it:
      // staging it would copy it twice through a SharedArrayBuffer (~1 GB/s here).
      if (m.running && ram !== undefined && isPageRecord(chunk, at, offset)) {
        if (!landed(offset)) return;
        if (ram.placePages(chunk, at - RAM_HEADER_BYTES, at + PAGE_SIZE) === PAGE_RECORD_BYTES) {
          placedHere(offset);
          m.normal++;
          m.recordRamPages++;
          return;
        }
      }
      const staged = stagePage(chunk, at);
      if (staged === undefined) onPage(offset, chunk.subarray(at, at + PAGE_SIZE));
      else if (put(offset, staged, true)) m.normal++;
    };
    const onZero = (offset: number): void => {
      if (put(offset, ZERO_PAGE)) m.duplicate++;
    };
    // Whole runs of them before the switch. With postcopy announced, each placed page is then
    // marked received, as `landed` marks it (the pages a running guest here will not ask for);
    // after the switch pages go one by one (`onPageAt`: placed once, never over one in place).
    const onPageRun =
      ram === undefined
        ? undefined
        : (chunk: Uint8Array, at: number, end: number): number => {
            if (m.running) return 0;
            const n = ram.placePages(chunk, at, end);
            if (received !== undefined) markReceived(received, chunk, at, at + n);
            const pages = recordsIn(n);
            m.normal += pages;
            m.recordRamPages += pages;
            return n;
          };
    const mainOptions = {
      ramBytes,
      onPage,
      onPageAt,
      onPageRun,
      onZero,
      onFlush: () => {
        const k = ++m.flushSeen;
        for (const ch of m.channels) {
          if (ch.closed && ch.syncs < k) {
            throw protocolFailure(`multifd channel ${ch.index} closed before its SYNC for flush ${k}`);
          }
        }
        if (allSynced(m, k)) {
          release(m, k);
          return true;
        }
        m.mainWaiting = true;
        return false;
      },
      onSection: () => {},
      onEos: () => {},
      onMemSize: () => {},
      onCommand: (cmd: number, payload: Uint8Array) => command(m, cmd, payload),
      onEof: () => {
        if (m.traceHave < m.traceTotal)
          throw protocolFailure(
            `GUEST_TRACE: ${m.traceHave} of the trace's ${m.traceTotal} bytes came before EOF`,
          );
        m.eof = true;
        queueMicrotask(() => tryComplete(m));
      },
    };
    m.mainDecoder = createMainDecoder(mainOptions);
    m.newMainDecoder = () => createMainDecoder({ ...mainOptions, resumed: true });
    m.preemptDecoder = () =>
      createMainDecoder({
        ...mainOptions,
        resumed: true,
        onPage: (offset, data) => {
          m.preemptBytes += PAGE_SIZE;
          onPage(offset, data);
        },
        onPageAt: (offset, chunk, at) => {
          m.preemptBytes += PAGE_SIZE;
          onPageAt(offset, chunk, at);
        },
        onFlush: () => {
          throw protocolFailure('MULTIFD_FLUSH on the preempt channel');
        },
        onCommand: (cmd) => {
          throw protocolFailure(`command ${cmd} on the preempt channel (it carries pages only)`);
        },
        onEof: () => {},
      });
    m.mainConn = newConn(m.mainDecoder);
    const n = Math.min(hello.channels, 0xffff);
    for (let i = 0; i < n; i++) {
      const ch: Channel = {
        index: i,
        claimed: false,
        closed: false,
        syncs: 0,
        conn: null as unknown as Conn,
        decoder: createMultifdDecoder({
          ramBytes,
          onPacket: () => {
            m.packets++;
          },
          onPage,
          onZero,
          writePart: (offset, bytes) => {
            mem.set(bytes, offset);
          },
          onPageInPlace: (offset) => {
            // Only before the switch (inPlace() is never offered once the guest runs here).
            if (m.running)
              throw new DirtytrackError('internal', `page at ${offset} read in place in postcopy`, {
                component: 'destination',
              });
            landed(offset);
            m.normal++;
          },
          onSync: () => {
            ch.syncs++;
            if (m.mainWaiting && allSynced(m, m.flushSeen)) {
              m.mainWaiting = false;
              release(m, m.flushSeen);
              queueMicrotask(() => guard(m, () => resumeDecoder(m, m.mainConn)));
            }
            return ch.syncs <= m.released;
          },
        }),
      };
      ch.conn = newConn(ch.decoder);
      m.channels.push(ch);
    }
    return m;
  }

  function allSynced(m: Migration, k: number): boolean {
    for (const ch of m.channels) if (ch.syncs < k) return false;
    return true;
  }

  /** Every channel may go past its k-th SYNC (QEMU's `multifd_recv_sync_main` posting sem_sync). */
  function release(m: Migration, k: number): void {
    m.released = k;
    for (const ch of m.channels) {
      if (ch.decoder.paused && ch.syncs <= k) queueMicrotask(() => guard(m, () => resumeDecoder(m, ch.conn)));
    }
  }

  function resumeDecoder(m: Migration, conn: Conn): void {
    conn.decoder.resume();
    if (conn.decoder.paused) return;
    if (conn.endPending) {
      conn.endPending = false;
      ended(m, conn);
    } else conn.socket?.resume();
  }

  /**
   * The peer's FIN, once the decoder has drained. A stream that stopped inside an item (QEMU's
   * `-EIO`) is a lost link: before the switch the migration fails, in postcopy it pauses — QEMU
   * pauses on any I/O error once the guest runs here (a relay or NAT may turn a cut into a FIN).
   */
  function ended(m: Migration, conn: Conn): void {
    try {
      conn.onEnd();
    } catch (error) {
      if (isDirtytrackError(error) && error.errno === TRUNCATED_ERRNO) lost(m, error);
      else throw error;
    }
  }

  function command(m: Migration, cmd: number, payload: Uint8Array): void {
    const dv = new DataView(payload.buffer, payload.byteOffset, payload.byteLength);
    switch (cmd) {
      case MIG_CMD.PING:
        m.main?.write(encodeReturnU32(RP_MSG.PONG, dv.getUint32(0)));
        return;
      case MIG_CMD.POSTCOPY_ADVISE:
        return; // precopy may advise postcopy and never start it
      case MIG_CMD.POSTCOPY_RAM_DISCARD: {
        if (m.running) throw protocolFailure('POSTCOPY_RAM_DISCARD after POSTCOPY_RUN');
        // Discarded pages will be sent again; until then they read as zero (a punched hole) and,
        // in postcopy, are missing: the guest's first touch faults. A page this migration has not
        // received is missing already (nothing reads it before it arrives), so only received
        // pages are zeroed: at a switch early in the first round, QEMU's discard names nearly all
        // of RAM, and zeroing it all cost ~80 ms per GiB of the destination's time.
        const received = m.faults?.received;
        for (let o = 9; o < payload.length; o += 16) {
          const start = dv.getUint32(o) * 2 ** 32 + dv.getUint32(o + 4);
          const length = dv.getUint32(o + 8) * 2 ** 32 + dv.getUint32(o + 12);
          if (received === undefined) zeroRange(m.mem, start, length);
          else discardReceived(m.mem, received, start / PAGE_SIZE, (start + length) / PAGE_SIZE);
        }
        return;
      }
      case MIG_CMD.POSTCOPY_LISTEN:
        if (m.faults === null) throw protocolFailure('POSTCOPY_LISTEN without postcopy in the HELLO flags');
        m.listening = true;
        // Page requests' answers come on this connection from now on: each read as it arrives.
        m.mainReader?.batchReads(0);
        return;
      case MIG_CMD.POSTCOPY_RUN:
        if (m.faults === null || m.listening !== true || m.running)
          throw protocolFailure('POSTCOPY_RUN before POSTCOPY_LISTEN (or twice)');
        startPostcopy(m, m.faults);
        return;
      case MIG_CMD.RECV_BITMAP: {
        // Recovery: our receivedmap, as QEMU's ramblock_recv_bitmap_send (64-bit LE words).
        if (m.faults === null || !m.running) throw protocolFailure('RECV_BITMAP outside postcopy');
        const bytes = new Uint8Array(Math.ceil(m.pages / 64) * 8);
        const words = new Int32Array(bytes.buffer);
        for (let w = 0; w < m.faults.received.length; w++) words[w] = Atomics.load(m.faults.received, w);
        m.main?.write(encodeRecvBitmap(bytes));
        return;
      }
      case MIG_CMD.POSTCOPY_RESUME: {
        if (m.faults === null || !m.running) throw protocolFailure('POSTCOPY_RESUME outside postcopy');
        m.main?.write(encodeReturnU32(RP_MSG.RESUME_ACK, 1));
        // migrate_send_rp_req_pages_pending: what the vCPUs are still waiting for goes again.
        m.faults.outstanding((page) => request(m, page));
        return;
      }
      case MIG_CMD.VCPU_STATE:
        m.vcpuState = decodeVcpuState(payload); // the decoder checked its length and fields
        // The guest run here after the switch gets the source's vCPUs, unless the caller fixed them.
        if (vcpusFromSource && m.faults !== null && !m.running) {
          const n = m.vcpuState.vcpus.length;
          if (n <= GUEST_VCPUS_FROM_SOURCE_MAX) m.faults.setVcpus(n);
        }
        return;
      case MIG_CMD.GUEST_TRACE: {
        // In order, each chunk where the last ended (offset 0 starts the trace afresh); the
        // decoder checked the header and that the chunk ends within `total`.
        const c = decodeGuestTrace(payload);
        const flags = (c.loop ? GUEST_TRACE_FLAG.LOOP : 0) | (c.scale ? GUEST_TRACE_FLAG.SCALE : 0);
        if (c.offset === 0) {
          m.traceChunks = [];
          m.traceHave = 0;
          m.traceTotal = c.total;
          m.traceFlags = flags;
          delete m.guestTrace;
        } else if (c.offset !== m.traceHave || c.total !== m.traceTotal || flags !== m.traceFlags) {
          throw protocolFailure(
            `GUEST_TRACE: bytes from ${c.offset} of a ${c.total}-byte trace, after ${m.traceHave} of ${m.traceTotal}`,
          );
        }
        m.traceChunks.push(c.chunk.slice()); // the payload is a view of a reused read buffer
        m.traceHave += c.chunk.length;
        if (m.traceHave === m.traceTotal) {
          const bytes = new Uint8Array(m.traceTotal);
          let at = 0;
          for (const chunk of m.traceChunks) {
            bytes.set(chunk, at);
            at += chunk.length;
          }
          m.traceChunks = [];
          m.guestTrace = { bytes, loop: c.loop, scale: c.scale };
        }
        return;
      }
      case MIG_CMD.VERIFY_HASHES: {
        const first = dv.getUint32(0) * 2 ** 32 + dv.getUint32(4);
        const n = dv.getUint16(8);
        const mine = new Uint32Array(2 * n);
        const faults = m.running ? m.faults : null;
        if (faults === null) pageHashes(m.memory, first, n, mine);
        else for (let i = 0; i < n; i++) faults.hashAsSent(first + i, mine, 2 * i);
        const compared = (m.compared ??= new Uint8Array(m.pages));
        for (let i = 0; i < n; i++) {
          const page = first + i;
          if (compared[page] === 0) {
            compared[page] = 1;
            m.comparedCount++;
          } else if (compared[page] === 2) continue; // already counted as a mismatch
          const same =
            dv.getUint32(10 + 8 * i) === mine[2 * i] && dv.getUint32(14 + 8 * i) === mine[2 * i + 1];
          if (!same) {
            compared[page] = 2;
            m.mismatches++;
            if (m.firstMismatch === undefined || page < m.firstMismatch) m.firstMismatch = page;
          }
        }
        return;
      }
      case MIG_CMD.VERIFY_END:
        m.verifyEnded = true;
        m.main?.write(
          encodeVerifyResult({
            pages: m.comparedCount,
            mismatched: m.mismatches,
            firstMismatch: m.firstMismatch ?? -1,
          }),
        );
        return;
      default:
        throw new DirtytrackError('unsupported', `command ${cmd}: not implemented by this destination`, {
          component: 'destination',
        });
    }
  }

  /** REQ_PAGES for one page on the return path (dropped while paused: asked again on resume). */
  function request(m: Migration, page: number): void {
    const main = m.main;
    if (m.paused || main === null || main.destroyed) return;
    m.requests++;
    main.write(encodeReqPages(page * PAGE_SIZE, PAGE_SIZE));
  }

  /** POSTCOPY_RUN: the guest runs here now; its faults become requests on the return path. */
  function startPostcopy(m: Migration, faults: PostcopyFaults): void {
    m.running = true;
    void (async () => {
      while (!m.done) {
        await Promise.race([faults.whenRequested(), m.ended]);
        if (m.done) return;
        faults.takeRequests((page) => {
          if ((Atomics.load(faults.received, page >>> 5) & (1 << (page & 31))) === 0) request(m, page);
        });
      }
    })();
    if (options.onPostcopyRun !== undefined) {
      const { vcpuState, guestTrace } = m;
      const started = (async () =>
        options.onPostcopyRun?.({
          memory: m.memory,
          faults,
          ...(vcpuState === undefined ? {} : { vcpuState }),
          ...(guestTrace === undefined ? {} : { guestTrace }),
        }))();
      started.catch((error: unknown) => finish(m, error));
    }
  }

  /**
   * A connection of a postcopy migration dropped: both sides pause (QEMU's `postcopy-paused`).
   * The guest runs on here until it touches a missing page; the source may resume over a new
   * connection within `recoverTimeoutMs`. Before the switch a drop fails the migration.
   */
  function lost(m: Migration, error: unknown): void {
    if (m.done) return;
    if (!m.running || m.eof) {
      finish(m, error);
      return;
    }
    if (m.paused) return;
    m.paused = true;
    m.resuming = false;
    m.pauses++;
    clearTimeout(m.timer);
    // The old connections are gone for good: whatever they still report is ignored.
    m.mainConn.dead = true;
    m.main?.destroy();
    m.main = null;
    if (m.preempt !== null) {
      m.preempt.dead = true;
      m.preempt.socket?.destroy();
    }
    m.preempt = null;
    for (const ch of m.channels) {
      ch.conn.dead = true;
      ch.closed = true;
      ch.conn.socket?.destroy();
    }
    m.recoverTimer = setTimeout(
      () =>
        finish(
          m,
          new DirtytrackError(
            'timeout',
            `postcopy paused for ${recoverTimeoutMs} ms and the source did not resume (${describeError(error)})`,
            { component: 'destination', errno: 'ETIMEDOUT' },
          ),
        ),
      recoverTimeoutMs,
    );
  }

  function attachMain(m: Migration, socket: Socket): void {
    if (m.paused) {
      // Recovery's new main connection: the stream carries on where the migration is.
      if (m.recoverTimer !== null) clearTimeout(m.recoverTimer);
      m.recoverTimer = null;
      m.paused = false;
      m.resuming = false;
      m.mainDecoder = m.newMainDecoder();
      m.mainConn = newConn(m.mainDecoder);
      m.quietChecks = 0;
      m.timer = idleTimer(() => m);
    }
    m.main = socket;
    m.bytes += HANDSHAKE_BYTES;
    const conn = m.mainConn;
    conn.socket = socket;
    conn.onEnd = () => {
      conn.decoder.end();
      if (!m.eof)
        lost(
          m,
          protocolFailure(`main connection closed at byte ${conn.decoder.offset} before EOF`, 'ECONNRESET'),
        );
    };
    attach(m, conn, 'main connection');
    m.mainReadsBefore += m.mainReader?.reads ?? 0;
    m.mainReader = readers.get(socket);
    // Precopy's page records stream in on this connection alone: its reads wait for a batch of
    // them, not each segment. Not with multifd (the main connection carries only commands, whose
    // answers would each wait for the idle timer) and not in postcopy (a requested page comes here).
    if (
      m.channels.length === 0 &&
      m.listening !== true &&
      !m.running &&
      m.mainReader?.batchReads(MAIN_READ_BATCH_BYTES)
    )
      m.mainReadBatch = MAIN_READ_BATCH_BYTES;
  }

  function attachPreempt(m: Migration, socket: Socket): void {
    m.bytes += HANDSHAKE_BYTES;
    const conn = newConn(m.preemptDecoder());
    conn.socket = socket;
    // The source ends the preempt channel before it verifies: answering its FIN tells it every
    // requested page has been read and placed.
    conn.onEnd = () => {
      conn.decoder.end();
      socket.end();
    };
    m.preempt = conn;
    attach(m, conn, 'preempt channel');
  }

  function attachChannel(m: Migration, socket: Socket, index: number): void {
    const ch = m.channels[index] as Channel;
    const conn = ch.conn;
    conn.socket = socket;
    m.bytes += HANDSHAKE_BYTES;
    conn.onEnd = () => {
      conn.decoder.end();
      ch.closed = true;
      if (m.mainWaiting && ch.syncs < m.flushSeen) {
        throw protocolFailure(
          `multifd channel ${index} closed at byte ${conn.decoder.offset} before its SYNC for flush ${m.flushSeen}`,
        );
      }
      if (m.eof) tryComplete(m);
    };
    attach(m, conn, `multifd channel ${index}`, ch.decoder);
  }

  /**
   * Feeds a socket to its decoder. The peer's FIN is handled once the decoder has drained. With
   * `multifd` (a multifd channel read into a reused buffer), a packet's run of consecutive pages is
   * read straight into guest memory, as QEMU's multifd receive reads a packet's pages with `readv`.
   */
  function attach(m: Migration, conn: Conn, name: string, multifd?: MultifdDecoder): void {
    const socket = conn.socket as Socket;
    const decoder = conn.decoder;
    /**
     * One read's `n` bytes: `chunk` to the decoder, or (no chunk) `n` bytes a multifd channel read
     * in place; false once the decoder paused (the socket pauses too). Thousands of reads per GiB:
     * no closure per read, and the idle timer is not re-armed per read ({@link idleTimer}).
     */
    const read = (n: number, chunk: Uint8Array | undefined, transient: boolean): boolean => {
      if (m.done || conn.dead) return true; // read on and drop, as before the end
      m.bytes += n;
      m.reads++;
      try {
        if (chunk !== undefined) decoder.push(chunk, transient);
        else {
          m.inPlaceBytes += n;
          multifd?.inPlace(n);
        }
        progress(m, false);
        if (m.eof) tryComplete(m);
      } catch (error) {
        finish(m, error);
      }
      return !decoder.paused;
    };
    const feed = (chunk: Uint8Array, transient: boolean): boolean => read(chunk.length, chunk, transient);
    const inPlace: InPlaceReads | undefined =
      multifd === undefined
        ? undefined
        : {
            target: () => {
              if (m.done || conn.dead || m.running) return undefined;
              const range = multifd.inPlaceRange();
              if (range !== undefined) return m.mem.subarray(range.offset, range.offset + range.bytes);
              // Between packets: read just the header, so that its pages can come in place.
              const header = multifd.headerBytesLeft();
              return header > 0 ? header : undefined;
            },
            landed: (n) => read(n, undefined, false),
          };
    const buffered = readers.get(socket);
    if (buffered !== undefined) buffered.start((chunk) => feed(chunk, true), inPlace);
    else
      socket.on('data', (chunk: Buffer) => {
        if (!feed(chunk, false)) socket.pause();
      });
    socket.on('end', () => {
      conn.ended = true;
      if (m.done || conn.dead) return;
      if (decoder.paused) conn.endPending = true;
      else guard(m, () => ended(m, conn));
    });
    socket.on('close', () => {
      if (m.done || conn.ended || conn.dead) return;
      lost(m, protocolFailure(`${name} reset at byte ${decoder.offset}`, 'ECONNRESET'));
    });
    socket.on('error', (error: Error & { code?: string }) => {
      if (m.done || conn.dead) return;
      lost(
        m,
        new DirtytrackError('protocol', `${name} at byte ${decoder.offset}: ${error.message}`, {
          component: 'destination',
          ...(error.code === undefined ? {} : { errno: error.code }),
          cause: error,
        }),
      );
    });
  }

  function tryComplete(m: Migration): void {
    if (m.done || !m.eof) return;
    for (const ch of m.channels) if (ch.conn.socket !== null && !ch.closed && !ch.decoder.idle) return;
    finish(m, null);
  }

  /**
   * The idle timeout, checked {@link IDLE_CHECKS} times per `timeoutMs` instead of re-armed at
   * every read (a timer list insert each, thousands per GiB): reads only count themselves, and
   * the migration fails once that many checks in a row saw no read — quiet for at least
   * `timeoutMs`, found at most a quarter of it later. `of` gives the migration (not yet made
   * when its first timer is).
   */
  function idleTimer(of: () => Migration): NodeJS.Timeout {
    return setInterval(() => {
      const m = of();
      if (m.reads !== m.readsSeen) {
        m.readsSeen = m.reads;
        m.quietChecks = 0;
      } else if (++m.quietChecks >= IDLE_CHECKS) idle(m);
    }, timeoutMs / IDLE_CHECKS);
  }

  function idle(m: Migration): void {
    lost(
      m,
      new DirtytrackError('timeout', `no bytes from the source for ${timeoutMs} ms`, {
        component: 'destination',
        errno: 'ETIMEDOUT',
      }),
    );
  }

  function guard(m: Migration, fn: () => void): void {
    try {
      fn();
    } catch (error) {
      finish(m, error);
    }
  }

  /** Ends a migration: `error` null = completed. Idempotent. */
  function finish(m: Migration, error: unknown): void {
    if (m.done) return;
    m.done = true;
    clearTimeout(m.timer);
    if (m.recoverTimer !== null) clearTimeout(m.recoverTimer);
    m.settleEnded();
    // A failed postcopy loses the guest here: its vCPUs waiting for pages get an error.
    if (error !== null) m.faults?.abort();
    const preempt = m.preempt?.socket;
    if (preempt != null && !preempt.destroyed) {
      if (error === null) {
        preempt.end();
        setTimeout(() => preempt.destroy(), 1000).unref();
      } else preempt.destroy();
    }
    const main = m.main;
    if (main !== null && !main.destroyed) {
      // QEMU's destination sends SHUT on the return path when it is done with it.
      if (main.writable) main.end(encodeReturnU32(RP_MSG.SHUT, error === null ? 0 : 1), () => main.destroy());
      else main.destroy();
      setTimeout(() => main.destroy(), 1000).unref();
    }
    for (const ch of m.channels) {
      const s = ch.conn.socket;
      if (s === null || s.destroyed) continue;
      if (error === null) {
        s.end();
        setTimeout(() => s.destroy(), 1000).unref();
      } else s.destroy();
    }
    if (current === m) current = null;
    finishedOne = true;
    const r: DestinationResult = {
      status: error === null ? 'completed' : 'failed',
      'ram-bytes': m.ramBytes,
      memory: m.memory,
      normal: m.normal,
      duplicate: m.duplicate,
      'multifd-packets': m.packets,
      'bytes-received': m.bytes,
      'in-place-bytes': m.inPlaceBytes,
      ...recordRamFields(m),
      'main-bytes': m.mainDecoder.offset,
      'main-reads': m.mainReadsBefore + (m.mainReader?.reads ?? 0),
      'main-read-batch': m.mainReadBatch,
      'multifd-bytes': m.channels.reduce((sum, ch) => sum + ch.decoder.offset, 0),
      verified: error === null && m.verifyEnded && m.comparedCount === m.pages && m.mismatches === 0,
      'verify-mismatches': m.mismatches,
      'total-time': Math.round((clock.now() - m.startedAt) / 1000) / 1000,
      ...(m.vcpuState === undefined ? {} : { 'vcpu-state': m.vcpuState }),
      ...(m.guestTrace === undefined
        ? {}
        : {
            'guest-trace': {
              bytes: m.guestTrace.bytes.length,
              loop: m.guestTrace.loop,
              scale: m.guestTrace.scale,
            },
            guestTrace: m.guestTrace,
          }),
    };
    if (m.faults !== null && m.running) {
      r.postcopy = {
        'postcopy-requests': m.requests,
        ...m.faults.blocktime(),
        'postcopy-pauses': m.pauses,
        'postcopy-placed': m.placed,
        'postcopy-duplicates': m.duplicates,
        'postcopy-preempt-bytes': m.preemptBytes,
        'guest-written-pages': m.faults.writtenPages(),
      };
    }
    if (error !== null) {
      r.error =
        error instanceof DirtytrackError
          ? { code: error.code, message: error.message }
          : { code: 'internal', message: error instanceof Error ? error.message : String(error) };
    }
    progress(m, true);
    report(r);
    if (once) void closeServer();
  }

  function report(r: DestinationResult): void {
    if (!firstSettled) {
      firstSettled = true;
      settleFirst(r);
    }
    try {
      const held = options.onResult?.(r);
      if (held instanceof Promise) {
        handling = true;
        held.then(
          () => (handling = false),
          () => (handling = false),
        );
      }
    } catch {
      // a throwing callback must not take the destination down
    }
  }

  /** A record RAM's fields of the result (none for a plain `SharedArrayBuffer`). */
  function recordRamFields(m: Migration): Pick<DestinationResult, 'record-ram-pages' | 'record-ram-copy'> {
    const ram = recordRamOf(m.memory);
    return ram === undefined ? {} : { 'record-ram-pages': m.recordRamPages, 'record-ram-copy': ram.copy };
  }

  function progress(m: Migration, force: boolean): void {
    if (options.onProgress === undefined) return;
    const now = clock.now();
    if (!force && now - m.lastProgress < PROGRESS_INTERVAL_MS * 1e6) return;
    m.lastProgress = now;
    try {
      options.onProgress({ bytes: m.bytes, pages: m.normal + m.duplicate });
    } catch {
      // progress is advisory
    }
  }

  let closed: Promise<void> | null = null;
  function closeServer(): Promise<void> {
    closing = true;
    closed ??= new Promise<void>((resolve) => server.close(() => resolve()));
    return closed;
  }

  await new Promise<void>((resolve, reject) => {
    // The address cannot be listened on: a host that does not resolve (ENOTFOUND), one not on
    // this machine (EADDRNOTAVAIL), a port taken (EADDRINUSE) or not ours to bind (EACCES).
    const failed = (error: NodeJS.ErrnoException): void => {
      const errno = typeof error.code === 'string' ? error.code : undefined;
      reject(
        new DirtytrackError(
          'invalid-argument',
          `listen: cannot listen on ${host}:${options.port ?? 0}: ${listenReason(error)}`,
          {
            component: 'destination',
            field: 'listen',
            ...(errno === undefined ? {} : { errno }),
            cause: error,
          },
        ),
      );
    };
    server.once('error', failed);
    server.listen(options.port ?? 0, host, () => {
      server.off('error', failed);
      resolve();
    });
  });
  server.on('error', () => {}); // after listening, errors are per connection
  const address = server.address();
  const port = typeof address === 'object' && address !== null ? address.port : (options.port ?? 0);

  return {
    host,
    port,
    result,
    async close() {
      const done = closeServer();
      if (current !== null) {
        finish(
          current,
          new DirtytrackError('invalid-state', 'the destination was closed during the migration', {
            component: 'destination',
          }),
        );
      }
      for (const s of sockets) s.destroy();
      if (!firstSettled) {
        report({
          status: 'failed',
          error: { code: 'invalid-state', message: '[dirtytrack] [destination] closed before any migration' },
          'ram-bytes': 0,
          normal: 0,
          duplicate: 0,
          'multifd-packets': 0,
          'bytes-received': 0,
          'in-place-bytes': 0,
          'main-bytes': 0,
          'main-reads': 0,
          'main-read-batch': 0,
          'multifd-bytes': 0,
          verified: false,
          'verify-mismatches': 0,
          'total-time': 0,
        });
      }
      await done;
    },
  };
}

// ---------------------------------------------------------------------------------------------

/** One connection of a migration, once its handshake is done. */
interface Conn {
  socket: Socket | null;
  decoder: MainDecoder | MultifdDecoder;
  /** The peer sent FIN. */
  ended: boolean;
  /** FIN came while the decoder was paused: handle it once it has drained. */
  endPending: boolean;
  /** Checks a FIN (throws for a truncated stream). */
  onEnd: () => void;
  /** A postcopy pause dropped it: its late events are ignored. */
  dead: boolean;
}

function newConn(decoder: MainDecoder | MultifdDecoder): Conn {
  return { socket: null, decoder, ended: false, endPending: false, onEnd: () => {}, dead: false };
}

interface Channel {
  index: number;
  claimed: boolean;
  conn: Conn;
  closed: boolean;
  /** SYNC packets decoded. */
  syncs: number;
  decoder: MultifdDecoder;
}

interface Migration {
  id: Uint8Array;
  ramBytes: number;
  pages: number;
  memory: SharedArrayBuffer;
  mem: Uint8Array;
  main: Socket | null;
  mainDecoder: MainDecoder;
  mainConn: Conn;
  channels: Channel[];
  /** MULTIFD_FLUSH records the main stream reached. */
  flushSeen: number;
  /** Channels may go past this many SYNCs. */
  released: number;
  /** The main decoder is paused at flush `flushSeen`, waiting for SYNCs. */
  mainWaiting: boolean;
  eof: boolean;
  done: boolean;
  /** VCPU_STATE, once it came (the last one wins). */
  vcpuState?: VcpuStateMessage;
  /** GUEST_TRACE's chunks so far, their bytes, the trace's total (0: none began) and flags. */
  traceChunks: Uint8Array[];
  traceHave: number;
  traceTotal: number;
  traceFlags: number;
  /** The whole trace, once its last chunk came. */
  guestTrace?: GuestTraceWire;
  normal: number;
  duplicate: number;
  packets: number;
  bytes: number;
  inPlaceBytes: number;
  /** Pages WebAssembly placed from a record RAM's read buffer. */
  recordRamPages: number;
  /** The main connection's reused-buffer reader, the reads of those before it, and its batch. */
  mainReader: BufferedSocket | undefined;
  mainReadsBefore: number;
  mainReadBatch: number;
  /** Per page: 0 not compared, 1 matched, 2 mismatched. */
  compared: Uint8Array | null;
  comparedCount: number;
  mismatches: number;
  firstMismatch?: number;
  verifyEnded: boolean;
  startedAt: number;
  lastProgress: number;
  /** Reads so far, and as the idle timer's last check saw them ({@link idleTimer}). */
  reads: number;
  readsSeen: number;
  /** The idle timer's checks in a row that saw no read. */
  quietChecks: number;
  /** The idle timer (an interval: `clearTimeout` stops it). */
  timer: NodeJS.Timeout;
  /** Postcopy's shared state (received map, fault requests), when the HELLO announced postcopy. */
  faults: PostcopyFaults | null;
  listening?: boolean;
  /** POSTCOPY_RUN came: the guest runs here. */
  running: boolean;
  /** A connection dropped during postcopy; waiting for the source to resume. */
  paused: boolean;
  /** A resume HELLO was accepted and its connection is being attached. */
  resuming: boolean;
  pauses: number;
  requests: number;
  placed: number;
  duplicates: number;
  preemptBytes: number;
  preempt: Conn | null;
  recoverTimer: NodeJS.Timeout | null;
  /** A main decoder for a recovery's connection (it starts inside the RAM section). */
  newMainDecoder: () => MainDecoder;
  /** A decoder for the preempt channel (pages only). */
  preemptDecoder: () => MainDecoder;
  /** Resolves when the migration ends (stops the request pump). */
  ended: Promise<void>;
  settleEnded: () => void;
}

function sameId(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/** The listen failures {@link listenReason} puts in words. */
const LISTEN_FAILURES: Readonly<Record<string, string>> = {
  ENOTFOUND: 'the host name does not resolve',
  EAI_AGAIN: 'the host name could not be resolved now',
  EADDRNOTAVAIL: 'the address is not on this machine',
  EADDRINUSE: 'the port is already in use',
  EACCES: 'permission denied (a port below 1024 needs privileges)',
};

/** Why a listen failed, in words, with the errno: `the port is already in use (EADDRINUSE)`; else Node's message. */
function listenReason(error: NodeJS.ErrnoException): string {
  const code = typeof error.code === 'string' ? error.code : undefined;
  const why = code === undefined ? undefined : LISTEN_FAILURES[code];
  return why === undefined ? error.message : `${why} (${code})`;
}

function describeError(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

function protocolFailure(message: string, errno?: string): DirtytrackError {
  return new DirtytrackError('protocol', message, {
    component: 'destination',
    ...(errno === undefined ? {} : { errno }),
  });
}

import { createHmac } from 'node:crypto';
import { endianness } from 'node:os';
import { DirtytrackError, PAGE_SIZE } from '@dirtytrack/core';
import { MULTIFD_INIT_BYTES, MULTIFD_PACKET_HEADER, MULTIFD_PACKET_PAGES } from '../multifd.js';
import { MAX_DISCARDS_PER_COMMAND } from '../postcopy.js';
import { hashPagesWasm } from './page-hash.js';

/**
 * The live plane's wire codec (WIRE.md): constants, encoders for the source side, and
 * incremental decoders for the destination (main stream, multifd channels) and the source
 * (return path). No sockets here. Every length, count and offset a decoder reads is checked
 * against its bound before it is used or buffered; a violation throws a DirtytrackError with
 * code `protocol`, component `wire`, naming the item and the stream byte offset where it
 * started.
 */

/** The wire version this code speaks (HELLO, CHALLENGE). */
export const WIRE_VERSION = 1;
/** HELLO: the per-connection handshake, QEMU's `MultiFDInit_t` size. */
export const HELLO_BYTES = MULTIFD_INIT_BYTES;
/** CHALLENGE: magic, version, flags, 32-byte server nonce. */
export const CHALLENGE_BYTES = 40;
/** AUTH: an HMAC-SHA256 tag. */
export const AUTH_BYTES = 32;

/** RAM record flags (QEMU's `RAM_SAVE_FLAG_*`), the low 12 bits of a record header. */
export const RAM_FLAG = {
  ZERO: 0x2,
  MEM_SIZE: 0x4,
  PAGE: 0x8,
  EOS: 0x10,
  CONTINUE: 0x20,
  MULTIFD_FLUSH: 0x200,
} as const;

/** Main-stream item bytes (QEMU's `QEMU_VM_*`). */
export const VM_ITEM = { EOF: 0, SECTION_START: 1, SECTION_PART: 2, SECTION_END: 3, COMMAND: 8 } as const;

/** Main-stream commands (QEMU's `MIG_CMD_*` where one exists; 32+ are dirtytrack's). */
export const MIG_CMD = {
  PING: 3,
  POSTCOPY_ADVISE: 4,
  POSTCOPY_LISTEN: 5,
  POSTCOPY_RUN: 6,
  POSTCOPY_RAM_DISCARD: 7,
  POSTCOPY_RESUME: 8,
  RECV_BITMAP: 9,
  VERIFY_HASHES: 32,
  VERIFY_END: 33,
  VCPU_STATE: 34,
  GUEST_TRACE: 35,
} as const;

/** Return-path message types (QEMU's `MIG_RP_MSG_*` where one exists). */
export const RP_MSG = {
  SHUT: 1,
  PONG: 2,
  REQ_PAGES: 4,
  REQ_PAGES_ID: 5,
  RECV_BITMAP: 6,
  RESUME_ACK: 7,
  VERIFY_RESULT: 32,
} as const;

/** HELLO `kind`. */
export const CHANNEL_KIND = { MAIN: 0, MULTIFD: 1, PREEMPT: 2 } as const;
/** Most multifd channels a HELLO may announce (QEMU's `multifd-channels` is a u8). */
export const MULTIFD_CHANNELS_MAX = 255;
/** HELLO `flags`. */
export const HELLO_FLAG = { POSTCOPY: 1, PREEMPT: 2, RESUME: 4 } as const;

export const MULTIFD_MAGIC = 0x11223344;
export const MULTIFD_VERSION = 1;
export const MULTIFD_FLAG_SYNC = 1;
/** The one RAMBlock a dirtytrack guest has. */
export const RAM_BLOCK = 'pc.ram';
/** The RAM section's id in SECTION_* items. */
export const RAM_SECTION_ID = 1;

export const HELLO_MAGIC = 0x44544d47; // "DTMG"
export const CHALLENGE_MAGIC = 0x44544348; // "DTCH"
export const RESULT_MAGIC = 0x44544f4b; // "DTOK"
/** CHALLENGE flags bit 0: the destination requires an HMAC in AUTH. */
export const CHALLENGE_FLAG_AUTH = 1;
/** RESULT header: magic, be16 code, be16 message length. */
export const RESULT_HEADER_BYTES = 8;
/** RESULT message cap. */
export const RESULT_MESSAGE_MAX = 1024;
/** RESULT codes. */
export const RESULT_CODE = {
  OK: 0,
  VERSION: 1,
  AUTH: 2,
  IDENTITY: 3,
  RAM_SIZE: 4,
  BAD_HANDSHAKE: 5,
} as const;

/** A RAM record header: be64 offset | flags. */
export const RAM_HEADER_BYTES = 8;
/** A PAGE record: header + 4096 bytes (the model's `NORMAL_RECORD`). */
export const PAGE_RECORD_BYTES = RAM_HEADER_BYTES + PAGE_SIZE;
/** A ZERO record: header + one fill byte (the model's `ZERO_RECORD`). */
export const ZERO_RECORD_BYTES = RAM_HEADER_BYTES + 1;
/** A block id after a header without CONTINUE: u8 length + `pc.ram`. */
export const BLOCK_ID_BYTES = 1 + RAM_BLOCK.length;
/** Command item header: 0x08, be16 cmd, be16 length. */
export const COMMAND_HEADER_BYTES = 5;
/** Return message header: be16 type, be16 length. */
export const RETURN_HEADER_BYTES = 4;
/** VERIFY_HASHES carries 1..4096 page hashes. */
export const VERIFY_HASHES_MAX = 4096;
/**
 * VCPU_STATE carries the guest's program ({@link VCPU_STATE_HEADER_BYTES} with the be16 count)
 * and 1..1024 vCPUs' progress, {@link VCPU_STATE_BYTES} each.
 */
export const VCPU_STATE_MAX = 1024;
export const VCPU_STATE_BYTES = 40;
export const VCPU_STATE_HEADER_BYTES = 18;
/** The guest programs VCPU_STATE names, by their byte. */
export const PROGRAM_KINDS = ['uniform', 'hot-set', 'sweep', 'trace', 'idle'] as const;

/**
 * What the guest's vCPUs run (the workload, as `dirtytrack migrate --workload` names it): its
 * hot set (`hotPages` pages taking `hotShare` of 256 writes; 0 and 0 otherwise), page writes per
 * second per vCPU (0 = as fast as they can) and seed. A trace's file is not carried.
 */
export interface GuestProgramWire {
  readonly kind: (typeof PROGRAM_KINDS)[number];
  readonly hotPages: number;
  readonly hotShare: number;
  readonly rate: number;
  readonly seed: number;
}

/** A VCPU_STATE's content: the guest's program and each vCPU's progress. */
export interface VcpuStateMessage {
  readonly program: GuestProgramWire;
  readonly vcpus: readonly VcpuStateWire[];
}

/**
 * Where a vCPU's workload stands, as VCPU_STATE carries it (the guest package's
 * `LiveVcpuProgress`): its Rng state, sweep cursor, and trace replay clock before and after its
 * last batch with how many of that batch's pages it wrote.
 */
export interface VcpuStateWire {
  readonly rng: readonly number[];
  readonly sweep: number;
  readonly traceBeforeNs: number;
  readonly traceAfterNs: number;
  readonly traceWritten: number;
}

/** Largest trace file GUEST_TRACE carries (bytes). */
export const GUEST_TRACE_MAX = 256 * 2 ** 20;
/** GUEST_TRACE's header before its chunk: be32 total, be32 offset, u8 flags, u8 0. */
export const GUEST_TRACE_HEADER_BYTES = 10;
/** Most trace bytes in one GUEST_TRACE (a command's payload is at most 65535 bytes). */
export const GUEST_TRACE_CHUNK_MAX = 0xffff - GUEST_TRACE_HEADER_BYTES;
/** GUEST_TRACE flags: how the trace program replays it (`--trace-loop`, `--trace-scale`). */
export const GUEST_TRACE_FLAG = { LOOP: 1, SCALE: 2 } as const;

/**
 * The trace file a trace program replays (binary or text, `@dirtytrack/guest`'s format, as it was
 * read: the destination parses it), with how it replays. GUEST_TRACE carries it in chunks.
 */
export interface GuestTraceWire {
  readonly bytes: Uint8Array;
  readonly loop: boolean;
  readonly scale: boolean;
}

/** One GUEST_TRACE payload the decoder has accepted, as values (`chunk` is a view of it). */
export interface GuestTraceChunk {
  readonly total: number;
  readonly offset: number;
  readonly loop: boolean;
  readonly scale: boolean;
  readonly chunk: Uint8Array;
}

/** A RECV_BITMAP's trailing marker (QEMU's `RAMBLOCK_RECV_BITMAP_ENDING`). */
export const RECV_BITMAP_ENDING_HI = 0x01234567;
export const RECV_BITMAP_ENDING_LO = 0x89abcdef;
/** Largest RAM the wire accepts: offsets must be exact doubles. */
export const MAX_RAM_BYTES = 2 ** 53;
/** Largest RECV_BITMAP a return decoder buffers without `ramBytes`: 64 GiB of 4 KiB pages. */
export const RECV_BITMAP_MAX_BYTES = (64 * 2 ** 30) / PAGE_SIZE / 8;

const TWO32 = 4294967296;
/**
 * What the main decoder's fast loop makes of a record's 12 flag bits: 1 PAGE|CONTINUE, 2
 * ZERO|CONTINUE, 0 anything else (left to `run`). One load and comparisons every record makes:
 * a comparison first reached at the end of a run of pages (`flags === ZERO|CONTINUE`) had no
 * type feedback and deoptimized the loop (see `wholeRecords`).
 */
const FAST_RECORD = new Uint8Array(0x1000);
FAST_RECORD[RAM_FLAG.PAGE | RAM_FLAG.CONTINUE] = 1;
FAST_RECORD[RAM_FLAG.ZERO | RAM_FLAG.CONTINUE] = 2;
const HI_LIMIT = MAX_RAM_BYTES / TWO32; // a be64 whose high word reaches this is ≥ 2^53
const BLOCK_NAME = new TextEncoder().encode(RAM_BLOCK);
const PAGE_WORDS = PAGE_SIZE / 4;

// ---------------------------------------------------------------------------------------------
// Handshake
// ---------------------------------------------------------------------------------------------

/** The 64-byte HELLO every connection opens with (WIRE.md, Handshake). */
export interface Hello {
  version: number;
  /** {@link CHANNEL_KIND}. */
  kind: number;
  /** Multifd channel id; 0 for main and preempt. */
  channel: number;
  /** 16 random bytes, the same on every connection of one migration. */
  migrationId: Uint8Array;
  ramBytes: number;
  pageSize: number;
  /** Multifd channels (0 = multifd off). */
  channels: number;
  /** {@link HELLO_FLAG} bits. */
  flags: number;
  /** 16 random bytes. */
  nonce: Uint8Array;
}

/** Encodes a HELLO (64 B). Throws `invalid-argument` for a field that does not fit. */
export function encodeHello(h: Hello): Uint8Array {
  const out = new Uint8Array(HELLO_BYTES);
  const dv = view(out);
  checkArg(h.migrationId.length === 16, 'migrationId', 'must be 16 bytes');
  checkArg(h.nonce.length === 16, 'nonce', 'must be 16 bytes');
  checkArg(isU(h.version, 0xffff), 'version', 'must be a u16');
  checkArg(isU(h.kind, 0xff) && isU(h.channel, 0xff), 'kind', 'kind and channel must be u8');
  checkArg(isU(h.ramBytes, MAX_RAM_BYTES - 1), 'ramBytes', 'must be an integer below 2^53');
  checkArg(isU(h.pageSize, 0xffffffff), 'pageSize', 'must be a u32');
  checkArg(isU(h.channels, 0xffff) && isU(h.flags, 0xffff), 'channels', 'channels and flags must be u16');
  dv.setUint32(0, HELLO_MAGIC);
  dv.setUint16(4, h.version);
  out[6] = h.kind;
  out[7] = h.channel;
  out.set(h.migrationId, 8);
  setBe64(dv, 24, h.ramBytes);
  dv.setUint32(32, h.pageSize);
  dv.setUint16(36, h.channels);
  dv.setUint16(38, h.flags);
  out.set(h.nonce, 40);
  return out;
}

/**
 * Decodes and checks a HELLO: magic, kind ≤ 2, channel 0 unless multifd, RAM bytes a non-zero
 * multiple of 4096 below 2^53, page size 4096, at most 255 channels, only known flags, zero
 * padding. The version is
 * returned as sent, not checked, so the destination can answer RESULT code 1 naming both.
 */
export function decodeHello(bytes: Uint8Array): Hello {
  const fail = (what: string): never => {
    throw protocolError('HELLO', 0, what);
  };
  if (bytes.length !== HELLO_BYTES) fail(`is ${bytes.length} bytes, expected ${HELLO_BYTES}`);
  const dv = view(bytes);
  const magic = dv.getUint32(0);
  if (magic !== HELLO_MAGIC) fail(`bad magic 0x${hex32(magic)}, expected 0x${hex32(HELLO_MAGIC)} ("DTMG")`);
  const kind = bytes[6] as number;
  const channel = bytes[7] as number;
  if (kind > CHANNEL_KIND.PREEMPT) fail(`unknown connection kind ${kind}`);
  if (kind !== CHANNEL_KIND.MULTIFD && channel !== 0)
    fail(`channel id ${channel} on a non-multifd connection`);
  const ramHi = dv.getUint32(24);
  const ramBytes = ramHi * TWO32 + dv.getUint32(28);
  if (ramHi >= HI_LIMIT || ramBytes === 0 || ramBytes % PAGE_SIZE !== 0) {
    fail(
      `RAM bytes ${ramHi >= HI_LIMIT ? '≥ 2^53' : ramBytes} is not a non-zero multiple of ${PAGE_SIZE} below 2^53`,
    );
  }
  const pageSize = dv.getUint32(32);
  if (pageSize !== PAGE_SIZE) fail(`target page size ${pageSize}, only ${PAGE_SIZE} is supported`);
  const channels = dv.getUint16(36);
  if (channels > MULTIFD_CHANNELS_MAX) fail(`${channels} multifd channels, at most ${MULTIFD_CHANNELS_MAX}`);
  const flags = dv.getUint16(38);
  if ((flags & ~(HELLO_FLAG.POSTCOPY | HELLO_FLAG.PREEMPT | HELLO_FLAG.RESUME)) !== 0) {
    fail(`unknown flags 0x${flags.toString(16)}`);
  }
  for (let i = 56; i < HELLO_BYTES; i++) if (bytes[i] !== 0) fail(`padding byte ${i} is not zero`);
  return {
    version: dv.getUint16(4),
    kind,
    channel,
    migrationId: bytes.slice(8, 24),
    ramBytes,
    pageSize,
    channels,
    flags,
    nonce: bytes.slice(40, 56),
  };
}

/** Encodes a CHALLENGE (40 B). */
export function encodeChallenge(authRequired: boolean, serverNonce: Uint8Array): Uint8Array {
  checkArg(serverNonce.length === 32, 'serverNonce', 'must be 32 bytes');
  const out = new Uint8Array(CHALLENGE_BYTES);
  const dv = view(out);
  dv.setUint32(0, CHALLENGE_MAGIC);
  dv.setUint16(4, WIRE_VERSION);
  dv.setUint16(6, authRequired ? CHALLENGE_FLAG_AUTH : 0);
  out.set(serverNonce, 8);
  return out;
}

/** A decoded CHALLENGE. */
export interface Challenge {
  version: number;
  authRequired: boolean;
  nonce: Uint8Array;
}

/** Decodes a CHALLENGE: magic and known flags (the version is returned for the caller to judge). */
export function decodeChallenge(bytes: Uint8Array): Challenge {
  if (bytes.length !== CHALLENGE_BYTES) {
    throw protocolError('CHALLENGE', 0, `is ${bytes.length} bytes, expected ${CHALLENGE_BYTES}`);
  }
  const dv = view(bytes);
  const magic = dv.getUint32(0);
  if (magic !== CHALLENGE_MAGIC) throw protocolError('CHALLENGE', 0, `bad magic 0x${hex32(magic)}`);
  const flags = dv.getUint16(6);
  if ((flags & ~CHALLENGE_FLAG_AUTH) !== 0)
    throw protocolError('CHALLENGE', 6, `unknown flags 0x${flags.toString(16)}`);
  return { version: dv.getUint16(4), authRequired: flags === CHALLENGE_FLAG_AUTH, nonce: bytes.slice(8, 40) };
}

/** Encodes a RESULT: magic, be16 code, be16 length, UTF-8 message (cut to 1024 bytes). */
export function encodeResult(code: number, message: string): Uint8Array {
  let text = new TextEncoder().encode(message);
  if (text.length > RESULT_MESSAGE_MAX) text = text.subarray(0, RESULT_MESSAGE_MAX);
  const out = new Uint8Array(RESULT_HEADER_BYTES + text.length);
  const dv = view(out);
  dv.setUint32(0, RESULT_MAGIC);
  dv.setUint16(4, code);
  dv.setUint16(6, text.length);
  out.set(text, RESULT_HEADER_BYTES);
  return out;
}

/** Decodes a RESULT's 8-byte header; throws for a bad magic or a message over 1024 bytes. */
export function decodeResultHeader(bytes: Uint8Array): { code: number; length: number } {
  const dv = view(bytes);
  const magic = dv.getUint32(0);
  if (magic !== RESULT_MAGIC) throw protocolError('RESULT', 0, `bad magic 0x${hex32(magic)}`);
  const length = dv.getUint16(6);
  if (length > RESULT_MESSAGE_MAX) {
    throw protocolError('RESULT', 6, `message length ${length} exceeds ${RESULT_MESSAGE_MAX}`);
  }
  return { code: dv.getUint16(4), length };
}

/**
 * The AUTH tag: `HMAC-SHA256(token, "dirtytrack-wire-1" ‖ HELLO ‖ server nonce)`. Binding the
 * HELLO means a tag cannot be replayed for another migration id, channel or RAM size; the
 * server nonce means it cannot be replayed at all.
 */
export function authTag(token: string, hello: Uint8Array, serverNonce: Uint8Array): Uint8Array {
  const mac = createHmac('sha256', token);
  mac.update('dirtytrack-wire-1');
  mac.update(hello);
  mac.update(serverNonce);
  return new Uint8Array(mac.digest());
}

// ---------------------------------------------------------------------------------------------
// Main stream encoders (source side)
// ---------------------------------------------------------------------------------------------

/**
 * Writes a RAM record header (be64 `offsetBytes | flags`) into `buf` at `at` and returns
 * `at + 8`. Writes only: the caller sizes `buf` and checks the offset (a multiple of 4096 below
 * 2^53) — this is the per-page hot path.
 */
export function writeRamHeader(buf: Uint8Array, at: number, offsetBytes: number, flags: number): number {
  const hi = Math.floor(offsetBytes / TWO32);
  const lo = ((offsetBytes - hi * TWO32) | flags) >>> 0;
  buf[at] = hi >>> 24;
  buf[at + 1] = hi >>> 16;
  buf[at + 2] = hi >>> 8;
  buf[at + 3] = hi;
  buf[at + 4] = lo >>> 24;
  buf[at + 5] = lo >>> 16;
  buf[at + 6] = lo >>> 8;
  buf[at + 7] = lo;
  return at + 8;
}

/** Writes the block id (u8 6, `pc.ram`) a record without CONTINUE carries; returns `at + 7`. */
export function writeBlockId(buf: Uint8Array, at: number): number {
  buf[at] = BLOCK_NAME.length;
  buf.set(BLOCK_NAME, at + 1);
  return at + BLOCK_ID_BYTES;
}

/** A SECTION_START/PART/END item header (5 B: type, be32 section id 1). */
export function encodeSection(type: number): Uint8Array {
  checkArg(
    type === VM_ITEM.SECTION_START || type === VM_ITEM.SECTION_PART || type === VM_ITEM.SECTION_END,
    'type',
    `must be SECTION_START, SECTION_PART or SECTION_END (1..3), got ${type}`,
  );
  return Uint8Array.of(type, 0, 0, 0, RAM_SECTION_ID);
}

/** The EOF item: the migration's last byte. */
export function encodeEof(): Uint8Array {
  return Uint8Array.of(VM_ITEM.EOF);
}

/** A RAM record header with only EOS (8 B). */
export function encodeEos(): Uint8Array {
  const out = new Uint8Array(RAM_HEADER_BYTES);
  writeRamHeader(out, 0, 0, RAM_FLAG.EOS);
  return out;
}

/** A MULTIFD_FLUSH record (8 B, the model's `MULTIFD_FLUSH_RECORD`). */
export function encodeFlush(): Uint8Array {
  const out = new Uint8Array(RAM_HEADER_BYTES);
  writeRamHeader(out, 0, 0, RAM_FLAG.MULTIFD_FLUSH);
  return out;
}

/** The MEM_SIZE record (23 B): header with offset = RAM bytes, u8 6, `pc.ram`, be64 length. */
export function encodeMemSize(ramBytes: number): Uint8Array {
  checkRam(ramBytes);
  const out = new Uint8Array(RAM_HEADER_BYTES + BLOCK_ID_BYTES + 8);
  writeRamHeader(out, 0, ramBytes, RAM_FLAG.MEM_SIZE);
  writeBlockId(out, RAM_HEADER_BYTES);
  setBe64(view(out), RAM_HEADER_BYTES + BLOCK_ID_BYTES, ramBytes);
  return out;
}

/** A COMMAND item: 0x08, be16 cmd, be16 length, payload (≤ 65535 B). */
export function encodeCommand(cmd: number, payload: Uint8Array): Uint8Array {
  checkArg(isU(cmd, 0xffff), 'cmd', 'must be a u16');
  checkArg(payload.length <= 0xffff, 'payload', `is ${payload.length} bytes, at most 65535`);
  const out = new Uint8Array(COMMAND_HEADER_BYTES + payload.length);
  out[0] = VM_ITEM.COMMAND;
  out[1] = cmd >>> 8;
  out[2] = cmd;
  out[3] = payload.length >>> 8;
  out[4] = payload.length;
  out.set(payload, COMMAND_HEADER_BYTES);
  return out;
}

/** PING's command item (be32 value). */
export function encodePing(value: number): Uint8Array {
  const payload = new Uint8Array(4);
  view(payload).setUint32(0, value >>> 0);
  return encodeCommand(MIG_CMD.PING, payload);
}

/**
 * POSTCOPY_RAM_DISCARD command items for byte ranges `[start, length]` (each a multiple of
 * 4096, inside RAM): at most 12 ranges per command, so `planDiscard`'s price is exactly the
 * sum of the returned lengths.
 */
export function encodeDiscard(
  ranges: ReadonlyArray<readonly [startBytes: number, lengthBytes: number]>,
): Uint8Array[] {
  const commands: Uint8Array[] = [];
  for (let i = 0; i < ranges.length; i += MAX_DISCARDS_PER_COMMAND) {
    const n = Math.min(MAX_DISCARDS_PER_COMMAND, ranges.length - i);
    const payload = new Uint8Array(2 + BLOCK_NAME.length + 1 + 16 * n);
    const dv = view(payload);
    payload[0] = 0; // version
    payload[1] = BLOCK_NAME.length;
    payload.set(BLOCK_NAME, 2);
    let at = 2 + BLOCK_NAME.length + 1; // NUL stays 0
    for (let j = 0; j < n; j++) {
      const [start, length] = ranges[i + j] as readonly [number, number];
      checkArg(
        isU(start, MAX_RAM_BYTES - 1) && isU(length, MAX_RAM_BYTES - 1),
        'ranges',
        'must be integers below 2^53',
      );
      setBe64(dv, at, start);
      setBe64(dv, at + 8, length);
      at += 16;
    }
    commands.push(encodeCommand(MIG_CMD.POSTCOPY_RAM_DISCARD, payload));
  }
  return commands;
}

/**
 * A VERIFY_HASHES command item for `count` pages starting at guest page `firstPage`, whose
 * hashes are `hashes[2·(from + i)]` (high word) and `hashes[2·(from + i) + 1]` (low word), the
 * layout {@link pageHashes} writes. 1 ≤ count ≤ 4096.
 */
export function encodeVerifyHashes(
  firstPage: number,
  hashes: Uint32Array,
  from: number,
  count: number,
): Uint8Array {
  checkArg(Number.isInteger(count) && count >= 1 && count <= VERIFY_HASHES_MAX, 'count', 'must be 1..4096');
  checkArg(isU(firstPage, MAX_RAM_BYTES - 1), 'firstPage', 'must be a non-negative integer');
  checkArg(isU(from, 2 ** 31) && 2 * (from + count) <= hashes.length, 'from', 'range past the end of hashes');
  const out = new Uint8Array(COMMAND_HEADER_BYTES + 10 + 8 * count);
  const len = 10 + 8 * count;
  out[0] = VM_ITEM.COMMAND;
  out[1] = 0;
  out[2] = MIG_CMD.VERIFY_HASHES;
  out[3] = len >>> 8;
  out[4] = len;
  const dv = view(out);
  setBe64(dv, 5, firstPage);
  dv.setUint16(13, count);
  let at = 15;
  for (let i = 0; i < count; i++, at += 8) {
    dv.setUint32(at, hashes[2 * (from + i)] as number);
    dv.setUint32(at + 4, hashes[2 * (from + i) + 1] as number);
  }
  return out;
}

/**
 * VCPU_STATE's command item: be16 vCPUs; the program — u8 kind ({@link PROGRAM_KINDS}), u8 0,
 * be16 hot share (0..256), be32 hot pages, be32 rate, be32 seed; then per vCPU 4 × be32 Rng
 * state, be32 sweep cursor, be32 trace pages written, be64 (IEEE double) trace clock before and
 * after, ns.
 */
export function encodeVcpuState(state: VcpuStateMessage): Uint8Array {
  const { program, vcpus } = state;
  checkArg(vcpus.length >= 1 && vcpus.length <= VCPU_STATE_MAX, 'vcpus', `must be 1..${VCPU_STATE_MAX}`);
  const kind = PROGRAM_KINDS.indexOf(program.kind);
  checkArg(
    kind >= 0 &&
      isU(program.hotShare, 256) &&
      isU(program.hotPages, 0xffff_ffff) &&
      isU(program.rate, 0xffff_ffff) &&
      isU(program.seed, 0xffff_ffff),
    'program',
    'kind one of PROGRAM_KINDS, hotShare 0..256, hotPages, rate and seed u32',
  );
  const payload = new Uint8Array(VCPU_STATE_HEADER_BYTES + VCPU_STATE_BYTES * vcpus.length);
  const dv = view(payload);
  dv.setUint16(0, vcpus.length);
  dv.setUint8(2, kind);
  dv.setUint16(4, program.hotShare);
  dv.setUint32(6, program.hotPages);
  dv.setUint32(10, program.rate);
  dv.setUint32(14, program.seed);
  for (const [i, v] of vcpus.entries()) {
    checkArg(
      v.rng.length === 4 &&
        v.rng.every((w) => isU(w, 0xffff_ffff)) &&
        isU(v.sweep, 0xffff_ffff) &&
        isU(v.traceWritten, 0xffff_ffff) &&
        validClock(v.traceBeforeNs, v.traceAfterNs),
      'vcpus',
      `vCPU ${i}: rng is four u32, sweep and traceWritten u32, 0 ≤ traceBeforeNs ≤ traceAfterNs (finite)`,
    );
    const at = VCPU_STATE_HEADER_BYTES + i * VCPU_STATE_BYTES;
    for (let k = 0; k < 4; k++) dv.setUint32(at + 4 * k, v.rng[k] as number);
    dv.setUint32(at + 16, v.sweep);
    dv.setUint32(at + 20, v.traceWritten);
    dv.setFloat64(at + 24, v.traceBeforeNs);
    dv.setFloat64(at + 32, v.traceAfterNs);
  }
  return encodeCommand(MIG_CMD.VCPU_STATE, payload);
}

const validClock = (before: number, after: number): boolean =>
  Number.isFinite(before) && Number.isFinite(after) && before >= 0 && before <= after;

/** A VCPU_STATE payload the decoder has accepted (length and every field checked) as values. */
export function decodeVcpuState(payload: Uint8Array): VcpuStateMessage {
  const dv = new DataView(payload.buffer, payload.byteOffset, payload.byteLength);
  const n = dv.getUint16(0);
  const program: GuestProgramWire = {
    kind: PROGRAM_KINDS[dv.getUint8(2)] as GuestProgramWire['kind'],
    hotPages: dv.getUint32(6),
    hotShare: dv.getUint16(4),
    rate: dv.getUint32(10),
    seed: dv.getUint32(14),
  };
  const vcpus = Array.from({ length: n }, (_, i) => {
    const at = VCPU_STATE_HEADER_BYTES + i * VCPU_STATE_BYTES;
    return {
      rng: [0, 1, 2, 3].map((k) => dv.getUint32(at + 4 * k)),
      sweep: dv.getUint32(at + 16),
      traceWritten: dv.getUint32(at + 20),
      traceBeforeNs: dv.getFloat64(at + 24),
      traceAfterNs: dv.getFloat64(at + 32),
    };
  });
  return { program, vcpus };
}

/**
 * GUEST_TRACE's command items for `trace`: its bytes in order, {@link GUEST_TRACE_CHUNK_MAX} at
 * most per item, each after be32 total bytes, be32 offset of the chunk, u8 flags
 * ({@link GUEST_TRACE_FLAG}), u8 0.
 */
export function encodeGuestTrace(trace: GuestTraceWire): Uint8Array[] {
  const total = trace.bytes.length;
  checkArg(
    total >= 1 && total <= GUEST_TRACE_MAX,
    'bytes',
    `is ${total} bytes, must be 1..${GUEST_TRACE_MAX}`,
  );
  const flags = (trace.loop ? GUEST_TRACE_FLAG.LOOP : 0) | (trace.scale ? GUEST_TRACE_FLAG.SCALE : 0);
  const items: Uint8Array[] = [];
  for (let offset = 0; offset < total; offset += GUEST_TRACE_CHUNK_MAX) {
    const chunk = trace.bytes.subarray(offset, Math.min(total, offset + GUEST_TRACE_CHUNK_MAX));
    const payload = new Uint8Array(GUEST_TRACE_HEADER_BYTES + chunk.length);
    const dv = view(payload);
    dv.setUint32(0, total);
    dv.setUint32(4, offset);
    dv.setUint8(8, flags);
    payload.set(chunk, GUEST_TRACE_HEADER_BYTES);
    items.push(encodeCommand(MIG_CMD.GUEST_TRACE, payload));
  }
  return items;
}

/** A GUEST_TRACE payload the decoder has accepted (its header checked) as values. */
export function decodeGuestTrace(payload: Uint8Array): GuestTraceChunk {
  const dv = view(payload);
  const flags = dv.getUint8(8);
  return {
    total: dv.getUint32(0),
    offset: dv.getUint32(4),
    loop: (flags & GUEST_TRACE_FLAG.LOOP) !== 0,
    scale: (flags & GUEST_TRACE_FLAG.SCALE) !== 0,
    chunk: payload.subarray(GUEST_TRACE_HEADER_BYTES),
  };
}

/** VERIFY_END's command item: be64 pages hashed in total. */
export function encodeVerifyEnd(pages: number): Uint8Array {
  checkArg(isU(pages, MAX_RAM_BYTES - 1), 'pages', 'must be a non-negative integer');
  const payload = new Uint8Array(8);
  setBe64(view(payload), 0, pages);
  return encodeCommand(MIG_CMD.VERIFY_END, payload);
}

// ---------------------------------------------------------------------------------------------
// Multifd packets
// ---------------------------------------------------------------------------------------------

/** What a multifd packet header says. `normal`/`zero` hold guest page numbers. */
export interface MultifdHeaderFields {
  flags: number;
  packetNum: number;
  normal: ArrayLike<number>;
  normalCount: number;
  zero: ArrayLike<number>;
  zeroCount: number;
}

/**
 * Writes a multifd packet header (1344 B, `MultiFDPacket_t` with 128 offsets) into `buf` at
 * `at` and returns `at + 1344`; the normal pages' 4096-byte payloads follow it on the wire in
 * the order of `normal`. Every byte of the header is written (reserved fields and unused slots
 * zeroed), so `buf` may be reused.
 */
export function writeMultifdHeader(buf: Uint8Array, at: number, h: MultifdHeaderFields): number {
  const { normalCount, zeroCount } = h;
  checkArg(
    isU(normalCount, MULTIFD_PACKET_PAGES) && isU(zeroCount, MULTIFD_PACKET_PAGES - normalCount),
    'normalCount',
    `normal + zero pages must be ≤ ${MULTIFD_PACKET_PAGES}`,
  );
  const dv = new DataView(buf.buffer, buf.byteOffset + at, MULTIFD_PACKET_HEADER); // throws if buf is short
  buf.fill(0, at, at + MULTIFD_PACKET_HEADER);
  dv.setUint32(0, MULTIFD_MAGIC);
  dv.setUint32(4, MULTIFD_VERSION);
  dv.setUint32(8, h.flags);
  dv.setUint32(12, MULTIFD_PACKET_PAGES);
  dv.setUint32(16, normalCount);
  // next_packet_size (20) = 0
  setBe64(dv, 24, h.packetNum);
  dv.setUint32(32, zeroCount);
  buf.set(BLOCK_NAME, at + 64);
  let o = 320;
  for (let i = 0; i < normalCount; i++, o += 8) setBe64(dv, o, (h.normal[i] as number) * PAGE_SIZE);
  for (let i = 0; i < zeroCount; i++, o += 8) setBe64(dv, o, (h.zero[i] as number) * PAGE_SIZE);
  return at + MULTIFD_PACKET_HEADER;
}

// ---------------------------------------------------------------------------------------------
// Return path encoders (destination side)
// ---------------------------------------------------------------------------------------------

/** A return-path message: be16 type, be16 length, payload (≤ 65535 B). */
export function encodeReturn(type: number, payload: Uint8Array): Uint8Array {
  checkArg(isU(type, 0xffff), 'type', 'must be a u16');
  checkArg(payload.length <= 0xffff, 'payload', `is ${payload.length} bytes, at most 65535`);
  const out = new Uint8Array(RETURN_HEADER_BYTES + payload.length);
  out[0] = type >>> 8;
  out[1] = type;
  out[2] = payload.length >>> 8;
  out[3] = payload.length;
  out.set(payload, RETURN_HEADER_BYTES);
  return out;
}

/** A return message whose payload is one be32 (SHUT, PONG, RESUME_ACK). */
export function encodeReturnU32(type: number, value: number): Uint8Array {
  const payload = new Uint8Array(4);
  view(payload).setUint32(0, value >>> 0);
  return encodeReturn(type, payload);
}

/** VERIFY_RESULT: pages compared, mismatched pages, first mismatched page (−1: none → 2^64 − 1). */
export function encodeVerifyResult(r: VerifyResult): Uint8Array {
  const payload = new Uint8Array(24);
  const dv = view(payload);
  setBe64(dv, 0, r.pages);
  setBe64(dv, 8, r.mismatched);
  if (r.firstMismatch < 0) {
    dv.setUint32(16, 0xffffffff);
    dv.setUint32(20, 0xffffffff);
  } else setBe64(dv, 16, r.firstMismatch);
  return encodeReturn(RP_MSG.VERIFY_RESULT, payload);
}

/** REQ_PAGES: be64 start, be32 length (bytes). */
export function encodeReqPages(startBytes: number, lengthBytes: number): Uint8Array {
  const payload = new Uint8Array(12);
  const dv = view(payload);
  setBe64(dv, 0, startBytes);
  dv.setUint32(8, lengthBytes);
  return encodeReturn(RP_MSG.REQ_PAGES, payload);
}

/**
 * RECV_BITMAP: the message (u8 6, `pc.ram`) and then, outside the message's length as in QEMU's
 * `ramblock_recv_bitmap_send`, be64 bitmap bytes, the bitmap, be64 `0x0123456789abcdef`.
 */
export function encodeRecvBitmap(bitmap: Uint8Array): Uint8Array {
  const msg = new Uint8Array(RETURN_HEADER_BYTES + BLOCK_ID_BYTES + 8 + bitmap.length + 8);
  msg[1] = RP_MSG.RECV_BITMAP;
  msg[3] = BLOCK_ID_BYTES;
  writeBlockId(msg, RETURN_HEADER_BYTES);
  const dv = view(msg);
  let at = RETURN_HEADER_BYTES + BLOCK_ID_BYTES;
  setBe64(dv, at, bitmap.length);
  msg.set(bitmap, at + 8);
  at += 8 + bitmap.length;
  dv.setUint32(at, RECV_BITMAP_ENDING_HI);
  dv.setUint32(at + 4, RECV_BITMAP_ENDING_LO);
  return msg;
}

// ---------------------------------------------------------------------------------------------
// Page hashes
// ---------------------------------------------------------------------------------------------

const LITTLE_ENDIAN = endianness() === 'LE';

/**
 * Hashes `count` 4 KiB pages of `memory` starting at page `firstPage` into `out`: page `i`'s
 * high word at `out[2·(outAt + i)]`, low word at `out[2·(outAt + i) + 1]` (`outAt` counts pages).
 *
 * The function (WIRE.md, Verification), over the page's 1024 little-endian u32 words `w`:
 *
 * ```
 * a = 0x811c9dc5; b = 0x9e3779b9
 * for each w: a = imul(a ^ w, 0x01000193)                  // FNV-1a on words
 *             b = imul(b ^ (b >>> 15), 0x2c1b3c6d) + w     // xorshift-multiply-add
 * x = a ^ imul(b, 0x9e3779b1); hi = fmix32(x); lo = fmix32(b ^ x)
 * ```
 *
 * (`imul` is `Math.imul`, all arithmetic mod 2^32, `fmix32` is MurmurHash3's finaliser.) For a
 * fixed word each lane's step is a bijection of its state and the final mix is a bijection of
 * (a, b), so two pages differing in exactly one word always hash differently; other
 * differences collide with probability about 2^-64.
 */
export function pageHashes(
  memory: ArrayBufferLike,
  firstPage: number,
  count: number,
  out: Uint32Array,
  outAt = 0,
): void {
  // Runs of 8 pages in WebAssembly SIMD where this engine has it (2.2–2.8× the JS on 1 GiB
  // here, copy into its scratch included); the rest — and everything without it — in JS.
  hashRange(true, memory, firstPage, count, out, outAt);
}

/**
 * {@link pageHashes} in JS only (what runs where WebAssembly SIMD does not): the same hashes,
 * for tests and the bench to compare with the WebAssembly kernel.
 */
export const pageHashesJs = (...args: Parameters<typeof pageHashes>): void =>
  hashRange(false, args[0], args[1], args[2], args[3], args[4] ?? 0);

function hashRange(
  kernel: boolean,
  memory: ArrayBufferLike,
  firstPage: number,
  count: number,
  out: Uint32Array,
  outAt: number,
): void {
  if (count === 0) return;
  if (2 * (outAt + count) > out.length) {
    throw new DirtytrackError(
      'out-of-range',
      `pageHashes: out holds ${out.length / 2} pages, need ${outAt + count}`,
      {
        component: 'wire',
        field: 'out',
      },
    );
  }
  if (
    !Number.isInteger(firstPage) ||
    !Number.isInteger(count) ||
    firstPage < 0 ||
    count < 0 ||
    (firstPage + count) * PAGE_SIZE > memory.byteLength
  ) {
    throw new DirtytrackError(
      'out-of-range',
      `pageHashes: pages ${firstPage}+${count} outside memory of ${memory.byteLength} bytes`,
      {
        component: 'wire',
        field: 'firstPage',
      },
    );
  }
  const done = kernel ? hashPagesWasm(memory, firstPage, count, out, outAt) : 0;
  hashPagesJs(memory, firstPage + done, count - done, out, outAt + done);
}

function hashPagesJs(
  memory: ArrayBufferLike,
  firstPage: number,
  count: number,
  out: Uint32Array,
  outAt: number,
): void {
  if (count === 0) return;
  if (!LITTLE_ENDIAN) {
    pageHashesPortable(memory, firstPage, count, out, outAt);
    return;
  }
  const words = new Uint32Array(memory, firstPage * PAGE_SIZE, count * PAGE_WORDS);
  // Four pages at a time: each page's two lanes are one long dependency chain (a multiply per
  // word), so one page at a time waits on the multiplier's latency; four interleaved pages keep
  // eight chains in flight. The same function, ~2× the throughput here.
  let p = 0;
  for (; p + 4 <= count; p += 4) {
    let a0 = 0x811c9dc5 | 0;
    let b0 = 0x9e3779b9 | 0;
    let a1 = a0;
    let b1 = b0;
    let a2 = a0;
    let b2 = b0;
    let a3 = a0;
    let b3 = b0;
    const s0 = p * PAGE_WORDS;
    const s1 = s0 + PAGE_WORDS;
    const s2 = s1 + PAGE_WORDS;
    const s3 = s2 + PAGE_WORDS;
    for (let i = 0; i < PAGE_WORDS; i++) {
      const w0 = words[s0 + i] as number;
      const w1 = words[s1 + i] as number;
      const w2 = words[s2 + i] as number;
      const w3 = words[s3 + i] as number;
      a0 = Math.imul(a0 ^ w0, 0x01000193);
      b0 = (Math.imul(b0 ^ (b0 >>> 15), 0x2c1b3c6d) + w0) | 0;
      a1 = Math.imul(a1 ^ w1, 0x01000193);
      b1 = (Math.imul(b1 ^ (b1 >>> 15), 0x2c1b3c6d) + w1) | 0;
      a2 = Math.imul(a2 ^ w2, 0x01000193);
      b2 = (Math.imul(b2 ^ (b2 >>> 15), 0x2c1b3c6d) + w2) | 0;
      a3 = Math.imul(a3 ^ w3, 0x01000193);
      b3 = (Math.imul(b3 ^ (b3 >>> 15), 0x2c1b3c6d) + w3) | 0;
    }
    const o = 2 * (outAt + p);
    finishHash(a0, b0, out, o);
    finishHash(a1, b1, out, o + 2);
    finishHash(a2, b2, out, o + 4);
    finishHash(a3, b3, out, o + 6);
  }
  for (let o = 2 * (outAt + p); p < count; p++, o += 2) {
    let a = 0x811c9dc5 | 0;
    let b = 0x9e3779b9 | 0;
    const end = (p + 1) * PAGE_WORDS;
    for (let i = p * PAGE_WORDS; i < end; i++) {
      const w = words[i] as number;
      a = Math.imul(a ^ w, 0x01000193);
      b = (Math.imul(b ^ (b >>> 15), 0x2c1b3c6d) + w) | 0;
    }
    finishHash(a, b, out, o);
  }
}

/** A page hash's final mix of its two lanes, into `out[o]` (high) and `out[o + 1]` (low). */
function finishHash(a: number, b: number, out: Uint32Array, o: number): void {
  const x = a ^ Math.imul(b, 0x9e3779b1);
  out[o] = fmix32(x);
  out[o + 1] = fmix32(b ^ x);
}

function pageHashesPortable(
  memory: ArrayBufferLike,
  firstPage: number,
  count: number,
  out: Uint32Array,
  outAt: number,
): void {
  const dv = new DataView(memory, firstPage * PAGE_SIZE, count * PAGE_SIZE);
  for (let p = 0, o = 2 * outAt; p < count; p++, o += 2) {
    let a = 0x811c9dc5 | 0;
    let b = 0x9e3779b9 | 0;
    for (let i = 0; i < PAGE_WORDS; i++) {
      const w = dv.getUint32((p * PAGE_WORDS + i) * 4, true);
      a = Math.imul(a ^ w, 0x01000193);
      b = (Math.imul(b ^ (b >>> 15), 0x2c1b3c6d) + w) | 0;
    }
    const x = a ^ Math.imul(b, 0x9e3779b1);
    out[o] = fmix32(x);
    out[o + 1] = fmix32(b ^ x);
  }
}

function fmix32(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

// ---------------------------------------------------------------------------------------------
// Decoders
// ---------------------------------------------------------------------------------------------

/** Handlers of the main-stream decoder. Views passed to them are valid only during the call. */
export interface MainDecoderOptions {
  /** Guest RAM size: MEM_SIZE must say it, every page must lie inside it. */
  ramBytes: number;
  onPage(offsetBytes: number, data: Uint8Array): void;
  /**
   * A page record wholly inside the pushed chunk (the common case), its page at `chunk[at]`:
   * called instead of `onPage` when given, so the handler can copy the page without a view of it.
   */
  onPageAt?(offsetBytes: number, chunk: Uint8Array, at: number): void;
  /**
   * Offered each run of whole records from a PAGE|CONTINUE record on, inside the pushed chunk:
   * the handler places the pages of as many of them as it takes, from the first (a destination's
   * record RAM, record-ram.ts, copies them in WebAssembly), and returns the bytes of the records
   * taken — 0, more than `end - at` or not whole records, and the decoder goes on as without it.
   * Each page it takes
   * counts as `onPage`/`onPageAt` would have; its bounds are the handler's to check.
   */
  onPageRun?: ((chunk: Uint8Array, at: number, end: number) => number) | undefined;
  onZero(offsetBytes: number): void;
  /** MULTIFD_FLUSH: return false to stop before the next item until `resume()`. */
  onFlush(): boolean;
  onSection(type: number): void;
  onEos(): void;
  onMemSize(ramBytes: number): void;
  /** A command whose length and contents were checked (WIRE.md, Commands). */
  onCommand(cmd: number, payload: Uint8Array): void;
  onEof(): void;
  /**
   * A stream that carries on a migration begun on another connection: a postcopy recovery's new
   * main connection, or the postcopy-preempt channel. It starts after SECTION_START and MEM_SIZE
   * (the original main connection carried them), so SECTION_PART/END and CONTINUE records are
   * allowed at once, and a SECTION_START is an error. Default false.
   */
  resumed?: boolean;
}

/**
 * An incremental decoder: `push` chunks of any size (a record may be split anywhere). Chunks are
 * not copied and may be held while the decoder is paused, so do not modify them after `push`.
 */
export interface StreamDecoder {
  /**
   * `transient`: the chunk's bytes are overwritten once `push` returns (a socket's reused read
   * buffer), so whatever the decoder keeps of it — a paused decoder's queue — is copied first.
   */
  push(chunk: Uint8Array, transient?: boolean): void;
  /** The input ended: throws a protocol error if it ended inside an item. */
  end(): void;
  /** Stream bytes consumed so far. */
  readonly offset: number;
}

export interface MainDecoder extends StreamDecoder {
  /** Continue after `onFlush` returned false (queued chunks are decoded now). */
  resume(): void;
  readonly paused: boolean;
  /** True once EOF was decoded. */
  readonly done: boolean;
}

// Main-stream states.
const M_ITEM = 0;
const M_SECTION_ID = 1;
const M_RECORD = 2;
const M_BLOCK = 3;
const M_ZERO_FILL = 4;
const M_PAGE = 5;
const M_MEMSIZE = 6;
const M_CMD_HEADER = 7;
const M_CMD_PAYLOAD = 8;
const M_DONE = 9;

const KNOWN_RAM_FLAGS =
  RAM_FLAG.ZERO |
  RAM_FLAG.MEM_SIZE |
  RAM_FLAG.PAGE |
  RAM_FLAG.EOS |
  RAM_FLAG.CONTINUE |
  RAM_FLAG.MULTIFD_FLUSH;
const SECTION_NAMES = ['EOF', 'SECTION_START', 'SECTION_PART', 'SECTION_END'];

/**
 * The destination's main-stream parser (WIRE.md, Main stream). Checks, before using or
 * buffering anything: item bytes, section id 1 (START once and first, PART/END after it), record
 * flags (one kind, CONTINUE only on ZERO/PAGE and only after MEM_SIZE or a record named the block), offsets
 * inside RAM, MEM_SIZE only as SECTION_START's first record and equal to `ramBytes`, the block
 * name, ZERO's fill byte, each command's exact length and contents.
 */
export function createMainDecoder(options: MainDecoderOptions): MainDecoder {
  const { ramBytes } = options;
  checkRam(ramBytes);
  const ramPages = ramBytes / PAGE_SIZE;
  const r = createReader(0xffff + 16);
  let state = M_ITEM;
  let itemAt = 0; // stream offset where the current item (or record) began
  let started = options.resumed === true; // SECTION_START seen (on this connection or before it)
  let inStart = false; // inside SECTION_START
  let firstRecord = false; // the next record is the section's first
  let blockKnown = options.resumed === true; // a record named the block (CONTINUE allowed)
  let recOffset = 0;
  let recFlags = 0;
  let cmd = 0;
  let cmdLen = 0;

  const fail = (item: string, what: string): never => {
    throw protocolError(item, itemAt, what);
  };

  function afterBlock(): void {
    state = recFlags & RAM_FLAG.ZERO ? M_ZERO_FILL : M_PAGE;
  }

  function record(buf: Uint8Array, at: number): boolean {
    const hi = be32(buf, at);
    const lo = be32(buf, at + 4);
    const flags = lo & 0xfff;
    const offset = hi * TWO32 + (lo - flags);
    if ((flags & ~KNOWN_RAM_FLAGS) !== 0) fail('RAM record', `unknown flags 0x${flags.toString(16)}`);
    const kind = flags & ~RAM_FLAG.CONTINUE;
    const isFirst = firstRecord;
    firstRecord = false;
    if (isFirst && inStart && kind !== RAM_FLAG.MEM_SIZE)
      fail('RAM record', 'SECTION_START must begin with MEM_SIZE');
    if ((flags & RAM_FLAG.CONTINUE) !== 0 && kind !== RAM_FLAG.ZERO && kind !== RAM_FLAG.PAGE) {
      fail('RAM record', `CONTINUE on a record that is not ZERO or PAGE (flags 0x${flags.toString(16)})`);
    }
    switch (kind) {
      case RAM_FLAG.PAGE:
      case RAM_FLAG.ZERO: {
        if (hi >= HI_LIMIT || offset + PAGE_SIZE > ramBytes) {
          fail(
            'RAM record',
            `page offset ${hi >= HI_LIMIT ? '≥ 2^53' : offset} outside RAM (${ramBytes} bytes)`,
          );
        }
        recOffset = offset;
        recFlags = flags;
        if ((flags & RAM_FLAG.CONTINUE) === 0) state = M_BLOCK;
        else if (!blockKnown) fail('RAM record', 'CONTINUE before any record named the RAMBlock');
        else afterBlock();
        return true;
      }
      case RAM_FLAG.MEM_SIZE:
        if (!isFirst || !inStart) fail('RAM record', 'MEM_SIZE outside the start of SECTION_START');
        if (hi >= HI_LIMIT || offset !== ramBytes) {
          fail('RAM record', `MEM_SIZE says ${hi >= HI_LIMIT ? '≥ 2^53' : offset} bytes, RAM is ${ramBytes}`);
        }
        state = M_MEMSIZE;
        return true;
      case RAM_FLAG.EOS:
        if (offset !== 0) fail('RAM record', 'EOS with a non-zero offset');
        inStart = false;
        state = M_ITEM;
        options.onEos();
        return true;
      case RAM_FLAG.MULTIFD_FLUSH:
        if (offset !== 0) fail('RAM record', 'MULTIFD_FLUSH with a non-zero offset');
        return options.onFlush() !== false;
      default:
        return fail('RAM record', `flags 0x${flags.toString(16)} name no single record kind`);
    }
  }

  function command(buf: Uint8Array, at: number): void {
    const payload = buf.subarray(at, at + cmdLen);
    const dv = new DataView(payload.buffer, payload.byteOffset, payload.byteLength);
    switch (cmd) {
      case MIG_CMD.POSTCOPY_RAM_DISCARD: {
        if (payload[0] !== 0) fail('POSTCOPY_RAM_DISCARD', `version ${payload[0]}, expected 0`);
        if (payload[1] !== BLOCK_NAME.length || !isBlockName(payload, 2) || payload[8] !== 0) {
          fail('POSTCOPY_RAM_DISCARD', `unknown RAMBlock (expected "${RAM_BLOCK}" and a NUL)`);
        }
        for (let o = 9; o < cmdLen; o += 16) {
          const sHi = dv.getUint32(o);
          const start = sHi * TWO32 + dv.getUint32(o + 4);
          const lHi = dv.getUint32(o + 8);
          const length = lHi * TWO32 + dv.getUint32(o + 12);
          if (
            sHi >= HI_LIMIT ||
            lHi >= HI_LIMIT ||
            start % PAGE_SIZE !== 0 ||
            length % PAGE_SIZE !== 0 ||
            length === 0
          ) {
            fail('POSTCOPY_RAM_DISCARD', `range ${(o - 9) / 16} is not page-aligned and non-empty`);
          }
          if (start + length > ramBytes) fail('POSTCOPY_RAM_DISCARD', `range ${(o - 9) / 16} ends past RAM`);
        }
        break;
      }
      case MIG_CMD.RECV_BITMAP:
        if (payload[0] !== BLOCK_NAME.length || !isBlockName(payload, 1))
          fail('RECV_BITMAP', 'unknown RAMBlock');
        break;
      case MIG_CMD.VERIFY_HASHES: {
        const fHi = dv.getUint32(0);
        const first = fHi * TWO32 + dv.getUint32(4);
        const n = dv.getUint16(8);
        if (fHi >= HI_LIMIT || first + n > ramPages)
          fail('VERIFY_HASHES', `pages ${first}+${n} outside RAM (${ramPages} pages)`);
        break;
      }
      case MIG_CMD.VERIFY_END: {
        if (dv.getUint32(0) >= HI_LIMIT) fail('VERIFY_END', 'page count ≥ 2^53');
        break;
      }
      case MIG_CMD.VCPU_STATE: {
        const n = dv.getUint16(0);
        if (n < 1 || n > VCPU_STATE_MAX || cmdLen !== VCPU_STATE_HEADER_BYTES + VCPU_STATE_BYTES * n)
          fail(
            'VCPU_STATE',
            `${n} vCPUs in a ${cmdLen}-byte payload (1..${VCPU_STATE_MAX}, ${VCPU_STATE_BYTES} bytes each after ${VCPU_STATE_HEADER_BYTES})`,
          );
        if (dv.getUint8(2) >= PROGRAM_KINDS.length || dv.getUint8(3) !== 0 || dv.getUint16(4) > 256)
          fail(
            'VCPU_STATE',
            `program: kind ${dv.getUint8(2)}, reserved ${dv.getUint8(3)}, hot share ${dv.getUint16(4)}`,
          );
        for (let i = 0; i < n; i++) {
          const at = VCPU_STATE_HEADER_BYTES + i * VCPU_STATE_BYTES;
          if (!validClock(dv.getFloat64(at + 24), dv.getFloat64(at + 32)))
            fail('VCPU_STATE', `vCPU ${i}: trace clock is not 0 ≤ before ≤ after (finite)`);
        }
        break;
      }
      case MIG_CMD.GUEST_TRACE: {
        const total = dv.getUint32(0);
        const offset = dv.getUint32(4);
        const chunk = cmdLen - GUEST_TRACE_HEADER_BYTES;
        if (total < 1 || total > GUEST_TRACE_MAX || offset + chunk > total)
          fail('GUEST_TRACE', `bytes ${offset}+${chunk} of a ${total}-byte trace (1..${GUEST_TRACE_MAX})`);
        if (
          (dv.getUint8(8) & ~(GUEST_TRACE_FLAG.LOOP | GUEST_TRACE_FLAG.SCALE)) !== 0 ||
          dv.getUint8(9) !== 0
        )
          fail('GUEST_TRACE', `flags 0x${dv.getUint8(8).toString(16)}, reserved ${dv.getUint8(9)}`);
        break;
      }
      default:
        break;
    }
    options.onCommand(cmd, payload);
  }

  function commandLength(c: number, len: number): void {
    let ok: boolean;
    switch (c) {
      case MIG_CMD.PING:
        ok = len === 4;
        break;
      case MIG_CMD.POSTCOPY_ADVISE:
        ok = len === 16;
        break;
      case MIG_CMD.POSTCOPY_LISTEN:
      case MIG_CMD.POSTCOPY_RUN:
      case MIG_CMD.POSTCOPY_RESUME:
        ok = len === 0;
        break;
      case MIG_CMD.POSTCOPY_RAM_DISCARD:
        ok = len >= 9 + 16 && len <= 9 + 16 * MAX_DISCARDS_PER_COMMAND && (len - 9) % 16 === 0;
        break;
      case MIG_CMD.RECV_BITMAP:
        ok = len === BLOCK_ID_BYTES;
        break;
      case MIG_CMD.VERIFY_HASHES:
        ok = len >= 18 && len <= 10 + 8 * VERIFY_HASHES_MAX && (len - 10) % 8 === 0;
        break;
      case MIG_CMD.VERIFY_END:
        ok = len === 8;
        break;
      case MIG_CMD.VCPU_STATE:
        ok =
          len >= VCPU_STATE_HEADER_BYTES + VCPU_STATE_BYTES &&
          len <= VCPU_STATE_HEADER_BYTES + VCPU_STATE_BYTES * VCPU_STATE_MAX &&
          (len - VCPU_STATE_HEADER_BYTES) % VCPU_STATE_BYTES === 0;
        break;
      case MIG_CMD.GUEST_TRACE:
        ok = len > GUEST_TRACE_HEADER_BYTES; // at most 0xffff: the length is a be16
        break;
      default:
        return fail('COMMAND', `unknown command ${c}`);
    }
    if (!ok) fail('COMMAND', `command ${c} with a ${len}-byte payload (out of bounds)`);
  }

  /**
   * The hot loop: whole PAGE and ZERO records with CONTINUE, one after another inside `chunk`
   * from `r.p` (nothing buffered), up to the first bytes that are anything else — which `run`
   * then decodes. Apart from `run` so that the items met once or late in a migration (a section
   * marker, a command, EOF, a record split between two reads) do not throw away the optimized
   * record loop: inside `run`, each such first meeting deoptimized the whole decoder, which V8
   * then compiled three times per migration.
   */
  function wholeRecords(chunk: Uint8Array, len: number): void {
    for (let p = r.p; len - p >= PAGE_RECORD_BYTES; p = r.p) {
      const hi = be32(chunk, p);
      const lo = be32(chunk, p + 4);
      const flags = lo & 0xfff;
      const offset = hi * TWO32 + (lo - flags);
      const kind = FAST_RECORD[flags] as number;
      if (kind === 0 || !(hi < HI_LIMIT && offset + PAGE_SIZE <= ramBytes)) return;
      if (kind === 1) {
        if (options.onPageRun !== undefined) {
          const n = options.onPageRun(chunk, p, len);
          if (n > 0 && n <= len - p && n % PAGE_RECORD_BYTES === 0) {
            itemAt = r.base + p + n - PAGE_RECORD_BYTES;
            r.p = p + n;
            continue;
          }
        }
        itemAt = r.base + p;
        r.p = p + PAGE_RECORD_BYTES;
        if (options.onPageAt === undefined)
          options.onPage(offset, chunk.subarray(p + 8, p + PAGE_RECORD_BYTES));
        else options.onPageAt(offset, chunk, p + 8);
      } else {
        // A ZERO record: its fill byte must be 0, or `run` reports it.
        if (chunk[p + 8] !== 0) return;
        itemAt = r.base + p;
        r.p = p + ZERO_RECORD_BYTES;
        options.onZero(offset);
      }
    }
  }

  /** Decodes `chunk` from `r.p`; returns false when a handler paused the decoder. */
  function run(chunk: Uint8Array): boolean {
    r.begin(chunk);
    const len = chunk.length;
    for (;;) {
      switch (state) {
        case M_ITEM: {
          if (r.p >= len) return true;
          itemAt = r.base + r.p;
          const t = chunk[r.p++] as number;
          if (t === VM_ITEM.EOF) {
            state = M_DONE;
            options.onEof();
          } else if (t === VM_ITEM.COMMAND) {
            state = M_CMD_HEADER;
          } else if (t >= VM_ITEM.SECTION_START && t <= VM_ITEM.SECTION_END) {
            if (t === VM_ITEM.SECTION_START ? started : !started) {
              fail(
                SECTION_NAMES[t] as string,
                t === VM_ITEM.SECTION_START ? 'a second SECTION_START' : 'before SECTION_START',
              );
            }
            if (t === VM_ITEM.SECTION_START) started = inStart = true;
            cmd = t; // remembered for onSection
            state = M_SECTION_ID;
          } else {
            fail('item', `unknown item byte 0x${t.toString(16)}`);
          }
          break;
        }
        case M_SECTION_ID: {
          if (!r.need(4)) return true;
          const id = be32(r.buf, r.at);
          if (id !== RAM_SECTION_ID)
            fail(SECTION_NAMES[cmd] as string, `section id ${id}, only ${RAM_SECTION_ID} (RAM) exists`);
          state = M_RECORD;
          firstRecord = true;
          options.onSection(cmd);
          break;
        }
        case M_RECORD: {
          // Fast path: the whole PAGE/ZERO records with CONTINUE inside this chunk.
          if (r.have === 0 && !firstRecord && blockKnown) wholeRecords(chunk, len);
          if (r.have === 0) itemAt = r.base + r.p;
          if (!r.need(RAM_HEADER_BYTES)) return true;
          if (!record(r.buf, r.at)) {
            pump.paused = true;
            return false;
          }
          break;
        }
        case M_BLOCK:
          if (!r.need(BLOCK_ID_BYTES)) return true;
          if (r.buf[r.at] !== BLOCK_NAME.length || !isBlockName(r.buf, r.at + 1))
            fail('RAM record', 'unknown RAMBlock');
          blockKnown = true;
          afterBlock();
          break;
        case M_ZERO_FILL:
          if (!r.need(1)) return true;
          if (r.buf[r.at] !== 0) fail('ZERO record', `fill byte ${r.buf[r.at]}, must be 0`);
          state = M_RECORD;
          options.onZero(recOffset);
          break;
        case M_PAGE:
          if (!r.need(PAGE_SIZE)) return true;
          state = M_RECORD;
          options.onPage(recOffset, r.buf.subarray(r.at, r.at + PAGE_SIZE));
          break;
        case M_MEMSIZE: {
          if (!r.need(BLOCK_ID_BYTES + 8)) return true;
          const b = r.buf;
          const at = r.at;
          if (b[at] !== BLOCK_NAME.length || !isBlockName(b, at + 1)) fail('MEM_SIZE', 'unknown RAMBlock');
          const lHi = be32(b, at + 7);
          const length = lHi * TWO32 + be32(b, at + 11);
          if (lHi >= HI_LIMIT || length !== ramBytes)
            fail('MEM_SIZE', `block "${RAM_BLOCK}" length differs from RAM (${ramBytes})`);
          blockKnown = true; // MEM_SIZE names the one block: CONTINUE may follow
          state = M_RECORD;
          options.onMemSize(ramBytes);
          break;
        }
        case M_CMD_HEADER: {
          if (!r.need(4)) return true;
          cmd = (r.buf[r.at] as number) * 256 + (r.buf[r.at + 1] as number);
          cmdLen = (r.buf[r.at + 2] as number) * 256 + (r.buf[r.at + 3] as number);
          commandLength(cmd, cmdLen);
          state = M_CMD_PAYLOAD;
          break;
        }
        case M_CMD_PAYLOAD:
          if (!r.need(cmdLen)) return true;
          state = M_ITEM;
          command(r.buf, r.at);
          break;
        case M_DONE:
          if (r.p >= len) return true;
          itemAt = r.base + r.p;
          return fail('stream', 'bytes after EOF');
        default:
          throw new DirtytrackError('internal', `main decoder in unknown state ${state}`, {
            component: 'wire',
          });
      }
    }
  }

  const pump = new ChunkPump(r, run);

  return {
    push: (chunk, transient) => pump.push(chunk, transient === true),
    resume: () => pump.resume(),
    end() {
      pump.end(state !== M_ITEM && state !== M_DONE, () => {
        itemAt = r.base - r.have;
        return protocolError(
          'stream',
          r.base,
          `ended inside an item (state ${state}, ${r.have} bytes buffered)`,
          'wire',
          TRUNCATED_ERRNO,
        );
      });
    },
    get offset() {
      return r.base;
    },
    get paused() {
      return pump.paused;
    },
    get done() {
      return state === M_DONE;
    },
  };
}

/** A multifd packet's header as the decoder reports it. */
export interface MultifdPacketInfo {
  flags: number;
  packetNum: number;
  normalCount: number;
  zeroCount: number;
}

export interface MultifdDecoderOptions {
  ramBytes: number;
  onPacket(h: MultifdPacketInfo): void;
  onPage(offsetBytes: number, data: Uint8Array): void;
  onZero(offsetBytes: number): void;
  /** A SYNC packet. Return `false` to stop after it until `resume()` (anything else goes on). */
  onSync(packetNum: number): unknown;
  /** A page whose bytes the reader put in place itself (see {@link MultifdDecoder.inPlace}). */
  onPageInPlace?(offsetBytes: number): void;
  /**
   * Writes the first bytes of a page (gathered from an earlier read) to guest memory at
   * `offsetBytes`, before the rest of the page is read in place after them.
   */
  writePart?(offsetBytes: number, bytes: Uint8Array): void;
}

export interface MultifdDecoder extends StreamDecoder {
  resume(): void;
  readonly paused: boolean;
  /** True between packets (nothing of a packet half-read). */
  readonly idle: boolean;
  /**
   * Where the stream's next bytes belong in guest memory, when they are the rest of a packet's
   * run of consecutive pages and nothing is queued: `[offset, offset + bytes)`. A page head
   * gathered from the last read is first written to place (`writePart`). A reader may then read
   * the bytes straight there (QEMU's multifd receive reads a packet's pages into guest memory with
   * `readv`) and report them with {@link inPlace}. Undefined otherwise.
   */
  inPlaceRange(): { offset: number; bytes: number } | undefined;
  /** The next `bytes` stream bytes (at most `inPlaceRange().bytes`) were read into place. */
  inPlace(bytes: number): void;
  /**
   * Between packets (nothing queued, paused or not): how many bytes the next packet header still
   * needs, so a reader can stop there and read the pages after it in place (QEMU reads the header,
   * then the pages). 0 otherwise.
   */
  headerBytesLeft(): number;
}

/**
 * A multifd channel's parser (WIRE.md, Multifd channel). Checks magic, version, flags (SYNC
 * only), pages_alloc = 128, normal + zero ≤ 128, no pages in a SYNC packet, next_packet_size
 * and reserved bytes 0, packet_num strictly increasing, the block name, and every offset (aligned,
 * inside RAM; unused slots 0) — the whole header before any page is written.
 */
export function createMultifdDecoder(options: MultifdDecoderOptions): MultifdDecoder {
  const { ramBytes } = options;
  checkRam(ramBytes);
  const r = createReader(Math.max(MULTIFD_PACKET_HEADER, PAGE_SIZE));
  // A plain array: a typed one would be an off-heap allocation per decoder (the fuzz test makes 10^5).
  const offsets: number[] = new Array<number>(MULTIFD_PACKET_PAGES).fill(0);
  let inPacket = false;
  let pagesLeft = 0;
  let pageIndex = 0;
  let lastPacket = -1;
  let packetAt = 0;
  // Bytes of the current page already read into place (a read may end inside a page).
  let placedPart = 0;

  const fail = (what: string): never => {
    throw protocolError('multifd packet', packetAt, what);
  };

  /** Returns false when onSync paused the decoder. */
  function header(b: Uint8Array, at: number): boolean {
    const magic = be32(b, at);
    if (magic !== MULTIFD_MAGIC) fail(`bad magic 0x${hex32(magic)}, expected 0x${hex32(MULTIFD_MAGIC)}`);
    const version = be32(b, at + 4);
    if (version !== MULTIFD_VERSION) fail(`version ${version}, expected ${MULTIFD_VERSION}`);
    const flags = be32(b, at + 8);
    if ((flags & ~MULTIFD_FLAG_SYNC) !== 0) fail(`unknown flags 0x${flags.toString(16)}`);
    const alloc = be32(b, at + 12);
    if (alloc !== MULTIFD_PACKET_PAGES) fail(`pages_alloc ${alloc}, expected ${MULTIFD_PACKET_PAGES}`);
    const normal = be32(b, at + 16);
    const zero = be32(b, at + 32);
    if (
      normal > MULTIFD_PACKET_PAGES ||
      zero > MULTIFD_PACKET_PAGES ||
      normal + zero > MULTIFD_PACKET_PAGES
    ) {
      fail(`normal ${normal} + zero ${zero} pages exceed ${MULTIFD_PACKET_PAGES}`);
    }
    if ((flags & MULTIFD_FLAG_SYNC) !== 0 && normal + zero !== 0) fail('a SYNC packet carries pages');
    if (be32(b, at + 20) !== 0) fail('next_packet_size is not 0');
    const nHi = be32(b, at + 24);
    const packetNum = nHi * TWO32 + be32(b, at + 28);
    if (nHi >= HI_LIMIT || packetNum <= lastPacket)
      fail(`packet_num ${nHi >= HI_LIMIT ? '≥ 2^53' : packetNum} after ${lastPacket}`);
    for (let i = 36; i < 64; i++) if (b[at + i] !== 0) fail(`reserved byte ${i} is not 0`);
    if (!isBlockName(b, at + 64)) fail(`unknown RAMBlock (expected "${RAM_BLOCK}")`);
    for (let i = 64 + BLOCK_NAME.length; i < 320; i++)
      if (b[at + i] !== 0) fail('RAMBlock name is not NUL-padded');
    const used = normal + zero;
    for (let i = 0, o = at + 320; i < MULTIFD_PACKET_PAGES; i++, o += 8) {
      const hi = be32(b, o);
      const lo = be32(b, o + 4);
      if (i >= used) {
        if ((hi | lo) !== 0) fail(`unused offset slot ${i} is not 0`);
        continue;
      }
      const off = hi * TWO32 + lo;
      if (hi >= HI_LIMIT || lo % PAGE_SIZE !== 0 || off + PAGE_SIZE > ramBytes) {
        fail(
          `offset slot ${i} (${hi >= HI_LIMIT ? '≥ 2^53' : off}) is not a page inside RAM (${ramBytes} bytes)`,
        );
      }
      offsets[i] = off;
    }
    lastPacket = packetNum;
    pagesLeft = normal;
    pageIndex = 0;
    inPacket = normal > 0;
    options.onPacket({ flags, packetNum, normalCount: normal, zeroCount: zero });
    for (let i = normal; i < used; i++) options.onZero(offsets[i] as number);
    if ((flags & MULTIFD_FLAG_SYNC) !== 0) return options.onSync(packetNum) !== false;
    return true;
  }

  function run(chunk: Uint8Array): boolean {
    r.begin(chunk);
    const len = chunk.length;
    for (;;) {
      if (!inPacket) {
        if (r.p >= len && r.have === 0) return true;
        if (r.have === 0) packetAt = r.base + r.p;
        if (!r.need(MULTIFD_PACKET_HEADER)) return true;
        if (!header(r.buf, r.at)) {
          pump.paused = true;
          return false;
        }
      } else {
        if (!r.need(PAGE_SIZE)) return true;
        const off = offsets[pageIndex++] as number;
        if (--pagesLeft === 0) inPacket = false;
        options.onPage(off, r.buf.subarray(r.at, r.at + PAGE_SIZE));
      }
    }
  }

  const pump = new ChunkPump(r, run);
  const inPlaceRange = (): { offset: number; bytes: number } | undefined => {
    if (!inPacket || pump.paused || !pump.empty || options.onPageInPlace === undefined) return undefined;
    if (r.have !== 0) {
      // A read ended inside a page: its head goes to place first, the rest is read after it.
      if (placedPart !== 0 || options.writePart === undefined) return undefined;
      const head = r.takeGathered();
      options.writePart(offsets[pageIndex] as number, head);
      placedPart = head.length;
    }
    const first = offsets[pageIndex] as number;
    let n = 1;
    while (n < pagesLeft && offsets[pageIndex + n] === first + n * PAGE_SIZE) n++;
    return { offset: first + placedPart, bytes: n * PAGE_SIZE - placedPart };
  };

  return {
    push: (chunk, transient) => {
      if (placedPart !== 0)
        throw new DirtytrackError('internal', 'a chunk inside a page read in place', { component: 'wire' });
      pump.push(chunk, transient === true);
    },
    resume: () => pump.resume(),
    inPlaceRange,
    // Paused at a SYNC is fine: the header read then waits in the queue like any chunk.
    headerBytesLeft: () => (inPacket || !pump.empty ? 0 : Math.max(0, MULTIFD_PACKET_HEADER - r.have)),
    inPlace(bytes) {
      const range = inPlaceRange();
      if (range === undefined || !(bytes > 0 && bytes <= range.bytes))
        throw new DirtytrackError('internal', `${bytes} bytes in place, outside the packet's run`, {
          component: 'wire',
        });
      r.base += bytes;
      let part = placedPart + bytes;
      while (part >= PAGE_SIZE) {
        const off = offsets[pageIndex++] as number;
        part -= PAGE_SIZE;
        if (--pagesLeft === 0) inPacket = false;
        (options.onPageInPlace as (offsetBytes: number) => void)(off);
      }
      placedPart = part;
    },
    end() {
      pump.end(inPacket, () =>
        protocolError(
          'multifd packet',
          packetAt,
          `stream ended inside the packet (at byte ${r.base})`,
          'wire',
          TRUNCATED_ERRNO,
        ),
      );
    },
    get offset() {
      return r.base;
    },
    get paused() {
      return pump.paused;
    },
    get idle() {
      return !inPacket && r.have === 0 && pump.empty;
    },
  };
}

/** VERIFY_RESULT's fields; `firstMismatch` is −1 when no page mismatched (2^64 − 1 on the wire). */
export interface VerifyResult {
  pages: number;
  mismatched: number;
  firstMismatch: number;
}

export interface ReturnDecoderOptions {
  /** When given, REQ_PAGES ranges must lie inside RAM and RECV_BITMAP must be its exact size. */
  ramBytes?: number;
  onShut(status: number): void;
  onPong(value: number): void;
  /** REQ_PAGES and REQ_PAGES_ID (the block is checked to be `pc.ram`). */
  onReqPages(startBytes: number, lengthBytes: number): void;
  onRecvBitmap(bitmap: Uint8Array): void;
  onResumeAck(value: number): void;
  onVerifyResult(r: VerifyResult): void;
}

// Return-path states.
const R_HEADER = 0;
const R_PAYLOAD = 1;
const R_BITMAP_SIZE = 2;
const R_BITMAP = 3;
const R_BITMAP_END = 4;

/**
 * The source's return-path parser (WIRE.md, Return path): known types with their exact payload
 * lengths, REQ_PAGES aligned (and inside RAM when `ramBytes` is given), RECV_BITMAP's size
 * checked (≤ 2 MiB, or exactly RAM's bitmap) before it is buffered, and its ending marker.
 */
export function createReturnDecoder(options: ReturnDecoderOptions): StreamDecoder {
  const ramBytes = options.ramBytes;
  if (ramBytes !== undefined) checkRam(ramBytes);
  const bitmapBytes = ramBytes === undefined ? -1 : Math.ceil(ramBytes / PAGE_SIZE / 64) * 8;
  const r = createReader(64);
  let state = R_HEADER;
  let type = 0;
  let length = 0;
  let msgAt = 0;
  let bitmap: Uint8Array | null = null;
  let bitmapFill = 0;
  let failure: unknown = null;

  const fail = (item: string, what: string): never => {
    throw protocolError(item, msgAt, what);
  };

  function requested(dv: DataView, at: number, item: string): void {
    const sHi = dv.getUint32(at);
    const start = sHi * TWO32 + dv.getUint32(at + 4);
    const len = dv.getUint32(at + 8);
    if (sHi >= HI_LIMIT || start % PAGE_SIZE !== 0 || len % PAGE_SIZE !== 0 || len === 0) {
      fail(item, 'range is not page-aligned and non-empty');
    }
    if (ramBytes !== undefined && start + len > ramBytes) fail(item, `range ${start}+${len} ends past RAM`);
    options.onReqPages(start, len);
  }

  function message(b: Uint8Array, at: number): void {
    const dv = new DataView(b.buffer, b.byteOffset + at, length);
    switch (type) {
      case RP_MSG.SHUT:
        options.onShut(dv.getUint32(0));
        break;
      case RP_MSG.PONG:
        options.onPong(dv.getUint32(0));
        break;
      case RP_MSG.RESUME_ACK:
        options.onResumeAck(dv.getUint32(0));
        break;
      case RP_MSG.REQ_PAGES:
        requested(dv, 0, 'REQ_PAGES');
        break;
      case RP_MSG.REQ_PAGES_ID:
        if (b[at] !== BLOCK_NAME.length || !isBlockName(b, at + 1)) fail('REQ_PAGES_ID', 'unknown RAMBlock');
        requested(dv, BLOCK_ID_BYTES, 'REQ_PAGES_ID');
        break;
      case RP_MSG.RECV_BITMAP:
        if (b[at] !== BLOCK_NAME.length || !isBlockName(b, at + 1)) fail('RECV_BITMAP', 'unknown RAMBlock');
        state = R_BITMAP_SIZE;
        return;
      case RP_MSG.VERIFY_RESULT: {
        const values: number[] = [];
        for (let o = 0; o < 24; o += 8) {
          const hi = dv.getUint32(o);
          const lo = dv.getUint32(o + 4);
          if (o === 16 && hi === 0xffffffff && lo === 0xffffffff) values.push(-1);
          else if (hi >= HI_LIMIT) fail('VERIFY_RESULT', `field ${o / 8} ≥ 2^53`);
          else values.push(hi * TWO32 + lo);
        }
        const [pages, mismatched, firstMismatch] = values as [number, number, number];
        if (mismatched > pages) fail('VERIFY_RESULT', `${mismatched} mismatched of ${pages} pages`);
        options.onVerifyResult({ pages, mismatched, firstMismatch });
        break;
      }
      default:
        break;
    }
    state = R_HEADER;
  }

  function run(chunk: Uint8Array): void {
    r.begin(chunk);
    for (;;) {
      switch (state) {
        case R_HEADER: {
          if (r.have === 0) {
            if (r.p >= chunk.length) return;
            msgAt = r.base + r.p;
          }
          if (!r.need(RETURN_HEADER_BYTES)) return;
          type = be16(r.buf, r.at);
          length = be16(r.buf, r.at + 2);
          const expected = RETURN_LENGTHS[type];
          if (expected === undefined) fail('return message', `unknown type ${type}`);
          if (length !== expected)
            fail('return message', `type ${type} with a ${length}-byte payload, expected ${expected}`);
          state = R_PAYLOAD;
          break;
        }
        case R_PAYLOAD:
          if (!r.need(length)) return;
          message(r.buf, r.at);
          break;
        case R_BITMAP_SIZE: {
          if (!r.need(8)) return;
          const hi = be32(r.buf, r.at);
          const size = hi * TWO32 + be32(r.buf, r.at + 4);
          const ok =
            bitmapBytes >= 0
              ? size === bitmapBytes
              : hi === 0 && size <= RECV_BITMAP_MAX_BYTES && size % 8 === 0;
          if (!ok) {
            fail(
              'RECV_BITMAP',
              `bitmap of ${hi >= HI_LIMIT ? '≥ 2^53' : size} bytes (${bitmapBytes >= 0 ? `expected ${bitmapBytes}` : `at most ${RECV_BITMAP_MAX_BYTES}, whole words`})`,
            );
          }
          bitmap = new Uint8Array(size);
          bitmapFill = 0;
          state = R_BITMAP;
          break;
        }
        case R_BITMAP: {
          const b = bitmap as Uint8Array;
          const k = Math.min(b.length - bitmapFill, chunk.length - r.p);
          b.set(chunk.subarray(r.p, r.p + k), bitmapFill);
          bitmapFill += k;
          r.p += k;
          if (bitmapFill < b.length) return;
          state = R_BITMAP_END;
          break;
        }
        case R_BITMAP_END: {
          if (!r.need(8)) return;
          if (
            be32(r.buf, r.at) !== RECV_BITMAP_ENDING_HI ||
            be32(r.buf, r.at + 4) !== RECV_BITMAP_ENDING_LO
          ) {
            fail('RECV_BITMAP', 'bad ending marker');
          }
          const b = bitmap as Uint8Array;
          bitmap = null;
          state = R_HEADER;
          options.onRecvBitmap(b);
          break;
        }
        default:
          throw new DirtytrackError('internal', `return decoder in unknown state ${state}`, {
            component: 'wire',
          });
      }
    }
  }

  return {
    push(chunk) {
      if (failure !== null) throw failure;
      try {
        run(chunk);
        r.finish();
      } catch (error) {
        failure = error;
        throw error;
      }
    },
    end() {
      if (failure !== null) throw failure;
      if (state !== R_HEADER || r.have > 0) {
        failure = protocolError(
          'return message',
          msgAt,
          `stream ended inside the message (at byte ${r.base})`,
        );
        throw failure;
      }
    },
    get offset() {
      return r.base;
    },
  };
}

const RETURN_LENGTHS: Partial<Record<number, number>> = {
  [RP_MSG.SHUT]: 4,
  [RP_MSG.PONG]: 4,
  [RP_MSG.REQ_PAGES]: 12,
  [RP_MSG.REQ_PAGES_ID]: BLOCK_ID_BYTES + 12,
  [RP_MSG.RECV_BITMAP]: BLOCK_ID_BYTES,
  [RP_MSG.RESUME_ACK]: 4,
  [RP_MSG.VERIFY_RESULT]: 24,
};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/** A protocol error: `[dirtytrack] [component] ITEM at byte N: what`. */
export function protocolError(
  item: string,
  at: number,
  what: string,
  component = 'wire',
  errno?: string,
): DirtytrackError {
  return new DirtytrackError('protocol', `${item} at byte ${at}: ${what}`, {
    component,
    ...(errno === undefined ? {} : { errno }),
  });
}

/**
 * The errno of a stream that ended inside an item (QEMU's `-EIO` from a short read): the bytes
 * so far were well formed, the connection just stopped — a lost link, not a bad peer.
 */
export const TRUNCATED_ERRNO = 'EIO';

/**
 * Reads fixed-size fields out of a sequence of chunks: `need(n)` makes `n` bytes available at
 * `buf[at…]` — straight from the chunk when they are all in it, else gathered in `scratch`
 * (whose size bounds `n`, so nothing larger than a decoder's biggest item is ever buffered).
 */
/**
 * The chunk queue the two pausable decoders share: `push` feeds `run` chunk by chunk; what a
 * pause (`run` returning false after setting `paused`) left unread waits for `resume`; the first
 * failure is kept and thrown again by every later call.
 */
class ChunkPump {
  paused = false;
  private running = false;
  private failure: unknown = null;
  private readonly queue: Uint8Array[] = [];

  constructor(
    private readonly r: Reader,
    private readonly run: (chunk: Uint8Array) => boolean,
  ) {}

  /** Nothing queued. */
  get empty(): boolean {
    return this.queue.length === 0;
  }

  push(chunk: Uint8Array, transient: boolean): void {
    if (this.failure !== null) throw this.failure;
    if (chunk.length === 0) return;
    this.queue.push(chunk);
    if (!this.running && !this.paused) this.drain();
    if (!transient) return;
    // What is still queued of a transient chunk (all of it, or the rest after a pause) is copied.
    for (let i = 0; i < this.queue.length; i++) {
      const q = this.queue[i] as Uint8Array;
      if (q.buffer === chunk.buffer) this.queue[i] = q.slice();
    }
  }

  resume(): void {
    if (!this.paused) return;
    this.paused = false;
    if (this.failure === null && !this.running) this.drain();
  }

  /** The stream's end: a stored failure again, or `error()` if anything is left unfinished. */
  end(unfinished: boolean, error: () => unknown): void {
    if (this.failure !== null) throw this.failure;
    if (this.queue.length > 0 || this.r.have > 0 || unfinished) {
      this.failure = error();
      throw this.failure;
    }
  }

  private drain(): void {
    this.running = true;
    try {
      while (!this.paused && this.queue.length > 0) {
        const chunk = this.queue[0] as Uint8Array;
        const finished = this.run(chunk);
        const rest = this.r.finish();
        if (finished || rest >= chunk.length) this.queue.shift();
        else this.queue[0] = chunk.subarray(rest);
      }
    } catch (error) {
      this.failure = error;
      this.queue.length = 0;
      throw error;
    } finally {
      this.running = false;
    }
  }
}

interface Reader {
  chunk: Uint8Array;
  /** Position in `chunk`. */
  p: number;
  /** Stream offset of `chunk[0]`... advanced by `finish`; with `p`, the consumed offset. */
  base: number;
  buf: Uint8Array;
  at: number;
  /** Bytes gathered in scratch toward the pending `need`. */
  have: number;
  begin(chunk: Uint8Array): void;
  need(n: number): boolean;
  /** Ends the chunk: adds what was consumed to `base`, returns the consumed length. */
  finish(): number;
  /** The bytes gathered toward the pending `need` (a view of scratch), given up: `have` is 0 after. */
  takeGathered(): Uint8Array;
}

function createReader(capacity: number): Reader {
  // Allocated on first use and grown up to `capacity`: a decoder whose items all arrive whole
  // never allocates (each typed array is an off-heap allocation; the fuzz test makes 10^5 decoders).
  let scratch = EMPTY;
  const reader: Reader = {
    chunk: EMPTY,
    p: 0,
    base: 0,
    buf: EMPTY,
    at: 0,
    have: 0,
    begin(chunk) {
      this.chunk = chunk;
      this.p = 0;
    },
    need(n) {
      const chunk = this.chunk;
      const avail = chunk.length - this.p;
      if (this.have === 0 && avail >= n) {
        this.buf = chunk;
        this.at = this.p;
        this.p += n;
        return true;
      }
      if (n > scratch.length) {
        if (n > capacity)
          throw new DirtytrackError('internal', `reader asked for ${n} > ${capacity} bytes`, {
            component: 'wire',
          });
        const grown = new Uint8Array(Math.min(capacity, Math.max(n, 2 * scratch.length, 64)));
        grown.set(scratch.subarray(0, this.have));
        scratch = grown;
      }
      const k = Math.min(n - this.have, avail);
      if (k > 0) scratch.set(chunk.subarray(this.p, this.p + k), this.have);
      this.have += k;
      this.p += k;
      if (this.have < n) return false;
      this.buf = scratch;
      this.at = 0;
      this.have = 0;
      return true;
    },
    takeGathered() {
      const head = scratch.subarray(0, this.have);
      this.have = 0;
      return head;
    },
    finish() {
      const used = this.p;
      this.base += used;
      this.chunk = EMPTY;
      this.p = 0;
      return used;
    },
  };
  return reader;
}

const EMPTY = new Uint8Array(0);

/** The big-endian 32-bit word at `at` of `b`, as a number. */
export function be32(b: Uint8Array, at: number): number {
  return (
    (((b[at] as number) << 24) |
      ((b[at + 1] as number) << 16) |
      ((b[at + 2] as number) << 8) |
      (b[at + 3] as number)) >>>
    0
  );
}

function be16(b: Uint8Array, at: number): number {
  return ((b[at] as number) << 8) | (b[at + 1] as number);
}

function isBlockName(b: Uint8Array, at: number): boolean {
  for (let i = 0; i < BLOCK_NAME.length; i++) if (b[at + i] !== BLOCK_NAME[i]) return false;
  return true;
}

function setBe64(dv: DataView, at: number, value: number): void {
  const hi = Math.floor(value / TWO32);
  dv.setUint32(at, hi);
  dv.setUint32(at + 4, value - hi * TWO32);
}

function view(b: Uint8Array): DataView {
  return new DataView(b.buffer, b.byteOffset, b.byteLength);
}

function hex32(v: number): string {
  return v.toString(16).padStart(8, '0');
}

function isU(v: number, max: number): boolean {
  return Number.isInteger(v) && v >= 0 && v <= max;
}

function checkArg(ok: boolean, field: string, what: string): void {
  if (!ok) throw new DirtytrackError('invalid-argument', `${field}: ${what}`, { component: 'wire', field });
}

function checkRam(ramBytes: number): void {
  checkArg(
    Number.isInteger(ramBytes) && ramBytes > 0 && ramBytes < MAX_RAM_BYTES && ramBytes % PAGE_SIZE === 0,
    'ramBytes',
    `must be a non-zero multiple of ${PAGE_SIZE} below 2^53, got ${ramBytes}`,
  );
}

/**
 * Valid wire streams built with the encoders, and decoder handlers that log every call as a
 * string — shared by the codec tests, the chunk-splitting tests and the fuzz test.
 */
import {
  encodeCommand,
  encodeDiscard,
  encodeEof,
  encodeEos,
  encodeFlush,
  encodeMemSize,
  encodePing,
  encodeRecvBitmap,
  encodeReqPages,
  encodeReturn,
  encodeReturnU32,
  encodeSection,
  encodeVerifyEnd,
  encodeVerifyHashes,
  encodeVerifyResult,
  MIG_CMD,
  MULTIFD_FLAG_SYNC,
  pageHashes,
  RAM_FLAG,
  RP_MSG,
  VM_ITEM,
  writeBlockId,
  writeMultifdHeader,
  writeRamHeader,
  type MainDecoderOptions,
  type MultifdDecoderOptions,
  type ReturnDecoderOptions,
} from '../wire.js';

export const PAGE = 4096;

export function concat(parts: readonly Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/** A page whose bytes are a function of `seed`. */
export function pageOf(seed: number): Uint8Array {
  const page = new Uint8Array(PAGE);
  for (let i = 0; i < PAGE; i++) page[i] = (seed * 31 + i * 7) & 0xff;
  return page;
}

/** A PAGE record (with the block id unless `cont`). */
export function pageRecord(offset: number, data: Uint8Array, cont = true): Uint8Array {
  const out = new Uint8Array(8 + (cont ? 0 : 7) + PAGE);
  let at = writeRamHeader(out, 0, offset, RAM_FLAG.PAGE | (cont ? RAM_FLAG.CONTINUE : 0));
  if (!cont) at = writeBlockId(out, at);
  out.set(data, at);
  return out;
}

export function zeroRecord(offset: number, cont = true): Uint8Array {
  const out = new Uint8Array(9 + (cont ? 0 : 7));
  const at = writeRamHeader(out, 0, offset, RAM_FLAG.ZERO | (cont ? RAM_FLAG.CONTINUE : 0));
  if (!cont) writeBlockId(out, at);
  return out;
}

/** A multifd packet: header + payload of `pages` (page number → data). */
export function multifdPacket(
  packetNum: number,
  normal: readonly number[],
  zero: readonly number[],
  data: (page: number) => Uint8Array,
  flags = 0,
): Uint8Array {
  const header = new Uint8Array(1344);
  writeMultifdHeader(header, 0, {
    flags,
    packetNum,
    normal,
    normalCount: normal.length,
    zero,
    zeroCount: zero.length,
  });
  return concat([header, ...normal.map(data)]);
}

export function syncPacket(packetNum: number): Uint8Array {
  return multifdPacket(packetNum, [], [], () => new Uint8Array(0), MULTIFD_FLAG_SYNC);
}

/** A main stream exercising every item kind over `ramBytes` (≥ 8 pages). */
export function sampleMainStream(ramBytes: number): Uint8Array {
  const memory = new SharedArrayBuffer(ramBytes);
  const mem = new Uint8Array(memory);
  mem.set(pageOf(1), 0);
  mem.set(pageOf(3), 3 * PAGE);
  const hashes = new Uint32Array(2 * (ramBytes / PAGE));
  pageHashes(memory, 0, ramBytes / PAGE, hashes);
  return concat([
    encodeSection(VM_ITEM.SECTION_START),
    encodeMemSize(ramBytes),
    encodeEos(),
    encodeCommand(MIG_CMD.POSTCOPY_ADVISE, new Uint8Array(16)),
    encodeSection(VM_ITEM.SECTION_PART),
    pageRecord(0, pageOf(1), false),
    zeroRecord(PAGE),
    zeroRecord(2 * PAGE, false),
    pageRecord(3 * PAGE, pageOf(3)),
    encodeFlush(),
    encodeEos(),
    encodePing(0xdeadbeef),
    ...encodeDiscard([[4 * PAGE, 2 * PAGE]]),
    encodeSection(VM_ITEM.SECTION_END),
    encodeFlush(),
    encodeEos(),
    encodeVerifyHashes(0, hashes, 0, ramBytes / PAGE),
    encodeVerifyEnd(ramBytes / PAGE),
    encodeEof(),
  ]);
}

/** A multifd channel stream: two packets with pages and zero slots, a SYNC, one more packet, a SYNC. */
export function sampleMultifdStream(): Uint8Array {
  return concat([
    multifdPacket(0, [1, 5], [2], pageOf),
    multifdPacket(2, [0], [], pageOf),
    syncPacket(3),
    multifdPacket(7, [], [3, 4], pageOf),
    multifdPacket(8, [6, 7, 1], [0], pageOf),
    syncPacket(9),
  ]);
}

/** A return path with every message type. */
export function sampleReturnStream(ramBytes: number): Uint8Array {
  const id = new Uint8Array([6, ...new TextEncoder().encode('pc.ram')]);
  const reqId = new Uint8Array(19);
  reqId.set(id);
  new DataView(reqId.buffer).setUint32(11, 2 * PAGE);
  new DataView(reqId.buffer).setUint32(15, PAGE);
  const bitmap = new Uint8Array(Math.ceil(ramBytes / PAGE / 64) * 8);
  bitmap[0] = 0xa5;
  return concat([
    encodeReturnU32(RP_MSG.PONG, 7),
    encodeReqPages(PAGE, 2 * PAGE),
    encodeReturn(RP_MSG.REQ_PAGES_ID, reqId),
    encodeRecvBitmap(bitmap),
    encodeReturnU32(RP_MSG.RESUME_ACK, 1),
    encodeVerifyResult({ pages: ramBytes / PAGE, mismatched: 0, firstMismatch: -1 }),
    encodeVerifyResult({ pages: 3, mismatched: 1, firstMismatch: 2 }),
    encodeReturnU32(RP_MSG.SHUT, 0),
  ]);
}

/** A cheap content fingerprint for logs. */
export function sum(data: Uint8Array): number {
  let s = 0;
  for (let i = 0; i < data.length; i++) s = (s * 31 + (data[i] as number)) >>> 0;
  return s;
}

export function mainLogger(
  ramBytes: number,
  log: string[],
  write?: (offset: number, data: Uint8Array | null) => void,
): MainDecoderOptions {
  return {
    ramBytes,
    onPage: (o, d) => {
      log.push(`page ${o} ${sum(d)}`);
      write?.(o, d);
    },
    onZero: (o) => {
      log.push(`zero ${o}`);
      write?.(o, null);
    },
    onFlush: () => {
      log.push('flush');
      return true;
    },
    onSection: (t) => log.push(`section ${t}`),
    onEos: () => log.push('eos'),
    onMemSize: (n) => log.push(`mem-size ${n}`),
    onCommand: (c, p) => log.push(`cmd ${c} ${Array.from(p).join(',')}`),
    onEof: () => log.push('eof'),
  };
}

export function multifdLogger(
  ramBytes: number,
  log: string[],
  write?: (offset: number, data: Uint8Array | null) => void,
): MultifdDecoderOptions {
  return {
    ramBytes,
    onPacket: (h) => log.push(`packet ${h.packetNum} ${h.flags} ${h.normalCount} ${h.zeroCount}`),
    onPage: (o, d) => {
      log.push(`page ${o} ${sum(d)}`);
      write?.(o, d);
    },
    onZero: (o) => {
      log.push(`zero ${o}`);
      write?.(o, null);
    },
    onSync: (n) => {
      log.push(`sync ${n}`);
    },
  };
}

export function returnLogger(log: string[], ramBytes?: number): ReturnDecoderOptions {
  return {
    ...(ramBytes === undefined ? {} : { ramBytes }),
    onShut: (s) => log.push(`shut ${s}`),
    onPong: (v) => log.push(`pong ${v}`),
    onReqPages: (s, l) => log.push(`req ${s} ${l}`),
    onRecvBitmap: (b) => log.push(`bitmap ${b.length} ${sum(b)}`),
    onResumeAck: (v) => log.push(`resume-ack ${v}`),
    onVerifyResult: (r) => log.push(`verify ${r.pages} ${r.mismatched} ${r.firstMismatch}`),
  };
}

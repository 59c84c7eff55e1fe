/**
 * A destination's guest RAM in a shared `WebAssembly.Memory`, with its main connection's read
 * buffer in the same memory after the RAM, so that precopy's page records go from the read buffer
 * to their places in RAM by WebAssembly's `memory.copy` (record-copy.wat), a real `memmove`.
 *
 * JavaScript copies into a `SharedArrayBuffer` (guest RAM must be one: the vCPU workers share it)
 * with relaxed 8-byte loads and stores, ~4× slower than `memmove` from L1, which is why the
 * decoded path stages each page first (read-buffer.ts `stagePage`); and it decodes each record's
 * header in JS. Here one call takes every whole `PAGE | CONTINUE` record of a read. Measured on
 * this project's 2-core test machine, 1 GiB of QEMU's records from a C sender: 19.6–25.0 Gbit/s
 * read and placed this way against 12.5–20.3 through the staged copy (4 alternating pairs); in
 * `bench migrate` runs alternated, the idle 1 GiB precopy's destination CPU time fell from a median
 * of 614 to 450 ms and its `total-time` from 772 to 616 ms.
 *
 * Where it can (Linux on x86-64, koffi), the same walk runs as machine code that writes RAM with
 * non-temporal stores (native-place.ts): a page written whole need not be read first, which
 * `memmove` does for every cold line of RAM. In 8 alternating pairs of `migrate --memory 1G
 * --workload idle --fill random`, `total-time` median 502 against 531 ms with the WebAssembly
 * copy (paired 0.91, 7 of 8 faster).
 *
 * The memory's buffer is longer than the RAM: whoever holds it takes the RAM's size from
 * {@link ramBytesOf} (or the migration's `ram-bytes`), never from its `byteLength`.
 * WebAssembly memories stop at 4 GiB, so larger guests (and engines without shared WebAssembly
 * memory) keep a plain `SharedArrayBuffer` and the decoded path.
 */
import { DirtytrackError, PAGE_SIZE } from '@dirtytrack/core';
import { loadLibc } from './libc.js';
import { loadNativePlacePages } from './native-place.js';
import { MAIN_READ_BUFFER_BYTES } from './read-buffer.js';
import { RECORD_COPY_WASM_BASE64 } from './record-copy.wasm.js';

/** Bytes of a page record: an 8-byte header, then the page. */
const RECORD_BYTES = 8 + PAGE_SIZE;
/** A WebAssembly page. */
const WASM_PAGE = 65536;
/** Bytes after the RAM: the main connection's read buffer, then its scratch page (read-buffer.ts). */
const TAIL_BYTES = MAIN_READ_BUFFER_BYTES + PAGE_SIZE;
/** Most RAM a record RAM holds: a 32-bit memory's 4 GiB less the read buffer, in whole 64 KiB pages. */
export const RECORD_RAM_MAX_BYTES = 2 ** 32 - Math.ceil(TAIL_BYTES / WASM_PAGE) * WASM_PAGE;

/** How a record RAM copies pages into RAM. */
export interface RecordRamOptions {
  /**
   * `'auto'` (the default): {@link RecordRam.copy} `'non-temporal'` where its machine code loads
   * (Linux on x86-64 with koffi), else `'webassembly'`. `'non-temporal'`: that or no record RAM.
   * `'webassembly'`: record-copy.wat's `memory.copy` (a `memmove`) only.
   */
  copy?: 'auto' | 'non-temporal' | 'webassembly';
}

export interface RecordRam {
  /** The memory's buffer: guest RAM at `[0, ramBytes)`, then the read buffer. */
  readonly memory: SharedArrayBuffer;
  readonly ramBytes: number;
  /**
   * What {@link placePages} copies with: `'non-temporal'`, native-place.ts's machine code, whose
   * stores skip reading each cold RAM line first (1 GiB placed in ~60 ms against ~120 here), or
   * `'webassembly'`, record-copy.wat. The same records are taken either way.
   */
  readonly copy: 'non-temporal' | 'webassembly';
  /** The main connection's read buffer and its scratch page (`withReadBuffer`'s `into`). */
  readonly readBuffer: Uint8Array;
  /**
   * Copies the whole `PAGE | CONTINUE` records at `chunk[at, end)` into RAM, from the first, up
   * to the first thing that is not one whose page lies inside RAM; returns the bytes taken (a
   * multiple of 4,104; 0 when `chunk` is not a view of this memory's read buffer).
   */
  placePages(chunk: Uint8Array, at: number, end: number): number;
  /** Pages {@link placePages} has copied so far. */
  placed(): number;
  /** Whether a connection reads into {@link readBuffer} now: only one may at a time. */
  readerTaken(): boolean;
  /** {@link readBuffer} is `socket`'s until it closes. */
  takeReader(socket: { once(event: 'close', listener: () => void): unknown }): void;
}

/** The slice of the `WebAssembly` global used here (the project's lib has no wasm types). */
interface WasmApi {
  Memory: new (d: { initial: number; maximum: number; shared: boolean }) => { buffer: SharedArrayBuffer };
  Module: new (bytes: Uint8Array) => object;
  Instance: new (
    module: object,
    imports: object,
  ) => { exports: { place_pages: (at: number, len: number, ram: number) => number } };
}

const rams = new WeakMap<ArrayBufferLike, RecordRam>();

/** The record RAM whose buffer `memory` is, if it is one. */
export function recordRamOf(memory: ArrayBufferLike): RecordRam | undefined {
  return rams.get(memory);
}

/** Guest RAM's size in `memory`: a record RAM's `ramBytes`, else the whole buffer. */
export function ramBytesOf(memory: ArrayBufferLike): number {
  return rams.get(memory)?.ramBytes ?? memory.byteLength;
}

/**
 * A record RAM of `ramBytes` (zero-filled, untouched: advise huge pages, then touch it, before
 * use), or undefined where one cannot be made: more than {@link RECORD_RAM_MAX_BYTES}, or no
 * shared WebAssembly memory in this engine, or the memory cannot be allocated.
 */
export function createRecordRam(ramBytes: number, options: RecordRamOptions = {}): RecordRam | undefined {
  const copyWith = options.copy ?? 'auto';
  if (!(Number.isSafeInteger(ramBytes) && ramBytes > 0 && ramBytes % PAGE_SIZE === 0)) {
    throw new DirtytrackError('invalid-argument', `record RAM: ${ramBytes} bytes is not whole pages`, {
      component: 'destination',
      field: 'ramBytes',
    });
  }
  const wasm = (globalThis as { WebAssembly?: WasmApi }).WebAssembly;
  if (wasm === undefined || ramBytes > RECORD_RAM_MAX_BYTES) return undefined;
  const pages = Math.ceil((ramBytes + TAIL_BYTES) / WASM_PAGE);
  let memory: SharedArrayBuffer;
  let place: (at: number, len: number, ram: number) => number;
  let copy: RecordRam['copy'] = 'webassembly';
  try {
    const m = new wasm.Memory({ initial: pages, maximum: pages, shared: true });
    const bytes = Uint8Array.from(Buffer.from(RECORD_COPY_WASM_BASE64, 'base64'));
    place = new wasm.Instance(new wasm.Module(bytes), { env: { memory: m } }).exports.place_pages;
    memory = m.buffer;
    if (!(memory instanceof SharedArrayBuffer)) return undefined;
    if (copyWith !== 'webassembly') {
      // The same walk in machine code with non-temporal stores (native-place.ts), over this
      // memory's address: it never moves (a shared memory's maximum is its initial size).
      const native = loadNativePlacePages();
      const base = loadLibc()?.addressOf(new Uint8Array(memory, 0, 1));
      if (native !== null && base !== undefined) {
        place = (at, len, ram) => native(base, at, len, ram);
        copy = 'non-temporal';
      } else if (copyWith === 'non-temporal') return undefined;
    }
  } catch {
    return undefined; // no shared WebAssembly memory here, or no room for it
  }
  const readBuffer = new Uint8Array(memory, ramBytes, TAIL_BYTES);
  let reader = false;
  let placed = 0;
  const ram: RecordRam = {
    memory,
    ramBytes,
    copy,
    readBuffer,
    placePages(chunk, at, end) {
      // The read buffer's bytes only: a chunk elsewhere (another buffer, this RAM) is left alone.
      if (chunk.buffer !== memory) return 0;
      const from = chunk.byteOffset + at;
      if (!(at >= 0 && end <= chunk.length && from >= ramBytes && end > at)) return 0;
      const n = place(from, end - at, ramBytes);
      placed += n / RECORD_BYTES;
      return n;
    },
    placed: () => placed,
    readerTaken: () => reader,
    takeReader(socket) {
      reader = true;
      socket.once('close', () => {
        reader = false;
      });
    },
  };
  rams.set(memory, ram);
  return ram;
}

/** Pages in `bytes` of page records taken by {@link RecordRam.placePages}. */
export function recordsIn(bytes: number): number {
  return bytes / RECORD_BYTES;
}

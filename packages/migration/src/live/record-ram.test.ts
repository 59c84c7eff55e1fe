import { readFileSync } from 'node:fs';
import { isDirtytrackError } from '@dirtytrack/core';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { buildRecordCopy, OUT_PATH } from '../../scripts/build-record-copy.mjs';
import { concat, PAGE, pageRecord, zeroRecord } from './__fixtures__/wire-streams.js';
import { MAIN_READ_BUFFER_BYTES } from './read-buffer.js';
import { loadNativePlacePages } from './native-place.js';
import { RECORD_COPY_WASM_BASE64 } from './record-copy.wasm.js';
import {
  createRecordRam,
  ramBytesOf,
  recordRamOf,
  recordsIn,
  RECORD_RAM_MAX_BYTES,
  type RecordRam,
} from './record-ram.js';

const REC = 8 + PAGE;

/** A page whose every 8th byte says which page and which copy it is. */
function pageOf(p: number, copy: number): Uint8Array {
  const out = new Uint8Array(PAGE);
  for (let i = 0; i < PAGE; i += 8) {
    out[i] = p & 0xff;
    out[i + 1] = p >> 8;
    out[i + 2] = copy;
    out[i + 3] = (i >> 3) & 0xff;
  }
  return out;
}

/** `bytes` put at the start of `ram`'s read buffer; returns the chunk a read would hand over. */
function intoReadBuffer(ram: RecordRam, bytes: Uint8Array, skip = 0): Uint8Array {
  ram.readBuffer.set(bytes, skip);
  return ram.readBuffer.subarray(0, skip + bytes.length);
}

const nativeHere = loadNativePlacePages() !== null;
if (!nativeHere)
  console.log(
    'record-ram.test: non-temporal copy not tested here: its machine code needs Linux on x86-64 and koffi',
  );

/** The copies this machine can test: WebAssembly everywhere, the machine code where it loads. */
const COPIES = (['non-temporal', 'webassembly'] as const).filter((c) => c === 'webassembly' || nativeHere);

describe('record RAM (guest RAM and its read buffer in one shared WebAssembly memory)', () => {
  const make = (pages: number): RecordRam => {
    const ram = createRecordRam(pages * PAGE);
    if (ram === undefined) throw new Error('this engine has shared WebAssembly memory; no record RAM');
    return ram;
  };

  it('the committed wasm module equals a fresh build of record-copy.wat', async () => {
    const fresh = await buildRecordCopy();
    expect(RECORD_COPY_WASM_BASE64).toBe(fresh.base64);
    expect(readFileSync(OUT_PATH, 'utf8')).toBe(fresh.text);
  });

  it('lays RAM then the read buffer out in one shared memory, and says its RAM size', () => {
    const ram = make(16);
    expect(ram.memory).toBeInstanceOf(SharedArrayBuffer);
    expect(ram.ramBytes).toBe(16 * PAGE);
    expect(ram.readBuffer.buffer).toBe(ram.memory);
    expect(ram.readBuffer.byteOffset).toBe(16 * PAGE);
    expect(ram.readBuffer.length).toBe(MAIN_READ_BUFFER_BYTES + PAGE);
    expect(ram.memory.byteLength).toBe(
      65536 * Math.ceil((16 * PAGE + MAIN_READ_BUFFER_BYTES + PAGE) / 65536),
    );
    expect(recordRamOf(ram.memory)).toBe(ram);
    expect(ramBytesOf(ram.memory)).toBe(16 * PAGE);
    // By default, the machine code's non-temporal copy wherever it loads.
    expect(ram.copy).toBe(nativeHere ? 'non-temporal' : 'webassembly');
    const plain = new SharedArrayBuffer(3 * PAGE);
    expect(recordRamOf(plain)).toBeUndefined();
    expect(ramBytesOf(plain)).toBe(3 * PAGE);
  });

  it('refuses RAM that is not whole pages (typed error), and does not make one past 4 GiB', () => {
    let caught: unknown;
    try {
      createRecordRam(PAGE + 1);
    } catch (error) {
      caught = error;
    }
    expect(isDirtytrackError(caught)).toBe(true);
    expect((caught as Error).message).toBe(
      '[dirtytrack] [destination] record RAM: 4097 bytes is not whole pages',
    );
    expect(RECORD_RAM_MAX_BYTES).toBe(2 ** 32 - 65 * 65536);
    expect(createRecordRam(RECORD_RAM_MAX_BYTES + PAGE)).toBeUndefined();
  });
});

describe.each(COPIES)('record RAM placing pages with the %s copy', (copy) => {
  const make = (pages: number): RecordRam => {
    const ram = createRecordRam(pages * PAGE, { copy });
    if (ram === undefined) throw new Error(`no record RAM with the ${copy} copy here`);
    expect(ram.copy).toBe(copy);
    return ram;
  };

  it('places whole PAGE|CONTINUE records up to the first other thing, and returns their bytes', () => {
    const ram = make(16);
    const mem = new Uint8Array(ram.memory, 0, ram.ramBytes);
    const stream = concat([
      pageRecord(3 * PAGE, pageOf(3, 1)),
      pageRecord(15 * PAGE, pageOf(15, 1)),
      pageRecord(3 * PAGE, pageOf(3, 2)), // a second copy of page 3 overwrites the first
      zeroRecord(4 * PAGE), // stops here: the decoder takes ZERO records
      pageRecord(5 * PAGE, pageOf(5, 1)),
    ]);
    const chunk = intoReadBuffer(ram, stream, 100);
    expect(ram.placePages(chunk, 100, chunk.length)).toBe(3 * REC);
    expect(recordsIn(3 * REC)).toBe(3);
    expect(ram.placed()).toBe(3);
    expect(Buffer.compare(mem.subarray(3 * PAGE, 4 * PAGE), pageOf(3, 2))).toBe(0);
    expect(Buffer.compare(mem.subarray(15 * PAGE, 16 * PAGE), pageOf(15, 1))).toBe(0);
    for (const p of [0, 1, 2, 4, 5, 6, 14])
      expect(mem.subarray(p * PAGE, (p + 1) * PAGE).every((b) => b === 0)).toBe(true);
    // From the record after the ZERO one on: page 5.
    const at = 100 + 3 * REC + 9;
    expect(ram.placePages(chunk, at, chunk.length)).toBe(REC);
    expect(Buffer.compare(mem.subarray(5 * PAGE, 6 * PAGE), pageOf(5, 1))).toBe(0);
  });

  it('takes nothing it should leave to the decoder, and writes nothing then', () => {
    const ram = make(8);
    const mem = new Uint8Array(ram.memory, 0, ram.ramBytes);
    const page = pageOf(1, 1);
    const refused: [string, Uint8Array][] = [
      ['a page at the end of RAM', pageRecord(8 * PAGE, page)],
      ['a page far outside RAM', pageRecord(0xfff0_0000, page)],
      ['an offset of 4 GiB (high word 1)', pageRecord(2 ** 32 + PAGE, page)],
      ['PAGE without CONTINUE (a block name follows)', pageRecord(PAGE, page, false)],
      ['a record cut short', pageRecord(PAGE, page).subarray(0, REC - 1)],
    ];
    const flagged = pageRecord(PAGE, page);
    flagged[7] = (flagged[7] as number) | 0x02; // PAGE|CONTINUE|COMPRESS: not a plain page
    refused.push(['other flags beside PAGE|CONTINUE', flagged]);
    for (const [what, bytes] of refused) {
      const chunk = intoReadBuffer(ram, bytes);
      expect([what, ram.placePages(chunk, 0, chunk.length)]).toEqual([what, 0]);
    }
    // Chunks elsewhere: in RAM itself, in another buffer, or an empty or backwards range.
    const good = pageRecord(2 * PAGE, page);
    mem.set(good, 0);
    expect(ram.placePages(mem.subarray(0, REC), 0, REC)).toBe(0);
    const other = new Uint8Array(new SharedArrayBuffer(REC));
    other.set(good);
    expect(ram.placePages(other, 0, REC)).toBe(0);
    const chunk = intoReadBuffer(ram, good);
    expect(ram.placePages(chunk, 0, 0)).toBe(0);
    expect(ram.placePages(chunk, REC, 0)).toBe(0);
    expect(ram.placePages(chunk, 0, REC + 1)).toBe(0);
    mem.fill(0, 0, REC);
    expect(mem.every((b) => b === 0)).toBe(true);
    // And the same record, where it belongs, is taken.
    expect(ram.placePages(chunk, 0, REC)).toBe(REC);
    expect(Buffer.compare(mem.subarray(2 * PAGE, 3 * PAGE), page)).toBe(0);
  });

  it('equals a JS reference on random record streams with one record of another kind at a random place (property)', () => {
    const pages = 32;
    const ram = make(pages);
    const mem = new Uint8Array(ram.memory, 0, ram.ramBytes);
    fc.assert(
      fc.property(
        fc.array(fc.integer({ min: 0, max: pages - 1 }), { minLength: 0, maxLength: 40 }),
        fc.integer({ min: 0, max: 40 }),
        fc.constantFrom('zero', 'outside', 'no-continue', 'none'),
        fc.integer({ min: 0, max: 4103 }),
        (list, stopAt, stopKind, skip) => {
          mem.fill(0);
          const expected = new Uint8Array(ram.ramBytes);
          const parts: Uint8Array[] = [];
          let taken = 0;
          let stopped = false;
          list.forEach((p, i) => {
            if (i === stopAt && stopKind !== 'none') {
              stopped = true;
              parts.push(
                stopKind === 'zero'
                  ? zeroRecord(p * PAGE)
                  : stopKind === 'outside'
                    ? pageRecord(pages * PAGE + p * PAGE, pageOf(p, i))
                    : pageRecord(p * PAGE, pageOf(p, i), false),
              );
            }
            parts.push(pageRecord(p * PAGE, pageOf(p, i)));
            if (!stopped) {
              expected.set(pageOf(p, i), p * PAGE);
              taken += REC;
            }
          });
          const stream = concat(parts);
          if (skip + stream.length > ram.readBuffer.length) return;
          const chunk = intoReadBuffer(ram, stream, skip);
          expect(ram.placePages(chunk, skip, chunk.length)).toBe(taken);
          expect(Buffer.compare(mem, expected)).toBe(0);
        },
      ),
      { numRuns: 300 },
    );
  });

  it('past 2 GiB (addresses above the signed 32-bit range): the last page placed, the next refused', () => {
    const bytes = 3 * 2 ** 30; // reserved, not touched: only the pages written here become resident
    const ram = make(bytes / PAGE);
    const stream = concat([pageRecord(bytes - PAGE, pageOf(7, 1)), pageRecord(bytes, pageOf(8, 1))]);
    const chunk = intoReadBuffer(ram, stream);
    expect(ram.readBuffer.byteOffset).toBe(bytes);
    expect(ram.placePages(chunk, 0, chunk.length)).toBe(REC);
    expect(Buffer.compare(new Uint8Array(ram.memory, bytes - PAGE, PAGE), pageOf(7, 1))).toBe(0);
  });
});

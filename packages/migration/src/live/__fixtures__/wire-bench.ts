/**
 * A quick measurement of the wire codec (not a test): `pageHashes` over 1 GiB (WebAssembly and
 * JS) and the main and
 * multifd decoders over 256 MiB of page records in 64 KiB socket-sized Buffer chunks, copying
 * each page into destination memory as `createDestination` does. Prints one line per figure,
 * best of 3. Run from the repository root:
 *
 *   node --import tsx --conditions=@dirtytrack/source packages/migration/src/live/__fixtures__/wire-bench.ts
 */
import {
  createMainDecoder,
  createMultifdDecoder,
  encodeEos,
  encodeMemSize,
  encodeSection,
  pageHashes,
  pageHashesJs,
  RAM_FLAG,
  VM_ITEM,
  writeMultifdHeader,
  writeRamHeader,
} from '../wire.js';
import { pageHashKernel } from '../page-hash.js';

const PAGE = 4096;
const GiB = 2 ** 30;

function best(label: string, bytes: number, run: () => void): void {
  let ms = Infinity;
  for (let r = 0; r < 3; r++) {
    const t = performance.now();
    run();
    ms = Math.min(ms, performance.now() - t);
  }
  console.log(
    `${label}: ${(bytes / 1e6 / (ms / 1000)).toFixed(0)} MB/s (${ms.toFixed(0)} ms for ${(bytes / 2 ** 20).toFixed(0)} MiB)`,
  );
}

// pageHashes over 1 GiB.
{
  const memory = new SharedArrayBuffer(GiB);
  const words = new Uint32Array(memory);
  for (let i = 0; i < words.length; i += 97) words[i] = i;
  const out = new Uint32Array(2 * (GiB / PAGE));
  best(`pageHashes (${pageHashKernel()}), 1 GiB`, GiB, () => pageHashes(memory, 0, GiB / PAGE, out));
  best('pageHashesJs, 1 GiB', GiB, () => pageHashesJs(memory, 0, GiB / PAGE, out));
}

const RAM = 256 * 2 ** 20;
const pages = RAM / PAGE;
const memory = Buffer.from(new SharedArrayBuffer(RAM));
const chunks = (stream: Uint8Array): Buffer[] => {
  const out: Buffer[] = [];
  for (let i = 0; i < stream.length; i += 65536) out.push(Buffer.from(stream.subarray(i, i + 65536)));
  return out;
};

// Main stream: SECTION_START, MEM_SIZE, EOS, SECTION_PART, every page, EOS.
{
  const stream = new Uint8Array(5 + 23 + 8 + 5 + pages * (8 + PAGE) + 8);
  let at = 0;
  for (const part of [
    encodeSection(VM_ITEM.SECTION_START),
    encodeMemSize(RAM),
    encodeEos(),
    encodeSection(VM_ITEM.SECTION_PART),
  ]) {
    stream.set(part, at);
    at += part.length;
  }
  for (let p = 0; p < pages; p++) {
    at = writeRamHeader(stream, at, p * PAGE, RAM_FLAG.PAGE | RAM_FLAG.CONTINUE);
    stream[at] = p & 0xff;
    at += PAGE;
  }
  stream.set(encodeEos(), at);
  const input = chunks(stream);
  const noop = (): void => {};
  best('main decoder, PAGE records', stream.length, () => {
    const d = createMainDecoder({
      ramBytes: RAM,
      onPage: (o, data) => memory.set(data, o),
      onZero: noop,
      onFlush: () => true,
      onSection: noop,
      onEos: noop,
      onMemSize: noop,
      onCommand: noop,
      onEof: noop,
    });
    for (const c of input) d.push(c);
  });
}

// A multifd channel: full 128-page packets.
{
  const packets = pages / 128;
  const stream = new Uint8Array(packets * (1344 + 128 * PAGE));
  const normal = new Array<number>(128);
  let at = 0;
  for (let k = 0; k < packets; k++) {
    for (let i = 0; i < 128; i++) normal[i] = k * 128 + i;
    at = writeMultifdHeader(stream, at, {
      flags: 0,
      packetNum: k,
      normal,
      normalCount: 128,
      zero: [],
      zeroCount: 0,
    });
    at += 128 * PAGE;
  }
  const input = chunks(stream);
  const noop = (): void => {};
  best('multifd decoder, 128-page packets', stream.length, () => {
    const d = createMultifdDecoder({
      ramBytes: RAM,
      onPacket: noop,
      onPage: (o, data) => memory.set(data, o),
      onZero: noop,
      onSync: noop,
    });
    for (const c of input) d.push(c);
  });
}

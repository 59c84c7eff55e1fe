import { Bitmap, createRng, DirtytrackError } from '@dirtytrack/core';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  MULTIFD_FLUSH_RECORD,
  MULTIFD_INIT_BYTES,
  MULTIFD_PACKET_HEADER,
  MULTIFD_PACKET_PAGES,
} from '../multifd.js';
import { planDiscard } from '../postcopy.js';
import {
  concat,
  mainLogger,
  multifdLogger,
  multifdPacket,
  PAGE,
  pageOf,
  pageRecord,
  returnLogger,
  sampleMainStream,
  sampleMultifdStream,
  sampleReturnStream,
  sum,
  syncPacket,
  zeroRecord,
} from './__fixtures__/wire-streams.js';
import {
  authTag,
  createMainDecoder,
  createMultifdDecoder,
  createReturnDecoder,
  decodeHello,
  encodeCommand,
  encodeDiscard,
  encodeEof,
  encodeEos,
  encodeFlush,
  encodeHello,
  encodeMemSize,
  encodeReturn,
  encodeReturnU32,
  encodeSection,
  encodeVerifyEnd,
  encodeVcpuState,
  decodeVcpuState,
  encodeGuestTrace,
  decodeGuestTrace,
  GUEST_TRACE_CHUNK_MAX,
  GUEST_TRACE_MAX,
  PROGRAM_KINDS,
  encodeVerifyHashes,
  encodeVerifyResult,
  HELLO_BYTES,
  MIG_CMD,
  pageHashes,
  RAM_FLAG,
  RP_MSG,
  VM_ITEM,
  writeMultifdHeader,
  writeRamHeader,
  type Hello,
  type StreamDecoder,
} from './wire.js';

const hex = (b: Uint8Array): string => Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString('hex');
const unhex = (s: string): Uint8Array => new Uint8Array(Buffer.from(s.replace(/\s+/g, ''), 'hex'));
const SEED = Number(process.env['DIRTYTRACK_PROPERTY_SEED'] ?? 20261125);
const RAM = 8 * PAGE;

const HELLO: Hello = {
  version: 1,
  kind: 1,
  channel: 2,
  migrationId: unhex('000102030405060708090a0b0c0d0e0f'),
  ramBytes: 2 ** 32,
  pageSize: 4096,
  channels: 4,
  flags: 3,
  nonce: unhex('f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff'),
};

function protocolError(fn: () => unknown, pattern?: RegExp): DirtytrackError {
  let caught: unknown;
  try {
    fn();
  } catch (error) {
    caught = error;
  }
  expect(caught).toBeInstanceOf(DirtytrackError);
  const error = caught as DirtytrackError;
  expect(error.code).toBe('protocol');
  expect(error.component).toBe('wire');
  if (pattern !== undefined) expect(error.message).toMatch(pattern);
  return error;
}

describe('wire layouts are the bytes the model plane charges', () => {
  it('HELLO, page, zero, flush, multifd header and discard sizes', () => {
    expect(HELLO_BYTES).toBe(MULTIFD_INIT_BYTES);
    expect(encodeHello(HELLO).length).toBe(MULTIFD_INIT_BYTES);
    expect(pageRecord(0, pageOf(0)).length).toBe(4104);
    expect(zeroRecord(0).length).toBe(9);
    expect(encodeFlush().length).toBe(8);
    expect(encodeFlush().length).toBe(MULTIFD_FLUSH_RECORD);
    const header = new Uint8Array(2000);
    expect(
      writeMultifdHeader(header, 10, {
        flags: 0,
        packetNum: 0,
        normal: [],
        normalCount: 0,
        zero: [],
        zeroCount: 0,
      }),
    ).toBe(10 + MULTIFD_PACKET_HEADER);
    expect(MULTIFD_PACKET_HEADER).toBe(1344);
    expect(MULTIFD_PACKET_PAGES).toBe(128);
  });

  it("a discard's commands cost exactly planDiscard's price", () => {
    const b = Bitmap.create(1024);
    b.setRange(0, 40);
    b.set(63);
    b.set(64);
    for (let p = 100; p < 600; p += 3) b.set(p);
    const ranges: [number, number][] = [];
    for (let p = 0; p < 1024;) {
      if (!b.test(p)) {
        p++;
        continue;
      }
      let q = p;
      while (q < 1024 && b.test(q)) q++;
      ranges.push([p * PAGE, (q - p) * PAGE]);
      p = q;
    }
    const plan = planDiscard(b, 'pc.ram');
    const commands = encodeDiscard(ranges);
    expect(commands.length).toBe(plan.commands);
    expect(ranges.length).toBe(plan.ranges);
    expect(commands.reduce((n, c) => n + c.length, 0)).toBe(plan.bytes);
  });
});

describe('exact bytes', () => {
  it('HELLO', () => {
    const bytes = encodeHello(HELLO);
    expect(hex(bytes)).toBe(
      '44544d47' +
        '0001' +
        '01' +
        '02' +
        '000102030405060708090a0b0c0d0e0f' +
        '0000000100000000' +
        '00001000' +
        '0004' +
        '0003' +
        'f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff' +
        '0000000000000000',
    );
    expect(decodeHello(bytes)).toEqual(HELLO);
  });

  it('page, zero, flush, EOS, MEM_SIZE records and section headers', () => {
    const page = pageRecord(0x12345000, pageOf(9));
    expect(hex(page.subarray(0, 8))).toBe('0000000012345028');
    expect(page.subarray(8)).toEqual(pageOf(9));
    const high = new Uint8Array(8);
    expect(writeRamHeader(high, 0, 2 ** 32 + 0x2000, RAM_FLAG.PAGE)).toBe(8);
    expect(hex(high)).toBe('0000000100002008');
    const far = new Uint8Array(8);
    writeRamHeader(far, 0, 2 ** 53 - PAGE, RAM_FLAG.ZERO);
    expect(hex(far)).toBe('001ffffffffff002');
    expect(hex(zeroRecord(0x3000))).toBe('000000000000302200');
    expect(hex(zeroRecord(0x3000, false))).toBe('0000000000003002' + '0670632e72616d' + '00');
    expect(hex(pageRecord(0x1000, pageOf(0), false).subarray(0, 15))).toBe(
      '0000000000001008' + '0670632e72616d',
    );
    expect(hex(encodeFlush())).toBe('0000000000000200');
    expect(hex(encodeEos())).toBe('0000000000000010');
    expect(hex(encodeMemSize(0x100000))).toBe('0000000000100004' + '0670632e72616d' + '0000000000100000');
    expect(hex(encodeSection(VM_ITEM.SECTION_START))).toBe('0100000001');
    expect(hex(encodeSection(VM_ITEM.SECTION_END))).toBe('0300000001');
    expect(hex(encodeEof())).toBe('00');
    expect(() => encodeSection(VM_ITEM.EOF)).toThrow(/SECTION_START/);
  });

  it('a multifd packet header', () => {
    const buf = new Uint8Array(1344).fill(0xee); // every byte must be written
    writeMultifdHeader(buf, 0, {
      flags: 0,
      packetNum: 5,
      normal: [1, 2, 99],
      normalCount: 2,
      zero: [9],
      zeroCount: 1,
    });
    expect(hex(buf.subarray(0, 36))).toBe(
      '11223344' +
        '00000001' +
        '00000000' +
        '00000080' +
        '00000002' +
        '00000000' +
        '0000000000000005' +
        '00000001',
    );
    expect(buf.subarray(36, 64).every((b) => b === 0)).toBe(true);
    expect(hex(buf.subarray(64, 70))).toBe('70632e72616d');
    expect(buf.subarray(70, 320).every((b) => b === 0)).toBe(true);
    expect(hex(buf.subarray(320, 344))).toBe('0000000000001000' + '0000000000002000' + '0000000000009000');
    expect(buf.subarray(344).every((b) => b === 0)).toBe(true);
  });

  it('a discard command, 12 ranges per command', () => {
    const [one] = encodeDiscard([[0x4000, 0x2000]]);
    expect(hex(one as Uint8Array)).toBe(
      '08' + '0007' + '0019' + '00' + '06' + '70632e72616d' + '00' + '0000000000004000' + '0000000000002000',
    );
    const many = encodeDiscard(Array.from({ length: 25 }, (_, i) => [i * 2 * PAGE, PAGE] as const));
    expect(many.map((c) => c.length)).toEqual([14 + 12 * 16, 14 + 12 * 16, 14 + 16]);
  });

  it('commands and return messages', () => {
    expect(hex(encodeCommand(MIG_CMD.PING, unhex('01020304')))).toBe('08000300040102030' + '4');
    expect(hex(encodeVerifyEnd(1024))).toBe('080021000800000000' + '00000400');
    const hashes = Uint32Array.of(1, 2, 0xaabbccdd, 0x11223344);
    expect(hex(encodeVerifyHashes(7, hashes, 1, 1))).toBe(
      '080020' + '0012' + '0000000000000007' + '0001' + 'aabbccdd11223344',
    );
    expect(hex(encodeReturnU32(RP_MSG.PONG, 7))).toBe('0002000400000007');
    expect(hex(encodeReturn(RP_MSG.SHUT, unhex('00000001')))).toBe('0001000400000001');
    expect(hex(encodeVerifyResult({ pages: 3, mismatched: 0, firstMismatch: -1 }))).toBe(
      '00200018' + '0000000000000003' + '0000000000000000' + 'ffffffffffffffff',
    );
  });

  it('VCPU_STATE: be16 vCPUs, the program (16 bytes), then 40 bytes a vCPU; the decoder gives the values back', () => {
    const vcpus = [
      { rng: [1, 2, 3, 0xffff_ffff], sweep: 5, traceWritten: 2, traceBeforeNs: 1.5e6, traceAfterNs: 2.5e6 },
      { rng: [0, 0, 0, 0], sweep: 0, traceWritten: 0, traceBeforeNs: 0, traceAfterNs: 0 },
    ];
    const program = { kind: 'hot-set', hotPages: 4096, hotShare: 230, rate: 2000, seed: 7 } as const;
    const state = { program, vcpus };
    const item = encodeVcpuState(state);
    expect(hex(item.subarray(0, 23))).toBe(
      '080022' + '0062' + '0002' + '01' + '00' + '00e6' + '00001000' + '000007d0' + '00000007',
    );
    expect(hex(item.subarray(23, 23 + 24))).toBe(
      '00000001' + '00000002' + '00000003' + 'ffffffff' + '00000005' + '00000002',
    );
    expect(decodeVcpuState(item.subarray(5))).toEqual(state);
    const calls: string[] = [];
    const d = createMainDecoder({ ...mainLogger(RAM, calls) });
    d.push(item);
    expect(calls).toEqual([`cmd 34 ${Array.from(item.subarray(5)).join(',')}`]);
    expect(() => encodeVcpuState({ program, vcpus: [] })).toThrow(/vcpus/);
    expect(() =>
      encodeVcpuState({ program, vcpus: [{ ...(vcpus[0] as (typeof vcpus)[0]), traceBeforeNs: 3e6 }] }),
    ).toThrow(/vCPU 0/);
    expect(() => encodeVcpuState({ program: { ...program, hotShare: 257 }, vcpus })).toThrow(/program/);
  });

  it('VCPU_STATE round trip (property): any valid state decodes to itself through the main decoder', () => {
    const u32 = fc.integer({ min: 0, max: 0xffff_ffff });
    const clock = fc.double({ min: 0, max: 1e18, noNaN: true, noDefaultInfinity: true });
    const vcpu = fc
      .record({
        rng: fc.array(u32, { minLength: 4, maxLength: 4 }),
        sweep: u32,
        traceWritten: u32,
        a: clock,
        b: clock,
      })
      .map(({ a, b, ...v }) => ({ ...v, traceBeforeNs: Math.min(a, b), traceAfterNs: Math.max(a, b) }));
    const program = fc.record({
      kind: fc.constantFrom(...PROGRAM_KINDS),
      hotPages: u32,
      hotShare: fc.integer({ min: 0, max: 256 }),
      rate: u32,
      seed: u32,
    });
    fc.assert(
      fc.property(fc.array(vcpu, { minLength: 1, maxLength: 1024 }), program, (vcpus, prog) => {
        const item = encodeVcpuState({ program: prog, vcpus });
        expect(item.length).toBe(5 + 18 + 40 * vcpus.length);
        const calls: Uint8Array[] = [];
        const d = createMainDecoder({ ...mainLogger(RAM, []), onCommand: (_c, p) => calls.push(p.slice()) });
        d.push(item);
        expect(calls.map(decodeVcpuState)).toEqual([{ program: prog, vcpus }]);
      }),
      { numRuns: 100, seed: SEED },
    );
  });

  it('GUEST_TRACE: the trace in order, at most 65525 bytes an item, each after total, offset and flags', () => {
    const bytes = Uint8Array.from({ length: 2 * GUEST_TRACE_CHUNK_MAX + 7 }, (_, i) => (i * 31) & 0xff);
    const items = encodeGuestTrace({ bytes, loop: true, scale: false });
    expect(items.map((i) => i.length)).toEqual([65540, 65540, 5 + 10 + 7]);
    // 0x08, cmd 35, length; total 131057, offset 65525, flags 1 (loop), 0.
    expect(hex(items[1]?.subarray(0, 15) as Uint8Array)).toBe(
      '080023ffff' + '0001fff1' + '0000fff5' + '01' + '00',
    );
    expect(hex(items[2]?.subarray(0, 15) as Uint8Array)).toBe(
      '080023' + '0011' + '0001fff1' + '0001ffea' + '01' + '00',
    );
    const calls: Uint8Array[] = [];
    const d = createMainDecoder({ ...mainLogger(RAM, []), onCommand: (_c, p) => calls.push(p.slice()) });
    for (const item of items) d.push(item);
    const chunks = calls.map(decodeGuestTrace);
    expect(chunks.map((c) => [c.total, c.offset, c.loop, c.scale, c.chunk.length])).toEqual([
      [bytes.length, 0, true, false, GUEST_TRACE_CHUNK_MAX],
      [bytes.length, GUEST_TRACE_CHUNK_MAX, true, false, GUEST_TRACE_CHUNK_MAX],
      [bytes.length, 2 * GUEST_TRACE_CHUNK_MAX, true, false, 7],
    ]);
    expect(Buffer.concat(chunks.map((c) => c.chunk)).equals(bytes)).toBe(true);
    expect(encodeGuestTrace({ bytes: Uint8Array.of(9), loop: false, scale: true }).map(hex)).toEqual([
      '080023000b' + '00000001' + '00000000' + '02' + '00' + '09',
    ]);
    expect(() => encodeGuestTrace({ bytes: new Uint8Array(0), loop: false, scale: false })).toThrow(/bytes/);
    expect(GUEST_TRACE_MAX).toBe(256 * 2 ** 20);
  });

  it('GUEST_TRACE round trip (property): any trace, in any split of the stream, decodes to its bytes and flags', () => {
    fc.assert(
      fc.property(
        fc.uint8Array({ minLength: 1, maxLength: 3 * GUEST_TRACE_CHUNK_MAX + 17 }),
        fc.boolean(),
        fc.boolean(),
        fc.integer({ min: 1, max: 100_000 }),
        (bytes, loop, scale, split) => {
          const stream = Buffer.concat(encodeGuestTrace({ bytes, loop, scale }));
          const chunks: ReturnType<typeof decodeGuestTrace>[] = [];
          const d = createMainDecoder({
            ...mainLogger(RAM, []),
            onCommand: (_c, p) => chunks.push(decodeGuestTrace(p.slice())),
          });
          for (let at = 0; at < stream.length; at += split) d.push(stream.subarray(at, at + split));
          expect(chunks.length).toBe(Math.ceil(bytes.length / GUEST_TRACE_CHUNK_MAX));
          let offset = 0;
          for (const c of chunks) {
            expect([c.total, c.offset, c.loop, c.scale]).toEqual([bytes.length, offset, loop, scale]);
            offset += c.chunk.length;
          }
          expect(Buffer.concat(chunks.map((c) => c.chunk)).equals(bytes)).toBe(true);
        },
      ),
      { numRuns: 60, seed: SEED },
    );
  });

  it('the AUTH tag is HMAC-SHA256 over the label, HELLO and server nonce', () => {
    const tag = authTag('secret', encodeHello(HELLO), new Uint8Array(32).fill(7));
    expect(tag.length).toBe(32);
    expect(hex(tag)).toBe(hex(authTag('secret', encodeHello(HELLO), new Uint8Array(32).fill(7))));
    expect(hex(tag)).not.toBe(
      hex(authTag('secret', encodeHello({ ...HELLO, channel: 3 }), new Uint8Array(32).fill(7))),
    );
  });
});

describe('decodeHello rejects bad handshakes', () => {
  const good = encodeHello(HELLO);
  const mutate = (at: number, value: number): Uint8Array => {
    const b = good.slice();
    b[at] = value;
    return b;
  };
  it.each([
    ['magic', mutate(0, 0), /HELLO at byte 0: bad magic/],
    ['kind', mutate(6, 3), /unknown connection kind 3/],
    ['RAM not page-aligned', mutate(31, 1), /RAM bytes 4294967297 is not/],
    ['RAM ≥ 2^53', mutate(24, 0x01), /≥ 2\^53/],
    ['page size', mutate(34, 0x20), /page size/],
    ['flags', mutate(38, 1), /unknown flags/],
    ['channels', mutate(36, 1), /260 multifd channels, at most 255/],
    ['padding', mutate(60, 1), /padding/],
    ['length', good.subarray(0, 63), /63 bytes/],
  ])('%s', (_name, bytes, pattern) => {
    protocolError(() => decodeHello(bytes), pattern);
  });
  it('returns another version unchecked (the destination answers RESULT code 1)', () => {
    expect(decodeHello(mutate(5, 2)).version).toBe(2);
  });
});

/** Feeds `stream` to a fresh decoder in the given chunk sizes and returns the handler log. */
function feed(
  make: (log: string[]) => StreamDecoder,
  stream: Uint8Array,
  sizes: readonly number[],
): string[] {
  const log: string[] = [];
  const d = make(log);
  let at = 0;
  for (const n of sizes) {
    d.push(stream.subarray(at, at + n));
    at += n;
  }
  if (at < stream.length) d.push(stream.subarray(at));
  d.end();
  expect(d.offset).toBe(stream.length);
  return log;
}

const decoders = {
  main: { make: (log: string[]) => createMainDecoder(mainLogger(RAM, log)), stream: sampleMainStream(RAM) },
  multifd: {
    make: (log: string[]) => createMultifdDecoder(multifdLogger(RAM, log)),
    stream: sampleMultifdStream(),
  },
  return: {
    make: (log: string[]) => createReturnDecoder(returnLogger(log, RAM)),
    stream: sampleReturnStream(RAM),
  },
};

describe('decoders take chunks of any size', () => {
  it('main stream: the whole call log', () => {
    const log = feed(decoders.main.make, decoders.main.stream, []);
    const sumOf = (seed: number): number => {
      const d = pageOf(seed);
      let s = 0;
      for (const b of d) s = (s * 31 + b) >>> 0;
      return s;
    };
    expect(log.slice(0, 13)).toEqual([
      `section 1`,
      `mem-size ${RAM}`,
      'eos',
      `cmd 4 ${new Array(16).fill(0).join(',')}`,
      'section 2',
      `page 0 ${sumOf(1)}`,
      `zero ${PAGE}`,
      `zero ${2 * PAGE}`,
      `page ${3 * PAGE} ${sumOf(3)}`,
      'flush',
      'eos',
      'cmd 3 222,173,190,239',
      `cmd 7 0,6,112,99,46,114,97,109,0,0,0,0,0,0,0,64,0,0,0,0,0,0,0,32,0`,
    ]);
    expect(log.slice(13, 16)).toEqual(['section 3', 'flush', 'eos']);
    expect(log[16]).toMatch(/^cmd 32 0,0,0,0,0,0,0,0,0,8,/);
    expect(log.slice(17)).toEqual(['cmd 33 0,0,0,0,0,0,0,8', 'eof']);
  });

  it('main stream: onPageAt takes every whole page record in a chunk, onPage the rest, same log', () => {
    const stream = concat([
      decoders.main.stream.subarray(0, decoders.main.stream.length - 1), // all but EOF
      encodeSection(VM_ITEM.SECTION_PART),
      pageRecord(5 * PAGE, pageOf(5), false),
      pageRecord(6 * PAGE, pageOf(6)),
      pageRecord(7 * PAGE, pageOf(7)),
      encodeEos(),
      Uint8Array.of(VM_ITEM.EOF),
    ]);
    const reference = feed((log) => createMainDecoder(mainLogger(RAM, log)), stream, []);
    const rng = createRng(SEED);
    for (const sizes of [[], [4104 * 2 + 3], Array.from({ length: 40 }, () => 1 + rng.nextInt(9000))]) {
      let fast = 0;
      const log = feed(
        (l) =>
          createMainDecoder({
            ...mainLogger(RAM, l),
            onPageAt: (o, chunk, at) => {
              fast++;
              expect(at + PAGE).toBeLessThanOrEqual(chunk.length);
              l.push(`page ${o} ${sum(chunk.subarray(at, at + PAGE))}`);
            },
          }),
        stream,
        sizes,
      );
      expect(log, `chunk sizes ${sizes.join(',')} (seed ${SEED})`).toEqual(reference);
      // Fed whole: the three records with CONTINUE that follow a record (3 × PAGE, 6 × PAGE, 7 × PAGE).
      if (sizes.length === 0) expect(fast).toBe(3);
    }
  });

  it('multifd and return path: the whole call log', () => {
    const m = feed(decoders.multifd.make, decoders.multifd.stream, []);
    expect(m.filter((l) => !l.startsWith('page'))).toEqual([
      'packet 0 0 2 1',
      `zero ${2 * PAGE}`,
      'packet 2 0 1 0',
      'packet 3 1 0 0',
      'sync 3',
      'packet 7 0 0 2',
      `zero ${3 * PAGE}`,
      `zero ${4 * PAGE}`,
      'packet 8 0 3 1',
      'zero 0',
      'packet 9 1 0 0',
      'sync 9',
    ]);
    expect(m.filter((l) => l.startsWith('page')).map((l) => Number(l.split(' ')[1]) / PAGE)).toEqual([
      1, 5, 0, 6, 7, 1,
    ]);
    expect(feed(decoders.return.make, decoders.return.stream, [])).toEqual([
      'pong 7',
      `req ${PAGE} ${2 * PAGE}`,
      `req ${2 * PAGE} ${PAGE}`,
      expect.stringMatching(/^bitmap 8 /),
      'resume-ack 1',
      'verify 8 0 -1',
      'verify 3 1 2',
      'shut 0',
    ]);
  });

  for (const [name, { make, stream }] of Object.entries(decoders)) {
    it(`${name}: one byte at a time and split at every boundary give the same calls`, () => {
      const whole = feed(make, stream, []);
      expect(feed(make, stream, new Array<number>(stream.length).fill(1))).toEqual(whole);
      const step = Math.max(1, Math.floor(stream.length / 3000));
      for (let cut = 0; cut <= stream.length; cut += step) expect(feed(make, stream, [cut])).toEqual(whole);
    });

    it(`${name}: random chunk sizes give the same calls`, () => {
      const whole = feed(make, stream, []);
      fc.assert(
        fc.property(fc.array(fc.integer({ min: 0, max: 9000 }), { maxLength: 60 }), (sizes) => {
          expect(feed(make, stream, sizes)).toEqual(whole);
        }),
        { numRuns: 200, seed: SEED },
      );
    });
  }
});

const PROGRAM = { kind: 'uniform', hotPages: 0, hotShare: 0, rate: 0, seed: 1 } as const;
const ONE_VCPU = { rng: [0, 0, 0, 0], sweep: 0, traceWritten: 0, traceBeforeNs: 0, traceAfterNs: 1 };

describe('main decoder bounds', () => {
  const start = concat([encodeSection(VM_ITEM.SECTION_START), encodeMemSize(RAM)]);
  const run = (bytes: Uint8Array): void => {
    const d = createMainDecoder(mainLogger(RAM, []));
    d.push(bytes);
    d.end();
  };
  const header = (offset: number, flags: number): Uint8Array => {
    const b = new Uint8Array(8);
    writeRamHeader(b, 0, offset, flags);
    return b;
  };
  it.each([
    ['unknown item', Uint8Array.of(0x05), /item at byte 0: unknown item byte 0x5/],
    ['section id', Uint8Array.of(1, 0, 0, 0, 2), /SECTION_START at byte 0: section id 2/],
    ['PART before START', encodeSection(VM_ITEM.SECTION_PART), /before SECTION_START/],
    [
      'START without MEM_SIZE',
      concat([encodeSection(1), encodeEos()]),
      /RAM record at byte 5: SECTION_START must begin with MEM_SIZE/,
    ],
    [
      'MEM_SIZE mismatch',
      concat([encodeSection(1), encodeMemSize(2 * RAM)]),
      /MEM_SIZE says 65536 bytes, RAM is 32768/,
    ],
    [
      'page past RAM',
      concat([start, pageRecord(RAM, pageOf(0))]),
      /RAM record at byte 28: page offset 32768 outside RAM/,
    ],
    [
      'page at 2^53',
      concat([start, header(2 ** 53 - PAGE, RAM_FLAG.PAGE)]),
      /page offset 9007199254736896 outside RAM/,
    ],
    ['unknown flag', concat([start, header(0, 0x40)]), /unknown flags 0x40/],
    ['two kinds', concat([start, header(0, RAM_FLAG.PAGE | RAM_FLAG.ZERO)]), /name no single record kind/],
    ['CONTINUE on EOS', concat([start, header(0, RAM_FLAG.EOS | RAM_FLAG.CONTINUE)]), /CONTINUE on a record/],
    [
      'zero fill',
      concat([start, header(0, RAM_FLAG.ZERO | RAM_FLAG.CONTINUE), Uint8Array.of(1)]),
      /ZERO record at byte 28: fill byte 1/,
    ],
    [
      'unknown block',
      concat([start, header(0, RAM_FLAG.ZERO), Uint8Array.of(6, 0x71, 0, 0, 0, 0, 0)]),
      /unknown RAMBlock/,
    ],
    ['unknown command', encodeCommand(99, new Uint8Array(0)), /COMMAND at byte 0: unknown command 99/],
    [
      'oversized PING',
      encodeCommand(MIG_CMD.PING, new Uint8Array(5000)),
      /command 3 with a 5000-byte payload/,
    ],
    [
      'verify past RAM',
      encodeVerifyHashes(7, new Uint32Array(4), 0, 2),
      /VERIFY_HASHES at byte 0: pages 7\+2 outside RAM/,
    ],
    ['discard past RAM', concat(encodeDiscard([[RAM - PAGE, 2 * PAGE]])), /range 0 ends past RAM/],
    [
      'VCPU_STATE of a length that is no whole vCPU',
      encodeCommand(MIG_CMD.VCPU_STATE, new Uint8Array(18 + 39)),
      /command 34 with a 57-byte payload/,
    ],
    [
      'VCPU_STATE counting other vCPUs than it holds',
      encodeCommand(MIG_CMD.VCPU_STATE, Uint8Array.of(0, 3, ...new Uint8Array(96))),
      /VCPU_STATE at byte 0: 3 vCPUs in a 98-byte payload/,
    ],
    [
      'VCPU_STATE with a trace clock that runs backwards',
      (() => {
        const item = encodeVcpuState({ program: PROGRAM, vcpus: [ONE_VCPU] });
        new DataView(item.buffer).setFloat64(5 + 18 + 24, 2); // before 2 > after 1
        return item;
      })(),
      /VCPU_STATE at byte 0: vCPU 0: trace clock is not 0 ≤ before ≤ after/,
    ],
    [
      'VCPU_STATE with a NaN clock',
      (() => {
        const item = encodeVcpuState({ program: PROGRAM, vcpus: [ONE_VCPU] });
        new DataView(item.buffer).setFloat64(5 + 18 + 32, Number.NaN);
        return item;
      })(),
      /trace clock is not/,
    ],
    [
      'VCPU_STATE naming no program',
      (() => {
        const item = encodeVcpuState({ program: PROGRAM, vcpus: [ONE_VCPU] });
        item[5 + 2] = 5; // kind 5: none
        return item;
      })(),
      /VCPU_STATE at byte 0: program: kind 5/,
    ],
    [
      'GUEST_TRACE with no byte of the trace',
      encodeCommand(MIG_CMD.GUEST_TRACE, new Uint8Array(10)),
      /command 35 with a 10-byte payload/,
    ],
    [
      'GUEST_TRACE whose chunk runs past the trace it names',
      encodeCommand(MIG_CMD.GUEST_TRACE, Uint8Array.of(0, 0, 0, 8, 0, 0, 0, 5, 0, 0, 1, 2, 3, 4)),
      /GUEST_TRACE at byte 0: bytes 5\+4 of a 8-byte trace/,
    ],
    [
      'GUEST_TRACE of more than 256 MiB',
      encodeCommand(MIG_CMD.GUEST_TRACE, Uint8Array.of(0x10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1)),
      /bytes 0\+1 of a 268435457-byte trace/,
    ],
    [
      'GUEST_TRACE with an unknown flag',
      encodeCommand(MIG_CMD.GUEST_TRACE, Uint8Array.of(0, 0, 0, 1, 0, 0, 0, 0, 4, 0, 1)),
      /GUEST_TRACE at byte 0: flags 0x4, reserved 0/,
    ],
    ['bytes after EOF', Uint8Array.of(0, 0), /stream at byte 1: bytes after EOF/],
    ['truncated', concat([start, pageRecord(0, pageOf(1)).subarray(0, 100)]), /ended inside an item/],
  ])('%s', (_name, bytes, pattern) => {
    protocolError(() => run(bytes), pattern);
  });

  it('pauses at MULTIFD_FLUSH until resume(), keeping the rest of the chunk', () => {
    const log: string[] = [];
    let hold = true;
    const d = createMainDecoder({ ...mainLogger(RAM, log), onFlush: () => (log.push('flush'), !hold) });
    const stream = concat([start, encodeFlush(), zeroRecord(0, false), encodeEos()]);
    d.push(stream);
    expect(d.paused).toBe(true);
    expect(log).toEqual(['section 1', `mem-size ${RAM}`, 'flush']);
    expect(d.offset).toBe(start.length + 8);
    d.push(encodeEof()); // queued
    expect(log.length).toBe(3);
    hold = false;
    d.resume();
    expect(d.paused).toBe(false);
    expect(log.slice(3)).toEqual(['zero 0', 'eos', 'eof']);
    expect(d.done).toBe(true);
    d.end();
  });

  it('copies what it keeps of a transient chunk: a paused decoder decodes the bytes as they were pushed', () => {
    const bytes = concat([start, encodeFlush(), pageRecord(PAGE, pageOf(5)), encodeEos(), encodeEof()]);
    const reference: string[] = [];
    createMainDecoder(mainLogger(RAM, reference)).push(bytes);
    for (const transient of [true, false]) {
      const log: string[] = [];
      let hold = true;
      const d = createMainDecoder({ ...mainLogger(RAM, log), onFlush: () => (log.push('flush'), !hold) });
      // One reused read buffer: the same bytes pushed from it, then overwritten by the next read.
      const readBuffer = new Uint8Array(bytes.length + 16);
      readBuffer.set(bytes);
      d.push(readBuffer.subarray(0, bytes.length), transient);
      expect(d.paused).toBe(true);
      readBuffer.fill(0xee);
      hold = false;
      if (transient) {
        d.resume();
        expect(log).toEqual(reference);
      } else {
        // Without the copy the queued rest is the next read's bytes: here, garbage.
        expect(() => d.resume()).toThrow(/RAM record at byte 36: unknown flags 0xeee/);
      }
    }
  });
});

describe('multifd decoder, transient chunks', () => {
  it('copies the rest of a chunk it holds at a SYNC: the pages after it keep their pushed bytes', () => {
    const bytes = concat([syncPacket(1), multifdPacket(2, [3, 4], [], pageOf)]);
    const reference: string[] = [];
    createMultifdDecoder(multifdLogger(RAM, reference)).push(bytes);
    const log: string[] = [];
    const d = createMultifdDecoder({
      ...multifdLogger(RAM, log),
      onSync: (n) => (log.push(`sync ${n}`), false),
    });
    const readBuffer = bytes.slice();
    d.push(readBuffer, true);
    expect(d.paused).toBe(true);
    readBuffer.fill(0);
    d.resume();
    expect(log).toEqual(reference);
    expect(log.filter((l) => l.startsWith('page'))).toHaveLength(2);
  });
});

describe("multifd decoder, pages read in place (QEMU reads a packet's pages with readv)", () => {
  it('offers the rest of a run of consecutive pages, writes a gathered page head first, and counts each page once', () => {
    const ram = 32 * PAGE;
    const mem = new Uint8Array(ram);
    const log: string[] = [];
    const d = createMultifdDecoder({
      ...multifdLogger(ram, log),
      onPageInPlace: (o) => log.push(`in place ${o / PAGE}`),
      writePart: (o, bytes) => {
        log.push(`part ${o / PAGE} ${bytes.length}`);
        mem.set(bytes, o);
      },
    });
    // Pages 10, 11, 12 (a run), then 20 (a run of one), and zero page 5.
    const packet = multifdPacket(1, [10, 11, 12, 20], [5], pageOf);
    const payload = 1344; // where page 10's bytes start
    expect(d.inPlaceRange()).toBeUndefined(); // between packets: nothing to offer
    // The first read ends 100 bytes into page 10.
    d.push(packet.subarray(0, payload + 100), true);
    expect(d.inPlaceRange()).toEqual({ offset: 10 * PAGE + 100, bytes: 3 * PAGE - 100 });
    // The reader reads the rest of the run into place, in two reads.
    mem.set(packet.subarray(payload + 100, payload + 3 * PAGE), 10 * PAGE + 100);
    d.inPlace(5000);
    expect(d.inPlaceRange()).toEqual({ offset: 11 * PAGE + 5100 - PAGE, bytes: 3 * PAGE - 5100 });
    d.inPlace(3 * PAGE - 5100);
    for (const p of [10, 11, 12]) expect(mem.subarray(p * PAGE, (p + 1) * PAGE)).toEqual(pageOf(p));
    // Page 20 is its own run; here it comes through the buffer instead.
    expect(d.inPlaceRange()).toEqual({ offset: 20 * PAGE, bytes: PAGE });
    d.push(packet.subarray(payload + 3 * PAGE), true);
    expect(d.idle).toBe(true);
    expect(d.offset).toBe(packet.length);
    // The same packet through the buffer alone: the same packet, zero page and page 20.
    const reference: string[] = [];
    createMultifdDecoder(multifdLogger(ram, reference)).push(packet);
    expect(log).toEqual([
      'packet 1 0 4 1',
      'zero 20480',
      'part 10 100',
      'in place 10',
      'in place 11',
      'in place 12',
      reference.at(-1),
    ]);
    expect(reference.at(-1)).toMatch(/^page 81920 /);
  });

  it('more bytes in place than the run, or a chunk inside a page read in place, is an internal error', () => {
    const d = createMultifdDecoder({
      ...multifdLogger(RAM, []),
      onPageInPlace: () => {},
      writePart: () => {},
    });
    d.push(multifdPacket(1, [1, 2], [], pageOf).subarray(0, 1344), true);
    expect(() => d.inPlace(2 * PAGE + 1)).toThrow(expect.objectContaining({ code: 'internal' }));
    d.inPlace(10);
    expect(() => d.push(new Uint8Array(10), true)).toThrow(expect.objectContaining({ code: 'internal' }));
    // Between packets a reader may stop after the header: its bytes still missing.
    const h = createMultifdDecoder({
      ...multifdLogger(RAM, []),
      onPageInPlace: () => {},
      writePart: () => {},
    });
    expect(h.headerBytesLeft()).toBe(1344);
    h.push(multifdPacket(1, [1], [], pageOf).subarray(0, 1000), true);
    expect(h.headerBytesLeft()).toBe(344);
    h.push(multifdPacket(1, [1], [], pageOf).subarray(1000, 1344), true);
    expect([h.headerBytesLeft(), h.inPlaceRange()]).toEqual([0, { offset: PAGE, bytes: PAGE }]);
    // Without onPageInPlace nothing is offered.
    const plain = createMultifdDecoder(multifdLogger(RAM, []));
    plain.push(multifdPacket(1, [1, 2], [], pageOf).subarray(0, 1344), true);
    expect(plain.inPlaceRange()).toBeUndefined();
  });
});

describe('multifd decoder bounds', () => {
  const packet = (mutate: (b: Uint8Array, dv: DataView) => void): Uint8Array => {
    const p = multifdPacket(1, [1], [2], pageOf);
    mutate(p, new DataView(p.buffer));
    return p;
  };
  it.each([
    ['magic', packet((b) => (b[0] = 0)), /multifd packet at byte 0: bad magic/],
    ['version', packet((_b, dv) => dv.setUint32(4, 2)), /version 2/],
    ['flags', packet((_b, dv) => dv.setUint32(8, 2)), /unknown flags/],
    ['pages_alloc', packet((_b, dv) => dv.setUint32(12, 1 << 20)), /pages_alloc 1048576/],
    ['normal count huge', packet((_b, dv) => dv.setUint32(16, 0xffffffff)), /exceed 128/],
    ['sum over 128', packet((_b, dv) => dv.setUint32(32, 128)), /exceed 128/],
    ['SYNC with pages', packet((_b, dv) => dv.setUint32(8, 1)), /SYNC packet carries pages/],
    [
      'offset past RAM',
      packet((_b, dv) => dv.setUint32(324, RAM)),
      /offset slot 0 \(32768\) is not a page inside RAM/,
    ],
    ['offset unaligned', packet((_b, dv) => dv.setUint32(324, 5)), /offset slot 0/],
    ['block name', packet((b) => (b[64] = 0x71)), /unknown RAMBlock/],
    ['unused slot', packet((_b, dv) => dv.setUint32(340, 1)), /unused offset slot 2/],
    ['reserved', packet((b) => (b[40] = 1)), /reserved byte 40/],
  ])('%s', (_name, bytes, pattern) => {
    const d = createMultifdDecoder(multifdLogger(RAM, []));
    protocolError(() => d.push(bytes), pattern);
  });

  it('packet numbers must increase; truncation is an error; errors name the packet offset', () => {
    const d = createMultifdDecoder(multifdLogger(RAM, []));
    d.push(syncPacket(4));
    protocolError(() => d.push(syncPacket(4)), /multifd packet at byte 1344: packet_num 4 after 4/);
    const t = createMultifdDecoder(multifdLogger(RAM, []));
    t.push(multifdPacket(1, [1], [], pageOf).subarray(0, 2000));
    protocolError(() => t.end(), /multifd packet at byte 0: stream ended inside the packet/);
  });
});

describe('return decoder bounds', () => {
  it.each([
    ['unknown type', encodeReturn(99, new Uint8Array(0)), /return message at byte 0: unknown type 99/],
    [
      'PONG length',
      encodeReturn(RP_MSG.PONG, new Uint8Array(60000)),
      /type 2 with a 60000-byte payload, expected 4/,
    ],
    [
      'REQ_PAGES unaligned',
      encodeReturn(RP_MSG.REQ_PAGES, unhex('000000000000000100001000')),
      /not page-aligned/,
    ],
    [
      'REQ_PAGES past RAM',
      encodeReturn(RP_MSG.REQ_PAGES, unhex('000000000000800000001000')),
      /ends past RAM/,
    ],
    [
      'RECV_BITMAP too big',
      concat([encodeReturn(RP_MSG.RECV_BITMAP, unhex('0670632e72616d')), unhex('0000000100000000')]),
      /RECV_BITMAP at byte 0: bitmap of 4294967296 bytes/,
    ],
    [
      'VERIFY_RESULT inconsistent',
      encodeVerifyResult({ pages: 1, mismatched: 2, firstMismatch: 0 }),
      /2 mismatched of 1/,
    ],
  ])('%s', (_name, bytes, pattern) => {
    const d = createReturnDecoder(returnLogger([], RAM));
    protocolError(() => d.push(bytes), pattern);
  });
});

describe('pageHashes', () => {
  it('is stable, position-independent, and sees a one-bit change in any word', () => {
    const memory = new SharedArrayBuffer(4 * PAGE);
    const out = new Uint32Array(8);
    pageHashes(memory, 0, 4, out);
    // A zero page's hash, frozen: the destination and source must agree across versions.
    expect(Array.from(out.subarray(0, 2), (w) => w.toString(16).padStart(8, '0'))).toEqual(ZERO_PAGE_HASH);
    expect(out.subarray(2, 4)).toEqual(out.subarray(0, 2));
    const bytes = new Uint8Array(memory);
    for (const at of [0, 1, 2047, 4092, 4095]) {
      bytes[PAGE + at] = 0x80;
      pageHashes(memory, 1, 1, out, 1);
      expect(hex(new Uint8Array(out.buffer, 8, 8))).not.toBe(hex(new Uint8Array(out.buffer, 0, 8)));
      bytes[PAGE + at] = 0;
    }
    // The same content hashes the same in an ArrayBuffer.
    const plain = new ArrayBuffer(PAGE);
    new Uint8Array(plain).set(pageOf(3));
    bytes.set(pageOf(3), 2 * PAGE);
    const a = new Uint32Array(2);
    pageHashes(plain, 0, 1, a);
    pageHashes(memory, 2, 1, out);
    expect(Array.from(a)).toEqual(Array.from(out.subarray(0, 2)));
  });

  it('hashes five distinct pages to the values frozen before it hashed four at a time (in JS, and in WebAssembly in a run of 16)', () => {
    const memory = new SharedArrayBuffer(16 * PAGE);
    const words = new Uint32Array(memory);
    for (let i = 0; i < words.length; i++) words[i] = Math.imul(i + 1, 2654435761);
    const alone = new Uint32Array(10); // five pages: under a run of 8, all in JS
    pageHashes(memory, 0, 5, alone);
    const run = new Uint32Array(32); // sixteen: two runs of 8 through the kernel
    pageHashes(memory, 0, 16, run);
    expect(Array.from(run.subarray(0, 10))).toEqual(Array.from(alone));
    const out = alone;
    expect(Array.from(out, (w) => w.toString(16).padStart(8, '0'))).toEqual([
      '0a8121aa',
      'ed03b14a',
      'a44746e3',
      '0859f249',
      '5ca940ea',
      '3e2c867a',
      '87473a60',
      'd26889fa',
      '346bef80',
      '85af45cf',
    ]);
  });

  it('gives every page the hash it has alone, whatever the run and the output offset', () => {
    const pages = 13;
    const memory = new SharedArrayBuffer(pages * PAGE);
    const words = new Uint32Array(memory);
    const alone = new Uint32Array(2 * pages);
    fc.assert(
      fc.property(
        fc.integer({ min: 0, max: 2 ** 32 - 1 }),
        fc.integer({ min: 0, max: pages - 1 }),
        fc.integer({ min: 0, max: pages }),
        fc.integer({ min: 0, max: 3 }),
        (seed, first, want, outAt) => {
          const count = Math.min(want, pages - first);
          for (let i = 0; i < words.length; i++) words[i] = Math.imul(seed ^ i, 2654435761) >>> 0;
          for (let p = 0; p < pages; p++) pageHashes(memory, p, 1, alone, p);
          const out = new Uint32Array(2 * (outAt + count)).fill(7);
          pageHashes(memory, first, count, out, outAt);
          expect(Array.from(out.subarray(0, 2 * outAt))).toEqual(new Array<number>(2 * outAt).fill(7));
          expect(Array.from(out.subarray(2 * outAt))).toEqual(
            Array.from(alone.subarray(2 * first, 2 * (first + count))),
          );
        },
      ),
      { numRuns: 100, seed: SEED },
    );
  });

  it('rejects an output array that is too short', () => {
    expect(() => pageHashes(new ArrayBuffer(PAGE * 2), 0, 2, new Uint32Array(3))).toThrow(/out holds/);
    expect(() => pageHashes(new ArrayBuffer(PAGE * 2), 1, 2, new Uint32Array(4))).toThrow(
      /pages 1\+2 outside memory of 8192 bytes/,
    );
  });
});

const ZERO_PAGE_HASH = ['0084789a', 'f2485a48'];

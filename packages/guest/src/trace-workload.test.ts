import {
  createRng,
  createVirtualClock,
  DirtytrackError,
  NS_PER_MS,
  type DirtySink,
  type DirtytrackErrorCode,
  type Tracker,
  type Workload,
  type WriteBatch,
} from '@dirtytrack/core';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { createModelEngine, createModelMemory } from './model-engine.js';
import {
  createTraceWorkload,
  createTraceWriter,
  encodeTrace,
  formatTraceText,
  parseTrace,
  recordTrace,
  TraceFormatError,
} from './trace-workload.js';
import { createHotSetWorkload, createSweepWorkload, createUniformWorkload } from './workloads.js';
import { assertProperty } from './__fixtures__/property.js';

const PROPERTY_SEED = Number(process.env['DIRTYTRACK_PROPERTY_SEED'] ?? 20261125);
const PROPERTY_RUNS = 60; // DIRTYTRACK_PROPERTY_RUNS for more

/** Trace A: a 16-page, 2-vCPU guest, 1000 ns; vCPU 0 writes 1, 2 at 0 ns, vCPU 1 writes 15 at 500 ns. */
const A = {
  pages: 16,
  vcpus: 2,
  periodNs: 1000,
  records: [
    { timeNs: 0, vcpu: 0, pages: [1, 2] },
    { timeNs: 500, vcpu: 1, pages: [15] },
  ],
};
// prettier-ignore
const A_BYTES = Uint8Array.of(
  0x44, 0x54, 0x54, 0x52, 0x41, 0x43, 0x45, 0x00, // magic "DTTRACE\0"
  1, 0, 0, 0, // version 1
  2, 0, 0, 0, // 2 vCPUs
  16, 0, 0, 0, 0, 0, 0, 0, // 16 pages
  0xe8, 0x03, 0, 0, 0, 0, 0, 0, // period 1000 ns
  2, 0, 0, 0, // 2 records
  0, 0, 0, 0, // reserved
  0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, // @40: 0 ns, vCPU 0, [1, 2]
  0xf4, 0x01, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 15, 0, 0, 0, // @64: 500 ns, vCPU 1, [15]
);
const A_TEXT = 'dirtytrack-trace 1 pages=16 vcpus=2 period=1000\n0 0 1,2\n500 1 15\n';

interface Emitted {
  vcpu: number;
  slot: number;
  offsets: number[];
}

function collect(w: Workload, from: number, to: number, speed = 1, vcpuSpeeds?: Float64Array): Emitted[] {
  const out: Emitted[] = [];
  const emit = (b: WriteBatch): void => {
    out.push({ vcpu: b.vcpu, slot: b.slot, offsets: [...b.offsets.subarray(0, b.count)] });
  };
  if (vcpuSpeeds === undefined) w.generate(from, to, speed, emit);
  else w.generate(from, to, speed, emit, vcpuSpeeds);
  return out;
}

/** `collect` over consecutive steps of `stepNs` from 0, one entry per step. */
function steps(w: Workload, stepNs: number, n: number, speed = 1, vcpuSpeeds?: Float64Array): Emitted[][] {
  return Array.from({ length: n }, (_, k) => collect(w, k * stepNs, (k + 1) * stepNs, speed, vcpuSpeeds));
}

function patched(bytes: Uint8Array, at: number, values: number[]): Uint8Array {
  const out = bytes.slice();
  out.set(values, at);
  return out;
}

function u32(n: number): number[] {
  return [n & 0xff, (n >>> 8) & 0xff, (n >>> 16) & 0xff, n >>> 24];
}

function expectTraceError(fn: () => unknown, code: DirtytrackErrorCode, offset: number): TraceFormatError {
  let caught: unknown;
  try {
    fn();
  } catch (error) {
    caught = error;
  }
  expect(caught).toBeInstanceOf(TraceFormatError);
  expect(caught).toBeInstanceOf(DirtytrackError);
  const e = caught as TraceFormatError;
  expect({ code: e.code, offset: e.offset, component: e.component }).toEqual({
    code,
    offset,
    component: 'trace-workload',
  });
  expect(e.message).toContain(`[dirtytrack] [trace-workload] trace byte ${offset}: `);
  return e;
}

describe('trace format', () => {
  it('encodes trace A to exactly the documented bytes, and parses them back', () => {
    const bytes = encodeTrace(A);
    expect([...bytes]).toEqual([...A_BYTES]);
    const t = parseTrace(bytes);
    expect(t).toEqual({
      version: 1,
      pages: 16,
      vcpus: 2,
      periodNs: 1000,
      records: 2,
      timeNs: Float64Array.of(0, 500),
      vcpu: Uint32Array.of(0, 1),
      end: Float64Array.of(2, 3),
      writes: Uint32Array.of(1, 2, 15),
    });
  });

  it('round-trips parse → encode → the same bytes, and through the text form', () => {
    const t = parseTrace(A_BYTES);
    const again = createTraceWriter({ pages: t.pages, vcpus: t.vcpus });
    for (let r = 0, start = 0; r < t.records; r++) {
      const end = t.end[r] as number;
      again.append(t.timeNs[r] as number, t.vcpu[r] as number, t.writes.subarray(start, end));
      start = end;
    }
    expect([...again.finish(t.periodNs)]).toEqual([...A_BYTES]);
    expect(formatTraceText(t)).toBe(A_TEXT);
    expect(parseTrace(new TextEncoder().encode(A_TEXT))).toEqual(t);
  });

  it('reads the text form with comments, blank lines, CRLF and spaces', () => {
    const text =
      'dirtytrack-trace  1 pages=16 vcpus=2 period=1000\r\n# a comment\n\n0 0 1,2\r\n  500\t1 15  \n';
    expect(parseTrace(new TextEncoder().encode(text))).toEqual(parseTrace(A_BYTES));
  });

  it('a header-only trace (no records) is valid', () => {
    const bytes = encodeTrace({ pages: 1, vcpus: 1, periodNs: 1, records: [] });
    expect(bytes.length).toBe(40);
    expect(parseTrace(bytes).records).toBe(0);
  });
});

describe('bad traces: a TraceFormatError with the code and the byte offset', () => {
  const cases: {
    what: string;
    bytes: Uint8Array;
    code: DirtytrackErrorCode;
    offset: number;
    says: string;
  }[] = [
    {
      what: 'an empty file',
      bytes: new Uint8Array(0),
      code: 'invalid-argument',
      offset: 0,
      says: 'truncated header',
    },
    {
      what: 'bad magic',
      bytes: patched(A_BYTES, 0, [0x58]),
      code: 'invalid-argument',
      offset: 0,
      says: 'bad magic',
    },
    {
      what: 'a truncated header',
      bytes: A_BYTES.slice(0, 20),
      code: 'invalid-argument',
      offset: 20,
      says: 'truncated header: 20 bytes',
    },
    {
      what: 'an unknown version',
      bytes: patched(A_BYTES, 8, u32(2)),
      code: 'invalid-argument',
      offset: 8,
      says: 'unknown version 2 (accepted: 1)',
    },
    {
      what: 'zero vCPUs',
      bytes: patched(A_BYTES, 12, u32(0)),
      code: 'invalid-argument',
      offset: 12,
      says: 'vCPU count 0',
    },
    {
      what: 'zero pages',
      bytes: patched(A_BYTES, 16, u32(0)),
      code: 'out-of-range',
      offset: 16,
      says: 'page count 0',
    },
    {
      what: 'more than 2^32 pages',
      bytes: patched(A_BYTES, 16, [1, 0, 0, 0, 1, 0, 0, 0]),
      code: 'out-of-range',
      offset: 16,
      says: 'page count 4294967297',
    },
    {
      what: 'a zero period',
      bytes: patched(A_BYTES, 24, u32(0)),
      code: 'out-of-range',
      offset: 24,
      says: 'period 0',
    },
    {
      what: 'a reserved word that is not zero',
      bytes: patched(A_BYTES, 36, u32(1)),
      code: 'invalid-argument',
      offset: 36,
      says: 'reserved word is 1',
    },
    {
      what: 'more records than bytes',
      bytes: patched(A_BYTES, 32, u32(6)),
      code: 'invalid-argument',
      offset: 84,
      says: '6 records need at least 96 bytes',
    },
    {
      what: 'a file cut inside a record header',
      bytes: A_BYTES.slice(0, 78),
      code: 'invalid-argument',
      offset: 78,
      says: "truncated: after record 0's 2 pages the 1 records left cannot fit",
    },
    {
      what: "a file cut inside the last record's pages",
      bytes: A_BYTES.slice(0, 80),
      code: 'out-of-range',
      offset: 76,
      says: 'record 1: 1 pages run past the end of the file (0 fit)',
    },
    {
      what: 'a count running past the end',
      bytes: patched(A_BYTES, 52, u32(0xffff_ffff)),
      code: 'out-of-range',
      offset: 52,
      says: 'record 0: 4294967295 pages run past the end',
    },
    {
      what: 'a page beyond the guest',
      bytes: patched(A_BYTES, 80, u32(16)),
      code: 'out-of-range',
      offset: 80,
      says: 'record 1: page 16 is not in [0, 16)',
    },
    {
      what: 'a vCPU beyond the count',
      bytes: patched(A_BYTES, 72, u32(2)),
      code: 'out-of-range',
      offset: 72,
      says: 'record 1: vCPU 2 is not in [0, 2)',
    },
    {
      what: 'a time at the period',
      bytes: patched(A_BYTES, 64, u32(1000)),
      code: 'out-of-range',
      offset: 64,
      says: 'time 1000 ns is not below the period 1000 ns',
    },
    {
      what: 'records out of time order',
      bytes: patched(A_BYTES, 40, u32(600)),
      code: 'invalid-argument',
      offset: 64,
      says: "time 500 ns is before the previous record's 600 ns",
    },
    {
      what: 'trailing bytes',
      bytes: Uint8Array.of(...A_BYTES, 0, 0, 0, 0),
      code: 'invalid-argument',
      offset: 84,
      says: '4 trailing bytes after the last of 2 records',
    },
    {
      what: 'fewer records than the file holds',
      bytes: patched(A_BYTES, 32, u32(1)),
      code: 'invalid-argument',
      offset: 64,
      says: '20 trailing bytes after the last of 1 records',
    },
    {
      what: 'text: a page beyond the guest',
      bytes: new TextEncoder().encode(A_TEXT.replace('500 1 15', '500 1 16')),
      code: 'out-of-range',
      offset: 62,
      says: 'page 16 is not in [0, 16)',
    },
    {
      what: 'text: an unknown version',
      bytes: new TextEncoder().encode(A_TEXT.replace('trace 1', 'trace 3')),
      code: 'invalid-argument',
      offset: 17,
      says: 'unknown version 3',
    },
    {
      what: 'text: a missing page list',
      bytes: new TextEncoder().encode(A_TEXT.replace('0 0 1,2', '0 0')),
      code: 'invalid-argument',
      offset: 51,
      says: 'expected a page number',
    },
    {
      what: 'text: a stray character',
      bytes: new TextEncoder().encode(A_TEXT.replace('1,2', '1,2x')),
      code: 'invalid-argument',
      offset: 55,
      says: 'expected "timeNs vcpu page[,page…]"',
    },
    {
      what: 'text: records out of time order',
      bytes: new TextEncoder().encode(A_TEXT.replace('0 0 1,2', '600 0 1,2')),
      code: 'invalid-argument',
      offset: 58,
      says: "time 500 ns is before the previous record's 600 ns",
    },
  ];
  for (const c of cases) {
    it(`${c.what} → ${c.code} at byte ${c.offset}`, () => {
      const e = expectTraceError(() => parseTrace(c.bytes), c.code, c.offset);
      expect(e.message).toContain(c.says);
      expect(e.field).toBe('trace');
    });
  }

  it('property: any corruption of a valid trace parses or throws a TraceFormatError, never anything else', async () => {
    const valid = encodeTrace({
      pages: 300,
      vcpus: 3,
      periodNs: 5000,
      records: [
        { timeNs: 0, vcpu: 2, pages: [299, 0, 7] },
        { timeNs: 10, vcpu: 0, pages: [] },
        { timeNs: 4999, vcpu: 1, pages: [1, 2, 3, 4] },
      ],
    });
    await assertProperty(
      fc.property(
        fc.array(fc.record({ at: fc.nat({ max: valid.length - 1 }), value: fc.nat({ max: 255 }) }), {
          maxLength: 6,
        }),
        fc.nat({ max: valid.length }),
        (flips, cut) => {
          const bytes = valid.slice(0, cut === 0 ? valid.length : cut);
          for (const f of flips) if (f.at < bytes.length) bytes[f.at] = f.value;
          try {
            const t = parseTrace(bytes);
            for (const p of t.writes) expect(p).toBeLessThan(t.pages);
          } catch (error) {
            expect(error).toBeInstanceOf(TraceFormatError);
            expect((error as TraceFormatError).offset).toBeLessThanOrEqual(bytes.length);
          }
        },
      ),
      PROPERTY_RUNS * 20,
      { seed: PROPERTY_SEED },
    );
  });

  it('the writer refuses what the parser would refuse, naming the field', () => {
    const w = createTraceWriter({ pages: 16, vcpus: 2 });
    w.append(10, 0, [1]);
    expect(() => w.append(9, 0, [1])).toThrow(/time: 9 ns is not an integer >= the previous record's 10 ns/);
    expect(() => w.append(10, 2, [1])).toThrow(/vcpu: vCPU 2 is not in \[0, 2\)/);
    expect(() => w.append(10, 0, [1, 16])).toThrow(
      /page: page 16 \(write 1 of the record\) is not in \[0, 16\)/,
    );
    expect(() => w.finish(10)).toThrow(/period: 10 ns is not an integer above every record's time/);
    expect(w.finish(11).length).toBe(40 + 16 + 4);
    expect(() => w.append(20, 0, [1])).toThrow(/the writer has finished/);
    expect(() => createTraceWriter({ pages: 0, vcpus: 1 })).toThrow(
      /pages: 0 is not an integer in \[1, 2\^32\]/,
    );
  });
});

describe('trace replay', () => {
  // 10 pages, 2 vCPUs, 1 ms: vCPU 0 at 0 and 500 µs, vCPU 1 at 250 µs and 999 µs.
  const B = encodeTrace({
    pages: 10,
    vcpus: 2,
    periodNs: 1_000_000,
    records: [
      { timeNs: 0, vcpu: 0, pages: [1, 2] },
      { timeNs: 250_000, vcpu: 1, pages: [3] },
      { timeNs: 500_000, vcpu: 0, pages: [4, 5] },
      { timeNs: 999_999, vcpu: 1, pages: [6] },
    ],
  });
  const US = 1000;

  it('emits the recorded pages at their recorded times, one batch per vCPU per call, then goes idle', () => {
    const w = createTraceWorkload({ trace: B, pages: 10, vcpus: 2 });
    expect(w.kind).toBe('trace');
    expect(w.vcpus).toBe(2);
    expect(steps(w, 250 * US, 6)).toEqual([
      [{ vcpu: 0, slot: 0, offsets: [1, 2] }],
      [{ vcpu: 1, slot: 0, offsets: [3] }],
      [{ vcpu: 0, slot: 0, offsets: [4, 5] }],
      [{ vcpu: 1, slot: 0, offsets: [6] }],
      [],
      [],
    ]);
  });

  it('merges every record a call covers into one batch per vCPU, in time order', () => {
    const w = createTraceWorkload({ trace: B, pages: 10, vcpus: 3, slot: 7 });
    expect(collect(w, 5_000, 5_000 + NS_PER_MS)).toEqual([
      { vcpu: 0, slot: 7, offsets: [1, 2, 4, 5] },
      { vcpu: 1, slot: 7, offsets: [3, 6] },
    ]);
  });

  it('speed 0.5 replays the same writes at twice their recorded times', () => {
    const w = createTraceWorkload({ trace: B, pages: 10, vcpus: 2 });
    // Replay clock after each 250 µs call: 125, 250, 375, … µs.
    expect(steps(w, 250 * US, 9, 0.5)).toEqual([
      [{ vcpu: 0, slot: 0, offsets: [1, 2] }], // 0 ∈ [0, 125)
      [],
      [{ vcpu: 1, slot: 0, offsets: [3] }], // 250 ∈ [250, 375)
      [],
      [{ vcpu: 0, slot: 0, offsets: [4, 5] }], // 500 ∈ [500, 625)
      [],
      [],
      [{ vcpu: 1, slot: 0, offsets: [6] }], // 999.999 ∈ [875, 1000)
      [], // [1000, 1125): past the end of the trace
    ]);
    expect(collect(w, 0, 10 * NS_PER_MS, 0.5)).toEqual([]);
  });

  it('vCPU speeds apply on top of the global speed, per vCPU; speed 0 replays nothing', () => {
    const w = createTraceWorkload({ trace: B, pages: 10, vcpus: 2 });
    const speeds = Float64Array.of(1, 0.25);
    // vCPU 0 at full speed; vCPU 1 at a quarter, its replay clock at 125 µs per 500 µs call: its
    // 250 µs record comes in the call over [1, 1.5) ms, its 999.999 µs one in [3.5, 4) ms.
    const out = steps(w, 500 * US, 9, 1, speeds);
    expect(out).toEqual([
      [{ vcpu: 0, slot: 0, offsets: [1, 2] }],
      [{ vcpu: 0, slot: 0, offsets: [4, 5] }],
      [{ vcpu: 1, slot: 0, offsets: [3] }],
      [],
      [],
      [],
      [],
      [{ vcpu: 1, slot: 0, offsets: [6] }],
      [],
    ]);
    const still = createTraceWorkload({ trace: B, pages: 10, vcpus: 2 });
    expect(collect(still, 0, 10 * NS_PER_MS, 0)).toEqual([]);
    expect(collect(still, 0, 1, 1)).toEqual([{ vcpu: 0, slot: 0, offsets: [1, 2] }]);
    expect(() => collect(still, 0, 1, 1, Float64Array.of(1))).toThrow(/1 vCPU speeds for 2 vCPUs/);
    expect(() => collect(still, 1, 0)).toThrow(/need finite fromNs <= toNs/);
    expect(() => collect(still, 0, 1, 2)).toThrow(/speed in \[0, 1\]/);
  });

  it('loop: true repeats the trace with its period, also many times within one call', () => {
    const w = createTraceWorkload({ trace: B, pages: 10, vcpus: 2, loop: true });
    expect(steps(w, 500 * US, 4)).toEqual([
      [
        { vcpu: 0, slot: 0, offsets: [1, 2] },
        { vcpu: 1, slot: 0, offsets: [3] },
      ],
      [
        { vcpu: 0, slot: 0, offsets: [4, 5] },
        { vcpu: 1, slot: 0, offsets: [6] },
      ],
      [
        { vcpu: 0, slot: 0, offsets: [1, 2] },
        { vcpu: 1, slot: 0, offsets: [3] },
      ],
      [
        { vcpu: 0, slot: 0, offsets: [4, 5] },
        { vcpu: 1, slot: 0, offsets: [6] },
      ],
    ]);
    // 2.5 periods more: two whole passes, then the first half of a third.
    expect(collect(w, 0, 2.5 * NS_PER_MS)).toEqual([
      { vcpu: 0, slot: 0, offsets: [1, 2, 4, 5, 1, 2, 4, 5, 1, 2] },
      { vcpu: 1, slot: 0, offsets: [3, 6, 3, 6, 3] },
    ]);
  });

  it('a different guest size is rejected unless scale: true, which maps p to floor(p × pages / tracePages)', () => {
    expect(() => createTraceWorkload({ trace: B, pages: 5, vcpus: 2 })).toThrow(
      /scale: the trace was taken on a guest of 10 pages, this guest has 5 \(accepted: the same size, or scale: true\)/,
    );
    const w = createTraceWorkload({ trace: B, pages: 5, vcpus: 2, scale: true });
    expect(collect(w, 0, NS_PER_MS)).toEqual([
      { vcpu: 0, slot: 0, offsets: [0, 1, 2, 2] },
      { vcpu: 1, slot: 0, offsets: [1, 3] },
    ]);
    // 2^32 traced pages onto 2^32 − 1: the product passes 2^53 and stays exact.
    const huge = encodeTrace({
      pages: 2 ** 32,
      vcpus: 1,
      periodNs: 1,
      records: [{ timeNs: 0, vcpu: 0, pages: [0, 2 ** 31, 2 ** 32 - 1] }],
    });
    const h = createTraceWorkload({ trace: huge, pages: 2 ** 32 - 1, vcpus: 1, scale: true });
    expect(collect(h, 0, 1)).toEqual([{ vcpu: 0, slot: 0, offsets: [0, 2 ** 31 - 1, 2 ** 32 - 2] }]);
  });

  it('a trace of more vCPUs than the guest has is rejected, naming vcpus', () => {
    let caught: unknown;
    try {
      createTraceWorkload({ trace: B, pages: 10, vcpus: 1 });
    } catch (error) {
      caught = error;
    }
    expect(caught).toBeInstanceOf(DirtytrackError);
    expect((caught as DirtytrackError).field).toBe('vcpus');
    expect((caught as DirtytrackError).message).toBe(
      '[dirtytrack] [trace-workload] vcpus: the trace was taken on 2 vCPUs, this guest has 1 (accepted: at least 2)',
    );
  });

  it('recordTrace of a sweep, replayed in the same quanta, gives back the very same batches', () => {
    const make = () =>
      createSweepWorkload({ vcpus: 2, pages: 64, bytesPerSecond: 4096 * 3000, workingSet: 20 });
    const trace = recordTrace(make(), { pages: 64, durationNs: 10 * NS_PER_MS, quantumNs: 700 * US });
    const replay = createTraceWorkload({ trace, pages: 64, vcpus: 2 });
    const original = make();
    for (let t = 0; t < 10 * NS_PER_MS; t += 700 * US) {
      const to = Math.min(t + 700 * US, 10 * NS_PER_MS);
      expect(collect(replay, t, to)).toEqual(collect(original, t, to));
    }
    expect(collect(replay, 10 * NS_PER_MS, 20 * NS_PER_MS)).toEqual([]);
    expect(parseTrace(trace).periodNs).toBe(10 * NS_PER_MS);
  });
});

/** A tracker that traps every write and keeps `[vcpu, ...pages]` per batch. */
function recordingTracker(): Tracker & { batches: number[][] } {
  const batches: number[][] = [];
  return {
    kind: 'record',
    batches,
    attach(_sink: DirtySink) {},
    enableLogging: (slot) => slot.pages,
    disableLogging() {},
    write(vcpu, _slot, offsets, count) {
      batches.push([vcpu, ...offsets.subarray(0, count)]);
      return count;
    },
    rearm: () => 0,
    stats: () => ({ writes: 0, faults: 0, reported: 0, rearmed: 0 }),
  };
}

function runInEngine(workload: Workload, pages: number, stepNs: number, untilNs: number) {
  const tracker = recordingTracker();
  const memory = createModelMemory(pages, 0);
  const engine = createModelEngine({ clock: createVirtualClock(), workload, tracker, memory });
  for (let t = 0; t < untilNs;) {
    t = Math.min(t + stepNs, untilNs);
    engine.runGuestUntil(t);
  }
  return { dirty: [...memory.nonzero.setBits()], writes: engine.stats().writes, batches: tracker.batches };
}

describe('property: a recorded workload replays to the same dirty pages (seed printed on failure)', () => {
  it('uniform and hot-set, any vCPU count, rate, duration, recording quantum and replay step', async () => {
    await assertProperty(
      fc.property(
        fc.record({
          seed: fc.nat(),
          kind: fc.constantFrom('uniform', 'hotset'),
          vcpus: fc.integer({ min: 1, max: 4 }),
          pages: fc.integer({ min: 1, max: 5000 }),
          pagesPerSecond: fc.integer({ min: 0, max: 200_000 }),
          durationNs: fc.integer({ min: 1, max: 50 * NS_PER_MS }),
          quantumNs: fc.integer({ min: 1000, max: 10 * NS_PER_MS }),
          replayStepNs: fc.integer({ min: 1000, max: 20 * NS_PER_MS }),
        }),
        (c) => {
          const make = (): Workload => {
            const shape = { vcpus: c.vcpus, pages: c.pages, bytesPerSecond: c.pagesPerSecond * 4096 };
            return c.kind === 'uniform'
              ? createUniformWorkload({ ...shape, rng: createRng(c.seed) })
              : createHotSetWorkload({ ...shape, rng: createRng(c.seed) });
          };
          const original = runInEngine(make(), c.pages, c.quantumNs, c.durationNs);
          const trace = recordTrace(make(), {
            pages: c.pages,
            durationNs: c.durationNs,
            quantumNs: c.quantumNs,
          });
          const replay = () => createTraceWorkload({ trace, pages: c.pages, vcpus: c.vcpus });
          // Any replay step: the same dirty pages and the same number of writes over the same time.
          const stepped = runInEngine(replay(), c.pages, c.replayStepNs, c.durationNs);
          expect(stepped.dirty).toEqual(original.dirty);
          expect(stepped.writes).toBe(original.writes);
          // The recording's own quantum: the very same batches, in order.
          expect(runInEngine(replay(), c.pages, c.quantumNs, c.durationNs).batches).toEqual(original.batches);
        },
      ),
      PROPERTY_RUNS,
      { seed: PROPERTY_SEED },
    );
  });
});

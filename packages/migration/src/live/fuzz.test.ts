/**
 * Fuzzing the live plane's parsers (ARCHITECTURE §8 invariant 5: bad input never crashes a
 * process or corrupts memory). Part 1 feeds ≥ 100,000 random and mutated frames to the three
 * decoders, writing pages into a guard-banded buffer; part 2 sends ≥ 1,000 mutated connections
 * over loopback to one running destination, then a valid migration. fast-check prints the seed
 * of a failure; DIRTYTRACK_PROPERTY_SEED replays it, DIRTYTRACK_PROPERTY_RUNS (default 100)
 * scales both counts (runs / 100).
 */
import { randomBytes } from 'node:crypto';
import type { Socket } from 'node:net';
import { createRng, DirtytrackError, type Rng } from '@dirtytrack/core';
import fc from 'fast-check';
import { assertProperty } from '@dirtytrack/testkit';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { dialRaw, startHandSource } from './__fixtures__/hand-source.js';
import {
  concat,
  multifdPacket,
  PAGE,
  pageOf,
  pageRecord,
  returnLogger,
  syncPacket,
  zeroRecord,
} from './__fixtures__/wire-streams.js';
import { createDestination, type Destination, type DestinationResult } from './destination.js';
import { createRecordRam, type RecordRam } from './record-ram.js';
import { clientHandshake } from './handshake.js';
import {
  CHANNEL_KIND,
  createMainDecoder,
  createMultifdDecoder,
  createReturnDecoder,
  encodeCommand,
  encodeDiscard,
  encodeEof,
  encodeEos,
  encodeFlush,
  encodeHello,
  encodeMemSize,
  encodePing,
  encodeRecvBitmap,
  encodeReqPages,
  encodeReturnU32,
  encodeSection,
  encodeVcpuState,
  encodeGuestTrace,
  encodeVerifyEnd,
  encodeVerifyHashes,
  encodeVerifyResult,
  MIG_CMD,
  pageHashes,
  RP_MSG,
  VM_ITEM,
  WIRE_VERSION,
  type Hello,
  type StreamDecoder,
} from './wire.js';

const SEED = Number(process.env['DIRTYTRACK_PROPERTY_SEED'] ?? 20261125);
const RUNS = Number(process.env['DIRTYTRACK_PROPERTY_RUNS'] ?? 100);
const SCALE = Number.isFinite(RUNS) && RUNS > 100 ? RUNS / 100 : 1;
const FRAMES = Math.round(105_000 * SCALE);
const CONNECTIONS = Math.round(1_000 * SCALE);
const RAM = 8 * PAGE;
const GUARD = 2 * PAGE;

// ---------------------------------------------------------------------------------------------
// Valid frames to mutate
// ---------------------------------------------------------------------------------------------

const setup = concat([encodeSection(VM_ITEM.SECTION_START), encodeMemSize(RAM), encodeEos()]);
const memory = new SharedArrayBuffer(RAM);
new Uint8Array(memory).set(pageOf(4), 3 * PAGE);
const hashes = new Uint32Array(2 * (RAM / PAGE));
pageHashes(memory, 0, RAM / PAGE, hashes);

const MAIN_FRAMES: Uint8Array[] = [
  concat([setup, encodeSection(VM_ITEM.SECTION_PART), pageRecord(2 * PAGE, pageOf(1), false), encodeEos()]),
  concat([
    setup,
    encodeSection(VM_ITEM.SECTION_PART),
    zeroRecord(PAGE, false),
    zeroRecord(7 * PAGE),
    encodeFlush(),
    encodeEos(),
  ]),
  concat([
    setup,
    encodeSection(VM_ITEM.SECTION_END),
    pageRecord(7 * PAGE, pageOf(2)),
    encodeEos(),
    encodeEof(),
  ]),
  concat([setup, encodePing(5), encodeCommand(MIG_CMD.POSTCOPY_ADVISE, new Uint8Array(16))]),
  concat([
    setup,
    ...encodeDiscard([
      [0, PAGE],
      [2 * PAGE, 3 * PAGE],
    ]),
  ]),
  concat([setup, encodeVerifyHashes(0, hashes, 0, 8), encodeVerifyEnd(8), encodeEof()]),
  concat([
    setup,
    encodeVcpuState({
      program: { kind: 'hot-set', hotPages: 2, hotShare: 230, rate: 2000, seed: 1 },
      vcpus: [
        { rng: [1, 2, 3, 4], sweep: 9, traceWritten: 1, traceBeforeNs: 1e6, traceAfterNs: 2e6 },
        { rng: [5, 6, 7, 8], sweep: 0, traceWritten: 0, traceBeforeNs: 0, traceAfterNs: 0 },
      ],
    }),
    encodeEof(),
  ]),
  concat([
    setup,
    ...encodeGuestTrace({
      bytes: Uint8Array.from({ length: 70_000 }, (_, i) => i & 0xff),
      loop: true,
      scale: true,
    }),
    encodeEof(),
  ]),
  concat([
    setup,
    encodeCommand(MIG_CMD.RECV_BITMAP, new Uint8Array([6, ...new TextEncoder().encode('pc.ram')])),
  ]),
  concat([encodeSection(VM_ITEM.SECTION_START), encodeMemSize(RAM), zeroRecord(0), encodeEos()]),
];

const MULTIFD_FRAMES: Uint8Array[] = [
  multifdPacket(0, [1], [2], pageOf),
  concat([multifdPacket(0, [], [0, 5, 7], pageOf), syncPacket(1)]),
  syncPacket(3),
  concat([multifdPacket(4, [6, 7], [], pageOf), multifdPacket(9, [0], [1], pageOf)]),
];

const RETURN_FRAMES: Uint8Array[] = [
  encodeReturnU32(RP_MSG.SHUT, 1),
  encodeReturnU32(RP_MSG.PONG, 9),
  encodeReqPages(PAGE, 2 * PAGE),
  encodeRecvBitmap(new Uint8Array(8).fill(0xf0)),
  encodeReturnU32(RP_MSG.RESUME_ACK, 0),
  concat([
    encodeVerifyResult({ pages: 8, mismatched: 1, firstMismatch: 3 }),
    encodeReturnU32(RP_MSG.SHUT, 0),
  ]),
];

// ---------------------------------------------------------------------------------------------
// Mutations
// ---------------------------------------------------------------------------------------------

type Mutation =
  | { kind: 'flip'; at: number; bit: number }
  | { kind: 'byte'; at: number; value: number }
  | { kind: 'truncate'; at: number }
  | { kind: 'field'; at: number; width: 2 | 4 | 8; value: number }
  | { kind: 'insert'; at: number; bytes: Uint8Array }
  | { kind: 'repeat'; at: number; length: number };

/** Values a length, count or offset field is set to: huge, negative-looking, just past RAM. */
const NASTY = [
  0,
  1,
  0x7f,
  0x80,
  0xff,
  0xffff,
  0x7fffffff,
  0x80000000,
  0xffffffff,
  RAM,
  RAM - PAGE + 1,
  RAM + PAGE,
  2 ** 53 - 1,
  2 ** 53,
  2 ** 63,
];

const mutationArb: fc.Arbitrary<Mutation> = fc.oneof(
  fc.record({ kind: fc.constant('flip' as const), at: fc.nat(), bit: fc.integer({ min: 0, max: 7 }) }),
  fc.record({ kind: fc.constant('byte' as const), at: fc.nat(), value: fc.integer({ min: 0, max: 255 }) }),
  fc.record({ kind: fc.constant('truncate' as const), at: fc.nat() }),
  fc.record({
    kind: fc.constant('field' as const),
    at: fc.nat(),
    width: fc.constantFrom(2 as const, 4 as const, 8 as const),
    value: fc.constantFrom(...NASTY),
  }),
  fc.record({ kind: fc.constant('insert' as const), at: fc.nat(), bytes: fc.uint8Array({ maxLength: 24 }) }),
  fc.record({
    kind: fc.constant('repeat' as const),
    at: fc.nat(),
    length: fc.integer({ min: 1, max: 2000 }),
  }),
);

function mutate(frame: Uint8Array, mutations: readonly Mutation[]): Uint8Array {
  let b: Uint8Array = frame.slice();
  for (const m of mutations) {
    if (b.length === 0) break;
    const at = m.at % b.length;
    switch (m.kind) {
      case 'flip':
        b[at] = (b[at] as number) ^ (1 << m.bit);
        break;
      case 'byte':
        b[at] = m.value;
        break;
      case 'truncate':
        b = b.slice(0, at);
        break;
      case 'field': {
        const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
        const pos = Math.min(at - (at % m.width), b.length - m.width);
        if (pos < 0) break;
        if (m.width === 2) dv.setUint16(pos, m.value & 0xffff);
        else if (m.width === 4) dv.setUint32(pos, m.value >>> 0);
        else dv.setBigUint64(pos, BigInt.asUintN(64, BigInt(m.value)));
        break;
      }
      case 'insert':
        b = concat([b.subarray(0, at), m.bytes, b.subarray(at)]);
        break;
      case 'repeat':
        b = concat([b.subarray(0, at), b.subarray(at, at + m.length), b.subarray(at)]);
        break;
    }
  }
  return b;
}

/**
 * The hot loop's generator: fast-check draws one 32-bit case seed (printed, with the run's seed,
 * on failure) and a seeded Rng turns it into the frame — far cheaper per case than composing
 * arbitraries, which is what lets 10^5 frames run in seconds.
 */
function randomMutation(rng: Rng): Mutation {
  const at = rng.nextU32();
  switch (rng.nextInt(6)) {
    case 0:
      return { kind: 'flip', at, bit: rng.nextInt(8) };
    case 1:
      return { kind: 'byte', at, value: rng.nextInt(256) };
    case 2:
      return { kind: 'truncate', at };
    case 3:
      return {
        kind: 'field',
        at,
        width: ([2, 4, 8] as const)[rng.nextInt(3)] as 2 | 4 | 8,
        value: NASTY[rng.nextInt(NASTY.length)] as number,
      };
    case 4: {
      const bytes = new Uint8Array(rng.nextInt(25));
      for (let i = 0; i < bytes.length; i++) bytes[i] = rng.nextInt(256);
      return { kind: 'insert', at, bytes };
    }
    default:
      return { kind: 'repeat', at, length: 1 + rng.nextInt(2000) };
  }
}

function frameFromSeed(frames: readonly Uint8Array[], caseSeed: number): Uint8Array {
  const rng = createRng(caseSeed);
  if (rng.nextInt(10) === 0) {
    const bytes = new Uint8Array(rng.nextInt(1500));
    for (let i = 0; i < bytes.length; i++) bytes[i] = rng.nextInt(256);
    return bytes;
  }
  const frame = frames[rng.nextInt(frames.length)] as Uint8Array;
  const ms: Mutation[] = [];
  for (let n = 1 + rng.nextInt(4); n > 0; n--) ms.push(randomMutation(rng));
  return mutate(frame, ms);
}

const frameArb = (frames: readonly Uint8Array[]): fc.Arbitrary<Uint8Array> =>
  fc.oneof(
    {
      weight: 9,
      arbitrary: fc
        .tuple(fc.nat(frames.length - 1), fc.array(mutationArb, { minLength: 1, maxLength: 4 }))
        .map(([i, ms]) => mutate(frames[i] as Uint8Array, ms)),
    },
    { weight: 1, arbitrary: fc.uint8Array({ maxLength: 1500 }) },
  );

// ---------------------------------------------------------------------------------------------
// Part 1: decoders
// ---------------------------------------------------------------------------------------------

/** RAM inside guard bands; handlers write through the whole buffer so a bad offset lands in a guard. */
const whole = new Uint8Array(GUARD + RAM + GUARD);
const GUARD_BYTE = 0xa5;
whole.fill(GUARD_BYTE);
const guardWords = new Uint32Array(whole.buffer);
const GUARD_WORD = 0xa5a5a5a5;

function write(offset: number, data: Uint8Array | null): void {
  if (!Number.isInteger(offset) || offset % PAGE !== 0) throw new Error(`handler got offset ${offset}`);
  if (data !== null && data.length !== PAGE) throw new Error(`handler got ${data.length} bytes of page`);
  // Deliberately unchecked: an offset outside RAM writes into a guard band (or past the buffer).
  if (data === null) whole.fill(0, GUARD + offset, GUARD + offset + PAGE);
  else whole.set(data, GUARD + offset);
}

function guardsIntact(): boolean {
  const g = GUARD / 4;
  for (let i = 0; i < g; i++) if (guardWords[i] !== GUARD_WORD) return false;
  for (let i = (GUARD + RAM) / 4; i < guardWords.length; i++) if (guardWords[i] !== GUARD_WORD) return false;
  return true;
}

/** Feeds `bytes` in `cuts`-sized chunks; returns 'ok' or the protocol error. Anything else throws. */
function feed(
  decoder: StreamDecoder & { paused?: boolean; resume?: () => void },
  bytes: Uint8Array,
  cuts: readonly number[],
): string {
  try {
    let at = 0;
    for (const c of [...cuts, bytes.length]) {
      const next = Math.min(bytes.length, at + c);
      decoder.push(bytes.subarray(at, next));
      at = next;
      if (decoder.paused === true) decoder.resume?.();
    }
    decoder.end();
    return 'ok';
  } catch (error) {
    if (error instanceof DirtytrackError && error.code === 'protocol') {
      if (!/^\[dirtytrack\] \[wire\] .+ at byte \d+: /.test(error.message))
        throw new Error(`bad message: ${error.message}`);
      return 'protocol';
    }
    throw error;
  }
}

describe(`fuzz: ${FRAMES} random and mutated frames to the decoders`, () => {
  const counts = { ok: 0, protocol: 0 };
  const log: string[] = [];

  const started = performance.now();
  // Handlers that only write (no logging): the per-frame cost is the decoder's.
  const noop = (): void => {};
  const sinks = {
    main: () => {
      let flushes = 0;
      return createMainDecoder({
        ramBytes: RAM,
        onPage: write,
        onZero: (o) => write(o, null),
        onFlush: () => ++flushes % 2 === 0, // pause at every other flush (resumed by feed)
        onSection: noop,
        onEos: noop,
        onMemSize: noop,
        onCommand: noop,
        onEof: noop,
      });
    },
    multifd: () =>
      createMultifdDecoder({
        ramBytes: RAM,
        onPacket: noop,
        onPage: write,
        onZero: (o) => write(o, null),
        onSync: noop,
      }),
    return: () => createReturnDecoder(returnLogger(log, RAM)),
  };
  // Protocol errors are the common case here; V8's stack capture would dominate the run time.
  let stackTraceLimit = Error.stackTraceLimit;
  beforeAll(() => {
    stackTraceLimit = Error.stackTraceLimit;
    Error.stackTraceLimit = 0;
  });
  const plans = [
    ['main', MAIN_FRAMES, 0.4],
    ['multifd', MULTIFD_FRAMES, 0.35],
    ['return', RETURN_FRAMES, 0.25],
  ] as const;
  for (const [name, frames, share] of plans) {
    it(`${name} decoder: parses or throws a protocol error, never writes outside RAM`, async () => {
      const make = sinks[name];
      // In chunks of 5,000 frames, each on a seed of its own, so a long run lets vitest's worker
      // answer in between (see assertProperty).
      await assertProperty(
        fc.property(fc.integer({ min: 0, max: 0xffffffff }), (caseSeed) => {
          log.length = 0;
          const bytes = frameFromSeed(frames, caseSeed);
          const cuts = [caseSeed % 5000, (caseSeed >>> 13) % 5000];
          counts[feed(make(), bytes, cuts) as 'ok' | 'protocol']++;
          if (!guardsIntact()) throw new Error('a guard band around RAM was overwritten');
        }),
        5_000,
        { seed: SEED },
        Math.round(FRAMES * share),
      );
    });
  }
  afterAll(() => {
    Error.stackTraceLimit = stackTraceLimit;
    const total = counts.ok + counts.protocol;
    const seconds = (performance.now() - started) / 1000;
    // The report's figure: frames, outcome split and wall time.
    console.info(
      `[fuzz] ${total} frames to the decoders in ${seconds.toFixed(1)} s: ${counts.ok} parsed, ${counts.protocol} protocol errors`,
    );
    expect(total).toBeGreaterThanOrEqual(FRAMES - 2);
    expect(counts.protocol).toBeGreaterThan(total / 4);
  });
});

describe('fuzz: a record RAM under the main decoder, against the decoded path (differential)', () => {
  // A run of whole PAGE|CONTINUE records (the part WebAssembly takes), then the frames above.
  const RUN_FRAME = concat([
    setup,
    encodeSection(VM_ITEM.SECTION_PART),
    pageRecord(0, pageOf(1), false),
    pageRecord(PAGE, pageOf(2)),
    pageRecord(5 * PAGE, pageOf(3)),
    zeroRecord(2 * PAGE),
    pageRecord(7 * PAGE, pageOf(4)),
    pageRecord(6 * PAGE, pageOf(5)),
    encodeEos(),
  ]);
  const frames = [RUN_FRAME, RUN_FRAME, ...MAIN_FRAMES];
  const ram = createRecordRam(RAM) as RecordRam;
  const viaWasm = new Uint8Array(ram.memory, 0, RAM);
  const decoded = new Uint8Array(RAM);
  const decoder = (into: Uint8Array, onPageRun?: RecordRam['placePages']) =>
    createMainDecoder({
      ramBytes: RAM,
      onPage: (o, data) => into.set(data, o),
      onZero: (o) => into.fill(0, o, o + PAGE),
      onPageRun,
      onFlush: () => true,
      onSection: () => {},
      onEos: () => {},
      onMemSize: () => {},
      onCommand: () => {},
      onEof: () => {},
    });
  /** `feed`, but each chunk copied into the record RAM's read buffer first, as a read puts it. */
  const viaReadBuffer = (bytes: Uint8Array): Uint8Array => {
    ram.readBuffer.set(bytes);
    return ram.readBuffer.subarray(0, bytes.length);
  };
  const outcome = (
    d: ReturnType<typeof decoder>,
    bytes: Uint8Array,
    cuts: readonly number[],
    copy: boolean,
  ) => {
    try {
      let at = 0;
      for (const c of [...cuts, bytes.length]) {
        const next = Math.min(bytes.length, at + c);
        d.push(copy ? viaReadBuffer(bytes.subarray(at, next)) : bytes.subarray(at, next), copy);
        at = next;
      }
      d.end();
      return 'ok';
    } catch (error) {
      if (error instanceof DirtytrackError && error.code === 'protocol') return error.message;
      throw error;
    }
  };

  it('every frame: the same outcome, the same error byte for byte, the same RAM', async () => {
    const placedBefore = ram.placed();
    await assertProperty(
      fc.property(fc.integer({ min: 0, max: 0xffffffff }), (caseSeed) => {
        const bytes = frameFromSeed(frames, caseSeed);
        const cuts = [caseSeed % 9000, (caseSeed >>> 13) % 9000];
        viaWasm.fill(0);
        decoded.fill(0);
        const a = outcome(decoder(viaWasm, ram.placePages), bytes, cuts, true);
        const b = outcome(decoder(decoded), bytes, cuts, false);
        expect(a).toBe(b);
        expect(Buffer.compare(viaWasm, decoded)).toBe(0);
      }),
      5_000,
      { seed: SEED },
      20_000,
    );
    // WebAssembly did take pages (each run frame's whole records after its first).
    expect(ram.placed() - placedBefore).toBeGreaterThan(1000);
  });
});

// ---------------------------------------------------------------------------------------------
// Part 2: mutated connections to a running destination
// ---------------------------------------------------------------------------------------------

describe(`fuzz: ${CONNECTIONS} mutated connections to one destination`, () => {
  const TOKEN = 'fuzz-token';
  const results: DestinationResult[] = [];
  let d: Destination;
  beforeAll(async () => {
    d = await createDestination({
      once: false,
      token: TOKEN,
      timeoutMs: 5000,
      onResult: (r) => results.push(r),
    });
  });
  afterAll(async () => {
    await d.close();
  });

  const hello = (over: Partial<Hello> = {}): Hello => ({
    version: WIRE_VERSION,
    kind: CHANNEL_KIND.MAIN,
    channel: 0,
    migrationId: new Uint8Array(randomBytes(16)),
    ramBytes: RAM,
    pageSize: PAGE,
    channels: 0,
    flags: 0,
    nonce: new Uint8Array(randomBytes(16)),
    ...over,
  });

  /** Writes `bytes`, half-closes, and waits until the destination has closed the connection. */
  const sendAndWait = (socket: Socket, bytes: Uint8Array): Promise<void> =>
    new Promise<void>((resolve) => {
      if (socket.destroyed) {
        resolve();
        return;
      }
      socket.once('close', () => resolve());
      socket.resume();
      socket.end(bytes);
    });

  type Scenario =
    | { kind: 'hello'; bytes: Uint8Array }
    | { kind: 'main'; bytes: Uint8Array }
    | { kind: 'channel'; bytes: Uint8Array };

  const scenarioArb: fc.Arbitrary<Scenario> = fc.oneof(
    fc
      .tuple(
        fc.array(mutationArb, { minLength: 1, maxLength: 3 }),
        fc.uint8Array({ minLength: 0, maxLength: 40 }),
      )
      .map(([ms, tail]) => ({
        kind: 'hello' as const,
        bytes: concat([mutate(encodeHello(hello()), ms), tail]),
      })),
    frameArb(MAIN_FRAMES).map((bytes) => ({ kind: 'main' as const, bytes })),
    frameArb(MULTIFD_FRAMES).map((bytes) => ({ kind: 'channel' as const, bytes })),
  );

  it('each bad connection ends cleanly, the destination stays up, and a valid migration still completes', async () => {
    const started = performance.now();
    let handshakeRefused = 0;
    const samples = fc.sample(scenarioArb, { numRuns: CONNECTIONS, seed: SEED });
    const describeCase = (i: number, sc: Scenario, error: unknown): Error =>
      new Error(
        `connection ${i} (${sc.kind}, seed ${SEED}, bytes ${Buffer.from(sc.bytes).toString('hex').slice(0, 200)}): ${String(error)}`,
        { cause: error },
      );
    // Raw HELLOs never become migrations, so they run 4 at a time beside the migrations, which the
    // destination takes one at a time.
    const hellos = [...samples.entries()].filter(([, sc]) => sc.kind === 'hello');
    const helloLane = async (): Promise<void> => {
      for (let next = hellos.shift(); next !== undefined; next = hellos.shift()) {
        const [i, sc] = next;
        try {
          await sendAndWait(await dialRaw(d.port), sc.bytes);
          handshakeRefused++;
        } catch (error) {
          throw describeCase(i, sc, error);
        }
      }
    };
    const migrationLane = async (): Promise<void> => {
      for (const [i, sc] of samples.entries()) {
        if (sc.kind === 'hello') continue;
        try {
          const before = results.length;
          const s = await startHandSource(d.port, {
            ramBytes: RAM,
            channels: sc.kind === 'channel' ? 1 : 0,
            token: TOKEN,
          });
          if (sc.kind === 'main') {
            await sendAndWait(s.main, sc.bytes);
          } else {
            const channel = s.channels[0] as Socket;
            const mainDone = sendAndWait(
              s.main,
              concat([setup, encodeSection(VM_ITEM.SECTION_END), encodeFlush(), encodeEos(), encodeEof()]),
            );
            await sendAndWait(channel, sc.bytes);
            await mainDone;
          }
          // One result per migration, and it is completed or a typed failure.
          while (results.length === before) await new Promise((r) => setImmediate(r));
          const r = results.at(-1) as DestinationResult;
          if (r.status === 'failed') expect(['protocol', 'unsupported']).toContain(r.error?.code);
        } catch (error) {
          throw describeCase(i, sc, error);
        }
      }
    };
    await Promise.all([migrationLane(), helloLane(), helloLane(), helloLane(), helloLane()]);
    const failed = results.filter((r) => r.status === 'failed').length;
    console.info(
      `[fuzz] ${CONNECTIONS} connections in ${((performance.now() - started) / 1000).toFixed(1)} s: ` +
        `${handshakeRefused} raw HELLOs, ${results.length} migrations (${failed} failed cleanly)`,
    );
    expect(results.length + handshakeRefused).toBe(CONNECTIONS);

    // Still up: a valid migration completes and verifies.
    const before = results.length;
    const s = await startHandSource(d.port, { ramBytes: RAM, token: TOKEN });
    const src = new SharedArrayBuffer(RAM);
    new Uint8Array(src).set(pageOf(4), 3 * PAGE);
    const h = new Uint32Array(2 * (RAM / PAGE));
    pageHashes(src, 0, RAM / PAGE, h);
    await s.write(
      s.main,
      concat([
        setup,
        encodeSection(VM_ITEM.SECTION_END),
        ...Array.from({ length: RAM / PAGE }, (_, p) =>
          p === 3 ? pageRecord(p * PAGE, pageOf(4)) : zeroRecord(p * PAGE),
        ),
        encodeEos(),
        encodeVerifyHashes(0, h, 0, RAM / PAGE),
        encodeVerifyEnd(RAM / PAGE),
        encodeEof(),
      ]),
    );
    await s.closed;
    while (results.length === before) await new Promise((r) => setImmediate(r));
    const r = results.at(-1) as DestinationResult;
    expect(r.status).toBe('completed');
    expect(r.verified).toBe(true);
    expect(Buffer.compare(new Uint8Array(r.memory as SharedArrayBuffer), new Uint8Array(src))).toBe(0);
    // The handshake still refuses a wrong token.
    await expect(clientHandshake(await dialRaw(d.port), hello(), { token: 'nope' })).rejects.toThrow(
      /RESULT code 2/,
    );
  });
});

import { createRng, DirtytrackError } from '@dirtytrack/core';
import { afterEach, describe, expect, it } from 'vitest';
import { startHandSource, type HandSource } from './__fixtures__/hand-source.js';
import {
  concat,
  multifdPacket,
  PAGE,
  pageRecord,
  syncPacket,
  zeroRecord,
} from './__fixtures__/wire-streams.js';
import { createDestination, type Destination, type DestinationResult } from './destination.js';
import { createRecordRam, type RecordRam } from './record-ram.js';
import { loadLibc } from './libc.js';
import { MAIN_READ_BATCH_BYTES } from './read-buffer.js';
import {
  encodeCommand,
  encodeDiscard,
  encodeEof,
  encodeEos,
  encodeFlush,
  encodeGuestTrace,
  encodeMemSize,
  encodePing,
  encodeSection,
  encodeVerifyEnd,
  encodeVerifyHashes,
  HELLO_FLAG,
  MIG_CMD,
  pageHashes,
  VM_ITEM,
} from './wire.js';

const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

async function destination(options: Parameters<typeof createDestination>[0] = {}): Promise<Destination> {
  const d = await createDestination({ timeoutMs: 5000, ...options });
  cleanups.push(() => d.close());
  return d;
}

async function source(d: Destination, ramBytes: number, channels = 0, flags = 0): Promise<HandSource> {
  const s = await startHandSource(d.port, { ramBytes, channels, flags });
  cleanups.push(() => s.destroy());
  return s;
}

const setup = (ramBytes: number): Uint8Array =>
  concat([encodeSection(VM_ITEM.SECTION_START), encodeMemSize(ramBytes), encodeEos()]);

/** VERIFY_HASHES for every page of `memory` (16 pages per command) and VERIFY_END. */
function verifyAll(memory: SharedArrayBuffer): Uint8Array {
  const pages = memory.byteLength / PAGE;
  const hashes = new Uint32Array(2 * pages);
  pageHashes(memory, 0, pages, hashes);
  const parts: Uint8Array[] = [];
  for (let p = 0; p < pages; p += 16) parts.push(encodeVerifyHashes(p, hashes, p, Math.min(16, pages - p)));
  parts.push(encodeVerifyEnd(pages));
  return concat(parts);
}

const isZero = (page: Uint8Array): boolean => page.every((b) => b === 0);

describe('destination end to end (hand-driven source on loopback)', () => {
  it('precopy over the main stream and 2 multifd channels: memory equal, counts exact, verified', async () => {
    const pages = 300;
    const ram = pages * PAGE;
    const src = new SharedArrayBuffer(ram);
    const mem = new Uint8Array(src);
    const rng = createRng(7);
    const fill = (p: number): void => {
      if (rng.nextFloat() < 0.25) mem.fill(0, p * PAGE, (p + 1) * PAGE);
      else for (let i = 0; i < PAGE; i += 64) mem[p * PAGE + i] = 1 + Math.floor(rng.nextFloat() * 255);
    };
    for (let p = 0; p < pages; p++) fill(p);
    const dstMemory = new SharedArrayBuffer(ram);
    const progress: number[] = [];
    const d = await destination({ memory: dstMemory, onProgress: (p) => progress.push(p.pages) });
    const s = await source(d, ram, 2);
    const [c0, c1] = s.channels as [typeof s.main, typeof s.main];
    const data = (p: number): Uint8Array => mem.slice(p * PAGE, (p + 1) * PAGE);
    let normal = 0;
    let zero = 0;
    let packets = 0;
    const packetNums: [number, number] = [0, 0];
    /** Sends `list` over channel `c` in packets of ≤ 128 slots, zero pages as zero slots. */
    const sendPages = async (c: 0 | 1, list: number[]): Promise<void> => {
      for (let i = 0; i < list.length; i += 128) {
        const batch = list.slice(i, i + 128);
        const n = batch.filter((p) => !isZero(data(p)));
        const z = batch.filter((p) => isZero(data(p)));
        normal += n.length;
        zero += z.length;
        packets++;
        await s.write(c === 0 ? c0 : c1, multifdPacket(packetNums[c]++, n, z, data));
      }
    };
    const sync = async (): Promise<void> => {
      packets += 2;
      await s.write(c0, syncPacket(packetNums[0]++));
      await s.write(c1, syncPacket(packetNums[1]++));
    };
    // Setup: MEM_SIZE, then a sync + flush as QEMU does at setup.
    await sync();
    await s.write(
      s.main,
      concat([setup(ram), encodeSection(VM_ITEM.SECTION_PART), encodeFlush(), encodeEos()]),
    );
    // Round 1: every page, alternately on the two channels.
    const all = Array.from({ length: pages }, (_, p) => p);
    await sendPages(
      0,
      all.filter((p) => p % 2 === 0),
    );
    await sendPages(
      1,
      all.filter((p) => p % 2 === 1),
    );
    await sync();
    await s.write(s.main, concat([encodeSection(VM_ITEM.SECTION_PART), encodeFlush(), encodeEos()]));
    // Round 2: the guest rewrote 40 pages; they go on the other channel than before.
    const dirty = all.filter((p) => p % 7 === 3).slice(0, 40);
    for (const p of dirty) fill(p);
    await sendPages(
      0,
      dirty.filter((p) => p % 2 === 1),
    );
    await sendPages(
      1,
      dirty.filter((p) => p % 2 === 0),
    );
    await sync();
    // Stop-and-copy: 5 more pages rewritten, sent on the main stream itself.
    const last = [1, 2, 3, 200, 299];
    for (const p of last) fill(p);
    const records = last.map((p) =>
      isZero(data(p)) ? (zero++, zeroRecord(p * PAGE)) : (normal++, pageRecord(p * PAGE, data(p))),
    );
    await s.write(
      s.main,
      concat([encodeSection(VM_ITEM.SECTION_END), encodeFlush(), ...records, encodeEos()]),
    );
    await s.write(s.main, encodePing(42));
    expect(await s.waitFor(/^pong/)).toBe('pong 42');
    await s.write(s.main, verifyAll(src));
    expect(await s.waitFor(/^verify/)).toBe(`verify ${pages} 0 -1`);
    await s.write(s.main, encodeEof());
    await s.closed;
    const r = await d.result;
    expect(s.log.at(-1)).toBe('shut 0');
    expect(Buffer.compare(new Uint8Array(dstMemory), mem)).toBe(0);
    expect(r).toEqual<DestinationResult>({
      status: 'completed',
      'ram-bytes': ram,
      memory: dstMemory,
      normal,
      duplicate: zero,
      'multifd-packets': packets,
      'bytes-received':
        s.written.main + (s.written.channels[0] as number) + (s.written.channels[1] as number) + 3 * 96,
      'main-bytes': s.written.main,
      'main-reads': r['main-reads'],
      'main-read-batch': 0, // multifd: the main connection carries commands, read as they come
      'multifd-bytes': (s.written.channels[0] as number) + (s.written.channels[1] as number),
      // How much went straight into memory depends on where the reads split the packets.
      'in-place-bytes': r['in-place-bytes'],
      verified: true,
      'verify-mismatches': 0,
      'total-time': r['total-time'],
    });
    expect(r['in-place-bytes']).toBeLessThanOrEqual(normal * PAGE);
    expect(normal + zero).toBe(pages + dirty.length + last.length);
    expect(r['total-time']).toBeGreaterThan(0);
    expect(progress.at(-1)).toBe(normal + zero);
  });

  it('onMigrationStart: once per migration, after its HELLO, with its memory, RAM size, channels and postcopy', async () => {
    const starts: unknown[] = [];
    const memory = new SharedArrayBuffer(4 * PAGE);
    const d = await destination({ memory, onMigrationStart: (s) => starts.push(s) });
    const s = await source(d, 4 * PAGE, 2, HELLO_FLAG.POSTCOPY);
    expect(starts).toEqual([{ memory, ramBytes: 4 * PAGE, channels: 2, postcopy: true }]);
    s.destroy();
    await d.result;
    expect(starts).toHaveLength(1);
  });

  it('MULTIFD_FLUSH ordering: a round-1 copy arriving late on channel 0 never overwrites the round-2 copy from channel 1', async () => {
    const ram = 4 * PAGE;
    const old = new Uint8Array(PAGE).fill(0xaa);
    const fresh = new Uint8Array(PAGE).fill(0xbb);
    const dstMemory = new SharedArrayBuffer(ram);
    const dst = new Uint8Array(dstMemory);
    const d = await destination({ memory: dstMemory });
    const s = await source(d, ram, 2);
    const [c0, c1] = s.channels as [typeof s.main, typeof s.main];
    // Round 1: page 1 (old) on channel 0. Round 2: page 1 (fresh) on channel 1.
    await s.write(
      s.main,
      concat([setup(ram), encodeSection(VM_ITEM.SECTION_PART), encodeFlush(), encodeEos()]),
    );
    await s.write(s.main, concat([encodeSection(VM_ITEM.SECTION_PART), encodeFlush(), encodeEos()]));
    // Channel 1 delivers everything first: its SYNC for round 1, the fresh copy, its SYNC for round 2.
    await s.write(c1, concat([syncPacket(0), multifdPacket(1, [1], [], () => fresh), syncPacket(2)]));
    await new Promise((r) => setTimeout(r, 100));
    expect(isZero(dst.subarray(PAGE, 2 * PAGE))).toBe(true); // channel 1 waits at its SYNC
    // Channel 0 is late with the old copy of round 1.
    await s.write(c0, concat([multifdPacket(0, [1], [], () => old), syncPacket(1)]));
    await new Promise((r) => setTimeout(r, 100));
    // Round 1 is complete (both SYNCs in), so channel 1's round-2 copy went in after the old one.
    expect(dst.subarray(PAGE, 2 * PAGE)).toEqual(fresh);
    await s.write(c0, syncPacket(2));
    const expected = new SharedArrayBuffer(ram);
    new Uint8Array(expected).set(fresh, PAGE);
    await s.write(s.main, concat([verifyAll(expected), encodeEof()]));
    const r = await d.result;
    expect(r.status).toBe('completed');
    expect(dst.subarray(PAGE, 2 * PAGE)).toEqual(fresh);
    expect(r.verified).toBe(true);
    expect(r.normal).toBe(2);
    expect(r['multifd-packets']).toBe(6);
  });

  it('a source that half-closes right after EOF while the main stream waits for a SYNC still completes and reads SHUT', async () => {
    const ram = 4 * PAGE;
    const d = await destination();
    const s = await source(d, ram, 1);
    const c0 = s.channels[0] as HandSource['main'];
    await s.write(
      s.main,
      concat([setup(ram), encodeSection(VM_ITEM.SECTION_END), encodeFlush(), encodeEos(), encodeEof()]),
    );
    s.main.end();
    await new Promise((r) => setTimeout(r, 50));
    await s.write(c0, concat([multifdPacket(0, [2], [], () => new Uint8Array(PAGE).fill(5)), syncPacket(1)]));
    c0.end();
    const r = await d.result;
    expect(r.status).toBe('completed');
    expect(r.normal).toBe(1);
    await s.closed;
    expect(s.log).toEqual(['shut 0']);
  });

  it('verification counts mismatches and never claims verified for a partial check', async () => {
    const ram = 8 * PAGE;
    const d = await destination();
    const s = await source(d, ram);
    const claimed = new SharedArrayBuffer(ram);
    new Uint8Array(claimed).fill(1, 2 * PAGE, 3 * PAGE);
    const hashes = new Uint32Array(16);
    pageHashes(claimed, 0, 8, hashes);
    await s.write(s.main, concat([setup(ram), encodeVerifyHashes(0, hashes, 0, 5), encodeVerifyEnd(5)]));
    expect(await s.waitFor(/^verify/)).toBe('verify 5 1 2');
    await s.write(s.main, encodeEof());
    const r = await d.result;
    expect(r.status).toBe('completed');
    expect(r.verified).toBe(false);
    expect(r['verify-mismatches']).toBe(1);
  });
});

describe('destination: the guest’s trace (GUEST_TRACE)', () => {
  const ram = 4 * PAGE;
  const trace = Uint8Array.from({ length: 150_000 }, (_, i) => (i * 7) & 0xff); // 3 chunks

  it('chunks in order make the trace the result (and onPostcopyRun) reports, byte for byte', async () => {
    const d = await destination();
    const s = await source(d, ram);
    const zeros = Array.from({ length: 4 }, (_, p) => zeroRecord(p * PAGE, p > 0));
    const memory = new SharedArrayBuffer(ram);
    await s.write(
      s.main,
      concat([
        setup(ram),
        ...encodeGuestTrace({ bytes: trace, loop: false, scale: true }),
        encodeSection(VM_ITEM.SECTION_PART),
        ...zeros,
        encodeEos(),
        verifyAll(memory),
        encodeEof(),
      ]),
    );
    const r = await d.result;
    expect(r.status).toBe('completed');
    expect(r.verified).toBe(true);
    expect(r['guest-trace']).toEqual({ bytes: 150_000, loop: false, scale: true });
    expect(r.guestTrace?.loop).toBe(false);
    expect(r.guestTrace?.scale).toBe(true);
    expect(Buffer.from(r.guestTrace?.bytes ?? []).equals(trace)).toBe(true);
  });

  it.each([
    [
      'a chunk out of order',
      () => {
        const [a, , c] = encodeGuestTrace({ bytes: trace, loop: true, scale: false });
        return concat([a as Uint8Array, c as Uint8Array]);
      },
      '[dirtytrack] [destination] GUEST_TRACE: bytes from 131050 of a 150000-byte trace, after 65525 of 150000',
    ],
    [
      'a trace cut short before EOF',
      () =>
        concat([...encodeGuestTrace({ bytes: trace, loop: true, scale: false }).slice(0, 2), encodeEof()]),
      "[dirtytrack] [destination] GUEST_TRACE: 131050 of the trace's 150000 bytes came before EOF",
    ],
  ])('%s fails the migration with a protocol error', async (_name, stream, message) => {
    const d = await destination();
    const s = await source(d, ram);
    await s.write(s.main, concat([setup(ram), stream()]));
    const r = await d.result;
    expect(r.status).toBe('failed');
    expect(r.error).toEqual({ code: 'protocol', message });
    expect(r['guest-trace']).toBeUndefined();
    expect(r.guestTrace).toBeUndefined();
  });
});

describe('destination failures are clean', () => {
  it('an address it cannot listen on: a typed error naming the field and the errno, nothing left listening', async () => {
    const first = await destination();
    const error = await createDestination({ port: first.port }).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(error).toBeInstanceOf(DirtytrackError);
    expect(error).toMatchObject({
      code: 'invalid-argument',
      component: 'destination',
      field: 'listen',
      errno: 'EADDRINUSE',
      message: `[dirtytrack] [destination] listen: cannot listen on 127.0.0.1:${first.port}: the port is already in use (EADDRINUSE)`,
    });
    expect((error as Error).cause).toMatchObject({ code: 'EADDRINUSE' });
  });

  it('a protocol error: SHUT 1 on the return path, sockets closed, result failed with the typed error', async () => {
    const ram = 8 * PAGE;
    const d = await destination();
    const s = await source(d, ram, 1);
    await s.write(
      s.main,
      concat([setup(ram), encodeSection(VM_ITEM.SECTION_PART), pageRecord(ram, new Uint8Array(PAGE))]),
    );
    await s.closed;
    const r = await d.result;
    expect(s.log).toEqual(['shut 1']);
    expect(r.status).toBe('failed');
    expect(r.error).toEqual({
      code: 'protocol',
      message: '[dirtytrack] [wire] RAM record at byte 41: page offset 32768 outside RAM (32768 bytes)',
    });
    expect(r.verified).toBe(false);
    await new Promise<void>((resolve) =>
      s.channels[0]?.destroyed ? resolve() : s.channels[0]?.once('close', () => resolve()),
    );
  });

  it('a multifd packet out of bounds fails the migration', async () => {
    const ram = 8 * PAGE;
    const d = await destination();
    const s = await source(d, ram, 1);
    const bad = multifdPacket(0, [3], [], () => new Uint8Array(PAGE));
    new DataView(bad.buffer).setUint32(12, 4096); // pages_alloc
    await s.write(s.channels[0] as HandSource['main'], bad);
    const r = await d.result;
    expect(r.error?.message).toBe(
      '[dirtytrack] [wire] multifd packet at byte 0: pages_alloc 4096, expected 128',
    );
  });

  it('an idle source times out; a reset source fails; a channel closing before its SYNC fails', async () => {
    const idle = await destination({ timeoutMs: 150 });
    const s1 = await source(idle, 4 * PAGE);
    await s1.write(s1.main, setup(4 * PAGE));
    const r1 = await idle.result;
    expect(r1.error).toEqual({
      code: 'timeout',
      message: '[dirtytrack] [destination] no bytes from the source for 150 ms',
    });

    // Reads keep a migration alive: a PING every 50 ms for 0.6 s (four timeouts) does not time
    // out; from the last one, it fails after no less than the 150 ms of quiet.
    const kept = await destination({ timeoutMs: 150 });
    const s0 = await source(kept, 4 * PAGE);
    await s0.write(s0.main, setup(4 * PAGE));
    let lastWrite = 0;
    for (let i = 0; i < 12; i++) {
      await new Promise((r) => setTimeout(r, 50));
      await s0.write(s0.main, encodePing(i));
      lastWrite = performance.now();
    }
    const r0 = await kept.result;
    const quiet = performance.now() - lastWrite;
    expect(r0.error?.message).toBe('[dirtytrack] [destination] no bytes from the source for 150 ms');
    expect(quiet).toBeGreaterThanOrEqual(150);

    const reset = await destination();
    const s2 = await source(reset, 4 * PAGE);
    await s2.write(s2.main, setup(4 * PAGE));
    s2.main.resetAndDestroy();
    const r2 = await reset.result;
    expect(r2.status).toBe('failed');
    expect(r2.error?.code).toBe('protocol');
    expect(r2.error?.message).toMatch(
      /main connection (reset at byte 36|closed at byte 36 before EOF|at byte 36: read ECONNRESET)/,
    );

    const early = await destination();
    const s3 = await source(early, 4 * PAGE, 1);
    await s3.write(s3.main, concat([setup(4 * PAGE), encodeSection(VM_ITEM.SECTION_PART), encodeFlush()]));
    await new Promise((r) => setTimeout(r, 50));
    s3.channels[0]?.end();
    const r3 = await early.result;
    expect(r3.error?.message).toBe(
      '[dirtytrack] [destination] multifd channel 0 closed at byte 0 before its SYNC for flush 1',
    );
  });

  it('a stream cut short (EOF inside a page) fails before the switch, and pauses in postcopy', async () => {
    const halfPage = pageRecord(0, new Uint8Array(PAGE).fill(7)).subarray(0, 100);
    const precopy = await destination();
    const s1 = await source(precopy, 4 * PAGE);
    await s1.write(s1.main, concat([setup(4 * PAGE), encodeSection(VM_ITEM.SECTION_PART), halfPage]));
    s1.main.end();
    const r1 = await precopy.result;
    expect(r1.error?.message).toBe(
      '[dirtytrack] [wire] stream at byte 141: ended inside an item (state 5, 92 bytes buffered)',
    );

    // After POSTCOPY_RUN the guest runs here: the same cut is a lost link (QEMU's -EIO), so the
    // migration pauses for a resume — which never comes here, so it fails once recovery times out.
    const postcopy = await destination({ recoverTimeoutMs: 200 });
    const s2 = await source(postcopy, 4 * PAGE, 0, HELLO_FLAG.POSTCOPY);
    await s2.write(
      s2.main,
      concat([
        setup(4 * PAGE),
        encodeCommand(MIG_CMD.POSTCOPY_LISTEN, new Uint8Array(0)),
        encodeCommand(MIG_CMD.POSTCOPY_RUN, new Uint8Array(0)),
        encodeSection(VM_ITEM.SECTION_PART),
        halfPage,
      ]),
    );
    s2.main.end();
    const r2 = await postcopy.result;
    expect(r2.postcopy?.['postcopy-pauses']).toBe(1);
    expect(r2.error?.message).toMatch(
      /^\[dirtytrack\] \[destination\] postcopy paused for 200 ms and the source did not resume \(.*ended inside an item/,
    );
  });

  it('a closed destination fails its running migration and its result', async () => {
    const d = await createDestination();
    const s = await source(d, 4 * PAGE);
    await s.write(s.main, setup(4 * PAGE));
    await d.close();
    const r = await d.result;
    expect(r.error?.message).toBe(
      '[dirtytrack] [destination] the destination was closed during the migration',
    );
  });
});

describe('destination into a record RAM (record-ram.ts: page records copied by WebAssembly)', () => {
  /** A record RAM of `pages` (this engine has shared WebAssembly memory). */
  const recordRam = (pages: number): RecordRam => {
    const ram = createRecordRam(pages * PAGE);
    if (ram === undefined) throw new Error('no record RAM on this engine');
    return ram;
  };

  it('precopy over the main stream, written in random pieces: memory equal, counts exact, verified, read through its buffer', async () => {
    const pages = 200;
    const ram = pages * PAGE;
    const src = new SharedArrayBuffer(ram);
    const mem = new Uint8Array(src);
    const rng = createRng(11);
    const fill = (p: number): void => {
      if (rng.nextFloat() < 0.2) mem.fill(0, p * PAGE, (p + 1) * PAGE);
      else for (let i = 0; i < PAGE; i += 32) mem[p * PAGE + i] = 1 + Math.floor(rng.nextFloat() * 255);
    };
    for (let p = 0; p < pages; p++) fill(p);
    const into = recordRam(pages);
    const d = await destination({ memory: into.memory });
    const s = await source(d, ram);
    const data = (p: number): Uint8Array => mem.slice(p * PAGE, (p + 1) * PAGE);
    let normal = 0;
    let zero = 0;
    const records = (list: readonly number[]): Uint8Array[] =>
      list.map((p) =>
        isZero(data(p)) ? (zero++, zeroRecord(p * PAGE)) : (normal++, pageRecord(p * PAGE, data(p))),
      );
    /** `bytes` in pieces of 1 byte to 3 records, so that records straddle the destination's reads. */
    const send = async (bytes: Uint8Array): Promise<void> => {
      for (let at = 0; at < bytes.length;) {
        const n = 1 + Math.floor(rng.nextFloat() * 3 * (PAGE + 8));
        await s.write(s.main, bytes.subarray(at, at + n));
        at += n;
      }
    };
    // Round 1 in a shuffled order; round 2 a few pages rewritten; the end, pages rewritten again.
    const order = Array.from({ length: pages }, (_, p) => p);
    for (let i = pages - 1; i > 0; i--) {
      const j = Math.floor(rng.nextFloat() * (i + 1));
      [order[i], order[j]] = [order[j] as number, order[i] as number];
    }
    await send(concat([setup(ram), encodeSection(VM_ITEM.SECTION_PART), ...records(order), encodeEos()]));
    const dirty = order.slice(0, 30);
    for (const p of dirty) fill(p);
    await send(concat([encodeSection(VM_ITEM.SECTION_PART), ...records(dirty), encodeEos()]));
    const last = [0, 1, 199];
    for (const p of last) fill(p);
    await send(concat([encodeSection(VM_ITEM.SECTION_END), ...records(last), encodeEos()]));
    await s.write(s.main, verifyAll(src));
    expect(await s.waitFor(/^verify/)).toBe(`verify ${pages} 0 -1`);
    await s.write(s.main, encodeEof());
    await s.closed;
    const r = await d.result;
    expect(Buffer.compare(new Uint8Array(into.memory, 0, ram), mem)).toBe(0);
    expect(r).toMatchObject({ status: 'completed', 'ram-bytes': ram, memory: into.memory, verified: true });
    expect([r.normal, r.duplicate]).toEqual([normal, zero]);
    expect(normal + zero).toBe(pages + dirty.length + last.length);
    expect(r['main-bytes']).toBe(s.written.main);
    // The stream went through the record RAM's own read buffer, and WebAssembly placed pages.
    expect(into.readBuffer.some((b) => b !== 0)).toBe(true);
    expect(into.placed()).toBeGreaterThan(0);
    expect(into.placed()).toBeLessThanOrEqual(normal);
    expect(r['record-ram-pages']).toBe(into.placed());
    expect(r['record-ram-copy']).toBe(into.copy);
    // Precopy alone on the main connection: its reads waited for batches where setsockopt loads.
    expect(r['main-read-batch']).toBe(loadLibc() === null ? 0 : MAIN_READ_BATCH_BYTES);
    expect(r['main-reads']).toBeGreaterThan(0);
  });

  it('postcopy: pages placed by WebAssembly before the switch are received — after it, never overwritten; the others placed once', async () => {
    const pages = 160;
    const ram = pages * PAGE;
    const rng = createRng(23);
    const before = (p: number): Uint8Array => new Uint8Array(PAGE).fill(1 + (p % 200));
    const after = (p: number): Uint8Array => new Uint8Array(PAGE).fill(201 + (p % 50));
    // Not sent before the switch: a lone page, a run of two and the last page.
    const missing = new Set([3, 50, 51, pages - 1]);
    const into = recordRam(pages);
    const d = await destination({ memory: into.memory, recoverTimeoutMs: 200 });
    const s = await source(d, ram, 0, HELLO_FLAG.POSTCOPY);
    const send = async (bytes: Uint8Array): Promise<void> => {
      for (let at = 0; at < bytes.length;) {
        const n = 1 + Math.floor(rng.nextFloat() * 5 * (PAGE + 8));
        await s.write(s.main, bytes.subarray(at, at + n));
        at += n;
      }
    };
    const sent = Array.from({ length: pages }, (_, p) => p).filter((p) => !missing.has(p));
    await send(
      concat([
        setup(ram),
        encodeSection(VM_ITEM.SECTION_PART),
        ...sent.map((p) => pageRecord(p * PAGE, before(p))),
        encodeEos(),
        encodeCommand(MIG_CMD.POSTCOPY_LISTEN, new Uint8Array(0)),
        encodeCommand(MIG_CMD.POSTCOPY_RUN, new Uint8Array(0)),
        // After the switch every page comes again (as a source's background copy would send what
        // it still holds): only the pages never received may be placed.
        encodeSection(VM_ITEM.SECTION_PART),
        ...Array.from({ length: pages }, (_, p) => pageRecord(p * PAGE, after(p))),
        encodeEos(),
      ]),
    );
    await s.write(s.main, encodeEof());
    await s.closed;
    const r = await d.result;
    const got = new Uint8Array(into.memory, 0, ram);
    for (let p = 0; p < pages; p++)
      expect(
        Buffer.compare(got.subarray(p * PAGE, (p + 1) * PAGE), missing.has(p) ? after(p) : before(p)),
      ).toBe(0);
    expect(r.status).toBe('completed');
    expect(r.postcopy).toMatchObject({ 'postcopy-placed': missing.size, 'postcopy-duplicates': sent.length });
    expect(r.normal).toBe(sent.length + missing.size);
    // Most pages went through WebAssembly, before the switch and after it (records cut by a
    // write through JS).
    expect(r['record-ram-pages']).toBe(into.placed());
    expect(into.placed()).toBeGreaterThan(sent.length / 2);
    expect(into.placed()).toBeLessThanOrEqual(r.normal);
  });

  it('postcopy discard: received pages are zeroed and missing again, pages never received stay missing', async () => {
    const pages = 64;
    const ram = pages * PAGE;
    const fill = (p: number, v: number): Uint8Array => new Uint8Array(PAGE).fill(v + (p % 7));
    const into = recordRam(pages);
    const d = await destination({ memory: into.memory, recoverTimeoutMs: 200 });
    const s = await source(d, ram, 0, HELLO_FLAG.POSTCOPY);
    const range = (a: number, b: number): number[] => Array.from({ length: b - a }, (_, i) => a + i);
    // Before the switch pages 0-47 (48-63 never); discarded: 8-15 (received) and 40-55 (40-47
    // received, 48-55 not).
    // After it every page comes again but 12-15 and 52-55.
    const again = range(0, pages).filter((p) => !(p >= 12 && p < 16) && !(p >= 52 && p < 56));
    await s.write(
      s.main,
      concat([
        setup(ram),
        encodeSection(VM_ITEM.SECTION_PART),
        ...range(0, 48).map((p) => pageRecord(p * PAGE, fill(p, 1))),
        encodeEos(),
        ...encodeDiscard([
          [8 * PAGE, 8 * PAGE],
          [40 * PAGE, 16 * PAGE],
        ]),
        encodeCommand(MIG_CMD.POSTCOPY_LISTEN, new Uint8Array(0)),
        encodeCommand(MIG_CMD.POSTCOPY_RUN, new Uint8Array(0)),
        encodeSection(VM_ITEM.SECTION_PART),
        ...again.map((p) => pageRecord(p * PAGE, fill(p, 100))),
        encodeEos(),
        encodeEof(),
      ]),
    );
    await s.closed;
    const r = await d.result;
    expect(r.status).toBe('completed');
    const got = new Uint8Array(into.memory, 0, ram);
    const expected = (p: number): Uint8Array => {
      if ((p >= 12 && p < 16) || (p >= 52 && p < 56)) return new Uint8Array(PAGE); // a hole, never sent again
      if ((p >= 8 && p < 12) || p >= 40) return fill(p, 100); // discarded or never received: placed
      return fill(p, 1); // received and kept: the copy after the switch is a duplicate
    };
    for (let p = 0; p < pages; p++)
      expect(Buffer.compare(got.subarray(p * PAGE, (p + 1) * PAGE), expected(p))).toBe(0);
    expect(r.postcopy).toMatchObject({ 'postcopy-placed': 4 + 8 + 4 + 8, 'postcopy-duplicates': 8 + 24 });
  });

  it('a page record outside RAM fails as with plain memory, and no page is written', async () => {
    const messages: string[] = [];
    for (const memory of [recordRam(4).memory, new SharedArrayBuffer(4 * PAGE)]) {
      const d = await destination({ memory });
      const s = await source(d, 4 * PAGE);
      await s.write(
        s.main,
        concat([
          setup(4 * PAGE),
          encodeSection(VM_ITEM.SECTION_PART),
          pageRecord(4 * PAGE, new Uint8Array(PAGE).fill(9)),
        ]),
      );
      const r = await d.result;
      messages.push(r.error?.message ?? '');
      expect(new Uint8Array(memory, 0, 4 * PAGE).every((b) => b === 0)).toBe(true);
    }
    expect(messages[0]).toBe(messages[1]);
    expect(messages[0]).toMatch(/^\[dirtytrack\] \[wire\] /);
  });

  it('a RAM of another size than the source says is refused by its RAM size, not its buffer length', async () => {
    const into = recordRam(4);
    expect(into.memory.byteLength).toBeGreaterThan(4 * PAGE);
    const d = await destination({ memory: into.memory });
    await expect(startHandSource(d.port, { ramBytes: 8 * PAGE, channels: 0, flags: 0 })).rejects.toThrow(
      `the source's RAM is ${8 * PAGE} bytes, this destination's memory is ${4 * PAGE}`,
    );
  });
});

import { createHash } from 'node:crypto';
import { createServer, connect, type AddressInfo, type Server, type Socket } from 'node:net';
import { createRng } from '@dirtytrack/core';
import { afterEach, describe, expect, it } from 'vitest';
import { randomSharedMemory } from './__fixtures__/random-memory.js';
import { createFdWriter, fdWritesAvailable, type FdWriter } from './fd-writer.js';
import { errnoName } from './libc.js';
import { RAM_FLAG, writeRamHeader } from './wire.js';

// writev through koffi on a real loopback connection — and zero-copy-send's vmsplice + splice
// through a pipe: the bytes that arrive are exactly the list's, in order, however the kernel
// splits the writes; a reset peer is an error, not a crash.

const SEED = 0x5eed_f00d;
const available = fdWritesAvailable();
if (!available) console.warn('fd-writer.test.ts skipped: writev through koffi needs Linux and koffi');

let server: Server | undefined;
const sockets: Socket[] = [];
afterEach(() => {
  for (const s of sockets) s.destroy();
  sockets.length = 0;
  server?.close();
  server = undefined;
});

/** A connected pair: `client` to write on, and what the server side receives, once it has ended. */
async function pair(options: { readAfterMs?: number } = {}) {
  let accepted!: (s: Socket) => void;
  const peer = new Promise<Socket>((r) => (accepted = r));
  server = createServer((s) => {
    sockets.push(s);
    if (options.readAfterMs !== undefined) {
      s.pause();
      setTimeout(() => s.resume(), options.readAfterMs);
    }
    accepted(s);
  });
  await new Promise<void>((r) => (server as Server).listen(0, '127.0.0.1', r));
  const client = connect({ host: '127.0.0.1', port: (server.address() as AddressInfo).port });
  sockets.push(client);
  await new Promise<void>((r) => client.once('connect', r));
  const server_ = await peer;
  const received = new Promise<Buffer>((resolve) => {
    const parts: Buffer[] = [];
    server_.on('data', (b: Buffer) => parts.push(b));
    server_.on('end', () => resolve(Buffer.concat(parts)));
  });
  return { client, server: server_, received };
}

const randomMemory = (bytes: number, seed: number): Uint8Array =>
  new Uint8Array(randomSharedMemory(bytes, seed));

function header(offset: number, flags: number): Uint8Array {
  const h = new Uint8Array(8);
  writeRamHeader(h, 0, offset, flags);
  return h;
}

function writer(client: Socket, memory: Uint8Array, counted = { calls: 0 }, splice = false): FdWriter {
  const w = createFdWriter(client as never, memory, () => !client.destroyed, {
    onWritev: () => counted.calls++,
    splice,
  });
  if (w === undefined) throw new Error('no descriptor on a connected socket');
  return w;
}

describe.skipIf(!available).each([
  { how: 'writev', splice: false },
  { how: 'vmsplice + splice (zero-copy-send)', splice: true },
])(`$how on a socket's descriptor (seed ${SEED})`, ({ splice }) => {
  it('sends a list exactly: headers, copied bytes and guest memory in place, adjacent ranges merged', async () => {
    const memory = randomMemory(16 * 4096, SEED);
    const { client, received } = await pair();
    const w = writer(client, memory, undefined, splice);
    const list = w.gather();
    list.copy(new Uint8Array([0x03, 0, 0, 0, 2])); // a section marker, copied
    list.header(4096, RAM_FLAG.PAGE | RAM_FLAG.CONTINUE, false);
    list.memory(4096, 4096);
    list.memory(8192, 4096); // merges with the range before
    list.header(0, RAM_FLAG.ZERO | RAM_FLAG.CONTINUE, true);
    list.header(12288, RAM_FLAG.EOS, false); // merges with the header before (same buffer, adjacent)
    // The marker and the first header are adjacent in the list's buffer too: 3 iovecs.
    expect(list.count).toBe(3);
    expect(list.bytes).toBe(5 + 8 + 8192 + 9 + 8);
    await w.write(list);
    client.end();
    const expected = Buffer.concat([
      Buffer.from([0x03, 0, 0, 0, 2]),
      header(4096, RAM_FLAG.PAGE | RAM_FLAG.CONTINUE),
      memory.subarray(4096, 12288),
      header(0, RAM_FLAG.ZERO | RAM_FLAG.CONTINUE),
      Buffer.from([0]),
      header(12288, RAM_FLAG.EOS),
    ]);
    expect((await received).equals(expected)).toBe(true);
    // Only guest memory goes by reference; the marker and headers were copied into the pipe.
    expect(w.splicedBytes).toBe(splice ? 8192 : 0);
  });

  it('a full socket: lists written back to back arrive whole and in order (partial writes resumed)', async () => {
    const PAGES = 16384; // 64 MiB as page records, far more than the socket buffers hold
    const memory = randomMemory(PAGES * 4096, SEED + 1);
    const { client, received } = await pair({ readAfterMs: 200 });
    const counted = { calls: 0 };
    const w = writer(client, memory, counted, splice);
    const expected = createHash('sha256');
    const writes: Promise<void>[] = [];
    // Four lists, pages in a scrambled order, none awaited before the next is queued.
    const rng = createRng(SEED + 2);
    for (let l = 0; l < 4; l++) {
      const list = w.gather();
      for (let i = 0; i < PAGES / 4; i++) {
        const page = rng.nextU32() % PAGES;
        list.header(page * 4096, RAM_FLAG.PAGE | RAM_FLAG.CONTINUE, false);
        list.memory(page * 4096, 4096);
        expected.update(header(page * 4096, RAM_FLAG.PAGE | RAM_FLAG.CONTINUE));
        expected.update(memory.subarray(page * 4096, page * 4096 + 4096));
      }
      writes.push(w.write(list));
    }
    // The paused reader holds most of it back: what the kernel has not taken is pending.
    expect(w.pending).toBeGreaterThan(0);
    expect(w.pending).toBeLessThanOrEqual(PAGES * 4104);
    await Promise.all(writes);
    expect(w.pending).toBe(0);
    client.end();
    const got = await received;
    expect(got.length).toBe(PAGES * 4104);
    expect(createHash('sha256').update(got).digest('hex')).toBe(expected.digest('hex'));
    // 8192 iovecs a list, 1024 a call: 32 calls if every one were whole; the paused reader made
    // the socket full, so some were retried or partial. Through the pipe: no writev on the socket.
    if (splice) expect(counted.calls).toBe(0);
    else expect(counted.calls).toBeGreaterThan(32);
    expect(w.splicedBytes).toBe(splice ? PAGES * 4096 : 0);
  });

  it('a reset peer fails the write with its cause; a closed socket stops it', async () => {
    const PAGES = 16384; // 64 MiB: more than the socket buffers hold while the peer does not read
    const memory = randomMemory(PAGES * 4096, SEED + 3);
    const { client, server: peer } = await pair({ readAfterMs: 60_000 });
    client.on('error', () => {}); // the reset, seen by Node's read side
    const w = writer(client, memory, undefined, splice);
    const list = w.gather();
    for (let p = 0; p < PAGES; p++) {
      list.header(p * 4096, RAM_FLAG.PAGE | RAM_FLAG.CONTINUE, false);
      list.memory(p * 4096, 4096);
    }
    const first = w.write(list);
    await new Promise((r) => setTimeout(r, 50));
    peer.resetAndDestroy();
    await expect(first).rejects.toThrow(/^(writev|splice) (ECONNRESET|EPIPE)$|closed/);
    client.destroy();
    const again = w.gather();
    again.memory(0, 4096);
    await expect(w.write(again)).rejects.toThrow('the connection closed while a batch was being written');
  });

  it('records(first, n) sends what header and memory page by page send, 2 iovecs a page', async () => {
    const PAGES = 3000; // 24,000 header bytes: the 16 KiB arena grows; 6,000 iovecs: so does the list
    const memory = randomMemory(PAGES * 4096, SEED + 5);
    const { client, received } = await pair();
    const w = writer(client, memory, undefined, splice);
    const list = w.gather();
    const DATA = RAM_FLAG.PAGE | RAM_FLAG.CONTINUE;
    list.copy(new Uint8Array([0x03, 0, 0, 0, 2]));
    list.records(7, 1, DATA);
    list.records(100, PAGES - 100, DATA);
    list.header(0, RAM_FLAG.ZERO | RAM_FLAG.CONTINUE, true);
    list.records(0, 2, DATA);
    // The marker alone, then 2 iovecs a record (none merged), then the zero record's 9 bytes.
    expect(list.count).toBe(1 + 2 * (1 + PAGES - 100) + 1 + 2 * 2);
    expect(list.bytes).toBe(5 + (1 + PAGES - 100 + 2) * 4104 + 9);
    await w.write(list);
    client.end();
    const record = (page: number) => [
      header(page * 4096, DATA),
      memory.subarray(page * 4096, page * 4096 + 4096),
    ];
    const expected = Buffer.concat([
      Buffer.from([0x03, 0, 0, 0, 2]),
      ...record(7),
      ...Array.from({ length: PAGES - 100 }, (_, i) => record(100 + i)).flat(),
      header(0, RAM_FLAG.ZERO | RAM_FLAG.CONTINUE),
      Buffer.from([0]),
      ...record(0),
      ...record(1),
    ]);
    expect((await received).equals(expected)).toBe(true);
    expect(w.splicedBytes).toBe(splice ? (PAGES - 100 + 3) * 4096 : 0);
  });

  it('records(first, n): offsets of 4 GiB and more carry their high word; outside memory is refused', async () => {
    const memory = randomMemory(4 * 4096, SEED + 6);
    const { client } = await pair();
    const list = writer(client, memory, undefined, splice).gather();
    expect(() => list.records(3, 2, RAM_FLAG.PAGE)).toThrow(
      '2 pages at 12288 outside guest memory (16384 bytes)',
    );
    expect(() => list.records(-1, 1, RAM_FLAG.PAGE)).toThrow('outside guest memory');
    expect(() => list.records(0, 0, RAM_FLAG.PAGE)).toThrow('outside guest memory');
    expect(list.count).toBe(0);
    // The header bytes of a large guest, read back from the list's arena (never written here).
    const big = list as unknown as { memoryBytes: number; arena: Uint8Array };
    Object.defineProperty(big, 'memoryBytes', { value: 2 ** 40 });
    list.records(2 ** 21 - 1, 2, RAM_FLAG.PAGE | RAM_FLAG.CONTINUE); // pages at 8 GiB - 4 KiB and 8 GiB
    expect(Buffer.from(big.arena.subarray(0, 16))).toEqual(
      Buffer.concat([
        header(2 ** 33 - 4096, RAM_FLAG.PAGE | RAM_FLAG.CONTINUE),
        header(2 ** 33, RAM_FLAG.PAGE | RAM_FLAG.CONTINUE),
      ]),
    );
    list.reset();
  });

  it('refuses a range outside guest memory: nothing past it may reach the wire', async () => {
    const memory = randomMemory(4 * 4096, SEED + 4);
    const { client } = await pair();
    const list = writer(client, memory, undefined, splice).gather();
    expect(() => list.memory(3 * 4096, 2 * 4096)).toThrow(
      '8192 bytes at 12288 outside guest memory (16384 bytes)',
    );
    expect(() => list.memory(-4096, 4096)).toThrow('outside guest memory');
    expect(list.count).toBe(0);
  });
});

it('names errno values as Node does', () => {
  expect(errnoName(104)).toBe('ECONNRESET');
  expect(errnoName(32)).toBe('EPIPE');
  expect(errnoName(123456)).toBe('errno 123456');
});

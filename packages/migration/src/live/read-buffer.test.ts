import { connect, createServer, type Server, type Socket } from 'node:net';
import { createRng } from '@dirtytrack/core';
import { afterEach, describe, expect, it } from 'vitest';
import { loadLibc } from './libc.js';
import { READ_BATCH_RESUME_BYTES, stagePage, withReadBuffer, type BufferedSocket } from './read-buffer.js';

let server: Server | undefined;
afterEach(() => {
  server?.close();
  server = undefined;
});

/** A loopback server whose first accepted socket is handed to `onSocket`; resolves with its port. */
function listen(onSocket: (s: Socket) => void): Promise<number> {
  return new Promise((resolve) => {
    server = createServer({ allowHalfOpen: true }, onSocket);
    server.listen(0, '127.0.0.1', () => resolve((server?.address() as { port: number }).port));
  });
}

function pattern(bytes: number, seed: number): Uint8Array {
  const rng = createRng(seed);
  const out = new Uint8Array(bytes);
  const view = new DataView(out.buffer);
  for (let i = 0; i < bytes; i += 4) view.setUint32(i, rng.nextU32());
  return out;
}

describe('withReadBuffer', () => {
  it('delivers every byte in order through one reused buffer, pauses on false and resumes', async () => {
    const sent = pattern(3 * 2 ** 20 + 4096, 7);
    const chunks: Uint8Array[] = [];
    const buffers = new Set<ArrayBufferLike>();
    let pauses = 0;
    let resolve!: (bytes: Uint8Array) => void;
    const received = new Promise<Uint8Array>((r) => (resolve = r));
    const port = await listen((socket) => {
      const b = withReadBuffer(socket, 64 * 1024);
      expect(b).toBeDefined();
      const s = (b as NonNullable<typeof b>).socket;
      s.on('end', () => {
        const all = new Uint8Array(chunks.reduce((n, c) => n + c.length, 0));
        let at = 0;
        for (const c of chunks) {
          all.set(c, at);
          at += c.length;
        }
        s.end();
        resolve(all);
      });
      (b as NonNullable<typeof b>).start((chunk) => {
        buffers.add(chunk.buffer);
        chunks.push(chunk.slice()); // the bytes are valid only until the handler returns
        if (chunks.length % 5 !== 0) return true;
        pauses++;
        setTimeout(() => s.resume(), 1);
        return false;
      });
    });
    const client = connect({ port, host: '127.0.0.1' });
    for (let at = 0; at < sent.length; at += 100_000) client.write(sent.subarray(at, at + 100_000));
    client.end();
    const got = await received;
    expect(got.length).toBe(sent.length);
    // The first differing byte (-1: none); toEqual walks 3 MiB element by element, far too slowly.
    expect(Buffer.from(got).equals(Buffer.from(sent)) ? -1 : got.findIndex((b, i) => b !== sent[i])).toBe(-1);
    expect(buffers.size).toBe(1);
    expect(pauses).toBeGreaterThan(0);
    // The old socket left the server's count: close completes once the new one is gone.
    await new Promise<void>((resolve) => (server as Server).close(() => resolve()));
    server = undefined;
  });

  it('stages a page of a chunk into the one scratch page after its read buffer, and only there', async () => {
    const sent = pattern(256 * 1024, 11);
    let resolve!: () => void;
    const ended = new Promise<void>((r) => (resolve = r));
    const pages = new Set<Uint8Array>();
    let at = 0; // stream offset of the current chunk
    let staged = 0;
    const mismatches: string[] = [];
    const port = await listen((socket) => {
      const b = withReadBuffer(socket, 64 * 1024) as NonNullable<ReturnType<typeof withReadBuffer>>;
      b.socket.on('end', () => {
        b.socket.end();
        resolve();
      });
      b.start((chunk) => {
        const before = chunk.slice();
        for (const k of chunk.length >= 4099 ? [3, chunk.length - 4096] : []) {
          const page = stagePage(chunk, k) as Uint8Array;
          staged++;
          pages.add(page);
          const want = sent.subarray(at + k, at + k + 4096);
          if (page.buffer !== chunk.buffer || !Buffer.from(page).equals(Buffer.from(want)))
            mismatches.push(`page at stream byte ${at + k}`);
        }
        // Staging wrote nothing of the chunk, and refuses a page that ends past it.
        if (!Buffer.from(chunk).equals(Buffer.from(before))) mismatches.push(`chunk at ${at} changed`);
        if (stagePage(chunk, chunk.length - 4095) !== undefined) mismatches.push(`page past chunk at ${at}`);
        // A view into the chunk at another offset, after a chunk of no read buffer, stages its own bytes.
        if (chunk.length >= 4096 + 24) {
          if (stagePage(new Uint8Array(8192), 0) !== undefined) mismatches.push('a plain array staged');
          const inner = stagePage(chunk.subarray(24), 0);
          const want = sent.subarray(at + 24, at + 24 + 4096);
          if (inner === undefined || !Buffer.from(inner).equals(Buffer.from(want)))
            mismatches.push(`page of a view at ${at + 24}`);
        }
        at += chunk.length;
        return true;
      });
    });
    const client = connect({ port, host: '127.0.0.1' });
    client.end(sent);
    await ended;
    expect(mismatches).toEqual([]);
    expect(at).toBe(sent.length);
    expect(staged).toBeGreaterThanOrEqual(8); // at least four reads of 64 KiB, two pages each
    expect(pages.size).toBe(1);
    // Not a read buffer's chunk: nothing to stage into.
    expect(stagePage(new Uint8Array(8192), 0)).toBeUndefined();
  });

  it('leaves a socket that already holds bytes alone', async () => {
    let resolve!: (left: boolean) => void;
    const verdict = new Promise<boolean>((r) => (resolve = r));
    const port = await listen((socket) => {
      socket.pause();
      socket.once('readable', () => {
        resolve(withReadBuffer(socket) === undefined);
        socket.destroy();
      });
    });
    const client = connect({ port, host: '127.0.0.1' });
    client.on('error', () => {});
    client.end(Uint8Array.of(1, 2, 3));
    expect(await verdict).toBe(true);
  });

  describe('batched reads (SO_RCVLOWAT)', () => {
    const why = loadLibc() === null ? 'needs Linux and koffi (setsockopt)' : undefined;
    if (why !== undefined) console.log(`read-buffer.test.ts: batched reads skipped: ${why}`);
    const KiB = 1024;
    const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

    /** A reader on a loopback pair: its reads' sizes and bytes, and the client end. */
    async function pair(): Promise<{
      b: BufferedSocket;
      sizes: number[];
      bytes: () => Uint8Array;
      client: Socket;
      until: (total: number) => Promise<void>;
      waters: number[];
    }> {
      const sizes: number[] = [];
      const waters: number[] = [];
      const got: Uint8Array[] = [];
      let b!: BufferedSocket;
      const ready = new Promise<void>((resolve) => {
        void listen((socket) => {
          b = withReadBuffer(socket, 1024 * KiB) as BufferedSocket;
          b.start((chunk) => {
            sizes.push(chunk.length);
            waters.push(b.lowWater);
            got.push(chunk.slice());
            return true;
          });
          resolve();
        }).then((port) => {
          client = connect({ port, host: '127.0.0.1' });
        });
      });
      let client!: Socket;
      await ready;
      const total = () => sizes.reduce((n, k) => n + k, 0);
      return {
        b,
        sizes,
        bytes: () => Buffer.concat(got),
        client,
        waters,
        // Bounded: 200 looks 10 ms apart.
        async until(want) {
          for (let i = 0; i < 200 && total() < want; i++) await sleep(10);
          expect(total()).toBe(want);
        },
      };
    }

    it.skipIf(why !== undefined)(
      'the kernel holds bytes short of the batch; a read takes the whole batch; batchReads(0) reads the rest',
      async () => {
        const { b, sizes, bytes, client, until } = await pair();
        // An idle time no test waits for: only the kernel's batching is seen.
        expect(b.batchReads(256 * KiB, 60_000)).toBe(true);
        const sent = pattern(310 * KiB + 12, 5);
        client.write(sent.subarray(0, 100 * KiB));
        await sleep(150);
        expect(sizes).toEqual([]); // 100 KiB queued, under the batch: no read
        client.write(sent.subarray(100 * KiB, 300 * KiB));
        await until(300 * KiB);
        expect(sizes[0]).toBeGreaterThanOrEqual(256 * KiB);
        client.write(sent.subarray(300 * KiB));
        await sleep(150);
        expect(sizes.reduce((n, k) => n + k, 0)).toBe(300 * KiB); // 10 KiB + 12 bytes held
        expect(b.batchReads(0)).toBe(true); // lowering the option wakes the reader
        await until(sent.length);
        expect(Buffer.from(bytes()).equals(Buffer.from(sent))).toBe(true);
        expect(b.reads).toBe(sizes.length);
        client.destroy();
      },
    );

    it.skipIf(why !== undefined)(
      'with no read for the idle time the reader takes what is queued; a bulk read batches again',
      async () => {
        const { b, sizes, bytes, client, until, waters } = await pair();
        expect(b.batchReads(256 * KiB, 50)).toBe(true);
        expect(b.lowWater).toBe(256 * KiB);
        const sent = pattern(600 * KiB + 12, 9);
        client.write(sent.subarray(0, 12)); // a command the source then waits on
        await until(12); // read once the idle timer lowered the option
        expect(waters).toEqual([1]);
        client.write(sent.subarray(12)); // the stream goes on in bulk
        await until(sent.length);
        expect(Buffer.from(bytes()).equals(Buffer.from(sent))).toBe(true);
        // Each read under 32 KiB came while lowered, and each of 32 KiB or more raised the
        // option again before its handler ran (the rest of the stream waited for a batch, or
        // for the timer).
        expect(sizes.some((n) => n >= READ_BATCH_RESUME_BYTES)).toBe(true);
        expect(waters).toEqual(sizes.map((n) => (n >= READ_BATCH_RESUME_BYTES ? 256 * KiB : 1)));
        expect(b.batchReads(0)).toBe(true);
        expect(b.lowWater).toBe(1);
        client.destroy();
      },
    );

    it.skipIf(why !== undefined)(
      'refuses once the socket is closed (never a reused descriptor)',
      async () => {
        const { b, client } = await pair();
        b.socket.destroy();
        expect(b.batchReads(256 * KiB)).toBe(false);
        client.destroy();
      },
    );
  });
});

import { randomBytes } from 'node:crypto';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { DirtytrackError } from '@dirtytrack/core';
import { afterEach, describe, expect, it } from 'vitest';
import { createDestination, type Destination } from './destination.js';
import { clientHandshake, isLoopback, serverHandshake } from './handshake.js';
import {
  CHANNEL_KIND,
  encodeChallenge,
  encodeResult,
  HELLO_BYTES,
  WIRE_VERSION,
  type Hello,
} from './wire.js';

const RAM = 16 * 4096;
const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

function hello(over: Partial<Hello> = {}): Hello {
  return {
    version: WIRE_VERSION,
    kind: CHANNEL_KIND.MAIN,
    channel: 0,
    migrationId: new Uint8Array(randomBytes(16)),
    ramBytes: RAM,
    pageSize: 4096,
    channels: 0,
    flags: 0,
    nonce: new Uint8Array(randomBytes(16)),
    ...over,
  };
}

async function listen(onSocket: (s: Socket) => void): Promise<{ server: Server; port: number }> {
  const server = createServer(onSocket);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  cleanups.push(() => new Promise<void>((resolve) => server.close(() => resolve())));
  const address = server.address();
  return { server, port: typeof address === 'object' && address !== null ? address.port : 0 };
}

async function dial(port: number): Promise<Socket> {
  const socket = connect({ host: '127.0.0.1', port });
  cleanups.push(() => void socket.destroy());
  await new Promise<void>((resolve, reject) => {
    socket.once('connect', resolve);
    socket.once('error', reject);
  });
  return socket;
}

async function destination(options: Parameters<typeof createDestination>[0] = {}): Promise<Destination> {
  const d = await createDestination({ timeoutMs: 5000, ...options });
  cleanups.push(() => d.close());
  return d;
}

async function refusal(promise: Promise<unknown>): Promise<DirtytrackError> {
  const error = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(DirtytrackError);
  return error as DirtytrackError;
}

describe('handshake', () => {
  it('authenticates with a token and leaves every byte after RESULT to the stream', async () => {
    const accepted: Hello[] = [];
    const serverSide = new Promise<Socket>((resolve) => {
      void listen((s) => {
        serverHandshake(s, {
          token: 'sesame',
          accept: (h) => {
            accepted.push(h);
            return undefined;
          },
        }).then(
          () => {
            s.once('data', (chunk: Buffer) => s.write(chunk)); // echo the first stream bytes
            resolve(s);
          },
          () => {},
        );
      }).then(({ port }) => (serverPort = port));
    });
    let serverPort = 0;
    while (serverPort === 0) await new Promise((r) => setImmediate(r));
    const socket = await dial(serverPort);
    const h = hello({ kind: CHANNEL_KIND.MULTIFD, channel: 3, channels: 4 });
    await clientHandshake(socket, h, { token: 'sesame' });
    await serverSide;
    expect(accepted).toHaveLength(1);
    expect(accepted[0]?.channel).toBe(3);
    expect(accepted[0]?.migrationId).toEqual(h.migrationId);
    const echoed = new Promise<Buffer>((resolve) => socket.once('data', resolve));
    socket.write(Uint8Array.of(9, 8, 7));
    expect(Array.from(await echoed)).toEqual([9, 8, 7]);
  });

  it('does not consume bytes that follow RESULT in the same segment', async () => {
    const { port } = await listen((s) => {
      let got = 0;
      s.on('data', (chunk: Buffer) => {
        got += chunk.length;
        if (got === HELLO_BYTES) s.write(encodeChallenge(false, new Uint8Array(32)));
        if (got === HELLO_BYTES + 32)
          s.write(Buffer.concat([encodeResult(0, ''), Buffer.from([1, 2, 3, 4])]));
      });
    });
    const socket = await dial(port);
    await clientHandshake(socket, hello());
    const data = new Promise<Buffer>((resolve) => socket.once('data', resolve));
    expect(Array.from(await data)).toEqual([1, 2, 3, 4]);
  });

  it('a wrong token is RESULT code 2', async () => {
    const d = await destination({ token: 'right' });
    const error = await refusal(clientHandshake(await dial(d.port), hello(), { token: 'wrong' }));
    expect(error.code).toBe('protocol');
    expect(error.field).toBe('token');
    expect(error.message).toMatch(
      /RESULT code 2 \(authentication failed\): authentication failed: wrong or missing token/,
    );
    const missing = await refusal(clientHandshake(await dial(d.port), hello()));
    expect(missing.message).toMatch(/requires authentication: pass its token/);
  });

  it('another wire version is RESULT code 1 with both versions named', async () => {
    const d = await destination();
    const error = await refusal(clientHandshake(await dial(d.port), hello({ version: 2 })));
    expect(error.code).toBe('protocol');
    expect(error.message).toBe(
      '[dirtytrack] [handshake] the destination refused the connection: RESULT code 1 (version mismatch): ' +
        'wire version 2 is not supported: this destination speaks version 1',
    );
  });

  it('a multifd channel with an unknown migration id is RESULT code 3; so is a second main', async () => {
    const d = await destination({ once: false });
    const main = hello({ channels: 2 });
    await clientHandshake(await dial(d.port), main);
    const stranger = await refusal(
      clientHandshake(await dial(d.port), hello({ kind: CHANNEL_KIND.MULTIFD, channel: 0, channels: 2 })),
    );
    expect(stranger.message).toMatch(/RESULT code 3 \(identity mismatch\): unknown migration id/);
    const beyond = await refusal(
      clientHandshake(await dial(d.port), {
        ...main,
        kind: CHANNEL_KIND.MULTIFD,
        channel: 2,
        nonce: new Uint8Array(16),
      }),
    );
    expect(beyond.message).toMatch(/RESULT code 3 .*channel id 2 is not below the migration's 2 channels/);
    await clientHandshake(await dial(d.port), { ...main, kind: CHANNEL_KIND.MULTIFD, channel: 1 });
    const twice = await refusal(
      clientHandshake(await dial(d.port), { ...main, kind: CHANNEL_KIND.MULTIFD, channel: 1 }),
    );
    expect(twice.message).toMatch(/RESULT code 3 .*multifd channel 1 connected twice/);
    const second = await refusal(clientHandshake(await dial(d.port), hello()));
    expect(second.message).toMatch(/RESULT code 3 .*a migration is already running here/);
  });

  it('while onResult’s promise is pending the next migration is RESULT code 3; once it settles, one is accepted', async () => {
    let release!: () => void;
    const results: string[] = [];
    const d = await destination({
      once: false,
      onResult(r) {
        results.push(r.status);
        return new Promise<void>((resolve) => (release = resolve));
      },
    });
    // A migration that ends at once: its source drops the connection after the handshake.
    (await dial(d.port).then(async (s) => (await clientHandshake(s, hello()), s))).destroy();
    await expect.poll(() => results).toEqual(['failed']);
    const held = await refusal(clientHandshake(await dial(d.port), hello()));
    expect(held.message).toMatch(
      /RESULT code 3 \(identity mismatch\): the previous migration is still being handled here/,
    );
    release();
    await new Promise((resolve) => setImmediate(resolve));
    await clientHandshake(await dial(d.port), hello());
  });

  it("a RAM size other than the destination's memory is RESULT code 4", async () => {
    const d = await destination({ memory: new SharedArrayBuffer(RAM) });
    const error = await refusal(clientHandshake(await dial(d.port), hello({ ramBytes: 2 * RAM })));
    expect(error.message).toMatch(
      /RESULT code 4 \(RAM size mismatch\): the source's RAM is 131072 bytes, this destination's memory is 65536/,
    );
    const capped = await destination({ maxMemory: RAM });
    const over = await refusal(clientHandshake(await dial(capped.port), hello({ ramBytes: 2 * RAM })));
    expect(over.message).toMatch(/RESULT code 4 .*more than this destination's maxMemory 65536/);
  });

  it('without memory, RAM comes from the allocate option; one that fails or gives the wrong size is RESULT code 4', async () => {
    const asked: number[] = [];
    const d = await destination({ allocate: (bytes) => (asked.push(bytes), new SharedArrayBuffer(bytes)) });
    await clientHandshake(await dial(d.port), hello());
    expect(asked).toEqual([RAM]);
    const short = await destination({ allocate: (bytes) => new SharedArrayBuffer(bytes / 2) });
    const wrong = await refusal(clientHandshake(await dial(short.port), hello()));
    expect(wrong.message).toMatch(
      /RESULT code 4 .*cannot allocate 65536 bytes of RAM: allocate gave 32768 bytes/,
    );
    const failing = await destination({
      allocate: () => {
        throw new RangeError('Array buffer allocation failed');
      },
    });
    const failed = await refusal(clientHandshake(await dial(failing.port), hello()));
    expect(failed.message).toMatch(
      /RESULT code 4 .*cannot allocate 65536 bytes of RAM: Array buffer allocation failed/,
    );
  });

  it('garbage instead of HELLO is RESULT code 5, and a silent peer times out', async () => {
    const d = await destination();
    const socket = await dial(d.port);
    const reply = new Promise<Buffer>((resolve) => {
      const chunks: Buffer[] = [];
      socket.on('data', (c: Buffer) => chunks.push(c));
      socket.on('close', () => resolve(Buffer.concat(chunks)));
    });
    socket.write(Buffer.alloc(HELLO_BYTES, 0x41));
    const bytes = await reply;
    expect(bytes.subarray(0, 6).toString('hex')).toBe('44544f4b0005');
    expect(bytes.subarray(8).toString()).toBe('HELLO at byte 0: bad magic 0x41414141');

    const { port } = await listen((s) => s.resume()); // reads and never answers
    const error = await refusal(clientHandshake(await dial(port), hello(), { timeoutMs: 100 }));
    expect(error.code).toBe('timeout');
  });

  it('a destination off loopback refuses to start without a token', async () => {
    const error = await refusal(createDestination({ host: '192.0.2.1' }));
    expect(error.code).toBe('invalid-argument');
    expect(error.field).toBe('token');
    expect(error.message).toMatch(
      /token: required to listen on 192\.0\.2\.1, which is not a loopback address/,
    );
  });

  it('isLoopback', () => {
    for (const h of [
      '127.0.0.1',
      '127.1.2.3',
      '::1',
      '[::1]',
      'localhost',
      'LOCALHOST',
      '::ffff:127.0.0.1',
      '0:0:0:0:0:0:0:1',
    ]) {
      expect(isLoopback(h), h).toBe(true);
    }
    for (const h of [
      '0.0.0.0',
      '::',
      '10.0.0.1',
      '128.0.0.1',
      'example.com',
      '::2',
      '',
      '127.0.0.1.nip.io',
    ]) {
      expect(isLoopback(h), h).toBe(false);
    }
  });
});

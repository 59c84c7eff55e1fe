/**
 * A hand-driven migration source for destination tests: opens the main connection and multifd
 * channels with the real handshake, writes whatever bytes the test builds with the encoders, and
 * logs the return path.
 */
import { randomBytes } from 'node:crypto';
import { connect, type Socket } from 'node:net';
import { clientHandshake } from '../handshake.js';
import { CHANNEL_KIND, createReturnDecoder, WIRE_VERSION, type Hello } from '../wire.js';
import { returnLogger } from './wire-streams.js';

export interface HandSource {
  main: Socket;
  channels: Socket[];
  /** Return-path messages as `returnLogger` writes them. */
  log: string[];
  /** Resolves once `log` has an entry matching `pattern`. */
  waitFor(pattern: RegExp): Promise<string>;
  /** Resolves when the main socket closes. */
  closed: Promise<void>;
  /** Bytes written after the handshakes: main, then channels in order. */
  written: { main: number; channels: number[] };
  write(socket: Socket, bytes: Uint8Array): Promise<void>;
  destroy(): void;
}

export async function dialRaw(port: number): Promise<Socket> {
  const socket = connect({ host: '127.0.0.1', port });
  socket.on('error', () => {});
  await new Promise<void>((resolve, reject) => {
    socket.once('connect', resolve);
    socket.once('error', reject);
  });
  return socket;
}

export async function startHandSource(
  port: number,
  options: { ramBytes: number; channels?: number; token?: string; migrationId?: Uint8Array; flags?: number },
): Promise<HandSource> {
  const channels = options.channels ?? 0;
  const migrationId = options.migrationId ?? new Uint8Array(randomBytes(16));
  const hello = (kind: number, channel: number): Hello => ({
    version: WIRE_VERSION,
    kind,
    channel,
    migrationId,
    ramBytes: options.ramBytes,
    pageSize: 4096,
    channels,
    flags: options.flags ?? 0,
    nonce: new Uint8Array(randomBytes(16)),
  });
  const hs = options.token === undefined ? {} : { token: options.token };
  const main = await dialRaw(port);
  await clientHandshake(main, hello(CHANNEL_KIND.MAIN, 0), hs);
  const chs: Socket[] = [];
  for (let i = 0; i < channels; i++) {
    const s = await dialRaw(port);
    await clientHandshake(s, hello(CHANNEL_KIND.MULTIFD, i), hs);
    chs.push(s);
  }
  const log: string[] = [];
  const waiters: { pattern: RegExp; resolve: (line: string) => void }[] = [];
  const decoder = createReturnDecoder(returnLogger(log, options.ramBytes));
  main.on('data', (chunk: Buffer) => {
    decoder.push(chunk);
    for (const w of waiters.splice(0)) {
      const line = log.find((l) => w.pattern.test(l));
      if (line !== undefined) w.resolve(line);
      else waiters.push(w);
    }
  });
  const closed = new Promise<void>((resolve) => main.once('close', () => resolve()));
  const written = { main: 0, channels: chs.map(() => 0) };
  return {
    main,
    channels: chs,
    log,
    written,
    closed,
    waitFor(pattern) {
      const line = log.find((l) => pattern.test(l));
      if (line !== undefined) return Promise.resolve(line);
      return new Promise((resolve) => waiters.push({ pattern, resolve }));
    },
    write(socket, bytes) {
      if (socket === main) written.main += bytes.length;
      else {
        const i = chs.indexOf(socket);
        written.channels[i] = (written.channels[i] as number) + bytes.length;
      }
      return new Promise<void>((resolve) => socket.write(bytes, () => resolve()));
    },
    destroy() {
      main.destroy();
      for (const s of chs) s.destroy();
    },
  };
}

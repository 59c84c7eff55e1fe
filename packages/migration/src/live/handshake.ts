import { randomBytes, timingSafeEqual } from 'node:crypto';
import { BlockList, isIPv4, isIPv6, type Socket } from 'node:net';
import { DirtytrackError } from '@dirtytrack/core';
import {
  AUTH_BYTES,
  authTag,
  CHALLENGE_BYTES,
  decodeChallenge,
  decodeHello,
  decodeResultHeader,
  encodeChallenge,
  encodeHello,
  encodeResult,
  HELLO_BYTES,
  HELLO_MAGIC,
  RESULT_CODE,
  RESULT_HEADER_BYTES,
  RESULT_MAGIC,
  WIRE_VERSION,
  type Hello,
} from './wire.js';

/**
 * The handshake every live-plane connection opens with (WIRE.md, Handshake): HELLO →
 * CHALLENGE → AUTH → RESULT. Both sides read exactly the bytes of each step (`socket.read(n)`),
 * so nothing after RESULT is consumed: once a handshake resolves, the socket's further bytes
 * belong to the stream.
 */

/** Default handshake timeout: a peer that stalls mid-handshake is dropped after this. */
export const DEFAULT_HANDSHAKE_TIMEOUT_MS = 10_000;

const RESULT_NAMES: Record<number, string> = {
  [RESULT_CODE.OK]: 'ok',
  [RESULT_CODE.VERSION]: 'version mismatch',
  [RESULT_CODE.AUTH]: 'authentication failed',
  [RESULT_CODE.IDENTITY]: 'identity mismatch',
  [RESULT_CODE.RAM_SIZE]: 'RAM size mismatch',
  [RESULT_CODE.BAD_HANDSHAKE]: 'bad handshake bytes',
};

/** A RESULT code's name (`3` → `identity mismatch`). */
export function resultCodeName(code: number): string {
  return RESULT_NAMES[code] ?? `unknown code ${code}`;
}

export interface ClientHandshakeOptions {
  /** The destination's shared token (required when it listens off loopback). */
  token?: string;
  /** Whole-handshake timeout in ms (default 10 000). */
  timeoutMs?: number;
}

/**
 * The source's side: sends HELLO, reads CHALLENGE, sends AUTH, reads RESULT. Resolves when the
 * destination accepted (RESULT code 0); the socket is then the caller's, with every byte after
 * RESULT unread (attach a `data` listener for the return path). Rejects with a DirtytrackError —
 * code `protocol` naming the RESULT code and repeating the destination's message (field `token`
 * for code 2), or `timeout` — and destroys the socket.
 */
export async function clientHandshake(
  socket: Socket,
  hello: Hello,
  options: ClientHandshakeOptions = {},
): Promise<void> {
  const helloBytes = encodeHello(hello);
  const timeoutMs = options.timeoutMs ?? DEFAULT_HANDSHAKE_TIMEOUT_MS;
  await withTimeout(socket, timeoutMs, 'handshake', async (read) => {
    socket.write(helloBytes);
    const first = await read(RESULT_HEADER_BYTES, 'CHALLENGE');
    // A destination that refuses the HELLO itself (version, bad bytes) answers RESULT at once.
    if (readU32(first, 0) === RESULT_MAGIC) return refuse(await readResult(first, read));
    const challenge = decodeChallenge(
      concat(first, await read(CHALLENGE_BYTES - RESULT_HEADER_BYTES, 'CHALLENGE')),
    );
    if (challenge.authRequired && options.token === undefined) {
      throw new DirtytrackError('protocol', 'the destination requires authentication: pass its token', {
        component: 'handshake',
        field: 'token',
      });
    }
    const auth =
      options.token === undefined
        ? new Uint8Array(AUTH_BYTES)
        : authTag(options.token, helloBytes, challenge.nonce);
    socket.write(auth);
    const result = await readResult(await read(RESULT_HEADER_BYTES, 'RESULT'), read);
    if (result.code !== RESULT_CODE.OK) refuse(result);
  });
}

function refuse(result: { code: number; message: string }): never {
  throw new DirtytrackError(
    'protocol',
    `the destination refused the connection: RESULT code ${result.code} (${resultCodeName(result.code)}): ${result.message}`,
    { component: 'handshake', ...(result.code === RESULT_CODE.AUTH ? { field: 'token' } : {}) },
  );
}

async function readResult(header: Uint8Array, read: Read): Promise<{ code: number; message: string }> {
  const { code, length } = decodeResultHeader(header);
  const text = length === 0 ? new Uint8Array(0) : await read(length, 'RESULT');
  return { code, message: new TextDecoder('utf-8', { fatal: false }).decode(text) };
}

export interface ServerHandshakeOptions {
  /** When set, AUTH must carry its HMAC. */
  token?: string;
  timeoutMs?: number;
  /** Component named in errors (default `destination`). */
  component?: string;
  /**
   * Called with an authenticated, well-formed HELLO before RESULT is sent: return a refusal
   * (`code` 3 or 4 and a message) or undefined to accept. It runs synchronously, so state it
   * registers (a migration id) is in place before the source can open its next connection.
   */
  accept(hello: Hello): { code: number; message: string } | undefined;
}

/**
 * The destination's side. Resolves with the accepted HELLO; the bytes after AUTH stay unread.
 * A refused handshake sends RESULT with its code and message, ends the socket and rejects with
 * a DirtytrackError (`protocol`, or `timeout` for a stalled peer).
 */
export async function serverHandshake(socket: Socket, options: ServerHandshakeOptions): Promise<Hello> {
  const component = options.component ?? 'destination';
  const timeoutMs = options.timeoutMs ?? DEFAULT_HANDSHAKE_TIMEOUT_MS;
  return withTimeout(socket, timeoutMs, component, async (read) => {
    const refuseWith = (code: number, message: string): never => {
      socket.end(encodeResult(code, message), () => socket.destroy());
      throw new DirtytrackError(
        'protocol',
        `handshake refused, RESULT code ${code} (${resultCodeName(code)}): ${message}`,
        {
          component,
          ...(code === RESULT_CODE.AUTH ? { field: 'token' } : {}),
        },
      );
    };
    const helloBytes = await read(HELLO_BYTES, 'HELLO');
    const magic = readU32(helloBytes, 0);
    if (magic !== HELLO_MAGIC) {
      refuseWith(
        RESULT_CODE.BAD_HANDSHAKE,
        `HELLO at byte 0: bad magic 0x${magic.toString(16).padStart(8, '0')}`,
      );
    }
    const version = ((helloBytes[4] as number) << 8) | (helloBytes[5] as number);
    if (version !== WIRE_VERSION) {
      refuseWith(
        RESULT_CODE.VERSION,
        `wire version ${version} is not supported: this destination speaks version ${WIRE_VERSION}`,
      );
    }
    let hello: Hello;
    try {
      hello = decodeHello(helloBytes);
    } catch (error) {
      return refuseWith(
        RESULT_CODE.BAD_HANDSHAKE,
        error instanceof Error ? stripPrefix(error.message) : String(error),
      );
    }
    const nonce = new Uint8Array(randomBytes(32));
    socket.write(encodeChallenge(options.token !== undefined, nonce));
    const auth = await read(AUTH_BYTES, 'AUTH');
    if (options.token !== undefined) {
      const expected = authTag(options.token, helloBytes, nonce);
      if (!timingSafeEqual(expected, auth))
        refuseWith(RESULT_CODE.AUTH, 'authentication failed: wrong or missing token');
    }
    const refusal = options.accept(hello);
    if (refusal !== undefined) refuseWith(refusal.code, refusal.message);
    socket.write(encodeResult(RESULT_CODE.OK, ''));
    return hello;
  });
}

const LOOPBACK = new BlockList();
LOOPBACK.addSubnet('127.0.0.0', 8, 'ipv4');
LOOPBACK.addAddress('::1', 'ipv6');

/** True for 127.0.0.0/8, ::1 (also IPv4-mapped `::ffff:127.x.y.z`, bracketed) and `localhost`. */
export function isLoopback(host: string): boolean {
  let h = host.trim().toLowerCase();
  if (h.startsWith('[') && h.endsWith(']')) h = h.slice(1, -1);
  if (h === 'localhost' || h === 'localhost.') return true;
  if (isIPv4(h)) return LOOPBACK.check(h, 'ipv4');
  if (isIPv6(h)) {
    if (h.startsWith('::ffff:') && isIPv4(h.slice(7))) return LOOPBACK.check(h.slice(7), 'ipv4');
    return LOOPBACK.check(h, 'ipv6');
  }
  return false;
}

// ---------------------------------------------------------------------------------------------

type Read = (n: number, item: string) => Promise<Uint8Array>;

/**
 * Runs a handshake with exact reads and one deadline. On failure the socket is destroyed
 * (unless the step already ended it politely) and the error is a DirtytrackError.
 */
async function withTimeout<T>(
  socket: Socket,
  timeoutMs: number,
  component: string,
  body: (read: Read) => Promise<T>,
): Promise<T> {
  let cancel: ((error: unknown) => void) | undefined;
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    cancel?.(
      new DirtytrackError('timeout', `handshake did not complete within ${timeoutMs} ms`, {
        component,
        errno: 'ETIMEDOUT',
      }),
    );
  }, timeoutMs);
  let offset = 0;
  const read: Read = (n, item) =>
    new Promise<Uint8Array>((resolve, reject) => {
      if (timedOut) {
        reject(
          new DirtytrackError('timeout', `handshake did not complete within ${timeoutMs} ms`, { component }),
        );
        return;
      }
      const cleanup = (): void => {
        socket.off('readable', attempt);
        socket.off('end', onEnd);
        socket.off('close', onEnd);
        socket.off('error', onError);
        cancel = undefined;
      };
      const attempt = (): void => {
        const b = socket.read(n) as Buffer | null;
        if (b === null) return;
        cleanup();
        if (b.length < n) {
          reject(protocol(`${item} at byte ${offset}: connection closed after ${b.length} of ${n} bytes`));
          return;
        }
        offset += n;
        resolve(new Uint8Array(b.buffer, b.byteOffset, b.length));
      };
      const onEnd = (): void => {
        cleanup();
        reject(protocol(`${item} at byte ${offset}: connection closed by the peer`, 'ECONNRESET'));
      };
      const onError = (error: Error): void => {
        cleanup();
        reject(
          new DirtytrackError('protocol', `${item} at byte ${offset}: ${error.message}`, {
            component,
            cause: error,
          }),
        );
      };
      cancel = (error) => {
        cleanup();
        reject(error);
      };
      if (socket.destroyed || socket.readableEnded) {
        onEnd();
        return;
      }
      socket.on('readable', attempt);
      socket.on('end', onEnd);
      socket.on('close', onEnd);
      socket.on('error', onError);
      attempt();
    });
  const protocol = (message: string, errno?: string): DirtytrackError =>
    new DirtytrackError('protocol', message, { component, ...(errno === undefined ? {} : { errno }) });
  // A peer error while no read is pending (e.g. between writes) must not go unhandled.
  const swallow = (): void => {};
  socket.on('error', swallow);
  try {
    const value = await body(read);
    // Let the stream leave 'readable' mode before the caller attaches a 'data' listener.
    await new Promise<void>((resolve) => setImmediate(resolve));
    return value;
  } catch (error) {
    if (!socket.writableEnded) socket.destroy();
    if (error instanceof DirtytrackError) throw error;
    throw new DirtytrackError(
      'protocol',
      error instanceof Error ? stripPrefix(error.message) : String(error),
      {
        component,
        cause: error,
      },
    );
  } finally {
    clearTimeout(timer);
    socket.off('error', swallow);
  }
}

function readU32(b: Uint8Array, at: number): number {
  return (
    (((b[at] as number) << 24) |
      ((b[at + 1] as number) << 16) |
      ((b[at + 2] as number) << 8) |
      (b[at + 3] as number)) >>>
    0
  );
}

function concat(a: Uint8Array, b: Uint8Array): Uint8Array {
  const out = new Uint8Array(a.length + b.length);
  out.set(a);
  out.set(b, a.length);
  return out;
}

function stripPrefix(message: string): string {
  return message.replace(/^\[dirtytrack\] \[[^\]]*\] /, '');
}

import { DirtytrackError, type RWLock } from '@dirtytrack/core';

/** `VHOST_LOG_PAGE`: bytes of guest memory per log bit. */
export const VHOST_LOG_PAGE = 4096;
/** `VHOST_LOG_CHUNK`: guest bytes covered by one 64-bit log word (256 KiB). */
export const VHOST_LOG_CHUNK = VHOST_LOG_PAGE * 64;

const COMPONENT = 'vhost-log';

export interface VhostLogOptions {
  /**
   * Take this lock for read around each `markDirty` batch: required when the layers run the
   * `'rwlock-memcpy'` strategy, which collects the log with plain loads and stores under the
   * write lock (the slides' "read_lock() + atomics" for setters).
   */
  lock?: RWLock;
}

/**
 * The vhost dirty log (reference/qemu.md §1.1): a shared bitmap, 1 bit per {@link VHOST_LOG_PAGE},
 * in 64-bit chunks, that the backend (a device worker) sets atomically. Attach from a worker with
 * `attachVhostLog(log.buffer, log.pages)`.
 */
export interface VhostLog {
  readonly kind: 'vhost';
  readonly pages: number;
  /** The log's memory, to post to a device worker. */
  readonly buffer: SharedArrayBuffer;
  /** The log as 32-bit words (2 per 64-bit chunk). */
  readonly words: Uint32Array;
  readonly lock: RWLock | undefined;
  /** The device wrote guest pages `offsets[0..count)`: `Atomics.or` of each bit. */
  markDirty(offsets: Uint32Array, count: number): void;
  /** Whether `page` is logged (tests). */
  test(page: number): boolean;
}

export function createVhostLog(pages: number, options: VhostLogOptions = {}): VhostLog {
  if (!(Number.isSafeInteger(pages) && pages >= 0 && pages <= 2 ** 32)) {
    throw new DirtytrackError('invalid-argument', `pages ${pages} is not an integer in [0, 2^32]`, {
      component: COMPONENT,
      field: 'pages',
    });
  }
  if (typeof SharedArrayBuffer === 'undefined') {
    throw new DirtytrackError('unsupported', 'the vhost log needs SharedArrayBuffer', {
      component: COMPONENT,
    });
  }
  return attachVhostLog(new SharedArrayBuffer(Math.ceil(pages / 64) * 8), pages, options);
}

/** Attaches to a vhost log's memory (e.g. in a device worker). */
export function attachVhostLog(
  buffer: SharedArrayBuffer,
  pages: number,
  options: VhostLogOptions = {},
): VhostLog {
  const bytes = Math.ceil(pages / 64) * 8;
  if (buffer.byteLength < bytes) {
    throw new DirtytrackError(
      'invalid-argument',
      `buffer of ${buffer.byteLength} bytes cannot hold ${pages} pages`,
      {
        component: COMPONENT,
        field: 'buffer',
      },
    );
  }
  const words = new Uint32Array(buffer, 0, bytes / 4);
  const { lock } = options;
  return {
    kind: 'vhost',
    pages,
    buffer,
    words,
    lock,
    markDirty(offsets, count) {
      checkCount(offsets, count);
      if (lock !== undefined) lock.readLock();
      try {
        for (let i = 0; i < count; i++) {
          const p = offsets[i] as number;
          if (!(p < pages)) {
            throw new DirtytrackError(
              'out-of-range',
              `markDirty: page ${p} is outside the log (${pages} pages)`,
              {
                component: COMPONENT,
                field: 'offsets',
              },
            );
          }
          Atomics.or(words, p >>> 5, 1 << (p & 31));
        }
      } finally {
        if (lock !== undefined) lock.readUnlock();
      }
    },
    test(page) {
      return page >= 0 && page < pages && ((words[page >>> 5] as number) & (1 << (page & 31))) !== 0;
    },
  };
}

export function checkCount(offsets: Uint32Array, count: number, component = COMPONENT): void {
  if (!(Number.isInteger(count) && count >= 0 && count <= offsets.length)) {
    throw new DirtytrackError(
      'invalid-argument',
      `markDirty: count ${count} is outside [0, ${offsets.length}]`,
      {
        component,
        field: 'count',
      },
    );
  }
}

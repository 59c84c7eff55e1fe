import { DirtytrackError, NS_PER_S, type Transport } from '@dirtytrack/core';

export interface SimLinkOptions {
  /** Bytes per second the link carries (> 0). */
  bandwidth: number;
  /** One-way latency in ns. Default 0. */
  latencyNs?: number;
  /** The link drops at this time (ns): a transmission not finished by then fails (EPIPE). Default never. */
  dropAtNs?: number;
}

/**
 * The model plane's link: a FIFO pipe of fixed bandwidth and latency. A transmission starts when
 * both the caller is ready and the previous one has left, and occupies the link for
 * `bytes / bandwidth`. With `dropAtNs` the link goes down then, and a transmission that has
 * not finished by then fails with `EPIPE`, as a write to a dead socket does.
 */
export function createSimLink(options: SimLinkOptions): Transport {
  const { bandwidth } = options;
  const latencyNs = options.latencyNs ?? 0;
  if (!(Number.isFinite(bandwidth) && bandwidth > 0)) {
    throw new DirtytrackError(
      'invalid-argument',
      `link.bandwidth: ${bandwidth} B/s must be a finite number > 0`,
      {
        component: 'sim-link',
        field: 'link.bandwidth',
      },
    );
  }
  if (!(Number.isFinite(latencyNs) && latencyNs >= 0)) {
    throw new DirtytrackError(
      'invalid-argument',
      `link.latency: ${latencyNs} ns must be a finite number >= 0`,
      {
        component: 'sim-link',
        field: 'link.latency',
      },
    );
  }
  const dropAtNs = options.dropAtNs;
  if (dropAtNs !== undefined && !(dropAtNs >= 0)) {
    throw new DirtytrackError('invalid-argument', `link.drop-at: ${dropAtNs} ns must be >= 0`, {
      component: 'sim-link',
      field: 'link.drop-at',
    });
  }
  let freeAt = 0;
  let bytesSent = 0;
  return {
    kind: 'sim',
    bandwidth,
    latencyNs,
    ...(dropAtNs === undefined ? {} : { downAtNs: dropAtNs }),
    get bytesSent() {
      return bytesSent;
    },
    transmit(bytes, atNs) {
      if (!(bytes >= 0)) {
        throw new DirtytrackError('invalid-argument', `transmit: ${bytes} bytes`, { component: 'sim-link' });
      }
      const start = Math.max(atNs, freeAt);
      const end = start + (bytes * NS_PER_S) / bandwidth;
      if (dropAtNs !== undefined && end > dropAtNs) {
        throw new DirtytrackError(
          'invalid-state',
          `Unable to write to socket: Broken pipe (link dropped at ${dropAtNs / 1e6} ms)`,
          { component: 'sim-link', errno: 'EPIPE' },
        );
      }
      freeAt = end;
      bytesSent += bytes;
      return freeAt;
    },
  };
}

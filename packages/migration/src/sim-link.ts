import { DirtytrackError, NS_PER_S, type Transport } from '@dirtytrack/core';

export interface SimLinkOptions {
  /** Bytes per second the link carries (> 0). */
  bandwidth: number;
  /** One-way latency in ns. Default 0. */
  latencyNs?: number;
}

/**
 * The model plane's link: a FIFO pipe of fixed bandwidth and latency. A transmission starts when
 * both the caller is ready and the previous one has left, and occupies the link for
 * `bytes / bandwidth`. Loss and scheduled drops arrive with the migration issue.
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
  let freeAt = 0;
  let bytesSent = 0;
  return {
    kind: 'sim',
    bandwidth,
    latencyNs,
    get bytesSent() {
      return bytesSent;
    },
    transmit(bytes, atNs) {
      if (!(bytes >= 0)) {
        throw new DirtytrackError('invalid-argument', `transmit: ${bytes} bytes`, { component: 'sim-link' });
      }
      const start = Math.max(atNs, freeAt);
      freeAt = start + (bytes * NS_PER_S) / bandwidth;
      bytesSent += bytes;
      return freeAt;
    },
  };
}

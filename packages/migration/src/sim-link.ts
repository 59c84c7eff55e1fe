import { DirtytrackError, NS_PER_S, type Transport } from '@dirtytrack/core';

/** A span during which the link is down: from `dropAtNs` until `upAtNs` (never back if absent). */
export interface SimLinkOutage {
  dropAtNs: number;
  upAtNs?: number;
}

export interface SimLinkOptions {
  /** Bytes per second the link carries (> 0). */
  bandwidth: number;
  /** One-way latency in ns. Default 0. */
  latencyNs?: number;
  /** The link drops at this time (ns): a transmission not finished by then fails (EPIPE). Default never. */
  dropAtNs?: number;
  /**
   * After a drop, the link carries a new connection from this time on (ns; > `dropAtNs`): what
   * postcopy recovery (`migrate-recover`, `migrate resume=true`) reconnects over. Default never.
   */
  upAtNs?: number;
  /** Further outages after the first (`dropAtNs`/`upAtNs`), in time order, not overlapping. */
  outages?: readonly SimLinkOutage[];
}

/**
 * The model plane's link: a FIFO pipe of fixed bandwidth and latency. A transmission starts when
 * both the caller is ready and the previous one has left, and occupies the link for
 * `bytes / bandwidth`. With `dropAtNs` the link goes down then, and a transmission that has
 * not finished by then fails with `EPIPE`, as a write to a dead socket does; with `upAtNs` it
 * comes back (a new connection: what was queued before the drop is gone), and `outages` adds
 * more drops — a failure during postcopy recovery is a second outage.
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
  if (options.upAtNs !== undefined && (dropAtNs === undefined || !(options.upAtNs > dropAtNs))) {
    throw new DirtytrackError(
      'invalid-argument',
      `link.recover-at: ${options.upAtNs} ns must be after link.drop-at (${dropAtNs ?? 'unset'})`,
      { component: 'sim-link', field: 'link.recover-at' },
    );
  }
  const outages = checkOutages([
    ...(dropAtNs === undefined
      ? []
      : [{ dropAtNs, ...(options.upAtNs === undefined ? {} : { upAtNs: options.upAtNs }) }]),
    ...(options.outages ?? []),
  ]);
  const first = outages[0];
  const outageBetween = (fromNs: number, toNs: number): { downAtNs: number; upAtNs: number } | undefined => {
    for (const o of outages) if (toNs > o.downAtNs && fromNs < o.upAtNs) return o;
    return undefined;
  };
  let freeAt = 0;
  let bytesSent = 0;
  return {
    kind: 'sim',
    bandwidth,
    latencyNs,
    ...(first === undefined ? {} : { downAtNs: first.downAtNs }),
    ...(first === undefined || first.upAtNs === Infinity ? {} : { upAtNs: first.upAtNs }),
    outageBetween,
    get bytesSent() {
      return bytesSent;
    },
    transmit(bytes, atNs) {
      if (!(bytes >= 0)) {
        throw new DirtytrackError('invalid-argument', `transmit: ${bytes} bytes`, { component: 'sim-link' });
      }
      const start = Math.max(atNs, freeAt);
      const end = start + (bytes * NS_PER_S) / bandwidth;
      const down = outageBetween(start, end);
      if (down !== undefined) {
        throw new DirtytrackError(
          'invalid-state',
          `Unable to write to socket: Broken pipe (link dropped at ${down.downAtNs / 1e6} ms)`,
          { component: 'sim-link', errno: 'EPIPE' },
        );
      }
      freeAt = end;
      bytesSent += bytes;
      return freeAt;
    },
  };
}

/**
 * Another connection over `network` (postcopy-preempt's channel): the same bandwidth, latency and
 * outages, but its own queue, so what it sends does not wait behind the main connection's
 * backlog. Both share the wire; the caller keeps their sum within the link's rate.
 */
export function createSimChannel(network: Transport): Transport {
  let freeAt = 0;
  let bytesSent = 0;
  const { bandwidth, latencyNs } = network;
  return {
    kind: 'sim-channel',
    bandwidth,
    latencyNs,
    ...(network.downAtNs === undefined ? {} : { downAtNs: network.downAtNs }),
    ...(network.upAtNs === undefined ? {} : { upAtNs: network.upAtNs }),
    ...(network.outageBetween === undefined
      ? {}
      : { outageBetween: (from: number, to: number) => network.outageBetween?.(from, to) }),
    get bytesSent() {
      return bytesSent;
    },
    transmit(bytes, atNs) {
      const start = Math.max(atNs, freeAt);
      const end = start + (bytes * NS_PER_S) / bandwidth;
      const down = network.outageBetween?.(start, end);
      if (down !== undefined) {
        throw new DirtytrackError(
          'invalid-state',
          `Unable to write to socket: Broken pipe (link dropped at ${down.downAtNs / 1e6} ms)`,
          { component: 'sim-link', errno: 'EPIPE' },
        );
      }
      freeAt = end;
      bytesSent += bytes;
      return freeAt;
    },
  };
}

function checkOutages(list: readonly SimLinkOutage[]): { downAtNs: number; upAtNs: number }[] {
  const out: { downAtNs: number; upAtNs: number }[] = [];
  let after = -Infinity;
  for (const o of list) {
    const up = o.upAtNs ?? Infinity;
    if (!(o.dropAtNs >= 0 && o.dropAtNs >= after && up > o.dropAtNs)) {
      throw new DirtytrackError(
        'invalid-argument',
        `link.outages: drop ${o.dropAtNs} ns, up ${up} ns must follow the previous outage and end after it starts`,
        { component: 'sim-link', field: 'link.outages' },
      );
    }
    out.push({ downAtNs: o.dropAtNs, upAtNs: up });
    after = up;
  }
  return out;
}

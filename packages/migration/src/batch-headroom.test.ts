import type { Transport } from '@dirtytrack/core';
import { describe, expect, it } from 'vitest';
import { migrate } from './__fixtures__/harness.js';

/** The simulated link, but its `bandwidth` says a quarter of what it carries (a live estimate). */
function underestimated(link: Transport, batchHeadroom?: number): Transport {
  return {
    kind: link.kind,
    latencyNs: link.latencyNs,
    get bandwidth() {
      return link.bandwidth / 4;
    },
    get bytesSent() {
      return link.bytesSent;
    },
    transmit: (bytes, atNs) => link.transmit(bytes, atNs),
    ...(batchHeadroom === undefined ? {} : { batchHeadroom }),
  };
}

describe('precopy over a link whose bandwidth is an estimate (batchHeadroom)', () => {
  // An idle 256 MiB guest over 1 GB/s: 268 ms of link time for its pages.
  const idle = { pages: 65536, rate: 0, kind: 'uniform', bandwidth: 1e9 } as const;

  it('without it, each window sends what the low estimate allows and waits out the rest', () => {
    const r = migrate({ ...idle, wrapLink: (l) => underestimated(l) });
    expect(r.info.status).toBe('completed');
    // ~25 MB per 100 ms window, the link idle three quarters of each: 3.2× the link time.
    expect(r.info['total-time']).toBe(869.093);
  });

  it('with it and no max-bandwidth, precopy sends on through the window: the link is kept busy', () => {
    const plain = migrate({ ...idle, wrapLink: (l) => underestimated(l) });
    const live = migrate({ ...idle, wrapLink: (l) => underestimated(l, 1) });
    expect(live.info.status).toBe('completed');
    expect(live.info.ram.transferred).toBe(plain.info.ram.transferred);
    // 268 ms of pages plus the final sync's copy: the link idles only in a window's last < 5 ms.
    expect(live.info['total-time']).toBe(273.322);
    // Headroom 2: the first batch of each window is twice the estimate; still no idle link.
    const twice = migrate({ ...idle, wrapLink: (l) => underestimated(l, 2) });
    expect(twice.info['total-time']).toBe(272.226);
  });

  it('max-bandwidth still caps each window (QEMU rate limit): headroom changes nothing then', () => {
    const capped = { ...idle, precopy: { parameters: { 'max-bandwidth': 128e6 } } };
    const plain = migrate({ ...capped, wrapLink: (l) => underestimated(l) });
    const live = migrate({ ...capped, wrapLink: (l) => underestimated(l, 2) });
    expect(live.info['total-time']).toBe(plain.info['total-time']);
    expect(live.info.ram.transferred).toBe(plain.info.ram.transferred);
  });
});

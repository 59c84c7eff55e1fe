import { describe, expect, it } from 'vitest';
import { migrate } from './__fixtures__/harness.js';
import {
  MULTIFD_PACKET_HEADER,
  MULTIFD_PACKET_PAGES,
  peekPages,
  queuePages,
  syncChannels,
} from './multifd.js';

const PAGE = 4096;
/** 128 page slots: 320 B fixed + 8 B per slot. */
const HDR = 1344;
/** Two channels' handshakes (64 B each). */
const INIT2 = 2 * 64;
/** A sync on two channels: one SYNC packet (header only) each. */
const SYNC2 = 2 * HDR;
/** The main stream's MULTIFD_FLUSH record. */
const FLUSH = 8;
const SYNCS_DIRTY = 3;

describe('multifd packets (qemu.md §4)', () => {
  it('128 page slots per packet, a 1344-byte header charged when the first page is queued', () => {
    expect(MULTIFD_PACKET_PAGES).toBe(128);
    expect(MULTIFD_PACKET_HEADER).toBe(HDR);
    const b = { fill: 0, packets: 0 };
    expect(queuePages(b, 1, 0)).toBe(HDR + PAGE);
    expect(queuePages(b, 126, 1)).toBe(126 * PAGE); // fills packet 1 (zero pages take a slot, no payload)
    expect(b).toEqual({ fill: 0, packets: 1 });
    expect(peekPages(b, 129, 0)).toBe(2 * HDR + 129 * PAGE);
    expect(b).toEqual({ fill: 0, packets: 1 }); // peeking queues nothing
    expect(queuePages(b, 129, 0)).toBe(2 * HDR + 129 * PAGE);
    expect(b).toEqual({ fill: 1, packets: 3 });
    expect(syncChannels(b, 4)).toBe(4 * HDR);
    expect(b.fill).toBe(0);
  });
});

describe('multifd migration, exact byte counts', () => {
  it('an idle 64 MiB guest on 2 channels: one sync at setup, one per round, one at completion (check 9)', () => {
    const { info, stats } = migrate({ pages: 16384, precopy: { capabilities: { multifd: true } } });
    expect(info.status).toBe('completed');
    expect(stats['multifd-syncs']).toBe(3);
    expect(stats['multifd-packets']).toBe(128);
    const payload = 128 * HDR + 16384 * PAGE;
    expect(info.ram['multifd-bytes']).toBe(INIT2 + 3 * SYNC2 + payload);
    expect(info.ram['multifd-bytes']).toBe(67_289_088);
    expect(info.ram.transferred).toBe(67_289_088 + 3 * FLUSH);
    expect(info.ram['downtime-bytes']).toBe(SYNC2 + FLUSH);
    expect(info.ram.normal).toBe(16384);
    expect(info.ram['dirty-sync-count']).toBe(2);
  });

  it('zero pages: in packets (multifd), ZERO records (legacy) or sent in full (none) — check 8, 9', () => {
    const half = { pages: 16384, populated: 8192 };
    const mode = (z: 'multifd' | 'legacy' | 'none') =>
      migrate({
        ...half,
        precopy: { capabilities: { multifd: true }, parameters: { 'zero-page-detection': z } },
      });
    const m = mode('multifd');
    // Zero pages take packet slots but carry no payload: still 128 packets.
    expect(m.stats['multifd-packets']).toBe(128);
    expect(m.info.ram['multifd-bytes']).toBe(INIT2 + 3 * SYNC2 + 128 * HDR + 8192 * PAGE);
    expect(m.info.ram.duplicate).toBe(8192);
    const l = mode('legacy');
    // The migration thread sends 9-byte ZERO records on the main stream; packets carry 8192 pages.
    expect(l.stats['multifd-packets']).toBe(64);
    expect(l.info.ram['multifd-bytes']).toBe(INIT2 + 3 * SYNC2 + 64 * HDR + 8192 * PAGE);
    expect(l.info.ram.transferred).toBe((l.info.ram['multifd-bytes'] as number) + 8192 * 9 + 3 * FLUSH);
    expect(l.info.ram.duplicate).toBe(8192);
    const n = mode('none');
    expect(n.info.ram.duplicate).toBe(0);
    expect(n.info.ram.normal).toBe(16384);
    expect(n.info.ram['multifd-bytes']).toBe(67_289_088);
  });

  it('more channels help only while the link is not the bottleneck', () => {
    const time = (bandwidth: number, ch: number) =>
      migrate({
        pages: 16384,
        bandwidth,
        precopy: { capabilities: { multifd: true }, parameters: { 'multifd-channels': ch } },
      }).info['total-time'];
    // 10 GB/s link: each sender copies a page in 2 µs (2.048 GB/s per channel), so 16384 pages
    // take 32.768 ms on 1 channel, 16.384 on 2, 8.192 on 4; 8 channels hit the link (6.73 ms).
    expect([1, 2, 4, 8].map((c) => time(10e9, c))).toEqual([32.803, 16.42, 8.228, 6.767]);
    // 1 GB/s link: the link is the bottleneck from 1 channel on (only SYNC headers differ).
    expect([1, 2, 4, 8].map((c) => time(1e9, c))).toEqual([67.32, 67.324, 67.333, 67.349]);
  });

  it('zero-copy send removes the per-page copy from the senders’ CPU time', () => {
    const run = (zc: boolean) =>
      migrate({
        pages: 16384,
        bandwidth: 10e9,
        precopy: {
          capabilities: { multifd: true, 'zero-copy-send': zc },
          parameters: { 'multifd-channels': 1 },
        },
      });
    const copy = run(false);
    const zero = run(true);
    expect(copy.stats['send-cpu-time']).toBe(32.768); // 16384 × 2 µs
    expect(zero.stats['send-cpu-time']).toBe(8.192); // 16384 × 0.5 µs
    expect(zero.info['total-time']).toBe(8.227);
    expect(zero.info.ram['dirty-sync-missed-zero-copy']).toBe(0);
    expect(copy.info.ram['dirty-sync-missed-zero-copy']).toBeUndefined();
    // Pages stay pinned from their send until the next sync flushes the error queue.
    expect(zero.stats['zero-copy-peak-pinned']).toBe(16384 * PAGE);
  });

  it('zero-copy fails with ENOBUFS when the pages in flight exceed the locked-memory limit', () => {
    const run = (lockedMemory: number) =>
      migrate({
        pages: 16384,
        bandwidth: 10e9,
        precopy: { lockedMemory, capabilities: { multifd: true, 'zero-copy-send': true } },
      });
    const fail = run(32 * 2 ** 20);
    expect(fail.info.status).toBe('failed');
    expect(fail.info['error-desc']).toBe("Process can't lock enough memory for using MSG_ZEROCOPY (ENOBUFS)");
    // The page that crossed the limit: 32 MiB + one 32-page word.
    expect(fail.stats['zero-copy-peak-pinned']).toBe(32 * 2 ** 20 + 32 * PAGE);
    expect(fail.engine.running).toBe(true);
    expect(run(64 * 2 ** 20).info.status).toBe('completed');
  });

  it('zero-copy needs multifd; channels must be 1..255', () => {
    expect(() => migrate({ pages: 64, precopy: { capabilities: { 'zero-copy-send': true } } })).toThrow(
      /migration\.capabilities\.zero-copy-send: needs multifd/,
    );
    expect(() =>
      migrate({
        pages: 64,
        precopy: { capabilities: { multifd: true }, parameters: { 'multifd-channels': 0 } },
      }),
    ).toThrow(/migration\.parameters\.multifd-channels/);
  });

  it('a dirtying guest: each round wrap syncs, and every sync is on every channel', () => {
    const { info, stats } = migrate({
      pages: 16384,
      rate: 50e6,
      bandwidth: 200e6,
      precopy: { capabilities: { multifd: true }, parameters: { 'multifd-channels': 4 } },
    });
    expect(info.status).toBe('completed');
    const syncBytes = stats['multifd-syncs'] * 4 * HDR;
    expect(info.ram['multifd-bytes']).toBe(
      4 * 64 + syncBytes + stats['multifd-packets'] * HDR + info.ram.normal * PAGE,
    );
    expect(info.ram.transferred).toBe((info.ram['multifd-bytes'] as number) + stats['multifd-syncs'] * FLUSH);
    // Setup; the final copy starts mid-RAM and wraps (a round ends: sync); completion.
    expect(stats['multifd-syncs']).toBe(SYNCS_DIRTY);
  });
});

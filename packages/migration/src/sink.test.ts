import { PAGE_SIZE, popcount32 } from '@dirtytrack/core';
import { describe, expect, it } from 'vitest';
import { migrate } from './__fixtures__/harness.js';
import {
  MULTIFD_FLUSH_RECORD,
  MULTIFD_INIT_BYTES,
  MULTIFD_PACKET_HEADER,
  MULTIFD_PACKET_PAGES,
} from './multifd.js';
import type { PageSink } from './precopy.js';

/**
 * A sink that prices what it is handed the way the live wire format lays it out (WIRE.md): a
 * page record (8 + 4096 B) or a zero record (9 B) per page on the main stream, or multifd packets
 * of 128 slots (a 1344-byte header each, then the data pages), a SYNC packet per channel and a
 * MULTIFD_FLUSH record per sync. It keeps the pages it saw, in order.
 */
function recordingSink() {
  let config: Parameters<PageSink['begin']>[0] | undefined;
  let bytes = 0;
  let fill = 0;
  let packets = 0;
  let syncs = 0;
  let completes = 0;
  let data = 0;
  let zero = 0;
  const sent = new Map<number, number>();
  const slot = (n: number): void => {
    for (let i = 0; i < n; i++) {
      if (fill === 0) {
        bytes += MULTIFD_PACKET_HEADER;
        packets++;
      }
      fill = (fill + 1) % MULTIFD_PACKET_PAGES;
    }
  };
  const sink: PageSink = {
    begin(c) {
      config = c;
    },
    pages(word, mask, d) {
      expect(d & ~mask).toBe(0);
      const n = popcount32(d);
      const z = popcount32(mask & ~d);
      data += n;
      zero += z;
      for (let rest = mask >>> 0; rest !== 0; rest = (rest & (rest - 1)) >>> 0) {
        const page = word * 32 + 31 - Math.clz32(rest & -rest);
        sent.set(page, (sent.get(page) ?? 0) + 1);
      }
      const c = config as NonNullable<typeof config>;
      if (!c.multifd) {
        bytes += n * (8 + PAGE_SIZE) + z * (c.zeroPages === 'none' ? 8 + PAGE_SIZE : 9);
        return;
      }
      slot(n + (c.zeroPages === 'packet' ? z : 0));
      bytes += n * PAGE_SIZE + (c.zeroPages === 'record' ? z * 9 : 0);
    },
    multifdSync() {
      const c = config as NonNullable<typeof config>;
      fill = 0;
      syncs++;
      bytes += c.channels * MULTIFD_PACKET_HEADER + MULTIFD_FLUSH_RECORD;
    },
    complete() {
      completes++;
    },
  };
  return {
    sink,
    get: () => ({ config, bytes, packets, syncs, completes, data, zero, sent }),
  };
}

describe('precopy hands every sent page to its sink, and charges exactly the wire bytes', () => {
  const cases = [
    { name: 'main stream, zero records', capabilities: {}, parameters: {} },
    {
      name: 'main stream, zero pages sent in full',
      capabilities: {},
      parameters: { 'zero-page-detection': 'none' as const },
    },
    {
      name: 'multifd, zero pages in packets',
      capabilities: { multifd: true },
      parameters: { 'multifd-channels': 3 },
    },
    {
      name: 'multifd, legacy zero records',
      capabilities: { multifd: true },
      parameters: { 'multifd-channels': 2, 'zero-page-detection': 'legacy' as const },
    },
  ];
  for (const c of cases) {
    it(c.name, () => {
      const r = recordingSink();
      // 8192 pages, 7000 populated, a uniform writer: several rounds, then convergence.
      const { info, stats } = migrate({
        pages: 8192,
        populated: 7000,
        kind: 'uniform',
        rate: 40 * 2 ** 20,
        bandwidth: 200 * 2 ** 20,
        seed: 7,
        precopy: {
          sink: r.sink,
          parameters: { 'max-bandwidth': 0, 'downtime-limit': 10, ...c.parameters },
          capabilities: c.capabilities,
        },
      });
      const got = r.get();
      expect(info.status).toBe('completed');
      expect(got.completes).toBe(1);
      // A run worth checking: several rounds, pages re-sent, zero pages where detection is on.
      expect(info.ram['dirty-sync-count']).toBeGreaterThan(3);
      expect(got.data + got.zero).toBeGreaterThan(8192);
      if (c.parameters['zero-page-detection'] !== 'none') expect(got.zero).toBeGreaterThan(0);
      expect(got.data).toBe(info.ram.normal);
      expect(got.zero).toBe(info.ram.duplicate);
      // Every page went at least once; pages written during the run went again.
      expect(got.sent.size).toBe(8192);
      const init =
        c.capabilities.multifd === true ? (c.parameters['multifd-channels'] ?? 2) * MULTIFD_INIT_BYTES : 0;
      expect(got.bytes + init).toBe(info.ram.transferred);
      if (c.capabilities.multifd === true) {
        expect(got.packets).toBe(stats['multifd-packets']);
        expect(got.syncs).toBe(stats['multifd-syncs']);
      }
    });
  }
});

import { NS_PER_S } from '@dirtytrack/core';
import { describe, expect, it } from 'vitest';
import { migrate } from './__fixtures__/harness.js';

const MIB = 2 ** 20;

describe("postcopy with huge host pages (qemu.md §3, the slides' hugetlbfs remedies)", () => {
  // A 2 GiB guest, 2 vCPUs writing uniformly at 64 MiB/s each over a 1 Gbit/s link; postcopy
  // at 4 s, when precopy's first round has sent a quarter of memory.
  function run(backing: number, o: { doubleMap?: boolean; minor?: boolean } = {}) {
    const placed: [number, number][] = [];
    const r = migrate({
      pages: 2 ** 19,
      vcpus: 2,
      rate: 8 * MIB,
      kind: 'uniform',
      sweepRange: { offset: 0, workingSet: 2 ** 14 },
      bandwidth: 125e6,
      postcopyAtNs: 17.5 * NS_PER_S,
      precopy: {
        hostPageSize: backing,
        ...(o.doubleMap ? { postcopyDoubleMap: true } : {}),
        ...(o.minor ? { postcopyUffdMinor: true } : {}),
        onPlace: (page, _t, pages) => placed.push([page, pages]),
      },
    });
    return { ...r, placed };
  }

  const KIB4 = 4096;
  const MIB2 = 2 * MIB;
  const GIB1 = 2 ** 30;

  it('4K pages: only the stale pages are discarded, requested and placed, one by one', () => {
    const { info, stats, events, placed } = run(KIB4);
    expect(info.status).toBe('completed');
    expect(events.find((e) => e.status === 'postcopy-active')?.remaining).toBe(8453 * KIB4);
    expect([info.downtime, stats['postcopy-discard-ranges']]).toEqual([0.275, 988]);
    expect([info.ram['postcopy-requests'], info['postcopy-blocktime']]).toEqual([290, 0.344]);
    expect(info.ram['postcopy-bytes']).toBe(34_691_112);
    expect(placed).toHaveLength(8453);
  });

  it.each([
    // backing, host pages placed, blocktime ms, total ms
    [MIB2, 32, 497.919, 18_040.284],
    [GIB1, 1, 8596.712, 26_109.076],
  ])(
    'a %d-byte host page holding a stale page is discarded whole, requested once, sent whole and placed once',
    (backing, hostPages, blocktime, total) => {
      const { info, stats, events, placed } = run(backing);
      const unit = backing / KIB4;
      expect(info.status).toBe('completed');
      // postcopy_chunk_hostpages: every host page of the 64 MiB the guest writes is stale whole.
      const remaining = events.find((e) => e.status === 'postcopy-active')?.remaining;
      expect(remaining).toBe(hostPages * backing);
      expect(stats['postcopy-discard-ranges']).toBe(1);
      expect(info.downtime).toBe(0.139);
      // Each host page placed once, whole.
      expect(placed.every(([page, pages]) => pages === unit && page % unit === 0)).toBe(true);
      expect(new Set(placed.map(([page]) => page)).size).toBe(hostPages);
      expect(placed).toHaveLength(hostPages);
      expect(stats['postcopy-placed']).toBe(hostPages);
      // One request per host page at most; the faulting vCPU waits for all of it.
      expect(info.ram['postcopy-requests']).toBe(hostPages);
      expect(info.ram['postcopy-bytes']).toBe(hostPages * unit * 4104);
      expect([info['postcopy-blocktime'], info['total-time']]).toEqual([blocktime, total]);
    },
  );

  it('1G blocks the faulting vCPUs longer than 2M, 2M longer than 4K; double-map brings 1G back near 4K', () => {
    const [k4, m2, g1] = [run(KIB4), run(MIB2), run(GIB1)].map((r) => r.info['postcopy-blocktime'] ?? 0);
    const dm = run(GIB1, { doubleMap: true });
    expect(k4).toBeLessThan(m2 as number);
    expect(m2).toBeLessThan(g1 as number);
    // Double-map: the same whole-GiB discard and re-send, but a fault waits for its 4 KiB only,
    // so there are many small requests instead of one that stalls for the whole page.
    expect(dm.info['postcopy-blocktime']).toBe(11.71);
    expect(dm.info.ram['postcopy-requests']).toBe(8117);
    expect(dm.info.ram['postcopy-bytes']).toBe((GIB1 / KIB4) * 4104);
    expect(dm.placed).toHaveLength(GIB1 / KIB4);
    expect(dm.placed.every(([, pages]) => pages === 1)).toBe(true);
    expect(dm.stats['postcopy-request-latency']).toBe(10.014);
  });

  it('uffd minor mode re-sends only the stale pages and still places each host page whole', () => {
    const k4 = run(KIB4);
    for (const [backing, hostPages, blocktime] of [
      [MIB2, 32, 245.428],
      [GIB1, 1, 267.529],
    ] as const) {
      const whole = run(backing);
      const minor = run(backing, { minor: true });
      expect(minor.info.status).toBe('completed');
      // The page cache survives: the discard and the re-send are those of 4K pages…
      expect(minor.stats['postcopy-discard-ranges']).toBe(k4.stats['postcopy-discard-ranges']);
      expect(minor.info.ram['postcopy-bytes']).toBe(k4.info.ram['postcopy-bytes']);
      expect(minor.info.ram['postcopy-bytes']).toBeLessThan(whole.info.ram['postcopy-bytes'] ?? 0);
      // …but a huge page is still mapped whole: one request per host page with stale parts.
      expect(minor.info.ram['postcopy-requests']).toBe(hostPages);
      expect(minor.placed).toHaveLength(hostPages);
      expect(minor.info['postcopy-blocktime']).toBe(blocktime);
      expect(minor.info['postcopy-blocktime']).toBeLessThan(whole.info['postcopy-blocktime'] ?? 0);
    }
  });

  it('rejects a host page that is not 4K, 2M or 1G, or does not divide RAM', () => {
    expect(() => run(3 * MIB)).toThrow(
      /backing: a 3145728-byte host page is not one of 4096, 2097152, 1073741824/,
    );
    expect(() => migrate({ pages: 1000, precopy: { hostPageSize: MIB2 } })).toThrow(
      /backing: a 2097152-byte host page does not divide RAM \(1000 pages\)/,
    );
  });
});

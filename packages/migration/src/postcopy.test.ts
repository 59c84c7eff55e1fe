import { Bitmap, NS_PER_MS, NS_PER_S, type Workload } from '@dirtytrack/core';
import { describe, expect, it } from 'vitest';
import { migrate, reportingWrites } from './__fixtures__/harness.js';
import { planDiscard } from './postcopy.js';

describe('postcopy discard plan (qemu.md §3)', () => {
  it('counts runs of dirty pages word-wise, 12 ranges per RAM_DISCARD command', () => {
    const b = Bitmap.create(256);
    b.setRange(0, 40); // one run across a word boundary
    b.set(63);
    b.set(64); // one run across the next boundary
    for (let p = 100; p < 150; p += 2) b.set(p); // 25 single-page runs
    const plan = planDiscard(b, 'pc.ram');
    expect(plan.ranges).toBe(27);
    expect(plan.commands).toBe(3);
    // 3 × (5 B command header + version + name length + "pc.ram" + NUL) + 27 × 16 B.
    expect(plan.bytes).toBe(3 * 14 + 27 * 16);
  });
});

const BLOCKTIME_SWEEP = 672.665;
const LATENCY_SWEEP = 20.011;
const FREE_TIME = 1351.88;
const CAPPED_TIME = 6560.036;

describe('postcopy basic path (conformance check 10)', () => {
  // A 64 MiB guest sweeping at 100 MB/s over a 50 MB/s link: precopy alone never converges.
  const base = { pages: 16384, rate: 100e6, bandwidth: 50e6, timeLimitS: 120 };

  /** Runs with postcopy at 3 s, recording placements and the destination's writes. */
  function run(kind: 'sweep' | 'uniform') {
    const placedAt = new Map<number, number>();
    const duplicates: number[] = [];
    const writes: { t: number; p: number }[] = [];
    let inPostcopy = false;
    const result = migrate({
      ...base,
      kind,
      postcopyAtNs: 3 * NS_PER_S,
      wrapWorkload: (w: Workload): Workload =>
        reportingWrites(w, (p, t) => {
          if (inPostcopy) writes.push({ t, p });
        }),
      precopy: {
        onStatus: (e) => (inPostcopy = e.status === 'postcopy-active'),
        onPlace: (page, t) => {
          if (placedAt.has(page)) duplicates.push(page);
          placedAt.set(page, t);
        },
      },
    });
    return { ...result, placedAt, duplicates, writes };
  }

  it('switches on request: active → postcopy-active → completed, with a small downtime', () => {
    const precopyOnly = migrate(base);
    expect(precopyOnly.info.status).toBe('active');
    const { info, events, stats } = run('sweep');
    expect(events.map((e) => [e.status, e.time])).toEqual([
      ['setup', 0],
      ['active', 0.034],
      ['postcopy-active', 3002.428],
      ['completed', 4355.092],
    ]);
    expect(info.status).toBe('completed');
    // The stop: a final sync and one discard range (30 B), nothing else.
    expect(info.downtime).toBe(0.681);
    expect(info.ram['downtime-bytes']).toBe(30);
    expect(stats['postcopy-discard-ranges']).toBe(1);
    expect(info.ram['postcopy-bytes']).toBe(16384 * 4104);
    expect(info.ram.remaining).toBe(0);
    // Every page is requested; the link (50 MB/s) carries 122 pages per 10 ms step while the
    // vCPUs fault on ~244, so the guest spends most of the phase blocked.
    expect(info.ram['postcopy-requests']).toBe(16384);
    expect(info['postcopy-blocktime']).toBe(BLOCKTIME_SWEEP);
    expect(stats['postcopy-request-latency']).toBe(LATENCY_SWEEP);
  });

  it('reports progress once a second of migration time in both phases', () => {
    // [ms, transferred, remaining pages, dirty-sync-count] at each onProgress.
    const seen: number[][] = [];
    const { events } = migrate({
      ...base,
      kind: 'sweep',
      postcopyAtNs: 3 * NS_PER_S,
      precopy: {
        onProgress: (p) =>
          seen.push([Math.round(p.timeNs / 1e3) / 1e3, p.transferred, p.remaining / 4096, p.syncs]),
      },
    });
    expect(events.find((e) => e.status === 'postcopy-active')?.time).toBe(3002.428);
    expect(seen).toEqual([
      [0.034, 0, 16384, 1],
      [1000.589, 50027760, 4194, 1],
      [2001.168, 100022688, 5421, 2],
      [3001.747, 150017616, 6640, 3],
      // In postcopy (from 3002.428 ms): what the source has still to send of the pages the
      // destination lacked at the switch, which only falls from here on.
      [4004.378, 200115174, 4177, 4],
    ]);
  });

  it('a uniform guest (touching part of its pages) faults on fewer pages and blocks less than a sweeping one', () => {
    const sweep = run('sweep');
    const uniform = run('uniform');
    expect(uniform.info.ram['postcopy-requests']).toBeLessThan(sweep.info.ram['postcopy-requests'] ?? 0);
    expect(uniform.info['postcopy-blocktime']).toBeLessThan(sweep.info['postcopy-blocktime'] ?? 0);
  });

  it('places every page missing at the switch exactly once', () => {
    for (const kind of ['sweep', 'uniform'] as const) {
      const { info, events, stats, placedAt, duplicates } = run(kind);
      const missing = (events.find((e) => e.status === 'postcopy-active')?.remaining ?? -1) / 4096;
      expect(info.status).toBe('completed');
      expect(duplicates).toEqual([]);
      expect(placedAt.size).toBe(missing);
      expect(stats['postcopy-placed']).toBe(missing);
    }
  });

  it('serves a fault in the step it happens, ahead of the background stream; received pages are never requested', () => {
    const { info, placedAt, writes } = run('uniform');
    const faulted = new Set<number>();
    for (const { t, p } of writes) {
      const placed = placedAt.get(p);
      if (placed === undefined) continue; // received during precopy: no fault
      if (placed >= t && !faulted.has(p)) {
        // The first write to a missing page: its page is placed in this very step.
        expect(placed).toBe(t);
        faulted.add(p);
      }
    }
    expect(info.ram['postcopy-requests']).toBe(faulted.size);
    expect(faulted.size).toBe(7494);
    expect(placedAt.size).toBeGreaterThan(faulted.size); // the rest came in the background
  });

  it('max-postcopy-bandwidth caps the stream once in postcopy', () => {
    // An idle guest switched at once: 16384 pages × 4104 B at 50 MB/s in 10 ms steps = 1351.88 ms.
    // Capped at 10 MB/s, a step's 100,000 B budget takes 25 pages (the limit is checked before
    // each page, so the last overshoots): 656 steps.
    const run = (cap: number) =>
      migrate({
        pages: 16384,
        bandwidth: 50e6,
        postcopyAtNs: 0,
        precopy: { parameters: { 'max-postcopy-bandwidth': cap } },
      }).info;
    const free = run(0);
    const capped = run(10e6);
    expect(free['total-time']).toBe(FREE_TIME);
    expect(capped['total-time']).toBe(CAPPED_TIME);
    expect(capped.ram['postcopy-requests']).toBe(0);
  });

  it('needs the capability and the destination workload; preempt needs postcopy-ram', () => {
    expect(() => migrate({ pages: 64, precopy: { startPostcopyAtNs: NS_PER_MS } })).toThrow(
      /migration\.capabilities\.postcopy-ram: migrate-start-postcopy needs/,
    );
    expect(() => migrate({ pages: 64, precopy: { capabilities: { 'postcopy-ram': true } } })).toThrow(
      /destinationWorkload/,
    );
    expect(() => migrate({ pages: 64, precopy: { capabilities: { 'postcopy-preempt': true } } })).toThrow(
      /migration\.capabilities\.postcopy-preempt: needs postcopy-ram/,
    );
  });

  it('a link drop during postcopy pauses it (postcopy-paused) instead of failing back', () => {
    const { info, events } = migrate({ ...base, postcopyAtNs: 3 * NS_PER_S, dropAtNs: 3.5 * NS_PER_S });
    expect(events.map((e) => e.status)).toEqual(['setup', 'active', 'postcopy-active', 'postcopy-paused']);
    expect(info.status).toBe('postcopy-paused');
    expect(info['error-desc']).toMatch(/Broken pipe/);
  });
});

describe('postcopy-preempt (qemu.md §3: a second channel for requested pages)', () => {
  // A 64 MiB guest writing 10 MB/s uniformly over a 50 MB/s link with 1 ms one-way latency,
  // switched to postcopy at 0.5 s. Without preempt a requested page leaves on the main channel
  // with the step's background stream and the vCPU waits for all of it; with preempt it leaves
  // at once on its own channel and the background stream follows it on the wire.
  const run = (preempt: boolean, rate = 10e6, atNs = 0.5 * NS_PER_S) =>
    migrate({
      pages: 16384,
      rate,
      bandwidth: 50e6,
      latencyNs: NS_PER_MS,
      kind: 'uniform',
      timeLimitS: 120,
      postcopyAtNs: atNs,
      precopy: { capabilities: { 'postcopy-preempt': preempt } },
    });

  it('lowers request latency and blocktime for the same requests', () => {
    const off = run(false);
    const on = run(true);
    expect([off.info.status, on.info.status]).toEqual(['completed', 'completed']);
    expect([off.info.ram['postcopy-requests'], on.info.ram['postcopy-requests']]).toEqual([717, 717]);
    expect([off.stats['postcopy-request-latency'], on.stats['postcopy-request-latency']]).toEqual([
      12.014, 2.931,
    ]);
    expect([off.info['postcopy-blocktime'], on.info['postcopy-blocktime']]).toEqual([169.156, 0]);
    expect([off.info['total-time'], on.info['total-time']]).toEqual([1561.739, 1393.739]);
    // The same pages, the same bytes: only the channel the urgent ones take differs.
    expect(on.info.ram.transferred).toBe(off.info.ram.transferred);
    expect(on.stats['postcopy-preempt-bytes']).toBe(2_942_568);
    expect(off.stats['postcopy-preempt-bytes']).toBeUndefined();
  });

  it('still helps when the vCPUs fault faster than the link carries (100 MB/s guest, switch at 3 s)', () => {
    const off = run(false, 100e6, 3 * NS_PER_S);
    const on = run(true, 100e6, 3 * NS_PER_S);
    expect([off.info.ram['postcopy-requests'], on.info.ram['postcopy-requests']]).toEqual([7494, 7494]);
    expect([off.stats['postcopy-request-latency'], on.stats['postcopy-request-latency']]).toEqual([
      12.944, 11.138,
    ]);
    expect([off.info['postcopy-blocktime'], on.info['postcopy-blocktime']]).toEqual([225.644, 106.767]);
  });
});

describe('postcopy with multifd (QEMU 10.x)', () => {
  // The same 100 MB/s uniform guest: precopy on 2 multifd channels until 3 s, then postcopy.
  const run = (multifd: boolean) =>
    migrate({
      pages: 16384,
      rate: 100e6,
      bandwidth: 50e6,
      kind: 'uniform',
      timeLimitS: 120,
      postcopyAtNs: 3 * NS_PER_S,
      precopy: { capabilities: { multifd } },
    });

  it('precopy goes on the multifd channels, postcopy pages on the main channel', () => {
    const { info, stats, events } = run(true);
    expect(events.map((e) => e.status)).toEqual(['setup', 'active', 'postcopy-active', 'completed']);
    expect(info.ram['postcopy-requests']).toBe(7496);
    // Postcopy's pages are main-stream PAGE records (4104 B), none on multifd.
    expect(info.ram['postcopy-bytes']).toBe(stats['postcopy-placed'] * 4104);
    expect(stats['postcopy-placed']).toBe(11565);
    // multifd-bytes: the precopy part only — the handshakes, packets and syncs up to and
    // including the flush at the switch (which goes in the downtime with the discard ranges).
    expect(info.ram['multifd-bytes']).toBe(149_982_528);
    expect(stats['multifd-syncs']).toBe(4);
    expect(info.ram['multifd-bytes']).toBeLessThanOrEqual(
      info.ram['precopy-bytes'] + info.ram['downtime-bytes'],
    );
    expect(info.ram.transferred).toBe(
      info.ram['precopy-bytes'] + info.ram['downtime-bytes'] + (info.ram['postcopy-bytes'] ?? 0),
    );
    expect(info.ram.remaining).toBe(0);
  });

  it('with preempt too: the multifd bytes stay the precopy part', () => {
    const on = migrate({
      pages: 16384,
      rate: 100e6,
      bandwidth: 50e6,
      kind: 'uniform',
      timeLimitS: 120,
      postcopyAtNs: 3 * NS_PER_S,
      precopy: { capabilities: { multifd: true, 'postcopy-preempt': true } },
    });
    expect(on.info.status).toBe('completed');
    expect(on.info.ram['multifd-bytes']).toBe(149_982_528);
    expect((on.stats['postcopy-preempt-bytes'] ?? 0) > 0).toBe(true);
  });
});

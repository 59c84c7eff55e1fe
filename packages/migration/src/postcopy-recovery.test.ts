import { NS_PER_MS, NS_PER_S } from '@dirtytrack/core';
import { describe, expect, it } from 'vitest';
import { migrate, type Setup } from './__fixtures__/harness.js';
import { RP_RECV_BITMAP_FIXED } from './postcopy.js';
import { createSimChannel, createSimLink } from './sim-link.js';

/**
 * Postcopy recovery (reference/qemu.md §3 Recovery). A 64 MiB guest sweeping at 100 MB/s over a
 * 50 MB/s link switches to postcopy at 3 s; the link drops at 3.5 s, while the destination
 * still lacks most of its memory.
 */
const base: Setup = {
  pages: 16384,
  rate: 100e6,
  bandwidth: 50e6,
  timeLimitS: 120,
  postcopyAtNs: 3 * NS_PER_S,
  dropAtNs: 3.5 * NS_PER_S,
};

/** Runs `s`, recording every placement (page → time) and any page placed twice. */
function run(s: Setup) {
  const placedAt = new Map<number, number>();
  const twice: number[] = [];
  const r = migrate({
    ...s,
    precopy: {
      ...s.precopy,
      onPlace: (page, t, pages) => {
        for (let p = page; p < page + pages; p++) {
          if (placedAt.has(p)) twice.push(p);
          placedAt.set(p, t);
        }
      },
    },
  });
  return { ...r, placedAt, twice };
}

describe('postcopy recovery', () => {
  it('paused at the drop, recovered on migrate resume: recover-setup → recover → postcopy-active → completed', () => {
    const { info, events, stats } = run({
      ...base,
      upAtNs: 5 * NS_PER_S,
      precopy: { recoverAtNs: 5 * NS_PER_S },
    });
    expect(events.map((e) => [e.status, e.time])).toEqual([
      ['setup', 0],
      ['active', 0.034],
      ['postcopy-active', 3002.428],
      ['postcopy-paused', 3500],
      ['postcopy-recover-setup', 5000],
      ['postcopy-recover', 5000],
      // RECV_BITMAP's command (12 B) out, the 2 KiB bitmap back, POSTCOPY_RESUME (5 B) out and
      // RESUME_ACK (8 B) back, at 50 MB/s: 42 µs.
      ['postcopy-active', 5000.042],
      ['completed', 5871.718],
    ]);
    expect(info.status).toBe('completed');
    expect(info['error-desc']).toBeUndefined();
    expect(info.ram.remaining).toBe(0);
    // RP RECV_BITMAP: be16 type, be16 len, u8 len + "pc.ram", be64 size, 2048 bitmap bytes, be64 end mark.
    expect(stats['postcopy-recv-bitmap-bytes']).toBe(RP_RECV_BITMAP_FIXED + 2048);
    expect(RP_RECV_BITMAP_FIXED).toBe(27);
    expect(stats['postcopy-pauses']).toBe(1);
    // Every page once: 16384 placed. The step cut off by the drop had 244 requests; the
    // destination sends them again on resume and the source counts them again, as QEMU's
    // postcopy_requests does: 16384 + 244.
    expect(stats['postcopy-placed']).toBe(16384);
    expect(info.ram['postcopy-requests']).toBe(16628);
    expect(info['postcopy-blocktime']).toBe(2189.29);
    expect(stats['postcopy-request-latency']).toBe(43.194);
  });

  it('the faulting vCPUs stay blocked while paused: blocktime grows with the time until recovery', () => {
    const at = (s: number) =>
      run({ ...base, upAtNs: s * NS_PER_S, precopy: { recoverAtNs: s * NS_PER_S } }).info;
    const early = at(4);
    const late = at(5);
    expect([early.status, late.status]).toEqual(['completed', 'completed']);
    expect(late['postcopy-blocktime'] as number).toBeCloseTo(
      (early['postcopy-blocktime'] as number) + 1000,
      3,
    );
    expect(late['total-time']).toBeCloseTo(early['total-time'] + 1000, 3);
    expect(late.ram['postcopy-requests']).toBe(early.ram['postcopy-requests']);
  });

  it('without migrate resume it stays paused; an attempt before the drop is refused', () => {
    const paused = run({ ...base, upAtNs: 5 * NS_PER_S });
    expect(paused.events.map((e) => e.status)).toEqual([
      'setup',
      'active',
      'postcopy-active',
      'postcopy-paused',
    ]);
    expect(paused.info.status).toBe('postcopy-paused');
    expect(paused.stopReason).toBe('failed');
    const early = run({ ...base, upAtNs: 5 * NS_PER_S, precopy: { recoverAtNs: [NS_PER_S, 5 * NS_PER_S] } });
    expect(early.events.filter((e) => e.status === 'postcopy-recover-setup').map((e) => e.time)).toEqual([
      5000,
    ]);
    expect(early.info.status).toBe('completed');
  });

  it('a second drop after recovery pauses it again; a second resume completes it', () => {
    const { info, events, stats, placedAt, twice } = run({
      ...base,
      upAtNs: 4 * NS_PER_S,
      outages: [{ dropAtNs: 4.2 * NS_PER_S, upAtNs: 4.5 * NS_PER_S }],
      precopy: { recoverAtNs: [4 * NS_PER_S, 4.5 * NS_PER_S] },
    });
    expect(events.map((e) => [e.status, e.time])).toEqual([
      ['setup', 0],
      ['active', 0.034],
      ['postcopy-active', 3002.428],
      ['postcopy-paused', 3500],
      ['postcopy-recover-setup', 4000],
      ['postcopy-recover', 4000],
      ['postcopy-active', 4000.042],
      ['postcopy-paused', 4200],
      ['postcopy-recover-setup', 4500],
      ['postcopy-recover', 4500],
      ['postcopy-active', 4500.042],
      ['completed', 5191.388],
    ]);
    expect(info.status).toBe('completed');
    expect(stats['postcopy-pauses']).toBe(2);
    expect(stats['postcopy-recv-bitmap-bytes']).toBe(2 * 2075);
    expect(twice).toEqual([]);
    expect(placedAt.size).toBe(16384);
  });

  it('2 MiB host pages: a huge page half-received at the drop is re-sent whole and placed once', () => {
    const s: Setup = {
      ...base,
      kind: 'uniform',
      upAtNs: 4 * NS_PER_S,
      precopy: { recoverAtNs: 4 * NS_PER_S, hostPageSize: 2 ** 21 },
    };
    const { info, stats, events, placedAt, twice } = run(s);
    expect(events.map((e) => e.status).slice(3)).toEqual([
      'postcopy-paused',
      'postcopy-recover-setup',
      'postcopy-recover',
      'postcopy-active',
      'completed',
    ]);
    expect(info.status).toBe('completed');
    expect(twice).toEqual([]);
    // All 32 huge pages were discarded (each held a stale page): 32 placed, each once.
    expect(stats['postcopy-placed']).toBe(32);
    expect(placedAt.size).toBe(16384);
    expect(info.ram['postcopy-requests']).toBe(64);
    // Without the drop the same 32 go once (67,239,936 B); the drop cost a re-send of the huge
    // pages in flight and the recovery's commands.
    const { dropAtNs: _drop, upAtNs: _up, ...noDrop } = s;
    const clean = run({ ...noDrop, precopy: { hostPageSize: 2 ** 21 } });
    expect(clean.info.ram['postcopy-bytes']).toBe(67_239_936);
    expect(info.ram['postcopy-bytes']).toBe(134_479_889);
  });

  it('with postcopy-preempt the preempt channel is re-created on resume', () => {
    const { info, stats, twice, placedAt } = run({
      ...base,
      kind: 'uniform',
      latencyNs: NS_PER_MS,
      upAtNs: 4 * NS_PER_S,
      precopy: { recoverAtNs: 4 * NS_PER_S, capabilities: { 'postcopy-preempt': true } },
    });
    expect(info.status).toBe('completed');
    expect(twice).toEqual([]);
    expect(placedAt.size).toBe(stats['postcopy-placed']);
    expect(info.ram['postcopy-requests']).toBe(7625);
    expect(stats['postcopy-preempt-bytes']).toBe(31_293_000);
    expect(info['postcopy-blocktime']).toBe(617.762);
  });
});

describe('SimLink outages', () => {
  it('comes back up at upAtNs: a transmission across the outage fails, one after it goes', () => {
    const l = createSimLink({ bandwidth: 1000, dropAtNs: NS_PER_S, upAtNs: 2 * NS_PER_S });
    expect([l.downAtNs, l.upAtNs]).toEqual([NS_PER_S, 2 * NS_PER_S]);
    expect(() => l.transmit(1, 1.5 * NS_PER_S)).toThrow(/Broken pipe/);
    expect(l.outageBetween?.(1.5 * NS_PER_S, 1.5 * NS_PER_S)).toEqual({
      downAtNs: NS_PER_S,
      upAtNs: 2 * NS_PER_S,
    });
    expect(l.outageBetween?.(2 * NS_PER_S, 3 * NS_PER_S)).toBeUndefined();
    expect(l.transmit(1000, 2 * NS_PER_S)).toBe(3 * NS_PER_S);
    expect(l.bytesSent).toBe(1000);
  });

  it('takes further outages in order, and rejects an up before its drop', () => {
    const l = createSimLink({
      bandwidth: 1000,
      dropAtNs: NS_PER_S,
      upAtNs: 2 * NS_PER_S,
      outages: [{ dropAtNs: 3 * NS_PER_S }],
    });
    expect(l.transmit(1000, 2 * NS_PER_S)).toBe(3 * NS_PER_S);
    expect(() => l.transmit(1, 3 * NS_PER_S)).toThrow(/link dropped at 3000 ms/);
    expect(l.outageBetween?.(10 * NS_PER_S, 10 * NS_PER_S)?.upAtNs).toBe(Infinity);
    expect(() => createSimLink({ bandwidth: 1, upAtNs: 5 })).toThrow(/link\.recover-at/);
    expect(() => createSimLink({ bandwidth: 1, dropAtNs: 5, upAtNs: 5 })).toThrow(/link\.recover-at/);
    expect(() =>
      createSimLink({ bandwidth: 1, dropAtNs: 5, upAtNs: 10, outages: [{ dropAtNs: 7 }] }),
    ).toThrow(/link\.outages/);
  });

  it("a second channel over the same link has its own queue but the link's outages", () => {
    const l = createSimLink({ bandwidth: 1000, dropAtNs: 5 * NS_PER_S });
    const c = createSimChannel(l);
    expect(l.transmit(2000, 0)).toBe(2 * NS_PER_S);
    expect(c.transmit(1000, 0)).toBe(NS_PER_S); // not behind the main channel's backlog
    expect(c.bytesSent).toBe(1000);
    expect(() => c.transmit(1000, 4.5 * NS_PER_S)).toThrow(/Broken pipe/);
  });
});

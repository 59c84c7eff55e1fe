import { describe, expect, it } from 'vitest';
import { migrate, type Setup } from './__fixtures__/harness.js';

/**
 * qemu.md's conformance checks 2, 4 and 5 with QEMU's migration-test settings. The guest stands
 * for the qtest bootblock: it sweeps [1 MiB, 100 MiB) of a 150 MiB guest, page after page (here
 * at 1 GiB/s unless a test says otherwise); the link is a fast local socket (10 Gbit/s).
 */
const MiB = 2 ** 20;
function qtest(parameters: Record<string, number>, timeLimitS: number, capabilities = {}, rate = 2 ** 30) {
  // The bootblock's loop: 99 MiB from 1 MiB, swept by one vCPU.
  return migrate({
    pages: (150 * MiB) / 4096,
    bandwidth: 1.25e9,
    rate,
    vcpus: 1,
    timeLimitS,
    precopy: { parameters, capabilities },
    sweepRange: { offset: MiB / 4096, workingSet: (99 * MiB) / 4096 },
  });
}

describe('conformance check 2: non-converge vs converge parameters', () => {
  it('max-bandwidth 3,000,000 B/s and downtime-limit 1 ms keep it active (here for 60 s)', () => {
    const { info, events } = qtest({ 'max-bandwidth': 3_000_000, 'downtime-limit': 1 }, 60);
    expect(info.status).toBe('active');
    expect(events.map((e) => e.status)).toEqual(['setup', 'active']);
    // 3 MB/s: 300,000 B per 100 ms window = 73 records of 4104 B (the last overshoots).
    expect(info.ram['precopy-bytes']).toBe(600 * 74 * 4104);
  });

  it('max-bandwidth 1e9 B/s and downtime-limit 30,000 ms complete well within 120 s', () => {
    const { info } = qtest({ 'max-bandwidth': 1e9, 'downtime-limit': 30_000 }, 120);
    expect(info.status).toBe('completed');
    expect(info['total-time']).toBeLessThan(120_000);
  });
});

describe('conformance check 4: dirty-sync-count is 1 after setup, +1 per sync', () => {
  it('matches the trajectory and the MIGRATION_PASS numbering', () => {
    const { info, events } = qtest({ 'max-bandwidth': 1e9, 'downtime-limit': 300 }, 30);
    expect(info.trajectory[0]).toMatchObject({ sync: 1, time: events[1]?.time });
    expect(info.trajectory.map((t) => t.sync)).toEqual(info.trajectory.map((_, i) => i + 1));
    expect(info.ram['dirty-sync-count']).toBe(info.trajectory.length);
  });
});

describe('conformance check 5: switchover only when pending ≤ bw × downtime-limit', () => {
  it('remaining at pre-switchover is below 1.01 × bandwidth × downtime-limit', () => {
    for (const downtime of [50, 300, 1000]) {
      // A guest slow enough (20 MiB/s) to converge under a 100 MB/s cap.
      const { info, events } = qtest(
        { 'max-bandwidth': 100e6, 'downtime-limit': downtime },
        120,
        { 'pause-before-switchover': true },
        20 * MiB,
      );
      expect(info.status).toBe('completed');
      const pre = events.find((e) => e.status === 'pre-switchover');
      // The rate limit caps the estimate at 100 MB/s = 100,000 B/ms.
      expect(pre?.remaining).toBeLessThanOrEqual(1.01 * 100_000 * downtime);
      expect(events.map((e) => e.status)).toEqual([
        'setup',
        'active',
        'pre-switchover',
        'device',
        'completed',
      ]);
    }
  });
});

describe('the workload decides convergence', () => {
  it('a hot set converges in fewer syncs than uniform writes at the same rate', () => {
    // 64 MiB, one vCPU writing 40 MB/s, a 50 MB/s link. The hot set (10 % of the pages take
    // 90 % of the writes) re-dirties the same pages, so less is left after each round.
    const run = (kind: 'uniform' | 'hotset') =>
      migrate({ pages: 16384, rate: 40e6, bandwidth: 50e6, kind, timeLimitS: 60 }).info;
    const uniform = run('uniform');
    const hot = run('hotset');
    expect([uniform.status, uniform['total-time'], uniform.ram['dirty-sync-count']]).toEqual([
      'completed',
      2586.613,
      8,
    ]);
    expect([hot.status, hot['total-time'], hot.ram['dirty-sync-count']]).toEqual(['completed', 1560.519, 4]);
    expect(hot.trajectory.map((t) => t['new-dirty-pages'])).toEqual([0, 2450, 175, 0]);
  });
});

describe('conformance check 10: a forced pause followed by recovery completes with consistent memory', () => {
  // A 64 MiB guest (sweep or uniform, 100 MB/s) over a 50 MB/s link: postcopy at 3 s, the link
  // drops at 3.5 s and is back at 5 s, when migrate-recover / migrate resume=true are issued.
  function run(kind: 'sweep' | 'uniform', link: Partial<Setup> = {}, recoverAtNs: number[] = [5e9]) {
    const placedAt = new Map<number, number>();
    const twice: number[] = [];
    const r = migrate({
      pages: 16384,
      rate: 100e6,
      bandwidth: 50e6,
      kind,
      timeLimitS: 120,
      postcopyAtNs: 3e9,
      dropAtNs: 3.5e9,
      upAtNs: 5e9,
      ...link,
      precopy: {
        recoverAtNs,
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

  it.each(['sweep', 'uniform'] as const)(
    '%s: every page the destination lacks at the drop is placed once after recovery, none twice, none missing',
    (kind) => {
      const { info, events, placedAt, twice } = run(kind);
      expect(info.status).toBe('completed');
      const paused = events.find((e) => e.status === 'postcopy-paused');
      const resumed = events.findLast((e) => e.status === 'postcopy-active');
      const atSwitch = (events.find((e) => e.status === 'postcopy-active')?.remaining ?? -1) / 4096;
      const lackingAtDrop = (paused?.remaining ?? -1) / 4096;
      const before = [...placedAt.values()].filter((t) => t < 3.5e9).length;
      const after = [...placedAt.entries()].filter(([, t]) => t >= 3.5e9);
      // Nothing is placed while paused; what was in flight at the drop never counted as placed.
      expect(after.every(([, t]) => t >= (resumed?.time ?? Infinity) * 1e6)).toBe(true);
      expect(before + lackingAtDrop).toBe(atSwitch);
      expect(after.length).toBe(lackingAtDrop);
      expect(twice).toEqual([]);
      // The destination ends with every page: precopy's and postcopy's together are all of RAM.
      expect(placedAt.size).toBe(atSwitch);
      expect(info.ram.remaining).toBe(0);
    },
  );

  it('a double failure returns to postcopy-paused: a reconnect while the link is still down', () => {
    // migrate resume at 4 s, before the link is back (5 s): the handshake fails.
    const { info, events } = run('sweep', {}, [4e9, 5e9]);
    expect(events.map((e) => e.status).slice(2)).toEqual([
      'postcopy-active',
      'postcopy-paused',
      'postcopy-recover-setup',
      'postcopy-paused',
      'postcopy-recover-setup',
      'postcopy-recover',
      'postcopy-active',
      'completed',
    ]);
    expect(info.status).toBe('completed');
  });

  it('a double failure returns to postcopy-paused: the link drops again during recovery', () => {
    // 1 ms latency: the RECV_BITMAP exchange takes 2 ms; the link drops again 1.5 ms in.
    const { info, events, twice, placedAt } = run(
      'sweep',
      { latencyNs: 1e6, outages: [{ dropAtNs: 5.0015e9, upAtNs: 6e9 }] },
      [5e9, 6e9],
    );
    expect(events.map((e) => [e.status, e.time]).slice(3)).toEqual([
      ['postcopy-paused', 3500],
      ['postcopy-recover-setup', 5000],
      ['postcopy-recover', 5000],
      ['postcopy-paused', 5002.042],
      ['postcopy-recover-setup', 6000],
      ['postcopy-recover', 6000],
      ['postcopy-active', 6004.042],
      ['completed', 7004.855],
    ]);
    expect(info.status).toBe('completed');
    expect(twice).toEqual([]);
    expect(placedAt.size).toBe(16384);
    // With no further attempt it stays paused.
    const stuck = run('sweep', { latencyNs: 1e6, outages: [{ dropAtNs: 5.0015e9, upAtNs: 6e9 }] }, [5e9]);
    expect(stuck.info.status).toBe('postcopy-paused');
    expect(stuck.events.at(-1)?.status).toBe('postcopy-paused');
  });
});

import { describe, expect, it } from 'vitest';
import { migrate } from './__fixtures__/harness.js';

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

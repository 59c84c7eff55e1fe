import { NS_PER_MS, NS_PER_S } from '@dirtytrack/core';
import { describe, expect, it } from 'vitest';
import { migrate } from './__fixtures__/harness.js';

// An idle 64 MiB guest over 1 GB/s: setup 33,988.7 ns, one round of 16384 × 4104 B, switchover.
const IDLE = { pages: 16384 };

describe('status paths (qemu.md conformance check 3)', () => {
  it('setup → active → completed; dirty-sync-count is 1 after setup, +1 per sync (check 4)', () => {
    const { events, info, stopReason } = migrate(IDLE);
    expect(events.map((e) => e.status)).toEqual(['setup', 'active', 'completed']);
    expect(events.map((e) => e.time)).toEqual([0, 0.034, 67.275]);
    expect(stopReason).toBe('converged');
    expect(info.trajectory.map((t) => t.sync)).toEqual([1, 2]);
    expect(info.trajectory[0]?.time).toBe(0.034);
    expect(info.ram['dirty-sync-count']).toBe(2);
  });

  it('splits the downtime into the final sync and the last copy', () => {
    // 10 MiB/s cap (see precopy.test): the final sync scans 512 idle words (1220.703 ns), then
    // 768 pages × 4104 B go at 1 GB/s (3,151,872 ns).
    const { info, stats } = migrate({ ...IDLE, precopy: { parameters: { 'max-bandwidth': 10 * 2 ** 20 } } });
    expect(info.downtime).toBe(3.153);
    expect(stats['downtime-split']).toEqual({ 'final-sync': 0.001, 'last-copy': 3.152 });
    expect(migrate({ ...IDLE, timeLimitS: 0.01 }).stats['downtime-split']).toBeUndefined();
  });

  it('with pause-before-switchover: active → pre-switchover → device → completed', () => {
    const { events, info } = migrate({
      ...IDLE,
      precopy: { capabilities: { 'pause-before-switchover': true } },
    });
    expect(events.map((e) => e.status)).toEqual(['setup', 'active', 'pre-switchover', 'device', 'completed']);
    // Pending at pre-switchover is what the switchover rule allowed (check 5): nothing here.
    expect(events[2]?.remaining).toBe(0);
    expect(info.status).toBe('completed');
  });

  it('a cancel at 30 ms: cancelling → cancelled, the guest keeps running, nothing more is sent', () => {
    const { events, info, stopReason, engine } = migrate({
      ...IDLE,
      rate: 4096 * 1000,
      precopy: { cancelAtNs: 30 * NS_PER_MS, parameters: { 'max-bandwidth': 100e6 } },
    });
    expect(events.map((e) => e.status)).toEqual(['setup', 'active', 'cancelling', 'cancelled']);
    // max-bandwidth 100 MB/s: a 10 MB budget per 100 ms window; the first window's pages go at
    // once (2437 pages = 10,001,448 B, ending at 10.035 ms), then the window is waited out —
    // cut short by the cancel at exactly 30 ms.
    expect(events[2]?.time).toBe(30);
    expect(events[3]?.time).toBe(30);
    expect(stopReason).toBe('cancelled');
    expect(info.status).toBe('cancelled');
    expect(info.ram.transferred).toBe(2437 * 4104);
    expect(info.downtime).toBeUndefined();
    expect(engine.running).toBe(true);
  });

  it('a cancel requested by a flag (cancelRequested, polled once per round) is taken at the next round', () => {
    let asked = 0;
    const { events, info, stopReason, engine } = migrate({
      ...IDLE,
      rate: 4096 * 1000,
      precopy: { cancelRequested: () => ++asked === 3, parameters: { 'max-bandwidth': 100e6 } },
    });
    expect(events.map((e) => e.status)).toEqual(['setup', 'active', 'cancelling', 'cancelled']);
    // Active at 0.034 ms (setup's sync); asked then and 100 ms later (a 10 MB window each), true
    // at the third round, 200 ms after active: the pages of two windows went.
    expect(asked).toBe(3);
    expect(events.map((e) => e.time)).toEqual([0, 0.034, 200.034, 200.034]);
    expect(stopReason).toBe('cancelled');
    expect(info.ram.transferred).toBe(2 * 2437 * 4104);
    expect(engine.running).toBe(true);
  });

  it('a cancel after completion, or never reached, has no effect', () => {
    const plain = migrate(IDLE);
    const late = migrate({ ...IDLE, precopy: { cancelAtNs: 10 * NS_PER_S } });
    expect(late.events).toEqual(plain.events);
    expect(late.info).toEqual(plain.info);
  });

  it('a link that drops at 40 ms fails the migration with an error-desc; the source keeps running', () => {
    const { events, info, stopReason, engine, clock } = migrate({
      ...IDLE,
      rate: 4096 * 100,
      dropAtNs: 40 * NS_PER_MS,
    });
    expect(events.map((e) => e.status)).toEqual(['setup', 'active', 'failed']);
    expect(stopReason).toBe('failed');
    expect(info['error-desc']).toBe('Unable to write to socket: Broken pipe (link dropped at 40 ms)');
    expect(events[2]?.time).toBe(40);
    expect(clock.now()).toBe(40 * NS_PER_MS);
    expect(info.downtime).toBeUndefined();
    expect(engine.running).toBe(true);
  });

  it('a drop during the downtime fails the migration and restarts the guest', () => {
    // 10 MiB/s cap: completion starts at 6100.04 ms (see precopy.test) and its final copy of
    // 768 pages takes 3.15 ms; drop the link 1 ms into it.
    const capped = { ...IDLE, precopy: { parameters: { 'max-bandwidth': 10 * 2 ** 20 } } };
    const ok = migrate(capped);
    const stopAt = (ok.info['total-time'] - (ok.info.downtime ?? 0)) * NS_PER_MS;
    const failed = migrate({ ...capped, dropAtNs: Math.round(stopAt + NS_PER_MS) });
    expect(failed.info.status).toBe('failed');
    expect(failed.engine.running).toBe(true);
    expect(failed.info.downtime).toBeUndefined();
  });
});

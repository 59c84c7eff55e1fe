import { NS_PER_S } from '@dirtytrack/core';
import { describe, expect, it } from 'vitest';
import { migrate } from './__fixtures__/harness.js';
import { createThrottleTrigger, DEFAULT_AUTO_CONVERGE_PARAMETERS, nextThrottle } from './auto-converge.js';

const P = DEFAULT_AUTO_CONVERGE_PARAMETERS;

describe('auto-converge steps (qemu.md §2.3, conformance check 6)', () => {
  it("has QEMU's defaults", () => {
    expect(P).toEqual({
      'throttle-trigger-threshold': 50,
      'cpu-throttle-initial': 20,
      'cpu-throttle-increment': 10,
      'cpu-throttle-tailslow': false,
      'max-cpu-throttle': 99,
    });
  });

  it('starts at the initial value, rises by the increment, stops at max-cpu-throttle', () => {
    const steps: number[] = [];
    let t = 0;
    for (let i = 0; i < 12; i++) steps.push((t = nextThrottle(t, P, 100, 50)));
    expect(steps).toEqual([20, 30, 40, 50, 60, 70, 80, 90, 99, 99, 99, 99]);
    const q = { ...P, 'cpu-throttle-initial': 5, 'cpu-throttle-increment': 25, 'max-cpu-throttle': 95 };
    t = 0;
    const qsteps: number[] = [];
    for (let i = 0; i < 6; i++) qsteps.push((t = nextThrottle(t, q, 100, 50)));
    expect(qsteps).toEqual([5, 30, 55, 80, 95, 95]);
  });

  it('tailslow steps by min(increment, cpu_now − trunc(cpu_now × threshold / dirty))', () => {
    const tail = { ...P, 'cpu-throttle-tailslow': true };
    // cpu_now 80: ideal trunc(80 × 50/100) = 40 → the increment (10) is smaller.
    expect(nextThrottle(20, tail, 100, 50)).toBe(30);
    // ideal trunc(80 × 50/52) = trunc(76.92) = 76 → +4.
    expect(nextThrottle(20, tail, 52, 50)).toBe(24);
    // ideal trunc(10 × 50/51) = 9 → +1; the first step ignores tailslow.
    expect(nextThrottle(90, tail, 51, 50)).toBe(91);
    expect(nextThrottle(0, tail, 51, 50)).toBe(20);
  });

  it('the trigger fires on every second high period; a low period does not reset the count', () => {
    const fire = createThrottleTrigger(50);
    // threshold = trunc(xfer × 50 / 100)
    expect(fire({ dirtyBytes: 51, xferBytes: 101 })).toBeUndefined(); // high #1 (51 > 50)
    expect(fire({ dirtyBytes: 50, xferBytes: 101 })).toBeUndefined(); // low: 50 is not > 50
    expect(fire({ dirtyBytes: 51, xferBytes: 101 })).toBe(50); // high #2 → fire
    expect(fire({ dirtyBytes: 999, xferBytes: 0 })).toBeUndefined(); // counting restarts
    expect(fire({ dirtyBytes: 999, xferBytes: 0 })).toBe(0);
  });
});

describe('auto-converge in a migration', () => {
  // 64 MiB guest, one vCPU sweeping it at 100 MB/s, a 50 MB/s link: never converges alone.
  const base = { pages: 16384, rate: 100e6, bandwidth: 50e6, timeLimitS: 120 };

  it('without it the migration stays active', () => {
    const { info } = migrate(base);
    expect(info.status).toBe('active');
    expect(info['cpu-throttle-percentage']).toBeUndefined();
  });

  it('throttles at sync 3 (second high period), +10 every second period, converges, resets to 0', () => {
    const { info, stats, engine } = migrate({
      ...base,
      precopy: { capabilities: { 'auto-converge': true } },
    });
    expect(info.status).toBe('completed');
    expect(stats['throttle-steps']).toEqual([20, 30, 40, 50, 60, 70]);
    expect(info.trajectory.map((t) => t['cpu-throttle-percentage'])).toEqual([
      0, 0, 20, 20, 30, 30, 40, 40, 50, 50, 50, 60, 60, 60, 60, 60, 60, 60, 60, 60, 70, 70, 70,
    ]);
    expect(info['total-time']).toBe(14097.313);
    expect(info.downtime).toBe(289.579);
    // Check 6: 0 after the end, and the guest runs at full speed again.
    expect(info['cpu-throttle-percentage']).toBe(0);
    expect(engine.speed).toBe(1);
  });

  it('the throttle slows the guest in virtual time: (100 − p) % of its writes', () => {
    const { engine, info } = migrate({ ...base, precopy: { capabilities: { 'auto-converge': true } } });
    // Without throttling the guest would have written 100e6/4096 pages/s for the whole run.
    const unthrottled = Math.floor((100e6 / 4096) * (info['total-time'] / 1000));
    expect(engine.stats().writes).toBeLessThan(unthrottled * 0.7);
  });

  it("QEMU's test parameters (initial 5, increment 25, max 95): the throttle never exceeds 95", () => {
    const { info, stats, events } = migrate({
      ...base,
      rate: 2e9,
      timeLimitS: 30,
      precopy: {
        capabilities: { 'auto-converge': true, 'pause-before-switchover': true },
        parameters: { 'cpu-throttle-initial': 5, 'cpu-throttle-increment': 25, 'max-cpu-throttle': 95 },
      },
    });
    expect(info.status).toBe('active');
    expect(stats['throttle-steps'].slice(0, 6)).toEqual([5, 30, 55, 80, 95, 95]);
    expect(Math.max(...stats['throttle-steps'])).toBe(95);
    // Still active at the time limit: the current throttle is reported.
    expect(info['cpu-throttle-percentage']).toBe(95);
    expect(events.map((e) => e.status)).toEqual(['setup', 'active']);
  });

  it('a cancel stops the throttle (0) and restores full speed', () => {
    const { info, engine } = migrate({
      ...base,
      precopy: { capabilities: { 'auto-converge': true }, cancelAtNs: 8 * NS_PER_S },
    });
    expect(info.status).toBe('cancelled');
    expect(info['cpu-throttle-percentage']).toBe(0);
    expect(engine.speed).toBe(1);
  });

  it('rejects bad parameters naming the field', () => {
    const bad = (parameters: Record<string, unknown>) => () =>
      migrate({ pages: 64, precopy: { capabilities: { 'auto-converge': true }, parameters } });
    expect(bad({ 'cpu-throttle-initial': 0 })).toThrow(/migration\.parameters\.cpu-throttle-initial/);
    expect(bad({ 'max-cpu-throttle': 10 })).toThrow(
      /migration\.parameters\.max-cpu-throttle: 10 must be an integer in 20\.\.99/,
    );
    expect(bad({ 'throttle-trigger-threshold': 101 })).toThrow(/throttle-trigger-threshold/);
    expect(() =>
      migrate({
        pages: 64,
        ring: 256,
        precopy: { capabilities: { 'auto-converge': true, 'dirty-limit': true } },
      }),
    ).toThrow(/migration\.capabilities\.dirty-limit: conflicts with auto-converge/);
  });
});

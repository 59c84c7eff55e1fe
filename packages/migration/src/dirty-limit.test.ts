import { NS_PER_S } from '@dirtytrack/core';
import { describe, expect, it } from 'vitest';
import { migrate } from './__fixtures__/harness.js';
import { createDirtyLimiter, DEFAULT_DIRTY_LIMIT_PARAMETERS, DIRTYLIMIT_TOLERANCE } from './dirty-limit.js';

/** A vCPU dirtying `mib` MiB per 1000 ms period: 256 pages per MiB. */
function counter(...mibPerPeriod: number[]) {
  const pages = mibPerPeriod.map(() => 0);
  return {
    read: (v: number) => pages[v] as number,
    period(...mib: number[]) {
      mib.forEach((m, v) => (pages[v] = (pages[v] as number) + m * 256));
    },
  };
}

describe('dirty-limit controller (qemu.md §2.4, dirtylimit.c)', () => {
  it("has QEMU's defaults", () => {
    expect(DEFAULT_DIRTY_LIMIT_PARAMETERS).toEqual({
      'x-vcpu-dirty-limit-period': 1000,
      'vcpu-dirty-limit': 1,
    });
    expect(DIRTYLIMIT_TOLERANCE).toBe(25);
  });

  it('adjusts on the second unmatched period, linearly when the error exceeds 50 %', () => {
    const c = counter(0);
    // 4096-entry ring = 16 MiB; quota 50 MB/s.
    const l = createDirtyLimiter(1, 4096, 50, c.read);
    c.period(200);
    l.tick(c.read, 1000);
    expect(l.rates[0]).toBe(200);
    expect(l.throttleUs[0]).toBe(0); // first mismatch: wait
    c.period(200);
    l.tick(c.read, 1000);
    // ring_full = 16 × 1e6 / 200 = 80,000 µs; pct = 150 × 100 / 200 = 75; Δ = 80,000 × 75 / 25.
    expect(l.ringFullTimeUs(0)).toBe(80_000);
    expect(l.throttleUs[0]).toBe(240_000);
    // A vCPU filling its ring in 80 ms and sleeping 240 ms runs at a quarter speed: 50 MiB/s.
    expect(l.speedOf(0)).toBe(0.25);
    expect(l.throttleTimePerRound()).toBe(240_000);
    expect(l.ringFullTime()).toBe(80_000);
  });

  it('steps by ring_full / 10 when the error is at most 50 %, and stops within 25 MB/s', () => {
    const c = counter(0);
    const l = createDirtyLimiter(1, 4096, 50, c.read);
    c.period(100);
    l.tick(c.read, 1000);
    c.period(100);
    l.tick(c.read, 1000);
    // error 50 × 100 / 100 = 50 %: not above 50 → +ring_full/10 = 160,000/10.
    expect(l.throttleUs[0]).toBe(16_000);
    c.period(74);
    l.tick(c.read, 1000); // |50 − 74| ≤ 25: done, unchanged
    c.period(74);
    l.tick(c.read, 1000);
    expect(l.throttleUs[0]).toBe(16_000);
    // The unmatched count is not reset by a done period, so the next mismatch adjusts at once:
    // quota above current, pct 40 × 100 / 50 = 80 → Δ = 160,000 × 80 / 20 = 640,000 → clamped at 0.
    c.period(10);
    l.tick(c.read, 1000);
    expect(l.throttleUs[0]).toBe(0);
  });

  it('caps the sleep at 99 ring-full times, truncating like int64 += double', () => {
    const c = counter(0);
    const l = createDirtyLimiter(1, 256, 1, c.read); // 1 MiB ring, quota 1
    for (let i = 0; i < 20; i++) {
      c.period(1000);
      l.tick(c.read, 1000);
    }
    // ring_full = 1e6 / 1000 = 1000 µs; cap 99,000.
    expect(l.throttleUs[0]).toBe(99_000);
    expect(l.speedOf(0)).toBe(1000 / 100_000);
  });
});

describe('dirty-limit in a migration (conformance check 7)', () => {
  // Two vCPUs sweeping 256 MiB at 300 MiB/s each through 4096-entry rings; 400 MB/s link,
  // downtime 250 ms, quota 50 MB/s (QEMU's dirty_limit test values).
  const base = {
    pages: 65536,
    vcpus: 2,
    ring: 4096,
    rate: 300 * 2 ** 20,
    bandwidth: 400e6,
    timeLimitS: 40,
  };
  const params = { 'vcpu-dirty-limit': 50, 'downtime-limit': 250 };

  it('without it the migration never converges', () => {
    expect(migrate({ ...base, precopy: { parameters: params } }).info.status).toBe('active');
  });

  it('limits each vCPU after the trigger, and the migration completes with the limit removed', () => {
    const { info, engine, stats } = migrate({
      ...base,
      precopy: { capabilities: { 'dirty-limit': true }, parameters: params },
    });
    expect(info.status).toBe('completed');
    // Trigger at sync 5 (2000.453 ms, the second high period); the first period (3000 ms)
    // only counts a mismatch; at 4000 ms: ring_full 16e6/300 = 53,333 µs, pct 83 →
    // trunc(53,333 × 83 / 17) = 260,390 µs.
    expect(info.trajectory.map((t) => t['dirty-limit-throttle-time-per-round'])).toEqual([
      0, 0, 0, 0, 0, 0, 0, 0, 260_390, 260_390, 260_390,
    ]);
    // While the limit is in service a vCPU's ring-full exit reaps only its own ring, as QEMU's
    // (4740.865 ms when every exit reaped both).
    expect(info['total-time']).toBe(4740.842);
    expect(info.downtime).toBe(240.232);
    // Removed at the end.
    expect(info['dirty-limit-throttle-time-per-round']).toBe(0);
    expect([engine.vcpuSpeed(0), engine.vcpuSpeed(1)]).toEqual([1, 1]);
    expect(stats['throttle-steps']).toEqual([]);
  });

  it('the per-vCPU dirty rate lands within 25 MB/s of the quota', () => {
    const { info, engine, clock } = migrate({
      ...base,
      bandwidth: 50e6,
      precopy: { capabilities: { 'dirty-limit': true }, parameters: params },
    });
    expect(info.status).toBe('active'); // still in service: measure one more second
    expect(info['dirty-limit-throttle-time-per-round']).toBe(260_390);
    expect(info['dirty-limit-ring-full-time']).toBe(53_333);
    const before = [engine.vcpuDirtyPages(0), engine.vcpuDirtyPages(1)];
    engine.runGuestUntil(clock.now() + NS_PER_S);
    const mibPerS = [0, 1].map((v) => (engine.vcpuDirtyPages(v) - (before[v] as number)) / 256);
    for (const r of mibPerS) expect(Math.abs(r - 50)).toBeLessThanOrEqual(25);
    expect(mibPerS.map(Math.round)).toEqual([51, 51]);
  });

  it("QEMU's reaper thread reaps every ring once a second, but not while the limit is in service", () => {
    const reaps: number[] = [];
    const limits: [boolean, number][] = [];
    const { info } = migrate({
      ...base,
      onReap: (atNs) => reaps.push(atNs),
      onLimit: (inService, atNs) => limits.push([inService, atNs]),
      precopy: { capabilities: { 'dirty-limit': true }, parameters: params },
    });
    expect(info.status).toBe('completed');
    // The migration starts at 0; the limit is in service from the trigger at sync 5 (~2000.3 ms)
    // to the end (4.7 s): the reaper's turns at 3 and 4 s pass without a reap.
    expect(reaps).toEqual([NS_PER_S, 2 * NS_PER_S]);
    // In service from the trigger to the end of the migration, when the limit is removed.
    expect(limits.map(([on]) => on)).toEqual([true, false]);
    // The trigger is sync 5's (its time in the trajectory, ms to the µs).
    expect(info.trajectory[4]?.sync).toBe(5);
    expect(Math.round((limits[0]?.[1] ?? 0) / 1e3) / 1e3).toBe(info.trajectory[4]?.time);
    expect(Math.round((limits[1]?.[1] ?? 0) / 1e3) / 1e3).toBe(info['total-time']);
    expect(info['total-time']).toBeGreaterThan(4000);
  });

  it('a cancel removes the limit: throttle time 0, full speed', () => {
    const { info, engine } = migrate({
      ...base,
      bandwidth: 50e6,
      precopy: { capabilities: { 'dirty-limit': true }, parameters: params, cancelAtNs: 10 * NS_PER_S },
    });
    expect(info.status).toBe('cancelled');
    expect(info['dirty-limit-throttle-time-per-round']).toBe(0);
    expect([engine.vcpuSpeed(0), engine.vcpuSpeed(1)]).toEqual([1, 1]);
  });

  it('needs the dirty ring', () => {
    expect(() => migrate({ pages: 64, precopy: { capabilities: { 'dirty-limit': true } } })).toThrow(
      /migration\.capabilities\.dirty-limit: needs the KVM dirty ring/,
    );
    expect(() =>
      migrate({
        pages: 64,
        ring: 256,
        precopy: { capabilities: { 'dirty-limit': true }, parameters: { 'vcpu-dirty-limit': 0 } },
      }),
    ).toThrow(/migration\.parameters\.vcpu-dirty-limit/);
  });
});

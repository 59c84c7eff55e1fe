import { createVirtualClock, NS_PER_S, type DirtySink, type Tracker } from '@dirtytrack/core';
import { describe, expect, it } from 'vitest';
import { createModelEngine, createModelMemory } from './model-engine.js';
import { createSweepWorkload } from './workloads.js';

/** A tracker that traps every write, recording what it saw. */
function recordingTracker(): Tracker & { seen: number[] } {
  const seen: number[] = [];
  return {
    kind: 'record',
    seen,
    attach(_sink: DirtySink) {},
    enableLogging: (slot) => slot.pages,
    disableLogging() {},
    write(_vcpu, _slot, offsets, count) {
      seen.push(...offsets.subarray(0, count));
      return count;
    },
    rearm: () => 0,
    stats: () => ({ writes: seen.length, faults: seen.length, reported: 0, rearmed: 0 }),
  };
}

describe('model engine', () => {
  it('runs the workload through the tracker, marks pages non-zero and charges faults', () => {
    const clock = createVirtualClock();
    const tracker = recordingTracker();
    const memory = createModelMemory(64, 8);
    const workload = createSweepWorkload({
      vcpus: 1,
      pages: 64,
      bytesPerSecond: 4096 * 4,
      offset: 16,
      workingSet: 8,
    });
    const engine = createModelEngine({
      clock,
      workload,
      tracker,
      memory,
      costModel: { ...defaults(), writeFaultNs: 1000 },
    });
    engine.runGuestUntil(NS_PER_S);
    expect(clock.now()).toBe(NS_PER_S);
    expect(tracker.seen).toEqual([16, 17, 18, 19]);
    expect([...memory.nonzero.setBits()]).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19]);
    expect(engine.stats()).toEqual({ writes: 4, faults: 4, faultTimeNs: 4000, ringFullExits: 0 });
  });

  it('writes nothing while paused but time still moves', () => {
    const clock = createVirtualClock();
    const tracker = recordingTracker();
    const workload = createSweepWorkload({ vcpus: 2, pages: 64, bytesPerSecond: 4096 * 10 });
    const engine = createModelEngine({ clock, workload, tracker, memory: createModelMemory(64) });
    engine.pause();
    engine.runGuestUntil(5 * NS_PER_S);
    expect(tracker.seen).toEqual([]);
    expect(clock.now()).toBe(5 * NS_PER_S);
    engine.resume();
    engine.speed = 0.5;
    engine.runGuestUntil(6 * NS_PER_S);
    expect(tracker.seen.length).toBe(10);
    expect(() => engine.runGuestUntil(0)).toThrow(/before now/);
    expect(() => (engine.speed = 2)).toThrow(/speed/);
  });

  it("throttles vCPUs one by one (dirty-limit) and counts each one's dirtied pages", () => {
    const clock = createVirtualClock();
    const tracker = recordingTracker();
    // 3 vCPUs × 10 pages/s each.
    const workload = createSweepWorkload({ vcpus: 3, pages: 300, bytesPerSecond: 4096 * 10 });
    const engine = createModelEngine({ clock, workload, tracker, memory: createModelMemory(300) });
    expect(engine.vcpus).toBe(3);
    engine.setVcpuSpeed(1, 0.5);
    engine.setVcpuSpeed(2, 0);
    engine.speed = 0.8;
    engine.runGuestUntil(10 * NS_PER_S);
    // 100 pages × 0.8 global × the vCPU's own factor.
    expect([0, 1, 2].map((v) => engine.vcpuDirtyPages(v))).toEqual([80, 40, 0]);
    expect(engine.vcpuSpeed(1)).toBe(0.5);
    engine.setVcpuSpeed(1, 1);
    engine.setVcpuSpeed(2, 1);
    engine.speed = 1;
    engine.runGuestUntil(11 * NS_PER_S);
    expect([0, 1, 2].map((v) => engine.vcpuDirtyPages(v))).toEqual([90, 50, 10]);
    expect(() => engine.setVcpuSpeed(3, 1)).toThrow(/vCPU 3/);
    expect(() => engine.setVcpuSpeed(0, 1.5)).toThrow(/speed 1\.5/);
  });
});

function defaults() {
  return {
    bitmapXchgNsPerWord: 0,
    bitmapCopyNsPerWord: 0,
    rearmNsPerPage: 0,
    enableLoggingNsPerPage: 0,
    tlbFlushNs: 0,
    writeFaultNs: 0,
    slowFaultNs: 0,
    hugePageSplitNs: 0,
    ringEntryNs: 0,
    pageSendCopyNs: 0,
    pageSendZeroCopyNs: 0,
  };
}

describe('model engine with a dirty ring', () => {
  it('never feeds a vCPU past its ring room: exits at the soft limit and resumes after the reap', () => {
    const clock = createVirtualClock();
    const tracker = recordingTracker();
    const used = [0, 0];
    const events: string[] = [];
    const sink = {
      room: (vcpu: number) => 3 - (used[vcpu] as number),
      markDirty: () => {},
    };
    // The recording tracker traps every write; count them against the ring as KVM pushes would.
    const write = tracker.write.bind(tracker);
    tracker.write = (vcpu, slot, offsets, count) => {
      used[vcpu] = (used[vcpu] as number) + count;
      if ((used[vcpu] as number) > 3) throw new Error('ring overflow');
      events.push(`v${vcpu}:${count}`);
      return write(vcpu, slot, offsets, count);
    };
    const workload = createSweepWorkload({ vcpus: 2, pages: 64, bytesPerSecond: 4096 * 7 });
    const engine = createModelEngine({
      clock,
      workload,
      tracker,
      memory: createModelMemory(64),
      ring: {
        sink,
        onRingFull: (vcpu) => {
          events.push(`full${vcpu}`);
          used[vcpu] = 0;
        },
      },
    });
    engine.runGuestUntil(NS_PER_S);
    expect(events).toEqual([
      'v0:3',
      'full0',
      'v0:3',
      'full0',
      'v0:1',
      'v1:3',
      'full1',
      'v1:3',
      'full1',
      'v1:1',
    ]);
    expect(engine.stats()).toMatchObject({ writes: 14, faults: 14, ringFullExits: 4 });
  });
});

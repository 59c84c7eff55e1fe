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
    expect(engine.stats()).toEqual({ writes: 4, faults: 4, faultTimeNs: 4000 });
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
});

function defaults() {
  return {
    bitmapXchgNsPerWord: 0,
    bitmapCopyNsPerWord: 0,
    rearmNsPerPage: 0,
    enableLoggingNsPerPage: 0,
    tlbFlushNs: 0,
    writeFaultNs: 0,
    ringEntryNs: 0,
  };
}

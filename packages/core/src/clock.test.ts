import { expectError } from './__fixtures__/expect-error.js';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { NS_PER_MS, NS_PER_S, createRealClock, createVirtualClock } from './clock.js';
import type { DirtytrackError } from './errors.js';
import { assertProperty } from './__fixtures__/property.js';

function expectInvalid(fn: () => unknown): DirtytrackError {
  return expectError(fn, 'invalid-argument', 'clock');
}

describe('virtual clock', () => {
  it('starts at its origin and only moves when advanced', () => {
    const clock = createVirtualClock();
    expect(clock.kind).toBe('virtual');
    expect(clock.now()).toBe(0);
    expect(clock.pending).toBe(0);
    expect(clock.nextEventAt()).toBe(Infinity);
    clock.advanceTo(1_500);
    expect(clock.now()).toBe(1_500);
    clock.advanceBy(250);
    expect(clock.now()).toBe(1_750);
    clock.advanceBy(0);
    clock.advanceTo(1_750);
    expect(clock.now()).toBe(1_750);
    expect(createVirtualClock(42).now()).toBe(42);
  });

  it('works through detached methods (e.g. passed as callbacks)', () => {
    const clock = createVirtualClock();
    const { advanceBy, advanceTo, schedule, now } = clock;
    const log: number[] = [];
    schedule(5, (t) => log.push(t));
    advanceBy(10);
    expect(now()).toBe(10);
    advanceTo(12);
    expect(now()).toBe(12);
    expect(log).toEqual([5]);
  });

  it('runs events in time order, same-time events in scheduling order, with now = their time', () => {
    const clock = createVirtualClock(100);
    const log: string[] = [];
    const at = (t: number, name: string): void => {
      clock.schedule(t, (now) => log.push(`${name}@${now}/${clock.now()}`));
    };
    at(300, 'c');
    at(100, 'a'); // "now" is allowed
    at(200, 'b1');
    at(200, 'b2');
    at(500, 'e');
    at(200, 'b3');
    expect(clock.pending).toBe(6);
    expect(clock.nextEventAt()).toBe(100);
    clock.advanceTo(400);
    expect(log).toEqual(['a@100/100', 'b1@200/200', 'b2@200/200', 'b3@200/200', 'c@300/300']);
    expect(clock.now()).toBe(400);
    expect(clock.pending).toBe(1);
    expect(clock.nextEventAt()).toBe(500);
    clock.advanceTo(500); // an event exactly at `until` runs
    expect(log.at(-1)).toBe('e@500/500');
    expect(clock.pending).toBe(0);
  });

  it('runs events scheduled during advanceTo when they fall at or before until', () => {
    const clock = createVirtualClock();
    const log: string[] = [];
    clock.schedule(10, (now) => {
      log.push(`first@${now}`);
      clock.schedule(now, () => log.push(`same-instant@${clock.now()}`)); // after the queued ones
      clock.schedule(15, () => {
        log.push(`nested@${clock.now()}`);
        clock.schedule(20, () => log.push(`at-until@${clock.now()}`));
        clock.schedule(21, () => log.push(`after-until@${clock.now()}`));
      });
    });
    clock.schedule(10, () => log.push(`second@${clock.now()}`));
    clock.schedule(18, () => log.push(`third@${clock.now()}`));
    clock.advanceTo(20);
    expect(log).toEqual(['first@10', 'second@10', 'same-instant@10', 'nested@15', 'third@18', 'at-until@20']);
    expect(clock.now()).toBe(20);
    expect(clock.pending).toBe(1);
    expect(clock.nextEventAt()).toBe(21);
    clock.advanceBy(1);
    expect(log.at(-1)).toBe('after-until@21');
  });

  it('cancel removes a pending event once; it returns false afterwards and for events that ran', () => {
    const clock = createVirtualClock();
    const log: number[] = [];
    const a = clock.schedule(5, () => log.push(5));
    const b = clock.schedule(7, () => log.push(7));
    const c = clock.schedule(9, () => log.push(9));
    expect(a).toEqual({ at: 5, seq: 0 });
    expect(b).toEqual({ at: 7, seq: 1 });
    expect(clock.cancel(a)).toBe(true);
    expect(clock.cancel(a)).toBe(false);
    expect(clock.pending).toBe(2);
    expect(clock.nextEventAt()).toBe(7); // skips the cancelled head
    clock.advanceTo(7);
    expect(clock.cancel(b)).toBe(false); // already ran
    expect(clock.cancel(c)).toBe(true);
    expect(clock.pending).toBe(0);
    expect(clock.nextEventAt()).toBe(Infinity);
    clock.advanceTo(100);
    expect(log).toEqual([7]);
    expect(clock.cancel({ at: 1, seq: 999 })).toBe(false); // never scheduled
  });

  it('rejects times in the past or not finite with invalid-argument', () => {
    const clock = createVirtualClock(1_000);
    expect(expectInvalid(() => clock.schedule(999, () => undefined)).message).toBe(
      '[dirtytrack] [clock] schedule: time 999 ns is not finite or is before now (1000 ns)',
    );
    expectInvalid(() => clock.schedule(NaN, () => undefined));
    expectInvalid(() => clock.schedule(Infinity, () => undefined));
    expectInvalid(() => clock.advanceTo(999));
    expectInvalid(() => clock.advanceTo(NaN));
    expectInvalid(() => clock.advanceBy(-1));
    expect(clock.now()).toBe(1_000);
    expect(clock.pending).toBe(0);
    // Scheduling in the past from inside an event is rejected too (now is the event's time).
    clock.schedule(2_000, () => {
      expectInvalid(() => clock.schedule(1_999, () => undefined));
    });
    clock.advanceTo(3_000);
    expect(clock.now()).toBe(3_000);
  });

  it('execution order is a stable sort of the schedule by time (property)', async () => {
    const schedule = fc.array(fc.tuple(fc.integer({ min: 0, max: 50 }), fc.boolean()), { maxLength: 200 });
    await assertProperty(
      fc.property(schedule, fc.integer({ min: 0, max: 60 }), (entries, until) => {
        const events = entries.map(([at, cancel], i) => ({ at, cancel, i }));
        const clock = createVirtualClock();
        const ran: number[] = [];
        const handles = events.map((e) =>
          clock.schedule(e.at, (now) => {
            expect(now).toBe(e.at);
            ran.push(e.i);
          }),
        );
        handles.forEach((handle, i) => {
          if (events[i]?.cancel) expect(clock.cancel(handle)).toBe(true);
        });
        const live = events.filter((e) => !e.cancel);
        expect(clock.pending).toBe(live.length);
        expect(clock.nextEventAt()).toBe(live.length ? Math.min(...live.map((e) => e.at)) : Infinity);
        clock.advanceTo(until);
        const expected = live
          .filter((e) => e.at <= until)
          .sort((x, y) => x.at - y.at) // Array.prototype.sort is stable
          .map((e) => e.i);
        expect(ran).toEqual(expected);
        expect(clock.now()).toBe(until);
        expect(clock.pending).toBe(live.length - expected.length);
      }),
      300,
    );
  });

  it('exposes readable unit constants', () => {
    expect(NS_PER_MS).toBe(1_000_000);
    expect(NS_PER_S).toBe(1_000_000_000);
  });
});

describe('real clock', () => {
  it('is monotonic nanoseconds since its creation', () => {
    const clock = createRealClock();
    expect(clock.kind).toBe('real');
    const first = clock.now();
    expect(first).toBeGreaterThanOrEqual(0);
    expect(first).toBeLessThan(NS_PER_S);
    let previous = first;
    for (let i = 0; i < 10_000; i++) {
      const t = clock.now();
      expect(t >= previous).toBe(true);
      previous = t;
    }
    // Busy-wait 5 ms on the same monotonic source; the clock must have moved at least that far.
    const before = clock.now();
    const origin = process.hrtime.bigint();
    while (process.hrtime.bigint() - origin < 5_000_000n);
    expect(clock.now() - before).toBeGreaterThanOrEqual(5 * NS_PER_MS);
  });
});

describe('virtual clock never goes back', () => {
  it('keeps the later time when an event advances past the outer until', () => {
    const clock = createVirtualClock();
    clock.schedule(10, () => clock.advanceTo(50));
    clock.advanceTo(20);
    expect(clock.now()).toBe(50);
  });
});

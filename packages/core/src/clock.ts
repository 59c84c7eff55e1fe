import { DirtytrackError } from './errors.js';

/**
 * Time, in nanoseconds since the clock's origin. Components read time only through a `Clock`,
 * which is what lets one implementation run in virtual time (model plane, deterministic) and in
 * real time (live plane).
 */
export interface Clock {
  readonly kind: 'virtual' | 'real';
  /** Nanoseconds since this clock's origin. Never decreases. */
  now(): number;
}

/** A handle returned by {@link VirtualClock.schedule}, to cancel the event. */
export interface ScheduledEvent {
  readonly at: number;
  readonly seq: number;
}

/**
 * Virtual time driven by an event queue. Time moves only when the owner advances it; events
 * scheduled for the same instant run in the order they were scheduled, so runs are
 * deterministic.
 */
export interface VirtualClock extends Clock {
  readonly kind: 'virtual';
  /** Schedules `action` to run when time reaches `at` (ns). `at` must not be in the past. */
  schedule(at: number, action: (now: number) => void): ScheduledEvent;
  /** Removes a pending event; returns false if it already ran or was cancelled. */
  cancel(event: ScheduledEvent): boolean;
  /** Number of events not yet run. */
  readonly pending: number;
  /** Time of the next pending event, or `Infinity` if there is none. */
  nextEventAt(): number;
  /**
   * Runs every event due at or before `until` in time order (time jumps to each event's `at`
   * as it runs), then sets time to `until`. Events scheduled while running are honoured.
   */
  advanceTo(until: number): void;
  /** `advanceTo(now() + delta)`. */
  advanceBy(delta: number): void;
}

export function createVirtualClock(start = 0): VirtualClock {
  let now = start;
  let seq = 0;
  const heap: Entry[] = [];
  const cancelled = new Set<number>();

  const checkTime = (t: number, what: string): void => {
    if (!Number.isFinite(t) || t < now) {
      throw new DirtytrackError(
        'invalid-argument',
        `${what}: time ${t} ns is not finite or is before now (${now} ns)`,
        {
          component: 'clock',
        },
      );
    }
  };
  const popDue = (until: number): Entry | undefined => {
    for (;;) {
      const top = heap[0];
      if (top === undefined || top.at > until) return undefined;
      heapPop(heap);
      if (cancelled.delete(top.seq)) continue;
      return top;
    }
  };

  const clock: VirtualClock = {
    kind: 'virtual',
    now: () => now,
    get pending() {
      return heap.length - cancelled.size;
    },
    nextEventAt() {
      while (heap[0] !== undefined && cancelled.has(heap[0].seq)) cancelled.delete(heapPop(heap).seq);
      return heap[0]?.at ?? Infinity;
    },
    schedule(at, action) {
      checkTime(at, 'schedule');
      const entry: Entry = { at, seq: seq++, action };
      heapPush(heap, entry);
      return { at, seq: entry.seq };
    },
    cancel(event) {
      if (cancelled.has(event.seq) || !heap.some((e) => e.seq === event.seq)) return false;
      cancelled.add(event.seq);
      return true;
    },
    advanceTo(until) {
      checkTime(until, 'advanceTo');
      for (let e = popDue(until); e !== undefined; e = popDue(until)) {
        now = e.at;
        e.action(now);
      }
      // An event may itself have advanced past `until`; time never goes back.
      now = Math.max(now, until);
    },
    advanceBy(delta) {
      // Not `this.advanceTo`: like every other member, advanceBy must work detached from the clock.
      clock.advanceTo(now + delta);
    },
  };
  return clock;
}

/** Real time from a monotonic source (`process.hrtime`), with its origin at creation. */
export function createRealClock(): Clock {
  const origin = process.hrtime.bigint();
  return { kind: 'real', now: () => Number(process.hrtime.bigint() - origin) };
}

/** Nanoseconds per millisecond / second, for readable conversions. */
export const NS_PER_MS = 1_000_000;
export const NS_PER_S = 1_000_000_000;

interface Entry {
  at: number;
  seq: number;
  action: (now: number) => void;
}

function before(a: Entry, b: Entry): boolean {
  return a.at < b.at || (a.at === b.at && a.seq < b.seq);
}

function heapPush(heap: Entry[], e: Entry): void {
  heap.push(e);
  let i = heap.length - 1;
  while (i > 0) {
    const parent = (i - 1) >> 1;
    const p = heap[parent] as Entry;
    if (!before(e, p)) break;
    heap[i] = p;
    i = parent;
  }
  heap[i] = e;
}

function heapPop(heap: Entry[]): Entry {
  const top = heap[0] as Entry;
  const last = heap.pop() as Entry;
  if (heap.length > 0) {
    let i = 0;
    for (;;) {
      const l = 2 * i + 1;
      if (l >= heap.length) break;
      const r = l + 1;
      const child = r < heap.length && before(heap[r] as Entry, heap[l] as Entry) ? r : l;
      if (!before(heap[child] as Entry, last)) break;
      heap[i] = heap[child] as Entry;
      i = child;
    }
    heap[i] = last;
  }
  return top;
}

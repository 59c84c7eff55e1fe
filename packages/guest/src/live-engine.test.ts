import { Bitmap, DirtytrackError, NS_PER_MS, createVirtualClock, type MemslotInfo } from '@dirtytrack/core';
import { afterAll, beforeAll, describe, expect, it, onTestFinished } from 'vitest';
import { createFixtureReporter, createFixtureTracker } from './__fixtures__/shared-fixtures.js';
import { waitUntil } from './__fixtures__/wait.js';
import {
  createLiveEngine,
  createLiveGuest,
  type LiveEngine,
  type LiveGuest,
  type LiveGuestOptions,
} from './index.js';

// The live engine driven as runPrecopy drives it: from synchronous code on this thread, which
// never yields to the event loop between the calls below. Timing assertions are loose upward
// (the machine is shared, 2 cores) and strict downward; exact where nothing should move.

const slot: MemslotInfo = { id: 0, asId: 0, baseGfn: 0, pages: 1000 };
const SEED = 0x11fe_0009;

function guestOf(opts: Partial<LiveGuestOptions> & { failVcpu?: number; failAfter?: number } = {}) {
  const { failVcpu, failAfter, ...rest } = opts;
  const tracker = createFixtureTracker(slot.pages, {
    ...(failVcpu === undefined ? {} : { failVcpu }),
    ...(failAfter === undefined ? {} : { failAfter }),
  });
  const reporter = createFixtureReporter(slot, tracker);
  tracker.attach(reporter);
  tracker.enableLogging(slot);
  const memory = new SharedArrayBuffer(slot.pages * 4096);
  const guest = createLiveGuest({
    memory,
    vcpus: 2,
    tracker,
    sink: reporter,
    slot: slot.id,
    pages: slot.pages,
    seed: SEED,
    timeoutMs: 10_000,
    ...rest,
  });
  return { guest, tracker, reporter, memory };
}

/** Blocks this thread for `ms` without an event loop turn. */
function sleepSync(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

const ms = (engine: LiveEngine) => engine.clock.now() / NS_PER_MS;
const runFor = (engine: LiveEngine, msToRun: number) =>
  engine.runGuestUntil(engine.clock.now() + msToRun * NS_PER_MS);
const writesOf = (guest: LiveGuest) => guest.stats().vcpuWrites;

/**
 * Blocks until each of `vcpus` has slept at speed 0 (its throttled time grew): a write it had
 * under way when the speed dropped is then done, and it makes none until the speed rises.
 */
function asleep(engine: LiveEngine, vcpus: readonly number[]): void {
  const before = engine.guest.stats().vcpuThrottledMs;
  const deadline = ms(engine) + 5000;
  const grew = () =>
    vcpus.every((v) => (engine.guest.stats().vcpuThrottledMs[v] as number) > (before[v] as number));
  while (!grew()) {
    if (ms(engine) > deadline)
      throw new Error(`vCPUs ${vcpus.join(', ')} did not sleep at speed 0 within 5 s`);
    runFor(engine, 5);
  }
}

describe('createLiveEngine over a 2-vCPU live guest', () => {
  let g: ReturnType<typeof guestOf>;
  let engine: LiveEngine;

  beforeAll(async () => {
    g = guestOf();
    await g.guest.start();
    engine = createLiveEngine({ guest: g.guest });
    await waitUntil(() => writesOf(g.guest).every((w) => w > 500), 10_000, 'first writes');
  });
  afterAll(async () => {
    await g.guest.stop();
  });

  it('is the live plane, on a real clock, and refuses a virtual one', () => {
    expect(engine.plane).toBe('live');
    expect(engine.clock.kind).toBe('real');
    expect(engine.vcpus).toBe(2);
    expect(engine.running).toBe(true);
    expect(() => createLiveEngine({ guest: g.guest, clock: createVirtualClock() })).toThrow(
      expect.objectContaining({ code: 'invalid-argument', field: 'clock' }),
    );
  });

  it('pause from synchronous code stops every write (counters and memory frozen), resume restarts them', () => {
    g.guest.setValue(3);
    runFor(engine, 10);
    engine.pause();
    expect(engine.running).toBe(false);
    const paused = g.guest.stats();
    const bytes = new Uint8Array(g.memory).slice();
    sleepSync(50);
    expect(g.guest.stats()).toEqual(paused);
    expect(Buffer.compare(new Uint8Array(g.memory).slice(), bytes)).toBe(0);
    engine.runGuestUntil(engine.clock.now() + 20 * NS_PER_MS); // time passes, the guest stays paused
    expect(g.guest.stats()).toEqual(paused);
    engine.pause(); // twice is fine
    engine.resume();
    expect(engine.running).toBe(true);
    runFor(engine, 50);
    const resumed = writesOf(g.guest);
    expect(resumed.every((w, v) => w > (paused.vcpuWrites[v] as number))).toBe(true);
  });

  it('pause latency: every vCPU acknowledges within a loose bound, cycle after cycle', () => {
    const latencies: number[] = [];
    for (let i = 0; i < 20; i++) {
      runFor(engine, 2);
      const t = performance.now();
      engine.pause();
      latencies.push(performance.now() - t);
      engine.resume();
    }
    latencies.sort((a, b) => a - b);
    expect(latencies[10]).toBeLessThan(100); // median; typically well under a millisecond
  });

  it('runGuestUntil blocks for the requested real time while the vCPUs write; a past time returns at once', () => {
    const before = writesOf(g.guest);
    const t0 = ms(engine);
    runFor(engine, 100);
    const elapsed = ms(engine) - t0;
    expect(elapsed).toBeGreaterThanOrEqual(100);
    expect(elapsed).toBeLessThan(300);
    expect(writesOf(g.guest).every((w, v) => w > (before[v] as number))).toBe(true);
    const t1 = ms(engine);
    engine.runGuestUntil(0);
    expect(ms(engine) - t1).toBeLessThan(50);
  });

  it('vcpuDirtyPages counts the writes that trapped: exactly what the next harvest reports', () => {
    engine.pause();
    const out = Bitmap.create(slot.pages);
    g.reporter.getDirtyLog(slot.id, out); // re-arms what was reported
    const base = g.guest.stats().dirtyPages;
    engine.resume();
    runFor(engine, 30);
    engine.pause();
    try {
      // Which vCPU traps a page is a race (the first to wake may take them all): only the sum is exact.
      const dirtied = engine.vcpuDirtyPages(0) + engine.vcpuDirtyPages(1) - base;
      expect(dirtied).toBeGreaterThan(0);
      expect(dirtied).toBe(g.reporter.getDirtyLog(slot.id, out));
      expect(g.guest.stats().vcpuDirtyPages).toEqual([engine.vcpuDirtyPages(0), engine.vcpuDirtyPages(1)]);
      expect(() => engine.vcpuDirtyPages(2)).toThrow(expect.objectContaining({ code: 'out-of-range' }));
    } finally {
      engine.resume();
    }
  });

  it('throttle: a vCPU at speed 0.25 writes clearly less than one at full speed, side by side', () => {
    engine.setVcpuSpeed(0, 0.25);
    onTestFinished(() => engine.setVcpuSpeed(0, 1));
    expect(engine.vcpuSpeed(0)).toBe(0.25);
    runFor(engine, 30); // let vCPU 0 enter its first throttled timeslice
    const a = g.guest.stats();
    const t0 = ms(engine);
    runFor(engine, 400);
    const b = g.guest.stats();
    const wall = ms(engine) - t0;
    engine.setVcpuSpeed(0, 1);
    const slow = (b.vcpuWrites[0] as number) - (a.vcpuWrites[0] as number);
    const full = (b.vcpuWrites[1] as number) - (a.vcpuWrites[1] as number);
    expect(slow).toBeGreaterThan(0);
    expect(slow / full).toBeLessThan(0.6);
    // The share of real time it was let run (10 ms slices, 30 ms sleeps): ~0.25.
    const slept = (b.vcpuThrottledMs[0] as number) - (a.vcpuThrottledMs[0] as number);
    expect(1 - slept / wall).toBeGreaterThan(0.1);
    expect(1 - slept / wall).toBeLessThan(0.45);
    expect(b.vcpuThrottledMs[1]).toBe(0);
  });

  it('speed 0 (global or per vCPU): exactly zero writes during 100 ms; raising it restarts them', () => {
    onTestFinished(() => {
      if (!engine.running) engine.resume();
      engine.speed = 1;
      engine.setVcpuSpeed(1, 1);
    });
    engine.speed = 0;
    expect(g.guest.speed).toBe(0);
    asleep(engine, [0, 1]);
    const stopped = writesOf(g.guest);
    runFor(engine, 100);
    expect(writesOf(g.guest)).toEqual(stopped);
    expect(engine.running).toBe(true); // throttled, not paused
    engine.pause(); // a vCPU asleep at speed 0 still acknowledges a pause at once
    engine.speed = 1;
    engine.resume();
    runFor(engine, 50);
    expect(writesOf(g.guest).every((w, v) => w > (stopped[v] as number))).toBe(true);

    // dirty-limit's factor multiplies: vCPU 1 at 0 stops, vCPU 0 runs on.
    engine.setVcpuSpeed(1, 0);
    asleep(engine, [1]);
    const one = writesOf(g.guest);
    runFor(engine, 100);
    const two = writesOf(g.guest);
    expect(two[1]).toBe(one[1]);
    expect(two[0]).toBeGreaterThan(one[0] as number);
    engine.setVcpuSpeed(1, 1);
    expect(() => (engine.speed = 1.5)).toThrow(expect.objectContaining({ code: 'invalid-argument' }));
    expect(() => engine.setVcpuSpeed(0, -0.1)).toThrow(expect.objectContaining({ code: 'invalid-argument' }));
  });
});

describe('live guest pacing and failures, from synchronous code', () => {
  it('rate: 2,000 writes/s per vCPU gives 300..900 writes per vCPU in 300 ms', async () => {
    const { guest } = guestOf({ rate: 2000 });
    await guest.start();
    try {
      const engine = createLiveEngine({ guest });
      runFor(engine, 50);
      const a = writesOf(guest);
      runFor(engine, 300);
      const b = writesOf(guest);
      for (let v = 0; v < 2; v++) {
        const n = (b[v] as number) - (a[v] as number);
        expect(n).toBeGreaterThanOrEqual(300);
        expect(n).toBeLessThanOrEqual(900);
      }
    } finally {
      await guest.stop();
    }
  });

  it('a failing vCPU surfaces through runGuestUntil (early) and pauseSync as its DirtytrackError', async () => {
    const { guest } = guestOf({ failVcpu: 1, failAfter: 2000 });
    await guest.start();
    const engine = createLiveEngine({ guest });
    const t0 = performance.now();
    let error: unknown;
    try {
      engine.runGuestUntil(engine.clock.now() + 5000 * NS_PER_MS);
    } catch (e) {
      error = e;
    }
    expect(performance.now() - t0).toBeLessThan(2000);
    expect(error).toBeInstanceOf(DirtytrackError);
    expect(error).toMatchObject({ code: 'out-of-range', component: 'live-guest' });
    expect((error as Error).message).toMatch(/vCPU 1 failed: .*fails on purpose/);
    expect(((error as Error).cause as Error).message).toMatch(/fails on purpose/);
    expect(() => engine.pause()).toThrow(error as Error);
    await expect(guest.stop()).rejects.toBe(error);
  });

  it('a value set before start is in every store: no page written holds the initial 0', async () => {
    // Every page starts as 0xffffffff; written pages must hold 5 in their first word, never the 0
    // a vCPU would store if it ran before the value was set.
    const { guest, memory } = guestOf();
    const words = new Int32Array(memory);
    words.fill(-1);
    guest.setValue(5);
    await guest.start();
    try {
      await waitUntil(() => writesOf(guest).every((w) => w > 200), 10_000, 'first writes');
    } finally {
      await guest.stop();
    }
    const seen = new Map<number, number>();
    for (let p = 0; p < slot.pages; p++) {
      const v = words[p * 1024] as number;
      seen.set(v, (seen.get(v) ?? 0) + 1);
    }
    // Written pages hold 5; the rest (if the vCPUs did not reach them all) still 0xffffffff.
    expect(seen.get(5)).toBeGreaterThan(0);
    expect([...seen.keys()].filter((v) => v !== 5 && v !== -1)).toEqual([]);
  });

  it('pauseSync before start is an invalid-state error, not a hang', () => {
    const { guest } = guestOf();
    expect(() => guest.pauseSync()).toThrow(expect.objectContaining({ code: 'invalid-state' }));
    expect(guest.running).toBe(false);
  });
});

import {
  Bitmap,
  DirtytrackError,
  NS_PER_MS,
  createRng,
  createVirtualClock,
  type MemslotInfo,
} from '@dirtytrack/core';
import { afterAll, beforeAll, describe, expect, it, onTestFinished } from 'vitest';
import { createFixtureReporter, createFixtureTracker } from './__fixtures__/shared-fixtures.js';
import { waitUntil } from './__fixtures__/wait.js';
import {
  createLiveEngine,
  createLiveGuest,
  createVcpuStandby,
  encodeTrace,
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

describe('vCPUs booted ahead of their guest (createVcpuStandby)', () => {
  const range = (from: number, n: number) => Array.from({ length: n }, (_, i) => from + i);

  it('a 3-vCPU guest takes a standby of 2 and boots the third: each vCPU sweeps its own third, exactly', async () => {
    const standby = createVcpuStandby({ vcpus: 2 });
    onTestFinished(() => standby.close());
    await standby.ready;
    expect(standby.size).toBe(2);
    const { guest, memory } = guestOf({ vcpus: 3, workload: { kind: 'sweep' }, rate: 200, standby });
    new Int32Array(memory).fill(-1);
    guest.setValue(9);
    await guest.start();
    expect(standby.size).toBe(0);
    expect(guest.bootedAhead).toBe(2);
    try {
      await waitUntil(() => writesOf(guest).every((w) => w >= 20), 10_000, 'first writes');
    } finally {
      await guest.stop();
    }
    const [w0, w1, w2] = writesOf(guest) as [number, number, number];
    // Shares of floor(1000 / 3) = 333 pages (the last one 334): far from wrapping at 200 writes/s.
    const words = new Int32Array(memory);
    const written = range(0, slot.pages).filter((p) => words[p * 1024] === 9);
    expect(written).toEqual([...range(0, w0), ...range(333, w1), ...range(666, w2)]);
    expect(Math.min(w0, w1, w2)).toBeGreaterThanOrEqual(20);
  });

  it('a guest takes only the workers it needs; close() ends the rest, and a later guest boots its own', async () => {
    const standby = createVcpuStandby({ vcpus: 4, preload: ['@dirtytrack/no-such-module'] });
    onTestFinished(() => standby.close());
    // A module that does not load is not the standby's failure: the workers stand by all the same.
    await standby.ready;
    expect(standby.size).toBe(4);
    const first = guestOf({ standby });
    await first.guest.start();
    expect(standby.size).toBe(2);
    expect(first.guest.bootedAhead).toBe(2);
    await waitUntil(() => writesOf(first.guest).every((w) => w > 0), 10_000, 'first writes');
    await first.guest.stop();
    await standby.close();
    expect(standby.size).toBe(0);
    const second = guestOf({ standby });
    await second.guest.start();
    expect(second.guest.bootedAhead).toBe(0);
    try {
      await waitUntil(() => writesOf(second.guest).every((w) => w > 0), 10_000, 'second guest writes');
    } finally {
      await second.guest.stop();
    }
  });

  it('a worker that hangs in its imports is terminated after bootTimeoutMs: ready resolves, and a guest boots its own vCPUs', async () => {
    // A module whose top-level await never settles (its interval keeps the worker alive).
    const hang = 'data:text/javascript,await new Promise(() => setInterval(() => {}, 1000));';
    const standby = createVcpuStandby({ vcpus: 2, preload: [hang], bootTimeoutMs: 300 });
    onTestFinished(() => standby.close());
    const t0 = performance.now();
    let settled = false;
    void standby.ready.then(() => (settled = true));
    await new Promise((r) => setTimeout(r, 100));
    // Still booting (hung) before the bound: ready waits, nothing is counted yet.
    expect([settled, standby.size, standby.timedOut]).toEqual([false, 2, 0]);
    await standby.ready;
    const waited = performance.now() - t0;
    expect(waited).toBeGreaterThanOrEqual(299);
    expect(waited).toBeLessThan(5_000);
    expect([standby.size, standby.timedOut]).toEqual([0, 2]);
    const { guest } = guestOf({ standby });
    await guest.start();
    expect(guest.bootedAhead).toBe(0);
    try {
      await waitUntil(() => writesOf(guest).every((w) => w > 0), 10_000, 'writes of its own vCPUs');
    } finally {
      await guest.stop();
    }
  });

  it('refuses a vCPU count out of 1..1024, a bootTimeoutMs that is not a positive number, and a standby it did not make', () => {
    for (const vcpus of [0, 1025, 1.5])
      expect(() => createVcpuStandby({ vcpus })).toThrow(
        expect.objectContaining({ code: 'invalid-argument', field: 'vcpus' }),
      );
    for (const bootTimeoutMs of [0, -1, Number.NaN, Infinity])
      expect(() => createVcpuStandby({ vcpus: 1, bootTimeoutMs })).toThrow(
        expect.objectContaining({ code: 'invalid-argument', field: 'bootTimeoutMs' }),
      );
    const fake = { size: 2, ready: Promise.resolve(), timedOut: 0, close: async () => {} };
    expect(() => guestOf({ standby: fake })).toThrow(
      expect.objectContaining({ code: 'invalid-argument', field: 'standby' }),
    );
  });
});

describe('live workloads beyond uniform and hot-set: sweep and trace replay', () => {
  /** The pages whose first word holds `value` (written), over memory filled with -1 before start. */
  const written = (memory: SharedArrayBuffer, value: number): number[] => {
    const words = new Int32Array(memory);
    const out: number[] = [];
    for (let p = 0; p < slot.pages; p++) if (words[p * 1024] === value) out.push(p);
    return out;
  };
  const range = (from: number, n: number) => Array.from({ length: n }, (_, i) => from + i);

  it('sweep: each vCPU writes its half of the slot in ascending order, nothing else', async () => {
    const { guest, memory } = guestOf({ workload: { kind: 'sweep' }, rate: 200 });
    new Int32Array(memory).fill(-1);
    guest.setValue(7);
    await guest.start();
    try {
      await waitUntil(() => writesOf(guest).every((w) => w >= 20), 10_000, 'first writes');
    } finally {
      await guest.stop();
    }
    const [w0, w1] = writesOf(guest) as [number, number];
    // 200 writes/s: far from a whole share (500 pages) in the time it took, so no wrap-around.
    expect(w0).toBeLessThan(500);
    expect(w1).toBeLessThan(500);
    expect(written(memory, 7)).toEqual([...range(0, w0), ...range(500, w1)]);
  });

  it('sweep needs a page per vCPU at least', () => {
    expect(() => guestOf({ workload: { kind: 'sweep' }, vcpus: 2, pages: 1 })).toThrow(
      expect.objectContaining({ code: 'invalid-argument', field: 'workload' }),
    );
  });

  const ms = 1_000_000;
  it('trace: every record written once, by its vCPU, then the guest idles (no loop)', async () => {
    const trace = encodeTrace({
      pages: slot.pages,
      vcpus: 2,
      periodNs: 150 * ms,
      records: [
        { timeNs: 0, vcpu: 0, pages: Uint32Array.of(1, 2, 3) },
        { timeNs: 20 * ms, vcpu: 1, pages: Uint32Array.of(500, 501) },
        { timeNs: 50 * ms, vcpu: 0, pages: Uint32Array.of(10) },
        { timeNs: 100 * ms, vcpu: 1, pages: Uint32Array.of(999) },
      ],
    });
    const { guest, memory } = guestOf({ workload: { kind: 'trace', trace }, rate: 0 });
    new Int32Array(memory).fill(-1);
    guest.setValue(9);
    await guest.start();
    try {
      await waitUntil(() => writesOf(guest)[1] === 3 && writesOf(guest)[0] === 4, 10_000, 'the whole trace');
      await new Promise((resolve) => setTimeout(resolve, 200)); // past its end: nothing more
    } finally {
      await guest.stop();
    }
    expect(writesOf(guest)).toEqual([4, 3]);
    expect(written(memory, 9)).toEqual([1, 2, 3, 10, 500, 501, 999]);
  });

  it('trace with loop: the records again every period, never before their time', async () => {
    // vCPU 0 writes page 1 at 0 ms and page 2 at 50 ms of every 100 ms period, vCPU 1 page 600
    // at 10 ms. A vCPU's replay clock runs only while it runs, and no earlier than start(): after
    // W ms it has written at most (floor(W / 100) + 1) times each of its records.
    const trace = encodeTrace({
      pages: slot.pages,
      vcpus: 2,
      periodNs: 100 * ms,
      records: [
        { timeNs: 0, vcpu: 0, pages: Uint32Array.of(1) },
        { timeNs: 10 * ms, vcpu: 1, pages: Uint32Array.of(600) },
        { timeNs: 50 * ms, vcpu: 0, pages: Uint32Array.of(2) },
      ],
    });
    const { guest, memory } = guestOf({ workload: { kind: 'trace', trace, loop: true } });
    new Int32Array(memory).fill(-1);
    guest.setValue(3);
    const t0 = performance.now();
    await guest.start();
    try {
      await waitUntil(() => (writesOf(guest)[0] as number) >= 6, 10_000, 'three periods');
    } finally {
      await guest.stop();
    }
    const periods = Math.floor((performance.now() - t0) / 100) + 1;
    const [w0, w1] = writesOf(guest) as [number, number];
    expect(w0).toBeGreaterThanOrEqual(6);
    expect(w0).toBeLessThanOrEqual(2 * periods);
    expect(w1).toBeGreaterThanOrEqual(1);
    expect(w1).toBeLessThanOrEqual(periods);
    expect(written(memory, 3)).toEqual([1, 2, 600]);
  });

  it('trace with scale: a trace of a guest twice as big lands on page floor(p × 1000 / 2000)', async () => {
    const trace = encodeTrace({
      pages: 2 * slot.pages,
      vcpus: 1,
      periodNs: 10 * ms,
      records: [{ timeNs: 0, vcpu: 0, pages: Uint32Array.of(0, 1, 3, 1998, 1999) }],
    });
    const { guest, memory } = guestOf({ workload: { kind: 'trace', trace, scale: true } });
    new Int32Array(memory).fill(-1);
    guest.setValue(4);
    await guest.start();
    try {
      await waitUntil(() => writesOf(guest)[0] === 5, 10_000, 'the trace');
    } finally {
      await guest.stop();
    }
    expect(writesOf(guest)).toEqual([5, 0]); // vCPU 1 has no records: it idles
    expect(written(memory, 4)).toEqual([0, 1, 999]);
  });

  /**
   * Runs `first` until each vCPU wrote ≥ `atLeast`, pauses it and takes its progress, then boots
   * a second guest of the same program resumed from it over fresh memory: each guest's written
   * pages (value 9 on the first, 8 on the second) and writes.
   */
  async function migrateProgress(
    opts: Partial<LiveGuestOptions>,
    atLeast: number,
    then: (second: readonly number[], first: readonly number[]) => boolean,
  ) {
    const a = guestOf(opts);
    new Int32Array(a.memory).fill(-1);
    a.guest.setValue(9);
    await a.guest.start();
    let progress;
    try {
      await waitUntil(() => writesOf(a.guest).every((w) => w >= atLeast), 10_000, 'first writes');
      await a.guest.pause();
      progress = a.guest.progress();
    } finally {
      await a.guest.stop();
    }
    expect(() => a.guest.progress()).not.toThrow(); // stopped: still readable
    const b = guestOf({ ...opts, resume: progress });
    new Int32Array(b.memory).fill(-1);
    b.guest.setValue(8);
    await b.guest.start();
    try {
      await waitUntil(() => then(writesOf(b.guest), writesOf(a.guest)), 10_000, 'resumed writes');
    } finally {
      await b.guest.stop();
    }
    return {
      progress,
      first: { writes: writesOf(a.guest), pages: written(a.memory, 9) },
      second: { writes: writesOf(b.guest), pages: written(b.memory, 8) },
    };
  }

  it('progress/resume, sweep: the resumed guest goes on from each vCPU’s cursor', async () => {
    const r = await migrateProgress({ workload: { kind: 'sweep' }, rate: 200 }, 10, (w) =>
      w.every((x) => x >= 10),
    );
    const [a0, a1] = r.first.writes as [number, number];
    const [b0, b1] = r.second.writes as [number, number];
    expect(r.progress.map((p) => p.sweep)).toEqual([a0, a1]);
    expect(r.second.pages).toEqual([...range(a0, b0), ...range(500 + a1, b1)]);
  });

  it('progress/resume, uniform: each vCPU draws on from its stream (the pages its generator gives next)', async () => {
    const r = await migrateProgress({ rate: 200 }, 10, (w) => w.every((x) => x >= 10));
    const want = new Set<number>();
    for (const [v, p] of r.progress.entries()) {
      const rng = createRng(SEED).fork(v);
      rng.restore(p.rng);
      for (let i = 0; i < (r.second.writes[v] as number); i++) {
        rng.nextU32(); // the hot-set coin, drawn for every write
        want.add(rng.nextInt(slot.pages));
      }
    }
    expect(r.second.pages).toEqual([...want].sort((x, y) => x - y));
  });

  it('progress/resume, trace: every record written once over both guests, none twice', async () => {
    const records = Array.from({ length: 40 }, (_, i) => ({
      timeNs: i * 5 * ms,
      vcpu: i % 2,
      pages: Uint32Array.of(i * 10, i * 10 + 1, i * 10 + 2),
    }));
    const trace = encodeTrace({ pages: slot.pages, vcpus: 2, periodNs: 200 * ms, records });
    const sum = (w: readonly number[]) => w.reduce((x, y) => x + y, 0);
    const r = await migrateProgress(
      { workload: { kind: 'trace', trace } },
      6,
      (b, a) => sum(a) + sum(b) === 120,
    );
    expect(sum(r.first.writes) + sum(r.second.writes)).toBe(120);
    expect(sum(r.second.writes)).toBeGreaterThan(0);
    expect(r.first.pages.filter((p) => r.second.pages.includes(p))).toEqual([]);
    expect([...r.first.pages, ...r.second.pages].sort((x, y) => x - y)).toEqual(
      records.flatMap((x) => [...x.pages]),
    );
  });

  it('a bad trace fails before any vCPU boots: its byte, or the field it does not fit', () => {
    const good = encodeTrace({ pages: slot.pages, vcpus: 4, periodNs: ms, records: [] });
    expect(() => guestOf({ workload: { kind: 'trace', trace: good } })).toThrow(
      expect.objectContaining({ code: 'invalid-argument', field: 'vcpus' }),
    );
    const other = encodeTrace({ pages: 2 * slot.pages, vcpus: 2, periodNs: ms, records: [] });
    expect(() => guestOf({ workload: { kind: 'trace', trace: other } })).toThrow(
      expect.objectContaining({ code: 'invalid-argument', field: 'scale' }),
    );
    const truncated = good.subarray(0, 20);
    expect(() => guestOf({ workload: { kind: 'trace', trace: truncated } })).toThrow(
      expect.objectContaining({ offset: 20 }),
    );
  });
});

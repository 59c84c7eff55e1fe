import type { MemslotInfo } from '@dirtytrack/core';
import { DirtytrackError } from '@dirtytrack/core';
import { describe, expect, it } from 'vitest';
import { waitUntil } from './__fixtures__/wait.js';
import { createFixtureReporter, createFixtureTracker } from './__fixtures__/shared-fixtures.js';
import { createLiveGuest, runDirtyLogTest, type DirtyLogTestOptions } from './index.js';

// The dirty_log_test runner in both engines, over a minimal shared write-protect tracker (the
// real trackers run it through @dirtytrack/testkit's describeTracker). The slot is 1000 pages:
// not a multiple of 64, as the kernel's 1 GiB + 16 pages.

const SEED = Number(process.env['DIRTY_LOG_TEST_SEED'] ?? 0xd1e7_0005);
const slot: MemslotInfo = { id: 0, asId: 0, baseGfn: 0, pages: 1000 };

function setup(opts: Parameters<typeof createFixtureTracker>[1] = {}) {
  const tracker = createFixtureTracker(slot.pages, opts);
  return { tracker, reporter: createFixtureReporter(slot, tracker) };
}

const base = (engine: 'model' | 'live'): Omit<DirtyLogTestOptions, 'tracker' | 'reporter'> => ({
  engine,
  slot,
  vcpus: 2,
  iterations: engine === 'model' ? 24 : 12,
  seed: SEED,
  writesPerIteration: 300,
  intervalMs: 5,
});

describe(`runDirtyLogTest (seed ${SEED})`, () => {
  it('model engine: a sound tracker loses nothing, and the run is exact for a seed', async () => {
    const a = await runDirtyLogTest({ ...base('model'), ...setup() });
    const b = await runDirtyLogTest({ ...base('model'), ...setup() });
    expect(a).toMatchObject({ lost: 0, 'value-errors': 0, passed: true, harvests: 25, mode: 'dirty-log' });
    expect(a['pages-checked']).toBe(25 * 1000);
    expect(a['tracked-pages']).toBeGreaterThan(0); // check 3 was exercised
    expect(b).toEqual(a);
  });

  it('model engine: a tracker that never re-arms loses pages (negative control)', async () => {
    const r = await runDirtyLogTest({ ...base('model'), ...setup({ skipRearm: true }) });
    expect(r.lost).toBeGreaterThan(100);
    expect(r.passed).toBe(false);
    expect(r.violations[0]).toMatchObject({ check: 3 });
  });

  it('live engine: 2 worker vCPUs, no page lost', async () => {
    const r = await runDirtyLogTest({ ...base('live'), ...setup() });
    expect(r).toMatchObject({ engine: 'live', lost: 0, 'value-errors': 0, passed: true, harvests: 13 });
    expect(r.writes).toBeGreaterThanOrEqual(12 * 256);
    expect(r['pages-checked']).toBe(13 * 1000);
  });

  // The live negative controls run over the real MMU (packages/mmu/src/conformance.test.ts):
  // each live run boots worker threads through tsx, which costs about a second.

  it('live engine: a failing vCPU comes back as a DirtytrackError naming it, with the cause', async () => {
    const error = await runDirtyLogTest({ ...base('live'), ...setup({ failVcpu: 1, failAfter: 50 }) }).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(error).toBeInstanceOf(DirtytrackError);
    const e = error as DirtytrackError;
    expect(e.component).toBe('live-guest');
    expect(e.code).toBe('out-of-range');
    expect(e.message).toMatch(/vCPU 1 failed: .*fails on purpose/);
    expect((e.cause as Error).message).toMatch(/fails on purpose/);
  });
});

describe('createLiveGuest', () => {
  it('pauses (no write while paused), stores the value it is given, resumes and stops with exact counters', async () => {
    const tracker = createFixtureTracker(slot.pages);
    const reporter = createFixtureReporter(slot, tracker);
    tracker.attach(reporter);
    tracker.enableLogging(slot);
    const memory = new SharedArrayBuffer(slot.pages * 4096);
    const guest = createLiveGuest({
      memory,
      vcpus: 2,
      tracker,
      sink: reporter,
      slot: 0,
      pages: slot.pages,
      seed: SEED,
      workload: { kind: 'hot-set', pages: 16, share: 192 },
    });
    try {
      guest.setValue(7);
      await guest.start();
      // Each worker starts on its own schedule: on a busy machine one vCPU can be 1000 writes behind.
      const everyVcpuWrote = () => guest.stats().vcpuWrites.every((w) => w > 0);
      await waitUntil(() => guest.stats().writes > 1000 && everyVcpuWrote(), 10_000, 'writes');
      await guest.pause();
      const paused = guest.stats();
      await new Promise((resolve) => setTimeout(resolve, 20));
      expect(guest.stats()).toEqual(paused); // every vCPU acknowledged: nothing moves
      const values = new Set<number>();
      for (let p = 0; p < slot.pages; p++) values.add(guest.valueOf(p));
      expect([...values].sort()).toEqual([0, 7]);
      guest.setValue(8);
      guest.resume();
      // Resume releases every vCPU, not just the first to wake.
      const everyVcpuResumed = () =>
        guest.stats().vcpuWrites.every((w, v) => w > (paused.vcpuWrites[v] as number));
      await waitUntil(
        () => guest.stats().writes > paused.writes + 1000 && everyVcpuResumed(),
        10_000,
        'writes after resume',
      );
      const stopped = await guest.stop();
      expect(stopped.vcpuWrites.every((w) => w > 0)).toBe(true);
      expect(stopped.writes).toBe(stopped.vcpuWrites.reduce((a, b) => a + b, 0));
      expect(stopped.ringFullExits).toBe(0);
      const after = new Set<number>();
      for (let p = 0; p < slot.pages; p++) after.add(guest.valueOf(p));
      expect(after.has(8)).toBe(true);
      // The owner's tracker object saw no writes: each worker wrote through its own attached view.
      expect(tracker.stats().writes).toBe(0);
    } finally {
      await guest.stop().catch(() => undefined);
    }
  });
});

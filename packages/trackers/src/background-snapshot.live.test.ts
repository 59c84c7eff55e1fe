import type { Worker } from 'node:worker_threads';
import { PAGE_SIZE, type MemslotInfo } from '@dirtytrack/core';
import { blockUntil, exitCodes, sleepSync, startWorker, terminateAll, waitUntil } from '@dirtytrack/testkit';
import { afterAll, describe, expect, it } from 'vitest';
import { createBackgroundSnapshot, type BackgroundSnapshotStats } from './background-snapshot.js';
import { CONTROL, controlWords, type UffdVcpuData } from './__fixtures__/uffd-vcpu-layout.js';
import { createUffdWpTracker } from './uffd-wp-tracker.js';

// Live plane: two worker-thread vCPUs attach to the shared uffd-wp tracker through its
// AttachSpec and write real values into a 16 MiB SharedArrayBuffer while the main thread (the
// migration thread) takes a background snapshot. The VM is stopped only while the snapshot
// starts (QEMU's ram_write_tracking_start), which is when the reference copy is taken.

const VCPU_WORKER = new URL('./__fixtures__/uffd-vcpu.worker.ts', import.meta.url);
const VCPUS = 2;
const PAGES = 4096; // 16 MiB of 4 KiB pages
const SEED = Number(process.env['DIRTYTRACK_PROPERTY_SEED'] ?? 20261125);

interface LiveResult {
  readonly stats: BackgroundSnapshotStats;
  readonly saveCountsAllOne: boolean;
  /** Pages whose image differs from the reference (memory at start; async: memory at finish). */
  readonly differingPages: number;
  readonly violations: number;
  readonly writes: number;
  readonly trapped: number;
  readonly reported: number;
  readonly writesDuringSnapshot: number;
  readonly faultsDuringSnapshot: number;
  readonly snapshotMs: number;
  readonly tracker: ReturnType<ReturnType<typeof createUffdWpTracker>['stats']>;
}

function differingPages(a: Uint8Array, b: Uint8Array): number {
  let n = 0;
  for (let p = 0; p < PAGES; p++) {
    const o = p * PAGE_SIZE;
    if (Buffer.compare(a.subarray(o, o + PAGE_SIZE), b.subarray(o, o + PAGE_SIZE)) !== 0) n++;
  }
  return n;
}

async function liveRun(mode: 'sync' | 'async', debug: { skipFaultWait?: boolean } = {}): Promise<LiveResult> {
  const slot: MemslotInfo = { id: 0, asId: 0, baseGfn: 0x10_0000, pages: PAGES };
  const memory = new SharedArrayBuffer(PAGES * PAGE_SIZE);
  const mem8 = new Uint8Array(memory);
  for (let i = 0; i < mem8.length; i += 64) mem8[i] = (i >>> 6) & 0xff;
  const tracker = createUffdWpTracker({
    mode,
    shared: true,
    waitTimeoutMs: 5_000,
    ...(debug.skipFaultWait === true ? { skipFaultWait: true } : {}),
  });
  tracker.register(slot); // registered but unprotected: the guest runs untracked until the snapshot
  // Touch the image first: on this nested-virtualization host the first write to fresh memory
  // costs ~40 µs per 4 KiB page, which would otherwise dominate the measured snapshot time.
  const image = new Uint8Array(PAGES * PAGE_SIZE).fill(1).fill(0);
  const snap = createBackgroundSnapshot({ tracker, slot, memory: mem8, image, shared: true });
  const control = new Int32Array(new SharedArrayBuffer(controlWords(VCPUS) * 4));
  const spec = tracker.share();
  const workers = vcpuPool();
  workers.forEach((w, vcpu) => {
    const data: UffdVcpuData = {
      spec,
      vcpu,
      seed: SEED,
      pages: PAGES,
      memory,
      saved: snap.saved.buffer as SharedArrayBuffer,
      control: control.buffer as SharedArrayBuffer,
      batch: 4,
      maxMs: 8_000,
    };
    w.postMessage(data);
  });
  const failed = (): void => {
    if (Atomics.load(control, CONTROL.FAILED) !== 0 || poolError !== undefined) {
      throw new Error(`a vCPU failed: ${String(poolError)}`);
    }
  };
  try {
    await waitUntil(
      () => Atomics.load(control, CONTROL.READY) === VCPUS || poolError !== undefined,
      15_000,
      'vCPUs attached',
    );
    failed();
    Atomics.store(control, CONTROL.GO, 1);
    Atomics.notify(control, CONTROL.GO);
    sleepSync(20); // the guest runs untracked for a while

    // Stop the VM, take the reference, protect all RAM, restart the VM.
    Atomics.store(control, CONTROL.PAUSE, 1);
    blockUntil(control, CONTROL.PAUSED, VCPUS, CONTROL.FAILED, 5_000, 'vCPUs paused');
    const reference = mem8.slice();
    const before = tracker.stats();
    const t0 = performance.now();
    snap.start();
    if (mode === 'sync') Atomics.store(control, CONTROL.CHECK, 1);
    Atomics.store(control, CONTROL.PAUSE, 0);
    Atomics.notify(control, CONTROL.PAUSE);

    let final = reference;
    if (mode === 'sync') {
      // Sweep 16 pages a step, yielding 1 ms every 8 steps so the vCPUs run and fault meanwhile.
      for (let k = 1; !snap.done; k++) {
        snap.step(16);
        if (k % 8 === 0) {
          sleepSync(1);
          failed();
        }
      }
      snap.finish();
    } else {
      for (let round = 0; round < 3; round++) {
        snap.run(1);
        sleepSync(2);
        failed();
      }
      Atomics.store(control, CONTROL.PAUSE, 1); // stop-and-copy: the VM stops for the last scan
      blockUntil(control, CONTROL.PAUSED, VCPUS, CONTROL.FAILED, 5_000, 'vCPUs paused for finish');
      snap.finish();
      final = mem8.slice();
    }
    const snapshotMs = performance.now() - t0;
    const after = tracker.stats();

    Atomics.store(control, CONTROL.STOP, 1);
    Atomics.notify(control, CONTROL.PAUSE);
    await waitUntil(
      () => Atomics.load(control, CONTROL.DONE) === VCPUS || poolError !== undefined,
      10_000,
      'vCPUs done',
    );
    failed();
    const per = (k: number): number => {
      let t = 0;
      for (let v = 0; v < VCPUS; v++)
        t += Atomics.load(control, CONTROL.PER_VCPU + v * CONTROL.PER_VCPU_WORDS + k);
      return t;
    };
    return {
      stats: snap.stats(),
      saveCountsAllOne: snap.saveCounts.every((c) => c === 1),
      differingPages: differingPages(snap.image, final),
      violations: Atomics.load(control, CONTROL.VIOLATIONS),
      writes: per(0),
      trapped: per(1),
      reported: per(2),
      writesDuringSnapshot: after.writes - before.writes,
      faultsDuringSnapshot: after.faults - before.faults,
      snapshotMs,
      tracker: tracker.stats(),
    };
  } catch (error) {
    Atomics.store(control, CONTROL.STOP, 1);
    Atomics.store(control, CONTROL.PAUSE, 0);
    tracker.disableLogging(0); // wakes any vCPU blocked in a fault
    await dropPool();
    throw error;
  }
}

let pool: Worker[] | undefined;
let poolExits: Promise<number[]> | undefined;
let poolError: unknown;

function vcpuPool(): Worker[] {
  if (pool === undefined) {
    pool = Array.from({ length: VCPUS }, () => startWorker(VCPU_WORKER, null));
    poolExits = exitCodes(pool);
    poolExits.catch((error: unknown) => {
      poolError = error ?? 'a vCPU thread died';
    });
  }
  return pool;
}

async function dropPool(): Promise<void> {
  const p = pool;
  pool = undefined;
  poolExits = undefined;
  if (p !== undefined) await terminateAll(p);
}

afterAll(async () => {
  const p = pool;
  if (p === undefined) return;
  for (const w of p) w.postMessage('exit');
  try {
    expect(await poolExits).toEqual(p.map(() => 0)); // each vCPU thread exits cleanly
  } finally {
    await dropPool();
  }
});

const report = (name: string, r: LiveResult): void => {
  const per1000 = (1000 * r.faultsDuringSnapshot) / Math.max(1, r.writesDuringSnapshot);
  console.log(
    `[uffd-wp live] ${name}: ${PAGES * 4} KiB in ${r.snapshotMs.toFixed(1)} ms; ` +
      `${r.writesDuringSnapshot} guest writes during it, ${r.faultsDuringSnapshot} faults ` +
      `(${per1000.toFixed(1)} per 1000 writes); saved by fault ${r.stats.savedByFault}, by sweep ` +
      `${r.stats.savedBySweep}, duplicate messages ${r.stats.duplicateFaults}, scans ${r.stats.scans}, ` +
      `recopied ${r.stats.recopied}, vCPU sleeps ${r.tracker.waits}`,
  );
};

describe('background snapshot, live plane (2 worker vCPUs, 16 MiB SharedArrayBuffer)', () => {
  it('sync: the image equals memory at start byte for byte, each page once; no store before its page was saved', async () => {
    const r = await liveRun('sync');
    report('sync', r);
    expect(r.violations).toBe(0);
    expect(r.differingPages).toBe(0);
    expect(r.saveCountsAllOne).toBe(true);
    expect(r.stats.savedByFault + r.stats.savedBySweep).toBe(PAGES);
    expect(r.stats.savedByFault).toBeGreaterThan(0); // the vCPUs really faulted and waited
    expect(r.trapped).toBe(r.tracker.faults);
    expect(r.reported).toBe(r.trapped); // every sync fault reported to the vCPU's sink
    expect(r.tracker.messagesRead).toBeLessThanOrEqual(r.tracker.messages);
    expect(r.tracker.messages).toBe(r.trapped);
  });

  it('negative control: vCPUs that do not wait for the unprotect (skipFaultWait) corrupt the image', async () => {
    const r = await liveRun('sync', { skipFaultWait: true });
    report('sync, skipFaultWait', r);
    expect(r.violations).toBeGreaterThan(0);
    expect(r.differingPages).toBeGreaterThan(0);
  });

  it('async: scans re-copy what was WRITTEN; after the final stop-and-copy the image equals memory', async () => {
    const r = await liveRun('async');
    report('async', r);
    expect(r.differingPages).toBe(0);
    expect(r.stats.scans).toBeGreaterThanOrEqual(3);
    expect(r.stats.recopied).toBeGreaterThan(0);
    expect(r.tracker.messages).toBe(0);
    expect(r.tracker.waits).toBe(0); // WP_ASYNC never blocks a vCPU
  });
});

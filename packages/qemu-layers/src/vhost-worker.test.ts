import type { Worker } from 'node:worker_threads';
import { createRWLock, type DirtyLogSource, type LoggingControl } from '@dirtytrack/core';
import { exited, startWorker } from '@dirtytrack/testkit';
import { describe, expect, it } from 'vitest';
import { summingSync } from './__fixtures__/scripted.js';
import type { VhostDeviceData } from './__fixtures__/vhost-device.worker.js';
import { createQemuLayers, SYNC_STRATEGIES } from './qemu-layers.js';
import { createVhostLog } from './vhost-log.js';

const PAGES = 8192;
const idle: DirtyLogSource = {
  kind: 'idle',
  getDirtyLog: (_slot, out) => (out.clearAll(), 0),
  lastHarvestCost: () => ({ xchgWords: 0, copyWords: 0, rearmedPages: 0, tlbFlushes: 0, ringEntries: 0 }),
};
const logging: LoggingControl = { enableLogging: () => 0, disableLogging: () => undefined };

function startDevice(data: VhostDeviceData): Worker {
  return startWorker(new URL('./__fixtures__/vhost-device.worker.ts', import.meta.url), data);
}

describe('vhost log set by a device worker while the layers sync', () => {
  for (const strategy of SYNC_STRATEGIES) {
    it(`${strategy}: every page the device marked reaches bmap, none twice`, async () => {
      const lock = createRWLock();
      const vhost = createVhostLog(PAGES, { lock });
      const slot = { id: 0, asId: 0, baseGfn: 0, pages: PAGES };
      const m = createQemuLayers({ kvm: { source: idle, logging, slot }, strategy, vhost, lock });
      m.setup();
      for (let w = 0; w < m.bmap.words.length; w++) m.clearSent(w, 0xffffffff);
      const control = new SharedArrayBuffer(12);
      const batches = 8192;
      const batch = 1;
      // stride 13 is coprime with 8192: the 8192 marks hit every page exactly once.
      const worker = startDevice({
        buffer: vhost.buffer,
        pages: PAGES,
        lock: { buffer: lock.buffer, byteOffset: lock.byteOffset },
        control,
        batches,
        batch,
        stride: 13,
        every: 512,
      });
      const done = exited(worker);
      const progress = new Int32Array(control);
      const totals = summingSync(m);
      let overlapping = 0;
      // Let the device go, then sync in a tight loop while it marks.
      Atomics.store(progress, 1, 1);
      Atomics.notify(progress, 1);
      const deadline = performance.now() + 20_000;
      for (;;) {
        const before = Atomics.load(progress, 0);
        if (before >= batches || performance.now() > deadline) break;
        totals.sync();
        Atomics.add(progress, 2, 1);
        Atomics.notify(progress, 2);
        if (before > 0 && Atomics.load(progress, 0) < batches) overlapping++; // mid-stream
      }
      expect(await done).toBe(0);
      expect(Atomics.load(new Int32Array(control), 0)).toBe(batches);
      totals.sync();
      expect(overlapping).toBeGreaterThan(0);
      expect(totals.reported).toBe(batches * batch); // each distinct page reported exactly once
      expect(totals.fresh).toBe(batches * batch);
      expect(m.dirtyPages).toBe(batches * batch);
      expect(m.bmap.popcount()).toBe(batches * batch);
      for (let i = 0, p = 0; i < batches * batch; i++, p = (p + 13) % PAGES)
        expect(m.bmap.test(p)).toBe(true);
    });
  }
});

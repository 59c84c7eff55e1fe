import type { Worker } from 'node:worker_threads';
import { Bitmap, createRWLock, type LoggingControl } from '@dirtytrack/core';
import { exitCodes, startWorker } from '@dirtytrack/testkit';
import { describe, expect, it } from 'vitest';
import { summingSync } from './__fixtures__/scripted.js';
import type { SwapProducerData } from './__fixtures__/swap-producer.worker.js';
import { createQemuLayers } from './qemu-layers.js';
import { createSwapDirtyLog, type SwapDirtyLogShareData } from './swap-dirty-log.js';

const PAGES = 1 << 16;
const logging: LoggingControl = { enableLogging: () => 0, disableLogging: () => undefined };

/** The log's `share()` as a live vCPU worker gets it (module, factory, data). */
function shareData(log: ReturnType<typeof createSwapDirtyLog>): SwapDirtyLogShareData {
  const spec = log.share();
  expect({ module: spec.module, factory: spec.factory }).toEqual({
    module: '@dirtytrack/qemu-layers',
    factory: 'attachSwapDirtyLog',
  });
  return spec.data as SwapDirtyLogShareData;
}

function startProducer(data: SwapProducerData): Worker {
  return startWorker(new URL('./__fixtures__/swap-producer.worker.ts', import.meta.url), data);
}

describe("swap log filled by producer workers while 'fused' syncs by swapping", () => {
  // Without a migration buffer every sync merges (64 pages sent between syncs, so the spare keeps
  // bits); with one, each loop sends everything, so every sync adopts the harvested buffer while
  // the producers write the next one.
  it.each([
    { migrationBuffer: false, sendPerSync: 64 },
    { migrationBuffer: true, sendPerSync: Infinity },
  ])(
    'every page marked reaches bmap exactly once; counts, summaries and spares stay exact (%o)',
    async ({ migrationBuffer, sendPerSync }) => {
      const lock = createRWLock();
      const slot = { id: 0, asId: 0, baseGfn: 0, pages: PAGES };
      const log = createSwapDirtyLog({ slots: [slot], lock, migrationBuffer });
      const m = createQemuLayers({ kvm: { source: log, logging, slot }, strategy: 'fused' });
      m.setup();
      for (let w = 0; w < m.bmap.words.length; w++) m.clearSent(w, 0xffffffff);
      const control = new SharedArrayBuffer(12);
      const progress = new Int32Array(control);
      // Two producers, interleaved pages (so they race on the same words), 16 pages per batch.
      const workers = [0, 1].map((first) =>
        startProducer({
          share: shareData(log),
          control,
          first,
          step: 2,
          batch: 16,
        }),
      );
      const done = exitCodes(workers);
      let exited = false;
      void done.then(() => (exited = true));
      const sent = Bitmap.create(PAGES);
      const totals = summingSync(m);
      let midStream = 0;
      Atomics.store(progress, 1, 1);
      Atomics.notify(progress, 1);
      const batches = PAGES / 16;
      const deadline = performance.now() + 30_000;
      while (!exited && performance.now() < deadline) {
        const before = Atomics.load(progress, 0);
        totals.sync();
        // Send part of what arrived (the spare keeps bits and is zeroed at the next sync), or all.
        for (let p = m.findNextDirty(0), k = 0; p >= 0 && k < sendPerSync; p = m.findNextDirty(p + 1), k++) {
          m.clearSent(p >>> 5, 1 << (p & 31));
          sent.set(p);
        }
        if (before > 0 && before < batches && Atomics.load(progress, 0) < batches) {
          midStream++;
          Atomics.store(progress, 2, midStream); // Releases the producers waiting halfway.
          Atomics.notify(progress, 2);
        }
        await new Promise((r) => setImmediate(r));
      }
      expect(await done).toEqual([0, 0]);
      totals.sync();
      expect(midStream).toBeGreaterThan(0);
      if (migrationBuffer) expect(m.stats().adoptions).toBeGreaterThan(1);
      else expect(m.stats().adoptions).toBe(0);
      expect(totals.reported).toBe(PAGES); // each page reported exactly once
      expect(totals.fresh).toBe(PAGES);
      expect(m.dirtyPages).toBe(m.bmap.popcount());
      expect(log.active(0).counts[0]).toBe(0);
      // Every page was written once: it was either sent or is still in bmap, never both or neither.
      expect(sent.popcount()).toBeGreaterThan(0);
      const both = sent.clone();
      both.or(m.bmap);
      expect(both.popcount()).toBe(PAGES);
      expect(sent.popcount() + m.dirtyPages).toBe(PAGES);
    },
  );
});

import type { Worker } from 'node:worker_threads';
import { Bitmap, popcount32, type MemslotInfo, type Rearmer, type TouchedWords } from '@dirtytrack/core';
import { createRingReporter } from '../ring-reporter.js';
import {
  controlWords,
  STRESS,
  stressSlot,
  type ProducerData,
  type ProducerMode,
} from './ring-stress-layout.js';
import { exited, startWorker, terminateAll, waitUntil } from '@dirtytrack/testkit';

/**
 * The ring stress harness: `producers` worker threads (vCPUs) push into their own rings of one
 * ring reporter while the calling (main) thread is the single harvester — harvest every ring
 * into caller arrays, check, reset, repeat — like QEMU's reaper against KVM. Returns the
 * figures and every violation it saw; it never throws for a violation, so negative controls can
 * assert on what it detects.
 *
 * Checks: every entry is harvested exactly once and in push order per ring (offset encodes
 * (vCPU, sequence)); the slot field is the one pushed; each reset returns exactly the entries
 * harvested since the previous reset; every page is re-armed exactly once and the re-armed pages
 * are exactly the pushed ones; used never passed the soft limit (the reporter's shared max and
 * each producer's own observation); no producer failed; everything finished before the deadline.
 */
export interface StressOptions {
  producers: number;
  perVcpu: number;
  entries: number;
  maxBatch: number;
  mode: ProducerMode;
  /** Mode 'flags-first': the sequence number of the entry pushed in the broken order. */
  brokenAt?: number;
  /** Whole-run bound; past it the run is a failure. */
  timeoutMs: number;
}

export interface StressResult {
  violations: string[];
  total: number;
  harvested: number;
  reset: number;
  resets: number;
  batches: number;
  softLimit: number;
  /** KVM_EXIT_DIRTY_RING_FULL exits counted by the reporter (re-entries while still full included). */
  fullExits: number;
  /** Full episodes the producers counted (one per time they found room 0). */
  exitEpisodes: number;
  maxUsedReporter: number;
  maxUsedProducers: number;
  hardFull: number;
  /** From GO to the last reset (ms). */
  runMs: number;
  /** Including worker start-up and shutdown (ms). */
  totalMs: number;
}

const WORKER = new URL('./ring-producer.worker.ts', import.meta.url);
const MAX_VIOLATIONS = 20;

export async function runRingStress(o: StressOptions): Promise<StressResult> {
  const started = performance.now();
  const total = o.producers * o.perVcpu;
  const pages = total;
  const slots: MemslotInfo[] = [
    { id: 0, asId: 0, baseGfn: 0, pages },
    { id: 3, asId: 1, baseGfn: 0x100000, pages },
  ];
  const fields = [0, (1 << 16) | 3];
  const violations: string[] = [];
  const violate = (message: string): void => {
    if (violations.length < MAX_VIOLATIONS) violations.push(message);
  };

  // Re-arm check: no page twice, and at the end exactly the pushed pages.
  const rearmedPages = slots.map((s) => Bitmap.create(s.pages));
  const rearmer: Rearmer = {
    rearm(slot: number, mask: Bitmap, touched?: TouchedWords) {
      const k = slots.findIndex((s) => s.id === slot);
      const acc = (rearmedPages[k] as Bitmap).words;
      const m = mask.words;
      if (touched === undefined) {
        violate('reset re-armed without a touched-word hint');
        return mask.popcount();
      }
      let n = 0;
      for (let t = 0; t < touched.count; t++) {
        const i = touched.words[t] as number;
        const w = m[i] as number;
        if (((acc[i] as number) & w) !== 0) violate(`slot ${slot}: word ${i} re-armed a page twice`);
        acc[i] = (acc[i] as number) | w;
        n += popcount32(w);
      }
      return n;
    },
  };

  const ring = createRingReporter({ vcpus: o.producers, entries: o.entries, rearmer, slots });
  const control = new Int32Array(new SharedArrayBuffer(controlWords(o.producers) * 4));
  const messages: string[] = [];
  const workers: Worker[] = [];
  for (let v = 0; v < o.producers; v++) {
    const data: ProducerData = {
      ring: ring.buffer,
      control: control.buffer as SharedArrayBuffer,
      vcpus: o.producers,
      entries: o.entries,
      slots,
      vcpu: v,
      perVcpu: o.perVcpu,
      maxBatch: o.maxBatch,
      mode: o.mode,
      brokenAt: o.brokenAt ?? -1,
      timeoutMs: o.timeoutMs,
    };
    const w = startWorker(WORKER, data);
    w.on('message', (m: { kind: string; vcpu: number; message: string }) =>
      messages.push(`vCPU ${m.vcpu} ${m.kind}: ${m.message}`),
    );
    workers.push(w);
  }
  const exits = workers.map((w) => exited(w));
  const next = new Array<number>(o.producers).fill(0);
  let harvested = 0;
  let reset = 0;
  let resets = 0;
  let runMs = 0;
  try {
    await waitUntil(() => Atomics.load(control, STRESS.READY) === o.producers, 30_000, 'producers to attach');
    const goAt = performance.now();
    const deadline = started + o.timeoutMs;
    Atomics.store(control, STRESS.GO, 1);
    Atomics.notify(control, STRESS.GO);
    if (o.mode === 'ignore-room') {
      // Hold the harvest until every producer has pushed a full ring's worth (or stopped).
      const gate = ring.softLimit + 64;
      await waitUntil(
        () =>
          Atomics.load(control, STRESS.FINISHED) === o.producers ||
          Array.from({ length: o.producers }, (_, v) =>
            Atomics.load(control, STRESS.PER_VCPU + STRESS.STRIDE * v + STRESS.PROGRESS),
          ).every((p) => p >= gate),
        Math.max(1, deadline - performance.now()),
        'producers to push past the soft limit',
      );
    }

    const outSlots = new Uint32Array(1024);
    const outOffsets = new Float64Array(1024);
    let sinceReset = 0;
    let kickSeen = Atomics.load(control, STRESS.KICK);
    let idlePasses = 0;
    let aborted = false;
    const abort = (): void => {
      aborted = true;
      Atomics.store(control, STRESS.ABORT, 1);
      Atomics.store(control, STRESS.RELEASE, 1);
      Atomics.notify(control, STRESS.RELEASE);
    };
    while (harvested < total) {
      const paused = Atomics.load(control, STRESS.PAUSED);
      const finishedBefore = Atomics.load(control, STRESS.FINISHED) === o.producers;
      let got = 0;
      for (let v = 0; v < o.producers && !aborted; v++) {
        for (;;) {
          const n = ring.harvestInto(v, outSlots, outOffsets);
          for (let i = 0; i < n; i++) {
            const off = outOffsets[i] as number;
            const want = next[v] as number;
            const ownerV = Math.floor(off / o.perVcpu);
            const seq = off - ownerV * o.perVcpu;
            const field = fields[stressSlot(want)];
            if (ownerV !== v || seq !== want || outSlots[i] !== field) {
              violate(
                `ring ${v}: entry ${want} out of order or wrong: got vCPU ${ownerV} seq ${seq} slot 0x${(
                  outSlots[i] as number
                ).toString(16)}, expected vCPU ${v} seq ${want} slot 0x${(field as number).toString(16)}`,
              );
              abort();
              break;
            }
            next[v] = want + 1;
          }
          got += n;
          if (aborted || n < outSlots.length) break;
        }
      }
      if (aborted) break;
      harvested += got;
      sinceReset += got;
      if (paused !== 0) {
        // flags-first: a whole harvest pass ran after the producer published its flags.
        Atomics.store(control, STRESS.RELEASE, 1);
        Atomics.notify(control, STRESS.RELEASE);
      }
      if (got > 0) idlePasses = 0;
      if (sinceReset > 0) {
        const n = ring.reset();
        resets++;
        reset += n;
        if (n !== sinceReset) violate(`reset ${resets} reset ${n} entries, ${sinceReset} were harvested`);
        sinceReset = 0;
        continue;
      }
      if (performance.now() > deadline) {
        violate(`timed out after ${o.timeoutMs} ms with ${harvested} of ${total} entries harvested`);
        abort();
        break;
      }
      // Every producer had stopped before this pass began, and the pass found nothing: done.
      if (finishedBefore) break;
      // Idle: poll a few more passes (a harvester chasing the producers), then sleep until a
      // producer kicks (full exit, finish) or 1 ms passes.
      if (++idlePasses < 64) continue;
      idlePasses = 0;
      Atomics.wait(control, STRESS.KICK, kickSeen, 1);
      kickSeen = Atomics.load(control, STRESS.KICK);
    }
    runMs = performance.now() - goAt;
    if (!aborted) {
      // Let the producers finish and exit cleanly.
      await waitUntil(
        () => Atomics.load(control, STRESS.FINISHED) === o.producers,
        Math.max(1, deadline - performance.now()),
        'producers to finish',
      );
      const codes = await Promise.all(exits);
      if (codes.some((c) => c !== 0)) violate(`producer exit codes ${codes.join(', ')}`);
    } else {
      await terminateAll(workers);
    }
  } catch (error) {
    violate(`harness: ${(error as Error).message}`);
    Atomics.store(control, STRESS.ABORT, 1);
    await terminateAll(workers);
  }

  for (const m of messages) violate(m);
  if (Atomics.load(control, STRESS.FAILED) !== 0)
    violate(`${Atomics.load(control, STRESS.FAILED)} producer(s) failed`);
  next.forEach((n, v) => {
    if (n !== o.perVcpu) violate(`ring ${v}: ${n} of ${o.perVcpu} entries harvested`);
  });
  const stats = ring.stats();
  const perVcpu = (k: number): number[] =>
    Array.from({ length: o.producers }, (_, v) =>
      Atomics.load(control, STRESS.PER_VCPU + STRESS.STRIDE * v + k),
    );
  const maxUsedProducers = Math.max(...perVcpu(STRESS.MAX_USED));
  if (stats.maxUsed > ring.softLimit)
    violate(`used reached ${stats.maxUsed} > soft limit ${ring.softLimit} (reporter)`);
  if (maxUsedProducers > ring.softLimit) {
    violate(`used reached ${maxUsedProducers} > soft limit ${ring.softLimit} (producers)`);
  }
  if (violations.length === 0) {
    // Re-armed pages are exactly the pushed ones: both slots' expected bitmaps, word by word.
    const expected = slots.map((s) => Bitmap.create(s.pages));
    for (let v = 0; v < o.producers; v++) {
      for (let seq = 0; seq < o.perVcpu; seq++)
        (expected[stressSlot(seq)] as Bitmap).set(v * o.perVcpu + seq);
    }
    expected.forEach((e, k) => {
      const got = rearmedPages[k] as Bitmap;
      if (!e.words.every((w, i) => got.words[i] === w))
        violate(`slot ${k}: re-armed pages differ from pushed pages`);
    });
  }
  return {
    violations,
    total,
    harvested,
    reset,
    resets,
    batches: stats.coalescedBatches,
    softLimit: ring.softLimit,
    fullExits: stats.fullExits,
    exitEpisodes: perVcpu(STRESS.EXITS).reduce((a, b) => a + b, 0),
    maxUsedReporter: stats.maxUsed,
    maxUsedProducers,
    hardFull: Atomics.load(control, STRESS.HARD_FULL),
    runMs,
    totalMs: performance.now() - started,
  };
}

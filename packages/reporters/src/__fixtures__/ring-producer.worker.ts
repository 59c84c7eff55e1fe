import { parentPort, workerData } from 'node:worker_threads';
import { createRingReporter, KVM_DIRTY_GFN_F_DIRTY } from '../ring-reporter.js';
import { STRESS, stressSlot, type ProducerData } from './ring-stress-layout.js';

// One vCPU of the ring stress test: attaches to the harvester's rings and pushes its sequence of
// entries into its own ring, exiting with DIRTY_RING_FULL (and waiting for a reset) whenever
// room() is 0. See ProducerMode for the deliberately broken variants.

const data = workerData as ProducerData;
const control = new Int32Array(data.control);
const v = data.vcpu;
const at = (k: number): number => STRESS.PER_VCPU + STRESS.STRIDE * v + k;
const deadline = performance.now() + data.timeoutMs;
const aborted = (): boolean => Atomics.load(control, STRESS.ABORT) !== 0;

function kick(): void {
  Atomics.add(control, STRESS.KICK, 1);
  Atomics.notify(control, STRESS.KICK);
}

function checkDeadline(what: string): void {
  if (performance.now() > deadline)
    throw new Error(`vCPU ${v}: ${what} not done within ${data.timeoutMs} ms`);
}

let sink = 0;

/** Alternating stretches of 8192 entries: fast (fill the ring, exit full) and slow. */
function slowPhase(seq: number): boolean {
  return Math.floor(seq / 8192) % 2 === 1;
}

function run(): void {
  const ring = createRingReporter({
    vcpus: data.vcpus,
    entries: data.entries,
    rearmer: {
      rearm: () => {
        throw new Error('a producer never resets');
      },
    },
    slots: data.slots,
    buffer: data.ring,
  });
  const ids = [(data.slots[0] as { id: number }).id, (data.slots[1] as { id: number }).id];
  const raw = new Uint32Array(data.ring, 0, data.vcpus * data.entries * 4);
  const batch = new Uint32Array(Math.max(64, data.maxBatch));
  let x = (0x9e3779b9 ^ (v * 0x85ebca6b)) >>> 0 || 1;
  const nextBatch = (): number => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return 1 + (x % data.maxBatch);
  };

  Atomics.add(control, STRESS.READY, 1);
  while (Atomics.load(control, STRESS.GO) === 0) {
    checkDeadline('GO');
    Atomics.wait(control, STRESS.GO, 0, 50);
  }

  let seq = 0;
  let maxUsed = 0;
  while (seq < data.perVcpu) {
    if (aborted()) return;
    let take: number;
    if (data.mode === 'ignore-room') {
      take = 64;
    } else {
      let room = ring.room(v);
      if (room === 0) {
        // KVM_EXIT_DIRTY_RING_FULL: tell the harvester, wait for its reset, re-enter.
        Atomics.add(control, at(STRESS.EXITS), 1);
        kick();
        while ((room = ring.ringFullExit(v, 20)) === 0) {
          if (aborted()) return;
          checkDeadline(`room on the ring after ${seq} entries`);
          kick();
        }
      }
      take = Math.min(room, nextBatch());
      if (slowPhase(seq)) {
        // A slow stretch of guest work: one entry at a time with a pause, so the harvester catches up
        // and reads each ring at its head while the producer is pushing (where ordering bugs show).
        take = 1;
        for (let k = 0, spin = 256 + (x & 255); k < spin; k++) sink = (Math.imul(sink, 31) + k) | 0;
      }
    }
    take = Math.min(take, data.perVcpu - seq, 64 - (seq % 64)); // one slot per batch
    if (data.mode === 'flags-first' && v === 0 && seq <= data.brokenAt && data.brokenAt < seq + take) {
      take = data.brokenAt - seq;
      if (take === 0) {
        // Broken push order: flags = DIRTY before slot/offset, then hold the window open.
        // This producer is the ring's only pusher, so its dirty_index is `seq`.
        Atomics.store(raw, (v * data.entries + (seq & (data.entries - 1))) * 4, KVM_DIRTY_GFN_F_DIRTY);
        Atomics.store(control, STRESS.PAUSED, v + 1);
        kick();
        while (Atomics.load(control, STRESS.RELEASE) === 0) {
          checkDeadline('RELEASE');
          Atomics.wait(control, STRESS.RELEASE, 0, 50);
        }
        take = 1; // now write the data (markDirty re-publishes the flags after it)
      }
    }
    for (let i = 0; i < take; i++) batch[i] = v * data.perVcpu + seq + i;
    try {
      ring.markDirty(ids[stressSlot(seq)] as number, batch, take, v);
    } catch (error) {
      if (data.mode === 'ignore-room') {
        Atomics.add(control, STRESS.HARD_FULL, 1);
        parentPort?.postMessage({ kind: 'hard-full', vcpu: v, message: (error as Error).message });
        return;
      }
      throw error;
    }
    const used = ring.used(v);
    if (used > maxUsed) {
      maxUsed = used;
      Atomics.store(control, at(STRESS.MAX_USED), maxUsed);
    }
    seq += take;
    Atomics.store(control, at(STRESS.PROGRESS), seq);
  }
}

try {
  run();
  if (sink === 0.5) throw new Error('unreachable'); // keeps the busy work observable
} catch (error) {
  if (!aborted()) {
    Atomics.add(control, STRESS.FAILED, 1);
    parentPort?.postMessage({ kind: 'error', vcpu: v, message: String((error as Error).stack ?? error) });
  }
} finally {
  Atomics.add(control, STRESS.FINISHED, 1);
  kick();
}

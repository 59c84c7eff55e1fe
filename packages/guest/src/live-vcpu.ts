import { createRequire } from 'node:module';
import { pathToFileURL } from 'node:url';
import { parentPort, workerData } from 'node:worker_threads';
import {
  createRealClock,
  createRng,
  DirtytrackError,
  isBoundedDirtySink,
  type AttachSpec,
  type BoundedDirtySink,
  type DirtySink,
  type VcpuTracker,
  type Workload,
  type WriteBatch,
} from '@dirtytrack/core';
import {
  COUNTER,
  CTL,
  encodeFailure,
  FAILURE_BUFFER_BYTES,
  PROGRESS,
  SPEED_ONE,
  speedWord,
  STATE,
  THROTTLE_TIMESLICE_MS,
  WORDS_PER_PAGE,
  type LiveVcpuConfigure,
  type LiveVcpuData,
  type LiveVcpuFailure,
  type LiveVcpuStandbyData,
  type LiveVcpuStandingBy,
} from './live-layout.js';
import { createTraceWorkload } from './trace-workload.js';
import { sweepShare } from './workloads.js';

// The worker entry of the live engine: one vCPU. It rebuilds its tracker and its sink from their
// AttachSpecs, and while told to run, loops: pick a page, write it through the tracker (which
// traps and reports before returning, as KVM records the gfn before the faulting store retires),
// then store the shared value into the page's first 8 bytes (dirty_log_test's guest). Between
// writes it obeys pause / stop; paused, it is outside guest mode, so flushes and kicks do not wait
// for it. A ring sink bounds it: at the soft limit it exits (KVM_EXIT_DIRTY_RING_FULL) until the
// owner harvests and resets.
//
// Throttling is QEMU's cpu_throttle (reference/qemu.md §2.3): at speed s = global × own (< 1) the
// vCPU runs a 10 ms timeslice, then sleeps (1 − s) / s times as long (pct / (1 − pct) with
// pct = 1 − s), outside guest mode, in an Atomics.wait on the state word so that pause, stop and
// a speed change wake it at once. At s = 0 it makes no writes. A `rate` paces it on top: credit
// accrues at `rate` writes/s while it runs and each write spends one; out of credit it sleeps
// ≥ 1 ms (accurate on average, not per write).
//
// Workloads: uniform, a hot set, a sweep of the vCPU's share, or a trace replayed on the vCPU's
// own replay clock — the time it has been let run (throttle sleeps, speed 0, pauses and ring-full
// waits do not count), so a throttled vCPU replays later, as the model's trace workload does. With
// nothing due it sleeps 1 ms outside guest mode: records replay with ~1 ms resolution.

/** Writes between two clock reads while throttled (a clock read per write would cost more than the write). */
const CHECK_EVERY = 64;
/** Longest sleep without re-reading the speed words (a speed change also notifies the state word). */
const MAX_SLEEP_MS = 50;

const boot = workerData as LiveVcpuData | LiveVcpuStandbyData;
// Set by configure(): at once from workerData, or (a standby worker) from the owner's message.
let data: LiveVcpuData;
let control: Int32Array;
let v = -1;

/**
 * A standby worker (QEMU's destination has its vCPU threads before the guest arrives): imports
 * `preload` (a module that does not load fails later, in attach, with the guest's error), says
 * so, then waits for the guest's LiveVcpuData. Either way, sets `data`, `control` and `v`.
 */
async function configure(): Promise<void> {
  let given: LiveVcpuData;
  if ('standby' in boot) {
    await Promise.all(boot.preload.map((module) => importModule(module, boot.resolveFrom).catch(() => {})));
    given = await new Promise<LiveVcpuData>((resolve) => {
      parentPort?.once('message', (m: LiveVcpuConfigure) => resolve(m.data));
      parentPort?.postMessage({ kind: 'standing-by' } satisfies LiveVcpuStandingBy);
    });
  } else {
    given = boot;
  }
  data = given;
  control = new Int32Array(given.control);
  v = given.vcpu;
}

async function load(spec: AttachSpec): Promise<unknown> {
  const mod = (await importModule(spec.module, data.resolveFrom)) as Record<string, unknown>;
  const factory = mod[spec.factory];
  if (typeof factory !== 'function') throw new Error(`${spec.module} has no export ${spec.factory}`);
  return (factory as (d: unknown) => unknown)(spec.data);
}

/**
 * Imports `module`: from the owner's `resolveFrom` first (it knows which copy of the package it
 * shares memory with), then this package's own resolution, then the current directory.
 */
async function importModule(module: string, resolveFrom: readonly string[]): Promise<unknown> {
  const importers: (() => Promise<unknown>)[] = [
    ...resolveFrom.map((from) => () => importFrom(from, module)),
    () => import(module),
    () => importFrom(pathToFileURL(`${process.cwd()}/`).href, module),
  ];
  let firstError: unknown;
  for (const attempt of importers) {
    try {
      return await attempt();
    } catch (error) {
      firstError ??= error;
    }
  }
  throw new Error(
    `cannot import ${module} (tried from ${[...resolveFrom, 'the guest package', process.cwd()].join(', ')})`,
    { cause: firstError },
  );
}

/** Imports `specifier` as a module inside the package of file URL `from` would see it. */
function importFrom(from: string, specifier: string): Promise<unknown> {
  if (/^(file|data|node):/.test(specifier)) return import(specifier);
  const path = createRequire(from).resolve(specifier);
  return import(pathToFileURL(path).href);
}

const sleeper = new Int32Array(new SharedArrayBuffer(4));

async function run(): Promise<void> {
  await configure();
  const tracker = (await load(data.tracker)) as VcpuTracker;
  const sink = (await load(data.sink)) as DirtySink;
  tracker.attach(sink);
  const ring: BoundedDirtySink | undefined = isBoundedDirtySink(sink) ? sink : undefined;
  const ringExit = (sink as { ringFullExit?: (vcpu: number, timeoutMs?: number) => number }).ringFullExit;
  const memory = new Int32Array(data.memory);
  const counters = new Float64Array(data.counters);
  const row = v * COUNTER.WORDS;
  const rng = createRng(data.seed).fork(v);
  const pages = data.pages;
  const slot = data.slot;
  const workload = data.workload;
  const hot = new Uint32Array(workload.kind === 'hot-set' ? Math.max(1, workload.pages) : 0);
  if (workload.kind === 'hot-set') rng.fillInts(hot, hot.length, pages);
  const hotShare = workload.kind === 'hot-set' ? workload.share : 0;
  // Sweep: this vCPU's share, as the model's createSweepWorkload splits the slot.
  const { start: sweepBase, span: sweepSpan } = sweepShare(pages, data.vcpus, v);
  let sweepCursor = 0;
  // Trace: the model's replay, advanced for this vCPU only; its pages queue up until written.
  const replay =
    workload.kind === 'trace'
      ? createTraceWorkload({
          trace: workload.trace,
          pages,
          vcpus: data.vcpus,
          loop: workload.loop ?? false,
          scale: workload.scale ?? false,
        })
      : undefined;
  const onlyThis = new Float64Array(data.vcpus);
  onlyThis[v] = 1;
  let queue = new Uint32Array(1024);
  let queueHead = 0;
  let queueEnd = 0;
  /** Real-clock ms up to which the replay clock has run; -1: not running since (a sleep to skip). */
  let replayedTo = -1;
  /** The replay clock (ns of trace time) before and after the batch now in the queue. */
  let replayBeforeNs = 0;
  let replayNs = 0;
  const enqueue = (b: WriteBatch): void => {
    if (b.vcpu !== v) return;
    if (queueEnd + b.count > queue.length) {
      const grown = new Uint32Array(Math.max(queueEnd + b.count, queue.length * 2));
      grown.set(queue.subarray(0, queueEnd));
      queue = grown;
    }
    queue.set(b.offsets.subarray(0, b.count), queueEnd);
    queueEnd += b.count;
  };
  /** Trace: true when a page is due (queued); else advances the replay clock to now. */
  const traceDue = (): boolean => {
    if (queueHead < queueEnd) return true;
    queueHead = queueEnd = 0;
    const t = nowMs();
    if (replayedTo >= 0 && t > replayedTo) {
      replayBeforeNs = replayNs;
      replayNs += (t - replayedTo) * 1e6;
      (replay as Workload).generate(replayBeforeNs, replayNs, 1, enqueue, onlyThis);
    }
    replayedTo = t;
    return queueEnd > 0;
  };
  const progress = new Float64Array(data.progress, v * PROGRESS.WORDS * 8, PROGRESS.WORDS);
  /** Publishes where the workload stands (read by the owner once this vCPU is paused or gone). */
  const publish = (): void => {
    progress.set(rng.state(), PROGRESS.RNG);
    progress[PROGRESS.SWEEP] = sweepCursor;
    progress[PROGRESS.TRACE_BEFORE] = replayBeforeNs;
    progress[PROGRESS.TRACE_AFTER] = replayNs;
    progress[PROGRESS.TRACE_WRITTEN] = queueHead;
  };
  const from = data.resume;
  if (from !== undefined) {
    // A migrated guest: the same hot set (drawn above from the seed), then the stream, cursor and
    // replay where they stood — the replay rebuilt up to its last batch, and that batch's pages
    // not yet written queued again.
    rng.restore(from.rng);
    sweepCursor = from.sweep < sweepSpan ? from.sweep : 0;
    if (replay !== undefined && from.traceAfterNs > 0) {
      replay.generate(0, from.traceBeforeNs, 1, () => {}, onlyThis);
      replay.generate(from.traceBeforeNs, from.traceAfterNs, 1, enqueue, onlyThis);
      queueHead = Math.min(from.traceWritten, queueEnd);
      replayBeforeNs = from.traceBeforeNs;
      replayNs = from.traceAfterNs;
    }
  }
  publish();
  const one = new Uint32Array(1);
  let inGuest = false;
  let writes = 0;
  let dirty = 0;
  const ownSpeed = speedWord(data.vcpus, v);
  const clock = createRealClock();
  const nowMs = () => clock.now() / 1e6;
  // Throttle (times in ms, on the real clock): -1 = no timeslice begun / not sleeping.
  let sliceStart = -1;
  let sleepFrom = -1;
  let untilCheck = 0;
  // Pacing to `rate`: writes allowed now, and when credit was last added (-1 = not since a sleep).
  const ratePerMs = data.rate / 1000;
  const maxCredit = Math.max(1, ratePerMs * 100);
  let credit = 0;
  let paceAt = -1;

  let throttledMs = 0;
  /** The command sequence number read before the state this iteration acts on. */
  let seq = 0;
  /** Sleeps up to `ms` outside guest mode; any command since `seq` was read wakes it at once. */
  const sleep = (ms: number) => {
    exit();
    Atomics.wait(control, CTL.SEQ, seq, Math.min(ms, MAX_SLEEP_MS));
  };
  const addThrottled = (ms: number) => {
    replayedTo = -1; // a throttled vCPU's replay clock stands still
    throttledMs += ms;
    counters[row + COUNTER.THROTTLED_MS] = throttledMs;
  };
  /** True if a throttled vCPU (0 < s < 1) may write now; else it sleeps a while and returns false. */
  const throttled = (s: number): boolean => {
    if (sleepFrom < 0) {
      if (--untilCheck > 0) return true;
      untilCheck = CHECK_EVERY;
      const t = nowMs();
      if (sliceStart < 0) sliceStart = t;
      if (t - sliceStart < THROTTLE_TIMESLICE_MS) return true;
      sleepFrom = t;
    }
    const t = nowMs();
    // QEMU's pct / (1 − pct) × timeslice, fixed (a vCPU the host preempted mid-slice just ran
    // less, as in QEMU). Recomputed at every wake-up, so a speed change applies at once.
    const wakeAt = sleepFrom + (THROTTLE_TIMESLICE_MS * (1 - s)) / s;
    if (t >= wakeAt) {
      sleepFrom = -1;
      sliceStart = t;
      untilCheck = CHECK_EVERY;
      paceAt = -1; // no pacing credit for the time slept
      return true;
    }
    sleep(wakeAt - t);
    addThrottled(nowMs() - t);
    return false;
  };
  /** True if a paced vCPU has credit for a write; else it sleeps ≥ 1 ms and returns false. */
  const paced = (): boolean => {
    if (credit >= 1) return true;
    const t = nowMs();
    if (paceAt >= 0) credit = Math.min(maxCredit, credit + (t - paceAt) * ratePerMs);
    paceAt = t;
    if (credit >= 1) return true;
    sleep(Math.max(1, (1 - credit) / ratePerMs));
    return false;
  };

  const enter = () => {
    if (!inGuest) tracker.enterGuest?.(v);
    inGuest = true;
  };
  const exit = () => {
    if (inGuest) tracker.exitGuest?.(v);
    inGuest = false;
  };

  Atomics.add(control, CTL.READY, 1);
  Atomics.notify(control, CTL.READY);
  try {
    for (;;) {
      seq = Atomics.load(control, CTL.SEQ);
      const state = Atomics.load(control, CTL.STATE);
      if (state === STATE.STOP) break;
      if (state !== STATE.RUN) {
        exit(); // A VM exit: drains PML, and flushes stop waiting for this vCPU.
        sliceStart = sleepFrom = paceAt = replayedTo = -1;
        if (state === STATE.PAUSE) {
          const gen = Atomics.load(control, CTL.PAUSE_GEN);
          if (Atomics.load(control, CTL.ACK + v) !== gen) {
            publish(); // before the ack: a paused guest's progress is readable
            Atomics.store(control, CTL.ACK + v, gen);
            Atomics.notify(control, CTL.ACK + v);
          }
        }
        Atomics.wait(control, CTL.SEQ, seq, 20);
        continue;
      }
      if (ring !== undefined && ring.room(v) === 0) {
        // KVM_EXIT_DIRTY_RING_FULL: leave guest mode (the exit drains PML into the reserve) and
        // wait for the owner's harvest + reset, still obeying pause and stop.
        exit();
        counters[row + COUNTER.RING_FULL] = (counters[row + COUNTER.RING_FULL] as number) + 1;
        ringExit?.call(sink, v, 0);
        for (let waited = 0; ring.room(v) === 0 && Atomics.load(control, CTL.STATE) === STATE.RUN; waited++) {
          if (waited >= data.timeoutMs) {
            throw new DirtytrackError(
              'timeout',
              `vCPU ${v}: its dirty ring stayed full for ${data.timeoutMs} ms (nobody harvested and reset it)`,
              { component: 'live-guest' },
            );
          }
          Atomics.wait(sleeper, 0, 0, 1);
        }
        replayedTo = -1;
        continue;
      }
      // Speed = global × own, both fixed point (exact in a double).
      const speed =
        (Atomics.load(control, CTL.SPEED) * Atomics.load(control, ownSpeed)) / (SPEED_ONE * SPEED_ONE);
      if (speed <= 0) {
        sliceStart = sleepFrom = paceAt = -1;
        const t = nowMs();
        sleep(MAX_SLEEP_MS);
        addThrottled(nowMs() - t);
        continue;
      }
      if (speed < 1) {
        if (!throttled(speed)) continue;
      } else {
        sliceStart = sleepFrom = -1;
      }
      if (replay !== undefined && !traceDue()) {
        sleep(1); // nothing due yet: the guest idles (its replay clock runs on)
        continue;
      }
      if (ratePerMs > 0) {
        if (!paced()) continue;
        credit -= 1;
      }
      enter();
      if (replay !== undefined) {
        one[0] = queue[queueHead++] as number;
      } else if (workload.kind === 'sweep') {
        one[0] = sweepBase + sweepCursor;
        sweepCursor = sweepCursor + 1 === sweepSpan ? 0 : sweepCursor + 1;
      } else {
        const r = rng.nextU32();
        one[0] =
          hotShare > 0 && (r & 255) < hotShare ? (hot[(r >>> 8) % hot.length] as number) : rng.nextInt(pages);
      }
      const trapped = tracker.write(v, slot, one, 1);
      // The store, after the write has been let through: the current value, read just before.
      Atomics.store(memory, (one[0] as number) * WORDS_PER_PAGE, Atomics.load(control, CTL.VALUE));
      if (trapped > 0) counters[row + COUNTER.DIRTY] = dirty += trapped;
      counters[row + COUNTER.WRITES] = ++writes;
    }
  } finally {
    exit();
    publish();
  }
}

run().then(
  () => parentPort?.close(),
  (error: unknown) => {
    const e = error instanceof Error ? error : new Error(String(error));
    const code: unknown = (e as Error & { code?: unknown }).code;
    const failure: LiveVcpuFailure = {
      kind: 'failed',
      vcpu: v,
      name: e.name,
      message: e.message,
      ...(typeof code === 'string' ? { code } : {}),
      ...(e.stack === undefined ? {} : { stack: e.stack }),
    };
    // A standby worker that failed before it was given a guest has only its message to send.
    if (v < 0) {
      parentPort?.postMessage(failure);
      parentPort?.close();
      return;
    }
    if (Atomics.compareExchange(control, CTL.FAILED, 0, v + 1) === 0) {
      // First to fail: the report goes into shared memory too, so an owner blocked in
      // synchronous code (pauseSync, a live engine's runGuestUntil) can read it.
      const bytes = encodeFailure(failure, FAILURE_BUFFER_BYTES);
      new Uint8Array(data.failure).set(bytes);
      Atomics.store(control, CTL.FAILURE_BYTES, bytes.length);
      Atomics.notify(control, CTL.FAILURE_BYTES);
    }
    Atomics.notify(control, CTL.FAILED);
    Atomics.notify(control, CTL.READY);
    Atomics.notify(control, CTL.ACK + v);
    parentPort?.postMessage(failure);
    parentPort?.close();
  },
);

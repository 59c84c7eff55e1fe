import { createRequire } from 'node:module';
import { pathToFileURL } from 'node:url';
import { parentPort, workerData } from 'node:worker_threads';
import {
  createRng,
  DirtytrackError,
  isBoundedDirtySink,
  type AttachSpec,
  type BoundedDirtySink,
  type DirtySink,
  type VcpuTracker,
} from '@dirtytrack/core';
import {
  COUNTER,
  CTL,
  STATE,
  WORDS_PER_PAGE,
  type LiveVcpuData,
  type LiveVcpuFailure,
} from './live-layout.js';

// The worker entry of the live engine: one vCPU. It rebuilds its tracker and its sink from their
// AttachSpecs, and while told to run, loops: pick a page, write it through the tracker (which
// traps and reports before returning, as KVM records the gfn before the faulting store retires),
// then store the shared value into the page's first 8 bytes (dirty_log_test's guest). Between
// writes it obeys pause / stop; paused, it is outside guest mode, so flushes and kicks do not wait
// for it. A ring sink bounds it: at the soft limit it exits (KVM_EXIT_DIRTY_RING_FULL) until the
// owner harvests and resets.

const data = workerData as LiveVcpuData;
const control = new Int32Array(data.control);
const v = data.vcpu;

async function load(spec: AttachSpec): Promise<unknown> {
  // The owner's resolveFrom first (it knows which copy of the package it shares memory with),
  // then this package's own resolution, then the current directory.
  const importers: (() => Promise<unknown>)[] = [
    ...data.resolveFrom.map((from) => () => importFrom(from, spec.module)),
    () => import(spec.module),
    () => importFrom(pathToFileURL(`${process.cwd()}/`).href, spec.module),
  ];
  let mod: Record<string, unknown> | undefined;
  let firstError: unknown;
  for (const attempt of importers) {
    try {
      mod = (await attempt()) as Record<string, unknown>;
      break;
    } catch (error) {
      firstError ??= error;
    }
  }
  if (mod === undefined) {
    throw new Error(
      `cannot import ${spec.module} (tried from ${[...data.resolveFrom, 'the guest package', process.cwd()].join(', ')})`,
      { cause: firstError },
    );
  }
  const factory = mod[spec.factory];
  if (typeof factory !== 'function') throw new Error(`${spec.module} has no export ${spec.factory}`);
  return (factory as (d: unknown) => unknown)(spec.data);
}

/** Imports `specifier` as a module inside the package of file URL `from` would see it. */
function importFrom(from: string, specifier: string): Promise<unknown> {
  if (/^(file|data|node):/.test(specifier)) return import(specifier);
  const path = createRequire(from).resolve(specifier);
  return import(pathToFileURL(path).href);
}

const sleeper = new Int32Array(new SharedArrayBuffer(4));

async function run(): Promise<void> {
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
  const one = new Uint32Array(1);
  let inGuest = false;
  let writes = 0;

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
      const state = Atomics.load(control, CTL.STATE);
      if (state === STATE.STOP) break;
      if (state !== STATE.RUN) {
        exit(); // A VM exit: drains PML, and flushes stop waiting for this vCPU.
        if (state === STATE.PAUSE) {
          const gen = Atomics.load(control, CTL.PAUSE_GEN);
          if (Atomics.load(control, CTL.ACK + v) !== gen) {
            Atomics.store(control, CTL.ACK + v, gen);
            Atomics.notify(control, CTL.ACK + v);
          }
        }
        Atomics.wait(control, CTL.STATE, state, 20);
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
        continue;
      }
      enter();
      const r = rng.nextU32();
      one[0] =
        hotShare > 0 && (r & 255) < hotShare ? (hot[(r >>> 8) % hot.length] as number) : rng.nextInt(pages);
      tracker.write(v, slot, one, 1);
      // The store, after the write has been let through: the current value, read just before.
      Atomics.store(memory, (one[0] as number) * WORDS_PER_PAGE, Atomics.load(control, CTL.VALUE));
      counters[row + COUNTER.WRITES] = ++writes;
    }
  } finally {
    exit();
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
    Atomics.compareExchange(control, CTL.FAILED, 0, v + 1);
    Atomics.notify(control, CTL.READY);
    parentPort?.postMessage(failure);
    parentPort?.close();
  },
);

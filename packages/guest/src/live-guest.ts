import { Worker } from 'node:worker_threads';
import {
  createRealClock,
  DirtytrackError,
  type DirtytrackErrorCode,
  type SharedReporter,
  type SharedTracker,
  type VcpuThrottle,
} from '@dirtytrack/core';
import {
  controlWords,
  COUNTER,
  CTL,
  decodeFailure,
  FAILURE_BUFFER_BYTES,
  SPEED_ONE,
  speedWord,
  STATE,
  WORDS_PER_PAGE,
  PROGRESS,
  type LiveVcpuConfigure,
  type LiveVcpuData,
  type LiveVcpuFailure,
  type LiveVcpuProgress,
  type LiveVcpuStandbyData,
  type LiveVcpuStandingBy,
  type LiveWorkload,
} from './live-layout.js';
import { createTraceWorkload } from './trace-workload.js';

export type { LiveVcpuProgress, LiveWorkload } from './live-layout.js';

const COMPONENT = 'live-guest';

/** The default bound of a guest's waits ({@link LiveGuestOptions.timeoutMs}) and of a standby's boot. */
const DEFAULT_WAIT_MS = 30_000;

export interface LiveGuestOptions {
  /** Guest memory backing the slot: page p of the slot is bytes `[p * 4096, (p + 1) * 4096)`. */
  memory: SharedArrayBuffer;
  /** vCPUs: one `worker_thread` each. */
  vcpus: number;
  /**
   * The tracker the vCPUs write through; each worker attaches to `tracker.share()` (the only
   * method used here: e.g. a destination's postcopy fault tracker, which logs nothing).
   */
  tracker: Pick<SharedTracker, 'share'>;
  /** Where trapped writes go; each worker attaches to `sink.share()` and hands it to its tracker. */
  sink: Pick<SharedReporter, 'share'>;
  /** The memslot id the vCPUs write. */
  slot: number;
  /** Pages of the slot (every vCPU writes pages `0..pages-1`). */
  pages: number;
  /** Seeds every vCPU's generator (vCPU v uses `createRng(seed).fork(v)`). */
  seed: number;
  /** Which pages the vCPUs write. Default `{ kind: 'uniform' }`. */
  workload?: LiveWorkload;
  /**
   * Where the workers resolve the tracker's and sink's AttachSpec modules (e.g.
   * `'@dirtytrack/mmu'`): file URLs inside packages that depend on them — pass
   * `import.meta.url`. Tried first; then this package's own resolution, then the current
   * directory.
   */
  resolveFrom?: string | URL | readonly (string | URL)[];
  /**
   * Workers booted ahead ({@link createVcpuStandby}): the guest takes up to `vcpus` of them and
   * boots only the rest, so that it starts without a worker's boot (its module loading) — as
   * QEMU's destination, whose vCPU threads exist before the guest arrives, runs it at once.
   */
  standby?: VcpuStandby;
  /** Longest any wait (boot, pause, stop) may take before a `timeout` error. Default 30 s. */
  timeoutMs?: number;
  /**
   * Writes per second each vCPU paces itself to, at full speed (throttling slows it further).
   * Accurate on average over ~100 ms: a vCPU out of credit sleeps ≥ 1 ms. Default: unlimited.
   */
  rate?: number;
  /**
   * A migrated guest's vCPUs go on where the source's stood ({@link LiveGuest.progress} there):
   * one entry per vCPU, for the same workload, seed and vCPU count. Default: a fresh start.
   */
  resume?: readonly LiveVcpuProgress[];
}

export interface LiveGuestStats {
  /** Page writes (each followed by its store) per vCPU. */
  readonly vcpuWrites: readonly number[];
  readonly writes: number;
  /** `KVM_EXIT_DIRTY_RING_FULL` exits taken by the vCPUs (0 without a ring). */
  readonly ringFullExits: number;
  /** Pages each vCPU dirtied: its writes that trapped (the sum of its tracker's `write` results). */
  readonly vcpuDirtyPages: readonly number[];
  readonly dirtyPages: number; /**
   * Milliseconds each vCPU slept because of the throttle (time at speed 0 included): over a
   * window, `1 − Δslept / Δwall` is the share of real time it was let run.
   */
  readonly vcpuThrottledMs: readonly number[];
}

/**
 * A software guest on worker threads (live plane): N vCPUs write guest memory through a shared
 * tracker and store a shared value into each page they write. See {@link createLiveGuest}.
 */
export interface LiveGuest extends VcpuThrottle {
  readonly vcpus: number;
  /** Boots the workers, waits until every vCPU has attached, then lets them run. */
  start(): Promise<void>;
  /** Stops every vCPU between two writes, outside guest mode; resolves when all acknowledged. */
  pause(): Promise<void>;
  /**
   * {@link pause} for synchronous code: blocks the calling thread in `Atomics.wait` on the ack
   * words (no event loop turn) until every vCPU acknowledged. Throws a `timeout` error naming the
   * vCPUs that did not within `timeoutMs`, and a failed vCPU's error as {@link check} does.
   */
  pauseSync(): void;
  /** Lets paused vCPUs run again (synchronous: usable after either pause). */
  resume(): void;
  /** Started, not stopped and not paused. */
  readonly running: boolean;
  /** Its vCPUs that were standing by ({@link LiveGuestOptions.standby}) when it started; it booted the rest. */
  readonly bootedAhead: number;
  /**
   * Fraction of full speed every vCPU runs at, in [0, 1] (auto-converge sets 1 − pct/100).
   * Below 1 a vCPU runs a 10 ms timeslice, then sleeps `(1 − s) / s` × that outside guest mode
   * (QEMU's cpu_throttle, reference/qemu.md §2.3); at 0 it makes no writes. Default 1.
   */
  speed: number;
  /** vCPU `vcpu`'s own speed factor (dirty-limit), multiplied with {@link speed}. Default 1. */
  setVcpuSpeed(vcpu: number, speed: number): void;
  vcpuSpeed(vcpu: number): number;
  /** Pages vCPU `vcpu` dirtied so far: its writes that trapped into the tracker. */
  vcpuDirtyPages(vcpu: number): number;
  /** Stops and joins the workers (terminating any that do not exit in time); final counters. */
  stop(): Promise<LiveGuestStats>;
  /**
   * The value the vCPUs store from now on (dirty_log_test's `iteration`); 0 until set. Set it
   * before {@link start} for the very first stores to carry it.
   */
  setValue(value: number): void;
  /** The value page `page` holds in its first 8 bytes. */
  valueOf(page: number): number;
  stats(): LiveGuestStats;
  /**
   * Where each vCPU's workload stands (its random stream, sweep cursor, trace replay), as a
   * migration carries it: once paused (`pause`/`pauseSync` returned) or stopped.
   */
  progress(): LiveVcpuProgress[];
  /** Throws the first worker failure, if any (a DirtytrackError naming the vCPU, with the cause). */
  check(): void;
}

/**
 * The live engine: `vcpus` worker threads over shared guest memory. Each worker imports
 * `tracker.share()` and `sink.share()` (`import(module)[factory](data)`), attaches the sink to its
 * tracker, enters guest mode and loops: pick a page (a per-vCPU seeded generator), `write` it
 * through the tracker, then store the current value into the page's first 8 bytes — until paused
 * or stopped. A worker that fails stops, and its error comes back as a `DirtytrackError` from
 * `check`, `pause` or `stop`, with the vCPU and the original cause.
 *
 * The worker entry ships beside this file: `dist/live-vcpu.js` from the built package; from the
 * sources (tests, `tsx`) `src/live-vcpu.ts` is booted through tsx with the `@dirtytrack/source`
 * condition.
 */
export function createLiveGuest(options: LiveGuestOptions): LiveGuest {
  const { memory, vcpus, tracker, sink, slot, pages, seed } = options;
  const timeoutMs = options.timeoutMs ?? DEFAULT_WAIT_MS;
  checkVcpuCount(vcpus);
  if (!(Number.isInteger(pages) && pages >= 1)) throw bad('pages', 'must be a positive integer');
  if (!(memory instanceof SharedArrayBuffer) || memory.byteLength < pages * 4096) {
    throw bad('memory', `must be a SharedArrayBuffer of at least ${pages} × 4096 bytes`);
  }
  if (!(Number.isInteger(seed) && seed >= 0 && seed <= 0xffff_ffff))
    throw bad('seed', 'must be in [0, 2^32)');
  const workload = options.workload ?? { kind: 'uniform' };
  if (workload.kind === 'hot-set' && !(workload.pages >= 1 && workload.share >= 0 && workload.share <= 256)) {
    throw bad('workload', 'hot-set needs pages >= 1 and share in [0, 256]');
  }
  if (workload.kind === 'sweep' && Math.floor(pages / vcpus) === 0) {
    throw bad('workload', `sweep: ${pages} pages cannot be shared by ${vcpus} vCPUs`);
  }
  // A trace is parsed and checked against the guest here (its errors name the trace byte or the
  // field), so that a bad one fails before any vCPU boots; each vCPU parses its own copy.
  if (workload.kind === 'trace') createTraceWorkload({ ...workload, pages, vcpus });
  const rate = options.rate ?? 0;
  if (!(Number.isFinite(rate) && rate >= 0))
    throw bad('rate', 'must be a finite number of writes/s >= 0 (0 = unlimited)');
  const resumeFrom = options.resume;
  if (resumeFrom !== undefined) {
    const ok = (p: LiveVcpuProgress) =>
      p.rng.length === 4 &&
      p.rng.every((w) => Number.isInteger(w) && w >= 0 && w <= 0xffff_ffff) &&
      [p.sweep, p.traceBeforeNs, p.traceAfterNs, p.traceWritten].every((x) => Number.isFinite(x) && x >= 0) &&
      p.traceBeforeNs <= p.traceAfterNs;
    if (resumeFrom.length !== vcpus || !resumeFrom.every(ok))
      throw bad(
        'resume',
        `needs one progress entry per vCPU (${vcpus}), each as LiveGuest.progress() gives it`,
      );
  }
  const resolveFrom = fileUrls(options.resolveFrom);
  if (options.standby !== undefined && !standbys.has(options.standby))
    throw bad('standby', 'was not made by createVcpuStandby');

  const control = new Int32Array(new SharedArrayBuffer(controlWords(vcpus) * 4));
  const counters = new Float64Array(new SharedArrayBuffer(vcpus * COUNTER.WORDS * 8));
  const clock = createRealClock();
  const failureBuffer = new SharedArrayBuffer(FAILURE_BUFFER_BYTES);
  const progressBuffer = new SharedArrayBuffer(vcpus * PROGRESS.WORDS * 8);
  const progressRows = new Float64Array(progressBuffer);
  Atomics.store(control, CTL.SPEED, SPEED_ONE);
  for (let v = 0; v < vcpus; v++) Atomics.store(control, speedWord(vcpus, v), SPEED_ONE);
  let speed = 1;
  const vcpuSpeeds = new Float64Array(vcpus).fill(1);
  const mem32 = new Int32Array(memory);
  const workers: Worker[] = [];
  const exits: Promise<number>[] = [];
  let failure: DirtytrackError | undefined;
  let started = false;
  let stopped = false;
  let bootedAhead = 0;

  const fail = (code: DirtytrackErrorCode, message: string, cause?: unknown) =>
    new DirtytrackError(code, message, { component: COMPONENT, ...(cause === undefined ? {} : { cause }) });

  const recordFailure = (vcpu: number, cause: unknown, message: string) => {
    if (failure !== undefined) return;
    const code = (cause as { code?: unknown }).code;
    failure = fail(
      typeof code === 'string' && isErrorCode(code) ? code : 'internal',
      `vCPU ${vcpu} failed: ${message}`,
      cause,
    );
  };

  const check = () => {
    if (failure !== undefined) throw failure;
    const f = Atomics.load(control, CTL.FAILED);
    if (f === 0) return;
    // The first failing vCPU writes its report right after the flag: read it from shared memory,
    // since a caller blocked in synchronous code never gets the worker's message.
    Atomics.wait(control, CTL.FAILURE_BYTES, 0, 1000);
    const report = decodeFailure(failureBuffer, Atomics.load(control, CTL.FAILURE_BYTES));
    if (report !== undefined) recordFailure(report.vcpu, causeOf(report), report.message);
    throw failure ?? fail('internal', `vCPU ${f - 1} failed (its report did not arrive)`);
  };

  const checkVcpu = (vcpu: number) => {
    if (!(Number.isInteger(vcpu) && vcpu >= 0 && vcpu < vcpus)) {
      throw new DirtytrackError('out-of-range', `vCPU ${vcpu} is not in [0, ${vcpus})`, {
        component: COMPONENT,
      });
    }
  };
  const checkSpeed = (value: number, what: string) => {
    if (!(value >= 0 && value <= 1)) throw bad(what, `${value} is not in [0, 1]`);
  };
  /** Tells sleeping vCPUs a command changed (they sleep on the sequence word). */
  const bump = () => {
    Atomics.add(control, CTL.SEQ, 1);
    Atomics.notify(control, CTL.SEQ);
  };
  /** Stores a speed word and wakes sleeping vCPUs so they re-read it at once. */
  const storeSpeed = (word: number, value: number) => {
    Atomics.store(control, word, Math.round(value * SPEED_ONE));
    bump();
  };

  /** Starts a pause: returns the generation every vCPU must acknowledge. */
  const beginPause = (): number => {
    check();
    if (!started || stopped)
      throw fail('invalid-state', `pause: the guest is ${stopped ? 'stopped' : 'not started'}`);
    const gen = Atomics.add(control, CTL.PAUSE_GEN, 1) + 1;
    setState(STATE.PAUSE);
    return gen;
  };
  const unacked = (gen: number): number[] => {
    const missing: number[] = [];
    for (let v = 0; v < vcpus; v++) if (Atomics.load(control, CTL.ACK + v) !== gen) missing.push(v);
    return missing;
  };
  const pauseTimeout = (gen: number) =>
    fail('timeout', `pause: vCPU ${unacked(gen).join(', ')} did not acknowledge within ${timeoutMs} ms`);

  /** Polls `done` without blocking the event loop (worker messages must get through). */
  const waitFor = async (done: () => boolean, what: string) => {
    let waited = 0;
    while (!done()) {
      if (failure !== undefined) throw failure;
      if (waited >= timeoutMs) throw fail('timeout', `${what}: not done within ${timeoutMs} ms`);
      await new Promise((resolve) => setTimeout(resolve, 1));
      waited += 1;
    }
  };

  const stats = (): LiveGuestStats => {
    const vcpuWrites: number[] = [];
    let writes = 0;
    let ringFullExits = 0;
    const vcpuDirtyPages: number[] = [];
    let dirtyPages = 0;
    const vcpuThrottledMs: number[] = [];
    for (let v = 0; v < vcpus; v++) {
      const w = counters[v * COUNTER.WORDS + COUNTER.WRITES] as number;
      vcpuWrites.push(w);
      writes += w;
      ringFullExits += counters[v * COUNTER.WORDS + COUNTER.RING_FULL] as number;
      const d = counters[v * COUNTER.WORDS + COUNTER.DIRTY] as number;
      vcpuDirtyPages.push(d);
      dirtyPages += d;
      vcpuThrottledMs.push(counters[v * COUNTER.WORDS + COUNTER.THROTTLED_MS] as number);
    }
    return { vcpuWrites, writes, ringFullExits, vcpuDirtyPages, dirtyPages, vcpuThrottledMs };
  };

  const setState = (state: number) => {
    Atomics.store(control, CTL.STATE, state);
    bump();
  };

  return {
    vcpus,
    async start() {
      if (started) throw fail('invalid-state', 'start: already started');
      started = true;
      const trackerSpec = tracker.share();
      const sinkSpec = sink.share();
      const adopted = options.standby === undefined ? [] : takeStandby(options.standby, vcpus);
      bootedAhead = adopted.length;
      for (let v = 0; v < vcpus; v++) {
        const data: LiveVcpuData = {
          vcpu: v,
          vcpus,
          tracker: trackerSpec,
          sink: sinkSpec,
          memory,
          control: control.buffer as SharedArrayBuffer,
          counters: counters.buffer as SharedArrayBuffer,
          failure: failureBuffer,
          rate,
          slot,
          pages,
          seed,
          workload,
          resolveFrom,
          timeoutMs,
          progress: progressBuffer,
          ...(resumeFrom === undefined ? {} : { resume: resumeFrom[v] as LiveVcpuProgress }),
        };
        let worker = adopted[v];
        if (worker === undefined) {
          worker = spawnVcpu(data);
        } else {
          worker.ref();
          worker.postMessage({ kind: 'configure', data } satisfies LiveVcpuConfigure);
        }
        worker.on('message', (m: LiveVcpuFailure) => {
          if (m.kind === 'failed') recordFailure(m.vcpu, causeOf(m), m.message);
        });
        exits.push(
          new Promise<number>((resolve) => {
            worker.once('error', (error) => {
              recordFailure(v, error, error.message);
              resolve(1);
            });
            worker.once('exit', (code) => {
              if (code !== 0 && !stopped)
                recordFailure(v, new Error(`exit code ${code}`), `exited with code ${code}`);
              resolve(code);
            });
          }),
        );
        workers.push(worker);
      }
      await waitFor(() => Atomics.load(control, CTL.READY) >= vcpus, 'vCPU boot');
      setState(STATE.RUN);
    },
    async pause() {
      const gen = beginPause();
      try {
        await waitFor(() => unacked(gen).length === 0, 'pause');
      } catch (error) {
        if ((error as DirtytrackError).code === 'timeout') throw pauseTimeout(gen);
        throw error;
      }
    },
    pauseSync() {
      const gen = beginPause();
      const deadline = clock.now() / 1e6 + timeoutMs;
      for (let v = 0; v < vcpus; v++) {
        for (;;) {
          const ack = Atomics.load(control, CTL.ACK + v);
          if (ack === gen) break;
          check(); // a failed vCPU notifies its ack word too, so this wakes at once
          const left = deadline - clock.now() / 1e6;
          if (left <= 0) throw pauseTimeout(gen);
          Atomics.wait(control, CTL.ACK + v, ack, Math.min(left, 10));
        }
      }
    },
    resume() {
      check();
      setState(STATE.RUN);
    },
    get bootedAhead() {
      return bootedAhead;
    },
    get running() {
      return started && !stopped && Atomics.load(control, CTL.STATE) === STATE.RUN;
    },
    get speed() {
      return speed;
    },
    set speed(value: number) {
      checkSpeed(value, 'speed');
      speed = value;
      storeSpeed(CTL.SPEED, value);
    },
    setVcpuSpeed(vcpu, value) {
      checkVcpu(vcpu);
      checkSpeed(value, `vcpuSpeed[${vcpu}]`);
      vcpuSpeeds[vcpu] = value;
      storeSpeed(speedWord(vcpus, vcpu), value);
    },
    vcpuSpeed(vcpu) {
      checkVcpu(vcpu);
      return vcpuSpeeds[vcpu] as number;
    },
    vcpuDirtyPages(vcpu) {
      checkVcpu(vcpu);
      return counters[vcpu * COUNTER.WORDS + COUNTER.DIRTY] as number;
    },
    async stop() {
      stopped = true;
      setState(STATE.STOP);
      let timer: NodeJS.Timeout | undefined;
      const timedOut = new Promise<'timeout'>((resolve) => {
        timer = setTimeout(() => resolve('timeout'), timeoutMs);
      });
      const joined = await Promise.race([Promise.all(exits), timedOut]);
      clearTimeout(timer);
      if (joined === 'timeout') {
        await Promise.all(workers.map((w) => w.terminate()));
        throw failure ?? fail('timeout', `stop: the vCPUs did not exit within ${timeoutMs} ms`);
      }
      if (failure !== undefined) throw failure;
      return stats();
    },
    setValue(value) {
      Atomics.store(control, CTL.VALUE, value);
    },
    valueOf(page) {
      return Atomics.load(mem32, page * WORDS_PER_PAGE);
    },
    stats,
    progress() {
      if (!started || (!stopped && Atomics.load(control, CTL.STATE) === STATE.RUN))
        throw fail('invalid-state', 'progress: pause or stop the guest first');
      return Array.from({ length: vcpus }, (_, v) => {
        const at = v * PROGRESS.WORDS;
        return {
          rng: Array.from(progressRows.subarray(at + PROGRESS.RNG, at + PROGRESS.RNG + 4)),
          sweep: progressRows[at + PROGRESS.SWEEP] as number,
          traceBeforeNs: progressRows[at + PROGRESS.TRACE_BEFORE] as number,
          traceAfterNs: progressRows[at + PROGRESS.TRACE_AFTER] as number,
          traceWritten: progressRows[at + PROGRESS.TRACE_WRITTEN] as number,
        };
      });
    },
    check,
  };
}

/** A worker's failure report as an Error carrying the original name, code and stack. */
function causeOf(m: LiveVcpuFailure): Error {
  return Object.assign(new Error(m.message), {
    name: m.name,
    ...(m.code === undefined ? {} : { code: m.code }),
    ...(m.stack === undefined ? {} : { stack: m.stack }),
  });
}

/** An `invalid-argument` error naming the option `field`. */
const bad = (field: string, why: string) =>
  new DirtytrackError('invalid-argument', `${field} ${why}`, { component: COMPONENT, field });

/** A guest's or a standby's vCPU count: one worker each, 1..1024. */
function checkVcpuCount(vcpus: number): void {
  if (!(Number.isInteger(vcpus) && vcpus >= 1 && vcpus <= 1024)) throw bad('vcpus', 'must be 1..1024');
}

/** A `resolveFrom` option as the workers get it: a list of URL strings. */
function fileUrls(from: string | URL | readonly (string | URL)[] | undefined): string[] {
  return (from === undefined ? [] : typeof from === 'string' || from instanceof URL ? [from] : from).map(
    String,
  );
}

/** Boots one vCPU worker with `workerData` (a guest's vCPU, or a standby one). */
function spawnVcpu(workerData: LiveVcpuData | LiveVcpuStandbyData): Worker {
  const { url, source } = workerEntry();
  return source
    ? new Worker(
        // Sources only (tests, tsx): load the .ts entry through tsx, with sibling packages
        // resolved to their src/ as in the tests. The built package boots dist/live-vcpu.js.
        `import('tsx/esm/api').then((api) => { api.register(); return import(${JSON.stringify(url.href)}); })`,
        {
          eval: true,
          workerData,
          execArgv: [...process.execArgv, '--conditions=@dirtytrack/source'],
        },
      )
    : new Worker(url, { workerData });
}

export interface VcpuStandbyOptions {
  /** Workers to boot (1..1024). */
  vcpus: number;
  /**
   * AttachSpec modules the guest's tracker and sink will come from (e.g. `'@dirtytrack/mmu'`),
   * imported ahead. One that does not load is ignored here; the guest's attach reports it.
   */
  preload?: readonly string[];
  /** Where the workers resolve `preload` and, later, the guest's modules ({@link LiveGuestOptions.resolveFrom}). */
  resolveFrom?: string | URL | readonly (string | URL)[];
  /**
   * Longest a worker may take to boot and import `preload` (ms). One that has not stood by by then
   * is terminated and counted in {@link VcpuStandby.timedOut}, and `ready` no longer waits for it: a
   * guest given the standby boots what it lacks (under its own `timeoutMs`). Default 30 s, as
   * {@link LiveGuestOptions.timeoutMs}.
   */
  bootTimeoutMs?: number;
}

/** vCPU workers booted ahead of their guest: see {@link createVcpuStandby}. */
export interface VcpuStandby {
  /** Workers still standing by: booted or booting, not taken by a guest, not exited. */
  readonly size: number;
  /**
   * Resolves once every worker has booted and imported its modules, exited, or was terminated for
   * not doing so within `bootTimeoutMs`: never later than that.
   */
  readonly ready: Promise<void>;
  /** Workers terminated because they had not stood by within `bootTimeoutMs`. */
  readonly timedOut: number;
  /** Terminates the workers no guest took. */
  close(): Promise<void>;
}

interface StandbyState {
  workers: Worker[];
}
const standbys = new WeakMap<VcpuStandby, StandbyState>();

/**
 * Boots `vcpus` vCPU workers before there is a guest for them, as QEMU's destination creates its
 * vCPU threads before the migration arrives: each imports the live engine and `preload`, then
 * waits. A guest given the standby ({@link LiveGuestOptions.standby}) takes them at `start()`
 * (booting any it lacks) and runs at once, where booting costs ~0.1 s per guest from the built
 * package and ~1 s from the sources (tsx). The waiting workers do not keep the process alive.
 */
export function createVcpuStandby(options: VcpuStandbyOptions): VcpuStandby {
  const { vcpus } = options;
  checkVcpuCount(vcpus);
  const bootTimeoutMs = options.bootTimeoutMs ?? DEFAULT_WAIT_MS;
  if (!(Number.isFinite(bootTimeoutMs) && bootTimeoutMs > 0))
    throw bad('bootTimeoutMs', `must be a positive number of ms (got ${bootTimeoutMs})`);
  let timedOut = 0;
  const data: LiveVcpuStandbyData = {
    standby: true,
    preload: [...(options.preload ?? [])],
    resolveFrom: fileUrls(options.resolveFrom),
  };
  const state: StandbyState = { workers: [] };
  const booted: Promise<void>[] = [];
  for (let i = 0; i < vcpus; i++) {
    const worker = spawnVcpu(data);
    worker.unref();
    state.workers.push(worker);
    booted.push(
      new Promise<void>((resolve) => {
        // A worker hung in its imports would hold `ready` (and `serve`, which listens after it)
        // for ever: past the bound it is terminated, and a guest boots a vCPU of its own instead.
        const late = setTimeout(() => {
          const at = state.workers.indexOf(worker);
          if (at < 0) return resolve(); // Taken by a guest meanwhile.
          timedOut++;
          state.workers.splice(at, 1);
          void worker.terminate();
          resolve();
        }, bootTimeoutMs);
        late.unref();
        const done = (): void => {
          clearTimeout(late);
          resolve();
        };
        worker.on('message', (m: LiveVcpuStandingBy | LiveVcpuFailure) => {
          if (m.kind === 'standing-by') done();
        });
        worker.once('error', done);
        worker.once('exit', () => {
          // Gone before a guest took it (failed, or terminated): no guest gets it.
          const at = state.workers.indexOf(worker);
          if (at >= 0) state.workers.splice(at, 1);
          done();
        });
      }),
    );
  }
  const standby: VcpuStandby = {
    get size() {
      return state.workers.length;
    },
    ready: Promise.all(booted).then(() => {}),
    get timedOut() {
      return timedOut;
    },
    async close() {
      const left = state.workers.splice(0);
      await Promise.all(left.map((w) => w.terminate()));
    },
  };
  standbys.set(standby, state);
  return standby;
}

/** Up to `n` of the standby's workers, no longer its own (createLiveGuest checked it is one). */
function takeStandby(standby: VcpuStandby, n: number): Worker[] {
  return (standbys.get(standby) as StandbyState).workers.splice(0, n);
}

/** The worker entry next to this module: `.js` in the built package, `.ts` in the sources. */
function workerEntry(): { url: URL; source: boolean } {
  const here = import.meta.url;
  // (tsx's tsImport adds a query to the URL: look at the path.)
  const source = new URL(here).pathname.endsWith('.ts');
  return { url: new URL(source ? './live-vcpu.ts' : './live-vcpu.js', here), source };
}

const CODES: readonly DirtytrackErrorCode[] = [
  'invalid-argument',
  'invalid-config',
  'out-of-range',
  'invalid-state',
  'timeout',
  'unsupported',
  'internal',
];
function isErrorCode(code: string): code is DirtytrackErrorCode {
  return (CODES as readonly string[]).includes(code);
}

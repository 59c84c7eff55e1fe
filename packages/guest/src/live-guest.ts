import { Worker } from 'node:worker_threads';
import {
  DirtytrackError,
  type DirtytrackErrorCode,
  type SharedReporter,
  type SharedTracker,
} from '@dirtytrack/core';
import {
  controlWords,
  COUNTER,
  CTL,
  STATE,
  WORDS_PER_PAGE,
  type LiveVcpuData,
  type LiveVcpuFailure,
  type LiveWorkload,
} from './live-layout.js';

export type { LiveWorkload } from './live-layout.js';

const COMPONENT = 'live-guest';

export interface LiveGuestOptions {
  /** Guest memory backing the slot: page p of the slot is bytes `[p * 4096, (p + 1) * 4096)`. */
  memory: SharedArrayBuffer;
  /** vCPUs: one `worker_thread` each. */
  vcpus: number;
  /** The tracker the vCPUs write through; each worker attaches to `tracker.share()`. */
  tracker: SharedTracker;
  /** Where trapped writes go; each worker attaches to `sink.share()` and hands it to its tracker. */
  sink: SharedReporter;
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
  /** Longest any wait (boot, pause, stop) may take before a `timeout` error. Default 30 s. */
  timeoutMs?: number;
}

export interface LiveGuestStats {
  /** Page writes (each followed by its store) per vCPU. */
  readonly vcpuWrites: readonly number[];
  readonly writes: number;
  /** `KVM_EXIT_DIRTY_RING_FULL` exits taken by the vCPUs (0 without a ring). */
  readonly ringFullExits: number;
}

/**
 * A software guest on worker threads (live plane): N vCPUs write guest memory through a shared
 * tracker and store a shared value into each page they write. See {@link createLiveGuest}.
 */
export interface LiveGuest {
  readonly vcpus: number;
  /** Boots the workers, waits until every vCPU has attached, then lets them run. */
  start(): Promise<void>;
  /** Stops every vCPU between two writes, outside guest mode; resolves when all acknowledged. */
  pause(): Promise<void>;
  resume(): void;
  /** Stops and joins the workers (terminating any that do not exit in time); final counters. */
  stop(): Promise<LiveGuestStats>;
  /** The value the vCPUs store from now on (dirty_log_test's `iteration`). */
  setValue(value: number): void;
  /** The value page `page` holds in its first 8 bytes. */
  valueOf(page: number): number;
  stats(): LiveGuestStats;
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
  const timeoutMs = options.timeoutMs ?? 30_000;
  const bad = (field: string, why: string) =>
    new DirtytrackError('invalid-argument', `${field} ${why}`, { component: COMPONENT, field });
  if (!(Number.isInteger(vcpus) && vcpus >= 1 && vcpus <= 1024)) throw bad('vcpus', 'must be 1..1024');
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
  const from = options.resolveFrom;
  const resolveFrom = (
    from === undefined ? [] : typeof from === 'string' || from instanceof URL ? [from] : from
  ).map(String);

  const control = new Int32Array(new SharedArrayBuffer(controlWords(vcpus) * 4));
  const counters = new Float64Array(new SharedArrayBuffer(vcpus * COUNTER.WORDS * 8));
  const mem32 = new Int32Array(memory);
  const workers: Worker[] = [];
  const exits: Promise<number>[] = [];
  let failure: DirtytrackError | undefined;
  let started = false;
  let stopped = false;

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
    if (f !== 0) throw fail('internal', `vCPU ${f - 1} failed (its error is on its way)`);
  };

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
    for (let v = 0; v < vcpus; v++) {
      const w = counters[v * COUNTER.WORDS + COUNTER.WRITES] as number;
      vcpuWrites.push(w);
      writes += w;
      ringFullExits += counters[v * COUNTER.WORDS + COUNTER.RING_FULL] as number;
    }
    return { vcpuWrites, writes, ringFullExits };
  };

  const setState = (state: number) => {
    Atomics.store(control, CTL.STATE, state);
    Atomics.notify(control, CTL.STATE);
  };

  return {
    vcpus,
    async start() {
      if (started) throw fail('invalid-state', 'start: already started');
      started = true;
      const trackerSpec = tracker.share();
      const sinkSpec = sink.share();
      const { url, source } = workerEntry();
      for (let v = 0; v < vcpus; v++) {
        const data: LiveVcpuData = {
          vcpu: v,
          tracker: trackerSpec,
          sink: sinkSpec,
          memory,
          control: control.buffer as SharedArrayBuffer,
          counters: counters.buffer as SharedArrayBuffer,
          slot,
          pages,
          seed,
          workload,
          resolveFrom,
          timeoutMs,
        };
        const worker = source
          ? new Worker(
              // Sources only (tests, tsx): load the .ts entry through tsx, with sibling packages
              // resolved to their src/ as in the tests. The built package boots dist/live-vcpu.js.
              `import('tsx/esm/api').then((api) => { api.register(); return import(${JSON.stringify(url.href)}); })`,
              {
                eval: true,
                workerData: data,
                execArgv: [...process.execArgv, '--conditions=@dirtytrack/source'],
              },
            )
          : new Worker(url, { workerData: data });
        worker.on('message', (m: LiveVcpuFailure) => {
          if (m.kind === 'failed') {
            const cause = Object.assign(new Error(m.message), {
              name: m.name,
              ...(m.code === undefined ? {} : { code: m.code }),
              ...(m.stack === undefined ? {} : { stack: m.stack }),
            });
            recordFailure(m.vcpu, cause, m.message);
          }
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
      check();
      const gen = Atomics.add(control, CTL.PAUSE_GEN, 1) + 1;
      setState(STATE.PAUSE);
      await waitFor(() => {
        for (let v = 0; v < vcpus; v++) if (Atomics.load(control, CTL.ACK + v) !== gen) return false;
        return true;
      }, 'pause');
    },
    resume() {
      check();
      setState(STATE.RUN);
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
    check,
  };
}

/** The worker entry next to this module: `.js` in the built package, `.ts` in the sources. */
function workerEntry(): { url: URL; source: boolean } {
  const here = import.meta.url;
  const source = here.endsWith('.ts');
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

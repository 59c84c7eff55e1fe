import {
  Bitmap,
  createRealClock,
  createRng,
  DirtytrackError,
  isBoundedDirtySink,
  NS_PER_MS,
  type Clock,
  type MemslotInfo,
  type Reporter,
  type SharedReporter,
  type SharedTracker,
  type Tracker,
} from '@dirtytrack/core';
import { createLiveGuest, type LiveWorkload } from './live-guest.js';

const COMPONENT = 'dirty-log-test';

/** `TEST_PAGES_PER_LOOP` of the kernel's guest: writes a vCPU makes between two host checks. */
export const DIRTY_LOG_TEST_PAGES_PER_LOOP = 1024;

export interface DirtyLogTestOptions {
  /** `'model'`: vCPU writes in batches on this thread, exact. `'live'`: worker-thread vCPUs. */
  engine: 'model' | 'live';
  /**
   * The tracker under test, with the test slot already created (for an MMU: the memslot exists,
   * populated or not). The test attaches the reporter to it and enables logging. `'live'` needs
   * a {@link SharedTracker}.
   */
  tracker: Tracker;
  /**
   * The reporter under test, logging the slot. A reporter with `clearDirtyLog` (manual protect)
   * is collected like `clear-log` mode: GET, then CLEAR of exactly the returned bits over
   * `0..pages` (which reaches the slot's end, aligned or not). A dirty ring (a bounded sink with
   * `reap`) is reaped whenever a vCPU's ring is soft-full. `'live'` needs a {@link SharedReporter}.
   */
  reporter: Reporter;
  /** The test slot. The kernel's is 1 GiB + 16 pages: deliberately not a multiple of 64. */
  slot: MemslotInfo;
  vcpus: number;
  /** Host iterations (collect + verify); the kernel's default is 32. */
  iterations: number;
  seed: number;
  /** Model engine: page writes per vCPU per iteration. Default 1024 (`TEST_PAGES_PER_LOOP`). */
  writesPerIteration?: number;
  /** Live engine: how long the vCPUs run before each collection (ms). Default 10, as the kernel's. */
  intervalMs?: number;
  /**
   * Live engine: the vCPUs run past the interval until they made at least this many writes in
   * the iteration (the kernel's floor on coverage, `TEST_MIN_WRITES_PER_ITERATION`). Default 256.
   */
  minWritesPerIteration?: number;
  /** Live engine: which pages the vCPUs write. Default uniform, as the kernel's guest. */
  workload?: LiveWorkload;
  /** Live engine: guest memory (default: a fresh zeroed `SharedArrayBuffer` of `pages × 4 KiB`). */
  memory?: SharedArrayBuffer;
  /** Live engine: see `LiveGuestOptions.resolveFrom` (pass `import.meta.url`). */
  resolveFrom?: string | URL | readonly (string | URL)[];
  /** Live engine: measures `ms`. Default `createRealClock()`. */
  clock?: Clock;
  /** Live engine: bound on every wait (boot, pause, forward progress). Default 30 s. */
  timeoutMs?: number;
  /** How many violations to keep in the result. Default 8. */
  maxViolations?: number;
  /** Called after each verified iteration (progress bars). */
  onIteration?: (iteration: number, result: DirtyLogTestProgress) => void;
}

export interface DirtyLogTestProgress {
  readonly lost: number;
  readonly harvests: number;
  readonly writes: number;
}

/** One failed check, as the kernel's TEST_ASSERT would print it. */
export interface DirtyLogViolation {
  /** 1: a reported page holds neither iteration nor iteration−1. 2: a clean page holds more than iteration. 3: a lost page. */
  readonly check: 1 | 2 | 3;
  readonly page: number;
  readonly value: number;
  readonly iteration: number;
}

export interface DirtyLogTestResult {
  readonly engine: 'model' | 'live';
  /** `dirty-log` (GET only), `clear-log` (GET + CLEAR) or `dirty-ring`. */
  readonly mode: 'dirty-log' | 'clear-log' | 'dirty-ring';
  readonly vcpus: number;
  readonly pages: number;
  readonly iterations: number;
  readonly seed: number;
  /** Check 3 failures: clean pages holding the current iteration that the next collection missed. */
  readonly lost: number;
  /** Check 1 and 2 failures (a value a page cannot hold). */
  readonly 'value-errors': number;
  /** Pages verified, summed over every verification (pages × verifications). */
  readonly 'pages-checked': number;
  /** Collections (`getDirtyLog` calls; ring reaps on a full ring are counted in `ring-reaps`). */
  readonly harvests: number;
  readonly 'ring-reaps': number;
  /** `KVM_EXIT_DIRTY_RING_FULL` exits the vCPUs took (0 without a ring). */
  readonly 'ring-full-exits': number;
  /** Pages reported dirty, summed over verifications. */
  readonly 'dirty-pages': number;
  /** Clean pages holding the current iteration: each must be in the next collection. */
  readonly 'tracked-pages': number;
  /** Guest page writes. */
  readonly writes: number;
  /** Live engine: wall time of the run (ms, boot excluded); 0 for the model engine. */
  readonly ms: number;
  readonly passed: boolean;
  /** The first few failed checks. */
  readonly violations: readonly DirtyLogViolation[];
}

interface Ring {
  reap(): number;
}

/**
 * The kernel's `dirty_log_test` (reference/kvm.md §8) over any tracker and reporter, in either
 * engine. The guest writes the current `iteration` into the first 8 bytes of pseudo-random pages
 * of the slot; each host iteration lets the vCPUs run, collects the dirty log, stops the vCPUs,
 * verifies, lets them run on and then bumps `iteration` (so writes between the collection and
 * the bump carry the old value). A last collection after the vCPUs stopped settles the final
 * iteration's tracked pages. Checks, with the kernel's allowances:
 *
 * 1. a page reported dirty holds `iteration` or `iteration − 1` (in iteration 1 that includes 0:
 *    check 4, a never-written page reported by an initially-set bitmap);
 * 2. a page not reported holds a value ≤ `iteration`;
 * 3. a clean page holding exactly `iteration` (written after the snapshot) must be reported by
 *    the next collection — otherwise it is **lost**.
 *
 * The model engine replays the same loop with each vCPU's writes issued in batches between the
 * host's steps (writes before the collection, between the collection and the verification, and
 * after it before the bump), so every allowance is exercised and the result is exact for a seed.
 */
export async function runDirtyLogTest(options: DirtyLogTestOptions): Promise<DirtyLogTestResult> {
  const { engine, tracker, reporter, slot, vcpus, iterations, seed } = options;
  const pages = slot.pages;
  const bad = (field: string, why: string) =>
    new DirtytrackError('invalid-argument', `${field} ${why}`, { component: COMPONENT, field });
  if (engine !== 'model' && engine !== 'live') throw bad('engine', "must be 'model' or 'live'");
  if (!(Number.isInteger(vcpus) && vcpus >= 1)) throw bad('vcpus', 'must be a positive integer');
  if (!(Number.isInteger(iterations) && iterations >= 1))
    throw bad('iterations', 'must be a positive integer');
  if (!(Number.isInteger(pages) && pages >= 1)) throw bad('slot', 'must have at least one page');
  if (!(Number.isInteger(seed) && seed >= 0 && seed <= 0xffff_ffff))
    throw bad('seed', 'must be in [0, 2^32)');
  const maxViolations = options.maxViolations ?? 8;
  const clearLog = typeof reporter.clearDirtyLog === 'function';
  const ring = isBoundedDirtySink(reporter) ? (reporter as unknown as Partial<Ring>) : undefined;
  if (ring !== undefined && typeof ring.reap !== 'function') {
    throw bad('reporter', 'is a bounded sink without reap(): the test cannot empty a full ring');
  }
  const mode = ring !== undefined ? 'dirty-ring' : clearLog ? 'clear-log' : 'dirty-log';

  const bmap = Bitmap.create(pages);
  const track = Bitmap.create(pages);
  const violations: DirtyLogViolation[] = [];
  let lost = 0;
  let valueErrors = 0;
  let pagesChecked = 0;
  let harvests = 0;
  let ringReaps = 0;
  let dirtyPages = 0;
  let trackedPages = 0;

  const violation = (check: 1 | 2 | 3, page: number, value: number, iteration: number) => {
    if (check === 3) lost++;
    else valueErrors++;
    if (violations.length < maxViolations) violations.push({ check, page, value, iteration });
  };

  const collect = () => {
    reporter.getDirtyLog(slot.id, bmap);
    if (clearLog) reporter.clearDirtyLog?.(slot.id, 0, pages, bmap);
    harvests++;
  };

  /** vm_dirty_log_verify: every page against the collected bitmap, with the vCPUs stopped. */
  const verify = (iteration: number, valueOf: (page: number) => number) => {
    const words = bmap.words;
    for (let page = 0; page < pages; page++) {
      const value = valueOf(page);
      const dirty = ((words[page >>> 5] as number) & (1 << (page & 31))) !== 0;
      if (track.testAndClear(page) && !dirty) violation(3, page, value, iteration);
      if (dirty) {
        dirtyPages++;
        if (value !== iteration && value !== iteration - 1) violation(1, page, value, iteration);
      } else {
        if (value > iteration) violation(2, page, value, iteration);
        if (value === iteration) {
          // Written after the snapshot: it must be reported by the next collection.
          track.set(page);
          trackedPages++;
        }
      }
    }
    pagesChecked += pages;
  };

  tracker.attach(reporter);
  tracker.enableLogging(slot);

  if (engine === 'model') {
    const wpi = options.writesPerIteration ?? DIRTY_LOG_TEST_PAGES_PER_LOOP;
    if (!(Number.isInteger(wpi) && wpi >= 1)) throw bad('writesPerIteration', 'must be a positive integer');
    const values = new Uint32Array(pages);
    const rngs = Array.from({ length: vcpus }, (_, v) => createRng(seed).fork(v));
    const host = createRng(seed).fork(0x686f_7374); // 'host': how many writes land in each phase
    const buf = new Uint32Array(64);
    let writes = 0;
    /** Each vCPU makes `n` writes, interleaved in chunks of up to 64, storing `value` after each chunk. */
    const run = (n: number, value: number) => {
      const left = new Float64Array(vcpus).fill(n);
      for (let busy = true; busy;) {
        busy = false;
        for (let v = 0; v < vcpus; v++) {
          let take = Math.min(buf.length, left[v] as number);
          if (take === 0) continue;
          busy = true;
          if (ring !== undefined) {
            let room = (reporter as unknown as { room(v: number): number }).room(v);
            if (room === 0) {
              // KVM_EXIT_DIRTY_RING_FULL: the host reaps every ring (QEMU's vCPU thread does).
              (ring as Ring).reap();
              ringReaps++;
              room = (reporter as unknown as { room(v: number): number }).room(v);
            }
            take = Math.min(take, room);
          }
          const rng = rngs[v] as ReturnType<typeof createRng>;
          rng.fillInts(buf, take, pages);
          tracker.write(v, slot.id, buf, take);
          for (let i = 0; i < take; i++) values[buf[i] as number] = value;
          left[v] = (left[v] as number) - take;
          writes += take;
        }
      }
    };
    const valueOf = (page: number) => values[page] as number;
    const tail = Math.max(1, wpi >>> 3);
    for (let iteration = 1; iteration <= iterations; iteration++) {
      run(wpi, iteration); // the interval
      collect();
      run(host.nextInt(tail + 1), iteration); // between the collection and the stop
      verify(iteration, valueOf);
      run(host.nextInt(tail + 1), iteration); // resumed, before the bump
      options.onIteration?.(iteration, { lost, harvests, writes });
    }
    // Final collection with the vCPUs stopped: the last iteration's tracked pages must be in it.
    collect();
    verify(iterations + 1, valueOf);
    return result(writes, 0, ringReaps);
  }

  // Live engine.
  const sharedTracker = tracker as SharedTracker;
  const sharedReporter = reporter as SharedReporter;
  if (typeof sharedTracker.share !== 'function')
    throw bad('tracker', "must be a SharedTracker for engine 'live'");
  if (typeof sharedReporter.share !== 'function')
    throw bad('reporter', "must be a SharedReporter for engine 'live'");
  const intervalMs = options.intervalMs ?? 10;
  const minWrites = options.minWritesPerIteration ?? 256;
  const timeoutMs = options.timeoutMs ?? 30_000;
  const clock = options.clock ?? createRealClock();
  const guest = createLiveGuest({
    memory: options.memory ?? new SharedArrayBuffer(pages * 4096),
    vcpus,
    tracker: sharedTracker,
    sink: sharedReporter,
    slot: slot.id,
    pages,
    seed,
    timeoutMs,
    ...(options.workload === undefined ? {} : { workload: options.workload }),
    ...(options.resolveFrom === undefined ? {} : { resolveFrom: options.resolveFrom }),
  });
  const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
  /**
   * Dirty ring: a vCPU at the soft limit waits (KVM_EXIT_DIRTY_RING_FULL) until the host reaps,
   * so the host reaps while the guest runs, as the kernel's test does once a ring filled. The
   * reaped pages wait in the reporter's pending bitmap for the collection.
   */
  const reapIfFull = () => {
    if (ring === undefined) return;
    const bounded = reporter as unknown as { room(v: number): number };
    for (let v = 0; v < vcpus; v++) {
      if (bounded.room(v) === 0) {
        (ring as Ring).reap();
        ringReaps++;
        return;
      }
    }
  };
  const valueOf = (page: number) => guest.valueOf(page);
  let t0 = 0;
  let failed: unknown;
  try {
    guest.setValue(1);
    await guest.start();
    t0 = clock.now();
    for (let iteration = 1; iteration <= iterations; iteration++) {
      const before = guest.stats().writes;
      for (let t = 0; t < intervalMs; t++) {
        await sleep(1);
        reapIfFull();
      }
      // Forward progress: a vCPU stuck in the tracker would otherwise pass vacuously.
      for (let waited = 0; guest.stats().writes - before < minWrites; waited++) {
        guest.check();
        reapIfFull();
        if (waited * 2 >= timeoutMs) {
          throw new DirtytrackError(
            'timeout',
            `iteration ${iteration}: the vCPUs made ${guest.stats().writes - before} writes in ${timeoutMs} ms (need ${minWrites})`,
            { component: COMPONENT },
          );
        }
        await sleep(2);
      }
      collect(); // while the vCPUs run, as the kernel does
      await guest.pause();
      verify(iteration, valueOf);
      guest.resume();
      guest.setValue(iteration + 1);
      options.onIteration?.(iteration, { lost, harvests, writes: guest.stats().writes });
    }
    await guest.pause();
    collect();
    verify(iterations + 1, valueOf);
  } catch (error) {
    failed = error;
  }
  // Join the workers either way. A vCPU's own failure (reported by stop, once its message has
  // arrived) is the root cause of whatever the loop then saw, so it wins.
  await guest.stop().catch((error: unknown) => {
    failed = error;
  });
  if (failed !== undefined) throw failed;
  const final = guest.stats();
  return result(final.writes, (clock.now() - t0) / NS_PER_MS, final.ringFullExits);

  function result(writes: number, ms: number, ringFullExits: number): DirtyLogTestResult {
    return {
      engine,
      mode,
      vcpus,
      pages,
      iterations,
      seed,
      lost,
      'value-errors': valueErrors,
      'pages-checked': pagesChecked,
      harvests,
      'ring-reaps': ringReaps,
      'ring-full-exits': ringFullExits,
      'dirty-pages': dirtyPages,
      'tracked-pages': trackedPages,
      writes,
      ms: Math.round(ms * 10) / 10,
      passed: lost === 0 && valueErrors === 0,
      violations,
    };
  }
}

import { createRng, isDirtytrackError, PAGE_SIZE } from '@dirtytrack/core';
import {
  checkDirtyRateArgs,
  createDirtyRateMeter,
  type DirtyRateCounters,
  type DirtyRateMeasureMode,
  type DirtyRateResult,
  type DirtyRateTimeUnit,
  type PageContent,
} from '@dirtytrack/qemu-layers';
import type { WriteBatch } from '@dirtytrack/core';
import {
  createTraceWorkload,
  parseTrace,
  sweepShare,
  type LiveVcpuProgress,
  type LiveWorkload,
} from '@dirtytrack/guest';
import { DIRTY_RING_REAPER_PERIOD_NS, ringReaps } from '@dirtytrack/migration';
import { Option, type Command } from 'commander';
import { intFlag, UsageError } from './load-scenario.js';
import {
  availableMemory,
  FILLS,
  fitsInMemory,
  guestProgram,
  programWorkload,
  ringSize,
  startLiveSource,
  traceAndRateOptions,
  workloadRate,
  type Fill,
  type GuestProgram,
} from './live.js';

/**
 * `dirtytrack dirtyrate`: QEMU's `calc-dirty-rate` / `query-dirty-rate` on a live software guest —
 * worker-thread vCPUs writing its RAM through the software MMU — with the meter of
 * `@dirtytrack/qemu-layers` on the real clock, next to what the guest really wrote.
 */

export const DIRTYRATE_MODES: readonly DirtyRateMeasureMode[] = [
  'page-sampling',
  'dirty-bitmap',
  'dirty-ring',
];
const TIME_UNITS: readonly DirtyRateTimeUnit[] = ['second', 'millisecond'];
/** Ring entries per vCPU when `--mode dirty-ring` is given without `--dirty-ring-size`. */
const DEFAULT_RING_ENTRIES = 4096;
const MIB = 2 ** 20;

/**
 * `--workload`: uniform or hot-set (`liveWorkload` in live.ts), a sweep (each vCPU its share in order),
 * or a trace replayed (`--trace FILE`).
 */
export type DirtyrateWorkload = 'uniform' | 'hot-set' | 'sweep' | 'trace';

interface DirtyrateRaw {
  memory: string;
  vcpus: string;
  workload: DirtyrateWorkload;
  trace?: string;
  traceLoop?: boolean;
  traceScale?: boolean;
  rate: string;
  /** `--rate` was given (it caps a trace only then). */
  rateGiven?: boolean;
  fill: Fill;
  seed: string;
  mode: DirtyRateMeasureMode;
  calcTime: string;
  calcTimeUnit: DirtyRateTimeUnit;
  samplePages?: string;
  dirtyRingSize?: string;
  json?: boolean;
}

export interface DirtyratePlan {
  memory: number;
  vcpus: number;
  workload: DirtyrateWorkload;
  /** The vCPUs' program (a trace's bytes read and checked against the guest here). */
  program: GuestProgram;
  rate: number;
  fill: Fill;
  seed: number;
  mode: DirtyRateMeasureMode;
  calcTime: number;
  calcTimeUnit: DirtyRateTimeUnit;
  samplePages?: number;
  /** Ring entries per vCPU: the guest tracks through a KVM dirty ring (dirty-ring mode). */
  dirtyRing?: number;
}

/** `dirtyrate`'s JSON: `query-dirty-rate`'s fields, then what the guest did meanwhile. */
export interface DirtyrateOutput extends DirtyRateResult {
  dirtytrack: {
    plane: 'live';
    memory: number;
    vcpus: number;
    workload: DirtyrateWorkload;
    /** Page writes per second per vCPU asked (0 = as fast as it can). */
    rate: number;
    /** Writes the vCPUs made while the meter measured, and their rate (MiB/s, 4 KiB a write). */
    'guest-writes': number;
    'guest-write-rate': number;
    /**
     * The rate of distinct pages those writes are expected to dirty (MiB/s) — what the
     * dirty-bitmap and page-sampling modes should read (the ring counts a page again each time
     * it is dirtied after a reap re-armed it): uniform `pages × (1 − (1 − 1/pages)^writes)` per second; sweep, exactly each
     * vCPU's writes up to its share (a sweep writes a page again only after its whole share);
     * trace, exactly the distinct pages of the records each vCPU replayed while the meter
     * measured (from its replay position before to after). Absent for hot-set.
     */
    'expected-dirty-rate'?: number;
    /** The meter's raw counters (QEMU's `DirtyStat`). */
    counters: DirtyRateCounters;
  };
}

/** Validates `dirtytrack dirtyrate`'s flags: nothing starts yet. */
export function planDirtyrate(raw: DirtyrateRaw, availableBytes = availableMemory()): DirtyratePlan {
  const memory = fitsInMemory('--memory', raw.memory, 1, availableBytes);
  const vcpus = intFlag('--vcpus', raw.vcpus, 1, 64);
  const rate = workloadRate(raw.workload, raw.rate, raw.rateGiven === true);
  // The trace file is read and checked against this guest before anything boots.
  const program = guestProgram(raw, vcpus, memory / PAGE_SIZE);
  const seed = intFlag('--seed', raw.seed, 0, 0xffff_ffff);
  const calcTime = intFlag('--calc-time', raw.calcTime, 0, 60_000_000);
  const samplePages =
    raw.samplePages === undefined ? undefined : intFlag('--sample-pages', raw.samplePages, 0, 1e9);
  // QEMU's own checks of calc-dirty-rate's arguments, with its messages, before a guest boots.
  try {
    checkDirtyRateArgs({
      mode: raw.mode,
      calcTime,
      calcTimeUnit: raw.calcTimeUnit,
      ...(samplePages === undefined ? {} : { samplePages }),
    });
  } catch (error) {
    if (!isDirtytrackError(error) || error.field === undefined) throw error;
    throw new UsageError(`--${error.field}`, error.message.replace(/^\[dirtytrack\] \[[^\]]*\] /, ''));
  }
  const entries =
    raw.dirtyRingSize === undefined ? undefined : ringSize('--dirty-ring-size', raw.dirtyRingSize);
  // QEMU: dirty-bitmap mode only without the dirty ring, dirty-ring mode only with it.
  if (raw.mode === 'dirty-bitmap' && entries !== undefined)
    throw new UsageError(
      '--mode',
      'dirty-bitmap is not enabled with the dirty ring (--dirty-ring-size): use dirty-ring',
    );
  const dirtyRing = raw.mode === 'dirty-ring' ? (entries ?? DEFAULT_RING_ENTRIES) : entries;
  return {
    memory,
    vcpus,
    workload: raw.workload,
    program,
    rate,
    fill: raw.fill,
    seed,
    mode: raw.mode,
    calcTime,
    calcTimeUnit: raw.calcTimeUnit,
    ...(samplePages === undefined ? {} : { samplePages }),
    ...(dirtyRing === undefined ? {} : { dirtyRing }),
  };
}

/** A page's contents as page-sampling hashes them: FNV-1a over its 1024 words (QEMU: xxhash). */
export function liveContent(memory: SharedArrayBuffer): PageContent {
  const words = new Int32Array(memory);
  return {
    hashPage(page) {
      let h = 0x811c9dc5;
      for (let i = page * 1024, end = i + 1024; i < end; i++)
        h = Math.imul(h ^ Atomics.load(words, i), 0x01000193);
      return h >>> 0;
    },
  };
}

/**
 * Distinct pages a trace replay dirtied between two progress snapshots of its vCPUs (`from`,
 * `to`: `LiveGuest.progress()`). vCPU v had written, at a snapshot, every page of its records
 * before `traceBeforeNs` and the first `traceWritten` pages of the batch `[traceBeforeNs,
 * traceAfterNs)`; so between the two it wrote the pages of its replay (this trace program,
 * `workload`, generated as its vCPU generates it) from position `from.traceWritten` after
 * `from.traceBeforeNs` to position `n + to.traceWritten`, `n` the pages of its records in
 * `[from.traceBeforeNs, to.traceBeforeNs)`.
 */
export function traceDistinctPages(
  workload: Extract<LiveWorkload, { kind: 'trace' }>,
  pages: number,
  from: readonly LiveVcpuProgress[],
  to: readonly LiveVcpuProgress[],
): number {
  const vcpus = from.length;
  const seen = new Uint8Array(pages);
  const trace = parseTrace(workload.trace); // once: each vCPU's replay below starts from it
  let distinct = 0;
  for (let v = 0; v < vcpus; v++) {
    const a = from[v] as LiveVcpuProgress;
    const b = to[v] as LiveVcpuProgress;
    const replay = createTraceWorkload({
      trace,
      pages,
      vcpus,
      loop: workload.loop ?? false,
      scale: workload.scale ?? false,
    });
    const only = new Float64Array(vcpus);
    only[v] = 1;
    let at = 0;
    let end = Number.POSITIVE_INFINITY;
    const take = (batch: WriteBatch): void => {
      if (batch.vcpu !== v) return;
      for (let i = 0; i < batch.count; i++, at++) {
        const page = batch.offsets[i] as number;
        if (at >= a.traceWritten && at < end && seen[page] === 0) {
          seen[page] = 1;
          distinct++;
        }
      }
    };
    replay.generate(0, a.traceBeforeNs, 1, () => {}, only);
    replay.generate(a.traceBeforeNs, b.traceBeforeNs, 1, take, only);
    end = at + b.traceWritten;
    replay.generate(b.traceBeforeNs, b.traceAfterNs, 1, take, only);
  }
  return distinct;
}

/** Distinct pages `writes` uniform random writes over `pages` pages are expected to touch. */
export function expectedDistinctPages(pages: number, writes: number): number {
  return pages * -Math.expm1(writes * Math.log1p(-1 / pages));
}

/**
 * Distinct pages a sweep dirties when vCPU v makes `writes[v]` writes: each vCPU's writes up to
 * its share (`floor(pages / vcpus)`, the last vCPU also the rest), as the live sweep splits RAM.
 */
export function sweepDistinctPages(pages: number, writes: readonly number[]): number {
  return writes.reduce((sum, w, v) => sum + Math.min(w, sweepShare(pages, writes.length, v).span), 0);
}

/** Boots the guest, measures once, stops the guest. */
export async function runDirtyrate(plan: DirtyratePlan): Promise<DirtyrateOutput> {
  const workload = programWorkload(plan.program, plan.memory / PAGE_SIZE);
  const source = await startLiveSource({
    memory: plan.memory,
    vcpus: plan.vcpus,
    workload,
    rate: plan.rate,
    fill: plan.fill,
    seed: plan.seed,
    ...(plan.dirtyRing === undefined ? {} : { dirtyRing: plan.dirtyRing }),
  });
  const { engine, guest, ring } = source;
  const pages = plan.memory / PAGE_SIZE;
  try {
    const meter = createDirtyRateMeter({
      clock: engine.clock,
      rng: createRng(plan.seed),
      content: liveContent(source.memory),
      pages,
      kvm: source.kvm,
    });
    // The rings are reaped as QEMU reaps them: a vCPU's when it is (nearly) full, and every ring
    // once a second (its reaper thread, running since the guest booted).
    const reaps = ring === undefined ? undefined : ringReaps(ring);
    let nextReap = engine.clock.now() + DIRTY_RING_REAPER_PERIOD_NS;
    let writesFrom: readonly number[] = [];
    let perVcpu: number[] = [];
    let writes = 0;
    let value = 1;
    // A trace's expected pages come from where each vCPU's replay stood before and after: read
    // with the vCPUs paused for a moment (progress is published at a pause).
    const snapshot = (): LiveVcpuProgress[] | undefined => {
      if (workload.kind !== 'trace') return undefined;
      engine.pause();
      try {
        return guest.progress();
      } finally {
        engine.resume();
      }
    };
    let replayed: { from: LiveVcpuProgress[]; to: LiveVcpuProgress[] } | undefined;
    const run = (untilNs: number): void => {
      const from = snapshot();
      writesFrom = guest.stats().vcpuWrites;
      // A new value every 10 ms, so a rewritten page changes its contents (page-sampling hashes
      // them); the rings are looked at as often.
      while (engine.clock.now() < untilNs) {
        guest.setValue(++value);
        engine.runGuestUntil(Math.min(untilNs, engine.clock.now() + 10e6));
        if (reaps === undefined) continue;
        reaps.whenFull();
        if (engine.clock.now() >= nextReap) {
          reaps.reap();
          nextReap += DIRTY_RING_REAPER_PERIOD_NS;
        }
      }
      const to = snapshot();
      perVcpu = guest.stats().vcpuWrites.map((w, v) => w - (writesFrom[v] ?? 0));
      writes = perVcpu.reduce((a, b) => a + b, 0);
      if (from !== undefined && to !== undefined) replayed = { from, to };
    };
    const result: DirtyRateResult = meter.calc({
      mode: plan.mode,
      calcTime: plan.calcTime,
      calcTimeUnit: plan.calcTimeUnit,
      ...(plan.samplePages === undefined ? {} : { samplePages: plan.samplePages }),
      run,
    });
    const counters = meter.lastCounters() as DirtyRateCounters;
    const seconds = counters.ms / 1000;
    const mibPerS = (n: number) => Math.round(((n * PAGE_SIZE) / MIB / seconds) * 10) / 10;
    return {
      ...result,
      dirtytrack: {
        plane: 'live',
        memory: plan.memory,
        vcpus: plan.vcpus,
        workload: plan.workload,
        rate: plan.rate,
        'guest-writes': writes,
        'guest-write-rate': mibPerS(writes),
        ...(plan.workload === 'uniform'
          ? { 'expected-dirty-rate': mibPerS(expectedDistinctPages(pages, writes)) }
          : plan.workload === 'sweep'
            ? { 'expected-dirty-rate': mibPerS(sweepDistinctPages(pages, perVcpu)) }
            : workload.kind === 'trace' && replayed !== undefined
              ? {
                  'expected-dirty-rate': mibPerS(
                    traceDistinctPages(workload, pages, replayed.from, replayed.to),
                  ),
                }
              : {}),
        counters,
      },
    };
  } finally {
    await guest.stop().catch(() => {});
  }
}

/** The text summary: the measured rate, then what the guest wrote. */
export function formatDirtyrate(r: DirtyrateOutput): string {
  const d = r.dirtytrack;
  const what =
    r.mode === 'page-sampling' ? `page-sampling, ${r['sample-pages']} sample pages per GiB` : r.mode;
  const lines = [
    `dirty-rate ${r['dirty-rate']} MB/s (${what}, calc-time ${r['calc-time']} ${r['calc-time-unit']})`,
    `guest: ${d.vcpus} vCPUs wrote ${d['guest-writes']} pages (${d['guest-write-rate']} MiB/s)` +
      (d['expected-dirty-rate'] === undefined
        ? ''
        : `; ${d.workload} writes dirty ${d.workload === 'uniform' ? '~' : ''}${d['expected-dirty-rate']} MiB/s of distinct pages`),
  ];
  if (r['vcpu-dirty-rate'] !== undefined)
    lines.push(
      `vcpu-dirty-rate ${r['vcpu-dirty-rate'].map((v) => `${v.id}: ${v['dirty-rate']}`).join(', ')} MB/s`,
    );
  return `${lines.join('\n')}\n`;
}

export function registerDirtyrate(program: Command, io: { stdout: (t: string) => void }): void {
  const dirtyrate = program
    .command('dirtyrate')
    .description(
      'Measure a live software guest’s dirty rate as QEMU’s calc-dirty-rate does (page-sampling, dirty-bitmap or dirty-ring), next to what its vCPUs really wrote.',
    )
    .addOption(
      new Option('--mode <mode>', 'calc-dirty-rate mode')
        .choices([...DIRTYRATE_MODES])
        .default('page-sampling'),
    )
    .option('--calc-time <n>', 'calc-time: how long to measure, in --calc-time-unit', '1')
    .addOption(
      new Option('--calc-time-unit <unit>', 'calc-time-unit').choices([...TIME_UNITS]).default('second'),
    )
    .option('--sample-pages <n>', 'page-sampling: sampled pages per GiB (QEMU: 128..16384, default 512)')
    .option('--memory <size>', 'guest RAM (IEC), e.g. 256M or 1G', '256M')
    .option('--vcpus <n>', 'vCPUs (worker threads)', '2')
    .addOption(
      new Option(
        '--workload <kind>',
        'which pages the vCPUs write (sweep: each vCPU its share of RAM in order, so every write dirties a new page until the share wraps; trace: replay --trace FILE)',
      )
        .choices(['uniform', 'hot-set', 'sweep', 'trace'])
        .default('uniform'),
    );
  traceAndRateOptions(dirtyrate)
    .addOption(new Option('--fill <kind>', 'initial RAM content').choices([...FILLS]).default('half'))
    .option('--seed <n>', 'seed of the RAM content, the vCPUs’ pages and the sampled pages', '1')
    .option(
      '--dirty-ring-size <entries>',
      'track through a KVM dirty ring of this many entries per vCPU (dirty-ring mode uses 4096 without it)',
    )
    .option('--json', 'print query-dirty-rate’s fields (and the guest’s) as one JSON object')
    .action(async (raw: DirtyrateRaw, cmd: Command) => {
      const plan = planDirtyrate({ ...raw, rateGiven: cmd.getOptionValueSource('rate') === 'cli' });
      const result = await runDirtyrate(plan);
      io.stdout(raw.json === true ? `${JSON.stringify(result, null, 2)}\n` : formatDirtyrate(result));
    });
}

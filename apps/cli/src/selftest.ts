import { parseSize, type MemslotInfo, type Reporter } from '@dirtytrack/core';
import { runDirtyLogTest, type DirtyLogTestResult } from '@dirtytrack/guest';
import { createMmu } from '@dirtytrack/mmu';
import { createBitmapReporter, createRingReporter, KVM_DIRTY_RING_MAX_ENTRIES } from '@dirtytrack/reporters';
import { createUffdWpTracker } from '@dirtytrack/trackers';
import { Option, type Command } from 'commander';
import { intFlag, UsageError } from './load-scenario.js';

export const SELFTEST_TRACKERS = ['wp', 'pml', 'uffd-wp-sync', 'uffd-wp-async'] as const;
export type SelftestTracker = (typeof SELFTEST_TRACKERS)[number];

/** `dirtytrack selftest dirty-log`: the kernel's dirty_log_test over a chosen pipeline. */
export interface SelftestDirtyLogOptions {
  /**
   * `wp`: the MMU write-protecting (eager split, KVM's default); `pml`: the MMU with Intel PML;
   * `uffd-wp-sync` / `uffd-wp-async`: userfaultfd write-protect (blocking faults served by the
   * owner, or WP_ASYNC read with PAGEMAP_SCAN).
   */
  readonly tracker: SelftestTracker;
  readonly reporter: 'bitmap' | 'ring';
  readonly engine: 'model' | 'live';
  readonly vcpus: number;
  /** Bytes of the test slot, before the kernel's extra 16 pages. */
  readonly memory: number;
  readonly iterations: number;
  readonly seed: number;
  /** Live engine: ms the vCPUs run per iteration. */
  readonly intervalMs: number;
  /** Bitmap only: manual protect, collected as GET + CLEAR (the kernel's clear-log mode). */
  readonly manualProtect: boolean;
  /** The MMU's debug option: no remote TLB flushes — the test must then report lost pages. */
  readonly skipTlbFlush: boolean;
  /** Called after each iteration (progress). */
  readonly onIteration?: (iteration: number) => void;
}

export type SelftestDirtyLogResult = Pick<DirtyLogTestResult, 'lost' | 'pages-checked' | 'harvests'> &
  Omit<DirtyLogTestResult, 'lost' | 'pages-checked' | 'harvests'> & {
    readonly tracker: SelftestTracker;
    readonly reporter: 'bitmap' | 'ring';
    readonly memory: number;
    readonly 'skip-tlb-flush': boolean;
    /** Tracker counters: writes that trapped, remote TLB flushes, PML-full exits. */
    readonly faults: number;
    readonly 'tlb-flushes': number;
    readonly 'pml-full-exits': number;
  };

/** The extra pages of the kernel's test slot (1 GiB + 16 pages): the slot is not a multiple of 64. */
const EXTRA_PAGES = 16;

export async function selftestDirtyLog(o: SelftestDirtyLogOptions): Promise<SelftestDirtyLogResult> {
  const live = o.engine === 'live';
  const pages = o.memory / 4096 + EXTRA_PAGES;
  const slot: MemslotInfo = { id: 0, asId: 0, baseGfn: 0, pages };
  const uffd =
    o.tracker === 'uffd-wp-sync' || o.tracker === 'uffd-wp-async'
      ? createUffdWpTracker({
          mode: o.tracker === 'uffd-wp-sync' ? 'sync' : 'async',
          shared: live,
          slots: [slot],
        })
      : undefined;
  const mmu =
    uffd === undefined
      ? createMmu({
          vcpus: o.vcpus,
          logging: 'eager-split',
          pml: o.tracker === 'pml',
          skipTlbFlush: o.skipTlbFlush,
          ...(live ? { sharedTables: Math.ceil(pages / 512) + Math.ceil(pages / 262_144) + 64 } : {}),
        })
      : undefined;
  if (mmu !== undefined) {
    mmu.setUserMemoryRegion({
      slot: 0,
      guestPhysAddr: 0,
      memorySize: pages * 4096,
      userspaceAddr: 0x7f00_0000_0000,
      backing: '2M',
    });
    mmu.populate(0); // The guest has touched its memory: 2 MiB leaves, split when logging starts.
  }
  const tracker = (mmu ?? uffd) as NonNullable<typeof mmu> | NonNullable<typeof uffd>;
  const reporter: Reporter =
    o.reporter === 'ring'
      ? createRingReporter({
          vcpus: o.vcpus,
          entries: KVM_DIRTY_RING_MAX_ENTRIES, // the kernel test's default ring size
          rearmer: tracker,
          slots: [slot],
          pml: o.tracker === 'pml',
        })
      : createBitmapReporter({
          rearmer: tracker,
          slots: [slot],
          shared: live,
          manualProtect: o.manualProtect,
        });
  const result = await runDirtyLogTest({
    engine: o.engine,
    tracker,
    reporter,
    slot,
    vcpus: o.vcpus,
    iterations: o.iterations,
    seed: o.seed,
    intervalMs: o.intervalMs,
    resolveFrom: import.meta.url,
    ...(o.onIteration === undefined ? {} : { onIteration: (i: number) => o.onIteration?.(i) }),
  });
  const stats = mmu?.stats();
  const { lost, 'pages-checked': pagesChecked, harvests, ...rest } = result;
  return {
    lost,
    'pages-checked': pagesChecked,
    harvests,
    tracker: o.tracker,
    reporter: o.reporter,
    memory: o.memory,
    'skip-tlb-flush': o.skipTlbFlush,
    ...rest,
    faults: tracker.stats().faults,
    'tlb-flushes': stats?.tlbFlushes ?? 0,
    'pml-full-exits': stats?.pmlFullExits ?? 0,
  };
}

/** One line per run, for a terminal. */
export function formatSelftest(r: SelftestDirtyLogResult): string {
  const verdict = r.passed ? 'PASS' : 'FAIL';
  const lines = [
    `dirty_log_test: ${r.mode}, tracker ${r.tracker}${r['skip-tlb-flush'] ? ' (skip TLB flush)' : ''}, ` +
      `reporter ${r.reporter}, ${r.engine} engine, ${r.vcpus} vCPUs, ${r.pages} pages, seed ${r.seed}`,
    `${r.iterations} iterations, ${r.harvests} harvests, ${r.writes} writes, ${r['pages-checked']} pages checked, ` +
      `${r['dirty-pages']} reported dirty, ${r['tracked-pages']} written after a snapshot` +
      (r.engine === 'live' ? `, ${r.ms} ms` : ''),
    `${verdict}: ${r.lost} lost, ${r['value-errors']} bad values`,
    ...r.violations.map(
      (v) => `  check ${v.check}: page ${v.page} holds ${v.value} in iteration ${v.iteration}`,
    ),
  ];
  return lines.join('\n') + '\n';
}

interface SelftestIo {
  stdout: (text: string) => void;
  stderr: (text: string) => void;
  progress: boolean;
}

interface RawOptions {
  tracker: SelftestTracker;
  reporter: 'bitmap' | 'ring';
  engine: 'model' | 'live';
  vcpus: string;
  memory: string;
  iterations: string;
  seed: string;
  interval: string;
  manualProtect?: boolean;
  skipTlbFlush?: boolean;
  json?: boolean;
}

/** Validates the flags; bad input is a one-line {@link UsageError} naming the flag. */
export function parseSelftestOptions(raw: RawOptions): Omit<SelftestDirtyLogOptions, 'onIteration'> {
  let memory: number;
  try {
    memory = parseSize(raw.memory, '--memory');
  } catch {
    throw new UsageError('--memory', `${JSON.stringify(raw.memory)} is not a size such as 64M or 1G`);
  }
  if (memory < 256 * 1024 || memory % (256 * 1024) !== 0 || memory > 64 * 2 ** 30) {
    throw new UsageError('--memory', `${raw.memory} must be a multiple of 256K (64 pages) in [256K, 64G]`);
  }
  const vcpus = intFlag('--vcpus', raw.vcpus, 1, raw.engine === 'live' ? 64 : 1024);
  const uffd = raw.tracker.startsWith('uffd-wp');
  if (raw.skipTlbFlush === true && uffd) {
    throw new UsageError('--skip-tlb-flush', 'is an MMU debug option: use it with --tracker wp or pml');
  }
  if (raw.tracker === 'uffd-wp-async' && raw.reporter === 'ring') {
    throw new UsageError(
      '--reporter',
      'ring cannot take uffd-wp-async: a PAGEMAP_SCAN does not know which vCPU wrote (use bitmap)',
    );
  }
  if (raw.manualProtect === true && raw.reporter !== 'bitmap') {
    throw new UsageError('--manual-protect', 'applies to --reporter bitmap only (the ring has no CLEAR)');
  }
  return {
    tracker: raw.tracker,
    reporter: raw.reporter,
    engine: raw.engine,
    vcpus,
    memory,
    iterations: intFlag('--iterations', raw.iterations, 1, 100_000),
    seed: intFlag('--seed', raw.seed, 0, 0xffff_ffff),
    intervalMs: intFlag('--interval', raw.interval, 1, 60_000),
    manualProtect: raw.manualProtect === true,
    skipTlbFlush: raw.skipTlbFlush === true,
  };
}

/**
 * Registers `dirtytrack selftest dirty-log`. `setCode(1)` when a page was lost or held a value
 * it cannot hold: the pipeline cannot be trusted.
 */
export function registerSelftest(program: Command, io: SelftestIo, setCode: (code: number) => void): void {
  program
    .command('selftest')
    .description('Conformance self-tests of a tracking pipeline.')
    .command('dirty-log')
    .description(
      "The kernel's dirty_log_test: vCPUs write the iteration number into random pages; every page " +
        'changed since the previous harvest must be reported. Exit 1 if a page was lost.',
    )
    .addOption(
      new Option('--tracker <kind>', 'wp (write-protect), pml, uffd-wp-sync or uffd-wp-async')
        .choices([...SELFTEST_TRACKERS])
        .default('wp'),
    )
    .addOption(
      new Option('--reporter <kind>', 'dirty bitmap or dirty ring')
        .choices(['bitmap', 'ring'])
        .default('bitmap'),
    )
    .addOption(
      new Option('--engine <engine>', 'model (batches, exact) or live (worker-thread vCPUs)')
        .choices(['model', 'live'])
        .default('model'),
    )
    .option('--vcpus <n>', 'vCPUs', '2')
    .option('--memory <size>', 'test slot size (IEC); the slot gets 16 extra pages, as the kernel test', '1G')
    .option('--iterations <n>', 'host iterations (collect + verify)', '32')
    .option('--interval <ms>', 'live engine: ms the vCPUs run per iteration', '10')
    .option('--seed <n>', 'seed of the pages each vCPU picks', '1')
    .option('--manual-protect', 'bitmap: manual protect, collected with GET + CLEAR (clear-log mode)')
    .option('--skip-tlb-flush', 'DEBUG: the MMU skips remote TLB flushes (pages must then be lost)')
    .option('--json', 'print the result as one JSON object on stdout')
    .action(async (raw: RawOptions) => {
      const options = parseSelftestOptions(raw);
      if (io.progress) io.stderr(`selftest dirty-log: ${options.iterations} iterations…\n`);
      const result = await selftestDirtyLog(options);
      if (!result.passed) setCode(1);
      io.stdout(raw.json === true ? JSON.stringify(result, null, 2) + '\n' : formatSelftest(result));
    });
}

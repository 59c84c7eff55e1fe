import { Bitmap, formatSize, PAGE_SIZE, type MemslotInfo, type SharedTracker } from '@dirtytrack/core';
import { createLiveGuest } from '@dirtytrack/guest';
import { createBitmapReporter } from '@dirtytrack/reporters';
import { createMmuTracker, createPmlTracker, createUffdWpTracker } from '@dirtytrack/trackers';
import { fourDigits, medianOf } from './bench-timing.js';

/** Trackers `dirtytrack bench trackers` runs, in the order they run in every repetition. */
export const BENCH_TRACKERS = ['off', 'wp', 'pml', 'uffd-wp-sync', 'uffd-wp-async'] as const;
export type BenchTracker = (typeof BENCH_TRACKERS)[number];

/**
 * `dirtytrack bench trackers`: guest write throughput in the live engine (worker-thread vCPUs
 * writing a `SharedArrayBuffer` through the tracker) with each tracker, side by side in one run.
 * Every repetition runs every tracker once, in turn, for the same wall-clock window on a fresh
 * guest, while the main thread harvests the dirty bitmap every `harvestMs` as a migration would
 * (`KVM_GET_DIRTY_LOG`, which re-arms what it reports), so trapping keeps happening.
 *
 * - `off`: the same MMU with dirty logging never enabled — the baseline (EPT is always on in KVM).
 * - `wp`: write-protect through the MMU (AMD, or Intel without PML): a fault per re-dirtied page.
 * - `pml`: Intel PML: no fault per page, a PML-full exit per 512 newly dirtied pages.
 * - `uffd-wp-sync`: userfaultfd write-protect as QEMU's background snapshot arms it: a write to a
 *   protected page blocks its vCPU until the owner's fault reader unprotects it (here without
 *   saving content: the cost of the round trip alone).
 * - `uffd-wp-async`: `UFFD_FEATURE_WP_ASYNC`: the kernel resolves the fault itself; harvests read
 *   the written pages with `PAGEMAP_SCAN` and re-protect them.
 */
export interface TrackersBenchOptions {
  memory: number;
  vcpus: number;
  /**
   * Unmeasured run before each window, ms, harvesting as in the window: fresh workers start in
   * V8's interpreter and reach full speed only after their loop has been optimised.
   */
  warmupMs: number;
  /** Length of each measured window, ms. */
  windowMs: number;
  harvestMs: number;
  reps: number;
  seed: number;
  onStep?: (step: string) => void;
}

export interface TrackerBenchRow {
  tracker: BenchTracker;
  /** Guest page writes per second, all vCPUs together (median). */
  'writes-per-s': number;
  /** Faults (write-protect) or exits (PML-full) per 1000 writes (median). */
  'traps-per-1000-writes': number;
  /** What the traps are. */
  'trap-kind': (typeof TRAP_KIND)[BenchTracker];
  /** Throughput with tracking off over throughput with this tracker (1 = no overhead). */
  'overhead-vs-off': number;
  /** Harvests in the window and pages they reported (median). */
  harvests: number;
  'pages-reported': number;
}

export interface TrackersBenchResult {
  memory: string;
  vcpus: number;
  'warmup-ms': number;
  'window-ms': number;
  'harvest-ms': number;
  reps: number;
  rows: TrackerBenchRow[];
}

const TRAP_KIND = {
  off: 'none',
  wp: 'write-fault',
  pml: 'pml-full-exit',
  'uffd-wp-sync': 'uffd-blocking-fault',
  'uffd-wp-async': 'uffd-async-fault',
} as const;

interface Sample {
  writesPerS: number;
  trapsPer1000: number;
  harvests: number;
  reported: number;
}

export async function benchTrackers(options: TrackersBenchOptions): Promise<TrackersBenchResult> {
  const pages = options.memory / PAGE_SIZE;
  const slot: MemslotInfo = { id: 0, asId: 0, baseGfn: 0, pages };
  const memory = new SharedArrayBuffer(options.memory);
  const samples = new Map<BenchTracker, Sample[]>(BENCH_TRACKERS.map((t) => [t, []]));
  for (let rep = 0; rep < options.reps; rep++) {
    for (const kind of BENCH_TRACKERS) {
      options.onStep?.(`rep ${rep + 1}/${options.reps}: ${kind}`);
      (samples.get(kind) as Sample[]).push(await runOnce(kind, slot, memory, options, rep));
    }
  }
  const off = medianOf((samples.get('off') as Sample[]).map((s) => s.writesPerS));
  const rows = BENCH_TRACKERS.map((tracker): TrackerBenchRow => {
    const s = samples.get(tracker) as Sample[];
    const writesPerS = medianOf(s.map((x) => x.writesPerS));
    return {
      tracker,
      'writes-per-s': Math.round(writesPerS),
      'traps-per-1000-writes': medianOf(s.map((x) => x.trapsPer1000)),
      'trap-kind': TRAP_KIND[tracker],
      'overhead-vs-off': fourDigits(off / writesPerS),
      harvests: medianOf(s.map((x) => x.harvests)),
      'pages-reported': medianOf(s.map((x) => x.reported)),
    };
  });
  return {
    memory: formatSize(options.memory),
    vcpus: options.vcpus,
    'warmup-ms': options.warmupMs,
    'window-ms': options.windowMs,
    'harvest-ms': options.harvestMs,
    reps: options.reps,
    rows,
  };
}

async function runOnce(
  kind: BenchTracker,
  slot: MemslotInfo,
  memory: SharedArrayBuffer,
  options: TrackersBenchOptions,
  rep: number,
): Promise<Sample> {
  const common = { vcpus: options.vcpus, slots: [slot], backing: '2M' as const, shared: true };
  const pml = kind === 'pml' ? createPmlTracker(common) : undefined;
  const tracker: SharedTracker =
    pml ??
    (kind === 'uffd-wp-sync' || kind === 'uffd-wp-async'
      ? createUffdWpTracker({ mode: kind === 'uffd-wp-sync' ? 'sync' : 'async', shared: true, slots: [slot] })
      : createMmuTracker(common));
  // Write-protect and uffd count faults; PML's traps are its PML-full exits.
  const trapCount = () => (pml === undefined ? tracker.stats().faults : pml.stats().pmlFullExits);
  const reporter = createBitmapReporter({ rearmer: tracker, slots: [slot], shared: true });
  tracker.attach(reporter);
  if (kind !== 'off') tracker.enableLogging(slot);
  const guest = createLiveGuest({
    memory,
    vcpus: options.vcpus,
    tracker,
    sink: reporter,
    slot: slot.id,
    pages: slot.pages,
    seed: options.seed + rep,
    resolveFrom: import.meta.url,
  });
  const log = Bitmap.create(slot.pages);
  let harvests = 0;
  let reported = 0;
  const harvestFor = async (ms: number) => {
    const end = process.hrtime.bigint() + BigInt(Math.round(ms * 1e6));
    while (process.hrtime.bigint() < end) {
      await new Promise((resolve) => setTimeout(resolve, options.harvestMs));
      guest.check();
      if (kind !== 'off') {
        reported += reporter.getDirtyLog(slot.id, log);
        harvests++;
      }
    }
  };
  await guest.start();
  try {
    await harvestFor(options.warmupMs);
    harvests = 0;
    reported = 0;
    const before = trapCount();
    const writes0 = guest.stats().writes;
    const t0 = process.hrtime.bigint();
    await harvestFor(options.windowMs);
    const elapsedS = Number(process.hrtime.bigint() - t0) / 1e9;
    const writes = guest.stats().writes - writes0;
    const traps = trapCount() - before;
    return {
      writesPerS: writes / elapsedS,
      trapsPer1000: kind === 'off' ? 0 : (1000 * traps) / Math.max(1, writes),
      harvests,
      reported,
    };
  } finally {
    await guest.stop();
  }
}

export function formatTrackersBench(r: TrackersBenchResult): string {
  return [
    `# Trackers in the live engine: ${r.vcpus} vCPUs on a ${r.memory} guest, ${r['warmup-ms']} ms warm-up then ${r['window-ms']} ms windows, a harvest every ${r['harvest-ms']} ms, medians of ${r.reps}`,
    '',
    '| tracker | writes/s | traps per 1000 writes | trap | overhead vs off | harvests | pages reported |',
    '|---|---:|---:|---|---:|---:|---:|',
    ...r.rows.map(
      (x) =>
        `| ${x.tracker} | ${x['writes-per-s']} | ${x['traps-per-1000-writes']} | ${x['trap-kind']} | ${x['overhead-vs-off']}× | ${x.harvests} | ${x['pages-reported']} |`,
    ),
    '',
  ].join('\n');
}

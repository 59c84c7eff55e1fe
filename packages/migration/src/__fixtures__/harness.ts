import {
  createRng,
  createVirtualClock,
  NS_PER_S,
  type CostModel,
  type MigrationBitmap,
  type Transport,
  type Workload,
} from '@dirtytrack/core';
import {
  createHotSetWorkload,
  createModelEngine,
  createModelMemory,
  createSweepWorkload,
  createUniformWorkload,
} from '@dirtytrack/guest';
import {
  createQemuLayers,
  createSingleHopSync,
  createSwapDirtyLog,
  type QemuLayers,
} from '@dirtytrack/qemu-layers';
import { createBitmapReporter, createRingReporter } from '@dirtytrack/reporters';
import { createWriteProtectTracker } from '@dirtytrack/trackers';
import { ringReaps } from '../ring-reaps.js';
import { runPrecopy, type PrecopyOptions } from '../precopy.js';
import { createSimLink, type SimLinkOptions } from '../sim-link.js';

export interface Setup {
  pages: number;
  populated?: number;
  vcpus?: number;
  /** Per-vCPU B/s. */
  rate?: number;
  kind?: 'sweep' | 'uniform' | 'hotset';
  workload?: (pages: number) => Workload;
  bandwidth?: number;
  latencyNs?: number;
  dropAtNs?: number;
  /** The link carries a new connection again from then on (postcopy recovery reconnects). */
  upAtNs?: number;
  /** Further link outages (a second drop during recovery). */
  outages?: SimLinkOptions['outages'];
  ring?: number;
  /**
   * With `ring`: run QEMU's dirty-ring reaper thread too (`runPrecopy`'s `dirtyRing.reap`), and
   * call this at each of its reaps with the virtual time.
   */
  onReap?: (atNs: number) => void;
  /** With `ring`: called when dirty-limit goes into service and out of it, with the virtual time. */
  onLimit?: (inService: boolean, atNs: number) => void;
  costModel?: CostModel;
  seed?: number;
  timeLimitS?: number;
  precopy?: Omit<Partial<PrecopyOptions>, 'engine' | 'bitmap' | 'link' | 'nonzero'>;
  /** Wraps the simulated link (e.g. a live-like link whose bandwidth is only an estimate). */
  wrapLink?: (link: Transport) => Transport;
  /** Switch to postcopy at this migration time; the same workload runs on the destination. */
  postcopyAtNs?: number;
  /** The sweep's (or uniform's) working set, in pages. */
  sweepRange?: { offset: number; workingSet: number };
  /** Wraps the workload (e.g. to watch the writes). */
  wrapWorkload?: (w: Workload) => Workload;
  /** Wraps the migration bitmap (e.g. to watch the sends). */
  wrapBitmap?: (m: MigrationBitmap) => MigrationBitmap;
  /**
   * The migration bitmap: the single hop over the bitmap reporter (default), or `'fused-adopt'`:
   * QEMU's layers, `'fused'`, over a swap log that keeps bmap in its third buffer, so every sync
   * after a finished round replaces `bmap` with the harvested buffer. Not with `ring`.
   */
  layers?: 'single-hop' | 'fused-adopt';
}

/** One model-plane migration: sweep/uniform/hot-set guest → write-protect → bitmap or ring → single hop. */
export function migrate(s: Setup) {
  const clock = createVirtualClock();
  const slot = { id: 0, asId: 0, baseGfn: 0, pages: s.pages };
  const vcpus = s.vcpus ?? 1;
  const tracker = createWriteProtectTracker();
  const ring =
    s.ring === undefined
      ? undefined
      : createRingReporter({ vcpus, entries: s.ring, rearmer: tracker, slots: [slot] });
  if (ring !== undefined && s.layers === 'fused-adopt') throw new Error('harness: fused-adopt takes no ring');
  const swap =
    s.layers === 'fused-adopt'
      ? createSwapDirtyLog({ rearmer: tracker, slots: [slot], migrationBuffer: true })
      : undefined;
  const reporter = ring ?? swap ?? createBitmapReporter({ rearmer: tracker, slots: [slot] });
  tracker.attach(reporter);
  const memory = createModelMemory(s.pages, s.populated ?? s.pages);
  // QEMU's reaps (ring-reaps.ts): every ring on a ring-full exit, only the vCPU's own while
  // dirty-limit is in service.
  const reaps = ring === undefined ? undefined : ringReaps(ring);
  const opts = { vcpus, pages: s.pages, bytesPerSecond: s.rate ?? 0, ...s.sweepRange };
  const rng = createRng(s.seed ?? 1);
  const made =
    s.workload?.(s.pages) ??
    (s.kind === 'uniform'
      ? createUniformWorkload({ ...opts, rng })
      : s.kind === 'hotset'
        ? createHotSetWorkload({ ...opts, rng })
        : createSweepWorkload(opts));
  const workload = s.wrapWorkload ? s.wrapWorkload(made) : made;
  const engine = createModelEngine({
    clock,
    workload,
    tracker,
    memory,
    ...(ring && reaps ? { ring: { sink: ring, onRingFull: reaps.onFull } } : {}),
  });
  const hop =
    swap === undefined
      ? createSingleHopSync({ source: reporter, logging: tracker, slot })
      : createQemuLayers({ kvm: { source: swap, logging: tracker, slot }, strategy: 'fused' });
  const bitmap = s.wrapBitmap ? s.wrapBitmap(hop) : hop;
  const link = createSimLink({
    bandwidth: s.bandwidth ?? 1e9,
    latencyNs: s.latencyNs ?? 0,
    ...(s.dropAtNs === undefined ? {} : { dropAtNs: s.dropAtNs }),
    ...(s.upAtNs === undefined ? {} : { upAtNs: s.upAtNs }),
    ...(s.outages === undefined ? {} : { outages: s.outages }),
  });
  const outcome = runPrecopy({
    engine,
    bitmap,
    link: s.wrapLink ? s.wrapLink(link) : link,
    nonzero: memory.nonzero,
    throttle: engine,
    ...(reaps === undefined || s.ring === undefined
      ? {}
      : {
          dirtyRing: {
            entries: s.ring,
            onLimit: (inService: boolean) => {
              s.onLimit?.(inService, clock.now());
              reaps.onLimit(inService);
            },
            ...(s.onReap === undefined
              ? {}
              : {
                  reap: () => {
                    s.onReap?.(clock.now());
                    reaps.reap();
                  },
                }),
          },
        }),
    ...(s.costModel ? { costModel: s.costModel } : {}),
    timeLimitNs: (s.timeLimitS ?? 600) * NS_PER_S,
    ...(s.postcopyAtNs === undefined
      ? {}
      : { startPostcopyAtNs: s.postcopyAtNs, destinationWorkload: workload }),
    ...s.precopy,
    parameters: { 'max-bandwidth': 0, ...s.precopy?.parameters },
    capabilities: {
      ...(s.postcopyAtNs === undefined ? {} : { 'postcopy-ram': true }),
      ...s.precopy?.capabilities,
    },
  });
  return {
    ...outcome,
    engine,
    clock,
    link,
    adoptions: () => (swap === undefined ? 0 : (hop as QemuLayers).stats().adoptions),
  };
}

/**
 * `w` with every page it writes reported to `wrote` (with the start of the batch's interval, ns)
 * before the write is emitted: a test records the guest's writes against the sends.
 */
export function reportingWrites(w: Workload, wrote: (page: number, fromNs: number) => void): Workload {
  return {
    kind: w.kind,
    vcpus: w.vcpus,
    generate: (from, to, speed, emit, speeds) =>
      w.generate(
        from,
        to,
        speed,
        (b) => {
          for (let i = 0; i < b.count; i++) wrote(b.offsets[i] as number, from);
          emit(b);
        },
        speeds,
      ),
  };
}

/**
 * `m` with every `clearSent` reported page by page to `sent` first (the page is being sent now):
 * a test records the order of sends against the order of the guest's writes.
 */
export function reportingSends(m: MigrationBitmap, sent: (page: number) => void): MigrationBitmap {
  return {
    get pages() {
      return m.pages;
    },
    get bmap() {
      return m.bmap;
    },
    get dirtyPages() {
      return m.dirtyPages;
    },
    setup: () => m.setup(),
    sync: () => m.sync(),
    cleanup: () => m.cleanup(),
    clearSent(word, mask) {
      for (let b = 0; b < 32; b++) if ((mask >>> b) & 1) sent(word * 32 + b);
      m.clearSent(word, mask);
    },
  };
}

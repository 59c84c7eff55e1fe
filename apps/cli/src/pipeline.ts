import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import {
  createCostModel,
  createRng,
  createVirtualClock,
  NS_PER_MS,
  NS_PER_S,
  isDirtytrackError,
  PAGE_SIZE,
  type MemslotInfo,
  type Workload,
} from '@dirtytrack/core';
import {
  createHotSetWorkload,
  createModelEngine,
  createModelMemory,
  createSweepWorkload,
  createTraceWorkload,
  createUniformWorkload,
  parseTrace,
  type Trace,
} from '@dirtytrack/guest';
import {
  createSimLink,
  ringReaps,
  runPrecopy,
  type PrecopyOutcome,
  type PrecopyProgress,
} from '@dirtytrack/migration';
import { createQemuLayers, createSingleHopSync } from '@dirtytrack/qemu-layers';
import { createBitmapReporter, createRingReporter } from '@dirtytrack/reporters';
import { createMmuTracker, createWriteProtectTracker } from '@dirtytrack/trackers';
import { UsageError } from './load-scenario.js';
import { BACKING_BYTES, type Scenario } from './scenario.js';

/** What `simulate` prints: QEMU's query-migrate fields plus what dirtytrack adds. */
export interface SimulateResult extends Record<string, unknown> {
  dirtytrack: {
    scenario: string;
    seed: number;
    'stop-reason': PrecopyOutcome['stopReason'];
    pipeline: { workload: string; tracker: string; reporter: string; layers: string };
    vcpu: { writes: number; faults: number; 'fault-time': number; 'ring-full-exits': number };
    /** Every status change (QEMU's MIGRATION events), with the time and what remained. */
    events: PrecopyOutcome['events'];
    /** Model-plane figures QEMU does not report (send CPU time, multifd packets and syncs, …). */
    migration: PrecopyOutcome['stats'];
  };
}

/**
 * Assembles the model-plane pipeline a scenario describes — workload (uniform, sweep, hot-set, trace) →
 * write-protect tracker → bitmap or ring reporter → QEMU layers → precopy (with auto-converge,
 * dirty-limit, multifd, zero-copy as the scenario's capabilities say) over a simulated link — and
 * runs it.
 */
export function simulate(scenario: Scenario, onProgress?: (p: PrecopyProgress) => void): SimulateResult {
  const pages = scenario.memory / PAGE_SIZE;
  const costModel = createCostModel(scenario['cost-model']);
  const clock = createVirtualClock();
  const rng = createRng(scenario.seed);
  const slot: MemslotInfo = { id: 0, asId: 0, baseGfn: 0, pages };
  const w = scenario.workload;
  const workloadOptions = {
    vcpus: scenario.vcpus,
    pages,
    bytesPerSecond: w.rate,
    offset: w.offset / PAGE_SIZE,
    workingSet: (w['working-set'] ?? scenario.memory - w.offset) / PAGE_SIZE,
  };
  const workload =
    w.kind === 'uniform'
      ? createUniformWorkload({ ...workloadOptions, rng })
      : w.kind === 'hotset'
        ? createHotSetWorkload({
            ...workloadOptions,
            rng,
            hotFraction: w['hot-fraction'],
            hotWriteFraction: w['hot-write-fraction'],
            hotLayout: w['hot-layout'],
          })
        : w.kind === 'trace'
          ? loadTraceWorkload(w, scenario.vcpus, pages)
          : createSweepWorkload(workloadOptions);
  advance(workload, Math.round(w['run-before'] * NS_PER_S));
  const tracker =
    scenario.tracker === 'wp'
      ? createWriteProtectTracker()
      : createMmuTracker({
          vcpus: scenario.vcpus,
          slots: [slot],
          backing: scenario.backing === '1g' ? '1G' : scenario.backing === '2m' ? '2M' : '4K',
          logging: scenario['mmu-logging'],
          pml: scenario.tracker === 'pml',
        });
  const lazy = scenario['mmu-logging'] === 'lazy';
  const ring =
    scenario.reporter === 'ring'
      ? createRingReporter({
          vcpus: scenario.vcpus,
          entries: scenario['ring-size'],
          rearmer: tracker,
          slots: [slot],
          pml: scenario.tracker === 'pml',
        })
      : undefined;
  const reporter =
    ring ??
    (scenario['manual-protect']
      ? createBitmapReporter({ rearmer: tracker, slots: [slot], manualProtect: true, initiallySet: lazy })
      : createBitmapReporter({ rearmer: tracker, slots: [slot] }));
  tracker.attach(reporter);
  const memory = createModelMemory(pages, Math.round(pages * scenario.populated));
  // The rings are reaped as QEMU's: on KVM_EXIT_DIRTY_RING_FULL the vCPU thread reaps every ring
  // (only its own while dirty-limit is in service), the reaper thread every ring once a second.
  const reaps = ring === undefined ? undefined : ringReaps(ring);
  const engine = createModelEngine({
    clock,
    workload,
    tracker,
    memory,
    costModel,
    ...(ring && reaps ? { ring: { sink: ring, onRingFull: reaps.onFull } } : {}),
  });
  const kvm = { source: reporter, logging: tracker, slot };
  const bitmap =
    scenario.layers === 'single-hop'
      ? createSingleHopSync({ ...kvm, costModel })
      : createQemuLayers({
          kvm,
          strategy: scenario.layers,
          clearBitmapShift: scenario['clear-bitmap-shift'],
          costModel,
        });
  const dropAt = scenario.link['drop-at'];
  const recoverAt = scenario.link['recover-at'];
  const recoverAtNs = recoverAt === undefined ? undefined : Math.round(recoverAt * NS_PER_S);
  // recover-at: the link carries a new connection then, and the user resumes a paused postcopy.
  const link = createSimLink({
    bandwidth: scenario.link.bandwidth,
    latencyNs: scenario.link.latency * NS_PER_MS,
    ...(dropAt === undefined ? {} : { dropAtNs: Math.round(dropAt * NS_PER_S) }),
    ...(recoverAtNs === undefined ? {} : { upAtNs: recoverAtNs }),
  });
  const m = scenario.migration;
  const outcome = runPrecopy({
    engine,
    bitmap,
    link,
    nonzero: memory.nonzero,
    parameters: m.parameters,
    capabilities: m.capabilities,
    throttle: engine,
    costModel,
    ...(reaps === undefined
      ? {}
      : { dirtyRing: { entries: scenario['ring-size'], reap: reaps.reap, onLimit: reaps.onLimit } }),
    ...(m['locked-memory'] === undefined ? {} : { lockedMemory: m['locked-memory'] }),
    ...(m['switchover-share'] === 1 ? {} : { switchoverShare: m['switchover-share'] }),
    hostPageSize: BACKING_BYTES[scenario.backing],
    ...(m['postcopy-double-map'] ? { postcopyDoubleMap: true } : {}),
    ...(m['postcopy-uffd-minor'] ? { postcopyUffdMinor: true } : {}),
    ...(m['cancel-at'] === undefined ? {} : { cancelAtNs: Math.round(m['cancel-at'] * NS_PER_S) }),
    ...(recoverAtNs === undefined ? {} : { recoverAtNs }),
    // After the switch the same guest (the same workload) runs on the destination.
    ...(m.capabilities['postcopy-ram'] ? { destinationWorkload: workload } : {}),
    ...(m['start-postcopy-at'] === undefined
      ? {}
      : { startPostcopyAtNs: Math.round(m['start-postcopy-at'] * NS_PER_S) }),
    minSetupNs: Math.round(m['setup-time'] * NS_PER_MS),
    timeLimitNs: scenario['time-limit'] * NS_PER_S,
    ...(onProgress ? { onProgress } : {}),
  });
  const vcpu = engine.stats();
  return {
    ...outcome.info,
    dirtytrack: {
      scenario: scenario.name,
      seed: scenario.seed,
      'stop-reason': outcome.stopReason,
      pipeline: {
        workload: w.kind,
        tracker: scenario.tracker,
        reporter: reporter.kind,
        layers: scenario.layers,
      },
      vcpu: {
        writes: vcpu.writes,
        faults: vcpu.faults,
        'fault-time': Math.round(vcpu.faultTimeNs / 1000) / 1000,
        'ring-full-exits': vcpu.ringFullExits,
      },
      events: outcome.events,
      migration: outcome.stats,
    },
  };
}

/**
 * Runs `workload` for `ns` before the migration starts (`workload.run-before`), in 1 ms steps as
 * the engine would, discarding its writes: dirty logging starts with the migration, so they are
 * not tracked (nor do they turn zero pages into data: `populated` says what holds data at the
 * start). Only where the workload stands moves — a trace's replay clock, a sweep's cursor, the
 * random draws — which is what makes a live run's looping trace meet the migration's syncs where
 * it does (a live guest runs while its destination starts: 150–480 ms here).
 */
function advance(workload: Workload, ns: number): void {
  const discard = (): void => {};
  for (let t = 0; t < ns; t += NS_PER_MS) workload.generate(t, Math.min(ns, t + NS_PER_MS), 1, discard);
}

/**
 * The `trace` workload: reads and parses `workload.file` (relative to the current directory when
 * the loader left it relative), checks it fits this guest, and replays it. Every failure is a
 * one-line usage error naming `workload.file` (exit 2), with the trace's byte offset when the
 * file is malformed.
 */
function loadTraceWorkload(w: Scenario['workload'], vcpus: number, pages: number): Workload {
  const { trace } = readTraceFile({
    field: 'workload.file',
    file: w.file ?? '',
    vcpus,
    pages,
    scale: w.scale === true,
    vcpusName: 'the scenario has',
    vcpusFix: 'vcpus >=',
    memoryFix: 'memory',
    scaleFix: 'workload.scale: true',
  });
  return createTraceWorkload({ trace, pages, vcpus, loop: w.loop ?? false, scale: w.scale ?? false });
}

/**
 * Reads and parses a trace file and checks it fits a guest of `vcpus` and `pages` (its vCPUs at
 * most the guest's; its size the guest's unless `scale`). Every failure is a one-line usage error
 * naming `field` (exit 2), with the trace's byte offset when the file is malformed; the `…Fix`
 * strings name what to change, in the caller's words (scenario keys or flags).
 */
export function readTraceFile(o: {
  field: string;
  file: string;
  vcpus: number;
  /** The guest's pages; undefined: not known yet (its size is checked later, {@link checkTraceSize}). */
  pages: number | undefined;
  scale: boolean;
  vcpusName: string;
  vcpusFix: string;
  memoryFix: string;
  scaleFix: string;
}): { bytes: Uint8Array; trace: Trace } {
  const { field, file, vcpus, pages } = o;
  let bytes: Uint8Array;
  try {
    bytes = readFileSync(resolve(file));
  } catch (cause) {
    throw new UsageError(
      field,
      `cannot read ${file}: ${(cause as NodeJS.ErrnoException).code ?? String(cause)}`,
    );
  }
  let trace: Trace;
  try {
    trace = parseTrace(bytes);
  } catch (error) {
    if (!isDirtytrackError(error)) throw error;
    const what = error.message.replace(/^\[dirtytrack\] \[[^\]]*\] /, '');
    throw new UsageError(field, `${file} is not a valid trace: ${what}`);
  }
  if (trace.vcpus > vcpus) {
    throw new UsageError(
      field,
      `${file} was taken on ${trace.vcpus} vCPUs, ${o.vcpusName} ${vcpus} (accepted: ${o.vcpusFix} ${trace.vcpus})`,
    );
  }
  if (pages !== undefined) checkTraceSize({ ...o, pages, tracePages: trace.pages });
  return { bytes, trace };
}

/** A trace taken on a guest of `tracePages` fits one of `pages` only when equal or `scale`d. */
export function checkTraceSize(o: {
  field: string;
  file: string;
  pages: number;
  tracePages: number;
  scale: boolean;
  vcpusName: string;
  memoryFix: string;
  scaleFix: string;
}): void {
  if (o.tracePages === o.pages || o.scale) return;
  throw new UsageError(
    o.field,
    `${o.file} was taken on a guest of ${o.tracePages} pages, ${o.vcpusName} ${o.pages} (accepted: ${o.memoryFix} ${o.tracePages * PAGE_SIZE}, or ${o.scaleFix})`,
  );
}

import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { freemem } from 'node:os';
import { resolve as resolvePath } from 'node:path';
import { createInterface } from 'node:readline';
import { setFlagsFromString } from 'node:v8';
import { Worker } from 'node:worker_threads';
import {
  createRng,
  createRWLock,
  DirtytrackError,
  formatSize,
  isDirtytrackError,
  parseSize,
  type MemslotInfo,
  type MigrationBitmap,
} from '@dirtytrack/core';
import {
  createLiveEngine,
  createLiveGuest,
  createVcpuStandby,
  parseTrace,
  type LiveGuest,
  type VcpuStandby,
  type LiveVcpuProgress,
  type LiveWorkload,
} from '@dirtytrack/guest';
import {
  createDestination,
  createRecordRam,
  fdWritesAvailable,
  GUEST_TRACE_MAX,
  GUEST_VCPUS_FROM_SOURCE_MAX,
  ramBytesOf,
  recordRamOf,
  ringReaps,
  runLiveMigration,
  SEND_FROM,
  type DestinationResult,
  type GuestTraceWire,
  type LiveMigrationOutcome,
  type PrecopyProgress,
  type SendFrom,
  type VcpuStateMessage,
} from '@dirtytrack/migration';
import {
  adviseHugePages,
  allocateGuestRam,
  createQemuLayers,
  createSwapDirtyLog,
  createWasmBitmapAllocator,
  SYNC_STRATEGIES,
  type GuestRam,
  type QemuLayersStats,
  type SyncStrategy,
} from '@dirtytrack/qemu-layers';
import { createBitmapReporter, createRingReporter, type RingReporter } from '@dirtytrack/reporters';
import { createMmuTracker } from '@dirtytrack/trackers';
import { Option, type Command } from 'commander';
import { intFlag, UsageError } from './load-scenario.js';
import { checkTraceSize, readTraceFile } from './pipeline.js';
import { cliCommand } from './cli-command.js';
import { reviveError, type ErrorDescription } from './worker-errors.js';

/** `HOST:PORT` (IPv4, a name, or `[v6]:PORT`), validated; port 0 only where `allowZero`. */
export function parseHostPort(
  flag: string,
  value: string,
  allowZero: boolean,
): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:[\]]+)):(\d{1,5})$/.exec(value);
  const port = m === null ? NaN : Number(m[3]);
  if (m === null || !(port >= (allowZero ? 0 : 1) && port <= 65535)) {
    throw new UsageError(
      flag,
      `${JSON.stringify(value)} must be HOST:PORT with a port in ${allowZero ? 0 : 1}..65535`,
    );
  }
  return { host: (m[1] ?? m[2]) as string, port };
}

/** How guest RAM starts: random bytes in every page, none, or in every other page. */
export const FILLS = ['random', 'zero', 'half'] as const;
export type Fill = (typeof FILLS)[number];

export interface LiveSourceOptions {
  memory: number;
  vcpus: number;
  workload: LiveWorkload;
  /** Writes per second per vCPU; 0 = as fast as the vCPU can. */
  rate: number;
  /**
   * An idle guest: its vCPUs boot and run, but each at vCPU speed 0 from before the first
   * timeslice, so they write nothing (the bench's idle precopy). Auto-converge's throttle
   * multiplies that 0 and cannot wake them.
   */
  idle?: boolean;
  fill: Fill;
  seed: number;
  /** Entries of each vCPU's KVM dirty ring (QEMU's `dirty-ring-size`); absent = the dirty log bitmap. */
  dirtyRing?: number;
  /** Advise transparent huge pages for guest RAM, as QEMU does (default true). */
  hugePages?: boolean;
  /** QEMU's layers' sync strategy (default `xchg`, QEMU's own). */
  layers?: SyncStrategy;
}

/**
 * A running software guest ready to migrate: RAM in a SharedArrayBuffer filled as asked, worker
 * vCPUs writing through the software MMU (write-protect tracking, as KVM's default), the bitmap
 * reporter and QEMU's three layers (`xchg`, QEMU's own sync, unless `layers` says otherwise), and
 * the live engine over it.
 */
export async function startLiveSource(o: LiveSourceOptions) {
  const { memory, hugePages } = allocateGuestRam(o.memory, { hugePages: o.hugePages !== false });
  fillMemory(memory, o.fill, o.seed);
  const { guest, bitmap, ring, kvm } = await bootGuest(memory, o);
  const engine = createLiveEngine({ guest });
  const syncs = timedSyncs(bitmap);
  return {
    memory,
    hugePages,
    guest,
    engine,
    bitmap: syncs.bitmap,
    syncTimes: syncs.times,
    layers: bitmap,
    ring,
    kvm,
  };
}

/**
 * Worker vCPUs running over `memory`: the software MMU (write-protect tracking, as KVM's
 * default), a reporter and QEMU's layers over them (what a migration syncs). The reporter is the
 * dirty ring with `dirtyRing`; otherwise the slot bitmap as each strategy's producers set it
 * (ARCHITECTURE.md §5; qemu-layers' README):
 * - `xchg`: the bitmap reporter, bits set with `Atomics.or` and harvested word by word with
 *   `Atomics.exchange` (today's KVM and QEMU);
 * - `rwlock-memcpy`: the same bitmap, its bits set under the layers' lock held for read once per
 *   batch and harvested with a plain copy under it held for write (the slides' proposal);
 * - `fused`: the swap log — producers set bits, summary and line list in the active buffer under
 *   the lock for read, and a sync swaps buffers and merges only the dirty words into `bmap`.
 */
async function bootGuest(
  memory: SharedArrayBuffer,
  o: Pick<LiveSourceOptions, 'vcpus' | 'workload' | 'rate' | 'seed' | 'dirtyRing' | 'idle' | 'layers'> & {
    /** A migrated guest's vCPU state: its vCPUs go on from it. */
    resume?: readonly LiveVcpuProgress[];
    /** vCPU workers booted ahead (a destination's), taken by this guest. */
    standby?: VcpuStandby;
  },
) {
  const pages = ramBytesOf(memory) / 4096;
  const slot: MemslotInfo = { id: 0, asId: 0, baseGfn: 0, pages };
  const strategy = o.layers ?? 'xchg';
  const tracker = createMmuTracker({ vcpus: o.vcpus, slots: [slot], shared: true });
  const ring =
    o.dirtyRing === undefined
      ? undefined
      : createRingReporter({ vcpus: o.vcpus, entries: o.dirtyRing, rearmer: tracker, slots: [slot] });
  const lock = ring === undefined && strategy !== 'xchg' ? createRWLock() : undefined;
  // The swap log's buffers and the layers' bmap in one WebAssembly memory (advised huge pages, as
  // the huge-page allocator's are), so the fused merge runs in the SIMD kernel; where the engine
  // has no WebAssembly SIMD the allocator hands out plain buffers and the JS twin merges.
  const allocator = strategy === 'fused' ? createWasmBitmapAllocator() : undefined;
  const reporter =
    ring ??
    (strategy === 'fused'
      ? createSwapDirtyLog({
          rearmer: tracker,
          slots: [slot],
          ...(lock === undefined ? {} : { lock }),
          ...(allocator === undefined ? {} : { allocator }),
          migrationBuffer: true,
        })
      : createBitmapReporter({
          rearmer: tracker,
          slots: [slot],
          shared: true,
          ...(lock === undefined ? {} : { updates: 'locked' as const, lock }),
        }));
  tracker.attach(reporter);
  const bitmap = createQemuLayers({
    kvm: { source: reporter, logging: tracker, slot },
    strategy,
    ...(lock === undefined ? {} : { lock }),
    ...(allocator === undefined ? {} : { allocator }),
  });
  const guest: LiveGuest = createLiveGuest({
    memory,
    vcpus: o.vcpus,
    tracker,
    sink: reporter,
    slot: slot.id,
    pages,
    seed: o.seed,
    workload: o.workload,
    ...(o.rate > 0 ? { rate: o.rate } : {}),
    ...(o.resume === undefined ? {} : { resume: o.resume }),
    resolveFrom: import.meta.url,
    ...(o.standby === undefined ? {} : { standby: o.standby }),
  });
  guest.setValue(1); // before start: the vCPUs store it from their first write
  // Idle: each vCPU's own speed factor 0 before start, so not even the first timeslice writes.
  if (o.idle === true) for (let v = 0; v < o.vcpus; v++) guest.setVcpuSpeed(v, 0);
  await guest.start();
  // The KVM side as other users of the dirty log see it (`dirtytrack dirtyrate`'s meter).
  return { guest, bitmap, ring, kvm: { source: reporter, logging: tracker, slot } };
}

/** Each sync of a migration bitmap: its wall-clock time and what the cost model priced it at. */
export interface SyncTimes {
  /** Wall-clock ms of each `sync()`, in order. */
  readonly ms: number[];
  /** The cost model's price of each (`SyncResult.costNs`, ms). */
  readonly costMs: number[];
}

/**
 * `bitmap` with every `sync()` timed on the real clock — the layers themselves take no clock
 * (time is injected into components). The wrapper inherits everything else from `bitmap`, so the
 * engine's per-word `clearSent` calls go straight to it.
 */
export function timedSyncs(
  bitmap: MigrationBitmap,
  now: () => bigint = process.hrtime.bigint,
): { bitmap: MigrationBitmap; times: SyncTimes } {
  const times: SyncTimes = { ms: [], costMs: [] };
  const timed = Object.create(bitmap) as MigrationBitmap & { sync: MigrationBitmap['sync'] };
  Object.defineProperty(timed, 'sync', {
    value: () => {
      const t0 = now();
      const r = bitmap.sync();
      times.ms.push(Number(now() - t0) / 1e6);
      times.costMs.push(r.costNs / 1e6);
      return r;
    },
  });
  return { bitmap: timed, times };
}

/**
 * The sync figures of a run's JSON (`dirtytrack.sync`): count, total, median and max (ms, three
 * decimals); for `fused`, given the layers' stats, how many syncs adopted the harvested buffer and
 * how many merged it in the WebAssembly kernel (the rest merged in JS).
 */
export function syncSummary(
  layers: SyncStrategy,
  t: SyncTimes,
  stats?: Pick<QemuLayersStats, 'adoptions' | 'kernelMerges'>,
) {
  const r3 = (x: number) => Math.round(x * 1000) / 1000;
  const sorted = [...t.ms].sort((a, b) => a - b);
  const n = sorted.length;
  const median =
    n === 0
      ? 0
      : n % 2 === 1
        ? (sorted[(n - 1) / 2] as number)
        : ((sorted[n / 2 - 1] as number) + (sorted[n / 2] as number)) / 2;
  return {
    layers,
    count: n,
    'total-ms': r3(t.ms.reduce((a, b) => a + b, 0)),
    'median-ms': r3(median),
    'max-ms': r3(n === 0 ? 0 : (sorted[n - 1] as number)),
    'cost-model-ms': r3(t.costMs.reduce((a, b) => a + b, 0)),
    ...(layers === 'fused' && stats !== undefined
      ? { adoptions: stats.adoptions, 'kernel-merges': stats.kernelMerges }
      : {}),
  };
}

/** `bytes` in `ns` nanoseconds as Mbit/s (decimal, as QEMU's `mbps`), rounded: bytes × 8 / (ns / 1e9) / 1e6. */
function mbitPerS(bytes: number, ns: number): number {
  return Math.round((bytes * 8000) / ns);
}

/**
 * One progress line of a live migration (precopy or postcopy), in `query-migrate`'s terms: time
 * since the start, bytes `transferred`, RAM `remaining` (dirty) of `total`, `dirty-sync-count`,
 * and the rate since the line before (`prev`), e.g. `progress at 2.0 s: transferred 32.02M,
 * remaining 32.05M of 64M, dirty-sync-count 1, 132 Mbit/s`.
 */
export function formatProgress(p: PrecopyProgress, prev?: PrecopyProgress): string {
  const line =
    `progress at ${(p.timeNs / 1e9).toFixed(1)} s: transferred ${formatSize(p.transferred)}, ` +
    `remaining ${formatSize(p.remaining)} of ${formatSize(p.total)}, dirty-sync-count ${p.syncs}`;
  if (prev === undefined || p.timeNs <= prev.timeNs) return line;
  return `${line}, ${mbitPerS(p.transferred - prev.transferred, p.timeNs - prev.timeNs)} Mbit/s`;
}

/** ` (N Mbit/s)`: the bytes transferred over the whole `total-time` (QEMU's `ram.mbps` is the last window's). */
function averageMbps(r: { 'total-time': number; ram: { transferred: number } }): string {
  return r['total-time'] > 0 ? ` (${mbitPerS(r.ram.transferred, r['total-time'] * 1e6)} Mbit/s)` : '';
}

/**
 * One progress line of `serve`: what the destination has received so far, and the rate since
 * the line before (`since`: the bytes it gave and the nanoseconds elapsed since), e.g.
 * `received 32.02M (8192 pages), 132 Mbit/s`.
 */
export function formatReceived(
  p: { bytes: number; pages: number },
  since?: { bytes: number; elapsedNs: number },
): string {
  const line = `received ${formatSize(p.bytes)} (${p.pages} pages)`;
  if (since === undefined || since.elapsedNs <= 0) return line;
  return `${line}, ${mbitPerS(p.bytes - since.bytes, since.elapsedNs)} Mbit/s`;
}

/** The live migration's `dirtyRing`: `ring`'s entries and its reaps as QEMU's (`ringReaps`). */
function liveRingReaps(ring: RingReporter) {
  const { whenFull, reap, onLimit } = ringReaps(ring);
  return { entries: ring.entries, whenFull, reap, onLimit };
}

/**
 * After a completed, verified migration the destination runs the guest on: `vcpus` worker vCPUs
 * over the received memory for `ms`. Returns the writes they made (QEMU's check 1: "the guest
 * runs").
 */
export async function runReceivedGuest(
  memory: SharedArrayBuffer,
  o: { vcpus: number; ms: number; standby?: VcpuStandby } & GuestHere,
): Promise<ResumedGuest> {
  const { guest } = await bootGuest(memory, {
    ...(o.standby === undefined ? {} : { standby: o.standby }),
    vcpus: o.vcpus,
    rate: o.rate,
    seed: o.seed,
    workload: o.workload,
    idle: o.idle,
    ...(o.resume === undefined ? {} : { resume: o.resume }),
  });
  try {
    await new Promise((resolve) => setTimeout(resolve, o.ms));
    guest.check();
  } finally {
    await guest.stop();
  }
  return {
    ms: o.ms,
    vcpus: o.vcpus,
    workload: o.kind,
    writes: guest.stats().writes,
    continued: o.resume !== undefined,
    'booted-ahead': guest.bootedAhead,
  };
}

/** What `serve` reports of the guest it ran on (`--run-after`, or after a postcopy switch). */
export interface ResumedGuest {
  ms: number;
  vcpus: number;
  /** Its program: serve's flags, or the source's (VCPU_STATE) where they were not given. */
  workload: GuestWorkloadKind;
  writes: number;
  /** Its vCPUs went on from the source's state (one entry per vCPU here). */
  continued: boolean;
  /** Its vCPUs that were booted before it arrived (standing by, as QEMU's vCPU threads); the rest booted then. */
  'booted-ahead': number;
}

/** The guest `serve` runs on, resolved from its flags and what the source sent. */
export interface GuestHere {
  kind: GuestWorkloadKind;
  workload: LiveWorkload;
  idle: boolean;
  rate: number;
  seed: number;
  resume?: readonly LiveVcpuProgress[];
}

/**
 * The guest `serve` runs on `pages` pages with `vcpus` vCPUs: the flags given win; where
 * `--workload` was not given, the source's program (`received`, from VCPU_STATE) runs, at its
 * rate unless `--rate` was given — a source's trace with the file it sent (`trace`, from
 * GUEST_TRACE) when that fits here, else this serve's own program; its seed unless `--seed` was
 * given. Its vCPUs go on from the source's state when there is one entry per vCPU.
 */
export function guestHere(
  o: {
    program: GuestProgram;
    rate: number;
    seed: number;
    given: { workload: boolean; rate: boolean; seed: boolean };
  },
  vcpus: number,
  pages: number,
  received: VcpuStateMessage | undefined,
  trace?: GuestTraceWire,
): GuestHere {
  const src = received?.program;
  // A source's trace program runs here only with its file (GUEST_TRACE), when it fits this guest.
  const srcTrace =
    src?.kind === 'trace' && trace !== undefined && traceFits(trace, vcpus, pages) ? trace : undefined;
  const fromSource =
    src !== undefined && !o.given.workload && (src.kind !== 'trace' || srcTrace !== undefined);
  const kind = fromSource ? src.kind : o.program.kind;
  const workload: LiveWorkload = !fromSource
    ? programWorkload(o.program, pages)
    : srcTrace !== undefined
      ? traceWorkload(srcTrace)
      : src.kind === 'hot-set' && src.hotPages >= 1 && src.hotPages <= pages
        ? { kind: 'hot-set', pages: src.hotPages, share: src.hotShare }
        : programWorkload({ kind: src.kind }, pages);
  const resume = received !== undefined && received.vcpus.length === vcpus ? received.vcpus : undefined;
  return {
    kind,
    workload,
    idle: kind === 'idle',
    // The source's rate goes with its program only; its seed always (a hot set is drawn from it).
    rate: fromSource && !o.given.rate ? src.rate : o.rate,
    seed: src !== undefined && !o.given.seed ? src.seed : o.seed,
    ...(resume === undefined ? {} : { resume }),
  };
}

/** A trace the source sent replays on `vcpus` vCPUs over `pages` pages (as `--trace` checks a file). */
function traceFits(t: GuestTraceWire, vcpus: number, pages: number): boolean {
  try {
    const parsed = parseTrace(t.bytes);
    return parsed.vcpus <= vcpus && (parsed.pages === pages || t.scale);
  } catch {
    return false; // a malformed trace: the guest here runs its own program
  }
}

/**
 * The vCPUs of the guest `serve` runs after a precopy (`--run-after`): `--vcpus` (or its default)
 * where `own` (`--vcpus` or `--workload` given), else the source's count from its VCPU_STATE
 * (1..64, as `--vcpus` allows), else `--vcpus`' default. After a postcopy switch the destination
 * chooses the same way (`guestVcpus`).
 */
export function vcpusHere(own: boolean, flag: number, received: VcpuStateMessage | undefined): number {
  const n = received?.vcpus.length ?? 0;
  return !own && n >= 1 && n <= GUEST_VCPUS_FROM_SOURCE_MAX ? n : flag;
}

function fillMemory(memory: SharedArrayBuffer, fill: Fill, seed: number): void {
  if (fill === 'zero') return;
  const words = new Int32Array(memory);
  // xorshift32 inline, seeded from the seed's generator: a method call per word would take
  // seconds for a few GiB.
  let x = createRng(seed).nextU32() | 1;
  const pages = memory.byteLength / 4096;
  for (let p = 0; p < pages; p += fill === 'half' ? 2 : 1) {
    for (let i = p * 1024, e = i + 1024; i < e; i++) {
      x ^= x << 13;
      x ^= x >>> 17;
      x ^= x << 5;
      words[i] = x;
    }
  }
}

/**
 * VCPU_STATE as the JSON results print it (`dirtytrack.vcpu-state` in migrate's, `vcpu-state` in
 * serve's), in the kebab-case of the fields around it: the guest's program and each vCPU's
 * Rng state, sweep cursor and trace position.
 */
export interface VcpuStateJson {
  program: {
    kind: VcpuStateMessage['program']['kind'];
    'hot-pages': number;
    'hot-share': number;
    rate: number;
    seed: number;
  };
  vcpus: {
    rng: number[];
    sweep: number;
    'trace-before-ns': number;
    'trace-after-ns': number;
    'trace-written': number;
  }[];
}

/** {@link VcpuStateJson} of a VCPU_STATE message. */
export function vcpuStateJson(m: VcpuStateMessage): VcpuStateJson {
  const p = m.program;
  return {
    program: { kind: p.kind, 'hot-pages': p.hotPages, 'hot-share': p.hotShare, rate: p.rate, seed: p.seed },
    vcpus: m.vcpus.map((v) => ({
      rng: [...v.rng],
      sweep: v.sweep,
      'trace-before-ns': v.traceBeforeNs,
      'trace-after-ns': v.traceAfterNs,
      'trace-written': v.traceWritten,
    })),
  };
}

/** What `serve --json` prints for one migration: its result, with whether its RAM is on huge pages. */
export type ServeResult = Omit<DestinationResult, 'memory' | 'guestTrace' | 'vcpu-state'> & {
  'vcpu-state'?: VcpuStateJson;
  'huge-pages'?: boolean;
  /** The guest run on here (`--run-after`, or postcopy); `continued`: from the source's vCPU state. */
  resumed?: ResumedGuest;
};

/** `dirtytrack serve`'s command line for a local destination of `memory` bytes: one migration, JSON result. */
export function localServeArgs(memory: number, hugePages = true): string[] {
  return [
    ...cliCommand(),
    'serve',
    '--listen',
    '127.0.0.1:0',
    '--memory',
    String(memory),
    '--once',
    '--json',
    ...(hugePages ? [] : ['--no-huge-pages']),
  ];
}

/**
 * Local mode's destination: `dirtytrack serve --listen 127.0.0.1:0 --once --json` as a child
 * process (its own process, as a real destination). Resolves once it listens.
 */
export async function spawnLocalDestination(
  memory: number,
  hugePages = true,
): Promise<{
  host: string;
  port: number;
  child: ChildProcess;
  result: Promise<ServeResult>;
}> {
  // A process group of its own: the terminal's Ctrl-C (sent to the foreground group) is for this
  // process, which cancels the migration and then stops the destination. Its stdin is a pipe
  // from this process, and `--parent-pipe` makes it exit when the pipe closes — when this
  // process is gone, however it went.
  const child = spawn(process.execPath, [...localServeArgs(memory, hugePages), '--parent-pipe'], {
    stdio: ['pipe', 'pipe', 'pipe'],
    detached: true,
  });
  let stderr = '';
  child.stderr?.setEncoding('utf8').on('data', (c: string) => {
    stderr += c;
  });
  const lines = createInterface({ input: child.stdout as NonNullable<typeof child.stdout> });
  let text = '';
  const listening = new Promise<{ host: string; port: number }>((resolve, reject) => {
    lines.once('line', (line) => {
      const m = /^listening on (\S+):(\d+)$/.exec(line);
      if (m) resolve({ host: m[1] as string, port: Number(m[2]) });
      else reject(new Error(`the destination said: ${line}`));
    });
    child.once('exit', (code) => reject(new Error(`the destination exited (${code}): ${stderr.trim()}`)));
  });
  const result = new Promise<ServeResult>((resolve, reject) => {
    lines.on('line', (line) => {
      text += line + '\n';
    });
    child.once('close', (code) => {
      try {
        resolve(JSON.parse(text.slice(text.indexOf('{'))) as ServeResult);
      } catch {
        reject(new Error(`the destination exited (${code}) without a result: ${stderr.trim()}`));
      }
    });
  });
  result.catch(() => {});
  const { host, port } = await listening;
  return { host, port, child, result };
}

interface MigrateRaw {
  to?: string;
  memory: string;
  vcpus: string;
  workload: GuestWorkloadKind;
  /** `--trace FILE` (with `--workload trace`). */
  trace?: string;
  traceLoop?: boolean;
  traceScale?: boolean;
  rate: string;
  /** `--rate` was given on the command line (a trace replays uncapped unless it was). */
  rateGiven?: boolean;
  fill: Fill;
  seed: string;
  multifdChannels?: string;
  maxBandwidth: string;
  downtimeLimit: string;
  autoConverge?: boolean;
  postcopyAfter?: string;
  postcopyPreempt?: boolean;
  maxPostcopyBandwidth: string;
  recoverEvery: string;
  recoverAttempts: string;
  dirtyLimit?: string;
  xVcpuDirtyLimitPeriod: string;
  dirtyRingSize?: string;
  timeLimit: string;
  linkTimeout: string;
  sendFrom: SendFrom;
  hugePages: boolean;
  /** `--layers` (commander checks the choice); absent = `xchg`. */
  layers?: SyncStrategy;
  zeroCopySend?: boolean;
  afterFailure: string;
  token?: string;
  json?: boolean;
}

export interface MigrateResult extends Omit<LiveMigrationOutcome['info'], 'trajectory'> {
  trajectory: LiveMigrationOutcome['info']['trajectory'];
  dirtytrack: {
    plane: 'live';
    memory: number;
    /** Guest RAM was advised transparent huge pages (as QEMU advises its RAM blocks). */
    'huge-pages': boolean;
    vcpus: number;
    'guest-writes': number;
    /**
     * How long the guest had run when the migration began (ms): it boots first, and runs while the
     * local destination starts. A trace's replay and a sweep's cursor were that far along — the
     * model's `workload.run-before` (s).
     */
    'guest-run-before'?: number;
    /** The vCPU state sent with the guest (before completion or the postcopy switch). */
    'vcpu-state'?: VcpuStateJson;
    /**
     * The source's migration-bitmap syncs (`dirty-sync-count` of them): the layers' strategy
     * (`--layers`), their wall-clock total, median and max, and the cost model's price of them.
     */
    sync: ReturnType<typeof syncSummary>;
    link: LiveMigrationOutcome['link'];
    /** The local destination's result (`serve --json`), with whether its RAM is on huge pages. */
    destination?: ServeResult;
    /** With `--dirty-ring-size`: the vCPUs' `KVM_EXIT_DIRTY_RING_FULL` exits. */
    'ring-full-exits'?: number;
    /**
     * With `--dirty-limit`: what the limit did to each vCPU — its dirty rate (MB/s as QEMU
     * counts them, dirtied pages / 256 per second) in each second of the migration, and how long
     * it slept throttled.
     */
    'dirty-limit'?: {
      'vcpu-dirty-limit': number;
      'x-vcpu-dirty-limit-period': number;
      samples: { time: number; 'vcpu-dirty-rate': number[] }[];
      'vcpu-throttled-ms': number[];
    };
    /**
     * Only on a failed migration: the source guest watched for `ms` after the failure — its
     * writes then and after, and whether it was still running (QEMU resumes the source VM).
     */
    'after-failure'?: {
      ms: number;
      running: boolean;
      'guest-writes-at-failure': number;
      'guest-writes': number;
    };
  };
}

/**
 * The migration failed with an error instead of an outcome — it could not start (connection
 * refused, no answer, authentication failed) or the final check could not run: one line on stderr
 * and exit code 1, not an internal error with a stack.
 */
export class MigrateFailed extends Error {
  override readonly name: string = 'MigrateFailed';
}

/**
 * Cancelled before the first page, while the guest booted or the local destination allocated its
 * RAM (seconds for a big guest): nothing was migrated, so there is no result — one line, and the
 * signal's exit code.
 */
export class MigrateCancelled extends MigrateFailed {
  override readonly name = 'MigrateCancelled';
}

/**
 * `dirtytrack migrate`'s flags, validated (every bad one a one-line {@link UsageError}): what
 * {@link runMigrate} needs, as plain data a worker thread can be handed.
 */
export interface MigratePlan {
  to?: { host: string; port: number };
  /** `--memory` as given (for the log line) and in bytes. */
  memoryText: string;
  memory: number;
  vcpus: number;
  rate: number;
  seed: number;
  channels: number;
  maxBandwidth: number;
  downtimeLimit: number;
  timeLimit: number;
  linkTimeoutMs: number;
  afterFailureMs: number;
  postcopyAfterMs?: number;
  postcopyPreempt: boolean;
  maxPostcopyBandwidth: number;
  recoverEvery: number;
  recoverAttempts: number;
  dirtyRing?: number;
  dirtyLimit?: number;
  dirtyLimitPeriod: number;
  autoConverge: boolean;
  token?: string;
  workload: LiveWorkload;
  /** The guest's program as given (the local destination runs it after the switch too). */
  program: GuestProgram;
  idle: boolean;
  fill: Fill;
  sendFrom: SendFrom;
  hugePages: boolean;
  layers: SyncStrategy;
  /** QEMU's `zero-copy-send` capability (multifd pages by reference: vmsplice + splice). */
  zeroCopySend: boolean;
}

/** Validates `dirtytrack migrate`'s flags (and reads `DIRTYTRACK_TOKEN`): nothing starts yet. */
export function planMigrate(raw: MigrateRaw, availableBytes = availableMemory()): MigratePlan {
  const to = raw.to === undefined ? undefined : parseHostPort('--to', raw.to, false);
  // Local mode holds the guest twice: here and in the destination process.
  const memory = fitsInMemory('--memory', raw.memory, to === undefined ? 2 : 1, availableBytes);
  const vcpus = intFlag('--vcpus', raw.vcpus, 1, 64);
  const rate = workloadRate(raw.workload, raw.rate, raw.rateGiven === true);
  const seed = intFlag('--seed', raw.seed, 0, 0xffff_ffff);
  const channels =
    raw.multifdChannels === undefined ? 0 : intFlag('--multifd-channels', raw.multifdChannels, 1, 64);
  const maxBandwidth = raw.maxBandwidth === '0' ? 0 : sizeFlag('--max-bandwidth', raw.maxBandwidth);
  const downtimeLimit = intFlag('--downtime-limit', raw.downtimeLimit, 0, 2_000_000);
  const timeLimit = intFlag('--time-limit', raw.timeLimit, 1, 86_400);
  const linkTimeoutMs = intFlag('--link-timeout', raw.linkTimeout, 100, 3_600_000);
  const afterFailureMs = intFlag('--after-failure', raw.afterFailure, 0, 60_000);
  const postcopyAfterMs =
    raw.postcopyAfter === undefined
      ? undefined
      : intFlag('--postcopy-after', raw.postcopyAfter, 0, 86_400_000);
  if (raw.postcopyPreempt === true && postcopyAfterMs === undefined)
    throw new UsageError(
      '--postcopy-preempt',
      'needs --postcopy-after (postcopy-preempt needs postcopy-ram)',
    );
  const maxPostcopyBandwidth =
    raw.maxPostcopyBandwidth === '0' ? 0 : sizeFlag('--max-postcopy-bandwidth', raw.maxPostcopyBandwidth);
  const recoverEvery = intFlag('--recover-every', raw.recoverEvery, 1, 3_600_000);
  const recoverAttempts = intFlag('--recover-attempts', raw.recoverAttempts, 0, 100_000);
  const dirtyRing =
    raw.dirtyRingSize === undefined ? undefined : ringSize('--dirty-ring-size', raw.dirtyRingSize);
  const dirtyLimit =
    raw.dirtyLimit === undefined ? undefined : intFlag('--dirty-limit', raw.dirtyLimit, 1, 1_000_000);
  const dirtyLimitPeriod = intFlag('--x-vcpu-dirty-limit-period', raw.xVcpuDirtyLimitPeriod, 1, 1000);
  if (dirtyLimit !== undefined && raw.autoConverge === true) {
    throw new UsageError('--dirty-limit', 'conflicts with --auto-converge (QEMU allows only one of the two)');
  }
  if (dirtyLimit !== undefined && raw.workload === 'idle') {
    // dirty-limit sets each vCPU's own speed factor: it would wake the idle vCPUs.
    throw new UsageError('--dirty-limit', 'an idle guest (--workload idle) dirties nothing to limit');
  }
  if (dirtyLimit !== undefined && dirtyRing === undefined) {
    // QEMU: "dirty limit requires KVM with accelerator property 'dirty-ring-size' set".
    throw new UsageError('--dirty-limit', 'needs the KVM dirty ring: add --dirty-ring-size (e.g. 4096)');
  }
  if (raw.zeroCopySend === true) {
    // QEMU: "Zero copy only available for non-compressed non-TLS multifd migration".
    if (channels === 0) throw new UsageError('--zero-copy-send', 'needs multifd: add --multifd-channels N');
    if (raw.sendFrom === 'staging')
      throw new UsageError('--zero-copy-send', 'sends pages from guest memory: not with --send-from staging');
    if (!fdWritesAvailable())
      throw new UsageError(
        '--zero-copy-send',
        'needs vmsplice and splice through koffi (Linux, koffi installed)',
      );
  }
  const token = raw.token ?? process.env['DIRTYTRACK_TOKEN'];
  const pages = memory / 4096;
  const program = guestProgram(raw, vcpus, pages);
  // The trace goes to the destination with the guest (GUEST_TRACE), whose size is bounded.
  if (program.trace !== undefined && program.trace.bytes.length > GUEST_TRACE_MAX)
    throw new UsageError(
      '--trace',
      `${program.trace.file} is ${program.trace.bytes.length} bytes; a migration carries a trace of at most ${GUEST_TRACE_MAX} bytes (256 MiB)`,
    );
  const workload = programWorkload(program, pages);
  return {
    ...(to === undefined ? {} : { to }),
    memoryText: raw.memory,
    memory,
    vcpus,
    rate,
    seed,
    channels,
    maxBandwidth,
    downtimeLimit,
    timeLimit,
    linkTimeoutMs,
    afterFailureMs,
    ...(postcopyAfterMs === undefined ? {} : { postcopyAfterMs }),
    postcopyPreempt: raw.postcopyPreempt === true,
    maxPostcopyBandwidth,
    recoverEvery,
    recoverAttempts,
    ...(dirtyRing === undefined ? {} : { dirtyRing }),
    ...(dirtyLimit === undefined ? {} : { dirtyLimit }),
    dirtyLimitPeriod,
    autoConverge: raw.autoConverge === true,
    ...(token === undefined ? {} : { token }),
    workload,
    program,
    idle: raw.workload === 'idle',
    fill: raw.fill,
    sendFrom: raw.sendFrom,
    hugePages: raw.hugePages,
    layers: raw.layers ?? 'xchg',
    zeroCopySend: raw.zeroCopySend === true,
  };
}

/** What {@link runMigrate} reports while it runs, and what it asks. */
export interface MigrateHooks {
  /** A progress or status line. */
  log: (line: string) => void;
  /** Each status change (`setup`, `active`, …), as it happens. */
  onStatus?: (status: string) => void;
  /** `migrate_cancel` when this returns true (polled once per round of the migration loop). */
  cancelRequested?: () => boolean;
}

/**
 * `dirtytrack migrate`: a live migration of a software guest, to `--to` or to a local destination.
 * It blocks its thread while the migration runs (the migration loop is synchronous): the command
 * runs it in a worker ({@link migrateInWorker}) so that Ctrl-C still reaches the main thread.
 */
export async function runMigrate(plan: MigratePlan, hooks: MigrateHooks): Promise<MigrateResult> {
  const { to, memory, vcpus, rate, seed, channels, maxBandwidth, downtimeLimit, timeLimit } = plan;
  const { linkTimeoutMs, afterFailureMs, postcopyAfterMs, maxPostcopyBandwidth, recoverEvery } = plan;
  const { recoverAttempts, dirtyRing, dirtyLimit, dirtyLimitPeriod, token, workload } = plan;
  const log = hooks.log;

  // Local mode: the destination starts (and preallocates its RAM) while this process fills and
  // boots its guest — the first touch of fresh RAM is slow on a VM. A whole 1G run here, four
  // alternating pairs: 3.2–3.3 s against 3.5–3.7 s one after the other (4.3 s in the first pair).
  // It runs the guest's own program after the switch (postcopy, --run-after).
  const spawning = to === undefined ? spawnLocalDestination(memory, plan.hugePages) : undefined;
  spawning?.catch(() => {});
  /** Stops the local destination once it runs, when this migration cannot go ahead. */
  const stopDestination = (): void =>
    void spawning?.then(
      (l) => l.child.kill(),
      () => {},
    );
  let source: Awaited<ReturnType<typeof startLiveSource>>;
  try {
    source = await startLiveSource({
      memory,
      vcpus,
      workload,
      rate,
      idle: plan.idle,
      fill: plan.fill,
      seed,
      ...(dirtyRing === undefined ? {} : { dirtyRing }),
      hugePages: plan.hugePages,
      layers: plan.layers,
    });
  } catch (error) {
    stopDestination();
    throw error;
  }
  let local: Awaited<NonNullable<typeof spawning>> | undefined;
  try {
    // (Checked at once, then while the destination still allocates its RAM.)
    local = await untilCancelled(spawning, hooks.cancelRequested);
  } catch (error) {
    await source.guest.stop().catch(() => {});
    stopDestination();
    if (error instanceof MigrateCancelled) throw error;
    throw new MigrateFailed(
      `the local destination did not start: ${error instanceof Error ? error.message : String(error)}`,
      { cause: error },
    );
  }
  const target = to ?? (local as NonNullable<typeof local>);
  log(
    `migrating ${plan.memoryText} (${vcpus} vCPUs) to ${target.host}:${target.port}${local ? ` (local destination process ${local.child.pid})` : ''}…`,
  );
  // Each vCPU's dirty rate per second of the migration (the migration thread calls onProgress
  // about once a second, from inside runPrecopy).
  const samples: { time: number; 'vcpu-dirty-rate': number[] }[] = [];
  let lastSample: { ns: number; dirty: number[] } | undefined;
  const sample = (ns: number) => {
    const dirty = Array.from({ length: vcpus }, (_, v) => source.guest.vcpuDirtyPages(v));
    if (lastSample !== undefined && ns > lastSample.ns) {
      const s = (ns - lastSample.ns) / 1e9;
      const prev = lastSample.dirty;
      samples.push({
        time: Math.round(ns / 1e6),
        'vcpu-dirty-rate': dirty.map((d, v) => Math.round(((d - (prev[v] as number)) / 256 / s) * 10) / 10),
      });
    }
    lastSample = { ns, dirty };
  };
  // About once a second: a progress line, and (until a postcopy switch stops the source's
  // vCPUs) the dirty-limit samples.
  let lastProgress: PrecopyProgress | undefined;
  let vcpusRunHere = true;
  const progress = (p: PrecopyProgress) => {
    if (dirtyLimit !== undefined && vcpusRunHere) sample(p.timeNs);
    log(formatProgress(p, lastProgress));
    lastProgress = p;
  };
  let outcome: LiveMigrationOutcome;
  let afterFailure: NonNullable<MigrateResult['dirtytrack']['after-failure']> | undefined;
  let completed = false;
  let cancelled = false;
  /** The vCPU state sent with the guest (VCPU_STATE), if it was. */
  let sentState: VcpuStateMessage | undefined;
  /** How long the guest had run when the migration began (ms), from its first status change. */
  let guestRunBefore: number | undefined;
  try {
    outcome = await runLiveMigration({
      host: target.host,
      port: target.port,
      ...(token === undefined ? {} : { token }),
      memory: source.memory,
      engine: source.engine,
      // The stopped guest's vCPU state goes with its RAM: the destination's guest goes on from it.
      // (Read when the guest is stopped: before completion or the postcopy switch.)
      vcpuState: () => {
        if (source.guest.running) return undefined;
        const hot = workload.kind === 'hot-set' ? workload : undefined;
        sentState = {
          program: {
            kind: plan.program.kind,
            hotPages: hot?.pages ?? 0,
            hotShare: hot?.share ?? 0,
            rate,
            seed,
          },
          vcpus: source.guest.progress(),
        };
        return sentState;
      },
      // A trace program's file goes at setup: the destination replays it after the switch.
      ...(plan.program.trace === undefined
        ? {}
        : {
            guestTrace: {
              bytes: plan.program.trace.bytes,
              loop: plan.program.trace.loop,
              scale: plan.program.trace.scale,
            },
          }),
      throttle: source.engine,
      bitmap: source.bitmap,
      parameters: {
        'max-bandwidth': maxBandwidth,
        'downtime-limit': downtimeLimit,
        'max-postcopy-bandwidth': maxPostcopyBandwidth,
        ...(channels > 0 ? { 'multifd-channels': channels } : {}),
        ...(dirtyLimit === undefined
          ? {}
          : { 'vcpu-dirty-limit': dirtyLimit, 'x-vcpu-dirty-limit-period': dirtyLimitPeriod }),
      },
      capabilities: {
        multifd: channels > 0,
        'auto-converge': plan.autoConverge,
        'postcopy-ram': postcopyAfterMs !== undefined,
        'postcopy-preempt': plan.postcopyPreempt,
        'dirty-limit': dirtyLimit !== undefined,
        'zero-copy-send': plan.zeroCopySend,
      },
      ...(postcopyAfterMs === undefined
        ? {}
        : {
            startPostcopyAtNs: postcopyAfterMs * 1e6,
            recoverAfterMs: Array.from({ length: recoverAttempts }, (_, i) => (i + 1) * recoverEvery),
          }),
      ...(source.ring === undefined ? {} : { dirtyRing: liveRingReaps(source.ring) }),
      onProgress: progress,
      timeLimitNs: timeLimit * 1e9,
      linkTimeoutMs,
      sendFrom: plan.sendFrom,
      ...(hooks.cancelRequested === undefined ? {} : { cancelRequested: hooks.cancelRequested }),
      onStatus: (e) => {
        // The engine's clock started as the guest did; the event's time counts from the migration's start.
        guestRunBefore ??= Math.round(source.engine.clock.now() / 1000) / 1000 - e.time;
        if (e.status === 'postcopy-active') vcpusRunHere = false;
        log(`status ${e.status} at ${e.time} ms`);
        hooks.onStatus?.(e.status);
      },
    }).catch((error: unknown) => {
      // Failures before the first page (connect, handshake) come back as errors, not outcomes.
      if (isDirtytrackError(error) && error.code !== 'invalid-argument') {
        throw new MigrateFailed(`migration to ${target.host}:${target.port} failed: ${error.message}`, {
          cause: error,
        });
      }
      throw error;
    });
    completed = outcome.info.status === 'completed';
    cancelled = outcome.info.status === 'cancelled';
    if (outcome.info.status === 'failed') {
      // QEMU resumes the source VM when a migration fails: show that this guest runs on.
      const atFailure = source.guest.stats().writes;
      await new Promise((resolve) => setTimeout(resolve, afterFailureMs));
      source.guest.check();
      afterFailure = {
        ms: afterFailureMs,
        running: source.guest.running,
        'guest-writes-at-failure': atFailure,
        'guest-writes': source.guest.stats().writes,
      };
    }
  } finally {
    await source.guest.stop().catch(() => {});
    if (local !== undefined && local.child.exitCode === null) {
      // A completed destination exits by itself once it has printed its result, and so does one
      // whose migration was cancelled (it sees the connection close: `failed` there, as in
      // QEMU) — given a few seconds for it; one whose migration failed may still be waiting for
      // a connection: stop it now.
      if (completed || cancelled) {
        const child = local.child;
        const timer = setTimeout(() => child.kill(), completed ? 10_000 : 3000);
        if (completed) timer.unref();
        else await new Promise((resolve) => child.once('close', resolve)).finally(() => clearTimeout(timer));
      } else local.child.kill();
    }
  }
  const guestStats = source.guest.stats();
  const guestWrites = guestStats.writes;
  const destination = local === undefined ? undefined : await local.result.catch(() => undefined);
  const { trajectory, ...info } = outcome.info;
  return {
    ...info,
    trajectory,
    dirtytrack: {
      plane: 'live',
      memory,
      'huge-pages': source.hugePages,
      vcpus,
      'guest-writes': guestWrites,
      ...(guestRunBefore === undefined
        ? {}
        : { 'guest-run-before': Math.round(guestRunBefore * 1000) / 1000 }),
      sync: syncSummary(plan.layers, source.syncTimes, source.layers.stats()),
      link: outcome.link,
      ...(sentState === undefined ? {} : { 'vcpu-state': vcpuStateJson(sentState) }),
      ...(destination === undefined ? {} : { destination }),
      ...(afterFailure === undefined ? {} : { 'after-failure': afterFailure }),
      ...(dirtyRing === undefined ? {} : { 'ring-full-exits': guestStats.ringFullExits }),
      ...(dirtyLimit === undefined
        ? {}
        : {
            'dirty-limit': {
              'vcpu-dirty-limit': dirtyLimit,
              'x-vcpu-dirty-limit-period': dirtyLimitPeriod,
              samples,
              'vcpu-throttled-ms': guestStats.vcpuThrottledMs.map((ms) => Math.round(ms)),
            },
          }),
    },
  };
}

/**
 * A local destination's tie to its `migrate` process (which starts it in a process group of its
 * own, out of the terminal's Ctrl-C): when the source is gone — exited, killed, crashed — its end
 * of stdin closes and this process exits (1) instead of listening on for a migration that will
 * never come.
 */
function watchParent(): void {
  process.stdin.on('error', () => {});
  process.stdin.once('close', () => process.exit(1));
  process.stdin.resume();
  // Reading stdin must not keep the process alive once its migration is over.
  (process.stdin as { unref?: () => void }).unref?.();
}

/**
 * `promise`, unless `cancelRequested` turns true first (polled every 50 ms, and once before):
 * then a {@link MigrateCancelled}. Without a promise, only that check.
 */
async function untilCancelled<T>(
  promise: Promise<T> | undefined,
  cancelRequested: (() => boolean) | undefined,
): Promise<T | undefined> {
  const cancelled = new MigrateCancelled('cancelled before the migration started');
  if (cancelRequested?.() === true) throw cancelled;
  if (promise === undefined || cancelRequested === undefined) return promise;
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      promise,
      new Promise<never>((_, reject) => {
        timer = setInterval(() => {
          if (cancelRequested()) reject(cancelled);
        }, 50);
      }),
    ]);
  } finally {
    clearInterval(timer);
  }
}

/** What the migrate worker (migrate-worker.ts) tells the main thread. */
export type MigrateWorkerMessage =
  | { kind: 'log'; line: string }
  | { kind: 'status'; status: string }
  | { kind: 'result'; result: MigrateResult }
  | { kind: 'error'; error: ErrorDescription };

/** The exit code of a command a signal stopped: 128 + its number, the shell's convention. */
export function signalExitCode(signal: NodeJS.Signals): number {
  return 128 + (signal === 'SIGINT' ? 2 : 15);
}

/**
 * Runs {@link runMigrate} in a worker thread, keeping this (main) thread free for signals: the
 * first SIGINT or SIGTERM sets the cancel word the migration loop polls — `migrate_cancel`:
 * `cancelling → cancelled`, the source guest runs on, the destination sees the connection close
 * — and a second one exits at once (128 + its number). A postcopy cannot be cancelled (QEMU
 * neither: the guest runs on the destination); the first signal then only says so.
 */
export async function migrateInWorker(
  plan: MigratePlan,
  log: (line: string) => void,
  notice: (line: string) => void,
  signals: { signal?: NodeJS.Signals } = {},
): Promise<MigrateResult> {
  const cancel = new Int32Array(new SharedArrayBuffer(4));
  let status = 'setup';
  const onSignal = (s: NodeJS.Signals): void => {
    if (signals.signal !== undefined) {
      notice(`${s} again: stopping at once`);
      process.exit(signalExitCode(s));
    }
    signals.signal = s;
    if (status.startsWith('postcopy')) {
      notice(
        `${s}: a postcopy cannot be cancelled (the guest runs on the destination); ${s} again stops at once`,
      );
      return;
    }
    if (status === 'completed') {
      // QEMU: a cancel after completion has no effect. What is left is the check.
      notice(`${s}: the migration has completed and is being verified; ${s} again stops at once`);
      return;
    }
    Atomics.store(cancel, 0, 1);
    notice(`${s}: cancelling the migration (${s} again stops at once)`);
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  const worker = startCliWorker('migrate-worker', { plan, cancel });
  try {
    return await new Promise<MigrateResult>((resolve, reject) => {
      worker.on('message', (m: MigrateWorkerMessage) => {
        if (m.kind === 'log') log(m.line);
        else if (m.kind === 'status') status = m.status;
        else if (m.kind === 'result') resolve(m.result);
        else reject(reviveError(m.error, { MigrateFailed, MigrateCancelled }));
      });
      worker.once('error', reject);
      worker.once('exit', (code) =>
        reject(new Error(`the migration's worker thread exited (${code}) without a result`)),
      );
    });
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    await worker.terminate();
  }
}

/**
 * Starts one of this package's worker entries: `dist/<name>.js` from the build; from the sources
 * (tests, tsx) `src/<name>.ts` through tsx, with sibling packages resolved to their src/.
 */
function startCliWorker(name: string, workerData: unknown): Worker {
  const here = import.meta.url;
  // (tsx's tsImport adds a query to the URL: look at the path.)
  if (!new URL(here).pathname.endsWith('.ts'))
    return new Worker(new URL(`./${name}.js`, here), { workerData });
  const entry = new URL(`./${name}.ts`, here);
  return new Worker(
    `import('tsx/esm/api').then((api) => { api.register(); return import(${JSON.stringify(entry.href)}); })`,
    { eval: true, workerData, execArgv: [...process.execArgv, '--conditions=@dirtytrack/source'] },
  );
}

/** What a process needs beyond guest RAM (Node, its workers, buffers): a margin, not a measurement. */
const PROCESS_HEADROOM = 256 * 2 ** 20;

/**
 * Bytes this machine can still give processes without swapping: `MemAvailable` from
 * /proc/meminfo (Linux), else `os.freemem()`.
 */
export function availableMemory(): number {
  try {
    const m = /^MemAvailable:\s+(\d+) kB$/m.exec(readFileSync('/proc/meminfo', 'utf8'));
    if (m !== null) return Number(m[1]) * 1024;
  } catch {
    // not Linux
  }
  return freemem();
}

/**
 * The guest size of `flag` (`value`), once it is known to fit `copies` times (plus a margin per
 * process) in `availableBytes`; else a one-line {@link UsageError} — before anything is
 * allocated, instead of the kernel's OOM killer ending one of the processes midway.
 */
export function fitsInMemory(flag: string, value: string, copies: 1 | 2, availableBytes: number): number {
  const memory = guestSize(flag, value);
  const need = copies * (memory + PROCESS_HEADROOM);
  if (need > availableBytes) {
    const gib = (n: number): string => `${(n / 2 ** 30).toFixed(1)} GiB`;
    throw new UsageError(
      flag,
      `${value} needs ~${gib(need)} of RAM${copies === 2 ? ' (the guest here and its copy in the local destination process)' : ''}, ` +
        `but this machine has ${gib(availableBytes)} available (MemAvailable)`,
    );
  }
  return memory;
}

/** A guest RAM size: a whole number of MiB in [1M, 16G]. */
function guestSize(flag: string, value: string): number {
  let memory: number;
  try {
    memory = parseSize(value, flag);
  } catch (error) {
    if (!(error instanceof DirtytrackError && error.errno === 'ERANGE'))
      throw new UsageError(flag, `${JSON.stringify(value)} is not a size such as 256M or 1G`);
    // Well formed but no exact count of bytes (beyond 8 PiB, or a fraction of a byte): outside
    // the range below, which is what to say.
    memory = Number.NaN;
  }
  if (!(memory >= 2 ** 20 && memory % 2 ** 20 === 0 && memory <= 16 * 2 ** 30)) {
    throw new UsageError(flag, `${value} must be a whole number of MiB in [1M, 16G]`);
  }
  return memory;
}

/**
 * Destination RAM allocated and touched up front, as QEMU's `-mem-prealloc`: on this (nested)
 * VM a first-touch page fault costs ~17 µs, so receiving into untouched memory caps a migration
 * at ~240 MB/s — the faults would be timed as the link. On huge pages 1 GiB takes ~2.6 s to
 * touch here, against ~4.7 s on 4 KiB pages.
 */
export function preallocate(bytes: number, hugePages: boolean): GuestRam {
  const ram = allocateGuestRam(bytes, { hugePages });
  touchPages(ram.memory);
  return ram;
}

/** Writes one byte of every 4 KiB page of `memory`, so that each is faulted in now. */
function touchPages(memory: SharedArrayBuffer): void {
  const m = new Uint8Array(memory);
  for (let o = 0; o < m.length; o += 4096) m[o] = 0;
}

/**
 * How long `serve` waits for its standing-by vCPU workers to boot before it listens: one hung in
 * its imports is terminated then, and a guest run here boots its own.
 */
export const STANDBY_BOOT_TIMEOUT_MS = 30_000;

/**
 * `serve`'s use of V8's optimizing compiler (TurboFan; process-wide): off while a migration only
 * sends precopy's page records into a record RAM — WebAssembly places the pages, and the little
 * JavaScript per read runs well enough unoptimized, where TurboFan compiled the decoder again and
 * again on the same two cores as the transfer (~80 ms per GiB of its threads' time in `perf`);
 * on for anything else (multifd's in-place reads, plain RAM) and before a guest runs here (its
 * vCPUs' workload needs it: ~5× slower without). Idle 1 GiB precopies with the destination
 * without TurboFan took 495–655 ms against 603–742 with it (4 alternating pairs), and with this
 * policy 379–476 against 427–542 (6 pairs, paired median 0.85); multifd-2 took longer without it
 * (504–670 against 455–532), so it keeps it.
 */
export function serveCompiler(optimize: boolean): void {
  setFlagsFromString(optimize ? '--turbofan' : '--no-turbofan');
}

/** Whether `serve` keeps TurboFan for a migration starting now (see {@link serveCompiler}). */
export function optimizeWhileReceiving(start: { memory: SharedArrayBuffer; channels: number }): boolean {
  return recordRamOf(start.memory) === undefined || start.channels > 0;
}

/**
 * A destination's guest RAM: a record RAM (@dirtytrack/migration's record-ram.ts: precopy's page
 * records are copied into it by WebAssembly) where one can be made, else plain guest RAM; advised
 * huge pages before the first touch when `hugePages`, and touched now when `touch` (see
 * {@link preallocate}). Its buffer may be longer than `bytes` (`ramBytesOf` gives the RAM).
 */
export function destinationRam(bytes: number, hugePages: boolean, touch = true): GuestRam {
  const record = createRecordRam(bytes);
  const ram =
    record === undefined
      ? allocateGuestRam(bytes, { hugePages })
      : { memory: record.memory, hugePages: hugePages && adviseHugePages(record.memory) };
  if (touch) touchPages(ram.memory);
  return ram;
}

/** `--rate` of a guest running `workload`: a trace replays at its recorded times, so it caps one only when given. */
export function workloadRate(workload: GuestWorkloadKind, text: string, given: boolean): number {
  return workload === 'trace' && !given ? 0 : intFlag('--rate', text, 0, 100_000_000);
}

/**
 * `--trace`, `--trace-loop`, `--trace-scale` and `--rate` on `command`, as `migrate` and
 * `dirtyrate` take them (a trace's `--rate` is a cap only when given: {@link workloadRate}).
 */
export function traceAndRateOptions(command: Command): Command {
  return command
    .option(
      '--trace <file>',
      'with --workload trace: a trace file (binary or text, @dirtytrack/guest’s format) each vCPU replays at its recorded times',
    )
    .option('--trace-loop', 'repeat the trace with its period (default: the guest idles once it ends)')
    .option('--trace-scale', 'map a trace taken on a guest of another size onto this one')
    .option(
      '--rate <n>',
      'page writes per second per vCPU (0 = as fast as it can; caps a trace only when given)',
      '2000',
    );
}

/** `--workload` and its trace flags, as `migrate` and `serve` take them. */
export interface WorkloadFlags {
  workload: GuestWorkloadKind;
  trace?: string;
  traceLoop?: boolean;
  traceScale?: boolean;
}

export const GUEST_WORKLOADS = ['uniform', 'hot-set', 'sweep', 'trace', 'idle'] as const;
export type GuestWorkloadKind = (typeof GUEST_WORKLOADS)[number];

/**
 * The guest's program, checked: what `migrate` runs, and what `serve` runs after the switch
 * (plain data, so a worker thread can be handed it). A trace carries its file (absolute) and bytes.
 */
export interface GuestProgram {
  kind: GuestWorkloadKind;
  trace?: { file: string; bytes: Uint8Array; pages: number; loop: boolean; scale: boolean };
}

const TRACE_WORDS = {
  field: '--trace',
  vcpusName: 'this guest has',
  vcpusFix: '--vcpus >=',
  memoryFix: '--memory',
  scaleFix: '--trace-scale',
} as const;

/**
 * `--workload` with its trace flags: the trace flags only with `--workload trace`, which needs
 * `--trace FILE`; the file is read and checked against `vcpus` (and `pages` when known) here —
 * every failure one line naming the flag. `idle` runs a uniform guest at speed 0.
 */
export function guestProgram(raw: WorkloadFlags, vcpus: number, pages?: number): GuestProgram {
  const isTrace = raw.workload === 'trace';
  for (const [flag, given] of [
    ['--trace', raw.trace !== undefined],
    ['--trace-loop', raw.traceLoop === true],
    ['--trace-scale', raw.traceScale === true],
  ] as const) {
    if (given && !isTrace) throw new UsageError(flag, 'replays a trace: add --workload trace');
  }
  if (!isTrace) return { kind: raw.workload };
  if (raw.trace === undefined) throw new UsageError('--workload', 'trace needs --trace FILE');
  const scale = raw.traceScale === true;
  const { bytes, trace } = readTraceFile({ ...TRACE_WORDS, file: raw.trace, vcpus, pages, scale });
  return {
    kind: 'trace',
    trace: { file: resolvePath(raw.trace), bytes, pages: trace.pages, loop: raw.traceLoop === true, scale },
  };
}

/**
 * The vCPUs' workload of `program` over a guest of `pages` pages: {@link liveWorkload}'s two, a
 * sweep (a page per vCPU at least: `--memory` ≥ 1M and `--vcpus` ≤ 64 always give it), or the
 * trace (its size checked against the guest's).
 */
export function programWorkload(program: GuestProgram, pages: number): LiveWorkload {
  const t = program.trace;
  if (program.kind === 'sweep') return { kind: 'sweep' };
  if (program.kind !== 'trace' || t === undefined)
    return liveWorkload(program.kind === 'hot-set' ? 'hot-set' : 'uniform', pages);
  checkTraceSize({ ...TRACE_WORDS, file: t.file, pages, tracePages: t.pages, scale: t.scale });
  return traceWorkload(t);
}

/** The vCPUs' workload replaying the trace `t` (its bytes, loop and scale; checked by the caller). */
function traceWorkload(t: { bytes: Uint8Array; loop: boolean; scale: boolean }): LiveWorkload {
  return {
    kind: 'trace',
    trace: t.bytes,
    ...(t.loop ? { loop: true } : {}),
    ...(t.scale ? { scale: true } : {}),
  };
}

/** `--workload`'s vCPU workload over `pages` pages: uniform, or a hot set of 1/16 taking 230/256 of the writes. */
export function liveWorkload(kind: 'uniform' | 'hot-set', pages: number): LiveWorkload {
  return kind === 'hot-set'
    ? { kind: 'hot-set', pages: Math.max(1, Math.floor(pages / 16)), share: 230 }
    : { kind: 'uniform' };
}

/** KVM dirty-ring entries: a power of two in [256, 65536] (KVM's bounds without PML, as the scenario's `ring-size`). */
export function ringSize(flag: string, value: string): number {
  const n = Number(value);
  if (!/^\d+$/.test(value.trim()) || !(n >= 256 && n <= 65536 && (n & (n - 1)) === 0)) {
    throw new UsageError(flag, `${JSON.stringify(value)} is not a power of two in [256, 65536]`);
  }
  return n;
}

function sizeFlag(flag: string, value: string): number {
  try {
    return parseSize(value, flag);
  } catch {
    throw new UsageError(flag, `${JSON.stringify(value)} is not a size such as 100M (bytes per second)`);
  }
}

export interface LiveIo {
  stdout: (text: string) => void;
  stderr: (text: string) => void;
  progress: boolean;
}

/** Registers `dirtytrack serve` and `dirtytrack migrate`. */
export function registerLive(program: Command, io: LiveIo, setCode: (code: number) => void): void {
  program
    .command('serve')
    .description('Run a live-migration destination: receive a guest over TCP, verify it byte for byte.')
    .requiredOption('--listen <host:port>', 'where to listen (port 0 = any free port), e.g. 127.0.0.1:4444')
    .option(
      '--token <secret>',
      'shared secret for the HMAC handshake (or DIRTYTRACK_TOKEN); required off loopback',
    )
    .option(
      '--memory <size>',
      'allocate and touch this much RAM before listening (QEMU -m with -mem-prealloc); the guest must match',
    )
    .option('--once', 'exit after one migration')
    .option(
      '--no-huge-pages',
      'back guest RAM with 4 KiB pages only (default: advise transparent huge pages, as QEMU does)',
    )
    .option(
      '--run-after <ms>',
      'after a verified migration, run the guest on for this long (worker vCPUs)',
      '0',
    )
    .option(
      '--vcpus <n>',
      'vCPUs of the guest run here (after the switch in postcopy, or with --run-after; default: the source’s, sent with its vCPU state, unless --workload is given; else 2)',
      '2',
    )
    .addOption(
      new Option(
        '--workload <kind>',
        'what the guest run here writes (default: the source’s, sent with its vCPU state; else uniform)',
      )
        .choices([...GUEST_WORKLOADS])
        .default('uniform'),
    )
    .option('--trace <file>', 'with --workload trace: the trace file the guest run here replays')
    .option('--trace-loop', 'repeat the trace with its period')
    .option('--trace-scale', 'map a trace taken on a guest of another size onto this one')
    .option(
      '--rate <n>',
      'page writes per second per vCPU of the guest run here (0 = as fast as it can; default: the source’s; caps a trace only when given)',
      '2000',
    )
    .option('--seed <n>', 'seed of its vCPUs’ pages (default: the source’s)', '1')
    .option('--json', 'print each migration’s result as one JSON object on stdout')
    .addOption(
      new Option(
        '--parent-pipe',
        'local mode’s destination (migrate starts it): exit when stdin closes',
      ).hideHelp(),
    )
    .action(
      async (
        raw: WorkloadFlags & {
          listen: string;
          token?: string;
          memory?: string;
          once?: boolean;
          runAfter: string;
          vcpus: string;
          rate: string;
          seed: string;
          hugePages: boolean;
          json?: boolean;
          parentPipe?: boolean;
        },
        cmd: Command,
      ) => {
        if (raw.parentPipe === true) watchParent();
        const { host, port } = parseHostPort('--listen', raw.listen, true);
        const runAfter = intFlag('--run-after', raw.runAfter, 0, 3_600_000);
        const runVcpus = intFlag('--vcpus', raw.vcpus, 1, 64);
        const given = {
          vcpus: cmd.getOptionValueSource('vcpus') === 'cli',
          workload: cmd.getOptionValueSource('workload') === 'cli',
          rate: cmd.getOptionValueSource('rate') === 'cli',
          seed: cmd.getOptionValueSource('seed') === 'cli',
        };
        // The guest here is the source's, vCPU count included, unless its count or its own
        // program is given (a program given here was checked against --vcpus, default 2).
        const ownVcpus = given.vcpus || given.workload;
        const runRate = workloadRate(raw.workload, raw.rate, given.rate);
        const runSeed = intFlag('--seed', raw.seed, 0, 0xffff_ffff);
        const token = raw.token ?? process.env['DIRTYTRACK_TOKEN'];
        const memoryBytes =
          raw.memory === undefined ? undefined : fitsInMemory('--memory', raw.memory, 1, availableMemory());
        // The guest run here after the switch: checked now (a trace against its size once known).
        const program = guestProgram(
          raw,
          runVcpus,
          memoryBytes === undefined ? undefined : memoryBytes / 4096,
        );
        const prealloc = memoryBytes === undefined ? undefined : destinationRam(memoryBytes, raw.hugePages);
        const memory = prealloc?.memory;
        // Whether the RAM of the (last) migration is on huge pages: known once it is allocated.
        let hugePages = prealloc?.hugePages;
        const allocate = (bytes: number): SharedArrayBuffer => {
          const ram = destinationRam(bytes, raw.hugePages, false);
          hugePages = ram.hugePages;
          return ram.memory;
        };
        let destination;
        // The vCPUs of the guest run here (from a postcopy switch, or for --run-after) exist before
        // it arrives, as QEMU's destination has its vCPU threads from the start: booted now, they
        // run the guest from the switch on, not after a boot then (~0.1 s built, ~1 s from the
        // sources). A guest takes them; the next migration gets a new standby.
        let standby: VcpuStandby | undefined;
        const standBy = (): void => {
          standby = createVcpuStandby({
            vcpus: runVcpus,
            // The modules of both guests' trackers and sinks: postcopy's faults, run-after's MMU.
            preload: ['@dirtytrack/migration', '@dirtytrack/mmu', '@dirtytrack/reporters'],
            resolveFrom: import.meta.url,
            bootTimeoutMs: STANDBY_BOOT_TIMEOUT_MS,
          });
        };
        /** The standby for a guest starting now; its workers that guest does not take end when it has started. */
        const takeStandby = (): VcpuStandby | undefined => {
          const taken = standby;
          standby = undefined;
          return taken;
        };
        // Postcopy: the guest runs here from POSTCOPY_RUN, faulting on the pages still to come.
        let postcopyGuest: LiveGuest | undefined;
        let postcopyHere: GuestHere | undefined;
        let postcopyVcpus = runVcpus;
        /**
         * One migration's end: the guest runs on for `--run-after` (postcopy: it has been running
         * here since the switch), then the result is printed. Without `--once` the destination
         * refuses the next migration until this has finished (`onResult`'s promise), so no guest
         * here runs on memory a new migration writes.
         */
        const handle = async (result: DestinationResult): Promise<void> => {
          shown = undefined; // the next migration's progress starts afresh
          const { memory: received, guestTrace: trace, 'vcpu-state': state, ...rest } = result;
          const ok = result.status === 'completed' && result.verified;
          if (!ok) setCode(1);
          let resumed: ResumedGuest | undefined;
          if (postcopyGuest !== undefined) {
            const guest = postcopyGuest;
            postcopyGuest = undefined;
            if (ok) await new Promise((resolve) => setTimeout(resolve, runAfter));
            const writes = guest.stats().writes;
            await guest.stop().catch(() => {});
            const here = postcopyHere as GuestHere;
            if (ok)
              resumed = {
                ms: runAfter,
                vcpus: postcopyVcpus,
                workload: here.kind,
                writes,
                continued: here.resume !== undefined,
                'booted-ahead': guest.bootedAhead,
              };
          } else if (ok && runAfter > 0 && received !== undefined) {
            serveCompiler(true); // the guest runs here now
            const vcpus = vcpusHere(ownVcpus, runVcpus, state);
            const taken = takeStandby();
            try {
              resumed = await runReceivedGuest(received, {
                vcpus,
                ms: runAfter,
                ...(taken === undefined ? {} : { standby: taken }),
                ...guestHere(
                  { program, rate: runRate, seed: runSeed, given },
                  vcpus,
                  ramBytesOf(received) / 4096,
                  state,
                  trace,
                ),
              });
            } finally {
              await taken?.close(); // what the guest did not take, even if it failed
            }
          }
          // A server's next migration: vCPUs standing by again.
          if (!once && standby === undefined) standBy();
          io.stdout(
            raw.json === true
              ? JSON.stringify(
                  {
                    ...rest,
                    ...(state === undefined ? {} : { 'vcpu-state': vcpuStateJson(state) }),
                    ...(hugePages === undefined ? {} : { 'huge-pages': hugePages }),
                    ...(resumed === undefined ? {} : { resumed }),
                  },
                  null,
                  2,
                ) + '\n'
              : `${result.status}${result.error === undefined ? '' : ` (${withoutPrefix(result.error.message)})`}: ` +
                  `${result.normal} pages, ${result.duplicate} zero pages, ${result['bytes-received']} bytes, verified ${result.verified}` +
                  (resumed === undefined
                    ? ''
                    : `; the guest ran on for ${resumed.ms} ms: ${resumed.writes} writes`) +
                  '\n',
          );
        };
        // About once a second while a guest arrives (stderr; with --json only on a terminal).
        const showProgress = io.progress || raw.json !== true;
        let shown: { atNs: bigint; bytes: number } | undefined;
        const onProgress = (p: { bytes: number; pages: number }): void => {
          if (!showProgress) return;
          const now = process.hrtime.bigint();
          if (shown !== undefined && now - shown.atNs < 1_000_000_000n) return;
          const since =
            shown === undefined ? undefined : { bytes: shown.bytes, elapsedNs: Number(now - shown.atNs) };
          io.stderr(formatReceived(p, since) + '\n');
          shown = { atNs: now, bytes: p.bytes };
        };
        const once = raw.once === true;
        // Without --once, results are handled as they come, one migration after another.
        let handled: Promise<void> = Promise.resolve();
        standBy();
        // Listening only once they have booted, as QEMU's destination listens only after its machine
        // (vCPU threads included) is up: a postcopy switch finds them ready however loaded the host.
        await standby?.ready;
        const late = standby?.timedOut ?? 0;
        if (late > 0)
          io.stderr(
            `serve: ${late} of ${runVcpus} vCPU workers did not boot within ${STANDBY_BOOT_TIMEOUT_MS / 1000} s; ` +
              'listening without them (a guest run here boots its own)\n',
          );
        try {
          destination = await createDestination({
            host,
            port,
            ...(token === undefined ? {} : { token }),
            ...(memory === undefined ? {} : { memory }),
            allocate,
            once,
            // Without --vcpus or --workload, the guest run here after a postcopy switch gets the
            // source's count.
            ...(ownVcpus ? { guestVcpus: runVcpus } : {}),
            onProgress,
            onMigrationStart: (start) => serveCompiler(optimizeWhileReceiving(start)),
            ...(once
              ? {}
              : {
                  onResult: (r: DestinationResult) =>
                    (handled = handled.then(() =>
                      // One migration's failed run-after must not stop the next one's report.
                      handle(r).catch((error: unknown) => {
                        setCode(1);
                        io.stderr(
                          `dirtytrack: serve: after a migration: ${error instanceof Error ? error.message : String(error)}\n`,
                        );
                      }),
                    )),
                }),
            async onPostcopyRun({ memory: ram, faults, vcpuState, guestTrace }) {
              serveCompiler(true); // the guest runs here from now on
              // The source's vCPU count (the destination sized the faults' counters for it),
              // program and vCPU state, where the flags leave them to it.
              const vcpus = faults.data.vcpus;
              const here = guestHere(
                { program, rate: runRate, seed: runSeed, given },
                vcpus,
                ramBytesOf(ram) / 4096,
                vcpuState,
                guestTrace,
              );
              postcopyHere = here;
              postcopyVcpus = vcpus;
              const taken = takeStandby();
              try {
                postcopyGuest = createLiveGuest({
                  memory: ram,
                  vcpus,
                  tracker: faults.tracker,
                  sink: faults.sink,
                  slot: 0,
                  pages: ramBytesOf(ram) / 4096,
                  seed: here.seed,
                  ...(here.rate > 0 ? { rate: here.rate } : {}),
                  workload: here.workload,
                  ...(here.resume === undefined ? {} : { resume: here.resume }),
                  resolveFrom: import.meta.url,
                  ...(taken === undefined ? {} : { standby: taken }),
                });
                postcopyGuest.setValue(2); // before start: every store is a 2
                if (here.idle) for (let v = 0; v < vcpus; v++) postcopyGuest.setVcpuSpeed(v, 0);
                await postcopyGuest.start();
              } finally {
                await taken?.close(); // what it did not take, even if it failed to start
              }
            },
          });
        } catch (error) {
          await standby?.close();
          // A bad token or an address this machine cannot listen on: one line naming the flag.
          if (error instanceof DirtytrackError && (error.field === 'token' || error.field === 'listen'))
            throw new UsageError(
              `--${error.field}`,
              error.message.replace(/^\[dirtytrack\] \[[^\]]*\] (token|listen): /, ''),
            );
          throw error;
        }
        io.stdout(`listening on ${destination.host}:${destination.port}\n`);
        if (once) {
          const result = await destination.result;
          await destination.close();
          await handle(result);
          await standby?.close();
          return;
        }
        // A server: it receives migrations one at a time until SIGINT or SIGTERM.
        await new Promise<void>((resolve) => {
          process.once('SIGINT', () => resolve());
          process.once('SIGTERM', () => resolve());
        });
        await destination.close();
        await handled;
        await postcopyGuest?.stop().catch(() => {});
        await standby?.close();
      },
    );

  const migrate = program
    .command('migrate')
    .description(
      'Live-migrate a software guest (worker-thread vCPUs writing its RAM) over TCP, verified byte for ' +
        'byte. Without --to, a destination process is started on loopback.',
    )
    .option('--to <host:port>', 'a destination started with dirtytrack serve')
    .option('--memory <size>', 'guest RAM (IEC), e.g. 256M or 1G', '256M')
    .option('--vcpus <n>', 'vCPUs (worker threads)', '2')
    .addOption(
      new Option(
        '--workload <kind>',
        'which pages the vCPUs write (sweep: each vCPU its share in order; trace: replay --trace FILE; idle: none, the vCPUs run at speed 0)',
      )
        .choices([...GUEST_WORKLOADS])
        .default('uniform'),
    );
  traceAndRateOptions(migrate)
    .addOption(new Option('--fill <kind>', 'initial RAM content').choices([...FILLS]).default('half'))
    .option('--seed <n>', 'seed of the RAM content and the vCPUs’ pages', '1')
    .option('--multifd-channels <n>', 'turn multifd on with this many TCP channels')
    .option('--max-bandwidth <bytes/s>', 'QEMU max-bandwidth (0 = unlimited)', '0')
    .option('--downtime-limit <ms>', 'QEMU downtime-limit', '300')
    .option('--auto-converge', 'throttle the vCPUs when the guest dirties faster than the link drains')
    .option(
      '--postcopy-after <ms>',
      'switch to postcopy this long after the start (migrate-start-postcopy): the guest runs on the ' +
        'destination, which requests the pages it faults on',
    )
    .option('--postcopy-preempt', 'requested pages on a connection of their own (needs --postcopy-after)')
    .option('--max-postcopy-bandwidth <bytes/s>', 'QEMU max-postcopy-bandwidth (0 = unlimited)', '0')
    .option(
      '--recover-every <ms>',
      'postcopy: after a dropped link, try migrate resume=true this often',
      '1000',
    )
    .option('--recover-attempts <n>', 'postcopy: give up (stay postcopy-paused) after this many tries', '30')
    .option(
      '--dirty-limit <MB/s>',
      'QEMU capability dirty-limit with vcpu-dirty-limit = this: once the guest dirties faster than the link drains, hold each vCPU’s dirty rate to it (needs --dirty-ring-size)',
    )
    .option(
      '--x-vcpu-dirty-limit-period <ms>',
      'QEMU x-vcpu-dirty-limit-period: how often dirty-limit measures and adjusts',
      '1000',
    )
    .addOption(
      new Option(
        '--dirty-ring-size [entries]',
        'track dirty pages with a KVM dirty ring of this many entries per vCPU (QEMU -accel kvm,dirty-ring-size; a power of two in [256, 65536]) instead of the dirty log bitmap',
      ).preset('4096'),
    )
    .addOption(
      new Option(
        '--send-from <where>',
        'where the sender writes page bytes from: a copy in a few reused staging buffers, guest memory itself (writev of each record header and page, as QEMU does; through koffi on Linux), or auto — guest memory where koffi loads, else page records staged and multifd packets from guest memory',
      )
        .choices([...SEND_FROM])
        .default('auto'),
    )
    .option(
      '--no-huge-pages',
      'back guest RAM (here and in the local destination) with 4 KiB pages only (default: advise transparent huge pages, as QEMU does)',
    )
    .addOption(
      new Option(
        '--layers <strategy>',
        'how QEMU’s bitmap layers sync: xchg (QEMU today: word-wise exchange at every hop), rwlock-memcpy (the slides: bits set under a read lock, copied under the write lock) or fused (a swap log merged into the migration bitmap by its summary); with --dirty-ring-size the ring fills the slot bitmap whatever the strategy',
      )
        .choices([...SYNC_STRATEGIES])
        .default('xchg'),
    )
    .option(
      '--zero-copy-send',
      'QEMU capability zero-copy-send (needs --multifd-channels): each channel hands its pages to the kernel by reference — vmsplice into a pipe, splice into the socket — instead of copying them (Linux, through koffi)',
    )
    .option('--time-limit <s>', 'give up after this long', '120')
    .option(
      '--link-timeout <ms>',
      'fail when the link makes no progress for this long (a cut cable)',
      '30000',
    )
    .option(
      '--after-failure <ms>',
      'on a failed migration, watch the source guest run on for this long before exiting',
      '200',
    )
    .option('--token <secret>', 'the destination’s shared secret (or DIRTYTRACK_TOKEN)')
    .option('--json', 'print the result as one JSON object on stdout (query-migrate names)')
    .action(async (raw: MigrateRaw, cmd: Command) => {
      const plan = planMigrate({ ...raw, rateGiven: cmd.getOptionValueSource('rate') === 'cli' });
      const signals: { signal?: NodeJS.Signals } = {};
      let result: MigrateResult;
      try {
        result = await migrateInWorker(
          plan,
          (line) => {
            if (io.progress || raw.json !== true) io.stderr(line + '\n');
          },
          (line) => io.stderr(`dirtytrack: ${line}\n`),
          signals,
        );
      } catch (error) {
        if (!(error instanceof MigrateFailed)) throw error;
        io.stderr(`dirtytrack: ${error.message}\n`);
        setCode(error instanceof MigrateCancelled ? signalExitCode(signals.signal ?? 'SIGINT') : 1);
        return;
      }
      const signal = signals.signal;
      // Cancelled on a signal: the shell's convention for it, 128 + its number.
      if (result.status === 'cancelled' && signal !== undefined) setCode(signalExitCode(signal));
      else if (result.status !== 'completed' || !result.verified) setCode(1);
      io.stdout(
        raw.json === true
          ? JSON.stringify(result, null, 2) + '\n'
          : `${result.status} in ${result['total-time']} ms, downtime ${result.downtime ?? '-'} ms, ` +
              `${result.ram.transferred} bytes${averageMbps(result)}, ${result.ram['dirty-sync-count']} syncs, verified ${result.verified}` +
              (result['error-desc'] ? ` (${result['error-desc']})` : '') +
              (result.dirtytrack['after-failure'] === undefined
                ? ''
                : `; the source guest ran on: ${result.dirtytrack['after-failure']['guest-writes-at-failure']} → ` +
                  `${result.dirtytrack['after-failure']['guest-writes']} writes in ${result.dirtytrack['after-failure'].ms} ms`) +
              dirtyLimitSummary(result.dirtytrack['dirty-limit']) +
              destinationSummary(result) +
              '\n',
      );
    });
}

/** `; the destination: failed (why)` when a local destination did not complete, or ''. */
function destinationSummary(result: MigrateResult): string {
  const d = result.dirtytrack.destination;
  if (d === undefined || d.status === 'completed') return '';
  return `; the destination: ${d.status}${d.error === undefined ? '' : ` (${withoutPrefix(d.error.message)})`}`;
}

/** An error message without DirtytrackError's `[dirtytrack] [component] ` prefix (for one-line summaries). */
function withoutPrefix(message: string): string {
  return message.replace(/^\[dirtytrack\] \[[^\]]*\] /, '');
}

/** `; dirty-limit 8 MB/s: vCPU dirty rates 80/79 → 9/8 MB/s` (the first and last second), or ''. */
function dirtyLimitSummary(d: MigrateResult['dirtytrack']['dirty-limit']): string {
  if (d === undefined) return '';
  const first = d.samples[0]?.['vcpu-dirty-rate'];
  const last = d.samples[d.samples.length - 1]?.['vcpu-dirty-rate'];
  return (
    `; dirty-limit ${d['vcpu-dirty-limit']} MB/s` +
    (first === undefined || last === undefined
      ? ''
      : `: vCPU dirty rates ${first.join('/')} → ${last.join('/')} MB/s`)
  );
}

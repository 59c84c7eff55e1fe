import { spawn } from 'node:child_process';
import { randomFillSync } from 'node:crypto';
import { createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { availableParallelism } from 'node:os';
import { createInterface } from 'node:readline';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { Worker } from 'node:worker_threads';
import { DirtytrackError, PAGE_SIZE } from '@dirtytrack/core';
import type { LiveGuestStats } from '@dirtytrack/guest';
import {
  createFdWriter,
  fdWritesAvailable,
  MAIN_READ_BUFFER_BYTES,
  MULTIFD_PACKET_HEADER,
  MULTIFD_PACKET_PAGES,
  PAGE_RECORD_BYTES,
  RAM_FLAG,
  runLiveMigration,
  writeRamHeader,
  type LiveMigrationOutcome,
  type SendFrom,
  type StatusEvent,
} from '@dirtytrack/migration';
import { allocateGuestRam } from '@dirtytrack/qemu-layers';
import { fourDigits, medianOf } from './bench-timing.js';
import { localServeArgs, preallocate, startLiveSource } from './live.js';
import { loopbackCeiling } from './loopback-ceiling.js';
import { liveScenario } from './live-scenario.js';
import { simulate } from './pipeline.js';
import { scenarioSchema, type ScenarioInput } from './scenario.js';

/**
 * `dirtytrack bench migrate` (issue 9's acceptance): in one run, on loopback, raw TCP throughput
 * to a child process that discards, then live migrations of a running software guest to a
 * destination child process (`dirtytrack serve`) — an idle guest by precopy and by multifd with 2
 * and 4 channels, and a guest dirtying its RAM at full speed with auto-converge — each repeated
 * `reps` times in that order (side by side in each repetition, so a noisy machine slows them
 * alike). Where koffi loads, multifd with 2 channels runs a second time with QEMU's
 * `zero-copy-send` (pages vmspliced into a pipe and spliced into the socket), right after the
 * plain one, and its ratio to it is reported per repetition. Each live run is then predicted by the model plane (the same scenario as a preset:
 * the measured loopback throughput as the link, the guest's measured write rate as a uniform
 * workload) and the prediction's error reported.
 *
 * Medians: Mbit/s (four significant digits), `total-time` and `transferred` (exact) of the idle
 * runs are per-field medians over the repetitions; the dirtying run is reported whole from the repetition with the median
 * `total-time` (its status, downtime and throttle belong together).
 */
export interface MigrateBenchOptions {
  /** Bytes of the idle guest (and of each loopback transfer). */
  memory: number;
  /** Bytes of the dirtying guest (issue 9: 512 MiB). */
  dirtyMemory: number;
  /** Worker vCPUs of every guest (issue 9: ≥ 2). */
  vcpus: number;
  reps: number;
  /** Seconds after which a live run gives up (its status stays `active`). */
  timeLimit: number;
  /** Seeds the guests' RAM and page choices, and the model. */
  seed: number;
  /** Called before each step (progress on stderr). */
  onStep?: (step: string) => void;
}

/** QEMU's `downtime-limit` (ms), the default every run keeps. */
export const BENCH_DOWNTIME_LIMIT = 300;

/**
 * QEMU's `mbps` once a migration ends (`migration_calculate_complete`): the bytes over the time
 * after setup, `bytes × 8 / (total − setup ms) / 1000` Mbit/s; 0 when no time was left after setup
 * (QEMU then keeps its last value, which a run that ended in its setup never set).
 */
export function finalMbps(bytes: number, totalMs: number, setupMs: number): number {
  const transferMs = totalMs - setupMs;
  return transferMs > 0 ? (bytes * 8) / transferMs / 1000 : 0;
}

/** The loopback transfer's write size: large writes from one pre-filled buffer. */
const CHUNK = 4 * 2 ** 20;

export type LiveCaseName =
  'precopy' | 'precopy-staging' | 'multifd-2' | 'multifd-2-zero-copy' | 'multifd-4' | 'dirtying';

/** Why `multifd-2-zero-copy` is not measured where koffi cannot load. */
export const ZERO_COPY_UNAVAILABLE = 'not measured: zero-copy-send needs vmsplice and splice through koffi';

/** One live migration, as the bench reports it (query-migrate names). */
export interface LiveRun {
  status: string;
  'total-time': number;
  /** The source's setup, ms (threads and connections starting, the first write-protect). */
  'setup-time': number;
  downtime?: number;
  transferred: number;
  /**
   * QEMU's final `mbps` (`migration_calculate_complete`): `transferred × 8 / (total-time −
   * setup-time)`, Mbit/s (decimal), four significant digits — the rate once set up, as
   * `query-migrate` reports it; for a completed run it is the live result's `ram.mbps`.
   */
  mbps: number;
  verified: boolean;
  /** Milliseconds the byte-for-byte check took after completion (outside `total-time`). */
  'verify-time'?: number;
  'dirty-sync-count': number;
  /** Auto-converge's throttle at the last sync, % (QEMU reports 0 once completed). */
  'cpu-throttle-percentage': number;
  /** Page writes per second per vCPU while let run (throttled time excluded), over the migration. */
  'guest-writes-per-s': number;
  /** Page writes per second per vCPU over the whole migration, throttling included. */
  'guest-writes-per-s-throttled': number;
  /** This process's RSS right after the run, MiB. */
  'source-rss-mib': number;
  /** The destination process's peak RSS (its maxRSS, VmHWM), MiB. */
  'destination-peak-rss-mib': number;
  /**
   * Milliseconds from the status `active` (setup done) to `completed` — or to where a run that did
   * not complete stopped: the pages' transfer, the stop-and-copy included — the window of the
   * three CPU figures below. These four are absent when the run failed in its setup, or the
   * destination exited before it could say its CPU time.
   */
  'cpu-window-ms'?: number;
  /** CPU time of this (source) process over the window, ms: every thread (migration, sender, vCPUs, V8's own). */
  'source-cpu-ms'?: number;
  /** CPU time of the destination process over the window, ms (it reports its own, asked at each end). */
  'destination-cpu-ms'?: number;
  /**
   * `(source-cpu-ms + destination-cpu-ms) / (cpu-window-ms × cores)`, four significant digits:
   * near 1, the two processes kept every core of this machine busy — the run was bound by CPU time.
   */
  'cpu-load'?: number;
  /** The source's guest RAM was advised transparent huge pages (as QEMU's RAM blocks are). */
  'huge-pages': boolean;
  /** Page bytes handed to the kernel by reference (zero-copy-send; else 0). */
  'spliced-bytes': number;
}

export interface LiveCase extends LiveRun {
  name: LiveCaseName;
  memory: number;
  vcpus: number;
  /** Multifd channels (0: the main stream only). */
  channels: number;
  /** Where the sender wrote page bytes from (`precopy-staging`: staging; others: auto). */
  'send-from': SendFrom;
  /** QEMU's `zero-copy-send` capability (`multifd-2-zero-copy` only). */
  'zero-copy-send': boolean;
  'auto-converge': boolean;
  /** The guest's vCPUs write (full speed); false: idle (speed 0, no writes). */
  dirtying: boolean;
  'downtime-limit': number;
  /** Completed within the time limit. */
  converged: boolean;
  /** Completed with `downtime` ≤ `downtime-limit` (false when it did not converge). */
  'within-downtime-limit': boolean;
  /** Every repetition, in order. */
  runs: LiveRun[];
  /** Each repetition's Mbit/s over the loopback measured just before it (four significant digits). */
  'vs-loopback-runs': number[];
  /** Their median: the side-by-side ratio, robust to one repetition's loopback outlier. */
  'vs-loopback-paired': number;
}

/** A model-plane run of a live case's scenario, and its error against the live run. */
export interface ModelRun {
  status: string;
  'total-time': number;
  downtime?: number;
  transferred: number;
  'dirty-sync-count': number;
  /** `(model − live) / live`, %, one decimal. */
  'total-time-error-pct': number;
  'transferred-error-pct': number;
  /** The same for downtime, where both runs completed (absent otherwise). */
  'downtime-error-pct'?: number;
}

/** The model plane's prediction of one live case. */
export interface ModelPrediction extends ModelRun {
  case: LiveCaseName;
  /** The preset-like scenario simulated (`dirtytrack simulate --scenario` accepts it as JSON). */
  scenario: ScenarioInput;
  /**
   * The same scenario over a link of the live run's own average rate once set up (`transferred`
   * over `total-time` less `setup-time`) instead of raw loopback: separates the model's error
   * about the link from its error about the algorithm.
   */
  'at-live-rate': ModelRun & { 'link-mbps': number };
}

export interface MigrateBenchResult {
  bench: 'migrate';
  node: string;
  reps: number;
  memory: number;
  'dirty-memory': number;
  vcpus: number;
  'time-limit': number;
  /** Raw TCP to a discarding child process, Mbit/s, median. */
  'loopback-mbps': number;
  'loopback-runs': number[];
  /**
   * The same raw TCP to the same discarding process, written from `memory` bytes of guest RAM
   * (huge pages, filled with random bytes, as the runs' RAM) instead of one hot 4 MiB buffer: the
   * sender's copy reads cold memory, as a migration's does, and nothing else differs. Mbit/s,
   * median.
   */
  'loopback-cold-mbps': number;
  'loopback-cold-runs': number[];
  /** `precopy-mbps / loopback-cold-mbps`: precopy against raw TCP out of the same kind of memory. */
  'precopy-vs-loopback-cold': number;
  /**
   * The ceiling of a migration over one connection here: `memory` bytes of guest RAM (huge pages,
   * as the runs' RAM) written whole into the socket and read in place into another guest RAM — TCP
   * between two memories, no user-space copy and no records. Mbit/s, median.
   */
  'loopback-memory-mbps': number;
  'loopback-memory-runs': number[];
  /** `precopy-mbps / loopback-memory-mbps`: how much of that ceiling precopy reaches. */
  'precopy-vs-loopback-memory': number;
  /**
   * Precopy's own stream with nothing else: the same `memory` bytes as QEMU's page records (each
   * 4 KiB page after its 8-byte header, as precopy sends them) written from prebuilt buffers, and
   * a worker thread that reads them through `onread` into one reused buffer and copies each page
   * to its offset in a guest RAM, as the destination does. The ceiling of a destination that
   * reads this way, not of the format: the C ends of `c-records-mbps` make the same copy. Mbit/s
   * of page bytes, median.
   */
  'loopback-records-mbps': number;
  'loopback-records-runs': number[];
  /** `precopy-mbps / loopback-records-mbps`: how much of its format's ceiling precopy reaches. */
  'precopy-vs-loopback-records': number;
  /**
   * The ceiling of multifd with zero-copy-send here: the same `memory` bytes of guest RAM as
   * multifd packets (a `MULTIFD_PACKET_HEADER`-byte header, then `MULTIFD_PACKET_PAGES` pages)
   * handed to the kernel by reference through the sender's own writer (`vmsplice` into a pipe,
   * `splice` into the socket), and read by a worker thread in place — headers into a scratch
   * buffer, pages straight into a second guest RAM: the receiver's copy is the only one. Mbit/s of
   * page bytes, median; {@link ZERO_COPY_UNAVAILABLE} where koffi cannot load.
   */
  'loopback-zero-copy-mbps': number | string;
  'loopback-zero-copy-runs'?: number[];
  /** `multifd-2-zero-copy-mbps / loopback-zero-copy-mbps`: how much of its data path's ceiling it reaches. */
  'multifd-2-zero-copy-vs-loopback-zero-copy'?: number;
  /**
   * The same machine's ceiling without any of this project's code: raw TCP written in C (4 MiB
   * writes from one buffer to a discarding process, the C twin of `loopback-mbps`), measured
   * beside the rest in every repetition where `cc` builds it (loopback-ceiling.ts). Mbit/s,
   * median; where not measured, why: `C_CEILING_UNAVAILABLE` where no `cc` runs, or the
   * compiler's complaint where it could not build the program.
   */
  'c-loopback-mbps': number | string;
  'c-loopback-runs'?: number[];
  /**
   * Precopy's stream written in C: `memory` bytes of guest RAM as page records, 512 per `writev`
   * straight from the RAM, read into a 4 MiB buffer and each page copied to its offset in another
   * RAM, every page then compared — what this machine's kernel allows precopy's format and copy
   * when the two ends cost nothing else. Mbit/s of page bytes, median.
   */
  'c-records-mbps'?: number;
  'c-records-runs'?: number[];
  /** `c-records-mbps / loopback-mbps`: how close to raw TCP an ideal precopy gets here. */
  'c-records-vs-loopback'?: number;
  /** `precopy-mbps / c-records-mbps`: how much of the C ends' throughput precopy reaches. */
  'precopy-vs-c-records'?: number;
  /** Every run's guest RAM was advised transparent huge pages (source and destination, as QEMU does). */
  'huge-pages': boolean;
  'precopy-mbps': number;
  /** `precopy-mbps / loopback-mbps`, four significant digits (issue 9's goal: ≥ 0.8). */
  'precopy-vs-loopback': number;
  /** The median over repetitions of precopy over its own repetition's loopback. */
  'precopy-vs-loopback-paired': number;
  /**
   * The same precopy with every page record copied into staging buffers first (`sendFrom:
   * 'staging'`, the path `auto` takes where koffi cannot load), beside `precopy`'s records written
   * from guest memory through `writev`.
   */
  'precopy-staging-mbps': number;
  'precopy-staging-vs-loopback': number;
  'multifd-2-mbps': number;
  'multifd-2-vs-loopback': number;
  'multifd-4-mbps': number;
  'multifd-4-vs-loopback': number;
  /** `multifd-2-zero-copy`'s Mbit/s, or {@link ZERO_COPY_UNAVAILABLE}. */
  'multifd-2-zero-copy-mbps': number | string;
  /**
   * Each repetition's zero-copy run over the plain `multifd-2` run just before it, and their
   * median (the side-by-side answer to "does zero-copy-send pay here"); absent where not measured.
   */
  'zero-copy-vs-multifd-2-runs'?: number[];
  'zero-copy-vs-multifd-2'?: number;
  cases: LiveCase[];
  model: ModelPrediction[];
  /** The loopback receiver's peak RSS, MiB. */
  'receiver-peak-rss-mib': number;
  /** This process's peak RSS over the whole bench, MiB. */
  'peak-rss-mib': number;
  /** Cores this machine offers (`os.availableParallelism()`): the `cpu-load` of each case is over them. */
  cores: number;
}

export async function benchMigrate(o: MigrateBenchOptions): Promise<MigrateBenchResult> {
  const step = o.onStep ?? (() => {});
  const zeroCopy = fdWritesAvailable();
  const specs: {
    name: LiveCaseName;
    channels: number;
    dirtying: boolean;
    sendFrom?: SendFrom;
    zeroCopySend?: boolean;
  }[] = [
    { name: 'precopy', channels: 0, dirtying: false },
    { name: 'precopy-staging', channels: 0, dirtying: false, sendFrom: 'staging' },
    { name: 'multifd-2', channels: 2, dirtying: false },
    ...(zeroCopy
      ? [{ name: 'multifd-2-zero-copy' as const, channels: 2, dirtying: false, zeroCopySend: true }]
      : []),
    { name: 'multifd-4', channels: 4, dirtying: false },
    { name: 'dirtying', channels: 0, dirtying: true },
  ];
  const loopback: number[] = [];
  const loopbackCold: number[] = [];
  const loopbackMemory: number[] = [];
  const loopbackRecords: number[] = [];
  const loopbackZeroCopy: number[] = [];
  const cLoopback: number[] = [];
  const cRecords: number[] = [];
  let receiverKiB = 0;
  const runs = new Map<LiveCaseName, LiveRun[]>(specs.map((s) => [s.name, []]));
  step('C ceiling: building it with cc');
  const built = await loopbackCeiling(RAM_FLAG.PAGE | RAM_FLAG.CONTINUE);
  const ceiling = typeof built === 'string' ? undefined : built;
  if (typeof built === 'string') step(`C ceiling: ${built}`);
  const receiver = await spawnReceiver();
  try {
    for (let rep = 0; rep < o.reps; rep++) {
      const of = `${rep + 1}/${o.reps}`;
      step(`loopback: ${o.memory} bytes of raw TCP to a discarding child process (${of})`);
      const l = await receiver.transfer(o.memory);
      loopback.push(l.mbps);
      receiverKiB = Math.max(receiverKiB, l.peakKiB);
      step(`loopback from guest RAM: the same, written from ${o.memory} bytes of cold guest RAM (${of})`);
      // The same guest RAM is then the sending side between memories: one RAM less at the peak.
      let cold: Uint8Array | undefined = filledGuestRam(o.memory);
      loopbackCold.push((await receiver.transfer(o.memory, cold)).mbps);
      step(
        `loopback between memories: ${o.memory} bytes of guest RAM into guest RAM over one connection (${of})`,
      );
      loopbackMemory.push(await memoryToMemory(cold));
      // An async function's locals live across its awaits: held, the RAM would stay to the end of
      // the repetition (measured: 1 GiB more through every later step, 3.2 GiB at the peak).
      cold = undefined;
      collectGarbage();
      step(
        `loopback in page records: ${o.memory} bytes as QEMU's page records, each page copied into guest RAM (${of})`,
      );
      loopbackRecords.push(await recordsToMemory(o.memory));
      collectGarbage();
      if (zeroCopy) {
        step(
          `loopback zero-copy: ${o.memory} bytes of guest RAM spliced in multifd packets, read in place (${of})`,
        );
        loopbackZeroCopy.push(await zeroCopyToMemory(o.memory));
        collectGarbage();
      }
      if (ceiling !== undefined) {
        step(
          `C ceiling: ${o.memory} bytes of raw TCP, then as page records into guest RAM, two C processes (${of})`,
        );
        cLoopback.push(fourDigits((await ceiling.run('raw', o.memory)).mbps));
        cRecords.push(fourDigits((await ceiling.run('records', o.memory)).mbps));
      }
      for (const s of specs) {
        const memory = s.dirtying ? o.dirtyMemory : o.memory;
        step(
          `${s.name}: ${s.dirtying ? 'dirtying' : 'idle'} ${memory / 2 ** 20} MiB guest, ${o.vcpus} vCPUs` +
            `${s.channels > 0 ? `, ${s.channels} multifd channels` : ''}${s.zeroCopySend === true ? ', zero-copy-send' : ''}` +
            `${s.dirtying ? ', auto-converge' : ''} (${of})`,
        );
        const r = await liveRun({ ...s, memory, vcpus: o.vcpus, timeLimit: o.timeLimit, seed: o.seed + rep });
        (runs.get(s.name) as LiveRun[]).push(r);
        collectGarbage();
      }
    }
  } finally {
    receiver.close();
    await ceiling?.close();
  }
  const loopbackMbps = medianOf(loopback);
  const cases = specs.map((s): LiveCase => {
    const all = runs.get(s.name) as LiveRun[];
    const memory = s.dirtying ? o.dirtyMemory : o.memory;
    // The dirtying run whole from its median repetition; the idle runs' figures field by field.
    const byTime = [...all].sort((a, b) => a['total-time'] - b['total-time']);
    const mid = byTime[Math.floor(byTime.length / 2)] as LiveRun;
    const base: LiveRun = s.dirtying
      ? mid
      : {
          ...mid,
          'total-time': median(all.map((r) => r['total-time'])),
          'setup-time': median(all.map((r) => r['setup-time'])),
          transferred: median(all.map((r) => r.transferred)),
          mbps: medianOf(all.map((r) => r.mbps)),
          verified: all.every((r) => r.verified),
          ...(all.every((r) => r['verify-time'] !== undefined)
            ? { 'verify-time': median(all.map((r) => r['verify-time'] as number)) }
            : {}),
          'destination-peak-rss-mib': Math.max(...all.map((r) => r['destination-peak-rss-mib'])),
          'source-rss-mib': Math.max(...all.map((r) => r['source-rss-mib'])),
          // The CPU window and figures stay those of the middle repetition, so that they add up.
        };
    const converged = base.status === 'completed';
    // Each repetition over the loopback measured just before it.
    const ratios = all.map((run, rep) => run.mbps / (loopback[rep] as number));
    return {
      name: s.name,
      memory,
      vcpus: o.vcpus,
      channels: s.channels,
      'send-from': s.sendFrom ?? 'auto',
      'zero-copy-send': s.zeroCopySend === true,
      'auto-converge': s.dirtying,
      dirtying: s.dirtying,
      'downtime-limit': BENCH_DOWNTIME_LIMIT,
      ...base,
      converged,
      'within-downtime-limit': converged && (base.downtime ?? Infinity) <= BENCH_DOWNTIME_LIMIT,
      runs: all,
      'vs-loopback-runs': ratios.map(fourDigits),
      'vs-loopback-paired': fourDigits(median(ratios)),
    };
  });
  step('model: the same scenarios in the model plane');
  const model = cases.map((c) => predict(c, loopbackMbps, o));
  const mbps = (name: LiveCaseName) => (cases.find((c) => c.name === name) as LiveCase).mbps;
  const ratio = (name: LiveCaseName) => fourDigits(mbps(name) / loopbackMbps);
  const plain2 = runs.get('multifd-2') as LiveRun[];
  const zeroCopyRatios = runs
    .get('multifd-2-zero-copy')
    ?.map((r, rep) => r.mbps / (plain2[rep] as LiveRun).mbps);
  return {
    bench: 'migrate',
    node: process.version,
    reps: o.reps,
    memory: o.memory,
    'dirty-memory': o.dirtyMemory,
    vcpus: o.vcpus,
    'time-limit': o.timeLimit,
    'loopback-mbps': loopbackMbps,
    'loopback-runs': loopback,
    'loopback-cold-mbps': medianOf(loopbackCold),
    'loopback-cold-runs': loopbackCold,
    'precopy-vs-loopback-cold': fourDigits(mbps('precopy') / medianOf(loopbackCold)),
    'loopback-memory-mbps': medianOf(loopbackMemory),
    'loopback-memory-runs': loopbackMemory,
    'precopy-vs-loopback-memory': fourDigits(mbps('precopy') / medianOf(loopbackMemory)),
    'loopback-records-mbps': medianOf(loopbackRecords),
    'loopback-records-runs': loopbackRecords,
    'precopy-vs-loopback-records': fourDigits(mbps('precopy') / medianOf(loopbackRecords)),
    ...(zeroCopy
      ? {
          'loopback-zero-copy-mbps': medianOf(loopbackZeroCopy),
          'loopback-zero-copy-runs': loopbackZeroCopy,
          'multifd-2-zero-copy-vs-loopback-zero-copy': fourDigits(
            mbps('multifd-2-zero-copy') / medianOf(loopbackZeroCopy),
          ),
        }
      : { 'loopback-zero-copy-mbps': ZERO_COPY_UNAVAILABLE }),
    ...(typeof built === 'string'
      ? { 'c-loopback-mbps': built }
      : {
          'c-loopback-mbps': medianOf(cLoopback),
          'c-loopback-runs': cLoopback,
          'c-records-mbps': medianOf(cRecords),
          'c-records-runs': cRecords,
          'c-records-vs-loopback': fourDigits(medianOf(cRecords) / loopbackMbps),
          'precopy-vs-c-records': fourDigits(mbps('precopy') / medianOf(cRecords)),
        }),
    'huge-pages': cases.every((c) => c.runs.every((run) => run['huge-pages'])),
    'precopy-mbps': mbps('precopy'),
    'precopy-vs-loopback': ratio('precopy'),
    'precopy-vs-loopback-paired': (cases.find((c) => c.name === 'precopy') as LiveCase)['vs-loopback-paired'],
    'precopy-staging-mbps': mbps('precopy-staging'),
    'precopy-staging-vs-loopback': ratio('precopy-staging'),
    'multifd-2-mbps': mbps('multifd-2'),
    'multifd-2-vs-loopback': ratio('multifd-2'),
    'multifd-4-mbps': mbps('multifd-4'),
    'multifd-4-vs-loopback': ratio('multifd-4'),
    'multifd-2-zero-copy-mbps': zeroCopy ? mbps('multifd-2-zero-copy') : ZERO_COPY_UNAVAILABLE,
    ...(zeroCopyRatios === undefined
      ? {}
      : {
          'zero-copy-vs-multifd-2-runs': zeroCopyRatios.map(fourDigits),
          'zero-copy-vs-multifd-2': fourDigits(median(zeroCopyRatios)),
        }),
    cases,
    model,
    'receiver-peak-rss-mib': Math.round(receiverKiB / 1024),
    'peak-rss-mib': Math.round(process.resourceUsage().maxRSS / 1024),
    cores: availableParallelism(),
  };
}

/** A prediction's downtime and its error, for the table ('–' where there is none). */
function liveRateDowntime(m: ModelRun): string {
  if (m.downtime === undefined) return '–';
  const e = m['downtime-error-pct'];
  return e === undefined ? String(m.downtime) : `${m.downtime} (${e > 0 ? '+' : ''}${e.toFixed(1)}%)`;
}

/** The Markdown table the README shows. */
export function formatMigrateBench(r: MigrateBenchResult): string {
  const mib = (b: number) => `${(b / 2 ** 20).toFixed(1)} MiB`;
  const err = (pct: number) => `${pct > 0 ? '+' : ''}${pct.toFixed(1)}%`;
  const lines = [
    `# migrate: live migration on loopback, ${r.vcpus} vCPUs per guest, medians of ${r.reps} (Node ${r.node}), guest RAM ${r['huge-pages'] ? 'on transparent huge pages' : 'on 4 KiB pages'}`,
    '',
    '| run | status | total-time ms | downtime ms | transferred | Mbit/s | vs loopback | verified | syncs | throttle % | model total-time ms (error) | model transferred (error) | model at the live rate: total-time ms (error) | model at the live rate: downtime ms (error) |',
    '|---|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|',
    `| raw TCP, ${mib(r.memory)} to a discarding process | – | – | – | – | ${r['loopback-mbps']} | 1 | – | – | – | – | – | – | – |`,
    `| raw TCP from guest RAM: ${mib(r.memory)} of cold guest RAM to the same process | – | – | – | – | ${r['loopback-cold-mbps']} | ` +
      `${fourDigits(r['loopback-cold-mbps'] / r['loopback-mbps'])} | – | – | – | – | – | – | – |`,
    `| TCP between memories: ${mib(r.memory)} of guest RAM read in place into guest RAM | – | – | – | – | ${r['loopback-memory-mbps']} | ` +
      `${fourDigits(r['loopback-memory-mbps'] / r['loopback-mbps'])} | – | – | – | – | – | – | – |`,
    `| TCP in QEMU's page records: ${mib(r.memory)}, each page copied from the read buffer into guest RAM | – | – | – | – | ${r['loopback-records-mbps']} | ` +
      `${fourDigits(r['loopback-records-mbps'] / r['loopback-mbps'])} | – | – | – | – | – | – | – |`,
    ...(typeof r['loopback-zero-copy-mbps'] === 'number'
      ? [
          `| TCP between memories in multifd packets, zero-copy-send: ${mib(r.memory)} of guest RAM spliced, read in place | – | – | – | – | ${r['loopback-zero-copy-mbps']} | ` +
            `${fourDigits(r['loopback-zero-copy-mbps'] / r['loopback-mbps'])} | – | – | – | – | – | – | – |`,
        ]
      : []),
    ...(typeof r['c-loopback-mbps'] === 'number' && r['c-records-mbps'] !== undefined
      ? [
          `| C ceiling: raw TCP, ${mib(r.memory)} to a discarding process | – | – | – | – | ${r['c-loopback-mbps']} | ` +
            `${fourDigits(r['c-loopback-mbps'] / r['loopback-mbps'])} | – | – | – | – | – | – | – |`,
          `| C ceiling: ${mib(r.memory)} as QEMU's page records, each page copied into guest RAM | – | – | – | – | ${r['c-records-mbps']} | ` +
            `${fourDigits(r['c-records-mbps'] / r['loopback-mbps'])} | verified | – | – | – | – | – | – |`,
        ]
      : [`| C ceiling: ${r['c-loopback-mbps']} | – | – | – | – | – | – | – | – | – | – | – | – | – |`]),
  ];
  for (const c of r.cases) {
    const m = r.model.find((x) => x.case === c.name) as ModelPrediction;
    const what =
      `${c.name}: ${c.dirtying ? 'dirtying' : 'idle'} ${mib(c.memory)}` +
      (c['zero-copy-send'] ? `, zero-copy-send (${mib(c['spliced-bytes'])} spliced)` : '') +
      (c.dirtying ? `, ${Math.round(c['guest-writes-per-s'])} writes/s per vCPU, auto-converge` : '');
    const status = c.converged ? c.status : `**${c.status}: did not converge in ${r['time-limit']} s**`;
    const downtime =
      c.downtime === undefined
        ? '–'
        : `${c.downtime}${c['within-downtime-limit'] ? '' : ` (**over ${c['downtime-limit']}**)`}`;
    lines.push(
      `| ${what} | ${status} | ${c['total-time']} | ${downtime} | ${mib(c.transferred)} | ${c.mbps} | ` +
        `${fourDigits(c.mbps / r['loopback-mbps'])} | ${c.verified ? 'yes' : '**no**'} | ${c['dirty-sync-count']} | ` +
        `${c['cpu-throttle-percentage']} | ${m['total-time']} (${err(m['total-time-error-pct'])}) | ` +
        `${mib(m.transferred)} (${err(m['transferred-error-pct'])}) | ` +
        `${m['at-live-rate']['total-time']} (${err(m['at-live-rate']['total-time-error-pct'])}) | ` +
        `${liveRateDowntime(m['at-live-rate'])} |`,
    );
  }
  lines.push(
    '',
    ...r.cases
      .filter((c) => !c.dirtying)
      .map(
        (c) =>
          `${c.name} over each repetition's own loopback: ${c['vs-loopback-runs'].join(', ')} (median ${c['vs-loopback-paired']}).`,
      ),
    r['zero-copy-vs-multifd-2-runs'] === undefined
      ? `multifd-2 with zero-copy-send: ${r['multifd-2-zero-copy-mbps']}.`
      : `multifd-2 with zero-copy-send over the plain multifd-2 run before it: ${r['zero-copy-vs-multifd-2-runs'].join(', ')} (median ${r['zero-copy-vs-multifd-2']}).`,
    `precopy over raw TCP from guest RAM (the sender's copy reading cold memory, as precopy's does): ${r['precopy-vs-loopback-cold']}.`,
    `precopy over TCP between memories (one connection, no copy in user space): ${r['precopy-vs-loopback-memory']}; ` +
      `over TCP in its own page records (read as the bench's Node reader reads them): ${r['precopy-vs-loopback-records']}.`,
    r['multifd-2-zero-copy-vs-loopback-zero-copy'] === undefined
      ? `TCP between memories with zero-copy-send: ${String(r['loopback-zero-copy-mbps'])}.`
      : `multifd-2 with zero-copy-send over TCP between memories in its own packets, zero-copy (its data path alone): ${r['multifd-2-zero-copy-vs-loopback-zero-copy']}.`,
    r['precopy-vs-c-records'] === undefined
      ? `C ceiling: ${String(r['c-loopback-mbps'])}.`
      : `The same page records between two C processes reach ${r['c-records-vs-loopback']} of raw loopback (runs ${(r['c-records-runs'] ?? []).join(', ')} Mbit/s; raw TCP in C ${(r['c-loopback-runs'] ?? []).join(', ')}); precopy reaches ${r['precopy-vs-c-records']} of them.`,
    `Downtime of each repetition, ms (the live link is pipelined: when the last window queued the rest of RAM, almost nothing is pending at the stop): ${r.cases
      .map((c) => `${c.name} ${c.runs.map((run) => run.downtime ?? '–').join(', ')}`)
      .join('; ')}.`,
    `Byte-for-byte check after completion (outside total-time), median ms: ${r.cases
      .map((c) => `${c.name} ${c['verify-time'] ?? '–'}`)
      .join(', ')}.`,
    `CPU time from setup done to completed (the middle repetition by total-time; each process's every thread; ${r.cores} cores), ms: ${r.cases
      .map((c) =>
        c['cpu-load'] === undefined
          ? `${c.name} –`
          : `${c.name} source ${c['source-cpu-ms']} + destination ${c['destination-cpu-ms']} in ${Math.round(c['cpu-window-ms'] as number)} (load ${c['cpu-load']})`,
      )
      .join(', ')}.`,
    `Downtime limit ${BENCH_DOWNTIME_LIMIT} ms. Peak RSS: this process ${r['peak-rss-mib']} MiB, ` +
      `destination ${Math.max(...r.cases.map((c) => c['destination-peak-rss-mib']))} MiB, loopback receiver ${r['receiver-peak-rss-mib']} MiB.`,
  );
  return lines.join('\n') + '\n';
}

/**
 * One live migration: a destination child process and a fresh source guest (RAM filled with
 * random bytes, so no page is a zero page), migrated with max-bandwidth 0 (unlimited) and QEMU's
 * default downtime-limit. An idle guest's vCPUs run at speed 0 from before their first timeslice
 * (booted, making no writes: `migrate --workload idle`).
 */
async function liveRun(o: {
  memory: number;
  vcpus: number;
  channels: number;
  dirtying: boolean;
  sendFrom?: SendFrom;
  zeroCopySend?: boolean;
  timeLimit: number;
  seed: number;
}): Promise<LiveRun> {
  // Both at once: the destination preallocates its RAM while the source fills its own.
  const [d, s] = await Promise.allSettled([
    spawnDestination(o.memory),
    startLiveSource({
      memory: o.memory,
      vcpus: o.vcpus,
      workload: { kind: 'uniform' },
      rate: 0,
      idle: !o.dirtying,
      fill: 'random',
      seed: o.seed,
    }),
  ]);
  if (d.status === 'rejected' || s.status === 'rejected') {
    if (d.status === 'fulfilled') d.value.child.kill();
    if (s.status === 'fulfilled') await s.value.guest.stop().catch(() => {});
    throw d.status === 'rejected' ? d.reason : (s as PromiseRejectedResult).reason;
  }
  const destination = d.value;
  const source = s.value;
  let outcome: LiveMigrationOutcome;
  let before: LiveGuestStats;
  let after: LiveGuestStats;
  let wallMs: number;
  /**
   * At `active` and at the run's end: this process's CPU time (µs), the migration's time (ms) and
   * the destination's CPU time, asked for now and read once this thread is free again.
   */
  const marks: CpuMark[] = [];
  const takeMark = (atMs: number): void => {
    const u = process.cpuUsage();
    marks.push({ atMs, sourceUs: u.user + u.system, destinationUs: destination.cpuNow() });
  };
  const mark = (e: StatusEvent): void => {
    const terminal = e.status === 'completed' || e.status === 'failed' || e.status === 'cancelled';
    if (e.status === 'active' ? marks.length === 0 : terminal && marks.length === 1) takeMark(e.time);
  };
  try {
    before = source.guest.stats();
    const t0 = process.hrtime.bigint();
    outcome = await runLiveMigration({
      host: destination.host,
      port: destination.port,
      memory: source.memory,
      engine: source.engine,
      throttle: source.engine,
      bitmap: source.bitmap,
      parameters: {
        'max-bandwidth': 0,
        'downtime-limit': BENCH_DOWNTIME_LIMIT,
        ...(o.channels > 0 ? { 'multifd-channels': o.channels } : {}),
      },
      capabilities: {
        multifd: o.channels > 0,
        'auto-converge': o.dirtying,
        ...(o.zeroCopySend === true ? { 'zero-copy-send': true } : {}),
      },
      timeLimitNs: o.timeLimit * 1e9,
      onStatus: mark,
      ...(o.sendFrom === undefined ? {} : { sendFrom: o.sendFrom }),
    });
    wallMs = Number(process.hrtime.bigint() - t0) / 1e6;
    // A run that stopped short of a final status (QEMU's `active` at the time limit) ends its
    // window where it stopped, while the destination still waits.
    if (marks.length === 1) takeMark(outcome.info['total-time']);
    after = source.guest.stats();
  } finally {
    await source.guest.stop().catch(() => {});
    // A run that did not complete leaves the destination waiting: it is not needed any more.
    const timer = setTimeout(() => destination.child.kill(), 10_000);
    await destination.exited;
    clearTimeout(timer);
  }
  const info = outcome.info;
  const last = info.trajectory[info.trajectory.length - 1];
  // Per vCPU: writes over the time it was let run (throttling sleeps excluded), and over the run.
  let running = 0;
  let ran = 0;
  for (let v = 0; v < o.vcpus; v++) {
    const writes = (after.vcpuWrites[v] ?? 0) - (before.vcpuWrites[v] ?? 0);
    const slept = (after.vcpuThrottledMs[v] ?? 0) - (before.vcpuThrottledMs[v] ?? 0);
    running += writes;
    ran += Math.max(1, wallMs - slept);
  }
  const { peakKiB } = await destination.exited;
  const cpu = await cpuFigures(marks);
  return {
    status: info.status,
    'total-time': info['total-time'],
    'setup-time': info['setup-time'],
    ...(info.downtime === undefined ? {} : { downtime: info.downtime }),
    transferred: info.ram.transferred,
    mbps: fourDigits(finalMbps(info.ram.transferred, info['total-time'], info['setup-time'])),
    verified: info.verified,
    ...(info['verify-time'] === undefined ? {} : { 'verify-time': info['verify-time'] }),
    'dirty-sync-count': info.ram['dirty-sync-count'],
    'cpu-throttle-percentage': last?.['cpu-throttle-percentage'] ?? 0,
    'guest-writes-per-s': fourDigits((running / ran) * 1000),
    'guest-writes-per-s-throttled': fourDigits((after.writes - before.writes) / o.vcpus / (wallMs / 1000)),
    'source-rss-mib': Math.round(process.memoryUsage().rss / 2 ** 20),
    'destination-peak-rss-mib': Math.round(peakKiB / 1024),
    ...cpu,
    'huge-pages': source.hugePages,
    'spliced-bytes': outcome.link['spliced-bytes'],
  };
}

/**
 * The model plane's prediction of a live case: the same guest (size, vCPUs, all pages holding
 * data, the live pipeline's MMU write-protect tracker, bitmap reporter and QEMU's xchg layers),
 * a uniform workload at the live guest's measured write rate, a link of the measured loopback
 * throughput with no latency, the live run's setup time, the same migration parameters and
 * capabilities and time limit.
 */
function predict(c: LiveCase, loopbackMbps: number, o: MigrateBenchOptions): ModelPrediction {
  const scenarioAt = (mbps: number): ScenarioInput =>
    liveScenario({
      name: `bench-migrate-${c.name}`,
      seed: o.seed,
      memory: c.memory,
      vcpus: c.vcpus,
      writesPerVcpu: c['guest-writes-per-s'],
      linkBytesPerSecond: (mbps * 1e6) / 8,
      maxBandwidth: 0,
      downtimeLimit: c['downtime-limit'],
      setupTime: c['setup-time'],
      channels: c.channels,
      autoConverge: c['auto-converge'],
      zeroCopySend: c['zero-copy-send'],
      timeLimit: o.timeLimit,
    });
  const run = (scenario: ScenarioInput): ModelRun => {
    const r = simulate(scenarioSchema.parse(scenario));
    const ram = r['ram'] as { transferred: number; 'dirty-sync-count': number };
    const totalTime = r['total-time'] as number;
    const downtime = r['downtime'] as number | undefined;
    return {
      status: r['status'] as string,
      'total-time': totalTime,
      ...(downtime === undefined ? {} : { downtime }),
      transferred: ram.transferred,
      'dirty-sync-count': ram['dirty-sync-count'],
      'total-time-error-pct': errorPct(totalTime, c['total-time']),
      'transferred-error-pct': errorPct(ram.transferred, c.transferred),
      ...(downtime === undefined || c.downtime === undefined || c.downtime <= 0
        ? {}
        : { 'downtime-error-pct': errorPct(downtime, c.downtime) }),
    };
  };
  const scenario = scenarioAt(loopbackMbps);
  // The live run's rate once set up (QEMU's final mbps): the model spends the setup itself (`setup-time`).
  const liveRate = fourDigits(finalMbps(c.transferred, c['total-time'], c['setup-time']));
  return {
    case: c.name,
    scenario,
    ...run(scenario),
    'at-live-rate': { 'link-mbps': liveRate, ...run(scenarioAt(liveRate)) },
  };
}

/** One end of a run's CPU window: the migration's time (ms), this process's and the destination's CPU time (µs). */
interface CpuMark {
  atMs: number;
  sourceUs: number;
  destinationUs: Promise<number>;
}

/** A run's CPU figures from its two marks (at `active` and at its end), or none without both. */
async function cpuFigures(
  marks: CpuMark[],
): Promise<Pick<LiveRun, 'cpu-window-ms' | 'source-cpu-ms' | 'destination-cpu-ms' | 'cpu-load'>> {
  const [from, to] = marks;
  if (from === undefined || to === undefined) return {};
  let destinationUs: number;
  try {
    destinationUs = (await to.destinationUs) - (await from.destinationUs);
  } catch {
    return {};
  }
  const window = Math.round((to.atMs - from.atMs) * 1000) / 1000;
  const sourceCpuMs = Math.round((to.sourceUs - from.sourceUs) / 1000);
  const destinationCpuMs = Math.round(destinationUs / 1000);
  return {
    'cpu-window-ms': window,
    'source-cpu-ms': sourceCpuMs,
    'destination-cpu-ms': destinationCpuMs,
    'cpu-load': cpuLoad(sourceCpuMs, destinationCpuMs, window),
  };
}

/** `(source + destination CPU ms) / (window ms × this machine's cores)`, four significant digits. */
export function cpuLoad(sourceCpuMs: number, destinationCpuMs: number, windowMs: number): number {
  return fourDigits((sourceCpuMs + destinationCpuMs) / (windowMs * availableParallelism()));
}

/** The median itself (upper middle of an even count), unrounded: exact bytes, exact ms. */
function median(values: number[]): number {
  return [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)] as number;
}

/** `(model − live) / live` in %, one decimal (never −0: JSON would print it as 0). */
export function errorPct(model: number, live: number): number {
  return Math.round(((model - live) / live) * 1000) / 10 + 0;
}

/**
 * The process's own peak RSS in KiB: `VmHWM` of its address space. Not `resourceUsage().maxRSS`:
 * Linux carries ru_maxrss over fork and exec, so a child spawned by a process holding 4 GiB
 * would report at least 4 GiB (measured here: each destination "peaked" at this process's size).
 */
const PEAK_KIB = `(() => { try { return Number(/VmHWM:\\s+(\\d+)/.exec(require('node:fs').readFileSync('/proc/self/status', 'utf8'))[1]); } catch { return process.resourceUsage().maxRSS; } })()`;

/**
 * Reports on fd 3 (a socket pair with the bench) the process's CPU time (µs, every thread:
 * `process.cpuUsage`) for each byte the bench writes to it (`cpu <µs>`: bytes, unlike signals,
 * never merge), and its peak RSS (KiB) as it exits (`exit <KiB>`). The reading
 * end is unref'd: it never keeps the process alive.
 */
export const USAGE_PRELOAD =
  'data:text/javascript,' +
  encodeURIComponent(
    "import { writeSync } from 'node:fs'; import { Socket } from 'node:net'; import { createRequire } from 'node:module';" +
      "import { isMainThread } from 'node:worker_threads';" +
      "const require = createRequire('file:///');" +
      'const cpu = () => { const u = process.cpuUsage(); return u.user + u.system; };' +
      // The main thread only: a preload runs in every worker thread too (the destination's vCPUs),
      // and a worker's socket over fd 3 closes the process's fd 3 as that worker exits.
      'if (isMainThread) {' +
      'const asks = new Socket({ fd: 3, readable: true, writable: false });' +
      "asks.on('error', () => {}).unref();" +
      "asks.on('data', (b) => { for (let i = 0; i < b.length; i++) try { writeSync(3, `cpu ${cpu()}\\n`); } catch {} });" +
      `process.on('exit', () => { try { writeSync(3, \`exit \${${PEAK_KIB}}\\n\`); } catch {} });` +
      '}',
  );

/**
 * The loopback receiver: a child process that, for each line on its stdin, connects to the
 * sender, counts what arrives, discards it, and once the sender has ended answers with the count
 * and its peak RSS — the sender's clock stops at the answer, so every byte is timed into the
 * receiver. It reads into one reused buffer of the size the destination reads its main
 * connection with (Node's `onread`), as the destination does and as iperf does: with Node's
 * default reads (a fresh 64 KiB buffer each) this receiver measured 12–16 Gbit/s in a fresh
 * process and 20–27 once its heap had grown over a few transfers, so the baseline rose with every
 * repetition; with one buffer it measured 25–29 from the first.
 */
const RECEIVER = (port: number) => `
const net = require('node:net');
const buffer = new Uint8Array(${MAIN_READ_BUFFER_BYTES});
require('node:readline').createInterface({ input: process.stdin }).on('line', () => {
  let n = 0;
  const c = net.connect({ host: '127.0.0.1', port: ${port}, onread: { buffer, callback: (k) => { n += k; } } });
  c.on('end', () => c.end(JSON.stringify([n, ${PEAK_KIB}])));
  c.on('error', () => process.exit(1));
});
`;

async function spawnReceiver(): Promise<{
  transfer: (bytes: number, from?: Uint8Array) => Promise<{ mbps: number; peakKiB: number }>;
  close: () => void;
}> {
  const { server, port } = await listenLoopback();
  const child = spawn(process.execPath, ['-e', RECEIVER(port)], { stdio: ['pipe', 'ignore', 'inherit'] });
  let exited: Error | undefined;
  const failed = new Promise<never>((_, reject) =>
    child.once('exit', (code) => reject((exited = internal(`the loopback receiver exited (${code})`)))),
  );
  failed.catch(() => {});
  const buffer = randomFillSync(Buffer.allocUnsafe(CHUNK));
  /** `bytes` from the hot 4 MiB buffer over and over, or from `from` (at least `bytes` long) once. */
  const transfer = (bytes: number, from?: Uint8Array) => {
    if (exited !== undefined) return Promise.reject(exited);
    const done = new Promise<{ mbps: number; peakKiB: number }>((resolve, reject) => {
      server.once('connection', (socket) => {
        const t0 = process.hrtime.bigint();
        let answer = '';
        socket.on('error', reject);
        socket.setEncoding('utf8').on('data', (c: string) => (answer += c));
        socket.on('end', () => {
          const s = Number(process.hrtime.bigint() - t0) / 1e9;
          const [received, peakKiB] = JSON.parse(answer) as [number, number];
          if (received !== bytes) reject(internal(`the loopback receiver got ${received} of ${bytes} bytes`));
          else resolve({ mbps: fourDigits((bytes * 8) / s / 1e6), peakKiB });
        });
        writeAll(
          socket,
          bytes,
          from === undefined
            ? (_at, n) => (n === CHUNK ? buffer : buffer.subarray(0, n))
            : (at, n) => from.subarray(at, at + n),
        );
      });
    });
    (child.stdin as NodeJS.WritableStream).write('\n');
    return Promise.race([done, failed]);
  };
  return {
    transfer,
    close: () => {
      child.kill();
      server.close();
    },
  };
}

/** A TCP server on a free loopback port (the sending side of the bench's transfers). */
async function listenLoopback(): Promise<{ server: Server; port: number }> {
  const server = createServer({ noDelay: true });
  const port = await new Promise<number>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve((server.address() as AddressInfo).port));
  });
  return { server, port };
}

/**
 * Writes `bytes` in {@link CHUNK} writes (`chunk(at, n)` gives the bytes at `at`), waiting for
 * 'drain' whenever the socket's buffer is full, then ends the socket.
 */
function writeAll(socket: Socket, bytes: number, chunk: (at: number, n: number) => Uint8Array): void {
  let sent = 0;
  const write = (): void => {
    while (sent < bytes) {
      const n = Math.min(CHUNK, bytes - sent);
      const ok = socket.write(chunk(sent, n));
      sent += n;
      if (!ok) {
        socket.once('drain', write);
        return;
      }
    }
    socket.end();
  };
  write();
}

/**
 * The two memories of a ceiling run: guest RAM allocated as the runs' is, filled with random
 * bytes (a reused 4 MiB pattern), and a second guest RAM, touched, to read into.
 */
function twoMemories(bytes: number): { from: Uint8Array; into: SharedArrayBuffer } {
  return { from: filledGuestRam(bytes), into: preallocate(bytes, true).memory };
}

/** `bytes` of guest RAM, allocated as the runs' RAM is, filled with random bytes (a 4 MiB pattern repeated). */
function filledGuestRam(bytes: number): Uint8Array {
  const from = new Uint8Array(allocateGuestRam(bytes).memory);
  const pattern = randomFillSync(Buffer.allocUnsafe(CHUNK));
  for (let o = 0; o < bytes; o += CHUNK)
    from.set(o + CHUNK <= bytes ? pattern : pattern.subarray(0, bytes - o), o);
  return from;
}

/** Compares one byte in every 61st page of `into` with `from`'s; throws naming `what` on the first difference. */
function compareSampled(what: string, from: Uint8Array, into: SharedArrayBuffer): void {
  const got = new Uint8Array(into);
  for (let o = 0; o < from.byteLength; o += PAGE_SIZE * 61) {
    if (got[o] !== from[o]) throw internal(`${what}: byte ${o} arrived as ${got[o]}, sent ${from[o]}`);
  }
}

/**
 * TCP between two memories, the ceiling of any migration over one connection here: `bytes` of
 * guest RAM (allocated as the runs' RAM is, filled with random bytes) written whole into a socket
 * in {@link CHUNK} views, and read by a worker thread in place, `MAIN_READ_BUFFER_BYTES` at a
 * time, into a second guest RAM touched beforehand — so the kernel's two copies are the only ones, as
 * they would be for a migration with no records and no copy in user space. Mbit/s. The raw
 * loopback above reads from a hot 4 MiB buffer and discards; this one reads and writes cold RAM
 * on both ends.
 */
async function memoryToMemory(from: Uint8Array): Promise<number> {
  const bytes = from.byteLength;
  const into = preallocate(bytes, true).memory;
  const { mbps, reported } = await toReaderThread(
    'the in-place reader',
    MEMORY_READER,
    into,
    bytes,
    (socket) => writeAll(socket, bytes, (at, n) => from.subarray(at, at + n)),
  );
  if (reported !== bytes) throw internal(`TCP between memories: ${String(reported)} of ${bytes} bytes read`);
  compareSampled('TCP between memories', from, into);
  return mbps;
}

/**
 * Times one loopback transfer to a worker thread: `script` runs with `{ port, memory: into, read }`
 * as its `workerData`, connects to `port`, and posts one message (what it counted) when the
 * sender's end arrives, then ends its side; `send` writes `bytes` into the accepted connection.
 * Mbit/s from the connection to the reader's end, and the reader's message; rejects if the reader
 * fails or exits first.
 */
async function toReaderThread(
  what: string,
  script: string,
  into: SharedArrayBuffer,
  bytes: number,
  send: (socket: Socket) => void,
): Promise<{ mbps: number; reported: unknown }> {
  const { server, port } = await listenLoopback();
  const reader = new Worker(script, {
    eval: true,
    workerData: { port, memory: into, read: MAIN_READ_BUFFER_BYTES },
  });
  try {
    const reported = new Promise<unknown>((resolve, reject) => {
      reader.once('message', resolve);
      reader.once('error', reject);
      reader.once('exit', (code) => reject(internal(`${what} exited (${code})`)));
    });
    const mbps = new Promise<number>((resolve, reject) => {
      server.once('connection', (socket) => {
        const t0 = process.hrtime.bigint();
        socket.on('error', reject);
        socket.on('data', () => {});
        socket.on('end', () =>
          resolve(fourDigits((bytes * 8) / (Number(process.hrtime.bigint() - t0) / 1e3))),
        );
        send(socket);
      });
    });
    const [m, r] = await Promise.all([mbps, reported]);
    return { mbps: m, reported: r };
  } finally {
    await reader.terminate();
    server.close();
  }
}

/** The in-place reader: reads the connection into its memory, then ends it (the sender's clock stops). */
const MEMORY_READER = `
const net = require('node:net');
const { workerData, parentPort } = require('node:worker_threads');
const memory = new Uint8Array(workerData.memory);
const scratch = new Uint8Array(4096);
let at = 0;
const c = net.connect({
  host: '127.0.0.1',
  port: workerData.port,
  onread: {
    // Past the end (only the FIN is left to read): a scratch buffer, never a zero-length one.
    buffer: () => (at < memory.byteLength ? memory.subarray(at, Math.min(memory.byteLength, at + workerData.read)) : scratch),
    callback: (n) => { at += n; },
  },
});
c.on('end', () => { parentPort.postMessage(at); c.end(); });
c.on('error', (e) => { throw e; });
`;

/** Page records per buffer of {@link recordsToMemory}'s sender (one {@link CHUNK} or less). */
const RECORDS_PER_CHUNK = Math.floor(CHUNK / PAGE_RECORD_BYTES);
/** Buffers the sender rotates through: one is rewritten only after its last write has left. */
const RECORDS_POOL = 4;

/**
 * TCP in QEMU's page records, the ceiling of precopy's stream as the destination reads it: `bytes` of guest RAM as
 * records (an 8-byte header, `PAGE|CONTINUE` and the page's offset, then its 4096 bytes, as precopy
 * sends every page of an idle guest with random RAM), written in {@link CHUNK}-sized buffers
 * built beforehand — only the headers are rewritten when a buffer comes round again — and read by
 * a worker thread into one reused `MAIN_READ_BUFFER_BYTES` buffer, which copies each page to its
 * offset in a second guest RAM touched beforehand (through a scratch page after the read buffer,
 * as the destination does): one copy in user space per page, after the kernel's, through the event
 * loop's reads. Mbit/s of page bytes; every page is counted, sampled pages compared.
 */
async function recordsToMemory(bytes: number): Promise<number> {
  const pages = bytes / PAGE_SIZE;
  const pool = Array.from({ length: RECORDS_POOL }, () =>
    randomFillSync(Buffer.allocUnsafeSlow(RECORDS_PER_CHUNK * PAGE_RECORD_BYTES)),
  );
  const into = preallocate(bytes, true).memory;
  const { mbps, reported } = await toReaderThread(
    'the page-record reader',
    RECORDS_READER,
    into,
    bytes,
    (socket) => sendRecords(socket, pages, pool).catch((e: unknown) => socket.destroy(e as Error)),
  );
  if (reported !== pages) throw internal(`TCP in page records: ${String(reported)} of ${pages} pages placed`);
  const got = Buffer.from(into);
  for (let page = 0; page < pages; page += 61) {
    const at = (page % RECORDS_PER_CHUNK) * PAGE_RECORD_BYTES + 8;
    const sent = (pool[Math.floor(page / RECORDS_PER_CHUNK) % RECORDS_POOL] as Buffer).subarray(
      at,
      at + PAGE_SIZE,
    );
    if (!sent.equals(got.subarray(page * PAGE_SIZE, (page + 1) * PAGE_SIZE)))
      throw internal(`TCP in page records: page ${page} arrived other than it was sent`);
  }
  return mbps;
}

/** Packets per gather list of {@link zeroCopyToMemory}'s sender (2 MiB of pages, the sender's slice). */
const ZERO_COPY_PACKETS_PER_LIST = 4;

/**
 * TCP between memories in multifd's packets with zero-copy-send, the ceiling of
 * `multifd-2-zero-copy`'s data path here: `bytes` of guest RAM (filled with random bytes) as
 * packets of `MULTIFD_PACKET_PAGES` pages, each after a `MULTIFD_PACKET_HEADER`-byte header,
 * written through the sender thread's own writer (`createFdWriter` with `splice`: the pages
 * `vmsplice`d into a pipe by reference, the headers copied into it, the pipe `splice`d into the
 * socket), at most two lists of four packets queued, as the sender queues its slices; read by a
 * worker thread in place — each header into a scratch buffer, each packet's pages straight into a
 * second guest RAM touched beforehand. On loopback the receiver's copy is the only one: no
 * encoding, no batches, no records. Mbit/s of page bytes; every byte is counted, sampled pages
 * compared. Only where `fdWritesAvailable()`.
 */
async function zeroCopyToMemory(bytes: number): Promise<number> {
  const { from, into } = twoMemories(bytes);
  const packet = MULTIFD_PACKET_PAGES * PAGE_SIZE;
  const header = new Uint8Array(MULTIFD_PACKET_HEADER).fill(0x5a);
  const send = async (socket: Socket): Promise<void> => {
    const writer = createFdWriter(socket, from, () => !socket.destroyed, { splice: true });
    if (writer === undefined)
      throw internal('TCP between memories with zero-copy-send: no descriptor to splice into');
    let before: Promise<void> = Promise.resolve();
    for (let at = 0; at < bytes;) {
      const list = writer.gather();
      for (let k = 0; k < ZERO_COPY_PACKETS_PER_LIST && at < bytes; k++, at += packet) {
        list.copy(header);
        list.memory(at, Math.min(packet, bytes - at));
      }
      const written = writer.write(list);
      await before;
      before = written;
    }
    await before;
    socket.end();
  };
  const { mbps, reported } = await toReaderThread(
    'the zero-copy reader',
    ZERO_COPY_READER,
    into,
    bytes,
    (socket) => void send(socket).catch((e: unknown) => socket.destroy(e as Error)),
  );
  const [placed, headers, stray] = reported as [number, number, number];
  const packets = Math.ceil(bytes / packet);
  if (placed !== bytes || headers !== packets || stray !== 0)
    throw internal(
      `TCP between memories with zero-copy-send: ${placed} of ${bytes} bytes placed, ` +
        `${headers} of ${packets} headers, ${stray} bytes past the end`,
    );
  compareSampled('TCP between memories with zero-copy-send', from, into);
  return mbps;
}

/**
 * The in-place packet reader: each multifd header into a scratch buffer, each packet's pages into
 * its memory; posts [bytes placed, headers read, bytes past the end] when the sender's end arrives.
 */
const ZERO_COPY_READER = `
const net = require('node:net');
const { workerData, parentPort } = require('node:worker_threads');
const memory = new Uint8Array(workerData.memory);
const header = new Uint8Array(${MULTIFD_PACKET_HEADER});
const packet = ${MULTIFD_PACKET_PAGES * PAGE_SIZE};
const scratch = new Uint8Array(4096);
let at = 0, inHeader = header.length, inPacket = 0, headers = 0, stray = 0;
const c = net.connect({
  host: '127.0.0.1',
  port: workerData.port,
  onread: {
    buffer: () =>
      inHeader > 0
        ? at < memory.byteLength ? header.subarray(header.length - inHeader) : scratch
        : memory.subarray(at, at + inPacket),
    callback: (n) => {
      if (inHeader > 0 && at >= memory.byteLength) stray += n;
      else if (inHeader > 0) {
        inHeader -= n;
        if (inHeader === 0) { headers++; inPacket = Math.min(packet, memory.byteLength - at); }
      } else {
        at += n;
        inPacket -= n;
        if (inPacket === 0) inHeader = header.length;
      }
    },
  },
});
c.on('end', () => { parentPort.postMessage([at, headers, stray]); c.end(); });
c.on('error', (e) => { throw e; });
`;

/** Writes `pages` records from `pool`'s buffers in turn (a buffer waits for its last write), then ends. */
async function sendRecords(socket: Socket, pages: number, pool: Buffer[]): Promise<void> {
  const left: (Promise<void> | undefined)[] = [];
  for (let chunk = 0, page = 0; page < pages; chunk++) {
    const k = chunk % pool.length;
    await left[k];
    const buffer = pool[k] as Buffer;
    const n = Math.min(RECORDS_PER_CHUNK, pages - page);
    for (let i = 0; i < n; i++)
      writeRamHeader(
        buffer,
        i * PAGE_RECORD_BYTES,
        (page + i) * PAGE_SIZE,
        RAM_FLAG.PAGE | RAM_FLAG.CONTINUE,
      );
    left[k] = new Promise<void>((resolve, reject) =>
      socket.write(buffer.subarray(0, n * PAGE_RECORD_BYTES), (e) => (e ? reject(e) : resolve())),
    );
    page += n;
  }
  socket.end();
}

/**
 * The page-record reader: parses records out of its reused read buffer (a record may straddle two
 * reads) and copies each page to its offset; posts the pages it placed when the stream ends. A
 * header that is not `PAGE|CONTINUE` or names an offset outside its RAM throws (the worker fails).
 */
const RECORDS_READER = `
const net = require('node:net');
const { workerData, parentPort } = require('node:worker_threads');
const PAGE = ${PAGE_SIZE}, RECORD = ${PAGE_RECORD_BYTES}, FLAGS = ${RAM_FLAG.PAGE | RAM_FLAG.CONTINUE};
const memory = new Uint8Array(workerData.memory);
const READ = workerData.read;
// The read buffer and a bounce page in one plain buffer: copyWithin is a memmove and allocates
// nothing, then one copy of the whole page into the shared guest RAM.
const whole = new Uint8Array(READ + PAGE);
const buffer = whole.subarray(0, READ);
const bounce = whole.subarray(READ);
const header = new Uint8Array(8);
let got = 0; // header bytes of the record in progress (8: its page is in progress)
let into = 0; // page bytes of the record in progress
let offset = 0;
let placed = 0;
function parse(b, at) {
  const hi = ((b[at] << 24) | (b[at + 1] << 16) | (b[at + 2] << 8) | b[at + 3]) >>> 0;
  const lo = ((b[at + 4] << 24) | (b[at + 5] << 16) | (b[at + 6] << 8) | b[at + 7]) >>> 0;
  const o = hi * 0x100000000 + (lo - (lo & 0xfff));
  if ((lo & 0xfff) !== FLAGS || o + PAGE > memory.byteLength) throw new Error('bad record header at page ' + placed);
  return o;
}
function onRead(n) {
  let p = 0;
  while (p < n) {
    if (got === 0 && n - p >= RECORD) {
      const o = parse(buffer, p);
      whole.copyWithin(READ, p + 8, p + RECORD);
      memory.set(bounce, o);
      placed++;
      p += RECORD;
    } else if (got < 8) {
      const k = Math.min(8 - got, n - p);
      header.set(buffer.subarray(p, p + k), got);
      got += k;
      p += k;
      if (got === 8) offset = parse(header, 0);
    } else {
      const k = Math.min(PAGE - into, n - p);
      memory.set(buffer.subarray(p, p + k), offset + into);
      into += k;
      p += k;
      if (into === PAGE) { got = 0; into = 0; placed++; }
    }
  }
}
const c = net.connect({ host: '127.0.0.1', port: workerData.port, onread: { buffer, callback: onRead } });
c.on('end', () => { parentPort.postMessage(placed); c.end(); });
c.on('error', (e) => { throw e; });
`;

/**
 * The destination: `dirtytrack serve --listen 127.0.0.1:0 --memory M --once --json` as a child
 * process (as `dirtytrack migrate` starts it), here with a preload that reports its CPU time on
 * fd 3 when asked, and its peak RSS as it exits — the migration blocks this thread,
 * so its `/proc` could not be polled.
 */
async function spawnDestination(memory: number) {
  const child = spawn(process.execPath, ['--import', USAGE_PRELOAD, ...localServeArgs(memory)], {
    stdio: ['ignore', 'pipe', 'pipe', 'pipe'],
  });
  const [, , stderrPipe, fd3Pipe] = child.stdio as unknown as NodeJS.ReadableStream[];
  let stderr = '';
  (stderrPipe as NodeJS.ReadableStream).setEncoding('utf8').on('data', (c: string) => (stderr += c));
  const usage = createInterface({ input: fd3Pipe as NodeJS.ReadableStream });
  let peakKiB = 0;
  const cpuLines: ((us: number) => void)[] = [];
  usage.on('line', (line) => {
    const [kind, value] = line.split(' ');
    if (kind === 'cpu') cpuLines.shift()?.(Number(value));
    else if (kind === 'exit') peakKiB = Number(value) || 0;
  });
  let closed = false;
  const exited = new Promise<{ code: number | null; peakKiB: number }>((resolve) =>
    child.once('close', (code) => {
      closed = true;
      for (const answer of cpuLines.splice(0)) answer(Number.NaN); // asked, never answered
      resolve({ code, peakKiB });
    }),
  );
  /**
   * The destination's CPU time when it reads the byte this writes, µs: its event loop answers
   * between two reads, within a few ms. Asked for from the blocked migration thread (the byte is
   * written at once: nothing else is queued on that socket), the answer is read once this thread
   * is free; a destination that exits first rejects it.
   */
  const cpuNow = (): Promise<number> => {
    const answer = new Promise<number>((resolve, reject) => {
      if (closed) return reject(internal('the destination exited before it reported its CPU time'));
      cpuLines.push((us) =>
        Number.isNaN(us)
          ? reject(internal('the destination exited before it reported its CPU time'))
          : resolve(us),
      );
      (fd3Pipe as unknown as Socket).write('c');
    });
    answer.catch(() => {}); // awaited later; a rejection meanwhile is not unhandled
    return answer;
  };
  const lines = createInterface({ input: child.stdout as NonNullable<typeof child.stdout> });
  const { host, port } = await new Promise<{ host: string; port: number }>((resolve, reject) => {
    lines.once('line', (line) => {
      const m = /^listening on (\S+):(\d+)$/.exec(line);
      if (m) resolve({ host: m[1] as string, port: Number(m[2]) });
      else reject(internal(`the destination said: ${line}`));
    });
    child.once('exit', (code) => reject(internal(`the destination exited (${code}): ${stderr.trim()}`)));
  });
  lines.on('line', () => {});
  return { host, port, child, exited, cpuNow };
}

/**
 * A full GC between runs: each run leaves a guest's RAM (a SharedArrayBuffer of `memory` bytes)
 * unreferenced, and V8 does not count it as heap pressure — without this, this process's RSS grew
 * by a guest per run (10 GiB after 12 runs of 1 GiB guests).
 */
function collectGarbage(): void {
  setFlagsFromString('--expose-gc');
  (runInNewContext('gc') as () => void)();
}

function internal(message: string): DirtytrackError {
  return new DirtytrackError('internal', message, { component: 'bench-migrate' });
}

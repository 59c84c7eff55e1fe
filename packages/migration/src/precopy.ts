import {
  DirtytrackError,
  NS_PER_MS,
  PAGE_SIZE,
  popcount32,
  type Bitmap,
  type Engine,
  type MigrationBitmap,
  type Transport,
} from '@dirtytrack/core';
import type { MigrationInfo, MigrationStatus, TrajectoryEntry } from './migration-info.js';

/** `migrate-set-parameters` that precopy honours, with QEMU's names and defaults. */
export interface PrecopyParameters {
  /** B/s; QEMU's default 134,217,728 (128 MiB/s); 0 = unlimited (the link decides). */
  'max-bandwidth': number;
  /** ms the guest may be stopped at switchover; QEMU's default 300, range 0..2,000,000. */
  'downtime-limit': number;
  /** `none` sends zero pages in full; anything else sends ZERO records. QEMU's default `multifd`. */
  'zero-page-detection': 'none' | 'legacy' | 'multifd';
}

export const DEFAULT_PRECOPY_PARAMETERS: Readonly<PrecopyParameters> = Object.freeze({
  'max-bandwidth': 134_217_728,
  'downtime-limit': 300,
  'zero-page-detection': 'multifd',
});

/** Progress, reported about once per second of migration time. */
export interface PrecopyProgress {
  timeNs: number;
  transferred: number;
  remaining: number;
  total: number;
  syncs: number;
}

export interface PrecopyOptions {
  /** Drives time and the guest (the model engine in this plane). */
  engine: Engine;
  /** The dirty-bitmap layers (layer C and below). */
  bitmap: MigrationBitmap;
  /** The link pages travel over. */
  link: Transport;
  /** Which pages hold data; the rest go as ZERO records when zero-page detection is on. */
  nonzero: Bitmap;
  parameters?: Partial<PrecopyParameters>;
  /** Give up (status stays `active`) after this much migration time (ns). */
  timeLimitNs: number;
  onProgress?: (progress: PrecopyProgress) => void;
}

/** Why the run stopped, beyond the QEMU status. */
export interface PrecopyOutcome {
  info: MigrationInfo;
  stopReason: 'converged' | 'time-limit';
}

/** QEMU's rate-limit window (BUFFER_DELAY). */
export const RATE_LIMIT_WINDOW_NS = 100 * NS_PER_MS;
/** A page record on the wire: be64 `offset | flags`, then the page or the zero fill byte. */
const RECORD_HEADER = 8;
const NORMAL_RECORD = RECORD_HEADER + PAGE_SIZE;
const ZERO_RECORD = RECORD_HEADER + 1;
/** QEMU recomputes the dirty-page rate once a sync period exceeds 1 s. */
const DIRTY_RATE_PERIOD_NS = 1000 * NS_PER_MS;

/**
 * QEMU's precopy (reference/qemu.md §2): setup (enable logging, set every bit, first sync), then
 * iterations that send dirty pages in 100 ms rate-limited windows; after each window the
 * bandwidth estimate sets `threshold = bandwidth × downtime-limit`. When pending < threshold the
 * bitmap is synced exactly, and once pending ≤ threshold the guest stops, a final sync runs and
 * the rest is sent: that time is the downtime. A guest that dirties faster than the link stays
 * `active` until the time limit, as QEMU's non-converging migrations do.
 */
export function runPrecopy(options: PrecopyOptions): PrecopyOutcome {
  const params = checkParameters({ ...DEFAULT_PRECOPY_PARAMETERS, ...options.parameters });
  const { engine, bitmap, link, nonzero } = options;
  if (nonzero.bits !== bitmap.pages) {
    throw new DirtytrackError(
      'invalid-argument',
      `nonzero map covers ${nonzero.bits} pages, RAM has ${bitmap.pages}`,
      {
        component: 'precopy',
      },
    );
  }
  if (!(options.timeLimitNs > 0)) {
    throw new DirtytrackError('invalid-argument', `time-limit: ${options.timeLimitNs} ns must be > 0`, {
      component: 'precopy',
      field: 'time-limit',
    });
  }
  const clock = engine.clock;
  const detectZero = params['zero-page-detection'] !== 'none';
  const words = bitmap.bmap.words;
  const nz = nonzero.words;
  const start = clock.now();
  const trajectory: TrajectoryEntry[] = [];

  let transferred = 0;
  let precopyBytes = 0;
  let normal = 0;
  let duplicate = 0;
  let syncs = 0;
  let lastSyncEnd = start;
  let periodStart = start;
  let periodDirty = 0;
  let dirtyPagesRate = 0;
  let dirtyBytesLastSync = 0;
  let cursor = 0;

  // The guest runs while the migration thread works for `ns`.
  const work = (ns: number): void => engine.runGuestUntil(clock.now() + ns);

  const sync = (): void => {
    const r = bitmap.sync();
    work(r.costNs);
    syncs++;
    const now = clock.now();
    periodDirty += r.newDirty;
    if (now - periodStart > DIRTY_RATE_PERIOD_NS) {
      dirtyPagesRate = (periodDirty * 1e9) / (now - periodStart);
      periodStart = now;
      periodDirty = 0;
    }
    dirtyBytesLastSync = bitmap.dirtyPages * PAGE_SIZE;
    trajectory.push({
      sync: syncs,
      time: ms(now - start),
      remaining: dirtyBytesLastSync,
      'new-dirty-pages': r.newDirty,
      'dirty-rate': now > lastSyncEnd ? round3((r.newDirty * 1e9) / (now - lastSyncEnd)) : 0,
      transferred,
      'sync-time': ms(r.costNs),
    });
    lastSyncEnd = now;
  };

  /** Sends dirty pages from the cursor on, clearing their bits, until `cap` bytes are reached. */
  const send = (cap: number): number => {
    let bytes = 0;
    while (bytes < cap && bitmap.dirtyPages > 0) {
      const w = words[cursor] as number;
      if (w === 0) {
        cursor = cursor + 1 === words.length ? 0 : cursor + 1;
        continue;
      }
      const data = detectZero ? w & (nz[cursor] as number) : w;
      const full = popcount32(data) * NORMAL_RECORD + popcount32(w & ~data) * ZERO_RECORD;
      let take = w;
      if (bytes + full > cap) {
        // Take pages one by one, lowest first, while under the cap (a page may overshoot it).
        take = 0;
        let rest = w;
        let b = bytes;
        while (rest !== 0 && b < cap) {
          const bit = rest & -rest;
          rest ^= bit;
          take |= bit;
          b += (data & bit) !== 0 ? NORMAL_RECORD : ZERO_RECORD;
        }
      }
      const sentNormal = popcount32(take & data);
      const sentZero = popcount32(take & ~data);
      bytes += sentNormal * NORMAL_RECORD + sentZero * ZERO_RECORD;
      normal += sentNormal;
      duplicate += sentZero;
      bitmap.clearSent(cursor, take);
      if (take === w) cursor = cursor + 1 === words.length ? 0 : cursor + 1;
    }
    transferred += bytes;
    return bytes;
  };

  // Setup: enable dirty logging and set every bit, then the first sync.
  work(bitmap.setup());
  sync();
  const setupEnd = clock.now();

  let windowStart = setupEnd;
  let windowBytes = 0;
  let threshold = 0;
  let bandwidth = 0; // bytes per ms, QEMU's `bw`
  let expectedDowntime = 0;
  let mbps = 0;
  let nextProgress = start;
  let status: MigrationStatus = 'active';
  let downtime: number | undefined;
  let downtimeBytes = 0;

  for (;;) {
    const now = clock.now();
    if (options.onProgress && now >= nextProgress) {
      nextProgress = now + 1000 * NS_PER_MS;
      options.onProgress({
        timeNs: now - start,
        transferred,
        remaining: bitmap.dirtyPages * PAGE_SIZE,
        total: bitmap.pages * PAGE_SIZE,
        syncs,
      });
    }
    if (now - start >= options.timeLimitNs) break;
    if (bitmap.dirtyPages * PAGE_SIZE < threshold) sync();
    if (bitmap.dirtyPages * PAGE_SIZE <= threshold) {
      // Completion: stop the guest, final sync, send the rest.
      const downtimeStart = clock.now();
      engine.pause();
      sync();
      const bytes = send(Infinity);
      downtimeBytes = bytes;
      const lastByteOut = link.transmit(bytes, clock.now());
      engine.runGuestUntil(lastByteOut + link.latencyNs);
      downtime = clock.now() - downtimeStart;
      status = 'completed';
      break;
    }
    const windowEnd = windowStart + RATE_LIMIT_WINDOW_NS;
    const budget = params['max-bandwidth'] > 0 ? params['max-bandwidth'] / 10 - windowBytes : Infinity;
    const linkRoom = (link.bandwidth * Math.max(0, windowEnd - clock.now())) / 1e9;
    const cap = Math.min(budget, linkRoom);
    let exhausted = true;
    if (cap > 0) {
      const bytes = send(cap);
      windowBytes += bytes;
      precopyBytes += bytes;
      engine.runGuestUntil(link.transmit(bytes, clock.now()));
      exhausted = bytes >= cap;
    }
    if (!exhausted && clock.now() < windowEnd) continue; // Round done early: sync next.
    // Rate limit: wait out the window, then update the counters as migration_update_counters.
    engine.runGuestUntil(Math.max(clock.now(), windowEnd));
    const elapsedMs = (clock.now() - windowStart) / NS_PER_MS;
    bandwidth = windowBytes / elapsedMs;
    threshold = bandwidth * params['downtime-limit'];
    mbps = (windowBytes * 8) / (elapsedMs / 1000) / 1e6;
    if (dirtyPagesRate !== 0 && windowBytes > 10_000 && bandwidth > 0)
      expectedDowntime = dirtyBytesLastSync / bandwidth;
    windowStart = clock.now();
    windowBytes = 0;
  }

  const end = clock.now();
  if (status === 'completed') {
    bitmap.cleanup();
    const activeMs = (end - setupEnd) / NS_PER_MS;
    mbps = activeMs > 0 ? (transferred * 8) / activeMs / 1000 : 0;
  }
  const info: MigrationInfo = {
    status,
    'total-time': ms(end - start),
    ...(downtime === undefined ? {} : { downtime: ms(downtime) }),
    'setup-time': ms(setupEnd - start),
    'expected-downtime': round3(expectedDowntime),
    ram: {
      transferred,
      remaining: bitmap.dirtyPages * PAGE_SIZE,
      total: bitmap.pages * PAGE_SIZE,
      duplicate,
      normal,
      'normal-bytes': normal * PAGE_SIZE,
      'dirty-sync-count': syncs,
      'dirty-pages-rate': Math.round(dirtyPagesRate),
      mbps: round3(mbps),
      'page-size': PAGE_SIZE,
      'precopy-bytes': precopyBytes,
      'downtime-bytes': downtimeBytes,
    },
    trajectory,
  };
  return { info, stopReason: status === 'completed' ? 'converged' : 'time-limit' };
}

function checkParameters(p: PrecopyParameters): PrecopyParameters {
  const fail = (field: string, what: string): never => {
    throw new DirtytrackError('invalid-argument', `migration.parameters.${field}: ${what}`, {
      component: 'precopy',
      field: `migration.parameters.${field}`,
    });
  };
  if (!(Number.isFinite(p['max-bandwidth']) && p['max-bandwidth'] >= 0))
    fail('max-bandwidth', `${p['max-bandwidth']} must be >= 0 B/s (0 = unlimited)`);
  if (!(
    Number.isFinite(p['downtime-limit']) &&
    p['downtime-limit'] >= 0 &&
    p['downtime-limit'] <= 2_000_000
  )) {
    fail('downtime-limit', `${p['downtime-limit']} must be in 0..2000000 ms`);
  }
  if (!['none', 'legacy', 'multifd'].includes(p['zero-page-detection'])) {
    fail('zero-page-detection', `${String(p['zero-page-detection'])} (accepted: none, legacy, multifd)`);
  }
  return p;
}

function ms(ns: number): number {
  return round3(ns / NS_PER_MS);
}

function round3(x: number): number {
  return Math.round(x * 1000) / 1000;
}

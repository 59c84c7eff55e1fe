import {
  Bitmap,
  DEFAULT_COST_MODEL,
  DirtytrackError,
  type Engine,
  type MigrationBitmap,
  type VcpuThrottle,
} from '@dirtytrack/core';
import {
  DEFAULT_PRECOPY_CAPABILITIES,
  DEFAULT_PRECOPY_PARAMETERS,
  runPrecopy,
  type PrecopyCapabilities,
  type PrecopyOutcome,
  type PrecopyParameters,
  type PrecopyProgress,
} from '../precopy.js';
import type { MigrationInfo, StatusEvent } from '../migration-info.js';
import { openLiveLink, WHILE_WAITING_MS, type LiveLinkStats, type VerifyResult } from './live-link.js';
import type { SendFrom } from './link-layout.js';
import { HELLO_FLAG, type GuestTraceWire, type VcpuStateMessage } from './wire.js';

const COMPONENT = 'live-migration';

export interface LiveMigrationOptions {
  /** Where `dirtytrack serve` listens. */
  host: string;
  port: number;
  /** The handshake's shared secret (mandatory for a destination off loopback). */
  token?: string;
  /** The guest's RAM (the live guest's memory): what is migrated. */
  memory: SharedArrayBuffer;
  /** The live engine over the running guest (real clock; pause stops the vCPUs). */
  engine: Engine;
  /** What auto-converge and dirty-limit slow down: usually the live engine itself. */
  throttle?: VcpuThrottle;
  /** QEMU's layers over the live tracker and reporter. */
  bitmap: MigrationBitmap;
  parameters?: Partial<PrecopyParameters>;
  capabilities?: Partial<PrecopyCapabilities>;
  /**
   * The dirty ring, if the guest's writes go through one (dirty-limit needs it). Only the thread
   * owning the rings may harvest them, and that is this one, blocked in `runPrecopy`: so
   * `whenFull` — a harvest when a vCPU's ring is (nearly) full, QEMU's reap on
   * KVM_EXIT_DIRTY_RING_FULL — is called every {@link WHILE_WAITING_MS} ms while it waits for the
   * guest or the link, and `reap` — every ring at once — once a second (QEMU's reaper thread;
   * `runPrecopy`'s `dirtyRing.reap`); `onLimit` hears dirty-limit go in and out of service.
   * Without `whenFull` a vCPU at its soft limit waits until a sync or `reap` harvests its ring.
   * `ringReaps` (ring-reaps.ts) gives all three.
   */
  dirtyRing?: {
    entries: number;
    whenFull?: () => void;
    reap?: () => void;
    onLimit?: (inService: boolean) => void;
  };
  /** Give up (status stays `active`) after this long (ns of real time). */
  timeLimitNs: number;
  /** A batch that makes no progress for this long fails the link. Default 30 s. */
  linkTimeoutMs?: number;
  /** Where the sender writes page data from (link-layout.ts, {@link SendFrom}). Default `auto`. */
  sendFrom?: SendFrom;
  /** Queue each batch behind the one still draining (live-link.ts `pipelined`). Default true. */
  pipelined?: boolean;
  /** `migrate_cancel` after this long (ns). */
  cancelAtNs?: number;
  /**
   * `migrate_cancel` once this returns true — e.g. a word of a `SharedArrayBuffer` that another
   * thread sets on Ctrl-C (this thread is blocked in the migration loop and sees no signals).
   * Asked once per round (≤ 100 ms apart while pages flow); not after a switch to postcopy.
   */
  cancelRequested?: () => boolean;
  /** `migrate-start-postcopy` after this long (ns); needs capability `postcopy-ram`. */
  startPostcopyAtNs?: number;
  /**
   * Postcopy recovery, automatic: when the link drops during postcopy both sides pause, and the
   * source tries `migrate resume=true` after each of these delays from the pause (ms). Default
   * every second for 30 s.
   */
  recoverAfterMs?: readonly number[];
  onProgress?: (progress: PrecopyProgress) => void;
  onStatus?: (event: StatusEvent) => void;
  /**
   * The stopped guest's vCPU state (`LiveGuest.progress()`), sent before completion and before a
   * postcopy switch: the destination's vCPUs can go on where these stood (its result's
   * `vcpu-state`). Omit it to send none.
   */
  vcpuState?: () => VcpuStateMessage | undefined;
  /**
   * The trace file the guest's trace program replays (and how): sent at setup (GUEST_TRACE), so
   * the destination can replay it after the switch (its result's `guest-trace`). Omit it to send none.
   */
  guestTrace?: GuestTraceWire;
}

/** A live run's result: QEMU's `query-migrate` fields plus what only a real run can say. */
export interface LiveMigrationOutcome extends Omit<PrecopyOutcome, 'info'> {
  info: MigrationInfo & {
    /** True only when the destination compared every page's hash with its copy and all matched. */
    verified: boolean;
    'verify-mismatches'?: number;
    /**
     * Milliseconds the check took after completion (ms, like `total-time`, and outside it): both
     * ends hashing every page (WebAssembly SIMD where the engine has it) and the hashes crossing.
     */
    'verify-time'?: number;
  };
  link: LiveLinkStats;
}

/**
 * Live migration of a running software guest over TCP — the same `runPrecopy` the model plane
 * runs, driven by a real clock (the live engine) and a real link (`openLiveLink`): pages go
 * straight from guest memory into the sockets in the wire format of WIRE.md. After a completed
 * run the destination compares every page's hash with its copy; `info.verified` says whether it
 * did and all matched. A failed link leaves the source guest running (status `failed`).
 *
 * `runPrecopy` is synchronous: while it runs, this thread blocks (the vCPUs and the sender run in
 * their own workers).
 */
export async function runLiveMigration(options: LiveMigrationOptions): Promise<LiveMigrationOutcome> {
  const params = { ...DEFAULT_PRECOPY_PARAMETERS, ...options.parameters };
  const caps = { ...DEFAULT_PRECOPY_CAPABILITIES, ...options.capabilities };
  if (caps['postcopy-ram'] && options.startPostcopyAtNs === undefined) {
    throw new DirtytrackError('invalid-argument', 'startPostcopyAtNs: postcopy-ram needs a time to switch', {
      component: COMPONENT,
      field: 'startPostcopyAtNs',
    });
  }
  const recoverAfterMs = options.recoverAfterMs ?? Array.from({ length: 30 }, (_, i) => 1000 * (i + 1));
  if (!recoverAfterMs.every((ms) => Number.isFinite(ms) && ms >= 0)) {
    throw new DirtytrackError('invalid-argument', 'recoverAfterMs: every delay must be a number ≥ 0', {
      component: COMPONENT,
      field: 'recoverAfterMs',
    });
  }
  if (options.engine.plane !== 'live') {
    throw new DirtytrackError(
      'invalid-argument',
      `engine: a live engine is needed, got '${options.engine.plane}'`,
      {
        component: COMPONENT,
        field: 'engine',
      },
    );
  }
  if (caps['dirty-limit'] && options.dirtyRing === undefined) {
    // QEMU refuses it at `migrate-set-capabilities`, before any connection: so do we.
    throw new DirtytrackError(
      'invalid-config',
      'migration.capabilities.dirty-limit: needs the KVM dirty ring (dirtyRing)',
      { component: COMPONENT, field: 'dirty-limit' },
    );
  }
  if (caps['zero-copy-send'] && !caps.multifd) {
    // QEMU: "Zero copy only available for non-compressed non-TLS multifd migration".
    throw new DirtytrackError('invalid-config', 'migration.capabilities.zero-copy-send: needs multifd', {
      component: COMPONENT,
      field: 'zero-copy-send',
    });
  }
  const whenFull = options.dirtyRing?.whenFull;
  const pages = options.bitmap.pages;
  if (options.memory.byteLength !== pages * 4096) {
    throw new DirtytrackError(
      'invalid-argument',
      `memory: ${options.memory.byteLength} bytes, but the bitmap covers ${pages} pages`,
      { component: COMPONENT, field: 'memory' },
    );
  }
  const live = await openLiveLink({
    host: options.host,
    port: options.port,
    memory: options.memory,
    channels: caps.multifd ? params['multifd-channels'] : 0,
    flags:
      (caps['postcopy-ram'] ? HELLO_FLAG.POSTCOPY : 0) | (caps['postcopy-preempt'] ? HELLO_FLAG.PREEMPT : 0),
    clock: options.engine.clock,
    ...(options.token === undefined ? {} : { token: options.token }),
    ...(options.linkTimeoutMs === undefined ? {} : { timeoutMs: options.linkTimeoutMs }),
    ...(options.sendFrom === undefined ? {} : { sendFrom: options.sendFrom }),
    ...(caps['zero-copy-send'] ? { zeroCopySend: true } : {}),
    ...(options.pipelined === undefined ? {} : { pipelined: options.pipelined }),
    ...(params['max-bandwidth'] > 0 ? { bandwidth: params['max-bandwidth'] } : {}),
    ...(whenFull === undefined ? {} : { whileWaiting: whenFull }),
    ...(options.vcpuState === undefined ? {} : { vcpuState: options.vcpuState }),
    ...(options.guestTrace === undefined ? {} : { guestTrace: options.guestTrace }),
  });
  let outcome: PrecopyOutcome;
  try {
    // The page sends cost real CPU here: the model's per-page price must not be added on top.
    outcome = runPrecopy({
      engine: whenFull === undefined ? options.engine : reapingWhileWaiting(options.engine, whenFull),
      bitmap: options.bitmap,
      link: live.link,
      sink: live.sink,
      dataOf: live.dataOf,
      nonzero: Bitmap.create(pages),
      parameters: params,
      capabilities: caps,
      costModel: { ...DEFAULT_COST_MODEL, pageSendCopyNs: 0, pageSendZeroCopyNs: 0 },
      timeLimitNs: options.timeLimitNs,
      switchoverShare: LIVE_SWITCHOVER_SHARE,
      ...(options.throttle === undefined ? {} : { throttle: options.throttle }),
      ...(options.dirtyRing === undefined
        ? {}
        : {
            dirtyRing: {
              entries: options.dirtyRing.entries,
              ...(options.dirtyRing.reap === undefined ? {} : { reap: options.dirtyRing.reap }),
              ...(options.dirtyRing.onLimit === undefined ? {} : { onLimit: options.dirtyRing.onLimit }),
            },
          }),
      ...(options.cancelAtNs === undefined ? {} : { cancelAtNs: options.cancelAtNs }),
      ...(options.cancelRequested === undefined ? {} : { cancelRequested: options.cancelRequested }),
      ...(caps['postcopy-ram']
        ? {
            startPostcopyAtNs: options.startPostcopyAtNs as number,
            postcopyPeer: {
              takeRequests: live.takeRequests,
              reconnect: live.reconnect,
              recoverAfterNs: recoverAfterMs.map((ms) => ms * 1e6),
            },
          }
        : {}),
      ...(options.onProgress === undefined ? {} : { onProgress: options.onProgress }),
      ...(options.onStatus === undefined ? {} : { onStatus: options.onStatus }),
    });
  } catch (error) {
    await live.close().catch(() => {});
    throw error;
  }
  let verify: VerifyResult | undefined;
  let verifyMs: number | undefined;
  if (outcome.info.status === 'completed') {
    try {
      const t0 = options.engine.clock.now();
      verify = await live.verify();
      verifyMs = Math.round((options.engine.clock.now() - t0) / 1000) / 1000;
    } catch (error) {
      await live.close().catch(() => {});
      throw error;
    }
  }
  const linkStats = live.stats();
  // Only a completed migration ends with EOF; any other drops the connections (destination: failed).
  await live.close({ abort: outcome.info.status !== 'completed' });
  const verified = verify !== undefined && verify.pages === pages && verify.mismatched === 0;
  return {
    ...outcome,
    info: {
      ...outcome.info,
      verified,
      ...(verify === undefined ? {} : { 'verify-mismatches': verify.mismatched }),
      ...(verifyMs === undefined ? {} : { 'verify-time': verifyMs }),
    },
    link: linkStats,
  };
}

/**
 * `engine` whose `runGuestUntil` waits in slices of {@link WHILE_WAITING_MS} ms and calls
 * `whenFull` after each, so the rings are harvested while the migration thread waits for the guest.
 */
function reapingWhileWaiting(engine: Engine, whenFull: () => void): Engine {
  const clock = engine.clock;
  return Object.create(engine, {
    runGuestUntil: {
      value(untilNs: number): void {
        for (;;) {
          const now = clock.now();
          engine.runGuestUntil(Math.min(untilNs, now + WHILE_WAITING_MS * 1e6));
          whenFull();
          if (!(clock.now() < untilNs)) return;
        }
      },
    },
  }) as Engine;
}

/**
 * The live run's switchover plans the final copy for half of `downtime-limit` (QEMU: all of it).
 * Measured on loopback on a shared 2-core host: with the whole limit an idle 1 GiB guest stopped
 * with up to 300 ms of pages pending and the final copy overran the limit in about one run in
 * three; at 60% a 512 MiB guest dirtying at full speed still overran it in 2 runs of 3, its final
 * copy running at 0.65 of the last window's rate (154 MB in 281 ms after a 6.8 Gbit/s window).
 * The cost is a window or two more of precopy, auto-converge throttling a little sooner.
 */
export const LIVE_SWITCHOVER_SHARE = 0.5;

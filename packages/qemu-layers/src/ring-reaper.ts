import { DirtytrackError, type ScheduledEvent, type VirtualClock } from '@dirtytrack/core';

/** The reaper thread's `sleep(1)`: QEMU reaps the dirty rings every second. */
export const RING_REAPER_INTERVAL_MS_DEFAULT = 1000;

const COMPONENT = 'ring-reaper';

/** What the reaper needs from a dirty ring: QEMU's `kvm_dirty_ring_reap` (a `RingReporter` has it). */
export interface ReapableRings {
  /** Harvests every vCPU's ring into the slot bitmaps, then `KVM_RESET_DIRTY_RINGS`. Returns the entries. */
  reap(): number;
}

export interface RingReaperOptions {
  rings: ReapableRings;
  /** Virtual time: the reaper wakes on this clock's events. */
  clock: VirtualClock;
  /** The sleep between passes, in ms. Default {@link RING_REAPER_INTERVAL_MS_DEFAULT} (QEMU's 1 s). */
  intervalMs?: number;
  /**
   * `dirtylimit_in_service()`: while it returns true the reaper wakes, reaps nothing and sleeps
   * again, so dirty-limit's own accounting (vCPUs reaping their rings on ring-full exits) is not
   * disturbed. Default: never in service.
   */
  dirtyLimitInService?: () => boolean;
  /** Called after each pass with the entries reaped and the time (ns). */
  onReap?: (entries: number, now: number) => void;
}

export interface RingReaperStats {
  /** `reaper_iteration`: passes that reaped (wake-ups skipped for dirty-limit not counted). */
  readonly iterations: number;
  /** Wake-ups skipped because dirty-limit was in service. */
  readonly skipped: number;
  /** Ring entries this reaper harvested. */
  readonly entries: number;
}

export interface RingReaper {
  /** `KVM_DIRTY_RING_REAPER_WAIT` while sleeping; `stopped` after {@link RingReaper.stop}. */
  readonly state: 'wait' | 'stopped';
  /** Virtual time (ns) of the next wake-up, or `Infinity` once stopped. */
  readonly nextWakeAt: number;
  stats(): RingReaperStats;
  /** Stops the thread (cancels the pending wake-up). */
  stop(): void;
}

/**
 * QEMU's "kvm-reaper" thread (`kvm_dirty_ring_reaper_thread`, reference/qemu.md §1.1), in virtual
 * time: from its start it loops `sleep(1 s)`; if dirty-limit is in service, sleep again; else
 * take the BQL and `kvm_dirty_ring_reap` every ring, then `reaper_iteration++`. The pass itself
 * takes no virtual time here, so wake-ups fall at exactly start + k × interval.
 *
 * The other reaps are unchanged and need no reaper: `kvm_log_sync_global` (every migration
 * sync: the ring reporter's `getDirtyLog` reaps) and `KVM_EXIT_DIRTY_RING_FULL` (the engine calls
 * `reap()` when a vCPU reaches the soft limit). All of them harvest through the same `reap`,
 * which takes each entry exactly once, so the periodic pass only moves entries earlier.
 */
export function createRingReaper(options: RingReaperOptions): RingReaper {
  const { rings, clock, dirtyLimitInService, onReap } = options;
  const intervalMs = options.intervalMs ?? RING_REAPER_INTERVAL_MS_DEFAULT;
  if (!(Number.isFinite(intervalMs) && intervalMs > 0)) {
    throw new DirtytrackError('invalid-argument', `intervalMs ${intervalMs} must be a finite number > 0`, {
      component: COMPONENT,
      field: 'intervalMs',
    });
  }
  const intervalNs = Math.round(intervalMs * 1e6);
  let iterations = 0;
  let skipped = 0;
  let entries = 0;
  let stopped = false;
  let next: ScheduledEvent | undefined;

  const wake = (now: number): void => {
    if (dirtyLimitInService?.() === true) skipped++;
    else {
      const n = rings.reap();
      entries += n;
      iterations++;
      onReap?.(n, now);
    }
    if (!stopped) next = clock.schedule(now + intervalNs, wake);
  };
  next = clock.schedule(clock.now() + intervalNs, wake);

  return {
    get state() {
      return stopped ? 'stopped' : 'wait';
    },
    get nextWakeAt() {
      return stopped || next === undefined ? Infinity : next.at;
    },
    stats() {
      return { iterations, skipped, entries };
    },
    stop() {
      if (stopped) return;
      stopped = true;
      if (next !== undefined) clock.cancel(next);
      next = undefined;
    },
  };
}

/**
 * A migration's result with QEMU's `query-migrate` names (reference/qemu.md §7), so QEMU users
 * can read it at a glance. Times are milliseconds (with microsecond decimals, where QEMU prints
 * whole milliseconds), sizes are bytes, rates as QEMU defines them.
 */
export interface MigrationInfo {
  /** `completed` once switched over; `active` if the scenario's time limit came first. */
  status: MigrationStatus;
  /** Milliseconds from the start of setup to completion (or to the time limit). */
  'total-time': number;
  /** Milliseconds the guest was stopped (completed; with postcopy, the switch's stop). */
  downtime?: number;
  /** Milliseconds spent in setup (enable logging, first sync). */
  'setup-time': number;
  /** `dirty_bytes_last_sync / bandwidth`: what the downtime would be if switching over now (ms). */
  'expected-downtime': number;
  /**
   * Auto-converge's current throttle, % (only with the capability). 0 once the migration has
   * ended, as in QEMU; each sync's value is in the trajectory.
   */
  'cpu-throttle-percentage'?: number;
  /** Dirty-limit: the largest per-vCPU sleep per ring-full exit, µs (only with the capability). */
  'dirty-limit-throttle-time-per-round'?: number;
  /** Dirty-limit: µs to fill a ring at the vCPUs' mean measured rate (only with the capability). */
  'dirty-limit-ring-full-time'?: number;
  /**
   * Postcopy: ms the destination guest spent blocked on missing pages, summed over the steps in
   * which its faults outlasted the step (all vCPUs wait in the model), and the time a paused
   * postcopy kept a faulting guest waiting until recovery. Only with postcopy-ram.
   */
  'postcopy-blocktime'?: number;
  /** Why the migration failed (only when `failed`). */
  'error-desc'?: string;
  ram: RamInfo;
  /** One entry per dirty sync, in order (`ram.dirty-sync-count` entries). */
  trajectory: TrajectoryEntry[];
}

/** QEMU's MigrationStatus values this model reaches (reference/qemu.md §7). */
export type MigrationStatus =
  | 'setup'
  | 'active'
  | 'pre-switchover'
  | 'device'
  | 'postcopy-active'
  | 'postcopy-paused'
  | 'postcopy-recover-setup'
  | 'postcopy-recover'
  | 'completed'
  | 'cancelling'
  | 'cancelled'
  | 'failed';

/** A status change (QEMU's MIGRATION event), with what a test checks at that point. */
export interface StatusEvent {
  status: MigrationStatus;
  /** Milliseconds since the start of migration. */
  time: number;
  /** `ram.remaining` at that moment (bytes). */
  remaining: number;
  /** With auto-converge: the throttle at that moment. */
  'cpu-throttle-percentage'?: number;
  /** With dirty-limit: the largest per-vCPU sleep at that moment (µs). */
  'dirty-limit-throttle-time-per-round'?: number;
}

export interface RamInfo {
  /** Bytes put on the wire, all record headers included. */
  transferred: number;
  /** Bytes still dirty (0 once completed). */
  remaining: number;
  /** Guest RAM being migrated. */
  total: number;
  /** Zero pages sent as ZERO records. */
  duplicate: number;
  /** Pages sent in full. */
  normal: number;
  'normal-bytes': number;
  /** Syncs of the dirty bitmap, setup's included. */
  'dirty-sync-count': number;
  /** Pages dirtied per second, measured over the last ≥1 s sync period. */
  'dirty-pages-rate': number;
  /** Mbit/s (decimal): the final average once completed, else the last window's. */
  mbps: number;
  'page-size': number;
  /** Bytes sent while the guest ran. */
  'precopy-bytes': number;
  /** Bytes sent while the guest was stopped. */
  'downtime-bytes': number;
  /** Bytes sent while in postcopy (postcopy-ram only). */
  'postcopy-bytes'?: number;
  /** Page requests the destination's faults made (postcopy-ram only). */
  'postcopy-requests'?: number;
  /** Bytes the multifd channels sent: handshakes, packet headers, payload, SYNC packets (multifd only). */
  'multifd-bytes'?: number;
  /** Zero-copy sends that fell back to copying (zero-copy-send only; the model never falls back). */
  'dirty-sync-missed-zero-copy'?: number;
}

export interface TrajectoryEntry {
  /** Which sync this is (1 = the setup sync). */
  sync: number;
  /** Milliseconds since the start of migration when the sync ended. */
  time: number;
  /** Bytes left to send right after this sync. */
  remaining: number;
  /** Pages this sync found newly dirty. */
  'new-dirty-pages': number;
  /** Pages per second dirtied since the previous sync. */
  'dirty-rate': number;
  /** Bytes sent so far. */
  transferred: number;
  /** Migration-thread time this sync took (ms). */
  'sync-time': number;
  /** With auto-converge: the throttle right after this sync (%). */
  'cpu-throttle-percentage'?: number;
  /** With dirty-limit: the largest per-vCPU sleep right after this sync (µs). */
  'dirty-limit-throttle-time-per-round'?: number;
}

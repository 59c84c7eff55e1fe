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
  /** Milliseconds the guest was stopped (only when completed). */
  downtime?: number;
  /** Milliseconds spent in setup (enable logging, first sync). */
  'setup-time': number;
  /** `dirty_bytes_last_sync / bandwidth`: what the downtime would be if switching over now (ms). */
  'expected-downtime': number;
  ram: RamInfo;
  /** One entry per dirty sync, in order (`ram.dirty-sync-count` entries). */
  trajectory: TrajectoryEntry[];
}

export type MigrationStatus = 'setup' | 'active' | 'completed' | 'failed' | 'cancelled';

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
}

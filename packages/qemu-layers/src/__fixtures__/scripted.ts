import type { Bitmap, DirtyLogSource, HarvestCost, LoggingControl, SyncResult } from '@dirtytrack/core';

/**
 * A dirty-log source without manual protect that reports a scripted set of pages (`next`, used
 * once: the harvest empties it, as GET_DIRTY_LOG clears what it returns) with a scripted cost.
 */
export function scripted(): DirtyLogSource & { next: number[]; cost: HarvestCost } {
  const src = {
    kind: 'scripted',
    next: [] as number[],
    cost: { xchgWords: 0, copyWords: 4, rearmedPages: 0, tlbFlushes: 0, ringEntries: 0 } as HarvestCost,
    getDirtyLog(_slot: number, out: Bitmap) {
      out.clearAll();
      for (const p of src.next) out.set(p);
      const n = src.next.length;
      src.next = [];
      return n;
    },
    lastHarvestCost: () => src.cost,
  };
  return src;
}

/** A logging switch that records which slots log. */
export function logging(): LoggingControl & { on: number[] } {
  const on: number[] = [];
  return {
    on,
    enableLogging: (s) => (on.push(s.id), s.pages),
    disableLogging: (id) => void on.splice(on.indexOf(id), 1),
  };
}

/**
 * `sync()` syncs `bitmap` and adds what it reported and what it newly set to `reported` and
 * `fresh`: a worker test's running totals, to check every page arrived exactly once.
 */
export function summingSync(bitmap: { sync(): SyncResult }): {
  sync(): void;
  readonly reported: number;
  readonly fresh: number;
} {
  let reported = 0;
  let fresh = 0;
  return {
    sync() {
      const r = bitmap.sync();
      reported += r.reported;
      fresh += r.newDirty;
    },
    get reported() {
      return reported;
    },
    get fresh() {
      return fresh;
    },
  };
}

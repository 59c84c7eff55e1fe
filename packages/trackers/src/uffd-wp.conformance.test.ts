import type { MemslotInfo, Reporter } from '@dirtytrack/core';
import { createBitmapReporter, createRingReporter } from '@dirtytrack/reporters';
import { describeTracker, type DirtyLogCase } from '@dirtytrack/testkit';
import { createUffdWpTracker } from './uffd-wp-tracker.js';

// The kernel's dirty_log_test (reference/kvm.md §8) over the uffd-wp tracker used as a plain
// dirty tracker: sync mode (faults reported by the faulting vCPU; the default uffd reader —
// on the event loop in the live engine — unprotects) with the KVM bitmap (GET, and GET + CLEAR
// with manual protect) and the dirty ring; async mode (WP_ASYNC; every harvest's syncDirtyLog
// runs a PAGEMAP_SCAN with WP_MATCHING) with the bitmap. Async + ring-only cannot work: a scan
// does not know which vCPU wrote, and the ring reporter refuses vCPU-less reports, as KVM does.

type Kind = 'bitmap' | 'clear-log' | 'ring';

function cases(mode: 'sync' | 'async', kinds: readonly Kind[]): DirtyLogCase[] {
  const make =
    (kind: Kind) =>
    ({ slot, vcpus, live }: { slot: MemslotInfo; vcpus: number; live: boolean }) => {
      const tracker = createUffdWpTracker({ mode, shared: live, slots: [slot], maxVcpus: vcpus + 1 });
      const reporter: Reporter =
        kind === 'ring'
          ? createRingReporter({ vcpus, entries: 2048, rearmer: tracker, slots: [slot] })
          : createBitmapReporter({
              rearmer: tracker,
              slots: [slot],
              shared: live,
              manualProtect: kind === 'clear-log',
            });
      return { tracker, reporter };
    };
  return kinds.map((kind) => ({
    name: `${mode}, ${kind}`,
    ...(kind === 'clear-log' ? { engines: ['model'] as const } : {}),
    setup: make(kind),
  }));
}

const conformance = { resolveFrom: import.meta.url, modelIterations: 32, liveIterations: 12, intervalMs: 5 };
describeTracker('uffd-wp, sync', () => createUffdWpTracker(), {
  dirtyLog: { ...conformance, cases: cases('sync', ['bitmap', 'clear-log', 'ring']) },
});
describeTracker('uffd-wp, async', () => createUffdWpTracker({ mode: 'async' }), {
  dirtyLog: { ...conformance, cases: cases('async', ['bitmap', 'clear-log']) },
});

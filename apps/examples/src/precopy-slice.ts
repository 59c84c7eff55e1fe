/**
 * The model-plane pipeline assembled by hand from the factories — what `dirtytrack simulate`
 * does, in code you can change. A 1 GiB guest with 2 vCPUs sweeping 256 MiB at 16 MiB/s each is
 * migrated with QEMU's precopy over a 2.5 Gbit/s link.
 *
 *   pnpm --filter @dirtytrack/examples exec tsx --conditions=@dirtytrack/source src/precopy-slice.ts
 */
import {
  createVirtualClock,
  formatSize,
  NS_PER_S,
  PAGE_SIZE,
  parseRate,
  parseSize,
  type MemslotInfo,
} from '@dirtytrack/core';
import { createModelEngine, createModelMemory, createSweepWorkload } from '@dirtytrack/guest';
import { createSimLink, runPrecopy, type PrecopyOutcome } from '@dirtytrack/migration';
import { createSingleHopSync } from '@dirtytrack/qemu-layers';
import { createBitmapReporter } from '@dirtytrack/reporters';
import { createWriteProtectTracker } from '@dirtytrack/trackers';

export function migrateSweepingGuest(downtimeLimitMs = 300): PrecopyOutcome {
  const pages = parseSize('1G') / PAGE_SIZE;
  const slot: MemslotInfo = { id: 0, asId: 0, baseGfn: 0, pages };

  // Trapping and reporting: write-protect faults feed KVM's dirty bitmap, whose harvest re-arms.
  const tracker = createWriteProtectTracker();
  const reporter = createBitmapReporter({ rearmer: tracker, slots: [slot] });
  tracker.attach(reporter);

  // The guest, in virtual time.
  const clock = createVirtualClock();
  const workload = createSweepWorkload({
    vcpus: 2,
    pages,
    bytesPerSecond: parseSize('16M'),
    workingSet: parseSize('256M') / PAGE_SIZE,
  });
  const memory = createModelMemory(pages);
  const engine = createModelEngine({ clock, workload, tracker, memory });

  // QEMU's side: dirty bits up into the migration bitmap, then precopy over the link.
  const bitmap = createSingleHopSync({ source: reporter, logging: tracker, slot });
  const link = createSimLink({ bandwidth: parseRate('2.5Gbit'), latencyNs: 100_000 });
  return runPrecopy({
    engine,
    bitmap,
    link,
    nonzero: memory.nonzero,
    parameters: { 'max-bandwidth': 0, 'downtime-limit': downtimeLimitMs },
    timeLimitNs: 600 * NS_PER_S,
  });
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const { info } = migrateSweepingGuest();
  console.log(
    `${info.status} in ${info['total-time']} ms, downtime ${info.downtime} ms, ` +
      `${formatSize(info.ram.transferred)}B sent over ${info.ram['dirty-sync-count']} syncs`,
  );
}

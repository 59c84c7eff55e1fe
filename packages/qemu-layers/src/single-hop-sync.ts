import {
  Bitmap,
  DEFAULT_COST_MODEL,
  DirtytrackError,
  popcount32,
  type CostModel,
  type DirtyLogSource,
  type LoggingControl,
  type MemslotInfo,
  type MigrationBitmap,
  type SyncResult,
} from '@dirtytrack/core';

export interface SingleHopSyncOptions {
  /** Where dirty bits come from: a reporter, later the real KVM backend. */
  source: DirtyLogSource;
  /** Turns dirty logging on and off below (the tracker). */
  logging: LoggingControl;
  /** The one slot being migrated; its pages are the RAM block's pages. */
  slot: MemslotInfo;
  /** Prices the work. Default: {@link DEFAULT_COST_MODEL}. */
  costModel?: CostModel;
}

/**
 * The thinnest honest layer stack: the KVM slot bitmap goes straight into the migration bitmap
 * in one hop (QEMU has three: slot bitmap → `ram_list.dirty_memory` → per-RAMBlock `bmap`; the
 * qemu-layers issue adds them and the faster strategies). Setup sets every bit of `bmap`
 * (reference/qemu.md §1.3) and enables logging; each sync is a `KVM_GET_DIRTY_LOG` into a scratch
 * bitmap followed by a word-wise atomic exchange into `bmap`, counting the 0→1 transitions.
 *
 * Cost of a sync = the harvest below (priced from its {@link HarvestCost}) + this hop, which scans
 * every word and exchanges the non-zero ones.
 */
export function createSingleHopSync(options: SingleHopSyncOptions): MigrationBitmap {
  const { source, logging, slot } = options;
  const costs = options.costModel ?? DEFAULT_COST_MODEL;
  const bmap = Bitmap.create(slot.pages);
  const scratch = Bitmap.create(slot.pages);
  let dirtyPages = 0;
  let active = false;

  return {
    pages: slot.pages,
    bmap,
    get dirtyPages() {
      return dirtyPages;
    },
    setup() {
      if (active) {
        throw new DirtytrackError('invalid-state', 'setup: migration bitmap already set up', {
          component: 'single-hop-sync',
        });
      }
      const armed = logging.enableLogging(slot);
      active = true;
      bmap.setAll();
      dirtyPages = slot.pages;
      return armed * costs.enableLoggingNsPerPage;
    },
    sync(): SyncResult {
      if (!active) {
        throw new DirtytrackError('invalid-state', 'sync: call setup() first', {
          component: 'single-hop-sync',
        });
      }
      const reported = source.getDirtyLog(slot.id, scratch);
      const harvest = source.lastHarvestCost();
      const hop = { words64: 0 };
      const newDirty = scratch.collectInto(bmap, 'xchg', hop);
      const hopXchg = hop.words64;
      const words = scratch.words;
      dirtyPages += newDirty;
      const costNs =
        (harvest.xchgWords + hopXchg) * costs.bitmapXchgNsPerWord +
        (harvest.copyWords + words.length / 2) * costs.bitmapCopyNsPerWord +
        harvest.rearmedPages * costs.rearmNsPerPage +
        harvest.tlbFlushes * costs.tlbFlushNs +
        harvest.ringEntries * costs.ringEntryNs;
      return { newDirty, reported, costNs };
    },
    clearSent(word, mask) {
      const w = bmap.words[word];
      if (w === undefined || (w & mask) >>> 0 !== mask >>> 0) {
        throw new DirtytrackError(
          'internal',
          `clearSent: word ${word} does not hold all of mask 0x${(mask >>> 0).toString(16)}`,
          {
            component: 'single-hop-sync',
          },
        );
      }
      bmap.words[word] = w & ~mask;
      dirtyPages -= popcount32(mask);
    },
    cleanup() {
      if (active) logging.disableLogging(slot.id);
      active = false;
    },
  };
}

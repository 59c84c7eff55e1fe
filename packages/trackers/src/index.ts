export { createWriteProtectTracker } from './write-protect-tracker.js';
export { createMmuTracker, createPmlTracker, type MmuTrackerOptions } from './mmu-trackers.js';
export {
  createUffdWpTracker,
  attachUffdWpTracker,
  UFFD_API,
  UFFD_FEATURE,
  UFFDIO,
  PAGEMAP_SCAN,
  UFFDIO_REGISTER_MODE,
  UFFDIO_WRITEPROTECT_MODE,
  UFFD_EVENT_PAGEFAULT,
  UFFD_PAGEFAULT_FLAG,
  UFFD_MSG_BYTES,
  PAGE_IS,
  PM_SCAN,
  type UffdWpTracker,
  type UffdWpTrackerOptions,
  type UffdWpStats,
  type UffdWpDescriptor,
  type UffdFaultHandler,
  type PagemapScanRequest,
  type PagemapScanResult,
} from './uffd-wp-tracker.js';
export {
  createBackgroundSnapshot,
  type BackgroundSnapshot,
  type BackgroundSnapshotOptions,
  type BackgroundSnapshotStats,
} from './background-snapshot.js';

export {
  createBitmapReporter,
  type BitmapReporter,
  type BitmapReporterOptions,
  type BitmapUpdates,
  type ManualProtectBitmapReporter,
} from './bitmap-reporter.js';
export {
  createRingReporter,
  ringBufferBytes,
  RING_LAYOUT,
  KVM_DIRTY_GFN_BYTES,
  KVM_DIRTY_GFN_F_DIRTY,
  KVM_DIRTY_GFN_F_RESET,
  KVM_DIRTY_RING_RSVD_ENTRIES,
  KVM_DIRTY_RING_MAX_ENTRIES,
  KVM_DIRTY_RING_MIN_BYTES,
  KVM_PML_ENTRIES,
  RING_MAX_VCPUS,
  type RingReporter,
  type RingReporterOptions,
  type RingReporterStats,
} from './ring-reporter.js';

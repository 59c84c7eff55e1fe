export {
  adviseHugePages,
  allocateGuestRam,
  anonHugePagesKiB,
  createHugePageAllocator,
  defaultBitmapAllocator,
  type BitmapAllocator,
  type GuestRam,
  type HugePageAllocatorOptions,
} from './huge-pages.js';
export { createSingleHopSync, type SingleHopSyncOptions } from './single-hop-sync.js';
export {
  createBitmapKernels,
  createJsBitmapKernels,
  supportsWasmSimd,
  type BitmapKernels,
  type BitmapKernelsOptions,
  type KernelMemory,
} from './kernels/bitmap-kernels.js';
export { BITMAP_KERNELS_WASM_BASE64 } from './kernels/bitmap-kernels.wasm.js';
export {
  createWasmBitmapAllocator,
  PARALLEL_MERGE_DEFAULT,
  type ParallelMerge,
  type WasmBitmapAllocatorOptions,
} from './kernels/wasm-allocator.js';
export {
  createRamListDirtyMemory,
  DIRTY_MEMORY_BLOCK_SIZE,
  DIRTY_MEMORY_CODE,
  DIRTY_MEMORY_MIGRATION,
  DIRTY_MEMORY_NUM,
  DIRTY_MEMORY_VGA,
  type DirtyMemoryClient,
  type RamListDirtyMemory,
} from './dirty-memory.js';
export {
  createQemuLayers,
  CLEAR_BITMAP_SHIFT_DEFAULT,
  CLEAR_BITMAP_SHIFT_MAX,
  CLEAR_BITMAP_SHIFT_MIN,
  SYNC_STRATEGIES,
  type QemuLayers,
  type QemuLayersOptions,
  type QemuLayersStats,
  type SyncStrategy,
} from './qemu-layers.js';
export {
  attachSwapDirtyLog,
  createDirtyLogBuffer,
  createSwapDirtyLog,
  isSwappableDirtyLog,
  zeroBuffer,
  type DirtyLogBuffer,
  type SwapDirtyLog,
  type SwapDirtyLogOptions,
  type SwapDirtyLogShareData,
  type SwappableDirtyLog,
} from './swap-dirty-log.js';
export {
  createRingReaper,
  RING_REAPER_INTERVAL_MS_DEFAULT,
  type ReapableRings,
  type RingReaper,
  type RingReaperOptions,
  type RingReaperStats,
} from './ring-reaper.js';
export { createReceivedMap, type ReceivedMap, type ReceivedMapOptions } from './received-map.js';
export {
  attachVhostLog,
  createVhostLog,
  VHOST_LOG_CHUNK,
  VHOST_LOG_PAGE,
  type VhostLog,
  type VhostLogOptions,
} from './vhost-log.js';
export {
  createVfioTracker,
  VFIO_MAX_RANGES,
  type VfioRange,
  type VfioRangeLog,
  type VfioTracker,
  type VfioTrackerOptions,
} from './vfio-tracker.js';
export {
  checkDirtyRateArgs,
  createDirtyRateMeter,
  createVersionedMemory,
  pagesDirtyRate,
  samplingDirtyRate,
  DIRTY_RING_PUSHED_LAYOUT,
  DIRTYRATE_DEFAULT_SAMPLE_PAGES,
  DIRTYRATE_MAX_CALC_TIME_MS,
  DIRTYRATE_MAX_SAMPLE_PAGES,
  DIRTYRATE_MIN_CALC_TIME_MS,
  DIRTYRATE_MIN_RAMBLOCK_BYTES,
  DIRTYRATE_MIN_SAMPLE_PAGES,
  type DirtyRateArgs,
  type DirtyRateCalcOptions,
  type DirtyRateCounters,
  type DirtyRateInfo,
  type DirtyRateKvm,
  type DirtyRateMeasureMode,
  type DirtyRateMeter,
  type DirtyRateMeterOptions,
  type DirtyRateResult,
  type DirtyRateStatus,
  type DirtyRateTimeUnit,
  type DirtyRateVcpu,
  type DirtyRingView,
  type PageContent,
  type SampledBlock,
  type VersionedMemory,
} from './dirty-rate.js';

export { Bitmap, popcount32, ctz32 } from './bitmap.js';
export {
  createVirtualClock,
  createRealClock,
  NS_PER_MS,
  NS_PER_S,
  type Clock,
  type VirtualClock,
  type ScheduledEvent,
} from './clock.js';
export { isBoundedDirtySink } from './contracts.js';
export type {
  BoundedDirtySink,
  MemslotInfo,
  DirtySink,
  Rearmer,
  DirtyLogSource,
  HarvestCost,
  Reporter,
  LoggingControl,
  SyncResult,
  MigrationBitmap,
  Tracker,
  TrackerStats,
  TouchedWords,
  WriteBatch,
  Workload,
  Transport,
  Engine,
  VcpuThrottle,
  AttachSpec,
  VcpuTracker,
  SharedTracker,
  SharedReporter,
} from './contracts.js';
export { createCostModel, DEFAULT_COST_MODEL, type CostModel } from './cost-model.js';
export {
  DirtytrackError,
  isDirtytrackError,
  type DirtytrackErrorCode,
  type DirtytrackErrorOptions,
} from './errors.js';
export { createRng, type Rng } from './rng.js';
export { createRWLock, attachRWLock, RWLOCK_BYTES, type RWLock } from './rwlock.js';
export { parseSize, formatSize, parseRate, PAGE_SIZE, PAGE_SHIFT } from './units.js';

export { createSimLink, type SimLinkOptions } from './sim-link.js';
export {
  runPrecopy,
  DEFAULT_PRECOPY_PARAMETERS,
  DEFAULT_PRECOPY_CAPABILITIES,
  RATE_LIMIT_WINDOW_NS,
  type PrecopyCapabilities,
  type PrecopyOptions,
  type PageSink,
  type PrecopyOutcome,
  type PrecopyParameters,
  type PrecopyProgress,
  type PrecopyStats,
} from './precopy.js';
export {
  createThrottleTrigger,
  nextThrottle,
  DEFAULT_AUTO_CONVERGE_PARAMETERS,
  type AutoConvergeParameters,
  type TriggerPeriod,
} from './auto-converge.js';
export {
  createDirtyLimiter,
  DEFAULT_DIRTY_LIMIT_PARAMETERS,
  DIRTYLIMIT_TOLERANCE,
  type DirtyLimiter,
  type DirtyLimitParameters,
} from './dirty-limit.js';
export {
  MULTIFD_PACKET_PAGES,
  MULTIFD_PACKET_HEADER,
  MULTIFD_INIT_BYTES,
  MULTIFD_FLUSH_RECORD,
} from './multifd.js';
export type {
  MigrationInfo,
  MigrationStatus,
  RamInfo,
  StatusEvent,
  TrajectoryEntry,
} from './migration-info.js';
export { runLiveMigration, type LiveMigrationOptions, type LiveMigrationOutcome } from './live/run-live.js';
export {
  openLiveLink,
  type LiveLink,
  type LiveLinkOptions,
  type LiveLinkStats,
  type VerifyResult as LiveVerifyResult,
} from './live/live-link.js';
export {
  createDestination,
  type Destination,
  type DestinationOptions,
  type DestinationResult,
} from './live/destination.js';

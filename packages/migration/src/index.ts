export { createSimLink, type SimLinkOptions } from './sim-link.js';
export {
  runPrecopy,
  DEFAULT_PRECOPY_PARAMETERS,
  RATE_LIMIT_WINDOW_NS,
  type PrecopyOptions,
  type PrecopyOutcome,
  type PrecopyParameters,
  type PrecopyProgress,
} from './precopy.js';
export type { MigrationInfo, MigrationStatus, RamInfo, TrajectoryEntry } from './migration-info.js';

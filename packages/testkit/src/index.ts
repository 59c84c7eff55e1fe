export {
  describeTracker,
  dirtyLogSeed,
  type DescribeTrackerOptions,
  type DirtyLogCase,
  type DirtyLogConformance,
} from './describe-tracker.js';
export { describeReporter } from './describe-reporter.js';
export {
  describeDirtyLogSource,
  kvmClearErrno,
  type DescribeDirtyLogSourceOptions,
  type ManualDirtyLogSource,
} from './describe-dirty-log-source.js';
export { assertProperty, propertyRuns, replaySeed } from './runs.js';
export { expectDirtytrackError } from './expect-error.js';
export { blockUntil, exitCodes, exited, sleepSync, startWorker, terminateAll, waitUntil } from './workers.js';

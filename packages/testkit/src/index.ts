export { describeTracker } from './describe-tracker.js';
export { describeReporter } from './describe-reporter.js';
export { propertyRuns } from './runs.js';

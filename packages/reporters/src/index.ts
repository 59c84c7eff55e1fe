export { createBitmapReporter, type BitmapReporterOptions } from './bitmap-reporter.js';

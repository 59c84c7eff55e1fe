export { createWriteProtectTracker } from './write-protect-tracker.js';

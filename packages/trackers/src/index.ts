export { createWriteProtectTracker } from './write-protect-tracker.js';
export { createMmuTracker, createPmlTracker, type MmuTrackerOptions } from './mmu-trackers.js';

export { migrateSweepingGuest } from './precopy-slice.js';
export { migratePmlRingFused, type PmlRingFusedRun } from './pml-ring-fused.js';

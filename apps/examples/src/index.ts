export { migrateSweepingGuest } from './precopy-slice.js';

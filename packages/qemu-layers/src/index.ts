export { createSingleHopSync, type SingleHopSyncOptions } from './single-hop-sync.js';

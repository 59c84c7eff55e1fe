import { describe, expect, it } from 'vitest';
import { migrateSweepingGuest } from './precopy-slice.js';

describe('example: precopy slice', () => {
  it('completes within its downtime limit, and a tighter limit needs at least as many syncs', () => {
    const loose = migrateSweepingGuest(300).info;
    const tight = migrateSweepingGuest(20).info;
    expect(loose.status).toBe('completed');
    expect(loose.ram.total).toBe(2 ** 30);
    expect(loose.ram.remaining).toBe(0);
    expect(loose.downtime).toBeLessThanOrEqual(300);
    expect(tight.ram['dirty-sync-count']).toBeGreaterThanOrEqual(loose.ram['dirty-sync-count']);
    // Same inputs, same virtual time: the model is deterministic.
    expect(migrateSweepingGuest(300).info).toEqual(loose);
  });
});

import { describe, expect, it } from 'vitest';
import { migratePmlRingFused } from './pml-ring-fused.js';

describe('example: PML tracker → dirty rings → fused layers → multifd precopy', () => {
  it('completes within its downtime limit; PML exits about once per 512 logged pages; deterministic', () => {
    const run = migratePmlRingFused();
    const { info } = run.outcome;
    expect(info.status).toBe('completed');
    expect(info.ram.total).toBe(2 ** 31);
    expect(info.ram.remaining).toBe(0);
    expect(info.downtime).toBeLessThanOrEqual(300);
    expect(info.ram['multifd-bytes']).toBeGreaterThan(0);
    // A PML-full exit comes once a vCPU's 512-entry log fills; kicks (ring reaps) drain it earlier.
    expect(run.pmlLogged).toBeGreaterThan(0);
    expect(run.pmlFullExits).toBeGreaterThan(0);
    expect(run.pmlFullExits).toBeLessThanOrEqual(Math.ceil(run.pmlLogged / 512));
    expect(migratePmlRingFused()).toEqual(run);
  });
});

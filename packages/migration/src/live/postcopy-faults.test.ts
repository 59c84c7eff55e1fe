import { isDirtytrackError } from '@dirtytrack/core';
import { describe, expect, it } from 'vitest';
import { createPostcopyFaults } from './postcopy-faults.js';

const thrown = (f: () => void): unknown => {
  try {
    f();
  } catch (error) {
    return error;
  }
  throw new Error('did not throw');
};

describe('postcopy faults: the guest’s vCPU count', () => {
  it('setVcpus re-sizes the blocktime counters before any vCPU attached, and refuses after', () => {
    const faults = createPostcopyFaults(new SharedArrayBuffer(64 * 4096), 2);
    expect(faults.data.vcpus).toBe(2);
    expect(faults.data.blocktime.byteLength).toBe((2 + 2) * 8);
    faults.setVcpus(5);
    expect(faults.data.vcpus).toBe(5);
    expect(faults.data.blocktime.byteLength).toBe((5 + 2) * 8);
    expect(faults.blocktime()).toEqual({
      'postcopy-blocktime': 0,
      'postcopy-vcpu-blocktime': [0, 0, 0, 0, 0],
    });
    // What a vCPU's worker gets: the re-sized counters.
    const spec = faults.tracker.share() as { data: { vcpus: number; blocktime: SharedArrayBuffer } };
    expect(spec.data.vcpus).toBe(5);
    expect(spec.data.blocktime).toBe(faults.data.blocktime);
    const late = thrown(() => faults.setVcpus(3));
    expect(isDirtytrackError(late, 'invalid-state')).toBe(true);
    expect((late as Error).message).toContain('vCPUs already attached with 5');
    expect(faults.data.vcpus).toBe(5);
  });

  it.each([0, 1.5, 4096])('setVcpus(%s) is refused (1..4095), the count unchanged', (n) => {
    const faults = createPostcopyFaults(new SharedArrayBuffer(4096), 2);
    expect(
      isDirtytrackError(
        thrown(() => faults.setVcpus(n)),
        'invalid-argument',
      ),
    ).toBe(true);
    expect(faults.data.vcpus).toBe(2);
  });
});

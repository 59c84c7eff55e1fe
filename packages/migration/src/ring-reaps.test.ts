import { describe, expect, it } from 'vitest';
import { RING_FULL_SHARE, ringReaps } from './ring-reaps.js';

/** Two rings with a 64-entry soft limit whose fill levels the test sets; reaps are logged. */
function rings() {
  const used = [0, 0];
  const reaps: (number | 'all')[] = [];
  return {
    used,
    reaps,
    ring: {
      vcpus: 2,
      softLimit: 64,
      used: (v: number) => used[v] as number,
      reap: (v?: number) => {
        reaps.push(v ?? 'all');
        if (v === undefined) used.fill(0);
        else used[v] = 0;
        return 0;
      },
    },
  };
}

describe('ringReaps (QEMU reaps the dirty rings)', () => {
  it('a ring-full exit reaps every ring, or only its own while dirty-limit is in service', () => {
    const { ring, reaps } = rings();
    const r = ringReaps(ring);
    r.onFull(1);
    r.onLimit(true);
    r.onFull(1);
    r.onFull(0);
    r.onLimit(false);
    r.onFull(0);
    r.reap();
    expect(reaps).toEqual(['all', 1, 0, 'all', 'all']);
  });

  it(`polled, it reaps once a ring holds ${RING_FULL_SHARE} of its soft limit: all at once, or each full ring alone while limited`, () => {
    const { ring, reaps, used } = rings();
    const r = ringReaps(ring);
    used[0] = 55; // floor(64 × 7/8) = 56: not yet
    r.whenFull();
    expect(reaps).toEqual([]);
    used[1] = 56;
    r.whenFull();
    expect(reaps).toEqual(['all']);
    expect(used).toEqual([0, 0]);
    r.onLimit(true);
    used[0] = 60;
    used[1] = 64;
    r.whenFull();
    expect(reaps).toEqual(['all', 0, 1]);
    used[1] = 57;
    r.whenFull();
    expect(reaps).toEqual(['all', 0, 1, 1]);
  });
});

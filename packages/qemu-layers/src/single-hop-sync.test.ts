import { createCostModel } from '@dirtytrack/core';
import { describe, expect, it } from 'vitest';
import { logging, scripted } from './__fixtures__/scripted.js';
import { createSingleHopSync } from './single-hop-sync.js';

const slot = { id: 0, asId: 0, baseGfn: 0, pages: 256 };

describe('single-hop sync', () => {
  const costModel = createCostModel({
    bitmapXchgNsPerWord: 10,
    bitmapCopyNsPerWord: 1,
    rearmNsPerPage: 100,
    tlbFlushNs: 1000,
    enableLoggingNsPerPage: 2,
  });

  it('setup enables logging and sets every bit; sync counts only 0→1 transitions', () => {
    const source = scripted();
    const ctl = logging();
    const m = createSingleHopSync({ source, logging: ctl, slot, costModel });
    expect(() => m.sync()).toThrow(/setup\(\) first/);
    expect(m.setup()).toBe(512); // 256 pages × 2 ns
    expect(ctl.on).toEqual([0]);
    expect(m.dirtyPages).toBe(256);
    expect(m.bmap.popcount()).toBe(256);
    // Send pages 0..31 and 64: clear them.
    m.clearSent(0, 0xffffffff);
    m.clearSent(2, 1);
    expect(m.dirtyPages).toBe(223);
    source.next = [3, 64, 65, 200];
    source.cost = { xchgWords: 3, copyWords: 4, rearmedPages: 4, tlbFlushes: 1, ringEntries: 0 };
    const r = m.sync();
    // 3 and 64 were sent (clean) → new; 65 and 200 still dirty → not new.
    expect(r).toEqual({
      newDirty: 2,
      reported: 4,
      // harvest: 3 xchg·10 + 4 copy·1 + 4 rearm·100 + 1 flush·1000; hop: 3 non-zero words·10 + 4 words·1
      costNs: 30 + 4 + 400 + 1000 + 30 + 4,
    });
    expect(m.dirtyPages).toBe(225);
    expect(m.dirtyPages).toBe(m.bmap.popcount());
    m.cleanup();
    expect(ctl.on).toEqual([]);
  });

  it('refuses to clear bits that are not set (a send of a clean page is a bug)', () => {
    const m = createSingleHopSync({ source: scripted(), logging: logging(), slot, costModel });
    m.setup();
    m.clearSent(1, 0b1);
    expect(() => m.clearSent(1, 0b11)).toThrow(/does not hold all of mask/);
    expect(() => m.setup()).toThrow(/already set up/);
  });
});

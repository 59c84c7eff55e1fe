import { Bitmap, type MemslotInfo, type Rearmer, type Reporter } from '@dirtytrack/core';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { assertProperty } from './runs.js';

/**
 * The reporter conformance suite: pages marked dirty come back from the next `getDirtyLog`
 * exactly once (the union of everything marked since the previous harvest), exactly those pages
 * are re-armed, and a harvest with nothing dirty re-arms nothing. (The ring reporter's ordering
 * and soft-limit rules join with the reporters issue.)
 */
export function describeReporter(
  name: string,
  create: (rearmer: Rearmer, slot: MemslotInfo) => Reporter,
): void {
  describe(`reporter conformance: ${name}`, () => {
    it('returns exactly the pages marked since the previous harvest and re-arms exactly them', async () => {
      await assertProperty(
        fc.property(
          fc.integer({ min: 1, max: 500 }),
          fc.array(fc.oneof(fc.array(fc.nat(), { maxLength: 50 }), fc.constant(null)), { maxLength: 40 }),
          (pages, ops) => {
            const slot: MemslotInfo = { id: 2, asId: 0, baseGfn: 0x1000, pages };
            const rearmed: number[][] = [];
            const reporter = create(
              { rearm: (_s, mask) => (rearmed.push([...mask.setBits()]), mask.popcount()) },
              slot,
            );
            const out = Bitmap.create(pages);
            let expected = new Set<number>();
            const harvest = (): void => {
              const n = reporter.getDirtyLog(2, out);
              const want = [...expected].sort((a, b) => a - b);
              expect([...out.setBits()]).toEqual(want);
              expect(n).toBe(want.length);
              if (want.length > 0) expect(rearmed.pop()).toEqual(want);
              expect(rearmed).toEqual([]);
              expected = new Set();
            };
            for (const op of ops) {
              if (op === null) {
                harvest();
                continue;
              }
              const offsets = Uint32Array.from(op, (p) => p % pages);
              reporter.markDirty(2, offsets, offsets.length, 0);
              for (const p of offsets) expected.add(p);
            }
            harvest();
          },
        ),
        200,
      );
    });
  });
}

import { Bitmap, type DirtySink, type MemslotInfo, type Tracker } from '@dirtytrack/core';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { propertyRuns } from './runs.js';

/**
 * The tracker conformance suite: ARCHITECTURE §8 invariant 1 at the tracker level. Random
 * interleavings of writes and harvests (a harvest re-arms exactly the pages reported since the
 * previous one, as `KVM_GET_DIRTY_LOG` does) must report every page written since the previous
 * harvest — the kernel's `dirty_log_test` rule. Every tracker's test file calls it.
 */
export function describeTracker(name: string, create: () => Tracker): void {
  describe(`tracker conformance: ${name}`, () => {
    it('reports every page written since the previous harvest (no page lost)', () => {
      fc.assert(
        fc.property(
          fc.integer({ min: 1, max: 300 }),
          fc.array(
            fc.oneof(
              fc.record({
                op: fc.constant('write' as const),
                vcpu: fc.nat(7),
                pages: fc.array(fc.nat(), { maxLength: 40 }),
              }),
              fc.record({ op: fc.constant('harvest' as const) }),
            ),
            { maxLength: 60 },
          ),
          (pages, ops) => {
            const slot: MemslotInfo = { id: 0, asId: 0, baseGfn: 0, pages };
            const tracker = create();
            const reported = Bitmap.create(pages);
            const sink: DirtySink = {
              markDirty(s, offsets, count) {
                expect(s).toBe(0);
                for (let i = 0; i < count; i++) reported.set(offsets[i] as number);
              },
            };
            tracker.attach(sink);
            tracker.enableLogging(slot);
            let written = new Set<number>();
            const harvest = (): void => {
              tracker.syncDirtyLog?.(0); // As GET_DIRTY_LOG does: kick vCPUs so PML buffers drain.
              for (const p of written) {
                if (!reported.test(p)) throw new Error(`page ${p} was written but not reported`);
              }
              // Hand the reported pages to "userspace" and re-arm exactly them.
              const mask = reported.clone();
              reported.clearAll();
              tracker.rearm(0, mask);
              written = new Set();
            };
            for (const o of ops) {
              if (o.op === 'harvest') {
                harvest();
                continue;
              }
              const offsets = Uint32Array.from(o.pages, (p) => p % pages);
              tracker.write(o.vcpu, 0, offsets, offsets.length);
              for (const p of offsets) written.add(p);
            }
            harvest();
          },
        ),
        { numRuns: propertyRuns(200) },
      );
    });

    it('reports nothing for a slot that does not log', () => {
      const tracker = create();
      const seen: number[] = [];
      tracker.attach({ markDirty: (_s, o, n) => seen.push(...o.subarray(0, n)) });
      tracker.write(0, 0, Uint32Array.of(1, 2, 3), 3);
      tracker.enableLogging({ id: 0, asId: 0, baseGfn: 0, pages: 8 });
      tracker.disableLogging(0);
      tracker.write(0, 0, Uint32Array.of(1, 2, 3), 3);
      expect(seen).toEqual([]);
    });
  });
}

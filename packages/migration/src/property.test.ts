import { type MigrationBitmap, type Workload } from '@dirtytrack/core';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { migrate, reportingSends, reportingWrites } from './__fixtures__/harness.js';
import { assertProperty } from '@dirtytrack/testkit';

/** fast-check prints this seed (and the failing case) when the property fails; override to replay. */
const PROPERTY_SEED = Number(process.env['DIRTYTRACK_PROPERTY_SEED'] ?? 20261126);
const RUNS = 25; // DIRTYTRACK_PROPERTY_RUNS for more

/**
 * Watches one migration: the order of the guest's writes and the sends. `check()` fails unless
 * every page was sent after its last write.
 */
function watchSends(pages: number) {
  const lastWrite = new Float64Array(pages).fill(-1);
  const lastSend = new Float64Array(pages).fill(-1);
  let seq = 0;
  const wrapWorkload = (w: Workload): Workload =>
    reportingWrites(w, (page) => {
      lastWrite[page] = seq++;
    });
  const wrapBitmap = (m: MigrationBitmap): MigrationBitmap =>
    reportingSends(m, (page) => {
      lastSend[page] = seq++;
    });
  const check = (): void => {
    for (let p = 0; p < pages; p++) {
      if (lastSend[p] === -1) throw new Error(`page ${p} was never sent`);
      if ((lastSend[p] as number) < (lastWrite[p] as number))
        throw new Error(`page ${p} written after its last send`);
    }
  };
  return { wrapWorkload, wrapBitmap, check };
}

/** The guest and link of one migration, for both properties. */
const guestArbs = {
  seed: fc.nat(),
  kind: fc.constantFrom('uniform' as const, 'sweep' as const, 'hotset' as const),
  vcpus: fc.integer({ min: 1, max: 4 }),
  pages: fc.integer({ min: 256, max: 8192 }),
  rateMiB: fc.integer({ min: 0, max: 64 }),
  bandwidthMB: fc.integer({ min: 5, max: 200 }),
};

type GuestCase = {
  [K in keyof typeof guestArbs]: (typeof guestArbs)[K] extends fc.Arbitrary<infer T> ? T : never;
};

/** `migrate`'s options for a generated guest, watched by `watch`. */
function guestSetup(c: GuestCase, watch: ReturnType<typeof watchSends>) {
  return {
    pages: c.pages,
    vcpus: c.vcpus,
    kind: c.kind,
    seed: c.seed,
    rate: c.rateMiB * 2 ** 20,
    bandwidth: c.bandwidthMB * 1e6,
    timeLimitS: 60,
    wrapWorkload: watch.wrapWorkload,
    wrapBitmap: watch.wrapBitmap,
  };
}

describe('no page is lost with dirty rings, dirty-limit and auto-converge (model plane)', () => {
  it('every page is sent after its last write when the migration completes', async () => {
    await assertProperty(
      fc.property(
        fc.record({
          ...guestArbs,
          ring: fc.constantFrom(256, 512, 1024),
          control: fc.constantFrom('none', 'dirty-limit', 'auto-converge'),
          quota: fc.integer({ min: 1, max: 100 }),
          multifd: fc.boolean(),
        }),
        (c) => {
          const watch = watchSends(c.pages);
          const { info } = migrate({
            ...guestSetup(c, watch),
            ring: c.ring,
            precopy: {
              capabilities: {
                'dirty-limit': c.control === 'dirty-limit',
                'auto-converge': c.control === 'auto-converge',
                multifd: c.multifd,
              },
              parameters: { 'vcpu-dirty-limit': c.quota },
            },
          });
          if (info.status !== 'completed') return; // non-convergence is allowed; loss is not
          watch.check();
          expect(info.ram.remaining).toBe(0);
        },
      ),
      RUNS,
      { seed: PROPERTY_SEED },
    );
  });

  it("the same with QEMU's layers 'fused' adopting the harvested buffer as bmap after each round", async () => {
    let adoptions = 0;
    await assertProperty(
      fc.property(
        fc.record({
          ...guestArbs,
          autoConverge: fc.boolean(),
          multifd: fc.boolean(),
        }),
        (c) => {
          const watch = watchSends(c.pages);
          const { info, adoptions: adopted } = migrate({
            ...guestSetup(c, watch),
            layers: 'fused-adopt',
            precopy: { capabilities: { 'auto-converge': c.autoConverge, multifd: c.multifd } },
          });
          adoptions += adopted();
          if (info.status !== 'completed') return;
          watch.check();
          expect(info.ram.remaining).toBe(0);
        },
      ),
      RUNS,
      { seed: PROPERTY_SEED },
    );
    expect(adoptions).toBeGreaterThan(0);
  });
});

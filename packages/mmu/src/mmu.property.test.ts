import { Bitmap } from '@dirtytrack/core';
import { createBitmapReporter, type BitmapReporter } from '@dirtytrack/reporters';
import { assertProperty } from '@dirtytrack/testkit';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  createMmu,
  describeSpte,
  LEVEL_4K,
  LOGGING_MODES,
  SPTE_FROZEN,
  SPTE_HOST_WRITABLE,
  SPTE_HUGE,
  SPTE_MMU_WRITABLE,
  SPTE_PRESENT,
  SPTE_TABLE,
  SPTE_WRITABLE,
  type BackingPageSize,
  type LoggingMode,
} from './index.js';

type Op =
  { op: 'write'; vcpu: number; pages: number[] } | { op: 'harvest' } | { op: 'toggle' } | { op: 'flush' };

// Mostly a small hot set, so pages are re-written across harvests (and TLB entries reused).
const page = fc.oneof({ weight: 3, arbitrary: fc.nat(7) }, { weight: 1, arbitrary: fc.nat() });

const op: fc.Arbitrary<Op> = fc.oneof(
  {
    weight: 6,
    arbitrary: fc.record({
      op: fc.constant('write' as const),
      vcpu: fc.nat(3),
      pages: fc.array(page, { maxLength: 24 }),
    }),
  },
  { weight: 3, arbitrary: fc.record({ op: fc.constant('harvest' as const) }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('toggle' as const) }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('flush' as const) }) },
);

/** Page counts: one 2M region, an unaligned few, and a slot spanning several 1G pages. */
const layouts: fc.Arbitrary<{ backing: BackingPageSize; pages: number; gpaPages: number }> = fc.oneof(
  fc.record({
    backing: fc.constant('4K' as const),
    pages: fc.integer({ min: 1, max: 1500 }),
    gpaPages: fc.nat(600),
  }),
  fc.record({
    backing: fc.constant('2M' as const),
    pages: fc.integer({ min: 1, max: 2600 }),
    gpaPages: fc.constantFrom(0, 64, 512, 700),
  }),
  fc.record({
    backing: fc.constant('1G' as const),
    pages: fc.constantFrom(262_144, 2 * 262_144, 262_144 + 512),
    gpaPages: fc.constantFrom(0, 512, 262_144),
  }),
);

/** The SPTE invariants any reachable entry keeps, and logging's granularity rule (kvm.md §10.10). */
function checkSpte(spte: number, level: number, loggingStrict: boolean, where: string): void {
  const bad = (why: string) => new Error(`${where}: SPTE ${describeSpte(spte)} at level ${level}: ${why}`);
  if (spte === SPTE_FROZEN) throw bad('left frozen');
  if ((spte & SPTE_TABLE) !== 0) throw bad('a walk stopped at a table');
  if (spte === 0) return;
  if ((spte & SPTE_PRESENT) === 0) throw bad('not present but not empty');
  if ((spte & SPTE_WRITABLE) !== 0 && (spte & SPTE_MMU_WRITABLE) === 0) throw bad('W without MMU-writable');
  if ((spte & SPTE_MMU_WRITABLE) !== 0 && (spte & SPTE_HOST_WRITABLE) === 0)
    throw bad('MMU-W without host-W');
  if (((spte & SPTE_HUGE) !== 0) !== level > LEVEL_4K) throw bad('huge bit disagrees with the level');
  if (loggingStrict && level > LEVEL_4K && (spte & SPTE_WRITABLE) !== 0)
    throw bad('writable huge page while logging');
}

describe('MMU properties: random writes, harvests, logging toggles and flushes', () => {
  for (const mode of LOGGING_MODES) {
    it(`${mode}: every page written while logging is in the next harvest, and the SPTEs stay well-formed`, async () => {
      await assertProperty(
        fc.property(layouts, fc.array(op, { maxLength: 40 }), ({ backing, pages, gpaPages }, ops) =>
          runCase(mode, backing, pages, gpaPages, ops),
        ),
        mode === 'write-protect' ? 150 : 50,
      );
    });
  }
});

function runCase(
  mode: LoggingMode,
  backing: BackingPageSize,
  pages: number,
  gpaPages: number,
  ops: Op[],
  skipTlbFlush = false,
): void {
  const lazy = mode === 'lazy';
  const mmu = createMmu({ vcpus: 4, logging: mode, tlbEntries: 16, skipTlbFlush });
  const gpa = (backing === '1G' ? Math.ceil(gpaPages / 262_144) * 262_144 : gpaPages) * 4096;
  mmu.setUserMemoryRegion({
    slot: 0,
    guestPhysAddr: gpa,
    memorySize: pages * 4096,
    userspaceAddr: 0,
    backing,
  });
  mmu.populate(0);
  const info = { id: 0, asId: 0, baseGfn: gpa / 4096, pages };
  let reporter: BitmapReporter | undefined;
  let written = new Set<number>();
  const log = Bitmap.create(pages);

  const enable = () => {
    // KVM allocates a fresh bitmap each time logging turns on (all set with INITIALLY_SET).
    reporter = createBitmapReporter({ rearmer: mmu, slots: [info], manualProtect: lazy, initiallySet: lazy });
    mmu.attach(reporter);
    mmu.enableLogging(info);
    written = new Set();
  };
  const harvest = () => {
    if (reporter === undefined) return;
    reporter.getDirtyLog(0, log);
    for (const p of written) {
      if (!log.test(p)) throw new Error(`page ${p} was written while logging but is not in the harvest`);
    }
    if (lazy) reporter.clearDirtyLog?.(0, 0, pages, log);
    written = new Set();
  };
  const check = (touched: Iterable<number>) => {
    const strict = reporter !== undefined && !lazy;
    const probe = new Set(touched);
    for (let p = 0; p < pages; p += 509) probe.add(p); // Every 2M region, and then some.
    probe.add(pages - 1);
    for (const p of probe) {
      const { spte, level } = mmu.inspect(0, p);
      checkSpte(spte, level, strict, `page ${p}`);
    }
  };

  enable();
  const touched = new Set<number>();
  for (const o of ops) {
    if (o.op === 'write') {
      const offsets = Uint32Array.from(o.pages, (p) => p % pages);
      mmu.write(o.vcpu, 0, offsets, offsets.length);
      if (reporter !== undefined) for (const p of offsets) written.add(p);
      for (const p of offsets) touched.add(p);
    } else if (o.op === 'harvest') {
      harvest();
    } else if (o.op === 'toggle') {
      if (reporter === undefined) {
        enable();
      } else {
        harvest();
        mmu.disableLogging(0);
        reporter = undefined;
        mmu.attach({ markDirty: () => expect.unreachable('a slot that does not log reported a page') });
      }
    } else {
      mmu.flushRemoteTlbs();
    }
    check(touched);
  }
  harvest();
  const stats = mmu.stats();
  expect(stats.faults).toBe(stats.fastFaults + stats.slowFaults);
  expect(stats.writes).toBe(ops.reduce((n, o) => n + (o.op === 'write' ? o.pages.length : 0), 0));
}

describe('MMU properties: negative control', () => {
  it('with the skip-TLB-flush debug option the same property finds a lost page', () => {
    const result = fc.check(
      fc.property(layouts, fc.array(op, { maxLength: 40 }), ({ backing, pages, gpaPages }, ops) =>
        runCase('eager-split', backing, pages, gpaPages, ops, true),
      ),
      { numRuns: 2000, seed: 4242 },
    );
    expect(result.failed).toBe(true);
    expect(String(result.errorInstance)).toMatch(/is not in the harvest/);
  });
});

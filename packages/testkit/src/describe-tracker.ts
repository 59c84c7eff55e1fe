import { Bitmap, type DirtySink, type MemslotInfo, type Reporter, type Tracker } from '@dirtytrack/core';
import { runDirtyLogTest, type DirtyLogTestResult, type LiveWorkload } from '@dirtytrack/guest';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { assertProperty } from './runs.js';

/** One tracker × reporter combination the dirty_log_test conformance runs. */
export interface DirtyLogCase {
  /** Names the combination in the test title, e.g. `'bitmap'`, `'ring'`, `'bitmap, clear-log'`. */
  readonly name: string;
  /**
   * Engines to run it in. Default both; `'live'` needs a `SharedTracker` and a `SharedReporter`
   * (the test is skipped, with the reason, when `setup` returns something else).
   */
  readonly engines?: readonly ('model' | 'live')[];
  /**
   * A fresh tracker (with `slot` created in it, not yet logging) and a reporter logging `slot`, for
   * one run. `live` says whether workers will attach (allocate shared memory then).
   */
  setup(ctx: { readonly slot: MemslotInfo; readonly vcpus: number; readonly live: boolean }): {
    tracker: Tracker;
    reporter: Reporter;
  };
  /**
   * A negative control: this combination is broken on purpose (e.g. an MMU that skips TLB
   * flushes) and the run must report lost pages — proof that the suite can fail.
   */
  readonly expectLost?: boolean;
  /** Slot pages for this case (default: the suite's). */
  readonly pages?: number;
  /** Live workload for this case (default uniform). */
  readonly workload?: LiveWorkload;
  /** More assertions on the result (e.g. that a small ring did fill up and was reaped). */
  readonly check?: (result: DirtyLogTestResult, engine: 'model' | 'live') => void;
}

/** The dirty_log_test conformance of {@link describeTracker} (reference/kvm.md §8). */
export interface DirtyLogConformance {
  readonly cases: readonly DirtyLogCase[];
  /** vCPUs. Default 2. */
  readonly vcpus?: number;
  /** Slot pages. Default 4112: 16 MiB + 16 pages, unaligned like the kernel's 1 GiB + 16 pages. */
  readonly pages?: number;
  /** Host iterations. Defaults: 32 (model, the kernel's), 16 (live). */
  readonly modelIterations?: number;
  readonly liveIterations?: number;
  /** Model engine: writes per vCPU per iteration. Default 1024. */
  readonly writesPerIteration?: number;
  /** Live engine: ms the vCPUs run per iteration. Default 5. */
  readonly intervalMs?: number;
  /** Where live workers resolve the AttachSpec modules: pass the test file's `import.meta.url`. */
  readonly resolveFrom?: string;
}

export interface DescribeTrackerOptions {
  /** Also run the kernel's dirty_log_test over these tracker × reporter × engine combinations. */
  readonly dirtyLog?: DirtyLogConformance;
}

/** Seed of the dirty_log_test runs: `DIRTYTRACK_DIRTY_LOG_SEED`, else a fixed one. Printed in titles. */
export function dirtyLogSeed(): number {
  const raw = process.env['DIRTYTRACK_DIRTY_LOG_SEED'];
  const n = raw === undefined ? NaN : Number(raw);
  return Number.isInteger(n) && n >= 0 && n <= 0xffff_ffff ? n : 0x0d17_7105;
}

/**
 * The tracker conformance suite: ARCHITECTURE §8 invariant 1 at the tracker level. Random
 * interleavings of writes and harvests (a harvest re-arms exactly the pages reported since the
 * previous one, as `KVM_GET_DIRTY_LOG` does) must report every page written since the previous
 * harvest — the kernel's `dirty_log_test` rule. Every tracker's test file calls it.
 */
export function describeTracker(
  name: string,
  create: () => Tracker,
  options: DescribeTrackerOptions = {},
): void {
  describe(`tracker conformance: ${name}`, () => {
    if (options.dirtyLog !== undefined) describeDirtyLog(options.dirtyLog);

    it('reports every page written since the previous harvest (no page lost)', async () => {
      await assertProperty(
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
        200,
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

/**
 * dirty_log_test (reference/kvm.md §8) for every case × engine: checks 1–4 with the kernel's
 * allowances must hold and no page may be lost — or, for a negative control, pages must be lost.
 */
function describeDirtyLog(conf: DirtyLogConformance): void {
  const seed = dirtyLogSeed();
  const vcpus = conf.vcpus ?? 2;
  for (const c of conf.cases) {
    for (const engine of c.engines ?? (['model', 'live'] as const)) {
      const pages = c.pages ?? conf.pages ?? 4112;
      const iterations = engine === 'model' ? (conf.modelIterations ?? 32) : (conf.liveIterations ?? 16);
      const title =
        `dirty_log_test, ${c.name}, ${engine} engine (${vcpus} vCPUs, ${pages} pages, ` +
        `${iterations} iterations, seed ${seed}): ` +
        (c.expectLost === true ? 'loses pages (negative control)' : 'no page lost');
      it(title, async (ctx) => {
        const slot: MemslotInfo = { id: 0, asId: 0, baseGfn: 0, pages };
        const { tracker, reporter } = c.setup({ slot, vcpus, live: engine === 'live' });
        if (engine === 'live' && (!hasShare(tracker) || !hasShare(reporter))) {
          ctx.skip(`${c.name}: the live engine needs a SharedTracker and a SharedReporter`);
          return;
        }
        const result: DirtyLogTestResult = await runDirtyLogTest({
          engine,
          tracker,
          reporter,
          slot,
          vcpus,
          iterations,
          seed,
          ...(conf.writesPerIteration === undefined ? {} : { writesPerIteration: conf.writesPerIteration }),
          intervalMs: conf.intervalMs ?? 5,
          ...(conf.resolveFrom === undefined ? {} : { resolveFrom: conf.resolveFrom }),
          ...(c.workload === undefined ? {} : { workload: c.workload }),
        });
        const summary = JSON.stringify({ ...result, violations: result.violations.slice(0, 3) });
        expect(result.harvests, summary).toBe(iterations + 1);
        expect(result['pages-checked'], summary).toBe((iterations + 1) * pages);
        if (c.expectLost === true) {
          expect(result.lost, summary).toBeGreaterThan(0);
        } else {
          expect(result.violations, summary).toEqual([]);
          expect(result.lost, summary).toBe(0);
          expect(result['dirty-pages'], summary).toBeGreaterThan(0);
        }
        c.check?.(result, engine);
      });
    }
  }
}

function hasShare(x: object): boolean {
  return typeof (x as { share?: unknown }).share === 'function';
}

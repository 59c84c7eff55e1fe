import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { NS_PER_S, PAGE_SIZE } from '@dirtytrack/core';
import { createSweepWorkload, recordTrace } from '@dirtytrack/guest';
import { fdWritesAvailable } from '@dirtytrack/migration';
import { propertyRuns, replaySeed } from '@dirtytrack/testkit';
import fc from 'fast-check';
import { afterAll, describe, expect, it } from 'vitest';
import { run } from './__fixtures__/run.js';
import { liveWorkload, type MigrateResult } from './live.js';
import { liveScenario } from './live-scenario.js';
import { simulate } from './pipeline.js';
import { scenarioSchema } from './scenario.js';

// ARCHITECTURE.md §8, invariant 6: the model plane's prediction of a live run stays within a
// stated error. Each case is a real migration (`dirtytrack migrate`: a worker-thread guest, a
// destination process, TCP on loopback) and the model's run of the same scenario.

/**
 * The stated error, as the migration README states it: the model's `total-time` within 10 % of
 * the live run's plus 30 ms (the live run's fixed costs — threads and connections starting, the
 * first write-protect, the stop — which no scenario field describes: 10–35 ms a run on a quiet
 * machine, up to ~60 ms beside other tests), its `transferred` within 5 %, for runs whose link is
 * `max-bandwidth` (QEMU's rate limit, here far below what loopback carries) and whose RAM does
 * not fit in one downtime.
 */
const TOTAL_TIME_ERROR = 0.1;
const TOTAL_TIME_FIXED_MS = 30;
const TRANSFERRED_ERROR = 0.05;
/** Runs again of a case outside the bound, before it fails (see the loop). */
const RETRIES = 2;

/** The model's link: 10 Gbit/s, faster than any `max-bandwidth` drawn here, as loopback is. */
const LINK_BYTES_PER_SECOND = 1.25e9;
const MIB = 2 ** 20;
const VCPUS = 2;
/** The period of the traces the property replays (a sweep recorded at the drawn rate). */
const TRACE_PERIOD_NS = NS_PER_S / 2;
const dir = mkdtempSync(join(tmpdir(), 'dirtytrack-invariant-6-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

interface Case {
  memoryMiB: number;
  /**
   * The transfer of RAM once at `max-bandwidth`, s: `max-bandwidth` = memory / this. Always
   * longer than `downtime-limit`: a guest whose whole RAM fits in the downtime is stopped at the
   * first sync and sent at the link's own speed (QEMU lifts the rate limit at the switchover),
   * and this test's link is the rate limit.
   */
  onePassS: number;
  /** 0: an idle guest; else the vCPUs' writes as a share of `max-bandwidth`. */
  dirtyShare: number;
  /**
   * How the vCPUs write (when they do): `uniform`, `hot-set` or `sweep` (`--workload`), or a trace
   * of a sweep looping every {@link TRACE_PERIOD_NS} (`--workload trace --trace-loop`), whose phase
   * at the migration's start is what `guest-run-before` tells the model.
   */
  workload: 'uniform' | 'hot-set' | 'sweep' | 'trace';
  /**
   * precopy; auto-converge (with writes up to 45 % of the rate limit: several syncs, the throttle
   * raised); postcopy, switched at `postcopyShare` of one pass, `max-postcopy-bandwidth` the
   * same rate limit (unlimited, the pages would go at loopback's own speed, which the model's link
   * does not know); or dirty-limit (see {@link DIRTY_LIMIT}).
   */
  mode: 'precopy' | 'auto-converge' | 'postcopy' | 'dirty-limit';
  postcopyShare: number;
  /** QEMU's `zero-copy-send` (multifd, not postcopy; where koffi loads), or postcopy-preempt (postcopy). */
  extra: boolean;
  channels: number;
  /** Entries of each vCPU's KVM dirty ring (`--dirty-ring-size`); 0: the dirty log bitmap. */
  dirtyRing: number;
  downtimeLimit: number;
  seed: number;
}

/**
 * A dirty-limit case: a 48 MiB guest whose vCPUs sweep their halves of RAM at 9,000–11,000 pages/s
 * each (from `dirtyShare`), above every rate limit drawn here, through dirty rings (4096 entries
 * where the case drew none), limited to QEMU's default `vcpu-dirty-limit` of 1 MB/s. The limit
 * acts only on a vCPU that dirties more than the quota plus QEMU's 25 MB/s tolerance: a sweep
 * pushes every write (35–43 MB/s), where a uniform writer over these small guests meets pages it
 * dirtied since its ring was last reaped and pushed ~23 MB/s (left alone: the run never converges),
 * and a larger quota leaves these slow links barely faster than the limited guest (a 16 MiB guest
 * at quota 4 converged in 24 s live and 12 s in the model: each round only 7 or 20 % smaller).
 */
const DIRTY_LIMIT = { memoryMiB: 48, quota: 1, minRate: 9000, maxRate: 11_000, ring: 4096 };

// Unbiased: fast-check leans towards the bounds of a range, and drew a 5 % writer or an idle
// guest in most cases — with a handful of runs a CI run, the rates between were seldom tried.
const cases = fc.noBias(
  fc.record({
    memoryMiB: fc.constantFrom(16, 32, 48),
    onePassS: fc.double({ min: 0.8, max: 1.5, noNaN: true }),
    dirtyShare: fc.oneof(
      { arbitrary: fc.constant(0), weight: 1 },
      { arbitrary: fc.double({ min: 0.05, max: 0.45, noNaN: true }), weight: 3 },
    ),
    workload: fc.constantFrom('uniform' as const, 'hot-set' as const, 'sweep' as const, 'trace' as const),
    mode: fc.constantFrom(
      'precopy' as const,
      'auto-converge' as const,
      'postcopy' as const,
      'dirty-limit' as const,
    ),
    postcopyShare: fc.double({ min: 0.2, max: 0.6, noNaN: true }),
    extra: fc.boolean(),
    channels: fc.constantFrom(0, 2, 4),
    dirtyRing: fc.constantFrom(0, 256, 4096),
    downtimeLimit: fc.constantFrom(100, 200, 300),
    seed: fc.integer({ min: 1, max: 1_000_000 }),
  }),
);

/** The live run and the model's, with the errors (model − live) / live. */
async function liveAndModel(c: Case) {
  const limited = c.mode === 'dirty-limit';
  const memoryMiB = limited ? DIRTY_LIMIT.memoryMiB : c.memoryMiB;
  const memory = memoryMiB * MIB;
  const maxBandwidth = Math.round(memory / c.onePassS);
  // Without auto-converge, writes at most 30 % of the rate limit: the run converges unthrottled.
  const share = c.mode === 'auto-converge' ? c.dirtyShare : Math.min(c.dirtyShare, 0.3);
  const writesPerVcpu = limited
    ? Math.round(DIRTY_LIMIT.minRate + ((DIRTY_LIMIT.maxRate - DIRTY_LIMIT.minRate) * c.dirtyShare) / 0.45)
    : Math.round((share * maxBandwidth) / VCPUS / PAGE_SIZE);
  const dirtyRing = limited && c.dirtyRing === 0 ? DIRTY_LIMIT.ring : c.dirtyRing;
  const postcopyMs = c.mode === 'postcopy' ? Math.round(c.onePassS * c.postcopyShare * 1000) : undefined;
  const zeroCopySend = c.extra && c.channels > 0 && postcopyMs === undefined && fdWritesAvailable();
  const preempt = c.extra && postcopyMs !== undefined;
  const workload = limited ? 'sweep' : writesPerVcpu === 0 ? 'idle' : c.workload;
  const pages = memory / PAGE_SIZE;
  const hot = workload === 'hot-set' ? liveWorkload('hot-set', pages) : undefined;
  const trace = workload === 'trace' ? join(dir, `sweep-${c.seed}.trace`) : undefined;
  if (trace !== undefined) {
    const sweep = createSweepWorkload({ vcpus: VCPUS, pages, bytesPerSecond: writesPerVcpu * PAGE_SIZE });
    writeFileSync(trace, recordTrace(sweep, { pages, durationNs: TRACE_PERIOD_NS }));
  }
  const r = await run(
    'migrate',
    '--memory',
    `${memoryMiB}M`,
    '--vcpus',
    String(VCPUS),
    '--fill',
    'random',
    '--seed',
    String(c.seed),
    '--max-bandwidth',
    String(maxBandwidth),
    '--downtime-limit',
    String(c.downtimeLimit),
    '--workload',
    workload,
    ...(trace !== undefined
      ? ['--trace', trace, '--trace-loop']
      : workload === 'idle'
        ? []
        : ['--rate', String(writesPerVcpu)]),
    ...(c.channels > 0 ? ['--multifd-channels', String(c.channels)] : []),
    ...(dirtyRing > 0 ? ['--dirty-ring-size', String(dirtyRing)] : []),
    ...(c.mode === 'auto-converge' ? ['--auto-converge'] : []),
    ...(limited ? ['--dirty-limit', String(DIRTY_LIMIT.quota)] : []),
    ...(zeroCopySend ? ['--zero-copy-send'] : []),
    ...(preempt ? ['--postcopy-preempt'] : []),
    ...(postcopyMs === undefined
      ? []
      : ['--postcopy-after', String(postcopyMs), '--max-postcopy-bandwidth', String(maxBandwidth)]),
    '--json',
  );
  expect(r.stderr).toBe('');
  expect(r.code).toBe(0);
  const live = JSON.parse(r.stdout) as MigrateResult;
  const model = simulate(
    scenarioSchema.parse(
      liveScenario({
        name: 'invariant-6',
        seed: c.seed,
        memory,
        vcpus: VCPUS,
        writesPerVcpu,
        ...(hot?.kind === 'hot-set' ? { hotSet: { pages: hot.pages, share: hot.share } } : {}),
        ...(workload === 'sweep' ? { sweep: true } : {}),
        ...(trace === undefined ? {} : { trace: { file: trace, loop: true } }),
        ...(dirtyRing > 0 ? { dirtyRing } : {}),
        ...(limited ? { dirtyLimit: { quota: DIRTY_LIMIT.quota, periodMs: 1000 } } : {}),
        ...(live.dirtytrack['guest-run-before'] === undefined
          ? {}
          : { runBefore: live.dirtytrack['guest-run-before'] / 1000 }),
        setupTime: live['setup-time'],
        linkBytesPerSecond: LINK_BYTES_PER_SECOND,
        maxBandwidth,
        downtimeLimit: c.downtimeLimit,
        channels: c.channels,
        autoConverge: c.mode === 'auto-converge',
        zeroCopySend,
        timeLimit: 120,
        ...(postcopyMs === undefined
          ? {}
          : {
              postcopyAfter: postcopyMs / 1000,
              maxPostcopyBandwidth: maxBandwidth,
              postcopyPreempt: preempt,
            }),
      }),
    ),
  );
  const modelRam = model['ram'] as { transferred: number };
  return {
    live,
    model,
    totalTimeError: ((model['total-time'] as number) - live['total-time']) / live['total-time'],
    transferredError: (modelRam.transferred - live.ram.transferred) / live.ram.transferred,
  };
}

/** A case's live run and the model's. */
type Runs = Awaited<ReturnType<typeof liveAndModel>>;

describe('the model predicts live migrations (invariant 6)', () => {
  it(`within ${TOTAL_TIME_ERROR * 100} % + ${TOTAL_TIME_FIXED_MS} ms of total-time and ${TRANSFERRED_ERROR * 100} % of transferred, over random guests, rates, links and modes`, async () => {
    const seen: string[] = [];
    await fc
      .assert(
        fc.asyncProperty(cases, async (c) => {
          /** The stated error of `total-time` for this run: 10 % of it plus 30 ms. */
          const timeBound = (r: Runs): number =>
            TOTAL_TIME_ERROR + TOTAL_TIME_FIXED_MS / r.live['total-time'];
          const within = (r: Runs): boolean =>
            Math.abs(r.totalTimeError) <= timeBound(r) && Math.abs(r.transferredError) <= TRANSFERRED_ERROR;
          const line = (r: Runs): string =>
            `${JSON.stringify(c)}: live ${r.live['total-time']} ms ${r.live.ram.transferred} B, ` +
            `model ${String(r.model['total-time'])} ms (${(r.totalTimeError * 100).toFixed(1)} %), ` +
            `transferred ${(r.transferredError * 100).toFixed(1)} %`;
          let r = await liveAndModel(c);
          seen.push(line(r));
          // A live run is timed on a shared 2-core machine, beside the suite's other live tests,
          // and a run can end one 100 ms rate-limit window sooner or later than the model's (a
          // 32 MiB multifd case: −10.5 % in a clean-clone npm test; −2.1, −2.3 and +7.3 % in three
          // runs alone); one starved of CPU came out −30 % while a whole second CI run shared the
          // machine. So a case outside the bound is run again, up to twice: a model that is wrong
          // is wrong every time.
          for (let again = 0; again < RETRIES && !within(r); again++) {
            r = await liveAndModel(c);
            seen.push(`  again: ${line(r)}`);
          }
          expect(r.live.status).toBe('completed');
          expect(r.live.verified).toBe(true);
          expect(r.model['status']).toBe('completed');
          expect(Math.abs(r.totalTimeError)).toBeLessThanOrEqual(timeBound(r));
          expect(Math.abs(r.transferredError)).toBeLessThanOrEqual(TRANSFERRED_ERROR);
        }),
        {
          numRuns: propertyRuns(6),
          endOnFailure: true,
          // First, the case that found live postcopy sending 13 % under max-postcopy-bandwidth
          // (its sleeps' late returns cost every 10 ms step its budget): −14 to −16 % before the
          // mend, −1.5 to −2.4 % after.
          examples: [
            [
              {
                memoryMiB: 16,
                onePassS: 0.96,
                dirtyShare: 0.2878,
                workload: 'uniform',
                mode: 'postcopy',
                postcopyShare: 0.2,
                extra: false,
                channels: 2,
                dirtyRing: 0,
                downtimeLimit: 300,
                seed: 4,
              },
            ],
            // Then the case whose live setup (8 ms and more beside other tests) moved its rate-limit
            // windows past its migrate-start-postcopy at 408 ms: it switched one window sooner than
            // the model, +8.1 % transferred in 3 of 3 runs, before the model took the live
            // setup-time (−0.8 to −4.6 % and 0.1 to 0.2 % after).
            [
              {
                memoryMiB: 48,
                onePassS: 0.82,
                dirtyShare: 0.2363,
                workload: 'trace',
                mode: 'postcopy',
                postcopyShare: 0.4974,
                extra: false,
                channels: 4,
                dirtyRing: 4096,
                downtimeLimit: 300,
                seed: 257954,
              },
            ],
            // Then dirty-limit, which the property did not draw until both planes reaped the dirty
            // rings as QEMU does: the live plane reaped a ring once it was half full, so its vCPUs
            // pushed far more pages per second than QEMU's (a uniform writer 28.5 against 15–22.5 MB/s)
            // and the limit acted on a guest QEMU's would leave alone (live 6.3 s, the model never
            // converging); the model never reaped between syncs, which QEMU's reaper thread does.
            [
              {
                memoryMiB: 48,
                onePassS: 1.35,
                dirtyShare: 0.2,
                workload: 'sweep',
                mode: 'dirty-limit',
                postcopyShare: 0.2,
                extra: false,
                channels: 2,
                dirtyRing: 256,
                downtimeLimit: 300,
                seed: 11,
              },
            ],
            // Then a dirty-limit guest stuck sending one window per pass: the model synced exactly
            // every 1000 ms, and its strict `> 1000 ms` check (QEMU's) skipped every other sync, so
            // it started throttling a period after the live run — +19.0 % total-time and +18.6 %
            // transferred in 3 of 3 runs, drawn by a CI run (seed -1588350790), before the model
            // counted an exact period (precopy.ts `sync`).
            [
              {
                memoryMiB: 16,
                onePassS: 1.1454985314123545,
                dirtyShare: 0.080426691813744,
                workload: 'sweep',
                mode: 'dirty-limit',
                postcopyShare: 0.23549600953566527,
                extra: true,
                channels: 0,
                dirtyRing: 0,
                downtimeLimit: 300,
                seed: 276572,
              },
            ],
          ],
          ...replaySeed(),
        },
      )
      .catch((error: unknown) => {
        // fast-check names the seed and the failing case; every case run is listed with it.
        throw new Error(`${String(error)}\ncases run:\n${seen.join('\n')}`);
      });
    console.log(`invariant 6, model against live:\n${seen.join('\n')}`);
  }, 300_000);
});

import { isAbsolute, resolve } from 'node:path';
import { DEFAULT_COST_MODEL, PAGE_SIZE, parseRate, parseSize } from '@dirtytrack/core';
import { DEFAULT_PRECOPY_CAPABILITIES, DEFAULT_PRECOPY_PARAMETERS } from '@dirtytrack/migration';
import { z } from 'zod';

/**
 * The scenario schema (ARCHITECTURE §7): keys use QEMU's names where QEMU has one. Sizes accept
 * IEC strings (`4G`), rates accept bits (`25Gbit`) or sizes per second (`128M`). Unknown keys
 * are errors, so a typo never silently runs the default.
 */

const SIZE_HINT = 'a byte count or an IEC size such as 4K, 512M, 3T';
const RATE_HINT = 'B/s, a size per second such as 128M, or bits such as 25Gbit';

const size = (what: { min?: number; pageAligned?: boolean } = {}) =>
  z.union([z.number(), z.string()]).transform((v, ctx) => {
    let bytes: number;
    try {
      bytes = parseSize(v);
    } catch {
      ctx.addIssue({ code: 'custom', message: `invalid size ${JSON.stringify(v)} (accepted: ${SIZE_HINT})` });
      return z.NEVER;
    }
    if (what.min !== undefined && bytes < what.min) {
      ctx.addIssue({ code: 'custom', message: `${bytes} bytes is below the minimum ${what.min}` });
      return z.NEVER;
    }
    if (what.pageAligned && bytes % PAGE_SIZE !== 0) {
      ctx.addIssue({
        code: 'custom',
        message: `${bytes} bytes is not a multiple of the ${PAGE_SIZE}-byte page`,
      });
      return z.NEVER;
    }
    return bytes;
  });

const rate = (what: { positive: boolean }) =>
  z.union([z.number(), z.string()]).transform((v, ctx) => {
    let bps: number;
    try {
      bps = typeof v === 'number' ? v : parseRate(v);
    } catch {
      ctx.addIssue({ code: 'custom', message: `invalid rate ${JSON.stringify(v)} (accepted: ${RATE_HINT})` });
      return z.NEVER;
    }
    if (!Number.isFinite(bps) || bps < 0 || (what.positive && bps === 0)) {
      ctx.addIssue({
        code: 'custom',
        message: `${v} must be ${what.positive ? '> 0' : '>= 0'} (accepted: ${RATE_HINT})`,
      });
      return z.NEVER;
    }
    return bps;
  });

const number = (min: number, max: number, integer = false) => {
  const base = z.number({ invalid_type_error: `expected a number in [${min}, ${max}]` });
  return (integer ? base.int(`expected an integer in [${min}, ${max}]`) : base)
    .min(min, `must be in [${min}, ${max}]`)
    .max(max, `must be in [${min}, ${max}]`);
};

const bool = z.boolean({ invalid_type_error: 'expected true or false' });

const costModelShape = Object.fromEntries(
  Object.keys(DEFAULT_COST_MODEL).map((k) => [k, number(0, Number.MAX_VALUE).optional()]),
) as Record<keyof typeof DEFAULT_COST_MODEL, z.ZodOptional<z.ZodNumber>>;

export const scenarioSchema = z
  .object({
    name: z.string().default('custom'),
    seed: number(0, 0xffff_ffff, true).default(1),
    memory: size({ min: 64 * PAGE_SIZE, pageAligned: true }).default('4G'),
    vcpus: number(1, 512, true).default(4),
    /**
     * The RAMBlock's host page (4k, or hugetlbfs 2m / 1g). Dirty logging splits huge pages, so
     * precopy tracks and sends 4 KiB target pages whatever the backing; postcopy places whole
     * host pages (a 1g page arrives whole).
     */
    backing: z.enum(['4k', '2m', '1g']).default('4k'),
    /**
     * `wp`: write-protect, flat (one protection bit per page: any size); `mmu-wp` / `pml`: through
     * the software TDP MMU (`@dirtytrack/mmu`: SPTEs, huge pages, fast/slow faults, splits, TLB
     * flushes; Intel PML logs instead of faulting) — page tables cost 4 B per 4 KiB page, so up
     * to 1 TiB.
     */
    tracker: z.enum(['wp', 'mmu-wp', 'pml']).default('wp'),
    /**
     * MMU trackers: how enabling logging prepares memory — `eager-split` (KVM's default),
     * `write-protect` (huge pages protected whole, split by the first write), or `lazy`
     * (initially-set; needs manual-protect).
     */
    'mmu-logging': z.enum(['eager-split', 'write-protect', 'lazy']).default('eager-split'),
    /** `bitmap`: KVM's dirty log; `ring`: one dirty ring per vCPU (reaped on ring-full exits and at each sync). */
    reporter: z.enum(['bitmap', 'ring']).default('bitmap'),
    /** Dirty-ring entries per vCPU: a power of two in [256, 65536] (KVM's bounds without PML). */
    'ring-size': z
      .number({ invalid_type_error: 'expected a power of two in [256, 65536]' })
      .int('expected a power of two in [256, 65536]')
      .refine((n) => n >= 256 && n <= 65536 && (n & (n - 1)) === 0, 'expected a power of two in [256, 65536]')
      .default(4096),
    /**
     * How dirty bits reach the migration bitmap: `single-hop` (slot bitmap straight into it), or
     * QEMU's three layers with a sync strategy: `xchg` (QEMU today), `rwlock-memcpy` (the slides),
     * `fused` (one hop with a summary).
     */
    layers: z.enum(['single-hop', 'xchg', 'rwlock-memcpy', 'fused']).default('single-hop'),
    /** KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 (bitmap reporter): GET copies, the layers' lazy clear_bmap re-arms. */
    'manual-protect': z.boolean({ invalid_type_error: 'expected true or false' }).default(false),
    /** `x-clear-bitmap-shift` (three-layer stacks with manual protect): log2 pages per clear chunk, 6..31. */
    'clear-bitmap-shift': number(6, 31, true).default(18),
    /** Fraction of memory holding data at start; the rest is zero pages until written. */
    populated: number(0, 1).default(1),
    workload: z
      .object({
        /** `trace` replays a trace file (`file`); rate, working-set and offset then do not apply. */
        kind: z.enum(['uniform', 'sweep', 'hotset', 'trace']).default('uniform'),
        /** Bytes of page writes per second, per vCPU. */
        rate: rate({ positive: false }).default('8M'),
        /**
         * Seconds the guest has run when the migration starts (a live guest runs while its
         * destination starts): a trace's replay and a sweep's cursor are that far along.
         */
        'run-before': number(0, 3600).default(0),
        'working-set': size({ min: PAGE_SIZE, pageAligned: true }).optional(),
        offset: size({ pageAligned: true }).default(0),
        /** hotset: fraction of the working set that is hot, (0, 1]. */
        'hot-fraction': z
          .number({ invalid_type_error: 'expected a number in (0, 1]' })
          .gt(0, 'must be in (0, 1]')
          .max(1, 'must be in (0, 1]')
          .default(0.1),
        /** hotset: fraction of the writes that go to the hot pages, [0, 1]. */
        'hot-write-fraction': number(0, 1).default(0.9),
        /**
         * hotset: where the hot pages lie — `first`, the working set's first pages; `spread`, one
         * every working-set / hot pages, as a live guest's hot pages drawn at random lie (precopy
         * sends in order: a hot page sent early has the whole first pass to be dirtied again);
         * `lists`, as a live guest's vCPUs write theirs: each vCPU its own list of hot-fraction ×
         * working set pages drawn with repeats (the live vCPUs' very pages, with their seed), its
         * other writes anywhere in the working set.
         */
        'hot-layout': z.enum(['first', 'spread', 'lists']).default('first'),
        /**
         * trace: the trace file (binary or text, @dirtytrack/guest's format). A relative path
         * resolves against the scenario file's directory ({@link resolveScenarioPaths}), or the
         * current directory for `--set`.
         */
        file: z
          .string({ invalid_type_error: 'expected the path of a trace file' })
          .min(1, 'expected the path of a trace file')
          .optional(),
        /** trace: repeat the trace with its period (default false: the guest goes idle after it). */
        loop: bool.optional(),
        /** trace: map the trace's pages onto a guest of another size (default false: a mismatch is an error). */
        scale: bool.optional(),
      })
      .strict()
      .default({}),
    link: z
      .object({
        bandwidth: rate({ positive: true }).default('10Gbit'),
        /** One-way latency, ms. */
        latency: number(0, 60_000).default(0),
        /** Seconds of migration time after which the link drops (the migration fails; postcopy pauses). */
        'drop-at': number(0, 1e7).optional(),
        /**
         * Seconds of migration time at which the dropped link is back and a paused postcopy is
         * recovered (`migrate-recover` + `migrate resume=true`); after drop-at.
         */
        'recover-at': number(0, 1e7).optional(),
      })
      .strict()
      .default({}),
    migration: z
      .object({
        parameters: z
          .object({
            'max-bandwidth': rate({ positive: false }).default(DEFAULT_PRECOPY_PARAMETERS['max-bandwidth']),
            'downtime-limit': number(0, 2_000_000, true).default(
              DEFAULT_PRECOPY_PARAMETERS['downtime-limit'],
            ),
            'zero-page-detection': z
              .enum(['none', 'legacy', 'multifd'])
              .default(DEFAULT_PRECOPY_PARAMETERS['zero-page-detection']),
            'multifd-channels': number(1, 255, true).default(DEFAULT_PRECOPY_PARAMETERS['multifd-channels']),
            'max-postcopy-bandwidth': rate({ positive: false }).default(
              DEFAULT_PRECOPY_PARAMETERS['max-postcopy-bandwidth'],
            ),
            'throttle-trigger-threshold': number(1, 100, true).default(
              DEFAULT_PRECOPY_PARAMETERS['throttle-trigger-threshold'],
            ),
            'cpu-throttle-initial': number(1, 99, true).default(
              DEFAULT_PRECOPY_PARAMETERS['cpu-throttle-initial'],
            ),
            'cpu-throttle-increment': number(1, 99, true).default(
              DEFAULT_PRECOPY_PARAMETERS['cpu-throttle-increment'],
            ),
            'cpu-throttle-tailslow': bool.default(DEFAULT_PRECOPY_PARAMETERS['cpu-throttle-tailslow']),
            'max-cpu-throttle': number(1, 99, true).default(DEFAULT_PRECOPY_PARAMETERS['max-cpu-throttle']),
            'x-vcpu-dirty-limit-period': number(1, 1000, true).default(
              DEFAULT_PRECOPY_PARAMETERS['x-vcpu-dirty-limit-period'],
            ),
            /** MB/s per vCPU. */
            'vcpu-dirty-limit': number(1, Number.MAX_SAFE_INTEGER, true).default(
              DEFAULT_PRECOPY_PARAMETERS['vcpu-dirty-limit'],
            ),
          })
          .strict()
          .default({}),
        capabilities: z
          .object({
            'auto-converge': bool.default(DEFAULT_PRECOPY_CAPABILITIES['auto-converge']),
            'dirty-limit': bool.default(DEFAULT_PRECOPY_CAPABILITIES['dirty-limit']),
            multifd: bool.default(DEFAULT_PRECOPY_CAPABILITIES.multifd),
            'zero-copy-send': bool.default(DEFAULT_PRECOPY_CAPABILITIES['zero-copy-send']),
            'pause-before-switchover': bool.default(DEFAULT_PRECOPY_CAPABILITIES['pause-before-switchover']),
            'postcopy-ram': bool.default(DEFAULT_PRECOPY_CAPABILITIES['postcopy-ram']),
            'postcopy-preempt': bool.default(DEFAULT_PRECOPY_CAPABILITIES['postcopy-preempt']),
          })
          .strict()
          .default({}),
        /** Seconds of migration time at which `migrate-start-postcopy` is issued (needs postcopy-ram). */
        'start-postcopy-at': number(0, 1e7).optional(),
        /**
         * ms the setup lasts at least (QEMU's `setup-time`, as `query-migrate` measured it), where
         * the modelled costs fall short: a live run's threads and connections starting, a large
         * guest's memslots. The guest runs meanwhile; the rate-limit windows start after it.
         */
        'setup-time': number(0, 1e7).default(0),
        /** Postcopy on huge pages: the destination maps 4 KiB pieces as they arrive (the slides' hugetlbfs double-map). */
        'postcopy-double-map': bool.default(false),
        /** Postcopy with userfaultfd minor mode: the page cache survives the switch, only stale pages are re-sent. */
        'postcopy-uffd-minor': bool.default(false),
        /** Seconds of migration time at which `migrate_cancel` is issued. */
        'cancel-at': number(0, 1e7).optional(),
        /** Bytes the process may lock (`ulimit -l`); zero-copy-send pins the pages in flight. Default unlimited. */
        'locked-memory': size().optional(),
        /**
         * The share of `downtime-limit` the final copy is planned for (switchover when pending ≤
         * bandwidth × downtime-limit × this): QEMU's 1 by default; the live plane plans for 0.5
         * (`LIVE_SWITCHOVER_SHARE`), so a model of a live run sets that.
         */
        'switchover-share': z
          .number({ invalid_type_error: 'expected a number in (0, 1]' })
          .gt(0, 'must be in (0, 1]')
          .lte(1, 'must be in (0, 1]')
          .default(1),
      })
      .strict()
      .default({}),
    /** Seconds of migration time after which a non-converging run stops (status stays active). */
    'time-limit': number(0.001, 1e7).default(3600),
    'cost-model': z.object(costModelShape).strict().default({}),
  })
  .strict()
  .superRefine((s, ctx) => {
    const w = s.workload;
    if (w.kind === 'trace' && w.file === undefined) {
      ctx.addIssue({
        code: 'custom',
        path: ['workload', 'file'],
        message: 'is required with kind: trace (accepted: the path of a trace file)',
      });
    }
    for (const key of ['file', 'loop', 'scale'] as const) {
      if (w.kind !== 'trace' && w[key] !== undefined) {
        ctx.addIssue({
          code: 'custom',
          path: ['workload', key],
          message: `applies to kind: trace only (kind is ${w.kind})`,
        });
      }
    }
    // A trace brings its own pages: offset and working-set do not apply (a preset's may not fit).
    if (w.kind === 'trace') {
      // nothing to check against memory here: the trace's page count is checked when it is read
    } else if (w.offset >= s.memory) {
      ctx.addIssue({
        code: 'custom',
        path: ['workload', 'offset'],
        message: `must be below memory (${s.memory} bytes)`,
      });
    } else if (w['working-set'] !== undefined && w.offset + w['working-set'] > s.memory) {
      ctx.addIssue({
        code: 'custom',
        path: ['workload', 'working-set'],
        message: `offset + working-set (${w.offset + w['working-set']} bytes) exceeds memory (${s.memory} bytes)`,
      });
    }
    if (s.tracker !== 'wp' && s.memory > 2 ** 40) {
      ctx.addIssue({
        code: 'custom',
        path: ['tracker'],
        message: `${s.tracker} keeps SPTE tables (4 B per 4 KiB page): memory must be at most 1T (use wp beyond)`,
      });
    }
    if (s['mmu-logging'] === 'lazy' && (s.tracker === 'wp' || !s['manual-protect'])) {
      ctx.addIssue({
        code: 'custom',
        path: ['mmu-logging'],
        message: 'lazy (initially-set) needs tracker mmu-wp or pml and manual-protect: true',
      });
    }
    if (s['manual-protect'] && s.reporter !== 'bitmap') {
      ctx.addIssue({
        code: 'custom',
        path: ['manual-protect'],
        message: 'needs reporter: bitmap (rings have no CLEAR_DIRTY_LOG)',
      });
    }
    if (s['manual-protect'] && s.layers === 'single-hop') {
      ctx.addIssue({
        code: 'custom',
        path: ['manual-protect'],
        message: 'needs layers xchg, rwlock-memcpy or fused (their lazy clear_bmap re-arms pages)',
      });
    }
    const caps = s.migration.capabilities;
    const params = s.migration.parameters;
    if (caps['auto-converge'] && caps['dirty-limit']) {
      ctx.addIssue({
        code: 'custom',
        path: ['migration', 'capabilities', 'dirty-limit'],
        message: 'conflicts with auto-converge (accepted: only one of them true)',
      });
    }
    if (caps['dirty-limit'] && s.reporter !== 'ring') {
      ctx.addIssue({
        code: 'custom',
        path: ['migration', 'capabilities', 'dirty-limit'],
        message: 'needs reporter: ring (dirty-limit works through the KVM dirty ring)',
      });
    }
    if (caps['zero-copy-send'] && !caps.multifd) {
      ctx.addIssue({
        code: 'custom',
        path: ['migration', 'capabilities', 'zero-copy-send'],
        message: 'needs migration.capabilities.multifd: true',
      });
    }
    if (caps['postcopy-preempt'] && !caps['postcopy-ram']) {
      ctx.addIssue({
        code: 'custom',
        path: ['migration', 'capabilities', 'postcopy-preempt'],
        message: 'needs migration.capabilities.postcopy-ram: true',
      });
    }
    const recoverAt = s.link['recover-at'];
    const dropAt = s.link['drop-at'];
    if (recoverAt !== undefined && (dropAt === undefined || !(recoverAt > dropAt))) {
      ctx.addIssue({
        code: 'custom',
        path: ['link', 'recover-at'],
        message:
          dropAt === undefined
            ? 'needs link.drop-at (accepted: a time after the drop)'
            : `${recoverAt} must be after link.drop-at (accepted: > ${dropAt})`,
      });
    }
    if (s.migration['start-postcopy-at'] !== undefined && !caps['postcopy-ram']) {
      ctx.addIssue({
        code: 'custom',
        path: ['migration', 'start-postcopy-at'],
        message: 'needs migration.capabilities.postcopy-ram: true',
      });
    }
    if (params['max-cpu-throttle'] < params['cpu-throttle-initial']) {
      ctx.addIssue({
        code: 'custom',
        path: ['migration', 'parameters', 'max-cpu-throttle'],
        message: `${params['max-cpu-throttle']} is below cpu-throttle-initial (accepted: ${params['cpu-throttle-initial']}..99)`,
      });
    }
    const hostPage = BACKING_BYTES[s.backing];
    if (s.memory % hostPage !== 0) {
      ctx.addIssue({
        code: 'custom',
        path: ['memory'],
        message: `${s.memory} bytes is not a whole number of ${s.backing} backing pages (accepted: a multiple of ${hostPage} bytes, or another backing)`,
      });
    }
    if (s.memory / PAGE_SIZE > 2 ** 32) {
      ctx.addIssue({ code: 'custom', path: ['memory'], message: 'must be at most 16T (2^32 pages)' });
    }
  });

/**
 * Makes the paths inside a scenario document read from `dir` (the scenario file's directory)
 * absolute: `workload.file`. A loader calls it on a file's document before `--set` overrides are
 * laid over it, so a relative path in a file means "next to the file" and one in `--set` means
 * "from the current directory". Returns a new document; anything not a string path is left for
 * the schema to reject.
 */
export function resolveScenarioPaths(doc: Record<string, unknown>, dir: string): Record<string, unknown> {
  const workload = doc['workload'];
  if (workload === null || typeof workload !== 'object' || Array.isArray(workload)) return doc;
  const file = (workload as Record<string, unknown>)['file'];
  if (typeof file !== 'string' || file === '' || isAbsolute(file)) return doc;
  return { ...doc, workload: { ...workload, file: resolve(dir, file) } };
}

/** Bytes of each backing's host page. */
export const BACKING_BYTES = { '4k': PAGE_SIZE, '2m': 2 ** 21, '1g': 2 ** 30 } as const;

/** A validated scenario: every default filled in, sizes and rates in bytes. */
export type Scenario = z.output<typeof scenarioSchema>;
/** A scenario as written in a file or preset. */
export type ScenarioInput = z.input<typeof scenarioSchema>;

/** Keys accepted at each dotted path, for "unknown key" messages. */
export function acceptedKeys(path: readonly (string | number)[]): string[] {
  let schema: z.ZodTypeAny = scenarioSchema;
  for (const key of [...path, undefined]) {
    for (;;) {
      if (schema instanceof z.ZodEffects) schema = schema.innerType();
      else if (schema instanceof z.ZodDefault) schema = schema._def.innerType;
      else if (schema instanceof z.ZodOptional) schema = schema.unwrap();
      else break;
    }
    if (!(schema instanceof z.ZodObject)) return [];
    const shape = schema.shape as Record<string, z.ZodTypeAny>;
    if (key === undefined) return Object.keys(shape);
    const next = shape[String(key)];
    if (next === undefined) return [];
    schema = next;
  }
  return [];
}

import {
  Bitmap,
  DirtytrackError,
  NS_PER_MS,
  NS_PER_S,
  PAGE_SIZE,
  type Clock,
  type DirtyLogSource,
  type LoggingControl,
  type MemslotInfo,
  type Rng,
} from '@dirtytrack/core';

/**
 * QEMU's dirty-rate measurement (`calc-dirty-rate` / `query-dirty-rate`, reference/qemu.md §6,
 * migration/dirtyrate.c) in the model plane: page-sampling, dirty-bitmap and dirty-ring modes,
 * with QEMU's validation, state machine, integer formulas and output fields.
 *
 * The model plane has no page contents, only which pages were written, so page-sampling hashes a
 * {@link PageContent}: {@link createVersionedMemory} keeps a write version per page and hashes
 * (page, version), which changes exactly when the page was written.
 */

const COMPONENT = 'dirty-rate';

/** `MIN_CALC_TIME_MS` / `MAX_CALC_TIME_MS`. */
export const DIRTYRATE_MIN_CALC_TIME_MS = 50;
export const DIRTYRATE_MAX_CALC_TIME_MS = 60_000;
/** `DIRTYRATE_DEFAULT_SAMPLE_PAGES` (per GiB) and `MIN_/MAX_SAMPLE_PAGE_COUNT`. */
export const DIRTYRATE_DEFAULT_SAMPLE_PAGES = 512;
export const DIRTYRATE_MIN_SAMPLE_PAGES = 128;
export const DIRTYRATE_MAX_SAMPLE_PAGES = 16384;
/**
 * Blocks smaller than this are not sampled: `MIN_RAMBLOCK_SIZE << 10` with MIN_RAMBLOCK_SIZE =
 * 128, i.e. 128 KiB (the QEMU comment says 128 MB, the shift says KiB; qemu.md §6).
 */
export const DIRTYRATE_MIN_RAMBLOCK_BYTES = 128 << 10;

export type DirtyRateMeasureMode = 'page-sampling' | 'dirty-bitmap' | 'dirty-ring';
export type DirtyRateStatus = 'unstarted' | 'measuring' | 'measured';
export type DirtyRateTimeUnit = 'second' | 'millisecond';

/** The content hash page-sampling reads (QEMU: xxhash of the page's 4 KiB). */
export interface PageContent {
  /** A 32-bit hash of page `page`'s current contents. */
  hashPage(page: number): number;
}

/**
 * Model-plane page contents: a write version per page. `hashPage(p)` is a 32-bit mix of
 * (p, version) that is a bijection of the version for a fixed page, so a page hashes differently
 * exactly when it was written since (until 2^32 writes to the same page wrap its version).
 */
export interface VersionedMemory extends PageContent {
  readonly pages: number;
  /** Write version of each page (starts at 0). */
  readonly versions: Uint32Array;
  /** Records guest writes to pages `offsets[0..count)` (a {@link WriteBatch}'s arrays). */
  recordWrites(offsets: Uint32Array, count: number): void;
}

export function createVersionedMemory(pages: number): VersionedMemory {
  if (!(Number.isSafeInteger(pages) && pages >= 1 && pages <= 2 ** 32)) {
    throw new DirtytrackError('invalid-argument', `pages: ${pages} is not an integer in [1, 2^32]`, {
      component: COMPONENT,
      field: 'pages',
    });
  }
  const versions = new Uint32Array(pages);
  return {
    pages,
    versions,
    recordWrites(offsets, count) {
      if (!(Number.isInteger(count) && count >= 0 && count <= offsets.length)) {
        throw new DirtytrackError(
          'invalid-argument',
          `recordWrites: count ${count} is not an integer in [0, ${offsets.length}]`,
          { component: COMPONENT, field: 'count' },
        );
      }
      for (let i = 0; i < count; i++) {
        const p = offsets[i] as number;
        if (!(p < pages)) {
          throw new DirtytrackError('out-of-range', `recordWrites: page ${p} is outside ${pages} pages`, {
            component: COMPONENT,
            field: 'offsets',
          });
        }
        versions[p] = ((versions[p] as number) + 1) >>> 0;
      }
    },
    hashPage(page) {
      const v = versions[page];
      if (v === undefined) {
        throw new DirtytrackError('out-of-range', `hashPage: page ${page} is outside ${pages} pages`, {
          component: COMPONENT,
          field: 'page',
        });
      }
      return fmix32((Math.imul(page, 0x9e3779b1) ^ v) >>> 0);
    },
  };
}

/** murmur3's 32-bit finaliser: a bijection on u32 with full avalanche. */
function fmix32(h0: number): number {
  let h = h0;
  h = Math.imul(h ^ (h >>> 16), 0x85ebca6b);
  h = Math.imul(h ^ (h >>> 13), 0xc2b2ae35);
  return (h ^ (h >>> 16)) >>> 0;
}

/** A RAMBlock as page-sampling sees it. */
export interface SampledBlock {
  /** `idstr`, e.g. `pc.ram`. Blocks are matched by it after the period. */
  readonly idstr: string;
  /** Target pages (4 KiB) of `used_length`. */
  readonly pages: number;
  readonly content: PageContent;
}

/**
 * The dirty ring as the dirty-ring mode reads it: structurally the ring reporter of
 * `@dirtytrack/reporters` (this package does not depend on it at run time). QEMU's per-vCPU
 * `cpu->dirty_pages` (entries reaped from that vCPU's ring) is `pushed(v) - used(v)`, with
 * `pushed(v)` read from the shared buffer ({@link DIRTY_RING_PUSHED_LAYOUT}).
 */
export interface DirtyRingView extends DirtyLogSource {
  readonly kind: 'ring';
  readonly vcpus: number;
  readonly entries: number;
  readonly buffer: SharedArrayBuffer;
  used(vcpu: number): number;
  reap(): number;
}

/**
 * Where a ring reporter keeps vCPU v's "entries ever pushed" counter: Int32 word
 * `(vcpus * entries * ENTRY_BYTES + HEADER_BYTES + v * RING_BLOCK_BYTES) / 4 + PUSHED`.
 * Mirrors `RING_LAYOUT` of `@dirtytrack/reporters` (a test checks they agree).
 */
export const DIRTY_RING_PUSHED_LAYOUT = {
  ENTRY_BYTES: 16,
  HEADER_BYTES: 64,
  RING_BLOCK_BYTES: 128,
  PUSHED: 1,
} as const;

/** The KVM dirty-log backend: a bitmap reporter (dirty-bitmap mode) or a ring (dirty-ring mode). */
export interface DirtyRateKvm {
  /** The slot's dirty log. A ring (`kind: 'ring'`) means `kvm_dirty_ring_enabled()`. */
  source: DirtyLogSource | DirtyRingView;
  /** Turns dirty logging on and off (the tracker): `GLOBAL_DIRTY_DIRTY_RATE` start/stop. */
  logging: LoggingControl;
  /** The guest's slot. The meter owns its dirty log for the length of a measurement. */
  slot: MemslotInfo;
}

export interface DirtyRateMeterOptions {
  /** Time (virtual in the model plane); `run` must advance it. */
  clock: Clock;
  /** Picks the sampled pages (QEMU: `g_rand_int_range`). */
  rng: Rng;
  /** page-sampling: the RAMBlocks. */
  blocks?: readonly SampledBlock[];
  /** page-sampling shorthand for one block `pc.ram` of `pages` pages. */
  content?: PageContent;
  pages?: number;
  /** dirty-bitmap / dirty-ring: the KVM dirty log. */
  kvm?: DirtyRateKvm;
}

export interface DirtyRateCalcOptions {
  /** Default `page-sampling`. */
  mode?: DirtyRateMeasureMode;
  /** `calc-time` in `calcTimeUnit`. Give this or `calcTimeMs`. */
  calcTime?: number;
  /** `calc-time-unit`, default `second`. */
  calcTimeUnit?: DirtyRateTimeUnit;
  /** Shorthand for `calcTime` with `calcTimeUnit: 'millisecond'`. */
  calcTimeMs?: number;
  /** `sample-pages` per GiB, page-sampling only; default 512, range 128..16384. */
  samplePages?: number;
  /** Advances the guest (and the clock) to `untilNs`: `engine.runGuestUntil`. */
  run: (untilNs: number) => void;
}

export interface DirtyRateVcpu {
  id: number;
  'dirty-rate': number;
}

/** `query-dirty-rate`'s `DirtyRateInfo`. */
export interface DirtyRateInfo {
  status: DirtyRateStatus;
  /** Seconds on the clock when the measurement started. */
  'start-time': number;
  /** The measured period in `calc-time-unit` (integer division, as `convert_time_unit`). */
  'calc-time': number;
  'calc-time-unit': DirtyRateTimeUnit;
  /** The per-GiB sample count; 0 once measured unless page-sampling. */
  'sample-pages': number;
  mode: DirtyRateMeasureMode;
  /** MB/s (MiB), present once measured; -1 if page-sampling had no block to sample. */
  'dirty-rate'?: number;
  /** dirty-ring mode only. */
  'vcpu-dirty-rate'?: DirtyRateVcpu[];
}

/** What `calc` returns: the measured `DirtyRateInfo`. */
export interface DirtyRateResult extends DirtyRateInfo {
  status: 'measured';
  'dirty-rate': number;
}

/** The raw counters behind the last result, for diagnostics and tests. */
export type DirtyRateCounters =
  | {
      mode: 'page-sampling';
      /** `total_dirty_samples`, `total_sample_count`, `total_block_mem_MB`. */
      dirtySamples: number;
      samples: number;
      totalMB: number;
      ms: number;
    }
  | { mode: 'dirty-bitmap'; startPages: number; endPages: number; throwAwayPages: number; ms: number }
  | { mode: 'dirty-ring'; vcpuPages: number[]; ms: number };

export interface DirtyRateMeter {
  /** `calc-dirty-rate`, run to completion (the guest runs `calc-time` via `options.run`). */
  calc(options: DirtyRateCalcOptions): DirtyRateResult;
  /** `query-dirty-rate`; callable from inside `run` (status `measuring`). */
  query(): DirtyRateInfo;
  readonly status: DirtyRateStatus;
  /** Counters of the last completed measurement, if any. */
  lastCounters(): DirtyRateCounters | undefined;
}

/** `calc-dirty-rate`'s arguments as {@link checkDirtyRateArgs} resolves them. */
export interface DirtyRateArgs {
  /** `calc-time` in `unit`, and in ms. */
  calcTime: number;
  unit: DirtyRateTimeUnit;
  calcTimeMs: number;
  mode: DirtyRateMeasureMode;
  /** Per GiB (the default where not given). */
  samplePages: number;
}

/**
 * `qmp_calc_dirty_rate`'s checks of its own arguments, in QEMU's order and with its messages
 * (calc-time and its unit, mode, sample-pages); `calc` runs them first, and a caller may run them
 * before it has a guest to measure. The checks that need the guest (ring or bitmap enabled, memory
 * to sample) stay in `calc`.
 */
export function checkDirtyRateArgs(o: Omit<DirtyRateCalcOptions, 'run'>): DirtyRateArgs {
  let calcTime: number;
  let unit: DirtyRateTimeUnit;
  if (o.calcTimeMs !== undefined) {
    if (o.calcTime !== undefined || o.calcTimeUnit !== undefined) {
      throw fail(
        'invalid-argument',
        'calc-time: give calcTimeMs or calcTime (+ calcTimeUnit), not both',
        'calc-time',
      );
    }
    calcTime = o.calcTimeMs;
    unit = 'millisecond';
  } else {
    if (o.calcTime === undefined) throw fail('invalid-argument', 'calc-time: missing', 'calc-time');
    calcTime = o.calcTime;
    unit = o.calcTimeUnit ?? 'second';
  }
  if (unit !== 'second' && unit !== 'millisecond') {
    throw fail(
      'invalid-argument',
      `calc-time-unit: ${String(unit)} is not second or millisecond`,
      'calc-time-unit',
    );
  }
  if (!Number.isSafeInteger(calcTime)) {
    throw fail('invalid-argument', `calc-time: ${calcTime} is not an integer`, 'calc-time');
  }
  const calcTimeMs = unit === 'second' ? calcTime * 1000 : calcTime;
  if (calcTimeMs < DIRTYRATE_MIN_CALC_TIME_MS || calcTimeMs > DIRTYRATE_MAX_CALC_TIME_MS) {
    throw fail(
      'invalid-argument',
      `Calculation time is out of range [${DIRTYRATE_MIN_CALC_TIME_MS}ms, ${DIRTYRATE_MAX_CALC_TIME_MS}ms].`,
      'calc-time',
    );
  }
  const mode = o.mode ?? 'page-sampling';
  if (mode !== 'page-sampling' && mode !== 'dirty-bitmap' && mode !== 'dirty-ring') {
    throw fail('invalid-argument', `mode: ${String(mode)} is not a DirtyRateMeasureMode`, 'mode');
  }
  if (o.samplePages !== undefined && mode !== 'page-sampling') {
    throw fail('invalid-argument', 'sample-pages is used only in page-sampling mode', 'sample-pages');
  }
  const samplePages = o.samplePages ?? DIRTYRATE_DEFAULT_SAMPLE_PAGES;
  if (
    !Number.isSafeInteger(samplePages) ||
    samplePages < DIRTYRATE_MIN_SAMPLE_PAGES ||
    samplePages > DIRTYRATE_MAX_SAMPLE_PAGES
  ) {
    throw fail(
      'invalid-argument',
      `sample-pages is out of range[${DIRTYRATE_MIN_SAMPLE_PAGES}, ${DIRTYRATE_MAX_SAMPLE_PAGES}].`,
      'sample-pages',
    );
  }
  return { calcTime, unit, calcTimeMs, mode, samplePages };
}

/**
 * page-sampling: `dirty_samples * total_MB * 1000 / (samples * ms)`, in u64 integer arithmetic
 * as `update_dirtyrate`.
 */
export function samplingDirtyRate(
  dirtySamples: number,
  totalMB: number,
  samples: number,
  ms: number,
): number {
  return Number((BigInt(dirtySamples) * BigInt(totalMB) * 1000n) / (BigInt(samples) * BigInt(ms)));
}

/**
 * dirty-bitmap / dirty-ring (qemu.md §6): `(Δpages * page >> 20) * 1000 / ms`. (QEMU 10.x's
 * `do_calculate_dirtyrate` multiplies by 1000 before the shift — `MiB(Δ*1000)/ms` — which
 * differs only in truncation; the reference's form is used here.)
 */
export function pagesDirtyRate(pages: number, ms: number): number {
  const mib = (BigInt(pages) * BigInt(PAGE_SIZE)) >> 20n;
  return Number((mib * 1000n) / BigInt(ms));
}

function fail(
  code: 'invalid-argument' | 'invalid-state' | 'unsupported' | 'internal',
  message: string,
  field?: string,
): DirtytrackError {
  return new DirtytrackError(code, message, { component: COMPONENT, ...(field ? { field } : {}) });
}

function isRing(source: DirtyLogSource): source is DirtyRingView {
  const r = source as Partial<DirtyRingView>;
  return (
    source.kind === 'ring' &&
    typeof r.reap === 'function' &&
    typeof r.used === 'function' &&
    typeof SharedArrayBuffer !== 'undefined' &&
    r.buffer instanceof SharedArrayBuffer
  );
}

export function createDirtyRateMeter(options: DirtyRateMeterOptions): DirtyRateMeter {
  const { clock, rng, kvm } = options;
  const blocks: readonly SampledBlock[] =
    options.blocks ??
    (options.content !== undefined && options.pages !== undefined
      ? [{ idstr: 'pc.ram', pages: options.pages, content: options.content }]
      : []);
  for (const b of blocks) {
    if (!(Number.isSafeInteger(b.pages) && b.pages >= 0)) {
      throw fail('invalid-argument', `block ${b.idstr}: pages ${b.pages} is not an integer >= 0`, 'blocks');
    }
  }
  const ringEnabled = kvm !== undefined && isRing(kvm.source);

  let status: DirtyRateStatus = 'unstarted';
  let info: DirtyRateInfo = {
    status: 'unstarted',
    'start-time': 0,
    'calc-time': 0,
    'calc-time-unit': 'second',
    'sample-pages': 0,
    mode: 'page-sampling',
  };
  let counters: DirtyRateCounters | undefined;

  const startSeconds = (): number => Math.floor(clock.now() / NS_PER_S);

  /** `dirty_stat_wait`: runs the guest to `init + ms`, returns the elapsed whole ms. */
  const wait = (run: (untilNs: number) => void, initNs: number, ms: number): number => {
    const until = initNs + ms * NS_PER_MS;
    run(until);
    const now = clock.now();
    if (now < until) {
      throw fail(
        'internal',
        `run(${until}) returned at ${now} ns: it must advance the clock to the end of calc-time`,
      );
    }
    return Math.floor((now - initNs) / NS_PER_MS);
  };

  const measureSampling = (samplePages: number, ms: number, run: (untilNs: number) => void) => {
    // record_ramblock_hash_info
    const initNs = clock.now();
    info['start-time'] = startSeconds();
    const recorded: { block: SampledBlock; vfn: Float64Array; hash: Uint32Array }[] = [];
    for (const block of blocks) {
      const bytes = block.pages * PAGE_SIZE;
      if (bytes < DIRTYRATE_MIN_RAMBLOCK_BYTES) continue; // skip_sample_ramblock
      const count = Number((BigInt(bytes) * BigInt(samplePages)) >> 30n);
      if (block.pages === 0 || count === 0) continue; // save_ramblock_hash: nothing to sample
      const vfn = new Float64Array(count);
      const hash = new Uint32Array(count);
      for (let i = 0; i < count; i++) {
        const p = rng.nextInt(block.pages - 1); // g_rand_int_range(0, pages - 1): [0, pages-1)
        vfn[i] = p;
        hash[i] = block.content.hashPage(p) >>> 0;
      }
      recorded.push({ block, vfn, hash });
    }
    const measured = wait(run, initNs, ms);
    // compare_page_hash_info + update_dirtyrate_stat
    let dirtySamples = 0;
    let samples = 0;
    let totalMB = 0;
    for (const r of recorded) {
      let dirty = 0;
      for (let i = 0; i < r.vfn.length; i++) {
        if (r.block.content.hashPage(r.vfn[i] as number) >>> 0 !== r.hash[i]) dirty++;
      }
      dirtySamples += dirty;
      samples += r.vfn.length;
      totalMB += Math.floor((r.block.pages * PAGE_SIZE) / 2 ** 20);
    }
    counters = { mode: 'page-sampling', dirtySamples, samples, totalMB, ms: measured };
    // No sample at all: compare_page_hash_info fails and the rate stays at init's -1.
    return {
      ms: measured,
      rate: samples === 0 ? -1 : samplingDirtyRate(dirtySamples, totalMB, samples, measured),
    };
  };

  const measureBitmap = (k: DirtyRateKvm, ms: number, run: (untilNs: number) => void) => {
    const { source, logging, slot } = k;
    const scratch = Bitmap.create(slot.pages);
    logging.enableLogging(slot); // memory_global_dirty_log_start(GLOBAL_DIRTY_DIRTY_RATE)
    let stopped = false;
    try {
      // One throw-away sync: with KVM_DIRTY_LOG_INITIALLY_SET it may report every page.
      const throwAwayPages = source.getDirtyLog(slot.id, scratch);
      // dirtyrate_manual_reset_protect: memory_region_clear_dirty_bitmap over the block, which
      // (manual protect only) clears and re-protects the bits the sync just collected.
      if (source.clearDirtyLog !== undefined && throwAwayPages > 0) {
        source.clearDirtyLog(slot.id, 0, slot.pages, scratch);
      }
      let total = 0; // total_dirty_pages, counted from here on
      const startPages = total;
      const initNs = clock.now();
      info['start-time'] = startSeconds();
      const measured = wait(run, initNs, ms);
      // global_dirty_log_sync(GLOBAL_DIRTY_DIRTY_RATE, one_shot): sync, then stop logging.
      total += source.getDirtyLog(slot.id, scratch);
      stopped = true;
      logging.disableLogging(slot.id);
      counters = { mode: 'dirty-bitmap', startPages, endPages: total, throwAwayPages, ms: measured };
      return { ms: measured, rate: pagesDirtyRate(total - startPages, measured) };
    } finally {
      if (!stopped) logging.disableLogging(slot.id);
    }
  };

  const measureRing = (k: DirtyRateKvm, ring: DirtyRingView, ms: number, run: (untilNs: number) => void) => {
    const { logging, slot } = k;
    const L = DIRTY_RING_PUSHED_LAYOUT;
    const idx = new Int32Array(ring.buffer);
    const base = (ring.vcpus * ring.entries * L.ENTRY_BYTES + L.HEADER_BYTES) / 4;
    /** QEMU's `cpu->dirty_pages`: entries reaped from vCPU v's ring so far (u32). */
    const dirtyPages = (v: number): number =>
      ((Atomics.load(idx, base + (v * L.RING_BLOCK_BYTES) / 4 + L.PUSHED) >>> 0) - ring.used(v)) >>> 0;
    const scratch = Bitmap.create(slot.pages);
    logging.enableLogging(slot); // global_dirty_log_change(GLOBAL_DIRTY_DIRTY_RATE, true)
    let stopped = false;
    try {
      info['start-time'] = startSeconds();
      // vcpu_calculate_dirtyrate (the CPU list never changes here, so no retry)
      const initNs = clock.now();
      const start = Array.from({ length: ring.vcpus }, (_, v) => dirtyPages(v));
      const measured = wait(run, initNs, ms);
      // global_dirty_log_sync: kvm_log_sync_global reaps every ring and pushes the slot bitmap up.
      ring.getDirtyLog(slot.id, scratch);
      stopped = true;
      logging.disableLogging(slot.id);
      const vcpuPages = start.map((s, v) => (dirtyPages(v) - s) >>> 0);
      const rates = vcpuPages.map((pages, id) => ({ id, 'dirty-rate': pagesDirtyRate(pages, measured) }));
      counters = { mode: 'dirty-ring', vcpuPages, ms: measured };
      return { ms: measured, rate: rates.reduce((sum, r) => sum + r['dirty-rate'], 0), rates };
    } finally {
      if (!stopped) logging.disableLogging(slot.id);
    }
  };

  const meter: DirtyRateMeter = {
    get status() {
      return status;
    },
    query() {
      const copy: DirtyRateInfo = { ...info, status };
      if (info['vcpu-dirty-rate'] !== undefined) {
        copy['vcpu-dirty-rate'] = info['vcpu-dirty-rate'].map((r) => ({ ...r }));
      }
      return copy;
    },
    lastCounters() {
      return counters;
    },
    calc(o) {
      // qmp_calc_dirty_rate, checks in QEMU's order.
      if (status === 'measuring') {
        throw fail('invalid-state', 'the dirty rate is already being measured.');
      }
      if (typeof o.run !== 'function') throw fail('invalid-argument', 'run: not a function', 'run');
      const { calcTime, unit, calcTimeMs, mode, samplePages } = checkDirtyRateArgs(o);
      if ((mode === 'dirty-ring' && !ringEnabled) || (mode === 'dirty-bitmap' && ringEnabled)) {
        throw fail('unsupported', `mode ${mode} is not enabled, use other method instead.`, 'mode');
      }
      if (mode === 'dirty-bitmap' && kvm === undefined) {
        throw fail('unsupported', 'mode dirty-bitmap needs a KVM dirty log (options.kvm)', 'mode');
      }
      if (mode === 'page-sampling' && blocks.length === 0) {
        throw fail(
          'unsupported',
          'mode page-sampling needs guest memory to hash (options.blocks or content + pages)',
          'mode',
        );
      }

      // init_dirtyrate_stat; the thread moves unstarted → measuring → measured.
      const previous = { status, info, counters };
      info = {
        status: 'measuring',
        'start-time': startSeconds(),
        'calc-time': calcTime,
        'calc-time-unit': unit,
        'sample-pages': samplePages,
        mode,
      };
      status = 'measuring';
      try {
        let r: { ms: number; rate: number; rates?: DirtyRateVcpu[] };
        if (mode === 'page-sampling') r = measureSampling(samplePages, calcTimeMs, o.run);
        else if (mode === 'dirty-bitmap') r = measureBitmap(kvm as DirtyRateKvm, calcTimeMs, o.run);
        else
          r = measureRing(
            kvm as DirtyRateKvm,
            (kvm as DirtyRateKvm).source as DirtyRingView,
            calcTimeMs,
            o.run,
          );
        const result: DirtyRateResult = {
          status: 'measured',
          'start-time': info['start-time'],
          'calc-time': unit === 'second' ? Math.trunc(r.ms / 1000) : r.ms,
          'calc-time-unit': unit,
          'sample-pages': mode === 'page-sampling' ? samplePages : 0,
          mode,
          'dirty-rate': r.rate,
          ...(r.rates !== undefined ? { 'vcpu-dirty-rate': r.rates } : {}),
        };
        info = result;
        status = 'measured';
        return meter.query() as DirtyRateResult;
      } catch (error) {
        // An aborted measurement (the guest or a layer below threw) leaves the previous state.
        ({ status, info, counters } = previous);
        throw error;
      }
    },
  };
  return meter;
}

/**
 * How close the `fused` merge at 1% dirty is to the least any merge through a one-bit-per-word
 * summary can cost, on the slides' sizes (3 TiB and 8 TiB guests: 96 and 256 MiB bitmaps).
 *
 * One shared WebAssembly memory, laid out as the `fused` cases of `dirtytrack bench bitmap` use
 * it: T (the harvested buffer) and its summary, bmap and its summary, T's line list. T holds 1% of
 * the pages as randomly placed 2 MiB-aligned runs of 512 pages (one 64-byte line of bitmap each,
 * seeded), listed in its line list; bmap holds one page, so the merge cannot adopt (each merge case
 * starts from that state: everything else zero). Every
 * repetition runs each case once, the order rotating, each right after a copy of a 256 MiB (8T)
 * or 96 MiB (3T) buffer that leaves the caches cold (timed too: the memcpy column):
 * - `merge 1%`: the production kernel, `merge_summary` through T's line list (T leaves zeroed);
 * - `merge 100%`: the same kernel with every page of T dirty (its summary scan and memory.copy);
 * - `floor: lines`, `floor: summaries`, `floor: lines + summaries`: `touch_lines`, only the loads
 *   a summary merge cannot avoid at each listed line — the line in T and in bmap, the line's byte in
 *   each summary — and nothing else.
 * The ratios are medians of each repetition's own ratio.
 *
 *   pnpm --filter @dirtytrack/qemu-layers bench     (BENCH_SIZES=3T,8T  BENCH_REPS=9  BENCH_SEED)
 */
import { createRng, formatSize, PAGE_SIZE, parseSize } from '@dirtytrack/core';
import { BITMAP_KERNELS_WASM_BASE64 } from '@dirtytrack/qemu-layers';

import { round, writeReport, type BenchRow } from '../../../scripts/bench-report.js';
import { adviseHugePages, anonHugePagesKiB } from '../src/huge-pages.js';
import { decodeBase64, wasmApi, type WasmApi } from '../src/kernels/bitmap-kernels.js';
import { SCRATCH_BYTES, type MergeExports } from '../src/kernels/wasm-allocator.js';

const sizes = (process.env['BENCH_SIZES'] ?? '3T,8T').split(',').map((s) => parseSize(s.trim()));
const reps = Number(process.env['BENCH_REPS'] ?? 9);
const seed = Number(process.env['BENCH_SEED'] ?? 24301);
/** Pages per dirty run: 2 MiB of guest, one 64-byte line of bitmap. */
const RUN_PAGES = 512;

/** The merge kernel, and the floor under it. */
interface Kernel extends Pick<MergeExports, 'merge_summary'> {
  touch_lines(
    tw: number,
    ts: number,
    bw: number,
    bs: number,
    lines: number,
    nlines: number,
    what: number,
    scratch: number,
  ): void;
}

const wasm = wasmApi() as WasmApi;
const module = new wasm.Module(decodeBase64(BITMAP_KERNELS_WASM_BASE64));
const cases = [
  'merge 1%',
  'merge 100%',
  'floor: lines',
  'floor: summaries',
  'floor: lines + summaries',
] as const;
type Case = (typeof cases)[number];

const rows: BenchRow[] = [];
const perSize: Record<string, unknown> = {};
const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[xs.length >> 1] as number;

for (const memory of sizes) {
  const label = formatSize(memory);
  const pages = memory / PAGE_SIZE;
  const bitmapBytes = pages / 8;
  const summaryBytes = bitmapBytes / 64;
  const lineCount = bitmapBytes / 64;
  const runs = Math.round(pages / 100 / RUN_PAGES);
  const at = { tw: 0, ts: bitmapBytes, bw: bitmapBytes + summaryBytes, bs: 2 * bitmapBytes + summaryBytes };
  const linesAt = 2 * (bitmapBytes + summaryBytes);
  const scratch = linesAt + runs * 4;
  const wasmPages = Math.ceil((scratch + SCRATCH_BYTES) / 65536);
  const mem = new wasm.Memory({ initial: wasmPages, maximum: wasmPages, shared: true });
  const hugeBefore = anonHugePagesKiB();
  const huge = adviseHugePages(mem.buffer);
  const k = new wasm.Instance(module, { env: { memory: mem } }).exports as Kernel;
  const u8 = new Uint8Array(mem.buffer);
  const u32 = new Uint32Array(mem.buffer);
  u8.fill(0);
  const hugeKiB = hugeBefore === undefined ? null : (anonHugePagesKiB() ?? 0) - hugeBefore;

  // Floyd's sampling of `runs` distinct lines, listed in ascending order (as a producer sweeping
  // memory lists them, and as the bench's clustered pattern is).
  const rng = createRng(seed);
  const picked = new Uint8Array(lineCount);
  for (let j = lineCount - runs; j < lineCount; j++) {
    const t = rng.nextInt(j + 1);
    picked[picked[t] === 0 ? t : j] = 1;
  }
  const lines = new Uint32Array(mem.buffer, linesAt, runs);
  for (let l = 0, n = 0; l < lineCount; l++) if (picked[l] === 1) lines[n++] = l;
  const kept = lines[0] as number;

  const evictSrc = new Uint8Array(bitmapBytes).fill(1);
  const evictDst = new Uint8Array(bitmapBytes);
  /** T, bmap and both summaries all zero but for one page of the first run in bmap. */
  const bmapOnePage = (): void => {
    u8.fill(0, at.tw, at.bs + summaryBytes);
    u32[(at.bw + kept * 64) / 4] = 1;
    u8[at.bs + kept] = 1;
  };
  const dirtyOnePct = (): void => {
    for (const l of lines) {
      u32.fill(0xffff_ffff, (at.tw + l * 64) / 4, (at.tw + l * 64 + 64) / 4);
      u8[at.ts + l] = 0xff;
    }
  };
  const prepare: Record<Case, () => void> = {
    'merge 1%': () => {
      bmapOnePage();
      dirtyOnePct();
    },
    'merge 100%': () => {
      bmapOnePage();
      u8.fill(0xff, at.tw, at.tw + bitmapBytes + summaryBytes);
    },
    'floor: lines': dirtyOnePct,
    'floor: summaries': dirtyOnePct,
    'floor: lines + summaries': dirtyOnePct,
  };
  const n = summaryBytes / 4;
  const words = bitmapBytes / 8;
  const run: Record<Case, () => void> = {
    'merge 1%': () => k.merge_summary(at.tw, at.ts, at.bw, at.bs, n, words, linesAt, runs, scratch),
    'merge 100%': () => k.merge_summary(at.tw, at.ts, at.bw, at.bs, n, words, 0, -1, scratch),
    'floor: lines': () => k.touch_lines(at.tw, at.ts, at.bw, at.bs, linesAt, runs, 1, scratch),
    'floor: summaries': () => k.touch_lines(at.tw, at.ts, at.bw, at.bs, linesAt, runs, 2, scratch),
    'floor: lines + summaries': () => k.touch_lines(at.tw, at.ts, at.bw, at.bs, linesAt, runs, 3, scratch),
  };
  /**
   * Untimed, after each merge: bmap holds every page of T (every word of each listed line, or of
   * the whole bitmap) and its summary names exactly those lines; after the 1% merge T's listed
   * lines and summary bytes are zero again.
   */
  const check = (c: Case): void => {
    if (c === 'merge 1%') {
      for (const l of lines) {
        for (let w = (at.bw + l * 64) / 4, e = w + 16; w < e; w++) {
          if (u32[w] !== 0xffff_ffff) throw new Error(`${label} merge 1%: line ${l} of bmap is not all set`);
        }
        if (u8[at.bs + l] !== 0xff) throw new Error(`${label} merge 1%: bmap's summary lacks line ${l}`);
        if (u32[(at.tw + l * 64) / 4] !== 0 || u8[at.ts + l] !== 0) {
          throw new Error(`${label} merge 1%: line ${l} of T is not zeroed`);
        }
      }
      let named = 0;
      for (let b = at.bs; b < at.bs + summaryBytes; b++) if (u8[b] !== 0) named++;
      if (named !== runs)
        throw new Error(`${label} merge 1%: bmap's summary names ${named} lines, not ${runs}`);
    } else if (c === 'merge 100%') {
      for (let w = at.bw / 4, e = (at.bw + bitmapBytes) / 4; w < e; w++) {
        if (u32[w] !== 0xffff_ffff) throw new Error(`${label} merge 100%: bmap is not all set`);
      }
      for (let b = at.bs; b < at.bs + summaryBytes; b++) {
        if (u8[b] !== 0xff) throw new Error(`${label} merge 100%: bmap's summary is not all set`);
      }
    }
  };

  const ms: Record<Case, number[]> = Object.fromEntries(cases.map((c) => [c, []])) as never;
  const memcpyMs: number[] = [];
  const ratio = { 'merge-1pct-vs-merge-100pct': [] as number[], 'floor-vs-merge-100pct': [] as number[] };
  for (let r = -1; r < reps; r++) {
    const mine = {} as Record<Case, number>;
    for (let i = 0; i < cases.length; i++) {
      const c = cases[(i + Math.max(r, 0)) % cases.length] as Case;
      prepare[c]();
      const t0 = process.hrtime.bigint();
      evictDst.set(evictSrc);
      const t1 = process.hrtime.bigint();
      run[c]();
      const t2 = process.hrtime.bigint();
      check(c);
      mine[c] = Number(t2 - t1) / 1e6;
      if (r >= 0) memcpyMs.push(Number(t1 - t0) / 1e6);
    }
    if (r < 0) continue; // warm-up
    for (const c of cases) ms[c].push(mine[c]);
    ratio['merge-1pct-vs-merge-100pct'].push(mine['merge 1%'] / mine['merge 100%']);
    ratio['floor-vs-merge-100pct'].push(mine['floor: lines + summaries'] / mine['merge 100%']);
  }
  for (const c of cases) {
    const t = ms[c];
    rows.push({
      name: `${label}: ${c}`,
      medianMs: round(median(t)),
      minMs: round(Math.min(...t)),
      maxMs: round(Math.max(...t)),
      reps,
    });
  }
  const floor = median(ms['floor: lines + summaries']);
  perSize[label] = {
    'bitmap-bytes': bitmapBytes,
    'dirty-lines': runs,
    'huge-pages': huge,
    'anon-huge-pages-kib': hugeKiB,
    'memcpy-ms': round(median(memcpyMs)),
    'merge-1pct-vs-merge-100pct': round(median(ratio['merge-1pct-vs-merge-100pct'])),
    'floor-vs-merge-100pct': round(median(ratio['floor-vs-merge-100pct'])),
    'merge-1pct-vs-floor': round(median(ms['merge 1%']) / floor),
    'ns-per-line': {
      merge: round((median(ms['merge 1%']) * 1e6) / runs),
      floor: round((floor * 1e6) / runs),
    },
  };
}

writeReport(
  import.meta.dirname + '/..',
  'merge-floor',
  `The fused merge at 1% dirty against its floor, ${sizes.map((s) => formatSize(s)).join(' and ')} guests (seed ${seed})`,
  rows,
  { reps, sizes: perSize },
);

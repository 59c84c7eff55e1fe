/**
 * Timing helpers every `dirtytrack bench` shares: medians of several repetitions after warm-up,
 * and pairs timed one right after the other in each repetition (side by side, so a noisy shared
 * machine slows both alike and the ratio holds).
 */

/** Median ms of `a` and of `b`, each repetition running `prepare` (untimed), then `a`, then `b`. */
export function pairedMedians(
  reps: number,
  prepare: () => void,
  a: () => void,
  b: () => void,
  warmups = 2,
): { a: number; b: number } {
  const ta: number[] = [];
  const tb: number[] = [];
  for (let i = 0; i < warmups + reps; i++) {
    prepare();
    const t0 = process.hrtime.bigint();
    a();
    const t1 = process.hrtime.bigint();
    b();
    const t2 = process.hrtime.bigint();
    if (i >= warmups) {
      ta.push(Number(t1 - t0) / 1e6);
      tb.push(Number(t2 - t1) / 1e6);
    }
  }
  return { a: medianOf(ta), b: medianOf(tb) };
}

/**
 * Median ms of `run` over `reps` repetitions after `warmups` (default 2), each after an untimed
 * `prepare` and followed by an untimed `after` (e.g. a check of the result).
 */
export function medianMs(
  reps: number,
  prepare: () => void,
  run: () => void,
  options: { warmups?: number; after?: () => void } = {},
): number {
  const warmups = options.warmups ?? 2;
  const times: number[] = [];
  for (let i = 0; i < warmups + reps; i++) {
    prepare();
    const t0 = process.hrtime.bigint();
    run();
    const ms = Number(process.hrtime.bigint() - t0) / 1e6;
    options.after?.();
    if (i >= warmups) times.push(ms);
  }
  return medianOf(times);
}

/** The median of `times`, to four significant digits. */
export function medianOf(times: number[]): number {
  const sorted = [...times].sort((x, y) => x - y);
  return fourDigits(sorted[Math.floor(sorted.length / 2)] as number);
}

/** Four significant digits: keeps sub-microsecond medians non-zero and ratios readable. */
export function fourDigits(x: number): number {
  return Number(x.toPrecision(4));
}

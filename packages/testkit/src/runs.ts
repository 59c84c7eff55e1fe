import fc from 'fast-check';

/**
 * Property-test case counts: `fallback` by default, or `DIRTYTRACK_PROPERTY_RUNS` for long runs
 * (e.g. `DIRTYTRACK_PROPERTY_RUNS=100000 pnpm test`). fast-check prints the seed and path of any
 * failure, and `DIRTYTRACK_PROPERTY_SEED` replays one.
 */
export function propertyRuns(fallback: number): number {
  const raw = process.env['DIRTYTRACK_PROPERTY_RUNS'];
  const n = raw === undefined ? fallback : Number(raw);
  return Number.isInteger(n) && n > 0 ? n : fallback;
}

/**
 * `fc.assert(property)` over `total` cases ({@link propertyRuns}`(fallback)` unless the test
 * scales its own). By default that is one `fc.assert` of `fallback` runs with `params` as given.
 * More (`DIRTYTRACK_PROPERTY_RUNS`, or a larger `total`) go in chunks of `fallback` runs — each chunk after the first on a seed of its own, derived
 * from `params.seed` when there is one — and lets the event loop run between chunks: a test that
 * held the thread for over a minute made vitest's worker report a timeout of its own and fail
 * the run, whatever the test's timeout.
 */
export async function assertProperty<Ts>(
  property: fc.IProperty<Ts>,
  fallback: number,
  params: Omit<fc.Parameters<Ts>, 'numRuns'> = {},
  /** The runs in all, when a test scales them itself (in chunks of `fallback` all the same). */
  total = propertyRuns(fallback),
): Promise<void> {
  for (let done = 0, chunk = 0; done < total; chunk++) {
    const numRuns = Math.min(fallback, total - done);
    const seed =
      params.seed === undefined || chunk === 0 ? params.seed : (params.seed + chunk * 0x9e3779b9) | 0;
    fc.assert(property, { ...params, numRuns, ...(seed === undefined ? {} : { seed }) });
    done += numRuns;
    if (done < total) await new Promise<void>((resolve) => setImmediate(resolve));
  }
}

/** `DIRTYTRACK_PROPERTY_SEED` as fast-check's `seed`, when it is set: replays a printed failure. */
export function replaySeed(): { seed?: number } {
  const raw = process.env['DIRTYTRACK_PROPERTY_SEED'];
  const seed = raw === undefined || raw.trim() === '' ? NaN : Number(raw);
  return Number.isSafeInteger(seed) ? { seed } : {};
}

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

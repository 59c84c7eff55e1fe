import fc, { type IProperty, type Parameters } from 'fast-check';

/**
 * `fc.assert(property)` over `defaultRuns` runs, or `DIRTYTRACK_PROPERTY_RUNS` for a soak — then
 * in chunks of `defaultRuns` (each after the first on a seed of its own, derived from
 * `params.seed`), letting the event loop run between them: a test that holds the thread past a
 * minute fails vitest's worker whatever its timeout. `@dirtytrack/testkit`'s `assertProperty`,
 * which this package's tests cannot use (testkit depends on this package).
 */
export async function assertProperty<T>(
  property: IProperty<T>,
  defaultRuns: number,
  params: Omit<Parameters<T>, 'numRuns'> = {},
): Promise<void> {
  const raw = Number(process.env['DIRTYTRACK_PROPERTY_RUNS']);
  const total = Number.isInteger(raw) && raw > 0 ? raw : defaultRuns;
  for (let done = 0, chunk = 0; done < total; chunk++) {
    const numRuns = Math.min(defaultRuns, total - done);
    const seed =
      params.seed === undefined || chunk === 0 ? params.seed : (params.seed + chunk * 0x9e3779b9) | 0;
    fc.assert(property, { ...params, numRuns, ...(seed === undefined ? {} : { seed }) });
    done += numRuns;
    if (done < total) await new Promise<void>((resolve) => setImmediate(resolve));
  }
}

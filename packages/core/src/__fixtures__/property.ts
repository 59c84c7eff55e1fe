import fc, { type IProperty, type Parameters } from 'fast-check';

/**
 * fast-check parameters for the core property tests. fast-check picks a random seed and prints it
 * (with the shrink path) when a property fails; replay with DIRTYTRACK_PROPERTY_SEED=<seed>
 * (and the printed path via fast-check's `path` if needed). DIRTYTRACK_PROPERTY_RUNS overrides
 * every property's number of runs, e.g. DIRTYTRACK_PROPERTY_RUNS=10000 for a soak.
 */
function propertyParams<T = unknown>(defaultRuns: number): Parameters<T> {
  const params: Parameters<T> = { numRuns: envInt('DIRTYTRACK_PROPERTY_RUNS', 1) ?? defaultRuns };
  const seed = envInt('DIRTYTRACK_PROPERTY_SEED', -(2 ** 31));
  if (seed !== undefined) params.seed = seed;
  return params;
}

/**
 * `fc.assert` with {@link propertyParams}: one call of `defaultRuns` runs by default; a soak in
 * chunks of `defaultRuns` (each after the first on a seed of its own), letting the event loop run
 * between them — a test that holds the thread past a minute fails vitest's worker whatever its
 * timeout. `@dirtytrack/testkit`'s `assertProperty` does the same for the packages that can use it
 * (it depends on core, so core's tests cannot).
 */
export async function assertProperty<T>(property: IProperty<T>, defaultRuns: number): Promise<void> {
  const { numRuns: total = defaultRuns, seed: first } = propertyParams<T>(defaultRuns);
  for (let done = 0, chunk = 0; done < total; chunk++) {
    const numRuns = Math.min(defaultRuns, total - done);
    const seed = first === undefined || chunk === 0 ? first : (first + chunk * 0x9e3779b9) | 0;
    fc.assert(property, { numRuns, ...(seed === undefined ? {} : { seed }) });
    done += numRuns;
    if (done < total) await new Promise<void>((resolve) => setImmediate(resolve));
  }
}

function envInt(name: string, min: number): number | undefined {
  const raw = process.env[name];
  if (raw === undefined || raw.trim() === '') return undefined;
  const value = Number(raw);
  if (!Number.isSafeInteger(value) || value < min) {
    throw new Error(`${name} must be an integer >= ${min}, got ${JSON.stringify(raw)}`);
  }
  return value;
}

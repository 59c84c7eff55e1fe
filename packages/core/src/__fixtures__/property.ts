import type { Parameters } from 'fast-check';

/**
 * fast-check parameters for the core property tests. fast-check picks a random seed and prints it
 * (with the shrink path) when a property fails; replay with DIRTYTRACK_PROPERTY_SEED=<seed>
 * (and the printed path via fast-check's `path` if needed). DIRTYTRACK_PROPERTY_RUNS overrides
 * every property's number of runs, e.g. DIRTYTRACK_PROPERTY_RUNS=10000 for a soak.
 */
export function propertyParams<T = unknown>(defaultRuns: number): Parameters<T> {
  const params: Parameters<T> = { numRuns: envInt('DIRTYTRACK_PROPERTY_RUNS', 1) ?? defaultRuns };
  const seed = envInt('DIRTYTRACK_PROPERTY_SEED', -(2 ** 31));
  if (seed !== undefined) params.seed = seed;
  return params;
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

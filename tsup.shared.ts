import { defineConfig, type Options } from 'tsup';

/** The build every publishable package shares: ESM + .d.ts for Node 20, from src/index.ts. */
export function packageBuild(overrides: Options = {}) {
  return defineConfig({
    entry: ['src/index.ts'],
    format: ['esm'],
    dts: true,
    clean: true,
    sourcemap: true,
    target: 'node20',
    ...overrides,
  });
}

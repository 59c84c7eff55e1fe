import type { UserWorkspaceConfig } from 'vitest/config';

/**
 * Settings every package's vitest project shares. The `@dirtytrack/source` export condition
 * points sibling packages at their `src/`, so tests never need a build first.
 */
export function sharedProject(name: string): UserWorkspaceConfig {
  // Vite's default server conditions, with ours first.
  const conditions = ['@dirtytrack/source', 'module', 'node', 'development|production'];
  return {
    resolve: { conditions },
    ssr: { resolve: { conditions, externalConditions: ['@dirtytrack/source'] } },
    test: {
      name,
      environment: 'node',
      include: ['src/**/*.test.ts', 'test/**/*.test.ts'],
      // A soak (DIRTYTRACK_PROPERTY_RUNS) runs each property as long as its runs take.
      testTimeout: process.env['DIRTYTRACK_PROPERTY_RUNS'] === undefined ? 60_000 : 0,
      hookTimeout: 60_000,
    },
  };
}

// @ts-check
import js from '@eslint/js';
import tseslint from 'typescript-eslint';

export default tseslint.config(
  { ignores: ['**/dist/**', '**/node_modules/**', '**/bench-results/**', '**/.turbo/**'] },
  js.configs.recommended,
  ...tseslint.configs.strict,
  {
    rules: {
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_' }],
      '@typescript-eslint/consistent-type-imports': 'error',
      'no-restricted-imports': [
        'error',
        {
          patterns: [
            {
              group: ['@dirtytrack/*/src', '@dirtytrack/*/src/*', '@dirtytrack/*/dist/*', '../../*/src/*'],
              message: 'Import a sibling package by its name, never its internals.',
            },
          ],
        },
      ],
    },
  },
  {
    // Components take a Clock and an Rng; only tests and apps may touch the real ones directly.
    files: ['packages/*/src/**/*.ts'],
    // Test infrastructure (testkit, fixtures) may time out on the real clock.
    ignores: ['**/*.test.ts', '**/__fixtures__/**', 'packages/testkit/**', 'packages/core/src/clock.ts'],
    rules: {
      'no-restricted-properties': [
        'error',
        { object: 'Math', property: 'random', message: 'Inject an Rng from @dirtytrack/core.' },
        { object: 'Date', property: 'now', message: 'Inject a Clock from @dirtytrack/core.' },
        { object: 'performance', property: 'now', message: 'Inject a Clock from @dirtytrack/core.' },
      ],
    },
  },
);

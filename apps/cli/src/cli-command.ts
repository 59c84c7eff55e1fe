import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

/**
 * How to start this CLI in a child process (a destination, a bench's measured run): the built
 * `bin.js` next to this module, or — when running from the TypeScript sources (tests) —
 * `src/bin.ts` through tsx with the source condition. Arguments for `process.execPath`.
 */
export function cliCommand(): string[] {
  const built = fileURLToPath(new URL('./bin.js', import.meta.url));
  if (import.meta.url.endsWith('.js') && existsSync(built)) return [built];
  return [
    '--conditions=@dirtytrack/source',
    '--import',
    'tsx',
    fileURLToPath(new URL('./bin.ts', import.meta.url)),
  ];
}

import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';

import { run } from './__fixtures__/run.js';

/**
 * Every command and every option `dirtytrack --help` lists is in the CLI's README: a flag added
 * to a command and not to its documentation fails here. The commands are found through the help
 * itself (`Commands:` sections, recursively), so a new command is covered without a list here.
 */

/** The help text's entries under `heading:` — each line's first word. */
function section(help: string, heading: string): string[] {
  const start = help.indexOf(`\n${heading}:\n`);
  if (start < 0) return [];
  const body = help.slice(start + heading.length + 3).split('\n\n')[0] as string;
  return body
    .split('\n')
    .map((line) => /^ {2}(\S+)/.exec(line)?.[1])
    .filter((word): word is string => word !== undefined);
}

/** Each command path under `path` (by its help), with its help text. */
async function commands(path: string[]): Promise<{ path: string[]; help: string }[]> {
  const r = await run(...path, '--help');
  expect(r.code, `dirtytrack ${path.join(' ')} --help`).toBe(0);
  const subs = section(r.stdout, 'Commands').filter((name) => name !== 'help');
  const nested = await Promise.all(subs.map((name) => commands([...path, name])));
  return [{ path, help: r.stdout }, ...nested.flat()];
}

describe('the CLI README', () => {
  it('mentions every command and every option of each', async () => {
    const readme = readFileSync(join(import.meta.dirname, '..', 'README.md'), 'utf8');
    const all = await commands([]);
    const missing: string[] = [];
    for (const { path, help } of all) {
      if (path.length > 0 && !readme.includes(path.join(' '))) missing.push(`command ${path.join(' ')}`);
      const options = section(help, 'Options')
        .map((word) => word.replace(/,$/, ''))
        .flatMap((word) => (word.startsWith('--') ? [word] : []));
      // `-V, --version` and `-h, --help` start with the short form: take the long one.
      for (const line of help.split('\n')) {
        const m = /^ {2}-\w, (--[\w-]+)/.exec(line);
        if (m !== null) options.push(m[1] as string);
      }
      for (const option of new Set(options)) {
        if (option !== '--help' && !readme.includes(option)) missing.push(`${path.join(' ')} ${option}`);
      }
    }
    // The walk found the commands there are (a broken parse would check nothing).
    expect(all.map((c) => c.path.join(' '))).toEqual(
      expect.arrayContaining([
        'simulate',
        'serve',
        'migrate',
        'bench mmu',
        'bench trackers',
        'selftest dirty-log',
      ]),
    );
    expect(missing).toEqual([]);
  });
});

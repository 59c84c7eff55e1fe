import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';

import { runJson } from './__fixtures__/run.js';

/**
 * The README's "Output" section names every field `simulate --json` prints, across runs that
 * complete, stop active, fail, are cancelled, go through multifd, zero-copy, auto-converge and
 * postcopy: a field added to the result and not to its documentation fails here. (The scenario
 * echoed under `dirtytrack.scenario` is the "Scenario keys" list's, checked beside that.)
 */
const RUNS: string[][] = [
  [],
  ['--preset', 'no-converge'],
  [
    '--preset',
    'no-converge',
    '--set',
    'migration.capabilities.postcopy-ram=true',
    '--set',
    'migration.start-postcopy-at=10',
  ],
  ['--set', 'migration.capabilities.multifd=true', '--set', 'migration.capabilities.auto-converge=true'],
  ['--set', 'migration.capabilities.multifd=true', '--set', 'migration.capabilities.zero-copy-send=true'],
  [
    '--set',
    'reporter=ring',
    '--set',
    'migration.capabilities.dirty-limit=true',
    '--set',
    'workload.rate=256M',
  ],
  ['--set', 'link.drop-at=1'],
  ['--set', 'migration.cancel-at=1'],
];

function outputSection(): string {
  const readme = readFileSync(join(import.meta.dirname, '..', 'README.md'), 'utf8');
  const at = readme.indexOf('\n## Output\n');
  const end = readme.indexOf('\n## ', at + 1);
  if (at < 0 || end < 0) throw new Error('the README has no Output section');
  return readme.slice(at, end);
}

/** Every field name in `value` (array entries' too), skipping the echoed scenario. */
function fieldNames(value: unknown, out = new Set<string>()): Set<string> {
  if (Array.isArray(value)) for (const v of value) fieldNames(v, out);
  else if (typeof value === 'object' && value !== null) {
    for (const [k, v] of Object.entries(value)) {
      out.add(k);
      if (k !== 'scenario') fieldNames(v, out);
    }
  }
  return out;
}

describe('the README documents simulate --json', () => {
  it('names every field of the results, as a word of its own', async () => {
    const section = outputSection();
    const fields = new Set<string>();
    const statuses = new Set<string>();
    for (const args of RUNS) {
      const { result } = await runJson('simulate', ...args);
      statuses.add(result.status);
      fieldNames(result, fields);
    }
    // The runs cover the statuses a user meets.
    expect([...statuses].sort()).toEqual(['active', 'cancelled', 'completed', 'failed']);
    const escape = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
    const missing = [...fields].filter((f) => !new RegExp(`(?<![\\w-])${escape(f)}(?![\\w-])`).test(section));
    expect(fields.size).toBeGreaterThan(50);
    expect(missing).toEqual([]);
  }, 60_000);
});

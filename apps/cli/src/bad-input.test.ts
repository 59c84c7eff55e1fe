import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { run } from './__fixtures__/run.js';

const tmp = mkdtempSync(join(tmpdir(), 'dirtytrack-cli-bad-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

function file(name: string, text: string): string {
  const path = join(tmp, name);
  writeFileSync(path, text);
  return path;
}

const unclosed = file('unclosed.yaml', 'key: [unclosed\n');
const braces = file('braces.yaml', '{{{');
const plainString = file('string.yaml', 'just a string\n');
const list = file('list.yaml', '- memory: 512M\n- vcpus: 2\n');
const empty = file('empty.yaml', '');
const missing = join(tmp, 'does-not-exist.yaml');
const protoFile = file('proto.yaml', '__proto__:\n  memory: 512M\n');

const ACCEPTED_TOP_LEVEL = ['name', 'seed', 'memory', 'vcpus', 'workload', 'link', 'migration', 'time-limit'];

interface BadCase {
  what: string;
  argv: string[];
  /** Substrings the one stderr line must contain. */
  says: string[];
}

const cases: BadCase[] = [
  {
    what: 'a size that is not a size',
    argv: ['--set', 'memory=abc'],
    says: ['memory', '"abc"', 'accepted', '512M'],
  },
  {
    what: 'an unknown top-level key',
    argv: ['--set', 'foo=1'],
    says: ['foo', 'unknown key', 'accepted', ...ACCEPTED_TOP_LEVEL],
  },
  {
    what: 'an unknown nested key',
    argv: ['--set', 'workload.bogus=1'],
    says: ['workload.bogus', 'unknown key', 'accepted', 'kind', 'rate', 'working-set', 'offset'],
  },
  {
    what: 'a negative bandwidth',
    argv: ['--set', 'link.bandwidth=-5'],
    says: ['link.bandwidth', '-5', '> 0', 'accepted'],
  },
  {
    what: 'a negative downtime limit',
    argv: ['--set', 'migration.parameters.downtime-limit=-1'],
    says: ['migration.parameters.downtime-limit', '[0, 2000000]'],
  },
  {
    what: 'an unknown workload kind',
    argv: ['--set', 'workload.kind=random'],
    says: ['workload.kind', '"random"', 'accepted', 'uniform', 'sweep', 'hotset'],
  },
  { what: 'a fractional vCPU count', argv: ['--set', 'vcpus=2.5'], says: ['vcpus', 'integer', '[1, 512]'] },
  { what: 'memory below 64 pages', argv: ['--set', 'memory=1000'], says: ['memory', 'minimum'] },
  {
    what: 'an unknown preset',
    argv: ['--preset', 'nope'],
    says: ['--preset', 'nope', 'small', 'large-3tb', 'no-converge', 'seed-3tb', 'seed-8tb'],
  },
  {
    what: 'an unknown backing page size',
    argv: ['--set', 'backing=3m'],
    says: ['backing', '"3m"', 'accepted', '4k', '2m', '1g'],
  },
  {
    what: 'a postcopy remedy that is not a boolean',
    argv: ['--set', 'migration.postcopy-double-map=maybe'],
    says: ['migration.postcopy-double-map', 'expected true or false'],
  },
  {
    what: 'memory that is not a whole number of backing pages',
    argv: ['--set', 'memory=1536M', '--set', 'backing=1g'],
    says: ['memory', '1610612736 bytes', 'whole number of 1g backing pages', 'accepted'],
  },
  {
    what: 'an MMU tracker on a guest too big for its page tables',
    argv: ['--set', 'tracker=pml', '--set', 'memory=2T'],
    says: ['tracker', 'SPTE tables', 'at most 1T'],
  },
  {
    what: 'lazy MMU logging without manual protect',
    argv: ['--set', 'tracker=mmu-wp', '--set', 'mmu-logging=lazy'],
    says: ['mmu-logging', 'needs tracker mmu-wp or pml and manual-protect: true'],
  },
  {
    what: 'a scenario file that is not YAML (unclosed flow sequence)',
    argv: ['--scenario', unclosed],
    says: ['--scenario', unclosed, 'not valid YAML or JSON', 'accepted'],
  },
  {
    what: 'a scenario file that is not YAML (braces)',
    argv: ['--scenario', braces],
    says: ['--scenario', braces, 'not valid YAML or JSON', 'accepted'],
  },
  {
    what: 'a scenario file holding a plain string',
    argv: ['--scenario', plainString],
    says: ['--scenario', plainString, 'a string, not a mapping', 'accepted'],
  },
  {
    what: 'a scenario file holding a list',
    argv: ['--scenario', list],
    says: ['--scenario', list, 'a list, not a mapping', 'accepted'],
  },
  {
    what: 'an empty scenario file',
    argv: ['--scenario', empty],
    says: ['--scenario', empty, 'nothing, not a mapping', 'accepted'],
  },
  { what: 'a missing scenario file', argv: ['--scenario', missing], says: ['--scenario', missing, 'ENOENT'] },
  { what: 'an unknown flag', argv: ['--frobnicate'], says: ['--frobnicate', 'unknown option'] },
  { what: '--set without =', argv: ['--set', 'novalue'], says: ['--set', '"novalue"', 'key=value'] },
  { what: '--set with an empty key', argv: ['--set', '=1'], says: ['--set', '"=1"', 'key=value'] },
  {
    what: 'a prototype key in --set',
    argv: ['--set', '__proto__.polluted=1'],
    says: ['__proto__.polluted', 'not a scenario key'],
  },
  { what: '--set __proto__', argv: ['--set', '__proto__=1'], says: ['__proto__', 'not a scenario key'] },
  {
    what: 'a prototype key in a scenario file',
    argv: ['--scenario', protoFile],
    says: ['__proto__', 'not a scenario key'],
  },
  {
    what: 'a scalar where a mapping belongs',
    argv: ['--set', 'workload=1'],
    says: ['workload', 'accepted keys: kind, rate'],
  },
  { what: 'a misspelt flag', argv: ['--jsn'], says: ['--jsn', 'Did you mean --json?'] },
  {
    what: 'an unwritable --out',
    argv: ['--out', join(tmp, 'no-such-dir', 'x.json')],
    says: ['--out', 'ENOENT'],
  },
  {
    what: 'a capability that is not a boolean',
    argv: ['--set', 'migration.capabilities.auto-converge=maybe'],
    says: ['migration.capabilities.auto-converge', 'expected true or false'],
  },
  {
    what: 'an unknown capability',
    argv: ['--set', 'migration.capabilities.postcopy-rom=true'],
    says: [
      'migration.capabilities.postcopy-rom',
      'unknown key',
      'auto-converge',
      'dirty-limit',
      'multifd',
      'zero-copy-send',
    ],
  },
  {
    what: 'a throttle below QEMU’s range',
    argv: ['--set', 'migration.parameters.cpu-throttle-initial=0'],
    says: ['migration.parameters.cpu-throttle-initial', '[1, 99]'],
  },
  {
    what: 'max-cpu-throttle below cpu-throttle-initial',
    argv: [
      '--set',
      'migration.parameters.cpu-throttle-initial=50',
      '--set',
      'migration.parameters.max-cpu-throttle=40',
    ],
    says: ['migration.parameters.max-cpu-throttle', 'below cpu-throttle-initial', '50..99'],
  },
  {
    what: 'zero multifd channels',
    argv: ['--set', 'migration.parameters.multifd-channels=0'],
    says: ['migration.parameters.multifd-channels', '[1, 255]'],
  },
  {
    what: 'a dirty-limit period above 1000 ms',
    argv: ['--set', 'migration.parameters.x-vcpu-dirty-limit-period=1001'],
    says: ['migration.parameters.x-vcpu-dirty-limit-period', '[1, 1000]'],
  },
  {
    what: 'dirty-limit without the dirty ring',
    argv: ['--set', 'migration.capabilities.dirty-limit=true'],
    says: ['migration.capabilities.dirty-limit', 'needs reporter: ring'],
  },
  {
    what: 'dirty-limit together with auto-converge',
    argv: [
      '--set',
      'reporter=ring',
      '--set',
      'migration.capabilities.dirty-limit=true',
      '--set',
      'migration.capabilities.auto-converge=true',
    ],
    says: ['migration.capabilities.dirty-limit', 'conflicts with auto-converge'],
  },
  {
    what: 'zero-copy-send without multifd',
    argv: ['--set', 'migration.capabilities.zero-copy-send=true'],
    says: ['migration.capabilities.zero-copy-send', 'needs migration.capabilities.multifd'],
  },
  {
    what: 'a hot fraction of 0',
    argv: ['--set', 'workload.kind=hotset', '--set', 'workload.hot-fraction=0'],
    says: ['workload.hot-fraction', '(0, 1]'],
  },
  {
    what: 'start-postcopy-at without postcopy-ram',
    argv: ['--set', 'migration.start-postcopy-at=5'],
    says: ['migration.start-postcopy-at', 'needs migration.capabilities.postcopy-ram'],
  },
  {
    what: 'an unknown hot layout',
    argv: ['--set', 'workload.kind=hotset', '--set', 'workload.hot-layout=middle'],
    says: ['workload.hot-layout', 'accepted: first, spread, lists'],
  },
  {
    what: 'a negative setup time',
    argv: ['--set', 'migration.setup-time=-1'],
    says: ['migration.setup-time', '[0, 10000000]'],
  },
  {
    what: 'a switchover share of 0',
    argv: ['--set', 'migration.switchover-share=0'],
    says: ['migration.switchover-share', '(0, 1]'],
  },
  {
    what: 'a switchover share above 1',
    argv: ['--set', 'migration.switchover-share=1.5'],
    says: ['migration.switchover-share', '(0, 1]'],
  },
  {
    what: 'a negative cancel time',
    argv: ['--set', 'migration.cancel-at=-1'],
    says: ['migration.cancel-at', '[0, 10000000]'],
  },
  {
    what: 'a link drop time that is not a number',
    argv: ['--set', 'link.drop-at=soon'],
    says: ['link.drop-at', 'expected a number'],
  },
  {
    what: '--set with an empty dotted segment',
    argv: ['--set', 'link..bandwidth=1'],
    says: ['--set', 'dotted key'],
  },
];

describe('bad input: exit 2, stdout empty, exactly one stderr line naming the field', () => {
  it.each(cases)('$what: $argv', async ({ argv, says }) => {
    const out = await run('simulate', ...argv, '--json');
    expect(out.code).toBe(2);
    expect(out.stdout).toBe('');
    expect(out.stderr).toMatch(/^dirtytrack: [^\n]+\n$/);
    for (const s of says) expect(out.stderr).toContain(s);
  });

  it('also rejects bad input without --json, writing nothing to --out', async () => {
    const outFile = join(tmp, 'never-written.json');
    const out = await run('simulate', '--set', 'memory=abc', '--out', outFile);
    expect(out.code).toBe(2);
    expect(out.stdout).toBe('');
    expect(out.stderr).toMatch(/^dirtytrack: memory: [^\n]+\n$/);
    expect(existsSync(outFile)).toBe(false);
  });

  it('never touches Object.prototype', async () => {
    await run('simulate', '--set', '__proto__.polluted=1', '--json');
    expect((Object.prototype as Record<string, unknown>)['polluted']).toBeUndefined();
  });

  it('keeps working after a bad run in the same process', async () => {
    expect((await run('simulate', '--set', 'foo=1', '--json')).code).toBe(2);
    const ok = await run('simulate', '--set', 'memory=1M', '--set', 'workload.working-set=1M', '--json');
    expect(ok.code).toBe(0);
    expect(ok.stderr).toBe('');
  });
});

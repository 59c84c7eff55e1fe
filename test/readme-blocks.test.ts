import { describe, expect, it } from 'vitest';

import { matchesExpected, parseRunnableBlocks, parseTranscripts } from './readme-blocks.js';

describe('parseRunnableBlocks', () => {
  const text = [
    '# pkg', // 1
    '```ts', // 2: not runnable
    'console.log(1); // → 1',
    '```',
    '```ts run', // 5
    "import { x } from '@dirtytrack/core';",
    'console.log(x); // → 42 — the answer',
    'f(); // a remark, not an output',
    '// → second line',
    '```',
    '```ts run serve=64M', // 11
    'console.log(2); // → 2',
    '```',
    '```sh run', // 14: not TypeScript
    'echo 3 # → 3',
    '```',
  ].join('\n');

  it('takes only ```ts run blocks, with their line, code, outputs and serve size', () => {
    expect(parseRunnableBlocks('README.md', text)).toEqual([
      {
        file: 'README.md',
        line: 5,
        code: "import { x } from '@dirtytrack/core';\nconsole.log(x); // → 42 — the answer\nf(); // a remark, not an output\n// → second line\n",
        expected: [
          { text: '42', line: 7 },
          { text: 'second line', line: 9 },
        ],
      },
      {
        file: 'README.md',
        line: 11,
        code: 'console.log(2); // → 2\n',
        serve: '64M',
        expected: [{ text: '2', line: 12 }],
      },
    ]);
  });

  it('refuses a block that never closes', () => {
    expect(() => parseRunnableBlocks('R.md', '```ts run\nconsole.log(1);\n')).toThrow(
      'R.md:1: a code block that never closes',
    );
  });
});

describe('matchesExpected', () => {
  it('ignores whitespace', () => {
    expect(matchesExpected('[ 7, 9, 7 ]', '[7, 9, 7]')).toBe(true);
    expect(matchesExpected('4 [ 1, 2, 1, 0, 2, 0 ]', '4 [1, 2, 1, 0, 2, 0]')).toBe(true);
  });

  it('lets … stand for any text, and nothing else', () => {
    const printed = '{ pages: 4, savedByFault: 1, savedBySweep: 3, copies: 4 }';
    expect(matchesExpected(printed, '{ pages: 4, savedByFault: 1, savedBySweep: 3, … }')).toBe(true);
    expect(matchesExpected(printed, '{ pages: 4, savedByFault: 2, … }')).toBe(false);
    expect(
      matchesExpected(
        'completed true 1.446 ms downtime 185652 bytes',
        'completed true … ms downtime … bytes',
      ),
    ).toBe(true);
    expect(
      matchesExpected('failed false 0 ms downtime 0 bytes', 'completed true … ms downtime … bytes'),
    ).toBe(false);
  });

  it('matches the whole line: no prefix, suffix or regex meaning', () => {
    expect(matchesExpected('1 42', '1 4')).toBe(false);
    expect(matchesExpected('11 42', '1 42')).toBe(false);
    expect(matchesExpected('P|MW|HW|D', 'P|MW|HW|D')).toBe(true);
    expect(matchesExpected('P', 'P|MW')).toBe(false);
    expect(matchesExpected('1x5', '1.5')).toBe(false);
  });
});

describe('parseTranscripts', () => {
  const text = [
    '```', // 1: no run
    '$ dirtytrack simulate',
    'ignored',
    '```',
    '```console run', // 5
    '$ dirtytrack simulate --set a=1 \\',
    '    --set b=2',
    'line one',
    '  line two',
    '$ dirtytrack migrate --dirty-limit 8',
    '```',
    '```console run cwd=apps/examples', // 12
    '$ node src/x.ts',
    'done',
    '```',
  ].join('\n');

  it('takes each command of a ```console run block, joined over \\, with the lines it prints', () => {
    expect(parseTranscripts('R.md', text)).toEqual([
      {
        file: 'R.md',
        line: 5,
        commands: [
          {
            command: 'dirtytrack simulate --set a=1 --set b=2',
            line: 6,
            expected: ['line one', '  line two'],
          },
          { command: 'dirtytrack migrate --dirty-limit 8', line: 10, expected: [] },
        ],
      },
      {
        file: 'R.md',
        line: 12,
        cwd: 'apps/examples',
        commands: [{ command: 'node src/x.ts', line: 13, expected: ['done'] }],
      },
    ]);
  });

  it('refuses output before any command', () => {
    expect(() => parseTranscripts('R.md', '```console run\noutput\n```\n')).toThrow(
      "R.md:2: a console block's output before any $ command",
    );
  });
});

import { execFile, spawn } from 'node:child_process';
import { once } from 'node:events';
import { createInterface } from 'node:readline';
import {
  chmodSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { join, relative } from 'node:path';
import { pathToFileURL } from 'node:url';
import { promisify } from 'node:util';
import { afterAll, describe, expect, it } from 'vitest';

import {
  matchesExpected,
  parseRunnableBlocks,
  parseTranscripts,
  type RunnableBlock,
} from './readme-blocks.js';

/**
 * The READMEs' runnable snippets run, and print what their `// → …` comments say; their
 * transcripts (` ```console run `) print what is written under each `$ dirtytrack …` line.
 *
 * A block fenced ` ```ts run ` is a whole ES module: it runs as it stands, in `apps/examples`
 * (where every `@dirtytrack/*` package resolves to its build, as a user's install would), under
 * tsx. Each `console.log` call prints one line here (objects on one line), and the block's
 * `// → expected` comments, in order, are those lines: whitespace aside, `…` standing for anything,
 * and an explanation after ` — ` left out. A README that drifts from its package fails here.
 */
const root = join(import.meta.dirname, '..');
const examples = join(root, 'apps', 'examples');
const run = promisify(execFile);
/** The CLI's build: what the transcripts and the live snippet's destination run. */
const cli = join(root, 'apps', 'cli', 'dist', 'bin.js');

const readmes = [
  'README.md',
  ...['packages', 'apps'].flatMap((d) =>
    readdirSync(join(root, d))
      .map((name) => join(d, name, 'README.md'))
      .filter((f) => existsSync(join(root, f))),
  ),
];
const texts = new Map(readmes.map((file) => [file, readFileSync(join(root, file), 'utf8')] as const));
const blocks: RunnableBlock[] = readmes.flatMap((file) =>
  parseRunnableBlocks(file, texts.get(file) as string),
);

const dir = mkdtempSync(join(examples, '.readme-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** Prints each `console.log` call as one line, as the `// →` comments are written. */
const prelude = join(dir, 'prelude.mjs');
writeFileSync(
  prelude,
  [
    "import { formatWithOptions } from 'node:util';",
    'console.log = (...args) =>',
    "  process.stdout.write(formatWithOptions({ breakLength: Infinity }, ...args).replace(/\\n/g, ' ') + '\\n');",
  ].join('\n'),
);

/** Each runnable block as a module of its own, beside a tsconfig as strict as the packages' own. */
const files = new Map(
  blocks.map((b) => {
    const file = join(dir, `${b.file.replace(/[/.]/g, '-')}-${b.line}.mts`);
    writeFileSync(file, b.code);
    return [b, file] as const;
  }),
);
writeFileSync(
  join(dir, 'tsconfig.json'),
  JSON.stringify({
    extends: relative(dir, join(root, 'tsconfig.base.json')),
    // A user's install: each package's published types (its build), not its sources.
    compilerOptions: { customConditions: [] },
    include: ['*.mts'],
  }),
);

/** `dirtytrack` on the transcripts' PATH: the CLI's build. */
const bin = join(dir, 'bin');
mkdirSync(bin);
writeFileSync(join(bin, 'dirtytrack'), `#!/bin/sh\nexec "${process.execPath}" "${cli}" "$@"\n`);
chmodSync(join(bin, 'dirtytrack'), 0o755);
const transcripts = readmes.flatMap((file) => parseTranscripts(file, texts.get(file) as string));

describe('README transcripts', () => {
  it.each(transcripts.map((t) => [`${t.file}:${t.line}`, t] as const))('%s', async (name, transcript) => {
    expect(transcript.commands.length).toBeGreaterThan(0);
    const cwd =
      transcript.cwd === undefined ? join(dir, name.replace(/[/.:]/g, '-')) : join(root, transcript.cwd);
    if (transcript.cwd === undefined) mkdirSync(cwd);
    for (const { command, line, expected } of transcript.commands) {
      // Exit codes aside (2 for bad input): what it prints, stdout and stderr as a terminal shows them.
      const { stdout } = await run('/bin/bash', ['-c', `{ ${command}\n} 2>&1`], {
        cwd,
        timeout: 120_000,
        maxBuffer: 16 * 2 ** 20,
        env: { ...process.env, PATH: `${bin}:${process.env['PATH'] ?? ''}`, NO_COLOR: '1' },
      }).catch((error: Error & { stdout?: string; killed?: boolean }) => {
        if (error.killed === true || error.stdout === undefined) throw error;
        return { stdout: error.stdout };
      });
      const printed = stdout.replace(/\n+$/, '').split('\n');
      const want = expected.length === 0 ? [''] : expected;
      expect(printed.length, `line ${line}: $ ${command}\nprinted:\n${stdout}`).toBe(want.length);
      printed.forEach((got, i) => {
        expect(
          matchesExpected(got, want[i] as string),
          `README line ${line}, $ ${command}: its output line ${i + 1} is ${got}, the README says ${want[i]}`,
        ).toBe(true);
      });
    }
  });
});

describe('README snippets', () => {
  it('type-check', async () => {
    const tsc = join(root, 'node_modules', 'typescript', 'bin', 'tsc');
    await run(process.execPath, [tsc, '-p', join(dir, 'tsconfig.json')], { cwd: examples }).catch(
      (error: Error & { stdout?: string }) => {
        throw new Error(`tsc: ${error.stdout ?? error.message}`);
      },
    );
  });

  it('every publishable package README has a runnable snippet', () => {
    const withBlocks = new Set(blocks.map((b) => b.file));
    const packages = readdirSync(join(root, 'packages')).filter((name) => {
      const manifest = join(root, 'packages', name, 'package.json');
      return (
        existsSync(manifest) &&
        (JSON.parse(readFileSync(manifest, 'utf8')) as { private?: boolean }).private !== true
      );
    });
    expect(packages.length).toBeGreaterThan(0);
    expect(packages.filter((name) => !withBlocks.has(join('packages', name, 'README.md')))).toEqual([]);
  });

  it.each(blocks.map((b) => [`${b.file}:${b.line}`, b] as const))('%s', async (_name, block) => {
    expect(block.expected.length, 'a runnable snippet says what it prints').toBeGreaterThan(0);
    const file = files.get(block) as string;
    const destination = block.serve === undefined ? undefined : await serve(block.serve);
    let stdout: string;
    try {
      ({ stdout } = await run(
        process.execPath,
        ['--import', 'tsx', '--import', pathToFileURL(prelude).href, file],
        {
          // Beside the snippet (inside apps/examples, so the packages resolve): a file it writes
          // lands in this run's directory, never in the repository.
          cwd: dir,
          timeout: 60_000,
          maxBuffer: 16 * 2 ** 20,
          env: {
            ...process.env,
            ...(destination === undefined ? {} : { DIRTYTRACK_PORT: String(destination.port) }),
          },
        },
      ).catch((error: Error & { stdout?: string; stderr?: string }) => {
        throw new Error(`${relative(root, file)} failed: ${error.message}\n${error.stderr ?? ''}`);
      }));
      // `--once`: the destination exits after the migration it received.
      if (destination !== undefined) expect(await destination.exit).toBe(0);
    } finally {
      destination?.child.kill('SIGKILL');
    }
    const printed = stdout.split('\n').filter((l) => l.trim() !== '');
    expect(printed.length, `printed:\n${printed.join('\n')}`).toBe(block.expected.length);
    printed.forEach((line, i) => {
      const want = block.expected[i] as { text: string; line: number };
      expect(
        matchesExpected(line, want.text),
        `README line ${want.line}: printed ${line}, the comment says ${want.text}`,
      ).toBe(true);
    });
  });
});

/** `dirtytrack serve --once` on a free loopback port, `memory` of RAM: its port and exit code. */
async function serve(memory: string) {
  const child = spawn(
    process.execPath,
    [cli, 'serve', '--listen', '127.0.0.1:0', '--memory', memory, '--once'],
    {
      stdio: ['ignore', 'pipe', 'inherit'],
    },
  );
  const exit = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  const timer = setTimeout(() => child.kill('SIGKILL'), 90_000);
  void exit.then(() => clearTimeout(timer));
  const [line] = (await Promise.race([
    once(createInterface({ input: child.stdout }), 'line'),
    exit.then((code) => {
      throw new Error(`dirtytrack serve exited (${code}) before it listened`);
    }),
  ])) as [string];
  const m = /^listening on 127\.0\.0\.1:(\d+)$/.exec(line);
  if (m === null) throw new Error(`dirtytrack serve said ${line}`);
  return { port: Number(m[1]), child, exit };
}

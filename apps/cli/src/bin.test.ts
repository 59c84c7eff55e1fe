import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { run, spawnCli } from './__fixtures__/run.js';

// The real process: proves bin.ts hands main's code to the shell via process.exitCode. Each
// spawn costs about a second (tsx compiles the sources), so there are only two.
describe('bin.ts as a process', () => {
  it('exits 0 and prints the same JSON as main() in-process', async () => {
    const [child, inProcess] = await Promise.all([
      spawnCli('simulate', '--preset', 'small', '--json'),
      run('simulate', '--preset', 'small', '--json'),
    ]);
    expect(child.code).toBe(0);
    expect(child.stderr).toBe('');
    expect(child.stdout).toBe(inProcess.stdout);
    expect((JSON.parse(child.stdout) as { status: string }).status).toBe('completed');
  });

  it('exits 2 on bad input with one stderr line and nothing on stdout', async () => {
    const child = await spawnCli('simulate', '--set', 'memory=abc', '--json');
    expect(child.code).toBe(2);
    expect(child.stdout).toBe('');
    expect(child.stderr).toMatch(/^dirtytrack: memory: [^\n]*accepted[^\n]*\n$/);
  });
});

describe('--version', () => {
  it('prints the package version on stdout and exits 0 (-V too)', async () => {
    const { version } = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as {
      version: string;
    };
    for (const flag of ['--version', '-V']) {
      const r = await run(flag);
      expect([r.code, r.stdout, r.stderr]).toEqual([0, `${version}\n`, '']);
    }
  });
});

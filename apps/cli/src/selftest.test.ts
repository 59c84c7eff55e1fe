import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { run, type RunResult } from './__fixtures__/run.js';
import type { SelftestDirtyLogResult } from './selftest.js';

// `dirtytrack selftest dirty-log`: the kernel's dirty_log_test from the command line. A sound
// pipeline exits 0 with no page lost; the MMU's skip-TLB-flush debug option must make it exit 1
// with lost pages (the selftest can fail); bad flags exit 2 with one line naming the flag.

const json = (r: RunResult) => JSON.parse(r.stdout) as SelftestDirtyLogResult;

describe('dirtytrack selftest dirty-log', () => {
  it('model engine, wp + bitmap: exit 0, no page lost, exact counts', async () => {
    const r = await run(
      'selftest',
      'dirty-log',
      '--memory',
      '1M',
      '--iterations',
      '8',
      '--seed',
      '7',
      '--json',
    );
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const result = json(r);
    expect(Object.keys(result).slice(0, 3)).toEqual(['lost', 'pages-checked', 'harvests']);
    expect(result).toMatchObject({
      lost: 0,
      'pages-checked': 9 * 272, // 1 MiB + the kernel's 16 extra pages, 8 iterations + the final check
      harvests: 9,
      mode: 'dirty-log',
      passed: true,
      violations: [],
    });
    const again = await run(
      'selftest',
      'dirty-log',
      '--memory',
      '1M',
      '--iterations',
      '8',
      '--seed',
      '7',
      '--json',
    );
    expect(again.stdout).toBe(r.stdout); // the model engine is exact for a seed
  });

  it('model engine, pml + bitmap in clear-log mode and pml + ring: exit 0', async () => {
    for (const extra of [['--manual-protect'], ['--reporter', 'ring']]) {
      const r = await run(
        'selftest',
        'dirty-log',
        '--tracker',
        'pml',
        '--memory',
        '1M',
        '--iterations',
        '8',
        ...extra,
        '--json',
      );
      expect(r.code, r.stderr).toBe(0);
      expect(json(r).lost).toBe(0);
    }
  });

  it('model engine, uffd-wp sync and async + bitmap: exit 0, faults counted, exact for a seed', async () => {
    for (const tracker of ['uffd-wp-sync', 'uffd-wp-async']) {
      const args = [
        'selftest',
        'dirty-log',
        '--tracker',
        tracker,
        '--memory',
        '1M',
        '--iterations',
        '8',
        '--json',
      ];
      const r = await run(...args);
      expect(r.code, r.stderr).toBe(0);
      const result = json(r);
      expect([result.tracker, result.lost, result['tlb-flushes'], result['pml-full-exits']]).toEqual([
        tracker,
        0,
        0,
        0,
      ]);
      expect(result.faults).toBeGreaterThan(0);
      expect((await run(...args)).stdout).toBe(r.stdout);
    }
  });

  // The live engine's negative control runs in packages/mmu/src/conformance.test.ts.
  it('--skip-tlb-flush: lost pages, exit 1', async () => {
    for (const engine of ['model']) {
      const r = await run(
        'selftest',
        'dirty-log',
        '--engine',
        engine,
        '--memory',
        '1M',
        '--iterations',
        '6',
        '--interval',
        '5',
        '--skip-tlb-flush',
        '--json',
      );
      expect(r.code, r.stderr).toBe(1);
      const result = json(r);
      expect(result.lost).toBeGreaterThan(0);
      expect(result.violations[0]?.check).toBe(3);
    }
  });

  it('live engine, pml + ring on 2 worker vCPUs: exit 0, text output', async () => {
    const r = await run(
      'selftest',
      'dirty-log',
      '--engine',
      'live',
      '--tracker',
      'pml',
      '--reporter',
      'ring',
      '--memory',
      '1M',
      '--iterations',
      '6',
      '--interval',
      '5',
    );
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^dirty_log_test: dirty-ring, tracker pml, reporter ring, live engine/);
    expect(r.stdout).toMatch(/PASS: 0 lost, 0 bad values/);
  });

  it.each([
    [['--vcpus', '0'], /^dirtytrack: --vcpus: "0" is not an integer in \[1, 1024\]\n$/],
    [['--memory', 'lots'], /^dirtytrack: --memory: "lots" is not a size/],
    [['--memory', '100K'], /^dirtytrack: --memory: 100K must be a multiple of 256K/],
    [['--iterations', '1.5'], /^dirtytrack: --iterations: /],
    [['--seed', '-1'], /^dirtytrack: --seed: /],
    [
      ['--reporter', 'ring', '--manual-protect'],
      /^dirtytrack: --manual-protect: applies to --reporter bitmap only/,
    ],
    [['--engine', 'kvm'], /^dirtytrack: --engine: argument 'kvm' is invalid/],
    [
      ['--tracker', 'uffd-wp-sync', '--skip-tlb-flush'],
      /^dirtytrack: --skip-tlb-flush: is an MMU debug option/,
    ],
    [
      ['--tracker', 'uffd-wp-async', '--reporter', 'ring'],
      /^dirtytrack: --reporter: ring cannot take uffd-wp-async/,
    ],
  ])('bad input %j: exit 2, one line naming the flag', async (args, message) => {
    const r = await run('selftest', 'dirty-log', ...args);
    expect(r.code).toBe(2);
    expect(r.stdout).toBe('');
    expect(r.stderr).toMatch(message);
    expect(r.stderr.split('\n')).toHaveLength(2);
  });

  // The built CLI boots the live engine's workers from @dirtytrack/guest's dist/live-vcpu.js (no
  // tsx). `pnpm check` builds before testing; a checkout without dist skips this.
  const bin = fileURLToPath(new URL('../dist/bin.js', import.meta.url));
  const guestDist = fileURLToPath(new URL('../../../packages/guest/dist/live-vcpu.js', import.meta.url));
  it.skipIf(!existsSync(bin) || !existsSync(guestDist))(
    'the built CLI runs the live engine from dist',
    async () => {
      const r = await new Promise<RunResult>((resolve, reject) => {
        const child = spawn(
          process.execPath,
          [bin, 'selftest', 'dirty-log', '--engine', 'live', '--memory', '1M', '--iterations', '4', '--json'],
          {
            stdio: ['ignore', 'pipe', 'pipe'],
          },
        );
        let stdout = '';
        let stderr = '';
        child.stdout.setEncoding('utf8').on('data', (c: string) => (stdout += c));
        child.stderr.setEncoding('utf8').on('data', (c: string) => (stderr += c));
        child.on('error', reject);
        child.on('close', (code) => resolve({ code: code ?? -1, stdout, stderr }));
      });
      expect(r.code, r.stderr).toBe(0);
      expect(json(r)).toMatchObject({ lost: 0, harvests: 5, engine: 'live' });
    },
  );
});

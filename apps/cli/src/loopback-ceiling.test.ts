import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DirtytrackError } from '@dirtytrack/core';
import { RAM_FLAG } from '@dirtytrack/migration';
import { afterAll, describe, expect, it } from 'vitest';
import {
  C_CEILING_UNAVAILABLE,
  compileLoopbackCeiling,
  LOOPBACK_CEILING_C,
  loopbackCeiling,
  type LoopbackCeiling,
} from './loopback-ceiling.js';

const FLAGS = RAM_FLAG.PAGE | RAM_FLAG.CONTINUE;
const ceiling = await compileLoopbackCeiling(FLAGS);
if (ceiling === undefined)
  console.warn('loopback-ceiling.test.ts: the C runs skipped: no C compiler (cc) on PATH');
afterAll(() => ceiling?.close());

/**
 * The error of a 1 MiB `mode` run of the program with `from` (which it must contain) replaced by
 * `to`: a program broken on purpose, built and removed again.
 */
async function failureOf(from: string, to: string, mode: 'raw' | 'records'): Promise<DirtytrackError> {
  expect(LOOPBACK_CEILING_C).toContain(from);
  const broken = (await compileLoopbackCeiling(
    FLAGS,
    LOOPBACK_CEILING_C.replace(from, to),
  )) as LoopbackCeiling;
  try {
    const e = await broken.run(mode, 2 ** 20).then(
      () => undefined,
      (x: unknown) => x,
    );
    expect(e).toBeInstanceOf(DirtytrackError);
    return e as DirtytrackError;
  } finally {
    await broken.close();
  }
}

describe('the C ceiling of bench migrate', () => {
  it.skipIf(ceiling === undefined)(
    'moves raw bytes and page records between two processes, every page compared',
    async () => {
      const c = ceiling as LoopbackCeiling;
      // 8 MiB + 3 pages: not a whole number of the 4 MiB writes either.
      const bytes = 8 * 2 ** 20 + 3 * 4096;
      const raw = await c.run('raw', bytes);
      expect(raw.mbps).toBeGreaterThan(0);
      expect([raw.pages, raw.verified]).toEqual([0, true]);
      const records = await c.run('records', bytes);
      expect(records.mbps).toBeGreaterThan(0);
      expect([records.pages, records.verified]).toEqual([bytes / 4096, true]);
    },
  );

  it.skipIf(ceiling === undefined)(
    'fails with a typed error, never a figure, when a run goes wrong',
    async () => {
      const c = ceiling as LoopbackCeiling;
      const bad = await c.run('records', 4096 * 3 + 1).catch((e: unknown) => e);
      expect(bad).toBeInstanceOf(DirtytrackError);
      expect((bad as DirtytrackError).code).toBe('internal');
      expect((bad as DirtytrackError).message).toBe(
        '[dirtytrack] [bench-migrate] the C ceiling (records) failed: BYTES must be a positive multiple of 4096',
      );
      // A receiver that places each page one byte off: its RAM differs from the sender's, and the
      // figure is refused.
      const off = await failureOf(
        'memcpy(dst + at, buf + p + 8, PAGE);',
        'memcpy(dst + at, buf + p + 9, PAGE - 1);',
        'records',
      );
      expect(off.message).toBe(
        '[dirtytrack] [bench-migrate] the C ceiling placed 256 of 256 pages, not equal to the sender',
      );
      // A program whose answer is not its JSON line: a typed error quoting what it printed.
      const chatty = await failureOf('printf("{\\"mbps\\":', 'printf("mbps =', 'raw');
      expect(chatty.code).toBe('internal');
      expect(chatty.message).toMatch(
        /^\[dirtytrack\] \[bench-migrate\] the C ceiling \(raw\) printed "mbps =/,
      );
      // A program that does not build: a typed error naming the compiler's first complaint.
      const unbuilt = await compileLoopbackCeiling(FLAGS, 'int main(void) { return x; }').catch(
        (x: unknown) => x,
      );
      expect((unbuilt as DirtytrackError).code).toBe('unsupported');
      // The bench's form of it: not a failure, the reason it was not measured.
      expect(await loopbackCeiling(FLAGS, 'int main(void) { return x; }')).toMatch(
        /^unavailable: cc could not build the C ceiling: .*error: .*x/,
      );
      expect((unbuilt as Error).message).toMatch(
        /^\[dirtytrack\] \[bench-migrate\] cc could not build the C ceiling: .*error: .*x/,
      );
    },
  );

  it('is not measured where no cc runs', async () => {
    const empty = await mkdtemp(join(tmpdir(), 'dirtytrack-no-cc-'));
    const path = process.env['PATH'];
    process.env['PATH'] = empty;
    try {
      expect(await compileLoopbackCeiling(FLAGS)).toBeUndefined();
      expect(await loopbackCeiling(FLAGS)).toBe(C_CEILING_UNAVAILABLE);
    } finally {
      process.env['PATH'] = path;
      await rm(empty, { recursive: true });
    }
  });
});

import { DirtytrackError, isDirtytrackError } from '@dirtytrack/core';
import { describe, expect, it } from 'vitest';
import { UsageError } from './load-scenario.js';
import { MigrateFailed } from './live.js';
import { describeError, reviveError } from './worker-errors.js';

/** Through a real structured clone, as a worker's postMessage does. */
function across(error: unknown): Error {
  return reviveError(structuredClone(describeError(error)), { MigrateFailed });
}

describe('errors across the migrate worker boundary', () => {
  it('a UsageError comes back as one, with its field and message (exit 2)', () => {
    const e = across(new UsageError('--memory', '"3X" is not a size such as 256M or 1G'));
    expect(e).toBeInstanceOf(UsageError);
    expect((e as UsageError).field).toBe('--memory');
    expect(e.message).toBe('--memory: "3X" is not a size such as 256M or 1G');
  });

  it('a DirtytrackError keeps its code, component, field, errno and exact message', () => {
    const original = new DirtytrackError('protocol', 'main reset at byte 42', {
      component: 'destination',
      field: 'main',
      errno: 'ECONNRESET',
    });
    const e = across(original);
    expect(isDirtytrackError(e, 'protocol')).toBe(true);
    const d = e as DirtytrackError;
    expect([d.message, d.component, d.field, d.errno]).toEqual([
      '[dirtytrack] [destination] main reset at byte 42',
      'destination',
      'main',
      'ECONNRESET',
    ]);
  });

  it('a named class (MigrateFailed, exit 1) is rebuilt; any other error keeps the worker stack', () => {
    const failed = across(new MigrateFailed('migration to 127.0.0.1:9 failed: connect ECONNREFUSED'));
    expect(failed).toBeInstanceOf(MigrateFailed);
    expect(failed.message).toBe('migration to 127.0.0.1:9 failed: connect ECONNREFUSED');
    const original = new RangeError('out of bounds');
    const other = across(original);
    expect(other.constructor).toBe(Error);
    expect(other.message).toBe('out of bounds');
    expect(other.stack).toBe(original.stack);
    expect(across('a string').message).toBe('a string');
  });
});

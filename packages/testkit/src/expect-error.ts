import { DirtytrackError, type DirtytrackErrorCode } from '@dirtytrack/core';
import { expect } from 'vitest';

/**
 * Runs `fn` and returns the DirtytrackError it throws, checked to come from `component` and,
 * when given, to carry `code` and a message matching `pattern`.
 */
export function expectDirtytrackError(
  fn: () => unknown,
  component: string,
  code?: DirtytrackErrorCode,
  pattern?: RegExp,
): DirtytrackError {
  let caught: unknown;
  try {
    fn();
  } catch (error) {
    caught = error;
  }
  expect(caught).toBeInstanceOf(DirtytrackError);
  const error = caught as DirtytrackError;
  expect(error.component).toBe(component);
  if (code !== undefined) expect(error.code).toBe(code);
  if (pattern !== undefined) expect(error.message).toMatch(pattern);
  return error;
}

import { expect } from 'vitest';
import { DirtytrackError, type DirtytrackErrorCode } from '../errors.js';

/** Runs `fn`, asserts it throws a DirtytrackError with `code` from `component`, returns it. */
export function expectError(
  fn: () => unknown,
  code: DirtytrackErrorCode,
  component: string,
): DirtytrackError {
  let caught: unknown;
  try {
    fn();
  } catch (error) {
    caught = error;
  }
  expect(caught).toBeInstanceOf(DirtytrackError);
  const error = caught as DirtytrackError;
  expect(error.code).toBe(code);
  expect(error.component).toBe(component);
  return error;
}

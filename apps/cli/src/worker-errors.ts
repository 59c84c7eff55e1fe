/**
 * Errors across a worker boundary: structured clone keeps an Error's message but not its class
 * or fields, and the CLI's exit code depends on both (a UsageError is bad input, exit 2; a
 * DirtytrackError's code says whether it is; MigrateFailed is a failed migration, exit 1).
 */
import { DirtytrackError, type DirtytrackErrorCode } from '@dirtytrack/core';
import { UsageError } from './load-scenario.js';

/** An error as plain data. */
export interface ErrorDescription {
  name: string;
  message: string;
  stack?: string;
  code?: string;
  component?: string;
  field?: string;
  errno?: string;
}

export function describeError(error: unknown): ErrorDescription {
  if (!(error instanceof Error)) return { name: 'Error', message: String(error) };
  const e = error as Error & Partial<Record<'code' | 'component' | 'field' | 'errno', unknown>>;
  const text = (v: unknown): string | undefined => (typeof v === 'string' ? v : undefined);
  const d: ErrorDescription = { name: e.name, message: e.message };
  for (const [k, v] of [
    ['stack', e.stack],
    ['code', e.code],
    ['component', e.component],
    ['field', e.field],
    ['errno', e.errno],
  ] as const) {
    const t = text(v);
    if (t !== undefined) d[k] = t;
  }
  return d;
}

/**
 * The error again, as the class the CLI tells apart: `UsageError`, `DirtytrackError`, or the
 * class `named` maps its name to (e.g. MigrateFailed); any other is an Error with the worker's stack.
 */
export function reviveError(
  d: ErrorDescription,
  named: Readonly<Record<string, new (message: string) => Error>> = {},
): Error {
  if (d.name === 'UsageError' && d.field !== undefined && d.message.startsWith(`${d.field}: `))
    return new UsageError(d.field, d.message.slice(d.field.length + 2));
  if (d.name === 'DirtytrackError' && d.code !== undefined && d.component !== undefined) {
    const prefix = `[dirtytrack] [${d.component}] `;
    const message = d.message.startsWith(prefix) ? d.message.slice(prefix.length) : d.message;
    return new DirtytrackError(d.code as DirtytrackErrorCode, message, {
      component: d.component,
      ...(d.field === undefined ? {} : { field: d.field }),
      ...(d.errno === undefined ? {} : { errno: d.errno }),
    });
  }
  const Named = named[d.name];
  const error = Named === undefined ? new Error(d.message) : new Named(d.message);
  if (d.stack !== undefined) error.stack = d.stack;
  return error;
}

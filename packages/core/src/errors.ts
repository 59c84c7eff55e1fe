/**
 * Every failure dirtytrack reports is a {@link DirtytrackError}: a machine-readable `code`, the
 * `component` that raised it, and the original `cause` when there is one. Messages read
 * `[dirtytrack] [component] what went wrong`, so a log line always says where it came from.
 */

/** What kind of failure this is. Stable strings: callers and tests switch on them. */
export type DirtytrackErrorCode =
  /** A caller passed a value outside what the API accepts (bad size, negative rate, …). */
  | 'invalid-argument'
  /** A scenario, preset or configuration key is unknown or has a bad value. */
  | 'invalid-config'
  /** An index, page number or range falls outside the object it addresses. */
  | 'out-of-range'
  /** The operation is not valid in the object's current state (e.g. harvest before enable). */
  | 'invalid-state'
  /** A bounded wait (lock, ring space, peer) ran out of time. */
  | 'timeout'
  /** The platform lacks what the operation needs (no SharedArrayBuffer, no /dev/kvm, …). */
  | 'unsupported'
  /** Bytes from a peer break the wire protocol: bad magic, version, length, offset, … */
  | 'protocol'
  /** An invariant that must never break did break: a bug, reported loudly instead of hidden. */
  | 'internal';

export interface DirtytrackErrorOptions {
  /** Which component raised the error, e.g. `bitmap`, `rwlock`, `precopy`, `cli`. */
  component: string;
  /** The scenario field or argument at fault, when there is one (used by the CLI's one-line errors). */
  field?: string;
  /** The errno the kernel would return for the same mistake (e.g. `EINVAL`, `ENOENT`, `ENXIO`). */
  errno?: string;
  /** The underlying error or value that caused this one. */
  cause?: unknown;
}

export class DirtytrackError extends Error {
  override readonly name = 'DirtytrackError';
  readonly code: DirtytrackErrorCode;
  readonly component: string;
  readonly field: string | undefined;
  readonly errno: string | undefined;

  constructor(code: DirtytrackErrorCode, message: string, options: DirtytrackErrorOptions) {
    super(`[dirtytrack] [${options.component}] ${message}`, { cause: normaliseCause(options.cause) });
    this.code = code;
    this.component = options.component;
    this.field = options.field;
    this.errno = options.errno;
  }
}

/** True when `value` is a {@link DirtytrackError}, optionally with the given code. */
export function isDirtytrackError(value: unknown, code?: DirtytrackErrorCode): value is DirtytrackError {
  return value instanceof DirtytrackError && (code === undefined || value.code === code);
}

function normaliseCause(cause: unknown): unknown {
  if (cause === undefined || cause instanceof Error) return cause;
  return new Error(typeof cause === 'string' ? cause : describeValue(cause));
}

/**
 * JSON where possible, else `String()`, else the `[object Tag]` form: building an error must
 * never throw (JSON.stringify throws on BigInts and cycles and yields undefined for symbols).
 */
function describeValue(value: unknown): string {
  try {
    const json = JSON.stringify(value);
    if (json !== undefined) return json;
  } catch {
    // fall through
  }
  try {
    return String(value);
  } catch {
    return Object.prototype.toString.call(value);
  }
}

import { describe, expect, it } from 'vitest';
import { DirtytrackError, isDirtytrackError, type DirtytrackErrorCode } from './errors.js';

describe('DirtytrackError', () => {
  it('formats the message as [dirtytrack] [component] … and keeps code, component and field', () => {
    const error = new DirtytrackError('invalid-config', 'memory: must be a size', {
      component: 'cli',
      field: 'memory',
    });
    expect(error.message).toBe('[dirtytrack] [cli] memory: must be a size');
    expect(error.code).toBe('invalid-config');
    expect(error.component).toBe('cli');
    expect(error.field).toBe('memory');
    expect(error.name).toBe('DirtytrackError');
    expect(String(error)).toBe('DirtytrackError: [dirtytrack] [cli] memory: must be a size');
    expect(error).toBeInstanceOf(Error);
    expect(error).toBeInstanceOf(DirtytrackError);
    expect(error.cause).toBeUndefined();
  });

  it('carries the protocol code for bytes that break the wire protocol', () => {
    const error = new DirtytrackError('protocol', 'RAM record at byte 4105: offset past RAM', {
      component: 'wire',
    });
    expect(error.code).toBe('protocol');
    expect(error.message).toBe('[dirtytrack] [wire] RAM record at byte 4105: offset past RAM');
    expect(isDirtytrackError(error, 'protocol')).toBe(true);
  });

  it('leaves field undefined when none is given', () => {
    const error = new DirtytrackError('internal', 'boom', { component: 'bitmap' });
    expect(error.field).toBeUndefined();
    expect(error.message).toBe('[dirtytrack] [bitmap] boom');
  });

  it('keeps an Error cause as is and turns any other cause into an Error', () => {
    const original = new RangeError('underlying');
    expect(new DirtytrackError('internal', 'x', { component: 'c', cause: original }).cause).toBe(original);

    const fromString = new DirtytrackError('internal', 'x', { component: 'c', cause: 'disk full' }).cause;
    expect(fromString).toBeInstanceOf(Error);
    expect((fromString as Error).message).toBe('disk full');

    const cases: [unknown, string][] = [
      [{ errno: -13, path: '/dev/kvm' }, '{"errno":-13,"path":"/dev/kvm"}'],
      [42, '42'],
      [null, 'null'],
      [false, 'false'],
      [['a', 1], '["a",1]'],
    ];
    for (const [cause, message] of cases) {
      const normalised = new DirtytrackError('internal', 'x', { component: 'c', cause }).cause;
      expect(normalised).toBeInstanceOf(Error);
      expect((normalised as Error).message).toBe(message);
    }
  });

  it('never throws while normalising a cause JSON cannot serialise', () => {
    const circular: Record<string, unknown> = { name: 'loop' };
    circular['self'] = circular;
    const nullProto = Object.create(null) as Record<string, unknown>;
    nullProto['self'] = nullProto; // neither JSON.stringify nor String() can render this one
    const cases: [unknown, string][] = [
      [10n, '10'],
      [circular, '[object Object]'],
      [Symbol('tag'), 'Symbol(tag)'],
      [() => 1, '() => 1'],
      [nullProto, '[object Object]'],
    ];
    for (const [cause, message] of cases) {
      const error = new DirtytrackError('internal', 'wrapped', { component: 'c', cause });
      expect(error.message).toBe('[dirtytrack] [c] wrapped');
      expect(error.cause).toBeInstanceOf(Error);
      expect((error.cause as Error).message).toBe(message);
    }
  });
});

describe('isDirtytrackError', () => {
  const error = new DirtytrackError('timeout', 'lock wait expired', { component: 'rwlock' });

  it('recognises DirtytrackErrors, optionally of one code', () => {
    expect(isDirtytrackError(error)).toBe(true);
    expect(isDirtytrackError(error, 'timeout')).toBe(true);
    expect(isDirtytrackError(error, 'internal')).toBe(false);
  });

  it('rejects everything else', () => {
    const lookalike = { name: 'DirtytrackError', code: 'timeout' as DirtytrackErrorCode, message: 'x' };
    for (const value of [new Error('x'), lookalike, null, undefined, 'timeout', 0]) {
      expect(isDirtytrackError(value)).toBe(false);
      expect(isDirtytrackError(value, 'timeout')).toBe(false);
    }
  });
});

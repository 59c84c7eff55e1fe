import { expectError } from './__fixtures__/expect-error.js';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { DirtytrackError } from './errors.js';
import { PAGE_SHIFT, PAGE_SIZE, formatSize, parseRate, parseSize } from './units.js';
import { assertProperty } from './__fixtures__/property.js';

const ACCEPTED_SIZE = 'a byte count or a number with an IEC suffix (K, M, G, T, P; e.g. 4K, 512M, 3T)';
const ACCEPTED_RATE = 'bytes per second, a size per second such as 128M, or bits such as 25Gbit';

function expectInvalid(fn: () => unknown, field: string): DirtytrackError {
  const error = expectError(fn, 'invalid-argument', 'units');
  expect(error.field).toBe(field);
  return error;
}

describe('parseSize', () => {
  it('reads IEC suffixes as binary, whatever their spelling', () => {
    expect(parseSize('3T')).toBe(3 * 2 ** 40);
    expect(parseSize('3T')).toBe(3_298_534_883_328);
    expect(parseSize('512M')).toBe(536_870_912);
    expect(parseSize('4K')).toBe(4_096);
    expect(parseSize('4k')).toBe(4_096);
    expect(parseSize('4KiB')).toBe(4_096);
    expect(parseSize('4kb')).toBe(4_096);
    expect(parseSize('4 KB')).toBe(4_096);
    expect(parseSize('1.5G')).toBe(1_610_612_736);
    expect(parseSize('  16G ')).toBe(17_179_869_184);
    expect(parseSize('2P')).toBe(2 ** 51);
    expect(parseSize('4096')).toBe(4_096);
    expect(parseSize('0')).toBe(0);
    expect(parseSize('0.5K')).toBe(512);
  });

  it('accepts non-negative integer byte counts as numbers', () => {
    expect(parseSize(0)).toBe(0);
    expect(parseSize(4096)).toBe(4_096);
    expect(parseSize(Number.MAX_SAFE_INTEGER)).toBe(Number.MAX_SAFE_INTEGER);
  });

  it('rejects anything else with invalid-argument, naming the field and the accepted forms', () => {
    expect(expectInvalid(() => parseSize('abc', 'memory'), 'memory').message).toBe(
      `[dirtytrack] [units] memory: invalid size "abc" (accepted: ${ACCEPTED_SIZE})`,
    );
    expect(expectInvalid(() => parseSize('-1'), 'size').message).toBe(
      `[dirtytrack] [units] size: invalid size "-1" (accepted: ${ACCEPTED_SIZE})`,
    );
    expect(expectInvalid(() => parseSize(1.5, 'vm.memory'), 'vm.memory').message).toBe(
      `[dirtytrack] [units] vm.memory: invalid size "1.5" (accepted: ${ACCEPTED_SIZE})`,
    );
    for (const input of ['', '1.5', 'T', '3X', '1e3', '3 T B', '0x10', '.5K', '3TT']) {
      expectInvalid(() => parseSize(input, 'memory'), 'memory');
    }
    for (const input of [-3, 1.5, NaN, Infinity, 2 ** 53]) expectInvalid(() => parseSize(input), 'size');
    // Well formed, but not an exact count of bytes: the message says which.
    // ERANGE marks them (a caller may word its own range); a malformed size has no errno.
    expect(expectInvalid(() => parseSize('8P'), 'size').errno).toBe('ERANGE');
    expect(expectInvalid(() => parseSize('1.0000001K'), 'size').errno).toBe('ERANGE');
    expect(expectInvalid(() => parseSize('3X'), 'size').errno).toBeUndefined();
    expect(expectInvalid(() => parseSize('8P'), 'size').message).toBe(
      '[dirtytrack] [units] size: size "8P" is more than 2^53 - 1 bytes (8 PiB), the largest size counted exactly',
    );
    expect(expectInvalid(() => parseSize('100000T', 'memory'), 'memory').message).toBe(
      '[dirtytrack] [units] memory: size "100000T" is more than 2^53 - 1 bytes (8 PiB), the largest size counted exactly',
    );
    expect(expectInvalid(() => parseSize('1.0000001K'), 'size').message).toBe(
      '[dirtytrack] [units] size: size "1.0000001K" is 1024.0001024 bytes, not a whole number',
    );
  });
});

describe('formatSize', () => {
  it('uses the largest IEC suffix, with at most two decimals', () => {
    expect(formatSize(3 * 2 ** 40)).toBe('3T');
    expect(formatSize(1536)).toBe('1.5K');
    expect(formatSize(1280)).toBe('1.25K');
    expect(formatSize(100)).toBe('100');
    expect(formatSize(0)).toBe('0');
    expect(formatSize(1023)).toBe('1023');
    expect(formatSize(1024)).toBe('1K');
    expect(formatSize(2 ** 20)).toBe('1M');
    expect(formatSize(2 ** 30 * 10.75)).toBe('10.75G');
    expect(formatSize(2 ** 50)).toBe('1P');
    expect(formatSize(2 ** 60)).toBe('1024P');
  });

  it('rejects negative and non-finite sizes', () => {
    for (const bytes of [-1, NaN, Infinity]) expectInvalid(() => formatSize(bytes), 'size');
  });

  it('round-trips through parseSize for k * 2^s with small k (property)', async () => {
    // k <= 8 keeps the formatted value within two exact decimals (k / 2^j with j <= 2).
    const size = fc
      .tuple(fc.integer({ min: 0, max: 8 }), fc.integer({ min: 0, max: 50 }))
      .map(([k, s]) => k * 2 ** s)
      .filter((x) => Number.isSafeInteger(x));
    await assertProperty(
      fc.property(size, (x) => {
        expect(parseSize(formatSize(x))).toBe(x);
      }),
      500,
    );
  });

  it('round-trips any whole or quarter number of a unit (property)', async () => {
    const size = fc
      .tuple(fc.integer({ min: 4, max: 4 * 1023 + 3 }), fc.constantFrom(10, 20, 30, 40, 50))
      .map(([quarters, shift]) => quarters * 2 ** (shift - 2))
      .filter((x) => Number.isSafeInteger(x)); // parseSize takes safe integers only
    await assertProperty(
      fc.property(size, (x) => {
        expect(parseSize(formatSize(x))).toBe(x);
      }),
      500,
    );
  });
});

describe('parseRate', () => {
  it('reads network rates as decimal bits per second and returns bytes per second', () => {
    expect(parseRate('25Gbit')).toBe(3.125e9);
    expect(parseRate('100Mbit/s')).toBe(12.5e6);
    expect(parseRate('10Gbps')).toBe(1.25e9);
    expect(parseRate('8kbit')).toBe(1_000);
    expect(parseRate('1Kbit/s')).toBe(125);
    expect(parseRate(' 40 Gbit ')).toBe(5e9);
    expect(parseRate('1Tbps')).toBe(1.25e11);
    expect(parseRate('800bit')).toBe(100);
  });

  it('reads anything else as a size per second (IEC) or bytes per second', () => {
    expect(parseRate('128M')).toBe(134_217_728);
    expect(parseRate('128MiB')).toBe(134_217_728);
    expect(parseRate('1G')).toBe(2 ** 30);
    expect(parseRate(1000)).toBe(1_000);
    expect(parseRate('1000')).toBe(1_000);
  });

  it('rejects anything else with invalid-argument, naming the field, with the size error as cause', () => {
    const error = expectInvalid(() => parseRate('fast', 'link.bandwidth'), 'link.bandwidth');
    expect(error.message).toBe(
      `[dirtytrack] [units] link.bandwidth: invalid rate "fast" (accepted: ${ACCEPTED_RATE})`,
    );
    expect(error.cause).toBeInstanceOf(DirtytrackError);
    expect((error.cause as DirtytrackError).field).toBe('link.bandwidth');
    expect(expectInvalid(() => parseRate(-5), 'rate').message).toBe(
      `[dirtytrack] [units] rate: invalid rate -5 (accepted: ${ACCEPTED_RATE})`,
    );
    for (const input of ['', 'Gbit', '10 Gbit/h', '1.5', '-1Gbit'])
      expectInvalid(() => parseRate(input), 'rate');
  });
});

describe('page constants', () => {
  it('describes 4 KiB x86 pages', () => {
    expect(PAGE_SIZE).toBe(4_096);
    expect(PAGE_SHIFT).toBe(12);
    expect(2 ** PAGE_SHIFT).toBe(PAGE_SIZE);
  });
});

describe('parseRate with a per-second suffix', () => {
  it('reads sizes per second written with /s', () => {
    expect(parseRate('128MiB/s')).toBe(134_217_728);
    expect(parseRate('10GB/s')).toBe(10 * 2 ** 30);
    expect(parseRate('4K/s')).toBe(4096);
  });
});

import { DirtytrackError } from './errors.js';

/**
 * Sizes at the edges of the API are strings with IEC suffixes (`"3T"`, `"512M"`, `"4KiB"`) or
 * plain byte counts; inside, everything is bytes. Suffixes are binary: K = 2^10, M = 2^20, …
 */

const IEC_SHIFT: Readonly<Record<string, number>> = { '': 0, K: 10, M: 20, G: 30, T: 40, P: 50 };
const SIZE_RE = /^\s*(\d+(?:\.\d+)?)\s*([KMGTP]?)(?:i?B)?\s*$/i;
const ACCEPTED_SIZE = 'a byte count or a number with an IEC suffix (K, M, G, T, P; e.g. 4K, 512M, 3T)';

/**
 * Parses a size into bytes. Accepts non-negative integers and IEC strings (`"3T"`, `"1.5G"`,
 * `"512MiB"`, `"4kb"` — suffixes are binary whatever their spelling). The result must be a whole
 * number of bytes.
 *
 * @throws DirtytrackError `invalid-argument` naming `field` for anything else.
 */
export function parseSize(input: string | number, field = 'size'): number {
  if (typeof input === 'number') {
    if (Number.isSafeInteger(input) && input >= 0) return input;
    throw sizeError(String(input), field);
  }
  const m = SIZE_RE.exec(input);
  if (!m) throw sizeError(input, field);
  const shift = IEC_SHIFT[(m[2] ?? '').toUpperCase()] ?? 0;
  const bytes = Number(m[1]) * 2 ** shift;
  // Well formed, but not a count dirtytrack can hold exactly: say which.
  if (bytes > Number.MAX_SAFE_INTEGER)
    throw sizeError(input, field, 'is more than 2^53 - 1 bytes (8 PiB), the largest size counted exactly');
  if (!Number.isSafeInteger(bytes)) throw sizeError(input, field, `is ${bytes} bytes, not a whole number`);
  return bytes;
}

/**
 * Formats bytes with the largest IEC suffix that keeps at most two decimals exact-looking:
 * `formatSize(3 * 2 ** 40) === "3T"`, `formatSize(1536) === "1.5K"`, `formatSize(100) === "100"`.
 * `parseSize(formatSize(x)) === x` whenever the formatted value needs no rounding.
 */
export function formatSize(bytes: number): string {
  if (!Number.isFinite(bytes) || bytes < 0) throw sizeError(String(bytes), 'size');
  for (const suffix of ['P', 'T', 'G', 'M', 'K'] as const) {
    const unit = 2 ** (IEC_SHIFT[suffix] ?? 0);
    if (bytes >= unit) {
      const value = bytes / unit;
      const text = Number.isInteger(value) ? String(value) : value.toFixed(2).replace(/\.?0+$/, '');
      return `${text}${suffix}`;
    }
  }
  return String(bytes);
}

const RATE_RE = /^\s*(\d+(?:\.\d+)?)\s*([kKMGT]?)(bit|b)(?:\/s|ps)?\s*$/;
const DECIMAL: Readonly<Record<string, number>> = { '': 1, k: 1e3, K: 1e3, M: 1e6, G: 1e9, T: 1e12 };

/**
 * Parses a link or bandwidth rate into bytes per second. Network rates use decimal bits
 * (`"25Gbit"`, `"100Mbit/s"`, `"10Gbps"`: 10^9 bits); anything else is read as a size per second
 * with IEC suffixes (`"128M"` = 128 MiB/s, QEMU's default `max-bandwidth`), or a number of B/s.
 */
export function parseRate(input: string | number, field = 'rate'): number {
  if (typeof input === 'string') {
    const m = RATE_RE.exec(input);
    if (m) return (Number(m[1]) * (DECIMAL[m[2] ?? ''] ?? 1)) / 8;
  }
  try {
    // A size per second: "128M", "128MiB/s", "10GB/s" (IEC, like every size here).
    return parseSize(typeof input === 'string' ? input.replace(/\s*\/\s*s\s*$/, '') : input, field);
  } catch (cause) {
    throw new DirtytrackError(
      'invalid-argument',
      `${field}: invalid rate ${JSON.stringify(input)} (accepted: bytes per second, a size per second such as 128M, or bits such as 25Gbit)`,
      { component: 'units', field, cause },
    );
  }
}

function sizeError(input: string, field: string, why?: string): DirtytrackError {
  return new DirtytrackError(
    'invalid-argument',
    why === undefined
      ? `${field}: invalid size ${JSON.stringify(input)} (accepted: ${ACCEPTED_SIZE})`
      : `${field}: size ${JSON.stringify(input)} ${why}`,
    {
      component: 'units',
      field,
      // A well-formed size that is no exact count of bytes is out of range, not malformed.
      ...(why === undefined ? {} : { errno: 'ERANGE' }),
    },
  );
}

/** Bytes in one target page (x86: 4 KiB), the unit of every bitmap and ring. */
export const PAGE_SIZE = 4096;
export const PAGE_SHIFT = 12;

import { PAGE_SHIFT } from '@dirtytrack/core';

/**
 * Dirty-limit (reference/qemu.md §2.4; QEMU's system/dirtylimit.c): once the throttle trigger
 * fires, every vCPU gets the quota `vcpu-dirty-limit`; each `x-vcpu-dirty-limit-period` the
 * per-vCPU dirty rate is measured from its dirtied-page count and its sleep per ring-full exit
 * (`throttle_us_per_full`) is adjusted. Integer arithmetic follows QEMU's.
 *
 * The model has no per-exit sleeps: a vCPU that fills its ring in `ring_full` µs at its full
 * rate and then sleeps `throttle` µs runs at `ring_full / (ring_full + throttle)` of its speed,
 * which is the speed factor the limiter hands the engine.
 */

/** The parameters dirty-limit reads, with QEMU's names and defaults. */
export interface DirtyLimitParameters {
  /** ms between measurements and adjustments. Default 1000 (1..1000). */
  'x-vcpu-dirty-limit-period': number;
  /** The per-vCPU quota, MB/s (QEMU computes MiB/s: pages >> 8). Default 1 (≥ 1). */
  'vcpu-dirty-limit': number;
}

export const DEFAULT_DIRTY_LIMIT_PARAMETERS: Readonly<DirtyLimitParameters> = Object.freeze({
  'x-vcpu-dirty-limit-period': 1000,
  'vcpu-dirty-limit': 1,
});

/** DIRTYLIMIT_TOLERANCE_RANGE: a vCPU within this many MB/s of its quota is left alone. */
export const DIRTYLIMIT_TOLERANCE = 25;
/** Errors above this % of the larger rate are corrected linearly (DIRTYLIMIT_LINEAR_ADJUSTMENT_PCT). */
const LINEAR_ADJUSTMENT_PCT = 50;
/** DIRTYLIMIT_THROTTLE_PCT_MAX: the sleep never exceeds 99 ring-full times. */
const THROTTLE_PCT_MAX = 99;

export interface DirtyLimiter {
  /** Per-vCPU sleep per ring-full exit, µs (`cpu->throttle_us_per_full`). */
  readonly throttleUs: Float64Array;
  /** The rates (MB/s) the last period measured, per vCPU. */
  readonly rates: Float64Array;
  /**
   * One period of the dirtylimit thread: `dirtyPages[v]` is vCPU v's cumulative dirtied pages
   * now; rates are measured over `periodMs` and each vCPU adjusted.
   */
  tick(dirtyPages: (vcpu: number) => number, periodMs: number): void;
  /** `dirtylimit_dirty_ring_full_time`: µs to fill a ring at `rate` (or at the fastest rate seen). */
  ringFullTimeUs(rate: number): number;
  /** The speed factor vCPU `v` runs at under its sleep. */
  speedOf(vcpu: number): number;
  /** `dirty-limit-throttle-time-per-round`: the largest per-vCPU sleep, µs. */
  throttleTimePerRound(): number;
  /** `dirty-limit-ring-full-time`: µs to fill a ring at the vCPUs' mean measured rate. */
  ringFullTime(): number;
}

/**
 * A limiter for `vcpus` vCPUs whose rings hold `ringEntries` entries each, with quota `quota`
 * MB/s. `baseline(v)` is read at creation so the first period measures from the trigger.
 */
export function createDirtyLimiter(
  vcpus: number,
  ringEntries: number,
  quota: number,
  baseline: (vcpu: number) => number,
): DirtyLimiter {
  // qemu_target_pages_to_MiB: entries >> (20 - page bits).
  const ringMiB = Math.floor(ringEntries / 2 ** (20 - PAGE_SHIFT));
  const throttleUs = new Float64Array(vcpus);
  const rates = new Float64Array(vcpus);
  const unmatched = new Uint32Array(vcpus);
  const last = Float64Array.from({ length: vcpus }, (_, v) => baseline(v));
  let maxRate = 0;
  const ringFullTimeUs = (rate: number): number => {
    if (maxRate < rate) maxRate = rate;
    return maxRate === 0 ? 0 : Math.floor((ringMiB * 1_000_000) / maxRate);
  };
  const setThrottle = (v: number, current: number): void => {
    const ringFull = ringFullTimeUs(current);
    const min = Math.min(quota, current);
    const max = Math.max(quota, current);
    let t = throttleUs[v] as number;
    if (Math.floor(((max - min) * 100) / max) > LINEAR_ADJUSTMENT_PCT) {
      const sleepPct = Math.floor(((max - min) * 100) / max);
      const delta = (ringFull * sleepPct) / (100 - sleepPct);
      // int64 += double truncates toward zero.
      t = Math.trunc(quota < current ? t + delta : t - delta);
    } else {
      t = quota < current ? t + Math.floor(ringFull / 10) : t - Math.floor(ringFull / 10);
    }
    throttleUs[v] = Math.max(Math.min(t, ringFull * THROTTLE_PCT_MAX), 0);
  };
  return {
    throttleUs,
    rates,
    ringFullTimeUs,
    tick(dirtyPages, periodMs) {
      for (let v = 0; v < vcpus; v++) {
        const now = dirtyPages(v);
        const delta = now - (last[v] as number);
        last[v] = now;
        // vcpu_calculate_dirtyrate: MiB (pages >> 8) × 1000 / ms, truncated.
        const current = Math.floor((Math.floor(delta / 2 ** (20 - PAGE_SHIFT)) * 1000) / periodMs);
        rates[v] = current;
        // dirtylimit_adjust_throttle: adjust on every second unmatched period.
        if (current === 0 && unmatched[v] === 0) {
          throttleUs[v] = 0;
          continue;
        }
        const count = (unmatched[v] as number) + 1;
        unmatched[v] = count;
        if (count < 2 || Math.abs(quota - current) <= DIRTYLIMIT_TOLERANCE) continue;
        unmatched[v] = 0;
        setThrottle(v, current);
      }
    },
    speedOf(v) {
      const t = throttleUs[v] as number;
      if (t === 0) return 1;
      const ringFull = maxRate === 0 ? 0 : Math.floor((ringMiB * 1_000_000) / maxRate);
      return ringFull / (ringFull + t);
    },
    throttleTimePerRound() {
      let max = 0;
      for (let v = 0; v < vcpus; v++) max = Math.max(max, throttleUs[v] as number);
      return max;
    },
    ringFullTime() {
      let sum = 0;
      for (let v = 0; v < vcpus; v++) sum += rates[v] as number;
      if (sum === 0) return 0;
      return ringFullTimeUs(Math.floor(sum / vcpus));
    },
  };
}

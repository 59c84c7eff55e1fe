/**
 * Auto-converge (reference/qemu.md §2.3): QEMU's two-period trigger and its throttle steps, as
 * pure functions the precopy loop calls at each dirty sync. Integer arithmetic follows QEMU's
 * `uint64_t` (divisions truncate).
 */

/** The `migrate-set-parameters` auto-converge reads, with QEMU's names and defaults. */
export interface AutoConvergeParameters {
  /** % of the bytes sent in a period the guest may dirty before the period counts as high. Default 50 (1..100). */
  'throttle-trigger-threshold': number;
  /** The first throttle, %. Default 20 (1..99). */
  'cpu-throttle-initial': number;
  /** Added at each later step, %. Default 10 (1..99). */
  'cpu-throttle-increment': number;
  /** Step by what would make the dirty rate meet the threshold, at most the increment. Default false. */
  'cpu-throttle-tailslow': boolean;
  /** The throttle never exceeds this, %. Default 99 (initial..99). */
  'max-cpu-throttle': number;
}

export const DEFAULT_AUTO_CONVERGE_PARAMETERS: Readonly<AutoConvergeParameters> = Object.freeze({
  'throttle-trigger-threshold': 50,
  'cpu-throttle-initial': 20,
  'cpu-throttle-increment': 10,
  'cpu-throttle-tailslow': false,
  'max-cpu-throttle': 99,
});

/** What one evaluation of the trigger saw. */
export interface TriggerPeriod {
  /** `num_dirty_pages_period × page`: bytes the guest dirtied in the period. */
  dirtyBytes: number;
  /** Bytes put on the wire in the period. */
  xferBytes: number;
}

/**
 * `migration_trigger_throttle`: a period is high when `dirty > xfer × threshold / 100`; every
 * second high period (the counter is not reset by a low one) fires, and the counter restarts.
 * Returns the trigger: call it once per ≥ 1 s sync period; it returns the dirty-bytes threshold
 * when it fires (tailslow needs it), or `undefined`.
 */
export function createThrottleTrigger(thresholdPct: number): (period: TriggerPeriod) => number | undefined {
  let highCount = 0;
  return ({ dirtyBytes, xferBytes }) => {
    const dirtyThreshold = Math.floor((xferBytes * thresholdPct) / 100);
    if (dirtyBytes > dirtyThreshold && ++highCount >= 2) {
      highCount = 0;
      return dirtyThreshold;
    }
    return undefined;
  };
}

/**
 * `mig_throttle_guest_down`: the next throttle percentage. Not throttling yet (0) → the initial
 * value; else + the increment (or, with tailslow, `min(increment, cpu_now − cpu_ideal)` with
 * `cpu_ideal = trunc(cpu_now × threshold / dirty)`), capped at `max-cpu-throttle`, and always
 * clamped to 1..99 as `cpu_throttle_set` does.
 */
export function nextThrottle(
  current: number,
  p: AutoConvergeParameters,
  dirtyBytes: number,
  dirtyThreshold: number,
): number {
  let next: number;
  if (current === 0) {
    next = p['cpu-throttle-initial'];
  } else {
    let inc = p['cpu-throttle-increment'];
    if (p['cpu-throttle-tailslow']) {
      const cpuNow = 100 - current;
      const cpuIdeal = Math.trunc(cpuNow * (dirtyThreshold / dirtyBytes));
      inc = Math.min(cpuNow - cpuIdeal, inc);
    }
    next = Math.min(current + inc, p['max-cpu-throttle']);
  }
  return Math.max(1, Math.min(99, next));
}

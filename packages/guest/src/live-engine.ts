import {
  createRealClock,
  DirtytrackError,
  type Clock,
  type Engine,
  type VcpuThrottle,
} from '@dirtytrack/core';
import type { LiveGuest } from './live-guest.js';

const COMPONENT = 'live-engine';

/** Longest the engine sleeps between two looks at the vCPUs (`guest.check()`), in ms. */
const CHECK_EVERY_MS = 10;

export interface LiveEngineOptions {
  /** A started guest: its vCPUs run in their workers while the engine's caller is blocked. */
  guest: LiveGuest;
  /** Real time (`kind: 'real'`). Default: `createRealClock()`. */
  clock?: Clock;
}

/**
 * The live plane's {@link Engine}: the vCPUs run in their workers in real time, and every method
 * is synchronous, so a migration engine (`runPrecopy`) can drive it from a thread blocked in
 * synchronous code — no event loop turn is ever needed.
 */
export interface LiveEngine extends Engine, VcpuThrottle {
  readonly plane: 'live';
  readonly guest: LiveGuest;
  /** vCPU `vcpu`'s own speed factor (dirty-limit). */
  vcpuSpeed(vcpu: number): number;
}

/**
 * Wraps a started {@link LiveGuest} as an {@link Engine} and a {@link VcpuThrottle}.
 *
 * - `runGuestUntil(t)` blocks the calling thread (`Atomics.wait`, ≤ 10 ms at a time) until
 *   `clock.now() >= t`, calling `guest.check()` between sleeps so a vCPU failure surfaces as its
 *   `DirtytrackError` within 10 ms. A `t` already past returns at once (real time moves on).
 * - `pause()` is `guest.pauseSync()`: every vCPU is between two writes, outside guest mode, when it
 *   returns. `resume()` lets them run again.
 * - The throttle is the guest's: `speed` (auto-converge), `setVcpuSpeed` (dirty-limit),
 *   `vcpuDirtyPages` (writes that trapped).
 */
export function createLiveEngine(options: LiveEngineOptions): LiveEngine {
  const { guest } = options;
  const clock = options.clock ?? createRealClock();
  if (clock.kind !== 'real') {
    throw new DirtytrackError(
      'invalid-argument',
      `clock must be a real clock (a ${clock.kind} clock never advances while the engine waits)`,
      { component: COMPONENT, field: 'clock' },
    );
  }
  const sleeper = new Int32Array(new SharedArrayBuffer(4));
  return {
    plane: 'live',
    clock,
    guest,
    get vcpus() {
      return guest.vcpus;
    },
    get running() {
      return guest.running;
    },
    get speed() {
      return guest.speed;
    },
    set speed(value: number) {
      guest.speed = value;
    },
    setVcpuSpeed: (vcpu, speed) => guest.setVcpuSpeed(vcpu, speed),
    vcpuSpeed: (vcpu) => guest.vcpuSpeed(vcpu),
    vcpuDirtyPages: (vcpu) => guest.vcpuDirtyPages(vcpu),
    runGuestUntil(untilNs) {
      if (Number.isNaN(untilNs)) {
        throw new DirtytrackError('invalid-argument', 'runGuestUntil: the time is NaN', {
          component: COMPONENT,
        });
      }
      guest.check();
      for (let left = untilNs - clock.now(); left > 0; left = untilNs - clock.now()) {
        // Nobody notifies the sleeper: this is a sleep that needs no event loop.
        Atomics.wait(sleeper, 0, 0, Math.min(left / 1e6, CHECK_EVERY_MS));
        guest.check();
      }
    },
    pause: () => guest.pauseSync(),
    resume: () => guest.resume(),
  };
}

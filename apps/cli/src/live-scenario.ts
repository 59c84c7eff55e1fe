import { PAGE_SIZE } from '@dirtytrack/core';
import { LIVE_SWITCHOVER_SHARE } from '@dirtytrack/migration';
import type { ScenarioInput } from './scenario.js';

/** What the model needs to know of a live migration to predict it. */
export interface LiveRunShape {
  /** The scenario's name. */
  name: string;
  seed: number;
  /** Guest RAM, bytes (every page holds data: the live guests here are filled with random bytes). */
  memory: number;
  vcpus: number;
  /** Page writes per second of each vCPU, uniform over RAM (0: an idle guest). */
  writesPerVcpu: number;
  /** The link's throughput, bytes/s (the model's link has no latency, as loopback). */
  linkBytesPerSecond: number;
  /** QEMU `max-bandwidth`, bytes/s (0 = the link's speed). */
  maxBandwidth: number;
  /** QEMU `downtime-limit`, ms. */
  downtimeLimit: number;
  /** Multifd channels (0: multifd off). */
  channels: number;
  autoConverge: boolean;
  zeroCopySend: boolean;
  /** `migrate-start-postcopy` this many seconds into the run (postcopy-ram on); none: precopy only. */
  postcopyAfter?: number;
  /** QEMU `max-postcopy-bandwidth`, bytes/s (0 = the link's speed). */
  maxPostcopyBandwidth?: number;
  /** QEMU's `postcopy-preempt` (with `postcopyAfter`). */
  postcopyPreempt?: boolean;
  /** Seconds after which the run gives up. */
  timeLimit: number;
}

/**
 * A live migration as a model-plane scenario (ARCHITECTURE.md §8, invariant 6): the same guest
 * (size, vCPUs, all pages holding data, the live pipeline's MMU write-protect tracker, bitmap
 * reporter and QEMU's `xchg` layers), a uniform workload at the live vCPUs' write rate, the link,
 * the same migration parameters, capabilities (postcopy started at the same time) and time limit,
 * and the live plane's switchover share (it plans its final copy for half of `downtime-limit`:
 * the same algorithm).
 */
export function liveScenario(s: LiveRunShape): ScenarioInput {
  return {
    name: s.name,
    seed: s.seed,
    memory: s.memory,
    vcpus: s.vcpus,
    tracker: 'mmu-wp',
    layers: 'xchg',
    populated: 1,
    workload: { kind: 'uniform', rate: Math.round(s.writesPerVcpu * PAGE_SIZE) },
    link: { bandwidth: Math.round(s.linkBytesPerSecond), latency: 0 },
    migration: {
      parameters: {
        'max-bandwidth': s.maxBandwidth,
        'downtime-limit': s.downtimeLimit,
        ...(s.channels > 0 ? { 'multifd-channels': s.channels } : {}),
        ...(s.maxPostcopyBandwidth === undefined ? {} : { 'max-postcopy-bandwidth': s.maxPostcopyBandwidth }),
      },
      capabilities: {
        multifd: s.channels > 0,
        'auto-converge': s.autoConverge,
        ...(s.zeroCopySend ? { 'zero-copy-send': true } : {}),
        ...(s.postcopyAfter === undefined ? {} : { 'postcopy-ram': true }),
        ...(s.postcopyPreempt === true ? { 'postcopy-preempt': true } : {}),
      },
      'switchover-share': LIVE_SWITCHOVER_SHARE,
      ...(s.postcopyAfter === undefined ? {} : { 'start-postcopy-at': s.postcopyAfter }),
    },
    'time-limit': s.timeLimit,
  };
}

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
  /**
   * Page writes per second of each vCPU (0: an idle guest): uniform over RAM unless `hotSet` or
   * `sweep` says otherwise; a `trace` keeps its own times.
   */
  writesPerVcpu: number;
  /**
   * The live guest's `hot-set` workload (`--workload hot-set`): each vCPU draws its own `pages`
   * hot pages (with repeats) and sends `share`/256 of its writes there, the rest uniformly over
   * RAM — the model's `hot-layout: lists`, whose vCPUs draw the same lists from the same seed.
   */
  hotSet?: { pages: number; share: number };
  /** The live guest's `sweep` workload instead (`--workload sweep`): each vCPU writes its share in order. */
  sweep?: boolean;
  /**
   * The live guest's `trace` workload instead (`--workload trace --trace FILE`, with
   * `--trace-loop` when `loop`): the model replays the same file.
   */
  trace?: { file: string; loop: boolean };
  /** Seconds the live guest had run when the migration began (`guest-run-before` / 1000). */
  runBefore?: number;
  /**
   * The live run's `setup-time`, ms (threads and connections starting, the first write-protect:
   * 1–30 ms for the property's guests here, 9–66 ms for `bench migrate`'s 1 GiB and 512 MiB
   * ones, against modelled costs of ~0.03 ms). Its rate-limit windows start after it, so it
   * decides which window acts on `migrate-start-postcopy`.
   */
  setupTime?: number;
  /** Entries of each vCPU's KVM dirty ring (`--dirty-ring-size`); absent: the dirty log bitmap. */
  dirtyRing?: number;
  /**
   * QEMU's dirty-limit (`--dirty-limit MB/s`, with `dirtyRing`): `vcpu-dirty-limit` and
   * `x-vcpu-dirty-limit-period` (`--x-vcpu-dirty-limit-period`, ms).
   */
  dirtyLimit?: { quota: number; periodMs: number };
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
 * (size, vCPUs, all pages holding data, the live pipeline's MMU write-protect tracker, bitmap or
 * dirty-ring reporter and QEMU's `xchg` layers), the workload (uniform, hot-set or sweep at the
 * live vCPUs' write rate, or the trace they replay) as far along as the live guest's was when its
 * migration began, the link, the same migration parameters, capabilities (postcopy started at the
 * same time; dirty-limit with its quota and period) and time limit, and the live plane's switchover share (it plans its final copy for
 * half of `downtime-limit`: the same algorithm).
 */
export function liveScenario(s: LiveRunShape): ScenarioInput {
  const rate = Math.round(s.writesPerVcpu * PAGE_SIZE);
  return {
    name: s.name,
    seed: s.seed,
    memory: s.memory,
    vcpus: s.vcpus,
    tracker: 'mmu-wp',
    ...(s.dirtyRing === undefined ? {} : { reporter: 'ring', 'ring-size': s.dirtyRing }),
    layers: 'xchg',
    populated: 1,
    workload: {
      ...(s.trace !== undefined
        ? { kind: 'trace', file: s.trace.file, loop: s.trace.loop }
        : s.hotSet !== undefined
          ? {
              kind: 'hotset',
              rate,
              'hot-fraction': s.hotSet.pages / (s.memory / PAGE_SIZE),
              'hot-write-fraction': s.hotSet.share / 256,
              // Each vCPU its own list, drawn as the live vCPU draws it: the same pages.
              'hot-layout': 'lists',
            }
          : { kind: s.sweep === true ? 'sweep' : 'uniform', rate }),
      ...(s.runBefore === undefined ? {} : { 'run-before': s.runBefore }),
    },
    link: { bandwidth: Math.round(s.linkBytesPerSecond), latency: 0 },
    migration: {
      parameters: {
        'max-bandwidth': s.maxBandwidth,
        'downtime-limit': s.downtimeLimit,
        ...(s.channels > 0 ? { 'multifd-channels': s.channels } : {}),
        ...(s.maxPostcopyBandwidth === undefined ? {} : { 'max-postcopy-bandwidth': s.maxPostcopyBandwidth }),
        ...(s.dirtyLimit === undefined
          ? {}
          : {
              'vcpu-dirty-limit': s.dirtyLimit.quota,
              'x-vcpu-dirty-limit-period': s.dirtyLimit.periodMs,
            }),
      },
      capabilities: {
        multifd: s.channels > 0,
        'auto-converge': s.autoConverge,
        ...(s.dirtyLimit === undefined ? {} : { 'dirty-limit': true }),
        ...(s.zeroCopySend ? { 'zero-copy-send': true } : {}),
        ...(s.postcopyAfter === undefined ? {} : { 'postcopy-ram': true }),
        ...(s.postcopyPreempt === true ? { 'postcopy-preempt': true } : {}),
      },
      'switchover-share': LIVE_SWITCHOVER_SHARE,
      ...(s.postcopyAfter === undefined ? {} : { 'start-postcopy-at': s.postcopyAfter }),
      ...(s.setupTime === undefined ? {} : { 'setup-time': s.setupTime }),
    },
    'time-limit': s.timeLimit,
  };
}

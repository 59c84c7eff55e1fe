import type { ScenarioInput } from './scenario.js';

/**
 * Built-in scenarios. `small` is the embedded default the README's first command runs; the CLI
 * README shows each one's output.
 */
export const PRESETS = {
  /** A 4 GiB guest, 4 vCPUs writing 32 MiB/s in all over a 1 GiB working set, 10 Gbit/s link. */
  small: {
    name: 'small',
    memory: '4G',
    vcpus: 4,
    workload: { kind: 'uniform', rate: '8M', 'working-set': '1G' },
    link: { bandwidth: '10Gbit', latency: 0.1 },
    migration: { parameters: { 'max-bandwidth': '1G', 'downtime-limit': 300 } },
    'time-limit': 600,
  },
  /**
   * The slides' huge VM: 3 TiB, 128 vCPUs writing 256 MiB/s in all over a 512 GiB working set,
   * three quarters of memory populated, a 25 Gbit/s link with no bandwidth cap. Its bitmap is
   * 96 MiB — the size the slides measured a ~200 ms sync for.
   */
  'large-3tb': {
    name: 'large-3tb',
    memory: '3T',
    vcpus: 128,
    populated: 0.75,
    workload: { kind: 'uniform', rate: '2M', 'working-set': '512G' },
    link: { bandwidth: '25Gbit', latency: 0.1 },
    migration: { parameters: { 'max-bandwidth': 0, 'downtime-limit': 300 } },
    'time-limit': 7200,
  },
  /**
   * A guest that dirties faster than its link: 8 vCPUs sweeping 2 GiB at 128 MiB/s each
   * (1 GiB/s) over a 1 Gbit/s link. It never converges; the run stops `active` at the limit.
   */
  'no-converge': {
    name: 'no-converge',
    memory: '4G',
    vcpus: 8,
    workload: { kind: 'sweep', rate: '128M', 'working-set': '2G' },
    link: { bandwidth: '1Gbit', latency: 0.1 },
    migration: { parameters: { 'max-bandwidth': 0, 'downtime-limit': 300 } },
    'time-limit': 120,
  },
  /**
   * The slides' huge VM as a seed for planning (issue 8): 3 TiB on 2 MiB hugetlbfs pages, 128
   * vCPUs writing 2 MiB/s each (256 MiB/s in all, as `large-3tb`) over a 1 TiB working set whose first 5 % (51 GiB,
   * a database's buffer pool) takes 95 % of the writes, 60 % of memory populated, a 25 Gbit/s
   * link with no bandwidth cap, 4 multifd channels (one copying thread tops out near 16 Gbit/s).
   */
  'seed-3tb': {
    name: 'seed-3tb',
    memory: '3T',
    vcpus: 128,
    backing: '2m',
    populated: 0.6,
    workload: {
      kind: 'hotset',
      rate: '2M',
      'working-set': '1T',
      'hot-fraction': 0.05,
      'hot-write-fraction': 0.95,
    },
    link: { bandwidth: '25Gbit', latency: 0.1 },
    migration: {
      capabilities: { multifd: true },
      parameters: { 'max-bandwidth': 0, 'downtime-limit': 300, 'multifd-channels': 4 },
    },
    'time-limit': 7200,
  },
  /**
   * The next size up: 8 TiB on 2 MiB pages, 512 vCPUs writing 2 MiB/s each (1 GiB/s in all) over a
   * 2 TiB working set, 5 % hot taking 95 % of the writes, half of memory populated, a 100 Gbit/s
   * link, 8 multifd channels sending with MSG_ZEROCOPY. Its bitmaps are 256 MiB each.
   */
  'seed-8tb': {
    name: 'seed-8tb',
    memory: '8T',
    vcpus: 512,
    backing: '2m',
    populated: 0.5,
    workload: {
      kind: 'hotset',
      rate: '2M',
      'working-set': '2T',
      'hot-fraction': 0.05,
      'hot-write-fraction': 0.95,
    },
    link: { bandwidth: '100Gbit', latency: 0.1 },
    migration: {
      capabilities: { multifd: true, 'zero-copy-send': true },
      parameters: { 'max-bandwidth': 0, 'downtime-limit': 300, 'multifd-channels': 8 },
    },
    'time-limit': 7200,
  },
} satisfies Record<string, ScenarioInput>;

export type PresetName = keyof typeof PRESETS;

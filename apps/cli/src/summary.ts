import { formatSize } from '@dirtytrack/core';
import type { SimulateResult } from './pipeline.js';
import type { Scenario } from './scenario.js';

/** The short human summary `simulate` prints without `--json`. */
export function formatSummary(scenario: Scenario, r: SimulateResult): string {
  const ram = r['ram'] as Record<string, number>;
  const trajectory = r['trajectory'] as Record<string, number>[];
  const w = scenario.workload;
  const lines = [
    `dirtytrack simulate: ${scenario.name} (seed ${scenario.seed})`,
    `  guest     ${bytes(scenario.memory)}${scenario.backing === '4k' ? '' : ` on ${scenario.backing} hugetlbfs pages`}, ${scenario.vcpus} vCPUs, ${w.kind} writes at ${bytes(w.rate * scenario.vcpus)}/s over ${bytes(w['working-set'] ?? scenario.memory - w.offset)}`,
    `  link      ${(scenario.link.bandwidth * 8e-9).toFixed(3).replace(/\.?0+$/, '')} Gbit/s, max-bandwidth ${scenario.migration.parameters['max-bandwidth'] === 0 ? 'unlimited' : `${bytes(scenario.migration.parameters['max-bandwidth'])}/s`}, downtime-limit ${scenario.migration.parameters['downtime-limit']} ms`,
    `  status    ${String(r['status'])}${statusNote(scenario, r)}`,
    `  time      total ${fmtMs(r['total-time'] as number)}, setup ${fmtMs(r['setup-time'] as number)}${r['downtime'] === undefined ? '' : `, downtime ${fmtMs(r['downtime'] as number)}`} (expected ${fmtMs(r['expected-downtime'] as number)})`,
    `  ram       transferred ${bytes(ram['transferred'] ?? 0)} of ${bytes(ram['total'] ?? 0)}, ${ram['normal']} normal + ${ram['duplicate']} zero pages, remaining ${bytes(ram['remaining'] ?? 0)}`,
    `  syncs     ${ram['dirty-sync-count']}, dirty-pages-rate ${ram['dirty-pages-rate']} pages/s, ${ram['mbps']} Mbit/s`,
  ];
  const m = r.dirtytrack.migration;
  const caps = scenario.migration.capabilities;
  if (caps['auto-converge']) {
    lines.push(
      `  throttle  auto-converge steps ${m['throttle-steps'].length === 0 ? 'none' : m['throttle-steps'].join(', ')} %; now ${String(r['cpu-throttle-percentage'])} %`,
    );
  }
  if (caps['dirty-limit']) {
    lines.push(
      `  limit     dirty-limit ${scenario.migration.parameters['vcpu-dirty-limit']} MB/s per vCPU; throttle ${String(r['dirty-limit-throttle-time-per-round'])} µs per ring-full, ring-full time ${String(r['dirty-limit-ring-full-time'])} µs`,
    );
  }
  if (caps['postcopy-ram'] && r.dirtytrack.events.some((e) => e.status === 'postcopy-active')) {
    // What the destination requests and places: pages, host pages, or 4 KiB pieces (double-map).
    const m2 = scenario.migration;
    const unit =
      scenario.backing === '4k'
        ? 'page'
        : m2['postcopy-double-map']
          ? '4k piece'
          : `${scenario.backing} host page`;
    const on = [
      ...(m2['postcopy-double-map'] ? ['double-map'] : []),
      ...(m2['postcopy-uffd-minor'] ? ['uffd minor mode'] : []),
    ];
    const remedies = on.length === 0 ? '' : ` (${on.join(', ')})`;
    lines.push(
      `  postcopy  ${String(ram['postcopy-requests'])} ${unit} requests (mean latency ${fmtMs(m['postcopy-request-latency'])}), blocktime ${fmtMs(r['postcopy-blocktime'] as number)}, ${m['postcopy-placed']} ${unit}s placed, ${bytes(ram['postcopy-bytes'] ?? 0)} sent after the switch${remedies}`,
    );
  }
  if (caps.multifd) {
    lines.push(
      `  multifd   ${scenario.migration.parameters['multifd-channels']} channels${caps['zero-copy-send'] ? ', zero-copy' : ''}: ${m['multifd-packets']} packets, ${m['multifd-syncs']} syncs, ${bytes(ram['multifd-bytes'] ?? 0)}; send CPU ${fmtMs(m['send-cpu-time'])}`,
    );
  }
  const shown = trajectory.length <= 8 ? trajectory : [...trajectory.slice(0, 4), ...trajectory.slice(-4)];
  lines.push('  sync  time            remaining        new dirty');
  for (const t of shown) {
    lines.push(
      `  ${String(t['sync']).padStart(4)}  ${fmtMs(t['time'] ?? 0).padStart(14)}  ${bytes(t['remaining'] ?? 0).padStart(10)}  ${String(t['new-dirty-pages']).padStart(15)}`,
    );
    if (shown.length < trajectory.length && t === shown[3])
      lines.push(`  …     (${trajectory.length - 8} more)`);
  }
  return lines.join('\n');
}

/** Bytes with a binary suffix: 4GiB, 1.5MiB, 100B. */
function bytes(n: number): string {
  const text = formatSize(Math.round(n));
  return /\d$/.test(text) ? `${text}B` : `${text}iB`;
}

function fmtMs(ms: number): string {
  return ms >= 10_000 ? `${(ms / 1000).toFixed(1)} s` : `${ms.toFixed(1)} ms`;
}

function statusNote(scenario: Scenario, r: SimulateResult): string {
  switch (r['status']) {
    case 'completed':
      return '';
    case 'failed':
      return ` (${String(r['error-desc'])}; the source keeps running)`;
    case 'postcopy-paused':
      return ` (${String(r['error-desc'])}; postcopy paused: the destination runs the guest, recovery is not modelled yet)`;
    case 'cancelled':
      return ' (migrate_cancel; the source keeps running)';
    default:
      return ` (stopped at the ${scenario['time-limit']} s time limit: the guest dirties memory faster than the link drains it)`;
  }
}
